//! Authentication and authorization: who is asking, and may they.
//!
//! ## How a request is authorized
//!
//! Every route takes an [`Authorized<P>`] extractor whose type parameter names the
//! [`Permission`] it needs (`Authorized<perm::ConversationsWrite>`), so the permission is
//! declared in the handler's signature. The extractor reads `Authorization: Bearer …`:
//!
//! * a biscuit access token → [`tokens::KeyRing::verify`]: signature against the key the
//!   token names, then datalog — the permission table, the request's `operation` (and
//!   `conversation`), the token's own checks (expiry, attenuation) — then the token's session
//!   must not be revoked;
//! * an API key `sy_…` → [`AuthService::api_key`]: hash compare, not revoked, and the key's
//!   scopes decide, through the same datalog policy shape (`right($p)` facts).
//!
//! Then the per-tenant, per-user and per-key request limits ([`limits`]) are counted.
//! The result is a [`Principal`] (the tenant wall every store call is scoped by).
//!
//! ## Modules
//!
//! [`permissions`] the role/permission table; [`tokens`] keys, minting, verification and
//! attenuation; [`passwords`] argon2id; [`totp`] RFC 6238 and recovery codes; [`api_keys`]
//! key format and hashing; [`limits`] counters, rate limits, token quotas, login lockout;
//! [`service`] the [`AuthService`] that ties them to the [`crate::accounts`] store
//! (login, refresh with reuse detection, logout, bootstrap, key rotation); [`setup`] builds
//! it from the configuration; [`admin`] the offline `tenant`/`user`/`keys` commands.

pub mod admin;
pub mod api_keys;
pub mod limits;
pub mod passwords;
pub mod permissions;
pub mod service;
pub mod setup;
pub mod tokens;
pub mod totp;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use rand::Rng;

pub use permissions::{Permission, Role};
pub use service::{AuthService, Authenticated, Credential};

use crate::conversations::Principal;
use crate::error::ApiError;
use crate::server::AppState;

/// A route's required permission, as a type (see [`Authorized`]).
pub trait Required {
    const PERMISSION: Permission;
}

/// Marker types, one per [`Permission`].
pub mod perm {
    use super::{Permission, Required};

    macro_rules! markers {
        ($($name:ident),*) => {$(
            #[derive(Debug)]
            pub struct $name;
            impl Required for $name {
                const PERMISSION: Permission = Permission::$name;
            }
        )*};
    }
    markers!(
        ConversationsRead,
        ConversationsWrite,
        KeysManage,
        CostsRead,
        CostsManage,
        UsersManage,
        CacheManage,
        AdminActors,
        TenantsManage,
        SigningKeysRotate,
        PricesManage
    );
}

/// An authenticated, authorized request for permission `P`.
#[derive(Debug)]
pub struct Authorized<P: Required> {
    pub principal: Principal,
    pub auth: Authenticated,
    _permission: PhantomData<P>,
}

impl<P: Required> FromRequest for Authorized<P> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req.app_data::<web::Data<AppState>>().ok_or_else(ApiError::internal)?;
            let conversation = match P::PERMISSION {
                Permission::ConversationsRead | Permission::ConversationsWrite => {
                    req.match_info().get("id").or_else(|| req.match_info().get("conversation_id"))
                }
                _ => None,
            };
            let credential = credential_from_request(&req)?;
            let auth = state
                .auth
                .authorize(&credential, P::PERMISSION, conversation, SystemTime::now())
                .await?;
            Ok(Authorized { principal: auth.principal(), auth, _permission: PhantomData })
        })
    }
}

/// The credential in `Authorization: Bearer …` (or `x-api-key`, as Anthropic clients send).
pub fn credential_from_request(req: &HttpRequest) -> Result<Credential, ApiError> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .or_else(|| req.headers().get("x-api-key"))
        .ok_or_else(unauthorized)?;
    let value = header.to_str().map_err(|_| unauthorized())?;
    Ok(Credential::parse(value))
}

/// For the OpenAI/Anthropic-compatible routes: the principal behind an API key header value
/// (`Bearer sy_…` or the bare key), authorized for `conversations:write` and counted
/// against the key's, user's and tenant's request limits.
pub async fn principal_from_api_key(
    state: &AppState,
    header_value: &str,
) -> Result<Principal, ApiError> {
    let credential = Credential::parse(header_value);
    if !matches!(credential, Credential::ApiKey(_)) {
        return Err(unauthorized());
    }
    let auth = state
        .auth
        .authorize(&credential, Permission::ConversationsWrite, None, SystemTime::now())
        .await?;
    Ok(auth.principal())
}

/// 401 with one generic message: which part was wrong is never said.
pub fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing, invalid or expired credentials",
    )
}

pub fn forbidden() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", "your credentials do not allow this request")
}

/// `len` random URL-safe characters (~6 bits each) from the OS-seeded thread RNG.
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..len).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}
