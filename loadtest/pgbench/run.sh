#!/usr/bin/env bash
# The checkpoint upsert alone, before and after V14 (HOT updates): 5,000 conversations with
# 10 stored replies and one streaming reply each; 8 clients append to random streaming
# replies for 20 s. Prints statements per second and how many updates were heap-only.
# Figures: docs/benchmarks.md, "Fifth round".
#
#   loadtest/pgbench/run.sh [postgres URL of a database it may drop tables in]
set -euo pipefail
cd "$(dirname "$0")"
DB="${1:-postgres://postgres@127.0.0.1:5432/hotexp}"
for variant in before hot; do
  psql -q "$DB" -v ON_ERROR_STOP=1 -c "DROP TABLE IF EXISTS messages, conversations"
  psql -q "$DB" -v ON_ERROR_STOP=1 -f schema.sql -f "$variant.sql" -f data.sql
  psql -q "$DB" -c "SELECT pg_stat_reset()" >/dev/null
  echo "== $variant"
  pgbench -n -c 8 -j 2 -T 20 -f checkpoint.sql "$DB" | grep -E "^tps|latency average"
  psql -At "$DB" -c "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
                     WHERE relname = 'messages'"
done
