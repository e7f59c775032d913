//! The edges as a client sees them: WebSocket chat, REST + SSE, admin inspection.

use std::time::Duration;

use futures_util::SinkExt;
use loadtest::fake_llm::{Scenario, deterministic_text};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::app::{assert_gap_free, recv, recv_turn, send, spawn_app, spawn_app_with, text_of};

fn expected(prompt: &str, tokens: u32) -> String {
    deterministic_text(prompt, 0, tokens).concat()
}

#[tokio::test]
async fn websocket_turn_streams_ack_deltas_and_done_with_gap_free_seqs() {
    let app = spawn_app();
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "user_message", "client_id": "c1", "content": "Hello there"}))
        .await;
    let frames = recv_turn(&mut ws).await;
    assert_eq!(frames[0]["type"], "ack");
    assert_eq!(frames[0]["client_id"], "c1");
    assert_eq!(frames[0]["seq"], 1);
    let done = frames.last().unwrap();
    assert_eq!(done["type"], "done", "{frames:?}");
    assert_eq!(done["model"], "primary");
    assert_eq!(done["usage"]["output_tokens"], 8);
    assert_eq!(text_of(&frames), expected("Hello there", 8));
    assert_gap_free(&frames);

    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn failover_event_when_the_primary_breaks_mid_stream() {
    let app = spawn_app_with("break_after=3", Scenario { tokens: 8, ..Scenario::default() }, "");
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "user_message", "content": "Tell me about trains"})).await;
    let frames = recv_turn(&mut ws).await;
    let failover = frames.iter().find(|f| f["type"] == "failover").expect("a failover event");
    assert_eq!(
        (failover["from"].as_str(), failover["to"].as_str()),
        (Some("primary"), Some("fallback"))
    );
    let done = frames.last().unwrap();
    assert_eq!(done["type"], "done", "{frames:?}");
    assert_eq!(done["model"], "fallback");
    // The fallback continues the partial answer: one coherent text, nothing repeated or lost.
    assert_eq!(text_of(&frames), expected("Tell me about trains", 8));
    assert_gap_free(&frames);
    assert!(app.fake.stats().requests >= 2, "both legs reached the upstream");
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_carries_on() {
    let app = spawn_app();
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;

    ws.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(recv(&mut ws).await["code"], "invalid_frame");
    send(&mut ws, json!({"type": "shout"})).await;
    assert_eq!(recv(&mut ws).await["code"], "invalid_frame");
    let big = "x".repeat(70 * 1024);
    send(&mut ws, json!({"type": "user_message", "content": big})).await;
    assert_eq!(recv(&mut ws).await["code"], "frame_too_large");
    let long = "y".repeat(40 * 1024);
    send(&mut ws, json!({"type": "user_message", "content": long})).await;
    assert_eq!(recv(&mut ws).await["code"], "message_too_large");
    send(&mut ws, json!({"type": "user_message", "content": " \n "})).await;
    assert_eq!(recv(&mut ws).await["code"], "empty_message");
    // PostgreSQL text cannot hold NUL: refused by name, not as a failed write.
    send(&mut ws, json!({"type": "user_message", "content": "a\u{0}b"})).await;
    assert_eq!(recv(&mut ws).await["code"], "invalid_text");

    // Too fast: the burst is 20 frames; well past it some are refused, none crash the socket.
    for _ in 0..40 {
        send(&mut ws, json!({"type": "ping"})).await;
    }
    let mut limited = 0;
    for _ in 0..40 {
        let frame = recv(&mut ws).await;
        if frame["code"] == "rate_limited" {
            limited += 1;
        } else {
            assert_eq!(frame["type"], "pong");
        }
    }
    assert!(limited > 0, "some frames must be rate limited");

    // Still usable once the bucket refills.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send(&mut ws, json!({"type": "user_message", "content": "still there?"})).await;
    let frames = recv_turn(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "done");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_resumes_with_no_gap() {
    let app =
        spawn_app_with("", Scenario { tokens: 30, token_delay_ms: 15, ..Scenario::default() }, "");
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "user_message", "content": "A long answer please"})).await;
    let mut seen = Vec::new();
    while seen.iter().filter(|f: &&Value| f["type"] == "delta").count() < 5 {
        seen.push(recv(&mut ws).await);
    }
    drop(ws);
    let last_seq = seen.last().unwrap()["seq"].as_u64().unwrap();

    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "resume", "after_seq": last_seq})).await;
    let rest = recv_turn(&mut ws).await;
    assert_eq!(rest[0]["seq"].as_u64().unwrap(), last_seq + 1, "resume starts right after");
    let all: Vec<Value> = seen.into_iter().chain(rest).collect();
    assert_gap_free(&all);
    assert_eq!(text_of(&all), expected("A long answer please", 30));
}

#[tokio::test]
async fn two_sockets_watch_one_conversation() {
    let app = spawn_app();
    let id = app.create_conversation(json!({})).await;
    let mut watcher = app.ws_connect(&id).await;
    send(&mut watcher, json!({"type": "resume", "after_seq": 0})).await;
    let mut talker = app.ws_connect(&id).await;
    send(&mut talker, json!({"type": "user_message", "content": "Hi both"})).await;
    let talked = recv_turn(&mut talker).await;
    let watched = recv_turn(&mut watcher).await;
    assert_eq!(talked, watched);
}

#[tokio::test]
async fn rest_posts_whole_replies_streams_sse_and_reads_history() {
    let app = spawn_app();
    let id =
        app.create_conversation(json!({"temperature": 0.2, "system_prompt": "Be brief"})).await;

    let response = app
        .post_json(&format!("/api/v1/conversations/{id}/messages"), &json!({"content": "One"}))
        .await;
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["content"], expected("One", 8));
    assert_eq!(reply["model"], "primary");

    let response = app
        .post_json(
            &format!("/api/v1/conversations/{id}/messages"),
            &json!({"content": "Two", "stream": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().await.unwrap();
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["type"], "ack");
    assert_eq!(events.last().unwrap()["type"], "done");
    assert_eq!(text_of(&events), expected("Two", 8));
    assert!(body.contains("event: delta\n"));

    let (status, history) = app.get_json(&format!("/api/v1/conversations/{id}")).await;
    assert_eq!(status, 200);
    let messages = history["messages"].as_array().unwrap();
    let contents: Vec<&str> = messages.iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["One", expected("One", 8).as_str(), "Two", expected("Two", 8).as_str()]);
    assert_eq!(history["conversation"]["settings"]["system_prompt"], "Be brief");

    let (status, page) = app.get_json("/api/v1/conversations").await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn rest_errors_are_clear() {
    let app = spawn_app();
    let response = app.post_json("/api/v1/conversations", &json!({"model": "gpt-9"})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_model");

    let response = app.post_json("/api/v1/conversations", &json!({"temperature": 9})).await;
    assert_eq!(response.status(), 400);

    let response = app
        .http
        .post(app.url("/api/v1/conversations"))
        .body("{oops")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");

    let (status, body) = app.get_json("/api/v1/conversations/does-not-exist").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");

    let id = app.create_conversation(json!({})).await;
    for (content, code) in [("   ", "empty_message"), ("a\u{0}b", "invalid_text")] {
        let response = app
            .post_json(
                &format!("/api/v1/conversations/{id}/messages"),
                &json!({"content": content}),
            )
            .await;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{content:?}");
    }
    let (_, stored) = app.get_json(&format!("/api/v1/conversations/{id}")).await;
    assert_eq!(stored["messages"], json!([]), "nothing refused was stored");
    for field in ["system_prompt", "title"] {
        let response = app.post_json("/api/v1/conversations", &json!({field: "x\u{0}"})).await;
        assert_eq!(response.status(), 400, "{field}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_text", "{field}");
    }
}

#[tokio::test]
async fn admin_shows_the_tree_and_a_provider_restart_after_fail() {
    let app = spawn_app();
    let (status, tree) = app.get_json("/admin/actors").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> =
        tree["actors"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    for id in [
        "root_supervisor",
        "provider_supervisor",
        "router",
        "provider:primary",
        "provider:fallback",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let response = app.http.post(app.url("/admin/providers/primary/fail")).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let mut restarts = 0;
    for _ in 0..100 {
        let (_, actor) = app.get_json("/admin/actors/provider:primary").await;
        restarts = actor["restarts"].as_u64().unwrap_or(0);
        if restarts >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(restarts >= 1, "the restart shows in the registry");

    let response = app.http.post(app.url("/admin/providers/nope/fail")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{ready}");
}

#[tokio::test]
async fn unknown_conversation_is_refused_before_upgrading() {
    let app = spawn_app();
    let err = tokio_tungstenite::connect_async(app.ws_request("nope")).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

#[tokio::test]
async fn a_socket_that_stops_reading_is_dropped_without_slowing_the_other() {
    // Paced at 1 ms a token, as a (very fast) model would be: the reader falls behind only
    // if it stops for a quarter of a second (the outbox), whereas ~300 events fill the
    // stalled client's buffers. Unpaced, a reader on a loaded machine lagged 64 events and
    // was dropped too, which is right for the rule and wrong for this test.
    let limits = "[limits]\nws_write_timeout_ms = 300\nws_outbox_events = 256\nsocket_send_buffer_bytes = 8192";
    let fast_model = Scenario { tokens: 2_000, token_delay_ms: 1, ..Scenario::default() };
    let app = spawn_app_with("", fast_model, limits);
    let id = app.create_conversation(json!({})).await;

    // The stalled client: a tiny receive window, and it never reads after subscribing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut stalled, _) =
        tokio_tungstenite::client_async(app.ws_request(&id), stream).await.unwrap();
    send(&mut stalled, json!({"type": "resume", "after_seq": 0})).await;

    let mut reader = app.ws_connect(&id).await;
    send(&mut reader, json!({"type": "user_message", "content": "Say a lot"})).await;
    let frames = recv_turn(&mut reader).await;
    assert_eq!(frames.last().unwrap()["type"], "done");
    assert_eq!(text_of(&frames), expected("Say a lot", 2_000));
    assert_gap_free(&frames);

    let mut sessions = u64::MAX;
    for _ in 0..100 {
        let (_, tree) = app.get_json("/admin/actors").await;
        sessions = tree["websocket_sessions"].as_u64().unwrap();
        if sessions == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sessions, 1, "the stalled session is dropped; the reader's stays");
    drop(stalled);
}

#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let app = spawn_app();
    let (status, doc) = app.get_json("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "DELETE /api/v1/conversations/{id}",
            "GET /api/v1/conversations",
            "GET /api/v1/conversations/{id}",
            "POST /api/v1/conversations",
            "POST /api/v1/conversations/{id}/messages",
        ]
    );
    // Every documented operation is served: a missing route would be actix's bare 404,
    // whereas ours always carry the error envelope.
    for operation in &operations {
        let (method, path) = operation.split_once(' ').unwrap();
        let url = app.url(&path.replace("{id}", "no-such-conversation"));
        let request = match method {
            "GET" => app.http.get(url),
            "DELETE" => app.http.delete(url),
            _ => app.http.post(url).json(&json!({"content": "hi"})),
        };
        let response = request.send().await.unwrap();
        if response.status() == 404 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(
                body["error"]["code"], "not_found",
                "{operation} is documented but not routed"
            );
        }
    }
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_heartbeat_timeout() {
    let limits = "[limits]\nws_heartbeat_secs = 1\nws_client_timeout_secs = 2";
    let app = spawn_app_with("", Scenario::default(), limits);
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;
    // Not reading means not answering pings either.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // The server has given up on us: either its close frame (1001) is waiting, or the socket
    // is already gone (our automatic pong then hits a closed pipe). A live socket would
    // keep sending pings and this loop would time out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut ws)).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                let code: u16 = frame.expect("a close reason").code.into();
                assert_eq!(code, 1001);
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => break,
            Err(_) => panic!("the silent client was not dropped"),
        }
    }
}

#[tokio::test]
async fn cancel_stops_the_upstream_request() {
    let app =
        spawn_app_with("", Scenario { tokens: 500, token_delay_ms: 10, ..Scenario::default() }, "");
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "user_message", "content": "go on and on"})).await;
    let mut deltas = 0;
    while deltas < 3 {
        deltas += usize::from(recv(&mut ws).await["type"] == "delta");
    }
    send(&mut ws, json!({"type": "cancel"})).await;
    let frames = recv_turn(&mut ws).await;
    let end = frames.last().unwrap();
    assert_eq!((end["type"].as_str(), end["code"].as_str()), (Some("error"), Some("cancelled")));
    let mut disconnects = 0;
    for _ in 0..100 {
        disconnects = app.fake.stats().client_disconnects;
        if disconnects >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(disconnects, 1, "fake-llm sees the upstream connection closed");
    // The conversation takes the next message.
    send(&mut ws, json!({"type": "user_message", "content": "short one"})).await;
    let next = recv_turn(&mut ws).await;
    assert_eq!(next.last().unwrap()["type"], "done");
}
