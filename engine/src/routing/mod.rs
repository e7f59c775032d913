//! Intelligent routing: which model serves a turn that asked for `auto`.
//!
//! - [`complexity`]: a fast scorer (no model call) that rates a turn and maps it to a
//!   [`Tier`](complexity::Tier);
//! - the policy that turns a tier into a model (cheapest healthy model of the tier, latency
//!   among equals) lives beside the price table in `crate::costs`.

pub mod complexity;
