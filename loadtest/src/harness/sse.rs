//! The REST + Server-Sent Events driver: each client loop posts a message with
//! `"stream": true` and reads the same events the WebSocket carries from the response body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::json;
use tokio::task::JoinSet;

use super::client::{self, Client};
use super::scenario::Scenario;
use super::stats::{Progress, Recorder, SeqCheck, Stats};
use super::tracker::{Frame, Progress as TurnProgress, TurnTracker};

const TURN_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(
    scenario: &Scenario,
    client: &Client,
    progress: Arc<Progress>,
    started: Instant,
) -> anyhow::Result<Stats> {
    let recorder = Arc::new(Recorder::steady_from(scenario.steady_from_second()));
    let end = started + scenario.ramp_up + scenario.duration;
    let loops = scenario.chatting.max(1);
    let mut tasks = JoinSet::new();
    for index in 0..loops {
        let offset = scenario.ramp_up.mul_f64(index as f64 / loops as f64);
        let (scenario, client, recorder, progress) =
            (scenario.clone(), client.clone(), recorder.clone(), progress.clone());
        tasks.spawn(async move {
            tokio::time::sleep_until((started + offset).into()).await;
            client_loop(index, &scenario, &client, &recorder, &progress, started, end).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    let recorder =
        Arc::try_unwrap(recorder).ok().context("client tasks still hold the recorder")?;
    let mut stats = recorder.into_stats();
    stats.connections_held = progress.peak.load(std::sync::atomic::Ordering::Relaxed);
    Ok(stats)
}

async fn client_loop(
    index: usize,
    scenario: &Scenario,
    client: &Client,
    recorder: &Recorder,
    progress: &Progress,
    started: Instant,
    end: Instant,
) {
    let Ok(conversation) = client.create_conversation().await else {
        recorder.with(|s| s.error("setup_failed"));
        return;
    };
    progress.connected();
    let mut seq = SeqCheck::default();
    let mut turn_number = 0u64;
    while Instant::now() < end {
        turn_number += 1;
        let content = client::message(index, turn_number, scenario.message_size);
        let sent = Instant::now();
        let mut turn = TurnTracker::new(sent, sent.duration_since(started).as_secs());
        let body = json!({ "content": content, "stream": true, "client_id": format!("{index}-{turn_number}") });
        let outcome = tokio::time::timeout(
            TURN_TIMEOUT,
            stream_turn(client, &conversation, body, &mut turn, &mut seq),
        )
        .await;
        let sample = match outcome {
            Ok(Ok(())) => turn.sample,
            Ok(Err(code)) => {
                turn.sample.error = Some(code);
                turn.sample
            }
            Err(_) => turn.timed_out(),
        };
        let ok = sample.error.is_none();
        recorder.record(sample);
        progress.turn(ok);
        let think = Instant::now() + scenario.think();
        tokio::time::sleep_until(think.min(end).into()).await;
    }
    recorder.with(|s| {
        s.lost_events += seq.lost;
        s.duplicated_events += seq.duplicated;
        s.skipped_events += seq.skipped;
    });
    progress.disconnected();
}

/// Posts one message and reads its SSE events to the end of the turn; `Err` is an error code.
async fn stream_turn(
    client: &Client,
    conversation: &str,
    body: serde_json::Value,
    turn: &mut TurnTracker,
    seq: &mut SeqCheck,
) -> Result<(), String> {
    let response = client
        .post(&format!("/api/v1/conversations/{conversation}/messages"))
        .json(&body)
        .send()
        .await
        .map_err(|_| String::from("request_failed"))?;
    if !response.status().is_success() {
        let json: serde_json::Value = response.json().await.unwrap_or_default();
        return Err(json["error"]["code"].as_str().unwrap_or("http_error").to_owned());
    }
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| String::from("stream_broken"))?;
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            let Ok(text) = std::str::from_utf8(&event) else { continue };
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            let Ok(frame) = serde_json::from_str::<Frame<'_>>(data) else { continue };
            if turn.observe(&frame, Instant::now(), seq) == TurnProgress::Finished {
                return match turn.sample.error.take() {
                    Some(code) => Err(code),
                    None => Ok(()),
                };
            }
        }
    }
    Err("stream_ended_early".into())
}
