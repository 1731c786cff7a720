#!/usr/bin/env bash
# Issues against the trivial endpoint (`GET /healthz`, the HTTP path alone),
# the same connections, side by side: the local stack's three api instances
# addressed directly (as scripts/bench does), 100 and 1,000 vusers,
# alternated, three rounds; the issue runs audited. Beside each run, how
# busy the machine was (/proc/stat, over the whole invocation: warm-up and
# audit included), so that a ratio between two saturated runs reads as the
# ratio of their costs per request.
#   trivial-ratio.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
three=http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
echo "Issue against trivial, same connections, $(date -u +%FT%TZ), $(nproc) cores, $(git rev-parse --short HEAD)"
echo "ngrinder-equivalent run --url <three instances> --vusers N --duration 10 --warmup 3, then --trivial or --release (audited)"
for r in 1 2 3; do
  for v in 100 1000; do
    for mode in trivial issue; do
      # An issue run releases its audited campaign; a trivial one has none.
      flag=(--release) && [ "$mode" = issue ] || flag=(--trivial)
      read -r b0 t0 < <(busy)
      target/release/ngrinder-equivalent run "${flag[@]}" --url "$three" --vusers "$v" \
        --duration 10 --warmup 3 --label run --out "/tmp/trivial-ratio-$r-$v-$mode" >/dev/null 2>&1 ||
        { echo "round $r, $v vusers, $mode: the run or its audit failed"; continue; }
      read -r b1 t1 < <(busy)
      python3 - "$r" "$v" "$mode" "/tmp/trivial-ratio-$r-$v-$mode/run.json" $((b1 - b0)) $((t1 - t0)) <<'PY'
import json, sys
r, v, mode, run, busy, total = sys.argv[1:]
s = json.load(open(run))
m = s["summary"]
audit = "" if mode == "trivial" else (", audit passed" if (s.get("audit") or {}).get("passed") else ", audit FAILED")
print(f"round {r}, {int(v):>5} vusers, {mode:>7}: {m['tps']:>9,.0f} TPS, p50 {m['p50_us'] / 1000:.2f} ms, "
      f"p99 {m['p99_us'] / 1000:.2f} ms, errors {m['errors']}, machine busy {100 * int(busy) / max(int(total), 1):.0f}%{audit}")
PY
    done
  done
done
