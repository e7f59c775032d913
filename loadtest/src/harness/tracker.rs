//! One turn as a client sees it, fed frame by frame: shared by the WebSocket and SSE drivers,
//! which carry the same events.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::stats::{SeqCheck, TurnSample};

/// The fields of a conversation event the harness looks at; the text is not even copied.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub seq: Option<u64>,
    pub code: Option<&'a str>,
    pub cache: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    /// On `interrupted`: the seqs after it and before the event's own will never come.
    pub lost_after: Option<u64>,
}

/// One connection's record of which messages already got their terminal event, to catch a
/// second one.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Message id → the terminal event it got (`done seq 41`), to describe a second one.
    terminated: HashMap<String, String>,
    pub duplicate_terminals: u64,
}

/// Where a turn stands after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Running,
    Finished,
}

/// Measures one turn from the moment its message was sent.
#[derive(Debug)]
pub struct TurnTracker {
    sent: Instant,
    last_delta: Option<Instant>,
    /// The `client_id` sent with the message: only its `ack` is this turn's.
    client_id: Option<String>,
    /// From the `ack`: only a terminal event replying to it ends this turn.
    message_id: Option<String>,
    pub sample: TurnSample,
}

impl TurnTracker {
    pub fn new(sent: Instant, second: u64) -> Self {
        Self {
            sent,
            last_delta: None,
            client_id: None,
            message_id: None,
            sample: TurnSample { second, ..TurnSample::default() },
        }
    }

    /// Matches the turn to its message: only the `ack` echoing `client_id`, and then only the
    /// terminal event whose `reply_to` is that message, count. Without it any `ack` and any
    /// terminal event do (one client per conversation, no reconnects).
    pub fn for_client_id(mut self, client_id: &str) -> Self {
        self.client_id = Some(client_id.to_owned());
        self
    }

    /// The message was acknowledged (durably stored).
    pub fn acked(&self) -> bool {
        self.sample.ack.is_some()
    }

    /// Feeds one frame. Events of other clients' turns (a conversation watched by several)
    /// still go through the sequence check.
    pub fn observe(&mut self, frame: &Frame<'_>, now: Instant, seq: &mut SeqCheck) -> Progress {
        self.observe_in(frame, now, seq, &mut Ledger::default())
    }

    /// [`TurnTracker::observe`], also checking terminal events against the connection's
    /// `ledger`. A frame whose seq was already seen (a `resume` replay) is skipped.
    pub fn observe_in(
        &mut self,
        frame: &Frame<'_>,
        now: Instant,
        seq: &mut SeqCheck,
        ledger: &mut Ledger,
    ) -> Progress {
        if let (Some(n), Some(after)) = (frame.seq, frame.lost_after) {
            seq.forgive(after, n);
        }
        if let Some(n) = frame.seq
            && !seq.observe(n)
        {
            return Progress::Running;
        }
        let terminal = matches!(frame.kind, "done" | "interrupted")
            || (frame.kind == "error" && frame.seq.is_some());
        if terminal && let Some(reply_to) = frame.reply_to {
            let this = format!("{} seq {}", frame.kind, frame.seq.unwrap_or(0));
            if let Some(first) = ledger.terminated.get(reply_to) {
                ledger.duplicate_terminals += 1;
                // Rare and always a bug somewhere: say exactly what arrived.
                eprintln!("\nmessage {reply_to} got a second terminal event: {first}, then {this}");
            } else {
                ledger.terminated.insert(reply_to.to_owned(), this);
            }
            if self.client_id.is_some() && self.message_id.as_deref() != Some(reply_to) {
                // Another message's end (one this client gave up on, or another watcher's).
                return Progress::Running;
            }
        }
        let since = now.duration_since(self.sent);
        match frame.kind {
            "ack" => {
                if self.client_id.is_some() && frame.client_id != self.client_id.as_deref() {
                    return Progress::Running;
                }
                self.message_id = frame.message_id.map(str::to_owned);
                self.sample.ack = Some(since);
            }
            "delta" => {
                match self.last_delta {
                    None => self.sample.ttft = Some(since),
                    Some(previous) => self.sample.gaps.push(now.duration_since(previous)),
                }
                self.last_delta = Some(now);
            }
            "failover" => self.sample.failovers += 1,
            "done" => {
                self.sample.total = Some(since);
                self.sample.cache_hit = frame.cache.is_some_and(|c| c != "miss");
                return Progress::Finished;
            }
            "error" | "interrupted" => {
                self.sample.error = Some(frame.code.unwrap_or(frame.kind).to_owned());
                return Progress::Finished;
            }
            _ => {}
        }
        Progress::Running
    }

    /// The turn got no terminal event in time: `acked_without_terminal` if its message was
    /// acknowledged (a broken promise), else plain `client_timeout`.
    pub fn timed_out(mut self) -> TurnSample {
        let code = if self.acked() { "acked_without_terminal" } else { "client_timeout" };
        self.sample.error = Some(code.into());
        self.sample
    }

    pub fn elapsed(&self) -> Duration {
        self.sent.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &str) -> Frame<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn measures_ack_first_token_gaps_and_end() {
        let start = Instant::now();
        let mut seq = SeqCheck::default();
        let mut turn = TurnTracker::new(start, 0);
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(
            turn.observe(&frame(r#"{"type":"ack","seq":1,"client_id":"c"}"#), at(2), &mut seq),
            Progress::Running
        );
        turn.observe(&frame(r#"{"type":"delta","seq":2,"text":"a"}"#), at(10), &mut seq);
        turn.observe(
            &frame(r#"{"type":"failover","seq":3,"from":"x","to":"y"}"#),
            at(12),
            &mut seq,
        );
        turn.observe(&frame(r#"{"type":"delta","seq":4,"text":"b"}"#), at(30), &mut seq);
        let end =
            turn.observe(&frame(r#"{"type":"done","seq":5,"cache":"exact"}"#), at(31), &mut seq);
        assert_eq!(end, Progress::Finished);
        let s = turn.sample;
        assert_eq!(s.ack, Some(Duration::from_millis(2)));
        assert_eq!(s.ttft, Some(Duration::from_millis(10)));
        assert_eq!(s.gaps, [Duration::from_millis(20)]);
        assert_eq!((s.failovers, s.cache_hit, s.error), (1, true, None));
        assert_eq!((seq.lost, seq.duplicated), (0, 0));
    }

    #[test]
    fn only_this_messages_ack_and_terminal_count_and_a_second_terminal_is_caught() {
        let start = Instant::now();
        let mut seq = SeqCheck::default();
        let mut ledger = Ledger::default();
        let mut turn = TurnTracker::new(start, 0).for_client_id("c2");
        let mut feed = |turn: &mut TurnTracker, json: &str| {
            turn.observe_in(&frame(json), start, &mut seq, &mut ledger)
        };
        // The previous turn's late end and another message's ack do not touch this turn.
        let late = r#"{"type":"done","seq":1,"message_id":"r1","reply_to":"m1"}"#;
        assert_eq!(feed(&mut turn, late), Progress::Running);
        feed(&mut turn, r#"{"type":"ack","seq":2,"client_id":"c9","message_id":"m9"}"#);
        assert!(!turn.acked());
        feed(&mut turn, r#"{"type":"ack","seq":3,"client_id":"c2","message_id":"m2"}"#);
        assert!(turn.acked());
        // A replayed frame (seq already seen) is skipped, not a second end.
        assert_eq!(feed(&mut turn, late), Progress::Running);
        let twice = r#"{"type":"interrupted","seq":4,"message_id":"r1b","reply_to":"m1"}"#;
        assert_eq!(feed(&mut turn, twice), Progress::Running);
        let end = r#"{"type":"done","seq":5,"message_id":"r2","reply_to":"m2"}"#;
        assert_eq!(feed(&mut turn, end), Progress::Finished);
        assert_eq!(ledger.duplicate_terminals, 1);
        assert_eq!((seq.lost, seq.duplicated), (0, 1));
    }

    #[test]
    fn an_acked_turn_that_never_ends_is_a_broken_promise() {
        let mut seq = SeqCheck::default();
        let mut turn = TurnTracker::new(Instant::now(), 0).for_client_id("c");
        turn.observe(
            &frame(r#"{"type":"ack","seq":1,"client_id":"c","message_id":"m"}"#),
            Instant::now(),
            &mut seq,
        );
        assert_eq!(turn.timed_out().error.as_deref(), Some("acked_without_terminal"));
        let unacked = TurnTracker::new(Instant::now(), 0);
        assert_eq!(unacked.timed_out().error.as_deref(), Some("client_timeout"));
    }

    #[test]
    fn a_turn_error_ends_the_turn_with_its_code() {
        let mut seq = SeqCheck::default();
        let mut turn = TurnTracker::new(Instant::now(), 0);
        let end = turn.observe(
            &frame(r#"{"type":"error","code":"rate_limited","message":"x"}"#),
            Instant::now(),
            &mut seq,
        );
        assert_eq!(end, Progress::Finished);
        assert_eq!(turn.sample.error.as_deref(), Some("rate_limited"));
    }
}
