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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the engine (the default).
    Serve,
    /// Load and validate the configuration, print a summary, and exit.
    CheckConfig,
}

impl Cli {
    /// `switchyard` with no subcommand serves.
    pub fn command(&self) -> Command {
        self.command.unwrap_or(Command::Serve)
    }
}
