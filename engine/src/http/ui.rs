//! The Web UI: a chat client and an admin console, served by the engine itself.
//!
//! The assets under `engine/ui/` (plain HTML, CSS and JavaScript modules — no build step) are
//! compiled into the binary with `include_bytes!`, so `cargo run` serves the UI with nothing
//! but Rust installed and a deployment has no separate static server or CDN to keep in step.
//! `GET /` is the page; `GET /ui/{file}` the assets; `GET /ui/models` the models a user may
//! pick when creating a conversation. Everything else the UI does goes through the public API
//! (`/api/v1/*`, `/ws/{id}`, `/admin/*`), with the same authorization as any other client:
//! see `docs/ui.md`.
//!
//! Every response carries a strict Content-Security-Policy: scripts, styles and connections
//! from this origin only, no inline script or style, no plugins, no framing. Model output is
//! untrusted text, and the UI never turns it into HTML (it builds DOM nodes); the CSP is the
//! second wall should a bug ever let markup through.
//!
//! Caching: file names carry no content hash (there is no build step to add one), so assets
//! are served `no-cache` with a strong `ETag` computed at compile time: browsers revalidate
//! on each load and get a body-less `304` while the binary is unchanged.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, get, web};
use serde_json::json;

use crate::auth::{Authorized, perm};
use crate::error::ApiError;
use crate::server::AppState;

/// The policy on every UI response. `connect-src 'self'` covers the WebSocket on the same
/// host and port (CSP level 3 matches `ws:`/`wss:` for `'self'`).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'none'; \
     object-src 'none'; media-src 'none'; frame-src 'none'; worker-src 'none'; \
     manifest-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: &'static str,
}

/// FNV-1a, evaluated at compile time: a content fingerprint for the ETag, not a security hash.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `"<16 hex digits>"`, quoted as an ETag must be, built in a const context.
const fn etag_bytes(bytes: &[u8]) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = fnv1a(bytes);
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! asset {
    ($name:literal, $content_type:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!("../../ui/", $name));
        const ETAG: [u8; 18] = etag_bytes(BODY);
        Asset {
            name: $name,
            content_type: $content_type,
            body: BODY,
            // Hex digits and quotes are ASCII, so this never fails.
            etag: match std::str::from_utf8(&ETAG) {
                Ok(s) => s,
                Err(_) => "\"0\"",
            },
        }
    }};
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the UI has; anything else under `/ui/` is a 404.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("markdown.js", JS),
    asset!("socket.js", JS),
    asset!("chat.js", JS),
    asset!("admin.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The names of every embedded asset (the integration test scans each for external URLs).
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.name)
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(index).service(models).service(ui_file);
}

#[get("/")]
async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, "index.html")
}

#[get("/ui/{file}")]
async fn ui_file(req: HttpRequest, file: web::Path<String>) -> HttpResponse {
    serve(&req, &file)
}

fn serve(req: &HttpRequest, name: &str) -> HttpResponse {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return secured(HttpResponse::NotFound())
            .json(ApiError::not_found("no such UI file").body());
    };
    if let Some(dir) = std::env::var_os(DEV_DIR_VAR) {
        return serve_from_disk(asset, std::path::Path::new(&dir));
    }
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == asset.etag || t.trim() == "*"));
    let mut response =
        if fresh { secured(HttpResponse::NotModified()) } else { secured(HttpResponse::Ok()) };
    response
        .insert_header((header::ETAG, HeaderValue::from_static(asset.etag)))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    if fresh {
        return response.finish();
    }
    response.content_type(asset.content_type).body(asset.body)
}

/// Development aid: with `SWITCHYARD_UI_DIR=engine/ui`, the same files are read from disk on
/// every request, so editing the UI needs a reload instead of a rebuild. Only names in
/// [`ASSETS`] are ever read (no path from the request reaches the file system).
const DEV_DIR_VAR: &str = "SWITCHYARD_UI_DIR";

fn serve_from_disk(asset: &Asset, dir: &std::path::Path) -> HttpResponse {
    match std::fs::read(dir.join(asset.name)) {
        Ok(body) => secured(HttpResponse::Ok())
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .content_type(asset.content_type)
            .body(body),
        Err(_) => secured(HttpResponse::NotFound())
            .json(ApiError::not_found("no such UI file in SWITCHYARD_UI_DIR").body()),
    }
}

/// The security headers every UI response carries.
fn secured(mut builder: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    builder
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header(("cross-origin-opener-policy", "same-origin"))
        .insert_header(("permissions-policy", "camera=(), microphone=(), geolocation=()"));
    builder
}

/// The models a signed-in user may pick for a new conversation: configured model names (with
/// their fallback chains), route aliases such as `auto`, and the default. Names only — no
/// endpoints, keys or headers.
#[get("/ui/models")]
async fn models(
    state: web::Data<AppState>,
    _who: Authorized<perm::ConversationsRead>,
) -> HttpResponse {
    let config = &state.config;
    let models: Vec<_> =
        config.models.iter().map(|m| json!({ "name": m.name, "fallbacks": m.fallbacks })).collect();
    let default = config
        .routing
        .default_model
        .clone()
        .or_else(|| config.models.first().map(|m| m.name.clone()));
    secured(HttpResponse::Ok()).insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
        "default": default,
        "models": models,
        "aliases": config.routing.aliases,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_quoted_hex_and_differ_per_file() {
        let tags: std::collections::BTreeSet<_> = ASSETS.iter().map(|a| a.etag).collect();
        assert_eq!(tags.len(), ASSETS.len(), "two assets share an ETag");
        for tag in tags {
            assert_eq!(tag.len(), 18);
            assert!(tag.starts_with('"') && tag.ends_with('"'));
            assert!(tag[1..17].bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
