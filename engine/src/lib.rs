//! # engine — Switchyard's edges and adapters
//!
//! The actor tree lives in the `actors` crate; this crate puts it on the network and connects
//! it to the world:
//!
//! - [`providers`]: OpenAI, Anthropic, OpenAI-compatible and the built-in mock, behind the
//!   `actors::ports::llm::LlmProvider` port;
//! - [`config`]: TOML + environment → validated typed configuration;
//! - [`error`]: the one client-facing error type;
//! - [`tree`]: starting the actor tree from the configuration;
//! - [`cache`]: the tenant-scoped response cache (exact and verified semantic hits);
//! - [`store`]: durable state in PostgreSQL (conversation store, migrations, crash sweep);
//! - [`auth`], [`accounts`]: tokens, roles, API keys, limits; tenants and users;
//! - [`http`]: the edges — WebSocket chat, REST + SSE, admin inspection, health;
//! - [`conversations`]: the edges' view of a conversation (principal, link, error mapping);
//! - [`cluster`]: several nodes sharing conversations through Redis (ownership leases,
//!   cross-node fan-out, shared counters and cache keys);
//! - [`server`]: building, running and gracefully stopping the engine;
//! - [`cli`]: the command line;
//! - [`telemetry`]: JSON logs, Prometheus metrics, OpenTelemetry traces, SLO reports.

pub mod accounts;
pub mod auth;
pub mod cache;
pub mod chat_cli;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conversations;
pub mod costs;
pub mod error;
pub mod http;
pub mod providers;
pub mod routing;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tree;
