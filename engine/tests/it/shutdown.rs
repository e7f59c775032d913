//! Graceful shutdown of the real binary: SIGTERM lets the turn in flight finish, then tells
//! WebSocket clients to reconnect elsewhere (close code 1012), then the process exits.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use loadtest::fake_llm::{FakeLlmServer, Scenario, deterministic_text};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::app::{recv, send, text_of};

#[tokio::test]
async fn sigterm_drains_the_turn_then_closes_sockets_with_1012() {
    let fake =
        FakeLlmServer::start(Scenario { tokens: 40, token_delay_ms: 25, ..Scenario::default() })
            .unwrap();
    let dir = std::env::temp_dir().join(format!("switchyard-shutdown-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 10\n\n[[models]]\nname = \"m\"\nprovider = \"openai_compatible\"\nupstream_model = \"x\"\nbase_url = \"{}/v1\"\n",
            fake.base_url()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env("SWITCHYARD_BOOTSTRAP_EMAIL", crate::app::OWNER_EMAIL)
        .env("SWITCHYARD_BOOTSTRAP_PASSWORD", crate::app::OWNER_PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");

    let login: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": crate::app::OWNER_EMAIL, "password": crate::app::OWNER_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap();
    let http = crate::app::client_with(token);
    let created: serde_json::Value = http
        .post(format!("{base}/api/v1/conversations"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let addr = base.trim_start_matches("http://").parse().unwrap();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(crate::app::ws_request(addr, id, token)).await.unwrap();
    send(&mut ws, json!({"type": "user_message", "content": "finish me"})).await;
    let mut frames = vec![recv(&mut ws).await];
    while frames.iter().filter(|f| f["type"] == "delta").count() < 2 {
        frames.push(recv(&mut ws).await);
    }

    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());

    // The turn in flight still completes...
    loop {
        let frame = recv(&mut ws).await;
        let done = frame["type"] == "done";
        frames.push(frame);
        if done {
            break;
        }
    }
    assert_eq!(text_of(&frames), deterministic_text("finish me", 0, 40).concat());
    // ...then the socket is closed with "service restart".
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let code: u16 = close.expect("a close reason").code.into();
    assert_eq!(code, 1012);

    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the engine did not exit after SIGTERM");
    });
    assert!(status.success(), "{status:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
