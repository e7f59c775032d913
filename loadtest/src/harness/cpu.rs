//! CPU time from `/proc`, for this process and optionally the engine's.

use std::time::Duration;

use serde::Serialize;

/// Clock ticks per second used by `/proc/*/stat` (fixed at 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    harness: Option<u64>,
    engine: Option<u64>,
}

/// CPU used during the run, as a share of one core (1.0 = one core busy the whole time).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUsage {
    pub harness_cores: Option<f64>,
    pub engine_cores: Option<f64>,
}

impl Snapshot {
    pub fn take(engine_pid: Option<u32>) -> Snapshot {
        Snapshot {
            harness: ticks("self"),
            engine: engine_pid.and_then(|pid| ticks(&pid.to_string())),
        }
    }

    pub fn since(&self, before: &Snapshot, elapsed: Duration) -> CpuUsage {
        let share = |after: Option<u64>, before: Option<u64>| {
            let used = after?.checked_sub(before?)? as f64 / TICKS_PER_SECOND;
            Some(used / elapsed.as_secs_f64().max(0.001))
        };
        CpuUsage {
            harness_cores: share(self.harness, before.harness),
            engine_cores: share(self.engine, before.engine),
        }
    }
}

/// utime + stime of a process, in clock ticks.
fn ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_cpu_time() {
        let before = Snapshot::take(None);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let usage = Snapshot::take(None).since(&before, Duration::from_secs(1));
        assert!(usage.harness_cores.is_some());
        assert!(usage.engine_cores.is_none());
    }
}
