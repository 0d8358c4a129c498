//! Leases of cluster-wide rate limits (issue 11): the leader's desk that grants each member its
//! share of every policy, in proportion to the member's recent demand, plus the cluster-wide
//! adaptive factor that follows the leader's queues; and the node-to-node messages of
//! `raft.v1.Lease`.
//!
//! Every member asks the leader every `RELOAD_EVERY` (see `service::guard`) with one message
//! for all its policies; nothing of this runs on the request path. The books are the pure
//! [`aether_guard::LeaseBook`]s (one per policy), whose invariant is that the shares in force
//! never exceed the whole. A leader starts with fresh books, with the quiet period the book
//! keeps after a leader change. The adaptive factor: the leader feeds its proposer queue's
//! utilization to an [`AdaptiveController`] at every grant (the queue only: in-flight
//! batches at their maximum are a pipeline at work, commands waiting behind them are the
//! backlog) and sends the factor with every lease, so that when the leader's queue is over
//! 80% full every node's share tightens.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aether_guard::{AdaptiveController, AdaptivePolicy, Factor, LeaseBook, LeaseRequest};
use serde::{Deserialize, Serialize};

use super::NodeId;
use crate::limits::{MAX_NAME_BYTES, MAX_POLICIES};

/// How long a lease runs, from when the member sent its request.
pub const LEASE: Duration = Duration::from_secs(1);
/// How long a quorum's confirmation of this node's leadership lets it grant leases.
const CONFIRM_EVERY: Duration = Duration::from_millis(500);
/// Books not asked about for this long are dropped (a deleted policy).
const BOOK_IDLE: Duration = Duration::from_secs(30);

/// A member's request: its demand and current share, per policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAsk {
    /// The member asking. With auth on, the raft service refuses a request whose `from` is
    /// not the node its node token names (`PERMISSION_DENIED`), so a member cannot take or
    /// shrink another's shares; with auth off, it is whatever the peer says.
    pub from: NodeId,
    pub policies: Vec<PolicyAsk>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyAsk {
    pub name: String,
    /// Units asked per second lately (refused ones included), in thousandths.
    pub demand_milli: u64,
    /// The share this member enforces now, in parts per million.
    pub holding_ppm: u32,
    /// How long that share still runs as a lease, in ms (0: a fallback or the minimum).
    pub holding_left_ms: u64,
}

/// The leader's answer: a share per policy asked about, and the cluster's adaptive factor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// The leader's adaptive factor, in parts per million.
    pub factor_ppm: u32,
    /// The utilization of the leader's proposer (0..1) the factor follows, in ppm.
    pub utilization_ppm: u32,
    /// How long the shares run, from when the request was sent.
    pub lease_ms: u64,
    /// `(policy, share in ppm)`, in the order asked.
    pub shares: Vec<(String, u32)>,
}

/// Why a lease was not granted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LeaseError {
    #[error("node {0} does not lead")]
    NotLeader(NodeId),
    #[error("invalid lease request: {0}")]
    Invalid(String),
}

struct Book {
    book: LeaseBook<NodeId>,
    asked: Instant,
}

struct Desk {
    /// The policies in force as this node applied them: books are opened for these only,
    /// and dropped when a policy goes (a peer cannot fill the desk with made-up names).
    policies: Vec<String>,
    /// The term the books were opened in: a new term (a new leadership) opens new books.
    term: u64,
    /// Until when this leadership grows no share (two leases after it began): the leases
    /// the former leader granted may still be in force.
    quiet_until_ns: u64,
    /// When this node last confirmed with a quorum that it leads.
    confirmed: Option<Instant>,
    books: HashMap<String, Book>,
    adaptive: AdaptiveController,
}

/// The leader's desk. A node keeps one; it grants only while the node leads.
pub struct LeaseDesk {
    origin: Instant,
    desk: Mutex<Desk>,
}

impl Default for LeaseDesk {
    fn default() -> Self {
        LeaseDesk::new(AdaptivePolicy::default())
    }
}

/// A controller for `policy`, or the default one if `policy` is invalid.
fn controller(policy: AdaptivePolicy) -> AdaptiveController {
    AdaptiveController::new(policy)
        .or_else(|_| AdaptiveController::new(AdaptivePolicy::default()))
        .expect("the default adaptive policy is valid")
}

impl LeaseDesk {
    /// The policies in force (their names), as this node applied them.
    pub fn set_policies(&self, mut names: Vec<String>) {
        names.sort_unstable();
        let mut desk = self.desk.lock().unwrap_or_else(|p| p.into_inner());
        desk.books
            .retain(|name, _| names.binary_search(name).is_ok());
        desk.policies = names;
    }

    pub fn new(adaptive: AdaptivePolicy) -> LeaseDesk {
        let adaptive = controller(adaptive);
        LeaseDesk {
            origin: Instant::now(),
            desk: Mutex::new(Desk {
                policies: Vec::new(),
                term: 0,
                quiet_until_ns: 0,
                confirmed: None,
                books: HashMap::new(),
                adaptive,
            }),
        }
    }

    /// Grants `ask` if this node (`me`) leads, as the leader of its current term. A leader
    /// grants only while a quorum confirmed its leadership within the last `CONFIRM_EVERY`
    /// (else it confirms first, one heartbeat round): a deposed leader cut off from the
    /// others must not go on renewing leases — its own first of all.
    pub async fn grant_as_leader(
        &self,
        raft: &super::Raft,
        me: NodeId,
        ask: &LeaseAsk,
        utilization: f64,
    ) -> Result<LeaseGrant, LeaseError> {
        let m = raft.metrics().borrow().clone();
        if m.current_leader != Some(me) || m.state != openraft::ServerState::Leader {
            return Err(LeaseError::NotLeader(me));
        }
        let fresh = self
            .desk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .confirmed
            .is_some_and(|t| t.elapsed() < CONFIRM_EVERY);
        if !fresh {
            let started = Instant::now();
            super::read_index::confirmed(raft, me)
                .await
                .map_err(|_| LeaseError::NotLeader(me))?;
            self.desk
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .confirmed = Some(started);
        }
        // Every member holds a share: learners serve clients too.
        let members: Vec<NodeId> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        self.grant(m.current_term, &members, ask, utilization)
    }

    /// Grants `ask`, as the leader of `term` with `members`, at a proposer `utilization`
    /// (0..1). A request from a stranger, too many policies or a bad name is refused
    /// whole (a peer's message is as untrusted as a client's).
    pub fn grant(
        &self,
        term: u64,
        members: &[NodeId],
        ask: &LeaseAsk,
        utilization: f64,
    ) -> Result<LeaseGrant, LeaseError> {
        if !members.contains(&ask.from) {
            return Err(LeaseError::Invalid(format!(
                "node {} is not a member",
                ask.from
            )));
        }
        if ask.policies.len() > MAX_POLICIES {
            return Err(LeaseError::Invalid(format!(
                "{} policies (at most {MAX_POLICIES})",
                ask.policies.len()
            )));
        }
        for p in &ask.policies {
            if p.name.is_empty() || p.name.len() > MAX_NAME_BYTES {
                return Err(LeaseError::Invalid(format!(
                    "a policy name of {} bytes",
                    p.name.len()
                )));
            }
            Factor::from_ppm(p.holding_ppm)
                .map_err(|e| LeaseError::Invalid(format!("policy {:?}: {e}", p.name)))?;
        }
        let now = Instant::now();
        let now_ns = u64::try_from(now.duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX);
        let lease_ns = LEASE.as_nanos() as u64;
        let mut desk = self.desk.lock().unwrap_or_else(|p| p.into_inner());
        if desk.term != term {
            desk.term = term;
            desk.books.clear();
            // The former leader granted only within CONFIRM_EVERY of its last quorum
            // confirmation, which came before this term began: its grants run out a lease
            // after that.
            desk.quiet_until_ns = now_ns.saturating_add((CONFIRM_EVERY + LEASE).as_nanos() as u64);
            // A new leadership starts from the limits as configured; its own queue decides.
            let policy = *desk.adaptive.policy();
            desk.adaptive = controller(policy);
        }
        desk.books
            .retain(|_, b| now.duration_since(b.asked) < BOOK_IDLE);
        desk.adaptive.observe(utilization, now_ns);
        let quiet_until_ns = desk.quiet_until_ns;
        let mut shares = Vec::with_capacity(ask.policies.len());
        for p in &ask.policies {
            // Only policies in force here get a share (the member keeps its fallback for
            // a policy this node has not applied yet).
            if desk.policies.binary_search(&p.name).is_err() {
                continue;
            }
            let book = match desk.books.entry(p.name.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(Book {
                    book: LeaseBook::new(members, lease_ns, quiet_until_ns)
                        .map_err(|e| LeaseError::Invalid(e.to_string()))?,
                    asked: now,
                }),
            };
            book.asked = now;
            book.book.set_members(members);
            let holding = Factor::from_ppm(p.holding_ppm).unwrap_or(Factor::MIN);
            let lease = book
                .book
                .grant(
                    ask.from,
                    LeaseRequest {
                        demand_milli: p.demand_milli,
                        holding,
                        // At most one lease: a peer cannot pin a share for longer.
                        holding_left_ns: p.holding_left_ms.min(LEASE.as_millis() as u64)
                            * 1_000_000,
                    },
                    now_ns,
                )
                .map_err(|e| LeaseError::Invalid(e.to_string()))?;
            shares.push((p.name.clone(), lease.share.ppm()));
        }
        Ok(LeaseGrant {
            factor_ppm: desk.adaptive.factor().ppm(),
            utilization_ppm: (desk.adaptive.utilization() * 1e6) as u32,
            lease_ms: LEASE.as_millis() as u64,
            shares,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(from: NodeId, policies: &[(&str, u64, u32)]) -> LeaseAsk {
        LeaseAsk {
            from,
            policies: policies
                .iter()
                .map(|(name, demand, holding)| PolicyAsk {
                    name: (*name).to_owned(),
                    demand_milli: *demand,
                    holding_ppm: *holding,
                    holding_left_ms: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn refuses_strangers_and_bad_requests() {
        let desk = LeaseDesk::default();
        let members = [1, 2, 3];
        assert!(desk.grant(1, &members, &ask(9, &[]), 0.0).is_err());
        assert!(desk
            .grant(1, &members, &ask(1, &[("", 1, 1_000_000)]), 0.0)
            .is_err());
        assert!(desk
            .grant(1, &members, &ask(1, &[("p", 1, 5)]), 0.0)
            .is_err());
        let many: Vec<(&str, u64, u32)> = vec![("p", 1, 1_000_000); MAX_POLICIES + 1];
        assert!(desk.grant(1, &members, &ask(1, &many), 0.0).is_err());
        desk.set_policies(vec!["p".to_owned()]);
        let g = desk
            .grant(
                1,
                &members,
                &ask(1, &[("p", 1_000, 333_333), ("made-up", 1_000, 333_333)]),
                0.0,
            )
            .unwrap();
        assert_eq!(
            g.shares,
            vec![("p".to_owned(), 333_333)],
            "no share of a policy not in force here"
        );
        assert_eq!(g.factor_ppm, 1_000_000);
        desk.set_policies(Vec::new());
        assert!(
            desk.desk.lock().unwrap().books.is_empty(),
            "a deleted policy's book goes"
        );
    }

    /// A full proposer halves the factor every lease carries.
    #[test]
    fn the_factor_follows_the_leaders_queue() {
        let desk = LeaseDesk::default();
        let g = desk
            .grant(1, &[1], &ask(1, &[("p", 1, 1_000_000)]), 0.95)
            .unwrap();
        assert_eq!(g.factor_ppm, 500_000);
        assert_eq!(g.utilization_ppm, 950_000);
        // A new term starts from the limits as configured.
        let g = desk
            .grant(2, &[1], &ask(1, &[("p", 1, 1_000_000)]), 0.5)
            .unwrap();
        assert_eq!(g.factor_ppm, 1_000_000);
    }
}
