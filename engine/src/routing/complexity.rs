//! The complexity scorer: rates a turn without calling a model and maps it to a tier.
//!
//! (Being written; the signature below is the seam the routing policy uses.)

use actors::ports::llm::GenerationRequest;
use serde::{Deserialize, Serialize};

/// How capable a model a turn needs. Ordered: `Economy < Standard < Premium`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Economy,
    #[default]
    Standard,
    Premium,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Economy => "economy",
            Tier::Standard => "standard",
            Tier::Premium => "premium",
        }
    }
}

/// The scorer's verdict on one turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    pub tier: Tier,
    /// The raw score the tier was cut from.
    pub score: f32,
    /// Short machine-readable cues that drove the score (`code`, `math`, `multi_step`, …).
    pub reasons: Vec<&'static str>,
}

/// Rates the turn: the last user message in context of the conversation so far.
pub fn assess(request: &GenerationRequest) -> Assessment {
    let _ = request;
    Assessment { tier: Tier::Standard, score: 0.0, reasons: Vec::new() }
}
