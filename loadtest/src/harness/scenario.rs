//! What to run: a scenario file (`loadtest/scenarios/*.toml`) overlaid by command-line flags.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Which edge of the engine to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// WebSocket chat (`/ws/{conversation_id}`).
    Ws,
    /// REST with Server-Sent Events (`POST /api/v1/conversations/{id}/messages`, `stream: true`).
    Sse,
    /// The OpenAI-compatible API (`POST /v1/chat/completions`, streamed).
    Openai,
}

/// A scenario as written in a file; every field has a default, flags override any of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScenarioFile {
    pub name: String,
    pub description: String,
    pub mode: Mode,
    pub target: String,
    /// Connections held open (WebSocket mode; for SSE/OpenAI the number of client loops).
    pub connections: usize,
    /// Of those, how many chat continuously; the rest stay idle.
    pub chatting: usize,
    pub duration: String,
    pub ramp_up: String,
    /// Mean pause between a reply and the next message of one client.
    pub think_time: String,
    /// How far one pause may stray from `think_time`, as a fraction of it: each pause is
    /// drawn uniformly from `think_time × [1 − jitter, 1 + jitter]` (0: every pause the same).
    pub think_jitter: f64,
    /// Bytes of each user message.
    pub message_size: usize,
    /// Model (or route alias) for the conversations; the engine's default when absent.
    pub model: Option<String>,
    /// What `fake-llm` was configured with, so the report can separate the engine's own time.
    pub upstream_ttft_ms: u64,
    pub upstream_token_delay_ms: u64,
    pub email: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// Engine process to measure the CPU of (`--engine-pid`).
    pub engine_pid: Option<u32>,
}

impl Default for ScenarioFile {
    fn default() -> Self {
        Self {
            name: "adhoc".into(),
            description: String::new(),
            mode: Mode::Ws,
            target: "http://127.0.0.1:8080".into(),
            connections: 100,
            chatting: 10,
            duration: "30s".into(),
            ramp_up: "5s".into(),
            think_time: "1s".into(),
            think_jitter: 0.5,
            message_size: 64,
            model: None,
            upstream_ttft_ms: 0,
            upstream_token_delay_ms: 0,
            email: None,
            password: None,
            token: None,
            engine_pid: None,
        }
    }
}

/// A resolved scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub mode: Mode,
    pub target: String,
    pub connections: usize,
    pub chatting: usize,
    #[serde(with = "secs")]
    pub duration: Duration,
    #[serde(with = "secs")]
    pub ramp_up: Duration,
    #[serde(with = "secs")]
    pub think_time: Duration,
    pub think_jitter: f64,
    pub message_size: usize,
    pub model: Option<String>,
    pub upstream_ttft_ms: u64,
    pub upstream_token_delay_ms: u64,
    #[serde(skip)]
    pub email: Option<String>,
    #[serde(skip)]
    pub password: Option<String>,
    #[serde(skip)]
    pub token: Option<String>,
    pub engine_pid: Option<u32>,
}

impl Scenario {
    /// One client's pause before its next message.
    ///
    /// Drawn, not fixed: clients that all pause exactly `think_time` after replies of the same
    /// length stay in lockstep for the whole run, so the load arrives in waves (every chatting
    /// client at once, then none) that no population of real users makes, and the latency
    /// measured is the wave's queue.
    pub fn think(&self) -> Duration {
        let spread = self.think_jitter * (2.0 * rand::random::<f64>() - 1.0);
        self.think_time.mul_f64((1.0 + spread).max(0.0))
    }

    /// How long a chatting client waits before its first message: anywhere within one think
    /// time, so clients that connect together do not start in step either.
    pub fn first_message_delay(&self) -> Duration {
        if self.think_jitter == 0.0 {
            return Duration::ZERO;
        }
        self.think_time.mul_f64(rand::random::<f64>())
    }

    /// The second of the run from which every connection is open (the end of the ramp-up):
    /// turns sent from then on make the steady-state figures.
    pub fn steady_from_second(&self) -> u64 {
        self.ramp_up.as_secs_f64().ceil() as u64
    }
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl ScenarioFile {
    pub fn load(path: &Path) -> anyhow::Result<ScenarioFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid scenario {}", path.display()))
    }

    pub fn resolve(self) -> anyhow::Result<Scenario> {
        if self.chatting > self.connections {
            bail!("chatting ({}) cannot exceed connections ({})", self.chatting, self.connections);
        }
        if self.connections == 0 {
            bail!("connections must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.think_jitter) {
            bail!("think_jitter ({}) must be between 0 and 1", self.think_jitter);
        }
        Ok(Scenario {
            duration: parse_duration(&self.duration).context("duration")?,
            ramp_up: parse_duration(&self.ramp_up).context("ramp_up")?,
            think_time: parse_duration(&self.think_time).context("think_time")?,
            think_jitter: self.think_jitter,
            target: self.target.trim_end_matches('/').to_owned(),
            name: self.name,
            description: self.description,
            mode: self.mode,
            connections: self.connections,
            chatting: self.chatting,
            message_size: self.message_size.max(1),
            model: self.model,
            upstream_ttft_ms: self.upstream_ttft_ms,
            upstream_token_delay_ms: self.upstream_token_delay_ms,
            email: self.email,
            password: self.password,
            token: self.token,
            engine_pid: self.engine_pid,
        })
    }
}

/// `500ms`, `30s`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 =
        number.parse().with_context(|| format!("`{text}` is not a duration like 30s"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => bail!("unknown duration unit `{other}` in `{text}` (use ms, s, m or h)"),
    };
    if !secs.is_finite() || secs < 0.0 {
        bail!("`{text}` is not a valid duration");
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("3 fortnights").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                ScenarioFile::load(&path).unwrap().resolve().unwrap();
                count += 1;
            }
        }
        assert!(count >= 3, "scenarios missing");
    }

    #[test]
    fn pauses_spread_around_the_think_time_and_average_to_it() {
        let scenario =
            ScenarioFile { think_time: "1s".into(), think_jitter: 0.5, ..ScenarioFile::default() }
                .resolve()
                .unwrap();
        let pauses: Vec<f64> = (0..2000).map(|_| scenario.think().as_secs_f64()).collect();
        assert!(pauses.iter().all(|p| (0.5..=1.5).contains(p)), "within ±50 %");
        let mean = pauses.iter().sum::<f64>() / pauses.len() as f64;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean} is the think time");
        let (low, high) =
            pauses.iter().fold((f64::MAX, 0.0f64), |(l, h), p| (l.min(*p), h.max(*p)));
        assert!(low < 0.6 && high > 1.4, "the pauses are spread, not fixed: {low}..{high}");
        assert!((0..100).all(|_| scenario.first_message_delay() < Duration::from_secs(1)));

        let fixed =
            ScenarioFile { think_jitter: 0.0, ..ScenarioFile::default() }.resolve().unwrap();
        assert_eq!(fixed.think(), fixed.think_time);
        assert_eq!(fixed.first_message_delay(), Duration::ZERO);
        let bad = ScenarioFile { think_jitter: 1.5, ..ScenarioFile::default() };
        assert!(bad.resolve().is_err());
    }

    #[test]
    fn more_chatting_than_connections_is_refused() {
        let file = ScenarioFile { connections: 2, chatting: 3, ..ScenarioFile::default() };
        assert!(file.resolve().is_err());
    }
}
