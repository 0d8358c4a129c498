//! Shares of a cluster-wide limit, leased by the leader in proportion to each member's demand.
//!
//! A limit of R per second holds for the whole cluster while every node enforces it locally,
//! with no call to another node on the request path: each node enforces a *share* of R (its
//! limiter's factor) and the shares in force never add up to more than the whole. The leader
//! keeps one [`LeaseBook`] per policy. Every member asks it periodically for a lease, telling
//! it its recent demand (units asked per second, refused ones included) and the share it holds
//! now; the book grants a share proportional to the member's part of the total demand, out of
//! what the other members do not hold, for `lease_ns`.
//!
//! The invariant — the shares that members may be enforcing add up to at most [`Factor::ONE`]
//! (plus [`Factor::MIN`] per member, a share's floor) — rests on three rules:
//!
//! - **What a member may hold**, as the book sees it: its grant while the grant runs; after
//!   it ran out, the member's *fallback*, `min(last grant, 1/N)` — the same rule the member
//!   applies to itself when it cannot renew ([`fallback`]); for a member the book never
//!   granted, 1/N, the most its fallback can be.
//! - **A grant never exceeds what the others may hold**: `grant ≤ ONE − Σ others`. So a
//!   member whose demand grew gets its larger share only after the others' requests gave
//!   theirs back.
//! - **A new book grows nobody for `lease_ns`** (its quiet period): after a leader change the
//!   new leader does not know the leases the old one granted; until they have all run out, it
//!   grants a member at most what the member reports holding, so no share grows while the old
//!   book's grants may still be in force.
//!
//! A member's clock runs its lease from before it sent the request, the book's from when it
//! got it: the member's lease ends first, so both see the same grants in force.
//!
//! Pure: time is passed in (`now_ns`, any clock that does not jump within a lease); members
//! are any ordered id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Factor, GuardError};

/// Parts per million in a whole share.
const PPM: u64 = 1_000_000;

/// A member's share when its lease ran out: its last grant, but never more than 1/`members`
/// (what every member may hold at once without the leader: N × 1/N = the whole).
pub fn fallback(last: Factor, members: usize) -> Factor {
    last.min(fair(members))
}

/// 1/`members` (the whole for none or one), never below [`Factor::MIN`].
pub fn fair(members: usize) -> Factor {
    let ppm = PPM / (members.max(1) as u64);
    Factor::from_ppm(ppm.max(u64::from(Factor::MIN.ppm())) as u32).unwrap_or(Factor::MIN)
}

/// What a member tells the book when it asks for a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Units asked per second lately, refused ones included, in thousandths.
    pub demand_milli: u64,
    /// The share the member enforces now (a grant, or its fallback).
    pub holding: Factor,
}

/// A grant: `share` of the policy, for `lease_ns` from when the member sent its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub share: Factor,
    pub lease_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    share: Factor,
    expires_ns: u64,
    demand_milli: u64,
}

/// The leader's book of one policy's leases.
#[derive(Clone, Debug)]
pub struct LeaseBook<M> {
    lease_ns: u64,
    quiet_until_ns: u64,
    members: Vec<M>,
    held: BTreeMap<M, Held>,
}

impl<M: Ord + Copy> LeaseBook<M> {
    /// A book for `members`, opened at `now_ns`, granting leases of `lease_ns`.
    pub fn new(members: &[M], lease_ns: u64, now_ns: u64) -> Result<LeaseBook<M>, GuardError> {
        if lease_ns == 0 {
            return Err(GuardError::policy("lease_ns", "at least 1"));
        }
        let mut book = LeaseBook {
            lease_ns,
            quiet_until_ns: now_ns.saturating_add(lease_ns),
            members: Vec::new(),
            held: BTreeMap::new(),
        };
        book.set_members(members);
        Ok(book)
    }

    /// The members (voters) now; grants of members that left are forgotten.
    pub fn set_members(&mut self, members: &[M]) {
        let mut members = members.to_vec();
        members.sort_unstable();
        members.dedup();
        self.held.retain(|m, _| members.binary_search(m).is_ok());
        self.members = members;
    }

    pub fn members(&self) -> &[M] {
        &self.members
    }

    /// The share member `m` may be enforcing at `now_ns`, as far as the book knows.
    pub fn holding(&self, m: M, now_ns: u64) -> Factor {
        let fair = fair(self.members.len());
        match self.held.get(&m) {
            Some(h) if now_ns < h.expires_ns => h.share,
            Some(h) => h.share.min(fair),
            None => fair,
        }
    }

    /// A lease for member `m`, asked at `now_ns`. A member the book does not know is refused.
    pub fn grant(&mut self, m: M, req: LeaseRequest, now_ns: u64) -> Result<Lease, GuardError> {
        if self.members.binary_search(&m).is_err() {
            return Err(GuardError::policy("member", "a voter of the cluster"));
        }
        let n = self.members.len() as u64;
        // Demand of the members whose grant still runs (a member that stopped asking has
        // no demand the book can trust), this member's as it says now.
        let others: u128 = self
            .held
            .iter()
            .filter(|(o, h)| **o != m && now_ns < h.expires_ns)
            .map(|(_, h)| u128::from(h.demand_milli))
            .sum();
        let total = others + u128::from(req.demand_milli);
        // A member without demand keeps a twentieth of its fair share, so that the first
        // requests it gets pass while its next request reports them.
        let idle = PPM / n / 20;
        let target = if total == 0 {
            PPM / n
        } else {
            let spread = u128::from(PPM - idle * n);
            idle + (spread * u128::from(req.demand_milli) / total) as u64
        };
        let held_by_others: u64 = self
            .members
            .iter()
            .filter(|o| **o != m)
            .map(|o| u64::from(self.holding(*o, now_ns).ppm()))
            .sum();
        let mut share = target.min(PPM.saturating_sub(held_by_others));
        if now_ns < self.quiet_until_ns {
            share = share.min(u64::from(req.holding.ppm()));
        }
        let share =
            Factor::from_ppm(share.max(u64::from(Factor::MIN.ppm())) as u32).unwrap_or(Factor::MIN);
        self.held.insert(
            m,
            Held {
                share,
                expires_ns: now_ns.saturating_add(self.lease_ns),
                demand_milli: req.demand_milli,
            },
        );
        Ok(Lease {
            share,
            lease_ns: self.lease_ns,
        })
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
