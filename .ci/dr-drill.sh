#!/usr/bin/env bash
# CI: the disaster-recovery drill. Lints the DR scripts, builds the engine, and runs
# deploy/dr/drill.sh with it: a throwaway PostgreSQL 15 on a free port is backed up, written to,
# destroyed and restored to a point in time; every check must pass (the drill exits non-zero
# otherwise) and the engine must come up green on the restored database. Leaves the machine's
# own PostgreSQL alone. About two minutes, most of it the writer running past one
# archive_timeout (60 s) so the measured RPO is that of the shipped settings.
# The summary (RPO, RTO, checks) is written to target/dr-drill.json in the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard/target}"
export CARGO_TERM_COLOR=never

missing=()
command -v jq >/dev/null || missing+=(jq)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x /usr/lib/postgresql/15/bin/initdb ] ||
  { echo "FATAL: the PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin) are missing"; exit 1; }

echo "--- shellcheck: deploy/dr, deploy/postgres"
shellcheck deploy/dr/*.sh deploy/postgres/initdb/*.sh .ci/dr-drill.sh
shellcheck --shell=sh deploy/postgres/archive-wal.sh

echo "--- build the engine"
cargo build -p engine --bin switchyard --locked

echo "--- drill"
mkdir -p target
started=$(date +%s)
bash deploy/dr/drill.sh --engine "$CARGO_TARGET_DIR/debug/switchyard" --require-engine \
  --json target/dr-drill.json
jq -e '.ok == true and .engine_checked == true' target/dr-drill.json >/dev/null ||
  { echo "FATAL: the drill's summary does not say ok"; exit 1; }
echo "--- dr drill passed in $(($(date +%s) - started)) s; summary in target/dr-drill.json"
