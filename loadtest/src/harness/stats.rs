//! Measurements: HDR histograms (microseconds), errors by code, sequence checks, and a
//! per-second time series, behind one lock taken once per turn (not per token), plus lock-free
//! counters for the progress line.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency recorded (longer ones are clamped): 10 minutes, in µs.
const MAX_MICROS: u64 = 600_000_000;

#[allow(clippy::expect_used, reason = "constant bounds that hdrhistogram accepts")]
fn histogram() -> Histogram<u64> {
    // Two significant digits keep one histogram near 16 KiB; percentiles are within 1%.
    Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("valid histogram bounds")
}

/// Everything measured in a run.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Sending a user message → its `ack` (the durable write).
    pub ack: Histogram<u64>,
    /// Sending a user message → the first delta of the reply.
    pub ttft: Histogram<u64>,
    /// Between two deltas of one reply.
    pub gap: Histogram<u64>,
    /// Sending a user message → `done`.
    pub turn: Histogram<u64>,
    pub turns_completed: u64,
    pub failovers: u64,
    pub cache_hits: u64,
    pub errors: BTreeMap<String, u64>,
    /// Sequence numbers skipped (an event the client never saw).
    pub lost_events: u64,
    /// Sequence numbers seen twice.
    pub duplicated_events: u64,
    /// Sequence numbers an `interrupted` event declared never to be delivered (a crash's jump
    /// over seqs lost with the node or reserved and never used): missing, but not lost.
    pub skipped_events: u64,
    /// Peak of connections open at once.
    pub connections_held: u64,
    /// Times a client was dropped by the server mid-run and reconnected with `resume`.
    pub reconnects: u64,
    /// Times a client saw a seq hole and sent `resume` on the same socket.
    pub gap_resumes: u64,
    /// Acknowledged messages that got no terminal event (`done`/`error`/`interrupted`) in
    /// time: must be zero.
    pub acked_without_terminal: u64,
    /// A second terminal event for a message that already had one: must be zero.
    pub duplicate_terminals: u64,
    /// Second of the run → turns finished in it and their time to first token.
    pub timeline: BTreeMap<u64, Bucket>,
    /// The same latencies for the turns sent once every connection was open.
    pub steady: Steady,
}

/// The turns sent from `from_second` on (the end of the ramp-up): the load a budget is stated
/// for, without the ramp's connection set-up (a conversation created and a socket upgraded
/// for every new client) competing with it. Everything else in [`Stats`] covers the whole run.
#[derive(Debug, Clone)]
pub struct Steady {
    pub from_second: u64,
    pub ack: Histogram<u64>,
    pub ttft: Histogram<u64>,
    pub turn: Histogram<u64>,
    pub turns_completed: u64,
    pub errors: u64,
}

impl Steady {
    fn from(from_second: u64) -> Steady {
        Steady {
            from_second,
            ack: histogram(),
            ttft: histogram(),
            turn: histogram(),
            turns_completed: 0,
            errors: 0,
        }
    }

    fn record(&mut self, sample: &TurnSample) {
        if sample.second < self.from_second {
            return;
        }
        if let Some(d) = sample.ack {
            let _ = self.ack.record(micros(d));
        }
        if let Some(d) = sample.ttft {
            let _ = self.ttft.record(micros(d));
        }
        if sample.error.is_some() {
            self.errors += 1;
            return;
        }
        self.turns_completed += 1;
        if let Some(d) = sample.total {
            let _ = self.turn.record(micros(d));
        }
    }

    fn merge(&mut self, other: &Steady) {
        let _ = self.ack.add(&other.ack);
        let _ = self.ttft.add(&other.ttft);
        let _ = self.turn.add(&other.turn);
        self.turns_completed += other.turns_completed;
        self.errors += other.errors;
    }
}

#[derive(Debug, Clone)]
pub struct Bucket {
    pub turns: u64,
    pub errors: u64,
    pub ttft: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            ack: histogram(),
            ttft: histogram(),
            gap: histogram(),
            turn: histogram(),
            turns_completed: 0,
            failovers: 0,
            cache_hits: 0,
            errors: BTreeMap::new(),
            lost_events: 0,
            duplicated_events: 0,
            skipped_events: 0,
            connections_held: 0,
            reconnects: 0,
            gap_resumes: 0,
            acked_without_terminal: 0,
            duplicate_terminals: 0,
            timeline: BTreeMap::new(),
            steady: Steady::from(0),
        }
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_MICROS)
}

/// What one turn measured, recorded in one go.
#[derive(Debug, Default)]
pub struct TurnSample {
    /// Second of the run the turn started in.
    pub second: u64,
    pub ack: Option<Duration>,
    pub ttft: Option<Duration>,
    pub gaps: Vec<Duration>,
    pub total: Option<Duration>,
    pub failovers: u64,
    pub cache_hit: bool,
    /// The turn's error code, if it failed.
    pub error: Option<String>,
}

impl Stats {
    /// Stats whose steady-state figures start at `from_second` of the run.
    pub fn steady_from(from_second: u64) -> Stats {
        Stats { steady: Steady::from(from_second), ..Stats::default() }
    }

    pub fn record(&mut self, sample: TurnSample) {
        self.steady.record(&sample);
        if let Some(d) = sample.ack {
            let _ = self.ack.record(micros(d));
        }
        for gap in &sample.gaps {
            let _ = self.gap.record(micros(*gap));
        }
        self.failovers += sample.failovers;
        let bucket = self.timeline.entry(sample.second).or_insert_with(|| Bucket {
            turns: 0,
            errors: 0,
            ttft: histogram(),
        });
        if let Some(d) = sample.ttft {
            let _ = self.ttft.record(micros(d));
            let _ = bucket.ttft.record(micros(d));
        }
        match sample.error {
            Some(code) => {
                bucket.errors += 1;
                *self.errors.entry(code).or_insert(0) += 1;
            }
            None => {
                bucket.turns += 1;
                self.turns_completed += 1;
                self.cache_hits += u64::from(sample.cache_hit);
                if let Some(d) = sample.total {
                    let _ = self.turn.record(micros(d));
                }
            }
        }
    }

    pub fn error(&mut self, code: impl Into<String>) {
        *self.errors.entry(code.into()).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: Stats) {
        let _ = self.ack.add(&other.ack);
        let _ = self.ttft.add(&other.ttft);
        let _ = self.gap.add(&other.gap);
        let _ = self.turn.add(&other.turn);
        self.turns_completed += other.turns_completed;
        self.failovers += other.failovers;
        self.cache_hits += other.cache_hits;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_insert(0) += n;
        }
        self.lost_events += other.lost_events;
        self.duplicated_events += other.duplicated_events;
        self.skipped_events += other.skipped_events;
        self.connections_held = self.connections_held.max(other.connections_held);
        self.reconnects += other.reconnects;
        self.gap_resumes += other.gap_resumes;
        self.acked_without_terminal += other.acked_without_terminal;
        self.duplicate_terminals += other.duplicate_terminals;
        self.steady.merge(&other.steady);
        for (second, bucket) in other.timeline {
            let mine = self.timeline.entry(second).or_insert_with(|| Bucket {
                turns: 0,
                errors: 0,
                ttft: histogram(),
            });
            mine.turns += bucket.turns;
            mine.errors += bucket.errors;
            let _ = mine.ttft.add(&bucket.ttft);
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Checks one conversation's sequence numbers as events arrive, as a careful client would:
/// a hole (a seq skipped) is remembered, and the client `resume`s from below it
/// ([`SeqCheck::needs_resume`]); frames the replay hands back again are not duplicates, and a
/// hole the replay fills is not lost. `lost` is what is still missing, `duplicated` what came
/// twice outside a replay.
#[derive(Debug, Default)]
pub struct SeqCheck {
    /// Every seq up to here was seen (`None`: nothing yet).
    floor: Option<u64>,
    /// Seqs seen above a hole (`> floor + 1`).
    above: BTreeSet<u64>,
    max: Option<u64>,
    resync: Resync,
    /// The floor a `resume` was last sent for: one resume per hole.
    resumed_from: Option<u64>,
    /// Holes given up on (the set above grew too large), already counted in `lost`.
    written_off: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Missing seqs the engine declared will never come ([`SeqCheck::forgive`]).
    pub skipped: u64,
}

/// Where a `resume` stands: frames sent before it was served, then the replay, then live.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Resync {
    #[default]
    Off,
    /// Resume sent; the replay starts at the first frame already seen or filling the hole.
    Waiting,
    /// Replaying: frames already seen are expected; the first one past `max` ends it.
    Replaying,
}

/// Seqs kept above a hole before it is written off as lost (a crash hole never fills).
const MAX_ABOVE: usize = 4096;

impl SeqCheck {
    /// Starts from a known position (after a `resume`).
    pub fn starting_after(seq: u64) -> Self {
        Self { floor: Some(seq), ..Self::default() }
    }

    /// Feeds one seq; `false` when it was already seen (a replay or a duplicate), so the
    /// caller does not count its event twice.
    pub fn observe(&mut self, seq: u64) -> bool {
        let seen = self.floor.is_some_and(|f| seq <= f) || self.above.contains(&seq);
        match self.resync {
            Resync::Waiting if seen || self.floor.is_some_and(|f| seq == f + 1) => {
                self.resync = Resync::Replaying;
            }
            Resync::Replaying if self.max.is_some_and(|m| seq > m) => self.resync = Resync::Off,
            _ => {}
        }
        if seen {
            if self.resync == Resync::Off {
                self.duplicated += 1;
            }
            return false;
        }
        self.record(seq);
        true
    }

    /// The engine declared that the seqs after `after` and before `before` will never come
    /// (an `interrupted` event's `lost_after`): those not seen yet count as `skipped`, and
    /// are no hole to resume for.
    pub fn forgive(&mut self, after: u64, before: u64) {
        let Some(floor) = self.floor else { return };
        for seq in after.max(floor) + 1..before {
            if !self.above.contains(&seq) {
                self.skipped += 1;
                self.record(seq);
            }
        }
    }

    /// Marks an unseen `seq` seen.
    fn record(&mut self, seq: u64) {
        self.max = Some(self.max.map_or(seq, |m| m.max(seq)));
        match self.floor {
            None => self.floor = Some(seq),
            Some(f) if seq == f + 1 => {
                let mut f = seq;
                while self.above.remove(&(f + 1)) {
                    f += 1;
                }
                self.floor = Some(f);
            }
            Some(_) => {
                self.above.insert(seq);
                if self.above.len() > MAX_ABOVE {
                    self.written_off += self.holes();
                    self.above.clear();
                    self.floor = self.max;
                }
            }
        }
        self.lost = self.written_off + self.holes();
    }

    /// Seqs missing between the floor and the highest seen.
    fn holes(&self) -> u64 {
        match (self.floor, self.max) {
            (Some(f), Some(m)) => (m - f) - self.above.len() as u64,
            _ => 0,
        }
    }

    /// The seq to resume after: the last one below which nothing is missing.
    pub fn last(&self) -> Option<u64> {
        self.floor
    }

    /// A hole is open that no resume has been sent for yet.
    pub fn needs_resume(&self) -> bool {
        self.resync == Resync::Off && !self.above.is_empty() && self.resumed_from != self.floor
    }

    /// Call when a `resume` after [`SeqCheck::last`] was sent (on a new or the same socket).
    pub fn resumed(&mut self) {
        self.resumed_from = self.floor;
        self.resync = Resync::Waiting;
    }
}

/// The shared recorder: one lock per finished turn.
#[derive(Debug, Default)]
pub struct Recorder {
    stats: Mutex<Stats>,
}

impl Recorder {
    /// A recorder whose steady-state figures start at `from_second` of the run.
    pub fn steady_from(from_second: u64) -> Recorder {
        Recorder { stats: Mutex::new(Stats::steady_from(from_second)) }
    }

    pub fn record(&self, sample: TurnSample) {
        self.with(|s| s.record(sample));
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Stats) -> T) -> T {
        let mut stats = self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut stats)
    }

    pub fn into_stats(self) -> Stats {
        self.stats.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counters for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub held: AtomicU64,
    pub peak: AtomicU64,
    pub turns: AtomicU64,
    pub errors: AtomicU64,
    finished: AtomicBool,
}

impl Progress {
    pub fn connected(&self) {
        let now = self.held.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    pub fn disconnected(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn turn(&self, ok: bool) {
        if ok {
            self.turns.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.held.load(Ordering::Relaxed),
            self.turns.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    pub fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_check_counts_gaps_and_repeats() {
        let mut check = SeqCheck::default();
        for seq in [1, 2, 3, 3, 6, 7, 5, 7] {
            check.observe(seq);
        }
        // 4 never came; 5 came late (not lost); 3 and 7 came twice.
        assert_eq!((check.lost, check.duplicated), (1, 2));
        assert_eq!(check.last(), Some(3));
    }

    #[test]
    fn a_resume_fills_a_hole_and_its_replay_is_not_duplicated() {
        let mut check = SeqCheck::default();
        for seq in [1, 2, 5, 6] {
            check.observe(seq);
        }
        assert_eq!((check.lost, check.last()), (2, Some(2)));
        assert!(check.needs_resume());
        check.resumed();
        assert!(!check.needs_resume());
        // A frame sent before the resume was served, then the replay from 3, then live.
        for seq in [7, 3, 4, 5, 6, 7, 8] {
            check.observe(seq);
        }
        assert_eq!((check.lost, check.duplicated, check.last()), (0, 0, Some(8)));
        assert!(check.observe(9));
        assert!(!check.observe(9));
        assert_eq!(check.duplicated, 1);
    }

    #[test]
    fn a_hole_the_replay_cannot_fill_stays_lost_and_is_resumed_once() {
        let mut check = SeqCheck::default();
        for seq in [1, 2, 5] {
            check.observe(seq);
        }
        check.resumed();
        for seq in [5, 6, 7] {
            check.observe(seq);
        }
        assert_eq!((check.lost, check.duplicated), (2, 0));
        assert!(!check.needs_resume(), "one resume per hole");
    }

    #[test]
    fn a_jump_the_engine_declares_is_skipped_not_lost() {
        let mut check = SeqCheck::default();
        for seq in [1, 2, 3, 4] {
            check.observe(seq);
        }
        // Deltas 5–6 were stored, 7–9 streamed but lost with a crash: the client saw none of
        // them. `interrupted` at 40 says nothing after 6 will come before it.
        check.forgive(6, 40);
        check.observe(40);
        assert_eq!((check.lost, check.skipped), (2, 33), "5 and 6 are lost: the store has them");
        assert!(check.needs_resume(), "and a resume fetches them");
        check.resumed();
        for seq in [5, 6, 40, 41] {
            check.observe(seq);
        }
        assert_eq!((check.lost, check.skipped, check.duplicated), (0, 33, 0));
        assert_eq!(check.last(), Some(41));
    }

    #[test]
    fn turns_and_errors_land_in_their_second() {
        let mut stats = Stats::default();
        stats.record(TurnSample {
            second: 3,
            ttft: Some(Duration::from_millis(5)),
            total: Some(Duration::from_millis(50)),
            ..TurnSample::default()
        });
        stats.record(TurnSample {
            second: 3,
            error: Some("timeout".into()),
            ..TurnSample::default()
        });
        let mut other = Stats::default();
        other.record(TurnSample {
            second: 4,
            ttft: Some(Duration::from_millis(7)),
            ..TurnSample::default()
        });
        stats.merge(other);
        assert_eq!(stats.turns_completed, 2);
        assert_eq!(stats.errors["timeout"], 1);
        assert_eq!(stats.timeline[&3].turns, 1);
        assert_eq!(stats.timeline[&3].errors, 1);
        assert_eq!(stats.timeline[&4].ttft.len(), 1);
        let p50 = stats.ttft.value_at_quantile(0.5);
        assert!((4_900..=7_100).contains(&p50), "{p50}");
    }

    #[test]
    fn steady_state_figures_leave_out_the_turns_sent_during_the_ramp_up() {
        let sample = |second, ms| TurnSample {
            second,
            ack: Some(Duration::from_millis(ms)),
            ttft: Some(Duration::from_millis(ms)),
            total: Some(Duration::from_millis(ms * 10)),
            ..TurnSample::default()
        };
        let mut stats = Stats::steady_from(10);
        stats.record(sample(2, 400));
        stats.record(sample(10, 4));
        let mut other = Stats::steady_from(10);
        other.record(sample(9, 300));
        other.record(sample(11, 6));
        other.record(TurnSample {
            second: 12,
            error: Some("timeout".into()),
            ..TurnSample::default()
        });
        stats.merge(other);
        assert_eq!(stats.turns_completed, 4, "the whole run keeps every turn");
        assert!(stats.ttft.max() >= 399_000);
        let steady = &stats.steady;
        assert_eq!((steady.turns_completed, steady.errors), (2, 1));
        assert_eq!((steady.ack.len(), steady.ttft.len(), steady.turn.len()), (2, 2, 2));
        assert!(steady.ttft.max() < 7_000, "ramp-up turns left out: {}", steady.ttft.max());
    }
}
