#!/usr/bin/env bash
# One GPU's queue of commands, run in order and detached from the device call, on a multi-GPU host.
#   setsid nohup bash scripts/gpu_queue.sh GPU QUEUE_FILE LOG_DIR [MACHINE_LABEL] > /dev/null 2>&1 < /dev/null &
# GPU may be a set, "0,1", for a tensor-parallel queue: its files are then named by "0-1" (no comma, which the
# device tool does not bring back in a name).
# Each line of QUEUE_FILE is one command (run with bash -c from the repository root); the file may be edited
# while the queue runs (below). The queue gets GPU GPU alone, its own vLLM compile cache and its own temp
# folder: queues then share neither compile-cache writes nor ncu's lock file (kept in the temp folder), so ncu
# passes on different GPUs do not wait for each other. LOG_DIR/qGPU.log gets a START and an EXIT line per
# command, LOG_DIR/qGPU.out its output.
set -u
gpu=$1 queue=$2 logs=$3
tag=${gpu//,/-}
# MACHINE_LABEL (optional, e.g. h100-session7) names this session's machine in every result (env.machine_label,
# the report's machine); without it the caller's NWOR_MACHINE_LABEL, if any, passes through. None is invented.
if [ -n "${4:-}" ]; then export NWOR_MACHINE_LABEL=$4; fi
# The temp folder sits beside the cache, not inside it: redacted as <machine-tmp>/nwor-qN-tmp, it keeps no
# "/tmp/" a path check would flag.
mkdir -p "$logs" "/tmp/nwor-q$tag-tmp"
export CUDA_VISIBLE_DEVICES=$gpu VLLM_CACHE_ROOT=/tmp/nwor-q$tag/vllm TMPDIR=/tmp/nwor-q$tag-tmp
# The file is read again, by name, before each command: the Nth command is the Nth non-empty line when it
# starts. Lines may be appended while the queue runs, or those not yet started removed. Reading the file opened
# once, as this did before, missed every edit written as a new file under the same name (editors, the device
# tool's copy of the work tree): in H100 session 7 two removed lines still ran.
n=0
while cmd=$(grep -v '^[[:space:]]*$' "$queue" 2>/dev/null | sed -n "$((n + 1))p") && [ -n "$cmd" ]; do
  n=$((n + 1))
  echo "[$(date -u +%H:%M:%S)] START $cmd" >> "$logs/q$tag.log"
  bash -c "$cmd" >> "$logs/q$tag.out" 2>&1
  rc=$?  # taken before anything else runs: a command substitution would reset it
  echo "[$(date -u +%H:%M:%S)] EXIT $rc $cmd" >> "$logs/q$tag.log"
done
echo "[$(date -u +%H:%M:%S)] QUEUE DONE" >> "$logs/q$tag.log"
