#!/usr/bin/env bash
# Takes a verified base backup of a running PostgreSQL with pg_basebackup, keeps the newest N,
# and prunes the WAL archive of segments no kept backup needs. See docs/disaster-recovery.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: backup.sh --dest DIR [--archive DIR]... [--keep N] [--dbname CONNINFO] [--no-verify]

Takes a base backup (pg_basebackup, plain format, WAL streamed into it, fast checkpoint,
SHA-256 manifest), checks it with pg_verifybackup, and publishes it as DIR/<UTC stamp>/
(data/ = the data directory, backup.info = what restore.sh needs to pick it). A backup that
fails or does not verify is never published. Then keeps the newest N backups and removes
archived WAL older than the oldest one kept.

  -d, --dest DIR       where backups live (env BACKUP_DIR)
  -a, --archive DIR    a WAL archive (archive_command target or pg_receivewal directory) to
                       prune up to the oldest kept backup; repeatable (env WAL_ARCHIVE_DIR)
  -k, --keep N         backups to keep, newest first (default 7; env BACKUP_KEEP); the PITR
                       window reaches back to the oldest kept backup
      --dbname CONN    libpq connection string for pg_basebackup; by default the usual PG*
                       variables (PGHOST, PGPORT, PGUSER, PGPASSWORD or PGPASSFILE,
                       PGSSLMODE) apply. The role needs the REPLICATION attribute.
      --no-verify      skip pg_verifybackup (not recommended)
  -h, --help           this text

Tools are taken from PATH, else from PG_BIN (default: the newest /usr/lib/postgresql/*/bin).
One backup runs at a time per DIR (a lock file); exit status non-zero on any failure.
EOF
}

dest=${BACKUP_DIR:-}
archives=()
[ -n "${WAL_ARCHIVE_DIR:-}" ] && archives+=("$WAL_ARCHIVE_DIR")
keep=${BACKUP_KEEP:-7}
dbname=""
verify=1
while [ $# -gt 0 ]; do
  case "$1" in
    -d | --dest) dest=${2:?--dest needs a directory}; shift 2 ;;
    -a | --archive) archives+=("${2:?--archive needs a directory}"); shift 2 ;;
    -k | --keep) keep=${2:?--keep needs a number}; shift 2 ;;
    --dbname) dbname=${2:?--dbname needs a connection string}; shift 2 ;;
    --no-verify) verify=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "backup.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$dest" ] || { echo "backup.sh: --dest is required (see --help)" >&2; exit 2; }
[[ "$keep" =~ ^[1-9][0-9]*$ ]] || { echo "backup.sh: --keep must be a positive number" >&2; exit 2; }

log() { printf '%s backup.sh: %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }

pg_tool() {
  if command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  else
    local bin=${PG_BIN:-$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)}
    [ -x "$bin/$1" ] || { echo "backup.sh: $1 not found on PATH or in PG_BIN" >&2; exit 1; }
    echo "$bin/$1"
  fi
}
pg_basebackup=$(pg_tool pg_basebackup)
pg_verifybackup=$(pg_tool pg_verifybackup)
pg_archivecleanup=$(pg_tool pg_archivecleanup)

mkdir -p "$dest"
exec 9>"$dest/.lock"
flock -n 9 || { echo "backup.sh: another backup into $dest is running" >&2; exit 1; }

# Anything half-made is from a run that died (the lock says none is running now).
find "$dest" -mindepth 1 -maxdepth 1 -name '.*.partial' -exec rm -rf {} +

stamp=$(date -u +%Y%m%dT%H%M%SZ)
[ -e "$dest/$stamp" ] && { sleep 1; stamp=$(date -u +%Y%m%dT%H%M%SZ); }
work="$dest/.$stamp.partial"
mkdir -m 700 "$work"
trap 'rm -rf "$work"' EXIT

log "base backup $stamp into $dest"
started=$(date +%s)
args=(-D "$work/data" -F plain -X stream --checkpoint=fast --manifest-checksums=SHA256
  --label "switchyard $stamp")
[ -n "$dbname" ] && args+=(--dbname "$dbname")
"$pg_basebackup" "${args[@]}"
finished=$(date +%s)

if [ "$verify" = 1 ]; then
  "$pg_verifybackup" --quiet "$work/data"
  log "verified against its manifest"
fi

# What restore.sh needs to choose a backup for a target: where its WAL starts (for pruning),
# and the LSN and time by which it is consistent (a target must come after both).
label="$work/data/backup_label"
start_lsn=$(sed -n 's/^START WAL LOCATION: \([0-9A-F]*\/[0-9A-F]*\) .*/\1/p' "$label")
start_wal=$(sed -n 's/^START WAL LOCATION: .*(file \([0-9A-F]\{24\}\))$/\1/p' "$label")
start_timeline=$(sed -n 's/^START TIMELINE: \([0-9]*\)$/\1/p' "$label")
end_lsn=$(sed -n 's/.*"End-LSN": "\([0-9A-F]*\/[0-9A-F]*\)".*/\1/p' "$work/data/backup_manifest" | tail -n 1)
if [ -z "$start_lsn" ] || [ -z "$start_wal" ] || [ -z "$end_lsn" ]; then
  echo "backup.sh: could not read the WAL range from backup_label/backup_manifest" >&2
  exit 1
fi
bytes=$(du -sb "$work/data" | cut -f1)
cat >"$work/backup.info" <<EOF
stamp=$stamp
start_lsn=$start_lsn
start_wal=$start_wal
start_timeline=$start_timeline
end_lsn=$end_lsn
start_epoch=$started
end_epoch=$finished
end_time=$(date -u -d "@$finished" '+%F %T+00')
bytes=$bytes
pg_version=$(cat "$work/data/PG_VERSION")
EOF
sync "$work/backup.info"
mv "$work" "$dest/$stamp"
trap - EXIT
log "published $dest/$stamp ($bytes bytes in $((finished - started)) s; WAL from $start_wal, consistent at $end_lsn)"

# Retention: the newest $keep published backups stay.
mapfile -t backups < <(find "$dest" -mindepth 2 -maxdepth 2 -name backup.info -printf '%h\n' | sort)
if [ "${#backups[@]}" -gt "$keep" ]; then
  for old in "${backups[@]:0:${#backups[@]}-keep}"; do
    log "retention: removing $old"
    rm -rf "$old"
  done
  backups=("${backups[@]: -keep}")
fi

# The archive needs nothing older than the WAL the oldest kept backup starts from.
oldest_wal=$(sed -n 's/^start_wal=//p' "${backups[0]}/backup.info")
for archive in "${archives[@]}"; do
  [ -d "$archive" ] || { log "no archive at $archive; skipping its pruning"; continue; }
  log "pruning $archive before $oldest_wal"
  "$pg_archivecleanup" "$archive" "$oldest_wal"
  # Temporaries of archive-wal.sh runs that died mid-copy.
  find "$archive" -maxdepth 1 -name '.*.tmp.*' -mmin +60 -delete
done
log "done: ${#backups[@]} backup(s) kept, oldest ${backups[0]##*/}"
