#!/bin/sh
# archive_command for PostgreSQL: archive-wal.sh <%p> <%f> <archive directory>
#
# Copies one WAL file (segment, .history or .backup file) into the archive so that a name in
# the archive is always a complete, durable copy, and is never overwritten:
#   - copy to a hidden temporary name in the archive directory and fsync it;
#   - hard-link it to the final name (atomic, and fails if that name exists), fsync the
#     directory, drop the temporary name;
#   - if the name already exists (the server retries a segment whose copy succeeded but whose
#     success it never heard of, e.g. after a crash), succeed only if the contents are
#     identical, otherwise fail loudly: two different files with one name means two servers
#     archive into one directory, and overwriting would destroy the good one.
# Exit status 0 only when the file is safely archived; anything else makes the server keep the
# file and retry (it logs our stderr). POSIX sh and coreutils/busybox only, so it runs in the
# Debian and Alpine postgres images alike. The archive's filesystem must support hard links.
set -eu

if [ "$#" -ne 3 ]; then
  echo "usage: archive-wal.sh <path (%p)> <file name (%f)> <archive directory>" >&2
  exit 2
fi
src=$1
name=$2
dir=$3
dest="$dir/$name"

case "$name" in
  */* | .* | "") echo "archive-wal: refusing odd file name '$name'" >&2; exit 2 ;;
esac
if [ ! -d "$dir" ]; then
  echo "archive-wal: archive directory $dir does not exist (is the volume mounted?)" >&2
  exit 1
fi

same_as_archived() {
  if cmp -s "$src" "$dest"; then
    exit 0
  fi
  echo "archive-wal: $dest already exists with different contents; not overwriting it" >&2
  exit 1
}

if [ -e "$dest" ]; then
  same_as_archived
fi

tmp="$dir/.$name.tmp.$$"
trap 'rm -f "$tmp"' EXIT
cp "$src" "$tmp"
sync "$tmp"
if ! ln "$tmp" "$dest" 2>/dev/null; then
  # Lost a race to an identical copy, or the name appeared since the check above.
  if [ -e "$dest" ]; then
    same_as_archived
  fi
  echo "archive-wal: could not link $tmp to $dest" >&2
  exit 1
fi
sync "$dir"
