//! `/api/v1/auth/*` and `/.well-known/biscuit-keys`: log in, refresh, log out, TOTP, narrow a
//! token, rotate and publish signing keys. Handlers stay thin; the rules live in
//! [`crate::auth::service`].

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::auth::service::{Login, Via};
use crate::auth::tokens::{Attenuation, attenuate};
use crate::auth::{Authorized, credential_from_request, perm, unauthorized};
use crate::error::ApiError;
use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(login)
        .service(refresh)
        .service(logout)
        .service(me)
        .service(totp_enroll)
        .service(totp_confirm)
        .service(attenuate_token)
        .service(rotate_keys)
        .service(published_keys);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
    totp_code: Option<String>,
    /// Which of the user's tenants to act in (the first one if omitted).
    tenant_id: Option<String>,
}

/// Logins checked at once. Each runs argon2id, which holds 19 MiB and a core for tens of
/// milliseconds, on the blocking pool (up to 512 threads): unchecked, a burst of logins — even
/// failing ones — costs gigabytes. Past this many, a login waits its turn, and after
/// [`LOGIN_QUEUE_WAIT`] is refused. (A login whose client resets is dropped here at once; its
/// argon2 run keeps a permit of `passwords::Argon2Gate`, which bounds the runs themselves.)
static LOGINS_IN_FLIGHT: LazyLock<Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Semaphore::new((2 * cores).clamp(2, 32))
});

/// Longest wait for that turn before `503 overloaded`.
const LOGIN_QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Email + password (+ TOTP code when enrolled) → access token + refresh token.
#[post("/api/v1/auth/login")]
async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let Ok(Ok(_turn)) = tokio::time::timeout(LOGIN_QUEUE_WAIT, LOGINS_IN_FLIGHT.acquire()).await
    else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many logins at once; retry shortly",
        )
        .with_retry_after(Duration::from_secs(1)));
    };
    let ip = crate::http::connections::client_ip(&req).map(|ip| ip.to_string());
    let session = state
        .auth
        .login(Login {
            email: &body.email,
            password: &body.password,
            totp_code: body.totp_code.as_deref(),
            tenant_id: body.tenant_id.as_deref(),
            ip,
        })
        .await?;
    Ok(HttpResponse::Ok().insert_header(("cache-control", "no-store")).json(session))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

/// A refresh token → a new access token and a new refresh token (the old one is spent;
/// presenting it again revokes the whole session).
#[post("/api/v1/auth/refresh")]
async fn refresh(
    state: web::Data<AppState>,
    body: web::Json<RefreshBody>,
) -> Result<HttpResponse, ApiError> {
    let session = state.auth.refresh(&body.refresh_token).await?;
    Ok(HttpResponse::Ok().insert_header(("cache-control", "no-store")).json(session))
}

/// Revokes the caller's session: its refresh token and every access token of the login.
#[post("/api/v1/auth/logout")]
async fn logout(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let credential = credential_from_request(&req)?;
    let crate::auth::Credential::AccessToken(token) = credential else {
        return Err(ApiError::bad_request(
            "not_a_session",
            "API keys are revoked at DELETE /api/v1/api-keys/{id}",
        ));
    };
    // Any valid token of the session may log out, whatever it was narrowed to.
    let claims = state.auth.keys.claims(&token, SystemTime::now()).map_err(|_| unauthorized())?;
    state.auth.revoke_session(&claims.session_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Who the caller is.
#[get("/api/v1/auth/me")]
async fn me(who: Authorized<perm::ConversationsRead>) -> HttpResponse {
    let auth = &who.auth;
    let body = match &auth.via {
        Via::Token { role, superadmin, expires_at, .. } => json!({
            "tenant_id": auth.tenant_id, "user_id": auth.user_id, "role": role,
            "superadmin": superadmin,
            "expires_at": crate::auth::tokens::unix_secs(*expires_at),
        }),
        Via::ApiKey { key_id, scopes } => json!({
            "tenant_id": auth.tenant_id, "user_id": auth.user_id, "api_key": key_id, "scopes": scopes,
        }),
    };
    HttpResponse::Ok().json(body)
}

/// Starts TOTP enrolment: the secret (base32) and an `otpauth://` URI for an authenticator.
#[post("/api/v1/auth/totp/enroll")]
async fn totp_enroll(
    state: web::Data<AppState>,
    who: Authorized<perm::ConversationsRead>,
) -> Result<HttpResponse, ApiError> {
    require_session(&who.auth)?;
    let (secret, uri) = state.auth.enroll_totp(&who.auth.user_id).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({ "secret": secret, "otpauth_uri": uri })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TotpBody {
    code: String,
}

/// Confirms enrolment with a first code; answers the recovery codes (shown once).
#[post("/api/v1/auth/totp/confirm")]
async fn totp_confirm(
    state: web::Data<AppState>,
    who: Authorized<perm::ConversationsRead>,
    body: web::Json<TotpBody>,
) -> Result<HttpResponse, ApiError> {
    require_session(&who.auth)?;
    let codes = state.auth.confirm_totp(&who.auth.user_id, &body.code).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({ "enabled": true, "recovery_codes": codes })))
}

fn require_session(auth: &crate::auth::Authenticated) -> Result<(), ApiError> {
    match auth.via {
        Via::Token { .. } => Ok(()),
        Via::ApiKey { .. } => Err(ApiError::bad_request("not_a_session", "log in as the user")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttenuateBody {
    #[serde(default)]
    read_only: bool,
    conversation_id: Option<String>,
    expires_in_secs: Option<u64>,
}

/// Derives a narrower token from the caller's (read-only, one conversation, shorter life).
/// Holders can do the same offline with any biscuit library; this is a convenience.
#[post("/api/v1/auth/attenuate")]
async fn attenuate_token(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<AttenuateBody>,
) -> Result<HttpResponse, ApiError> {
    let crate::auth::Credential::AccessToken(token) = credential_from_request(&req)? else {
        return Err(ApiError::bad_request("not_a_token", "only access tokens can be narrowed"));
    };
    let claims = state.auth.keys.claims(&token, SystemTime::now()).map_err(|_| unauthorized())?;
    if state.auth.is_revoked(&claims.session_id) {
        return Err(unauthorized());
    }
    let attenuation = Attenuation {
        read_only: body.read_only,
        conversation_id: body.conversation_id.clone(),
        expires_at: body.expires_in_secs.map(|s| SystemTime::now() + Duration::from_secs(s)),
    };
    let narrowed = attenuate(&token, &attenuation, &state.auth.keys).map_err(|_| unauthorized())?;
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({ "access_token": narrowed })))
}

/// Adds a signing key (superadmin). Tokens signed by older keys stay valid until they expire.
#[post("/admin/signing-keys/rotate")]
async fn rotate_keys(
    state: web::Data<AppState>,
    _who: Authorized<perm::SigningKeysRotate>,
) -> Result<HttpResponse, ApiError> {
    let id = state.auth.rotate_keys().await?;
    Ok(HttpResponse::Created()
        .json(json!({ "current_key_id": id, "keys": state.auth.keys.published() })))
}

/// The public keys tokens are verified with (the JWKS analogue). Public by design.
#[get("/.well-known/biscuit-keys")]
async fn published_keys(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("cache-control", "max-age=60"))
        .json(json!({ "keys": state.auth.keys.published() }))
}
