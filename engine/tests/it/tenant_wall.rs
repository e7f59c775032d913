//! The tenant wall: random sequences of requests from users of two tenants, over REST and
//! WebSocket, never see the other tenant's data, and every attempt on the other tenant's
//! resources is answered 404 (or 403).

use std::time::Duration;

use futures_util::StreamExt;
use loadtest::fake_llm::Scenario;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::app::{Session, TestApp, client_with, send, spawn_app_with};

/// One tenant's side of the world.
struct Side {
    marker: String,
    user: Session,
    http: reqwest::Client,
    conversations: Vec<String>,
    api_key_id: String,
}

#[derive(Debug, Clone)]
enum Op {
    List,
    /// Read conversation `n` of all known ones (either tenant's).
    Read(usize),
    Post(usize),
    Delete(usize),
    Create,
    WsResume(usize),
    ListKeys,
    RevokeKey(bool),
    ListUsers(bool),
    AdminActors,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::List),
        (0usize..8).prop_map(Op::Read),
        (0usize..8).prop_map(Op::Post),
        (0usize..8).prop_map(Op::Delete),
        Just(Op::Create),
        (0usize..8).prop_map(Op::WsResume),
        Just(Op::ListKeys),
        any::<bool>().prop_map(Op::RevokeKey),
        any::<bool>().prop_map(Op::ListUsers),
        Just(Op::AdminActors),
    ]
}

async fn setup(app: &TestApp, name: &str) -> Side {
    let tenant = app.create_tenant(name).await;
    let user = app.user(&tenant, &format!("admin@{name}.test"), "admin").await;
    let http = client_with(&user.access_token);
    let marker = format!("SECRET-{name}-{}", uuid::Uuid::new_v4().simple());
    let mut conversations = Vec::new();
    for i in 0..2 {
        let body = json!({"title": format!("{marker} title {i}"), "system_prompt": format!("{marker} prompt")});
        let created: Value = http
            .post(app.url("/api/v1/conversations"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        let message = json!({"content": format!("{marker} message {i}")});
        let response = http
            .post(app.url(&format!("/api/v1/conversations/{id}/messages")))
            .json(&message)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        conversations.push(id);
    }
    let key: Value = http
        .post(app.url("/api/v1/api-keys"))
        .json(&json!({"name": format!("{marker} key"), "scopes": ["conversations:read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Side { marker, user, http, conversations, api_key_id: key["id"].as_str().unwrap().to_owned() }
}

/// Runs `ops` alternately as the two tenants' users and checks every answer.
async fn run(app: &TestApp, sides: &mut [Side; 2], ops: &[(bool, Op)]) {
    for (as_b, op) in ops {
        let (me, other) = if *as_b { (1, 0) } else { (0, 1) };
        let all: Vec<(usize, String)> = sides
            .iter()
            .enumerate()
            .flat_map(|(owner, s)| s.conversations.iter().map(move |c| (owner, c.clone())))
            .collect();
        let pick = |n: usize| all[n % all.len()].clone();
        let http = sides[me].http.clone();
        let (status, text, foreign): (u16, String, bool) = match op {
            Op::List => get(&http, app, "/api/v1/conversations").await,
            Op::Read(n) => {
                let (owner, id) = pick(*n);
                let (s, t, _) = get(&http, app, &format!("/api/v1/conversations/{id}")).await;
                (s, t, owner != me)
            }
            Op::Post(n) => {
                let (owner, id) = pick(*n);
                let body = json!({"content": format!("{} posted", sides[me].marker)});
                let response = http
                    .post(app.url(&format!("/api/v1/conversations/{id}/messages")))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (response.status().as_u16(), response.text().await.unwrap(), owner != me)
            }
            Op::Delete(n) => {
                let (owner, id) = pick(*n);
                // Only ever try deleting the other tenant's: the fixtures must survive.
                if owner == me {
                    continue;
                }
                let response = http
                    .delete(app.url(&format!("/api/v1/conversations/{id}")))
                    .send()
                    .await
                    .unwrap();
                (response.status().as_u16(), response.text().await.unwrap(), true)
            }
            Op::Create => {
                let body = json!({"title": format!("{} new", sides[me].marker)});
                let response =
                    http.post(app.url("/api/v1/conversations")).json(&body).send().await.unwrap();
                let status = response.status().as_u16();
                let text = response.text().await.unwrap();
                assert_eq!(status, 201, "{text}");
                let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                sides[me].conversations.push(id);
                (status, text, false)
            }
            Op::WsResume(n) => {
                let (owner, id) = pick(*n);
                ws_resume(app, &sides[me].user.access_token, &id, owner != me).await
            }
            Op::ListKeys => get(&http, app, "/api/v1/api-keys").await,
            Op::RevokeKey(own) => {
                // Revoking our own key is harmless here; the other's must be 404.
                let id = if *own {
                    sides[me].api_key_id.clone()
                } else {
                    sides[other].api_key_id.clone()
                };
                let response =
                    http.delete(app.url(&format!("/api/v1/api-keys/{id}"))).send().await.unwrap();
                (response.status().as_u16(), response.text().await.unwrap(), !*own)
            }
            Op::ListUsers(own) => {
                let tenant =
                    if *own { &sides[me].user.tenant_id } else { &sides[other].user.tenant_id };
                let (s, t, _) = get(&http, app, &format!("/api/v1/tenants/{tenant}/users")).await;
                (s, t, !*own)
            }
            Op::AdminActors => {
                let (s, t, _) = get(&http, app, "/admin/actors").await;
                assert_eq!(s, 403, "a tenant admin never sees the platform's actors: {t}");
                // The registry spans every tenant: refused like the other tenant's data.
                (s, t, true)
            }
        };
        assert!(
            !text.contains(&sides[other].marker),
            "{op:?} as tenant {me} leaked the other tenant's data: {status} {text}"
        );
        if foreign {
            assert!(
                status == 404 || status == 403,
                "{op:?} on the other tenant answered {status}: {text}"
            );
        } else {
            assert!(status < 400, "{op:?} on our own data answered {status}: {text}");
        }
    }
}

async fn get(http: &reqwest::Client, app: &TestApp, path: &str) -> (u16, String, bool) {
    let response = http.get(app.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap(), false)
}

/// Resumes from seq 0 and gathers what arrives for a moment. A foreign conversation must be
/// refused at the handshake (404).
async fn ws_resume(app: &TestApp, token: &str, id: &str, foreign: bool) -> (u16, String, bool) {
    let request = crate::app::ws_request(app.addr, id, token);
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, _)) => {
            send(&mut ws, json!({"type": "resume", "after_seq": 0})).await;
            let mut text = String::new();
            while let Ok(Some(Ok(message))) =
                tokio::time::timeout(Duration::from_millis(150), ws.next()).await
            {
                if let Message::Text(t) = message {
                    text.push_str(&t);
                }
            }
            (101, text, foreign)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
            foreign,
        ),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

#[test]
fn no_request_sequence_crosses_the_tenant_wall() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let app = spawn_app_with(
        "",
        Scenario { tokens: 3, ..Scenario::default() },
        "[auth]\nuser_requests_per_minute = 0\ntenant_requests_per_minute = 0",
    );
    let sides = runtime.block_on(async { [setup(&app, "alpha").await, setup(&app, "beta").await] });
    let sides = std::cell::RefCell::new(sides);
    let mut runner = TestRunner::new(ProptestConfig { cases: 24, ..ProptestConfig::default() });
    let strategy = proptest::collection::vec((any::<bool>(), op()), 1..12);
    runner
        .run(&strategy, |ops| {
            let mut sides = sides.borrow_mut();
            runtime.block_on(run(&app, &mut sides, &ops));
            Ok(())
        })
        .unwrap();
}
