//! Provider adapters: the engine's implementations of the [`LlmProvider`] port.
//!
//! An [`EndpointSpec`] (one `[[models]]` entry of the config) names a provider kind, the
//! upstream model id, credentials and timeouts; [`build_provider`] validates it and returns
//! the adapter:
//!
//! - [`openai`]: OpenAI Chat Completions, also used for any OpenAI-compatible server
//!   (Ollama, vLLM, llama.cpp, Azure-style deployments) through `base_url`, `query` and
//!   `api_key_header`;
//! - [`anthropic`]: Anthropic Messages;
//! - [`mock`]: the built-in model a fresh `cargo run` uses when nothing is configured.
//!
//! The HTTP adapters share [`sse`] (an incremental event-stream parser), `streaming` (the
//! driver that enforces the connect / first-token / idle timeouts, counts delivered tokens
//! and closes the connection when the stream is dropped) and `http_errors` (the single
//! mapping from HTTP statuses and upstream error objects to [`ProviderError`]).
//!
//! [`ProviderError`]: actors::ports::llm::ProviderError

pub mod anthropic;
mod http_errors;
pub mod mock;
pub mod openai;
pub mod sse;
mod streaming;
#[cfg(test)]
mod test_support;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use actors::ports::llm::LlmProvider;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use mock::MockSpec;
pub use streaming::replay_sse;

/// Which wire protocol an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// api.openai.com Chat Completions.
    Openai,
    /// api.anthropic.com Messages.
    Anthropic,
    /// Any server speaking OpenAI Chat Completions at another base URL.
    OpenaiCompatible,
    /// The built-in mock model: no network.
    Mock,
}

impl ProviderKind {
    /// Name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenaiCompatible => "openai_compatible",
            ProviderKind::Mock => "mock",
        }
    }
}

/// Default connect timeout; endpoints that keep it share one connection pool.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_FIRST_TOKEN_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 120_000;

const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";

/// One model endpoint as configured (a `[[models]]` entry of the engine's TOML config).
///
/// `Debug` output never shows the API key (`SecretString` redacts it) nor the values of the
/// extra `headers` (they may carry credentials too).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub provider: ProviderKind,
    /// The model id sent upstream (e.g. `gpt-4o-mini`, `claude-sonnet-4-20250514`, `mock-1`).
    pub upstream_model: String,
    /// Defaults: `https://api.openai.com/v1`, `https://api.anthropic.com`; required for
    /// `openai_compatible` (e.g. `http://localhost:11434/v1` for Ollama).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Required for `openai` and `anthropic`; optional for `openai_compatible`.
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// Send the key in this header instead of the provider's usual one (e.g. `api-key` for
    /// Azure-style deployments, instead of `Authorization: Bearer`).
    #[serde(default)]
    pub api_key_header: Option<String>,
    /// Query parameters added to every request (e.g. `api-version = "2024-10-21"`).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Extra headers sent upstream (tests script `fake-llm` with `x-fake-llm`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// From sending the request to the first token, response headers included.
    #[serde(default = "default_first_token_timeout_ms")]
    pub first_token_timeout_ms: u64,
    /// Longest gap between two tokens once the stream has started.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// A whole non-streaming call.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Pacing of the `mock` provider; ignored by the others.
    #[serde(default)]
    pub mock: MockSpec,
}

impl fmt::Debug for EndpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSpec")
            .field("provider", &self.provider)
            .field("upstream_model", &self.upstream_model)
            .field("base_url", &self.base_url.as_deref().map(redact_userinfo))
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("api_key_header", &self.api_key_header)
            .field("query", &self.query.keys().collect::<Vec<_>>())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("first_token_timeout_ms", &self.first_token_timeout_ms)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("mock", &self.mock)
            .finish()
    }
}

/// `https://user:pass@host/x` → `https://[REDACTED]@host/x`: a base URL may embed
/// credentials, and it appears in errors and `Debug` output.
fn redact_userinfo(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let authority_end =
        url[authority_start..].find(['/', '?', '#']).map_or(url.len(), |i| authority_start + i);
    match url[authority_start..authority_end].rfind('@') {
        Some(at) => {
            format!("{}[REDACTED]{}", &url[..authority_start], &url[authority_start + at..])
        }
        None => url.to_owned(),
    }
}

fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_first_token_timeout_ms() -> u64 {
    DEFAULT_FIRST_TOKEN_TIMEOUT_MS
}
fn default_idle_timeout_ms() -> u64 {
    DEFAULT_IDLE_TIMEOUT_MS
}
fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}

impl EndpointSpec {
    /// A spec with every optional field at its default.
    pub fn new(provider: ProviderKind, upstream_model: impl Into<String>) -> Self {
        Self {
            provider,
            upstream_model: upstream_model.into(),
            base_url: None,
            api_key: None,
            api_key_header: None,
            query: BTreeMap::new(),
            headers: BTreeMap::new(),
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            first_token_timeout_ms: DEFAULT_FIRST_TOKEN_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            mock: MockSpec::default(),
        }
    }

    /// The built-in mock model (`mock-1`), what the engine serves with no keys configured.
    pub fn mock() -> Self {
        Self::new(ProviderKind::Mock, "mock-1")
    }

    /// Builder-style helpers, handy in code and tests.
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = Some(base_url.into());
        self
    }

    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(SecretString::from(key.into()));
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            first_token: Duration::from_millis(self.first_token_timeout_ms),
            idle: Duration::from_millis(self.idle_timeout_ms),
            total: Duration::from_millis(self.request_timeout_ms),
        }
    }
}

/// A problem with an [`EndpointSpec`], found when the engine starts. Never contains a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("upstream_model must not be empty")]
    EmptyModel,
    #[error("provider {provider} needs an api_key")]
    MissingApiKey { provider: &'static str },
    #[error("provider {provider} needs a base_url")]
    MissingBaseUrl { provider: &'static str },
    #[error("base_url {url:?} is not a usable http(s) URL: {reason}")]
    InvalidBaseUrl { url: String, reason: String },
    #[error("header {name:?} is not a valid HTTP header name or value")]
    InvalidHeader { name: String },
    #[error("{field} must be greater than zero")]
    ZeroTimeout { field: &'static str },
    #[error("could not build the HTTP client: {0}")]
    HttpClient(String),
}

/// The shared, pooled HTTP client for provider calls. Build it once and pass it to
/// [`build_provider`] for every endpoint, so connections (and TLS sessions) are reused.
///
/// Its connect timeout is [`DEFAULT_CONNECT_TIMEOUT_MS`]; an endpoint that configures another
/// one gets its own client (reqwest's connect timeout is client-wide).
pub fn http_client() -> Result<reqwest::Client, ConfigError> {
    http_client_with_connect_timeout(Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS))
}

fn http_client_with_connect_timeout(connect: Duration) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        // Nagle's algorithm delays small writes (and the first token behind them).
        .tcp_nodelay(true)
        .connect_timeout(connect)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .tcp_keepalive(Duration::from_secs(30))
        .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError::HttpClient(e.without_url().to_string()))
}

/// Validates `spec` and builds its adapter.
pub fn build_provider(
    spec: &EndpointSpec,
    http: &reqwest::Client,
) -> Result<Arc<dyn LlmProvider>, ConfigError> {
    if spec.upstream_model.trim().is_empty() {
        return Err(ConfigError::EmptyModel);
    }
    for (field, value) in [
        ("connect_timeout_ms", spec.connect_timeout_ms),
        ("first_token_timeout_ms", spec.first_token_timeout_ms),
        ("idle_timeout_ms", spec.idle_timeout_ms),
        ("request_timeout_ms", spec.request_timeout_ms),
    ] {
        if value == 0 {
            return Err(ConfigError::ZeroTimeout { field });
        }
    }
    let provider: Arc<dyn LlmProvider> = match spec.provider {
        ProviderKind::Mock => Arc::new(mock::MockProvider::new(spec)),
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
            Arc::new(openai::OpenAiProvider::new(HttpEndpoint::new(spec, http)?))
        }
        ProviderKind::Anthropic => {
            Arc::new(anthropic::AnthropicProvider::new(HttpEndpoint::new(spec, http)?))
        }
    };
    Ok(provider)
}

/// The waits an HTTP adapter enforces itself (connect is enforced by the client).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
}

/// What both HTTP adapters need to send a request: resolved URL, headers with credentials
/// (marked sensitive so no `Debug` of a header map shows them), model and timeouts.
pub(crate) struct HttpEndpoint {
    pub client: reqwest::Client,
    pub url: reqwest::Url,
    pub headers: HeaderMap,
    pub model: String,
    pub kind: ProviderKind,
    pub timeouts: Timeouts,
}

impl HttpEndpoint {
    fn new(spec: &EndpointSpec, http: &reqwest::Client) -> Result<Self, ConfigError> {
        let provider = spec.provider.as_str();
        let (default_base, path, key_required) = match spec.provider {
            ProviderKind::Openai => (Some(OPENAI_BASE_URL), "chat/completions", true),
            ProviderKind::OpenaiCompatible => (None, "chat/completions", false),
            ProviderKind::Anthropic => (Some(ANTHROPIC_BASE_URL), "v1/messages", true),
            ProviderKind::Mock => (None, "", false),
        };
        let base = match (spec.base_url.as_deref(), default_base) {
            (Some(url), _) => url,
            (None, Some(url)) => url,
            (None, None) => return Err(ConfigError::MissingBaseUrl { provider }),
        };
        let invalid = |reason: &str| ConfigError::InvalidBaseUrl {
            url: redact_userinfo(base),
            reason: reason.to_owned(),
        };
        // Join as a path segment even when the base has no trailing slash
        // (`…/v1` + `chat/completions`, not a replacement of `v1`).
        let mut url = reqwest::Url::parse(&format!("{}/{path}", base.trim_end_matches('/')))
            .map_err(|e| invalid(&e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            // reqwest would send them as Basic auth; keys belong in `api_key`.
            return Err(invalid("credentials in the URL are not supported; use api_key"));
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if !spec.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&spec.query);
        }

        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if spec.provider == ProviderKind::Anthropic {
            headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        }
        for (name, value) in &spec.headers {
            let invalid = || ConfigError::InvalidHeader { name: name.clone() };
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
            let mut value = HeaderValue::from_str(value).map_err(|_| invalid())?;
            // Operators put tokens in extra headers too (gateways, proxies).
            let lower = header.as_str();
            if ["auth", "key", "token", "secret", "cookie"].iter().any(|w| lower.contains(w)) {
                value.set_sensitive(true);
            }
            headers.insert(header, value);
        }
        match &spec.api_key {
            Some(key) => {
                let (name, value) = match (&spec.api_key_header, spec.provider) {
                    (Some(name), _) => (name.as_str(), key.expose_secret().to_owned()),
                    (None, ProviderKind::Anthropic) => {
                        ("x-api-key", key.expose_secret().to_owned())
                    }
                    (None, _) => ("authorization", format!("Bearer {}", key.expose_secret())),
                };
                let invalid = || ConfigError::InvalidHeader { name: name.to_owned() };
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
                let mut value = HeaderValue::from_str(&value).map_err(|_| invalid())?;
                value.set_sensitive(true);
                headers.insert(header, value);
            }
            None if key_required => return Err(ConfigError::MissingApiKey { provider }),
            None => {}
        }

        let client = if spec.connect_timeout_ms == DEFAULT_CONNECT_TIMEOUT_MS {
            http.clone()
        } else {
            http_client_with_connect_timeout(Duration::from_millis(spec.connect_timeout_ms))?
        };
        Ok(Self {
            client,
            url,
            headers,
            model: spec.upstream_model.clone(),
            kind: spec.provider,
            timeouts: spec.timeouts(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-test-SUPERSECRET-0123456789";

    fn client() -> reqwest::Client {
        http_client().unwrap()
    }

    #[test]
    fn spec_deserialises_with_defaults() {
        let spec: EndpointSpec = toml::from_str(
            r#"
            provider = "openai_compatible"
            upstream_model = "llama3.1"
            base_url = "http://localhost:11434/v1"
            query = { "api-version" = "2024-10-21" }
            "#,
        )
        .unwrap();
        assert_eq!(spec.provider, ProviderKind::OpenaiCompatible);
        assert_eq!(spec.first_token_timeout_ms, 30_000);
        assert_eq!(spec.idle_timeout_ms, 30_000);
        assert_eq!(spec.request_timeout_ms, 120_000);
        assert_eq!(spec.connect_timeout_ms, 5_000);
        assert!(spec.api_key.is_none());
        assert!(build_provider(&spec, &client()).is_ok());

        let err = toml::from_str::<EndpointSpec>(
            "provider = \"openai\"\nupstream_model = \"x\"\nmodel_name = \"typo\"",
        )
        .unwrap_err();
        assert!(err.to_string().contains("model_name"), "{err}");
        for kind in ["openai", "anthropic", "openai_compatible", "mock"] {
            let spec: EndpointSpec =
                toml::from_str(&format!("provider = \"{kind}\"\nupstream_model = \"m\"")).unwrap();
            assert_eq!(spec.provider.as_str(), kind);
        }
    }

    #[test]
    fn api_key_never_shows_in_debug_or_errors() {
        let spec: EndpointSpec = toml::from_str(&format!(
            "provider = \"openai\"\nupstream_model = \"gpt-4o\"\napi_key = \"{KEY}\""
        ))
        .unwrap();
        assert!(!format!("{spec:?}").contains("SUPERSECRET"));
        assert!(build_provider(&spec, &client()).is_ok());

        // Extra headers and URL credentials are hidden too.
        let proxied = spec
            .clone()
            .with_header("x-gateway-token", "tok-SUPERSECRET")
            .with_base_url("https://user:SUPERSECRET@gateway.example/v1");
        let shown = format!("{proxied:?}");
        assert!(!shown.contains("SUPERSECRET") && shown.contains("x-gateway-token"), "{shown}");
        let err = build_provider(&proxied, &client()).err().unwrap();
        assert!(!format!("{err:?} {err}").contains("SUPERSECRET"), "{err}");
        assert_eq!(redact_userinfo("http://a:b@h:1/p?q=@"), "http://[REDACTED]@h:1/p?q=@");
        assert_eq!(redact_userinfo("http://h/p@x"), "http://h/p@x");
        let gateway = spec.clone().with_header("x-gateway-token", "tok");
        let ep = HttpEndpoint::new(&gateway, &client()).unwrap();
        assert!(ep.headers.get("x-gateway-token").unwrap().is_sensitive());

        let endpoint = HttpEndpoint::new(&spec, &client()).unwrap();
        assert!(!format!("{:?}", endpoint.headers).contains("SUPERSECRET"));

        // A key that cannot be a header value: the error names the header, not the key.
        let mut bad = spec.clone();
        bad.api_key = Some(SecretString::from(format!("{KEY}\n")));
        let err = build_provider(&bad, &client()).err().unwrap();
        assert!(!format!("{err:?} {err}").contains("SUPERSECRET"));
        assert_eq!(err, ConfigError::InvalidHeader { name: "authorization".into() });
    }

    #[test]
    fn invalid_specs_name_the_problem() {
        let err = |spec: EndpointSpec| build_provider(&spec, &client()).err().unwrap();
        assert_eq!(
            err(EndpointSpec::new(ProviderKind::Openai, "gpt-4o")),
            ConfigError::MissingApiKey { provider: "openai" }
        );
        assert_eq!(
            err(EndpointSpec::new(ProviderKind::Anthropic, "claude")),
            ConfigError::MissingApiKey { provider: "anthropic" }
        );
        assert_eq!(
            err(EndpointSpec::new(ProviderKind::OpenaiCompatible, "llama")),
            ConfigError::MissingBaseUrl { provider: "openai_compatible" }
        );
        assert_eq!(err(EndpointSpec::new(ProviderKind::Mock, " ")), ConfigError::EmptyModel);
        assert!(matches!(
            err(EndpointSpec::new(ProviderKind::OpenaiCompatible, "m").with_base_url("ftp://x")),
            ConfigError::InvalidBaseUrl { .. }
        ));
        let mut spec = EndpointSpec::mock();
        spec.idle_timeout_ms = 0;
        assert_eq!(err(spec), ConfigError::ZeroTimeout { field: "idle_timeout_ms" });
        assert_eq!(
            err(EndpointSpec::new(ProviderKind::OpenaiCompatible, "m")
                .with_base_url("http://localhost:8000/v1")
                .with_header("bad header", "x")),
            ConfigError::InvalidHeader { name: "bad header".into() }
        );
    }

    #[test]
    fn urls_headers_and_query_are_resolved() {
        let mut spec = EndpointSpec::new(ProviderKind::OpenaiCompatible, "gpt-4o")
            .with_base_url("https://example.openai.azure.com/openai/deployments/gpt-4o/")
            .with_api_key(KEY);
        spec.api_key_header = Some("api-key".into());
        spec.query.insert("api-version".into(), "2024-10-21".into());
        let ep = HttpEndpoint::new(&spec, &client()).unwrap();
        assert_eq!(
            ep.url.as_str(),
            "https://example.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
        );
        assert!(ep.headers.get("api-key").unwrap().is_sensitive());
        assert!(ep.headers.get("authorization").is_none());

        let anthropic = EndpointSpec::new(ProviderKind::Anthropic, "claude").with_api_key(KEY);
        let ep = HttpEndpoint::new(&anthropic, &client()).unwrap();
        assert_eq!(ep.url.as_str(), "https://api.anthropic.com/v1/messages");
        assert_eq!(ep.headers.get("anthropic-version").unwrap(), "2023-06-01");
        assert!(ep.headers.get("x-api-key").unwrap().is_sensitive());

        let openai = EndpointSpec::new(ProviderKind::Openai, "gpt-4o").with_api_key(KEY);
        let ep = HttpEndpoint::new(&openai, &client()).unwrap();
        assert_eq!(ep.url.as_str(), "https://api.openai.com/v1/chat/completions");
        assert!(ep.headers.get("authorization").unwrap().is_sensitive());
    }
}
