#!/usr/bin/env python3
"""Static checks of the deployment files (no Docker engine or cluster here).

scripts/lint-deploy installs the tools and calls `check`; `rules` rewrites
what is derived from docker/prometheus/alerts.yml (see below).

  lint_deploy.py check --compose-schema F --kustomize B --kubeconform B
                       --hadolint B --kubernetes-validate B [--k8s-version V]
  lint_deploy.py rules [--write]

Checks, each a function below, every failure listed before the exit:
  compose      the compose-spec schema, `docker compose config` when the
               client has the plugin, our structure rules (healthchecks,
               dependencies, volumes, required secrets), and security:
               monitoring bound to loopback, limits, no-new-privileges,
               dropped capabilities, Redis (TLS, ACL user, default user off,
               maxmemory + noeviction, AOF), authenticated and encrypted
               dependencies, stop grace periods covering the drains;
  prometheus   promtool (config, rules), amtool, every metric a query names
               registered by the code, absolute runbook URLs into existing
               RUNBOOK sections, target-down and absent-metric alerts, the
               PrometheusRule equal to the rules;
  dockerfile   hadolint;
  haproxy      compose's and scripts/stack's configs pass `haproxy -c`, set
               X-Forwarded-For, have the timeouts and the per-source cap,
               check the ops port;
  kubernetes   every overlay rendered by kustomize, validated by kubeconform
               against Kubernetes' strict schemas and the pinned CRD schemas
               (docker/k8s/schemas), then the properties docs/DEPLOY.md
               promises (namespaces, restricted pods, probes and ports,
               settings names, NetworkPolicy flows, PDBs, autoscalers, image
               tags, Strimzi users and topics, the migration Job).
"""
import argparse
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import jsonschema
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NAMESPACE = "coupon-engine"
ALERTS = "docker/prometheus/alerts.yml"
PROMETHEUS_RULE = "docker/k8s/components/monitoring/prometheusrule.yaml"
RUNBOOK_BASE_FILE = "docker/prometheus/runbook-base-url"
DASHBOARD = "docker/grafana/dashboards/coupon-engine.json"
# Names the code reads that common/src/settings/ does not list as struct
# fields: the settings file's name.
EXTRA_SETTINGS = {"APP_CONFIG_FILE"}
SETTINGS_DIR = "common/src/settings"
ENGINE_COMPONENTS = {"api", "worker", "migrate"}


class Report:
    def __init__(self):
        self.failures = []

    def fail(self, msg):
        self.failures.append(msg)

    def check(self, cond, msg):
        if not cond:
            self.fail(msg)
        return cond


def log(msg):
    print(f"\033[1m[lint-deploy]\033[0m {msg}", file=sys.stderr)


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def settings_source():
    """Every file of the settings module, one after another."""
    folder = os.path.join(ROOT, SETTINGS_DIR)
    return "\n".join(read(os.path.join(SETTINGS_DIR, name))
                     for name in sorted(os.listdir(folder)) if name.endswith(".rs"))


def get(doc, path, default=None):
    for part in path.split("."):
        if isinstance(doc, dict):
            doc = doc.get(part)
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return default
        if doc is None:
            return default
    return doc


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --- settings: the names the code reads, and defaults -----------------------

def settings_names():
    """Every APP_* name the code reads: `issuer-worker settings --names` when
    a built binary is there, else derived from common/src/settings/ (each
    section's struct fields, nested structs as further levels)."""
    for target in (os.environ.get("CARGO_TARGET_DIR"), os.path.join(ROOT, "target")):
        binary = target and os.path.join(target, "debug", "issuer-worker")
        if binary and os.access(binary, os.X_OK):
            out = run([binary, "settings", "--names"])
            names = {l.strip() for l in out.stdout.splitlines() if l.strip().startswith("APP_")}
            if out.returncode == 0 and names:
                return names, f"`{binary} settings --names`"
    src = settings_source()
    structs = {}
    for name, body in re.findall(r"pub struct (\w+) \{(.*?)\n\}", src, re.S):
        # Fields `#[serde(skip)]` are not read from the environment.
        structs[name] = [(f, t) for skip, f, t in re.findall(
            r"((?:#\[serde\(skip\)\]\s*)?)pub (\w+): ([^,]+),", body) if not skip]

    names = set()

    def walk(prefix, struct):
        for field, ty in structs[struct]:
            inner = re.sub(r"^Option<(.*)>$", r"\1", ty.strip())
            path = f"{prefix}__{field.upper()}" if prefix else f"APP_{field.upper()}"
            if inner in structs:
                walk(path, inner)
            else:
                names.add(path)

    walk("", "Settings")
    return names | EXTRA_SETTINGS, "common/src/settings/ (no issuer-worker binary built)"


def settings_default(struct, field):
    """The default of `field` in `impl Default for <struct>`, as an int."""
    src = settings_source()
    m = re.search(r"impl Default for %s \{(.*?)\n\}" % struct, src, re.S)
    v = m and re.search(r"\b%s: ([0-9_]+)," % field, m.group(1))
    if not v:
        raise SystemExit(f"no default for {struct}.{field} in common/src/settings/")
    return int(v.group(1).replace("_", ""))


def sasl_mechanisms():
    src = settings_source()
    m = re.search(r"pub enum SaslMechanism \{(.*?)\}", src, re.S)
    return set(re.findall(r'rename = "([^"]+)"', m.group(1))) if m else set()


def api_drain_ms(drain_delay_ms):
    """How long an api may take from SIGTERM to exit (docs/ARCHITECTURE.md,
    Shutdown of an api instance)."""
    return (drain_delay_ms
            + settings_default("HttpSettings", "shutdown_timeout_secs") * 1000
            + settings_default("QueueSettings", "drain_timeout_ms")
            + settings_default("KafkaSettings", "delivery_timeout_ms"))


def worker_drain_ms():
    return settings_default("WorkerSettings", "shutdown_timeout_ms") + 5000


# --- Redis ACL: what the engine sends must be allowed ----------------------

def engine_redis_commands():
    """Every Redis command the engine sends, read from the code (commands
    built with `redis::cmd`, and those its Lua scripts call), with the ones
    the client library sends itself: (command, sample arguments)."""
    names = set()
    for base in ("common/src", "api/src", "issuer-worker/src"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, base)):
            for f in files:
                if f.endswith(".rs") and "testkit" not in dirpath:
                    names |= set(re.findall(r'cmd\("([A-Z]+)"\)', read(os.path.relpath(os.path.join(dirpath, f), ROOT))))
    for f in os.listdir(os.path.join(ROOT, "common/lua")):
        names |= set(re.findall(r"redis\.call\('([A-Z]+)'", read(f"common/lua/{f}")))
    samples = {
        "INFO": ["server"], "TIME": [], "PING": [],
        "PUBLISH": ["coupon:{c}:lock:released", "t"],
        "HSCAN": ["coupon:{c}:slots", "0"], "SSCAN": ["coupon:{c}:users", "0"],
        "EXPIRE": ["coupon:{c}:meta", "1"], "PEXPIRE": ["coupon:{c}:meta", "1"],
        "PEXPIREAT": ["idempotency:{d}", "1"], "SET": ["coupon:{c}:meta", "1"],
        "PTTL": ["coupon:{c}:meta"],
        "RENAME": ["coupon:{c}:rebuild:t", "coupon:{c}:users"],
    }
    commands = [(n, samples.get(n)) for n in sorted(names)]
    # Scripts, the lock's wake-ups, and what the client sends on connect.
    commands += [
        ("EVALSHA", ["0" * 40, "2", "coupon:{c}:meta", "idempotency:{d}"]),
        ("EVAL", ["return 1", "1", "coupon:{c}:meta"]),
        ("SCRIPT", ["LOAD", "return 1"]),
        ("SUBSCRIBE", ["coupon:{c}:lock:released"]),
        ("UNSUBSCRIBE", ["coupon:{c}:lock:released"]),
        ("HELLO", ["3"]),
        ("CLIENT", ["SETNAME", "x"]),
    ]
    return commands


def acl_rules(cmd, user):
    """The ACL rules of `--user <user> ...` in a redis-server command line."""
    rules, i = [], 0
    while i < len(cmd) - 1:
        if cmd[i] == "--user" and cmd[i + 1] == user:
            j = i + 2
            while j < len(cmd) and not cmd[j].startswith("--"):
                rules.append(cmd[j])
                j += 1
            return rules
        i += 1
    return rules


def check_redis_acl(r, where, cmd, user="coupon"):
    """Loads the engine user's ACL rules on a throwaway redis-server and asks
    (ACL DRYRUN) whether each command the engine sends is allowed."""
    rules = [re.sub(r"^>.*", ">lint-password", x) for x in acl_rules(cmd, user)]
    if not rules:
        r.fail(f"{where}: no ACL user {user}")
        return
    if not shutil.which("redis-server"):
        r.fail("redis-server is not installed: the ACL check needs one")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--user", user, *rules],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if run(["redis-cli", "-p", str(port), "PING"]).stdout.strip() == "PONG":
                break
            time.sleep(0.05)
        refused = []
        for name, args in engine_redis_commands():
            if args is None:
                # A key of the engine's, then as many arguments as the
                # command's arity asks (DRYRUN checks it first).
                info = run(["redis-cli", "-p", str(port), "COMMAND", "INFO", name]).stdout.split()
                n = abs(int(info[1])) if len(info) > 1 and re.fullmatch(r"-?\d+", info[1]) else 2
                args = ["coupon:{c}:meta"] + ["1"] * max(0, n - 2)
            out = run(["redis-cli", "-p", str(port), "ACL", "DRYRUN", user, name, *args]).stdout.strip()
            if out != "OK" and "not found" not in out:
                refused.append(f"{name}: {out}")
        r.check(not refused, f"{where}: Redis ACL user {user} may not run what the engine sends: {refused}")
    finally:
        server.terminate()
        server.wait()


# --- compose ----------------------------------------------------------------

def duration_ms(value):
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(value))
    if not m or not any(m.groups()):
        return None
    return int((int(m.group(1) or 0) * 60 + float(m.group(2) or 0)) * 1000)


def check_compose(r, schema_path, names):
    compose = yaml.safe_load(read("docker/compose.yaml"))
    text = read("docker/compose.yaml")
    env_example = dict(
        l.split("=", 1) for l in read("docker/.env.example").splitlines() if "=" in l and not l.startswith("#"))
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        out = run(["docker", "compose", "-f", "compose.yaml", "config", "-q"],
                  cwd=os.path.join(ROOT, "docker"), env={**os.environ, **env_example})
        r.check(out.returncode == 0, f"docker compose config: {out.stderr.strip()}")
    else:
        log("  (no docker compose plugin: schema and structure checks instead)")
    schema = json.load(open(schema_path))
    doc = {k: v for k, v in compose.items() if k != "name" and not k.startswith("x-")}
    for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
        r.fail(f"compose.yaml {list(e.absolute_path)}: {e.message}")

    services = compose["services"]
    one_off = {"migrate", "ngrinder", "certs", "kafka-setup"}
    for name, svc in services.items():
        r.check("image" in svc or "build" in svc, f"compose service {name}: no image or build")
        if name not in one_off:
            r.check("healthcheck" in svc, f"compose service {name}: no healthcheck")
        for dep, cond in (svc.get("depends_on") or {}).items():
            r.check(dep in services, f"compose service {name} depends on unknown {dep}")
            if isinstance(cond, dict) and cond.get("condition") == "service_healthy" and dep in services:
                r.check("healthcheck" in services[dep],
                        f"compose service {name} waits for {dep} to be healthy, which has no healthcheck")
        # Security of every service.
        limits = get(svc, "deploy.resources.limits") or {}
        r.check(limits.get("cpus") and limits.get("memory"),
                f"compose service {name}: no cpus and memory limits (deploy.resources.limits)")
        r.check("no-new-privileges:true" in (svc.get("security_opt") or []),
                f"compose service {name}: no security_opt no-new-privileges:true")
        r.check("ALL" in (svc.get("cap_drop") or []), f"compose service {name}: capabilities not dropped (cap_drop: [ALL])")
        added = set(svc.get("cap_add") or [])
        r.check(not added or (name == "certs" and added == {"CHOWN"}),
                f"compose service {name}: adds capabilities {sorted(added)}")
        r.check(not svc.get("privileged"), f"compose service {name}: privileged")
        env = svc.get("environment") or {}
        if isinstance(env, dict):
            for key in env:
                if key.startswith("APP_"):
                    r.check(key in names, f"compose service {name}: {key} is not a setting the code reads")
    for dep in ("redis", "postgres", "migrate"):
        r.check(dep in services["api"].get("depends_on", {}), f"the api does not wait for {dep}")
    for vol in (v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if isinstance(v, str)):
        if not vol.startswith("."):
            r.check(vol in (compose.get("volumes") or {}), f"compose volume {vol} not declared")
        else:
            r.check(os.path.exists(os.path.join(ROOT, "docker", vol)), f"compose mounts {vol}, which does not exist")
    for name, svc in services.items():
        if "kafka" not in str(svc.get("image", "")) or name == "kafka-setup":
            continue
        env = svc.get("environment") or {}
        log_dirs = env.get("KAFKA_LOG_DIRS")
        mounts = [v.split(":")[1] for v in svc.get("volumes", []) if isinstance(v, str) and ":" in v]
        r.check(log_dirs and any(log_dirs.startswith(m) for m in mounts),
                f"compose service {name}: KAFKA_LOG_DIRS ({log_dirs}) is not on a mounted volume")
    # Published ports: only HAProxy beyond loopback.
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            spec = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}"
            on_loopback = spec.startswith("127.0.0.1:") or spec.startswith("[::1]:")
            if name in ("prometheus", "alertmanager", "grafana"):
                r.check(on_loopback, f"compose service {name} publishes {spec} beyond 127.0.0.1")
            elif name != "haproxy":
                r.check(on_loopback, f"compose service {name} publishes {spec}: only HAProxy is public")
    graf = services.get("grafana", {}).get("environment") or {}
    r.check(str(graf.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() == "false",
            "Grafana allows anonymous access")
    r.check("GF_AUTH_ANONYMOUS_ORG_ROLE" not in graf or graf.get("GF_AUTH_ANONYMOUS_ORG_ROLE") != "Admin",
            "Grafana gives anonymous users Admin")
    r.check("${GRAFANA_ADMIN_PASSWORD:?" in str(graf.get("GF_SECURITY_ADMIN_PASSWORD", "")) or
            "GRAFANA_ADMIN_PASSWORD" in text, "Grafana's admin password does not come from docker/.env")
    # Redis: TLS, ACL, memory policy, persistence.
    redis = services.get("redis", {})
    cmd = [str(c) for c in (redis.get("command") or [])]
    joined = " ".join(cmd)

    def arg(flag):
        return cmd[cmd.index(flag) + 1] if flag in cmd and cmd.index(flag) + 1 < len(cmd) else None

    r.check(arg("--maxmemory") not in (None, "0"), "Redis has no maxmemory")
    r.check(arg("--maxmemory-policy") == "noeviction", "Redis's maxmemory-policy is not noeviction")
    r.check(arg("--appendonly") == "yes", "Redis has no append-only persistence")
    r.check(arg("--appendfsync") is not None, "Redis's appendfsync is not set")
    r.check(re.search(r"--user default off\b", joined), "Redis's default user is not disabled (--user default off)")
    r.check(re.search(r"--user \w+ on >\$\{REDIS_PASSWORD", joined),
            "Redis has no ACL user with the password of docker/.env")
    r.check(arg("--port") == "0" and arg("--tls-port"), "Redis accepts plaintext connections")
    check_redis_acl(r, "compose", cmd)
    # The services' connections: authenticated and encrypted.
    for name in ("api", "worker"):
        env = services.get(name, {}).get("environment") or {}
        r.check(env.get("APP_ENVIRONMENT") == "production", f"compose {name}: APP_ENVIRONMENT is not production")
        r.check(re.match(r"rediss://[^:@/]+:[^@]+@", str(env.get("APP_REDIS__URL", ""))),
                f"compose {name}: APP_REDIS__URL is not rediss://user:password@...")
        r.check(env.get("APP_KAFKA__SECURITY_PROTOCOL") == "sasl_ssl", f"compose {name}: Kafka is not sasl_ssl")
        r.check(env.get("APP_KAFKA__SASL_MECHANISM") in sasl_mechanisms(),
                f"compose {name}: APP_KAFKA__SASL_MECHANISM is not one of {sorted(sasl_mechanisms())}")
        r.check("sslmode=verify-full" in str(env.get("APP_DATABASE__URL", "")),
                f"compose {name}: PostgreSQL without sslmode=verify-full")
        r.check(str(env.get("APP_ALLOW_INSECURE_DEPENDENCIES", "false")).lower() != "true",
                f"compose {name}: APP_ALLOW_INSECURE_DEPENDENCIES is on")
        r.check(str(env.get("APP_DATABASE__URL", "")).startswith("postgres://coupon_app:"),
                f"compose {name}: connects to PostgreSQL as another role than the DML role coupon_app")
    menv = services.get("migrate", {}).get("environment") or {}
    r.check(menv.get("APP_DATABASE__SERVICE_ROLE") == "coupon_app", "compose migrate: APP_DATABASE__SERVICE_ROLE is not coupon_app")
    # Stop grace periods cover the drains.
    api_env = services.get("api", {}).get("environment") or {}
    need = api_drain_ms(int(api_env.get("APP_HTTP__DRAIN_DELAY_MS", settings_default("HttpSettings", "drain_delay_ms"))))
    got = duration_ms(services.get("api", {}).get("stop_grace_period", "10s"))
    r.check(got and got > need, f"compose api: stop_grace_period {got} ms does not cover its drain ({need} ms)")
    got = duration_ms(services.get("worker", {}).get("stop_grace_period", "10s"))
    r.check(got and got >= worker_drain_ms(),
            f"compose worker: stop_grace_period {got} ms does not cover its drain ({worker_drain_ms()} ms)")
    # Secrets come from docker/.env: compose refuses to start without each.
    for var in ("ADMIN_TOKEN", "JWT_SECRET", "POSTGRES_PASSWORD", "PG_SERVICE_PASSWORD", "REDIS_PASSWORD",
                "KAFKA_ADMIN_PASSWORD", "KAFKA_API_PASSWORD", "KAFKA_WORKER_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        r.check("${" + var + ":?" in text, f"compose must refuse to start without {var}")
        r.check(var in env_example, f"docker/.env.example does not list {var}")
    r.check("REDIS_APPENDFSYNC" in env_example, "docker/.env.example does not list REDIS_APPENDFSYNC")
    ignored = [l.strip() for l in read(".dockerignore").splitlines() if l.strip() and not l.startswith("#")]
    for must in ("target/", ".git/", "docker/.env"):
        r.check(must in ignored, f".dockerignore does not keep {must} out of the build context")
    r.check(read("docker/postgres/init/10-roles.sh") == read("docker/k8s/overlays/dev/postgres-roles.sh"),
            "docker/postgres/init/10-roles.sh and docker/k8s/overlays/dev/postgres-roles.sh differ")


# --- Prometheus, Alertmanager, the dashboard ----------------------------------

PROMQL_WORDS = {
    "sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "max", "min", "avg",
    "clamp_min", "clamp_max", "deriv", "and", "or", "unless", "on", "ignoring", "le", "offset",
    "count", "abs", "delta", "topk", "bottomk", "label_replace", "time", "vector", "scalar", "absent",
    "absent_over_time", "group_left", "group_right",
}
# Series Prometheus makes itself.
BUILTIN_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def registered_metrics(r):
    names = set()
    for path in ["api/src/metrics.rs", "issuer-worker/src/metrics.rs"]:
        names |= set(re.findall(r'&r,\s*"([a-z_][a-z0-9_]*)"', read(path)))
    r.check(len(names) >= 20, f"only {len(names)} metric names found in the code: the pattern is stale")
    return names


def metrics_in(expr):
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    names = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"e\d*", n)}


def check_expr(r, registered, where, expr):
    for name in metrics_in(expr):
        base = next((name[: -len(s)] for s in ("_bucket", "_sum", "_count")
                     if name.endswith(s) and name[: -len(s)] in registered), name)
        r.check(base in registered or base in BUILTIN_SERIES, f"{where}: {name} is not a metric the code exports")


def runbook_base():
    return read(RUNBOOK_BASE_FILE).strip()


def runbook_sections():
    return {
        re.sub(r"[^\w\- ]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in read("docs/RUNBOOK.md").splitlines()
        if line.startswith("## ")
    }


def prometheus_rule_text():
    """The PrometheusRule: alerts.yml's groups, in the operator's resource."""
    rules = yaml.safe_load(read(ALERTS))
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "coupon-engine", "labels": {"app.kubernetes.io/name": "coupon-engine"}},
        "spec": {"groups": rules["groups"]},
    }
    head = ("# Generated from docker/prometheus/alerts.yml by `scripts/lint_deploy.py rules --write`;\n"
            "# scripts/lint-deploy fails when the two differ. Edit alerts.yml, not this.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=100)


def rules_with_base(text, base):
    return re.sub(r"(runbook_url: )\S*#", lambda m: m.group(1) + base + "#", text)


def check_prometheus(r, registered):
    tmp = tempfile.mkdtemp()
    try:
        cfg = read("docker/prometheus/prometheus.yml").replace(
            "/etc/prometheus/alerts.yml", os.path.join(ROOT, ALERTS))
        open(os.path.join(tmp, "prometheus.yml"), "w").write(cfg)
        for cmd in (["promtool", "check", "config", os.path.join(tmp, "prometheus.yml")],
                    ["promtool", "check", "rules", os.path.join(ROOT, ALERTS)],
                    ["amtool", "check-config", os.path.join(ROOT, "docker/alertmanager/alertmanager.yml")]):
            out = run(cmd)
            r.check(out.returncode == 0, f"{' '.join(cmd[:3])}: {out.stdout.strip()} {out.stderr.strip()}")
    finally:
        shutil.rmtree(tmp)
    dashboard = json.loads(read(DASHBOARD))
    panels = dashboard.get("panels", [])
    r.check(panels, "the dashboard has no panels")
    for p in panels:
        for t in p.get("targets", []):
            check_expr(r, registered, f"dashboard panel {p.get('title')!r}", t["expr"])
    base = runbook_base()
    r.check(re.match(r"https://[^/\s]+/\S+$", base), f"{RUNBOOK_BASE_FILE}: {base!r} is not an absolute https URL")
    sections = runbook_sections()
    rules = yaml.safe_load(read(ALERTS))
    exprs = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            exprs.append(rule["expr"])
            check_expr(r, registered, f"alert {rule.get('alert')}", rule["expr"])
            url = rule.get("annotations", {}).get("runbook_url", "")
            if r.check(url.startswith(base + "#"), f"alert {rule.get('alert')}: runbook_url {url!r} is not {base}#<section>"):
                r.check(url.split("#", 1)[1] in sections,
                        f"alert {rule.get('alert')}: docs/RUNBOOK.md has no section #{url.split('#', 1)[1]}")
    r.check(any(re.search(r"\bup\b(\{[^}]*\})?\s*==\s*0", e) for e in exprs), "no alert on a scrape target down (up == 0)")
    r.check(any("absent(" in e for e in exprs), "no alert on a key metric absent (absent(...))")
    r.check(read(PROMETHEUS_RULE) == prometheus_rule_text(),
            f"{PROMETHEUS_RULE} differs from {ALERTS}: run scripts/lint_deploy.py rules --write")


def check_dockerfile(r, hadolint):
    out = run([hadolint, os.path.join(ROOT, "docker/Dockerfile")])
    r.check(out.returncode == 0, f"hadolint: {out.stdout.strip()} {out.stderr.strip()}")


# --- HAProxy ----------------------------------------------------------------

def stack_haproxy_config(tmp):
    """scripts/stack's generated config, made by its own function."""
    state = os.path.join(tmp, "stack")
    os.makedirs(state)
    script = (
        f'source "{ROOT}/scripts/lib.sh"; STATE_DIR="{state}"; LB_PORT=8080; API_BASE_PORT=8081; '
        f'eval "$(sed -n \'/^write_haproxy_config()/,/^}}/p\' "{ROOT}/scripts/stack")"; '
        'write_haproxy_config 3'
    )
    run(["bash", "-c", script])
    path = os.path.join(state, "haproxy.cfg")
    return path if os.path.exists(path) else None


def check_haproxy(r):
    tmp = tempfile.mkdtemp()
    try:
        configs = {"docker/haproxy/haproxy.cfg": os.path.join(ROOT, "docker/haproxy/haproxy.cfg"),
                   "scripts/stack's config": stack_haproxy_config(tmp)}
        for label, path in configs.items():
            if not r.check(path, f"{label}: could not be generated"):
                continue
            out = run(["haproxy", "-c", "-q", "-f", path])
            r.check(out.returncode == 0, f"{label}: haproxy -c: {out.stdout.strip()} {out.stderr.strip()}")
            text = open(path).read()
            r.check("http-request set-header X-Forwarded-For %[src]" in text,
                    f"{label}: X-Forwarded-For is not set from the source address")
            r.check(not re.search(r"^\s*option forwardfor", text, re.M),
                    f"{label}: option forwardfor appends to a client's X-Forwarded-For")
            for timeout in ("http-request", "http-keep-alive", "client"):
                r.check(re.search(rf"^\s*timeout {timeout} \d", text, re.M), f"{label}: no timeout {timeout}")
            r.check(re.search(r"store conn_cur", text) and re.search(r"reject if \{ sc0_conn_cur gt \S+ \}", text),
                    f"{label}: no per-source connection limit")
            r.check(re.search(r"option httpchk GET /readyz", text), f"{label}: checks are not on /readyz")
            ports = re.findall(r"\bcheck port (\d+)", text)
            r.check(ports, f"{label}: health checks are not on the ops port (check port <ops>)")
            if label.startswith("docker/"):
                r.check(ports == ["9000"], f"{label}: checks on port {ports}, not the ops port 9000")
            else:
                r.check(ports == ["7081", "7082", "7083"],
                        f"{label}: checks on ports {ports}, not each instance's ops port (7080 + i)")
    finally:
        shutil.rmtree(tmp)


# --- Kubernetes -----------------------------------------------------------

def render_overlays(r, kustomize, tmp):
    """Each overlay rendered, from a copy of docker/ (the dev overlay's
    secrets.env is made there, as a user makes theirs)."""
    src = os.path.join(tmp, "docker")
    shutil.copytree(os.path.join(ROOT, "docker"), src, ignore=shutil.ignore_patterns("secrets.env", ".env"))
    with open(os.path.join(src, "k8s/overlays/dev/secrets.env"), "w") as f:
        for key in ("APP_AUTH__ADMIN_TOKEN", "APP_AUTH__JWT_SECRET", "POSTGRES_PASSWORD",
                    "PG_SERVICE_PASSWORD", "REDIS_PASSWORD"):
            f.write(f"{key}={os.urandom(32).hex()}\n")
    rendered = {}
    for overlay in sorted(glob.glob(os.path.join(src, "k8s/overlays/*/"))):
        name = os.path.basename(overlay.rstrip("/"))
        out = run([kustomize, "build", overlay])
        if not r.check(out.returncode == 0, f"kustomize build overlays/{name}: {out.stderr.strip()}"):
            continue
        path = os.path.join(tmp, f"{name}.yaml")
        open(path, "w").write(out.stdout)
        rendered[name] = (path, [d for d in yaml.safe_load_all(out.stdout) if d])
    r.check({"dev", "production"} <= set(rendered), f"overlays rendered: {sorted(rendered)}")
    return rendered


def is_custom(doc):
    group = doc.get("apiVersion", "").rpartition("/")[0]
    return "." in group and not group.endswith("k8s.io")


def validate_schemas(r, args, path, name, docs):
    """Kubernetes' own kinds: kubernetes-validate's strict schemas (its
    schemas refer to a shared definitions file kubeconform's loader does not
    follow). The custom resources: kubeconform, strict, against the pinned
    CRD schemas of docker/k8s/schemas; a kind without a schema fails."""
    base, _ = os.path.splitext(path)
    builtin = [d for d in docs if not is_custom(d)]
    custom = [d for d in docs if is_custom(d)]
    summary = []
    if builtin:
        open(base + "-builtin.yaml", "w").write(yaml.safe_dump_all(builtin))
        res = run([args.kubernetes_validate, "--strict", "--no-warn", "--quiet", "-k", args.k8s_version,
                   base + "-builtin.yaml"])
        r.check(res.returncode == 0, f"kubernetes-validate overlays/{name}:\n{res.stdout.strip()}\n{res.stderr.strip()}")
        summary.append(f"{len(builtin)} Kubernetes objects valid" if res.returncode == 0 else "Kubernetes objects INVALID")
    if custom:
        open(base + "-custom.yaml", "w").write(yaml.safe_dump_all(custom))
        res = run([args.kubeconform, "-strict", "-summary",
                   "-schema-location", os.path.join(ROOT, "docker/k8s/schemas",
                                                    "{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"),
                   base + "-custom.yaml"])
        r.check(res.returncode == 0, f"kubeconform overlays/{name}:\n{res.stdout.strip()}\n{res.stderr.strip()}")
        summary.append(f"custom resources: {res.stdout.strip().splitlines()[-1] if res.stdout.strip() else '?'}")
    return "; ".join(summary)


POD_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def check_pods(r, where, docs, names):
    configmaps = {get(d, "metadata.name"): d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    secrets = {get(d, "metadata.name"): d for d in docs if d["kind"] == "Secret"}
    for d in docs:
        if d["kind"] not in POD_KINDS:
            continue
        obj = f"{where}: {d['kind']} {get(d, 'metadata.name')}"
        spec = get(d, "spec.template.spec") or {}
        labels = get(d, "spec.template.metadata.labels") or {}
        psc = spec.get("securityContext") or {}
        r.check(spec.get("automountServiceAccountToken") is False, f"{obj}: automountServiceAccountToken is not false")
        r.check(psc.get("runAsNonRoot") is True, f"{obj}: the pod does not set runAsNonRoot: true")
        r.check(not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"),
                f"{obj}: shares the host's namespaces")
        if d["kind"] != "Job":
            for k, v in (get(d, "spec.selector.matchLabels") or {}).items():
                r.check(labels.get(k) == v, f"{obj}: selector {k}={v} does not match the template's labels")
        r.check(not spec.get("initContainers") or d["kind"] != "Deployment",
                f"{obj}: init containers (the migration is a Job)")
        for vol in spec.get("volumes") or []:
            r.check(not vol.get("hostPath"), f"{obj}: hostPath volume {vol.get('name')}")
        engine = labels.get("app.kubernetes.io/name") == "coupon-engine"
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            cobj = f"{obj} container {c.get('name')}"
            sc = c.get("securityContext") or {}
            seccomp = get(sc, "seccompProfile.type") or get(psc, "seccompProfile.type")
            r.check(seccomp in ("RuntimeDefault", "Localhost"), f"{cobj}: no seccompProfile RuntimeDefault")
            r.check(sc.get("allowPrivilegeEscalation") is False, f"{cobj}: allowPrivilegeEscalation is not false")
            r.check("ALL" in (get(sc, "capabilities.drop") or []), f"{cobj}: capabilities not dropped (drop: [ALL])")
            r.check(set(get(sc, "capabilities.add") or []) <= {"NET_BIND_SERVICE"}, f"{cobj}: adds capabilities")
            r.check(not sc.get("privileged"), f"{cobj}: privileged")
            r.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True and sc.get("runAsUser", psc.get("runAsUser", 1)) != 0,
                    f"{cobj}: may run as root")
            r.check(get(c, "resources.limits.memory") and get(c, "resources.limits.cpu"),
                    f"{cobj}: no cpu and memory limits")
            image = c.get("image", "")
            tag = image.rsplit("/", 1)[-1].partition(":")[2] if "@" not in image else "digest"
            r.check(tag and tag != "latest", f"{cobj}: image {image!r} has no fixed tag")
            if engine:
                r.check(sc.get("readOnlyRootFilesystem") is True, f"{cobj}: the root file system is writable")
                # Settings: every APP_* name, from env and from the ConfigMaps
                # and Secrets it loads, is one the code reads.
                env_names = {e["name"] for e in c.get("env") or []}
                for src in c.get("envFrom") or []:
                    if "configMapRef" in src:
                        cm = src["configMapRef"]["name"]
                        if r.check(cm in configmaps, f"{cobj}: envFrom ConfigMap {cm} is not in the overlay"):
                            env_names |= set(configmaps[cm])
                    if "secretRef" in src and src["secretRef"]["name"] in secrets:
                        s = secrets[src["secretRef"]["name"]]
                        env_names |= set((s.get("data") or {})) | set((s.get("stringData") or {}))
                for n in sorted(env_names):
                    if n.startswith("APP_"):
                        r.check(n in names, f"{cobj}: {n} is not a setting the code reads")


def pod_env(docs, d, container):
    """A container's settings: its ConfigMaps' data and its own env values."""
    cms = {get(x, "metadata.name"): x.get("data") or {} for x in docs if x["kind"] == "ConfigMap"}
    env = {}
    for src in container.get("envFrom") or []:
        if "configMapRef" in src:
            env.update(cms.get(src["configMapRef"]["name"], {}))
    for e in container.get("env") or []:
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


def find(docs, kind, name=None, component=None):
    for d in docs:
        if d["kind"] != kind:
            continue
        if name and get(d, "metadata.name") != name:
            continue
        if component and get(d, "metadata.labels", {}).get("app.kubernetes.io/component") != component:
            continue
        return d
    return None


def workload_flows(docs, labels):
    """The ports a pod with `labels` may receive on and send to."""
    ingress, egress, isolated = set(), set(), set()
    for p in docs:
        if p["kind"] != "NetworkPolicy" or not selects(get(p, "spec.podSelector") or {}, labels):
            continue
        types = get(p, "spec.policyTypes") or []
        isolated |= set(types)
        for rule in get(p, "spec.ingress") or []:
            for port in rule.get("ports") or [{"port": "*"}]:
                ingress.add(port.get("port"))
        for rule in get(p, "spec.egress") or []:
            for port in rule.get("ports") or [{"port": "*"}]:
                egress.add(port.get("port"))
    return ingress, egress, isolated


def check_kubernetes_common(r, name, docs, names, registered):
    where = f"overlays/{name}"
    for d in docs:
        if d["kind"] == "Namespace":
            r.check(get(d, "metadata.labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted",
                    f"{where}: Namespace {get(d, 'metadata.name')} does not enforce restricted Pod Security")
        else:
            r.check(get(d, "metadata.namespace") == NAMESPACE,
                    f"{where}: {d['kind']} {get(d, 'metadata.name')} is not in namespace {NAMESPACE}")
    check_pods(r, where, docs, names)
    # The api: ports from the settings, probes on the ops port.
    cms = {}
    for d in docs:
        if d["kind"] == "ConfigMap":
            cms.update(d.get("data") or {})
    api = find(docs, "Deployment", "coupon-api")
    worker = find(docs, "Deployment", "coupon-worker")
    if r.check(api, f"{where}: no coupon-api Deployment"):
        c = get(api, "spec.template.spec.containers")[0]
        env = pod_env(docs, api, c)
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        r.check(str(ports.get("http")) == str(env.get("APP_HTTP__PORT")),
                f"{where}: the api's http port {ports.get('http')} is not APP_HTTP__PORT {env.get('APP_HTTP__PORT')}")
        r.check(str(ports.get("ops")) == str(env.get("APP_HTTP__OPS_PORT")),
                f"{where}: the api's ops port {ports.get('ops')} is not APP_HTTP__OPS_PORT {env.get('APP_HTTP__OPS_PORT')}")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
            r.check(get(c, f"{probe}.httpGet.path") == path and get(c, f"{probe}.httpGet.port") in ("ops", ports.get("ops")),
                    f"{where}: the api's {probe} is not {path} on the ops port")
        grace = get(api, "spec.template.spec.terminationGracePeriodSeconds", 30) * 1000
        need = api_drain_ms(int(env.get("APP_HTTP__DRAIN_DELAY_MS", 0)))
        r.check(grace > need, f"{where}: the api's terminationGracePeriodSeconds ({grace} ms) does not cover its drain ({need} ms)")
    if r.check(worker, f"{where}: no coupon-worker Deployment"):
        c = get(worker, "spec.template.spec.containers")[0]
        env = pod_env(docs, worker, c)
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        r.check(str(ports.get("metrics")) == str(env.get("APP_WORKER__HTTP_PORT")) == "9100",
                f"{where}: the worker's metrics port {ports.get('metrics')} is not APP_WORKER__HTTP_PORT (9100)")
        for probe in ("livenessProbe", "readinessProbe"):
            r.check(get(c, f"{probe}.httpGet.path") == "/healthz" and get(c, f"{probe}.httpGet.port") in ("metrics", 9100),
                    f"{where}: the worker's {probe} is not /healthz on 9100")
        grace = get(worker, "spec.template.spec.terminationGracePeriodSeconds", 30) * 1000
        r.check(grace >= worker_drain_ms(), f"{where}: the worker's terminationGracePeriodSeconds does not cover its drain")
    # The Service the ingress reaches: the public port only.
    svc = find(docs, "Service", "coupon-api")
    if r.check(svc, f"{where}: no coupon-api Service"):
        r.check([p.get("targetPort") for p in get(svc, "spec.ports")] == ["http"],
                f"{where}: Service coupon-api exposes more than the public port")
    # The migration Job, and what it needs in the first apply.
    job = find(docs, "Job", "coupon-migrate")
    if r.check(job, f"{where}: no coupon-migrate Job"):
        c = get(job, "spec.template.spec.containers")[0]
        r.check(c.get("args") == ["migrate"], f"{where}: the Job does not run migrate")
        r.check(any(re.fullmatch(r"coupon-engine-migrate(-[a-z0-9]{10})?", get(s, "secretRef.name", ""))
                    for s in c.get("envFrom") or []),
                f"{where}: the migration Job does not connect as the owner role (Secret coupon-engine-migrate)")
        r.check(any(get(s, "configMapRef.name") == "coupon-engine-runtime" for s in c.get("envFrom") or []) is False,
                f"{where}: the migration Job loads the services' runtime settings")
        r.check(cms.get("APP_DATABASE__SERVICE_ROLE"), f"{where}: no APP_DATABASE__SERVICE_ROLE for the migration")
    prepare = {(d["kind"], get(d, "metadata.name")) for d in docs
               if get(d, "metadata.labels", {}).get("coupon-engine/stage") == "prepare"}
    for needed in (("Namespace", NAMESPACE), ("ConfigMap", "coupon-engine"), ("ServiceAccount", "coupon-migrate"),
                   ("Job", "coupon-migrate"), ("NetworkPolicy", "default-deny"), ("NetworkPolicy", "dns-egress"),
                   ("NetworkPolicy", "coupon-migrate-egress")):
        r.check(needed in prepare, f"{where}: {needed[0]} {needed[1]} is not labelled coupon-engine/stage=prepare")
    # Disruption budgets.
    for comp in ("api", "worker"):
        labels = {"app.kubernetes.io/name": "coupon-engine", "app.kubernetes.io/component": comp}
        r.check(any(d["kind"] == "PodDisruptionBudget" and selects(get(d, "spec.selector"), labels) for d in docs),
                f"{where}: no PodDisruptionBudget for the {comp}")
    # Network: default deny, then each workload's flows.
    r.check(any(d["kind"] == "NetworkPolicy" and get(d, "spec.podSelector") == {} and
                set(get(d, "spec.policyTypes") or []) == {"Ingress", "Egress"} and
                not get(d, "spec.ingress") and not get(d, "spec.egress") for d in docs),
            f"{where}: no default-deny NetworkPolicy")
    for d in docs:
        if d["kind"] not in POD_KINDS:
            continue
        labels = get(d, "spec.template.metadata.labels") or {}
        ingress, egress, isolated = workload_flows(docs, labels)
        obj = f"{where}: {d['kind']} {get(d, 'metadata.name')}"
        r.check(isolated == {"Ingress", "Egress"}, f"{obj}: not isolated by NetworkPolicies ({sorted(isolated)})")
        r.check("*" not in ingress and "*" not in egress, f"{obj}: a NetworkPolicy allows every port")
        r.check(53 in egress, f"{obj}: no DNS egress")
        comp = labels.get("app.kubernetes.io/component")
        if labels.get("app.kubernetes.io/name") == "coupon-engine":
            expected_in = {"api": {8080, 9000}, "worker": {9100}, "migrate": set()}[comp]
            r.check(ingress == expected_in, f"{obj}: ingress ports {sorted(ingress)}, expected {sorted(expected_in)}")
            if comp in ("api", "worker"):
                r.check(len(egress - {53}) >= 3, f"{obj}: egress to {sorted(egress - {53})}: not Redis, Kafka and PostgreSQL")
    # Ops port and metrics: Prometheus only.
    for p in docs:
        if p["kind"] != "NetworkPolicy":
            continue
        for rule in get(p, "spec.ingress") or []:
            ports = {x.get("port") for x in rule.get("ports") or []}
            if ports & {9000, 9100}:
                r.check(all(get(peer, "podSelector.matchLabels", {}).get("app.kubernetes.io/name") == "prometheus"
                            for peer in rule.get("from") or [{}]),
                        f"{where}: NetworkPolicy {get(p, 'metadata.name')} opens the ops or metrics port beyond Prometheus")
    # Something scales the api, and only one thing.
    scalers = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler" and get(d, "spec.scaleTargetRef.name") == "coupon-api"]
    scalers += [d for d in docs if d["kind"] == "ScaledObject" and get(d, "spec.scaleTargetRef.name") == "coupon-api"]
    r.check(len(scalers) == 1, f"{where}: {len(scalers)} autoscalers for coupon-api (one is needed)")
    for so in (d for d in docs if d["kind"] == "ScaledObject"):
        for t in get(so, "spec.triggers") or []:
            if t.get("type") == "prometheus":
                check_expr(r, registered, f"{where}: ScaledObject {get(so, 'metadata.name')}", get(t, "metadata.query", ""))
            ref = get(t, "authenticationRef.name")
            if ref:
                r.check(find(docs, "TriggerAuthentication", ref), f"{where}: TriggerAuthentication {ref} is not in the overlay")


def check_production(r, docs, names):
    where = "overlays/production"
    cms = {}
    for d in docs:
        if d["kind"] == "ConfigMap" and get(d, "metadata.name", "").startswith("coupon-engine"):
            cms.update(d.get("data") or {})
    r.check(cms.get("APP_KAFKA__CREATE_TOPICS") == "false", f"{where}: the migration would create topics (APP_KAFKA__CREATE_TOPICS)")
    r.check(cms.get("APP_KAFKA__SECURITY_PROTOCOL") == "sasl_ssl", f"{where}: Kafka is not sasl_ssl")
    r.check(cms.get("APP_KAFKA__SASL_MECHANISM") in sasl_mechanisms(),
            f"{where}: APP_KAFKA__SASL_MECHANISM {cms.get('APP_KAFKA__SASL_MECHANISM')!r} is not one of {sorted(sasl_mechanisms())}")
    r.check(cms.get("APP_ENVIRONMENT") == "production", f"{where}: APP_ENVIRONMENT is not production")
    r.check(not any(d["kind"] == "Secret" for d in docs), f"{where}: renders a Secret (secrets come from the secret store)")
    r.check(not any(d["kind"] == "HorizontalPodAutoscaler" for d in docs),
            f"{where}: a CPU HPA beside KEDA's ScaledObjects")
    # Topics.
    topics = {get(d, "spec.topicName"): d for d in docs if d["kind"] == "KafkaTopic"}
    r.check(get(topics.get("coupon.issue.v1", {}), "spec.partitions") == 12, f"{where}: coupon.issue.v1 has not 12 partitions")
    r.check("coupon.issue.v1.dlq" in topics, f"{where}: no KafkaTopic coupon.issue.v1.dlq")
    clusters = {get(d, "metadata.labels", {}).get("strimzi.io/cluster") for d in docs if d["kind"] in ("KafkaTopic", "KafkaUser")}
    r.check(len(clusters) == 1 and None not in clusters, f"{where}: Strimzi resources name clusters {clusters}")
    cluster = next(iter(clusters)) if clusters else None
    # Users: exactly these rights.
    want = {
        "coupon-api": {("topic", "coupon.issue.v1", "Write"), ("topic", "coupon.issue.v1", "Describe")},
        "coupon-worker": {("topic", "coupon.issue.v1", "Read"), ("topic", "coupon.issue.v1", "Describe"),
                          ("group", "coupon-issuer", "Read"), ("group", "coupon-issuer", "Describe"),
                          ("topic", "coupon.issue.v1.dlq", "Write"), ("topic", "coupon.issue.v1.dlq", "Describe")},
        "coupon-ops": {("topic", "coupon.issue.v1.dlq", "Read"), ("topic", "coupon.issue.v1.dlq", "Describe"),
                       ("group", "coupon-redrive", "Read"), ("group", "coupon-redrive", "Describe"),
                       ("topic", "coupon.issue.v1", "Write"), ("topic", "coupon.issue.v1", "Describe")},
    }
    users = {get(d, "metadata.name"): d for d in docs if d["kind"] == "KafkaUser"}
    for user, rights in want.items():
        d = users.get(user)
        if not r.check(d, f"{where}: no KafkaUser {user}"):
            continue
        r.check(get(d, "spec.authentication.type") == "scram-sha-512", f"{where}: KafkaUser {user} is not SCRAM-SHA-512")
        got = {(get(a, "resource.type"), get(a, "resource.name"), op)
               for a in get(d, "spec.authorization.acls") or [] for op in a.get("operations") or []}
        r.check(got == rights, f"{where}: KafkaUser {user} may {sorted(got - rights)} and not {sorted(rights - got)}")
    # The api and the worker: their user, its password, the cluster CA.
    ca_secret = f"{cluster}-cluster-ca-cert"
    for dep, user in (("coupon-api", "coupon-api"), ("coupon-worker", "coupon-worker")):
        d = find(docs, "Deployment", dep)
        if not d:
            continue
        c = get(d, "spec.template.spec.containers")[0]
        env = {e["name"]: e for e in c.get("env") or []}
        r.check(get(env.get("APP_KAFKA__SASL_USERNAME", {}), "value") == user, f"{where}: {dep} is not Kafka user {user}")
        r.check(get(env.get("APP_KAFKA__SASL_PASSWORD", {}), "valueFrom.secretKeyRef") == {"name": user, "key": "password"},
                f"{where}: {dep}'s APP_KAFKA__SASL_PASSWORD is not key `password` of the Secret {user}")
        ca = cms.get("APP_KAFKA__SSL_CA_LOCATION", "")
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts") or []}
        vols = {v["name"]: v for v in get(d, "spec.template.spec.volumes") or []}
        ok = any(ca == f"{mounts[n].rstrip('/')}/{item['path']}" and get(vols[n], "secret.secretName") == ca_secret and
                 item["key"] == "ca.crt"
                 for n in mounts if n in vols for item in get(vols[n], "secret.items") or [])
        r.check(ok, f"{where}: {dep}: APP_KAFKA__SSL_CA_LOCATION ({ca}) is not key ca.crt of Secret {ca_secret}, mounted")
    # KEDA: the worker on lag with SASL_SSL, the api on the request rate.
    worker_so = find(docs, "ScaledObject", "coupon-worker")
    if r.check(worker_so, f"{where}: no ScaledObject for the worker"):
        t = (get(worker_so, "spec.triggers") or [{}])[0]
        r.check(t.get("type") == "kafka" and get(t, "metadata.consumerGroup") == "coupon-issuer",
                f"{where}: the worker does not scale on the coupon-issuer group's lag")
        ta = find(docs, "TriggerAuthentication", get(t, "authenticationRef.name"))
        if r.check(ta, f"{where}: the worker's Kafka trigger has no TriggerAuthentication"):
            params = {x["parameter"] for x in (get(ta, "spec.secretTargetRef") or []) + (get(ta, "spec.configMapTargetRef") or [])}
            r.check({"sasl", "tls", "username", "password", "ca"} <= params,
                    f"{where}: the Kafka TriggerAuthentication lacks {sorted({'sasl', 'tls', 'username', 'password', 'ca'} - params)}")
    api_so = find(docs, "ScaledObject", "coupon-api")
    r.check(api_so and "http_requests_total" in str(get(api_so, "spec.triggers")),
            f"{where}: the api does not scale on http_requests_total")
    # Monitoring: the ops port, the dashboard from its one file.
    sm = find(docs, "ServiceMonitor")
    if r.check(sm, f"{where}: no ServiceMonitor"):
        ports = {e.get("port") for e in get(sm, "spec.endpoints") or []}
        r.check(ports == {"ops", "metrics"}, f"{where}: the ServiceMonitor scrapes {sorted(ports)}, not ops and metrics")
    dash = find(docs, "ConfigMap", "coupon-engine-dashboard")
    if r.check(dash, f"{where}: no dashboard ConfigMap"):
        r.check(get(dash, "metadata.labels", {}).get("grafana_dashboard") == "1", f"{where}: the dashboard is not labelled grafana_dashboard: \"1\"")
        r.check(get(dash, "data", {}).get("coupon-engine.json") == read(DASHBOARD), f"{where}: the dashboard ConfigMap is not {DASHBOARD}")
    r.check(find(docs, "PrometheusRule"), f"{where}: no PrometheusRule")
    # The migration reaches PostgreSQL only.
    _, egress, _ = workload_flows(docs, {"app.kubernetes.io/name": "coupon-engine", "app.kubernetes.io/component": "migrate"})
    r.check(egress == {53, 5432}, f"{where}: the migration Job may reach ports {sorted(egress)}, not PostgreSQL (and DNS) only")
    for d in docs:
        for c in get(d, "spec.template.spec.containers") or []:
            r.check(not c.get("image", "").startswith("coupon-engine/"), f"{where}: image {c.get('image')} names no registry")


def check_dev(r, docs):
    where = "overlays/dev"
    for d in docs:
        for c in get(d, "spec.template.spec.containers") or []:
            if "coupon-engine/" in c.get("image", ""):
                r.check(c.get("imagePullPolicy") == "IfNotPresent", f"{where}: {c.get('name')} would pull {c.get('image')}")
    tracked = run(["git", "ls-files", "docker/k8s/overlays/dev"], cwd=ROOT).stdout.split()
    r.check("docker/k8s/overlays/dev/secrets.env" not in tracked, f"{where}: secrets.env is committed")
    ignored = run(["git", "check-ignore", "-q", "docker/k8s/overlays/dev/secrets.env"], cwd=ROOT).returncode == 0
    r.check(ignored, f"{where}: secrets.env is not git-ignored")
    kust = read("docker/k8s/overlays/dev/kustomization.yaml")
    r.check("literals" not in kust, f"{where}: the kustomization carries literal secrets")
    redis = find(docs, "StatefulSet", "redis") or find(docs, "Deployment", "redis")
    r.check(redis is not None, f"{where}: no Redis")
    for c in get(redis or {}, "spec.template.spec.containers") or []:
        check_redis_acl(r, where, [str(x) for x in (c.get("command") or []) + (c.get("args") or [])])


def check_kubernetes(r, args, names, registered):
    tmp = tempfile.mkdtemp()
    try:
        rendered = render_overlays(r, args.kustomize, tmp)
        for name, (path, docs) in rendered.items():
            summary = validate_schemas(r, args, path, name, docs)
            log(f"  overlays/{name}: {len(docs)} resources; {summary}")
            check_kubernetes_common(r, name, docs, names, registered)
            if name == "production":
                check_production(r, docs, names)
            if name == "dev":
                check_dev(r, docs)
    finally:
        shutil.rmtree(tmp)


# --- entry points -------------------------------------------------------------

def cmd_check(args):
    r = Report()
    names, source = settings_names()
    log(f"{len(names)} setting names, from {source}")
    registered = registered_metrics(r)
    log("compose")
    check_compose(r, args.compose_schema, names)
    log("Prometheus, Alertmanager, dashboard")
    check_prometheus(r, registered)
    log("hadolint")
    check_dockerfile(r, args.hadolint)
    log("HAProxy")
    check_haproxy(r)
    log(f"Kubernetes (kustomize; kubernetes-validate {args.k8s_version}, kubeconform with the CRDs' schemas)")
    check_kubernetes(r, args, names, registered)
    for f in r.failures:
        print(f"  FAIL {f}", file=sys.stderr)
    if r.failures:
        log(f"{len(r.failures)} problem(s)")
        return 1
    log("deployment files: ok")
    return 0


def cmd_rules(args):
    """Applies the runbook base URL (docker/prometheus/runbook-base-url) to
    alerts.yml and regenerates the PrometheusRule from it."""
    base = runbook_base()
    text = read(ALERTS)
    want = rules_with_base(text, base)
    rule = prometheus_rule_text() if want == text else None
    if args.write:
        with open(os.path.join(ROOT, ALERTS), "w") as f:
            f.write(want)
        with open(os.path.join(ROOT, PROMETHEUS_RULE), "w") as f:
            f.write(prometheus_rule_text())
        log(f"wrote {ALERTS} and {PROMETHEUS_RULE}")
        return 0
    stale = want != text or rule != read(PROMETHEUS_RULE)
    log("stale: run with --write" if stale else "up to date")
    return 1 if stale else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="every check (scripts/lint-deploy runs this)")
    c.add_argument("--compose-schema", required=True, help="compose-spec.json")
    c.add_argument("--kustomize", required=True)
    c.add_argument("--kubeconform", required=True)
    c.add_argument("--hadolint", required=True)
    c.add_argument("--kubernetes-validate", required=True, help="PyPI kubernetes-validate's command")
    c.add_argument("--k8s-version", default="1.31.0")
    c.set_defaults(func=cmd_check)
    w = sub.add_parser("rules", help="apply the runbook base URL; regenerate the PrometheusRule")
    w.add_argument("--write", action="store_true")
    w.set_defaults(func=cmd_rules)
    args = p.parse_args()
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
