//! `cache-eval`: runs the cache's hit decision over labelled prompt pairs and prints
//! precision, recall and hit rate at the configured settings; `--bench` times the embedding
//! model and a lookup over 100,000 entries. The model runs as the engine runs it (int8 where
//! the CPU has AVX-512 VNNI); `--f32` runs the F32 reference instead.
//!
//! ```text
//! cargo run --release -p engine --bin cache-eval -- \
//!     --model-dir ~/.cache/switchyard/minilm --sts-dir ~/.cache/switchyard/sts_b
//! ```
//!
//! The decision is the cache's own: different scope (context, system prompt, model) → miss;
//! same normalised question → exact hit; else cosine ≥ threshold and the verification stage
//! passes → semantic hit. Pairs: `data/cache-eval/pairs.tsv` (hand-written near misses and
//! paraphrases, labelled) and the STS-B dev+test pairs, labelled from their 0–5 similarity
//! score: ≥ 4.5 `same`, ≤ 3.5 `different`, the band between left out as ambiguous.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use actors::ports::llm::{ChatMessage, GenerationRequest};
use anyhow::{Context, bail};
use clap::Parser;
use engine::cache::index::{VectorIndex, dot};
use engine::cache::key::key_for;
use engine::cache::minilm::MiniLm;
use engine::cache::verify::{Verdict, VerifyPolicy, verify};
use engine::config::CacheConfig;

#[derive(Parser)]
#[command(about = "Evaluate the response cache's hit decision on labelled pairs")]
struct Args {
    /// all-MiniLM-L6-v2 directory (sentence-transformers layout).
    #[arg(long, env = "SWITCHYARD_EMBEDDING_MODEL_DIR")]
    model_dir: PathBuf,
    /// Hand-written pairs.
    #[arg(long, default_value = "data/cache-eval/pairs.tsv")]
    pairs: PathBuf,
    /// Directory with STS-B's sts-dev.csv and sts-test.csv (skipped when absent).
    #[arg(long)]
    sts_dir: Option<PathBuf>,
    /// Cosine threshold (default: the engine's `cache.similarity_threshold`).
    #[arg(long)]
    threshold: Option<f32>,
    /// Content words allowed to differ (default: `cache.max_unmatched_terms`).
    #[arg(long)]
    max_unmatched: Option<usize>,
    /// Also print a grid of thresholds × max_unmatched.
    #[arg(long)]
    sweep: bool,
    /// Time the embedding model and a 100,000-entry lookup instead.
    #[arg(long)]
    bench: bool,
    /// Print every wrong hit.
    #[arg(long)]
    verbose: bool,
    /// Run the model in F32 on candle even where the CPU has the int8 kernel.
    #[arg(long)]
    f32: bool,
}

#[derive(Clone, PartialEq, Eq)]
enum Label {
    Same,
    Different,
}

struct Pair {
    set: &'static str,
    category: String,
    label: Label,
    context_a: Vec<String>,
    a: String,
    context_b: Vec<String>,
    b: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let model =
        if args.f32 { MiniLm::load_f32(&args.model_dir)? } else { MiniLm::load(&args.model_dir)? };
    println!("model: {} ({})", model.name(), model.precision());
    if args.bench {
        return bench(&model);
    }
    let defaults = CacheConfig::default();
    let threshold = args.threshold.unwrap_or(defaults.similarity_threshold);
    let policy = VerifyPolicy {
        max_unmatched_terms: args.max_unmatched.unwrap_or(defaults.max_unmatched_terms),
        strict_order: defaults.strict_order,
    };
    let mut pairs = read_pairs(&args.pairs)?;
    if let Some(dir) = &args.sts_dir {
        for file in ["sts-dev.csv", "sts-test.csv"] {
            pairs.extend(read_sts(&dir.join(file))?);
        }
    }
    let started = Instant::now();
    let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
    for p in &pairs {
        for text in [&p.a, &p.b] {
            if !vectors.contains_key(text) {
                vectors.insert(text.clone(), model.embed(text)?);
            }
        }
    }
    eprintln!("embedded {} prompts in {:.1?}", vectors.len(), started.elapsed());
    println!(
        "settings: similarity_threshold = {threshold}, max_unmatched_terms = {}, strict_order = {}",
        policy.max_unmatched_terms, policy.strict_order
    );
    report(&pairs, &vectors, threshold, &policy, true, args.verbose);
    println!("\nbaseline without the verification stage (cosine threshold only):");
    report(&pairs, &vectors, threshold, &policy, false, false);
    if args.sweep {
        println!(
            "\nsweep: threshold max_unmatched | near-miss precision, paraphrase recall | STS precision, recall"
        );
        for t in [0.70, 0.75, 0.80, 0.85, 0.90, 0.95] {
            for m in [0, 1, 2, 3] {
                let policy = VerifyPolicy { max_unmatched_terms: m, ..policy };
                let own =
                    score(pairs.iter().filter(|p| p.set == "pairs"), &vectors, t, &policy, true);
                let sts =
                    score(pairs.iter().filter(|p| p.set == "sts-b"), &vectors, t, &policy, true);
                println!(
                    "{t:.2} {m} | {:.4} {:.3} | {:.4} {:.3}",
                    own.precision(),
                    own.recall(),
                    sts.precision(),
                    sts.recall()
                );
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Score {
    pairs: usize,
    positives: usize,
    hits: usize,
    true_hits: usize,
    exact_hits: usize,
}

impl Score {
    fn precision(&self) -> f64 {
        if self.hits == 0 { 1.0 } else { self.true_hits as f64 / self.hits as f64 }
    }
    fn recall(&self) -> f64 {
        if self.positives == 0 { 0.0 } else { self.true_hits as f64 / self.positives as f64 }
    }
    fn hit_rate(&self) -> f64 {
        if self.pairs == 0 { 0.0 } else { self.hits as f64 / self.pairs as f64 }
    }
}

/// The cache's decision for "A is cached, B is asked": `None` = miss, else the tier.
fn decide(
    p: &Pair,
    vectors: &HashMap<String, Vec<f32>>,
    threshold: f32,
    policy: &VerifyPolicy,
    verification: bool,
) -> Option<&'static str> {
    let ka = key_for("gpt-4o", &request(&p.context_a, &p.a))?;
    let kb = key_for("gpt-4o", &request(&p.context_b, &p.b))?;
    if ka.scope != kb.scope {
        return None;
    }
    if ka.exact == kb.exact {
        return Some("exact");
    }
    let similarity = dot(vectors.get(&p.a)?, vectors.get(&p.b)?);
    if similarity < threshold {
        return None;
    }
    if verification && verify(&p.a, &p.b, policy) != Verdict::Same {
        return None;
    }
    Some("semantic")
}

fn request(context: &[String], prompt: &str) -> GenerationRequest {
    let mut messages: Vec<ChatMessage> = context
        .iter()
        .enumerate()
        .map(|(i, m)| if i % 2 == 0 { ChatMessage::user(m) } else { ChatMessage::assistant(m) })
        .collect();
    messages.push(ChatMessage::user(prompt));
    GenerationRequest { messages, ..Default::default() }
}

fn score<'a>(
    pairs: impl Iterator<Item = &'a Pair>,
    vectors: &HashMap<String, Vec<f32>>,
    threshold: f32,
    policy: &VerifyPolicy,
    verification: bool,
) -> Score {
    let mut s = Score::default();
    for p in pairs {
        s.pairs += 1;
        if p.label == Label::Same {
            s.positives += 1;
        }
        if let Some(kind) = decide(p, vectors, threshold, policy, verification) {
            s.hits += 1;
            if kind == "exact" {
                s.exact_hits += 1;
            }
            if p.label == Label::Same {
                s.true_hits += 1;
            }
        }
    }
    s
}

fn report(
    pairs: &[Pair],
    vectors: &HashMap<String, Vec<f32>>,
    threshold: f32,
    policy: &VerifyPolicy,
    verification: bool,
    verbose: bool,
) {
    println!(
        "{:<24} {:>6} {:>6} {:>6} {:>10} {:>8} {:>8}",
        "set / category", "pairs", "same", "hits", "precision", "recall", "hit rate"
    );
    let line = |name: &str, s: &Score| {
        println!(
            "{:<24} {:>6} {:>6} {:>6} {:>10.4} {:>8.3} {:>8.3}",
            name,
            s.pairs,
            s.positives,
            s.hits,
            s.precision(),
            s.recall(),
            s.hit_rate()
        );
    };
    for set in ["pairs", "sts-b"] {
        let in_set: Vec<&Pair> = pairs.iter().filter(|p| p.set == set).collect();
        if in_set.is_empty() {
            continue;
        }
        let name = if set == "pairs" { "hand-written (all)" } else { "STS-B dev+test" };
        line(name, &score(in_set.iter().copied(), vectors, threshold, policy, verification));
        let mut categories: Vec<&str> = in_set.iter().map(|p| p.category.as_str()).collect();
        categories.sort();
        categories.dedup();
        if set == "pairs" {
            for c in categories {
                let s = score(
                    in_set.iter().copied().filter(|p| p.category == c),
                    vectors,
                    threshold,
                    policy,
                    verification,
                );
                line(&format!("  {c}"), &s);
            }
        }
        if verbose {
            for p in &in_set {
                if p.label == Label::Different
                    && decide(p, vectors, threshold, policy, verification).is_some()
                {
                    println!("    WRONG HIT [{}] {:?} -> {:?}", p.category, p.a, p.b);
                }
            }
        }
    }
}

fn read_pairs(path: &Path) -> anyhow::Result<Vec<Pair>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let split_context = |c: &str| -> Vec<String> {
        if c.trim().is_empty() { Vec::new() } else { c.split(" || ").map(str::to_owned).collect() }
    };
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 6 {
            bail!("{}:{}: expected 6 tab-separated fields", path.display(), n + 1);
        }
        let label = match f[1] {
            "same" => Label::Same,
            "different" => Label::Different,
            other => bail!("{}:{}: unknown label {other}", path.display(), n + 1),
        };
        pairs.push(Pair {
            set: "pairs",
            category: f[0].to_owned(),
            label,
            context_a: split_context(f[2]),
            a: f[3].to_owned(),
            context_b: split_context(f[4]),
            b: f[5].to_owned(),
        });
    }
    Ok(pairs)
}

/// STS-B rows: genre, file, year, id, score, sentence 1, sentence 2 (tab-separated).
fn read_sts(path: &Path) -> anyhow::Result<Vec<Pair>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let mut pairs = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 7 {
            continue;
        }
        let Ok(score) = f[4].parse::<f32>() else { continue };
        let label = if score >= 4.5 {
            Label::Same
        } else if score <= 3.5 {
            Label::Different
        } else {
            continue;
        };
        pairs.push(Pair {
            set: "sts-b",
            category: "sts-b".into(),
            label,
            context_a: Vec::new(),
            a: f[5].to_owned(),
            context_b: Vec::new(),
            b: f[6].to_owned(),
        });
    }
    Ok(pairs)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bench(model: &MiniLm) -> anyhow::Result<()> {
    let prompt = "Could you please explain how I should configure the retry policy for \
                  failed payment webhooks in our staging environment?";
    let tokens = model.tokenize(prompt).len();
    for _ in 0..5 {
        model.embed(prompt)?;
    }
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        model.embed(prompt)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "embed, {tokens} tokens (threads: {}): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into()),
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        percentile(&times, 0.99)
    );

    // 100,000 entries of one tenant in one scope: the worst case for a lookup.
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let mut index = VectorIndex::new(model.dimensions());
    let base = model.embed(prompt)?;
    for id in 0..100_000u64 {
        let mut v: Vec<f32> =
            base.iter().map(|x| x * 0.2 + rng.random_range(-0.1f32..0.1)).collect();
        engine::cache::embed::normalize(&mut v);
        index.insert(id, &v);
    }
    let policy = VerifyPolicy::default();
    let mut times = Vec::new();
    for i in 0..500 {
        let mut q: Vec<f32> =
            base.iter().map(|x| x * 0.2 + rng.random_range(-0.1f32..0.1)).collect();
        engine::cache::embed::normalize(&mut q);
        let t = Instant::now();
        let found = index.search(&q, 4);
        // Verification of the candidates is part of a lookup.
        for _ in &found {
            std::hint::black_box(verify(prompt, "Explain how to configure retries", &policy));
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box((i, found));
    }
    times.sort_by(f64::total_cmp);
    println!(
        "lookup over {} entries (search + verification of 4 candidates): p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms",
        index.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        percentile(&times, 0.99)
    );
    Ok(())
}
