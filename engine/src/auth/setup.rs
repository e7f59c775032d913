//! Building the [`AuthService`] from the configuration at start: the account store
//! (PostgreSQL when `[database]` is set — migrated first, swept hourly — else memory), the
//! counters (Redis when `[redis]` is set, else memory), then the bootstrap owner or the
//! embedded demo login.
//!
//! With a database configured the engine does not fall back to memory: accounts kept on one
//! node would make tokens fail on every other, so an unreachable database stops the start
//! (as it does for the conversation store).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;

use super::limits::{Counters, MemoryCounters, RedisCounters};
use super::service::{AuthService, bootstrap, default_credentials_file};
use crate::accounts::AccountStore;
use crate::accounts::memory::MemoryAccountStore;
use crate::accounts::postgres::{PgAccountOptions, PgAccountStore};
use crate::config::{Config, DatabaseConfig};

/// How often a node pulls revocations and new signing keys from a shared store.
const SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// How often spent refresh tokens and old revocations are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// The PostgreSQL account store for `database`, migrated unless `migrate_on_start = false`.
pub async fn account_store(
    config: &Config,
    database: &DatabaseConfig,
) -> anyhow::Result<PgAccountStore> {
    let store = PgAccountStore::connect(database, PgAccountOptions::from_config(&config.auth)?)?;
    if database.migrate_on_start {
        store.migrate().await.context("failed to migrate the database")?;
    }
    Ok(store)
}

pub async fn start(config: &Config) -> anyhow::Result<Arc<AuthService>> {
    let (accounts, shared): (Arc<dyn AccountStore>, bool) = match &config.database {
        Some(database) => {
            let store = account_store(config, database).await?;
            let sweeper = store.clone();
            actix_rt::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                loop {
                    tick.tick().await;
                    match sweeper.sweep().await {
                        Ok(0) => {}
                        Ok(rows) => tracing::debug!(rows, "account sweep"),
                        Err(error) => tracing::warn!(%error, "account sweep failed"),
                    }
                }
            });
            (Arc::new(store), true)
        }
        None => (Arc::new(MemoryAccountStore::new()), false),
    };
    let redis: Option<Arc<dyn Counters>> = match &config.redis {
        Some(redis) => Some(Arc::new(
            RedisCounters::connect(redis.url.expose_secret(), "switchyard:")
                .await
                .context("failed to connect the rate-limit counters")?,
        )),
        None => None,
    };
    let counters: Arc<dyn Counters> = match &redis {
        Some(redis) => redis.clone(),
        None => Arc::new(MemoryCounters::default()),
    };
    let mut auth_config = config.auth.clone();
    if auth_config.credentials_file.is_none() && config.database.is_none() {
        auth_config.credentials_file = default_credentials_file();
    }
    let auth = AuthService::start(auth_config, accounts, counters, redis).await?;
    bootstrap(&auth, config.database.is_none()).await.context("failed to bootstrap accounts")?;
    if shared {
        let syncing = Arc::downgrade(&auth);
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            loop {
                tick.tick().await;
                let Some(auth) = syncing.upgrade() else { break };
                auth.sync_from_store().await;
            }
        });
    }
    Ok(auth)
}
