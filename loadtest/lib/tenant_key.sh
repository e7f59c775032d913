# shellcheck shell=bash
# Sourced by the scripts that point official SDKs or the peer kit at a running engine.
#
# tenant_api_key ENGINE_URL NAME — signs in as the bootstrap owner
# ($SWITCHYARD_BOOTSTRAP_EMAIL / $SWITCHYARD_BOOTSTRAP_PASSWORD, which the engine was started
# with) and prints a new tenant API key named NAME that may read and write conversations.
tenant_api_key() {
    local url="$1" name="$2" token
    token="$(curl -sf -X POST "$url/api/v1/auth/login" -H 'content-type: application/json' \
        -d "{\"email\":\"$SWITCHYARD_BOOTSTRAP_EMAIL\",\"password\":\"$SWITCHYARD_BOOTSTRAP_PASSWORD\"}" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
    curl -sf -X POST "$url/api/v1/api-keys" -H "authorization: Bearer $token" \
        -H 'content-type: application/json' \
        -d "{\"name\":\"$name\",\"scopes\":[\"conversations:read\",\"conversations:write\"]}" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}
