//! AetherOps: a Raft-replicated, RocksDB-backed event store for operations platforms that
//! run orbital assets. See `ARCHITECTURE.md` for the map of modules and their invariants.

pub mod api;
pub mod auth;
pub mod config;
pub mod ctl;
pub mod eventstore;
/// The guards' pure cores (rate limiters, adaptive factor, circuit breaker): the crate
/// `crates/guard`, kept apart so that it builds and is measured without RocksDB.
pub use aether_guard as guard;
pub mod limits;
pub mod model;
pub mod node;
pub mod proto;
pub mod raft;
pub mod server;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod workflow;
