//! Building the [`AuthService`] from the configuration at start: the account store
//! (PostgreSQL when `[database]` is set, else memory), the counters (Redis when `[redis]` is
//! set, else memory), then the bootstrap owner or the embedded demo login.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;

use super::limits::{Counters, MemoryCounters, RedisCounters};
use super::service::{AuthService, bootstrap, default_credentials_file};
use crate::accounts::AccountStore;
use crate::accounts::memory::MemoryAccountStore;
use crate::accounts::postgres::PgAccountStore;
use crate::config::Config;

/// How often a node pulls revocations and new signing keys from a shared store.
const SYNC_INTERVAL: Duration = Duration::from_secs(2);

pub async fn start(config: &Config) -> anyhow::Result<Arc<AuthService>> {
    let (accounts, shared): (Arc<dyn AccountStore>, bool) = match &config.database {
        Some(database) => match PgAccountStore::connect(database.url.expose_secret()).await {
            Ok(store) => (Arc::new(store), true),
            Err(error) => {
                tracing::warn!(%error, "accounts are kept in memory: the PostgreSQL account store is unavailable");
                (Arc::new(MemoryAccountStore::new()), false)
            }
        },
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
