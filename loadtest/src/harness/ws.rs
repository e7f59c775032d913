//! The WebSocket driver: N connections held, M of them chatting continuously.
//!
//! Each connection is a task: it creates its own conversation over REST, connects, and either
//! idles (answering pings, as a browser tab would) or chats: send a message, measure the
//! reply, think, repeat. A connection the server closes mid-run reconnects and `resume`s from
//! its last seq, as a real client does, so a reconnect shows up as a reconnect, and a lost or
//! repeated event as exactly that. Given several targets (`--target http://a,http://b`),
//! connections spread over them and a reconnect tries the next one, so a node can die under
//! load (the chaos drills, `loadtest/chaos/`).
//!
//! Each turn is matched to its message (the `ack` echoing its `client_id`, then the terminal
//! event replying to that message), so a turn that was acknowledged and never ended is counted
//! as `acked_without_terminal`, and a second terminal event as `duplicate_terminals`: both
//! must stay zero. A seq hole makes the client `resume` from below it on the same socket.

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
use super::tracker::{Frame, Ledger, Progress as TurnProgress, TurnTracker};

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
    let recorder = Arc::new(Recorder::steady_from(scenario.steady_from_second()));
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

/// How long a client that reconnected mid-turn waits for the replayed `ack` of its message
/// before concluding the message never reached the store (and moving on).
const ACK_AFTER_RECONNECT: Duration = Duration::from_secs(5);

/// A turn silent this long gets a `resume` on its socket, as a client with a watchdog would.
const STALL_RESUME: Duration = Duration::from_secs(10);

/// Backoff between reconnect attempts: doubling from the first to the last.
const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_millis(1000));

impl Connection {
    async fn run(self) {
        let conversation = match self.client.create_conversation().await {
            Ok(id) => id,
            Err(error) => {
                // The first few say why (the code alone does not), without flooding the run.
                static SHOWN: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                if SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
                    eprintln!("\nconnection {}: {error:#}", self.index);
                }
                return self.fail("setup_failed");
            }
        };
        // Spread over the targets; a reconnect moves on to the next one.
        let mut target = self.index;
        let Some(mut socket) = self.connect(&conversation, None, &mut target).await else {
            return;
        };
        self.progress.connected();
        if self.chatty {
            socket = self.chat(socket, &conversation, &mut target).await.unwrap_or_else(|s| s);
        } else {
            self.idle(&mut socket, &conversation, &mut target).await;
        }
        let _ = socket.close(None).await;
        self.progress.disconnected();
    }

    fn fail(&self, code: &str) {
        self.recorder.with(|s| s.error(code));
        self.progress.turn(false);
    }

    /// Connects (and resumes after `resume_after`), retrying with backoff and moving to the
    /// next target after each failure, until the run ends.
    async fn connect(
        &self,
        conversation: &str,
        resume_after: Option<u64>,
        target: &mut usize,
    ) -> Option<Socket> {
        let mut backoff = RECONNECT_BACKOFF.0;
        loop {
            if let Some(socket) = self.try_connect(conversation, resume_after, *target).await {
                return Some(socket);
            }
            *target += 1;
            if Instant::now() + backoff >= self.end {
                self.fail("connect_failed");
                return None;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
        }
    }

    async fn try_connect(
        &self,
        conversation: &str,
        resume_after: Option<u64>,
        target: usize,
    ) -> Option<Socket> {
        let url = self.client.ws_url_on(target, conversation);
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.ok()?;
        if let Some(token) = self.client.token_on(target) {
            let frame = json!({ "type": "auth", "token": token }).to_string();
            socket.send(Message::Text(frame.into())).await.ok()?;
        }
        if let Some(after_seq) = resume_after {
            let frame = json!({ "type": "resume", "after_seq": after_seq }).to_string();
            socket.send(Message::Text(frame.into())).await.ok()?;
        }
        Some(socket)
    }

    /// Holds the socket open, reading (so pings are answered) until the run ends; a socket the
    /// server drops is reopened, as a browser tab would.
    async fn idle(&self, socket: &mut Socket, conversation: &str, target: &mut usize) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(self.end.into()) => return,
                message = socket.next() => match message {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        self.recorder.with(|s| s.reconnects += 1);
                        *target += 1;
                        match self.connect(conversation, None, target).await {
                            Some(fresh) => *socket = fresh,
                            None => return,
                        }
                    }
                    Some(Ok(_)) => {}
                }
            }
        }
    }

    /// Chats until the run ends; returns the socket to close (Err: it was replaced).
    async fn chat(
        &self,
        mut socket: Socket,
        conversation: &str,
        target: &mut usize,
    ) -> Result<Socket, Socket> {
        let mut seq = SeqCheck::default();
        let mut ledger = Ledger::default();
        let mut turn_number = 0u64;
        let first = Instant::now() + self.scenario.first_message_delay();
        tokio::time::sleep_until(first.min(self.end).into()).await;
        while Instant::now() < self.end {
            turn_number += 1;
            let content = client::message(self.index, turn_number, self.scenario.message_size);
            let client_id = format!("{}-{turn_number}", self.index);
            let frame =
                json!({ "type": "user_message", "client_id": client_id, "content": content });
            let sent = Instant::now();
            let second = sent.duration_since(self.started).as_secs();
            let mut turn = TurnTracker::new(sent, second).for_client_id(&client_id);
            let mut deadline = sent + TURN_TIMEOUT;
            let mut dropped_unacked = false;
            if socket.send(Message::Text(frame.to_string().into())).await.is_err() {
                // The socket died before the message left: reconnect; nothing was
                // acknowledged, so the turn counts as refused.
                self.recorder.with(|s| s.reconnects += 1);
                *target += 1;
                let fresh = self.connect(conversation, seq.last(), target).await;
                self.close_turn(turn, false, true);
                match fresh {
                    Some(fresh) => {
                        socket = fresh;
                        seq.resumed();
                        continue;
                    }
                    None => {
                        self.tally(&seq, &ledger);
                        return Err(socket);
                    }
                }
            }
            let mut quiet_until = Instant::now() + STALL_RESUME;
            let finished = loop {
                let wake = deadline.min(quiet_until);
                let message = match tokio::time::timeout_at(wake.into(), socket.next()).await {
                    Err(_) if Instant::now() >= deadline => break false,
                    Err(_) => {
                        // Silence mid-turn (an event lost between nodes?): ask for a replay.
                        quiet_until = Instant::now() + STALL_RESUME;
                        let after = seq.last().unwrap_or(0);
                        let frame = json!({ "type": "resume", "after_seq": after }).to_string();
                        if socket.send(Message::Text(frame.into())).await.is_ok() {
                            seq.resumed();
                            self.recorder.with(|s| s.gap_resumes += 1);
                        }
                        continue;
                    }
                    Ok(message) => message,
                };
                quiet_until = Instant::now() + STALL_RESUME;
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        // The server dropped us (restart, crash, fell behind): reconnect
                        // (to the next node) and resume after the last seq seen without a hole.
                        self.recorder.with(|s| s.reconnects += 1);
                        *target += 1;
                        match self.connect(conversation, seq.last(), target).await {
                            Some(fresh) => {
                                socket = fresh;
                                seq.resumed();
                                if !turn.acked() {
                                    // Either the replay brings our ack, or the message
                                    // never got stored.
                                    dropped_unacked = true;
                                    deadline = deadline.min(Instant::now() + ACK_AFTER_RECONNECT);
                                }
                                continue;
                            }
                            None => {
                                self.close_turn(turn, false, dropped_unacked);
                                self.tally(&seq, &ledger);
                                return Err(socket);
                            }
                        }
                    }
                    Some(Ok(_)) => continue,
                };
                let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else {
                    self.recorder.with(|s| s.error("unparseable_frame"));
                    continue;
                };
                let progress = turn.observe_in(&frame, Instant::now(), &mut seq, &mut ledger);
                if progress == TurnProgress::Finished {
                    break true;
                }
                if turn.acked() {
                    deadline = sent + TURN_TIMEOUT;
                }
                if seq.needs_resume() {
                    // A hole: ask for the replay on this socket, as a careful client does.
                    let after = seq.last().unwrap_or(0);
                    let frame = json!({ "type": "resume", "after_seq": after }).to_string();
                    if socket.send(Message::Text(frame.into())).await.is_ok() {
                        seq.resumed();
                        self.recorder.with(|s| s.gap_resumes += 1);
                    }
                }
            };
            self.close_turn(turn, finished, dropped_unacked);
            let think = Instant::now() + self.scenario.think();
            tokio::time::sleep_until(think.min(self.end).into()).await;
        }
        self.tally(&seq, &ledger);
        Ok(socket)
    }

    /// Records a turn: finished, timed out after its ack (a lost terminal event), or dropped
    /// before any ack by a connection loss (`unacked_on_reconnect`: the message never got in).
    fn close_turn(&self, turn: TurnTracker, finished: bool, dropped_unacked: bool) {
        let acked = turn.acked();
        let sample = match (finished, acked, dropped_unacked) {
            (true, _, _) => turn.sample,
            (false, false, true) => {
                let mut sample = turn.sample;
                sample.error = Some("unacked_on_reconnect".into());
                sample
            }
            (false, _, _) => turn.timed_out(),
        };
        if !finished && acked {
            self.recorder.with(|s| s.acked_without_terminal += 1);
        }
        let ok = sample.error.is_none();
        self.recorder.record(sample);
        self.progress.turn(ok);
    }

    fn tally(&self, seq: &SeqCheck, ledger: &Ledger) {
        self.recorder.with(|s| {
            s.lost_events += seq.lost;
            s.duplicated_events += seq.duplicated;
            s.skipped_events += seq.skipped;
            s.duplicate_terminals += ledger.duplicate_terminals;
        });
    }
}
