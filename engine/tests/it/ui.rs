//! The Web UI as a browser first meets it: `/` and `/ui/*` served from the binary with a
//! strict Content-Security-Policy, revalidation by ETag, and assets that load nothing from
//! outside the engine (no CDN, no web font: many deployments are offline). The UI's
//! behaviour is tested in a real browser by `engine/tests/ui` (Playwright).

use engine::http::ui::{CONTENT_SECURITY_POLICY, asset_names};

use crate::app::spawn_app;

/// XML namespace names: identifiers inside SVG, never fetched.
const NAMESPACES: &[&str] = &["http://www.w3.org/2000/svg"];

#[tokio::test]
async fn the_page_is_served_at_the_root_with_a_strict_csp() {
    let app = spawn_app();
    let response = app.anon.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("content-type").as_deref(), Some("text/html; charset=utf-8"));
    let csp = header("content-security-policy").expect("a CSP header");
    assert_eq!(csp, CONTENT_SECURITY_POLICY);
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "CSP lacks {directive}: {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
    assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    let body = response.text().await.unwrap();
    assert!(body.contains(r#"<script type="module" src="/ui/app.js"></script>"#), "{body}");
    // No inline script or style for the CSP to refuse.
    assert!(!body.contains("<script>") && !body.contains("<style") && !body.contains(" style="));
    assert!(!body.contains(" onclick=") && !body.contains(" onload="));
}

#[tokio::test]
async fn every_asset_is_served_with_its_type_and_loads_nothing_from_elsewhere() {
    let app = spawn_app();
    let mut names: Vec<_> = asset_names().collect();
    names.sort_unstable();
    assert!(names.contains(&"app.js") && names.contains(&"app.css"), "{names:?}");
    for name in names {
        let response = app.anon.get(app.url(&format!("/ui/{name}"))).send().await.unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        let expected = match name.rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "html" => "text/html; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("an asset of unexpected type .{other}: {name}"),
        };
        assert_eq!(content_type, expected, "{name}");
        assert_eq!(
            response.headers()["content-security-policy"],
            CONTENT_SECURITY_POLICY,
            "{name}"
        );
        let mut body = response.text().await.unwrap();
        for namespace in NAMESPACES {
            body = body.replace(namespace, "");
        }
        for scheme in ["http://", "https://", "ws://", "wss://", "ftp://"] {
            // The Markdown renderer names the link schemes it allows ('http:', 'https:'),
            // which carry no `//`: anything with one is a URL to somewhere.
            assert!(!body.contains(scheme), "{name} refers to an external URL ({scheme}…)");
        }
        assert!(!body.contains("@import"), "{name} imports a stylesheet");
        assert!(!body.contains("@font-face"), "{name} loads a font");
        if name.ends_with(".js") {
            // Model output must never become markup: the UI builds DOM nodes.
            for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("]
            {
                assert!(!body.contains(sink), "{name} uses {sink}");
            }
            // Module imports stay on this origin, under /ui/.
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                assert!(line.contains("from './"), "{name}: {line}");
            }
        }
        if name.ends_with(".html") || name.ends_with(".css") {
            for attr in ["src=\"", "href=\"", "url("] {
                for (at, _) in body.match_indices(attr) {
                    let target = &body[at + attr.len()..];
                    assert!(
                        target.starts_with("/ui/")
                            || target.starts_with('#')
                            || target.starts_with("data:"),
                        "{name}: {attr}{}",
                        &target[..target.len().min(40)]
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn assets_revalidate_by_etag_and_unknown_files_are_404() {
    let app = spawn_app();
    let response = app.anon.get(app.url("/ui/app.js")).send().await.unwrap();
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let again =
        app.anon.get(app.url("/ui/app.js")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    assert!(again.bytes().await.unwrap().is_empty());
    let stale =
        app.anon.get(app.url("/ui/app.js")).header("if-none-match", "\"0\"").send().await.unwrap();
    assert_eq!(stale.status(), 200);

    for path in ["/ui/nope.js", "/ui/..%2FCargo.toml", "/ui/%2E%2E%2Fsrc%2Flib.rs"] {
        let response = app.anon.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert!(response.headers().contains_key("content-security-policy"), "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
}

#[tokio::test]
async fn the_model_picker_lists_names_only_to_signed_in_users() {
    let app = spawn_app();
    let response = app.anon.get(app.url("/ui/models")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let (status, body) = app.get_json("/ui/models").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["default"], "primary");
    let names: Vec<_> =
        body["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"primary") && names.contains(&"fallback"), "{names:?}");
    assert_eq!(body["models"][0]["fallbacks"], serde_json::json!(["fallback"]));
    // Names, not endpoints: no base URL or header (where keys live) reaches the browser.
    let text = body.to_string();
    assert!(
        !text.contains("base_url") && !text.contains("127.0.0.1") && !text.contains("x-fake-llm"),
        "{text}"
    );
}
