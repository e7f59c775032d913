//! The results: a summary table for the terminal, a JSON report for machines, and a
//! self-contained HTML report with SVG charts (latency over time, percentile curves).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::cpu::CpuUsage;
use super::memory::EngineMemory;
use super::scenario::Scenario;
use super::stats::Stats;

/// Percentiles of one latency, in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// The figures for the turns sent once every connection was open (after the ramp-up).
#[derive(Debug, Clone, Serialize)]
pub struct SteadyState {
    /// Second of the run the window starts at (the ramp-up's length).
    pub from_second: u64,
    pub turns_completed: u64,
    pub errors: u64,
    pub ack: Percentiles,
    pub ttft: Percentiles,
    pub engine_ttft: Percentiles,
    pub turn: Percentiles,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub second: u64,
    pub turns: u64,
    pub errors: u64,
    pub ttft_p50: f64,
    pub ttft_p99: f64,
}

/// Points of a percentile curve: (percentile, milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    pub ttft: Vec<(f64, f64)>,
    pub turn: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub elapsed_secs: f64,
    pub connections_held: u64,
    pub turns_completed: u64,
    pub turns_per_second: f64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub lost_events: u64,
    pub duplicated_events: u64,
    /// Seqs a crash's `interrupted` event declared never to come (not counted as lost).
    pub skipped_events: u64,
    pub reconnects: u64,
    /// `resume`s sent on a live socket after a seq hole or a silent turn.
    pub gap_resumes: u64,
    /// Acknowledged messages that never got a terminal event: must be zero.
    pub acked_without_terminal: u64,
    /// Messages that got a second terminal event: must be zero.
    pub duplicate_terminals: u64,
    pub failovers: u64,
    pub cache_hits: u64,
    pub ack: Percentiles,
    pub ttft: Percentiles,
    /// Time to first token minus what fake-llm was told to take (`upstream_ttft_ms`): the
    /// engine's own share (plus the network and the harness).
    pub engine_ttft: Percentiles,
    pub gap: Percentiles,
    pub turn: Percentiles,
    /// The same, for the turns sent after the ramp-up only.
    pub steady: SteadyState,
    pub cpu: CpuUsage,
    /// The engine's resident memory per held connection (with `--engine-pid`).
    pub engine_memory: Option<EngineMemory>,
    pub timeline: Vec<Second>,
    pub curves: Curve,
}

const CURVE_POINTS: [f64; 12] =
    [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0];

impl Report {
    pub fn build(scenario: &Scenario, stats: &Stats, elapsed: Duration, cpu: CpuUsage) -> Report {
        // Time to first token minus what fake-llm was told to take.
        let engine_share = |ttft: &Histogram<u64>| {
            let mut p = Percentiles::of(ttft);
            let upstream = scenario.upstream_ttft_ms as f64;
            for v in [&mut p.p50, &mut p.p90, &mut p.p99, &mut p.p999, &mut p.max, &mut p.mean] {
                *v = (*v - upstream).max(0.0);
            }
            p
        };
        let steady = &stats.steady;
        let curve = |h: &Histogram<u64>| -> Vec<(f64, f64)> {
            if h.is_empty() {
                return Vec::new();
            }
            CURVE_POINTS.iter().map(|p| (*p, h.value_at_percentile(*p) as f64 / 1000.0)).collect()
        };
        Report {
            scenario: scenario.clone(),
            elapsed_secs: elapsed.as_secs_f64(),
            connections_held: stats.connections_held,
            turns_completed: stats.turns_completed,
            turns_per_second: stats.turns_completed as f64
                / scenario.duration.as_secs_f64().max(0.001),
            errors: stats.errors_total(),
            errors_by_code: stats.errors.clone(),
            lost_events: stats.lost_events,
            duplicated_events: stats.duplicated_events,
            skipped_events: stats.skipped_events,
            reconnects: stats.reconnects,
            gap_resumes: stats.gap_resumes,
            acked_without_terminal: stats.acked_without_terminal,
            duplicate_terminals: stats.duplicate_terminals,
            failovers: stats.failovers,
            cache_hits: stats.cache_hits,
            ack: Percentiles::of(&stats.ack),
            ttft: Percentiles::of(&stats.ttft),
            engine_ttft: engine_share(&stats.ttft),
            gap: Percentiles::of(&stats.gap),
            turn: Percentiles::of(&stats.turn),
            steady: SteadyState {
                from_second: steady.from_second,
                turns_completed: steady.turns_completed,
                errors: steady.errors,
                ack: Percentiles::of(&steady.ack),
                ttft: Percentiles::of(&steady.ttft),
                engine_ttft: engine_share(&steady.ttft),
                turn: Percentiles::of(&steady.turn),
            },
            cpu,
            engine_memory: None,
            timeline: stats
                .timeline
                .iter()
                .map(|(second, b)| Second {
                    second: *second,
                    turns: b.turns,
                    errors: b.errors,
                    ttft_p50: b.ttft.value_at_quantile(0.5) as f64 / 1000.0,
                    ttft_p99: b.ttft.value_at_quantile(0.99) as f64 / 1000.0,
                })
                .collect(),
            curves: Curve { ttft: curve(&stats.ttft), turn: curve(&stats.turn) },
        }
    }

    /// The table printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let s = &self.scenario;
        let _ = writeln!(
            out,
            "scenario {} ({:?}) against {}: {} connections, {} chatting, {:.0}s",
            s.name,
            s.mode,
            s.target,
            s.connections,
            s.chatting,
            s.duration.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "connections held {}   turns {} ({:.1}/s)   errors {}   lost {}   duplicated {}   reconnects {}   failovers {}   cache hits {}",
            self.connections_held,
            self.turns_completed,
            self.turns_per_second,
            self.errors,
            self.lost_events,
            self.duplicated_events,
            self.reconnects,
            self.failovers,
            self.cache_hits
        );
        if self.gap_resumes
            + self.acked_without_terminal
            + self.duplicate_terminals
            + self.skipped_events
            > 0
        {
            let _ = writeln!(
                out,
                "gap resumes {}   acked without terminal {}   duplicate terminals {}   skipped by a crash {}",
                self.gap_resumes,
                self.acked_without_terminal,
                self.duplicate_terminals,
                self.skipped_events
            );
        }
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "ms", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        percentile_rows(
            &mut out,
            &[
                ("ack", &self.ack),
                ("ttft", &self.ttft),
                ("engine ttft", &self.engine_ttft),
                ("token gap", &self.gap),
                ("turn", &self.turn),
            ],
        );
        let steady = &self.steady;
        let _ = writeln!(
            out,
            "after the ramp-up (turns sent from second {}): {} turns, {} errors",
            steady.from_second, steady.turns_completed, steady.errors
        );
        percentile_rows(
            &mut out,
            &[
                ("ack", &steady.ack),
                ("ttft", &steady.ttft),
                ("engine ttft", &steady.engine_ttft),
                ("turn", &steady.turn),
            ],
        );
        if !self.errors_by_code.is_empty() {
            let codes: Vec<String> =
                self.errors_by_code.iter().map(|(c, n)| format!("{c}={n}")).collect();
            let _ = writeln!(out, "errors by code: {}", codes.join(", "));
        }
        let cores =
            |c: Option<f64>| c.map_or_else(|| String::from("n/a"), |c| format!("{c:.2} cores"));
        let _ = writeln!(
            out,
            "cpu: harness {}, engine {}",
            cores(self.cpu.harness_cores),
            cores(self.cpu.engine_cores)
        );
        if let Some(m) = &self.engine_memory {
            let _ = writeln!(
                out,
                "engine memory: {:.1} KiB per held connection (RSS {} → {} KiB from {} to {} held)",
                m.per_connection_kib, m.first.rss_kib, m.full.rss_kib, m.first.held, m.full.held
            );
        }
        out
    }

    /// A self-contained HTML page: numbers plus two SVG charts.
    pub fn html(&self) -> String {
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        let over_time = line_chart(
            "Time to first token over the run (ms)",
            &[
                ("p50", self.timeline.iter().map(|s| (s.second as f64, s.ttft_p50)).collect()),
                ("p99", self.timeline.iter().map(|s| (s.second as f64, s.ttft_p99)).collect()),
            ],
            "second of the run",
            false,
        );
        let percentiles = line_chart(
            "Latency by percentile (ms)",
            &[("ttft", self.curves.ttft.clone()), ("turn", self.curves.turn.clone())],
            "percentile",
            true,
        );
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Switchyard load test: {name}</title>\
             <style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:960px}}pre{{background:#f4f4f4;padding:1rem;overflow:auto}}svg{{background:#fff;border:1px solid #ddd}}</style>\
             </head><body><h1>Load test: {name}</h1><pre>{summary}</pre>{over_time}{percentiles}<h2>Raw report</h2><pre>{json}</pre></body></html>",
            name = escape(&self.scenario.name),
            summary = escape(&self.summary()),
            json = escape(&json),
        )
    }
}

/// Rows of the summary's table: a latency's count and percentiles, in milliseconds.
fn percentile_rows(out: &mut String, rows: &[(&str, &Percentiles)]) {
    for (name, p) in rows {
        let _ = writeln!(
            out,
            "{name:<12} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            p.count, p.p50, p.p90, p.p99, p.p999, p.max
        );
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A minimal SVG line chart. With `percentile_axis`, x is drawn on a "nines" scale
/// (-log10(1 - p/100)) so the tail gets room.
fn line_chart(
    title: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    x_label: &str,
    percentile_axis: bool,
) -> String {
    const W: f64 = 900.0;
    const H: f64 = 320.0;
    const PAD: f64 = 50.0;
    let fx = |x: f64| if percentile_axis { -(1.0 - (x / 100.0).min(0.99999)).log10() } else { x };
    let points: Vec<(f64, f64)> =
        series.iter().flat_map(|(_, s)| s.iter().map(|(x, y)| (fx(*x), *y))).collect();
    if points.is_empty() {
        return format!("<h2>{}</h2><p>no data</p>", escape(title));
    }
    let (min_x, max_x) =
        points.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
    let max_y = points.iter().fold(0.0f64, |m, (_, y)| m.max(*y)).max(0.001);
    let sx = |x: f64| PAD + (fx(x) - min_x) / (max_x - min_x).max(1e-9) * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - y / max_y * (H - 2.0 * PAD);
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut svg = format!(
        "<h2>{}</h2><svg role=\"img\" aria-label=\"{}\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" xmlns=\"http://www.w3.org/2000/svg\">",
        escape(title),
        escape(title)
    );
    let _ = write!(
        svg,
        "<line x1=\"{PAD}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#333\"/>",
        H - PAD,
        W - PAD
    );
    let _ = write!(
        svg,
        "<line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"#333\"/>",
        H - PAD
    );
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
        W / 2.0,
        H - 10.0,
        escape(x_label)
    );
    let _ = write!(svg, "<text x=\"5\" y=\"{}\" font-size=\"12\">{max_y:.1}</text>", PAD);
    let _ = write!(svg, "<text x=\"5\" y=\"{}\" font-size=\"12\">0</text>", H - PAD);
    for (i, (name, data)) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let path: Vec<String> =
            data.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{colour}\">{}</text>",
            W - PAD - 60.0,
            PAD + 15.0 * i as f64,
            escape(name)
        );
    }
    if percentile_axis {
        for p in [50.0, 90.0, 99.0, 99.9, 99.99] {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{p}</text>",
                sx(p),
                H - PAD + 15.0
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::super::scenario::ScenarioFile;
    use super::super::stats::TurnSample;
    use super::*;

    #[test]
    fn the_report_has_the_promised_fields_and_draws_charts() {
        let scenario =
            ScenarioFile { upstream_ttft_ms: 5, ..ScenarioFile::default() }.resolve().unwrap();
        let mut stats = Stats::steady_from(3);
        for i in 0..100 {
            stats.record(TurnSample {
                second: i / 10,
                ack: Some(Duration::from_millis(1)),
                ttft: Some(Duration::from_millis(6 + i % 3)),
                total: Some(Duration::from_millis(100)),
                ..TurnSample::default()
            });
        }
        stats.connections_held = 42;
        let report = Report::build(&scenario, &stats, Duration::from_secs(30), CpuUsage::default());
        let json = serde_json::to_value(&report).unwrap();
        for key in
            ["connections_held", "turns_completed", "errors", "lost_events", "duplicated_events"]
        {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        assert!(json["ttft"]["p50"].as_f64().unwrap() >= 6.0);
        assert!(json["turn"]["p99"].as_f64().unwrap() >= 99.0);
        assert!(report.engine_ttft.p50 < report.ttft.p50, "the upstream share is taken off");
        assert_eq!(json["steady"]["from_second"], 3);
        assert_eq!(json["steady"]["ttft"]["count"], 70, "seconds 3 to 9 only");
        assert!(report.steady.engine_ttft.p50 < report.steady.ttft.p50);
        let html = report.html();
        assert!(html.contains("<svg") && html.contains("polyline"));
        assert!(report.summary().contains("connections held 42"));
    }
}
