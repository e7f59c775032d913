//! Observability as an operator sees it: the `/metrics` page after a scripted session (parsed
//! whole by a strict Prometheus text parser), `/admin/slo`, request ids, and the traces an
//! in-process OTLP receiver gets for a turn that fails over.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::telemetry::{LogFormat, TelemetryConfig};
use loadtest::fake_llm::Scenario;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app::{TestApp, recv_turn, send, spawn_app_configured};

// ---------------------------------------------------------------------------------------------
// A strict Prometheus text-format (0.0.4) parser.

/// Sorted label pairs.
type Labels = Vec<(String, String)>;

/// One series: name and sorted labels.
type SeriesKey = (String, Labels);

#[derive(Debug, Default)]
struct Page {
    types: HashMap<String, String>,
    samples: BTreeMap<SeriesKey, f64>,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// The family a sample belongs to (histogram series carry suffixes).
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram" || t == "summary")
        {
            return Some(base);
        }
    }
    None
}

/// Parses the whole page; panics naming the line on anything malformed, a sample whose family
/// has no `# TYPE`, a duplicate series, or an inconsistent histogram.
fn parse_page(text: &str) -> Page {
    let mut page = Page::default();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("TYPE") => {
                    let name = parts.next().unwrap_or_else(|| panic!("{}", at()));
                    let kind = parts.next().unwrap_or_else(|| panic!("{}", at()));
                    assert!(is_metric_name(name), "bad metric name, {}", at());
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "bad type, {}",
                        at()
                    );
                    assert!(
                        page.types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "TYPE declared twice, {}",
                        at()
                    );
                }
                Some("HELP") => {
                    let name = parts.next().unwrap_or_else(|| panic!("{}", at()));
                    assert!(is_metric_name(name), "bad metric name, {}", at());
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value, {}", at()));
        let name = &line[..name_end];
        assert!(is_metric_name(name), "bad metric name, {}", at());
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(mut inner) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = inner.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = inner.find('=').unwrap_or_else(|| panic!("label without =, {}", at()));
                let key = &inner[..eq];
                assert!(is_label_name(key), "bad label name {key:?}, {}", at());
                let quoted = inner[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| panic!("unquoted label value, {}", at()));
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    let (i, c) = chars.next().unwrap_or_else(|| panic!("unterminated, {}", at()));
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            other => panic!("bad escape {other:?}, {}", at()),
                        },
                        '"' => break i,
                        '\n' => panic!("raw newline in a label value, {}", at()),
                        c => value.push(c),
                    }
                };
                labels.push((key.to_owned(), value));
                inner = &quoted[end + 1..];
                if let Some(after) = inner.strip_prefix(',') {
                    inner = after;
                } else {
                    assert!(inner.starts_with('}'), "expected , or }}, {}", at());
                }
            }
        }
        let mut fields = rest.split(' ').filter(|f| !f.is_empty());
        let value = fields
            .next()
            .and_then(parse_value)
            .unwrap_or_else(|| panic!("bad sample value, {}", at()));
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().unwrap_or_else(|_| panic!("bad timestamp, {}", at()));
        }
        assert!(fields.next().is_none(), "trailing fields, {}", at());
        assert!(family(name, &page.types).is_some(), "sample before its # TYPE, {}", at());
        let mut names = HashSet::new();
        assert!(labels.iter().all(|(k, _)| names.insert(k.clone())), "duplicate label, {}", at());
        labels.sort();
        let key = (name.to_owned(), labels);
        assert!(page.samples.insert(key, value).is_none(), "duplicate series, {}", at());
    }
    check_histograms(&page);
    page
}

/// Buckets are cumulative, end in `+Inf`, and `+Inf` equals `_count`.
fn check_histograms(page: &Page) {
    let histograms: Vec<&String> =
        page.types.iter().filter(|(_, t)| *t == "histogram").map(|(n, _)| n).collect();
    for name in histograms {
        let bucket = format!("{name}_bucket");
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for ((n, labels), value) in &page.samples {
            if *n != bucket {
                continue;
            }
            let le = labels.iter().find(|(k, _)| k == "le").expect("bucket has le");
            let rest: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            series.entry(rest).or_default().push((parse_value(&le.1).expect("le"), *value));
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{name}: not cumulative");
            let (le, inf) = *buckets.last().expect("buckets");
            assert!(le.is_infinite(), "{name}: no +Inf bucket");
            let count = page.samples.get(&(format!("{name}_count"), labels.clone()));
            assert_eq!(count, Some(&inf), "{name}{labels:?}: +Inf bucket != _count");
        }
    }
}

impl Page {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        labels.sort();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// The value, or 0 when the series does not exist yet.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Sum over every series of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|((n, ls), _)| {
                n == name
                    && labels.iter().all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn label_values(&self, name: &str, label: &str) -> HashSet<String> {
        self.samples
            .keys()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, ls)| ls.iter().find(|(k, _)| k == label).map(|(_, v)| v.clone()))
            .collect()
    }
}

async fn scrape(app: &TestApp) -> Page {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    parse_page(&response.text().await.unwrap())
}

/// The test engine with its two models renamed uniquely, so this test's model-labelled series
/// are its own even when other tests share the process (and its metrics recorder).
fn spawn_named(primary_knobs: &str) -> (TestApp, String, String) {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (primary, fallback) = (format!("obs-a-{suffix}"), format!("obs-b-{suffix}"));
    let (p, f) = (primary.clone(), fallback.clone());
    let app = spawn_app_configured(
        primary_knobs,
        Scenario { tokens: 8, ..Scenario::default() },
        "",
        move |config| {
            config.models[0].name = p.clone();
            config.models[0].fallbacks = vec![f.clone()];
            config.models[1].name = f;
            config.routing.default_model = Some(p);
        },
    );
    (app, primary, fallback)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_after_a_session_with_a_failover() {
    let (app, primary, fallback) = spawn_named("break_after=3");
    let before = scrape(&app).await;

    // The session: a conversation over REST, one WebSocket turn that fails over mid-stream,
    // a read of the conversation, and a request for a route that does not exist.
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "user_message", "client_id": "m1", "content": "Trains?"})).await;
    let frames = recv_turn(&mut ws).await;
    let done = frames.last().unwrap();
    assert_eq!(done["type"], "done", "{frames:?}");
    assert_eq!(done["model"], fallback.as_str());
    assert!(frames.iter().any(|f| f["type"] == "failover"), "{frames:?}");
    let deltas = frames.iter().filter(|f| f["type"] == "delta").count() as f64;
    let (status, _) = app.get_json(&format!("/api/v1/conversations/{id}")).await;
    assert_eq!(status, 200);
    let missing = app.http.get(app.url("/no-such-route")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    drop(ws);

    // Then the same question twice on the fallback, in two conversations: the first answer is
    // stored (a clean turn on one model), the second comes from the exact cache tier.
    let fallback_turn = |content: &'static str| {
        let app = &app;
        let model = fallback.clone();
        async move {
            let id = app.create_conversation(json!({ "model": model })).await;
            let mut ws = app.ws_connect(&id).await;
            send(&mut ws, json!({"type": "user_message", "content": content})).await;
            let frames = recv_turn(&mut ws).await;
            let done = frames.last().unwrap().clone();
            assert_eq!(done["type"], "done", "{frames:?}");
            done
        }
    };
    let stored = fallback_turn("What is a switchyard?").await;
    assert_eq!(stored["cache"], "miss");
    let cached = fallback_turn("What is a switchyard?").await;
    assert_eq!(cached["cache"], "exact", "{cached}");

    let after = scrape(&app).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let (p, f) = (primary.as_str(), fallback.as_str());
    let kind = "openai_compatible";

    // Providers: the primary's leg broke, the fallback's completed; one failover between them.
    assert_eq!(
        after.get(
            "switchyard_provider_requests_total",
            &[("provider", kind), ("model", p), ("outcome", "stream_broken")]
        ),
        Some(1.0)
    );
    assert_eq!(
        after.get(
            "switchyard_provider_requests_total",
            &[("provider", kind), ("model", f), ("outcome", "completed")]
        ),
        Some(2.0),
        "the failover's second leg and the first fallback question; the repeat was cached"
    );
    assert_eq!(after.sum("switchyard_provider_requests_total", &[("model", p)]), 1.0);
    assert_eq!(
        after.get(
            "switchyard_failovers_total",
            &[("from", p), ("to", f), ("reason", "stream_broken")]
        ),
        Some(1.0)
    );
    assert_eq!(
        after.get(
            "switchyard_provider_request_duration_seconds_count",
            &[("provider", kind), ("model", f)]
        ),
        Some(2.0)
    );

    // Latency: the failover turn's first token came from the primary and the fallback
    // finished it; the first fallback question is the fallback's only first token (the cached
    // repeat never reached the router).
    assert_eq!(
        after.get("switchyard_turn_time_to_first_token_seconds_count", &[("model", p)]),
        Some(1.0)
    );
    assert_eq!(
        after.get("switchyard_turn_time_to_first_token_seconds_count", &[("model", f)]),
        Some(1.0)
    );
    assert_eq!(after.get("switchyard_turn_duration_seconds_count", &[("model", p)]), None);
    assert_eq!(after.get("switchyard_turn_duration_seconds_count", &[("model", f)]), Some(2.0));
    assert_eq!(
        after.get("switchyard_turn_duration_seconds_bucket", &[("model", f), ("le", "+Inf")]),
        Some(2.0)
    );

    // Tokens by tenant and model: the primary streamed 3 before breaking (still billed), and
    // both legs add up to the usage the client was told.
    let tenants = after.label_values("switchyard_tokens_total", "tenant");
    let tenants_of = |model: &str| -> HashSet<String> {
        after
            .samples
            .keys()
            .filter(|(n, ls)| {
                n == "switchyard_tokens_total" && ls.iter().any(|(k, v)| k == "model" && v == model)
            })
            .filter_map(|(_, ls)| ls.iter().find(|(k, _)| k == "tenant").map(|(_, v)| v.clone()))
            .collect()
    };
    let tenant = tenants
        .iter()
        .find(|t| {
            after
                .get(
                    "switchyard_tokens_total",
                    &[("tenant", t), ("model", p), ("direction", "output")],
                )
                .is_some()
        })
        .unwrap_or_else(|| panic!("no token series for {p}: tenants {tenants:?}"))
        .clone();
    assert_eq!(tenants_of(p), HashSet::from([tenant.clone()]), "one tenant ran this model");
    assert_ne!(tenant, engine::telemetry::metrics::OTHER_TENANT);
    let out = |model: &str| {
        after.value(
            "switchyard_tokens_total",
            &[("tenant", &tenant), ("model", model), ("direction", "output")],
        )
    };
    assert_eq!(out(p), 3.0);
    let usage = |done: &Value, key: &str| done["usage"][key].as_f64().unwrap();
    assert_eq!(out(p) + out(f), usage(done, "output_tokens") + usage(&stored, "output_tokens"));
    assert_eq!(
        after.value(
            "switchyard_tokens_total",
            &[("tenant", &tenant), ("model", f), ("direction", "input")]
        ),
        usage(done, "input_tokens") + usage(&stored, "input_tokens")
    );

    // Turns and the SLO counters (process-wide, so deltas; other tests may add to them).
    assert!(delta("switchyard_turns_total", &[("outcome", "completed")]) >= 1.0);
    for outcome in ["completed", "failed", "rejected", "cancelled"] {
        assert!(
            after.get("switchyard_turns_total", &[("outcome", outcome)]).is_some(),
            "{outcome}"
        );
    }

    // The tree, read from the Registry at scrape time.
    assert_eq!(after.get("switchyard_provider_circuit_state", &[("model", f)]), Some(0.0));
    let circuit = after.get("switchyard_provider_circuit_state", &[("model", p)]).unwrap();
    assert!([0.0, 1.0, 2.0].contains(&circuit));
    assert_eq!(after.get("switchyard_supervisor_restarts_total", &[("model", p)]), Some(0.0));
    assert!(after.value("switchyard_actors", &[("kind", "provider")]) >= 2.0);
    assert!(after.value("switchyard_actors", &[("kind", "conversation")]) >= 1.0);
    for kind in ["provider", "conversation", "tenant", "router"] {
        assert!(after.get("switchyard_actor_mailbox_depth", &[("kind", kind)]).is_some(), "{kind}");
        assert!(
            after.get("switchyard_actor_mailbox_depth_max", &[("kind", kind)]).is_some(),
            "{kind}"
        );
    }

    // HTTP by route pattern (never the raw path), WebSocket connections and frames.
    assert!(
        delta(
            "switchyard_http_requests_total",
            &[("method", "POST"), ("route", "/api/v1/conversations"), ("status", "201")]
        ) >= 1.0
    );
    assert!(
        delta(
            "switchyard_http_requests_total",
            &[("method", "GET"), ("route", "/api/v1/conversations/{id}"), ("status", "200")]
        ) >= 1.0
    );
    assert!(
        delta(
            "switchyard_http_requests_total",
            &[("method", "GET"), ("route", "unmatched"), ("status", "404")]
        ) >= 1.0
    );
    let routes = after.label_values("switchyard_http_requests_total", "route");
    assert!(!routes.iter().any(|r| r.contains(&id)), "a raw id leaked into a label: {routes:?}");
    assert!(
        after
            .get(
                "switchyard_http_request_duration_seconds_bucket",
                &[("method", "POST"), ("route", "/api/v1/conversations"), ("le", "+Inf")]
            )
            .is_some()
    );
    assert!(delta("switchyard_websocket_connections_total", &[]) >= 1.0);
    assert!(
        delta(
            "switchyard_websocket_frames_total",
            &[("direction", "in"), ("type", "user_message")]
        ) >= 1.0
    );
    assert!(
        delta("switchyard_websocket_frames_total", &[("direction", "out"), ("type", "delta")])
            >= deltas
    );
    assert!(
        delta("switchyard_websocket_frames_total", &[("direction", "out"), ("type", "failover")])
            >= 1.0
    );

    // The cache: three exact lookups (the failover turn, the first fallback question: misses;
    // the repeat: a hit). Process-wide counters, hence at-least deltas. The semantic tier has
    // no embedding model in tests, so it is never consulted; its series exist anyway.
    let cache = |kind: &str, result: &str| {
        delta("switchyard_cache_lookups_total", &[("kind", kind), ("result", result)])
    };
    assert!(cache("exact", "hit") >= 1.0, "exact hits: {}", cache("exact", "hit"));
    assert!(cache("exact", "miss") >= 2.0, "exact misses: {}", cache("exact", "miss"));
    for result in ["hit", "miss"] {
        let labels = [("kind", "semantic"), ("result", result)];
        assert!(after.get("switchyard_cache_lookups_total", &labels).is_some(), "{result}");
    }
    assert_eq!(
        after.get("switchyard_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );
    assert_eq!(
        after.types.get("switchyard_turn_time_to_first_token_seconds").map(String::as_str),
        Some("histogram")
    );
    assert_eq!(after.types.get("switchyard_failovers_total").map(String::as_str), Some("counter"));

    // Nothing per user or per conversation in any label.
    for (name, labels) in after.samples.keys() {
        for (key, value) in labels {
            assert!(!["user", "user_id", "conversation_id"].contains(&key.as_str()), "{name}");
            assert!(!value.contains(&id), "{name}{labels:?} carries the conversation id");
        }
    }
}

#[tokio::test]
async fn slo_report_and_request_ids() {
    let (app, _, _) = spawn_named("");
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "user_message", "content": "Hello"})).await;
    let frames = recv_turn(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "done");

    let (status, report) = app.get_json("/admin/slo").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["objectives"]["availability"], 0.999);
    assert_eq!(report["objectives"]["ttft_threshold_seconds"], 2.5);
    let windows: Vec<&str> = report["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["window"].as_str().unwrap())
        .collect();
    assert_eq!(windows, ["5m", "30m", "1h", "6h", "since_start"]);
    let all = &report["windows"][4];
    assert!(all["availability"]["good"].as_u64().unwrap() >= 1, "{report}");
    assert!(all["latency"]["total"].as_u64().unwrap() >= 1, "{report}");
    assert!(all["http"]["total"].as_u64().unwrap() >= 1, "{report}");
    let names: Vec<&str> =
        report["alerts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"SwitchyardTurnAvailabilityFastBurn"), "{names:?}");

    // Every response carries a request id; a sane one from the caller is echoed.
    let response =
        app.http.get(app.url("/healthz")).header("x-request-id", "req-42").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-42");
    // One that is too long or not plain is replaced, not echoed (header and log injection).
    for bad in ["x".repeat(65), "two words".to_owned(), "semi;colon".to_owned()] {
        let response =
            app.http.get(app.url("/healthz")).header("x-request-id", &bad).send().await.unwrap();
        let generated = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(generated, bad);
        assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    }
}

// ---------------------------------------------------------------------------------------------
// Traces: an in-process OTLP/HTTP receiver.

/// Spans received, with their resource's service name.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, OtlpSpan)>>>);

/// Serves `POST /v1/traces` on 127.0.0.1:0, decoding each protobuf `ExportTraceServiceRequest`.
async fn otlp_receiver() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Received::default();
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    // Headers, then exactly Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
                    assert!(head.starts_with("post /v1/traces "), "{head}");
                    assert!(head.contains("content-type: application/x-protobuf"), "{head}");
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .expect("content-length");
                    while buffer.len() < head_end + length {
                        let mut chunk = [0u8; 8192];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buffer.drain(..head_end + length).skip(head_end).collect();
                    let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                    {
                        let mut spans = sink.0.lock().unwrap();
                        for resource in request.resource_spans {
                            let service = resource
                                .resource
                                .as_ref()
                                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                                .and_then(|a| string_value(a.value.as_ref()))
                                .unwrap_or_default();
                            for scope in resource.scope_spans {
                                for span in scope.spans {
                                    spans.push((service.clone(), span));
                                }
                            }
                        }
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, received)
}

fn string_value(
    value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>,
) -> Option<String> {
    match value?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn attr(span: &OtlpSpan, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| string_value(a.value.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Set in the child process that runs the trace test on its own.
const TRACE_CHILD: &str = "SWITCHYARD_TRACE_TEST_CHILD";

/// The trace test installs the process-wide tracing subscriber, which only the first caller
/// in a process can do. Under nextest every test has its own process; under `cargo test`
/// they share one, so the test re-runs itself alone in a child process and checks it passed.
#[test]
fn a_failover_turn_is_one_trace_exported_over_otlp() {
    if std::env::var_os(TRACE_CHILD).is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        return runtime.block_on(failover_turn_trace());
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "observability::a_failover_turn_is_one_trace_exported_over_otlp",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(TRACE_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the trace test failed in its own process:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn failover_turn_trace() {
    let (endpoint, received) = otlp_receiver().await;
    let config = TelemetryConfig {
        otlp_endpoint: Some(endpoint),
        service_name: "switchyard-test".into(),
        ..TelemetryConfig::default()
    };
    let telemetry = Arc::new(engine::telemetry::init(LogFormat::Json, &config));
    assert!(
        engine::telemetry::logging::current_filter().is_some(),
        "this test must be the one that installs the process's subscriber"
    );
    let app = crate::app::spawn_app_with(
        "break_after=3",
        Scenario { tokens: 8, ..Scenario::default() },
        "",
    );

    // A request that carries its caller's trace context joins that trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = app
        .http
        .post(app.url("/api/v1/conversations"))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-trace-id"], caller_trace);
    let traceparent = response.headers()["traceparent"].to_str().unwrap().to_owned();
    assert!(traceparent.starts_with(&format!("00-{caller_trace}-")), "{traceparent}");
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();

    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "user_message", "content": "Tell me about trains"})).await;
    let frames = recv_turn(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");
    assert_eq!(frames.last().unwrap()["model"], "fallback");

    // The turn's spans end as its last write lands: flush until they have all arrived.
    let find_turn = || {
        let spans = received.0.lock().unwrap();
        spans
            .iter()
            .find(|(_, s)| s.name == "turn" && attr(s, "conversation_id").as_deref() == Some(&id))
            .map(|(service, s)| (service.clone(), s.clone()))
    };
    let mut turn = None;
    for _ in 0..50 {
        let flusher = telemetry.clone();
        tokio::task::spawn_blocking(move || flusher.flush()).await.unwrap();
        turn = find_turn();
        let complete = turn.as_ref().is_some_and(|(_, t)| {
            received.0.lock().unwrap().iter().any(|(_, s)| {
                s.trace_id == t.trace_id
                    && s.name == "persist.reply"
                    && attr(s, "finished").as_deref() == Some("true")
            })
        });
        if complete {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (service, turn) = turn.expect("a `turn` span for the conversation");
    assert_eq!(service, "switchyard-test");
    assert!(turn.parent_span_id.is_empty(), "the turn is the root of its trace");
    assert_eq!(attr(&turn, "outcome").as_deref(), Some("completed"));
    assert_eq!(attr(&turn, "model").as_deref(), Some("primary"));
    assert!(attr(&turn, "tenant").is_some());

    let spans: Vec<OtlpSpan> = received
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.trace_id == turn.trace_id)
        .map(|(_, s)| s.clone())
        .collect();
    let children = |name: &str| -> Vec<&OtlpSpan> {
        spans.iter().filter(|s| s.name == name && s.parent_span_id == turn.span_id).collect()
    };
    assert_eq!(children("persist.user_message").len(), 1, "{:?}", names(&spans));
    let route = children("route");
    assert_eq!(route.len(), 1, "{:?}", names(&spans));
    assert_eq!(attr(route[0], "requested_model").as_deref(), Some("primary"));
    assert_eq!(attr(route[0], "chain").as_deref(), Some("primary -> fallback"));

    // One span per provider attempt, in order: the primary broke, the fallback completed.
    let mut attempts = children("provider.attempt");
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attempts.len(), 2, "{:?}", names(&spans));
    assert_eq!(attr(attempts[0], "model").as_deref(), Some("primary"));
    assert_eq!(attr(attempts[0], "outcome").as_deref(), Some("stream_broken"));
    assert_eq!(attr(attempts[0], "tokens").as_deref(), Some("3"));
    assert_eq!(attr(attempts[0], "provider").as_deref(), Some("openai_compatible"));
    assert_eq!(attr(attempts[1], "model").as_deref(), Some("fallback"));
    assert_eq!(attr(attempts[1], "outcome").as_deref(), Some("completed"));
    assert!(attempts[0].end_time_unix_nano <= attempts[1].start_time_unix_nano);
    assert!(
        children("persist.reply").iter().any(|s| attr(s, "finished").as_deref() == Some("true")),
        "{:?}",
        names(&spans)
    );
    for span in &spans {
        assert!(span.start_time_unix_nano >= turn.start_time_unix_nano, "{}", span.name);
    }

    // The HTTP request span joined the caller's trace, as a child of the caller's span.
    let all = received.0.lock().unwrap().clone();
    let request = all
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "POST /api/v1/conversations" && hex(&s.trace_id) == caller_trace)
        .unwrap_or_else(|| {
            panic!("no request span: {:?}", all.iter().map(|(_, s)| &s.name).collect::<Vec<_>>())
        });
    assert_eq!(hex(&request.parent_span_id), caller_span);
    assert_eq!(attr(request, "http.route").as_deref(), Some("/api/v1/conversations"));
    assert_eq!(attr(request, "http.response.status_code").as_deref(), Some("201"));

    // The log level changes at runtime (this test installed the process's logger).
    let (status, level) = app.get_json("/admin/log-level").await;
    assert_eq!(status, 200);
    assert_eq!(level["filter"], "info");
    let response = app
        .http
        .put(app.url("/admin/log-level"))
        .json(&json!({"filter": "warn,engine=debug"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.get_json("/admin/log-level").await.1["filter"], "warn,engine=debug");
    let response = app
        .http
        .put(app.url("/admin/log-level"))
        .json(&json!({"filter": "engine=[loud"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_filter");
    assert_eq!(app.get_json("/admin/log-level").await.1["filter"], "warn,engine=debug");
}

fn names(spans: &[OtlpSpan]) -> Vec<(String, String)> {
    spans.iter().map(|s| (s.name.clone(), hex(&s.parent_span_id))).collect()
}
