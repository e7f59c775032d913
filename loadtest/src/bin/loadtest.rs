//! `loadtest`: drives WebSocket, REST + SSE, or OpenAI-compatible clients against a running
//! Switchyard engine and reports what they saw. See `docs/benchmarks.md` for the scenarios.
//!
//! ```text
//! loadtest ws --target http://127.0.0.1:8080 --connections 2000 --chatting 200 \
//!     --duration 30s --report report.json --html report.html
//! loadtest ws --scenario loadtest/scenarios/10k-connections.toml
//! loadtest cost --target http://127.0.0.1:8080 --report cost.json --markdown cost.md
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use loadtest::harness::scenario::{Mode, ScenarioFile};

#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about = "Load harness for Switchyard")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// WebSocket chat: connections held open, some of them chatting.
    Ws(RunArgs),
    /// REST + Server-Sent Events.
    Sse(RunArgs),
    /// The OpenAI-compatible API, streamed.
    Openai(RunArgs),
    /// The cost workload: labelled prompts on the premium model, then on `auto`.
    Cost(loadtest::harness::cost::CostArgs),
}

/// Every flag overrides the scenario file's value.
#[derive(Debug, Args)]
struct RunArgs {
    /// A scenario file (`loadtest/scenarios/*.toml`).
    #[arg(long)]
    scenario: Option<PathBuf>,
    #[arg(long)]
    target: Option<String>,
    #[arg(long)]
    connections: Option<usize>,
    #[arg(long)]
    chatting: Option<usize>,
    /// e.g. `30s`, `5m`.
    #[arg(long)]
    duration: Option<String>,
    #[arg(long)]
    ramp_up: Option<String>,
    #[arg(long)]
    think_time: Option<String>,
    /// Spread of each pause around the think time, as a fraction of it (0 = fixed pauses).
    #[arg(long)]
    think_jitter: Option<f64>,
    #[arg(long)]
    message_size: Option<usize>,
    #[arg(long)]
    model: Option<String>,
    /// fake-llm's configured time to first token, subtracted to report the engine's share.
    #[arg(long)]
    upstream_ttft_ms: Option<u64>,
    #[arg(long)]
    upstream_token_delay_ms: Option<u64>,
    #[arg(long, env = "SWITCHYARD_BOOTSTRAP_EMAIL")]
    email: Option<String>,
    #[arg(long, env = "SWITCHYARD_BOOTSTRAP_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// An access token or API key, instead of logging in.
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Also measure this process's CPU (the engine's pid).
    #[arg(long)]
    engine_pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the HTML report (with charts) here.
    #[arg(long)]
    html: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (mode, args) = match cli.command {
        Command::Cost(args) => return cost(&args),
        Command::Ws(args) => (Mode::Ws, args),
        Command::Sse(args) => (Mode::Sse, args),
        Command::Openai(args) => (Mode::Openai, args),
    };
    let mut file = match &args.scenario {
        Some(path) => ScenarioFile::load(path)?,
        None => ScenarioFile::default(),
    };
    file.mode = mode;
    macro_rules! set {
        ($($field:ident),*) => {$( if let Some(v) = args.$field.clone() { file.$field = v; } )*};
    }
    set!(
        target,
        connections,
        chatting,
        duration,
        ramp_up,
        think_time,
        think_jitter,
        message_size,
        upstream_ttft_ms,
        upstream_token_delay_ms
    );
    macro_rules! set_opt {
        ($($field:ident),*) => {$( if args.$field.is_some() { file.$field = args.$field.clone(); } )*};
    }
    set_opt!(model, email, password, token, engine_pid);
    let scenario = file.resolve()?;

    // Many sockets: a multi-threaded runtime so the harness uses both cores when it must.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(loadtest::harness::run(scenario))?;
    print!("{}", report.summary());
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report.html())
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(())
}

fn cost(args: &loadtest::harness::cost::CostArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(loadtest::harness::cost::run(args))?;
    let markdown = report.markdown();
    print!("{markdown}");
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, markdown)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(())
}
