//! The service layer: every operation a client can ask of a node — append, read, subscribe,
//! workflow commands and temporal queries, telemetry ingest and queries, admin changes — in
//! one transport-neutral place. Each operation takes the [`Caller`] and core types, and
//! returns core types or one [`ServiceError`]. It owns validation, the consistency barrier
//! of reads, and retrying writes until a leader takes them; it is where authorization and
//! rate limits plug in (every operation already receives its caller). The gRPC handlers in
//! `api` (and the GraphQL resolvers to come) only decode, call and encode.

pub mod admin;
mod caller;
mod error;
pub mod events;
pub mod limits;
pub mod telemetry;
pub mod workflows;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use caller::{Caller, Principal};
pub use error::ServiceError;

pub use crate::node::Consistency;
use crate::node::{Node, NodeError};

/// The operations of one node, for every adapter (gRPC, GraphQL).
#[derive(Clone)]
pub struct Service {
    node: Arc<Node>,
}

impl Service {
    pub fn new(node: Arc<Node>) -> Self {
        Service { node }
    }

    /// Runs a write until a leader takes it. `attempt` proposes it through this node's
    /// proposer (which hands it to the leader when this node follows, in one
    /// `raft.v1.Propose` with the batch it joins). While no leader is known, or the leader
    /// moved or could not be reached — refusals that prove nothing was proposed — it
    /// retries with backoff until the write deadline; anything else is final, including
    /// "outcome unknown" once a request may have reached the leader.
    async fn on_leader<T, F, Fut>(&self, mut attempt: F) -> Result<T, ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, NodeError>>,
    {
        let timeout_ms = self.node.config().write_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut backoff = Duration::from_millis(20);
        loop {
            // Why this attempt was not written, for the reply if the deadline passes.
            let last = match attempt().await {
                Ok(v) => return Ok(v),
                Err(NodeError::NotLeader {
                    leader: Some((id, info)),
                }) => format!(
                    "leader node {id} at {} could not be reached or no longer leads",
                    info.grpc_addr
                ),
                Err(NodeError::NotLeader { leader: None }) => {
                    "no leader is known (election in progress)".to_owned()
                }
                Err(e) => return Err(e.into()),
            };
            if Instant::now() >= deadline {
                return Err(ServiceError::Unavailable(format!(
                    "no leader took the write within {timeout_ms} ms; nothing was written \
                     (last attempt: {last})"
                )));
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}
