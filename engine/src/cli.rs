//! The `switchyard` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// Switchyard: a multi-tenant, real-time AI chat engine.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Environment variables override it.
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "SWITCHYARD_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Address to listen on; port 0 picks a free port (the bound address is logged).
    #[arg(long, global = true, env = "SWITCHYARD_LISTEN")]
    pub listen: Option<SocketAddr>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the engine (the default).
    Serve,
    /// Load and validate the configuration, print a summary, and exit.
    CheckConfig,
    /// Send one message to a running engine and stream the reply to the terminal.
    Chat(ChatArgs),
    /// Apply pending database migrations (`[database]` / DATABASE_URL) and exit.
    Migrate,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ChatArgs {
    /// The engine's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "SWITCHYARD_URL")]
    pub url: String,
    /// Model (or route alias) for a new conversation; the engine's default if omitted.
    #[arg(long)]
    pub model: Option<String>,
    /// Continue this conversation instead of starting a new one.
    #[arg(long)]
    pub conversation: Option<String>,
    /// Log in as this user (default: the demo login the embedded engine saved at first start).
    #[arg(long, env = "SWITCHYARD_EMAIL")]
    pub email: Option<String>,
    /// The user's password.
    #[arg(long, env = "SWITCHYARD_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// The message to send.
    #[arg(required = true, num_args = 1..)]
    pub message: Vec<String>,
}

impl Cli {
    /// `switchyard` with no subcommand serves.
    pub fn command(&self) -> Command {
        self.command.clone().unwrap_or(Command::Serve)
    }
}
