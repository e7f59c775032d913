#!/usr/bin/env bash
# Issue 7's benchmark: the latency Switchyard adds on /v1/chat/completions (and /v1/messages),
# measured with the peer kit in ../shared/bench against the kit's mock upstream, so the
# figures sit beside LiteLLM's from the same kit (run `run_litellm_baseline.sh` in the same
# session for a side-by-side; this script runs it too with WITH_LITELLM=1).
#
#   bash loadtest/compat_bench/run.sh                     # 0 ms upstream, c = 1, 10, 100
#   MOCK_LATENCY_MS=50 bash loadtest/compat_bench/run.sh  # an upstream with 50 ms to first byte
#
# Knobs (passed through to the kit): DURATION (20), STREAM_DURATION (10), WARMUP (3),
# CONCURRENCY (1,10,100), STREAM_CONCURRENCY (1,10,100), ANTHROPIC_CONCURRENCY (10),
# MOCK_LATENCY_MS (0), MOCK_TOKENS (16), WORKERS (engine HTTP workers; 0 = one per core),
# WITH_LITELLM (0), ENGINE_BIN (a prebuilt switchyard instead of building this checkout).
# Results land in $OUT_DIR (default /tmp/compat-bench/<UTC time>/).
#
# Needs the kit's venv (/tmp/peerkit/venv, made by run_litellm_baseline.sh or by hand from
# ../shared/bench/requirements.txt) and wrk. Builds the engine in release.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=loadtest/lib/tenant_key.sh
source "$repo/loadtest/lib/tenant_key.sh"
kit="${PEERKIT_KIT:-$repo/../shared/bench}"
venv="${PEERKIT_VENV:-/tmp/peerkit/venv}"
py="$venv/bin/python"
[[ -x "$py" ]] || { echo "no kit venv at $venv: create it from $kit/requirements.txt" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing (apt-get install -y wrk)" >&2; exit 1; }

out="${OUT_DIR:-/tmp/compat-bench/$(date -u +%Y-%m-%dT%H%M%S)}"
mkdir -p "$out"
mock_port="${MOCK_PORT:-18901}"
engine_port="${ENGINE_PORT:-18080}"

if [[ -n "${ENGINE_BIN:-}" ]]; then
    engine_bin="$ENGINE_BIN" # a prebuilt binary, e.g. another commit's for an A/B
else
    (cd "$repo" && cargo build -q --release -p engine --bin switchyard)
    target="${CARGO_TARGET_DIR:-$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}"
    engine_bin="$target/release/switchyard"
fi

mock_pid="" engine_pid=""
cleanup() {
    # The gateway first, so it does not log errors for an upstream that went away.
    [[ -n "$engine_pid" ]] && { kill "$engine_pid" 2>/dev/null || true; wait "$engine_pid" 2>/dev/null || true; }
    [[ -n "$mock_pid" ]] && { kill "$mock_pid" 2>/dev/null || true; wait "$mock_pid" 2>/dev/null || true; }
    return 0 # the trap's status would otherwise be the script's
}
trap cleanup EXIT

wait_http() { # url
    for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "timed out waiting for $1" >&2
    return 1
}

MOCK_LATENCY_MS="${MOCK_LATENCY_MS:-0}" MOCK_TOKENS="${MOCK_TOKENS:-16}" \
    "$py" "$kit/mock_upstream.py" --port "$mock_port" >"$out/mock.log" 2>&1 &
mock_pid=$!
wait_http "http://127.0.0.1:$mock_port/health"

# Everything that would refuse a benchmark's request rate is lifted (the point is the cost
# of the path, not the limits), and the response cache is off: the kit sends one prompt
# over and over, which the cache would answer without reaching the upstream.
cat >"$out/switchyard.toml" <<TOML
[server]
listen = "127.0.0.1:$engine_port"
shutdown_grace_secs = 1
workers = ${WORKERS:-0}

[limits]
tenant_turns_in_flight = 100000
max_connections_per_ip = 0

[auth]
tenant_requests_per_minute = 0
user_requests_per_minute = 0
key_requests_per_minute = 0

[cache]
exact = false
semantic = false

[[models]]
name = "gpt-4o-mini"
provider = "openai_compatible"
upstream_model = "gpt-4o-mini"
base_url = "http://127.0.0.1:$mock_port/v1"

[[models]]
name = "claude-3-5-haiku"
provider = "anthropic"
upstream_model = "claude-3-5-haiku-20241022"
base_url = "http://127.0.0.1:$mock_port"
api_key = "mock-key"
TOML

export SWITCHYARD_BOOTSTRAP_EMAIL="bench@switchyard.test"
export SWITCHYARD_BOOTSTRAP_PASSWORD="bench-password-$$"
SWITCHYARD_LOG_FORMAT=json RUST_LOG=warn "$engine_bin" --config "$out/switchyard.toml" \
    >"$out/engine.out" 2>"$out/engine.err" &
engine_pid=$!
wait_http "http://127.0.0.1:$engine_port/healthz"
engine_url="http://127.0.0.1:$engine_port"

key="$(tenant_api_key "$engine_url" bench)"

"$py" "$kit/real_client_check.py" "$engine_url" --api-key "$key" \
    --anthropic-model claude-3-5-haiku >"$out/client_check.txt" 2>&1 \
    || { cat "$out/client_check.txt" >&2; exit 1; }
tail -n 1 "$out/client_check.txt"

"$py" "$kit/bench.py" --mock-url "http://127.0.0.1:$mock_port" --gateway-url "$engine_url" \
    --gateway-key "$key" --gateway-label Switchyard --mock-pid "$mock_pid" --gateway-pid "$engine_pid" \
    --anthropic-gateway-model claude-3-5-haiku \
    --concurrency "${CONCURRENCY:-1,10,100}" --stream-concurrency "${STREAM_CONCURRENCY-1,10,100}" \
    --anthropic-concurrency "${ANTHROPIC_CONCURRENCY-10}" \
    --duration "${DURATION:-20}" --stream-duration "${STREAM_DURATION:-10}" --warmup "${WARMUP:-3}" \
    --versions "Switchyard $(cd "$repo" && git rev-parse --short HEAD)" \
    --out-json "$out/switchyard.json" --out-md "$out/switchyard.md" | tee "$out/bench_log.txt"

cleanup
engine_pid="" mock_pid=""
if [[ "${WITH_LITELLM:-0}" == 1 ]]; then
    OUT_DIR="$out/litellm" bash "$kit/run_litellm_baseline.sh" | tee "$out/litellm_log.txt"
fi
echo "results in $out"
