//! The lease book against its invariant: whatever the demands, the order of requests, the
//! members that stop asking, and a leader change (a new book, knowing nothing) in the middle,
//! the shares the members actually enforce — a grant while it runs, then `min(last, 1/N)` —
//! never add up to more than the whole (plus `Factor::MIN` per member, a grant's floor).

use aether_guard::lease::{fair, fallback};
use aether_guard::{Factor, LeaseBook, LeaseRequest};
use proptest::prelude::*;

const LEASE: u64 = 2_000_000_000;

#[derive(Clone, Copy, Debug)]
struct Member {
    last: Factor,
    expires: u64,
}

fn enforced(m: &Member, now: u64, n: usize) -> Factor {
    if now < m.expires {
        m.last
    } else {
        fallback(m.last, n)
    }
}

proptest! {
    #[test]
    fn enforced_shares_never_exceed_the_whole(
        n in 1usize..=5,
        steps in prop::collection::vec(
            (0usize..5, 0u64..5_000_000, 0u64..700_000_000, prop::bool::weighted(0.03)),
            1..300,
        ),
    ) {
        let ids: Vec<u64> = (0..n as u64).collect();
        let mut members = vec![Member { last: fair(n), expires: 0 }; n];
        let mut now = 0u64;
        let mut book = LeaseBook::new(&ids, LEASE, now).unwrap();
        for (who, demand, dt, new_leader) in steps {
            now += dt;
            if new_leader {
                book = LeaseBook::new(&ids, LEASE, now).unwrap();
            }
            let who = who % n;
            let holding = enforced(&members[who], now, n);
            // The member's lease runs from when it sent the request; the book got it later.
            let sent = now.saturating_sub(dt / 4);
            let lease = book
                .grant(who as u64, LeaseRequest { demand_milli: demand, holding }, now)
                .unwrap();
            members[who] = Member { last: lease.share, expires: sent + lease.lease_ns };
            let sum: u64 = members.iter().map(|m| u64::from(enforced(m, now, n).ppm())).sum();
            prop_assert!(
                sum <= 1_000_000 + n as u64 * u64::from(Factor::MIN.ppm()),
                "sum {} at {} ({:?})", sum, now, members
            );
        }
    }
}
