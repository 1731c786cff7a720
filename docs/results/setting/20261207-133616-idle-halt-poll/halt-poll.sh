#!/usr/bin/env bash
# A request alone at an idle machine: one api instance of the local stack
# (scripts/stack up --instances 1), one connection at an open 200/s, with
# the guest kernel's halt polling off (this machine's setting: cpuidle
# haltpoll, guest_halt_poll_ns=0, every idle vCPU halts at once and its
# wake-up goes through the host) and at 200 µs, alternated, three rounds;
# the client's p50 and p99 and the means of the server's steps (its ops
# listener). Needs root; puts the setting back however it ends. A
# diagnosis of the machine, not a setting of the engine.
#   halt-poll.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
p=/sys/module/haltpoll/parameters
was_ns=$(cat $p/guest_halt_poll_ns) was_start=$(cat $p/guest_halt_poll_grow_start)
trap 'echo "$was_ns" >$p/guest_halt_poll_ns; echo "$was_start" >$p/guest_halt_poll_grow_start' EXIT
snap() {
  curl -fsS http://127.0.0.1:7081/metrics | awk '
    /^gate_duration_seconds_(sum|count)/ || /^produce_duration_seconds_(sum|count)/ ||
    (/^http_request_duration_seconds_(sum|count)/ && /issue/ && /status="202"/) {
      split($1, name, "{"); s[name[1]] += $2
    }
    END { for (k in s) print k, s[k] }'
}
echo "A request alone at an idle machine, halt polling off and on, $(date -u +%FT%TZ), $(nproc) cores, $(git rev-parse --short HEAD), $(uname -r)"
echo "ngrinder-equivalent run --release --url http://127.0.0.1:8081 --rate 200 --max-connections 1 --duration 10 --warmup 3 (audited)"
for r in 1 2 3; do
  for ns in 0 200000; do
    echo "$ns" >$p/guest_halt_poll_ns
    [ "$ns" = 0 ] || echo 50000 >$p/guest_halt_poll_grow_start
    a="$(snap)"
    target/release/ngrinder-equivalent run --release --url http://127.0.0.1:8081 --rate 200 --max-connections 1 \
      --duration 10 --warmup 3 --label run --out "/tmp/halt-poll-$r-$ns" >/dev/null 2>&1 ||
      { echo "round $r, $ns ns: the run or its audit failed"; continue; }
    python3 - "$r" "$ns" "/tmp/halt-poll-$r-$ns/run.json" "$a" "$(snap)" <<'PY'
import json, sys
r, ns, run, a, b = sys.argv[1:]
load = lambda t: {k: float(v) for k, v in (l.split() for l in t.splitlines() if l.strip())}
a, b = load(a), load(b)
def mean(step):
    n = b[f"{step}_count"] - a.get(f"{step}_count", 0)
    return (b[f"{step}_sum"] - a.get(f"{step}_sum", 0)) / n * 1e6
s = json.load(open(run))
m, audit = s["summary"], "passed" if (s.get("audit") or {}).get("passed") else "FAILED"
print(f"round {r}, halt poll {int(ns) // 1000:>3} µs: p50 {m['p50_us'] / 1000:.2f} ms, p99 {m['p99_us'] / 1000:.2f} ms, audit {audit}; "
      f"server {mean('http_request_duration_seconds'):.0f} µs: gate {mean('gate_duration_seconds'):.0f}, produce {mean('produce_duration_seconds'):.0f}")
PY
  done
done
