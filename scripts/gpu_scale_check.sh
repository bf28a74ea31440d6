#!/usr/bin/env bash
# Issue 17's check on one multi-GPU host (docs/scale_out.md): the same 8 gpu-smoke-1x runs serially on GPU 0,
# then over every GPU with --executor ray, then scripts/parallel_vs_serial.py. Detach it like a queue:
#   setsid nohup bash scripts/gpu_scale_check.sh OUT LOG_DIR [MACHINE_LABEL [QUEUE_LOG ...]] > /dev/null 2>&1 < /dev/null &
# OUT gets scale-warm/, scale-serial/ and scale-parallel/ (the comparison: scale-parallel/gpu-smoke-1x/
# parallel_vs_serial.json); LOG_DIR/scale.log a START and EXIT line per step, LOG_DIR/scale.out their output.
# With QUEUE_LOGs (other queues' gpu_queue.sh logs), the parallel half waits for each to say QUEUE DONE: it needs
# every GPU. Queues running beside the serial half share the host's CPUs with it, as the parallel runs share
# them with each other; without queues the serial half has the host alone. NWOR_SCALE_PROFILE (default
# gpu-smoke-1x) picks another profile, e.g. smoke to try the script on a CPU.
set -u
out=$1 logs=$2 profile=${NWOR_SCALE_PROFILE:-gpu-smoke-1x}
if [ -n "${3:-}" ]; then export NWOR_MACHINE_LABEL=$3; fi
shift $(( $# < 3 ? $# : 3 ))
L=$logs/scale.log O=$logs/scale.out
export VLLM_CACHE_ROOT=/tmp/nwor-scale/vllm TMPDIR=/tmp/nwor-scale-tmp
mkdir -p "$TMPDIR" "$logs"
step() { local name=$1; shift; echo "[$(date -u +%H:%M:%S)] START $name $*" >> "$L"; "$@" >> "$O" 2>&1
         echo "[$(date -u +%H:%M:%S)] EXIT $? $name" >> "$L"; }
# Eight runs of one shape (36 requests x 128 tokens), so the two waves over four GPUs are as even as runs allow.
RUNS=()
for w in run3_r36_t128_temp0.0_d10 run4_r36_t128_temp0.7_d10 run7_r36_t128_temp0.0_d5 run8_r36_t128_temp0.0_d15; do
  RUNS+=(--only "${w}_adaptive0" --only "${w}_adaptive1")
done
# Warm the shared compile cache first: both halves must start warm.
step warm env CUDA_VISIBLE_DEVICES=0 nwor run adaptive_grid --profile "$profile" --outputs "$out/scale-warm" \
  --only run1_r12_t64_temp0.0_d10_adaptive0
step serial env CUDA_VISIBLE_DEVICES=0 nwor run adaptive_grid --profile "$profile" --outputs "$out/scale-serial" \
  "${RUNS[@]}"
for queue_log in "$@"; do
  until grep -q 'QUEUE DONE' "$queue_log" 2>/dev/null; do sleep 5; done
done
step parallel nwor run adaptive_grid --profile "$profile" --outputs "$out/scale-parallel" --executor ray "${RUNS[@]}"
step compare python3 scripts/parallel_vs_serial.py "$out/scale-serial" "$out/scale-parallel" --profile "$profile" \
  --pooled --out "$out/scale-parallel/$profile/parallel_vs_serial.json"
echo "[$(date -u +%H:%M:%S)] SCALE DONE" >> "$L"
