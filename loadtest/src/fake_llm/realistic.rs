//! The `realistic` mode: token counts shaped like a real model's, for cost benchmarks.
//!
//! By default the fake answers every prompt with the scenario's fixed `tokens` and counts
//! prompt tokens as words, which is right for latency tests and wrong for cost: what a turn
//! costs depends on how long the answer is, and a real model writes two sentences for "what
//! is the capital of Peru?" and two thousand words for "write a detailed guide to …". With
//! `realistic` (the `--realistic` flag, or `realistic` in the `x-fake-llm` header):
//!
//! - the answer's length is [`reply_tokens`] of the last user message: a deterministic
//!   function of what the prompt asks for (a greeting, a lookup, an explanation, code, a
//!   proof, a design, an essay of N words), with ±25% spread from a hash of the prompt, so the
//!   same prompt always gets the same length whichever model serves it; `max_tokens` still
//!   cuts it (`finish_reason: length` / `stop_reason: max_tokens`), as it would upstream;
//! - prompt tokens are [`count_tokens`], an approximation of a BPE tokenizer (about 1.3
//!   tokens per English word, more for code, numbers and non-Latin scripts), plus the same
//!   per-message overhead as the default mode;
//! - usage is reported where and how each provider reports it (OpenAI `usage` on the
//!   completion or the final chunk, Anthropic `message_start` / `message_delta`), and the
//!   output count is exactly the number of tokens sent.
//!
//! This is not the engine's complexity scorer and shares no code with it: it models the
//! *answer*, the scorer guesses the *model needed*.

use super::text::{fnv1a, mix};

/// Approximate BPE tokens of `text` (shaped like OpenAI's `cl100k`/`o200k`): a short word is
/// one token and longer ones one more per five letters; digits go in threes; punctuation and
/// symbols are a token each; CJK characters one each; other non-ASCII letters count double.
pub fn count_tokens(text: &str) -> u64 {
    let mut tokens = 0u64;
    // Letters (weighted) in the current word, digits in the current number.
    let mut letters = 0u64;
    let mut digits = 0u64;
    let flush = |letters: &mut u64, digits: &mut u64, tokens: &mut u64| {
        if *letters > 0 {
            *tokens += 1 + (*letters - 1) / 5;
            *letters = 0;
        }
        if *digits > 0 {
            *tokens += (*digits).div_ceil(3);
            *digits = 0;
        }
    };
    let mut newline_run = false;
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            if digits > 0 {
                flush(&mut 0, &mut digits, &mut tokens);
            }
            letters += 1;
        } else if c.is_ascii_digit() {
            if letters > 0 {
                flush(&mut letters, &mut 0, &mut tokens);
            }
            digits += 1;
        } else {
            flush(&mut letters, &mut digits, &mut tokens);
            if c == '\n' {
                // A run of blank lines is one token.
                if !newline_run {
                    tokens += 1;
                }
                newline_run = true;
                continue;
            }
            if c.is_whitespace() {
                // Spaces join the following word.
            } else if c >= '\u{2E80}' && c.is_alphabetic() {
                tokens += 1;
            } else if c.is_alphabetic() {
                // Accented Latin, Cyrillic, Greek: split finer than English.
                letters += 2;
                continue;
            } else {
                tokens += if c.is_ascii() { 1 } else { 2 };
            }
        }
        newline_run = false;
    }
    flush(&mut letters, &mut digits, &mut tokens);
    tokens
}

/// What a real model would write in answer to `prompt` (the last user message), in tokens.
pub fn reply_tokens(prompt: &str) -> u32 {
    let lower = prompt.to_lowercase();
    let words = prompt.split_whitespace().count();
    let word_list: Vec<&str> =
        lower.split(|c: char| !(c.is_alphanumeric() || c == '+' || c == '#')).collect();
    // A plain word must occur as a word ("api" is not in "capital"); a phrase or a symbol
    // anywhere.
    let has = |cues: &[&str]| {
        cues.iter().any(|c| {
            if c.chars().all(char::is_alphanumeric) {
                word_list.contains(c)
            } else {
                lower.contains(c)
            }
        })
    };

    // (low, high) token range of the kind of answer asked for; the most specific cue wins.
    let (low, high): (u32, u32) = if let Some(n) = requested_words(&lower) {
        // "a 2000-word essay": about 1.35 tokens per English word.
        let t = (n as f32 * 1.35) as u32;
        (t * 9 / 10, t * 11 / 10)
    } else if has(&[
        "essay",
        "report",
        "business plan",
        "comprehensive",
        "in-depth",
        "detailed guide",
        "detailed technical",
        "literature review",
        "chapter",
        "short story in the style",
    ]) {
        (1300, 2200)
    } else if has(&[
        "design",
        "architect",
        "architecture",
        "trade-off",
        "trade-offs",
        "tradeoffs",
        "compare",
        "analyse",
        "analyze",
        "analysis",
        "evaluate",
    ]) && words >= 12
    {
        (700, 1300)
    } else if has(&[
        "implement",
        "refactor",
        "optimise",
        "optimize",
        "write a",
        "write an",
        "write unit",
    ]) && has(CODE_CUES)
    {
        if has(&["lock-free", "parser", "raft", "garbage collector", "b-tree", "regex engine"]) {
            (800, 1500)
        } else {
            (300, 700)
        }
    } else if has(&[
        "prove",
        "proof",
        "derive",
        "démontrez",
        "show that",
        "rigorous",
        "traceback",
        "panicked",
        "exception",
        "deadlock",
        "leak",
        "crashes",
        "crash",
    ]) {
        // A proof, or a diagnosis of a failure.
        (450, 900)
    } else if has(&["explain", "how does", "how do", "why", "what causes", "walk me through"]) {
        if has(&["briefly", "one sentence", "simple terms"]) { (60, 140) } else { (280, 550) }
    } else if has(&["plan", "itinerary", "schedule", "checklist", "workout", "agenda", "routine"]) {
        (300, 600)
    } else if has(&["email", "letter", "post", "story", "speech", "toast", "poem", "bio", "faq"]) {
        (180, 420)
    } else if has(&["summarize", "summarise", "summary", "tl;dr", "résume"]) {
        (80, 200)
    } else if has(&["translate", "traduce", "übersetze", "переведи", "how do you say"]) {
        let t = count_tokens(prompt) as u32;
        (t / 2 + 5, t + 15)
    } else if has(&["solve", "calculate", "compute", "integrate", "derivative", "probability"]) {
        (150, 380)
    } else if has(CODE_CUES) {
        (90, 260)
    } else if words <= 4 && !lower.contains('?') {
        // "hi", "thanks!", "ok cool".
        (8, 30)
    } else if words <= 12 {
        // Lookups and chit-chat: a sentence or two.
        (20, 90)
    } else {
        (120, 320)
    };
    let (low, high) = if has(&["one sentence", "one line", "one-liner", "briefly", "short answer"])
    {
        (low.div_ceil(3), high.div_ceil(3).max(low.div_ceil(3) + 1))
    } else {
        (low, high)
    };
    // Deterministic spread within the range.
    let spread = mix(fnv1a(prompt.as_bytes())) % u64::from(high - low + 1);
    (low + spread as u32).max(1)
}

const CODE_CUES: &[&str] = &[
    "python",
    "javascript",
    "typescript",
    "java",
    "rust",
    "golang",
    "c++",
    "sql",
    "bash",
    "function",
    "class",
    "script",
    "code",
    "```",
    "regex",
    "react",
    "docker",
    "api",
];

/// "2000-word", "1500 words", "3 pages" → words asked for.
fn requested_words(lower: &str) -> Option<u32> {
    let tokens: Vec<&str> = lower.split(|c: char| !(c.is_alphanumeric() || c == '-')).collect();
    let mut best = None;
    for (i, t) in tokens.iter().enumerate() {
        let (number, unit) = match t.split_once('-') {
            Some((n, u)) => (n, Some(u)),
            None => (*t, tokens.get(i + 1).copied()),
        };
        let Ok(n) = number.parse::<u32>() else { continue };
        let words = match unit {
            Some("word" | "words") => n,
            Some("page" | "pages") => n.saturating_mul(400),
            _ => continue,
        };
        best = Some(best.map_or(words, |b: u32| b.max(words)));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_look_like_bpe() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("hello world"), 2);
        // Long words split; punctuation is its own token.
        assert_eq!(count_tokens("internationalization!"), 5);
        // Digits in threes.
        assert_eq!(count_tokens("1234567"), 3);
        // CJK: a token a character.
        assert_eq!(count_tokens("中国的首都"), 5);
        // Prose comes out near 1.3 tokens a word.
        let prose = "The committee met on Tuesday and reviewed the budget for the new library, \
                     which is expected to open in the spring of next year.";
        let words = prose.split_whitespace().count() as f64;
        let ratio = count_tokens(prose) as f64 / words;
        assert!((1.0..1.6).contains(&ratio), "{ratio}");
    }

    #[test]
    fn replies_are_short_for_simple_turns_and_long_for_hard_ones() {
        let hi = reply_tokens("hi");
        let lookup = reply_tokens("What is the capital of Australia?");
        let explain = reply_tokens("Explain how public key encryption works at a high level.");
        let code = reply_tokens(
            "Implement a lock-free single-producer single-consumer ring buffer in C++.",
        );
        let design = reply_tokens(
            "Design a URL shortener that handles 10,000 writes per second; discuss the trade-offs.",
        );
        let essay = reply_tokens("Write a 2000-word essay on the history of cryptography.");
        assert!(hi <= 30, "{hi}");
        assert!(lookup <= 90, "{lookup}");
        assert!((280..=550).contains(&explain), "{explain}");
        assert!(code >= 800, "{code}");
        assert!(design >= 700, "{design}");
        assert!((2400..=3000).contains(&essay), "{essay}");
        assert!(lookup < explain && explain < design && design < essay);
    }

    #[test]
    fn replies_are_deterministic_and_spread() {
        let a = reply_tokens("What is the capital of Peru?");
        assert_eq!(a, reply_tokens("What is the capital of Peru?"));
        let lengths: std::collections::BTreeSet<u32> = [
            "What is the capital of Peru?",
            "What is the capital of Chile?",
            "What is the capital of Kenya?",
            "What is the capital of Japan?",
        ]
        .iter()
        .map(|p| reply_tokens(p))
        .collect();
        assert!(lengths.len() > 1, "{lengths:?}");
    }

    #[test]
    fn brevity_requests_shorten_the_answer() {
        let full = reply_tokens("Explain what photosynthesis is.");
        let short = reply_tokens("Explain what photosynthesis is, in one sentence.");
        assert!(short < full, "{short} vs {full}");
    }

    #[test]
    fn requested_lengths_are_read() {
        assert_eq!(requested_words("a 2000-word essay"), Some(2000));
        assert_eq!(requested_words("at least 1500 words"), Some(1500));
        assert_eq!(requested_words("3 pages"), Some(1200));
        assert_eq!(requested_words("in 2024 we"), None);
    }

    /// Both wires report usage the way the providers do, and the counts are exactly what was
    /// sent: output tokens = tokens generated = `reply_tokens`, input = `count_tokens` + the
    /// per-message overhead.
    #[tokio::test]
    async fn usage_on_the_wire_matches_what_was_sent() {
        use crate::fake_llm::{FakeLlmServer, Scenario};
        use serde_json::{Value, json};

        let server = FakeLlmServer::start(Scenario::default()).unwrap();
        let http = reqwest::Client::new();
        let prompt = "Explain how public key encryption works at a high level.";
        let want_out = u64::from(reply_tokens(prompt));
        let want_in = count_tokens(prompt) + 3 + 3;

        let openai: Value = http
            .post(format!("{}/v1/chat/completions", server.base_url()))
            .header("authorization", "Bearer sk-test")
            .header("x-fake-llm", "realistic")
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let usage = &openai["usage"];
        assert_eq!(usage["completion_tokens"], want_out, "{openai}");
        assert_eq!(usage["prompt_tokens"], want_in, "{openai}");
        assert_eq!(usage["total_tokens"], want_in + want_out);
        let text = openai["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(text.split_whitespace().count() as u64, want_out);
        assert_eq!(openai["choices"][0]["finish_reason"], "stop");

        // Anthropic: the system prompt counts; `max_tokens` cuts the answer as upstream.
        let anthropic: Value = http
            .post(format!("{}/v1/messages", server.base_url()))
            .header("x-api-key", "sk-ant-test")
            .header("anthropic-version", "2023-06-01")
            .header("x-fake-llm", "realistic")
            .json(&json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 100,
                "system": "Be brief.",
                "messages": [{"role": "user", "content": prompt}],
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(anthropic["usage"]["output_tokens"], 100, "{anthropic}");
        assert_eq!(anthropic["stop_reason"], "max_tokens");
        assert_eq!(anthropic["usage"]["input_tokens"], count_tokens("Be brief.") + want_in);

        // Without the knob, the default fixed length is unchanged.
        let plain: Value = http
            .post(format!("{}/v1/chat/completions", server.base_url()))
            .header("authorization", "Bearer sk-test")
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(plain["usage"]["completion_tokens"], u64::from(crate::fake_llm::DEFAULT_TOKENS));
    }
}
