//! Service level indicators, computed by the engine itself for `GET /admin/slo`.
//!
//! The SLIs are defined on the very counters Prometheus scrapes, so this report and the
//! recording rules in `deploy/prometheus/` can never disagree on what "good" means:
//!
//! - **availability**: of the turns that ended, the share not `failed` for a server-side
//!   reason — `switchyard_turns_total{outcome="completed"}` over `completed + failed`
//!   (cancelled and client-rejected turns are neither good nor bad);
//! - **latency**: the share of first tokens within the threshold —
//!   `switchyard_turn_time_to_first_token_seconds_bucket{le=threshold}` over `_count`;
//! - **http**: non-5xx responses over all responses (context for the two above).
//!
//! A sampler (the metrics upkeep thread) records the cumulative counts every
//! [`SAMPLE_EVERY`]; a window's SLI is the difference between now and the sample that old.
//! Six hours are kept: enough for the page-level multi-window burn-rate alerts (1 h & 5 m at
//! 14.4×, 6 h & 30 m at 6×). The day-scale ticket alerts live in Prometheus only.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::SloConfig;
use super::metrics::{HTTP_REQUESTS, TTFT, TURNS};

/// How often the cumulative counts are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const KEEP: Duration = Duration::from_secs(6 * 3600);

/// Cumulative event counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    pub turns_good: f64,
    pub turns_bad: f64,
    pub ttft_fast: f64,
    pub ttft_total: f64,
    pub http_good: f64,
    pub http_total: f64,
}

impl Counts {
    /// Reads the counts from a rendered Prometheus page.
    pub fn from_page(page: &str, ttft_threshold_seconds: f64) -> Counts {
        let mut counts = Counts::default();
        let ttft_bucket = format!("{TTFT}_bucket");
        let ttft_count = format!("{TTFT}_count");
        for line in page.lines() {
            let Some((name, labels, value)) = parse_sample(line) else { continue };
            let label = |key: &str| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
            if name == TURNS {
                match label("outcome") {
                    Some("completed") => counts.turns_good += value,
                    Some("failed") => counts.turns_bad += value,
                    _ => {}
                }
            } else if name == ttft_count {
                counts.ttft_total += value;
            } else if name == ttft_bucket {
                let le = label("le").and_then(|v| v.parse::<f64>().ok());
                if le.is_some_and(|le| (le - ttft_threshold_seconds).abs() < 1e-9) {
                    counts.ttft_fast += value;
                }
            } else if name == HTTP_REQUESTS {
                counts.http_total += value;
                if !label("status").is_some_and(|s| s.starts_with('5')) {
                    counts.http_good += value;
                }
            }
        }
        counts
    }

    fn minus(&self, earlier: &Counts) -> Counts {
        Counts {
            turns_good: self.turns_good - earlier.turns_good,
            turns_bad: self.turns_bad - earlier.turns_bad,
            ttft_fast: self.ttft_fast - earlier.ttft_fast,
            ttft_total: self.ttft_total - earlier.ttft_total,
            http_good: self.http_good - earlier.http_good,
            http_total: self.http_total - earlier.http_total,
        }
    }
}

/// One sample line: metric name, labels (unescaped values) and value.
pub type Sample<'a> = (&'a str, Vec<(&'a str, String)>, f64);

/// `name{a="x",b="y"} value` → its parts; `None` for comments, blanks and malformed lines.
pub fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches([',', ' ']);
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = inner.find("=\"")?;
            let key = &inner[..eq];
            let mut value = String::new();
            let mut chars = inner[eq + 2..].char_indices();
            let consumed = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => {
                        let (_, escaped) = chars.next()?;
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                    '"' => break eq + 2 + i + 1,
                    other => value.push(other),
                }
            };
            labels.push((key, value));
            inner = &inner[consumed..];
        }
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

/// The sampled history of the counts.
pub struct SloTracker {
    started: Instant,
    samples: Mutex<VecDeque<(Instant, Counts)>>,
}

/// The process-wide tracker (the counters it samples are process-wide too).
pub fn tracker() -> &'static SloTracker {
    static TRACKER: OnceLock<SloTracker> = OnceLock::new();
    TRACKER.get_or_init(|| SloTracker {
        started: Instant::now(),
        samples: Mutex::new(VecDeque::from([(Instant::now(), Counts::default())])),
    })
}

impl SloTracker {
    pub fn record(&self, counts: Counts) {
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.push_back((now, counts));
        // Keep one sample older than KEEP so the longest window stays fully covered.
        while samples.len() > 2 && samples.get(1).is_some_and(|(t, _)| now - *t > KEEP) {
            samples.pop_front();
        }
    }

    /// The report for `/admin/slo`, with `now` the counts read right now.
    pub fn report(&self, now: Counts, config: &SloConfig) -> SloReport {
        let at = Instant::now();
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let window = |name: &'static str, length: Option<Duration>| {
            // The newest sample at least `length` old; else the oldest there is.
            let base = match length {
                Some(length) => samples
                    .iter()
                    .rev()
                    .find(|(t, _)| at.duration_since(*t) >= length)
                    .or_else(|| samples.front()),
                None => samples.front(),
            };
            let (since, base) = base.copied().unwrap_or((self.started, Counts::default()));
            let delta = now.minus(&base);
            WindowReport {
                window: name,
                covered_seconds: at.duration_since(since).as_secs(),
                availability: Sli::new(
                    delta.turns_good,
                    delta.turns_good + delta.turns_bad,
                    config.availability_objective,
                ),
                latency: Sli::new(delta.ttft_fast, delta.ttft_total, config.latency_objective),
                http: Sli::new(delta.http_good, delta.http_total, config.availability_objective),
            }
        };
        let windows = vec![
            window("5m", Some(Duration::from_secs(300))),
            window("30m", Some(Duration::from_secs(1800))),
            window("1h", Some(Duration::from_secs(3600))),
            window("6h", Some(Duration::from_secs(6 * 3600))),
            window("since_start", None),
        ];
        drop(samples);
        let burn = |name: &str, sli: fn(&WindowReport) -> &Sli| {
            windows.iter().find(|w| w.window == name).map_or(0.0, |w| sli(w).burn_rate)
        };
        let mut alerts = Vec::new();
        for (what, sli) in [
            ("Availability", (|w: &WindowReport| &w.availability) as fn(&WindowReport) -> &Sli),
            ("Latency", |w: &WindowReport| &w.latency),
        ] {
            alerts.push(AlertState {
                name: format!("SwitchyardTurn{what}FastBurn"),
                severity: "page",
                firing: burn("1h", sli) > 14.4 && burn("5m", sli) > 14.4,
            });
            alerts.push(AlertState {
                name: format!("SwitchyardTurn{what}SlowBurn"),
                severity: "page",
                firing: burn("6h", sli) > 6.0 && burn("30m", sli) > 6.0,
            });
        }
        let status = if alerts.iter().any(|a| a.firing) { "burning" } else { "ok" };
        SloReport {
            status,
            objectives: Objectives {
                availability: config.availability_objective,
                latency: config.latency_objective,
                ttft_threshold_seconds: config.ttft_threshold_seconds,
            },
            windows,
            alerts,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SloReport {
    /// `ok`, or `burning` while a page-level burn-rate condition holds.
    pub status: &'static str,
    pub objectives: Objectives,
    pub windows: Vec<WindowReport>,
    pub alerts: Vec<AlertState>,
}

#[derive(Debug, Serialize)]
pub struct Objectives {
    pub availability: f64,
    pub latency: f64,
    pub ttft_threshold_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct WindowReport {
    pub window: &'static str,
    /// Less than the window's length while the engine is younger than it.
    pub covered_seconds: u64,
    pub availability: Sli,
    pub latency: Sli,
    pub http: Sli,
}

#[derive(Debug, Serialize)]
pub struct AlertState {
    pub name: String,
    pub severity: &'static str,
    pub firing: bool,
}

/// One indicator over one window.
#[derive(Debug, Serialize)]
pub struct Sli {
    pub good: u64,
    pub total: u64,
    /// `good / total`; `null` when nothing happened in the window.
    pub ratio: Option<f64>,
    /// How fast the error budget burns: the bad share over the budget (`1 - objective`).
    /// 1.0 spends exactly the budget over the SLO period; 0 with no events.
    pub burn_rate: f64,
}

impl Sli {
    fn new(good: f64, total: f64, objective: f64) -> Sli {
        let (good, total) = (good.max(0.0), total.max(0.0));
        let ratio = (total > 0.0).then(|| good / total);
        let burn_rate = ratio.map_or(0.0, |r| (1.0 - r) / (1.0 - objective));
        Sli { good: good as u64, total: total as u64, ratio, burn_rate }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP switchyard_turns_total Turns ended
# TYPE switchyard_turns_total counter
switchyard_turns_total{outcome="completed"} 97
switchyard_turns_total{outcome="failed"} 3
switchyard_turns_total{outcome="cancelled"} 5
switchyard_turn_time_to_first_token_seconds_bucket{model="a",le="1"} 80
switchyard_turn_time_to_first_token_seconds_bucket{model="a",le="2.5"} 90
switchyard_turn_time_to_first_token_seconds_bucket{model="a",le="+Inf"} 100
switchyard_turn_time_to_first_token_seconds_count{model="a"} 100
switchyard_http_requests_total{method="GET",route="/a{x}",status="200"} 10
switchyard_http_requests_total{method="GET",route="/b",status="503"} 2
"#;

    #[test]
    fn counts_come_from_the_page() {
        let counts = Counts::from_page(PAGE, 2.5);
        assert_eq!(
            counts,
            Counts {
                turns_good: 97.0,
                turns_bad: 3.0,
                ttft_fast: 90.0,
                ttft_total: 100.0,
                http_good: 10.0,
                http_total: 12.0,
            }
        );
    }

    #[test]
    fn parses_escaped_label_values() {
        let (name, labels, value) = parse_sample(r#"m{a="x\"y",b="z,}"} 1.5"#).expect("parses");
        assert_eq!(name, "m");
        assert_eq!(labels, vec![("a", "x\"y".to_owned()), ("b", "z,}".to_owned())]);
        assert_eq!(value, 1.5);
    }

    #[test]
    fn burn_rate_is_the_bad_share_over_the_budget() {
        let tracker = SloTracker {
            started: Instant::now(),
            samples: Mutex::new(VecDeque::from([(Instant::now(), Counts::default())])),
        };
        let report = tracker.report(Counts::from_page(PAGE, 2.5), &SloConfig::default());
        let all = report.windows.iter().find(|w| w.window == "since_start").expect("window");
        assert_eq!((all.availability.good, all.availability.total), (97, 100));
        // 3 % bad against a 0.1 % budget burns 30× — both page conditions hold.
        assert!((all.availability.burn_rate - 30.0).abs() < 1e-6);
        assert_eq!(report.status, "burning");
        assert!((all.latency.ratio.expect("ratio") - 0.9).abs() < 1e-9);
    }
}
