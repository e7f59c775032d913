//! Deterministic text: the vocabulary, the token generator, stop handling and word counts.
//!
//! A token is one vocabulary word plus its trailing space. The sequence is a pure function of
//! (prompt, seed), so tests can predict the exact text with [`deterministic_text`]. Words are
//! JSON-safe as written (no quote, backslash or control character), which lets the stream
//! writers copy them into frames without escaping; some are multi-byte UTF-8 so clients'
//! decoding is exercised.

/// Every token the fake can emit, trailing space included.
pub(crate) const VOCAB: &[&str] = &[
    "the ",
    "quick ",
    "brown ",
    "fox ",
    "jumps ",
    "over ",
    "lazy ",
    "dog ",
    "and ",
    "then ",
    "a ",
    "model ",
    "streams ",
    "tokens ",
    "to ",
    "every ",
    "client ",
    "in ",
    "order ",
    "while ",
    "the ",
    "router ",
    "picks ",
    "fallback ",
    "providers ",
    "when ",
    "one ",
    "breaks ",
    "so ",
    "users ",
    "see ",
    "coherent ",
    "answers ",
    "with ",
    "café ",
    "naïve ",
    "日本語 ",
    "🚀 ",
    "über ",
    "façade ",
    "résumé ",
    "jalapeño ",
    "привет ",
    "Ελληνικά ",
    "中文 ",
    "✨ ",
    "👍🏽 ",
    "smörgåsbord ",
    "of ",
    "data, ",
    "latency. ",
    "throughput! ",
    "cache? ",
    "yes; ",
    "(maybe) ",
    "42 ",
    "3.14 ",
    "fine-tuned ",
    "actor ",
    "supervisor ",
    "mailbox ",
    "restart ",
    "switchyard ",
    "signal ",
];

/// SplitMix64 finaliser: a stable, well-mixed hash step (unlike `rand`'s `SmallRng`, whose
/// algorithm may change between releases, this keeps the text identical across builds).
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over bytes: cheap and stable, used to seed the generator and hash embedding words.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The endless word sequence for one (prompt, seed).
#[derive(Clone, Debug)]
pub(crate) struct TokenGen {
    state: u64,
}

impl TokenGen {
    pub(crate) fn new(prompt: &str, seed: u64) -> Self {
        TokenGen { state: fnv1a(prompt.as_bytes()) ^ mix(seed) }
    }

    pub(crate) fn next_token(&mut self) -> &'static str {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let r = mix(self.state);
        VOCAB[(r % VOCAB.len() as u64) as usize]
    }
}

/// Why a generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The scenario's token count was reached: OpenAI `stop`, Anthropic `end_turn`.
    Complete,
    /// The client's `max_tokens` cut it short: `length` / `max_tokens`.
    Length,
    /// A token contained this stop sequence; that token is withheld.
    StopSequence(String),
}

/// One step of a [`Generation`].
pub(crate) enum Step {
    Token(&'static str),
    End(Finish),
}

/// A bounded generation: the token sequence cut by the token budget, `max_tokens` and stop
/// sequences. Used by both the streaming and the non-streaming paths so they agree exactly.
pub(crate) struct Generation {
    tokens: TokenGen,
    remaining: u32,
    capped: bool,
    stops: Vec<String>,
    ended: Option<Finish>,
}

impl Generation {
    pub(crate) fn new(
        prompt: &str,
        seed: u64,
        budget: u32,
        max_tokens: Option<u64>,
        stops: Vec<String>,
    ) -> Self {
        let (remaining, capped) = match max_tokens {
            Some(max) if max < u64::from(budget) => (max as u32, true),
            _ => (budget, false),
        };
        Generation {
            tokens: TokenGen::new(prompt, seed),
            remaining,
            capped,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ended: None,
        }
    }

    pub(crate) fn step(&mut self) -> Step {
        if let Some(finish) = &self.ended {
            return Step::End(finish.clone());
        }
        if self.remaining == 0 {
            let finish = if self.capped { Finish::Length } else { Finish::Complete };
            self.ended = Some(finish.clone());
            return Step::End(finish);
        }
        let token = self.tokens.next_token();
        if let Some(stop) = self.stops.iter().find(|s| token.contains(s.as_str())) {
            let finish = Finish::StopSequence(stop.clone());
            self.ended = Some(finish.clone());
            return Step::End(finish);
        }
        self.remaining -= 1;
        Step::Token(token)
    }

    /// Continues `partial` instead of starting afresh, as a real model does when it is given
    /// the start of its own answer: when `partial` is (up to trailing whitespace) the first
    /// `k` tokens of this generation, those are skipped and `k` comes off the token budget.
    /// Anything else is not ours to continue and is ignored: the answer starts from scratch.
    pub(crate) fn continue_after(mut self, partial: &str) -> Self {
        let target = partial.trim_end();
        if target.is_empty() {
            return self;
        }
        let mut probe = self.tokens.clone();
        let mut so_far = String::new();
        for k in 1..=self.remaining {
            so_far.push_str(probe.next_token());
            let trimmed = so_far.trim_end();
            if trimmed == target {
                self.tokens = probe;
                self.remaining -= k;
                return self;
            }
            if !target.starts_with(trimmed) {
                break;
            }
        }
        self
    }

    /// Runs to the end: the full text, its token count and why it ended.
    pub(crate) fn collect(mut self) -> (String, u32, Finish) {
        let mut text = String::new();
        let mut n = 0;
        loop {
            match self.step() {
                Step::Token(t) => {
                    text.push_str(t);
                    n += 1;
                }
                Step::End(finish) => return (text, n, finish),
            }
        }
    }
}

/// How a client asks a model to go on with an answer that was cut off, as opposed to asking
/// a new question: the user message that follows the partial answer mentions both.
fn is_continuation_request(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("continue") && (lower.contains("cut off") || lower.contains("where it stopped"))
}

/// Reads a conversation (role, text) the way the generator needs it: the prompt is the latest
/// real user message, and the partial answer to continue, if any, is a trailing assistant
/// message (prefill) or an assistant message followed by a request to continue it.
pub(crate) fn prompt_and_partial(turns: &[(&str, String)]) -> (String, Option<String>) {
    let latest_user = |turns: &[(&str, String)]| {
        turns
            .iter()
            .rev()
            .find(|(role, _)| *role == "user")
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    };
    match turns {
        [.., (role, partial)] if *role == "assistant" => {
            (latest_user(&turns[..turns.len() - 1]), Some(partial.clone()))
        }
        [.., (assistant, partial), (user, request)]
            if *assistant == "assistant" && *user == "user" && is_continuation_request(request) =>
        {
            (latest_user(&turns[..turns.len() - 2]), Some(partial.clone()))
        }
        _ => (latest_user(turns), None),
    }
}

/// The tokens the server streams for `prompt` (the last user message's text) with `seed` and a
/// budget of `tokens`, each with its trailing space; absent `max_tokens` and stop sequences.
pub fn deterministic_text(prompt: &str, seed: u64, tokens: u32) -> Vec<String> {
    let mut g = TokenGen::new(prompt, seed);
    (0..tokens).map(|_| g.next_token().to_owned()).collect()
}

/// Whitespace-separated words: the fake's notion of prompt tokens.
pub(crate) fn word_count(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_is_json_safe_and_has_multibyte_words() {
        for w in VOCAB {
            assert!(w.ends_with(' '));
            assert_eq!(serde_json::to_string(w).unwrap(), format!("\"{w}\""));
        }
        assert!(VOCAB.iter().any(|w| w.len() != w.chars().count()));
    }

    #[test]
    fn a_partial_answer_is_continued_not_repeated() {
        let full = deterministic_text("q", 0, 10).concat();
        let first4 = deterministic_text("q", 0, 4).concat();
        let (rest, n, _) =
            Generation::new("q", 0, 10, None, Vec::new()).continue_after(&first4).collect();
        assert_eq!(format!("{first4}{rest}"), full);
        assert_eq!(n, 6);
        // Trailing whitespace trimmed by a client (Anthropic prefill) still matches.
        let (rest, _, _) = Generation::new("q", 0, 10, None, Vec::new())
            .continue_after(first4.trim_end())
            .collect();
        assert_eq!(format!("{first4}{rest}"), full);
        // Someone else's text is not continued.
        let (fresh, _, _) =
            Generation::new("q", 0, 10, None, Vec::new()).continue_after("nope").collect();
        assert_eq!(fresh, full);
    }

    #[test]
    fn continuations_are_recognised_by_shape() {
        let turns = [("user", "hi".to_owned()), ("assistant", "par".to_owned())];
        assert_eq!(prompt_and_partial(&turns), ("hi".into(), Some("par".into())));
        let turns = [
            ("user", "hi".to_owned()),
            ("assistant", "par".to_owned()),
            (
                "user",
                "Your previous reply was cut off. Continue it exactly where it stopped.".to_owned(),
            ),
        ];
        assert_eq!(prompt_and_partial(&turns), ("hi".into(), Some("par".into())));
        let turns =
            [("user", "hi".to_owned()), ("assistant", "a".to_owned()), ("user", "next".to_owned())];
        assert_eq!(prompt_and_partial(&turns), ("next".into(), None));
    }

    #[test]
    fn same_prompt_and_seed_give_same_text() {
        assert_eq!(deterministic_text("hi", 1, 50), deterministic_text("hi", 1, 50));
        assert_ne!(deterministic_text("hi", 1, 50), deterministic_text("hi", 2, 50));
        assert_ne!(deterministic_text("hi", 1, 50), deterministic_text("ho", 1, 50));
        assert_eq!(deterministic_text("hi", 1, 0), Vec::<String>::new());
    }

    #[test]
    fn generation_honours_max_tokens_and_stop() {
        let want = deterministic_text("p", 0, 10);
        let (text, n, finish) = Generation::new("p", 0, 10, Some(4), vec![]).collect();
        assert_eq!((text, n, finish), (want[..4].concat(), 4, Finish::Length));

        let (text, n, finish) = Generation::new("p", 0, 10, Some(10), vec![]).collect();
        assert_eq!((text, n, finish), (want.concat(), 10, Finish::Complete));

        let stop = want[5].trim().to_owned();
        let first = want.iter().position(|w| w.contains(&stop)).unwrap();
        let (text, n, finish) = Generation::new("p", 0, 10, None, vec![stop.clone()]).collect();
        assert_eq!(text, want[..first].concat());
        assert_eq!(n as usize, first);
        assert_eq!(finish, Finish::StopSequence(stop));
    }

    #[test]
    fn counts_words() {
        assert_eq!(word_count("  hello   wide\nworld "), 3);
        assert_eq!(word_count(""), 0);
    }
}
