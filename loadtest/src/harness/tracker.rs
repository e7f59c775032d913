//! One turn as a client sees it, fed frame by frame: shared by the WebSocket and SSE drivers,
//! which carry the same events.

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
    pub sample: TurnSample,
}

impl TurnTracker {
    pub fn new(sent: Instant, second: u64) -> Self {
        Self { sent, last_delta: None, sample: TurnSample { second, ..TurnSample::default() } }
    }

    /// Feeds one frame. Events of other clients' turns (a conversation watched by several)
    /// still go through the sequence check.
    pub fn observe(&mut self, frame: &Frame<'_>, now: Instant, seq: &mut SeqCheck) -> Progress {
        if let Some(n) = frame.seq {
            seq.observe(n);
        }
        let since = now.duration_since(self.sent);
        match frame.kind {
            "ack" => self.sample.ack = Some(since),
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

    pub fn timed_out(mut self) -> TurnSample {
        self.sample.error = Some("client_timeout".into());
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
