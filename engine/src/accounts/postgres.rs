//! The PostgreSQL [`AccountStore`](super::AccountStore) (tables from migrations V10+).

/// Not yet available: connecting always fails, and the engine falls back to memory.
pub struct PgAccountStore;

impl PgAccountStore {
    pub async fn connect(_url: &str) -> anyhow::Result<PgAccountStore> {
        anyhow::bail!("the PostgreSQL account store is not in this build yet")
    }
}

impl super::AccountStore for PgAccountStore {
    fn create_tenant(&self, _: super::Tenant) -> super::AccountFuture<super::Tenant> {
        unavailable()
    }
    fn get_tenant(&self, _: &str) -> super::AccountFuture<super::Tenant> {
        unavailable()
    }
    fn list_tenants(&self) -> super::AccountFuture<Vec<super::Tenant>> {
        unavailable()
    }
    fn create_user(&self, _: super::User) -> super::AccountFuture<super::User> {
        unavailable()
    }
    fn get_user(&self, _: &str) -> super::AccountFuture<super::User> {
        unavailable()
    }
    fn find_user_by_email(&self, _: &str) -> super::AccountFuture<Option<super::User>> {
        unavailable()
    }
    fn set_password(&self, _: &str, _: String) -> super::AccountFuture<()> {
        unavailable()
    }
    fn set_superadmin(&self, _: &str, _: bool) -> super::AccountFuture<()> {
        unavailable()
    }
    fn set_mfa(&self, _: &str, _: Option<super::Mfa>) -> super::AccountFuture<()> {
        unavailable()
    }
    fn put_membership(&self, _: super::Membership) -> super::AccountFuture<()> {
        unavailable()
    }
    fn memberships_of(&self, _: &str) -> super::AccountFuture<Vec<super::Membership>> {
        unavailable()
    }
    fn members(&self, _: &str) -> super::AccountFuture<Vec<super::Membership>> {
        unavailable()
    }
    fn create_api_key(&self, _: super::ApiKey) -> super::AccountFuture<()> {
        unavailable()
    }
    fn find_api_key(&self, _: &str) -> super::AccountFuture<Option<super::ApiKey>> {
        unavailable()
    }
    fn list_api_keys(&self, _: &str) -> super::AccountFuture<Vec<super::ApiKey>> {
        unavailable()
    }
    fn revoke_api_key(&self, _: &str, _: &str, _: u64) -> super::AccountFuture<()> {
        unavailable()
    }
    fn touch_api_key(&self, _: &str, _: u64) -> super::AccountFuture<()> {
        unavailable()
    }
    fn insert_refresh(&self, _: super::RefreshToken) -> super::AccountFuture<()> {
        unavailable()
    }
    fn use_refresh(&self, _: &[u8], _: u64) -> super::AccountFuture<super::RefreshOutcome> {
        unavailable()
    }
    fn revoke_family(&self, _: &str) -> super::AccountFuture<()> {
        unavailable()
    }
    fn revoked_families(&self) -> super::AccountFuture<Vec<String>> {
        unavailable()
    }
    fn signing_keys(&self) -> super::AccountFuture<Vec<super::StoredSigningKey>> {
        unavailable()
    }
    fn add_signing_key(&self, _: super::StoredSigningKey) -> super::AccountFuture<()> {
        unavailable()
    }
}

fn unavailable<T: Send + 'static>() -> super::AccountFuture<T> {
    Box::pin(async { Err(super::AccountError::Unavailable) })
}
