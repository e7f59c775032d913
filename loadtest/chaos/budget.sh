#!/usr/bin/env bash
# The performance budget run (issue 10): one engine node on a throwaway PostgreSQL, fake-llm at
# 20 ms/token, and `loadtest ws --scenario loadtest/scenarios/10k-connections.toml`; extra
# arguments go to loadtest (e.g. `--connections 5000 --chatting 500 --duration 60s`).
#
#   loadtest/chaos/budget.sh --report /tmp/10k.json
#   PERF=1 loadtest/chaos/budget.sh ...   # also `perf record -g` the engine for 30 s at load
#   BUDGET_PG_OPTS="-c synchronous_commit=off" loadtest/chaos/budget.sh ...   # PostgreSQL flags
#   BUDGET_CHECKPOINT_MS=1000 loadtest/chaos/budget.sh ...   # database.checkpoint_interval_ms
#
# Raises the open-file limit to 20,000 (the machine's hard limit) for every process it starts.
# Results and the commands behind them: docs/benchmarks.md, "10k connections — issue 10".
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN_DIR="${BIN_DIR:-$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_PORT="${BUDGET_PG_PORT:-5441}"
FAKE_PORT=18093
ENGINE_PORT=18183
EMAIL=bench@example.com
PASSWORD=bench-password-1
ulimit -n 20000

WORK="$(mktemp -d /tmp/switchyard-budget.XXXXXX)"
PIDS=()
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    timeout 10 tail --pid="$pid" -f /dev/null 2>/dev/null || kill -9 "$pid" 2>/dev/null
  done
  [ -f "$WORK/pg/postmaster.pid" ] &&
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

chmod 755 "$WORK"
mkdir -p "$WORK/pg" "$WORK/pgsock" "$WORK/pglog"
chown postgres "$WORK/pg" "$WORK/pgsock" "$WORK/pglog"
runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pglog/pg.log" -w \
  -o "-p $PG_PORT -k $WORK/pgsock -c listen_addresses=127.0.0.1 ${BUDGET_PG_OPTS:-}" start >/dev/null
runuser -u postgres -- "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" budget

"$BIN_DIR/fake-llm" --listen "127.0.0.1:$FAKE_PORT" --token-delay-ms 20 --tokens 40 \
  --workers 2 >"$WORK/fake.log" 2>&1 &
PIDS+=($!)

cat >"$WORK/engine.toml" <<TOML
[server]
shutdown_grace_secs = 2

[telemetry]
log_level = "warn"

[auth]
tenant_requests_per_minute = 0
user_requests_per_minute = 0
key_requests_per_minute = 0

[database]
url = "postgres://postgres@127.0.0.1:$PG_PORT/budget"
checkpoint_interval_ms = ${BUDGET_CHECKPOINT_MS:-250}

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
base_url = "http://127.0.0.1:$FAKE_PORT/v1"
api_key = "sk-fake"
# 1,000 clients chatting continuously keep ~1,000 generations open at once: past the default
# 256 per model, turns were refused as "overloaded" (75 % of them in the first 10k run).
max_in_flight = 4000
TOML

DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/budget" \
SWITCHYARD_LISTEN="127.0.0.1:$ENGINE_PORT" \
SWITCHYARD_BOOTSTRAP_EMAIL="$EMAIL" SWITCHYARD_BOOTSTRAP_PASSWORD="$PASSWORD" \
  "$BIN_DIR/switchyard" --config "$WORK/engine.toml" >"$WORK/engine.log" 2>&1 </dev/null &
ENGINE=$!
PIDS+=("$ENGINE")
for _ in $(seq 1 600); do
  curl -fsS -o /dev/null "http://127.0.0.1:$ENGINE_PORT/readyz" 2>/dev/null && break
  sleep 0.1
done
RSS_IDLE=$(awk '/VmRSS/ {print $2}' "/proc/$ENGINE/status")
echo "engine pid $ENGINE, RSS at rest ${RSS_IDLE} kB" >&2

if [ "${PERF:-0}" = 1 ]; then
  # Once the ramp-up is over: 30 s of call graphs at 99 Hz.
  (sleep "${PERF_AFTER:-45}"; perf record -F 99 -g -p "$ENGINE" -o "${PERF_OUT:-/tmp/engine.perf.data}" \
    -- sleep 30 >/dev/null 2>&1) &
fi
(
  peak=0
  while kill -0 "$ENGINE" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$ENGINE/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" >"$WORK/rss-peak"
    sleep 1
  done
) &
SWITCHYARD_BOOTSTRAP_EMAIL="$EMAIL" SWITCHYARD_BOOTSTRAP_PASSWORD="$PASSWORD" \
  "$BIN_DIR/loadtest" ws --scenario "$ROOT/loadtest/scenarios/10k-connections.toml" \
  --target "http://127.0.0.1:$ENGINE_PORT" --model primary --engine-pid "$ENGINE" "$@"
echo "engine RSS: at rest ${RSS_IDLE} kB, peak $(cat "$WORK/rss-peak" 2>/dev/null || echo '?') kB" >&2
