//! The response cache seen from a client: the real engine over WebSocket and REST, with
//! fake-llm upstream counting what actually reached a model.

use serde_json::{Value, json};

use crate::app::{TestApp, assert_gap_free, recv_turn, send, spawn_app_with, text_of};
use loadtest::fake_llm::{FakeLlmServer, Scenario};

async fn ask(app: &TestApp, conversation: &str, question: &str, cache: bool) -> Vec<Value> {
    let mut ws = app.ws_connect(conversation).await;
    let frame = if cache {
        json!({"type": "user_message", "content": question})
    } else {
        json!({"type": "user_message", "content": question, "cache": false})
    };
    send(&mut ws, frame).await;
    let frames = recv_turn(&mut ws).await;
    assert_gap_free(&frames);
    frames
}

fn done(frames: &[Value]) -> &Value {
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "done", "turn failed: {last}");
    last
}

#[tokio::test]
async fn the_second_identical_question_is_streamed_from_the_exact_tier_at_no_cost() {
    let app = spawn_app_with("", Scenario::default(), "");
    let first = app.create_conversation(json!({})).await;
    let answered = ask(&app, &first, "What is the capital of France?", true).await;
    assert_eq!(done(&answered)["cache"], "miss");
    let upstream = app.fake.stats().requests;

    // Another conversation of the same tenant, same (empty) history, same question.
    let second = app.create_conversation(json!({})).await;
    let replayed = ask(&app, &second, "  what is the capital of france ", true).await;
    let done = done(&replayed);
    assert_eq!(done["cache"], "exact");
    assert_eq!(done["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
    assert_eq!(done["model"], json!(self::done(&answered)["model"]));
    assert_eq!(text_of(&replayed), text_of(&answered));
    // Streamed like a live reply: ack, several deltas, done.
    assert_eq!(replayed[0]["type"], "ack");
    assert!(replayed.iter().filter(|f| f["type"] == "delta").count() > 1);
    assert_eq!(app.fake.stats().requests, upstream, "no request reached the model");

    let (status, stats) = app.get_json("/api/v1/cache").await;
    assert_eq!(status, 200);
    assert_eq!(stats["stats"]["exact_hits"], 1);
    assert!(stats["stats"]["saved_output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn other_context_system_prompt_or_model_misses() {
    let app = spawn_app_with("", Scenario::default(), "");
    let first = app.create_conversation(json!({})).await;
    assert_eq!(done(&ask(&app, &first, "Tell me a fact", true).await)["cache"], "miss");
    // Same conversation: the history now differs (it holds the first exchange).
    assert_eq!(done(&ask(&app, &first, "Tell me a fact", true).await)["cache"], "miss");
    let pirate = app.create_conversation(json!({"system_prompt": "You are a pirate"})).await;
    assert_eq!(done(&ask(&app, &pirate, "Tell me a fact", true).await)["cache"], "miss");
    let other_model = app.create_conversation(json!({"model": "fallback"})).await;
    assert_eq!(done(&ask(&app, &other_model, "Tell me a fact", true).await)["cache"], "miss");
    // And the original context still hits.
    let again = app.create_conversation(json!({})).await;
    assert_eq!(done(&ask(&app, &again, "Tell me a fact", true).await)["cache"], "exact");
}

#[tokio::test]
async fn opting_out_and_purging_reach_the_model_again() {
    let app = spawn_app_with("", Scenario::default(), "");
    let a = app.create_conversation(json!({})).await;
    ask(&app, &a, "Name a prime number", true).await;
    let before = app.fake.stats().requests;
    let b = app.create_conversation(json!({})).await;
    let opted_out = ask(&app, &b, "Name a prime number", false).await;
    assert_eq!(done(&opted_out)["cache"], "miss");
    assert_eq!(app.fake.stats().requests, before + 1);

    let purged = app.http.delete(app.url("/api/v1/cache")).send().await.unwrap();
    assert_eq!(purged.status(), 200);
    let body: Value = purged.json().await.unwrap();
    assert_eq!(body["purged"], 1);
    let c = app.create_conversation(json!({})).await;
    assert_eq!(done(&ask(&app, &c, "Name a prime number", true).await)["cache"], "miss");
    assert_eq!(app.fake.stats().requests, before + 2);
}

#[tokio::test]
async fn a_tenant_can_switch_the_cache_off() {
    let app = spawn_app_with("", Scenario::default(), "[cache.tenants.default]\nexact = false\n");
    for _ in 0..2 {
        let c = app.create_conversation(json!({})).await;
        assert_eq!(done(&ask(&app, &c, "Same question twice", true).await)["cache"], "miss");
    }
}

#[tokio::test]
async fn paraphrases_hit_the_semantic_tier_and_near_misses_do_not() {
    // A second fake serves /v1/embeddings (a hashed bag of words) in place of the model, so
    // the first fake's counter is exactly the chat requests.
    let embeddings = FakeLlmServer::start(Scenario::default()).unwrap();
    let extra = format!(
        "[cache]\nsimilarity_threshold = 0.8\n[cache.embeddings]\nbase_url = \"{}/v1\"\nmodel = \"text-embedding-3-small\"\n",
        embeddings.base_url()
    );
    let app = spawn_app_with("", Scenario::default(), &extra);
    let c = app.create_conversation(json!({})).await;
    let answered = ask(&app, &c, "Please convert 30 miles to km", true).await;
    assert_eq!(done(&answered)["cache"], "miss");
    let upstream = app.fake.stats().requests;

    let c = app.create_conversation(json!({})).await;
    let paraphrase = ask(&app, &c, "convert 30 miles to km quickly", true).await;
    assert_eq!(done(&paraphrase)["cache"], "semantic");
    assert_eq!(text_of(&paraphrase), text_of(&answered));
    assert_eq!(app.fake.stats().requests, upstream);

    // Every word is shared, so the neighbour is close; the units swapped roles.
    let c = app.create_conversation(json!({})).await;
    let swapped = ask(&app, &c, "convert 30 km to miles", true).await;
    assert_eq!(done(&swapped)["cache"], "miss");
    assert_eq!(app.fake.stats().requests, upstream + 1);
    assert!(embeddings.stats().requests >= 3, "the prompts were embedded");
    let (_, stats) = app.get_json("/api/v1/cache").await;
    assert!(stats["stats"]["rejected_by_verification"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn the_rest_message_route_honours_the_opt_out_and_reports_hits() {
    let app = spawn_app_with("", Scenario::default(), "");
    let post = |id: String, cache: bool| {
        let app = &app;
        async move {
            let response = app
                .post_json(
                    &format!("/api/v1/conversations/{id}/messages"),
                    &json!({"content": "Define entropy", "cache": cache}),
                )
                .await;
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let first = post(app.create_conversation(json!({})).await, true).await;
    assert_eq!(first["cache"], "miss");
    let before = app.fake.stats().requests;
    let second = post(app.create_conversation(json!({})).await, true).await;
    assert_eq!(second["content"], first["content"]);
    // The reply says where it came from, as the WebSocket's `done` does.
    assert_eq!(second["cache"], "exact");
    assert_eq!(second["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
    assert_eq!(app.fake.stats().requests, before);
    let opted_out = post(app.create_conversation(json!({})).await, false).await;
    assert_eq!(opted_out["cache"], "miss");
    assert_eq!(app.fake.stats().requests, before + 1);
}
