//! How many concurrent OpenAI streams one fake-llm sustains, and at what cost.
//!
//! Opens `--streams` concurrent `stream: true` chat completions against a running fake-llm
//! (loopback only), each asking for `--tokens` tokens `--delay-ms` apart via the `x-fake-llm`
//! header, and reports how far the streams fell behind the ideal pace. Pass `--pid` of the
//! fake-llm process to get its CPU time for the run from /proc.
//!
//! ```text
//! fake-llm --listen 127.0.0.1:0 --workers 1 &
//! cargo run --release -p loadtest --example fake_llm_capacity -- \
//!     --url http://127.0.0.1:PORT --streams 2000 --tokens 100 --delay-ms 20 --pid PID
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement tool: fail loudly

use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;

#[derive(Parser)]
struct Args {
    /// fake-llm base URL; must be a loopback address.
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    #[arg(long, default_value_t = 100)]
    tokens: u32,
    #[arg(long, default_value_t = 20)]
    delay_ms: u64,
    /// fake-llm's process id, to read its CPU time from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Use reqwest instead of the default hand-written HTTP/1.1 client. The raw client is
    /// several times cheaper, which matters when client and server share two cores.
    #[arg(long)]
    reqwest: bool,
}

/// utime + stime of `pid`, in clock ticks (100 Hz on Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

struct Outcome {
    ok: bool,
    duration: Duration,
    max_gap: Duration,
    frames: usize,
}

async fn one_stream(client: reqwest::Client, url: String, knobs: String) -> Outcome {
    let started = Instant::now();
    let body = serde_json::json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "capacity probe"}]});
    let resp = match client.post(&url).header("x-fake-llm", knobs).json(&body).send().await {
        Ok(r) if r.status().is_success() => r,
        _ => {
            return Outcome {
                ok: false,
                duration: started.elapsed(),
                max_gap: Duration::ZERO,
                frames: 0,
            };
        }
    };
    let mut stream = resp.bytes_stream();
    let mut last = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut frames = 0;
    let mut done = false;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        let now = Instant::now();
        // The first gap includes ttft (0 here) and the role chunk; count it too.
        max_gap = max_gap.max(now - last);
        last = now;
        frames += chunk.windows(6).filter(|w| w == b"data: ").count();
        done |= chunk.ends_with(b"data: [DONE]\n\n");
    }
    Outcome { ok: done, duration: started.elapsed(), max_gap, frames }
}

/// The same probe over a bare TCP connection: one request written by hand, then the response
/// bytes scanned for `data: ` frames and the `[DONE]` terminator (chunked framing ignored).
async fn one_stream_raw(addr: String, body: std::sync::Arc<Vec<u8>>) -> Outcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let failed = |started: Instant| Outcome {
        ok: false,
        duration: started.elapsed(),
        max_gap: Duration::ZERO,
        frames: 0,
    };
    let Ok(mut tcp) = tokio::net::TcpStream::connect(&addr).await else {
        return failed(started);
    };
    let _ = tcp.set_nodelay(true);
    if tcp.write_all(&body).await.is_err() {
        return failed(started);
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut carry: Vec<u8> = Vec::with_capacity(16 * 1024 + 16);
    let mut last = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut frames = 0;
    let mut done = false;
    while !done {
        let n = match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = Instant::now();
        max_gap = max_gap.max(now - last);
        last = now;
        // Keep the last bytes of the previous read so a pattern split across reads is seen
        // once; 12 bytes are shorter than either pattern can repeat within.
        let keep = carry.len().saturating_sub(12);
        carry.drain(..keep);
        let scan_from = carry.len();
        carry.extend_from_slice(&buf[..n]);
        frames += carry
            .windows(6)
            .enumerate()
            .filter(|(i, w)| *w == b"data: " && i + 6 > scan_from)
            .count();
        done = carry.windows(13).any(|w| w == b"data: [DONE]\n");
    }
    Outcome { ok: done, duration: started.elapsed(), max_gap, frames }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let parsed = reqwest::Url::parse(&args.url).expect("a valid --url");
    let host = parsed.host_str().unwrap_or_default();
    assert!(
        ["127.0.0.1", "localhost", "[::1]"].contains(&host),
        "loopback targets only, got {host}"
    );
    let url = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    let knobs = format!("tokens={}; token_delay_ms={}", args.tokens, args.delay_ms);
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(0).tcp_nodelay(true).build().unwrap();

    let addr = format!("{}:{}", host, parsed.port().unwrap_or(80));
    let json = serde_json::json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "capacity probe"}]})
    .to_string();
    let raw = std::sync::Arc::new(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\nx-fake-llm: {knobs}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
            json.len()
        )
        .into_bytes(),
    );

    let cpu_before = args.pid.and_then(cpu_ticks);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.streams)
        .map(|_| {
            if args.reqwest {
                tokio::spawn(one_stream(client.clone(), url.clone(), knobs.clone()))
            } else {
                tokio::spawn(one_stream_raw(addr.clone(), raw.clone()))
            }
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let wall = started.elapsed();
    let cpu_after = args.pid.and_then(cpu_ticks);

    let ok = outcomes.iter().filter(|o| o.ok).count();
    let mut durations: Vec<Duration> =
        outcomes.iter().filter(|o| o.ok).map(|o| o.duration).collect();
    durations.sort();
    let mut gaps: Vec<Duration> = outcomes.iter().filter(|o| o.ok).map(|o| o.max_gap).collect();
    gaps.sort();
    let frames: usize = outcomes.iter().map(|o| o.frames).sum();
    let ideal = Duration::from_millis(args.delay_ms * u64::from(args.tokens.saturating_sub(1)));
    println!(
        "streams={} ok={} failed={} wall={:.2}s frames={} ({:.0} frames/s)",
        args.streams,
        ok,
        args.streams - ok,
        wall.as_secs_f64(),
        frames,
        frames as f64 / wall.as_secs_f64()
    );
    println!(
        "stream duration: ideal={:?} p50={:?} p99={:?} max={:?}",
        ideal,
        percentile(&durations, 0.5),
        percentile(&durations, 0.99),
        percentile(&durations, 1.0)
    );
    println!(
        "worst inter-chunk gap per stream: p50={:?} p99={:?} max={:?}",
        percentile(&gaps, 0.5),
        percentile(&gaps, 0.99),
        percentile(&gaps, 1.0)
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let cpu = (after - before) as f64 / 100.0;
        println!(
            "fake-llm CPU: {:.2}s over {:.2}s wall = {:.0}% of one core",
            cpu,
            wall.as_secs_f64(),
            100.0 * cpu / wall.as_secs_f64()
        );
    }
}
