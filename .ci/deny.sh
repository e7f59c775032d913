#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (policy in deny.toml at the root):
#
# - licenses: every crate's license must be on the allow-list (the licenses actually in the
#   tree; a new one is a decision, not an accident);
# - bans: duplicate versions of a crate are listed as warnings (they cost build time and
#   binary size, and usually wait on upstream releases); wildcard versions are refused;
# - sources: crates.io only — no git dependencies, no other registries;
# - advisories: the RustSec database of vulnerable, unsound and unmaintained crates. It is a
#   git repository on GitHub, which this project's machines cannot reach (only package
#   registries are reachable). So the check runs when GitHub answers (fetching the database),
#   or against a database already on disk (fetched earlier, or copied in by hand: see
#   docs/operations.md, "Supply chain"); otherwise it is skipped, LOUDLY. Set
#   SWITCHYARD_REQUIRE_ADVISORIES=1 to make a skip fail the script instead.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION="0.20.2"
export CARGO_TERM_COLOR=never
section() { printf '\n=== %s ===\n' "$*"; }

section "cargo-deny"
if ! cargo deny --version >/dev/null 2>&1; then
  echo "cargo-deny is missing; installing $CARGO_DENY_VERSION from crates.io"
  CARGO_TARGET_DIR="$(mktemp -d)" cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi
cargo deny --version

section "licenses, bans (duplicates are warnings), sources"
cargo deny --locked check --hide-inclusion-graph licenses bans sources

section "advisories (RustSec)"
db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if timeout 20 git ls-remote --exit-code https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  echo "GitHub is reachable: fetching the advisory database"
  cargo deny --locked check advisories
elif compgen -G "$db_root/advisory-db-*/crates" >/dev/null; then
  db=$(ls -d "$db_root"/advisory-db-*/ | head -n 1)
  age=$(git -C "$db" log -1 --format=%cr 2>/dev/null || echo "unknown age")
  echo "WARNING: GitHub is unreachable; checking against the database already on disk"
  echo "WARNING: $db (last advisory commit: $age) — it is only as fresh as that"
  cargo deny --locked --offline check advisories
else
  cat <<'WARN'
################################################################################
#  WARNING: ADVISORIES WERE NOT CHECKED.                                        #
#  The RustSec advisory database lives on GitHub, which this machine cannot     #
#  reach, and no copy of it is on disk. Known-vulnerable crates would NOT be    #
#  caught by this run. See docs/operations.md, "Supply chain".                  #
################################################################################
WARN
  if [ "${SWITCHYARD_REQUIRE_ADVISORIES:-0}" = "1" ]; then
    echo "FATAL: SWITCHYARD_REQUIRE_ADVISORIES=1 and the advisory database is unavailable"
    exit 1
  fi
fi
