#!/usr/bin/env bash
# A request alone (one connection, one request in flight at a time) in the
# open model at three rates: one api instance of the local stack (scaled to
# one for the run, back to three after), 200, 500 and 1,000 sends a second,
# alternated, three rounds, every run audited; the client's p50 and p99
# (from each send's intended time) and the means of the server's steps (its
# ops listener). At 200/s the machine idles about 4 ms between requests, at
# 1,000/s well under one.
#   alone-by-rate.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
scripts/stack up --instances 1 >/dev/null
trap 'scripts/stack up --instances 3 >/dev/null' EXIT
snap() {
  curl -fsS http://127.0.0.1:7081/metrics | awk '
    /^gate_duration_seconds_(sum|count)/ || /^produce_duration_seconds_(sum|count)/ ||
    (/^http_request_duration_seconds_(sum|count)/ && /issue/ && /status="202"/) {
      split($1, name, "{"); s[name[1]] += $2
    }
    END { for (k in s) print k, s[k] }'
}
echo "A request alone by rate, one instance, $(date -u +%FT%TZ), $(nproc) cores, $(git rev-parse --short HEAD)"
echo "ngrinder-equivalent run --release --url http://127.0.0.1:8081 --rate R --max-connections 1 --duration 10 --warmup 3 (audited)"
for r in 1 2 3; do
  for rate in 200 500 1000; do
    a="$(snap)"
    target/release/ngrinder-equivalent run --release --url http://127.0.0.1:8081 --rate "$rate" --max-connections 1 \
      --duration 10 --warmup 3 --label run --out "/tmp/alone-by-rate-$r-$rate" >/dev/null 2>&1 ||
      { echo "round $r, $rate/s: the run or its audit failed"; continue; }
    python3 - "$r" "$rate" "/tmp/alone-by-rate-$r-$rate/run.json" "$a" "$(snap)" <<'PY'
import json, sys
r, rate, run, a, b = sys.argv[1:]
load = lambda t: {k: float(v) for k, v in (l.split() for l in t.splitlines() if l.strip())}
a, b = load(a), load(b)
def mean(step):
    n = b[f"{step}_count"] - a.get(f"{step}_count", 0)
    return (b[f"{step}_sum"] - a.get(f"{step}_sum", 0)) / n * 1e6
s = json.load(open(run))
m, audit = s["summary"], "passed" if (s.get("audit") or {}).get("passed") else "FAILED"
print(f"round {r}, {int(rate):>5}/s: {m['tps']:,.0f} TPS, p50 {m['p50_us'] / 1000:.2f} ms, p99 {m['p99_us'] / 1000:.2f} ms, audit {audit}; "
      f"server {mean('http_request_duration_seconds'):.0f} µs: gate {mean('gate_duration_seconds'):.0f}, produce {mean('produce_duration_seconds'):.0f}")
PY
  done
done
