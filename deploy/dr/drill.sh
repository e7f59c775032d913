#!/usr/bin/env bash
# Disaster-recovery drill: a throwaway PostgreSQL with the archiving settings of
# deploy/postgres/, the engine's schema and data, a base backup (backup.sh), more writes, a
# recorded target time, writes after it, a continuous writer, then the data directory is
# destroyed and restore.sh brings it back to the target. Checks that exactly the data committed
# before the target came back and measures RPO and RTO; prints a JSON summary on stdout.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/dr/drill.sh [options]

Runs a self-contained backup → destroy → point-in-time restore drill on its own PostgreSQL
(a temporary cluster on a free port, never the machine's own server) and prints a JSON
summary. Exit status 0 only if every check passed.

  1. initdb a cluster in a temp dir with deploy/postgres/wal-archiving.conf (paths rewritten
     to the temp dir) and archive-wal.sh; pg_receivewal streams WAL into a second directory;
  2. apply the engine's migrations (`switchyard migrate`, else psql over migrations/*.sql);
     with the engine, start it, sign in, and have it write a conversation;
  3. write conversations and messages the way the engine does (insert, streamed appends,
     completion) while backup.sh takes a base backup; write more, including a second
     conversation through the engine; record the target time and a digest of both tables;
  4. write after the target (new rows, and changes and a delete of older rows), then keep one
     writer committing every 50 ms; after --tail seconds stop the server immediately and
     delete its data directory (the failure);
  5. restore.sh to the target time and promote; check both tables match the digest taken at
     the target, nothing written after it is there, the server takes writes; start the engine
     on it, wait for /readyz, read both engine conversations back through the API and post a
     new message (RTO = failure → SQL answers, and → engine ready);
  6. restore twice more to the end of the WAL (from the archive, then from pg_receivewal's
     directory) to measure what each loses (RPO = failure − the last commit recovered).

Options:
  --engine BIN          switchyard binary (env SWITCHYARD_BIN; default: debug/switchyard in
                        cargo's target directory, if built); without one the engine steps
                        are skipped and the migrations are applied with psql
  --require-engine      fail instead of skipping the engine steps
  --pg-bin DIR          PostgreSQL binaries (env PG_BIN; default /usr/lib/postgresql/15/bin)
  --archive-timeout S   override archive_timeout (default: wal-archiving.conf's)
  --tail S              seconds the writer runs before the failure (default archive_timeout + 15,
                        so a forced segment switch happens during it)
  --conversations N     conversations written per phase (default 400)
  --json FILE           also write the summary to FILE
  --keep                keep the temp directory (servers are stopped anyway)
  -h, --help            this text

Run as root (servers run as the `postgres` user through runuser) or as an ordinary user.
Needs psql/initdb/pg_ctl/pg_basebackup/pg_receivewal, curl and jq.
EOF
}

repo=$(cd "$(dirname "$0")/../.." && pwd)
engine=${SWITCHYARD_BIN:-}
require_engine=0
pg_bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
archive_timeout=""
tail_secs=""
per_phase=400
json_out=""
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) engine=${2:?}; shift 2 ;;
    --require-engine) require_engine=1; shift ;;
    --pg-bin) pg_bin=${2:?}; shift 2 ;;
    --archive-timeout) archive_timeout=${2:?}; shift 2 ;;
    --tail) tail_secs=${2:?}; shift 2 ;;
    --conversations) per_phase=${2:?}; shift 2 ;;
    --json) json_out=${2:?}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "drill.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

t0=$(date +%s.%N)
now() { date +%s.%N; }
# Seconds from $1 to $2 (epoch seconds with fractions), to the millisecond.
span() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
say() { printf '[drill %7.1fs] %s\n' "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }')" "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

for tool in curl jq awk; do command -v "$tool" >/dev/null || die "$tool is required"; done
for tool in initdb pg_ctl psql pg_basebackup pg_receivewal pg_verifybackup pg_archivecleanup pg_controldata postgres; do
  [ -x "$pg_bin/$tool" ] || die "$pg_bin/$tool not found (set --pg-bin)"
done
if ! [[ "$per_phase" =~ ^[1-9][0-9]*$ ]] || [ "$per_phase" -lt 10 ]; then die "--conversations must be at least 10"; fi
fragment="$repo/deploy/postgres/wal-archiving.conf"
configured_timeout=$(sed -n 's/^archive_timeout *= *\([0-9]*\).*/\1/p' "$fragment")
[ -n "$configured_timeout" ] || die "no archive_timeout in $fragment"
archive_timeout=${archive_timeout:-$configured_timeout}
tail_secs=${tail_secs:-$((archive_timeout + 15))}

if [ -z "$engine" ]; then
  target_dir=${CARGO_TARGET_DIR:-$(cargo metadata --manifest-path "$repo/Cargo.toml" --format-version 1 --no-deps 2>/dev/null | jq -r .target_directory)} || true
  candidate="${target_dir:-$repo/target}/debug/switchyard"
  if [ -x "$candidate" ]; then engine=$candidate; fi
fi
if [ -n "$engine" ] && [ ! -x "$engine" ]; then die "no engine binary at $engine"; fi
if [ -z "$engine" ] && [ "$require_engine" = 1 ]; then die "--require-engine but no switchyard binary (build it or pass --engine)"; fi

# Servers refuse to run as root: run them (and the tools that write their files) as postgres.
if [ "$(id -u)" = 0 ]; then
  as_pg() { runuser -u postgres -- env "PATH=$PATH" "$@"; }
else
  as_pg() { "$@"; }
fi
export PATH="$pg_bin:$PATH"
# Nothing from the caller's environment may point a client at another server.
unset PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD PGSERVICE PGSSLMODE DATABASE_URL

# The machine's own PostgreSQL on 5432, to prove afterwards it was left alone.
host_pid_file=""
for f in /var/lib/postgresql/*/main/postmaster.pid; do [ -r "$f" ] && host_pid_file=$f; done
host_pid_before=$([ -n "$host_pid_file" ] && head -n 1 "$host_pid_file" || echo none)

work=$(mktemp -d /tmp/switchyard-dr-drill.XXXXXX)
chmod 755 "$work"
mkdir -p "$work"/{bin,conf,run,logs,archive,streamed,backups,home}
cp "$repo/deploy/postgres/archive-wal.sh" "$repo/deploy/dr/backup.sh" "$repo/deploy/dr/restore.sh" "$work/bin/"
chmod 755 "$work"/bin/*
[ "$(id -u)" = 0 ] && chown -R postgres: "$work"
pgdata="$work/data"

engine_pid=""
writer_pid=""
receivewal_pid_file="$work/run/receivewal.pid"
cleanup() {
  local status=$?
  set +e
  [ -n "$writer_pid" ] && kill "$writer_pid" 2>/dev/null
  [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null
  [ -s "$receivewal_pid_file" ] && kill "$(cat "$receivewal_pid_file")" 2>/dev/null
  for d in "$work"/data "$work"/restore-*; do
    [ -f "$d/postmaster.pid" ] && as_pg pg_ctl -D "$d" stop -m immediate >/dev/null 2>&1
  done
  if [ "$keep" = 1 ]; then say "kept $work"; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 20000))
    [ "$p" = 5432 ] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && [ ! -e "$work/run/.s.PGSQL.$p" ]; then
      echo "$p"
      return
    fi
  done
  die "no free port found"
}
port=$(free_port)
[ "$port" != 5432 ] || die "refusing port 5432"

sql() { psql -X -q -v ON_ERROR_STOP=1 -h "$work/run" -p "$port" -U postgres -d switchyard -At "$@"; }
db_url="postgres://postgres@127.0.0.1:$port/switchyard"

# --- 1. the cluster ---------------------------------------------------------------------------
say "initdb in $work (port $port, archive_timeout ${archive_timeout}s, tail ${tail_secs}s)"
as_pg initdb -D "$pgdata" -U postgres --auth=trust -E UTF8 --locale=C -k -N >"$work/logs/initdb.log"
sed -e "s#/etc/postgresql/switchyard/archive-wal.sh#$work/bin/archive-wal.sh#" \
  -e "s#/var/lib/postgresql/wal-archive#$work/archive#" "$fragment" >"$work/conf/wal-archiving.conf"
grep -q "^archive_command = '$work/bin/archive-wal.sh %p %f $work/archive'\$" "$work/conf/wal-archiving.conf" ||
  die "wal-archiving.conf's archive_command is not the expected shape; update drill.sh with it"
cat >>"$pgdata/postgresql.conf" <<EOF

# drill.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work/run'
include '$work/conf/wal-archiving.conf'
archive_timeout = $archive_timeout
EOF
[ "$(id -u)" = 0 ] && chown -R postgres: "$work/conf"
as_pg pg_ctl -D "$pgdata" -l "$work/logs/primary.log" -w start >/dev/null
psql -X -q -h "$work/run" -p "$port" -U postgres -d postgres -c "CREATE DATABASE switchyard"
pg_version=$(sql -c "SHOW server_version")

# pg_receivewal from the start, with a slot so the server keeps WAL until it has it.
as_pg pg_receivewal -h "$work/run" -p "$port" -U postgres --slot drill --create-slot --if-not-exists
# shellcheck disable=SC2016 # expanded by that shell
as_pg sh -c 'echo $$ >"$1"; exec pg_receivewal -h "$2" -p "$3" -U postgres --slot drill -D "$4" --no-loop' \
  sh "$receivewal_pid_file" "$work/run" "$port" "$work/streamed" >"$work/logs/receivewal.log" 2>&1 &

# --- 2. schema and the engine -----------------------------------------------------------------
password="drill-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
email="drill@switchyard.local"
engine_port=""
start_engine() {
  engine_port=$(free_port)
  env -i PATH="$PATH" HOME="$work/home" DATABASE_URL="$db_url" \
    SWITCHYARD_LISTEN="127.0.0.1:$engine_port" SWITCHYARD_LOG_FORMAT=json RUST_LOG=warn \
    SWITCHYARD_BOOTSTRAP_EMAIL="$email" SWITCHYARD_BOOTSTRAP_PASSWORD="$password" \
    "$engine" serve >>"$work/logs/engine.log" 2>&1 &
  engine_pid=$!
}
wait_ready() {
  local deadline=$(($(date +%s) + 120))
  until curl -fsS -o /dev/null "http://127.0.0.1:$engine_port/readyz" 2>/dev/null; do
    kill -0 "$engine_pid" 2>/dev/null || { tail -n 20 "$work/logs/engine.log" >&2; die "the engine exited"; }
    [ "$(date +%s)" -lt "$deadline" ] || die "the engine was not ready within 120 s"
    sleep 0.1
  done
}
stop_engine() {
  kill "$engine_pid" 2>/dev/null || true
  wait "$engine_pid" || true
  engine_pid=""
}
api() { # method path [json]
  curl -fsS -X "$1" -H "authorization: Bearer $token" -H 'content-type: application/json' \
    ${3:+--data "$3"} "http://127.0.0.1:$engine_port$2"
}
login() {
  token=$(curl -fsS -X POST -H 'content-type: application/json' \
    --data "$(jq -nc --arg e "$email" --arg p "$password" '{email: $e, password: $p}')" \
    "http://127.0.0.1:$engine_port/api/v1/auth/login" | jq -r .access_token)
  if [ -z "$token" ] || [ "$token" = null ]; then die "could not sign in to the engine"; fi
}
engine_turn() { # conversation content → the reply's content
  api POST "/api/v1/conversations/$1/messages" "$(jq -nc --arg c "$2" '{content: $c}')" | jq -r .content
}

declare -A engine_conv engine_reply
if [ -n "$engine" ]; then
  say "migrations: switchyard migrate"
  env -i PATH="$PATH" HOME="$work/home" DATABASE_URL="$db_url" RUST_LOG=warn "$engine" migrate >"$work/logs/migrate.log" 2>&1 ||
    { cat "$work/logs/migrate.log" >&2; die "switchyard migrate failed"; }
  start_engine
  wait_ready
  login
  engine_conv[before_backup]=$(api POST /api/v1/conversations '{"title":"drill: before the backup"}' | jq -r .id)
  engine_reply[before_backup]=$(engine_turn "${engine_conv[before_backup]}" "written before the base backup")
  read -r tenant owner settings < <(sql -F ' ' -c "SELECT tenant_id, owner_id, settings::text FROM conversations WHERE id = '${engine_conv[before_backup]}'")
else
  say "migrations: psql over migrations/*.sql (no engine binary)"
  while read -r f; do
    sql -1 -f "$f" >/dev/null
  done < <(find "$repo/migrations" -name 'V*__*.sql' | sort -V)
  tenant=default
  owner=drill-owner
  settings='{"model":"mock"}'
fi

# Conversations first..last as the engine writes them, each statement its own transaction: the
# conversation, the user's message (seq 1), the assistant's row created `streaming` with its
# first delta (seq 2), two appended deltas (3, 4), completion (`done`, 5), the conversation's
# last_seq. Ids are md5(n) as UUIDs. Asynchronous commit only to write fast; what the target
# keeps is judged by commit timestamps, not by flushes.
write_conversations() { # phase first last
  sql -v phase="$1" -v first="$2" -v last="$3" -v tenant="$tenant" -v owner="$owner" -v settings="$settings" <<'SQL'
SET synchronous_commit = off;
SELECT
  format('INSERT INTO conversations (tenant_id, id, owner_id, settings, seq_reserved) VALUES (%L, %L, %L, %L::jsonb, 64)', :'tenant', c, :'owner', :'settings'),
  format('INSERT INTO messages (tenant_id, conversation_id, id, role, status, user_id, text, first_seq, last_seq) VALUES (%L, %L, %L, ''user'', ''complete'', %L, %L, 1, 1)', :'tenant', c, u, :'owner', :'phase' || ' question ' || n),
  format('INSERT INTO messages (tenant_id, conversation_id, id, role, status, reply_to, model, text, delta_ends, first_seq, last_seq) VALUES (%L, %L, %L, ''assistant'', ''streaming'', %L, ''mock'', %L, ARRAY[octet_length(%L)], 2, 2)', :'tenant', c, a, u, chunk, chunk),
  format('UPDATE messages SET text = text || %L, delta_ends = delta_ends || (octet_length(text) + octet_length(%L)), last_seq = last_seq + 1, updated_at = now() WHERE tenant_id = %L AND conversation_id = %L AND id = %L', chunk, chunk, :'tenant', c, a),
  format('UPDATE messages SET text = text || %L, delta_ends = delta_ends || (octet_length(text) + octet_length(%L)), last_seq = last_seq + 1, updated_at = now() WHERE tenant_id = %L AND conversation_id = %L AND id = %L', chunk, chunk, :'tenant', c, a),
  format('UPDATE messages SET status = ''complete'', finish_reason = ''stop'', input_tokens = 12, output_tokens = 240, cost_micros = 37, last_seq = last_seq + 1, updated_at = now() WHERE tenant_id = %L AND conversation_id = %L AND id = %L', :'tenant', c, a),
  format('UPDATE conversations SET last_seq = 5, updated_at = now() WHERE tenant_id = %L AND id = %L', :'tenant', c)
FROM (
  SELECT n,
         md5('conv-' || n)::uuid::text AS c,
         md5('user-' || n)::uuid::text AS u,
         md5('asst-' || n)::uuid::text AS a,
         repeat(:'phase' || ' answer ' || n || ' ', 12) AS chunk
  FROM generate_series(:first::int, :last::int) AS n
) AS s
\gexec
SQL
}
conv_id() { sql -c "SELECT md5('conv-' || $1)::uuid::text"; }

# --- 3. before the backup, during it, after it -----------------------------------------------
n=$per_phase
say "phase 1: $n conversations before the base backup"
write_conversations before_backup 1 "$n"

say "phase 2: base backup (backup.sh) while $n more conversations are written"
write_conversations during_backup $((n + 1)) $((2 * n)) &
during_pid=$!
backup_started=$(now)
as_pg "$work/bin/backup.sh" --dest "$work/backups" --archive "$work/archive" --keep 2 \
  --dbname "host=$work/run port=$port user=postgres" 2>"$work/logs/backup.log" ||
  { cat "$work/logs/backup.log" >&2; die "backup.sh failed"; }
backup_secs=$(span "$backup_started" "$(now)")
wait "$during_pid" || die "writes during the backup failed"
backup_name=$(find "$work/backups" -mindepth 1 -maxdepth 1 -name '20*' -printf '%f\n' | sort | tail -n 1)
backup_bytes=$(sed -n 's/^bytes=//p' "$work/backups/$backup_name/backup.info")
backup_start_lsn=$(sed -n 's/^start_lsn=//p' "$work/backups/$backup_name/backup.info")

say "phase 3: $n conversations after the backup, an engine turn, changes to older rows"
write_conversations after_backup $((2 * n + 1)) $((3 * n))
# Changes before the target that must survive: an append, a delete.
sql -c "UPDATE messages SET text = text || ' (edited before the target)' WHERE conversation_id = '$(conv_id 1)' AND role = 'assistant'"
sql -c "DELETE FROM conversations WHERE id = '$(conv_id 2)'"
if [ -n "$engine" ]; then
  engine_conv[after_backup]=$(api POST /api/v1/conversations '{"title":"drill: after the backup"}' | jq -r .id)
  engine_reply[after_backup]=$(engine_turn "${engine_conv[after_backup]}" "written after the base backup, before the target")
  stop_engine
fi

digest() {
  sql -c "SELECT (SELECT count(*) FROM conversations) || ' ' || (SELECT count(*) FROM messages) || ' ' ||
            (SELECT md5(string_agg(c::text, E'\n' ORDER BY tenant_id, id)) FROM conversations c) || ' ' ||
            (SELECT md5(string_agg(m::text, E'\n' ORDER BY tenant_id, conversation_id, id)) FROM messages m)"
}
# Commit timestamps before this instant are in, after it out (plus a margin either side).
sleep 0.2
target_digest=$(digest)
target=$(sql -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
target_lsn=$(sql -c "SELECT pg_current_wal_lsn()")
sleep 0.2
say "target: $target ($target_lsn): ${target_digest%% *} conversations"

# --- 4. after the target, then the failure ---------------------------------------------------
say "phase 4: $n conversations after the target, changes to older rows"
write_conversations after_target $((3 * n + 1)) $((4 * n))
sql -c "UPDATE messages SET text = 'overwritten after the target' WHERE conversation_id = '$(conv_id 3)' AND role = 'assistant'"
sql -c "UPDATE conversations SET settings = settings || '{\"title\": \"renamed after the target\"}' WHERE id = '$(conv_id 4)'"
sql -c "DELETE FROM conversations WHERE id = '$(conv_id 5)'"
tail_conv=$(sql -c "SELECT md5('tail')::uuid::text")
sql -c "INSERT INTO conversations (tenant_id, id, owner_id, settings) VALUES ('$tenant', '$tail_conv', '$owner', '$settings'::jsonb)"

say "phase 5: one writer commits every 50 ms for ${tail_secs}s, then the server dies"
rows=$((tail_secs * 20 + 400))
for i in $(seq 1 "$rows"); do
  printf "INSERT INTO messages (tenant_id, conversation_id, id, role, status, text, first_seq, last_seq, created_at, updated_at) VALUES ('%s', '%s', md5('tail-%d')::uuid::text, 'user', 'complete', 'tail %d', %d, %d, clock_timestamp(), clock_timestamp()) RETURNING %d;\nSELECT FROM pg_sleep(0.05);\n" \
    "$tenant" "$tail_conv" "$i" "$i" "$i" "$i" "$i"
done >"$work/tail.sql"
sql -f "$work/tail.sql" >"$work/tail.acked" 2>"$work/logs/tail.log" &
writer_pid=$!
sleep "$tail_secs"
# The failure: the server stops without a checkpoint, a WAL switch or a last archive run, as in
# a crash; its moment is when it is surely gone.
as_pg pg_ctl -D "$pgdata" stop -m immediate >/dev/null
failure=$(now)
wait "$writer_pid" || true
writer_pid=""
kill "$(cat "$receivewal_pid_file")" 2>/dev/null || true
rm -rf "$pgdata"
destroyed=$(now)
acked=$(grep -c '^[0-9]' "$work/tail.acked" || true)
say "failure: server stopped (immediate) and $pgdata deleted in $(span "$failure" "$destroyed") s; the writer had $acked commits acknowledged"
[ "$acked" -gt 0 ] || die "the writer committed nothing"
[ "$acked" -lt "$rows" ] || die "the writer finished before the failure; raise rows"

# --- 5. point-in-time restore ------------------------------------------------------------------
say "restore: backup $backup_name + archive → $target"
as_pg "$work/bin/restore.sh" --backups "$work/backups" --wal "$work/archive" --pgdata "$pgdata" \
  --target-time "$target" --port "$port" --socket-dir "$work/run" 2>"$work/logs/restore-target.log" ||
  { cat "$work/logs/restore-target.log" >&2; die "restore.sh failed"; }
until sql -c "SELECT 1" >/dev/null 2>&1; do sleep 0.05; done
db_ready=$(now)
restore_line=$(grep 'restore.sh: done' "$work/logs/restore-target.log" || true)
copy_secs=$(sed -n 's/.*copy \([0-9.]*\) s.*/\1/p' <<<"$restore_line")
recovery_secs=$(sed -n 's/.*recovery \([0-9.]*\) s.*/\1/p' <<<"$restore_line")
replay_line=$(sed -n 's/.*replay: //p' "$work/logs/restore-target.log")
say "restored and answering SQL $(span "$destroyed" "$db_ready") s after the data directory was deleted"

checks=()
check() { # name, then a command; records pass/fail
  local name=$1
  shift
  if "$@"; then checks+=("$name=true"); say "check ok: $name"; else checks+=("$name=false"); say "CHECK FAILED: $name"; fi
}
restored_digest=$(digest)
check state_at_target_matches_digest [ "$restored_digest" = "$target_digest" ]
count_range() { sql -c "SELECT count(*) FROM conversations WHERE id IN (SELECT md5('conv-' || n)::uuid::text FROM generate_series($1, $2) n)"; }
check all_rows_before_target_present [ "$(count_range 1 $((3 * n)))" = $((3 * n - 1)) ]
check no_rows_after_target [ "$(count_range $((3 * n + 1)) $((4 * n)))" = 0 ]
check no_tail_rows [ "$(sql -c "SELECT count(*) FROM messages WHERE conversation_id = '$tail_conv'")" = 0 ]
check edit_before_target_kept [ "$(sql -c "SELECT count(*) FROM messages WHERE conversation_id = '$(conv_id 1)' AND text LIKE '%(edited before the target)'")" = 1 ]
check delete_before_target_kept [ "$(count_range 2 2)" = 0 ]
check changes_after_target_absent [ "$(sql -c "SELECT count(*) FROM messages WHERE text = 'overwritten after the target'") $(sql -c "SELECT count(*) FROM conversations WHERE settings->>'title' = 'renamed after the target'") $(count_range 5 5)" = "0 0 1" ]
timeline=$(sql -c "SELECT timeline_id FROM pg_control_checkpoint()")
check promoted_and_writable [ "$(sql -c "SELECT pg_is_in_recovery()")" = f ]
sql -c "CREATE TABLE drill_after_restore (at timestamptz DEFAULT now()); INSERT INTO drill_after_restore DEFAULT VALUES"
wal_replayed=$(sql -c "SELECT pg_wal_lsn_diff('$target_lsn', '$backup_start_lsn')::bigint")

engine_ready=""
if [ -n "$engine" ]; then
  start_engine
  wait_ready
  engine_ready=$(now)
  say "engine /readyz green $(span "$destroyed" "$engine_ready") s after the data directory was deleted"
  login
  for phase in before_backup after_backup; do
    view=$(api GET "/api/v1/conversations/${engine_conv[$phase]}")
    check "engine_reads_${phase}_conversation" [ "$(jq -r '[.messages[] | .role] | join(",")' <<<"$view")|$(jq -r '.messages[1].content' <<<"$view")" = "user,assistant|${engine_reply[$phase]}" ]
  done
  reply=$(engine_turn "${engine_conv[after_backup]}" "written after the restore")
  check engine_writes_after_restore [ "$([ -n "$reply" ] && api GET "/api/v1/conversations/${engine_conv[after_backup]}" | jq '.messages | length')" = 4 ]
  stop_engine
fi
as_pg pg_ctl -D "$pgdata" stop -m fast >/dev/null

# --- 6. what the failure lost: restore to the end of each WAL source ---------------------------
rpo_restore() { # name wal-dir → "recovered_rows rpo_seconds"
  local dir="$work/restore-$1"
  as_pg "$work/bin/restore.sh" --backups "$work/backups" --wal "$2" --pgdata "$dir" --latest \
    --timeline current --no-archive --port "$port" --socket-dir "$work/run" 2>"$work/logs/restore-$1.log" ||
    { cat "$work/logs/restore-$1.log" >&2; die "restore.sh --latest from $1 failed"; }
  local got last gaps
  read -r got last gaps < <(sql -F ' ' -c "SELECT count(*), coalesce(extract(epoch FROM max(created_at)), 0), count(*) <> coalesce(max(first_seq), 0) FROM messages WHERE conversation_id = '$tail_conv'")
  as_pg pg_ctl -D "$dir" stop -m fast >/dev/null
  rm -rf "$dir"
  [ "$gaps" = f ] || die "$1: the recovered tail rows have gaps"
  [ "$got" -gt 0 ] || die "$1: no tail row recovered; cannot measure"
  echo "$got $(span "$last" "$failure")"
}
say "restore to the end of the archive (archive_command) to measure its loss"
result=$(rpo_restore archive "$work/archive")
read -r archived_rows rpo_archive <<<"$result"
say "restore to the end of pg_receivewal's WAL to measure its loss"
result=$(rpo_restore streamed "$work/streamed")
read -r streamed_rows rpo_stream <<<"$result"
say "RPO: archive_command lost $((acked - archived_rows)) commits (${rpo_archive}s); pg_receivewal lost $((acked - streamed_rows)) (${rpo_stream}s)"

check rpo_archive_within_archive_timeout awk -v r="$rpo_archive" -v t="$archive_timeout" 'BEGIN { exit !(r <= t + 10) }'
check rpo_archive_within_target awk -v r="$rpo_archive" 'BEGIN { exit !(r < 300) }'
check rpo_streaming_within_5s awk -v r="$rpo_stream" 'BEGIN { exit !(r < 5) }'
rto_final=${engine_ready:-$db_ready}
check rto_within_target awk -v r="$(span "$destroyed" "$rto_final")" 'BEGIN { exit !(r < 900) }'

host_pid_after=$([ -n "$host_pid_file" ] && head -n 1 "$host_pid_file" 2>/dev/null || echo none)
check host_postgres_untouched [ "$host_pid_before" = "$host_pid_after" ]

archive_segments=$(find "$work/archive" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9A-F]{24}' | wc -l)
archive_bytes=$(du -sb "$work/archive" | cut -f1)
ok=true
for c in "${checks[@]}"; do [ "${c#*=}" = true ] || ok=false; done
summary=$(jq -n \
  --argjson ok "$ok" \
  --argjson checks "$(printf '%s\n' "${checks[@]}" | jq -R 'split("=") | {(.[0]): (.[1] == "true")}' | jq -s add)" \
  --arg pg "$pg_version" --arg target "$target" --arg target_lsn "$target_lsn" --arg timeline "$timeline" \
  --argjson per_phase "$n" --argjson acked "$acked" \
  --argjson archive_timeout "$archive_timeout" --argjson tail "$tail_secs" \
  --argjson archived_rows "$archived_rows" --argjson streamed_rows "$streamed_rows" \
  --argjson rpo_archive "$rpo_archive" --argjson rpo_stream "$rpo_stream" \
  --argjson destroy "$(span "$failure" "$destroyed")" \
  --argjson rto_db "$(span "$destroyed" "$db_ready")" \
  --argjson rto_engine "$([ -n "$engine_ready" ] && span "$destroyed" "$engine_ready" || echo null)" \
  --argjson copy "${copy_secs:-null}" --argjson recovery "${recovery_secs:-null}" --arg replay "$replay_line" \
  --argjson wal_replayed "$wal_replayed" \
  --argjson backup_secs "$backup_secs" --argjson backup_bytes "$backup_bytes" \
  --argjson archive_segments "$archive_segments" --argjson archive_bytes "$archive_bytes" \
  --argjson engine "$([ -n "$engine" ] && echo true || echo false)" \
  --argjson drill "$(span "$t0" "$(now)")" \
  '{ok: $ok, checks: $checks,
    postgres: $pg, engine_checked: $engine,
    data: {conversations_per_phase: $per_phase, target_time: $target, target_lsn: $target_lsn,
           restored_timeline: ($timeline | tonumber), tail_commits_acknowledged: $acked},
    rpo: {target_seconds: 300, archive_timeout_seconds: $archive_timeout,
          archive_command: {seconds: $rpo_archive, commits_lost: ($acked - $archived_rows)},
          pg_receivewal: {seconds: $rpo_stream, commits_lost: ($acked - $streamed_rows)}},
    rto: {target_seconds: 900, measured_from: "data directory deleted", destroy_seconds: $destroy,
          to_sql_seconds: $rto_db, to_engine_ready_seconds: $rto_engine,
          restore_copy_seconds: $copy, restore_recovery_seconds: $recovery,
          wal_replayed_bytes: $wal_replayed, replay: $replay},
    backup: {seconds: $backup_secs, bytes: $backup_bytes},
    archive: {segments: $archive_segments, bytes: $archive_bytes},
    drill_seconds: $drill}')
echo "$summary"
[ -z "$json_out" ] || echo "$summary" >"$json_out"
[ "$ok" = true ] || die "some checks failed"
say "all checks passed"
