//! [`AuthService`]: the accounts store plus the rules — login (with lockout and TOTP),
//! refresh-token rotation with reuse detection, logout and revocation, API keys, request
//! limits, signing-key rotation, and the start-up bootstrap of the first tenant and owner.
//!
//! Revocation: access tokens name their login session (`session(family)`); a revoked family
//! is refused on every request, and open WebSocket sessions watch [`AuthService::revocations`]
//! to close at once. With PostgreSQL, other nodes learn revocations and new signing keys by
//! polling the store every few seconds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use actix_web::http::StatusCode;
use anyhow::Context;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::limits::{Counters, MINUTE, TokenQuota};
use super::permissions::{Permission, Role};
use super::tokens::{Claims, KeyRing, NewToken, Request, SigningKey, TokenError};
use super::{api_keys, forbidden, passwords, random_token, totp, unauthorized};
use crate::accounts::{
    AccountError, AccountStore, ApiKey, Membership, Mfa, RefreshOutcome, RefreshToken,
    StoredSigningKey, Tenant, User, now_ms,
};
use crate::config::AuthConfig;
use crate::conversations::Principal;
use crate::error::ApiError;

/// The id of the first tenant (the embedded default's, before authentication existed).
pub const DEFAULT_TENANT: &str = "default";

/// What a client presented.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    AccessToken(String),
    ApiKey(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret itself.
        match self {
            Credential::AccessToken(_) => f.write_str("AccessToken(…)"),
            Credential::ApiKey(_) => f.write_str("ApiKey(…)"),
        }
    }
}

impl Credential {
    /// From a header value: `Bearer <x>` or a bare `<x>`.
    pub fn parse(value: &str) -> Credential {
        let value = value.trim();
        let value = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .unwrap_or(value)
            .trim();
        if value.starts_with(api_keys::PREFIX) {
            Credential::ApiKey(value.to_owned())
        } else {
            Credential::AccessToken(value.to_owned())
        }
    }
}

/// Who a request is from, and through what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub tenant_id: String,
    pub user_id: String,
    pub via: Via,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Token { role: Role, session_id: String, superadmin: bool, expires_at: SystemTime },
    ApiKey { key_id: String, scopes: Vec<Permission> },
}

impl Authenticated {
    pub fn principal(&self) -> Principal {
        Principal { tenant_id: self.tenant_id.clone(), user_id: self.user_id.clone() }
    }

    pub fn is_superadmin(&self) -> bool {
        matches!(self.via, Via::Token { superadmin: true, .. })
    }

    /// The role behind the request: a token's, or for an API key the strongest role its
    /// scopes amount to (used to bound what it may grant).
    pub fn role(&self) -> Role {
        match &self.via {
            Via::Token { role, .. } => *role,
            Via::ApiKey { scopes, .. } => {
                if scopes.contains(&Permission::KeysManage) {
                    Role::Admin
                } else if scopes.contains(&Permission::ConversationsWrite) {
                    Role::Member
                } else {
                    Role::Viewer
                }
            }
        }
    }
}

/// Tokens handed out by a login or a refresh.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Session {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub refresh_token: String,
    pub tenant_id: String,
    pub user_id: String,
    pub role: Role,
}

/// A login attempt.
pub struct Login<'a> {
    pub email: &'a str,
    pub password: &'a str,
    pub totp_code: Option<&'a str>,
    pub tenant_id: Option<&'a str>,
    /// The client's address, for the per-IP failure limit.
    pub ip: Option<String>,
}

pub struct AuthService {
    pub config: AuthConfig,
    pub accounts: Arc<dyn AccountStore>,
    pub keys: KeyRing,
    pub counters: Arc<dyn Counters>,
    pub quota: Arc<TokenQuota>,
    revoked: RwLock<HashSet<String>>,
    revocations: watch::Sender<u64>,
    tenant_rpm: Mutex<HashMap<String, Option<u64>>>,
}

fn store_error(error: AccountError) -> ApiError {
    match error {
        AccountError::NotFound => ApiError::not_found("not found"),
        AccountError::Conflict => ApiError::new(StatusCode::CONFLICT, "conflict", "already exists"),
        AccountError::Unavailable => ApiError::unavailable("the account store is unavailable"),
    }
}

fn invalid_login() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "invalid email, password or code",
    )
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

impl AuthService {
    /// Loads (or creates, on first start) the signing keys and the revoked sessions.
    pub async fn start(
        config: AuthConfig,
        accounts: Arc<dyn AccountStore>,
        counters: Arc<dyn Counters>,
        shared_counters: Option<Arc<dyn Counters>>,
    ) -> anyhow::Result<Arc<AuthService>> {
        let mut stored = accounts
            .signing_keys()
            .await
            .map_err(|e| anyhow::anyhow!("failed to load signing keys: {e}"))?;
        if stored.is_empty() {
            let key = SigningKey::generate(1, now_ms());
            let record = StoredSigningKey {
                id: key.id,
                private_key: key.private_bytes(),
                created_at_ms: key.created_at_ms,
            };
            match accounts.add_signing_key(record).await {
                // Another node created the first key at the same moment: use theirs.
                Ok(()) | Err(AccountError::Conflict) => {}
                Err(e) => anyhow::bail!("failed to store the first signing key: {e}"),
            }
            stored = accounts
                .signing_keys()
                .await
                .map_err(|e| anyhow::anyhow!("failed to load signing keys: {e}"))?;
        }
        let keys = stored
            .iter()
            .map(|k| {
                SigningKey::from_private_bytes(k.id, &k.private_key, k.created_at_ms)
                    .context("a stored signing key is corrupt")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ring = KeyRing::new(keys)?;
        // Compute the unknown-email dummy hash now, off the event loop, not on a first login.
        let _ = tokio::task::spawn_blocking(passwords::dummy_hash).await;
        let revoked = accounts
            .revoked_families()
            .await
            .map_err(|e| anyhow::anyhow!("failed to load revocations: {e}"))?;
        let quota = Arc::new(TokenQuota::new(config.tenant_tokens_per_minute, shared_counters));
        let (revocations, _) = watch::channel(0);
        Ok(Arc::new(AuthService {
            config,
            accounts,
            keys: ring,
            counters,
            quota,
            revoked: RwLock::new(revoked.into_iter().collect()),
            revocations,
            tenant_rpm: Mutex::new(HashMap::new()),
        }))
    }

    /// Changes whenever a session is revoked; WebSocket sessions re-check theirs.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    pub fn is_revoked(&self, session_id: &str) -> bool {
        match self.revoked.read() {
            Ok(set) => set.contains(session_id),
            Err(poisoned) => poisoned.into_inner().contains(session_id),
        }
    }

    fn mark_revoked(&self, family_id: &str) {
        match self.revoked.write() {
            Ok(mut set) => set.insert(family_id.to_owned()),
            Err(poisoned) => poisoned.into_inner().insert(family_id.to_owned()),
        };
        self.revocations.send_modify(|n| *n += 1);
    }

    /// Pulls revocations and signing keys other nodes added (PostgreSQL deployments).
    pub async fn sync_from_store(&self) {
        if let Ok(families) = self.accounts.revoked_families().await {
            let new: Vec<String> = families.into_iter().filter(|f| !self.is_revoked(f)).collect();
            if !new.is_empty() {
                if let Ok(mut set) = self.revoked.write() {
                    set.extend(new);
                }
                self.revocations.send_modify(|n| *n += 1);
            }
        }
        if let Ok(keys) = self.accounts.signing_keys().await {
            let ids: Vec<u32> = keys.iter().map(|k| k.id).collect();
            for k in keys.into_iter().filter(|k| !self.keys.contains(k.id)) {
                if let Some(key) =
                    SigningKey::from_private_bytes(k.id, &k.private_key, k.created_at_ms)
                {
                    self.keys.insert(key);
                }
            }
            // A key deleted from the store (say, a compromised one) stops verifying here too.
            for id in self.keys.retain(&ids) {
                tracing::warn!(key_id = id, "signing key removed from the store: dropped");
            }
        }
    }

    /// Authenticates `credential` and authorizes `permission` (on `conversation`), then
    /// counts the request against its limits.
    pub async fn authorize(
        &self,
        credential: &Credential,
        permission: Permission,
        conversation: Option<&str>,
        now: SystemTime,
    ) -> Result<Authenticated, ApiError> {
        let auth = match credential {
            Credential::AccessToken(token) => {
                self.verify_access(token, permission, conversation, now)?
            }
            Credential::ApiKey(key) => self.api_key(key, permission).await?,
        };
        self.count_request(&auth).await?;
        Ok(auth)
    }

    /// Verifies an access token for `permission` (CPU only: no I/O).
    pub fn verify_access(
        &self,
        token: &str,
        permission: Permission,
        conversation: Option<&str>,
        now: SystemTime,
    ) -> Result<Authenticated, ApiError> {
        let request = Request { permission, conversation_id: conversation, now };
        let claims = self.keys.verify(token, request).map_err(|e| match e {
            TokenError::Invalid => unauthorized(),
            TokenError::Forbidden => forbidden(),
        })?;
        if self.is_revoked(&claims.session_id) {
            return Err(unauthorized());
        }
        Ok(from_claims(claims))
    }

    async fn api_key(&self, key: &str, permission: Permission) -> Result<Authenticated, ApiError> {
        let id = api_keys::parse_id(key).ok_or_else(unauthorized)?;
        let record =
            self.accounts.find_api_key(id).await.map_err(store_error)?.ok_or_else(unauthorized)?;
        if !api_keys::matches(key, &record.hash) || record.revoked_at_ms.is_some() {
            return Err(unauthorized());
        }
        if !api_key_allows(&record.scopes, permission) {
            return Err(forbidden());
        }
        // Last-used is informational: don't fail the request if the write does.
        let _ = self.accounts.touch_api_key(&record.id, now_ms()).await;
        Ok(Authenticated {
            tenant_id: record.tenant_id,
            user_id: record.user_id,
            via: Via::ApiKey { key_id: record.id, scopes: record.scopes },
        })
    }

    async fn tenant_limit(&self, tenant_id: &str) -> u64 {
        let cached = self.tenant_rpm.lock().ok().and_then(|m| m.get(tenant_id).copied());
        let own = match cached {
            Some(own) => own,
            None => {
                let own = self
                    .accounts
                    .get_tenant(tenant_id)
                    .await
                    .ok()
                    .and_then(|t| t.requests_per_minute);
                if let Ok(mut m) = self.tenant_rpm.lock() {
                    m.insert(tenant_id.to_owned(), own);
                }
                own
            }
        };
        own.unwrap_or(self.config.tenant_requests_per_minute)
    }

    /// Requests per minute per tenant, user and key; 429 with `Retry-After` past any.
    pub async fn count_request(&self, auth: &Authenticated) -> Result<(), ApiError> {
        let tenant_limit = self.tenant_limit(&auth.tenant_id).await;
        let mut checks = vec![(format!("rpm:t:{}", auth.tenant_id), tenant_limit, "tenant")];
        match &auth.via {
            Via::Token { .. } => checks.push((
                format!("rpm:u:{}", auth.user_id),
                self.config.user_requests_per_minute,
                "user",
            )),
            Via::ApiKey { key_id, .. } => {
                let limit = self
                    .accounts
                    .find_api_key(key_id)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|k| k.requests_per_minute)
                    .unwrap_or(self.config.key_requests_per_minute);
                checks.push((format!("rpm:k:{key_id}"), limit, "API key"))
            }
        }
        for (key, limit, what) in checks {
            if limit == 0 {
                continue;
            }
            let count = match self.counters.hit(&key, 1, MINUTE).await {
                Ok(count) => count,
                // Limits fail open: an outage of the shared counters must not stop the engine.
                Err(e) => {
                    tracing::warn!(error = %e, "rate-limit counters unavailable; not limiting");
                    continue;
                }
            };
            if count.value > limit {
                return Err(rate_limited(
                    format!("the {what} limit of {limit} requests per minute is reached"),
                    count.resets_in,
                ));
            }
        }
        Ok(())
    }

    // ---- login, refresh, logout ----

    pub async fn login(&self, login: Login<'_>) -> Result<Session, ApiError> {
        let email = login.email.trim().to_lowercase();
        let window = Duration::from_secs(self.config.login_lockout_secs.max(1));
        let account_key = format!("login:acct:{email}");
        let ip_key = login.ip.as_ref().map(|ip| format!("login:ip:{ip}"));
        // Locked out? (Checked before any work, and the same for unknown emails.)
        let account = self.counters.hit(&account_key, 0, window).await.ok();
        if let Some(count) = account.filter(|c| c.value >= self.config.login_max_failures) {
            return Err(locked(count.resets_in));
        }
        if let Some(ip_key) = &ip_key {
            let ip = self.counters.hit(ip_key, 0, window).await.ok();
            if let Some(count) = ip.filter(|c| c.value >= self.config.login_ip_max_failures) {
                return Err(locked(count.resets_in));
            }
        }
        let user = self.accounts.find_user_by_email(&email).await.map_err(store_error)?;
        // Always one argon2 verification, so timing does not reveal whether the email exists.
        let hash = user.as_ref().map_or(passwords::dummy_hash(), |u| u.password_hash.as_str());
        let password_ok = passwords::verify_blocking(login.password, hash).await;
        let user = match user {
            Some(user) if password_ok => user,
            _ => return Err(self.login_failed(&account_key, ip_key.as_deref(), window).await),
        };
        if let Some(mfa) = user.mfa.as_ref().filter(|m| m.confirmed) {
            let Some(code) = login.totp_code else {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "mfa_required",
                    "this account needs a TOTP or recovery code (`totp_code`)",
                ));
            };
            let now = tokens_now_secs();
            if !totp::verify(&mfa.secret, code, now)
                && !self.use_recovery_code(&user, mfa, code).await?
            {
                return Err(self.login_failed(&account_key, ip_key.as_deref(), window).await);
            }
        }
        let _ = self.counters.clear(&account_key).await;
        let memberships = self.accounts.memberships_of(&user.id).await.map_err(store_error)?;
        let membership = match login.tenant_id {
            Some(t) => memberships.into_iter().find(|m| m.tenant_id == t),
            None => memberships.into_iter().next(),
        }
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "no_membership",
                "this account is not a member of that tenant",
            )
        })?;
        tracing::info!(user_id = %user.id, tenant_id = %membership.tenant_id, "login");
        self.new_session(&user, &membership, random_token(24)).await
    }

    async fn login_failed(
        &self,
        account_key: &str,
        ip_key: Option<&str>,
        window: Duration,
    ) -> ApiError {
        let _ = self.counters.hit(account_key, 1, window).await;
        if let Some(ip_key) = ip_key {
            let _ = self.counters.hit(ip_key, 1, window).await;
        }
        tracing::info!("login failed");
        invalid_login()
    }

    async fn use_recovery_code(
        &self,
        user: &User,
        mfa: &Mfa,
        code: &str,
    ) -> Result<bool, ApiError> {
        let hash = sha256(code.trim().to_lowercase().as_bytes());
        let Some(position) = mfa
            .recovery_hashes
            .iter()
            .position(|h| subtle::ConstantTimeEq::ct_eq(h.as_slice(), hash.as_slice()).into())
        else {
            return Ok(false);
        };
        let mut mfa = mfa.clone();
        mfa.recovery_hashes.remove(position);
        self.accounts.set_mfa(&user.id, Some(mfa)).await.map_err(store_error)?;
        Ok(true)
    }

    async fn new_session(
        &self,
        user: &User,
        membership: &Membership,
        family_id: String,
    ) -> Result<Session, ApiError> {
        let now = SystemTime::now();
        let ttl = Duration::from_secs(self.config.access_token_ttl_secs.max(1));
        let access_token = self
            .keys
            .mint(&NewToken {
                tenant_id: &membership.tenant_id,
                user_id: &user.id,
                role: membership.role,
                session_id: &family_id,
                superadmin: user.superadmin,
                expires_at: now + ttl,
            })
            .map_err(|e| {
                tracing::error!(error = %e, "failed to mint an access token");
                ApiError::internal()
            })?;
        let refresh_token = format!("syr_{}", random_token(43));
        let record = RefreshToken {
            hash: sha256(refresh_token.as_bytes()),
            family_id,
            tenant_id: membership.tenant_id.clone(),
            user_id: user.id.clone(),
            expires_at_ms: now_ms() + self.config.refresh_token_ttl_secs * 1000,
        };
        self.accounts.insert_refresh(record).await.map_err(store_error)?;
        Ok(Session {
            access_token,
            token_type: "Bearer",
            expires_in: ttl.as_secs(),
            refresh_token,
            tenant_id: membership.tenant_id.clone(),
            user_id: user.id.clone(),
            role: membership.role,
        })
    }

    /// Rotates a refresh token. Presenting an already-rotated one revokes the whole family
    /// (every access token of that login stops working too).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, ApiError> {
        let hash = sha256(refresh_token.trim().as_bytes());
        match self.accounts.use_refresh(&hash, now_ms()).await.map_err(store_error)? {
            RefreshOutcome::Valid(record) => {
                if self.is_revoked(&record.family_id) {
                    return Err(unauthorized());
                }
                let user =
                    self.accounts.get_user(&record.user_id).await.map_err(|_| unauthorized())?;
                // The role may have changed since login: read it afresh.
                let membership = self
                    .accounts
                    .memberships_of(&user.id)
                    .await
                    .map_err(store_error)?
                    .into_iter()
                    .find(|m| m.tenant_id == record.tenant_id)
                    .ok_or_else(unauthorized)?;
                self.new_session(&user, &membership, record.family_id).await
            }
            RefreshOutcome::Reused { family_id } => {
                tracing::warn!(session = %family_id, "refresh token reused: revoking the session");
                self.mark_revoked(&family_id);
                Err(unauthorized())
            }
            RefreshOutcome::Invalid => Err(unauthorized()),
        }
    }

    /// Ends the session of an access token (and with it its refresh tokens).
    pub async fn logout(&self, auth: &Authenticated) -> Result<(), ApiError> {
        let Via::Token { session_id, .. } = &auth.via else {
            return Err(ApiError::bad_request(
                "not_a_session",
                "API keys are revoked at DELETE /api/v1/api-keys/{id}",
            ));
        };
        self.revoke_session(session_id).await
    }

    pub async fn revoke_session(&self, family_id: &str) -> Result<(), ApiError> {
        self.accounts.revoke_family(family_id).await.map_err(store_error)?;
        self.mark_revoked(family_id);
        Ok(())
    }

    // ---- MFA ----

    /// Starts TOTP enrolment: a new secret (unconfirmed until [`Self::confirm_totp`]).
    pub async fn enroll_totp(&self, user_id: &str) -> Result<(String, String), ApiError> {
        let user = self.accounts.get_user(user_id).await.map_err(store_error)?;
        if user.mfa.as_ref().is_some_and(|m| m.confirmed) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "mfa_enrolled",
                "TOTP is already enabled",
            ));
        }
        let secret = totp::new_secret();
        let uri = totp::otpauth_uri(&secret, &user.email);
        let base32 = totp::secret_base32(&secret);
        let mfa = Mfa { secret, confirmed: false, recovery_hashes: Vec::new() };
        self.accounts.set_mfa(user_id, Some(mfa)).await.map_err(store_error)?;
        Ok((base32, uri))
    }

    /// Confirms enrolment with a first code; returns the recovery codes (shown once).
    pub async fn confirm_totp(&self, user_id: &str, code: &str) -> Result<Vec<String>, ApiError> {
        let user = self.accounts.get_user(user_id).await.map_err(store_error)?;
        let Some(mfa) = user.mfa.filter(|m| !m.confirmed) else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "mfa_not_pending",
                "start enrolment first",
            ));
        };
        if !totp::verify(&mfa.secret, code, tokens_now_secs()) {
            return Err(invalid_login());
        }
        let codes = totp::new_recovery_codes();
        let recovery_hashes = codes.iter().map(|c| sha256(c.as_bytes())).collect();
        let mfa = Mfa { secret: mfa.secret, confirmed: true, recovery_hashes };
        self.accounts.set_mfa(user_id, Some(mfa)).await.map_err(store_error)?;
        Ok(codes)
    }

    // ---- accounts ----

    pub async fn create_tenant(
        &self,
        name: &str,
        rpm: Option<u64>,
        tpm: Option<u64>,
    ) -> Result<Tenant, ApiError> {
        self.create_tenant_with_id(uuid::Uuid::now_v7().to_string(), name, rpm, tpm).await
    }

    async fn create_tenant_with_id(
        &self,
        id: String,
        name: &str,
        rpm: Option<u64>,
        tpm: Option<u64>,
    ) -> Result<Tenant, ApiError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(ApiError::bad_request("invalid_name", "name must be 1–200 bytes"));
        }
        let tenant = Tenant {
            id,
            name: name.to_owned(),
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            created_at_ms: now_ms(),
        };
        let tenant = self.accounts.create_tenant(tenant).await.map_err(store_error)?;
        self.quota.set_tenant_limit(&tenant.id, tenant.tokens_per_minute);
        Ok(tenant)
    }

    /// Creates a user in `tenant_id` with `role` (or adds an existing one — same email and
    /// the right password — to the tenant).
    pub async fn create_user(
        &self,
        tenant_id: &str,
        email: &str,
        password: &str,
        role: Role,
        superadmin: bool,
    ) -> Result<User, ApiError> {
        let email = email.trim().to_lowercase();
        if !email.contains('@') || email.len() > 254 {
            return Err(ApiError::bad_request("invalid_email", "not an email address"));
        }
        passwords::validate_new(password).map_err(|m| ApiError::bad_request("weak_password", m))?;
        self.accounts.get_tenant(tenant_id).await.map_err(store_error)?;
        let hash = passwords::hash_blocking(password).await.map_err(|_| ApiError::internal())?;
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            email,
            password_hash: hash,
            superadmin,
            mfa: None,
            created_at_ms: now_ms(),
        };
        let user = self.accounts.create_user(user).await.map_err(|e| match e {
            AccountError::Conflict => {
                ApiError::new(StatusCode::CONFLICT, "email_taken", "a user with this email exists")
            }
            other => store_error(other),
        })?;
        self.accounts
            .put_membership(Membership {
                tenant_id: tenant_id.to_owned(),
                user_id: user.id.clone(),
                role,
            })
            .await
            .map_err(store_error)?;
        Ok(user)
    }

    /// Makes sure `email` exists with `password`, is a superadmin and owns a tenant. Used at
    /// start with `SWITCHYARD_BOOTSTRAP_EMAIL`/`_PASSWORD`; idempotent. The first tenant gets
    /// the id `default` — the embedded tenant's id, so configuration keyed by tenant id
    /// (`[cache.tenants.default]`) and data from before authentication keep applying.
    pub async fn ensure_owner(
        &self,
        email: &str,
        password: &str,
        tenant_name: &str,
    ) -> anyhow::Result<(Tenant, User)> {
        // Nodes sharing a database may bootstrap at the same moment; the loser of a race to
        // create the user finds it the second time round.
        match self.try_ensure_owner(email, password, tenant_name).await {
            Err(e)
                if e.downcast_ref::<ApiError>()
                    .is_some_and(|e| e.status() == StatusCode::CONFLICT) =>
            {
                self.try_ensure_owner(email, password, tenant_name).await
            }
            other => other,
        }
    }

    async fn try_ensure_owner(
        &self,
        email: &str,
        password: &str,
        tenant_name: &str,
    ) -> anyhow::Result<(Tenant, User)> {
        let email = email.trim().to_lowercase();
        let existing =
            self.accounts.find_user_by_email(&email).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(user) = existing {
            if !passwords::verify_blocking(password, &user.password_hash).await {
                let hash = passwords::hash_blocking(password).await?;
                self.accounts
                    .set_password(&user.id, hash)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            if !user.superadmin {
                self.accounts
                    .set_superadmin(&user.id, true)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let memberships =
                self.accounts.memberships_of(&user.id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(m) = memberships.first() {
                let tenant = self
                    .accounts
                    .get_tenant(&m.tenant_id)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if m.role != Role::Owner {
                    let owner = Membership { role: Role::Owner, ..m.clone() };
                    self.accounts
                        .put_membership(owner)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                let user =
                    self.accounts.get_user(&user.id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                return Ok((tenant, user));
            }
            let tenant = self.bootstrap_tenant(tenant_name).await?;
            self.accounts
                .put_membership(Membership {
                    tenant_id: tenant.id.clone(),
                    user_id: user.id.clone(),
                    role: Role::Owner,
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            return Ok((tenant, user));
        }
        let tenant = self.bootstrap_tenant(tenant_name).await?;
        let user = self
            .create_user(&tenant.id, &email, password, Role::Owner, true)
            .await
            .map_err(|e| anyhow::Error::new(e).context("failed to create the bootstrap user"))?;
        Ok((tenant, user))
    }

    /// The tenant `default`, created if missing.
    async fn bootstrap_tenant(&self, name: &str) -> anyhow::Result<Tenant> {
        match self.accounts.get_tenant(DEFAULT_TENANT).await {
            Ok(tenant) => Ok(tenant),
            Err(AccountError::NotFound) => {
                match self.create_tenant_with_id(DEFAULT_TENANT.to_owned(), name, None, None).await
                {
                    Ok(tenant) => Ok(tenant),
                    // Another node created it a moment ago.
                    Err(e) if e.status() == StatusCode::CONFLICT => self
                        .accounts
                        .get_tenant(DEFAULT_TENANT)
                        .await
                        .map_err(|e| anyhow::anyhow!("failed to read the first tenant: {e}")),
                    Err(e) => Err(anyhow::anyhow!("failed to create the first tenant: {e}")),
                }
            }
            Err(e) => Err(anyhow::anyhow!("failed to read the first tenant: {e}")),
        }
    }

    // ---- API keys ----

    /// Creates an API key for the caller's tenant. Scopes may not exceed the caller's own
    /// rights (a member cannot mint a key that manages keys; only a superadmin can grant
    /// platform scopes).
    pub async fn create_api_key(
        &self,
        by: &Authenticated,
        name: &str,
        scopes: Vec<Permission>,
        rpm: Option<u64>,
    ) -> Result<(ApiKey, String), ApiError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(ApiError::bad_request("invalid_name", "name must be 1–200 bytes"));
        }
        if scopes.is_empty() {
            return Err(ApiError::bad_request("invalid_scopes", "give at least one scope"));
        }
        let allowed = |p: &Permission| match &by.via {
            Via::Token { role, superadmin, .. } => {
                role.permissions().contains(p) || (*superadmin && p.is_platform())
            }
            Via::ApiKey { scopes, .. } => scopes.contains(p),
        };
        if let Some(p) = scopes.iter().find(|p| !allowed(p)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("you cannot grant `{p}`"),
            ));
        }
        let generated = api_keys::generate();
        let key = ApiKey {
            id: generated.id.clone(),
            tenant_id: by.tenant_id.clone(),
            user_id: by.user_id.clone(),
            name: name.to_owned(),
            scopes,
            hash: generated.hash,
            requests_per_minute: rpm,
            created_at_ms: now_ms(),
            last_used_at_ms: None,
            revoked_at_ms: None,
        };
        self.accounts.create_api_key(key.clone()).await.map_err(store_error)?;
        tracing::info!(key_id = %key.id, tenant_id = %key.tenant_id, "API key created");
        Ok((key, generated.key))
    }

    // ---- signing keys ----

    /// Adds a new signing key; new tokens are signed with it, older ones stay valid until
    /// they expire.
    pub async fn rotate_keys(&self) -> Result<u32, ApiError> {
        // Another node may take the same next id at the same moment: learn its key and take
        // the one after.
        let mut attempts = 0;
        loop {
            self.sync_from_store().await;
            let key = SigningKey::generate(self.keys.next_id(), now_ms());
            let record = StoredSigningKey {
                id: key.id,
                private_key: key.private_bytes(),
                created_at_ms: key.created_at_ms,
            };
            match self.accounts.add_signing_key(record).await {
                Ok(()) => {
                    let id = key.id;
                    self.keys.insert(key);
                    tracing::info!(key_id = id, "signing key rotated");
                    return Ok(id);
                }
                Err(AccountError::Conflict) if attempts < 3 => attempts += 1,
                Err(e) => return Err(store_error(e)),
            }
        }
    }

    /// Authenticates a WebSocket on `conversation`: who, and whether the credential may also
    /// write there (a viewer or a read-only token may watch but not post). Counts one request.
    pub async fn websocket(
        &self,
        credential: &Credential,
        conversation: &str,
    ) -> Result<(Authenticated, bool), ApiError> {
        let now = SystemTime::now();
        let (auth, can_write) = match credential {
            Credential::AccessToken(token) => {
                let auth = self.verify_access(
                    token,
                    Permission::ConversationsRead,
                    Some(conversation),
                    now,
                )?;
                let write = self.verify_access(
                    token,
                    Permission::ConversationsWrite,
                    Some(conversation),
                    now,
                );
                (auth, write.is_ok())
            }
            Credential::ApiKey(key) => {
                let auth = self.api_key(key, Permission::ConversationsRead).await?;
                let write = matches!(&auth.via, Via::ApiKey { scopes, .. } if scopes.contains(&Permission::ConversationsWrite));
                (auth, write)
            }
        };
        self.count_request(&auth).await?;
        Ok((auth, can_write))
    }

    /// Whether a WebSocket session's credential still holds (revocation re-check).
    pub fn session_active(&self, auth: &Authenticated) -> bool {
        match &auth.via {
            Via::Token { session_id, expires_at, .. } => {
                !self.is_revoked(session_id) && *expires_at > SystemTime::now()
            }
            Via::ApiKey { .. } => true,
        }
    }

    /// When a WebSocket session's credential stops being valid (API keys: never).
    pub fn expires_at(auth: &Authenticated) -> Option<SystemTime> {
        match &auth.via {
            Via::Token { expires_at, .. } => Some(*expires_at),
            Via::ApiKey { .. } => None,
        }
    }
}

fn from_claims(claims: Claims) -> Authenticated {
    Authenticated {
        tenant_id: claims.tenant_id,
        user_id: claims.user_id,
        via: Via::Token {
            role: claims.role,
            session_id: claims.session_id,
            superadmin: claims.superadmin,
            expires_at: claims.expires_at,
        },
    }
}

/// API keys are decided by the same datalog shape as tokens: the key's scopes become
/// `right($p)` facts and the request's permission must be one of them.
fn api_key_allows(scopes: &[Permission], permission: Permission) -> bool {
    use biscuit_auth::builder::{fact, string};
    let mut builder =
        biscuit_auth::AuthorizerBuilder::new().set_limits(super::tokens::run_limits());
    for scope in scopes {
        builder = match builder.fact(fact("right", &[string(scope.as_str())])) {
            Ok(b) => b,
            Err(_) => return false,
        };
    }
    let built = builder
        .fact(fact("operation", &[string(permission.as_str())]))
        .and_then(|b| b.code("allow if operation($p), right($p); deny if true;"))
        .and_then(|b| b.build_unauthenticated());
    match built {
        Ok(mut authorizer) => authorizer.authorize().is_ok(),
        Err(_) => false,
    }
}

fn rate_limited(message: String, retry_after: Duration) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        .with_retry_after(retry_after.max(Duration::from_secs(1)))
}

fn locked(retry_after: Duration) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "login_locked",
        "too many failed logins; try again later",
    )
    .with_retry_after(retry_after.max(Duration::from_secs(1)))
}

fn tokens_now_secs() -> u64 {
    super::tokens::unix_secs(SystemTime::now())
}

/// Makes sure the configured bootstrap owner exists, or in the embedded default creates a
/// demo tenant and user with a random password, printed once to stdout (not the log) and
/// written to a file only the user can read, which `switchyard chat` uses.
pub async fn bootstrap(auth: &AuthService, embedded: bool) -> anyhow::Result<()> {
    let config = &auth.config;
    if let (Some(email), Some(password)) = (&config.bootstrap_email, &config.bootstrap_password) {
        let (tenant, user) = auth.ensure_owner(email, password.expose_secret(), "default").await?;
        tracing::info!(tenant_id = %tenant.id, user_id = %user.id, "bootstrap owner ready");
        return Ok(());
    }
    if !embedded {
        let tenants = auth.accounts.list_tenants().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if tenants.is_empty() {
            tracing::warn!(
                "no tenants yet: set SWITCHYARD_BOOTSTRAP_EMAIL and SWITCHYARD_BOOTSTRAP_PASSWORD, or run `switchyard tenant create` and `switchyard user create`"
            );
        }
        return Ok(());
    }
    let email = "demo@switchyard.local";
    let password = random_token(20);
    let (tenant, _) = auth.ensure_owner(email, &password, "demo").await?;
    println!(
        "Demo login (in-memory state, shown once): email {email}  password {password}  tenant {}",
        tenant.id
    );
    if let Some(path) = &config.credentials_file {
        match write_credentials(path, email, &password) {
            Ok(()) => {
                println!("Saved for `switchyard chat` in {} (readable only by you)", path.display())
            }
            Err(e) => tracing::warn!(error = %e, "could not save the demo credentials"),
        }
    }
    Ok(())
}

/// The demo credentials file (`{"email","password"}`), mode 0600.
pub fn write_credentials(
    path: &std::path::Path,
    email: &str,
    password: &str,
) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file =
        options.open(path).with_context(|| format!("failed to write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    let body = serde_json::json!({ "email": email, "password": password });
    file.write_all(body.to_string().as_bytes())?;
    Ok(())
}

/// The default place for the demo credentials: `$XDG_CONFIG_HOME/switchyard/credentials.json`
/// or `~/.config/switchyard/credentials.json`.
pub fn default_credentials_file() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME").map(std::path::PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config"))
    })?;
    Some(base.join("switchyard").join("credentials.json"))
}
