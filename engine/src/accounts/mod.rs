//! Accounts: tenants, users, memberships (with a role), API keys, refresh sessions and token
//! signing keys, behind one [`AccountStore`] port.
//!
//! [`memory::MemoryAccountStore`] backs the embedded default (nothing persists);
//! [`postgres::PgAccountStore`] backs production (shared by every node, survives restarts;
//! [`sealed`] encrypts the secrets it keeps). `crate::auth` holds the rules (hashing,
//! tokens, who may do what); this module only stores and finds records, always scoped by
//! tenant where the record belongs to one. Both stores pass one contract suite
//! (`contract.rs`, run from each store's tests).

#[cfg(test)]
mod contract;
pub mod memory;
pub mod postgres;
pub mod sealed;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::auth::permissions::{Permission, Role};

pub type AccountFuture<T> = BoxFuture<'static, Result<T, AccountError>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    Conflict,
    #[error("the account store is unavailable")]
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// Requests per minute for the whole tenant; `None` = the configured default.
    pub requests_per_minute: Option<u64>,
    /// Model tokens per minute for the whole tenant; `None` = the configured default.
    pub tokens_per_minute: Option<u64>,
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    /// Lower-cased.
    pub email: String,
    pub password_hash: String,
    pub superadmin: bool,
    pub mfa: Option<Mfa>,
    pub created_at_ms: u64,
}

/// A user's second factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mfa {
    pub secret: Vec<u8>,
    /// False between enrolment and the first good code.
    pub confirmed: bool,
    /// SHA-256 of each unused recovery code.
    pub recovery_hashes: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Membership {
    pub tenant_id: String,
    pub user_id: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The public id inside the key (`sy_<id>_…`).
    pub id: String,
    pub tenant_id: String,
    /// The user who created it; requests with the key act as this user.
    pub user_id: String,
    pub name: String,
    pub scopes: Vec<Permission>,
    pub hash: Vec<u8>,
    pub requests_per_minute: Option<u64>,
    pub created_at_ms: u64,
    pub last_used_at_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
}

/// One refresh token of a login session ("family"). Each refresh replaces the token; a
/// replaced token presented again is reuse — somebody copied it — and revokes the family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// SHA-256 of the token.
    pub hash: Vec<u8>,
    pub family_id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub expires_at_ms: u64,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The family's current token: it is now used up; issue the next.
    Valid(RefreshToken),
    /// An already-rotated token: the family is now revoked.
    Reused { family_id: String },
    /// Unknown, expired or revoked.
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSigningKey {
    pub id: u32,
    pub private_key: Vec<u8>,
    pub created_at_ms: u64,
}

/// The accounts port.
pub trait AccountStore: Send + Sync + 'static {
    fn create_tenant(&self, tenant: Tenant) -> AccountFuture<Tenant>;
    fn get_tenant(&self, tenant_id: &str) -> AccountFuture<Tenant>;
    fn list_tenants(&self) -> AccountFuture<Vec<Tenant>>;

    /// `Conflict` if the email is taken.
    fn create_user(&self, user: User) -> AccountFuture<User>;
    fn get_user(&self, user_id: &str) -> AccountFuture<User>;
    fn find_user_by_email(&self, email: &str) -> AccountFuture<Option<User>>;
    fn set_password(&self, user_id: &str, password_hash: String) -> AccountFuture<()>;
    fn set_superadmin(&self, user_id: &str, superadmin: bool) -> AccountFuture<()>;
    fn set_mfa(&self, user_id: &str, mfa: Option<Mfa>) -> AccountFuture<()>;

    /// Adds or changes a membership.
    fn put_membership(&self, membership: Membership) -> AccountFuture<()>;
    fn memberships_of(&self, user_id: &str) -> AccountFuture<Vec<Membership>>;
    fn members(&self, tenant_id: &str) -> AccountFuture<Vec<Membership>>;

    fn create_api_key(&self, key: ApiKey) -> AccountFuture<()>;
    fn find_api_key(&self, key_id: &str) -> AccountFuture<Option<ApiKey>>;
    fn list_api_keys(&self, tenant_id: &str) -> AccountFuture<Vec<ApiKey>>;
    /// `NotFound` unless the key exists in this tenant.
    fn revoke_api_key(&self, tenant_id: &str, key_id: &str, at_ms: u64) -> AccountFuture<()>;
    fn touch_api_key(&self, key_id: &str, at_ms: u64) -> AccountFuture<()>;

    fn insert_refresh(&self, token: RefreshToken) -> AccountFuture<()>;
    /// Uses up a refresh token (see [`RefreshOutcome`]); atomic, so two refreshes racing
    /// with one token get one `Valid` and one `Reused`.
    fn use_refresh(&self, hash: &[u8], now_ms: u64) -> AccountFuture<RefreshOutcome>;
    fn revoke_family(&self, family_id: &str) -> AccountFuture<()>;
    /// Revoked families, for access-token checks (kept until their tokens could expire).
    fn revoked_families(&self) -> AccountFuture<Vec<String>>;

    fn signing_keys(&self) -> AccountFuture<Vec<StoredSigningKey>>;
    fn add_signing_key(&self, key: StoredSigningKey) -> AccountFuture<()>;
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
