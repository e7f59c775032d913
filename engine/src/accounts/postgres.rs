//! [`PgAccountStore`]: the [`AccountStore`](super::AccountStore) on PostgreSQL, so logins,
//! refresh tokens, API keys, revocations and signing keys are shared by every node and
//! survive restarts. Tables: V1 (tenants, users, memberships), V2 (API keys), V6 (refresh
//! sessions), V7 (signing keys) and V10 (what authentication added to them, and
//! `revoked_sessions`).
//!
//! * Same connection approach as [`crate::store::postgres`]: a deadpool-postgres pool,
//!   statements prepared once per connection (`prepare_cached`), the server's
//!   `statement_timeout` plus a client-side deadline around each whole call, and every call
//!   run as a task of its own (so a transaction finishes even if its caller goes away).
//! * Every tenant-owned query that the port scopes by tenant filters by `tenant_id`.
//! * Errors: a unique violation is `Conflict` (a taken email, a known id), a foreign-key
//!   violation `NotFound` (a membership for a missing user), anything else — a refused
//!   connection, a timeout, an unexpected SQL error — `Unavailable`. Only the SQLSTATE is
//!   logged, never a server message (its detail can quote row values such as an email).
//! * [`AccountStore::use_refresh`] locks the token's row (`SELECT … FOR UPDATE`) in a
//!   transaction: two nodes presenting one refresh token at once are serialised on that row,
//!   the first spends it (`Valid`), the second finds it spent (`Reused`) and revokes the
//!   family.
//! * Secrets at rest: the private halves of signing keys and TOTP secrets are sealed with
//!   [`super::sealed`] when `auth.secrets_key` is configured; hashes (passwords, refresh
//!   tokens, API keys, recovery codes) are stored as they come.
//! * [`PgAccountStore::sweep`] forgets refresh tokens a day after they expire and revoked
//!   sessions once no token of theirs is left and their access tokens have expired.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use data_encoding::HEXLOWER;
use deadpool_postgres::Pool;
use secrecy::ExposeSecret;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::sealed::SealingKey;
use super::{
    AccountError, AccountFuture, AccountStore, ApiKey, Membership, Mfa, RefreshOutcome,
    RefreshToken, StoredSigningKey, Tenant, User,
};
use crate::auth::permissions::{Permission, Role};
use crate::config::DatabaseConfig;

/// What the store needs beyond the connection.
#[derive(Debug)]
pub struct PgAccountOptions {
    /// How long [`AccountStore::revoked_families`] keeps reporting a revoked session: at
    /// least the access-token lifetime, so every node refuses its access tokens until they
    /// have expired anyway.
    pub revocations_kept_for: Duration,
    /// Seals signing keys and TOTP secrets (`auth.secrets_key`); `None` stores them in plain.
    pub sealing: Option<SealingKey>,
}

impl PgAccountOptions {
    /// From `[auth]`: revocations kept for twice the access-token lifetime (at least an
    /// hour), sealing when `secrets_key` is set.
    pub fn from_config(auth: &crate::config::AuthConfig) -> anyhow::Result<PgAccountOptions> {
        let sealing = auth
            .secrets_key
            .as_ref()
            .map(|secret| SealingKey::from_secret(secret.expose_secret()))
            .transpose()?;
        let kept = (auth.access_token_ttl_secs.saturating_mul(2)).max(3600);
        Ok(PgAccountOptions { revocations_kept_for: Duration::from_secs(kept), sealing })
    }
}

/// The account store on PostgreSQL. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgAccountStore {
    pool: Pool,
    /// Client-side bound on one whole call.
    deadline: Duration,
    options: Arc<PgAccountOptions>,
}

impl std::fmt::Debug for PgAccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("PgAccountStore").finish_non_exhaustive()
    }
}

/// A database error as the port reports it; only the SQLSTATE is logged.
fn db_error(e: tokio_postgres::Error) -> AccountError {
    match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => AccountError::Conflict,
        Some(code) if *code == SqlState::FOREIGN_KEY_VIOLATION => AccountError::NotFound,
        Some(code) => {
            tracing::warn!(sqlstate = code.code(), "account store: the database refused a query");
            AccountError::Unavailable
        }
        None => {
            tracing::debug!("account store: the database connection failed");
            AccountError::Unavailable
        }
    }
}

fn pool_error(_: deadpool_postgres::PoolError) -> AccountError {
    tracing::debug!("account store: no database connection");
    AccountError::Unavailable
}

/// A stored value the engine cannot read back.
fn corrupt(what: &str) -> AccountError {
    tracing::error!(what, "account store: a stored value is unreadable");
    AccountError::Unavailable
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Milliseconds since the epoch as SQL, exactly (integer interval arithmetic).
macro_rules! ts {
    ($n:literal) => {
        concat!("(timestamptz 'epoch' + $", $n, "::int8 * interval '1 millisecond')")
    };
}

/// A timestamp column read back as milliseconds since the epoch.
macro_rules! ms {
    ($col:literal) => {
        concat!("(extract(epoch FROM ", $col, ") * 1000)::int8")
    };
}

const TENANT_COLUMNS: &str =
    concat!("id, name, requests_per_minute, tokens_per_minute, ", ms!("created_at"));

const USER_COLUMNS: &str = concat!(
    "id, COALESCE(email, ''), password_hash, superadmin, mfa_secret, mfa_secret_sealed, ",
    "mfa_confirmed, mfa_recovery_hashes, ",
    ms!("created_at")
);

const KEY_COLUMNS: &str = concat!(
    "id, tenant_id, user_id, name, scopes, key_hash, requests_per_minute, ",
    ms!("created_at"),
    ", ",
    ms!("last_used_at"),
    ", ",
    ms!("revoked_at")
);

fn tenant_from(row: &Row) -> Result<Tenant, AccountError> {
    let get = |e| corrupt(e);
    Ok(Tenant {
        id: row.try_get(0).map_err(|_| get("tenant id"))?,
        name: row.try_get(1).map_err(|_| get("tenant name"))?,
        requests_per_minute: row
            .try_get::<_, Option<i64>>(2)
            .map_err(|_| get("tenant limit"))?
            .map(to_u64),
        tokens_per_minute: row
            .try_get::<_, Option<i64>>(3)
            .map_err(|_| get("tenant limit"))?
            .map(to_u64),
        created_at_ms: to_u64(row.try_get(4).map_err(|_| get("tenant created_at"))?),
    })
}

fn membership_from(row: &Row) -> Result<Membership, AccountError> {
    let role: String = row.try_get(2).map_err(|_| corrupt("membership role"))?;
    Ok(Membership {
        tenant_id: row.try_get(0).map_err(|_| corrupt("membership tenant"))?,
        user_id: row.try_get(1).map_err(|_| corrupt("membership user"))?,
        role: role.parse::<Role>().map_err(|_| corrupt("membership role"))?,
    })
}

fn key_from(row: &Row) -> Result<ApiKey, AccountError> {
    let bad = |_| corrupt("API key");
    let scopes: Vec<String> = row.try_get(4).map_err(bad)?;
    let hash: String = row.try_get(5).map_err(bad)?;
    Ok(ApiKey {
        id: row.try_get(0).map_err(bad)?,
        tenant_id: row.try_get(1).map_err(bad)?,
        user_id: row.try_get(2).map_err(bad)?,
        name: row.try_get(3).map_err(bad)?,
        // An unknown scope (from a newer engine) is dropped: a key only ever loses rights.
        scopes: scopes.iter().filter_map(|s| s.parse::<Permission>().ok()).collect(),
        hash: HEXLOWER.decode(hash.as_bytes()).map_err(|_| corrupt("API key hash"))?,
        requests_per_minute: row.try_get::<_, Option<i64>>(6).map_err(bad)?.map(to_u64),
        created_at_ms: to_u64(row.try_get(7).map_err(bad)?),
        last_used_at_ms: row.try_get::<_, Option<i64>>(8).map_err(bad)?.map(to_u64),
        revoked_at_ms: row.try_get::<_, Option<i64>>(9).map_err(bad)?.map(to_u64),
    })
}

impl PgAccountOptions {
    fn user_from(&self, row: &Row) -> Result<User, AccountError> {
        let bad = |_| corrupt("user");
        let id: String = row.try_get(0).map_err(bad)?;
        let secret: Option<Vec<u8>> = row.try_get(4).map_err(bad)?;
        let sealed: bool = row.try_get(5).map_err(bad)?;
        let mfa = match secret {
            None => None,
            Some(secret) => Some(Mfa {
                secret: self.open(secret, sealed, &format!("mfa:{id}"))?,
                confirmed: row.try_get(6).map_err(bad)?,
                recovery_hashes: row.try_get(7).map_err(bad)?,
            }),
        };
        Ok(User {
            email: row.try_get(1).map_err(bad)?,
            password_hash: row.try_get(2).map_err(bad)?,
            superadmin: row.try_get(3).map_err(bad)?,
            mfa,
            created_at_ms: to_u64(row.try_get(8).map_err(bad)?),
            id,
        })
    }

    /// `(bytes, sealed)` as stored.
    fn seal(&self, plain: &[u8], context: &str) -> Result<(Vec<u8>, bool), AccountError> {
        match &self.sealing {
            Some(key) => key.seal(plain, context).map(|b| (b, true)).map_err(|e| {
                tracing::error!(error = %e, "account store: cannot seal a secret");
                AccountError::Unavailable
            }),
            None => Ok((plain.to_vec(), false)),
        }
    }

    fn open(&self, stored: Vec<u8>, sealed: bool, context: &str) -> Result<Vec<u8>, AccountError> {
        if !sealed {
            return Ok(stored);
        }
        let Some(key) = &self.sealing else {
            tracing::error!(
                what = context.split(':').next().unwrap_or_default(),
                "account store: a secret is sealed but no auth.secrets_key (SWITCHYARD_SECRETS_KEY) is configured"
            );
            return Err(AccountError::Unavailable);
        };
        key.open(&stored, context).map_err(|_| {
            tracing::error!(
                what = context.split(':').next().unwrap_or_default(),
                "account store: a sealed secret does not open; is auth.secrets_key the one it was sealed with?"
            );
            AccountError::Unavailable
        })
    }
}

/// Ed25519 public key of a stored private key (for the `public_key` column, which lets
/// anyone reading the table publish or check keys without the private half).
fn public_of(private: &[u8]) -> Vec<u8> {
    biscuit_auth::PrivateKey::from_bytes(private, biscuit_auth::Algorithm::Ed25519)
        .map(|k| k.public().to_bytes().to_vec())
        .unwrap_or_default()
}

const USE_REFRESH_LOCK: &str = concat!(
    "SELECT s.family_id, s.tenant_id, s.user_id, ",
    ms!("s.expires_at"),
    ", s.used_at IS NOT NULL, ",
    "s.revoked_at IS NOT NULL OR EXISTS (SELECT 1 FROM revoked_sessions r ",
    "WHERE r.family_id = s.family_id) ",
    "FROM refresh_sessions s WHERE s.token_hash = $1 FOR UPDATE OF s"
);

const REVOKE_FAMILY: &str = "\
WITH r AS (
    INSERT INTO revoked_sessions (family_id, tenant_id)
    VALUES ($1, (SELECT tenant_id FROM refresh_sessions WHERE family_id = $1 LIMIT 1))
    ON CONFLICT (family_id) DO NOTHING
)
UPDATE refresh_sessions SET revoked_at = COALESCE(revoked_at, now()) WHERE family_id = $1";

impl PgAccountStore {
    /// Builds the pool (connections open lazily, on first use): half the configured pool
    /// size (at least 2), since the conversation store has a pool of its own.
    pub fn connect(
        config: &DatabaseConfig,
        options: PgAccountOptions,
    ) -> anyhow::Result<PgAccountStore> {
        let size = config.pool_size.div_ceil(2).max(2);
        let pool = crate::store::postgres::pool(config, "switchyard-accounts", size)?;
        let deadline = crate::store::postgres::call_deadline(config);
        Ok(PgAccountStore { pool, deadline, options: Arc::new(options) })
    }

    /// Applies pending migrations (see [`crate::store::migrate`]).
    pub async fn migrate(&self) -> anyhow::Result<crate::store::migrate::MigrationReport> {
        let mut client = self.pool.get().await.context("failed to connect to the database")?;
        let client: &mut tokio_postgres::Client = &mut client;
        crate::store::migrate::run(client).await
    }

    /// Deletes refresh tokens a day past their expiry, and revoked sessions that have no
    /// refresh token left and were revoked longer ago than access tokens live. Returns how
    /// many rows went.
    pub async fn sweep(&self) -> Result<u64, AccountError> {
        let kept = self.options.revocations_kept_for.as_secs_f64();
        self.call(move |client, _| async move {
            let tokens = client
                .execute(
                    "DELETE FROM refresh_sessions WHERE expires_at < now() - interval '1 day'",
                    &[],
                )
                .await
                .map_err(db_error)?;
            let sessions = client
                .execute(
                    "DELETE FROM revoked_sessions r
                     WHERE revoked_at < now() - make_interval(secs => $1)
                       AND NOT EXISTS (SELECT 1 FROM refresh_sessions s
                                       WHERE s.family_id = r.family_id)",
                    &[&kept],
                )
                .await
                .map_err(db_error)?;
            Ok(tokens + sessions)
        })
        .await
    }

    /// Runs one call on a pooled connection under the client-side deadline, as a task of
    /// its own (see the module doc).
    fn call<T, F, Fut>(&self, f: F) -> AccountFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object, Arc<PgAccountOptions>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, AccountError>> + Send + 'static,
    {
        let pool = self.pool.clone();
        let deadline = self.deadline;
        let options = self.options.clone();
        let work = async move {
            let client = pool.get().await.map_err(pool_error)?;
            f(client, options).await
        };
        // Spawned on first poll, so creating the future needs no runtime.
        Box::pin(async move {
            match tokio::spawn(tokio::time::timeout(deadline, work)).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => {
                    tracing::debug!("account store: a database call timed out");
                    Err(AccountError::Unavailable)
                }
                Err(_) => Err(AccountError::Unavailable),
            }
        })
    }

    /// One statement that changes rows; `NotFound` when it changed none.
    fn update_one(
        &self,
        sql: &'static str,
        params: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>,
    ) -> AccountFuture<()> {
        self.call(move |client, _| async move {
            let statement = client.prepare_cached(sql).await.map_err(db_error)?;
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p.as_ref() as _).collect();
            match client.execute(&statement, &refs).await.map_err(db_error)? {
                0 => Err(AccountError::NotFound),
                _ => Ok(()),
            }
        })
    }
}

impl AccountStore for PgAccountStore {
    fn create_tenant(&self, tenant: Tenant) -> AccountFuture<Tenant> {
        self.call(move |client, _| async move {
            let statement = client
                .prepare_cached(concat!(
                    "INSERT INTO tenants (id, name, requests_per_minute, tokens_per_minute, ",
                    "created_at) VALUES ($1, $2, $3, $4, ",
                    ts!(5),
                    ") ON CONFLICT (id) DO NOTHING"
                ))
                .await
                .map_err(db_error)?;
            let inserted = client
                .execute(
                    &statement,
                    &[
                        &tenant.id,
                        &tenant.name,
                        &tenant.requests_per_minute.map(to_i64),
                        &tenant.tokens_per_minute.map(to_i64),
                        &to_i64(tenant.created_at_ms),
                    ],
                )
                .await
                .map_err(db_error)?;
            if inserted == 0 {
                return Err(AccountError::Conflict);
            }
            Ok(tenant)
        })
    }

    fn get_tenant(&self, tenant_id: &str) -> AccountFuture<Tenant> {
        let id = tenant_id.to_owned();
        self.call(move |client, _| async move {
            let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
            let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
            let row = client.query_opt(&statement, &[&id]).await.map_err(db_error)?;
            tenant_from(&row.ok_or(AccountError::NotFound)?)
        })
    }

    fn list_tenants(&self) -> AccountFuture<Vec<Tenant>> {
        self.call(move |client, _| async move {
            let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY created_at, id");
            let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client.query(&statement, &[]).await.map_err(db_error)?;
            rows.iter().map(tenant_from).collect()
        })
    }

    fn create_user(&self, user: User) -> AccountFuture<User> {
        self.call(move |client, options| async move {
            let (secret, sealed, confirmed, recovery) = match &user.mfa {
                Some(mfa) => {
                    let (secret, sealed) =
                        options.seal(&mfa.secret, &format!("mfa:{}", user.id))?;
                    (Some(secret), sealed, mfa.confirmed, mfa.recovery_hashes.clone())
                }
                None => (None, false, false, Vec::new()),
            };
            let statement = client
                .prepare_cached(concat!(
                    "INSERT INTO users (id, email, password_hash, superadmin, mfa_secret, ",
                    "mfa_secret_sealed, mfa_confirmed, mfa_recovery_hashes, created_at) ",
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ",
                    ts!(9),
                    ") ON CONFLICT DO NOTHING"
                ))
                .await
                .map_err(db_error)?;
            let inserted = client
                .execute(
                    &statement,
                    &[
                        &user.id,
                        &user.email,
                        &user.password_hash,
                        &user.superadmin,
                        &secret,
                        &sealed,
                        &confirmed,
                        &recovery,
                        &to_i64(user.created_at_ms),
                    ],
                )
                .await
                .map_err(db_error)?;
            if inserted == 0 {
                return Err(AccountError::Conflict);
            }
            Ok(user)
        })
    }

    fn get_user(&self, user_id: &str) -> AccountFuture<User> {
        let id = user_id.to_owned();
        self.call(move |client, options| async move {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
            let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
            let row = client.query_opt(&statement, &[&id]).await.map_err(db_error)?;
            options.user_from(&row.ok_or(AccountError::NotFound)?)
        })
    }

    fn find_user_by_email(&self, email: &str) -> AccountFuture<Option<User>> {
        let email = email.to_owned();
        self.call(move |client, options| async move {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1");
            let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
            let row = client.query_opt(&statement, &[&email]).await.map_err(db_error)?;
            row.map(|row| options.user_from(&row)).transpose()
        })
    }

    fn set_password(&self, user_id: &str, password_hash: String) -> AccountFuture<()> {
        self.update_one(
            "UPDATE users SET password_hash = $2 WHERE id = $1",
            vec![Box::new(user_id.to_owned()), Box::new(password_hash)],
        )
    }

    fn set_superadmin(&self, user_id: &str, superadmin: bool) -> AccountFuture<()> {
        self.update_one(
            "UPDATE users SET superadmin = $2 WHERE id = $1",
            vec![Box::new(user_id.to_owned()), Box::new(superadmin)],
        )
    }

    fn set_mfa(&self, user_id: &str, mfa: Option<Mfa>) -> AccountFuture<()> {
        let sealed = match &mfa {
            Some(m) => match self.options.seal(&m.secret, &format!("mfa:{user_id}")) {
                Ok(sealed) => Some(sealed),
                Err(e) => return Box::pin(async move { Err(e) }),
            },
            None => None,
        };
        let (secret, is_sealed) = sealed.map_or((None, false), |(s, b)| (Some(s), b));
        let confirmed = mfa.as_ref().is_some_and(|m| m.confirmed);
        let recovery = mfa.map(|m| m.recovery_hashes).unwrap_or_default();
        self.update_one(
            "UPDATE users SET mfa_secret = $2, mfa_secret_sealed = $3, mfa_confirmed = $4,
                 mfa_recovery_hashes = $5 WHERE id = $1",
            vec![
                Box::new(user_id.to_owned()),
                Box::new(secret),
                Box::new(is_sealed),
                Box::new(confirmed),
                Box::new(recovery),
            ],
        )
    }

    fn put_membership(&self, membership: Membership) -> AccountFuture<()> {
        self.call(move |client, _| async move {
            let statement = client
                .prepare_cached(
                    "INSERT INTO tenant_memberships (tenant_id, user_id, role) VALUES ($1, $2, $3)
                     ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = EXCLUDED.role",
                )
                .await
                .map_err(db_error)?;
            client
                .execute(
                    &statement,
                    &[&membership.tenant_id, &membership.user_id, &membership.role.as_str()],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    fn memberships_of(&self, user_id: &str) -> AccountFuture<Vec<Membership>> {
        let id = user_id.to_owned();
        self.call(move |client, _| async move {
            let statement = client
                .prepare_cached(
                    "SELECT tenant_id, user_id, role FROM tenant_memberships
                     WHERE user_id = $1 ORDER BY tenant_id",
                )
                .await
                .map_err(db_error)?;
            let rows = client.query(&statement, &[&id]).await.map_err(db_error)?;
            rows.iter().map(membership_from).collect()
        })
    }

    fn members(&self, tenant_id: &str) -> AccountFuture<Vec<Membership>> {
        let tenant = tenant_id.to_owned();
        self.call(move |client, _| async move {
            let statement = client
                .prepare_cached(
                    "SELECT tenant_id, user_id, role FROM tenant_memberships
                     WHERE tenant_id = $1 ORDER BY user_id",
                )
                .await
                .map_err(db_error)?;
            let rows = client.query(&statement, &[&tenant]).await.map_err(db_error)?;
            rows.iter().map(membership_from).collect()
        })
    }

    fn create_api_key(&self, key: ApiKey) -> AccountFuture<()> {
        self.call(move |client, _| async move {
            let statement = client
                .prepare_cached(concat!(
                    "INSERT INTO api_keys (id, tenant_id, user_id, name, prefix, key_hash, ",
                    "scopes, requests_per_minute, created_at, last_used_at, revoked_at) ",
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ",
                    ts!(9),
                    ", ",
                    ts!(10),
                    ", ",
                    ts!(11),
                    ") ON CONFLICT DO NOTHING"
                ))
                .await
                .map_err(db_error)?;
            let prefix = format!("{}{}", crate::auth::api_keys::PREFIX, key.id);
            let scopes: Vec<&str> = key.scopes.iter().map(|p| p.as_str()).collect();
            let inserted = client
                .execute(
                    &statement,
                    &[
                        &key.id,
                        &key.tenant_id,
                        &key.user_id,
                        &key.name,
                        &prefix,
                        &HEXLOWER.encode(&key.hash),
                        &scopes,
                        &key.requests_per_minute.map(to_i64),
                        &to_i64(key.created_at_ms),
                        &key.last_used_at_ms.map(to_i64),
                        &key.revoked_at_ms.map(to_i64),
                    ],
                )
                .await
                .map_err(db_error)?;
            if inserted == 0 {
                return Err(AccountError::Conflict);
            }
            Ok(())
        })
    }

    fn find_api_key(&self, key_id: &str) -> AccountFuture<Option<ApiKey>> {
        let id = key_id.to_owned();
        self.call(move |client, _| async move {
            let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
            let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
            let row = client.query_opt(&statement, &[&id]).await.map_err(db_error)?;
            row.as_ref().map(key_from).transpose()
        })
    }

    fn list_api_keys(&self, tenant_id: &str) -> AccountFuture<Vec<ApiKey>> {
        let tenant = tenant_id.to_owned();
        self.call(move |client, _| async move {
            let sql = format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"
            );
            let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client.query(&statement, &[&tenant]).await.map_err(db_error)?;
            rows.iter().map(key_from).collect()
        })
    }

    fn revoke_api_key(&self, tenant_id: &str, key_id: &str, at_ms: u64) -> AccountFuture<()> {
        self.update_one(
            concat!(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ",
                ts!(3),
                ") WHERE tenant_id = $1 AND id = $2"
            ),
            vec![
                Box::new(tenant_id.to_owned()),
                Box::new(key_id.to_owned()),
                Box::new(to_i64(at_ms)),
            ],
        )
    }

    fn touch_api_key(&self, key_id: &str, at_ms: u64) -> AccountFuture<()> {
        let id = key_id.to_owned();
        self.call(move |client, _| async move {
            let statement = client
                .prepare_cached(concat!(
                    "UPDATE api_keys SET last_used_at = ",
                    ts!(2),
                    " WHERE id = $1"
                ))
                .await
                .map_err(db_error)?;
            client.execute(&statement, &[&id, &to_i64(at_ms)]).await.map_err(db_error)?;
            Ok(())
        })
    }

    fn insert_refresh(&self, token: RefreshToken) -> AccountFuture<()> {
        self.call(move |client, _| async move {
            // A token issued while its family is being revoked is born revoked.
            let statement = client
                .prepare_cached(concat!(
                    "INSERT INTO refresh_sessions (id, tenant_id, user_id, family_id, ",
                    "token_hash, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, ",
                    ts!(6),
                    ", (SELECT revoked_at FROM revoked_sessions WHERE family_id = $4))"
                ))
                .await
                .map_err(db_error)?;
            let id = uuid::Uuid::now_v7().to_string();
            client
                .execute(
                    &statement,
                    &[
                        &id,
                        &token.tenant_id,
                        &token.user_id,
                        &token.family_id,
                        &HEXLOWER.encode(&token.hash),
                        &to_i64(token.expires_at_ms),
                    ],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    fn use_refresh(&self, hash: &[u8], now_ms: u64) -> AccountFuture<RefreshOutcome> {
        let hash = HEXLOWER.encode(hash);
        self.call(move |mut client, _| async move {
            let tx = client.transaction().await.map_err(db_error)?;
            let lock = tx.prepare_cached(USE_REFRESH_LOCK).await.map_err(db_error)?;
            // Concurrent presenters of one token queue here; each sees what the one before
            // it committed.
            let Some(row) = tx.query_opt(&lock, &[&hash]).await.map_err(db_error)? else {
                return Ok(RefreshOutcome::Invalid);
            };
            let bad = |_| corrupt("refresh session");
            let token = RefreshToken {
                hash: HEXLOWER.decode(hash.as_bytes()).map_err(|_| corrupt("refresh hash"))?,
                family_id: row.try_get(0).map_err(bad)?,
                tenant_id: row.try_get(1).map_err(bad)?,
                user_id: row.try_get(2).map_err(bad)?,
                expires_at_ms: to_u64(row.try_get(3).map_err(bad)?),
            };
            let used: bool = row.try_get(4).map_err(bad)?;
            let revoked: bool = row.try_get(5).map_err(bad)?;
            if revoked {
                return Ok(RefreshOutcome::Invalid);
            }
            if used {
                let revoke = tx.prepare_cached(REVOKE_FAMILY).await.map_err(db_error)?;
                tx.execute(&revoke, &[&token.family_id]).await.map_err(db_error)?;
                tx.commit().await.map_err(db_error)?;
                return Ok(RefreshOutcome::Reused { family_id: token.family_id });
            }
            if token.expires_at_ms <= now_ms {
                return Ok(RefreshOutcome::Invalid);
            }
            let spend = tx
                .prepare_cached("UPDATE refresh_sessions SET used_at = now() WHERE token_hash = $1")
                .await
                .map_err(db_error)?;
            tx.execute(&spend, &[&hash]).await.map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            Ok(RefreshOutcome::Valid(token))
        })
    }

    fn revoke_family(&self, family_id: &str) -> AccountFuture<()> {
        let id = family_id.to_owned();
        self.call(move |client, _| async move {
            let statement = client.prepare_cached(REVOKE_FAMILY).await.map_err(db_error)?;
            client.execute(&statement, &[&id]).await.map_err(db_error)?;
            Ok(())
        })
    }

    fn revoked_families(&self) -> AccountFuture<Vec<String>> {
        self.call(move |client, options| async move {
            let statement = client
                .prepare_cached(
                    "SELECT family_id FROM revoked_sessions
                     WHERE revoked_at > now() - make_interval(secs => $1)",
                )
                .await
                .map_err(db_error)?;
            let kept = options.revocations_kept_for.as_secs_f64();
            let rows = client.query(&statement, &[&kept]).await.map_err(db_error)?;
            rows.iter().map(|r| r.try_get(0).map_err(|_| corrupt("revoked session"))).collect()
        })
    }

    fn signing_keys(&self) -> AccountFuture<Vec<StoredSigningKey>> {
        self.call(move |client, options| async move {
            let statement = client
                .prepare_cached(concat!(
                    "SELECT id::int8, private_key, private_key_sealed, ",
                    ms!("created_at"),
                    " FROM signing_keys WHERE id ~ '^[0-9]{1,9}$' ORDER BY id::int8"
                ))
                .await
                .map_err(db_error)?;
            let rows = client.query(&statement, &[]).await.map_err(db_error)?;
            rows.iter()
                .map(|row| {
                    let bad = |_| corrupt("signing key");
                    let id = u32::try_from(row.try_get::<_, i64>(0).map_err(bad)?)
                        .map_err(|_| corrupt("signing key id"))?;
                    let private_key = options.open(
                        row.try_get(1).map_err(bad)?,
                        row.try_get(2).map_err(bad)?,
                        &format!("signing_key:{id}"),
                    )?;
                    let created_at_ms = to_u64(row.try_get(3).map_err(bad)?);
                    Ok(StoredSigningKey { id, private_key, created_at_ms })
                })
                .collect()
        })
    }

    fn add_signing_key(&self, key: StoredSigningKey) -> AccountFuture<()> {
        self.call(move |client, options| async move {
            let (private, sealed) =
                options.seal(&key.private_key, &format!("signing_key:{}", key.id))?;
            let statement = client
                .prepare_cached(concat!(
                    "INSERT INTO signing_keys (id, algorithm, public_key, private_key, ",
                    "private_key_sealed, created_at) VALUES ($1, 'ed25519', $2, $3, $4, ",
                    ts!(5),
                    ") ON CONFLICT DO NOTHING"
                ))
                .await
                .map_err(db_error)?;
            let inserted = client
                .execute(
                    &statement,
                    &[
                        &key.id.to_string(),
                        &public_of(&key.private_key),
                        &private,
                        &sealed,
                        &to_i64(key.created_at_ms),
                    ],
                )
                .await
                .map_err(db_error)?;
            if inserted == 0 {
                return Err(AccountError::Conflict);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    //! The contract suite and the PostgreSQL-only behaviour (sealing, retention, outages) on
    //! a real database (`TEST_DATABASE_URL`), a fresh UUID-named database per test. Without
    //! the URL the tests print `SKIPPED` and pass, unless `SWITCHYARD_REQUIRE_SERVICES=1`.

    use std::sync::Arc;
    use std::time::Duration;

    use tokio_postgres::NoTls;

    use super::{PgAccountOptions, PgAccountStore};
    use crate::accounts::contract;
    use crate::accounts::sealed::SealingKey;
    use crate::accounts::{AccountError, AccountStore, Mfa, RefreshOutcome, StoredSigningKey};
    use crate::config::DatabaseConfig;

    struct TestDb {
        url: String,
        name: String,
        admin_url: String,
    }

    async fn database() -> Option<TestDb> {
        let Some(admin_url) = std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty())
        else {
            if std::env::var("SWITCHYARD_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("TEST_DATABASE_URL is not set but SWITCHYARD_REQUIRE_SERVICES=1");
            }
            eprintln!("SKIPPED: PostgreSQL account store test (set TEST_DATABASE_URL)");
            return None;
        };
        let name = format!("switchyard_accounts_{}", uuid::Uuid::now_v7().simple());
        let (client, connection) = tokio_postgres::connect(&admin_url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.unwrap();
        // scheme://authority/db?query → scheme://authority/<name>?query
        let scheme_end = admin_url.find("://").map_or(0, |i| i + 3);
        let path = admin_url[scheme_end..].find('/').map_or(admin_url.len(), |i| scheme_end + i);
        let query = admin_url[path..].find('?').map_or("", |i| &admin_url[path + i..]);
        let url = format!("{}/{name}{query}", &admin_url[..path]);
        Some(TestDb { url, name, admin_url })
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let (admin, name) = (self.admin_url.clone(), self.name.clone());
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                let Ok(runtime) = runtime else { return };
                runtime.block_on(async move {
                    if let Ok((client, connection)) = tokio_postgres::connect(&admin, NoTls).await {
                        tokio::spawn(connection);
                        let _ = client
                            .batch_execute(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                    }
                });
            })
            .join();
        }
    }

    impl TestDb {
        async fn store_with(&self, secret: Option<&str>) -> PgAccountStore {
            let options = PgAccountOptions {
                revocations_kept_for: Duration::from_secs(3600),
                sealing: secret.map(|s| SealingKey::from_secret(s).unwrap()),
            };
            let store =
                PgAccountStore::connect(&DatabaseConfig::new(self.url.clone().into()), options)
                    .unwrap();
            store.migrate().await.unwrap();
            store
        }

        async fn store(&self) -> PgAccountStore {
            self.store_with(None).await
        }

        async fn client(&self) -> tokio_postgres::Client {
            let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
            tokio::spawn(connection);
            client
        }
    }

    #[tokio::test]
    async fn tenants() {
        let Some(db) = database().await else { return };
        contract::tenants(&db.store().await).await;
    }

    #[tokio::test]
    async fn users() {
        let Some(db) = database().await else { return };
        contract::users(&db.store().await).await;
    }

    #[tokio::test]
    async fn users_with_sealed_secrets() {
        let Some(db) = database().await else { return };
        contract::users(&db.store_with(Some(SECRET)).await).await;
    }

    #[tokio::test]
    async fn memberships() {
        let Some(db) = database().await else { return };
        contract::memberships(&db.store().await).await;
    }

    #[tokio::test]
    async fn api_keys() {
        let Some(db) = database().await else { return };
        contract::api_keys(&db.store().await).await;
    }

    #[tokio::test]
    async fn refresh_tokens() {
        let Some(db) = database().await else { return };
        contract::refresh_tokens(&db.store().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn refresh_reuse_race() {
        let Some(db) = database().await else { return };
        contract::refresh_reuse_race(Arc::new(db.store().await)).await;
    }

    /// Two stores (two nodes) racing one token: one wins, the other revokes the family.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn refresh_reuse_race_across_two_pools() {
        let Some(db) = database().await else { return };
        let (a, b) = (db.store().await, db.store().await);
        for round in 0..20u8 {
            let family = format!("family-{round}");
            a.insert_refresh(contract::refresh(round, &family, 4_000_000_000_000)).await.unwrap();
            let (x, y) = tokio::join!(
                tokio::spawn(a.use_refresh(&[round; 32], 0)),
                tokio::spawn(b.use_refresh(&[round; 32], 0))
            );
            let outcomes = [x.unwrap().unwrap(), y.unwrap().unwrap()];
            let valid = outcomes.iter().filter(|o| matches!(o, RefreshOutcome::Valid(_))).count();
            let reused =
                outcomes.iter().filter(|o| matches!(o, RefreshOutcome::Reused { .. })).count();
            assert_eq!((valid, reused), (1, 1), "round {round}: {outcomes:?}");
        }
    }

    #[tokio::test]
    async fn signing_keys() {
        let Some(db) = database().await else { return };
        contract::signing_keys(&db.store().await).await;
    }

    const SECRET: &str = "test-secrets-key-0123456789abcdefghijklmnop";

    #[tokio::test]
    async fn sealed_secrets_are_unreadable_in_the_table_and_need_the_key() {
        let Some(db) = database().await else { return };
        let sealed = db.store_with(Some(SECRET)).await;
        let private = vec![42u8; 32];
        let key = StoredSigningKey { id: 1, private_key: private.clone(), created_at_ms: 1 };
        sealed.add_signing_key(key.clone()).await.unwrap();
        sealed.create_user(contract::user("u1", "a@example.com")).await.unwrap();
        let mfa = Mfa { secret: vec![7; 20], confirmed: true, recovery_hashes: vec![] };
        sealed.set_mfa("u1", Some(mfa.clone())).await.unwrap();

        let client = db.client().await;
        let row = client
            .query_one("SELECT private_key, private_key_sealed, public_key FROM signing_keys", &[])
            .await
            .unwrap();
        let (stored, flag, public): (Vec<u8>, bool, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        assert!(flag);
        assert!(!stored.windows(8).any(|w| w == [42u8; 8]), "the private key is not in plain");
        assert_eq!(public.len(), 32, "the public key is stored for offline use");
        let row = client.query_one("SELECT mfa_secret FROM users", &[]).await.unwrap();
        let secret: Vec<u8> = row.get(0);
        assert!(!secret.windows(8).any(|w| w == [7u8; 8]), "the TOTP secret is not in plain");

        assert_eq!(sealed.signing_keys().await.unwrap(), vec![key.clone()]);
        assert_eq!(sealed.get_user("u1").await.unwrap().mfa, Some(mfa));
        // Without the key, or with another, nothing opens.
        let plain = db.store().await;
        assert_eq!(plain.signing_keys().await, Err(AccountError::Unavailable));
        assert_eq!(plain.get_user("u1").await, Err(AccountError::Unavailable));
        let wrong = db.store_with(Some("another-secrets-key-0123456789abcdefghijkl")).await;
        assert_eq!(wrong.signing_keys().await, Err(AccountError::Unavailable));
        // A sealed value moved to another row does not open there.
        client
            .execute(
                "INSERT INTO signing_keys (id, algorithm, public_key, private_key,
                     private_key_sealed)
                 SELECT '2', algorithm, public_key, private_key, true FROM signing_keys",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(sealed.signing_keys().await, Err(AccountError::Unavailable));
        client.execute("DELETE FROM signing_keys WHERE id = '2'", &[]).await.unwrap();
        // Keys written before sealing was configured still load.
        let legacy = StoredSigningKey { id: 3, private_key: vec![5; 32], created_at_ms: 3 };
        plain.add_signing_key(legacy.clone()).await.unwrap();
        assert_eq!(sealed.signing_keys().await.unwrap(), vec![key, legacy]);
    }

    #[tokio::test]
    async fn old_revocations_are_dropped_and_swept_once_no_token_needs_them() {
        let Some(db) = database().await else { return };
        let store = db.store().await;
        let client = db.client().await;
        let far = 4_000_000_000_000;
        store.insert_refresh(contract::refresh(1, "old", 1_000)).await.unwrap();
        store.revoke_family("old").await.unwrap();
        store.insert_refresh(contract::refresh(2, "kept", far)).await.unwrap();
        store.revoke_family("kept").await.unwrap();
        store.revoke_family("recent").await.unwrap();
        client
            .execute(
                "UPDATE revoked_sessions SET revoked_at = now() - interval '3 hours'
                 WHERE family_id IN ('old', 'kept')",
                &[],
            )
            .await
            .unwrap();
        // Kept for an hour: older revocations no longer need announcing…
        assert_eq!(store.revoked_families().await.unwrap(), vec!["recent".to_owned()]);
        // …and the sweep removes the expired token and the revocation nothing refers to.
        assert_eq!(store.sweep().await.unwrap(), 2);
        let rows = client
            .query("SELECT family_id FROM revoked_sessions ORDER BY family_id", &[])
            .await
            .unwrap();
        let left: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(left, ["kept", "recent"]);
        // A token of a revoked family stays refused for as long as it exists.
        assert_eq!(store.use_refresh(&[2; 32], 0).await.unwrap(), RefreshOutcome::Invalid);
    }

    #[tokio::test]
    async fn an_unreachable_database_is_unavailable_not_an_error_or_a_hang() {
        let mut config = DatabaseConfig::new("postgres://postgres@127.0.0.1:1/none".into());
        config.connect_timeout_ms = 300;
        let options =
            PgAccountOptions { revocations_kept_for: Duration::from_secs(60), sealing: None };
        let store = PgAccountStore::connect(&config, options).unwrap();
        assert_eq!(store.get_tenant("t").await, Err(AccountError::Unavailable));
        assert_eq!(store.use_refresh(&[1; 32], 0).await, Err(AccountError::Unavailable));
    }
}
