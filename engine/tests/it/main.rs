//! The engine's one integration test binary (one binary keeps link time down); each area of
//! the engine adds a module here.

// clippy.toml allows these inside `#[test]` functions only; test helpers and scenario
// functions shared by several tests are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod accounts_pg;
mod app;
mod auth;
mod cache;
mod cache_pg;
mod cluster;
mod compat;
mod costs;
mod edges;
mod hostile;
mod observability;
mod postgres;
mod providers;
mod shutdown;
mod tenant_wall;
mod ui;
