//! Ports: the small traits through which the actor tree talks to the world.
//!
//! `actors` knows nothing of HTTP, SQL or Redis. The engine implements these traits with real
//! adapters (provider HTTP clients, PostgreSQL, Redis); tests implement them with in-memory
//! fakes, so the whole tree can be exercised without a network.

pub mod llm;
pub mod store;
