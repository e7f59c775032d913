#!/usr/bin/env bash
# Chaos drills (issue 13): under a steady WebSocket load on two engine nodes, inject one fault
# at a time and measure success rate, p99 time to first token during the fault, time to
# recover and lost events. See docs/reliability.md.
#
#   loadtest/chaos/run.sh                      # every drill
#   loadtest/chaos/run.sh provider-kill redis  # some of them
#   CHAOS_OUT=/tmp/chaos-reports loadtest/chaos/run.sh
#
# Needs release binaries (`cargo build --release -p engine -p loadtest --bins`; BIN_DIR
# overrides where they are), PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin) and
# redis-server. It starts its OWN throwaway PostgreSQL (port 5440) and Redis (port 6390) in a
# temp dir, two fake-llm upstreams and two engine nodes, and removes all of it on exit. It
# never touches the machine's PostgreSQL on 5432 or Redis on 6379.
#
# Drills (each a fresh `loadtest ws` run with loadtest/scenarios/chaos-<name>.toml):
#   provider-kill  POST /admin/providers/{model}/fail on a random node and model, every 2 s
#   upstream-5xx   the primary fake-llm answers 503, then 429 (Retry-After 1), 10 s each
#   upstream-cut   the primary's streams are cut: dropped mid-body, then in-band errors
#   redis          `redis-cli shutdown nosave`, 10 s down, started again with the same command
#   postgres       `pg_ctl stop -m fast`, 10 s down, started again
#   node-kill      kill -9 one engine node; clients reconnect to the other; restarted later
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN_DIR="${BIN_DIR:-$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_PORT="${CHAOS_PG_PORT:-5440}"
REDIS_PORT="${CHAOS_REDIS_PORT:-6390}"
PRIMARY_PORT=18091
BACKUP_PORT=18092
NODE_PORTS=(18181 18182)
EMAIL=chaos@example.com
PASSWORD=chaos-password-1
OUT="${CHAOS_OUT:-$ROOT/loadtest/chaos/out}"
DRILLS=("$@")
[ ${#DRILLS[@]} -eq 0 ] && DRILLS=(provider-kill upstream-5xx upstream-cut redis postgres node-kill)

# Seconds into each run: faults start after the ramp-up and a quiet baseline.
FAULT_AT=25

for bin in switchyard fake-llm loadtest; do
  [ -x "$BIN_DIR/$bin" ] || { echo "missing $BIN_DIR/$bin: build release first" >&2; exit 1; }
done
for port in "$PG_PORT" "$REDIS_PORT" "$PRIMARY_PORT" "$BACKUP_PORT" "${NODE_PORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use; is another drill running?" >&2; exit 1
  fi
done

WORK="$(mktemp -d /tmp/switchyard-chaos.XXXXXX)"
mkdir -p "$OUT"
PIDS=()
NODE_PIDS=("" "")
REDIS_PID=""

cleanup() {
  set +e
  for pid in "${NODE_PIDS[@]}" "${PIDS[@]}" "$REDIS_PID"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
  done
  for pid in "${NODE_PIDS[@]}" "${PIDS[@]}" "$REDIS_PID"; do
    [ -n "$pid" ] && { timeout 5 tail --pid="$pid" -f /dev/null; kill -9 "$pid"; } 2>/dev/null
  done
  if [ -f "$WORK/pg/postmaster.pid" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1
  fi
  if [ "${CHAOS_KEEP:-0}" = 1 ]; then echo "kept $WORK (logs, PostgreSQL data)" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

wait_http() { # url, seconds
  for _ in $(seq 1 $(($2 * 10))); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2; return 1
}

# --- PostgreSQL 15, throwaway ------------------------------------------------------------
chmod 755 "$WORK"
mkdir -p "$WORK/pg" "$WORK/pgsock" "$WORK/pglog"
chown postgres "$WORK/pg" "$WORK/pgsock" "$WORK/pglog"
runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
pg_start() {
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pglog/pg.log" -w \
    -o "-p $PG_PORT -k $WORK/pgsock -c listen_addresses=127.0.0.1 -c max_connections=200" \
    start >/dev/null
}
pg_stop() { runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null; }
pg_start
runuser -u postgres -- "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" chaos
DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/chaos"

# --- Redis, throwaway --------------------------------------------------------------------
redis_start() {
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$WORK" --logfile "$WORK/redis.log" >/dev/null 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
}
redis_start
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

# --- fake-llm: primary (faults switched at runtime) and a healthy fallback ---------------
for port in "$PRIMARY_PORT" "$BACKUP_PORT"; do
  "$BIN_DIR/fake-llm" --listen "127.0.0.1:$port" --token-delay-ms 20 --tokens 40 \
    >"$WORK/fake-$port.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$port/health" 10
done
fake() { curl -fsS -X POST --data "$1" "http://127.0.0.1:$PRIMARY_PORT/_fake/scenario" >/dev/null; }

# --- two engine nodes sharing PostgreSQL and Redis ---------------------------------------
cat >"$WORK/engine.toml" <<TOML
[server]
shutdown_grace_secs = 2

[telemetry]
log_level = "warn"

[auth]
tenant_requests_per_minute = 0
user_requests_per_minute = 0
key_requests_per_minute = 0

[limits]
max_connections_per_ip = 0
tenant_turns_in_flight = 100000

[cache]
exact = false
semantic = false

[[models]]
name = "primary"
provider = "openai"
upstream_model = "gpt-4o"
base_url = "http://127.0.0.1:$PRIMARY_PORT/v1"
api_key = "sk-fake"
fallbacks = ["backup"]

[[models]]
name = "backup"
provider = "anthropic"
upstream_model = "claude-sonnet-4-5"
base_url = "http://127.0.0.1:$BACKUP_PORT"
api_key = "sk-ant-fake"

[routing]
default_model = "primary"
TOML

node_start() { # index
  local i=$1
  SWITCHYARD_LISTEN="127.0.0.1:${NODE_PORTS[$i]}" SWITCHYARD_NODE_ID="node-$i" \
  DATABASE_URL="$DATABASE_URL" REDIS_URL="$REDIS_URL" \
  SWITCHYARD_BOOTSTRAP_EMAIL="$EMAIL" SWITCHYARD_BOOTSTRAP_PASSWORD="$PASSWORD" \
    "$BIN_DIR/switchyard" --config "$WORK/engine.toml" >>"$WORK/node-$i.log" 2>&1 </dev/null &
  NODE_PIDS[$i]=$!
  wait_http "http://127.0.0.1:${NODE_PORTS[$i]}/readyz" 60 >&2
}
ulimit -n 20000 2>/dev/null || true
node_start 0
node_start 1
log "stack up: PostgreSQL :$PG_PORT, Redis :$REDIS_PORT, fake-llm :$PRIMARY_PORT/:$BACKUP_PORT, nodes :${NODE_PORTS[0]} :${NODE_PORTS[1]}"

# Per node: without a shared account store each node issues (and accepts) its own tokens.
admin_token() { # node index
  curl -fsS -H 'content-type: application/json' \
    -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}" \
    "http://127.0.0.1:${NODE_PORTS[$1]}/api/v1/auth/login" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("access_token") or d["token"])'
}

# --- one drill ----------------------------------------------------------------------------
# Starts the load, waits until FAULT_AT, runs the fault function (which prints
# "<start> <end>" in seconds since the load started), waits for the load to finish, analyses.
drill() {
  local name=$1
  local scenario="$ROOT/loadtest/scenarios/chaos-$name.toml"
  for i in 0 1; do kill -0 "${NODE_PIDS[$i]}" 2>/dev/null || node_start "$i"; done
  fake reset
  log "drill $name: load starting ($scenario)"
  local t0
  t0=$(date +%s.%N)
  SWITCHYARD_BOOTSTRAP_EMAIL="$EMAIL" SWITCHYARD_BOOTSTRAP_PASSWORD="$PASSWORD" \
    "$BIN_DIR/loadtest" ws --scenario "$scenario" \
    --target "http://127.0.0.1:${NODE_PORTS[0]},http://127.0.0.1:${NODE_PORTS[1]}" \
    --engine-pid "${NODE_PIDS[0]}" --report "$OUT/$name.json" --html "$OUT/$name.html" \
    >"$OUT/$name.txt" 2>"$WORK/loadtest-$name.err" &
  local load=$!
  sleep "$(python3 -c "print(max(0, $t0 + $FAULT_AT - $(date +%s.%N)))")"
  local window
  # In this shell, not a $(…) subshell: faults restart processes whose pids we must keep.
  "fault_${name//-/_}" "$t0" >"$WORK/window"
  window=$(cat "$WORK/window")
  log "drill $name: fault window $window s; waiting for the load to finish"
  wait "$load" || log "drill $name: loadtest exited non-zero"
  python3 "$ROOT/loadtest/chaos/analyze.py" "$OUT/$name.json" "$name" $window \
    >"$OUT/$name.summary.json"
  cat "$OUT/$name.summary.json" >&2
}

since() { python3 -c "print(round($(date +%s.%N) - $1, 1))"; }

fault_provider_kill() {
  local t0=$1 start tokens
  tokens=("$(admin_token 0)" "$(admin_token 1)")
  start=$(since "$t0")
  for _ in $(seq 1 10); do
    local node=$((RANDOM % 2)) model
    model=$([ $((RANDOM % 4)) -eq 0 ] && echo backup || echo primary)
    curl -fsS -o /dev/null -X POST -H "authorization: Bearer ${tokens[$node]}" \
      "http://127.0.0.1:${NODE_PORTS[$node]}/admin/providers/$model/fail" || true
    sleep 2
  done
  echo "$start $(since "$t0")"
}

fault_upstream_5xx() {
  local t0=$1 start
  start=$(since "$t0")
  fake "error_status=503"; sleep 10
  fake "error_status=429; retry_after=1"; sleep 10
  fake reset
  echo "$start $(since "$t0")"
}

fault_upstream_cut() {
  local t0=$1 start
  start=$(since "$t0")
  fake "drop_after=5"; sleep 10
  fake "break_after=5"; sleep 10
  fake reset
  echo "$start $(since "$t0")"
}

fault_redis() {
  local t0=$1 start
  start=$(since "$t0")
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  wait "$REDIS_PID" 2>/dev/null || true
  sleep 10
  redis_start
  echo "$start $(since "$t0")"
}

fault_postgres() {
  local t0=$1 start
  start=$(since "$t0")
  pg_stop
  sleep 10
  pg_start
  echo "$start $(since "$t0")"
}

fault_node_kill() {
  local t0=$1 start
  start=$(since "$t0")
  kill -9 "${NODE_PIDS[1]}"
  wait "${NODE_PIDS[1]}" 2>/dev/null || true
  NODE_PIDS[1]=""
  # The node stays dead: its clients must finish on the other one.
  echo "$start $start"
}

for name in "${DRILLS[@]}"; do
  declare -F "fault_${name//-/_}" >/dev/null || { echo "unknown drill $name" >&2; exit 2; }
  drill "$name"
done
python3 "$ROOT/loadtest/chaos/analyze.py" --table "$OUT"/*.summary.json
