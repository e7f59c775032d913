//! Metrics: every name and label set in one place, the Prometheus recorder, and the
//! scrape-time collector.
//!
//! Code anywhere in the workspace — the `actors` crate included, which knows nothing of HTTP —
//! records through the `metrics` facade (`metrics::counter!("switchyard_…", "model" => m)`);
//! the recorder installed here keeps the values and renders the Prometheus text format for
//! `GET /metrics`. Values the Registry already holds (actor counts, mailbox depths, circuit
//! states, restart counts) are not pushed on every change: [`collect`] copies them into gauges
//! just before each scrape, which costs nothing between scrapes.
//!
//! Label values are bounded by construction: model and provider names come from the
//! configuration, codes and outcomes from fixed enums, and tenant ids — bounded by the tenants
//! an operator creates — are capped anyway at `[telemetry] max_tenant_labels` distinct values by
//! the [`BoundedTenants`] recorder layer; later tenants share `tenant="_other"`. Never a user id,
//! conversation id or free text. The catalogue's unit test checks that every `switchyard_*`
//! name used in the source tree is listed here.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use actors::registry::{ActorKind, CircuitState, Registry};
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What a metric is, for the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: name, kind, label names and help text.
#[derive(Debug, Clone, Copy)]
pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Def {
    Def { name, kind, labels, help }
}

// Edges.
pub const HTTP_REQUESTS: &str = "switchyard_http_requests_total";
pub const HTTP_DURATION: &str = "switchyard_http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "switchyard_http_requests_in_flight";
pub const WS_CONNECTIONS: &str = "switchyard_websocket_connections_total";
pub const WS_ACTIVE: &str = "switchyard_websocket_connections_active";
pub const WS_FRAMES: &str = "switchyard_websocket_frames_total";
// Turns.
pub const TURNS: &str = "switchyard_turns_total";
pub const TURN_ERRORS: &str = "switchyard_turn_errors_total";
pub const TTFT: &str = "switchyard_turn_time_to_first_token_seconds";
pub const TURN_DURATION: &str = "switchyard_turn_duration_seconds";
// Providers and the tree.
pub const PROVIDER_REQUESTS: &str = "switchyard_provider_requests_total";
pub const PROVIDER_DURATION: &str = "switchyard_provider_request_duration_seconds";
pub const PROVIDER_CIRCUIT: &str = "switchyard_provider_circuit_state";
pub const PROVIDER_IN_FLIGHT: &str = "switchyard_provider_in_flight";
pub const FAILOVERS: &str = "switchyard_failovers_total";
pub const RESTARTS: &str = "switchyard_supervisor_restarts_total";
pub const ACTORS: &str = "switchyard_actors";
pub const MAILBOX_DEPTH: &str = "switchyard_actor_mailbox_depth";
pub const MAILBOX_DEPTH_MAX: &str = "switchyard_actor_mailbox_depth_max";
// Cache, money, guards.
pub const CACHE_LOOKUPS: &str = "switchyard_cache_lookups_total";
pub const TOKENS: &str = "switchyard_tokens_total";
pub const COST: &str = "switchyard_cost_micros_total";
pub const BUDGET_EVENTS: &str = "switchyard_budget_events_total";
pub const ANOMALY_EVENTS: &str = "switchyard_anomaly_events_total";
pub const ROUTE_DECISIONS: &str = "switchyard_route_decisions_total";
// Dependencies.
pub const STORE_ERRORS: &str = "switchyard_store_errors_total";
pub const CACHE_PERSIST_DROPPED: &str = "switchyard_cache_persist_dropped_total";
pub const CACHE_PERSIST_ERRORS: &str = "switchyard_cache_persist_errors_total";
pub const REDIS_ERRORS: &str = "switchyard_redis_errors_total";
pub const BUILD_INFO: &str = "switchyard_build_info";

/// Every metric the engine exports.
pub const CATALOGUE: &[Def] = &[
    def(
        HTTP_REQUESTS,
        Kind::Counter,
        &["method", "route", "status"],
        "HTTP requests by method, matched route pattern and status code",
    ),
    def(
        HTTP_DURATION,
        Kind::Histogram,
        &["method", "route"],
        "HTTP request duration until the response head (streams: until it starts)",
    ),
    def(HTTP_IN_FLIGHT, Kind::Gauge, &[], "HTTP requests being handled"),
    def(WS_CONNECTIONS, Kind::Counter, &[], "WebSocket connections accepted"),
    def(WS_ACTIVE, Kind::Gauge, &[], "WebSocket sessions open on this node"),
    def(
        WS_FRAMES,
        Kind::Counter,
        &["direction", "type"],
        "WebSocket text frames by direction (in/out) and protocol type",
    ),
    def(
        TURNS,
        Kind::Counter,
        &["outcome"],
        "Turns ended: completed, failed (server side; counts against the SLO), rejected (client side), cancelled",
    ),
    def(TURN_ERRORS, Kind::Counter, &["code"], "Turns that ended in an error, by wire code"),
    def(
        TTFT,
        Kind::Histogram,
        &["model"],
        "Time from a turn's start to its first answer token, by the model that produced it",
    ),
    def(
        TURN_DURATION,
        Kind::Histogram,
        &["model"],
        "Time from a turn's start to its end, by the model that finished it",
    ),
    def(
        PROVIDER_REQUESTS,
        Kind::Counter,
        &["provider", "model", "outcome"],
        "Provider attempts (legs) by provider kind, configured model and outcome (completed or an error code)",
    ),
    def(
        PROVIDER_DURATION,
        Kind::Histogram,
        &["provider", "model"],
        "Duration of one provider attempt",
    ),
    def(
        PROVIDER_CIRCUIT,
        Kind::Gauge,
        &["model"],
        "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open",
    ),
    def(PROVIDER_IN_FLIGHT, Kind::Gauge, &["model"], "Requests in flight per provider"),
    def(
        FAILOVERS,
        Kind::Counter,
        &["from", "to", "reason"],
        "Turns moved from one model to the next",
    ),
    def(RESTARTS, Kind::Counter, &["model"], "Provider actor restarts by their supervisor"),
    def(ACTORS, Kind::Gauge, &["kind"], "Live actors by kind"),
    def(
        MAILBOX_DEPTH,
        Kind::Gauge,
        &["kind"],
        "Messages queued in mailboxes, summed by actor kind",
    ),
    def(MAILBOX_DEPTH_MAX, Kind::Gauge, &["kind"], "Deepest mailbox by actor kind"),
    def(
        CACHE_LOOKUPS,
        Kind::Counter,
        &["kind", "result"],
        "Response cache lookups by tier (exact, semantic) and result (hit, miss)",
    ),
    def(
        TOKENS,
        Kind::Counter,
        &["tenant", "model", "direction"],
        "Tokens by tenant, model and direction (input, output)",
    ),
    def(COST, Kind::Counter, &["tenant", "model"], "Cost in micro-dollars by tenant and model"),
    def(
        BUDGET_EVENTS,
        Kind::Counter,
        &["tenant", "kind"],
        "Budget events (warning, exceeded, blocked) by tenant",
    ),
    def(ANOMALY_EVENTS, Kind::Counter, &["tenant", "kind"], "Spend or usage anomalies detected"),
    def(
        ROUTE_DECISIONS,
        Kind::Counter,
        &["policy", "tier", "model"],
        "Models the engine chose for `auto` turns, by scorer tier",
    ),
    def(STORE_ERRORS, Kind::Counter, &["operation"], "Failed operations on the conversation store"),
    def(
        CACHE_PERSIST_DROPPED,
        Kind::Counter,
        &[],
        "Cache entries not written to PostgreSQL because the write queue was full",
    ),
    def(CACHE_PERSIST_ERRORS, Kind::Counter, &[], "Failed writes of cache entries to PostgreSQL"),
    def(REDIS_ERRORS, Kind::Counter, &["operation"], "Failed Redis operations"),
    def(BUILD_INFO, Kind::Gauge, &["version"], "Always 1; the version label says which build runs"),
];

/// Time-to-first-token buckets; the latency SLO threshold must be one of them.
pub const TTFT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const TURN_BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
const HTTP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The label value tenants beyond the cap share.
pub const OTHER_TENANT: &str = "_other";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder behind the `metrics` facade, once per process; later
/// calls return the same handle. Starts the upkeep thread that folds histogram samples into
/// buckets, so memory stays flat even if nobody scrapes, and samples the SLO counts.
pub fn install(config: &super::TelemetryConfig) -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        let bounded = BoundedTenants::new(recorder, config.max_tenant_labels);
        if metrics::set_global_recorder(bounded).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        let upkeep = handle.clone();
        let threshold = config.slo.ttft_threshold_seconds;
        let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(super::slo::SAMPLE_EVERY);
                upkeep.run_upkeep();
                super::slo::tracker()
                    .record(super::slo::Counts::from_page(&upkeep.render(), threshold));
            }
        });
        describe_all();
        handle
    })
}

fn builder() -> PrometheusBuilder {
    let with_buckets = || -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in [
            (TTFT, TTFT_BUCKETS),
            (TURN_DURATION, TURN_BUCKETS),
            (PROVIDER_DURATION, TURN_BUCKETS),
            (HTTP_DURATION, HTTP_BUCKETS),
        ] {
            builder = builder.set_buckets_for_metric(Matcher::Full(name.into()), buckets)?;
        }
        Ok(builder)
    };
    // Only an empty bucket list fails, which these constants are not; summaries would still
    // be served if it did.
    with_buckets().unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Help texts, and the series that must exist before their first event so dashboards and
/// alerts see a zero rather than nothing.
fn describe_all() {
    for def in CATALOGUE {
        match def.kind {
            Kind::Counter => metrics::describe_counter!(def.name, def.help),
            Kind::Gauge => metrics::describe_gauge!(def.name, def.help),
            Kind::Histogram => metrics::describe_histogram!(def.name, Unit::Seconds, def.help),
        }
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for kind in ["exact", "semantic"] {
        for result in ["hit", "miss"] {
            metrics::counter!(CACHE_LOOKUPS, "kind" => kind, "result" => result).increment(0);
        }
    }
    for outcome in ["completed", "failed", "rejected", "cancelled"] {
        metrics::counter!(TURNS, "outcome" => outcome).increment(0);
    }
    metrics::counter!(WS_CONNECTIONS).increment(0);
}

/// Copies what the Registry knows into gauges; called right before a scrape.
pub fn collect(registry: &Registry, websocket_sessions: usize) {
    const KINDS: [ActorKind; 6] = [
        ActorKind::RootSupervisor,
        ActorKind::ProviderSupervisor,
        ActorKind::Provider,
        ActorKind::Router,
        ActorKind::Tenant,
        ActorKind::Conversation,
    ];
    let snapshot = registry.snapshot();
    for kind in KINDS {
        let label = kind_label(kind);
        let of_kind = snapshot.iter().filter(|a| a.kind == kind);
        let (mut count, mut depth, mut deepest) = (0u64, 0u64, 0u64);
        for actor in of_kind {
            count += 1;
            depth += actor.mailbox_depth;
            deepest = deepest.max(actor.mailbox_depth);
        }
        metrics::gauge!(ACTORS, "kind" => label).set(count as f64);
        metrics::gauge!(MAILBOX_DEPTH, "kind" => label).set(depth as f64);
        metrics::gauge!(MAILBOX_DEPTH_MAX, "kind" => label).set(deepest as f64);
    }
    for provider in snapshot.iter().filter(|a| a.kind == ActorKind::Provider) {
        let model = provider.id.strip_prefix("provider:").unwrap_or(&provider.id).to_owned();
        let circuit = match provider.circuit {
            Some(CircuitState::Open) => 2.0,
            Some(CircuitState::HalfOpen) => 1.0,
            _ => 0.0,
        };
        metrics::gauge!(PROVIDER_CIRCUIT, "model" => model.clone()).set(circuit);
        metrics::gauge!(PROVIDER_IN_FLIGHT, "model" => model.clone())
            .set(provider.in_flight as f64);
        metrics::counter!(RESTARTS, "model" => model).absolute(u64::from(provider.restarts));
    }
    metrics::gauge!(WS_ACTIVE).set(websocket_sessions as f64);
}

fn kind_label(kind: ActorKind) -> &'static str {
    match kind {
        ActorKind::RootSupervisor => "root_supervisor",
        ActorKind::ProviderSupervisor => "provider_supervisor",
        ActorKind::Provider => "provider",
        ActorKind::Router => "router",
        ActorKind::Tenant => "tenant",
        ActorKind::Conversation => "conversation",
    }
}

/// The page `GET /metrics` serves.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.render()
}

/// A recorder layer that caps the distinct values of the `tenant` label.
///
/// The first `cap` tenants seen keep their id; every later one is recorded as
/// [`OTHER_TENANT`]. Enforced here, below every call site, so no caller can forget it.
pub struct BoundedTenants<R> {
    inner: R,
    cap: usize,
    seen: Arc<Mutex<HashSet<String>>>,
}

impl<R> BoundedTenants<R> {
    pub fn new(inner: R, cap: usize) -> Self {
        Self { inner, cap, seen: Arc::default() }
    }

    fn bound(&self, key: &Key) -> Key {
        let Some(tenant) = key.labels().find(|l| l.key() == "tenant") else { return key.clone() };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(tenant.value()) {
            return key.clone();
        }
        if seen.len() < self.cap {
            seen.insert(tenant.value().to_owned());
            return key.clone();
        }
        let labels: Vec<Label> =
            key.labels()
                .map(|l| {
                    if l.key() == "tenant" { Label::new("tenant", OTHER_TENANT) } else { l.clone() }
                })
                .collect();
        Key::from_parts(key.name().to_owned(), labels)
    }
}

impl<R: Recorder> Recorder for BoundedTenants<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description)
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description)
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description)
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(&self.bound(key), metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(&self.bound(key), metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(&self.bound(key), metadata)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use metrics::Recorder;

    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut names = HashSet::new();
        for def in CATALOGUE {
            assert!(names.insert(def.name), "{} listed twice", def.name);
            assert!(def.name.starts_with("switchyard_"), "{}", def.name);
            assert_eq!(def.kind == Kind::Counter, def.name.ends_with("_total"), "{}", def.name);
            if def.kind == Kind::Histogram {
                assert!(def.name.ends_with("_seconds"), "{}: base unit in the name", def.name);
            }
            for label in def.labels {
                assert!(
                    !["user", "user_id", "conversation", "conversation_id", "message"]
                        .contains(label),
                    "{}: unbounded label {label}",
                    def.name
                );
            }
        }
    }

    /// Every `switchyard_*` name written anywhere in the crates' sources is catalogued, so a
    /// call site cannot invent a metric the docs, dashboards and alerts do not know.
    #[test]
    fn every_metric_used_in_the_source_is_catalogued() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let known: HashSet<&str> = CATALOGUE.iter().map(|d| d.name).collect();
        let mut used = Vec::new();
        for dir in ["actors/src", "engine/src"] {
            collect_names(&root.join(dir), &mut used);
        }
        let unknown: Vec<_> = used.iter().filter(|(n, _)| !known.contains(n.as_str())).collect();
        assert!(unknown.is_empty(), "metrics used but not catalogued: {unknown:?}");
    }

    fn collect_names(dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                collect_names(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for (at, _) in text.match_indices("\"switchyard_") {
                    let rest = &text[at + 1..];
                    let end = rest.find('"').unwrap_or(rest.len());
                    let name = &rest[..end];
                    // Only whole metric names (histogram series suffixes are derived).
                    if name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
                        && !name.ends_with('_')
                        && !name.ends_with("_bucket")
                    {
                        out.push((name.to_owned(), path.display().to_string()));
                    }
                }
            }
        }
    }

    #[test]
    fn tenants_beyond_the_cap_share_one_label() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let bounded = BoundedTenants::new(recorder, 2);
        let meta = metrics::Metadata::new("t", metrics::Level::INFO, None);
        for tenant in ["a", "b", "c", "d", "a"] {
            let key = Key::from_parts(TOKENS, vec![Label::new("tenant", tenant)]);
            bounded.register_counter(&key, &meta).increment(1);
        }
        let page = handle.render();
        assert!(page.contains(r#"switchyard_tokens_total{tenant="a"} 2"#), "{page}");
        assert!(page.contains(r#"switchyard_tokens_total{tenant="b"} 1"#), "{page}");
        assert!(page.contains(r#"switchyard_tokens_total{tenant="_other"} 2"#), "{page}");
        assert!(!page.contains(r#"tenant="c""#), "{page}");
    }
}
