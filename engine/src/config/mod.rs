//! Configuration: a TOML file, overlaid by environment variables, validated into typed config.
//!
//! Order of precedence (last wins): built-in defaults → `switchyard.toml` (path from
//! `--config` / `SWITCHYARD_CONFIG`) → environment variables with the names people already use
//! (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL`,
//! `DATABASE_URL`, `REDIS_URL`) → command-line flags. Unknown keys are rejected and every
//! validation error names the key, so a typo fails at start instead of being ignored.
//!
//! With no `[[models]]` configured, [`catalogue`] supplies current OpenAI and Anthropic models
//! (for whichever keys are set) with fallback chains between them, plus the built-in `mock`.

pub mod catalogue;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use secrecy::SecretString;
use serde::Deserialize;

use crate::providers::{EndpointSpec, ProviderKind};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub providers: ProvidersConfig,
    pub models: Vec<ModelConfig>,
    pub routing: RoutingConfig,
    pub database: Option<DatabaseConfig>,
    pub redis: Option<RedisConfig>,
    /// `[cache]`: the tenant-scoped response cache (see `crate::cache`).
    pub cache: CacheConfig,
    /// `[telemetry]`: logs, metrics, traces and SLO objectives (see `crate::telemetry`).
    pub telemetry: crate::telemetry::TelemetryConfig,
    pub auth: AuthConfig,
    /// `[costs]`: prices, anomaly detection (see `crate::costs`).
    pub costs: crate::costs::CostsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long in-flight turns may run after SIGTERM before sockets are closed.
    pub shutdown_grace_secs: u64,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_grace_secs: 30,
            workers: 0,
        }
    }
}

/// Size and rate limits on every input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest user message, in bytes of UTF-8.
    pub max_message_bytes: usize,
    /// Largest request body accepted on REST routes.
    pub max_body_bytes: usize,
    /// Largest WebSocket frame (a message over this gets an error frame, then a close).
    pub ws_max_frame_bytes: usize,
    /// Sustained client frames per second per WebSocket connection …
    pub ws_frames_per_second: u32,
    /// … with this burst.
    pub ws_frame_burst: u32,
    /// Events buffered per subscriber before a slow reader is dropped.
    pub ws_outbox_events: usize,
    /// A socket write that takes longer than this drops the session.
    pub ws_write_timeout_ms: u64,
    /// Ping interval; a client silent for `ws_client_timeout_secs` is dropped.
    pub ws_heartbeat_secs: u64,
    pub ws_client_timeout_secs: u64,
    /// Seconds a new socket has to authenticate.
    pub ws_auth_timeout_secs: u64,
    /// Kernel send buffer per connection. Small enough that a client which stops reading
    /// blocks our writes soon (and is dropped at the write deadline) instead of parking
    /// megabytes in the kernel; large enough for full-speed streaming.
    pub socket_send_buffer_bytes: usize,
    /// Turns generated at once across one tenant's conversations; beyond it new messages are
    /// refused (`tenant_concurrency`) until one finishes.
    pub tenant_turns_in_flight: usize,
    /// A new connection must deliver its first request head (request line and headers) within
    /// this, or it is answered 408 and closed: slowloris clients and idle connections cost a
    /// socket for this long at most (actix `client_request_timeout`).
    pub client_request_timeout_ms: u64,
    /// A connection being closed gets this long to flush and shut down before it is dropped
    /// (actix `client_disconnect_timeout`).
    pub client_disconnect_timeout_ms: u64,
    /// A request body must have arrived whole this long after its head; a slower one is
    /// refused (408 on REST) and its connection closed.
    pub request_body_timeout_ms: u64,
    /// Connections one client address may hold at once (IPv6: per /64); beyond it requests
    /// get 429 `too_many_connections` and the connection is closed. 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the client. Their own
    /// connections are not capped; each request through them counts against the client
    /// address they forward, for as long as its response (or WebSocket) lasts.
    pub trusted_proxies: Vec<crate::http::connections::IpRange>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 32 * 1024,
            max_body_bytes: 256 * 1024,
            ws_max_frame_bytes: 64 * 1024,
            ws_frames_per_second: 5,
            ws_frame_burst: 20,
            ws_outbox_events: 1024,
            ws_write_timeout_ms: 10_000,
            ws_heartbeat_secs: 15,
            ws_client_timeout_secs: 45,
            ws_auth_timeout_secs: 10,
            socket_send_buffer_bytes: 64 * 1024,
            tenant_turns_in_flight: 64,
            client_request_timeout_ms: 5_000,
            client_disconnect_timeout_ms: 1_000,
            request_body_timeout_ms: 30_000,
            max_connections_per_ip: 256,
            trusted_proxies: Vec::new(),
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.client_request_timeout_ms == 0 || self.request_body_timeout_ms == 0 {
            bail!("limits.client_request_timeout_ms / request_body_timeout_ms: must be positive");
        }
        Ok(())
    }
}

/// Credentials and base URLs shared by every model of a provider.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    pub openai: ProviderCredentials,
    pub anthropic: ProviderCredentials,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderCredentials {
    pub api_key: Option<SecretString>,
    pub base_url: Option<String>,
}

/// One model clients can name, served by one endpoint.
///
/// In TOML the endpoint's keys sit beside `name` and `fallbacks` in one `[[models]]` table.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The name clients use (`"model": "gpt-4o"`).
    pub name: String,
    /// Models to fail over to, in order.
    pub fallbacks: Vec<String>,
    /// How capable the model is, for `model: "auto"` (`economy`, `standard`, `premium`);
    /// unset: the catalogue's tier for known names, else `standard`.
    pub tier: Option<crate::routing::complexity::Tier>,
    /// Generations this endpoint runs at once (default 256); a turn past it waits up to
    /// `queue_timeout_ms` (default 50) for a slot, then moves to the next model or, at the end
    /// of its chain, fails with `overloaded`. Raise it for an upstream that takes more.
    pub max_in_flight: Option<usize>,
    pub queue_timeout_ms: Option<u64>,
    pub endpoint: EndpointSpec,
}

// Hand-written because `#[serde(flatten)]` silently accepts unknown keys: the endpoint's own
// `deny_unknown_fields` must see exactly the keys that are not ours.
impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        let name = match table.remove("name") {
            Some(toml::Value::String(name)) => name,
            Some(_) => return Err(D::Error::custom("`name` must be a string")),
            None => return Err(D::Error::missing_field("name")),
        };
        let fallbacks = match table.remove("fallbacks") {
            Some(value) => Vec::<String>::deserialize(value)
                .map_err(|e| D::Error::custom(format!("model `{name}`: fallbacks: {e}")))?,
            None => Vec::new(),
        };
        let tier = match table.remove("tier") {
            Some(value) => Some(
                crate::routing::complexity::Tier::deserialize(value)
                    .map_err(|e| D::Error::custom(format!("model `{name}`: tier: {e}")))?,
            ),
            None => None,
        };
        let mut count = |key: &str| match table.remove(key) {
            Some(toml::Value::Integer(n)) if n >= 1 => Ok(Some(n as u64)),
            Some(_) => Err(D::Error::custom(format!("model `{name}`: {key} must be at least 1"))),
            None => Ok(None),
        };
        let max_in_flight = count("max_in_flight")?.map(|n| n as usize);
        let queue_timeout_ms = count("queue_timeout_ms")?;
        let endpoint = EndpointSpec::deserialize(toml::Value::Table(table))
            .map_err(|e| D::Error::custom(format!("model `{name}`: {e}")))?;
        Ok(ModelConfig { name, fallbacks, tier, max_in_flight, queue_timeout_ms, endpoint })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Used when a client names no model. Defaults to the first configured model.
    pub default_model: Option<String>,
    /// Route aliases: a name that resolves to a chain of models, e.g. `auto`.
    pub aliases: BTreeMap<String, Vec<String>>,
}

/// `[auth]`: token lifetimes, login protection, request and token limits, bootstrap.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of a biscuit access token.
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token (each refresh issues a new one).
    pub refresh_token_ttl_secs: u64,
    /// Failed logins per account within `login_lockout_secs` before it is locked…
    pub login_max_failures: u64,
    /// … and per client IP.
    pub login_ip_max_failures: u64,
    pub login_lockout_secs: u64,
    /// Requests per minute; 0 = unlimited. Tenants and API keys may carry their own.
    pub tenant_requests_per_minute: u64,
    pub user_requests_per_minute: u64,
    pub key_requests_per_minute: u64,
    /// Model tokens (input + output) per minute per tenant; 0 = unlimited.
    pub tenant_tokens_per_minute: u64,
    /// `SWITCHYARD_BOOTSTRAP_EMAIL` / `SWITCHYARD_BOOTSTRAP_PASSWORD`: the owner (and
    /// superadmin) made sure of at start.
    pub bootstrap_email: Option<String>,
    pub bootstrap_password: Option<SecretString>,
    /// Where the embedded default saves its demo login for `switchyard chat`
    /// (default `~/.config/switchyard/credentials.json`).
    pub credentials_file: Option<std::path::PathBuf>,
    /// `SWITCHYARD_SECRETS_KEY`: encrypts signing keys and TOTP secrets stored in PostgreSQL
    /// (see `engine::accounts::sealed`); unset = stored in plain.
    pub secrets_key: Option<SecretString>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 900,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            login_max_failures: 5,
            login_ip_max_failures: 50,
            login_lockout_secs: 900,
            tenant_requests_per_minute: 6000,
            user_requests_per_minute: 1200,
            key_requests_per_minute: 1200,
            tenant_tokens_per_minute: 0,
            bootstrap_email: None,
            bootstrap_password: None,
            credentials_file: None,
            secrets_key: None,
        }
    }
}

/// `[database]`: PostgreSQL for durable state (see `engine::store`). Without it the engine
/// runs on in-memory state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: SecretString,
    /// Pooled connections per engine process.
    #[serde(default = "DatabaseConfig::default_pool_size")]
    pub pool_size: usize,
    /// Server-side bound on every statement (`statement_timeout`), in milliseconds.
    #[serde(default = "DatabaseConfig::default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Bound on opening a connection and on waiting for a pooled one.
    #[serde(default = "DatabaseConfig::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Apply pending migrations at start (otherwise run `switchyard migrate`).
    #[serde(default = "DatabaseConfig::default_true")]
    pub migrate_on_start: bool,
    /// How often the crash sweep looks for replies left `streaming` by a dead node…
    #[serde(default = "DatabaseConfig::default_sweep_interval_secs")]
    pub sweep_interval_secs: u64,
    /// …and how long such a reply must have been silent to count as dead (live replies
    /// write at least every 10 s).
    #[serde(default = "DatabaseConfig::default_sweep_stale_after_secs")]
    pub sweep_stale_after_secs: u64,
    /// How often a streaming reply's new text is written: the most of a reply a crash can
    /// lose, against one `UPDATE` per open reply per interval (at 1,000 open replies and
    /// 250 ms, 4,000 a second — `docs/benchmarks.md`, "10k connections").
    #[serde(default = "DatabaseConfig::default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
}

impl DatabaseConfig {
    pub fn new(url: SecretString) -> Self {
        Self {
            url,
            pool_size: Self::default_pool_size(),
            statement_timeout_ms: Self::default_statement_timeout_ms(),
            connect_timeout_ms: Self::default_connect_timeout_ms(),
            migrate_on_start: true,
            sweep_interval_secs: Self::default_sweep_interval_secs(),
            sweep_stale_after_secs: Self::default_sweep_stale_after_secs(),
            checkpoint_interval_ms: Self::default_checkpoint_interval_ms(),
        }
    }

    fn default_pool_size() -> usize {
        16
    }

    fn default_statement_timeout_ms() -> u64 {
        5_000
    }

    fn default_connect_timeout_ms() -> u64 {
        3_000
    }

    fn default_true() -> bool {
        true
    }

    fn default_sweep_interval_secs() -> u64 {
        10
    }

    fn default_sweep_stale_after_secs() -> u64 {
        30
    }

    fn default_checkpoint_interval_ms() -> u64 {
        250
    }
}

/// `[redis]`: shared state for running several nodes (conversation ownership, cross-node
/// fan-out, counters, cache keys). See `docs/architecture.md`, "Running several nodes".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: SecretString,
    /// Prefix of every key and channel, so deployments (or tests) can share one Redis.
    #[serde(default = "RedisConfig::default_key_prefix")]
    pub key_prefix: String,
    /// This node's id in ownership leases (`SWITCHYARD_NODE_ID`); a fresh UUID per process
    /// when unset, which is what you want unless you need stable names in logs.
    #[serde(default)]
    pub node_id: Option<String>,
    /// A conversation's owner lease: renewed every third of this while its actor lives; a
    /// node that dies hands its conversations over after at most this long.
    #[serde(default = "RedisConfig::default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// How long a post forwarded to the owner node may take before `unavailable`.
    #[serde(default = "RedisConfig::default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Deadline of a single Redis command (or connection attempt).
    #[serde(default = "RedisConfig::default_command_timeout_ms")]
    pub command_timeout_ms: u64,
}

impl RedisConfig {
    pub fn new(url: SecretString) -> Self {
        Self {
            url,
            key_prefix: Self::default_key_prefix(),
            node_id: None,
            lease_ttl_ms: Self::default_lease_ttl_ms(),
            request_timeout_ms: Self::default_request_timeout_ms(),
            command_timeout_ms: Self::default_command_timeout_ms(),
        }
    }

    fn default_key_prefix() -> String {
        "switchyard:".into()
    }

    fn default_lease_ttl_ms() -> u64 {
        10_000
    }

    fn default_request_timeout_ms() -> u64 {
        5_000
    }

    fn default_command_timeout_ms() -> u64 {
        1_000
    }
}

/// `[cache]`: the tenant-scoped response cache (see `crate::cache`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Serve repeats of the same normalised question in the same context.
    pub exact: bool,
    /// Serve verified paraphrases; needs `model_dir` or `embeddings`.
    pub semantic: bool,
    /// all-MiniLM-L6-v2 in sentence-transformers layout (`SWITCHYARD_EMBEDDING_MODEL_DIR`).
    pub model_dir: Option<std::path::PathBuf>,
    /// An OpenAI-compatible `/v1/embeddings` API, used when no `model_dir` is set.
    pub embeddings: Option<EmbeddingsConfig>,
    /// Cosine similarity a neighbour needs before verification looks at it.
    pub similarity_threshold: f32,
    /// Content words two prompts may differ by (never numbers, names, negations, units, …).
    pub max_unmatched_terms: usize,
    /// Reject paraphrases whose shared words come in another order.
    pub strict_order: bool,
    /// Turns sampled hotter than this are neither served nor stored (unset counts as 1.0).
    pub max_temperature: f32,
    pub ttl_secs: u64,
    pub max_entries_per_tenant: usize,
    /// Per-tenant overrides, by tenant id.
    pub tenants: BTreeMap<String, TenantCacheConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            exact: true,
            semantic: true,
            model_dir: None,
            embeddings: None,
            similarity_threshold: 0.85,
            max_unmatched_terms: 1,
            strict_order: true,
            max_temperature: 1.0,
            ttl_secs: 24 * 3600,
            max_entries_per_tenant: 10_000,
            tenants: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsConfig {
    /// e.g. `https://api.openai.com/v1`
    pub base_url: String,
    pub model: String,
    pub api_key: Option<SecretString>,
}

/// One tenant's cache settings; unset keys fall back to `[cache]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantCacheConfig {
    pub exact: Option<bool>,
    pub semantic: Option<bool>,
    pub similarity_threshold: Option<f32>,
    pub max_unmatched_terms: Option<usize>,
    pub max_temperature: Option<f32>,
    pub ttl_secs: Option<u64>,
    pub max_entries: Option<usize>,
}

/// Where environment variables come from; a map in tests, the process environment in `main`.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment. Empty values count as unset.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Environment for BTreeMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| (*v).to_owned())
    }
}

impl Config {
    /// Loads the file (if any), applies the environment, fills the catalogue and validates.
    pub fn load(path: Option<&Path>, env: &dyn Environment) -> anyhow::Result<Config> {
        let config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("failed to read config file {}", path.display()))?;
                Config::parse(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => Config::default(),
        };
        config.finish(env)
    }

    /// Applies the environment, fills the catalogue and validates a parsed config.
    pub fn finish(mut self, env: &dyn Environment) -> anyhow::Result<Config> {
        self.apply_env(env)?;
        if self.models.is_empty() {
            self.models = catalogue::default_models(&self.providers);
        }
        self.fill_credentials();
        self.validate()?;
        Ok(self)
    }

    /// Parses TOML; errors name the offending key and line.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    fn apply_env(&mut self, env: &dyn Environment) -> anyhow::Result<()> {
        self.telemetry.apply_env(env);
        if let Some(key) = env.var("OPENAI_API_KEY") {
            self.providers.openai.api_key = Some(SecretString::from(key));
        }
        if let Some(url) = env.var("OPENAI_BASE_URL") {
            self.providers.openai.base_url = Some(url);
        }
        if let Some(key) = env.var("ANTHROPIC_API_KEY") {
            self.providers.anthropic.api_key = Some(SecretString::from(key));
        }
        if let Some(url) = env.var("ANTHROPIC_BASE_URL") {
            self.providers.anthropic.base_url = Some(url);
        }
        if let Some(url) = env.var("DATABASE_URL") {
            // The URL from the environment; the file's other `[database]` options stay.
            match &mut self.database {
                Some(database) => database.url = SecretString::from(url),
                None => self.database = Some(DatabaseConfig::new(SecretString::from(url))),
            }
        }
        if let Some(dir) = env.var("SWITCHYARD_EMBEDDING_MODEL_DIR") {
            self.cache.model_dir = Some(dir.into());
        }
        if let Some(url) = env.var("REDIS_URL") {
            match &mut self.redis {
                Some(redis) => redis.url = SecretString::from(url),
                None => self.redis = Some(RedisConfig::new(SecretString::from(url))),
            }
        }
        if let Some(node_id) = env.var("SWITCHYARD_NODE_ID") {
            match &mut self.redis {
                Some(redis) => redis.node_id = Some(node_id),
                None => bail!("SWITCHYARD_NODE_ID: only meaningful with REDIS_URL / [redis] url"),
            }
        }
        if let Some(email) = env.var("SWITCHYARD_BOOTSTRAP_EMAIL") {
            self.auth.bootstrap_email = Some(email);
        }
        if let Some(password) = env.var("SWITCHYARD_BOOTSTRAP_PASSWORD") {
            self.auth.bootstrap_password = Some(SecretString::from(password));
        }
        if let Some(key) = env.var("SWITCHYARD_SECRETS_KEY") {
            self.auth.secrets_key = Some(SecretString::from(key));
        }
        if let Some(listen) = env.var("SWITCHYARD_LISTEN") {
            self.server.listen = listen.parse().with_context(|| {
                format!("SWITCHYARD_LISTEN: `{listen}` is not an address like 127.0.0.1:8080")
            })?;
        }
        Ok(())
    }

    /// Models of a provider that name no key or base URL of their own use the provider's.
    fn fill_credentials(&mut self) {
        for model in &mut self.models {
            let shared = match model.endpoint.provider {
                ProviderKind::Openai => &self.providers.openai,
                ProviderKind::Anthropic => &self.providers.anthropic,
                ProviderKind::OpenaiCompatible | ProviderKind::Mock => continue,
            };
            if model.endpoint.api_key.is_none() {
                model.endpoint.api_key = shared.api_key.clone();
            }
            if model.endpoint.base_url.is_none() {
                model.endpoint.base_url = shared.base_url.clone();
            }
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.telemetry.validate()?;
        self.limits.validate()?;
        let mut names = HashSet::new();
        for (i, model) in self.models.iter().enumerate() {
            let at = format!("models[{i}] (`{}`)", model.name);
            if model.name.trim().is_empty() {
                bail!("models[{i}].name: must not be empty");
            }
            if !names.insert(model.name.as_str()) {
                bail!("{at}.name: the name is used by another model");
            }
            if self.routing.aliases.contains_key(&model.name) {
                bail!("{at}.name: also defined as a routing alias");
            }
            if model.name == crate::costs::AUTO_MODEL {
                bail!("{at}.name: `auto` is reserved for complexity-based routing");
            }
            let needs_key =
                matches!(model.endpoint.provider, ProviderKind::Openai | ProviderKind::Anthropic);
            if needs_key && model.endpoint.api_key.is_none() {
                let var = match model.endpoint.provider {
                    ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
                    _ => "OPENAI_API_KEY",
                };
                bail!("{at}.api_key: the provider needs an API key; set {var} or api_key");
            }
            if model.endpoint.provider == ProviderKind::OpenaiCompatible
                && model.endpoint.base_url.is_none()
            {
                bail!("{at}.base_url: required for an openai_compatible endpoint");
            }
        }
        for (i, model) in self.models.iter().enumerate() {
            for fallback in &model.fallbacks {
                if !names.contains(fallback.as_str()) {
                    bail!("models[{i}] (`{}`).fallbacks: unknown model `{fallback}`", model.name);
                }
                if fallback == &model.name {
                    bail!(
                        "models[{i}] (`{}`).fallbacks: a model cannot fall back to itself",
                        model.name
                    );
                }
            }
        }
        for (alias, chain) in &self.routing.aliases {
            if chain.is_empty() {
                bail!("routing.aliases.{alias}: needs at least one model");
            }
            if let Some(unknown) = chain.iter().find(|m| !names.contains(m.as_str())) {
                bail!("routing.aliases.{alias}: unknown model `{unknown}`");
            }
        }
        if let Some(default) = &self.routing.default_model
            && !names.contains(default.as_str())
            && !self.routing.aliases.contains_key(default)
            && default != crate::costs::AUTO_MODEL
        {
            bail!("routing.default_model: unknown model `{default}`");
        }
        if self.models.is_empty() {
            bail!("models: at least one model must be configured");
        }
        let model_names: Vec<String> = self.models.iter().map(|m| m.name.clone()).collect();
        self.costs.validate(&model_names)?;
        let thresholds = std::iter::once(("cache", self.cache.similarity_threshold)).chain(
            self.cache
                .tenants
                .iter()
                .filter_map(|(t, c)| c.similarity_threshold.map(|s| (t.as_str(), s))),
        );
        for (at, threshold) in thresholds {
            if !(0.0..=1.0).contains(&threshold) {
                bail!("{at}: similarity_threshold must be between 0 and 1");
            }
        }
        if self.auth.bootstrap_email.is_some() != self.auth.bootstrap_password.is_some() {
            bail!(
                "auth.bootstrap_email / auth.bootstrap_password: set both (SWITCHYARD_BOOTSTRAP_EMAIL and SWITCHYARD_BOOTSTRAP_PASSWORD) or neither"
            );
        }
        if self.auth.access_token_ttl_secs == 0 {
            bail!("auth.access_token_ttl_secs: must be at least 1");
        }
        if let Some(redis) = &self.redis {
            if redis.lease_ttl_ms < 1000 {
                bail!("redis.lease_ttl_ms: must be at least 1000");
            }
            if redis.key_prefix.is_empty() {
                bail!("redis.key_prefix: must not be empty");
            }
            if redis.request_timeout_ms == 0 || redis.command_timeout_ms == 0 {
                bail!("redis.request_timeout_ms / command_timeout_ms: must be positive");
            }
        }
        if let Some(database) = &self.database {
            if database.pool_size == 0 {
                bail!("database.pool_size: must be at least 1");
            }
            if database.statement_timeout_ms == 0 || database.connect_timeout_ms == 0 {
                bail!("database.statement_timeout_ms / connect_timeout_ms: must be positive");
            }
            if !(10..=5_000).contains(&database.checkpoint_interval_ms) {
                bail!("database.checkpoint_interval_ms: between 10 and 5000");
            }
            if database.sweep_stale_after_secs < 15 {
                bail!(
                    "database.sweep_stale_after_secs: at least 15 (live replies write every 10 s)"
                );
            }
        }
        Ok(())
    }

    /// Whether clients may ask for `name`: a configured model, a route alias, `auto`
    /// (complexity-based routing) or `cheapest:<tier>` (see `crate::costs::policy`).
    pub fn routes_to(&self, name: &str) -> bool {
        name == crate::costs::AUTO_MODEL
            || crate::costs::policy::is_tier_choice(name)
            || self.models.iter().any(|m| m.name == name)
            || self.routing.aliases.contains_key(name)
    }

    /// The model used when a client names none.
    pub fn default_model(&self) -> &str {
        match &self.routing.default_model {
            Some(name) => name,
            None => self.models.first().map_or("mock", |m| m.name.as_str()),
        }
    }
}

#[cfg(test)]
mod tests;
