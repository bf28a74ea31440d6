#!/usr/bin/env bash
# One poll of detached work on a lent GPU machine (scripts/gpu_queue.sh, scripts/gpu_scale_check.sh): wait up to
# SECONDS for EXPECTED "QUEUE DONE"/"SCALE DONE" lines in LOG_DIR/*.log, then pack LOG_DIR and each DIR into
# ARCHIVE (.ncu-rep files left out; split into 15 MiB pieces ARCHIVE.aa, .ab, ... when larger, as the device
# tool brings back at most 16 MiB a file) and print each log's last line.
#   bash scripts/gpu_poll.sh SECONDS LOG_DIR EXPECTED ARCHIVE [DIR ...]
# Every poll packs what exists, so a machine lost later loses only the rest (H100 sessions 8 and 10 lost all).
# It returns as soon as the work is done, so polls issued back to back in one block of device calls (which the
# tool runs one after another, with no gap for the 30 s idle release) cost nothing once the work has ended.
set -u
seconds=$1 logs=$2 expected=$3 archive=$4
shift 4
done_lines() { cat "$logs"/*.log 2>/dev/null | grep -cE '(QUEUE|SCALE) DONE$'; }
deadline=$((SECONDS + seconds))
while [ "$(done_lines)" -lt "$expected" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 5; done
rm -f "$archive" "$archive".??
tar --exclude='*.ncu-rep' -czf "$archive" "$@" -C "$(dirname "$logs")" "$(basename "$logs")" 2>/dev/null
if [ -f "$archive" ] && [ "$(stat -c %s "$archive")" -gt $((15 * 1048576)) ]; then
  split -b 15M "$archive" "$archive". && rm "$archive"
fi
for log in "$logs"/*.log; do echo "$(basename "$log"): $(tail -1 "$log" | cut -c1-160)"; done
echo "$(done_lines) of $expected done at $(date -u +%H:%M:%S)"
