//! The `switchyard` command line: serve (the default), check the configuration, chat,
//! migrate, and the offline account administration (`tenant create`, `user create`,
//! `keys rotate`) that acts on the PostgreSQL database directly (see
//! [`crate::auth::admin`]).

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
    /// Tenants, in the database (`[database]` / DATABASE_URL).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Users, in the database (`[database]` / DATABASE_URL).
    #[command(subcommand)]
    User(UserCommand),
    /// Token signing keys, in the database (`[database]` / DATABASE_URL).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; prints `tenant_id <id>`.
    Create {
        /// The tenant's display name.
        name: String,
        /// Requests per minute for the whole tenant (default: `auth.tenant_requests_per_minute`).
        #[arg(long)]
        requests_per_minute: Option<u64>,
        /// Model tokens per minute for the whole tenant (default: `auth.tenant_tokens_per_minute`).
        #[arg(long)]
        tokens_per_minute: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum UserCommand {
    /// Create a user in a tenant; prints `user_id <id>` (and `password <p>` when generated).
    Create(UserCreateArgs),
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct UserCreateArgs {
    /// The tenant's id (from `switchyard tenant create`).
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub email: String,
    /// owner, admin, member or viewer.
    #[arg(long)]
    pub role: String,
    /// Also make the user a platform superadmin.
    #[arg(long)]
    pub superadmin: bool,
    /// Read the password from standard input (one line). Without it a random password is
    /// generated and printed once.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum KeysCommand {
    /// Add a new token signing key; prints `signing_key <id>`. Running engines pick it up
    /// within seconds; tokens signed by older keys stay valid until they expire.
    Rotate,
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
