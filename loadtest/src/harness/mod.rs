//! The load harness: drives many clients against a running engine and measures what they see.
//!
//! - [`scenario`]: what to run (scenario TOML files under `loadtest/scenarios/`, overridden by
//!   command-line flags);
//! - [`client`]: authentication and conversation set-up over REST;
//! - [`ws`], [`sse`], [`openai`]: the three drivers — WebSocket chat, REST + Server-Sent
//!   Events, and the OpenAI-compatible API — each producing the same per-turn measurements;
//! - [`stats`]: per-task recorders (HDR histograms, a per-second time series, error counts,
//!   sequence checks) merged at the end, plus shared counters for the progress line;
//! - [`report`]: the summary table, the JSON report and a self-contained HTML report with SVG
//!   charts;
//! - [`cost`]: `loadtest cost`, the labelled cost workload replayed on the premium model and
//!   on `auto`, with a cost and routing-quality report;
//! - [`cpu`]: CPU time of this process (and optionally the engine's) from `/proc`, because the
//!   harness and the engine share the machine and the harness's own cost must be reported.

pub mod client;
pub mod cost;
pub mod cpu;
pub mod memory;
pub mod openai;
pub mod report;
pub mod scenario;
pub mod sse;
pub mod stats;
pub mod tracker;
pub mod ws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use self::scenario::{Mode, Scenario};
use self::stats::Progress;

/// Runs a scenario to completion and returns the merged measurements.
pub async fn run(scenario: Scenario) -> anyhow::Result<report::Report> {
    let client = client::Client::connect(&scenario).await.context("failed to prepare the run")?;
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let cpu_before = cpu::Snapshot::take(scenario.engine_pid);
    let reporter = tokio::spawn(progress::run(progress.clone(), scenario.clone(), started));
    let stats = match scenario.mode {
        Mode::Ws => ws::run(&scenario, &client, progress.clone(), started).await?,
        Mode::Sse => sse::run(&scenario, &client, progress.clone(), started).await?,
        Mode::Openai => openai::run(&scenario, &client, progress.clone(), started).await?,
    };
    progress.finish();
    let memory = reporter.await.ok().and_then(|probe| probe.result());
    let elapsed = started.elapsed();
    let cpu = cpu::Snapshot::take(scenario.engine_pid).since(&cpu_before, elapsed);
    let mut report = report::Report::build(&scenario, &stats, elapsed, cpu);
    report.engine_memory = memory;
    Ok(report)
}

mod progress {
    //! The progress line, redrawn every second on stderr; the engine's memory is sampled on
    //! the same tick.
    use std::io::Write;

    use super::memory::MemoryProbe;
    use super::*;

    pub async fn run(progress: Arc<Progress>, scenario: Scenario, started: Instant) -> MemoryProbe {
        let total = scenario.ramp_up + scenario.duration;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut memory = MemoryProbe::new(scenario.engine_pid, scenario.connections);
        loop {
            tick.tick().await;
            let done = progress.is_finished();
            if !done {
                memory.observe(progress.snapshot().0);
            }
            let elapsed = started.elapsed().min(total);
            let share = elapsed.as_secs_f64() / total.as_secs_f64().max(0.001);
            let filled = (share * 30.0).round() as usize;
            let bar: String = "#".repeat(filled.min(30)) + &".".repeat(30 - filled.min(30));
            let (held, turns, errors) = progress.snapshot();
            eprint!(
                "\r[{bar}] {:>4}s/{}s  connections {held:>6}  turns {turns:>8}  errors {errors:>5}",
                elapsed.as_secs(),
                total.as_secs()
            );
            let _ = std::io::stderr().flush();
            if done {
                eprintln!();
                return memory;
            }
        }
    }
}
