#!/usr/bin/env bash
# Runs the official SDKs (Python `openai` + `anthropic`: gateway_check.py; Node `openai`:
# node/gateway_check.mjs) against Switchyard's compatible APIs, with fake-llm behind it.
#
# Starts fake-llm and the engine on free loopback ports, configured with:
#   steady   — openai_compatible on fake-llm, answers normally
#   primary  — the same, but fake-llm breaks its stream after 3 tokens (x-fake-llm
#              break_after=3); falls back to `fallback`
#   fallback — an Anthropic endpoint on fake-llm
#   auto     — alias for primary → fallback
# Binaries: $FAKE_LLM_BIN / $SWITCHYARD_BIN, else the debug builds (built first).
# Set SKIP_NODE=1 to skip the Node check (e.g. no node on the machine).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=loadtest/lib/tenant_key.sh
source "$repo/loadtest/lib/tenant_key.sh"

fake_bin="${FAKE_LLM_BIN:-}"
engine_bin="${SWITCHYARD_BIN:-}"
if [[ -z "$fake_bin" || -z "$engine_bin" ]]; then
    (cd "$repo" && cargo build -q -p loadtest --bin fake-llm -p engine --bin switchyard)
    target="${CARGO_TARGET_DIR:-$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}"
    fake_bin="${fake_bin:-$target/debug/fake-llm}"
    engine_bin="${engine_bin:-$target/debug/switchyard}"
fi

work="$(mktemp -d)"
fake_pid="" engine_pid=""
cleanup() {
    # The engine first, so it does not log errors for an upstream that went away.
    [[ -n "$engine_pid" ]] && { kill "$engine_pid" 2>/dev/null || true; wait "$engine_pid" 2>/dev/null || true; }
    [[ -n "$fake_pid" ]] && { kill "$fake_pid" 2>/dev/null || true; wait "$fake_pid" 2>/dev/null || true; }
    rm -rf "$work"
}
trap cleanup EXIT

# Waits (up to 30 s) for a line matching $2 in file $1 from process $3; prints the URL in it.
wait_for_url() {
    for _ in $(seq 300); do
        if url="$(grep -o 'http://[0-9.]*:[0-9]*' "$1" 2>/dev/null | head -n 1)" && [[ -n "$url" ]]; then
            echo "$url"
            return 0
        fi
        kill -0 "$2" 2>/dev/null || { echo "process exited before listening:" >&2; cat "$1" >&2; return 1; }
        sleep 0.1
    done
    echo "timed out waiting for a listening line" >&2
    return 1
}

"$fake_bin" --listen 127.0.0.1:0 --tokens 12 >"$work/fake.out" 2>"$work/fake.err" &
fake_pid=$!
fake_url="$(wait_for_url "$work/fake.out" "$fake_pid")"

cat >"$work/switchyard.toml" <<EOF
[server]
listen = "127.0.0.1:0"
shutdown_grace_secs = 1

[[models]]
name = "steady"
provider = "openai_compatible"
upstream_model = "gpt-4o"
base_url = "$fake_url/v1"

[[models]]
name = "primary"
provider = "openai_compatible"
upstream_model = "gpt-4o"
base_url = "$fake_url/v1"
headers = { "x-fake-llm" = "break_after=3" }
fallbacks = ["fallback"]

[[models]]
name = "fallback"
provider = "anthropic"
upstream_model = "claude-sonnet-4-5"
base_url = "$fake_url"
api_key = "fake-key"

# The checks ask the same question on purpose (to compare texts across paths); with the
# response cache on, repeats would be served from it with zero usage.
[cache]
exact = false
semantic = false

[routing]
default_model = "steady"
aliases = { auto = ["primary", "fallback"] }
EOF

# The SDKs authenticate with a tenant API key, created below by the bootstrap owner.
export SWITCHYARD_BOOTSTRAP_EMAIL="sdk-check@switchyard.test"
export SWITCHYARD_BOOTSTRAP_PASSWORD="sdk-check-password-$$"
SWITCHYARD_LOG_FORMAT=json RUST_LOG=warn "$engine_bin" --config "$work/switchyard.toml" \
    >"$work/engine.out" 2>"$work/engine.err" &
engine_pid=$!
engine_url="$(wait_for_url "$work/engine.out" "$engine_pid")"
echo "fake-llm at $fake_url, switchyard at $engine_url"

SWITCHYARD_API_KEY="$(tenant_api_key "$engine_url" sdk-check)"
export SWITCHYARD_API_KEY

status=0
python3 "$here/gateway_check.py" "$engine_url" || status=1
if [[ "${SKIP_NODE:-0}" != 1 ]]; then
    if [[ ! -d "$here/node/node_modules/openai" ]]; then
        (cd "$here/node" && npm ci --silent --no-audit --no-fund)
    fi
    node "$here/node/gateway_check.mjs" "$engine_url" || status=1
fi
if [[ $status != 0 ]]; then
    echo "--- engine log (last 40 lines) ---" >&2
    tail -n 40 "$work/engine.err" >&2
fi
exit $status
