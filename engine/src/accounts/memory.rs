//! The in-memory [`AccountStore`] of the embedded default: one mutex over plain maps.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::{
    AccountError, AccountFuture, AccountStore, ApiKey, Membership, Mfa, RefreshOutcome,
    RefreshToken, StoredSigningKey, Tenant, User,
};

#[derive(Default)]
struct Inner {
    tenants: HashMap<String, Tenant>,
    users: HashMap<String, User>,
    emails: HashMap<String, String>,
    memberships: HashMap<(String, String), Membership>,
    api_keys: HashMap<String, ApiKey>,
    /// Every refresh token ever issued, with whether it was used.
    refresh: HashMap<Vec<u8>, (RefreshToken, bool)>,
    revoked_families: HashSet<String>,
    signing_keys: Vec<StoredSigningKey>,
}

#[derive(Default)]
pub struct MemoryAccountStore {
    inner: Mutex<Inner>,
}

impl MemoryAccountStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, AccountError>,
    ) -> AccountFuture<T> {
        let result = match self.inner.lock() {
            Ok(mut inner) => f(&mut inner),
            Err(_) => Err(AccountError::Unavailable),
        };
        Box::pin(async move { result })
    }
}

impl AccountStore for MemoryAccountStore {
    fn create_tenant(&self, tenant: Tenant) -> AccountFuture<Tenant> {
        self.with(move |i| {
            if i.tenants.contains_key(&tenant.id) {
                return Err(AccountError::Conflict);
            }
            i.tenants.insert(tenant.id.clone(), tenant.clone());
            Ok(tenant)
        })
    }

    fn get_tenant(&self, tenant_id: &str) -> AccountFuture<Tenant> {
        let id = tenant_id.to_owned();
        self.with(move |i| i.tenants.get(&id).cloned().ok_or(AccountError::NotFound))
    }

    fn list_tenants(&self) -> AccountFuture<Vec<Tenant>> {
        self.with(|i| {
            let mut tenants: Vec<Tenant> = i.tenants.values().cloned().collect();
            tenants.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
            Ok(tenants)
        })
    }

    fn create_user(&self, user: User) -> AccountFuture<User> {
        self.with(move |i| {
            if i.emails.contains_key(&user.email) || i.users.contains_key(&user.id) {
                return Err(AccountError::Conflict);
            }
            i.emails.insert(user.email.clone(), user.id.clone());
            i.users.insert(user.id.clone(), user.clone());
            Ok(user)
        })
    }

    fn get_user(&self, user_id: &str) -> AccountFuture<User> {
        let id = user_id.to_owned();
        self.with(move |i| i.users.get(&id).cloned().ok_or(AccountError::NotFound))
    }

    fn find_user_by_email(&self, email: &str) -> AccountFuture<Option<User>> {
        let email = email.to_owned();
        self.with(move |i| Ok(i.emails.get(&email).and_then(|id| i.users.get(id)).cloned()))
    }

    fn set_password(&self, user_id: &str, password_hash: String) -> AccountFuture<()> {
        let id = user_id.to_owned();
        self.with(move |i| {
            i.users.get_mut(&id).ok_or(AccountError::NotFound)?.password_hash = password_hash;
            Ok(())
        })
    }

    fn set_superadmin(&self, user_id: &str, superadmin: bool) -> AccountFuture<()> {
        let id = user_id.to_owned();
        self.with(move |i| {
            i.users.get_mut(&id).ok_or(AccountError::NotFound)?.superadmin = superadmin;
            Ok(())
        })
    }

    fn set_mfa(&self, user_id: &str, mfa: Option<Mfa>) -> AccountFuture<()> {
        let id = user_id.to_owned();
        self.with(move |i| {
            i.users.get_mut(&id).ok_or(AccountError::NotFound)?.mfa = mfa;
            Ok(())
        })
    }

    fn put_membership(&self, membership: Membership) -> AccountFuture<()> {
        self.with(move |i| {
            if !i.tenants.contains_key(&membership.tenant_id)
                || !i.users.contains_key(&membership.user_id)
            {
                return Err(AccountError::NotFound);
            }
            let key = (membership.tenant_id.clone(), membership.user_id.clone());
            i.memberships.insert(key, membership);
            Ok(())
        })
    }

    fn memberships_of(&self, user_id: &str) -> AccountFuture<Vec<Membership>> {
        let id = user_id.to_owned();
        self.with(move |i| {
            let mut out: Vec<Membership> =
                i.memberships.values().filter(|m| m.user_id == id).cloned().collect();
            out.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
            Ok(out)
        })
    }

    fn members(&self, tenant_id: &str) -> AccountFuture<Vec<Membership>> {
        let id = tenant_id.to_owned();
        self.with(move |i| {
            let mut out: Vec<Membership> =
                i.memberships.values().filter(|m| m.tenant_id == id).cloned().collect();
            out.sort_by(|a, b| a.user_id.cmp(&b.user_id));
            Ok(out)
        })
    }

    fn create_api_key(&self, key: ApiKey) -> AccountFuture<()> {
        self.with(move |i| {
            if i.api_keys.contains_key(&key.id) {
                return Err(AccountError::Conflict);
            }
            i.api_keys.insert(key.id.clone(), key);
            Ok(())
        })
    }

    fn find_api_key(&self, key_id: &str) -> AccountFuture<Option<ApiKey>> {
        let id = key_id.to_owned();
        self.with(move |i| Ok(i.api_keys.get(&id).cloned()))
    }

    fn list_api_keys(&self, tenant_id: &str) -> AccountFuture<Vec<ApiKey>> {
        let id = tenant_id.to_owned();
        self.with(move |i| {
            let mut keys: Vec<ApiKey> =
                i.api_keys.values().filter(|k| k.tenant_id == id).cloned().collect();
            keys.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
            Ok(keys)
        })
    }

    fn revoke_api_key(&self, tenant_id: &str, key_id: &str, at_ms: u64) -> AccountFuture<()> {
        let (tenant, id) = (tenant_id.to_owned(), key_id.to_owned());
        self.with(move |i| match i.api_keys.get_mut(&id) {
            Some(key) if key.tenant_id == tenant => {
                key.revoked_at_ms.get_or_insert(at_ms);
                Ok(())
            }
            _ => Err(AccountError::NotFound),
        })
    }

    fn touch_api_key(&self, key_id: &str, at_ms: u64) -> AccountFuture<()> {
        let id = key_id.to_owned();
        self.with(move |i| {
            if let Some(key) = i.api_keys.get_mut(&id) {
                key.last_used_at_ms = Some(at_ms);
            }
            Ok(())
        })
    }

    fn insert_refresh(&self, token: RefreshToken) -> AccountFuture<()> {
        self.with(move |i| {
            i.refresh.insert(token.hash.clone(), (token, false));
            Ok(())
        })
    }

    fn use_refresh(&self, hash: &[u8], now_ms: u64) -> AccountFuture<RefreshOutcome> {
        let hash = hash.to_vec();
        self.with(move |i| {
            let Some((token, used)) = i.refresh.get_mut(&hash) else {
                return Ok(RefreshOutcome::Invalid);
            };
            if i.revoked_families.contains(&token.family_id) {
                return Ok(RefreshOutcome::Invalid);
            }
            if *used {
                let family_id = token.family_id.clone();
                i.revoked_families.insert(family_id.clone());
                return Ok(RefreshOutcome::Reused { family_id });
            }
            if token.expires_at_ms <= now_ms {
                return Ok(RefreshOutcome::Invalid);
            }
            *used = true;
            Ok(RefreshOutcome::Valid(token.clone()))
        })
    }

    fn revoke_family(&self, family_id: &str) -> AccountFuture<()> {
        let id = family_id.to_owned();
        self.with(move |i| {
            i.revoked_families.insert(id);
            Ok(())
        })
    }

    fn revoked_families(&self) -> AccountFuture<Vec<String>> {
        self.with(|i| Ok(i.revoked_families.iter().cloned().collect()))
    }

    fn signing_keys(&self) -> AccountFuture<Vec<StoredSigningKey>> {
        self.with(|i| {
            let mut keys = i.signing_keys.clone();
            keys.sort_by_key(|k| k.id);
            Ok(keys)
        })
    }

    fn add_signing_key(&self, key: StoredSigningKey) -> AccountFuture<()> {
        self.with(move |i| {
            if i.signing_keys.iter().any(|k| k.id == key.id) {
                return Err(AccountError::Conflict);
            }
            i.signing_keys.push(key);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::MemoryAccountStore;
    use crate::accounts::contract;

    #[tokio::test]
    async fn tenants() {
        contract::tenants(&MemoryAccountStore::new()).await;
    }

    #[tokio::test]
    async fn users() {
        contract::users(&MemoryAccountStore::new()).await;
    }

    #[tokio::test]
    async fn memberships() {
        contract::memberships(&MemoryAccountStore::new()).await;
    }

    #[tokio::test]
    async fn api_keys() {
        contract::api_keys(&MemoryAccountStore::new()).await;
    }

    #[tokio::test]
    async fn refresh_tokens() {
        contract::refresh_tokens(&MemoryAccountStore::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn refresh_reuse_race() {
        contract::refresh_reuse_race(Arc::new(MemoryAccountStore::new())).await;
    }

    #[tokio::test]
    async fn signing_keys() {
        contract::signing_keys(&MemoryAccountStore::new()).await;
    }
}
