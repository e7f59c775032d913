//! The engine's resident memory per held connection, from `/proc/<pid>/status`.
//!
//! "RSS growth divided by connections" is only a per-connection cost if the growth is the
//! connections': measured from the engine at rest it also counts one-off costs paid by the
//! first clients (the login's password hash alone is ~19 MB of working memory, lazily built
//! pools and caches). So the probe takes two samples while connections ramp up — once a
//! tenth of them are held, and when the most are held — and divides the growth between them
//! by the connections added in between.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub held: u64,
    pub rss_kib: u64,
}

/// What the probe measured; `per_connection_kib` is the figure to compare with a budget.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EngineMemory {
    pub first: Sample,
    pub full: Sample,
    pub per_connection_kib: f64,
}

#[derive(Debug)]
pub struct MemoryProbe {
    pid: Option<u32>,
    /// Connections held when the first sample is taken (a tenth of the scenario's).
    threshold: u64,
    first: Option<Sample>,
    full: Option<Sample>,
}

impl MemoryProbe {
    pub fn new(pid: Option<u32>, connections: usize) -> MemoryProbe {
        let threshold = (connections as u64 / 10).max(1);
        MemoryProbe { pid, threshold, first: None, full: None }
    }

    /// Called about once a second with the connections held now.
    pub fn observe(&mut self, held: u64) {
        let Some(rss_kib) = self.pid.and_then(rss_kib) else { return };
        self.record(Sample { held, rss_kib });
    }

    fn record(&mut self, sample: Sample) {
        if self.first.is_none() && sample.held >= self.threshold {
            self.first = Some(sample);
        }
        // The first time the most connections are held: just after the ramp-up, before the
        // chatting clients' turns add their own memory.
        if self.first.is_some() && self.full.is_none_or(|full| sample.held > full.held) {
            self.full = Some(sample);
        }
    }

    pub fn result(&self) -> Option<EngineMemory> {
        let (first, full) = (self.first?, self.full?);
        let added = full.held.checked_sub(first.held).filter(|added| *added > 0)?;
        let grown = full.rss_kib.saturating_sub(first.rss_kib);
        Some(EngineMemory { first, full, per_connection_kib: grown as f64 / added as f64 })
    }
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(held: u64, rss_kib: u64) -> Sample {
        Sample { held, rss_kib }
    }

    #[test]
    fn growth_is_divided_by_the_connections_added_after_the_first_tenth() {
        let mut probe = MemoryProbe::new(None, 1000);
        // Before a tenth is held: one-off costs, not counted.
        probe.record(sample(50, 40_000));
        probe.record(sample(100, 60_000));
        probe.record(sample(600, 65_000));
        probe.record(sample(1000, 69_000));
        // Later samples at the same count (turns allocating) do not move the figure.
        probe.record(sample(1000, 90_000));
        let memory = probe.result().unwrap();
        assert_eq!(memory.first.held, 100);
        assert_eq!(memory.full.rss_kib, 69_000);
        assert!((memory.per_connection_kib - 10.0).abs() < 1e-9);
    }

    #[test]
    fn no_figure_without_growth_in_connections() {
        let mut probe = MemoryProbe::new(None, 1000);
        probe.record(sample(500, 50_000));
        assert!(probe.result().is_none());
        assert!(MemoryProbe::new(None, 10).result().is_none());
    }

    #[test]
    fn reads_our_own_rss() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
