//! The verification stage: after the nearest-neighbour search found a cached prompt close to
//! the new one, decide whether its answer really answers the new question.
//!
//! Cosine similarity cannot tell "buy" from "sell", "30 miles to km" from "30 km to miles",
//! "from Lyon to Milan" from "from Milan to Lyon", or "not" from nothing: those pairs embed
//! within a few hundredths of each other. So a hit must also pass cheap symbolic checks,
//! each of which rejects on any doubt:
//!
//! 1. **numbers** (digits and number words, ordinals, `1,000` = `1000`) must be the same
//!    multiset;
//! 2. **negation** cues (`not`, `n't`, `never`, `without`, `except`, …) must be the same count;
//! 3. **content words** (stemmed, stop words and politeness fillers removed) may differ only
//!    by one-for-one substitutions, at most `max_unmatched_terms` of them — a word only one
//!    side has is a scope change — and never by a *critical* word: question words,
//!    quantifiers and scope words, direction and polarity words (buy/sell, before/after,
//!    upload/download, …), units, currencies, dates, and capitalised names;
//! 4. **order**: content words the two prompts share must come in the same order, and the
//!    word after each relation word (`from`, `to`, `than`, `of`, `in`, `for`, …) both prompts
//!    use must match — this is what catches swapped entities and swapped units, which share
//!    every word.
//!
//! The checks are deliberately one-sided: a rejected paraphrase costs one upstream call, a
//! wrong answer costs trust. `cache-eval` measures both sides on labelled pairs.

use std::collections::HashMap;

/// Tunables of the check (per tenant).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerifyPolicy {
    /// Content words allowed to differ between the prompts (never critical ones).
    pub max_unmatched_terms: usize,
    /// Reject when shared content words come in another order.
    pub strict_order: bool,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        VerifyPolicy { max_unmatched_terms: 1, strict_order: true }
    }
}

/// The outcome, with the reason for a rejection (for metrics and the evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Same,
    Different(&'static str),
}

/// Whether `asked` may be answered with the answer cached for `cached`.
pub fn verify(cached: &str, asked: &str, policy: &VerifyPolicy) -> Verdict {
    let a = Analysis::of(cached);
    let b = Analysis::of(asked);
    let mut na = a.numbers.clone();
    let mut nb = b.numbers.clone();
    na.sort();
    nb.sort();
    if na != nb {
        return Verdict::Different("numbers");
    }
    if a.negations != b.negations {
        return Verdict::Different("negation");
    }
    let (only_a, only_b) = unmatched(&a.content, &b.content);
    if only_a.iter().chain(&only_b).any(|w| w.critical) {
        return Verdict::Different("critical_term");
    }
    // A word only one side has adds or drops a condition ("with breakfast", "and write"):
    // that is a scope change. Only one-for-one substitutions of ordinary words pass.
    if only_a.len() != only_b.len() {
        return Verdict::Different("added_terms");
    }
    if only_a.len() > policy.max_unmatched_terms {
        return Verdict::Different("content_terms");
    }
    for (prep, object) in &a.prep_objects {
        if let Some((_, other)) = b.prep_objects.iter().find(|(p, _)| p == prep)
            && other != object
        {
            return Verdict::Different("relation");
        }
    }
    if !same_order(&a.content, &b.content, policy.strict_order) {
        return Verdict::Different("order");
    }
    Verdict::Same
}

#[derive(Debug, Clone)]
struct Term {
    stem: String,
    critical: bool,
}

#[derive(Debug, Default)]
struct Analysis {
    numbers: Vec<String>,
    negations: usize,
    /// Content terms in order (numbers included, so their order is checked too).
    content: Vec<Term>,
    /// (preposition, the next content term) for the relation words.
    prep_objects: Vec<(&'static str, String)>,
}

impl Analysis {
    fn of(text: &str) -> Analysis {
        let mut out = Analysis::default();
        let tokens = tokenize(text);
        let mut pending_prep: Option<&'static str> = None;
        for (i, token) in tokens.iter().enumerate() {
            let lower = token.to_lowercase();
            if let Some(n) = number(&lower) {
                out.numbers.push(n.clone());
                out.content.push(Term { stem: n.clone(), critical: true });
                if let Some(p) = pending_prep.take() {
                    out.prep_objects.push((p, n));
                }
                continue;
            }
            if let Some(op) = operator(&lower) {
                out.content.push(Term { stem: op.to_owned(), critical: true });
                continue;
            }
            if NEGATIONS.contains(&lower.as_str()) {
                out.negations += 1;
                continue;
            }
            if let Some(p) = RELATIONS.iter().find(|p| **p == lower) {
                pending_prep = Some(p);
                continue;
            }
            if STOP_WORDS.contains(&lower.as_str()) || FILLERS.contains(&lower.as_str()) {
                continue;
            }
            let stem = stem(&lower);
            // A capitalised word inside a sentence (or an acronym) is a name.
            let starts_sentence =
                i == 0 || tokens.get(i - 1).is_some_and(|t| matches!(t.as_str(), "." | "?" | "!"));
            let first_upper = token.chars().next().is_some_and(char::is_uppercase);
            let acronym = token.len() > 1 && token.chars().all(|c| !c.is_lowercase());
            let name = (first_upper && !starts_sentence) || acronym;
            let critical = name
                || CRITICAL.contains(&lower.as_str())
                || CRITICAL.contains(&stem.as_str())
                || UNITS.contains(&lower.as_str())
                || UNITS.contains(&stem.as_str());
            if lower.chars().all(|c| !c.is_alphanumeric()) {
                continue;
            }
            if let Some(p) = pending_prep.take() {
                out.prep_objects.push((p, stem.clone()));
            }
            out.content.push(Term { stem, critical });
        }
        out
    }
}

/// Content terms of each side that the other lacks (as multisets).
fn unmatched(a: &[Term], b: &[Term]) -> (Vec<Term>, Vec<Term>) {
    let mut counts: HashMap<&str, i32> = HashMap::new();
    for t in a {
        *counts.entry(&t.stem).or_default() += 1;
    }
    for t in b {
        *counts.entry(&t.stem).or_default() -= 1;
    }
    let mut only_a = Vec::new();
    let mut only_b = Vec::new();
    let mut left = counts.clone();
    for t in a {
        if let Some(c) = left.get_mut(t.stem.as_str())
            && *c > 0
        {
            *c -= 1;
            only_a.push(t.clone());
        }
    }
    for t in b {
        if let Some(c) = left.get_mut(t.stem.as_str())
            && *c < 0
        {
            *c += 1;
            only_b.push(t.clone());
        }
    }
    (only_a, only_b)
}

/// Whether the terms both sides have exactly once come in the same order. Critical terms
/// are always checked; with `strict`, every shared term is.
fn same_order(a: &[Term], b: &[Term], strict: bool) -> bool {
    let once = |terms: &[Term], stem: &str| terms.iter().filter(|t| t.stem == stem).count() == 1;
    let shared: Vec<&str> = a
        .iter()
        .filter(|t| strict || t.critical)
        .map(|t| t.stem.as_str())
        .filter(|s| once(a, s) && once(b, s))
        .collect();
    let in_b: Vec<&str> =
        b.iter().map(|t| t.stem.as_str()).filter(|s| shared.contains(s)).collect();
    shared == in_b
}

/// Words with `n't` and friends expanded; punctuation kept as separate tokens; `30km`
/// split into `30` and `km`; `1,000.5` kept whole.
fn tokenize(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, tokens: &mut Vec<String>| {
        if current.is_empty() {
            return;
        }
        let word = std::mem::take(current);
        let lower = word.to_lowercase();
        let expanded: Option<(&str, &str)> = match lower.as_str() {
            "can't" | "cannot" => Some(("can", "not")),
            "won't" => Some(("will", "not")),
            "shan't" => Some(("shall", "not")),
            _ => None,
        };
        if let Some((a, b)) = expanded {
            tokens.push(a.to_owned());
            tokens.push(b.to_owned());
        } else if let Some(base) = lower.strip_suffix("n't") {
            tokens.push(word[..base.len()].to_owned());
            tokens.push("not".to_owned());
        } else if let Some(pos) = word.find('\'') {
            // 's 're 'll 've 'd 'm: the base word carries the meaning that matters here.
            tokens.push(word[..pos].to_owned());
        } else {
            tokens.push(word);
        }
    };
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|j| chars.get(j)).copied().unwrap_or(' ');
        let next = chars.get(i + 1).copied().unwrap_or(' ');
        let in_number = (c == '.' || c == ',') && prev.is_ascii_digit() && next.is_ascii_digit();
        let apostrophe = (c == '\'' || c == '’') && prev.is_alphabetic() && next.is_alphabetic();
        if c.is_alphanumeric() || in_number || apostrophe {
            // Split between digits and letters (`30km`, `5pm`) but not inside `mp3`-like words
            // that start with a letter.
            let boundary = !current.is_empty()
                && current.chars().next().is_some_and(|f| f.is_ascii_digit())
                && (c.is_alphabetic() != prev.is_alphabetic())
                && !(c.is_alphabetic() && is_ordinal_suffix(&chars[i..]));
            if boundary {
                flush(&mut current, &mut tokens);
            }
            current.push(if c == '’' { '\'' } else { c });
        } else {
            flush(&mut current, &mut tokens);
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
        }
    }
    flush(&mut current, &mut tokens);
    tokens
}

fn is_ordinal_suffix(rest: &[char]) -> bool {
    let s: String =
        rest.iter().take_while(|c| c.is_alphabetic()).collect::<String>().to_lowercase();
    matches!(s.as_str(), "st" | "nd" | "rd" | "th")
}

/// Arithmetic and comparison, as symbols or words: `2 + 2` and `two plus two` agree,
/// `2 + 2` and `2 * 2` do not.
fn operator(lower: &str) -> Option<&'static str> {
    Some(match lower {
        "+" | "plus" | "add" => "+",
        "-" | "minus" | "subtract" => "-",
        "*" | "×" | "times" | "multiply" | "multiplied" => "*",
        "/" | "÷" | "divide" | "divided" => "/",
        "^" | "power" => "^",
        "=" | "equal" | "equals" => "=",
        "<" => "<",
        ">" => ">",
        "%" | "percent" => "%",
        "$" => "$",
        "€" => "€",
        "£" => "£",
        _ => return None,
    })
}

/// The canonical value of a number token, if it is one.
fn number(lower: &str) -> Option<String> {
    let digits = lower.trim_end_matches(|c: char| c.is_alphabetic());
    if !digits.is_empty() && digits.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        let plain: String = digits.chars().filter(|c| *c != ',').collect();
        return Some(match plain.parse::<f64>() {
            Ok(v) => format!("{v}"),
            Err(_) => plain,
        });
    }
    let value = match lower {
        "zero" | "none_number" => 0.0,
        "one" | "first" | "once" => 1.0,
        "two" | "second" | "twice" | "double" | "pair" => 2.0,
        "three" | "third" | "thrice" | "triple" => 3.0,
        "four" | "fourth" | "quarter" => 4.0,
        "five" | "fifth" => 5.0,
        "six" | "sixth" => 6.0,
        "seven" | "seventh" => 7.0,
        "eight" | "eighth" => 8.0,
        "nine" | "ninth" => 9.0,
        "ten" | "tenth" => 10.0,
        "eleven" => 11.0,
        "twelve" | "dozen" => 12.0,
        "thirteen" => 13.0,
        "fifteen" => 15.0,
        "twenty" => 20.0,
        "thirty" => 30.0,
        "forty" => 40.0,
        "fifty" => 50.0,
        "hundred" => 100.0,
        "thousand" => 1000.0,
        "million" => 1e6,
        "billion" => 1e9,
        "half" => 0.5,
        _ => return None,
    };
    Some(format!("{value}"))
}

/// Crude, symmetric suffix stripping: both prompts go through the same function, so it only
/// has to make `miles`/`mile` and `converting`/`convert` meet.
fn stem(word: &str) -> String {
    let w = word.trim_matches('\'');
    let n = w.len();
    let strip = |suffix: &str, min: usize| -> Option<String> {
        w.strip_suffix(suffix).filter(|s| s.len() >= min).map(str::to_owned)
    };
    if let Some(s) = strip("ies", 3) {
        return format!("{s}y");
    }
    for suffix in ["sses", "ches", "shes", "xes"] {
        if w.ends_with(suffix) && n > suffix.len() + 1 {
            return w[..n - 2].to_owned();
        }
    }
    if let Some(s) = strip("ing", 4) {
        return s;
    }
    if let Some(s) = strip("ed", 4) {
        return s;
    }
    if w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") && !w.ends_with("is") && n > 3 {
        return w[..n - 1].to_owned();
    }
    w.to_owned()
}

#[rustfmt::skip]
const NEGATIONS: &[&str] = &[
    "not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor", "without",
    "except", "excluding", "unless", "hardly", "barely", "lack", "lacking", "non",
];

/// The word after these names a role in a relation (`from X to Y`, `X than Y`,
/// `capital of X`): both prompts must fill each role they share with the same word.
#[rustfmt::skip]
const RELATIONS: &[&str] = &[
    "from", "to", "into", "than", "vs", "versus", "per", "against", "between", "over", "under",
    "of", "in", "for", "at", "on", "with", "about", "by",
];

#[rustfmt::skip]
const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does",
    "did", "doing", "have", "has", "had", "having", "of", "in", "on", "at", "by", "for", "with",
    "about", "as", "and", "or", "but", "if", "then", "so", "that", "this", "these", "those",
    "it", "its", "i", "me", "my", "mine", "we", "our", "us", "you", "your", "they", "them",
    "their", "there", "here", "can", "could", "would", "will", "may", "might", "just", "also",
    "too", "very", "really", "get", "got", "up", "out", "onto", "via", "s", "ll", "ve", "re",
    "d", "m", "one's", "myself", "yourself", "someone", "something", "thing", "things",
];

/// Politeness and framing words that do not change what is asked.
#[rustfmt::skip]
const FILLERS: &[&str] = &[
    "please", "kindly", "pls", "plz", "thanks", "thank", "hi", "hey", "hello", "quick",
    "quickly", "briefly", "brief", "simply", "simple", "exactly", "actually", "basically",
    "explain", "tell", "show", "describe", "know", "want", "wondering", "wonder", "help",
    "need", "like", "way", "ways", "question", "mind", "say", "give", "let", "find", "out",
    "curious", "possible", "going", "able", "understand", "clarify",
];

/// Words whose presence or absence changes the answer: question words, quantifiers and
/// scope, polarity and direction, comparison, time, people.
#[rustfmt::skip]
const CRITICAL: &[&str] = &[
    // question words and modality
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "whether", "should",
    "must", "shall", "ought",
    // quantifiers and scope
    "all", "some", "any", "every", "each", "only", "both", "either", "entire", "whole",
    "total", "average", "mean", "median", "most", "least", "many", "much", "few", "several",
    "more", "less", "fewer", "single", "multiple", "plural", "singular", "also", "include",
    "includ", "exclude", "exclud", "recursive", "recursively", "subfolder", "subdirectory",
    "nested", "hidden", "including", "everything", "anything", "alone", "together", "each",
    "other", "another", "same", "different", "difference", "similar", "between",
    // direction, polarity, opposites
    "buy", "sell", "bought", "sold", "purchase", "lend", "borrow", "send", "receive", "give",
    "increase", "decrease", "raise", "lower", "higher", "rise", "fall", "grow", "shrink",
    "before", "after", "above", "below", "over", "under", "up", "down", "min", "minimum",
    "max", "maximum", "add", "remove", "delete", "insert", "open", "close", "start", "stop",
    "begin", "end", "enable", "disable", "allow", "deny", "block", "unblock", "import",
    "export", "upload", "download", "push", "pull", "encrypt", "decrypt", "encode", "decode",
    "compress", "decompress", "zip", "unzip", "win", "lose", "gain", "loss", "profit",
    "debit", "credit", "input", "output", "left", "right", "north", "south", "east", "west",
    "first", "last", "early", "late", "earlier", "later", "cheap", "cheapest", "cheaper",
    "expensive", "best", "worst", "better", "worse", "good", "bad", "positive", "negative",
    "ascending", "descending", "long", "longer", "short", "shorter", "big", "bigger",
    "small", "smaller", "large", "larger", "hot", "cold", "warm", "cool", "true", "false",
    "male", "female", "men", "women", "man", "woman", "boy", "girl", "he", "she", "him",
    "her", "his", "hers", "old", "new", "older", "newer", "young", "younger", "past",
    "future", "yesterday", "today", "tomorrow", "morning", "afternoon", "evening", "night",
    "tonight", "weekly", "daily", "monthly", "annual", "annually", "yearly", "hourly", "hire",
    "fire", "accept", "reject", "inside", "outside", "internal", "external", "public",
    "private", "always", "sometimes", "often", "rarely", "usually", "safe", "unsafe",
    "legal", "illegal", "possible", "impossible", "pro", "con", "advantage", "disadvantage",
    "benefit", "risk", "fast", "faster", "fastest", "slow", "slower", "slowest", "high",
    "low", "highest", "lowest", "strong", "weak", "light", "heavy", "dark", "full", "empty",
    "easy", "hard", "simple", "complex", "heat", "cool", "freeze", "thaw", "rent", "own",
    "lease", "import", "export", "ahead", "behind", "forward", "backward", "reverse",
    "install", "uninstall", "upgrade", "downgrade", "connect", "disconnect", "lock",
    "unlock", "mount", "unmount", "sign", "join", "leave", "arrive", "depart", "departure",
    "arrival", "inbound", "outbound", "incoming", "outgoing", "spend", "save", "earn", "pay",
    "owe", "refund", "charge", "deposit", "withdraw", "withdrawal", "tax", "gross", "net",
    "pre", "post", "vegan", "vegetarian", "alcoholic", "decaf", "free", "paid", "premium",
    "beginner", "advanced", "expert", "kid", "child", "children", "adult", "senior", "dog",
    "cat", "yes", "maybe", "mac", "windows", "linux", "iphone", "android", "sunday", "monday",
    "tuesday", "wednesday", "thursday", "friday", "saturday", "january", "february", "march",
    "april", "may", "june", "july", "august", "september", "october", "november", "december",
    "spring", "summer", "autumn", "fall", "winter", "weekend", "weekday", "am", "pm",
    "noon", "midnight", "bc", "ad", "leap", "century", "decade", "ago", "since", "until",
    "within", "during", "next", "previous", "current", "latest", "oldest", "newest",
    "upper", "lowercase", "uppercase", "capital", "odd", "even", "prime", "sum", "product",
    "multiply", "divide", "subtract", "plus", "minus", "times", "square", "cube", "root",
    "double", "triple", "half", "quarter", "percent", "percentage", "rate", "ratio",
];

/// Units, currencies and measures.
#[rustfmt::skip]
const UNITS: &[&str] = &[
    "km", "kilometer", "kilometre", "mile", "mi", "m", "meter", "metre", "cm", "centimeter",
    "mm", "millimeter", "inch", "inche", "in", "feet", "foot", "ft", "yard", "yd", "kg",
    "kilogram", "g", "gram", "mg", "lb", "lbs", "pound", "ounce", "oz", "stone", "ton",
    "tonne", "liter", "litre", "l", "ml", "milliliter", "gallon", "quart", "pint", "cup",
    "tablespoon", "teaspoon", "tbsp", "tsp", "celsius", "fahrenheit", "kelvin", "c", "f",
    "degree", "hour", "hr", "minute", "min", "second", "sec", "day", "week", "month", "year",
    "usd", "eur", "gbp", "jpy", "chf", "cad", "aud", "cny", "inr", "dollar", "euro", "yen",
    "franc", "rupee", "yuan", "peso", "bitcoin", "btc", "eth", "mph", "kph", "kmh", "knot",
    "kb", "mb", "gb", "tb", "kib", "mib", "gib", "bit", "byte", "kw", "kwh", "watt", "volt",
    "amp", "hz", "mhz", "ghz", "calorie", "kcal", "joule", "psi", "bar", "pascal", "acre",
    "hectare", "sqft", "utc", "gmt", "est", "pst", "cet",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> Verdict {
        verify(a, b, &VerifyPolicy::default())
    }

    #[test]
    fn rejects_the_classic_near_misses() {
        let pairs = [
            ("Should I buy more of the index fund?", "Should I sell more of the index fund?"),
            ("convert 30 miles to km", "convert 30 km to miles"),
            ("trains from Lyon to Milan", "trains from Milan to Lyon"),
            ("trains from lyon to milan", "trains from milan to lyon"),
            ("Is Python faster than Go?", "Is Go faster than Python?"),
            ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"),
            ("I can't log in to my account", "I can log in to my account"),
            ("What happened in 1989?", "What happened in 1991?"),
            ("What is 2 + 2?", "What is 2 * 2?"),
            ("What is 2 + 2?", "What is 2 + 3?"),
            ("Flights to Paris on Monday", "Flights to Paris on Tuesday"),
            ("List the files in this folder", "List the files in this folder recursively"),
            ("Hotels near the Louvre with breakfast", "Hotels near the Louvre"),
            ("Grant read access to the bucket", "Grant read and write access to the bucket"),
            ("What is the capital of france", "What is the capital of germany"),
            ("When was Einstein born?", "Where was Einstein born?"),
        ];
        for (a, b) in pairs {
            assert!(matches!(same(a, b), Verdict::Different(_)), "{a} / {b}");
        }
    }

    #[test]
    fn accepts_rewordings_that_keep_every_detail() {
        let pairs = [
            ("What is the capital of France?", "what's the capital of france"),
            ("Please convert 30 miles to km", "convert 30 miles to km quickly"),
            ("How do I reverse a list in Python?", "How can I reverse a list in Python?"),
            ("Can you explain how photosynthesis works?", "Explain how photosynthesis works"),
            ("Who wrote Pride and Prejudice?", "Who is the writer of Pride and Prejudice?"),
            ("What is 2 + 2?", "what is two plus two"),
        ];
        for (a, b) in pairs {
            assert_eq!(same(a, b), Verdict::Same, "{a} / {b}");
        }
    }

    #[test]
    fn tokenizes_numbers_units_and_contractions() {
        assert_eq!(
            tokenize("Don't convert 30km, 1,000.5 m"),
            ["Do", "not", "convert", "30", "km", ",", "1,000.5", "m"]
        );
        assert_eq!(tokenize("the 21st"), ["the", "21st"]);
        assert_eq!(number("1,000"), Some("1000".into()));
        assert_eq!(number("21st"), Some("21".into()));
    }
}
