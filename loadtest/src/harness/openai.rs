//! The OpenAI-compatible driver: streamed `POST /v1/chat/completions`, as an unmodified OpenAI
//! SDK would send it. There are no sequence numbers on this wire; the report leaves those
//! checks at zero.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::client::{self, Client};
use super::scenario::Scenario;
use super::stats::{Progress, Recorder, Stats, TurnSample};

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
            progress.connected();
            let mut turn_number = 0u64;
            while Instant::now() < end {
                turn_number += 1;
                let sent = Instant::now();
                let mut sample = TurnSample {
                    second: sent.duration_since(started).as_secs(),
                    ..TurnSample::default()
                };
                let content = client::message(index, turn_number, scenario.message_size);
                match tokio::time::timeout(
                    TURN_TIMEOUT,
                    completion(&client, &content, sent, &mut sample),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(code)) => sample.error = Some(code),
                    Err(_) => sample.error = Some("client_timeout".into()),
                }
                let ok = sample.error.is_none();
                recorder.record(sample);
                progress.turn(ok);
                let think = Instant::now() + scenario.think();
                tokio::time::sleep_until(think.min(end).into()).await;
            }
            progress.disconnected();
        });
    }
    while tasks.join_next().await.is_some() {}
    let recorder =
        Arc::try_unwrap(recorder).ok().context("client tasks still hold the recorder")?;
    let mut stats = recorder.into_stats();
    stats.connections_held = progress.peak.load(std::sync::atomic::Ordering::Relaxed);
    Ok(stats)
}

async fn completion(
    client: &Client,
    content: &str,
    sent: Instant,
    sample: &mut TurnSample,
) -> Result<(), String> {
    let body = json!({
        "model": client.model.clone().unwrap_or_else(|| "auto".into()),
        "messages": [{ "role": "user", "content": content }],
        "stream": true,
        "stream_options": { "include_usage": true },
    });
    let response = client
        .post("/v1/chat/completions")
        .json(&body)
        .send()
        .await
        .map_err(|_| String::from("request_failed"))?;
    if !response.status().is_success() {
        let json: Value = response.json().await.unwrap_or_default();
        let code = json["error"]["code"]
            .as_str()
            .or(json["error"]["type"].as_str())
            .unwrap_or("http_error");
        return Err(code.to_owned());
    }
    sample.failovers = response
        .headers()
        .get("x-switchyard-failovers")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut last_delta: Option<Instant> = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| String::from("stream_broken"))?;
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            let Ok(text) = std::str::from_utf8(&event) else { continue };
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            if data == "[DONE]" {
                sample.total = Some(sent.elapsed());
                return Ok(());
            }
            let Ok(chunk) = serde_json::from_str::<Value>(data) else { continue };
            if let Some(error) = chunk.get("error") {
                return Err(error["code"].as_str().unwrap_or("stream_error").to_owned());
            }
            let has_text =
                chunk["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty());
            if has_text {
                let now = Instant::now();
                match last_delta {
                    None => sample.ttft = Some(now.duration_since(sent)),
                    Some(previous) => sample.gaps.push(now.duration_since(previous)),
                }
                last_delta = Some(now);
            }
        }
    }
    Err("stream_ended_early".into())
}
