//! The service layer: every operation a client can ask of a node — append, read, subscribe,
//! workflow commands and temporal queries, telemetry ingest and queries, admin changes — in
//! one transport-neutral place. Each operation takes the [`Caller`] and core types, and
//! returns core types or one [`ServiceError`]. It owns validation, the consistency barrier
//! of reads, and retrying writes until a leader takes them; every operation is authorized
//! (the caller's role and scopes, and its token's expiry) and then rate-limited here. The gRPC handlers in
//! `api` (and the GraphQL resolvers to come) only decode, call and encode.

pub mod admin;
mod caller;
pub mod correlate;
mod error;
pub mod events;
pub mod guard;
pub mod limits;
pub mod telemetry;
pub mod telemetry_stream;
pub mod workflows;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use caller::{Caller, Principal};

use crate::auth::{AuthError, Denied, Identity, Reason, Resource, Role};
pub use error::ServiceError;

pub use crate::node::Consistency;
use crate::node::{Node, NodeError};

/// The least time worth another attempt at a write (a proposal and its answer on a loaded
/// cluster).
const MIN_ATTEMPT: Duration = Duration::from_millis(50);

/// The operations of one node, for every adapter (gRPC, GraphQL).
#[derive(Clone)]
pub struct Service {
    node: Arc<Node>,
    guards: guard::Guards,
}

impl Service {
    /// The operations of `node`. Starts (on the current runtime) the task that keeps the
    /// rate-limit policies this node enforces in step with the cluster's.
    pub fn new(node: Arc<Node>) -> Self {
        let guards = guard::Guards::default();
        match guard::load(&node.config().data_dir) {
            Ok(Some(stored)) => guards.restore_later(stored),
            Ok(None) => {}
            // Limits then start afresh: a lost file costs a burst, never a refusal.
            Err(e) => tracing::warn!("rate-limit state not restored: {e}"),
        }
        tokio::spawn(reload_policies(Arc::downgrade(&node), guards.clone()));
        Service { node, guards }
    }

    /// Writes the limiters' state (on shutdown; the reload task writes it periodically).
    pub fn save_limits(&self) {
        if let Err(e) = guard::save(&self.node.config().data_dir, &self.guards.export()) {
            tracing::warn!("writing the rate-limit state: {e}");
        }
    }

    /// Checks that the caller may do `method` on `resource`, then asks the rate limits to
    /// admit `cost` units of it. Authorization comes first: a refused caller spends no
    /// tokens. Every operation that touches data or the cluster goes through here.
    fn admit(
        &self,
        caller: &Caller,
        method: crate::limits::Method,
        resource: Resource<'_>,
        cost: u64,
    ) -> Result<(), ServiceError> {
        self.admit_all(caller, method, &[resource], cost)
    }

    /// [`Service::admit`] for an operation on several resources at once: all are
    /// authorized first (a refusal spends nothing), then each asks the rate limits for
    /// `cost` (a policy keyed by prefix sees every series or stream the operation reads).
    fn admit_all(
        &self,
        caller: &Caller,
        method: crate::limits::Method,
        resources: &[Resource<'_>],
        cost: u64,
    ) -> Result<(), ServiceError> {
        self.authorize(caller, method, resources)?;
        let now_ns = guard::wall_now_ns();
        for r in resources {
            self.guards
                .admit(caller, method, limit_key(*r), cost, now_ns)?;
        }
        Ok(())
    }

    /// May the caller do `method` on every one of `resources`? With authentication off
    /// every caller may; with it on, a caller without a verified identity may not (the
    /// adapters verify tokens; this is the check that holds whatever an adapter forgot).
    fn authorize(
        &self,
        caller: &Caller,
        method: crate::limits::Method,
        resources: &[Resource<'_>],
    ) -> Result<(), ServiceError> {
        match self.verified(caller)? {
            Some(identity) => Ok(identity.authorize(method, resources)?),
            None => Ok(()),
        }
    }

    /// The caller's identity, still valid: `None` when authentication is off; refused when
    /// it is on and the caller has none, or its token has expired since it was verified (a
    /// long stream — an ingest, a subscription — is checked again with each request).
    fn verified<'a>(&self, caller: &'a Caller) -> Result<Option<&'a Identity>, ServiceError> {
        match (caller.identity(), self.node.auth()) {
            (Some(identity), _) if self.credential_left(identity).is_none() => {
                Err(AuthError::Unauthenticated(Reason::Expired).into())
            }
            (Some(identity), _) => Ok(Some(identity)),
            (None, None) => Ok(None),
            (None, Some(_)) => Err(AuthError::Unauthenticated(Reason::Missing).into()),
        }
    }

    /// How long the caller's token stays valid (its `exp` plus the leeway): `None` once it
    /// has expired. Without a token (authentication off), forever.
    fn credential_left(&self, identity: &Identity) -> Option<Duration> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let end = Duration::from_secs(
            identity
                .expires_at
                .saturating_add(self.node.config().auth.leeway_secs),
        );
        end.checked_sub(now).filter(|d| !d.is_zero())
    }

    /// When a stream opened by `caller` must end because its token expires (`None`: no
    /// token, it need not). Adapters close long-lived streams then, with a clear reason.
    pub fn credential_deadline(&self, caller: &Caller) -> Option<tokio::time::Instant> {
        let identity = caller.identity()?;
        let left = self.credential_left(identity).unwrap_or_default();
        Some(tokio::time::Instant::now() + left)
    }

    /// This node's configuration (adapters read their own sections, e.g. `[graphql]`).
    pub fn config(&self) -> &crate::config::Config {
        self.node.config()
    }

    /// The verifier of client tokens (`None`: authentication is off).
    pub fn verifier(&self) -> Option<&Arc<crate::auth::Verifier>> {
        self.node.auth()
    }

    /// The verifier `/metrics` needs (`None`: it is open — authentication off, or
    /// `auth.open_metrics`).
    pub fn metrics_verifier(&self) -> Option<&Arc<crate::auth::Verifier>> {
        self.node
            .auth()
            .filter(|_| !self.node.config().auth.open_metrics)
    }

    /// Read-only views of this node itself (status, limit counts): any authenticated
    /// caller that may read, whatever its scopes.
    fn authorize_view(&self, caller: &Caller) -> Result<(), ServiceError> {
        match self.verified(caller)? {
            Some(identity) if !identity.has_role(Role::Reader) => {
                Err(AuthError::Forbidden(Denied::Role {
                    action: crate::limits::Method::Read,
                    needs: Role::Reader,
                })
                .into())
            }
            _ => Ok(()),
        }
    }

    /// Per policy: this node's share, the cluster's factor, tokens left, demand, refusals.
    pub fn limit_counts(&self) -> Vec<guard::PolicyCounts> {
        self.guards.counts(guard::wall_now_ns(), Instant::now())
    }

    /// Runs a write until a leader takes it. `attempt(time_left)` proposes it through this node's
    /// proposer (which hands it to the leader when this node follows, in one
    /// `raft.v1.Propose` with the batch it joins). While no leader is known, or the leader
    /// moved or could not be reached — refusals that prove nothing was proposed — it
    /// retries with backoff until the write deadline; anything else is final, including
    /// "outcome unknown" once a request may have reached the leader. An open breaker to the
    /// leader this node still follows is final at once (`UNAVAILABLE` with the leader's
    /// address): the client may retry elsewhere instead of waiting out the deadline.
    async fn on_leader<T, F, Fut>(&self, mut attempt: F) -> Result<T, ServiceError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, NodeError>>,
    {
        let timeout_ms = self.node.config().write_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut backoff = Duration::from_millis(20);
        loop {
            // Each attempt waits only for the time left: the write deadline is the caller's.
            let left = deadline.saturating_duration_since(Instant::now());
            // Why this attempt was not written, for the reply if the deadline passes.
            let last = match attempt(left).await {
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
                // The breaker to the leader is open: answer at once (nothing was sent) rather
                // than hold the client until the deadline — unless the leader has changed
                // since, in which case the next attempt goes to the new one.
                Err(NodeError::BreakerOpen { leader, message }) => {
                    if self.node.current_leader() == Some(leader.0) {
                        return Err(ServiceError::BreakerOpen { leader, message });
                    }
                    message
                }
                Err(e) => return Err(e.into()),
            };
            // Too little time for another attempt to be proposed and answered: stop while
            // the answer is still "not written" (an attempt that ran out of time in flight
            // would have to say "outcome unknown").
            let left = deadline.saturating_duration_since(Instant::now());
            if left <= backoff + MIN_ATTEMPT {
                return Err(ServiceError::Unavailable(format!(
                    "no leader took the write within {timeout_ms} ms; nothing was written \
                     (last attempt: {last})"
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}

/// Keeps the enforced policies in step with the replicated ones, until the node is gone.
/// Asks the leader for this node's shares (one call for every policy); without an answer
/// the leases run out on their own and the shares fall back.
async fn renew_leases(node: &Node, guards: &guard::Guards) {
    let sent = Instant::now();
    let ask = guards.lease_ask(node.id(), sent);
    match node.lease(&ask, guard::RELOAD_EVERY).await {
        Ok(grant) => guards.apply_lease(&grant, sent, Instant::now()),
        Err(e) => {
            tracing::debug!("no rate-limit lease: {e}");
            guards.expire(Instant::now());
        }
    }
}

async fn reload_policies(node: std::sync::Weak<Node>, guards: guard::Guards) {
    let mut tick = tokio::time::interval(guard::RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in 0u64.. {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        match node.limit_policies().await {
            Ok(policies) => {
                node.set_lease_policies(policies.iter().map(|p| p.name.clone()).collect());
                let (voters, learners) = node.members();
                let members = voters.len() + learners.len();
                guards.update(policies, members, guard::wall_now_ns(), Instant::now());
            }
            Err(e) => tracing::warn!("reading the rate-limit policies: {e}"),
        }
        if guards.any() {
            renew_leases(&node, &guards).await;
        }
        if round % guard::SAVE_EVERY_RELOADS == guard::SAVE_EVERY_RELOADS - 1 {
            // Written off this loop: a large state must not delay the next renewal.
            let (dir, state) = (node.config().data_dir.clone(), guards.export());
            tokio::task::spawn_blocking(move || {
                if let Err(e) = guard::save(&dir, &state) {
                    tracing::warn!("writing the rate-limit state: {e}");
                }
            });
        }
    }
}

/// The name a rate-limit policy keys a resource by (`None`: no name, e.g. `$all` or the
/// cluster).
fn limit_key<'a>(resource: Resource<'a>) -> Option<&'a str> {
    match resource {
        Resource::Stream(s)
        | Resource::Workflow(s)
        | Resource::Series(s)
        | Resource::SeriesWithPrefix(s) => Some(s),
        Resource::StreamsWithPrefix(_) | Resource::Cluster => None,
    }
}
