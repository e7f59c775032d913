//! Offline account administration: `switchyard tenant create`, `switchyard user create` and
//! `switchyard keys rotate` act on the PostgreSQL database directly (migrating it first),
//! through the same [`AuthService`] rules the REST API applies (name and email checks,
//! password length, argon2id, key ids). Running engines see the result at once (accounts
//! are read per request) or, for a new signing key, within their sync interval.
//!
//! Without a database there is nothing to administer offline: the in-memory engine keeps
//! its accounts inside the running process, so the commands refuse with [`NO_DATABASE`].

use std::sync::Arc;

use anyhow::Context;

use super::limits::MemoryCounters;
use super::permissions::Role;
use super::service::AuthService;
use super::{passwords, random_token};
use crate::accounts::AccountError;
use crate::accounts::postgres::PgAccountStore;
use crate::cli::{Command, KeysCommand, TenantCommand, UserCommand};
use crate::config::Config;
use crate::error::ApiError;

/// Why the account commands need `[database]`.
pub const NO_DATABASE: &str = "no database is configured ([database] url / DATABASE_URL): the \
in-memory engine keeps its accounts inside the running process, so there is nothing to \
administer offline. Use the running engine's REST API instead (POST /api/v1/tenants, \
POST /api/v1/tenants/{id}/users, POST /admin/signing-keys/rotate).";

/// Runs an account command and returns what to print (`name value` lines). `password` is
/// called for `user create --password-stdin` only.
pub async fn run(
    config: &Config,
    command: &Command,
    password: impl FnOnce() -> std::io::Result<String>,
) -> anyhow::Result<String> {
    let Some(database) = &config.database else { anyhow::bail!(NO_DATABASE) };
    // Check the arguments before touching the database.
    let user = match command {
        Command::User(UserCommand::Create(args)) => {
            let role = args.role.parse::<Role>().map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            let (password, generated) = if args.password_stdin {
                let line = password().context("failed to read the password from stdin")?;
                let line = line.trim_end_matches(['\r', '\n']).to_owned();
                passwords::validate_new(&line).map_err(|e| anyhow::anyhow!("password: {e}"))?;
                (line, false)
            } else {
                (random_token(24), true)
            };
            Some((args, role, password, generated))
        }
        Command::Tenant(_) | Command::Keys(_) => None,
        _ => anyhow::bail!("not an account command"),
    };
    let store = PgAccountStore::connect(
        database,
        crate::accounts::postgres::PgAccountOptions::from_config(&config.auth)?,
    )?;
    store.migrate().await?;
    let auth = AuthService::start(
        config.auth.clone(),
        Arc::new(store),
        Arc::new(MemoryCounters::default()),
        None,
    )
    .await?;
    match command {
        Command::Tenant(TenantCommand::Create { name, requests_per_minute, tokens_per_minute }) => {
            let tenant = auth
                .create_tenant(name, *requests_per_minute, *tokens_per_minute)
                .await
                .map_err(refused)?;
            Ok(format!("tenant_id {}", tenant.id))
        }
        Command::Keys(KeysCommand::Rotate) => {
            let id = auth.rotate_keys().await.map_err(refused)?;
            Ok(format!("signing_key {id}"))
        }
        _ => {
            let Some((args, role, password, generated)) = user else {
                anyhow::bail!("not an account command");
            };
            match auth.accounts.get_tenant(&args.tenant).await {
                Ok(_) => {}
                Err(AccountError::NotFound) => {
                    anyhow::bail!("--tenant: no tenant has the id `{}`", args.tenant)
                }
                Err(e) => return Err(anyhow::anyhow!("failed to read the tenant: {e}")),
            }
            let user = auth
                .create_user(&args.tenant, &args.email, &password, role, args.superadmin)
                .await
                .map_err(refused)?;
            let mut out = format!("user_id {}", user.id);
            if generated {
                out.push_str(&format!("\npassword {password}"));
            }
            Ok(out)
        }
    }
}

/// An [`ApiError`] as a command-line error: its code and message.
fn refused(e: ApiError) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", e.code(), e.message())
}
