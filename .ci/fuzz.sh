#!/usr/bin/env bash
# Fuzzing smoke run for CI: builds every cargo-fuzz target in fuzz/ and runs each for a fixed
# short time on its committed corpus (fuzz/corpus/<target>); fails if any target finds a
# crash, a failed check, a leak or a hang. See fuzz/README.md for the targets and for fuzzing
# longer by hand.
#
# - The machine has only a stable toolchain; cargo-fuzz passes nightly-only flags
#   (-Zsanitizer, sanitizer-coverage), so RUSTC_BOOTSTRAP=1 lets stable accept them.
# - Builds go to their own target dir (instrumented artifacts never mix with the normal ones).
# - New inputs the fuzzer finds go to a scratch directory, so the committed corpus stays as
#   it is; a crash is written to fuzz/artifacts/<target>/ and printed below.
#
# Knobs: FUZZ_SECONDS (per target, default 30), FUZZ_TARGETS (space-separated subset),
# FUZZ_SANITIZER (address | none, default address), FUZZ_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-address}"
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/switchyard/fuzz-target}"
CARGO_FUZZ_VERSION="0.13.2"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
export CARGO_TARGET_DIR="$FUZZ_TARGET_DIR"

section() { printf '\n=== %s ===\n' "$*"; }
started=$(date +%s)

section "cargo-fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing; installing $CARGO_FUZZ_VERSION from crates.io"
  # The tool itself is an ordinary build: keep it out of the fuzz target dir.
  CARGO_TARGET_DIR="$(mktemp -d)" cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
cargo fuzz --version

# The fuzz crate is its own workspace; start its lockfile from the root one so the engine is
# fuzzed with exactly the dependency versions it ships with (cargo adds libfuzzer-sys & co.).
cp Cargo.lock fuzz/Cargo.lock

# 16 codegen units (cargo-fuzz defaults to one): a faster build of the engine's dependency
# tree on two cores, for a little fuzzing speed.
flags=(--sanitizer "$FUZZ_SANITIZER" --codegen-units 16 --target-dir "$FUZZ_TARGET_DIR")

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
section "build (${FUZZ_SANITIZER} sanitizer): $(echo $targets)"
build_started=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "built in $(( $(date +%s) - build_started )) s"

# Run the binaries just built rather than `cargo fuzz run`, which would check (and maybe
# redo) the build before every target.
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$FUZZ_TARGET_DIR/$triple/release"

failed=()
for target in $targets; do
  section "fuzz $target for ${FUZZ_SECONDS} s"
  corpus="fuzz/corpus/$target"
  [ -d "$corpus" ] || { echo "FATAL: no committed corpus at $corpus"; exit 1; }
  artifacts="fuzz/artifacts/$target"
  mkdir -p "$artifacts"
  scratch=$(mktemp -d)
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: a bounded memory footprint.
  rc=0
  "$bin_dir/$target" "$scratch" "$corpus" -artifact_prefix="$artifacts/" \
    -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$scratch.log" 2>&1 || rc=$?
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' \
    "$scratch.log" || true
  if [ "$rc" -ne 0 ]; then
    echo "--- $target FAILED (exit $rc); the end of its log:"
    tail -n 80 "$scratch.log"
    failed+=("$target")
  fi
  rm -rf "$scratch" "$scratch.log"
done

section "summary"
echo "fuzz.sh took $(( $(date +%s) - started )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}; the inputs are in fuzz/artifacts/<target>/"
  echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>"
  exit 1
fi
echo "every target ran ${FUZZ_SECONDS} s without a crash"
