//! The WebSocket driver: N connections held, M of them chatting continuously.
//!
//! Each connection is a task: it creates its own conversation over REST, connects, and either
//! idles (answering pings, as a browser tab would) or chats: send a message, measure the
//! reply, think, repeat. A connection the server closes mid-run reconnects and `resume`s from
//! its last seq, as a real client does, so a reconnect shows up as a reconnect, and a lost or
//! repeated event as exactly that.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::client::{self, Client};
use super::scenario::Scenario;
use super::stats::{Progress, Recorder, SeqCheck, Stats};
use super::tracker::{Frame, Progress as TurnProgress, TurnTracker};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Longest a turn may take before the client gives up on it.
const TURN_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(
    scenario: &Scenario,
    client: &Client,
    progress: Arc<Progress>,
    started: Instant,
) -> anyhow::Result<Stats> {
    let recorder = Arc::new(Recorder::default());
    let end = started + scenario.ramp_up + scenario.duration;
    let mut tasks = JoinSet::new();
    for index in 0..scenario.connections {
        // Spread connection starts evenly over the ramp-up.
        let offset = scenario.ramp_up.mul_f64(index as f64 / scenario.connections as f64);
        let job = Connection {
            index,
            chatty: index < scenario.chatting,
            scenario: scenario.clone(),
            client: client.clone(),
            recorder: recorder.clone(),
            progress: progress.clone(),
            started,
            end,
        };
        tasks.spawn(async move {
            tokio::time::sleep_until((started + offset).into()).await;
            job.run().await;
        });
    }
    while tasks.join_next().await.is_some() {}
    let recorder =
        Arc::try_unwrap(recorder).ok().context("connection tasks still hold the recorder")?;
    let mut stats = recorder.into_stats();
    stats.connections_held = progress.peak.load(std::sync::atomic::Ordering::Relaxed);
    Ok(stats)
}

struct Connection {
    index: usize,
    chatty: bool,
    scenario: Scenario,
    client: Client,
    recorder: Arc<Recorder>,
    progress: Arc<Progress>,
    started: Instant,
    end: Instant,
}

impl Connection {
    async fn run(self) {
        let conversation = match self.client.create_conversation().await {
            Ok(id) => id,
            Err(_) => return self.fail("setup_failed"),
        };
        let Some(mut socket) = self.connect(&conversation, None).await else { return };
        self.progress.connected();
        if self.chatty {
            socket = self.chat(socket, &conversation).await.unwrap_or_else(|s| s);
        } else {
            self.idle(&mut socket).await;
        }
        let _ = socket.close(None).await;
        self.progress.disconnected();
    }

    fn fail(&self, code: &str) {
        self.recorder.with(|s| s.error(code));
        self.progress.turn(false);
    }

    async fn connect(&self, conversation: &str, resume_after: Option<u64>) -> Option<Socket> {
        let url = self.client.ws_url(conversation);
        let mut socket = match tokio_tungstenite::connect_async(url).await {
            Ok((socket, _)) => socket,
            Err(_) => {
                self.fail("connect_failed");
                return None;
            }
        };
        if let Some(token) = &self.client.token {
            let frame = json!({ "type": "auth", "token": token }).to_string();
            if socket.send(Message::Text(frame.into())).await.is_err() {
                self.fail("connect_failed");
                return None;
            }
        }
        if let Some(after_seq) = resume_after {
            let frame = json!({ "type": "resume", "after_seq": after_seq }).to_string();
            if socket.send(Message::Text(frame.into())).await.is_err() {
                self.fail("connect_failed");
                return None;
            }
        }
        Some(socket)
    }

    /// Holds the socket open, reading (so pings are answered) until the run ends.
    async fn idle(&self, socket: &mut Socket) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(self.end.into()) => return,
                message = socket.next() => match message {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        self.fail("closed_by_server");
                        return;
                    }
                    Some(Ok(_)) => {}
                }
            }
        }
    }

    /// Chats until the run ends; returns the socket to close (Err: it was replaced).
    async fn chat(&self, mut socket: Socket, conversation: &str) -> Result<Socket, Socket> {
        let mut seq = SeqCheck::default();
        let mut turn_number = 0u64;
        while Instant::now() < self.end {
            turn_number += 1;
            let content = client::message(self.index, turn_number, self.scenario.message_size);
            let client_id = format!("{}-{turn_number}", self.index);
            let frame =
                json!({ "type": "user_message", "client_id": client_id, "content": content });
            let sent = Instant::now();
            if socket.send(Message::Text(frame.to_string().into())).await.is_err() {
                self.fail("send_failed");
                break;
            }
            let second = sent.duration_since(self.started).as_secs();
            let mut turn = TurnTracker::new(sent, second);
            let deadline = sent + TURN_TIMEOUT;
            let finished = loop {
                let message = match tokio::time::timeout_at(deadline.into(), socket.next()).await {
                    Err(_) => break false,
                    Ok(message) => message,
                };
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        // The server dropped us (restart, fell behind): reconnect and resume.
                        self.recorder.with(|s| s.reconnects += 1);
                        match self.connect(conversation, seq.last()).await {
                            Some(fresh) => {
                                socket = fresh;
                                continue;
                            }
                            None => return Err(socket),
                        }
                    }
                    Some(Ok(_)) => continue,
                };
                let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else {
                    self.recorder.with(|s| s.error("unparseable_frame"));
                    continue;
                };
                if turn.observe(&frame, Instant::now(), &mut seq) == TurnProgress::Finished {
                    break true;
                }
            };
            let sample = if finished { turn.sample } else { turn.timed_out() };
            let ok = sample.error.is_none();
            self.recorder.record(sample);
            self.progress.turn(ok);
            if !finished {
                break;
            }
            let think = Instant::now() + self.scenario.think_time;
            tokio::time::sleep_until(think.min(self.end).into()).await;
        }
        self.recorder.with(|s| {
            s.lost_events += seq.lost;
            s.duplicated_events += seq.duplicated;
        });
        Ok(socket)
    }
}
