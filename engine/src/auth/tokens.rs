//! Access tokens: biscuits signed by a rotating set of root keys, checked by datalog.
//!
//! A token's authority block says who holds it and until when:
//!
//! ```text
//! tenant("t…"); user("u…"); role("member"); session("family id"); [superadmin(true);]
//! check if time($t), $t <= 2026-11-26T10:00:00Z;
//! ```
//!
//! The root key id is in the token (`root_key_id`), so after a rotation tokens signed by the
//! previous key still verify against its public key until they expire. Every request builds
//! an authorizer from the permission table ([`super::permissions::datalog_facts`]) plus the
//! request (`time`, `operation(permission)`, `conversation(id)` when the route has one) and
//! the one policy below. Holders may append blocks with more checks (read-only, one
//! conversation, earlier expiry — see [`attenuate`]); checks only ever narrow, and facts in
//! appended blocks are invisible to the policy (datalog scopes trust the authority block and
//! the authorizer only), so an attenuated token can never do more than its parent.
//!
//! Tokens travel as unpadded base64url, which also makes them valid
//! `Sec-WebSocket-Protocol` values.
//!
//! ## The verified-token cache
//!
//! A full verification (signature checks, then a fresh datalog world) costs ~100–200 µs, and
//! a client sends the same access token with every request until it expires. So the ring
//! keeps a bounded cache ([`VerifiedCache`], CLOCK eviction, [`DEFAULT_CACHE_ENTRIES`]
//! entries) keyed by the SHA-256 of the token text, holding the claims, the signing key's id
//! and, per [`Permission`], the decision datalog reached. Only what makes that sound is
//! cached:
//!
//! * only tokens with a single (authority) block: those are exactly what [`KeyRing::mint`]
//!   wrote and signed, whose checks are the expiry alone, so the decision for a permission
//!   is fixed for the token's life. Attenuated tokens carry a holder's checks, which may
//!   involve the time or the conversation in ways a cache cannot see: they always take the
//!   full path;
//! * only successful verifications: a token that fails to decode, to verify or has expired
//!   is never remembered; a `Forbidden` decision is (it only ever refuses);
//! * a hit still checks the expiry against the request's time, and that the signing key is
//!   still in the ring (a removed key's tokens stop at once); revocation of the session is
//!   checked by the caller on every request, hit or miss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{date, fact, string};
use biscuit_auth::{
    Algorithm, AuthorizerBuilder, Biscuit, BlockBuilder, KeyPair, PrivateKey, PublicKey,
    RootKeyProvider, error,
};
use data_encoding::BASE64URL_NOPAD;
use sha2::{Digest, Sha256};

use super::permissions::{Permission, Role, datalog_facts};

/// The policy every request is decided by. Tenant permissions come from the role in the
/// authority block; platform permissions need `superadmin(true)` there.
const POLICY: &str = r#"
allow if operation($p), role($r), role_permission($r, $p);
allow if operation($p), platform_permission($p), superadmin(true);
deny if true;
"#;

/// Bounds on one authorization. Facts and iterations bound the work deterministically, so a
/// hostile appended block cannot make a request expensive. The time limit is wall-clock: on
/// a loaded machine a thread descheduled mid-authorization blows any tight limit (25 ms did,
/// under a full test run on two cores) and turns a valid token into a 401 — so it is only a
/// backstop, far above what the fact and iteration bounds allow a check to take.
pub fn run_limits() -> biscuit_auth::AuthorizerLimits {
    biscuit_auth::AuthorizerLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_secs(1),
    }
}

/// One signing key, with the id tokens carry.
pub struct SigningKey {
    pub id: u32,
    pub keypair: KeyPair,
    pub created_at_ms: u64,
}

impl SigningKey {
    pub fn generate(id: u32, created_at_ms: u64) -> Self {
        SigningKey { id, keypair: KeyPair::new(), created_at_ms }
    }

    /// Rebuilds a key from its stored private bytes (Ed25519).
    pub fn from_private_bytes(id: u32, bytes: &[u8], created_at_ms: u64) -> Option<Self> {
        let private = PrivateKey::from_bytes(bytes, Algorithm::Ed25519).ok()?;
        Some(SigningKey { id, keypair: KeyPair::from(&private), created_at_ms })
    }

    pub fn private_bytes(&self) -> Vec<u8> {
        self.keypair.private().to_bytes().to_vec()
    }

    pub fn public_hex(&self) -> String {
        self.keypair.public().to_bytes_hex()
    }
}

/// The public half of the ring, as tokens are verified against it.
#[derive(Clone, Default)]
struct PublicKeys(HashMap<u32, PublicKey>);

impl RootKeyProvider for &PublicKeys {
    fn choose(&self, key_id: Option<u32>) -> Result<PublicKey, error::Format> {
        key_id.and_then(|id| self.0.get(&id).copied()).ok_or(error::Format::UnknownPublicKey)
    }
}

struct Ring {
    /// Newest last; the last one signs.
    keys: Vec<Arc<SigningKey>>,
    public: PublicKeys,
}

/// Every signing key this node knows. Rotation adds a key; verification keeps accepting the
/// older ones (their tokens expire on their own within the access-token lifetime).
pub struct KeyRing {
    ring: RwLock<Arc<Ring>>,
    template: AuthorizerBuilder,
    cache: VerifiedCache,
}

/// A published public key (`GET /.well-known/biscuit-keys`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PublishedKey {
    pub id: u32,
    pub algorithm: &'static str,
    pub public_key: String,
    pub created_at_ms: u64,
    pub current: bool,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub tenant_id: String,
    pub user_id: String,
    pub role: Role,
    pub session_id: String,
    pub superadmin: bool,
    pub expires_at: SystemTime,
}

/// What goes into a new token.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub tenant_id: &'a str,
    pub user_id: &'a str,
    pub role: Role,
    pub session_id: &'a str,
    pub superadmin: bool,
    pub expires_at: SystemTime,
}

/// Why a token was refused. The client only ever learns "invalid token" or "forbidden".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token, tampered with, signed by an unknown key, or expired.
    #[error("invalid or expired token")]
    Invalid,
    /// A valid token whose rights (or attenuation) do not cover the request.
    #[error("the token does not allow this request")]
    Forbidden,
}

/// The request a token is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub permission: Permission,
    pub conversation_id: Option<&'a str>,
    pub now: SystemTime,
}

impl KeyRing {
    /// A ring with a verified-token cache of [`DEFAULT_CACHE_ENTRIES`].
    pub fn new(keys: Vec<SigningKey>) -> anyhow::Result<KeyRing> {
        Self::with_cache_capacity(keys, DEFAULT_CACHE_ENTRIES)
    }

    /// A ring whose verified-token cache holds at most `entries` tokens (0: no cache).
    pub fn with_cache_capacity(keys: Vec<SigningKey>, entries: usize) -> anyhow::Result<KeyRing> {
        let template = AuthorizerBuilder::new()
            .code(datalog_facts())
            .and_then(|b| b.code(POLICY))
            .map(|b| b.set_limits(run_limits()))
            .map_err(|e| anyhow::anyhow!("failed to build the authorizer policy: {e}"))?;
        let ring = KeyRing {
            ring: RwLock::new(Arc::new(Ring::empty())),
            template,
            cache: VerifiedCache::new(entries),
        };
        for key in keys {
            ring.insert(key);
        }
        Ok(ring)
    }

    fn snapshot(&self) -> Arc<Ring> {
        match self.ring.read() {
            Ok(ring) => ring.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Adds a key (a rotation, or one learned from the shared store). Keys are kept sorted by
    /// id so the newest signs; adding a known id is a no-op.
    pub fn insert(&self, key: SigningKey) {
        let mut guard = match self.ring.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.public.0.contains_key(&key.id) {
            return;
        }
        let mut keys = guard.keys.clone();
        keys.push(Arc::new(key));
        keys.sort_by_key(|k| k.id);
        let public = PublicKeys(keys.iter().map(|k| (k.id, k.keypair.public())).collect());
        *guard = Arc::new(Ring { keys, public });
    }

    /// Drops every key whose id is not in `keep` (a key deleted from the shared store, e.g.
    /// a compromised one), unless that would leave the ring empty. Tokens it signed stop
    /// verifying at once, cached or not. Returns the ids removed.
    pub fn retain(&self, keep: &[u32]) -> Vec<u32> {
        let mut guard = match self.ring.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (kept, removed): (Vec<_>, Vec<_>) =
            guard.keys.iter().cloned().partition(|k| keep.contains(&k.id));
        if removed.is_empty() || kept.is_empty() {
            return Vec::new();
        }
        let public = PublicKeys(kept.iter().map(|k| (k.id, k.keypair.public())).collect());
        *guard = Arc::new(Ring { keys: kept, public });
        drop(guard);
        self.cache.clear();
        removed.iter().map(|k| k.id).collect()
    }

    pub fn contains(&self, id: u32) -> bool {
        self.snapshot().public.0.contains_key(&id)
    }

    /// Tokens in the verified-token cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// The id the next rotation should use.
    pub fn next_id(&self) -> u32 {
        self.snapshot().keys.last().map_or(1, |k| k.id + 1)
    }

    pub fn current_id(&self) -> Option<u32> {
        self.snapshot().keys.last().map(|k| k.id)
    }

    pub fn published(&self) -> Vec<PublishedKey> {
        let ring = self.snapshot();
        let current = ring.keys.last().map(|k| k.id);
        ring.keys
            .iter()
            .map(|k| PublishedKey {
                id: k.id,
                algorithm: "ed25519",
                public_key: k.public_hex(),
                created_at_ms: k.created_at_ms,
                current: Some(k.id) == current,
            })
            .collect()
    }

    /// Signs a new access token with the current key.
    pub fn mint(&self, token: &NewToken<'_>) -> anyhow::Result<String> {
        let ring = self.snapshot();
        let key = ring.keys.last().ok_or_else(|| anyhow::anyhow!("no signing key"))?;
        let mut builder = Biscuit::builder()
            .fact(fact("tenant", &[string(token.tenant_id)]))
            .and_then(|b| b.fact(fact("user", &[string(token.user_id)])))
            .and_then(|b| b.fact(fact("role", &[string(token.role.as_str())])))
            .and_then(|b| b.fact(fact("session", &[string(token.session_id)])))
            .and_then(|b| b.check_expiry(token.expires_at))
            .map_err(|e| anyhow::anyhow!("failed to build a token: {e}"))?;
        if token.superadmin {
            builder = builder
                .fact("superadmin(true)")
                .map_err(|e| anyhow::anyhow!("failed to build a token: {e}"))?;
        }
        let biscuit = builder
            .root_key_id(key.id)
            .build(&key.keypair)
            .map_err(|e| anyhow::anyhow!("failed to sign a token: {e}"))?;
        encode(&biscuit)
    }

    /// Verifies the signature (against the key named in the token) and decides `request`;
    /// from the verified-token cache when this token was seen before (see the module doc).
    pub fn verify(&self, token: &str, request: Request<'_>) -> Result<Claims, TokenError> {
        let ring = self.snapshot();
        let digest = self.cache.enabled().then(|| cache_key(token));
        let bit = permission_bit(request.permission);
        if let Some(hit) = digest.as_ref().and_then(|d| self.cache.get(d)) {
            if hit.claims.expires_at < request.now || !ring.public.0.contains_key(&hit.key_id) {
                return Err(TokenError::Invalid);
            }
            if hit.allowed.load(Ordering::Relaxed) & bit != 0 {
                return Ok(hit.claims.clone());
            }
            if hit.denied.load(Ordering::Relaxed) & bit != 0 {
                return Err(TokenError::Forbidden);
            }
        }
        let biscuit = decode(token, &ring.public)?;
        let mut builder = self
            .template
            .clone()
            .fact(fact("time", &[date(&request.now)]))
            .and_then(|b| b.fact(fact("operation", &[string(request.permission.as_str())])))
            .map_err(|_| TokenError::Invalid)?;
        if let Some(id) = request.conversation_id {
            builder = builder
                .fact(fact("conversation", &[string(id)]))
                .map_err(|_| TokenError::Invalid)?;
        }
        let mut authorizer = builder.build(&biscuit).map_err(|_| TokenError::Invalid)?;
        let claims = read_claims(&mut authorizer)?;
        if claims.expires_at < request.now {
            return Err(TokenError::Invalid);
        }
        let allowed = match authorizer.authorize() {
            Ok(_) => true,
            Err(error::Token::FailedLogic(_)) => false,
            Err(error::Token::RunLimit(limit)) => {
                tracing::warn!(?limit, "token authorization hit its run limit");
                return Err(TokenError::Invalid);
            }
            Err(_) => return Err(TokenError::Invalid),
        };
        if let (Some(digest), Some(key_id)) = (digest, cacheable(&biscuit)) {
            self.cache.record(digest, claims.clone(), key_id, bit, allowed);
        }
        if allowed { Ok(claims) } else { Err(TokenError::Forbidden) }
    }

    /// Verifies the signature and expiry only, and reads the claims (for WebSocket sessions,
    /// which check the route's permission separately).
    pub fn claims(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let ring = self.snapshot();
        let digest = self.cache.enabled().then(|| cache_key(token));
        if let Some(hit) = digest.as_ref().and_then(|d| self.cache.get(d)) {
            if hit.claims.expires_at < now || !ring.public.0.contains_key(&hit.key_id) {
                return Err(TokenError::Invalid);
            }
            return Ok(hit.claims.clone());
        }
        let biscuit = decode(token, &ring.public)?;
        let mut authorizer = AuthorizerBuilder::new()
            .set_limits(run_limits())
            .fact(fact("time", &[date(&now)]))
            .and_then(|b| b.build(&biscuit))
            .map_err(|_| TokenError::Invalid)?;
        let claims = read_claims(&mut authorizer)?;
        if claims.expires_at < now {
            return Err(TokenError::Invalid);
        }
        if let (Some(digest), Some(key_id)) = (digest, cacheable(&biscuit)) {
            self.cache.record(digest, claims.clone(), key_id, 0, true);
        }
        Ok(claims)
    }
}

impl Ring {
    fn empty() -> Ring {
        Ring { keys: Vec::new(), public: PublicKeys::default() }
    }
}

/// Entries of the verified-token cache by default. An entry is ~350 bytes (claims, key,
/// index), so a full cache is ~35 MB; only valid tokens get in, so it fills only with real
/// sessions.
pub const DEFAULT_CACHE_ENTRIES: usize = 100_000;

/// The cache key: SHA-256 of the token as presented.
fn cache_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// A token the cache may hold (see the module doc): one block, and the key it names.
fn cacheable(biscuit: &Biscuit) -> Option<u32> {
    if biscuit.block_count() == 1 { biscuit.root_key_id() } else { None }
}

fn permission_bit(permission: Permission) -> u16 {
    1 << (permission as u16)
}

/// One verified token: its claims and the decisions datalog reached for it so far.
struct Verified {
    claims: Claims,
    key_id: u32,
    /// One bit per [`Permission`] (its discriminant): allowed…
    allowed: AtomicU16,
    /// …or refused.
    denied: AtomicU16,
    /// CLOCK's second chance: set by every hit, cleared as the hand passes.
    referenced: AtomicBool,
}

/// A bounded map from token hash to [`Verified`], evicting with CLOCK (an LRU
/// approximation whose hits only take the read lock).
pub struct VerifiedCache {
    capacity: usize,
    inner: RwLock<Clock>,
}

#[derive(Default)]
struct Clock {
    index: HashMap<[u8; 32], usize>,
    slots: Vec<([u8; 32], Arc<Verified>)>,
    hand: usize,
}

impl VerifiedCache {
    fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache { capacity, inner: RwLock::new(Clock::default()) }
    }

    fn enabled(&self) -> bool {
        self.capacity > 0
    }

    fn len(&self) -> usize {
        match self.inner.read() {
            Ok(clock) => clock.slots.len(),
            Err(poisoned) => poisoned.into_inner().slots.len(),
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<Arc<Verified>> {
        let clock = match self.inner.read() {
            Ok(clock) => clock,
            Err(poisoned) => poisoned.into_inner(),
        };
        let entry = clock.slots.get(*clock.index.get(key)?)?.1.clone();
        entry.referenced.store(true, Ordering::Relaxed);
        Some(entry)
    }

    fn clear(&self) {
        let mut clock = match self.inner.write() {
            Ok(clock) => clock,
            Err(poisoned) => poisoned.into_inner(),
        };
        *clock = Clock::default();
    }

    /// Remembers a verified token (or one more decision about a known one).
    fn record(&self, key: [u8; 32], claims: Claims, key_id: u32, bit: u16, allowed: bool) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = match self.inner.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let clock: &mut Clock = &mut guard;
        let decided = |entry: &Verified| {
            if allowed {
                entry.allowed.fetch_or(bit, Ordering::Relaxed);
            } else {
                entry.denied.fetch_or(bit, Ordering::Relaxed);
            }
        };
        if let Some(&slot) = clock.index.get(&key)
            && let Some((_, entry)) = clock.slots.get(slot)
        {
            decided(entry);
            return;
        }
        let entry = Arc::new(Verified {
            claims,
            key_id,
            allowed: AtomicU16::new(0),
            denied: AtomicU16::new(0),
            referenced: AtomicBool::new(false),
        });
        decided(&entry);
        if clock.slots.len() < self.capacity {
            let slot = clock.slots.len();
            clock.slots.push((key, entry));
            clock.index.insert(key, slot);
            return;
        }
        // Advance the hand to a victim: an expired entry, or one not hit since the hand last
        // passed. Two turns at most (the first clears every reference bit).
        let now = SystemTime::now();
        let len = clock.slots.len();
        let mut victim = clock.hand % len;
        for _ in 0..2 * len {
            let slot = clock.hand % len;
            clock.hand = (slot + 1) % len;
            let candidate = &clock.slots[slot].1;
            let expired = candidate.claims.expires_at < now;
            if expired || !candidate.referenced.swap(false, Ordering::Relaxed) {
                victim = slot;
                break;
            }
        }
        let old = clock.slots[victim].0;
        clock.index.remove(&old);
        clock.slots[victim] = (key, entry);
        clock.index.insert(key, victim);
    }
}

trait CheckExpiry: Sized {
    fn check_expiry(self, at: SystemTime) -> Result<Self, error::Token>;
}

impl CheckExpiry for biscuit_auth::BiscuitBuilder {
    fn check_expiry(self, at: SystemTime) -> Result<Self, error::Token> {
        let mut params = HashMap::new();
        params.insert("exp".to_owned(), date(&at));
        self.code_with_params(
            "expires({exp}); check if time($t), $t <= {exp};",
            params,
            HashMap::new(),
        )
    }
}

fn read_claims(authorizer: &mut biscuit_auth::Authorizer) -> Result<Claims, TokenError> {
    let rows: Vec<(String, String, String, String)> = authorizer
        .query("claims($t, $u, $r, $s) <- tenant($t), user($u), role($r), session($s)")
        .map_err(|_| TokenError::Invalid)?;
    let [(tenant_id, user_id, role, session_id)] =
        <[_; 1]>::try_from(rows).map_err(|_| TokenError::Invalid)?;
    let superadmin: Vec<(bool,)> =
        authorizer.query("is($x) <- superadmin($x)").map_err(|_| TokenError::Invalid)?;
    // Every block may state an expiry (the authority's, an attenuation's); the earliest
    // wins. A later one in an appended block cannot extend anything: the checks enforce the
    // real limits, this only tells sessions when to close.
    let expiries: Vec<(SystemTime,)> =
        authorizer.query_all("exp($e) <- expires($e)").map_err(|_| TokenError::Invalid)?;
    let expires_at = expiries.into_iter().map(|(e,)| e).min().ok_or(TokenError::Invalid)?;
    let role = role.parse::<Role>().map_err(|_| TokenError::Invalid)?;
    Ok(Claims {
        tenant_id,
        user_id,
        role,
        session_id,
        superadmin: superadmin.iter().any(|(b,)| *b),
        expires_at,
    })
}

fn encode(biscuit: &Biscuit) -> anyhow::Result<String> {
    let bytes =
        biscuit.to_vec().map_err(|e| anyhow::anyhow!("failed to serialise a token: {e}"))?;
    Ok(BASE64URL_NOPAD.encode(&bytes))
}

fn decode(token: &str, keys: &PublicKeys) -> Result<Biscuit, TokenError> {
    // Accept padded base64url too (what biscuit's own `to_base64` produces).
    let bytes = BASE64URL_NOPAD
        .decode(token.trim().trim_end_matches('=').as_bytes())
        .map_err(|_| TokenError::Invalid)?;
    Biscuit::from(&bytes, keys).map_err(|_| TokenError::Invalid)
}

/// How a holder narrows a token.
#[derive(Debug, Clone, Default)]
pub struct Attenuation {
    /// Only `*:read` permissions.
    pub read_only: bool,
    /// Only requests about this conversation.
    pub conversation_id: Option<String>,
    /// Expire earlier than the parent.
    pub expires_at: Option<SystemTime>,
}

/// Appends a block of checks to `token`. Needs no key: any holder can do this offline with
/// the biscuit library; the engine offers it at `POST /api/v1/auth/attenuate` too.
pub fn attenuate(
    token: &str,
    attenuation: &Attenuation,
    ring: &KeyRing,
) -> Result<String, TokenError> {
    let ring = ring.snapshot();
    let biscuit = decode(token, &ring.public)?;
    let mut block = BlockBuilder::new();
    if attenuation.read_only {
        block = block
            .code("check if operation($p), $p.ends_with(\":read\");")
            .map_err(|_| TokenError::Invalid)?;
    }
    if let Some(id) = &attenuation.conversation_id {
        block = block.check_conversation(id).map_err(|_| TokenError::Invalid)?;
    }
    if let Some(at) = attenuation.expires_at {
        let mut params = HashMap::new();
        params.insert("exp".to_owned(), date(&at));
        block = block
            .code_with_params(
                "expires({exp}); check if time($t), $t <= {exp};",
                params,
                HashMap::new(),
            )
            .map_err(|_| TokenError::Invalid)?;
    }
    let attenuated = biscuit.append(block).map_err(|_| TokenError::Invalid)?;
    encode(&attenuated).map_err(|_| TokenError::Invalid)
}

trait CheckConversation: Sized {
    fn check_conversation(self, id: &str) -> Result<Self, error::Token>;
}

impl CheckConversation for BlockBuilder {
    fn check_conversation(self, id: &str) -> Result<Self, error::Token> {
        let mut params = HashMap::new();
        params.insert("id".to_owned(), string(id));
        self.code_with_params("check if conversation({id});", params, HashMap::new())
    }
}

/// Seconds since the epoch, for expiry arithmetic.
pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

#[cfg(test)]
mod tests {
    //! The verified-token cache: a hit decides exactly as the full path would, and nothing
    //! unsound is ever served from it.

    use super::*;

    fn ring(entries: usize) -> KeyRing {
        KeyRing::with_cache_capacity(vec![SigningKey::generate(1, 0)], entries).unwrap()
    }

    fn token(ring: &KeyRing, role: Role, superadmin: bool, expires_at: SystemTime) -> String {
        ring.mint(&NewToken {
            tenant_id: "t1",
            user_id: "u1",
            role,
            session_id: "s1",
            superadmin,
            expires_at,
        })
        .unwrap()
    }

    fn request(permission: Permission, now: SystemTime) -> Request<'static> {
        Request { permission, conversation_id: Some("c1"), now }
    }

    fn in_an_hour() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    #[test]
    fn cached_decisions_equal_full_verification_for_every_role_and_permission() {
        let cached = ring(1000);
        // The same keys without a cache: the reference.
        let reference = KeyRing::with_cache_capacity(Vec::new(), 0).unwrap();
        for key in cached.snapshot().keys.iter() {
            reference
                .insert(SigningKey::from_private_bytes(key.id, &key.private_bytes(), 0).unwrap());
        }
        let now = SystemTime::now();
        for role in Role::ALL {
            for superadmin in [false, true] {
                let t = token(&cached, role, superadmin, in_an_hour());
                // Twice round: the first fills the cache, the second is served from it.
                for _ in 0..2 {
                    for permission in Permission::ALL {
                        assert_eq!(
                            cached.verify(&t, request(permission, now)),
                            reference.verify(&t, request(permission, now)),
                            "{role} superadmin={superadmin} {permission}"
                        );
                    }
                }
            }
        }
        assert_eq!(cached.cached_tokens(), 8);
        assert_eq!(reference.cached_tokens(), 0);
    }

    #[test]
    fn a_cached_token_is_refused_once_expired() {
        let ring = ring(10);
        let expires = SystemTime::now() + Duration::from_secs(60);
        let t = token(&ring, Role::Member, false, expires);
        let read = Permission::ConversationsRead;
        assert!(ring.verify(&t, request(read, SystemTime::now())).is_ok());
        assert_eq!(ring.cached_tokens(), 1);
        let later = expires + Duration::from_secs(2);
        assert_eq!(ring.verify(&t, request(read, later)), Err(TokenError::Invalid));
        assert_eq!(ring.claims(&t, later), Err(TokenError::Invalid));
    }

    #[test]
    fn failures_are_never_cached_and_bad_tokens_never_pass() {
        let ring = ring(10);
        let now = SystemTime::now();
        let write = Permission::ConversationsWrite;
        let good = token(&ring, Role::Member, false, in_an_hour());
        assert!(ring.verify(&good, request(write, now)).is_ok());
        // Tampered: one byte of the signed payload flipped.
        let mut bytes = BASE64URL_NOPAD.decode(good.as_bytes()).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        let tampered = BASE64URL_NOPAD.encode(&bytes);
        let foreign = token(
            &KeyRing::new(vec![SigningKey::generate(1, 0)]).unwrap(),
            Role::Owner,
            true,
            in_an_hour(),
        );
        let expired = token(&ring, Role::Owner, false, now - Duration::from_secs(10));
        for bad in [tampered.as_str(), "garbage", "", foreign.as_str(), expired.as_str()] {
            for _ in 0..2 {
                assert_eq!(ring.verify(bad, request(write, now)), Err(TokenError::Invalid));
            }
        }
        assert_eq!(ring.cached_tokens(), 1, "only the good token is cached");
    }

    #[test]
    fn refusals_are_remembered_and_stay_refusals() {
        let ring = ring(10);
        let viewer = token(&ring, Role::Viewer, false, in_an_hour());
        let now = SystemTime::now();
        for _ in 0..3 {
            assert_eq!(
                ring.verify(&viewer, request(Permission::ConversationsWrite, now)),
                Err(TokenError::Forbidden)
            );
            assert!(ring.verify(&viewer, request(Permission::ConversationsRead, now)).is_ok());
        }
    }

    #[test]
    fn attenuated_tokens_are_never_cached_and_keep_their_checks() {
        let ring = ring(10);
        let parent = token(&ring, Role::Owner, false, in_an_hour());
        let soon = SystemTime::now() + Duration::from_secs(30);
        let narrowed = attenuate(
            &parent,
            &Attenuation {
                read_only: true,
                conversation_id: Some("c1".into()),
                expires_at: Some(soon),
            },
            &ring,
        )
        .unwrap();
        let now = SystemTime::now();
        for _ in 0..2 {
            assert!(ring.verify(&narrowed, request(Permission::ConversationsRead, now)).is_ok());
            assert_eq!(
                ring.verify(&narrowed, request(Permission::ConversationsWrite, now)),
                Err(TokenError::Forbidden)
            );
            let other = Request {
                conversation_id: Some("c2"),
                ..request(Permission::ConversationsRead, now)
            };
            assert_eq!(ring.verify(&narrowed, other), Err(TokenError::Forbidden));
        }
        // Past the attenuated expiry (but within the parent's), refused.
        let later = soon + Duration::from_secs(5);
        assert!(ring.verify(&narrowed, request(Permission::ConversationsRead, later)).is_err());
        assert_eq!(ring.cached_tokens(), 0);
    }

    #[test]
    fn removing_a_key_stops_its_cached_tokens_at_once() {
        let ring = ring(10);
        let old = token(&ring, Role::Member, false, in_an_hour());
        ring.insert(SigningKey::generate(2, 0));
        let new = token(&ring, Role::Member, false, in_an_hour());
        let read = request(Permission::ConversationsRead, SystemTime::now());
        assert!(ring.verify(&old, read).is_ok());
        assert!(ring.verify(&new, read).is_ok());
        assert_eq!(ring.retain(&[2]), vec![1]);
        assert_eq!(ring.verify(&old, read), Err(TokenError::Invalid));
        assert_eq!(ring.claims(&old, SystemTime::now()), Err(TokenError::Invalid));
        assert!(ring.verify(&new, read).is_ok());
        // The last key is never removed.
        assert_eq!(ring.retain(&[]), Vec::<u32>::new());
        assert!(ring.verify(&new, read).is_ok());
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_the_tokens_in_use() {
        let ring = ring(4);
        let now = SystemTime::now();
        let read = request(Permission::ConversationsRead, now);
        let hot = token(&ring, Role::Member, false, in_an_hour());
        for i in 0..20 {
            assert!(ring.verify(&hot, read).is_ok());
            let cold = ring
                .mint(&NewToken {
                    tenant_id: "t1",
                    user_id: &format!("u{i}"),
                    role: Role::Member,
                    session_id: "s",
                    superadmin: false,
                    expires_at: in_an_hour(),
                })
                .unwrap();
            assert_eq!(ring.verify(&cold, read).unwrap().user_id, format!("u{i}"));
            assert!(ring.cached_tokens() <= 4);
        }
        let digest = cache_key(&hot);
        assert!(ring.cache.get(&digest).is_some(), "the token hit on every round stays cached");
    }
}
