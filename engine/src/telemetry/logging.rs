//! Logging: JSON lines in production, readable text on a terminal.
//!
//! Every line written inside a request or turn carries that span's fields — `request_id`,
//! `trace_id`, `tenant`, `conversation_id` — because the JSON layer prints the current span
//! and its parents. The filter starts from `RUST_LOG` (else `[telemetry] log_level`, else
//! `info`) and can be replaced at runtime through [`set_filter`] (`PUT /admin/log-level`)
//! without a restart.
//!
//! Secrets are kept out twice: they live in `secrecy::SecretString`, whose `Debug` prints a
//! placeholder, and every line passes through [`redact`] on its way out, which masks bearer
//! tokens, provider API keys (`sk-…`) and passwords in URLs that slipped into a message.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock, PoisonError};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use super::tracing_otel::TracerSetup;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text otherwise.
    #[default]
    Auto,
    Json,
    Text,
}

type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// The reload handle of the installed filter, and the directives it was last set to.
static FILTER: OnceLock<(FilterHandle, Mutex<String>)> = OnceLock::new();

/// Installs the global subscriber; returns false when one was already installed (a second
/// call in tests keeps the first). `tracer`, when given, adds the OpenTelemetry layer.
pub(crate) fn install(
    format: LogFormat,
    default_level: &str,
    tracer: Option<&TracerSetup>,
) -> bool {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default_level.to_owned());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(RedactingStderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if json {
        fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).boxed()
    } else {
        fmt.boxed()
    };
    // Spans are exported whatever the log level: an operator turning logs down to `warn`
    // must not lose the traces.
    let otel = tracer.map(|t| {
        t.layer().with_filter(
            Targets::new()
                .with_target("engine", tracing::Level::INFO)
                .with_target("actors", tracing::Level::INFO),
        )
    });
    let installed =
        tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).try_init().is_ok();
    if installed {
        let _ = FILTER.set((handle, Mutex::new(directives)));
    }
    installed
}

/// Why a new filter was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("`{0}` is not a valid log filter")]
    Invalid(String),
    #[error("logging was not set up by this process, so its level cannot be changed")]
    NotInstalled,
}

/// Replaces the log filter of the running process (`warn`, `info,engine::http=debug`).
pub fn set_filter(directives: &str) -> Result<(), FilterError> {
    let filter =
        EnvFilter::try_new(directives).map_err(|_| FilterError::Invalid(directives.to_owned()))?;
    let (handle, current) = FILTER.get().ok_or(FilterError::NotInstalled)?;
    handle.reload(filter).map_err(|_| FilterError::NotInstalled)?;
    *current.lock().unwrap_or_else(PoisonError::into_inner) = directives.to_owned();
    tracing::warn!(filter = directives, "log filter changed");
    Ok(())
}

/// The directives in force, if this process installed the subscriber.
pub fn current_filter() -> Option<String> {
    FILTER.get().map(|(_, current)| current.lock().unwrap_or_else(PoisonError::into_inner).clone())
}

/// Masks secrets in a formatted log line.
pub fn redact(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    loop {
        let found = [("Bearer ", 8usize), ("sk-", 12), ("://", 0)]
            .iter()
            .filter_map(|(marker, min)| rest.find(marker).map(|at| (at, *marker, *min)))
            .min_by_key(|(at, _, _)| *at);
        let Some((at, marker, min)) = found else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at + marker.len()]);
        rest = &rest[at + marker.len()..];
        if marker == "://" {
            // scheme://user:password@host → scheme://user:[REDACTED]@host
            let authority_end = rest.find(['/', ' ', '"', '\'']).unwrap_or(rest.len());
            let authority = &rest[..authority_end];
            if let Some(atsign) = authority.rfind('@')
                && let Some(colon) = authority[..atsign].find(':')
            {
                out.push_str(&authority[..=colon]);
                out.push_str("[REDACTED]");
                out.push_str(&authority[atsign..]);
                rest = &rest[authority_end..];
            }
            continue;
        }
        let token_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=')))
            .unwrap_or(rest.len());
        if token_len >= min {
            out.push_str("[REDACTED]");
            rest = &rest[token_len..];
        }
    }
}

/// Writes each formatted event to stderr after [`redact`]ing it.
#[derive(Clone, Copy)]
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        LineBuffer(Vec::with_capacity(256))
    }
}

/// One event's bytes; redacted and written out in one piece when dropped.
struct LineBuffer(Vec<u8>);

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.0);
        let _ = std::io::stderr().lock().write_all(redact(&line).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn masks_bearer_tokens_api_keys_and_url_passwords() {
        let line = r#"{"msg":"upstream said Authorization: Bearer abc.def-ghi_jkl0123 for sk-ant-api03-AbCdEf0123456789 at postgres://app:hunter2@db:5432/x"}"#;
        let clean = redact(line);
        assert!(!clean.contains("abc.def-ghi_jkl0123"), "{clean}");
        assert!(!clean.contains("AbCdEf0123456789"), "{clean}");
        assert!(!clean.contains("hunter2"), "{clean}");
        assert!(clean.contains("Bearer [REDACTED]"), "{clean}");
        assert!(clean.contains("postgres://app:[REDACTED]@db:5432/x"), "{clean}");
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        for line in ["task-12 done", "see http://example.com/a:b", "sk-short", "Bearer x"] {
            assert_eq!(redact(line), line);
        }
    }
}
