#!/usr/bin/env python3
"""Where the CPU goes while the issue path runs (`scripts/bench --profile`).

For each vusers level, one audited harness run (sync, the stack's three api
instances, vusers spread by the client) and, while it is measured:

1. a 20 s window without the profiler: the CPU time of every component
   (from /proc, as the harness's own process sampling counts it), the
   issues served (the api instances' `gate_duration_seconds_count`), and
   what the broker was asked (librdkafka's statistics as the instances and
   the worker export them: messages sent, produce and fetch requests);
   CPU per issue per component follows;
2. then 10 s of `perf record` (99 Hz, DWARF call graphs) on each component
   at once, folded into one flame graph per component (inferno).

Usage: profile_run.py OUT_DIR HARNESS LEVEL[,LEVEL...]

A level is VUSERS@one (the stack scaled to one api instance) or
VUSERS@three (to three); each instance runs its share of the cores' threads
(scripts/stack), and the stack is left with three.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

INSTANCES = ["http://127.0.0.1:8081", "http://127.0.0.1:8082", "http://127.0.0.1:8083"]
OPS = ["http://127.0.0.1:7081", "http://127.0.0.1:7082", "http://127.0.0.1:7083"]
WORKER_OPS = "http://127.0.0.1:" + os.environ.get("COUPON_WORKER_PORT", "9100")
STACK = Path(__file__).resolve().parent / "stack"
# /proc/<pid>/comm -> component (Apache Kafka is the JVM running kafka.Kafka).
# HAProxy is not on this path: the harness spreads vusers over the instances.
COMPONENTS = {
    "api": "api",
    "issuer-worker": "worker",
    "redis-server": "redis",
    "postgres": "postgresql",
    "ngrinder-equiva": "load client",
}
TICKS = os.sysconf("SC_CLK_TCK")
MEASURE_S = 20
PROFILE_S = 10


def pids_by_component():
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        name = COMPONENTS.get(comm)
        if comm == "java" and b"kafka.Kafka" in cmdline:
            name = "broker"
        if name:
            found.setdefault(name, []).append(int(entry))
    return found


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def redis_rewrites():
    """Redis's append-only file rewrites started, and whether one runs
    (`redis_rewrites` in scripts/lib.sh): a rewrite forks and writes the
    whole dataset, a load the run did not ask for. (0, 0) if the stack's
    Redis does not answer."""
    try:
        text = subprocess.run(
            ["bash", "-c", 'source "$1"; redis_rewrites', "bash", str(STACK.parent / "lib.sh")],
            capture_output=True, text=True, timeout=5,
        ).stdout
        started, running = text.split()
        return (int(started), int(running))
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return (0, 0)


def scrape(url):
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric_sum(text, name, labels=None):
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        if labels and not all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
            continue
        total += float(m.group(3))
    return total


def counters():
    """What the api instances and the worker have counted so far."""
    apis = [scrape(u) for u in OPS]
    worker = scrape(WORKER_OPS)
    return {
        "issues": sum(metric_sum(t, "gate_duration_seconds_count") for t in apis),
        "messages_sent": sum(metric_sum(t, "kafka_client_messages_sent_total") for t in apis),
        "produce_requests": sum(
            metric_sum(t, "kafka_broker_requests_total", {"type": "Produce"}) for t in apis
        ),
        "fetch_requests": metric_sum(worker, "kafka_broker_requests_total", {"type": "Fetch"}),
    }


def fold(data, out_svg, title):
    script = subprocess.run(
        ["perf", "script", "-i", str(data)], capture_output=True, check=False
    ).stdout
    folded = subprocess.run(
        ["inferno-collapse-perf"], input=script, capture_output=True, check=True
    ).stdout
    data.with_suffix(".folded").write_bytes(folded)
    if not folded.strip():
        return 0
    svg = subprocess.run(
        ["inferno-flamegraph", "--title", title, "--width", "1600", "--minwidth", "1"],
        input=folded,
        capture_output=True,
        check=True,
    ).stdout
    out_svg.write_bytes(svg)
    samples = sum(int(l.rsplit(" ", 1)[1]) for l in folded.decode().splitlines() if l.strip())
    return samples


def level(out, harness, vusers, spread):
    name = f"{vusers}-{spread}"
    urls = INSTANCES[:1] if spread == "one" else INSTANCES
    scale(len(urls))
    run_dir = out / f"run-{name}"
    run = subprocess.Popen(
        [harness, "run", "--archive", "--url", ",".join(urls), "--vusers", str(vusers),
         "--duration", str(MEASURE_S + PROFILE_S + 8), "--warmup", "5",
         "--label", f"profile-{vusers}", "--out", str(run_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(8)
    rewrites = redis_rewrites()
    pids = pids_by_component()
    before = {c: cpu_ticks(p) for c, p in pids.items()}
    counted = counters()
    started = time.monotonic()
    time.sleep(MEASURE_S)
    seconds = time.monotonic() - started
    after = {c: cpu_ticks(p) for c, p in pids.items()}
    counted = {k: v - counted[k] for k, v in counters().items()}

    records = {}
    for component, ps in pids.items():
        if component == "load client":
            continue
        data = out / f"{name}-{component}.data"
        records[component] = (data, subprocess.Popen(
            ["perf", "record", "-F", "99", "--call-graph", "dwarf,16384", "-q",
             "-p", ",".join(map(str, ps)), "-o", str(data), "--", "sleep", str(PROFILE_S)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
    for _, proc in records.values():
        proc.wait()
    rewrites_after = redis_rewrites()
    rewrote = bool(rewrites[1] or rewrites_after[1] or rewrites[0] != rewrites_after[0])
    for pid in pids.get("broker", []):
        # The JIT's symbols, for perf script (/tmp/perf-<pid>.map).
        subprocess.run(["jcmd", str(pid), "Compiler.perfmap"], capture_output=True, check=False)
    run.wait()
    summary = json.loads((run_dir / f"profile-{vusers}.json").read_text())
    audit = (summary.get("audit") or {}).get("passed")

    issues = counted["issues"]
    cpu_us = {
        c: (after[c] - before[c]) / TICKS * 1e6 / issues if issues else None for c in pids
    }
    samples = {}
    for component, (data, _) in records.items():
        samples[component] = fold(
            data, out / f"{name}-{component}.svg",
            f"{component}, sync, {vusers} vusers on {spread} instance(s) ({PROFILE_S} s, 99 Hz)",
        )
        data.unlink(missing_ok=True)
    return {
        "vusers": vusers,
        "instances": spread,
        "tps_run": summary["summary"]["tps"],
        "errors": summary["summary"]["errors"],
        "audit_passed": audit,
        "window_s": round(seconds, 1),
        "issues_in_window": issues,
        "tps_window": issues / seconds,
        "cpu_percent": {c: (after[c] - before[c]) / TICKS / seconds * 100 for c in pids},
        "cpu_us_per_issue": cpu_us,
        "messages_per_produce_request": (
            counted["messages_sent"] / counted["produce_requests"]
            if counted["produce_requests"] else None
        ),
        "produce_requests_per_s": counted["produce_requests"] / seconds,
        "fetch_requests_per_s": counted["fetch_requests"] / seconds,
        "profile_samples": samples,
        "redis_rewrote_its_aof": rewrote,
    }


def scale(instances):
    subprocess.run([str(STACK), "up", "--instances", str(instances)],
                   stdout=subprocess.DEVNULL, check=True)


def main():
    out, harness, levels = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for item in levels.split(","):
        vusers, spread = item.split("@")
        results.append(level(out, harness, int(vusers), spread))
    scale(len(INSTANCES))
    (out / "profile.json").write_text(json.dumps(results, indent=2))
    order = ["api", "broker", "redis", "postgresql", "worker", "load client"]
    print("vusers | instances | TPS (window) | audit | " + " | ".join(f"{c} µs/issue" for c in order)
          + " | msgs/produce req | produce req/s | fetch req/s")
    for r in results:
        cells = [f"{r['cpu_us_per_issue'].get(c) or 0:.0f}" for c in order]
        mpr = r["messages_per_produce_request"]
        audit = "passed" if r["audit_passed"] else "FAILED"
        print(f"{r['vusers']} | {r['instances']} | {r['tps_window']:.0f} | {audit} | " + " | ".join(cells)
              + (f" | {mpr:.1f}" if mpr else " | n/a")
              + f" | {r['produce_requests_per_s']:.0f} | {r['fetch_requests_per_s']:.0f}")
        print("   CPU, % of a core: "
              + ", ".join(f"{c} {p:.0f}" for c, p in sorted(r["cpu_percent"].items())))
        if r["redis_rewrote_its_aof"]:
            print("   Redis rewrote its append-only file during the window: not the engine's cost")


if __name__ == "__main__":
    main()
