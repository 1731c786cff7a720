#!/usr/bin/env bash
# The end-to-end lag (request to committed row, the worker's
# worker_end_to_end_lag_seconds) at an open LAG_RATE (10,000) requests/s over the local
# stack's three instances, with the worker of each binary directory given,
# alternated, two rounds: the histogram read before and after each run,
# its p50 and p99 as the bucket edge the count reaches.
#   lag.sh DIR_A DIR_B   (each holding api and issuer-worker, as for scripts/bench --ab)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
scrape() {
  curl -s 127.0.0.1:9100/metrics | awk -F'[{}" ]' '/^worker_end_to_end_lag_seconds_bucket/ { for (i = 1; i <= NF; i++) if ($i == "le=") le = $(i + 1); print le, $NF }'
}
three=http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083
for r in 1 2; do
  for dir in "$@"; do
    COUPON_BIN_DIR="$dir" scripts/stack up --instances 3 >/dev/null
    sleep 2
    scrape >/tmp/lag-before
    target/release/ngrinder-equivalent run --release --url "$three" --rate "${LAG_RATE:-10000}" --max-connections 1000 \
      --duration 15 --warmup 3 --label lag --out "/tmp/lag-$r-$(basename "$dir")" >/dev/null 2>&1 ||
      { echo "round $r, $dir: the run or its audit failed"; continue; }
    sleep 3
    scrape >/tmp/lag-after
    tps=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(round(d['summary']['tps']))" "/tmp/lag-$r-$(basename "$dir")/lag.json" 2>/dev/null || echo "?")
    join <(sort /tmp/lag-before) <(sort /tmp/lag-after) | awk '{ d = $3 - $2; print ($1 == "+Inf" ? 1e9 : $1), d }' | sort -g |
      awk -v r="$r" -v dir="$(basename "$dir")" -v tps="$tps" '{ le[NR] = $1; c[NR] = $2 } END {
        n = c[NR]; p50 = p99 = "";
        for (i = 1; i <= NR; i++) { if (p50 == "" && c[i] >= 0.5 * n) p50 = le[i]; if (p99 == "" && c[i] >= 0.99 * n) p99 = le[i] }
        printf "round %s, %s: %s TPS, %d messages, lag p50 <= %s s, p99 <= %s s\n", r, dir, tps, n, p50, p99 }'
  done
done
COUPON_BIN_DIR= scripts/stack up --instances 3 >/dev/null
