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
//! - **What a member enforces** ([`enforced`]), a rule the book applies to its view of every
//!   member: its grant while the grant runs; for one lease after it ran out, its *fallback*
//!   `min(last grant, 1/N)` (a leader that cannot be reached for a moment does not stop the
//!   node); after that, and before its first grant, [`Factor::MIN`]. So a member that went
//!   silent — dead, or cut off from the leader (and then unable to write anyway) — gives its
//!   share back within two leases, and the members still asking share the whole.
//! - **A grant never exceeds what the others may hold**: `grant ≤ ONE − Σ others`. What a
//!   member may hold is the larger of its last grant and what it reported holding when it
//!   asked (with the time that holding still runs), each with its fallback: a member whose
//!   share was cut may never have received the reply, and goes on enforcing its former lease
//!   until that runs out. So a member whose demand grew gets its larger share only once the
//!   others have given theirs back.
//! - **A new leader grows nobody at first**: it does not know the leases the old leader
//!   granted. Until every member has asked it (and so reported what it holds), or the quiet
//!   period passed (every old grant has run out; the caller knows when the former leader
//!   stopped granting), it grants a member at most what the member held when it first asked —
//!   its share under the former leader, whose shares added up to at most the whole and only
//!   shrink once that leader stopped granting. A member not heard from counts as 1/N for one
//!   lease after the quiet period (its fallback), then as the minimum.
//! - **A member that left** is counted while its grant or fallback may still be in force.
//! - **No request lowers a record below the last grant**: a member is counted at no less
//!   than the book's last grant to it, whatever a request claims.
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

/// The share a member enforces at `now_ns`, given its last grant (`share`, running until
/// `until_ns`), if any: the grant while it runs, the [`fallback`] for one lease after, then
/// (and before any grant) [`Factor::MIN`].
pub fn enforced(last: Option<(Factor, u64)>, members: usize, lease_ns: u64, now_ns: u64) -> Factor {
    match last {
        Some((share, until)) if now_ns < until => share,
        Some((share, until)) if now_ns < until.saturating_add(lease_ns) => fallback(share, members),
        _ => Factor::MIN,
    }
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
    /// The share the member enforces now (a grant, its fallback, or the minimum).
    pub holding: Factor,
    /// How long `holding` still runs as a grant (0 if it is a fallback or the minimum);
    /// after that it falls back like any grant.
    pub holding_left_ns: u64,
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
    /// What the member reported holding when it asked, and until when (its former lease,
    /// still in force if it never got this grant).
    reported: (Factor, u64),
    /// What it reported holding the first time it asked this book: its share under the
    /// former leader, the most the quiet period grants it.
    first: Factor,
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
    /// A book for `members`, granting leases of `lease_ns`. `quiet_until_ns`: when every
    /// lease a former leader granted has run out (see the module); until then no member's
    /// share grows past what it held when it first asked, unless every member was heard, and
    /// a member not heard from counts as 1/N for one lease more (its fallback).
    pub fn new(
        members: &[M],
        lease_ns: u64,
        quiet_until_ns: u64,
    ) -> Result<LeaseBook<M>, GuardError> {
        if lease_ns == 0 {
            return Err(GuardError::policy("lease_ns", "at least 1"));
        }
        let mut book = LeaseBook {
            lease_ns,
            quiet_until_ns,
            members: Vec::new(),
            held: BTreeMap::new(),
        };
        book.set_members(members);
        Ok(book)
    }

    /// The members now. A member that left is still counted while it may enforce its grant
    /// or fallback (it may not know yet that it left), then forgotten.
    pub fn set_members(&mut self, members: &[M]) {
        let mut members = members.to_vec();
        members.sort_unstable();
        members.dedup();
        self.members = members;
    }

    /// What a member with record `h` may be enforcing: the larger of its grant and of what it
    /// reported holding (if it never got the grant).
    fn curve(&self, h: &Held, now_ns: u64) -> Factor {
        let (n, lease) = (self.members.len(), self.lease_ns);
        enforced(Some((h.share, h.expires_ns)), n, lease, now_ns).max(enforced(
            Some(h.reported),
            n,
            lease,
            now_ns,
        ))
    }

    pub fn members(&self) -> &[M] {
        &self.members
    }

    /// The share member `m` may be enforcing at `now_ns`, as far as the book knows. In the
    /// quiet period a member not heard from yet may hold anything; it counts as 1/N (while
    /// any member is unheard, grants do not grow anyway).
    pub fn holding(&self, m: M, now_ns: u64) -> Factor {
        match self.held.get(&m) {
            Some(h) => self.curve(h, now_ns),
            // A former leader's grant runs out by `quiet_until_ns`; its fallback one lease
            // later.
            None if now_ns < self.quiet_until_ns.saturating_add(self.lease_ns) => {
                fair(self.members.len())
            }
            None => Factor::MIN,
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
        // The rest in proportion to demand; nobody asking anything: the fair share.
        let spread = u128::from(PPM - idle * n);
        let target = (spread * u128::from(req.demand_milli))
            .checked_div(total)
            .map_or(PPM / n, |part| idle + part as u64);
        // Members that left are forgotten once they can enforce nothing above the minimum.
        let members = std::mem::take(&mut self.members);
        self.held.retain(|o, h| {
            members.binary_search(o).is_ok()
                || enforced(
                    Some((h.share, h.expires_ns)),
                    members.len(),
                    self.lease_ns,
                    now_ns,
                )
                .max(enforced(
                    Some(h.reported),
                    members.len(),
                    self.lease_ns,
                    now_ns,
                )) > Factor::MIN
        });
        self.members = members;
        let held_by_others: u64 = self
            .members
            .iter()
            .filter(|o| **o != m && !self.held.contains_key(o))
            .map(|o| u64::from(self.holding(*o, now_ns).ppm()))
            .chain(
                self.held
                    .iter()
                    .filter(|(o, _)| **o != m)
                    .map(|(_, h)| u64::from(self.curve(h, now_ns).ppm())),
            )
            .sum();
        // What this member may hold if it never gets this grant: what it says it holds —
        // and, whoever sent this request, no less than the book's last grant to it (not the
        // records before that: a member that renews must be able to give a share back).
        let mut reported = (req.holding, now_ns.saturating_add(req.holding_left_ns));
        if let Some(h) = self.held.get(&m) {
            reported = (reported.0.max(h.share), reported.1.max(h.expires_ns));
        }
        // Quiet until every member was heard (this one included) or the former leader's
        // grants ran out.
        let heard = self
            .members
            .iter()
            .filter(|o| **o == m || self.held.contains_key(o))
            .count();
        let quiet = now_ns < self.quiet_until_ns && heard < self.members.len();
        let first = self.held.get(&m).map_or(req.holding, |h| h.first);
        let mut share = target.min(PPM.saturating_sub(held_by_others));
        if quiet {
            share = share.min(u64::from(first.ppm()));
        }
        let share =
            Factor::from_ppm(share.max(u64::from(Factor::MIN.ppm())) as u32).unwrap_or(Factor::MIN);
        self.held.insert(
            m,
            Held {
                share,
                expires_ns: now_ns.saturating_add(self.lease_ns),
                demand_milli: req.demand_milli,
                reported,
                first,
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
