#!/usr/bin/env bash
# Restores a base backup made by backup.sh and replays archived WAL up to a point in time (or
# an LSN, or the end of the archive), then promotes. See docs/disaster-recovery.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: restore.sh --backups DIR --wal DIR --pgdata DIR [target] [options]
       restore.sh --backups DIR --list

Copies a base backup into PGDATA, points restore_command at the WAL archive, sets the recovery
target, starts PostgreSQL, waits for it to reach the target and promote, then removes the
recovery settings again (so they cannot bite a later standby). Prints where replay stopped.

  --backups DIR        backup.sh's --dest directory
  --wal DIR            WAL archive: archive-wal.sh's directory or pg_receivewal's (its
                       newest `.partial` segment is used too)
  --pgdata DIR         data directory to create; must be absent or empty (see --force)

Target (one of; default --latest):
  --target-time TS     stop before the first commit after TS, e.g. '2025-01-31 12:00:00+00'
                       (commits at exactly TS are kept); give the zone
  --target-lsn LSN     stop after replaying up to LSN, e.g. 0/5A0012F8
  --latest             replay everything the archive has

Options:
  --backup NAME        backup to start from (default: the newest that is consistent before
                       the target; with --latest, the newest)
  --timeline T         recovery_target_timeline: latest (default), current (the backup's
                       own, ignoring later promotions), or a number
  --action A           at the target: promote (default), pause (inspect read-only, then
                       `SELECT pg_wal_replay_resume()` promotes), or shutdown
  --no-archive         the restored server does not archive (archive_mode=off): for test
                       restores, which must never write into the production archive
  --no-start           prepare PGDATA and stop: start the server your usual way and it
                       recovers; afterwards remove the block marked `restore.sh` from
                       postgresql.auto.conf
  --port P             port for the restored server (default: its configuration's)
  --socket-dir D       Unix socket directory for it (default: its configuration's)
  --run-as USER        when run as root: own PGDATA by USER and run the server as USER
  --force              if PGDATA is not empty, move it aside to PGDATA.before-restore-<stamp>
                       (never deleted) and restore anyway
  --timeout S          seconds to wait for recovery (default 3600)
  --list               list the backups (stamp, WAL range, consistent-at time, size) and exit
  -h, --help           this text

Tools are taken from PATH, else from PG_BIN (default: the newest /usr/lib/postgresql/*/bin).
Exit status 0 only when the server is up and promoted (or paused / shut down at the target,
as --action asked).
EOF
}

backups=""
wal=""
pgdata=""
target_kind="latest"
target=""
backup=""
timeline="latest"
action="promote"
archive=1
start=1
port=""
socket_dir=""
run_as=""
force=0
timeout=3600
list=0
while [ $# -gt 0 ]; do
  case "$1" in
    --backups) backups=${2:?}; shift 2 ;;
    --wal) wal=${2:?}; shift 2 ;;
    --pgdata) pgdata=${2:?}; shift 2 ;;
    --target-time) target_kind="time"; target=${2:?}; shift 2 ;;
    --target-lsn) target_kind=lsn; target=${2:?}; shift 2 ;;
    --latest) target_kind=latest; target=""; shift ;;
    --backup) backup=${2:?}; shift 2 ;;
    --timeline) timeline=${2:?}; shift 2 ;;
    --action) action=${2:?}; shift 2 ;;
    --no-archive) archive=0; shift ;;
    --no-start) start=0; shift ;;
    --port) port=${2:?}; shift 2 ;;
    --socket-dir) socket_dir=${2:?}; shift 2 ;;
    --run-as) run_as=${2:?}; shift 2 ;;
    --force) force=1; shift ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --list) list=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "restore.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "restore.sh: $*" >&2; exit 1; }
log() { printf '%s restore.sh: %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }

[ -n "$backups" ] || die "--backups is required (see --help)"
[ -d "$backups" ] || die "no backup directory $backups"

info() { sed -n "s/^$2=//p" "$backups/$1/backup.info"; }
mapfile -t available < <(find "$backups" -mindepth 2 -maxdepth 2 -name backup.info -printf '%h\n' | sort | xargs -r -n1 basename)

if [ "$list" = 1 ]; then
  printf '%-18s %-26s %-14s %-24s %s\n' backup "WAL from" "consistent at" "consistent by" bytes
  for b in "${available[@]}"; do
    printf '%-18s %-26s %-14s %-24s %s\n' "$b" "$(info "$b" start_wal)" "$(info "$b" end_lsn)" \
      "$(info "$b" end_time)" "$(info "$b" bytes)"
  done
  exit 0
fi

[ -n "$wal" ] || die "--wal is required (see --help)"
[ -n "$pgdata" ] || die "--pgdata is required (see --help)"
[ -d "$wal" ] || die "no WAL archive at $wal"
[ "${#available[@]}" -gt 0 ] || die "no published backups in $backups"
case "$action" in promote | pause | shutdown) ;; *) die "--action must be promote, pause or shutdown" ;; esac
[[ "$timeline" =~ ^(latest|current|[0-9]+)$ ]] || die "--timeline must be latest, current or a number"
[[ "$timeout" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
wal=$(cd "$wal" && pwd)
pgdata=$(realpath -m "$pgdata")
# The server resolves relative paths against its data directory.
[ -z "$socket_dir" ] || socket_dir=$(realpath -m "$socket_dir")
for path in "$wal" "$pgdata"; do
  [[ "$path" != *"'"* && "$path" != *'"'* ]] || die "quotes in $path are not supported"
done

if [ "$start" = 1 ] && [ "$(id -u)" = 0 ] && [ -z "$run_as" ]; then
  die "PostgreSQL does not run as root: pass --run-as USER (the data directory's owner), or --no-start"
fi

# LSN "X/Y" → a number, to compare.
lsn_num() {
  [[ "$1" =~ ^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$ ]] || die "not an LSN: $1"
  echo $(((16#${BASH_REMATCH[1]} << 32) | 16#${BASH_REMATCH[2]}))
}

# Which backup: a target must lie after the point where the backup became consistent, or
# recovery refuses to stop there.
if [ -z "$backup" ]; then
  case "$target_kind" in
    latest) backup=${available[-1]} ;;
    time)
      target_epoch=$(date -d "$target" +%s) || die "cannot read the time '$target' (use 'YYYY-MM-DD HH:MM:SS+00')"
      for b in "${available[@]}"; do
        [ "$(info "$b" end_epoch)" -lt "$target_epoch" ] && backup=$b
      done
      ;;
    lsn)
      want=$(lsn_num "$target")
      for b in "${available[@]}"; do
        [ "$(lsn_num "$(info "$b" end_lsn)")" -le "$want" ] && backup=$b
      done
      ;;
  esac
  [ -n "$backup" ] || die "no backup is consistent before $target; the oldest is ${available[0]} (restore.sh --list)"
fi
[ -f "$backups/$backup/backup.info" ] || die "no backup $backup in $backups (restore.sh --list)"
source_dir="$backups/$backup/data"

as_owner() {
  if [ -n "$run_as" ] && [ "$(id -u)" = 0 ]; then
    runuser -u "$run_as" -- "$@"
  else
    "$@"
  fi
}
pg_tool() {
  if command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  else
    local bin=${PG_BIN:-$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)}
    [ -x "$bin/$1" ] || die "$1 not found on PATH or in PG_BIN"
    echo "$bin/$1"
  fi
}

# Never destroy a data directory: move it aside (inside it when it is a mount point, as a
# volume's root usually is).
if [ -d "$pgdata" ] && [ -n "$(find "$pgdata" -mindepth 1 -maxdepth 1 ! -name lost+found -print -quit)" ]; then
  [ "$force" = 1 ] || die "$pgdata is not empty; stop its server and use --force to move it aside"
  if [ -f "$pgdata/postmaster.pid" ]; then
    pid=$(head -n 1 "$pgdata/postmaster.pid")
    if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
      die "$pgdata/postmaster.pid names process $pid, which is running: stop the server first (if it ran in another container or host and is stopped, delete postmaster.pid)"
    fi
  fi
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  while [ -e "$pgdata.before-restore-$stamp" ] || [ -e "$pgdata/.before-restore-$stamp" ]; do
    stamp="$stamp-$RANDOM"
  done
  if mountpoint -q "$pgdata" 2>/dev/null; then
    aside="$pgdata/.before-restore-$stamp"
    log "moving the contents of $pgdata (a mount point) aside into $aside; delete it once the restore is verified, or base backups will copy it"
    mkdir -m 700 "$aside"
    find "$pgdata" -mindepth 1 -maxdepth 1 ! -name "${aside##*/}" ! -name lost+found -exec mv -t "$aside" {} +
  else
    aside="$pgdata.before-restore-$stamp"
    log "moving the existing $pgdata aside to $aside"
    mv "$pgdata" "$aside"
  fi
fi

began=$(date +%s.%N)
log "restoring backup $backup (WAL from $(info "$backup" start_wal)) into $pgdata"
mkdir -p "$pgdata"
chmod 700 "$pgdata"
cp -a "$source_dir/." "$pgdata/"
# A fresh backup's server log or stale pid would only confuse; a backup has none, but be sure.
rm -f "$pgdata/postmaster.pid" "$pgdata/postmaster.opts" "$pgdata/standby.signal"
# pg_receivewal keeps the segment it is writing as <name>.partial; offer it to recovery in
# pg_wal under its real name, unless the archive has the finished segment.
shopt -s nullglob
for partial in "$wal"/*.partial; do
  name=$(basename "$partial" .partial)
  if [ ! -e "$wal/$name" ]; then
    log "using the partial segment $name"
    cp "$partial" "$pgdata/pg_wal/$name"
  fi
done
shopt -u nullglob
if [ -n "$run_as" ] && [ "$(id -u)" = 0 ]; then
  chown -R "$run_as": "$pgdata"
fi
copied=$(date +%s.%N)

marker="# restore.sh $backup: recovery settings (removed after promotion)"
{
  echo "$marker"
  echo "restore_command = 'cp \"$wal/%f\" \"%p\"'"
  echo "recovery_target_timeline = '$timeline'"
  case "$target_kind" in
    time) echo "recovery_target_time = '$target'" ;;
    lsn) echo "recovery_target_lsn = '$target'" ;;
  esac
  echo "recovery_target_action = '$action'"
  # A copied data directory is fsynced before recovery starts; one syncfs() per filesystem
  # instead of one fsync() per file is much faster on a large cluster (Linux, PostgreSQL 14+).
  echo "recovery_init_sync_method = 'syncfs'"
  echo "# restore.sh end"
  if [ "$archive" = 0 ]; then
    echo "# restore.sh: a test restore must not write into the production archive"
    echo "archive_mode = 'off'"
  fi
} >>"$pgdata/postgresql.auto.conf"
touch "$pgdata/recovery.signal"
[ -z "$run_as" ] || [ "$(id -u)" != 0 ] || chown "$run_as": "$pgdata/postgresql.auto.conf" "$pgdata/recovery.signal"

if [ "$start" = 0 ]; then
  log "PGDATA is ready; start the server and it recovers to ${target:-the end of the archive} and does '$action'."
  log "after promotion, delete the lines from '$marker' to '# restore.sh end' in $pgdata/postgresql.auto.conf and reload."
  exit 0
fi

pg_ctl=$(pg_tool pg_ctl)
postgres=$(pg_tool postgres)
pg_isready=$(pg_tool pg_isready)
[ -n "$port" ] || port=$(as_owner "$postgres" -D "$pgdata" -C port)
[ -n "$socket_dir" ] || socket_dir=$(as_owner "$postgres" -D "$pgdata" -C unix_socket_directories | cut -d, -f1)
opts="-p $port -k $socket_dir"
logfile="$pgdata/restore.log"
log "starting PostgreSQL (port $port, log $logfile); recovering to ${target:-the end of the archive}"
as_owner "$pg_ctl" -D "$pgdata" -l "$logfile" -o "$opts" -W start >/dev/null

# Done when recovery has ended and the server answers (promote), when
# the log says replay paused (pause), or when the server has stopped at the target (shutdown).
deadline=$(($(date +%s) + timeout))
state=""
seen_running=0
while :; do
  running=1
  as_owner "$pg_ctl" -D "$pgdata" status >/dev/null 2>&1 || running=0
  # pg_ctl -W returns before the postmaster has written its pid file.
  if [ "$running" = 0 ] && [ "$seen_running" = 0 ] && [ "$(date +%s)" -lt $((deadline - timeout + 30)) ]; then
    sleep 0.1
    continue
  fi
  seen_running=1
  # The server deletes recovery.signal when archive recovery ends, before it takes writes.
  if [ "$action" = promote ] && [ ! -e "$pgdata/recovery.signal" ] && [ "$running" = 1 ] &&
    "$pg_isready" -q -h "$socket_dir" -p "$port"; then
    state=promoted
  elif [ "$action" = pause ] && grep -qE 'pausing at the end of recovery|recovery has paused' "$logfile"; then
    state=paused
  elif [ "$running" = 0 ]; then
    if [ "$action" = shutdown ] && grep -q 'recovery stopping' "$logfile"; then
      state="shut down at the target"
    else
      tail -n 20 "$logfile" >&2
      die "the server stopped during recovery (log above, in full at $logfile)"
    fi
  fi
  [ -n "$state" ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    tail -n 20 "$logfile" >&2
    die "recovery did not finish within $timeout s (the server is still running; log $logfile)"
  fi
  sleep 0.2
done
recovered=$(date +%s.%N)

if [ "$state" = promoted ]; then
  # The recovery target must not outlive the recovery: a later standby.signal would obey it.
  sed -i "/^# restore.sh $backup: recovery settings/,/^# restore.sh end\$/d" "$pgdata/postgresql.auto.conf"
  as_owner "$pg_ctl" -D "$pgdata" reload >/dev/null
fi

stop_line=$(grep -E 'recovery stopping|last completed transaction|redo done' "$logfile" | sed 's/^.*\(LOG\|FATAL\): *//' | tr '\n' ';' || true)
log "replay: ${stop_line:-no stop message in the log}"
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
log "done: $state on port $port; copy $(seconds "$began" "$copied") s, recovery $(seconds "$copied" "$recovered") s"
