//! Authentication and authorization as a client sees them: tokens (expired, tampered,
//! wrong key, revoked), refresh rotation and reuse, attenuation, roles, key rotation, login
//! lockout, TOTP, API keys, WebSocket auth both ways, rate limits, and secrets kept out of
//! the logs.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use biscuit_auth::{Biscuit, KeyPair, PublicKey};
use futures_util::StreamExt;
use loadtest::fake_llm::Scenario;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::app::{
    OWNER_EMAIL, OWNER_PASSWORD, Session, TestApp, Ws, client_with, recv, recv_turn, send,
    spawn_app, spawn_app_configured, spawn_app_with,
};

fn decode(token: &str) -> Vec<u8> {
    data_encoding::BASE64URL_NOPAD.decode(token.as_bytes()).unwrap()
}

fn encode(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

async fn status_of(client: &reqwest::Client, app: &TestApp, path: &str) -> (u16, Value) {
    let response = client.get(app.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post_as(client: &reqwest::Client, app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let response = client.post(app.url(path)).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The current public key of the engine, from the well-known document.
async fn current_public_key(app: &TestApp) -> (u32, PublicKey) {
    let (_, keys) = app.get_json("/.well-known/biscuit-keys").await;
    let current = keys["keys"].as_array().unwrap().iter().find(|k| k["current"] == true).unwrap();
    let key = PublicKey::from_bytes_hex(
        current["public_key"].as_str().unwrap(),
        biscuit_auth::Algorithm::Ed25519,
    )
    .unwrap();
    (current["id"].as_u64().unwrap() as u32, key)
}

#[tokio::test]
async fn missing_garbage_tampered_and_wrong_key_tokens_are_refused() {
    let app = spawn_app();
    let (status, body) = status_of(&app.anon, &app, "/api/v1/conversations").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");

    let (status, _) = status_of(&client_with("not-a-token"), &app, "/api/v1/conversations").await;
    assert_eq!(status, 401);

    // Tampered: flip one byte in the signed payload.
    let mut bytes = decode(&app.owner.access_token);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let (status, _) = status_of(&client_with(&encode(&bytes)), &app, "/api/v1/conversations").await;
    assert_eq!(status, 401, "a tampered token is refused");

    // Same facts, signed by a key the engine does not know (with the engine's key id).
    let (key_id, _) = current_public_key(&app).await;
    let rogue = KeyPair::new();
    let forged = Biscuit::builder()
        .code(format!(
            r#"tenant("{}"); user("{}"); role("owner"); session("s"); superadmin(true);
               expires(2099-01-01T00:00:00Z); check if time($t), $t <= 2099-01-01T00:00:00Z;"#,
            app.owner.tenant_id, app.owner.user_id
        ))
        .unwrap()
        .root_key_id(key_id)
        .build(&rogue)
        .unwrap();
    let forged = encode(&forged.to_vec().unwrap());
    let (status, _) = status_of(&client_with(&forged), &app, "/api/v1/conversations").await;
    assert_eq!(status, 401, "a token signed by another key is refused");

    // The owner's real token works (the control).
    let (status, _) = app.get_json("/api/v1/conversations").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let app = spawn_app_with("", Scenario::default(), "[auth]\naccess_token_ttl_secs = 1");
    let response = app.login(OWNER_EMAIL, OWNER_PASSWORD).await;
    let session = Session::from_json(&response.json().await.unwrap());
    let client = client_with(&session.access_token);
    assert_eq!(status_of(&client, &app, "/api/v1/conversations").await.0, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = status_of(&client, &app, "/api/v1/conversations").await;
    assert_eq!(status, 401, "{body}");
    // The refresh token still gets a fresh one.
    let (status, body) = post_as(
        &app.anon,
        &app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": session.refresh_token}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let fresh = client_with(body["access_token"].as_str().unwrap());
    assert_eq!(status_of(&fresh, &app, "/api/v1/conversations").await.0, 200);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let app = spawn_app();
    let first =
        Session::from_json(&app.login(OWNER_EMAIL, OWNER_PASSWORD).await.json().await.unwrap());
    let refresh = |token: String| {
        let app = &app;
        async move {
            post_as(&app.anon, app, "/api/v1/auth/refresh", json!({"refresh_token": token})).await
        }
    };
    let (status, second) = refresh(first.refresh_token.clone()).await;
    assert_eq!(status, 200);
    let second = Session::from_json(&second);
    assert_ne!(second.refresh_token, first.refresh_token);
    let second_client = client_with(&second.access_token);
    assert_eq!(status_of(&second_client, &app, "/api/v1/conversations").await.0, 200);

    // Somebody replays the first (already rotated) refresh token.
    let (status, body) = refresh(first.refresh_token.clone()).await;
    assert_eq!(status, 401, "{body}");
    // The whole family is gone: the current refresh token and the access tokens.
    assert_eq!(refresh(second.refresh_token.clone()).await.0, 401);
    assert_eq!(status_of(&second_client, &app, "/api/v1/conversations").await.0, 401);
    assert_eq!(
        status_of(&client_with(&first.access_token), &app, "/api/v1/conversations").await.0,
        401
    );
    // Other sessions of the same user are untouched.
    assert_eq!(app.get_json("/api/v1/conversations").await.0, 200);
}

#[tokio::test]
async fn logout_revokes_the_session() {
    let app = spawn_app();
    let session =
        Session::from_json(&app.login(OWNER_EMAIL, OWNER_PASSWORD).await.json().await.unwrap());
    let client = client_with(&session.access_token);
    assert_eq!(status_of(&client, &app, "/api/v1/auth/me").await.0, 200);
    let response = client.post(app.url("/api/v1/auth/logout")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(status_of(&client, &app, "/api/v1/auth/me").await.0, 401);
    let (status, _) = post_as(
        &app.anon,
        &app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": session.refresh_token}),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_attenuated_token_cannot_do_more_than_its_parent() {
    let app = spawn_app();
    let a = app.create_conversation(json!({})).await;
    let b = app.create_conversation(json!({})).await;

    // Read-only, via the engine's convenience endpoint.
    let (status, body) =
        post_as(&app.http, &app, "/api/v1/auth/attenuate", json!({"read_only": true})).await;
    assert_eq!(status, 200, "{body}");
    let read_only = client_with(body["access_token"].as_str().unwrap());
    assert_eq!(status_of(&read_only, &app, &format!("/api/v1/conversations/{a}")).await.0, 200);
    let (status, body) = post_as(&read_only, &app, "/api/v1/conversations", json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        status_of(&read_only, &app, "/api/v1/tenants").await.0,
        403,
        "not even the superadmin's platform rights"
    );

    // One conversation, attenuated offline by the holder with the biscuit library.
    let (_, public) = current_public_key(&app).await;
    let parent = Biscuit::from(decode(&app.owner.access_token), public).unwrap();
    let block = biscuit_auth::BlockBuilder::new()
        .code(format!(r#"check if conversation("{a}");"#))
        .unwrap();
    let only_a = client_with(&encode(&parent.append(block).unwrap().to_vec().unwrap()));
    assert_eq!(status_of(&only_a, &app, &format!("/api/v1/conversations/{a}")).await.0, 200);
    assert_eq!(status_of(&only_a, &app, &format!("/api/v1/conversations/{b}")).await.0, 403);
    assert_eq!(status_of(&only_a, &app, "/api/v1/conversations").await.0, 403);
    let (status, _) = post_as(
        &only_a,
        &app,
        &format!("/api/v1/conversations/{a}/messages"),
        json!({"content": "hi"}),
    )
    .await;
    assert_eq!(status, 200, "the parent could write to a, so this token can");

    // Shorter expiry.
    let (_, body) =
        post_as(&app.http, &app, "/api/v1/auth/attenuate", json!({"expires_in_secs": 3})).await;
    let short = client_with(body["access_token"].as_str().unwrap());
    // 3 s, not 1: on a loaded machine the first request may arrive a second after minting.
    assert_eq!(status_of(&short, &app, "/api/v1/conversations").await.0, 200);
    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert_eq!(status_of(&short, &app, "/api/v1/conversations").await.0, 401);

    // A viewer who appends facts claiming more rights gets nothing more.
    let tenant = app.create_tenant("escalation").await;
    let viewer = app.user(&tenant, "viewer@escalation.test", "viewer").await;
    let parent = Biscuit::from(decode(&viewer.access_token), public).unwrap();
    let block = biscuit_auth::BlockBuilder::new()
        .code(r#"role("owner"); superadmin(true); tenant("x"); right("conversations:write");"#)
        .unwrap();
    let escalated = client_with(&encode(&parent.append(block).unwrap().to_vec().unwrap()));
    assert_eq!(post_as(&escalated, &app, "/api/v1/conversations", json!({})).await.0, 403);
    assert_eq!(status_of(&escalated, &app, "/api/v1/tenants").await.0, 403);
    let (status, me) = status_of(&escalated, &app, "/api/v1/auth/me").await;
    assert_eq!(
        (status, me["role"].as_str(), me["tenant_id"].as_str()),
        (200, Some("viewer"), Some(tenant.as_str()))
    );
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_write_over_rest_or_websocket() {
    let app = spawn_app();
    let tenant = app.create_tenant("roles").await;
    let member = app.user(&tenant, "member@roles.test", "member").await;
    let viewer = app.user(&tenant, "viewer@roles.test", "viewer").await;
    let member_http = client_with(&member.access_token);
    let viewer_http = client_with(&viewer.access_token);

    let (status, created) = post_as(&member_http, &app, "/api/v1/conversations", json!({})).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, _) = post_as(
        &member_http,
        &app,
        &format!("/api/v1/conversations/{id}/messages"),
        json!({"content": "hello"}),
    )
    .await;
    assert_eq!(status, 200);

    let (status, read) =
        status_of(&viewer_http, &app, &format!("/api/v1/conversations/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read["messages"].as_array().unwrap().len(), 2);
    assert_eq!(post_as(&viewer_http, &app, "/api/v1/conversations", json!({})).await.0, 403);
    assert_eq!(
        post_as(
            &viewer_http,
            &app,
            &format!("/api/v1/conversations/{id}/messages"),
            json!({"content": "x"})
        )
        .await
        .0,
        403
    );
    let response =
        viewer_http.delete(app.url(&format!("/api/v1/conversations/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 403);
    // Members cannot manage keys or users, or reach the admin routes.
    assert_eq!(
        post_as(
            &member_http,
            &app,
            "/api/v1/api-keys",
            json!({"name": "k", "scopes": ["conversations:read"]})
        )
        .await
        .0,
        403
    );
    assert_eq!(status_of(&member_http, &app, "/admin/actors").await.0, 403);
    assert_eq!(
        post_as(
            &member_http,
            &app,
            &format!("/api/v1/tenants/{tenant}/users"),
            json!({"email": "x@y.z", "password": "long enough password", "role": "viewer"})
        )
        .await
        .0,
        403
    );

    // The viewer watches over WebSocket but cannot post.
    let mut ws = app.ws_connect_as(&id, &viewer.access_token).await;
    send(&mut ws, json!({"type": "user_message", "content": "let me in"})).await;
    let frame = recv(&mut ws).await;
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    send(&mut ws, json!({"type": "resume", "after_seq": 0})).await;
    let frame = recv(&mut ws).await;
    assert_eq!(frame["type"], "ack", "the viewer replays the history");
}

/// Reads frames until the server closes; the close code.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test]
async fn signing_key_rotation_keeps_old_tokens_and_connected_clients_working() {
    let app = spawn_app();
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;
    let old_client = app.http.clone();
    let (old_key, _) = current_public_key(&app).await;

    let (status, body) = post_as(&app.http, &app, "/admin/signing-keys/rotate", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let (new_key, _) = current_public_key(&app).await;
    assert_ne!(new_key, old_key);
    let (_, published) = app.get_json("/.well-known/biscuit-keys").await;
    assert_eq!(
        published["keys"].as_array().unwrap().len(),
        2,
        "the old public key is still published"
    );

    // The socket opened before the rotation keeps streaming.
    send(&mut ws, json!({"type": "user_message", "content": "after rotation"})).await;
    let frames = recv_turn(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "done");
    // Tokens signed by the old key still work; new logins are signed by the new key.
    assert_eq!(status_of(&old_client, &app, "/api/v1/conversations").await.0, 200);
    let fresh =
        Session::from_json(&app.login(OWNER_EMAIL, OWNER_PASSWORD).await.json().await.unwrap());
    let parsed = biscuit_auth::UnverifiedBiscuit::from(decode(&fresh.access_token)).unwrap();
    assert_eq!(parsed.root_key_id(), Some(new_key));
    assert_eq!(
        status_of(&client_with(&fresh.access_token), &app, "/api/v1/conversations").await.0,
        200
    );
    // Only a superadmin may rotate.
    let tenant = app.create_tenant("not-platform").await;
    let owner = app.user(&tenant, "owner@np.test", "owner").await;
    assert_eq!(
        post_as(&client_with(&owner.access_token), &app, "/admin/signing-keys/rotate", json!({}))
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn repeated_failed_logins_lock_the_account_with_generic_errors() {
    let app = spawn_app_with("", Scenario::default(), "[auth]\nlogin_max_failures = 3");
    let response = app.login("nobody@nowhere.test", "whatever-password").await;
    assert_eq!(response.status(), 401);
    let unknown: Value = response.json().await.unwrap();
    let response = app.login(OWNER_EMAIL, "wrong-password-1").await;
    assert_eq!(response.status(), 401);
    let wrong: Value = response.json().await.unwrap();
    assert_eq!(unknown, wrong, "an unknown email and a wrong password look the same");
    app.login(OWNER_EMAIL, "wrong-password-2").await;
    app.login(OWNER_EMAIL, "wrong-password-3").await;
    // Locked: even the right password is refused for now.
    let response = app.login(OWNER_EMAIL, OWNER_PASSWORD).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "login_locked");
    // Other accounts are not locked by it.
    let tenant = app.create_tenant("unlocked").await;
    app.user(&tenant, "other@unlocked.test", "member").await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_login_lockout_counts_each_forwarded_client() {
    // The test client connects from 127.0.0.1: here, the proxy.
    let config = "[auth]\nlogin_ip_max_failures = 3\n\
                  [limits]\ntrusted_proxies = [\"127.0.0.1\"]";
    let app = spawn_app_with("", Scenario::default(), config);
    let login_from = |client: &'static str, email: &'static str, password: &'static str| {
        let url = app.url("/api/v1/auth/login");
        async move {
            reqwest::Client::new()
                .post(url)
                .header("x-forwarded-for", client)
                .json(&json!({"email": email, "password": password}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // One client guesses at three accounts: its address is locked out, even for a right
    // password...
    for n in 1..=3 {
        let email = ["a@guess.test", "b@guess.test", "c@guess.test"][n - 1];
        assert_eq!(login_from("198.51.100.7", email, "guess").await, 401);
    }
    assert_eq!(login_from("198.51.100.7", OWNER_EMAIL, OWNER_PASSWORD).await, 429);
    // ...but not everyone else behind the same proxy.
    assert_eq!(login_from("198.51.100.8", OWNER_EMAIL, OWNER_PASSWORD).await, 200);
}

#[tokio::test]
async fn totp_enrolment_login_and_recovery_codes() {
    let app = spawn_app();
    let tenant = app.create_tenant("mfa").await;
    let user = app.user(&tenant, "mfa@mfa.test", "member").await;
    let client = client_with(&user.access_token);
    let (status, enrol) = post_as(&client, &app, "/api/v1/auth/totp/enroll", json!({})).await;
    assert_eq!(status, 200);
    let secret =
        data_encoding::BASE32_NOPAD.decode(enrol["secret"].as_str().unwrap().as_bytes()).unwrap();
    assert!(enrol["otpauth_uri"].as_str().unwrap().starts_with("otpauth://totp/"));
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let code = |t: u64| format!("{:06}", engine::auth::totp::totp(&secret, t, 6));
    assert_eq!(
        post_as(&client, &app, "/api/v1/auth/totp/confirm", json!({"code": "000000"})).await.0,
        401
    );
    let (status, confirmed) =
        post_as(&client, &app, "/api/v1/auth/totp/confirm", json!({"code": code(now)})).await;
    assert_eq!(status, 200, "{confirmed}");
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);

    let login = |code: Option<String>| {
        let app = &app;
        async move {
            let mut body = json!({"email": "mfa@mfa.test", "password": "mfa@mfa.test-password"});
            if let Some(code) = code {
                body["totp_code"] = json!(code);
            }
            post_as(&app.anon, app, "/api/v1/auth/login", body).await
        }
    };
    let (status, body) = login(None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("mfa_required")));
    let wrong = if code(now) == "123456" { "654321" } else { "123456" };
    assert_eq!(login(Some(wrong.into())).await.0, 401);
    assert_eq!(login(Some(code(now))).await.0, 200);
    assert_eq!(login(Some(recovery[0].clone())).await.0, 200, "a recovery code works once");
    assert_eq!(login(Some(recovery[0].clone())).await.0, 401, "and only once");
}

#[tokio::test]
async fn api_keys_are_scoped_shown_once_and_revocable() {
    let app = spawn_app();
    let (status, created) = post_as(
        &app.http,
        &app,
        "/api/v1/api-keys",
        json!({"name": "reader", "scopes": ["conversations:read"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sy_"));
    let id = created["id"].as_str().unwrap().to_owned();
    let reader = client_with(&key);
    assert_eq!(status_of(&reader, &app, "/api/v1/conversations").await.0, 200);
    assert_eq!(post_as(&reader, &app, "/api/v1/conversations", json!({})).await.0, 403);
    assert_eq!(status_of(&reader, &app, "/api/v1/api-keys").await.0, 403);

    let (_, writer) = post_as(
        &app.http,
        &app,
        "/api/v1/api-keys",
        json!({"name": "writer", "scopes": ["conversations:write"]}),
    )
    .await;
    let writer = client_with(writer["key"].as_str().unwrap());
    assert_eq!(post_as(&writer, &app, "/api/v1/conversations", json!({})).await.0, 201);

    let (_, list) = app.get_json("/api/v1/api-keys").await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(!list.to_string().contains(&key), "the key is never listed");
    let listed = items.iter().find(|k| k["id"] == id.as_str()).unwrap();
    assert!(listed["last_used_at_ms"].is_u64(), "last use is recorded");

    let response =
        app.http.delete(app.url(&format!("/api/v1/api-keys/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(status_of(&reader, &app, "/api/v1/conversations").await.0, 401, "revoked");
    // A wrong secret with a real id is refused too.
    let forged = format!("{}{}", &key[..key.len() - 4], "xxxx");
    assert_eq!(status_of(&client_with(&forged), &app, "/api/v1/conversations").await.0, 401);
    // Another tenant cannot revoke it, or see that it exists.
    let tenant = app.create_tenant("keys-elsewhere").await;
    let other = app.user(&tenant, "admin@keys.test", "admin").await;
    let response = client_with(&other.access_token)
        .delete(app.url(&format!("/api/v1/api-keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn websocket_auth_by_first_frame_or_subprotocol_and_close_on_revocation() {
    let app = spawn_app_with(
        "",
        Scenario { tokens: 4, ..Scenario::default() },
        "[limits]\nws_auth_timeout_secs = 1",
    );
    let id = app.create_conversation(json!({})).await;
    let plain = format!("ws://{}/ws/{id}", app.addr);

    // First frame.
    let (mut ws, _) = tokio_tungstenite::connect_async(plain.clone()).await.unwrap();
    send(&mut ws, json!({"type": "auth", "token": app.owner.access_token})).await;
    send(&mut ws, json!({"type": "user_message", "content": "first frame auth"})).await;
    assert_eq!(recv_turn(&mut ws).await.last().unwrap()["type"], "done");

    // A bad first frame, a bad token, or none in time: an error frame, then close 4401.
    let (mut ws, _) = tokio_tungstenite::connect_async(plain.clone()).await.unwrap();
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["code"], "unauthorized");
    assert_eq!(close_code(&mut ws).await, Some(4401));
    let (mut ws, _) = tokio_tungstenite::connect_async(plain.clone()).await.unwrap();
    send(&mut ws, json!({"type": "auth", "token": "garbage"})).await;
    assert_eq!(recv(&mut ws).await["code"], "unauthorized");
    assert_eq!(close_code(&mut ws).await, Some(4401));
    let (mut ws, _) = tokio_tungstenite::connect_async(plain.clone()).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(4401), "silence past ws_auth_timeout_secs");

    // Subprotocol: the server selects `switchyard.v1`, never echoing the token.
    let (mut ws, response) = tokio_tungstenite::connect_async(app.ws_request(&id)).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "switchyard.v1");
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    // A bad token in the subprotocol is refused before the upgrade.
    let bad = crate::app::ws_request(app.addr, &id, "garbage");
    let err = tokio_tungstenite::connect_async(bad).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    // Logging out closes the open socket of that session at once.
    let session =
        Session::from_json(&app.login(OWNER_EMAIL, OWNER_PASSWORD).await.json().await.unwrap());
    let mut ws = app.ws_connect_as(&id, &session.access_token).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    let response = client_with(&session.access_token)
        .post(app.url("/api/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(close_code(&mut ws).await, Some(4401));
}

#[tokio::test]
async fn websocket_closes_when_its_token_expires() {
    let app = spawn_app_with("", Scenario::default(), "[auth]\naccess_token_ttl_secs = 2");
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    assert_eq!(close_code(&mut ws).await, Some(4401));
}

#[tokio::test]
async fn request_and_token_rate_limits_answer_429_and_rate_limited_frames() {
    let app = spawn_app_with(
        "",
        Scenario { tokens: 8, ..Scenario::default() },
        "[auth]\nuser_requests_per_minute = 5\ntenant_tokens_per_minute = 10",
    );
    // spawn_app's own requests count too; make a fresh user in a fresh tenant.
    let tenant = app.create_tenant("limited").await;
    let user = app.user(&tenant, "limited@rl.test", "member").await;
    let client = client_with(&user.access_token);
    let (status, created) = post_as(&client, &app, "/api/v1/conversations", json!({})).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_owned();
    // The first turn uses more than the tenant's 10 tokens per minute…
    let (status, body) = post_as(
        &client,
        &app,
        &format!("/api/v1/conversations/{id}/messages"),
        json!({"content": "hello"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // …so the next is refused, over REST…
    let (status, body) = post_as(
        &client,
        &app,
        &format!("/api/v1/conversations/{id}/messages"),
        json!({"content": "again"}),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
    // …and the user's 5 requests per minute: the 4th and 5th pass, the 6th is 429.
    for _ in 0..2 {
        assert_eq!(status_of(&client, &app, "/api/v1/conversations").await.0, 200);
    }
    let response = client.get(app.url("/api/v1/conversations")).send().await.unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Other users are not affected.
    assert_eq!(app.get_json("/api/v1/conversations").await.0, 200);

    // Over WebSocket the refusal is an error frame.
    let other = app.user(&tenant, "ws@rl.test", "member").await;
    let mut ws = app.ws_connect_as(&id, &other.access_token).await;
    send(&mut ws, json!({"type": "user_message", "content": "over quota"})).await;
    let frame = recv(&mut ws).await;
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("rate_limited")),
        "{frame}"
    );
}

/// Everything the engine logs, from every test in this binary (one global subscriber).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .json()
            .with_writer(move || Capture(writer.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let logs = captured_logs();
    const PROVIDER_KEY: &str = "sk-provider-secret-4f9a2b7c";
    let app =
        spawn_app_configured("", Scenario { tokens: 4, ..Scenario::default() }, "", |config| {
            for model in &mut config.models {
                model.endpoint.api_key = Some(PROVIDER_KEY.into());
            }
        });
    let session =
        Session::from_json(&app.login(OWNER_EMAIL, OWNER_PASSWORD).await.json().await.unwrap());
    app.login(OWNER_EMAIL, "a-wrong-password-xyz").await;
    let (_, refreshed) = post_as(
        &app.anon,
        &app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": session.refresh_token}),
    )
    .await;
    let (_, key) = post_as(
        &app.http,
        &app,
        "/api/v1/api-keys",
        json!({"name": "k", "scopes": ["conversations:write"]}),
    )
    .await;
    let key = key["key"].as_str().unwrap().to_owned();
    let keyed = client_with(&key);
    let (_, created) = post_as(&keyed, &app, "/api/v1/conversations", json!({})).await;
    let id = created["id"].as_str().unwrap();
    let (status, _) = post_as(
        &keyed,
        &app,
        &format!("/api/v1/conversations/{id}/messages"),
        json!({"content": "hello"}),
    )
    .await;
    assert_eq!(status, 200);
    let mut ws = app.ws_connect(id).await;
    send(&mut ws, json!({"type": "auth", "token": session.access_token})).await;
    send(&mut ws, json!({"type": "user_message", "content": "hi"})).await;
    recv_turn(&mut ws).await;
    ws.close(None).await.unwrap();
    drop(app);

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("login"), "the capture works: login events are logged");
    let secrets = [
        OWNER_PASSWORD,
        "a-wrong-password-xyz",
        PROVIDER_KEY,
        key.as_str(),
        &key[key.len() - 20..],
        session.access_token.as_str(),
        session.refresh_token.as_str(),
        refreshed["access_token"].as_str().unwrap(),
        refreshed["refresh_token"].as_str().unwrap(),
    ];
    for secret in secrets {
        assert!(!text.contains(secret), "a secret reached the logs: {}…", &secret[..6]);
    }
}
