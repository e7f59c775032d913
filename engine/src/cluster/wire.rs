//! What nodes say to each other through Redis, as JSON.
//!
//! * On `{prefix}conv:{id}:events` the owner publishes each [`ConversationEvent`] exactly as
//!   clients receive it (with its seq), plus a [`Sync`] hint when it takes a conversation
//!   over, so proxies re-read the store for events written during recovery.
//! * On `{prefix}node:{node_id}` a node receives [`NodeMessage`]s: requests forwarded to it
//!   as a conversation's owner, and replies to the requests it forwarded.

use actors::conversation::{ConversationError, Posted};
use actors::turn::CacheMode;
use serde::{Deserialize, Serialize};

/// A hint on a conversation channel: the conversation changed owner (and may have events
/// in the store that were never published); re-read from the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Sync {
    #[serde(rename = "type")]
    pub kind: SyncTag,
    pub last_seq: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SyncTag {
    Sync,
}

/// A message on a node's own channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum NodeMessage {
    /// Post a user message to a conversation this node owns; answer on `reply_to`'s channel.
    Post {
        request_id: String,
        reply_to: String,
        tenant_id: String,
        conversation_id: String,
        user_id: String,
        client_id: Option<String>,
        content: String,
        #[serde(default)]
        cache: CacheMode,
    },
    /// Cancel the running turn (fire and forget).
    Cancel { tenant_id: String, conversation_id: String },
    /// The answer to a forwarded `Post`.
    Reply { request_id: String, result: WireResult },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireResult {
    Posted { message_id: String, seq: u64 },
    Failed(WireError),
}

/// A [`ConversationError`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
}

/// The owner no longer owns the conversation: the requester re-resolves the owner.
pub(crate) const NOT_OWNER: &str = "not_owner";

impl WireResult {
    pub fn from_result(result: Result<Posted, ConversationError>) -> Self {
        match result {
            Ok(posted) => WireResult::Posted { message_id: posted.message_id, seq: posted.seq },
            Err(e) => WireResult::Failed(WireError::from_error(&e)),
        }
    }

    pub fn into_result(self) -> Result<Posted, ConversationError> {
        match self {
            WireResult::Posted { message_id, seq } => Ok(Posted { message_id, seq }),
            WireResult::Failed(e) => Err(e.into_error()),
        }
    }
}

impl WireError {
    pub fn not_owner() -> Self {
        WireError {
            code: NOT_OWNER.into(),
            message: "this node does not own the conversation".into(),
            limit: None,
            after_seq: None,
            last_seq: None,
        }
    }

    pub fn from_error(error: &ConversationError) -> Self {
        let (mut limit, mut after, mut last) = (None, None, None);
        match error {
            ConversationError::TenantConcurrency { limit: l } => limit = Some(*l),
            ConversationError::ResyncRequired { after_seq, last_seq } => {
                after = Some(*after_seq);
                last = Some(*last_seq);
            }
            _ => {}
        }
        WireError {
            code: error.code().to_owned(),
            message: error.to_string(),
            limit,
            after_seq: after,
            last_seq: last,
        }
    }

    pub fn into_error(self) -> ConversationError {
        match self.code.as_str() {
            "not_found" => ConversationError::NotFound,
            // The requester re-resolves the owner (and may take the conversation over).
            NOT_OWNER => ConversationError::Stopped,
            "unavailable" => ConversationError::Unavailable,
            "overloaded" => ConversationError::Overloaded,
            "tenant_concurrency" => {
                ConversationError::TenantConcurrency { limit: self.limit.unwrap_or(0) }
            }
            "resync_required" => ConversationError::ResyncRequired {
                after_seq: self.after_seq.unwrap_or(0),
                last_seq: self.last_seq.unwrap_or(0),
            },
            // Policy refusals carry a 'static code; map the known ones, keep the message.
            "rate_limited" => {
                ConversationError::Refused { code: "rate_limited", message: self.message }
            }
            "budget_exceeded" => {
                ConversationError::Refused { code: "budget_exceeded", message: self.message }
            }
            "quota_exceeded" => {
                ConversationError::Refused { code: "quota_exceeded", message: self.message }
            }
            _ => ConversationError::Turn { code: self.code, message: self.message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_round_trip() {
        for error in [
            ConversationError::NotFound,
            ConversationError::Unavailable,
            ConversationError::Overloaded,
            ConversationError::TenantConcurrency { limit: 3 },
            ConversationError::ResyncRequired { after_seq: 9, last_seq: 4 },
            ConversationError::Refused { code: "rate_limited", message: "slow down".into() },
        ] {
            let json = serde_json::to_string(&WireError::from_error(&error)).unwrap();
            let back: WireError = serde_json::from_str(&json).unwrap();
            assert_eq!(back.into_error(), error);
        }
        assert_eq!(WireError::not_owner().into_error(), ConversationError::Stopped);
    }

    #[test]
    fn a_sync_hint_is_not_an_event() {
        let json = serde_json::to_string(&Sync { kind: SyncTag::Sync, last_seq: 7 }).unwrap();
        assert_eq!(json, r#"{"type":"sync","last_seq":7}"#);
        assert!(serde_json::from_str::<actors::events::ConversationEvent>(&json).is_err());
    }
}
