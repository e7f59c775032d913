//! Switchyard's load-testing crate.
//!
//! - [`fake_llm`]: `fake-llm`, a wire-exact OpenAI / Anthropic fake upstream with fault
//!   injection, used in-process by the engine's tests and as the `fake-llm` binary by
//!   benchmarks and demos.
//! - [`harness`]: the `loadtest` binary's engine — thousands of WebSocket, SSE or
//!   OpenAI-compatible clients against a running engine, with HDR-histogram reports.

pub mod fake_llm;
pub mod harness;
