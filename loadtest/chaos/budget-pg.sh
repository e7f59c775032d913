#!/usr/bin/env bash
# budget.sh with PostgreSQL's share measured: CPU by process over a window at load, WAL
# written, the `messages` table's HOT updates and size, and the statements by time
# (pg_stat_statements). Figures: docs/benchmarks.md, "Fifth round".
#
#   BIN_DIR=<release build> loadtest/chaos/budget-pg.sh <after_s> <window_s> [budget.sh args]
#   BIN_DIR=... loadtest/chaos/budget-pg.sh 20 30 --connections 2000 --chatting 200 --duration 60s --ramp-up 10s
#
# Writes <label>.{cpu,pg,statements,log} under $OUT_DIR (default /tmp/budget-pg).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
AFTER=$1 WINDOW=$2
shift 2
OUT="${OUT_DIR:-/tmp/budget-pg}/${LABEL:-run}"
mkdir -p "$(dirname "$OUT")"
PG_PORT="${BUDGET_PG_PORT:-5441}"
sql() { psql -At -h 127.0.0.1 -p "$PG_PORT" -U postgres budget -c "$1"; }

# utime + stime, in clock ticks, of the given processes.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
postgres_pids() { local pm; pm=$(pgrep -f "postgres.*-p $PG_PORT" | head -1); [ -n "$pm" ] && echo "$pm" $(pgrep -P "$pm"); }
state() {
  sql "SELECT (SELECT wal_bytes FROM pg_stat_wal), n_tup_upd, n_tup_hot_upd,
              pg_indexes_size('messages'), pg_relation_size('messages')
       FROM pg_stat_user_tables WHERE relname = 'messages'"
}

(
  sleep "$AFTER"
  sql "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()" >/dev/null
  engine=$(pgrep -x switchyard | head -1) harness=$(pgrep -x loadtest | head -1) fake=$(pgrep -x fake-llm | head -1)
  pg0=$(ticks $(postgres_pids)) e0=$(ticks "$engine") h0=$(ticks "$harness") f0=$(ticks "$fake")
  before=$(state)
  sleep "$WINDOW"
  pg1=$(ticks $(postgres_pids)) e1=$(ticks "$engine") h1=$(ticks "$harness") f1=$(ticks "$fake")
  after=$(state)
  hz=$(getconf CLK_TCK)
  cores() { echo "scale=2; ($2 - $1) / $hz / $WINDOW" | bc; }
  echo "cores over ${WINDOW}s: postgres $(cores "$pg0" "$pg1") engine $(cores "$e0" "$e1") harness $(cores "$h0" "$h1") fake-llm $(cores "$f0" "$f1")" >"$OUT.cpu"
  echo "wal_bytes|messages n_tup_upd|n_tup_hot_upd|index bytes|heap bytes: before $before, after $after" >"$OUT.pg"
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres budget -c "
    SELECT calls, round(total_exec_time::numeric) AS ms, round((total_exec_time / calls)::numeric, 3) AS ms_per_call,
           rows, left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS statement
    FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12" >"$OUT.statements"
) &
SAMPLER=$!

BUDGET_PG_OPTS="-c shared_preload_libraries=pg_stat_statements ${BUDGET_PG_OPTS:-}" \
  bash "$ROOT/loadtest/chaos/budget.sh" "$@" 2>&1 | tee "$OUT.log" | tr '\r' '\n' | grep -v '^\['
wait "$SAMPLER" || true
cat "$OUT.cpu" "$OUT.pg" "$OUT.statements"
