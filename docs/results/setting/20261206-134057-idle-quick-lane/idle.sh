#!/usr/bin/env bash
# idle CPU and threads of the three api instances, quick_lane_depth 8 vs 0 (sync)
cd /work/main; source scripts/lib.sh
ticks() { local s=0 f p; for f in "$STATE_DIR"/api-*.pid; do p=$(cat "$f"); s=$((s + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $s; }
threads() { local f; for f in "$STATE_DIR"/api-*.pid; do awk '/^Threads/{printf " %s", $2}' /proc/$(cat "$f")/status; done; }
echo "idle api instances, sync, 3 instances, $(date -u +%FT%TZ), $(nproc) cores, $(git rev-parse --short HEAD) + the one-lane change"
for r in 1 2; do for d in 8 0; do
  for f in "$STATE_DIR"/api-*.pid; do kill "$(cat "$f")" 2>/dev/null || true; done; sleep 3
  APP_KAFKA__QUICK_LANE_DEPTH=$d scripts/stack up --instances 3 >/dev/null 2>&1
  sleep 15
  t0=$(ticks); sleep 60; t1=$(ticks)
  echo "round $r quick_lane_depth $d: three idle instances used $((t1 - t0)) ticks (10 ms) in 60 s; threads:$(threads)"
done; done
