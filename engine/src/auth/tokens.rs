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

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{date, fact, string};
use biscuit_auth::{
    Algorithm, AuthorizerBuilder, Biscuit, BlockBuilder, KeyPair, PrivateKey, PublicKey,
    RootKeyProvider, error,
};
use data_encoding::BASE64URL_NOPAD;

use super::permissions::{Permission, Role, datalog_facts};

/// The policy every request is decided by. Tenant permissions come from the role in the
/// authority block; platform permissions need `superadmin(true)` there.
const POLICY: &str = r#"
allow if operation($p), role($r), role_permission($r, $p);
allow if operation($p), platform_permission($p), superadmin(true);
deny if true;
"#;

/// Bounds on one authorization. biscuit's default time limit (1 ms) is hit by an unoptimised
/// build on a busy machine and turns valid tokens into refusals; facts and iterations stay
/// bounded, so a hostile appended block still cannot make a request expensive.
pub fn run_limits() -> biscuit_auth::AuthorizerLimits {
    biscuit_auth::AuthorizerLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_millis(25),
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
    pub fn new(keys: Vec<SigningKey>) -> anyhow::Result<KeyRing> {
        let template = AuthorizerBuilder::new()
            .code(datalog_facts())
            .and_then(|b| b.code(POLICY))
            .map(|b| b.set_limits(run_limits()))
            .map_err(|e| anyhow::anyhow!("failed to build the authorizer policy: {e}"))?;
        let ring = KeyRing { ring: RwLock::new(Arc::new(Ring::empty())), template };
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

    pub fn contains(&self, id: u32) -> bool {
        self.snapshot().public.0.contains_key(&id)
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

    /// Verifies the signature (against the key named in the token) and decides `request`.
    pub fn verify(&self, token: &str, request: Request<'_>) -> Result<Claims, TokenError> {
        let ring = self.snapshot();
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
        match authorizer.authorize() {
            Ok(_) => Ok(claims),
            Err(error::Token::FailedLogic(_)) => Err(TokenError::Forbidden),
            Err(error::Token::RunLimit(limit)) => {
                tracing::warn!(?limit, "token authorization hit its run limit");
                Err(TokenError::Invalid)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }

    /// Verifies the signature and expiry only, and reads the claims (for WebSocket sessions,
    /// which check the route's permission separately).
    pub fn claims(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let ring = self.snapshot();
        let biscuit = decode(token, &ring.public)?;
        let mut authorizer = AuthorizerBuilder::new()
            .set_limits(run_limits())
            .fact(fact("time", &[date(&now)]))
            .and_then(|b| b.build(&biscuit))
            .map_err(|_| TokenError::Invalid)?;
        let claims = read_claims(&mut authorizer)?;
        if claims.expires_at < now { Err(TokenError::Invalid) } else { Ok(claims) }
    }
}

impl Ring {
    fn empty() -> Ring {
        Ring { keys: Vec::new(), public: PublicKeys::default() }
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
