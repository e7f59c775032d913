//! Conversation events: the client wire protocol of a conversation.
//!
//! The engine serialises a [`ConversationEvent`] straight onto a WebSocket text frame or an
//! SSE `data:` line, so the serde shape here *is* the protocol (`{"type":"delta","seq":43,
//! "text":"Hel"}`). Every event that belongs to the conversation's history carries the
//! conversation's `seq`: strictly increasing, gap-free across all event kinds, persisted so it
//! survives actor restarts. The only event without a `seq` is an `error` for a request that
//! was refused before anything was accepted (store down, overloaded): it is sent to the one
//! caller, never broadcast, and never stored.
//!
//! The conversation actor builds events live from a [`crate::turn::TurnStream`]; the store
//! regenerates the very same events from what it persisted
//! ([`crate::ports::store::replay_messages`]), which is how a resume after an actor restart
//! gets exactly the events it missed.

use serde::Serialize;

use crate::ports::llm::{FinishReason, Usage};

/// Where a reply came from. Only `miss` exists until the cache lands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    #[default]
    Miss,
    Exact,
    Semantic,
}

/// One server → client event of a conversation. Deserialize too: the engine relays events
/// between nodes as this JSON (cross-node fan-out through Redis).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConversationEvent {
    /// A user message is durably stored and queued for its turn.
    Ack {
        /// The client's own id for the message, echoed so it can match its optimistic copy.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        message_id: String,
        seq: u64,
    },
    /// A piece of the assistant's answer, in order.
    Delta { seq: u64, text: String },
    /// The turn moved to another model; the text continues seamlessly.
    Failover { seq: u64, from: String, to: String, reason: String },
    /// Drop the partial answer shown so far for the current turn; a fresh one follows.
    Retract { seq: u64, from: String },
    /// The assistant message `message_id`, answering user message `reply_to`, is complete.
    Done {
        seq: u64,
        message_id: String,
        reply_to: String,
        model: String,
        usage: Usage,
        finish_reason: FinishReason,
        /// What the turn cost upstream, in micro-dollars (`null` where nothing prices it).
        cost_micros: Option<u64>,
        cache: CacheStatus,
        /// Why this model, when the engine chose it (`model: "auto"`, budget downgrade).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        route: Option<crate::turn::RouteNote>,
    },
    /// A turn that failed (`seq`, `message_id` and `reply_to` set), or a request refused
    /// before it was accepted (all three absent). A cancelled turn ends with
    /// `code: "cancelled"`.
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
        code: String,
        message: String,
    },
    /// The assistant message was cut by a crash; found and closed when the conversation was
    /// rebuilt. Its stored text is whatever was checkpointed. The seqs after `lost_after` and
    /// before `seq` will never be delivered: events streamed but lost with the crash, or seqs
    /// reserved and never used. A client that misses seqs there has lost nothing it can get.
    Interrupted { seq: u64, message_id: String, reply_to: String, lost_after: u64 },
}

impl ConversationEvent {
    /// The event's place in the conversation, if it has one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ConversationEvent::Ack { seq, .. }
            | ConversationEvent::Delta { seq, .. }
            | ConversationEvent::Failover { seq, .. }
            | ConversationEvent::Retract { seq, .. }
            | ConversationEvent::Done { seq, .. }
            | ConversationEvent::Interrupted { seq, .. } => Some(*seq),
            ConversationEvent::Error { seq, .. } => *seq,
        }
    }

    /// Whether this event ends a turn (exactly one per turn).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ConversationEvent::Done { .. }
                | ConversationEvent::Interrupted { .. }
                | ConversationEvent::Error { seq: Some(_), .. }
        )
    }

    /// For a terminal event, the user message the turn answered.
    pub fn reply_to(&self) -> Option<&str> {
        match self {
            ConversationEvent::Done { reply_to, .. }
            | ConversationEvent::Interrupted { reply_to, .. } => Some(reply_to),
            ConversationEvent::Error { reply_to, .. } => reply_to.as_deref(),
            _ => None,
        }
    }

    /// An error for a request that was refused before anything was accepted (no `seq`).
    pub fn refused(code: impl Into<String>, message: impl Into<String>) -> Self {
        ConversationEvent::Error {
            seq: None,
            message_id: None,
            reply_to: None,
            code: code.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_serialise_to_the_documented_wire_shape() {
        let ack = ConversationEvent::Ack {
            client_id: Some("c1".into()),
            message_id: "m1".into(),
            seq: 42,
        };
        assert_eq!(
            serde_json::to_value(&ack).unwrap(),
            json!({"type":"ack","client_id":"c1","message_id":"m1","seq":42})
        );
        let delta = ConversationEvent::Delta { seq: 43, text: "Hel".into() };
        assert_eq!(
            serde_json::to_value(&delta).unwrap(),
            json!({"type":"delta","seq":43,"text":"Hel"})
        );
        let done = ConversationEvent::Done {
            seq: 61,
            message_id: "a1".into(),
            reply_to: "m1".into(),
            model: "gpt-4o".into(),
            usage: Usage { input_tokens: 3, output_tokens: 5 },
            finish_reason: FinishReason::Stop,
            cost_micros: None,
            cache: CacheStatus::Miss,
            route: None,
        };
        assert_eq!(
            serde_json::to_value(&done).unwrap(),
            json!({"type":"done","seq":61,"message_id":"a1","reply_to":"m1","model":"gpt-4o",
                   "usage":{"input_tokens":3,"output_tokens":5},"finish_reason":"stop",
                   "cost_micros":null,"cache":"miss"})
        );
        let refused = ConversationEvent::refused("unavailable", "store down");
        assert_eq!(
            serde_json::to_value(&refused).unwrap(),
            json!({"type":"error","code":"unavailable","message":"store down"})
        );
        assert!(!refused.is_terminal());
        assert!(done.is_terminal());
    }
}
