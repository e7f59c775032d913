//! The default model catalogue, used when the config lists no `[[models]]`.
//!
//! Current OpenAI and Anthropic chat models, for whichever provider has a key, each with a
//! fallback chain that crosses providers (so one provider's outage is survivable), then the
//! built-in `mock` model, which needs no key and is all a fresh `cargo run` has.

use super::{ModelConfig, ProvidersConfig};
use crate::providers::{EndpointSpec, ProviderKind};

/// (client-facing name, provider, fallbacks in order). The upstream id is the name.
const CATALOGUE: &[(&str, ProviderKind, &[&str])] = &[
    ("gpt-4o", ProviderKind::Openai, &["claude-sonnet-4-5", "gpt-4.1-mini"]),
    ("claude-sonnet-4-5", ProviderKind::Anthropic, &["gpt-4.1", "claude-haiku-4-5"]),
    ("gpt-4.1", ProviderKind::Openai, &["claude-sonnet-4-5", "gpt-4o"]),
    ("claude-opus-4-1", ProviderKind::Anthropic, &["claude-sonnet-4-5", "gpt-4.1"]),
    ("gpt-4o-mini", ProviderKind::Openai, &["claude-haiku-4-5", "gpt-4.1-mini"]),
    ("gpt-4.1-mini", ProviderKind::Openai, &["claude-haiku-4-5", "gpt-4o-mini"]),
    ("claude-haiku-4-5", ProviderKind::Anthropic, &["gpt-4o-mini", "gpt-4.1-mini"]),
];

/// The built-in model's name.
pub const MOCK_MODEL: &str = "mock";

/// The catalogue restricted to providers with a key, plus `mock`.
pub fn default_models(providers: &ProvidersConfig) -> Vec<ModelConfig> {
    let available = |kind: ProviderKind| match kind {
        ProviderKind::Openai => providers.openai.api_key.is_some(),
        ProviderKind::Anthropic => providers.anthropic.api_key.is_some(),
        ProviderKind::OpenaiCompatible | ProviderKind::Mock => false,
    };
    let is_available =
        |name: &str| CATALOGUE.iter().any(|(n, kind, _)| *n == name && available(*kind));

    let mut models: Vec<ModelConfig> = CATALOGUE
        .iter()
        .filter(|(_, kind, _)| available(*kind))
        .map(|(name, kind, fallbacks)| ModelConfig {
            name: (*name).to_owned(),
            fallbacks: fallbacks
                .iter()
                .filter(|f| is_available(f))
                .map(|f| (*f).to_owned())
                .collect(),
            tier: None,
            max_in_flight: None,
            queue_timeout_ms: None,
            endpoint: EndpointSpec::new(*kind, *name),
        })
        .collect();
    models.push(ModelConfig {
        name: MOCK_MODEL.to_owned(),
        fallbacks: Vec::new(),
        tier: None,
        max_in_flight: None,
        queue_timeout_ms: None,
        endpoint: EndpointSpec::new(ProviderKind::Mock, "mock-1"),
    });
    models
}
