# Shared by scripts/stack and scripts/test: find or install what the project
# needs, and start what is not running. Every function is idempotent.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/coupon-engine"
STATE_DIR="${COUPON_STATE_DIR:-$ROOT/target/stack}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

TANSU_VERSION=0.6.0
TANSU_BIN="$CACHE_DIR/tansu-$TANSU_VERSION/bin/tansu"

REDIS_PORT=6379
PG_PORT=5432
BROKER_PORT=9092

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

# Debian packages: the C toolchain for librdkafka's bundled build, HAProxy,
# Redis and PostgreSQL.
ensure_packages() {
  local wanted=(cmake g++ make pkg-config curl jq openssl libssl-dev libsasl2-dev
    libcurl4-openssl-dev zlib1g-dev haproxy redis-server redis-tools
    postgresql postgresql-client libfontconfig1-dev fonts-dejavu-core python3 python3-venv)
  local missing=() p
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The Kafka-compatible broker, built once into the cache (about 15 minutes
# on two cores). A lock keeps concurrent runs from building it twice.
ensure_broker_binary() {
  [ -x "$TANSU_BIN" ] && return 0
  mkdir -p "$CACHE_DIR"
  (
    flock 9
    [ -x "$TANSU_BIN" ] && exit 0
    log "building the broker (tansu $TANSU_VERSION) into $CACHE_DIR; this takes a while, once"
    cargo install --locked tansu --version "$TANSU_VERSION" --features dynostore,libsql \
      --root "$CACHE_DIR/tansu-$TANSU_VERSION" --target-dir "$CACHE_DIR/tansu-build" \
      >"$CACHE_DIR/tansu-build.log" 2>&1 || {
      tail -20 "$CACHE_DIR/tansu-build.log" >&2
      exit 1
    }
  ) 9>"$CACHE_DIR/tansu-build.lock" || die "building the broker failed (see $CACHE_DIR/tansu-build.log)"
}

# Redis on 6379; started here (and later stopped by `stack down`) only when
# nothing answers there.
ensure_redis() {
  port_open $REDIS_PORT && return 0
  mkdir -p "$STATE_DIR/logs" "$STATE_DIR/redis"
  log "starting redis on $REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no \
    --dir "$STATE_DIR/redis" --pidfile "$STATE_DIR/redis.pid" \
    --logfile "$STATE_DIR/logs/redis.log" >/dev/null
  wait_port $REDIS_PORT 10 redis
  touch "$STATE_DIR/redis.started-here"
}

# PostgreSQL on 5432 with trust auth from localhost, and the databases given.
ensure_postgres() {
  if ! port_open $PG_PORT; then
    local version
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)"
    [ -n "$version" ] || die "PostgreSQL is installed but has no cluster under /etc/postgresql"
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! as_root grep -q "coupon-engine" "$hba" 2>/dev/null &&
      ! as_root grep -Eq '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
      # A cluster this script starts for the first time gets local trust auth
      # (a development machine; production uses its own database).
      as_root sed -i '1i host all all 127.0.0.1/32 trust # coupon-engine local development' "$hba"
    fi
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    mkdir -p "$STATE_DIR"
    echo "$version" >"$STATE_DIR/postgres.started-here"
    wait_port $PG_PORT 20 PostgreSQL
  fi
  local db
  for db in "$@"; do
    psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
      psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE \"$db\"" >/dev/null
  done
}

# The broker on 9092. `durable` (SQLite under the state directory, survives
# restarts) or `memory` (faster, lost on restart); `any` takes whatever runs
# and starts a durable one otherwise. A broker of another storage that this
# script started is restarted with the one asked for, and BROKER_REPLACED=1
# says so (its log is another one: consumers must start afresh).
ensure_broker() {
  local storage="$1" url
  mkdir -p "$STATE_DIR/broker" "$STATE_DIR/logs"
  if [ "$storage" = any ]; then
    port_open $BROKER_PORT && return 0
    storage=durable
  fi
  case "$storage" in
  durable) url="sqlite://tansu.db" ;;
  memory) url="memory://tansu/" ;;
  *) die "unknown broker storage $storage" ;;
  esac
  if port_open $BROKER_PORT; then
    if ! pid_alive "$STATE_DIR/broker.pid"; then
      log "warning: a broker this script did not start answers on $BROKER_PORT; using it as it is (its storage may not be $storage)"
      return 0
    elif [ "$(cat "$STATE_DIR/broker.storage" 2>/dev/null)" != "$storage" ]; then
      log "restarting the broker with $storage storage"
      stop_pid "$STATE_DIR/broker.pid" broker
      BROKER_REPLACED=1
    else
      return 0
    fi
  fi
  ensure_broker_binary
  log "starting the broker on $BROKER_PORT ($storage storage)"
  # `$!` must be the broker itself (a backgrounded `cd && …` list would be a
  # subshell, and stopping it would leave the broker running).
  (
    cd "$STATE_DIR/broker" || exit 1
    nohup "$TANSU_BIN" broker \
      --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --storage-engine "$url" >>"$STATE_DIR/logs/broker.log" 2>&1 &
    echo $! >"$STATE_DIR/broker.pid"
  )
  echo "$storage" >"$STATE_DIR/broker.storage"
  wait_port $BROKER_PORT 20 broker
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
