//! What makes two requests "the same question": the cache keys.
//!
//! A [`Scope`] is everything except the last user message that shapes the answer: the model
//! family, the effective system prompt, every prior turn of the conversation (so two
//! conversations whose last messages match but whose histories differ never share an
//! answer), and the output limits (`max_tokens`, `stop`). The tenant is not in the hash: each
//! tenant has its own maps, so no key of one tenant can even be looked up by another.
//! The exact key adds the normalised last message to the scope.

use actors::ports::llm::{GenerationRequest, Role};
use sha2::{Digest, Sha256};

/// A 256-bit digest.
pub type Digest256 = [u8; 32];

/// The parts of a request a cached answer must agree on, besides the question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope(pub Digest256);

/// A request as the cache sees it.
#[derive(Debug, Clone)]
pub struct CacheKey {
    pub scope: Scope,
    pub exact: Digest256,
    /// The model family (also inside `scope`; the table keys rows by it).
    pub family: String,
    /// The last user message, as typed (verification looks at case and punctuation).
    pub prompt: String,
}

/// The model family: the configured name without a trailing date or `-latest`, lower-cased,
/// so `gpt-4o-2024-08-06` and `gpt-4o` share entries but `gpt-4o-mini` does not.
pub fn model_family(model: &str) -> String {
    let mut name = model.trim().to_lowercase();
    for suffix in ["-latest", "-preview"] {
        if let Some(stripped) = name.strip_suffix(suffix) {
            name = stripped.to_owned();
        }
    }
    // `-2024-08-06`, `-20241022`
    let parts: Vec<&str> = name.split('-').collect();
    let is_digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let mut keep = parts.len();
    if keep > 3
        && parts[keep - 3].len() == 4
        && is_digits(parts[keep - 3])
        && is_digits(parts[keep - 2])
        && is_digits(parts[keep - 1])
    {
        keep -= 3;
    } else if keep > 1 && parts[keep - 1].len() == 8 && is_digits(parts[keep - 1]) {
        keep -= 1;
    }
    parts[..keep].join("-")
}

/// Whitespace collapsed, lower-cased, trailing sentence punctuation dropped: the exact tier
/// treats `"What is Rust?"` and `"what is rust"` as one question, nothing looser.
pub fn normalize_prompt(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    collapsed.trim_end_matches(['?', '!', '.', ' ']).to_owned()
}

/// The key of `request` (whose last message must be the user's question), or `None` when
/// it has no such message (a prefill continues text; it is never cached).
pub fn key_for(model: &str, request: &GenerationRequest) -> Option<CacheKey> {
    let (last, prior) = request.messages.split_last()?;
    if last.role != Role::User {
        return None;
    }
    let mut h = Sha256::new();
    let mut field = |tag: &str, value: &str| {
        // Length-prefixed so no two field sequences hash alike.
        h.update(tag.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value.as_bytes());
    };
    let family = model_family(model);
    field("family", &family);
    field("system", request.system.as_deref().map(str::trim).unwrap_or(""));
    for message in prior {
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        field(role, &message.content.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    field("max_tokens", &request.max_tokens.map(|m| m.to_string()).unwrap_or_default());
    for stop in &request.stop {
        field("stop", stop);
    }
    let scope = Scope(h.finalize().into());
    let mut e = Sha256::new();
    e.update(scope.0);
    e.update(normalize_prompt(&last.content).as_bytes());
    Some(CacheKey { scope, exact: e.finalize().into(), family, prompt: last.content.clone() })
}

#[cfg(test)]
mod tests {
    use actors::ports::llm::ChatMessage;

    use super::*;

    fn req(system: Option<&str>, messages: Vec<ChatMessage>) -> GenerationRequest {
        GenerationRequest { system: system.map(Into::into), messages, ..Default::default() }
    }

    #[test]
    fn families_drop_dates_not_variants() {
        assert_eq!(model_family("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(model_family("claude-3-5-sonnet-20241022"), "claude-3-5-sonnet");
        assert_eq!(model_family("claude-3-5-sonnet-latest"), "claude-3-5-sonnet");
        assert_eq!(model_family("gpt-4o-mini"), "gpt-4o-mini");
        assert_ne!(model_family("gpt-4o-mini"), model_family("gpt-4o"));
    }

    #[test]
    fn history_system_and_family_are_part_of_the_key() {
        let q = ChatMessage::user("What is the capital of France?");
        let base = key_for("gpt-4o", &req(None, vec![q.clone()])).unwrap();
        let same = key_for(
            "gpt-4o-2024-08-06",
            &req(None, vec![ChatMessage::user("  what is the capital of   france ")]),
        )
        .unwrap();
        assert_eq!(base.exact, same.exact);
        let other_system = key_for("gpt-4o", &req(Some("Answer in French"), vec![q.clone()]));
        let other_family = key_for("gpt-4o-mini", &req(None, vec![q.clone()]));
        let other_history = key_for(
            "gpt-4o",
            &req(None, vec![ChatMessage::user("Hi"), ChatMessage::assistant("Hello"), q.clone()]),
        );
        for other in [other_system, other_family, other_history] {
            let other = other.unwrap();
            assert_ne!(other.scope, base.scope);
            assert_ne!(other.exact, base.exact);
        }
        // A trailing assistant message is a prefill: never cached.
        assert!(key_for("gpt-4o", &req(None, vec![q, ChatMessage::assistant("Par")])).is_none());
    }
}
