//! Traces: OpenTelemetry through `tracing`, exported over OTLP/HTTP with protobuf bodies.
//!
//! Off unless `[telemetry] otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) names a
//! collector; current Jaeger ingests OTLP itself on port 4318. The spans are ordinary
//! `tracing` spans, so the code that creates them (the HTTP middleware, the conversation actor,
//! the router's provider attempts) knows nothing of OpenTelemetry:
//!
//! ```text
//! http.request                 (middleware; trace id returned in x-trace-id / traceparent)
//! turn                         (one trace per turn, rooted in the conversation actor)
//! ├── persist.user_message
//! ├── route                    (model and fallback chain chosen)
//! ├── cache.lookup             (when the semantic cache is configured)
//! ├── provider.attempt         (one per leg: failovers show as siblings, outcome attribute)
//! └── persist.reply
//! ```
//!
//! Export runs on the SDK's batch thread; the HTTP client behind it is the engine's own
//! reqwest, driven by a small dedicated runtime so export works whatever thread calls it
//! and never competes with request handling.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

use super::TelemetryConfig;

/// The tracer provider and the tracer the `tracing` layer writes to.
pub struct TracerSetup {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::Tracer,
}

impl TracerSetup {
    /// `Ok(None)` when no endpoint is configured.
    pub fn from_config(config: &TelemetryConfig) -> anyhow::Result<Option<TracerSetup>> {
        let Some(endpoint) = &config.otlp_endpoint else { return Ok(None) };
        let url = traces_url(endpoint);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(10))
            .with_http_client(ExportClient::new()?)
            .build()
            .context("failed to build the OTLP span exporter")?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(Duration::from_secs(2))
                    .with_max_queue_size(8192)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.trace_sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .with_attribute(opentelemetry::KeyValue::new(
                        "service.version",
                        env!("CARGO_PKG_VERSION"),
                    ))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("switchyard");
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(Some(TracerSetup { provider, tracer }))
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(
        &self,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_tracked_inactivity(false)
    }

    /// Exports every finished span now. Blocks: call off the async runtime.
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "failed to flush spans");
        }
    }

    pub(crate) fn shutdown(self) {
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(5));
    }
}

/// `http://jaeger:4318` → `http://jaeger:4318/v1/traces`; a URL that already names the
/// signal path is kept as is.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") }
}

/// The trace id of `span` as 32 hex digits, if it is being traced.
pub fn trace_id(span: &Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// The W3C `traceparent` value for `span`, if it is being traced.
pub fn traceparent(span: &Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let sc = context.span().span_context().clone();
    sc.is_valid()
        .then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// Makes `span` a child of the caller's trace when the request carried a `traceparent`.
pub fn adopt_remote_parent(span: &Span, headers: &actix_web::http::header::HeaderMap) {
    struct Headers<'a>(&'a actix_web::http::header::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(parent);
}

/// The OTLP exporter's HTTP client: reqwest on a private two-thread runtime.
#[derive(Debug, Clone)]
struct ExportClient {
    client: reqwest::Client,
}

fn export_runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .context("failed to start the trace export runtime")?;
    // A racing second runtime is dropped here, outside any async context: harmless.
    Ok(RUNTIME.get_or_init(|| runtime))
}

impl ExportClient {
    fn new() -> anyhow::Result<Self> {
        export_runtime()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("failed to build the OTLP HTTP client")?;
        Ok(Self { client })
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let runtime = export_runtime().map_err(|e| -> HttpError { e.into() })?;
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let task = runtime.spawn(async move {
            let mut builder = client.request(parts.method, url).body(body);
            for (name, value) in &parts.headers {
                builder = builder.header(name, value);
            }
            let response = builder.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = task.await.map_err(|e| -> HttpError { e.into() })??;
        let mut response = Response::builder().status(status.as_u16());
        for (name, value) in &headers {
            response = response.header(name.as_str(), value.as_bytes());
        }
        Ok(response.body(body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(traces_url("http://jaeger:4318"), "http://jaeger:4318/v1/traces");
        assert_eq!(traces_url("http://jaeger:4318/"), "http://jaeger:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }
}
