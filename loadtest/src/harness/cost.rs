//! `loadtest cost`: replays the labelled cost workload through the engine's OpenAI-compatible
//! API twice — every turn on the premium model, then every turn on `model: "auto"` — and
//! reports what each run cost, how much `auto` saved, which tiers it chose, and how often it
//! sent a turn the labels call premium to a cheaper model (the quality risk).
//!
//! ```text
//! loadtest cost --target http://127.0.0.1:8080 \
//!     --prompts loadtest/workloads/cost/prompts.jsonl \
//!     --engine-config loadtest/workloads/cost/engine.toml \
//!     --report cost.json --markdown cost.md [--limit 50]
//! ```
//!
//! Each turn is one non-streaming `POST /v1/chat/completions` (the engine states what it did
//! in response headers only on whole answers): `x-switchyard-model` names the model that
//! answered, `x-switchyard-cost-micros` what the engine's ledger priced it at,
//! `x-switchyard-route` the tier `auto` chose (when the engine sends it). Besides the
//! engine's figure the harness computes its own **estimate**: the usage in the response body
//! times the `[costs.prices]` of `--engine-config`, with the engine's rounding (half-up per
//! turn). The two agree when the engine prices correctly; the estimate also works against an
//! engine that does not price turns yet. The routed tier comes from the route header, else
//! from the answering model's `tier` in the same config.
//!
//! Prompts are JSON lines: `id`, `category`, `tier` (the label: what the turn really needs),
//! `prompt`, and optionally `system`, `history` (`[{role, content}]`) and `max_tokens`.
//! Every fifth prompt (index 4, 9, …) is the scorer's held-out split; under-routing is
//! reported for both splits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::client::Client;
use super::scenario::ScenarioFile;

const TURN_TIMEOUT: Duration = Duration::from_secs(180);

/// How capable a model a turn needs (the labels) or got (the routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Economy,
    Standard,
    Premium,
}

impl Tier {
    const ALL: [Tier; 3] = [Tier::Economy, Tier::Standard, Tier::Premium];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Economy => "economy",
            Tier::Standard => "standard",
            Tier::Premium => "premium",
        }
    }

    fn parse(s: &str) -> Option<Tier> {
        match s.trim() {
            "economy" => Some(Tier::Economy),
            "standard" => Some(Tier::Standard),
            "premium" => Some(Tier::Premium),
            _ => None,
        }
    }
}

/// `loadtest cost` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CostArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// The labelled workload (JSON lines).
    #[arg(long, default_value = "loadtest/workloads/cost/prompts.jsonl")]
    pub prompts: PathBuf,
    /// The engine's config: `[[models]]` tiers and `[costs.prices]` for the estimate.
    #[arg(long, default_value = "loadtest/workloads/cost/engine.toml")]
    pub engine_config: PathBuf,
    /// The baseline run's model.
    #[arg(long, default_value = "gpt-4o")]
    pub premium_model: String,
    /// The routed run's model.
    #[arg(long, default_value = "auto")]
    pub auto_model: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Only the first N prompts (a quick check).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, env = "SWITCHYARD_BOOTSTRAP_EMAIL")]
    pub email: Option<String>,
    #[arg(long, env = "SWITCHYARD_BOOTSTRAP_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// An API key or access token, instead of logging in.
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the Markdown report here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

/// One labelled prompt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    pub id: String,
    pub category: String,
    pub tier: Tier,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub history: Vec<HistoryMessage>,
    pub prompt: String,
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryMessage {
    pub role: String,
    pub content: String,
}

impl Prompt {
    /// The Chat Completions body for this prompt on `model`.
    pub fn body(&self, model: &str) -> Value {
        let mut messages = Vec::with_capacity(self.history.len() + 2);
        if let Some(system) = &self.system {
            messages.push(json!({ "role": "system", "content": system }));
        }
        for m in &self.history {
            messages.push(json!({ "role": m.role, "content": m.content }));
        }
        messages.push(json!({ "role": "user", "content": self.prompt }));
        let mut body = json!({ "model": model, "messages": messages });
        if let Some(n) = self.max_tokens {
            body["max_tokens"] = json!(n);
        }
        body
    }
}

/// Reads the workload; a bad line is an error naming it.
pub fn load_prompts(path: &Path) -> anyhow::Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a valid prompt", path.display(), i + 1))
        })
        .collect()
}

/// A price in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Price {
    pub input_micros_per_mtok: u64,
    pub output_micros_per_mtok: u64,
}

impl Price {
    /// `usage` at this price, rounded half-up to the micro-dollar (the engine's rounding).
    pub fn cost_micros(&self, input_tokens: u64, output_tokens: u64) -> u64 {
        let scaled = u128::from(input_tokens) * u128::from(self.input_micros_per_mtok)
            + u128::from(output_tokens) * u128::from(self.output_micros_per_mtok);
        u64::try_from((scaled + 500_000) / 1_000_000).unwrap_or(u64::MAX)
    }
}

/// What the harness needs from the engine's config: each model's tier and price.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchConfig {
    pub tiers: BTreeMap<String, Tier>,
    pub prices: BTreeMap<String, Price>,
}

impl BenchConfig {
    pub fn load(path: &Path) -> anyhow::Result<BenchConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        BenchConfig::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Reads only `[[models]]` `name`/`tier` and `[costs.prices]`; everything else is the
    /// engine's business.
    pub fn parse(text: &str) -> anyhow::Result<BenchConfig> {
        let doc: toml::Table = toml::from_str(text).context("not valid TOML")?;
        let mut config = BenchConfig::default();
        for model in doc.get("models").and_then(toml::Value::as_array).into_iter().flatten() {
            let Some(name) = model.get("name").and_then(toml::Value::as_str) else { continue };
            if let Some(tier) = model.get("tier").and_then(toml::Value::as_str) {
                let tier = Tier::parse(tier)
                    .with_context(|| format!("model `{name}`: unknown tier `{tier}`"))?;
                config.tiers.insert(name.to_owned(), tier);
            }
        }
        let prices = doc
            .get("costs")
            .and_then(|c| c.get("prices"))
            .and_then(toml::Value::as_table)
            .into_iter()
            .flatten();
        for (name, price) in prices {
            let dollars = |key: &str| -> anyhow::Result<u64> {
                let v = price
                    .get(key)
                    .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
                    .with_context(|| format!("price of `{name}`: `{key}` missing"))?;
                if !(0.0..=1_000_000.0).contains(&v) {
                    bail!("price of `{name}`: `{key}` out of range");
                }
                Ok((v * 1_000_000.0).round() as u64)
            };
            config.prices.insert(
                name.clone(),
                Price {
                    input_micros_per_mtok: dollars("input_per_mtok")?,
                    output_micros_per_mtok: dollars("output_per_mtok")?,
                },
            );
        }
        if config.prices.is_empty() {
            bail!("no [costs.prices] table: the estimate needs a price per model");
        }
        Ok(config)
    }

    /// The cheapest priced model of `tier`, ranked as the engine ranks them: input and
    /// output price at a 3:1 token mix.
    pub fn cheapest(&self, tier: Tier) -> Option<(&str, Price)> {
        self.tiers
            .iter()
            .filter(|(_, t)| **t == tier)
            .filter_map(|(m, _)| self.prices.get(m).map(|p| (m.as_str(), *p)))
            .min_by_key(|(_, p)| 3 * p.input_micros_per_mtok + p.output_micros_per_mtok)
    }
}

/// What one turn of one run came to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Turn {
    pub id: String,
    pub category: String,
    pub label: Option<Tier>,
    /// `x-switchyard-model`, else the body's `model`.
    pub model: Option<String>,
    /// The tier the turn went to: `x-switchyard-route`'s `tier=`, else the model's tier.
    pub tier: Option<Tier>,
    /// `x-switchyard-route`, verbatim.
    pub route: Option<String>,
    /// `x-switchyard-cost-micros`.
    pub cost_micros: Option<u64>,
    /// Usage × `[costs.prices]`.
    pub estimated_micros: Option<u64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache: Option<String>,
    pub error: Option<String>,
    /// Statuses of refused attempts that were retried (see [`RETRIED_STATUSES`]).
    pub retried: Vec<u16>,
}

/// One run's totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub requested_model: String,
    pub turns: usize,
    pub errors: usize,
    /// Error codes and how often each came back.
    pub error_codes: BTreeMap<String, usize>,
    /// Sum of `x-switchyard-cost-micros`; `None` when the engine sent no (non-zero) cost.
    pub cost_micros: Option<u64>,
    pub estimated_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub models: BTreeMap<String, usize>,
    pub tiers: BTreeMap<String, usize>,
    pub cache_hits: usize,
    /// Refused attempts that were retried, by HTTP status.
    pub retried: BTreeMap<u16, usize>,
    pub elapsed_secs: f64,
}

impl RunSummary {
    fn of(requested_model: &str, turns: &[Turn], elapsed: Duration) -> RunSummary {
        let mut s = RunSummary {
            requested_model: requested_model.to_owned(),
            turns: turns.len(),
            elapsed_secs: elapsed.as_secs_f64(),
            ..RunSummary::default()
        };
        let mut engine_cost = 0u64;
        for t in turns {
            for status in &t.retried {
                *s.retried.entry(*status).or_default() += 1;
            }
            if let Some(code) = &t.error {
                s.errors += 1;
                *s.error_codes.entry(code.clone()).or_default() += 1;
                continue;
            }
            engine_cost += t.cost_micros.unwrap_or(0);
            s.estimated_micros += t.estimated_micros.unwrap_or(0);
            s.input_tokens += t.input_tokens;
            s.output_tokens += t.output_tokens;
            if let Some(m) = &t.model {
                *s.models.entry(m.clone()).or_default() += 1;
            }
            let tier = t.tier.map_or("unknown", Tier::as_str);
            *s.tiers.entry(tier.to_owned()).or_default() += 1;
            if t.cache.as_deref().is_some_and(|c| c != "miss") {
                s.cache_hits += 1;
            }
        }
        s.cost_micros = (engine_cost > 0).then_some(engine_cost);
        s
    }
}

/// How `auto` routed the turns of one split, against the labels.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Routing {
    pub turns: usize,
    /// `[labelled][routed]`, tiers in order economy, standard, premium (errors and unknown
    /// tiers left out).
    pub matrix: [[usize; 3]; 3],
    pub premium_labelled: usize,
    /// Labelled premium, routed to a cheaper tier.
    pub under_routed: usize,
    pub under_routed_percent: f64,
    /// Labelled economy or standard, routed higher (costs money, not quality).
    pub over_routed: usize,
    pub under_routed_ids: Vec<String>,
}

impl Routing {
    fn of<'a>(turns: impl Iterator<Item = &'a Turn>) -> Routing {
        let mut r = Routing::default();
        for t in turns {
            let (Some(label), Some(tier)) = (t.label, t.tier) else { continue };
            if t.error.is_some() {
                continue;
            }
            r.turns += 1;
            r.matrix[label as usize][tier as usize] += 1;
            if label == Tier::Premium {
                r.premium_labelled += 1;
            }
            if tier < label && label == Tier::Premium {
                r.under_routed += 1;
                r.under_routed_ids.push(t.id.clone());
            }
            if tier > label {
                r.over_routed += 1;
            }
        }
        r.under_routed_percent = percent(r.under_routed as f64, r.premium_labelled as f64);
        r
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    pub prompts: usize,
    pub labels: BTreeMap<String, usize>,
    pub premium: RunSummary,
    pub auto: RunSummary,
    /// From the engine's cost headers, when both runs had them.
    pub reduction_percent: Option<f64>,
    /// From the harness's own estimate.
    pub estimated_reduction_percent: f64,
    /// The premium run's usage priced at the cheapest model of each turn's *labelled* tier:
    /// what routing exactly by the labels would cost, the bound for a scorer that never
    /// under-routes.
    pub oracle_micros: u64,
    pub oracle_reduction_percent: f64,
    pub routing: Routing,
    pub routing_training: Routing,
    pub routing_held_out: Routing,
    /// Targets: at least 60% cheaper, under 5% of premium turns under-routed.
    pub meets_reduction_target: bool,
    pub meets_under_routing_target: bool,
    pub premium_turns: Vec<Turn>,
    pub auto_turns: Vec<Turn>,
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { 100.0 * part / whole } else { 0.0 }
}

/// Runs both passes and builds the report.
pub async fn run(args: &CostArgs) -> anyhow::Result<CostReport> {
    let mut prompts = load_prompts(&args.prompts)?;
    if let Some(n) = args.limit {
        prompts.truncate(n);
    }
    if prompts.is_empty() {
        bail!("no prompts to replay");
    }
    let config = BenchConfig::load(&args.engine_config)?;
    let client = connect(args).await?;

    eprintln!("premium run: {} turns on {}", prompts.len(), args.premium_model);
    let started = Instant::now();
    let premium_turns = replay(&client, &config, &prompts, &args.premium_model, args).await;
    let premium = RunSummary::of(&args.premium_model, &premium_turns, started.elapsed());

    eprintln!("auto run: {} turns on {}", prompts.len(), args.auto_model);
    let started = Instant::now();
    let auto_turns = replay(&client, &config, &prompts, &args.auto_model, args).await;
    let auto = RunSummary::of(&args.auto_model, &auto_turns, started.elapsed());

    Ok(CostReport::build(&prompts, &config, premium, auto, premium_turns, auto_turns))
}

impl CostReport {
    pub fn build(
        prompts: &[Prompt],
        config: &BenchConfig,
        premium: RunSummary,
        auto: RunSummary,
        premium_turns: Vec<Turn>,
        auto_turns: Vec<Turn>,
    ) -> CostReport {
        let mut labels = BTreeMap::new();
        for p in prompts {
            *labels.entry(p.tier.as_str().to_owned()).or_default() += 1;
        }
        let reduction = |base: u64, routed: u64| {
            if base == 0 { 0.0 } else { 100.0 * (1.0 - routed as f64 / base as f64) }
        };
        let reduction_percent = match (premium.cost_micros, auto.cost_micros) {
            (Some(b), Some(a)) => Some(reduction(b, a)),
            _ => None,
        };
        let estimated_reduction_percent =
            reduction(premium.estimated_micros, auto.estimated_micros);
        let oracle_micros = premium_turns
            .iter()
            .filter(|t| t.error.is_none())
            .filter_map(|t| {
                let (_, price) = config.cheapest(t.label?)?;
                Some(price.cost_micros(t.input_tokens, t.output_tokens))
            })
            .sum();
        let oracle_reduction_percent = reduction(premium.estimated_micros, oracle_micros);
        let routing = Routing::of(auto_turns.iter());
        let routing_training =
            Routing::of(auto_turns.iter().enumerate().filter(|(i, _)| i % 5 != 4).map(|x| x.1));
        let routing_held_out =
            Routing::of(auto_turns.iter().enumerate().filter(|(i, _)| i % 5 == 4).map(|x| x.1));
        let headline = reduction_percent.unwrap_or(estimated_reduction_percent);
        CostReport {
            prompts: prompts.len(),
            labels,
            meets_reduction_target: headline >= 60.0 && auto.errors == 0 && premium.errors == 0,
            meets_under_routing_target: routing.turns > 0 && routing.under_routed_percent < 5.0,
            premium,
            auto,
            reduction_percent,
            estimated_reduction_percent,
            oracle_micros,
            oracle_reduction_percent,
            routing,
            routing_training,
            routing_held_out,
            premium_turns,
            auto_turns,
        }
    }

    /// The Markdown summary (also printed to stdout).
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let dollars = |micros: u64| format!("${:.4}", micros as f64 / 1e6);
        let opt_dollars = |m: Option<u64>| m.map_or_else(|| "—".to_owned(), dollars);
        let mut out = String::new();
        let _ = writeln!(out, "## Cost workload: premium vs auto\n");
        let labels: Vec<String> = Tier::ALL
            .iter()
            .map(|t| format!("{} {}", self.labels.get(t.as_str()).unwrap_or(&0), t.as_str()))
            .collect();
        let _ = writeln!(out, "{} prompts, labelled {}.\n", self.prompts, labels.join(", "));
        let _ = writeln!(
            out,
            "| run | model | turns | errors | engine cost | estimated cost | input tokens | output tokens |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- | --- |");
        for (name, run) in [("premium", &self.premium), ("auto", &self.auto)] {
            let _ = writeln!(
                out,
                "| {name} | `{}` | {} | {} | {} | {} | {} | {} |",
                run.requested_model,
                run.turns,
                run.errors,
                opt_dollars(run.cost_micros),
                dollars(run.estimated_micros),
                run.input_tokens,
                run.output_tokens
            );
        }
        let _ = writeln!(out);
        match self.reduction_percent {
            Some(r) => {
                let _ = writeln!(out, "**Reduction (engine's ledger): {r:.1}%**");
            }
            None => {
                let _ = writeln!(out, "Reduction (engine's ledger): — (no cost headers)");
            }
        }
        let _ = writeln!(
            out,
            "Reduction (estimate, usage × list prices): {:.1}%",
            self.estimated_reduction_percent
        );
        let _ = writeln!(
            out,
            "Bound: routing exactly by the labels would cost {} ({:.1}% less than premium).\n",
            dollars(self.oracle_micros),
            self.oracle_reduction_percent
        );
        let tiers: Vec<String> = self.auto.tiers.iter().map(|(t, n)| format!("{t} {n}")).collect();
        let models: Vec<String> =
            self.auto.models.iter().map(|(m, n)| format!("`{m}` {n}")).collect();
        let _ = writeln!(out, "`auto` routed: {} ({}).\n", tiers.join(", "), models.join(", "));
        let _ = writeln!(out, "| split | labelled premium | under-routed | share | over-routed |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for (name, r) in [
            ("all", &self.routing),
            ("training (4 of 5)", &self.routing_training),
            ("held-out (every 5th)", &self.routing_held_out),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {:.1}% | {} |",
                r.premium_labelled, r.under_routed, r.under_routed_percent, r.over_routed
            );
        }
        let _ = writeln!(out, "\nLabelled (rows) against routed (columns), all prompts:\n");
        let _ = writeln!(out, "| | economy | standard | premium |");
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        for t in Tier::ALL {
            let row = self.routing.matrix[t as usize];
            let _ = writeln!(out, "| **{}** | {} | {} | {} |", t.as_str(), row[0], row[1], row[2]);
        }
        if !self.routing.under_routed_ids.is_empty() {
            let _ = writeln!(out, "\nUnder-routed: {}", self.routing.under_routed_ids.join(", "));
        }
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let _ = writeln!(
            out,
            "\nTargets: ≥ 60% cheaper — {}; < 5% of premium turns under-routed — {}.",
            verdict(self.meets_reduction_target),
            verdict(self.meets_under_routing_target)
        );
        for (name, run) in [("premium", &self.premium), ("auto", &self.auto)] {
            if run.errors > 0 {
                let codes: Vec<String> =
                    run.error_codes.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
                let _ = writeln!(out, "\nErrors in the {name} run: {}", codes.join(", "));
            }
            if !run.retried.is_empty() {
                let codes: Vec<String> =
                    run.retried.iter().map(|(c, n)| format!("HTTP {c} ×{n}")).collect();
                let _ =
                    writeln!(out, "\nRefused and retried in the {name} run: {}", codes.join(", "));
            }
            if run.cache_hits > 0 {
                let _ = writeln!(out, "\nCache hits in the {name} run: {}", run.cache_hits);
            }
        }
        out
    }
}

async fn connect(args: &CostArgs) -> anyhow::Result<Client> {
    let file = ScenarioFile {
        mode: super::scenario::Mode::Openai,
        target: args.target.clone(),
        email: args.email.clone(),
        password: args.password.clone(),
        token: args.token.clone(),
        ..ScenarioFile::default()
    };
    let scenario = file.resolve()?;
    Client::connect(&scenario).await.context("failed to sign in to the engine")
}

/// Sends every prompt on `model`, `concurrency` at a time; turns come back in prompt order.
async fn replay(
    client: &Client,
    config: &BenchConfig,
    prompts: &[Prompt],
    model: &str,
    args: &CostArgs,
) -> Vec<Turn> {
    let total = prompts.len();
    let mut done = 0usize;
    let mut turns: Vec<(usize, Turn)> = futures_util::stream::iter(prompts.iter().enumerate())
        .map(|(i, p)| async move {
            let turn =
                match tokio::time::timeout(TURN_TIMEOUT, send(client, config, p, model)).await {
                    Ok(turn) => turn,
                    Err(_) => Turn { error: Some("client_timeout".into()), ..turn_of(p) },
                };
            (i, turn)
        })
        .buffer_unordered(args.concurrency.max(1))
        .inspect(|_| {
            done += 1;
            if done.is_multiple_of(50) || done == total {
                eprint!("\r  {done}/{total}");
                if done == total {
                    eprintln!();
                }
            }
        })
        .collect()
        .await;
    turns.sort_by_key(|(i, _)| *i);
    turns.into_iter().map(|(_, t)| t).collect()
}

fn turn_of(p: &Prompt) -> Turn {
    Turn { id: p.id.clone(), category: p.category.clone(), label: Some(p.tier), ..Turn::default() }
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// `tier=premium` inside `x-switchyard-route: complexity; tier=premium; reason=…`.
fn route_tier(route: &str) -> Option<Tier> {
    route.split(';').find_map(|part| part.trim().strip_prefix("tier=")).and_then(Tier::parse)
}

/// Refusals that happen before the engine calls a model (so a retry cannot double-bill):
/// retried up to [`RETRIES`] times, and counted in the report.
const RETRIED_STATUSES: [u16; 2] = [401, 429];
const RETRIES: u32 = 2;

async fn send(client: &Client, config: &BenchConfig, p: &Prompt, model: &str) -> Turn {
    let mut turn = turn_of(p);
    let body = p.body(model);
    let mut attempt = 0;
    let response = loop {
        let response = match client.post("/v1/chat/completions").json(&body).send().await {
            Ok(r) => r,
            Err(_) => {
                turn.error = Some("request_failed".into());
                return turn;
            }
        };
        let status = response.status().as_u16();
        if attempt < RETRIES && RETRIED_STATUSES.contains(&status) {
            attempt += 1;
            turn.retried.push(status);
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            continue;
        }
        break response;
    };
    let status = response.status();
    turn.route = header(&response, "x-switchyard-route");
    turn.cache = header(&response, "x-switchyard-cache");
    turn.cost_micros = header(&response, "x-switchyard-cost-micros").and_then(|v| v.parse().ok());
    let header_model = header(&response, "x-switchyard-model");
    let body: Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let code = body["error"]["code"]
            .as_str()
            .or(body["error"]["type"].as_str())
            .map_or_else(|| format!("http_{}", status.as_u16()), str::to_owned);
        turn.error = Some(code);
        return turn;
    }
    turn.model = header_model.or_else(|| body["model"].as_str().map(str::to_owned));
    turn.input_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    turn.output_tokens = body["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    turn.tier = turn
        .route
        .as_deref()
        .and_then(route_tier)
        .or_else(|| turn.model.as_ref().and_then(|m| config.tiers.get(m).copied()));
    turn.estimated_micros = turn
        .model
        .as_ref()
        .and_then(|m| config.prices.get(m))
        .map(|price| price.cost_micros(turn.input_tokens, turn.output_tokens));
    turn
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
        [server]
        listen = "127.0.0.1:0"

        [[models]]
        name = "gpt-4o"
        tier = "premium"
        provider = "openai"

        [[models]]
        name = "gpt-4o-mini"
        tier = "economy"

        [costs.prices]
        "gpt-4o" = { input_per_mtok = 2.50, output_per_mtok = 10.00, cached_input_per_mtok = 1.25 }
        "gpt-4o-mini" = { input_per_mtok = 0.15, output_per_mtok = 0.6 }
    "#;

    #[test]
    fn reads_tiers_and_prices_from_the_engine_config() {
        let c = BenchConfig::parse(CONFIG).unwrap();
        assert_eq!(c.tiers["gpt-4o"], Tier::Premium);
        assert_eq!(c.tiers["gpt-4o-mini"], Tier::Economy);
        assert_eq!(c.prices["gpt-4o"].input_micros_per_mtok, 2_500_000);
        assert_eq!(c.prices["gpt-4o-mini"].output_micros_per_mtok, 600_000);
        assert!(BenchConfig::parse("[server]\n").is_err());
    }

    #[test]
    fn the_shipped_workload_and_config_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/cost");
        let prompts = load_prompts(&root.join("prompts.jsonl")).unwrap();
        assert!(prompts.len() >= 500, "{}", prompts.len());
        let mut ids: Vec<&str> = prompts.iter().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), prompts.len(), "ids are unique");
        for tier in Tier::ALL {
            assert!(prompts.iter().filter(|p| p.tier == tier).count() >= 50, "{tier:?}");
        }
        // Most turns of a chat product are simple.
        let economy = prompts.iter().filter(|p| p.tier == Tier::Economy).count();
        assert!(economy * 2 > prompts.len());
        let config = BenchConfig::load(&root.join("engine.toml")).unwrap();
        for tier in Tier::ALL {
            assert!(config.tiers.values().any(|t| *t == tier), "{tier:?}");
        }
        for model in config.tiers.keys() {
            assert!(config.prices.contains_key(model), "{model} has no price");
        }
    }

    #[test]
    fn prices_round_half_up_like_the_engine() {
        let p = Price { input_micros_per_mtok: 2_500_000, output_micros_per_mtok: 10_000_000 };
        assert_eq!(p.cost_micros(1_000_000, 0), 2_500_000);
        // 100 × 2.5 + 30 × 10 = 550 micro-dollars.
        assert_eq!(p.cost_micros(100, 30), 550);
        // 1 input token = 2.5 micro-dollars → 3.
        assert_eq!(p.cost_micros(1, 0), 3);
        assert_eq!(p.cost_micros(0, 0), 0);
    }

    #[test]
    fn bodies_carry_system_history_and_max_tokens() {
        let p: Prompt = serde_json::from_str(
            r#"{"id":"p1","category":"x","tier":"standard","system":"Be kind.","history":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}],"prompt":"c","max_tokens":50}"#,
        )
        .unwrap();
        let body = p.body("auto");
        assert_eq!(body["model"], "auto");
        let roles: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(body["messages"][3]["content"], "c");
        assert_eq!(body["max_tokens"], 50);
        let bare: Prompt =
            serde_json::from_str(r#"{"id":"p2","category":"x","tier":"economy","prompt":"hi"}"#)
                .unwrap();
        assert!(bare.body("gpt-4o").get("max_tokens").is_none());
    }

    #[test]
    fn route_headers_name_the_tier() {
        assert_eq!(
            route_tier("complexity; tier=economy; reason=short question"),
            Some(Tier::Economy)
        );
        assert_eq!(route_tier("explicit"), None);
    }

    /// A turn of 1,000 input and 1,000 output tokens, priced at `tier`'s model.
    fn turn(id: &str, label: Tier, tier: Tier) -> Turn {
        let config = BenchConfig::parse(CONFIG).unwrap();
        let (model, price) = match tier {
            Tier::Premium => config.cheapest(Tier::Premium).unwrap(),
            _ => config.cheapest(Tier::Economy).unwrap(),
        };
        let cost = price.cost_micros(1000, 1000);
        Turn {
            id: id.into(),
            label: Some(label),
            tier: Some(tier),
            input_tokens: 1000,
            output_tokens: 1000,
            estimated_micros: Some(cost),
            cost_micros: Some(cost),
            model: Some(model.into()),
            ..Turn::default()
        }
    }

    #[test]
    fn the_report_computes_reduction_bound_and_under_routing() {
        let prompts: Vec<Prompt> = (0..5)
            .map(|i| Prompt {
                id: format!("p{i}"),
                category: "c".into(),
                tier: if i == 0 { Tier::Premium } else { Tier::Economy },
                system: None,
                history: Vec::new(),
                prompt: "x".into(),
                max_tokens: None,
            })
            .collect();
        let base: Vec<Turn> = prompts.iter().map(|p| turn(&p.id, p.tier, Tier::Premium)).collect();
        // Everything went to economy, the premium prompt too: under-routed.
        let mut auto: Vec<Turn> =
            prompts.iter().map(|p| turn(&p.id, p.tier, Tier::Economy)).collect();
        auto[1].retried = vec![401];
        let config = BenchConfig::parse(CONFIG).unwrap();
        let premium = RunSummary::of("gpt-4o", &base, Duration::ZERO);
        let routed = RunSummary::of("auto", &auto, Duration::ZERO);
        let report = CostReport::build(&prompts, &config, premium, routed, base, auto);
        // gpt-4o: 1000 × 2.5 + 1000 × 10 = 12,500 µ$ a turn; gpt-4o-mini: 750.
        assert_eq!(report.premium.cost_micros, Some(62_500));
        assert_eq!(report.auto.cost_micros, Some(3_750));
        assert!((report.reduction_percent.unwrap() - 94.0).abs() < 1e-9);
        // By the labels: one premium turn and four economy ones.
        assert_eq!(report.oracle_micros, 12_500 + 4 * 750);
        assert!((report.oracle_reduction_percent - 75.2).abs() < 1e-9);
        assert_eq!(report.routing.premium_labelled, 1);
        assert_eq!(report.routing.under_routed, 1);
        assert_eq!(report.routing.under_routed_ids, ["p0"]);
        assert_eq!(report.auto.retried.get(&401), Some(&1));
        assert!(report.meets_reduction_target);
        assert!(!report.meets_under_routing_target);
        assert_eq!(report.routing_held_out.turns, 1);
        let md = report.markdown();
        assert!(md.contains("94.0%"), "{md}");
        assert!(md.contains("75.2%"), "{md}");
        assert!(md.contains("NOT met"), "{md}");
        assert!(md.contains("HTTP 401 ×1"), "{md}");
    }
}
