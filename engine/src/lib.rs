//! # engine — Switchyard's edges and adapters
//!
//! The actor tree lives in the `actors` crate; this crate puts it on the network and connects
//! it to the world:
//!
//! - [`providers`]: OpenAI, Anthropic, OpenAI-compatible and the built-in mock, behind the
//!   `actors::ports::llm::LlmProvider` port;
//! - [`config`]: TOML + environment → validated typed configuration;
//! - [`error`]: the one client-facing error type;
//! - [`cli`], [`telemetry`]: the command line and logging.

pub mod cli;
pub mod config;
pub mod error;
pub mod providers;
pub mod telemetry;
