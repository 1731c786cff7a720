# Shared by scripts/stack and scripts/test: find or install what the project
# needs, and start what is not running. Every function is idempotent.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/coupon-engine"
STATE_DIR="${COUPON_STATE_DIR:-$ROOT/target/stack}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

# What the local stack runs (its strategy, lock mode, instances), kept in
# $STATE_DIR by scripts/stack and read by scripts/bench.
state_get() { cat "$STATE_DIR/$1" 2>/dev/null || echo "$2"; }
state_set() { mkdir -p "$STATE_DIR"; echo "$2" >"$STATE_DIR/$1"; }

# Apache Kafka, the broker (scripts/kafka fetches and runs it).
KAFKA_VERSION=4.1.1

REDIS_PORT=6379
PG_PORT=5432
BROKER_PORT=9092
CONTROLLER_PORT=9093
# The role the services and tests connect as (password auth over TCP).
PG_USER=coupon

log() { printf '\033[1m[%s]\033[0m %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_port() { # port seconds what
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  die "$3 did not open port $1 within $2 s"
}

# Alive and not a zombie (a container's init may never reap our children).
process_alive() {
  local state
  state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [ -n "$state" ] && [ "${state:0:1}" != Z ]
}
pid_alive() { [ -f "$1" ] && process_alive "$(cat "$1")"; }

# Installs Debian packages that are missing, without recommended extras
# (some start services of their own on our ports).
APT_UPDATED=0
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  if [ "$APT_UPDATED" = 0 ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# Packages wanted for a tool they ship (promtool), not for the service
# they would start at install: a policy-rc.d denies service starts meanwhile
# (unless the machine already has one).
apt_install_tools_only() {
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    created=1
  fi
  local status=0
  apt_install "$@" || status=$?
  [ "$created" = 1 ] && as_root rm -f "$policy"
  return "$status"
}

# Debian packages: the C toolchain for librdkafka's bundled build, HAProxy,
# Redis, PostgreSQL, and the small tools the scripts call.
ensure_packages() {
  apt_install cmake g++ make pkg-config curl jq openssl ca-certificates libssl-dev libsasl2-dev \
    libcurl4-openssl-dev zlib1g-dev haproxy redis-server redis-tools procps util-linux \
    postgresql postgresql-client libfontconfig1-dev fonts-dejavu-core python3 python3-venv wrk
  ensure_rust
}

# A Rust toolchain at least as new as the workspace's `rust-version`: an
# older one fails here with a sentence instead of hundreds of errors.
ensure_rust() {
  local want have
  want="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")"
  command -v cargo >/dev/null && command -v rustc >/dev/null ||
    die "no Rust toolchain on PATH: install one with rustup (Rust $want or newer), then run this again"
  have="$(rustc --version | awk '{print $2}')"
  [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -1)" = "$want" ] ||
    die "Rust $have is older than this workspace needs ($want): run 'rustup update' (or install $want+), then run this again"
}

# Redis on 6379; started here (and later stopped by `stack down`) only when
# nothing answers there.
ensure_redis() {
  port_open $REDIS_PORT && return 0
  mkdir -p "$STATE_DIR/logs" "$STATE_DIR/redis"
  log "starting redis on $REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly yes --appendfsync everysec \
    --dir "$STATE_DIR/redis" --pidfile "$STATE_DIR/redis.pid" \
    --logfile "$STATE_DIR/logs/redis.log" >/dev/null
  wait_port $REDIS_PORT 10 redis
  touch "$STATE_DIR/redis.started-here"
}

# psql as the `postgres` OS user through the local socket (peer auth, as
# Debian sets it up): the one way in that needs no password.
psql_as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "$@")
  else
    (cd / && sudo -u postgres psql -X -q -v ON_ERROR_STOP=1 "$@")
  fi
}

# The password of the project's PostgreSQL role, generated once per machine
# user and kept (mode 600) with the local secrets' cache.
PG_SECRETS="$CACHE_DIR/secrets/postgres.env"
pg_password() {
  if [ ! -s "$PG_SECRETS" ]; then
    mkdir -p "$(dirname "$PG_SECRETS")"
    (umask 077 && echo "LOCAL_PG_PASSWORD=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$PG_SECRETS")
  fi
  sed -n 's/^LOCAL_PG_PASSWORD=//p' "$PG_SECRETS"
}

# A connection string for one of the project's databases.
pg_url() { # database
  printf 'postgres://%s:%s@127.0.0.1:%s/%s?sslmode=disable' "$PG_USER" "$(pg_password)" "$PG_PORT" "$1"
}

# PostgreSQL on 5432, as Debian installs it (password auth over TCP): the
# cluster is started when nothing answers (a machine without systemd), the
# project's role gets its password (set again each time, so a lost secrets
# file heals) and owns the databases given.
ensure_postgres() {
  if ! port_open $PG_PORT; then
    local version
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)"
    [ -n "$version" ] || die "PostgreSQL is installed but has no cluster under /etc/postgresql"
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    mkdir -p "$STATE_DIR"
    echo "$version" >"$STATE_DIR/postgres.started-here"
    wait_port $PG_PORT 20 PostgreSQL
  fi
  local password db
  password="$(pg_password)"
  psql_as_postgres -v role="$PG_USER" -v password="$password" <<'SQL' ||
SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" WITH LOGIN PASSWORD :'password';
SQL
    die "could not create the PostgreSQL role $PG_USER through the local socket as the postgres user"
  for db in "$@"; do
    psql_as_postgres -v role="$PG_USER" -v db="$db" <<'SQL' ||
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
      die "could not create the database $db"
  done
}

# Apache Kafka on 9092 (scripts/kafka), its data under the state directory,
# kept across restarts (committed offsets too). BROKER_FRESH=1 empties it
# first; BROKER_REPLACED=1 then says so (its log is another one: consumers
# must start afresh).
ensure_broker() {
  mkdir -p "$STATE_DIR/logs"
  if [ "${BROKER_FRESH:-0}" = 1 ] && pid_alive "$STATE_DIR/broker.pid"; then
    log "emptying the broker"
    stop_pid "$STATE_DIR/broker.pid" broker 20
    BROKER_REPLACED=1
  fi
  if port_open $BROKER_PORT; then
    pid_alive "$STATE_DIR/broker.pid" && return 0
    log "warning: a broker this script did not start answers on $BROKER_PORT; using it as it is"
    # A port that accepts connections is not yet a broker that works (one
    # left running after its data directory was deleted times out every
    # request): ask it for its topics before relying on it.
    timeout 60 "$ROOT/scripts/kafka" topics --bootstrap-server "127.0.0.1:$BROKER_PORT" --list >/dev/null 2>&1 ||
      die "the broker on $BROKER_PORT does not answer a topic listing; stop it (it was not started by this checkout) and run again"
    return 0
  fi
  if [ "${BROKER_FRESH:-0}" = 1 ]; then
    rm -rf "$STATE_DIR/kafka"
  fi
  port_open $CONTROLLER_PORT &&
    die "port $CONTROLLER_PORT (the Kafka controller's) is taken by something this script did not start"
  log "starting the broker on $BROKER_PORT"
  # `$!` must be the broker itself (a backgrounded `cd && …` list would be a
  # subshell, and stopping it would leave the broker running); scripts/kafka
  # execs the JVM, so its pid is the broker's.
  "$ROOT/scripts/kafka" fetch
  nohup "$ROOT/scripts/kafka" run "$STATE_DIR/kafka" $BROKER_PORT $CONTROLLER_PORT \
    >>"$STATE_DIR/logs/broker.log" 2>&1 &
  echo $! >"$STATE_DIR/broker.pid"
  wait_port $BROKER_PORT 90 broker
}

# SIGTERM, then wait (up to $3 s, default 30) before SIGKILL.
stop_pid() {
  local file="$1" what="$2" grace="${3:-30}" pid i
  pid_alive "$file" || { rm -f "$file"; return 0; }
  pid="$(cat "$file")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    process_alive "$pid" || { rm -f "$file"; return 0; }
    sleep 0.1
  done
  log "$what did not stop within $grace s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}

# Builds the api and the worker; COUPON_PROFILE=dev reuses test builds.
# COUPON_BIN_DIR=<dir> runs prebuilt binaries from <dir> instead (A/B
# measurements of two builds).
build_binaries() {
  if [ -n "${COUPON_BIN_DIR:-}" ]; then
    BIN_DIR="$COUPON_BIN_DIR"
    export BIN_DIR
    return 0
  fi
  local profile="${COUPON_PROFILE:-release}"
  log "building api and issuer-worker ($profile)"
  (cd "$ROOT" && cargo build --quiet --profile "$profile" -p api -p issuer-worker)
  case "$profile" in
  dev) BIN_DIR="$TARGET_DIR/debug" ;;
  *) BIN_DIR="$TARGET_DIR/$profile" ;;
  esac
  export BIN_DIR
}

# Redis's append-only file rewrites, read before and after a measured run: a
# rewrite forks and writes the whole dataset, a load on the machine the run
# did not ask for (docs/PERFORMANCE.md, "Where the CPU goes"). Prints the
# rewrites started and whether one runs (0 or 1); "0 0" if Redis does not
# answer on the stack's port.
redis_rewrites() {
  redis-cli -p "$REDIS_PORT" INFO persistence 2>/dev/null | tr -d '\r' |
    awk -F: '$1 == "aof_rewrites" {n = $2} $1 == "aof_rewrite_in_progress" {p = $2} END {print n + 0, p + 0}'
}
# The words a run's line carries when a rewrite ran during it.
rewrote_between() { # before after (each redis_rewrites' output)
  local before=($1) after=($2)
  if [ "${before[1]}" = 1 ] || [ "${after[1]}" = 1 ] || [ "${before[0]}" != "${after[0]}" ]; then
    echo "; Redis rewrote its append-only file meanwhile"
  fi
}
# What the stack's Redis holds as a measurement starts, for its report's
# header: a rewrite copies all of it, so the more it holds, the longer the
# rewrites a run's line is flagged for last. The harness releases each
# audited run's campaign, but a Redis restart makes the gate keeper load
# every kept campaign back (docs/PERFORMANCE.md, "How to measure", says how
# to release them again); past 500 MB this also says so on stderr.
redis_held() {
  local held aof
  read -r held aof < <(redis-cli -p "$REDIS_PORT" INFO 2>/dev/null | tr -d '\r' |
    awk -F: '$1 == "used_memory" {m = int($2 / 1048576)} $1 == "aof_current_size" {a = int($2 / 1048576)}
      END {if (m != "") print m, a + 0}')
  [ -n "$held" ] || { echo "Redis at the start: not answering on :$REDIS_PORT"; return 0; }
  echo "Redis at the start: $held MB in memory, $aof MB of append-only file"
  if [ "$held" -gt 500 ]; then
    log "the local Redis holds $held MB: its rewrites slow the runs they fall in; archive the closed campaigns first (docs/PERFORMANCE.md, \"How to measure\")"
  fi
}
