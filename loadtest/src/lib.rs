//! Switchyard's load-testing crate.
//!
//! - [`fake_llm`]: `fake-llm`, a wire-exact OpenAI / Anthropic fake upstream with fault
//!   injection, used in-process by the engine's tests and as the `fake-llm` binary by
//!   benchmarks and demos.

pub mod fake_llm;
