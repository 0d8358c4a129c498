//! The one error every operation of the service layer returns. Each adapter maps it once:
//! gRPC to a status code (`api::status`), GraphQL to an `extensions.code`.

use serde::{Deserialize, Serialize};

use crate::node::NodeError;
use crate::raft::{NodeId, NodeInfo};

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq)]
pub enum ServiceError {
    /// The request is malformed or breaks a limit; nothing was written.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// A version or position past what exists.
    #[error("{0}")]
    OutOfRange(String),
    /// An event id already used for other content.
    #[error("{0}")]
    AlreadyExists(String),
    /// An optimistic-concurrency conflict; `current` is the stream's version (none: no
    /// stream).
    #[error("{message}")]
    WrongExpectedVersion {
        message: String,
        current: Option<u64>,
    },
    /// The state does not allow it (a workflow transition, a rule not yet adopted, …).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Not the leader; the leader, if known. Nothing was done.
    #[error("{}", not_leader(.leader))]
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    /// The breaker to the leader is open (it stopped answering): nothing was sent to it,
    /// nothing was written. The leader is named for the client's hint.
    #[error("{message}")]
    BreakerOpen {
        leader: (NodeId, NodeInfo),
        message: String,
    },
    /// Cannot serve now (no quorum, no leader within the deadline, shutting down); nothing
    /// was written.
    #[error("{0}")]
    Unavailable(String),
    /// A bounded queue or slot is full; nothing was written.
    #[error("{0}")]
    Overloaded(String),
    /// A rate-limit policy refused the request; nothing was done. Retry after
    /// `retry_after_ms` (`u64::MAX`: not before the cluster's load eases).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_ms: u64,
    },
    /// A write may or may not have been applied (only a retry with the same ids is safe).
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A wait (not a write) ran past its deadline.
    #[error("{0}")]
    Timeout(String),
    /// No valid credential: a missing, malformed, expired or unverifiable token. The
    /// message says which in general terms, never which part of a signature failed.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token without the role or the scope the operation needs; nothing was done.
    #[error("{0}")]
    Forbidden(String),
    /// A defect or a storage failure (corruption included).
    #[error("{0}")]
    Internal(String),
}

fn not_leader(leader: &Option<(NodeId, NodeInfo)>) -> String {
    match leader {
        Some((id, info)) => format!(
            "not the leader; the leader is node {id} at {}",
            info.grpc_addr
        ),
        None => "not the leader, and no leader is known yet: retry shortly".to_owned(),
    }
}

impl ServiceError {
    /// A stable name for the kind of error (metrics labels, GraphQL `extensions.code`
    /// mapping, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            ServiceError::Invalid(_) => "INVALID_ARGUMENT",
            ServiceError::NotFound(_) => "NOT_FOUND",
            ServiceError::OutOfRange(_) => "OUT_OF_RANGE",
            ServiceError::AlreadyExists(_) => "ALREADY_EXISTS",
            ServiceError::WrongExpectedVersion { .. } | ServiceError::FailedPrecondition(_) => {
                "FAILED_PRECONDITION"
            }
            ServiceError::NotLeader { .. }
            | ServiceError::BreakerOpen { .. }
            | ServiceError::Unavailable(_) => "UNAVAILABLE",
            ServiceError::Overloaded(_) | ServiceError::RateLimited { .. } => "RESOURCE_EXHAUSTED",
            ServiceError::OutcomeUnknown(_) | ServiceError::Timeout(_) => "DEADLINE_EXCEEDED",
            ServiceError::Unauthenticated(_) => "UNAUTHENTICATED",
            ServiceError::Forbidden(_) => "PERMISSION_DENIED",
            ServiceError::Internal(_) => "INTERNAL",
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        ServiceError::Invalid(msg.into())
    }
}

impl From<NodeError> for ServiceError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Invalid(_) | NodeError::BadRequest(_) => {
                ServiceError::Invalid(e.to_string())
            }
            NodeError::NotLeader { leader } => ServiceError::NotLeader { leader },
            NodeError::BreakerOpen { leader, message } => {
                ServiceError::BreakerOpen { leader, message }
            }
            NodeError::Unavailable(m) => ServiceError::Unavailable(m),
            NodeError::Overloaded(m) => ServiceError::Overloaded(m),
            NodeError::OutcomeUnknown(m) => ServiceError::OutcomeUnknown(m),
            NodeError::Timeout(m) => ServiceError::Timeout(m),
            NodeError::FailedPrecondition(m) => ServiceError::FailedPrecondition(m),
            NodeError::Unauthenticated(m) => ServiceError::Unauthenticated(m),
            NodeError::Forbidden(m) => ServiceError::Forbidden(m),
            NodeError::Storage(_) => {
                // Logged where it is handled: here, once, as it leaves the core.
                tracing::error!(error = %e, "storage error served as INTERNAL");
                ServiceError::Internal(e.to_string())
            }
            NodeError::Internal(m) => ServiceError::Internal(m),
        }
    }
}

impl From<crate::auth::AuthError> for ServiceError {
    fn from(e: crate::auth::AuthError) -> Self {
        match e {
            crate::auth::AuthError::Unauthenticated(_) => {
                ServiceError::Unauthenticated(e.to_string())
            }
            crate::auth::AuthError::Forbidden(_) => ServiceError::Forbidden(e.to_string()),
        }
    }
}

impl From<crate::storage::StorageError> for ServiceError {
    fn from(e: crate::storage::StorageError) -> Self {
        NodeError::from(e).into()
    }
}

impl From<crate::model::ValidationError> for ServiceError {
    fn from(e: crate::model::ValidationError) -> Self {
        ServiceError::Invalid(e.to_string())
    }
}
