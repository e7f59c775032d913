//! Scenario knobs: what a fake upstream should do for one request (latency, length, faults).
//!
//! The server's defaults come from the CLI flags (or `FakeLlmServer::start`); each request may
//! override them with an `x-fake-llm: key=value; key2` header, parsed by
//! [`Scenario::parse_header`]. Keys are the flag names with `-` turned into `_` (both spellings
//! are accepted).

/// What the fake does for one request. Defaults: no latency, 16 tokens, no faults.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Time to first token; for non-streaming responses it delays the whole answer.
    pub ttft_ms: u64,
    /// Delay between two streamed tokens (non-streaming responses wait for all of them).
    pub token_delay_ms: u64,
    /// Number of tokens generated before a natural `stop` / `end_turn`.
    pub tokens: u32,
    /// Answer immediately with this HTTP status and the provider's error body for it.
    pub error_status: Option<u16>,
    /// `Retry-After` seconds on injected errors; 429/503/529 default to 1.
    pub retry_after: Option<u64>,
    /// Refines `error_status` (e.g. `context_length_exceeded` with 400).
    pub error_code: Option<String>,
    /// After N tokens, send the provider's in-band stream error and end the body cleanly.
    pub break_after: Option<u32>,
    /// After N tokens, abort the connection without finishing the chunked body.
    pub drop_after: Option<u32>,
    /// Accept the request and never answer.
    pub hang: bool,
    /// Stream N tokens, then stay silent with the connection open.
    pub hang_after: Option<u32>,
    /// After N tokens, send one frame that is not valid JSON, then carry on.
    pub malformed_after: Option<u32>,
    /// Reject conversations that end with an assistant message (no prefill support).
    pub reject_prefill: bool,
    /// Share of requests (0.0–1.0) that fail with a 500/503/529-style error, decided by `seed`.
    pub fail_rate: f64,
    /// Seeds the generated text and the `fail_rate` draws.
    pub seed: u64,
    /// Answer lengths and prompt token counts shaped like a real model's (`realistic.rs`)
    /// instead of `tokens` and word counts.
    pub realistic: bool,
}

/// Default token count: long enough to exercise streaming, short enough for fast tests.
pub const DEFAULT_TOKENS: u32 = 16;

impl Default for Scenario {
    // Hand-written rather than derived so that `Scenario::default()` produces a useful answer
    // (16 tokens, matching the CLI default) instead of an empty one.
    fn default() -> Self {
        Scenario {
            ttft_ms: 0,
            token_delay_ms: 0,
            tokens: DEFAULT_TOKENS,
            error_status: None,
            retry_after: None,
            error_code: None,
            break_after: None,
            drop_after: None,
            hang: false,
            hang_after: None,
            malformed_after: None,
            reject_prefill: false,
            fail_rate: 0.0,
            seed: 0,
            realistic: false,
        }
    }
}

impl Scenario {
    /// Applies an `x-fake-llm` header value on top of `defaults`.
    ///
    /// The value is `key=value` pairs separated by `;` or `,`, whitespace allowed; a bare key
    /// (`hang`) sets a boolean. `none` clears an optional knob set by the defaults
    /// (`error_status=none`). The error names the offending knob, ready for a 400 body.
    pub fn parse_header(defaults: &Scenario, value: &str) -> Result<Scenario, String> {
        let mut s = defaults.clone();
        for part in value.split([';', ',']) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (key, val) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (part, None),
            };
            let key = key.to_ascii_lowercase().replace('-', "_");
            match key.as_str() {
                "ttft_ms" => s.ttft_ms = num(&key, val)?,
                "token_delay_ms" => s.token_delay_ms = num(&key, val)?,
                "tokens" => s.tokens = num(&key, val)?,
                "error_status" => {
                    s.error_status = opt(&key, val, num::<u16>)?;
                    if let Some(code) = s.error_status
                        && !(400..=599).contains(&code)
                    {
                        return Err(format!(
                            "invalid x-fake-llm knob `error_status`: expected an HTTP error status 400-599, got `{code}`"
                        ));
                    }
                }
                "retry_after" => s.retry_after = opt(&key, val, num)?,
                "error_code" => s.error_code = opt(&key, val, text)?,
                "break_after" => s.break_after = opt(&key, val, num)?,
                "drop_after" => s.drop_after = opt(&key, val, num)?,
                "hang" => s.hang = flag(&key, val)?,
                "hang_after" => s.hang_after = opt(&key, val, num)?,
                "malformed_after" => s.malformed_after = opt(&key, val, num)?,
                "reject_prefill" => s.reject_prefill = flag(&key, val)?,
                "fail_rate" => {
                    let p: f64 = num(&key, val)?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(format!(
                            "invalid x-fake-llm knob `fail_rate`: expected a share between 0 and 1, got `{p}`"
                        ));
                    }
                    s.fail_rate = p;
                }
                "seed" => s.seed = num(&key, val)?,
                "realistic" => s.realistic = flag(&key, val)?,
                _ => {
                    return Err(format!(
                        "unknown x-fake-llm knob `{key}` (known: ttft_ms, token_delay_ms, tokens, error_status, retry_after, error_code, break_after, drop_after, hang, hang_after, malformed_after, reject_prefill, fail_rate, seed, realistic)"
                    ));
                }
            }
        }
        Ok(s)
    }

    /// Tokens to generate for a reply to `prompt` (the last user message): the fixed
    /// `tokens`, or in `realistic` mode what a real model would write.
    pub(crate) fn reply_budget(&self, prompt: &str) -> u32 {
        if self.realistic { super::realistic::reply_tokens(prompt) } else { self.tokens }
    }

    /// Prompt tokens of one piece of text: words, or in `realistic` mode a BPE estimate.
    pub(crate) fn text_tokens(&self, text: &str) -> u64 {
        if self.realistic {
            super::realistic::count_tokens(text)
        } else {
            super::text::word_count(text)
        }
    }

    /// Whether the `seq`-th request the server received should fail under `fail_rate`.
    ///
    /// A pure function of (`seed`, `seq`), so a sequential client sees the same pass/fail
    /// pattern on every run; a retry is a new request and gets a fresh draw.
    pub(crate) fn draws_failure(&self, seq: u64) -> bool {
        if self.fail_rate <= 0.0 {
            return false;
        }
        unit(crate::fake_llm::text::mix(self.seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            < self.fail_rate
    }

    /// `Retry-After` for an injected error with this status: explicit, else 1 s for the
    /// statuses real providers send it with.
    pub(crate) fn retry_after_for(&self, status: u16) -> Option<u64> {
        self.retry_after.or(matches!(status, 429 | 503 | 529).then_some(1))
    }
}

/// Maps 64 random bits to [0, 1).
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn num<T: std::str::FromStr>(key: &str, val: Option<&str>) -> Result<T, String> {
    let v = val.ok_or_else(|| format!("invalid x-fake-llm knob `{key}`: it needs a value"))?;
    v.parse().map_err(|_| format!("invalid x-fake-llm knob `{key}`: `{v}` is not a valid number"))
}

fn text(key: &str, val: Option<&str>) -> Result<String, String> {
    match val {
        Some(v) if !v.is_empty() => Ok(v.to_owned()),
        _ => Err(format!("invalid x-fake-llm knob `{key}`: it needs a value")),
    }
}

fn opt<T>(
    key: &str,
    val: Option<&str>,
    parse: impl Fn(&str, Option<&str>) -> Result<T, String>,
) -> Result<Option<T>, String> {
    match val {
        Some(v) if v.eq_ignore_ascii_case("none") => Ok(None),
        _ => parse(key, val).map(Some),
    }
}

fn flag(key: &str, val: Option<&str>) -> Result<bool, String> {
    match val.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(other) => {
            Err(format!("invalid x-fake-llm knob `{key}`: expected true/false, got `{other}`"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_header_keeps_defaults() {
        let d = Scenario { tokens: 7, ..Scenario::default() };
        let s = Scenario::parse_header(&d, "  ").unwrap();
        assert_eq!(s.tokens, 7);
        assert!(!s.hang);
    }

    #[test]
    fn parses_every_knob_with_both_separators_and_spellings() {
        let s = Scenario::parse_header(
            &Scenario::default(),
            "ttft_ms=5; token-delay-ms = 2, tokens=3;error_status=429;retry_after=7;\
             error_code=context_length_exceeded; break_after=1, drop_after=2; hang; hang_after=4;\
             malformed_after=0; reject_prefill; fail_rate=0.25; seed=99; realistic",
        )
        .unwrap();
        assert_eq!(s.ttft_ms, 5);
        assert_eq!(s.token_delay_ms, 2);
        assert_eq!(s.tokens, 3);
        assert_eq!(s.error_status, Some(429));
        assert_eq!(s.retry_after, Some(7));
        assert_eq!(s.error_code.as_deref(), Some("context_length_exceeded"));
        assert_eq!(s.break_after, Some(1));
        assert_eq!(s.drop_after, Some(2));
        assert!(s.hang);
        assert_eq!(s.hang_after, Some(4));
        assert_eq!(s.malformed_after, Some(0));
        assert!(s.reject_prefill);
        assert_eq!(s.fail_rate, 0.25);
        assert_eq!(s.seed, 99);
        assert!(s.realistic);
    }

    #[test]
    fn header_overrides_and_clears_defaults() {
        let d = Scenario { error_status: Some(500), hang: true, ..Scenario::default() };
        let s = Scenario::parse_header(&d, "error_status=none; hang=false").unwrap();
        assert_eq!(s.error_status, None);
        assert!(!s.hang);
    }

    #[test]
    fn bad_knobs_name_the_knob() {
        let d = Scenario::default();
        for (header, knob) in [
            ("tokens=abc", "`tokens`"),
            ("tokens", "`tokens`"),
            ("bogus=1", "`bogus`"),
            ("fail_rate=2", "`fail_rate`"),
            ("error_status=200", "`error_status`"),
            ("hang=maybe", "`hang`"),
            ("error_code=", "`error_code`"),
        ] {
            let err = Scenario::parse_header(&d, header).unwrap_err();
            assert!(err.contains(knob), "{header}: {err}");
        }
    }

    #[test]
    fn fail_rate_draws_are_deterministic_and_roughly_proportional() {
        let s = Scenario { fail_rate: 0.3, seed: 42, ..Scenario::default() };
        let a: Vec<bool> = (0..1000).map(|i| s.draws_failure(i)).collect();
        let b: Vec<bool> = (0..1000).map(|i| s.draws_failure(i)).collect();
        assert_eq!(a, b);
        let fails = a.iter().filter(|f| **f).count();
        assert!((220..380).contains(&fails), "{fails}");
        let other = Scenario { seed: 43, ..s };
        let c: Vec<bool> = (0..1000).map(|i| other.draws_failure(i)).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn retry_after_defaults_only_for_retryable_statuses() {
        let s = Scenario::default();
        assert_eq!(s.retry_after_for(429), Some(1));
        assert_eq!(s.retry_after_for(529), Some(1));
        assert_eq!(s.retry_after_for(500), None);
        let s = Scenario { retry_after: Some(9), ..s };
        assert_eq!(s.retry_after_for(500), Some(9));
    }
}
