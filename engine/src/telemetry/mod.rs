//! Telemetry: what an operator sees of a running engine.
//!
//! - [`logging`]: JSON log lines (or text on a terminal) carrying the request and trace ids,
//!   with a filter that can be changed at runtime (`PUT /admin/log-level`);
//! - [`metrics`]: every metric name and label set in one place, the Prometheus recorder
//!   behind the `metrics` facade (which the `actors` crate calls too) and the scrape-time
//!   collector that reads actor counts, mailbox depths and circuits from the Registry;
//! - [`tracing_otel`]: OpenTelemetry traces through `tracing`, exported over OTLP/HTTP
//!   (protobuf) to Jaeger or any collector — off unless an endpoint is configured;
//! - [`http`]: the actix-web middleware that times and counts every request, opens its span
//!   and returns `x-request-id`, `x-trace-id` and `traceparent`;
//! - [`slo`]: availability and latency SLIs over the same counters Prometheus scrapes, for
//!   `GET /admin/slo`.
//!
//! `main` calls [`init`] once with the `[telemetry]` configuration; the engine installs the
//! metrics recorder itself when it starts (tests need no `main`).

pub mod http;
pub mod logging;
pub mod metrics;
pub mod slo;
pub mod tracing_otel;

use serde::Deserialize;

pub use logging::LogFormat;

/// `[telemetry]` in `switchyard.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `service.name` on every exported span.
    pub service_name: String,
    /// Log filter directives (`info`, `warn,engine=debug`); `RUST_LOG` wins when set.
    pub log_level: String,
    /// OTLP/HTTP base URL of a collector or Jaeger (`http://jaeger:4318`); spans go to
    /// `{endpoint}/v1/traces`. `OTEL_EXPORTER_OTLP_ENDPOINT` overrides it. Unset: no traces.
    pub otlp_endpoint: Option<String>,
    /// Fraction of turns traced, 0.0–1.0 (parent-based: a sampled caller is always followed).
    pub trace_sample_ratio: f64,
    /// Tenants that get their own label value on per-tenant metrics; later ones share
    /// `tenant="_other"`, so a tenant storm cannot explode the series count.
    pub max_tenant_labels: usize,
    pub slo: SloConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            service_name: "switchyard".into(),
            log_level: "info".into(),
            otlp_endpoint: None,
            trace_sample_ratio: 1.0,
            max_tenant_labels: 200,
            slo: SloConfig::default(),
        }
    }
}

/// `[telemetry.slo]`: the objectives `/admin/slo` and the alert rules measure against.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloConfig {
    /// Share of turns that must not fail for a server-side reason.
    pub availability_objective: f64,
    /// Share of turns whose first token must arrive within `ttft_threshold_seconds`.
    pub latency_objective: f64,
    /// Must be one of the time-to-first-token histogram buckets, so Prometheus can compute
    /// the same SLI from `_bucket{le=…}`.
    pub ttft_threshold_seconds: f64,
}

impl Default for SloConfig {
    fn default() -> Self {
        Self { availability_objective: 0.999, latency_objective: 0.99, ttft_threshold_seconds: 2.5 }
    }
}

impl TelemetryConfig {
    /// Applies `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_SERVICE_NAME`, the names every
    /// OpenTelemetry SDK honours.
    pub fn apply_env(&mut self, env: &dyn crate::config::Environment) {
        if let Some(endpoint) = env.var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.otlp_endpoint = Some(endpoint);
        }
        if let Some(name) = env.var("OTEL_SERVICE_NAME") {
            self.service_name = name;
        }
    }

    /// Errors name the key, as every other configuration check does.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            anyhow::bail!("telemetry.trace_sample_ratio: must be between 0.0 and 1.0");
        }
        for (key, value) in [
            ("availability_objective", self.slo.availability_objective),
            ("latency_objective", self.slo.latency_objective),
        ] {
            if !(value > 0.0 && value < 1.0) {
                anyhow::bail!("telemetry.slo.{key}: must be strictly between 0 and 1 (e.g. 0.999)");
            }
        }
        if !metrics::TTFT_BUCKETS.iter().any(|b| (b - self.slo.ttft_threshold_seconds).abs() < 1e-9)
        {
            anyhow::bail!(
                "telemetry.slo.ttft_threshold_seconds: must be one of the histogram buckets {:?}",
                metrics::TTFT_BUCKETS
            );
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            anyhow::bail!("telemetry.otlp_endpoint: must be an http:// or https:// URL");
        }
        if self.log_level.parse::<tracing_subscriber::EnvFilter>().is_err() {
            anyhow::bail!("telemetry.log_level: `{}` is not a valid filter", self.log_level);
        }
        Ok(())
    }
}

/// Installs logging and (when configured) trace export. Call once, from `main`; keep the
/// returned guard alive until exit — dropping it flushes the spans still buffered.
pub fn init(format: LogFormat, config: &TelemetryConfig) -> TelemetryGuard {
    let tracer = match tracing_otel::TracerSetup::from_config(config) {
        Ok(setup) => setup,
        Err(error) => {
            // Telemetry must never keep the engine from serving.
            eprintln!("trace export disabled: {error:#}");
            None
        }
    };
    let installed = logging::install(format, &config.log_level, tracer.as_ref());
    TelemetryGuard { tracer: if installed { tracer } else { None } }
}

/// Flushes and stops trace export when dropped.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    tracer: Option<tracing_otel::TracerSetup>,
}

impl TelemetryGuard {
    /// Exports every finished span now (tests; shutdown).
    pub fn flush(&self) {
        if let Some(tracer) = &self.tracer {
            tracer.flush();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            tracer.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    /// The configurations shipped in `deploy/` load and validate as the engine would load them.
    #[test]
    fn the_deployment_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        for file in [
            "config/switchyard.toml",
            "k8s/base/switchyard.toml",
            "k8s/overlays/production/switchyard.toml",
        ] {
            let config = Config::load(Some(&root.join(file)), &BTreeMap::new())
                .unwrap_or_else(|e| panic!("{file}: {e:#}"));
            assert_eq!(config.telemetry.service_name, "switchyard", "{file}");
            assert_eq!(
                config.telemetry.slo.ttft_threshold_seconds, 2.5,
                "{file}: the alert rules assume 2.5 s"
            );
            assert_eq!(
                config.telemetry.slo.availability_objective, 0.999,
                "{file}: the alert rules assume 99.9 %"
            );
            assert_eq!(
                config.telemetry.slo.latency_objective, 0.99,
                "{file}: the alert rules assume 99 %"
            );
        }
    }

    #[test]
    fn the_environment_names_the_collector() {
        let mut config = TelemetryConfig::default();
        let env = BTreeMap::from([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SERVICE_NAME", "switchyard-eu"),
        ]);
        config.apply_env(&env);
        assert_eq!(config.otlp_endpoint.as_deref(), Some("http://collector:4318"));
        assert_eq!(config.service_name, "switchyard-eu");
        config.validate().expect("valid");
    }

    #[test]
    fn bad_telemetry_settings_name_their_key() {
        type Breaks = fn(&mut TelemetryConfig);
        let cases: [(&str, Breaks); 4] = [
            ("ttft_threshold_seconds", |c| c.slo.ttft_threshold_seconds = 2.0),
            ("availability_objective", |c| c.slo.availability_objective = 1.0),
            ("otlp_endpoint", |c| c.otlp_endpoint = Some("jaeger:4318".into())),
            ("log_level", |c| c.log_level = "engine=[".into()),
        ];
        for (key, break_it) in cases {
            let mut config = TelemetryConfig::default();
            break_it(&mut config);
            let error = config.validate().expect_err(key).to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }
}
