//! Event-sourced workflows: typed workflow events and their schema evolution (upcasters),
//! the projection that folds a workflow's stream into its state (with the transition rules
//! checked before an event is appended), projection snapshots for temporal queries ("state
//! at time T / at version V"), replay checks, and the import of workflows from an older
//! system.
//!
//! The pure parts (`events`, `upcast`, `projection`, `import`) do no IO. `store` applies
//! workflow commands inside the replicated state machine and answers queries from it.

pub mod events;
pub mod import;
pub mod projection;
pub mod store;
pub mod upcast;
