//! Event-sourced workflows: typed workflow events and their schema evolution (upcasters),
//! the projection that folds a workflow's stream into its state (with the transition rules
//! checked before an event is appended), projection snapshots for temporal queries ("state
//! at time T / at version V"), replay checks, and the import of workflows from an older
//! system.
//!
//! The pure parts do no IO: `events` and `upcast` (the events and their versions), `state`
//! (the folded state), `rules` (the transition rules), `projection` (the fold), `snapshot`
//! (the stored form of projection snapshots), `replay` (the convergence check), `temporal`
//! (planning "state at version V / at time T"), `import`. `store` applies workflow commands
//! inside the replicated state machine and answers queries from it.

pub mod events;
pub mod import;
pub mod projection;
pub mod replay;
pub mod rules;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod temporal;
pub mod upcast;
