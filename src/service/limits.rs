//! Rate-limit policies: replicated, the same on every node.

use super::guard::PolicyCounts;
use super::{Caller, Consistency, Service, ServiceError};
use crate::auth::Resource;
use crate::limits::Method;
use crate::limits::{LimitPolicy, PolicyOutcome};

/// One node's view of the cluster's rate limits.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitStatus {
    pub node_id: crate::raft::NodeId,
    pub factor: f64,
    pub utilization: f64,
    pub policies: Vec<PolicyCounts>,
}

impl Service {
    /// Sets (or replaces) a policy; whether one of that name was replaced.
    pub async fn set_limit(
        &self,
        caller: &Caller,
        policy: LimitPolicy,
    ) -> Result<bool, ServiceError> {
        // Not rate-limited: an operator must be able to loosen a limit that refuses them.
        self.authorize(caller, Method::Admin, &[Resource::Cluster])?;
        policy.validate().map_err(ServiceError::Invalid)?;
        let node = &self.node;
        match self
            .on_leader(|left| node.set_limit(policy.clone(), caller.token.clone(), left))
            .await?
        {
            PolicyOutcome::Set { replaced } => Ok(replaced),
            PolicyOutcome::Refused { reason } => Err(ServiceError::Invalid(reason)),
            other => Err(ServiceError::Internal(format!(
                "setting a policy answered {other:?}"
            ))),
        }
    }

    pub async fn delete_limit(&self, caller: &Caller, name: &str) -> Result<(), ServiceError> {
        self.authorize(caller, Method::Admin, &[Resource::Cluster])?;
        crate::limits::check_name(name).map_err(ServiceError::Invalid)?;
        let node = &self.node;
        match self
            .on_leader(|left| node.delete_limit(name.to_owned(), caller.token.clone(), left))
            .await?
        {
            PolicyOutcome::Deleted { existed: true } => Ok(()),
            PolicyOutcome::Deleted { existed: false } => Err(ServiceError::NotFound(format!(
                "no rate-limit policy is named {name:?}"
            ))),
            PolicyOutcome::Refused { reason } => Err(ServiceError::Invalid(reason)),
            other => Err(ServiceError::Internal(format!(
                "deleting a policy answered {other:?}"
            ))),
        }
    }

    /// What this node enforces of each policy (no barrier: this node's own view), with the
    /// cluster's factor and the utilization it follows. Not rate-limited, like status.
    pub fn limit_status(&self, caller: &Caller) -> Result<LimitStatus, ServiceError> {
        self.authorize_view(caller)?;
        let (factor, utilization) = self.guards.factor();
        Ok(LimitStatus {
            node_id: self.node.id(),
            factor: factor.as_f64(),
            utilization,
            policies: self.limit_counts(),
        })
    }

    pub async fn list_limits(
        &self,
        caller: &Caller,
        consistency: Consistency,
    ) -> Result<Vec<LimitPolicy>, ServiceError> {
        self.authorize_view(caller)?;
        self.node.read_barrier(consistency).await?;
        Ok(self.node.limit_policies().await?)
    }
}
