#!/usr/bin/env bash
# Runs sdk_check.py (official openai + anthropic Python SDKs) against a fresh fake-llm.
#
# Uses $FAKE_LLM_BIN if set, else the debug binary under $CARGO_TARGET_DIR (or the target dir
# cargo reports), building it first. fake-llm prints `listening on http://IP:PORT` as its
# first stdout line; that is how the port chosen for --listen 127.0.0.1:0 is found.
# Install the SDKs first: pip install -r loadtest/sdk_check/requirements.txt
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

bin="${FAKE_LLM_BIN:-}"
if [[ -z "$bin" ]]; then
    (cd "$repo" && cargo build -q -p loadtest --bin fake-llm)
    target="${CARGO_TARGET_DIR:-$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}"
    bin="$target/debug/fake-llm"
fi

out="$(mktemp)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$out"' EXIT
"$bin" --listen 127.0.0.1:0 >"$out" 2>/dev/null &
pid=$!

# Wait (up to 10 s) for the first stdout line.
for _ in $(seq 100); do
    [[ -s "$out" ]] && break
    kill -0 "$pid" 2>/dev/null || { echo "fake-llm exited before listening" >&2; exit 1; }
    sleep 0.1
done
line="$(head -n 1 "$out")"
base="${line#listening on }"
if [[ "$base" != http://* ]]; then
    echo "unexpected first line from fake-llm: '$line'" >&2
    exit 1
fi

python3 "$here/sdk_check.py" "$base"
