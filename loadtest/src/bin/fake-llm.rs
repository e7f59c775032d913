//! `fake-llm`: serve the OpenAI / Anthropic fake on one port.
//!
//! The first line on stdout is the bound address, `listening on http://IP:PORT`, flushed at
//! once, so scripts can start it with `--listen 127.0.0.1:0` and parse the port. Logs go to
//! stderr. Every flag is a default for all requests; the `x-fake-llm` header overrides them per
//! request (see `loadtest::fake_llm::Scenario`).

use std::io::Write;
use std::net::ToSocketAddrs;

use anyhow::Context;
use clap::Parser;
use loadtest::fake_llm::{Scenario, bind, serve};

#[derive(Debug, Parser)]
#[command(
    name = "fake-llm",
    version,
    about = "Wire-exact OpenAI/Anthropic fake upstream with fault injection"
)]
struct Args {
    /// Address to listen on; port 0 picks a free one (printed on the first stdout line).
    #[arg(long, env = "FAKE_LLM_LISTEN", default_value = "127.0.0.1:8089")]
    listen: String,
    /// Worker threads.
    #[arg(long, env = "FAKE_LLM_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Time to first token (ms); delays non-streaming answers too.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Delay between streamed tokens (ms).
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,
    /// Tokens per answer.
    #[arg(long, default_value_t = loadtest::fake_llm::DEFAULT_TOKENS)]
    tokens: u32,
    /// Answer every request with this HTTP error status and the provider's error body.
    #[arg(long)]
    error_status: Option<u16>,
    /// `Retry-After` seconds on injected errors (429/503/529 default to 1).
    #[arg(long)]
    retry_after: Option<u64>,
    /// Error code refining --error-status, e.g. `context_length_exceeded` with 400.
    #[arg(long)]
    error_code: Option<String>,
    /// After N tokens, send the provider's in-band stream error and end the body.
    #[arg(long)]
    break_after: Option<u32>,
    /// After N tokens, abort the connection mid-body.
    #[arg(long)]
    drop_after: Option<u32>,
    /// Accept requests and never answer.
    #[arg(long)]
    hang: bool,
    /// Stream N tokens, then stay silent with the connection open.
    #[arg(long)]
    hang_after: Option<u32>,
    /// After N tokens, send one frame that is not valid JSON.
    #[arg(long)]
    malformed_after: Option<u32>,
    /// Reject conversations ending with an assistant message (no prefill).
    #[arg(long)]
    reject_prefill: bool,
    /// Share of requests (0-1) failing with a 500/503/529-style error.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Seed for the generated text and the fail_rate draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Size answers and count prompt tokens like a real model (cost benchmarks); --tokens
    /// is then ignored.
    #[arg(long)]
    realistic: bool,
}

impl Args {
    fn scenario(&self) -> anyhow::Result<Scenario> {
        if !(0.0..=1.0).contains(&self.fail_rate) {
            anyhow::bail!("--fail-rate must be between 0 and 1, got {}", self.fail_rate);
        }
        if let Some(code) = self.error_status.filter(|c| !(400..=599).contains(c)) {
            anyhow::bail!("--error-status must be an HTTP error status 400-599, got {code}");
        }
        Ok(Scenario {
            ttft_ms: self.ttft_ms,
            token_delay_ms: self.token_delay_ms,
            tokens: self.tokens,
            error_status: self.error_status,
            retry_after: self.retry_after,
            error_code: self.error_code.clone(),
            break_after: self.break_after,
            drop_after: self.drop_after,
            hang: self.hang,
            hang_after: self.hang_after,
            malformed_after: self.malformed_after,
            reject_prefill: self.reject_prefill,
            fail_rate: self.fail_rate,
            seed: self.seed,
            realistic: self.realistic,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let scenario = args.scenario()?;
    let requested = args
        .listen
        .to_socket_addrs()
        .with_context(|| format!("failed to resolve --listen {}", args.listen))?
        .next()
        .with_context(|| format!("--listen {} resolved to no address", args.listen))?;
    let listener = bind(requested).with_context(|| format!("failed to bind {requested}"))?;
    let addr = listener.local_addr().context("failed to read the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}").context("failed to write to stdout")?;
        out.flush().context("failed to flush stdout")?;
    }
    tracing::info!(%addr, workers = args.workers, ?scenario, "fake-llm started");
    actix_rt::System::new()
        .block_on(async move { serve(listener, scenario, args.workers)?.await })
        .context("fake-llm server failed")
}
