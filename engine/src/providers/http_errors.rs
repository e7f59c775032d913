//! The one place where upstream failures become [`ProviderError`]s, shared by every HTTP
//! adapter: HTTP status codes, `Retry-After` headers, provider error bodies and in-band
//! (mid-stream) error events.
//!
//! Upstream bodies are parsed for their short `message` (truncated) and `type`/`code` only;
//! the raw body is never passed on, because it may echo the prompt or other tenants' data.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actors::ports::llm::{BadRequestKind, ProviderError};
use reqwest::header::HeaderMap;
use serde::Deserialize;

/// Longest upstream error message we keep, in characters.
const MAX_MESSAGE_CHARS: usize = 300;

/// The useful part of an upstream error object (`{"error": {"type", "code", "message"}}`, the
/// shape both OpenAI and Anthropic use, in bodies and in stream events).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UpstreamError {
    /// Anthropic `error.type` / OpenAI `error.type`, e.g. `overloaded_error`, `server_error`.
    pub kind: String,
    /// OpenAI `error.code`, e.g. `context_length_exceeded`.
    pub code: String,
    /// The provider's short human message, truncated.
    pub message: String,
}

/// `error` object as found on the wire; `code` may be a string, a number or null.
#[derive(Debug, Deserialize)]
pub(crate) struct WireError<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

impl WireError<'_> {
    pub(crate) fn to_upstream(&self) -> UpstreamError {
        UpstreamError {
            kind: self.kind.as_deref().unwrap_or_default().to_owned(),
            code: match &self.code {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => String::new(),
            },
            message: truncate(self.message.as_deref().unwrap_or_default()),
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: Option<ErrorField<'a>>,
}

/// Some compatible servers send `{"error": "text"}` instead of an object.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField<'a> {
    Object(#[serde(borrow)] WireError<'a>),
    Text(Cow<'a, str>),
}

/// Parses an error response body; anything unparseable yields an empty error.
pub(crate) fn parse_error_body(body: &[u8]) -> UpstreamError {
    match serde_json::from_slice::<ErrorBody<'_>>(body) {
        Ok(ErrorBody { error: Some(ErrorField::Object(e)) }) => e.to_upstream(),
        Ok(ErrorBody { error: Some(ErrorField::Text(t)) }) => {
            UpstreamError { message: truncate(&t), ..UpstreamError::default() }
        }
        _ => UpstreamError::default(),
    }
}

/// Cuts a message to [`MAX_MESSAGE_CHARS`] on a character boundary.
pub(crate) fn truncate(message: &str) -> String {
    let message = message.trim();
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_owned(),
    }
}

/// Maps a non-success HTTP response.
pub(crate) fn from_status(
    provider: &'static str,
    model: &str,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> ProviderError {
    let upstream = parse_error_body(body);
    let error = match status {
        429 if upstream.code == "insufficient_quota" => {
            // OpenAI's "out of credits" is a 429 too, but waiting will not help; another
            // provider account will, so it stays retryable (failover) yet loud.
            tracing::error!(provider, model, "provider account is out of quota or credits");
            ProviderError::RateLimited { retry_after: None }
        }
        429 => ProviderError::RateLimited { retry_after: retry_after(headers) },
        503 | 529 => ProviderError::Overloaded { retry_after: retry_after(headers) },
        500..=599 if is_overloaded(&upstream) => {
            ProviderError::Overloaded { retry_after: retry_after(headers) }
        }
        500..=599 => ProviderError::Server { status },
        401 | 403 => {
            tracing::error!(
                provider,
                model,
                status,
                kind = %upstream.kind,
                "the provider rejected our credentials; check this endpoint's API key"
            );
            ProviderError::Auth { status }
        }
        400 | 404 | 413 | 422 => bad_request(upstream),
        _ if is_overloaded(&upstream) => ProviderError::Overloaded { retry_after: None },
        // 408, 409, 425 and friends: transient or our side's oddity, not the request's fault.
        _ => ProviderError::Server { status },
    };
    tracing::debug!(provider, model, status, code = error.code(), "upstream error response");
    error
}

/// Maps an error object that arrived inside a `200` stream after `tokens` deltas.
pub(crate) fn from_in_band(upstream: &UpstreamError, tokens: u32) -> ProviderError {
    if tokens > 0 {
        let reason = if upstream.kind.is_empty() {
            format!("upstream error: {}", upstream.message)
        } else {
            format!("{}: {}", upstream.kind, upstream.message)
        };
        return ProviderError::StreamBroken { tokens, reason };
    }
    let kind = upstream.kind.as_str();
    let code = upstream.code.as_str();
    if is_overloaded(upstream) {
        ProviderError::Overloaded { retry_after: None }
    } else if kind == "rate_limit_error" || code == "rate_limit_exceeded" || code == "429" {
        ProviderError::RateLimited { retry_after: None }
    } else if kind == "authentication_error" {
        ProviderError::Auth { status: 401 }
    } else if kind == "permission_error" {
        ProviderError::Auth { status: 403 }
    } else if kind == "invalid_request_error"
        || kind == "request_too_large"
        || code == "context_length_exceeded"
    {
        bad_request(upstream.clone())
    } else {
        ProviderError::Server { status: 500 }
    }
}

fn is_overloaded(upstream: &UpstreamError) -> bool {
    upstream.kind == "overloaded_error"
        || upstream.code == "server_overloaded"
        || upstream.code == "overloaded"
        || upstream.code == "529"
        || upstream.code == "503"
}

fn bad_request(upstream: UpstreamError) -> ProviderError {
    let lower = upstream.message.to_ascii_lowercase();
    let kind = if upstream.code == "context_length_exceeded"
        || lower.contains("prompt is too long")
        || lower.contains("context length")
        || lower.contains("context_length")
        || lower.contains("context window")
    {
        BadRequestKind::ContextLength
    } else if lower.contains("prefill")
        || lower.contains("must end with a user message")
        || lower.contains("conversation must end with")
        || lower.contains("final assistant content")
    {
        BadRequestKind::PrefillUnsupported
    } else {
        BadRequestKind::Invalid
    };
    let message =
        if upstream.message.is_empty() { "no details given".to_owned() } else { upstream.message };
    ProviderError::BadRequest { kind, message }
}

/// How long the provider asked us to wait: `retry-after-ms` (OpenAI), then `Retry-After` as
/// delta-seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = value("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let raw = value("retry-after")?;
    if let Ok(secs) = raw.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = parse_http_date(raw)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only date format HTTP/1.1
/// senders may generate, into seconds since the Unix epoch.
fn parse_http_date(raw: &str) -> Option<u64> {
    let mut parts = raw.split_ascii_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days).ok().map(|d| d * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn status(code: u16, body: &str) -> ProviderError {
        from_status("test", "m", code, &HeaderMap::new(), body.as_bytes())
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("garbage"), None);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after(&headers(&[("retry-after", "7")])), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "1500"), ("retry-after", "9")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT")])),
            Some(Duration::ZERO),
            "a date in the past means retry now"
        );
        let soon = httpdate_in(120);
        let got = retry_after(&headers(&[("retry-after", &soon)])).unwrap();
        assert!(got <= Duration::from_secs(120) && got >= Duration::from_secs(110), "{got:?}");
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    /// Formats now + `secs` as an IMF-fixdate (test helper, inverse of `parse_http_date`).
    fn httpdate_in(secs: u64) -> String {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + secs;
        let (days, rem) = (t / 86_400, t % 86_400);
        // Civil from days (Hinnant).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        let months =
            ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        format!(
            "Mon, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
            months[(m - 1) as usize],
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    #[test]
    fn statuses_map_to_the_taxonomy() {
        let limited = from_status("t", "m", 429, &headers(&[("retry-after", "3")]), b"{}");
        assert_eq!(
            limited,
            ProviderError::RateLimited { retry_after: Some(Duration::from_secs(3)) }
        );
        assert_eq!(status(503, ""), ProviderError::Overloaded { retry_after: None });
        assert_eq!(status(529, ""), ProviderError::Overloaded { retry_after: None });
        assert_eq!(
            status(
                500,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            ProviderError::Overloaded { retry_after: None }
        );
        assert_eq!(status(500, "<html>oops</html>"), ProviderError::Server { status: 500 });
        assert_eq!(status(502, ""), ProviderError::Server { status: 502 });
        assert_eq!(status(401, ""), ProviderError::Auth { status: 401 });
        assert_eq!(status(403, ""), ProviderError::Auth { status: 403 });
        assert_eq!(status(408, ""), ProviderError::Server { status: 408 });
    }

    #[test]
    fn bad_requests_are_classified_from_the_body() {
        let kind = |code: u16, body: &str| match status(code, body) {
            ProviderError::BadRequest { kind, .. } => kind,
            other => panic!("{other:?}"),
        };
        let openai_ctx = r#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        assert_eq!(kind(400, openai_ctx), BadRequestKind::ContextLength);
        let anthropic_ctx = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208000 tokens > 200000 maximum"}}"#;
        assert_eq!(kind(400, anthropic_ctx), BadRequestKind::ContextLength);
        let prefill = r#"{"type":"error","error":{"type":"invalid_request_error","message":"This model does not support assistant message prefill. The conversation must end with a user message."}}"#;
        assert_eq!(kind(400, prefill), BadRequestKind::PrefillUnsupported);
        let trailing = r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: final assistant content cannot end with trailing whitespace"}}"#;
        assert_eq!(kind(400, trailing), BadRequestKind::PrefillUnsupported);
        assert_eq!(kind(422, r#"{"error":"bad field"}"#), BadRequestKind::Invalid);
        assert_eq!(kind(404, "not json"), BadRequestKind::Invalid);
        assert_eq!(kind(413, "{}"), BadRequestKind::Invalid);
    }

    #[test]
    fn messages_are_truncated_and_never_raw() {
        let long = "x".repeat(5000);
        let body = format!(r#"{{"error":{{"message":"{long}","type":"invalid_request_error"}}}}"#);
        let ProviderError::BadRequest { message, .. } = status(400, &body) else { panic!() };
        assert!(message.chars().count() <= MAX_MESSAGE_CHARS + 1);
        let ProviderError::BadRequest { message, .. } = status(400, "secret raw body sk-123")
        else {
            panic!()
        };
        assert!(!message.contains("sk-123"));
    }

    #[test]
    fn in_band_errors_depend_on_tokens_sent() {
        let overloaded = UpstreamError {
            kind: "overloaded_error".into(),
            code: String::new(),
            message: "Overloaded".into(),
        };
        assert_eq!(from_in_band(&overloaded, 0), ProviderError::Overloaded { retry_after: None });
        assert_eq!(
            from_in_band(&overloaded, 4),
            ProviderError::StreamBroken {
                tokens: 4,
                reason: "overloaded_error: Overloaded".into()
            }
        );
        let server = UpstreamError { kind: "server_error".into(), ..UpstreamError::default() };
        assert_eq!(from_in_band(&server, 0), ProviderError::Server { status: 500 });
    }
}
