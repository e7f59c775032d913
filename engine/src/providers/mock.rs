//! The built-in `mock` model: no network, no key, deterministic text.
//!
//! It is what a fresh `cargo run` serves when no provider is configured, so its answer says
//! what it is and how to configure a real model, echoing the start of the user's message so
//! a newcomer sees their turn went through. Tokens are streamed word by word with realistic
//! pacing ([`MockSpec`]), and usage is exact for what it did: input tokens = words of the
//! prompt (system + messages), output tokens = pieces sent. `max_tokens` and `stop` are
//! honoured (finish reasons `length` and `stop_sequence`).

use std::time::Duration;

use actors::ports::llm::{
    Completion, FinishReason, GenerationRequest, LlmProvider, ProviderStream, Role, StreamEvent,
    Usage,
};
use futures_util::stream;
use serde::{Deserialize, Serialize};

use super::EndpointSpec;

/// Pacing of the mock model (`[models.mock]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockSpec {
    /// Delay before the first token, like a real model's time to first token.
    pub first_token_delay_ms: u64,
    /// Delay before each following token.
    pub token_delay_ms: u64,
}

impl Default for MockSpec {
    fn default() -> Self {
        Self { first_token_delay_ms: 150, token_delay_ms: 20 }
    }
}

/// How many words of the user's message the reply quotes back.
const ECHO_WORDS: usize = 12;

/// The `mock` endpoint.
pub struct MockProvider {
    model: String,
    pacing: MockSpec,
}

impl MockProvider {
    pub(crate) fn new(spec: &EndpointSpec) -> Self {
        Self { model: spec.upstream_model.clone(), pacing: spec.mock }
    }
}

/// The full answer the mock gives to `request` (before `max_tokens`/`stop` are applied).
pub fn reply_text(model: &str, request: &GenerationRequest) -> String {
    let last_user =
        request.messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.content.as_str());
    let words: Vec<&str> = last_user.unwrap_or_default().split_whitespace().collect();
    let echo = match words.len() {
        0 => "nothing yet".to_owned(),
        n if n <= ECHO_WORDS => format!("\"{}\"", words.join(" ")),
        _ => format!("\"{} …\"", words[..ECHO_WORDS].join(" ")),
    };
    format!(
        "Hello! I'm {model}, Switchyard's built-in mock model. No real LLM provider is \
         configured, so this reply is generated locally, word by word, to show how streaming \
         works end to end. You said: {echo}. To talk to a real model, add an OpenAI, Anthropic \
         or OpenAI-compatible endpoint with its API key under [[models]] in the config, and \
         Switchyard will route your turns there."
    )
}

/// Splits text into the pieces streamed: each word with the whitespace before it.
fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() && in_word {
            out.push(text[start..i].to_owned());
            start = i;
            in_word = false;
        } else if !c.is_whitespace() {
            in_word = true;
        }
    }
    if start < text.len() {
        out.push(text[start..].to_owned());
    }
    out
}

fn prompt_words(request: &GenerationRequest) -> u64 {
    let system = request.system.as_deref().unwrap_or_default().split_whitespace().count();
    let messages: usize =
        request.messages.iter().map(|m| m.content.split_whitespace().count()).sum();
    (system + messages) as u64
}

/// The pieces to send and why the answer ends.
fn plan(model: &str, request: &GenerationRequest) -> (Vec<String>, FinishReason) {
    let mut text = reply_text(model, request);
    let mut finish = FinishReason::Stop;
    let first_stop =
        request.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min();
    if let Some(at) = first_stop {
        text.truncate(at);
        finish = FinishReason::StopSequence;
    }
    let mut pieces = pieces(&text);
    if let Some(max) = request.max_tokens
        && pieces.len() > max as usize
    {
        pieces.truncate(max as usize);
        finish = FinishReason::Length;
    }
    (pieces, finish)
}

impl LlmProvider for MockProvider {
    fn stream(&self, request: GenerationRequest) -> ProviderStream {
        let (pieces, finish_reason) = plan(&self.model, &request);
        let completion = Completion {
            usage: Usage {
                input_tokens: prompt_words(&request),
                output_tokens: pieces.len() as u64,
            },
            finish_reason,
            model: self.model.clone(),
            provider_request_id: Some(format!("mock-{}", uuid::Uuid::now_v7())),
        };
        let first = Duration::from_millis(self.pacing.first_token_delay_ms);
        let per_token = Duration::from_millis(self.pacing.token_delay_ms);
        let state = (pieces.into_iter(), Some(completion), true);
        Box::pin(stream::unfold(state, move |(mut pieces, mut completion, is_first)| async move {
            tokio::time::sleep(if is_first { first } else { per_token }).await;
            let event = match pieces.next() {
                Some(piece) => StreamEvent::Delta(piece),
                None => StreamEvent::Finished(completion.take()?),
            };
            Some((Ok(event), (pieces, completion, false)))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{build_provider, http_client};
    use actors::ports::llm::{ChatMessage, collect_stream};
    use futures_util::StreamExt;

    fn request(text: &str) -> GenerationRequest {
        GenerationRequest {
            system: Some("You are helpful.".into()),
            messages: vec![ChatMessage::user(text)],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn streams_a_deterministic_self_describing_reply_with_pacing() {
        // Real time, small delays: tokio's paused clock needs the `test-util` feature, which
        // would make tests build a second tokio.
        let mut spec = EndpointSpec::mock();
        spec.mock = MockSpec { first_token_delay_ms: 40, token_delay_ms: 2 };
        let provider = build_provider(&spec, &http_client().unwrap()).unwrap();
        let started = tokio::time::Instant::now();
        let mut stream = provider.stream(request("What is a switchyard?"));
        let mut text = String::new();
        let mut deltas = 0u64;
        let mut first_at = None;
        let done = loop {
            match stream.next().await.unwrap().unwrap() {
                StreamEvent::Delta(piece) => {
                    first_at.get_or_insert(started.elapsed());
                    deltas += 1;
                    text.push_str(&piece);
                }
                StreamEvent::Finished(done) => break done,
            }
        };
        assert!(stream.next().await.is_none());
        assert_eq!(text, reply_text("mock-1", &request("What is a switchyard?")));
        assert!(text.contains("built-in mock model") && text.contains("\"What is a switchyard?\""));
        assert_eq!(done.usage, Usage { input_tokens: 3 + 4, output_tokens: deltas });
        assert_eq!(done.finish_reason, FinishReason::Stop);
        assert_eq!(done.model, "mock-1");
        let first_at = first_at.unwrap();
        assert!(first_at >= Duration::from_millis(40), "{first_at:?}");
        let total = started.elapsed();
        assert!(total >= Duration::from_millis(40 + 2 * deltas), "{total:?}");
    }

    #[tokio::test]
    async fn honours_max_tokens_and_stop() {
        let mut spec = EndpointSpec::mock();
        spec.mock = MockSpec { first_token_delay_ms: 0, token_delay_ms: 0 };
        let provider = MockProvider::new(&spec);
        let limited = GenerationRequest { max_tokens: Some(3), ..request("hi") };
        let reply = collect_stream(provider.stream(limited)).await.unwrap();
        assert_eq!(reply.text, "Hello! I'm mock-1,");
        assert_eq!(reply.completion.usage.output_tokens, 3);
        assert_eq!(reply.completion.finish_reason, FinishReason::Length);

        let stopped = GenerationRequest { stop: vec![" mock".into()], ..request("hi") };
        let reply = provider.complete(stopped).await.unwrap();
        assert_eq!(reply.text, "Hello! I'm");
        assert_eq!(reply.completion.finish_reason, FinishReason::StopSequence);
    }

    #[test]
    fn long_prompts_are_quoted_briefly_and_pieces_keep_whitespace() {
        let text = reply_text("mock-1", &request(&"word ".repeat(50)));
        assert!(text.contains("word word …\""));
        assert_eq!(pieces(" a  b\nc "), vec![" a", "  b", "\nc", " "]);
        assert_eq!(pieces("x").concat(), "x");
    }

    #[test]
    fn pacing_is_configurable() {
        let spec: EndpointSpec = toml::from_str(
            "provider = \"mock\"\nupstream_model = \"mock-1\"\nmock = { token_delay_ms = 1 }",
        )
        .unwrap();
        assert_eq!(spec.mock, MockSpec { first_token_delay_ms: 150, token_delay_ms: 1 });
    }
}
