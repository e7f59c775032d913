//! # actors — Switchyard's supervision tree
//!
//! Every conversation, tenant and provider connection is an actix actor; a supervisor tree
//! restarts failed provider actors and reroutes their mailboxes to fallback models.
//!
//! This crate knows nothing of HTTP, SQL or Redis. It talks to the world through the traits
//! in [`ports`], which the `engine` crate implements with real adapters and tests implement
//! with in-memory fakes. [`turn`] is the seam between the conversation side of the tree and
//! the provider side; [`registry`] is what the admin endpoint inspects.

pub mod conversation;
pub mod events;
pub mod ports;
pub mod provider;
pub mod registry;
pub mod retries;
pub mod router;
pub mod store_memory;
pub mod supervisor;
pub mod tenant;
pub mod testing;
pub mod turn;
