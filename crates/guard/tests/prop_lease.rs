//! The lease book against its invariant: whatever the demands, the order of requests, the
//! members that stop asking, and a leader change (a new book, knowing nothing, quiet for two
//! leases) in the middle, and replies that never arrive, the shares the members actually enforce (`lease::enforced`) never
//! add up to more than the whole (plus `Factor::MIN` per member, a grant's floor). The sum is
//! checked at every grant: between grants every member's enforced share only decreases.
//! Not modelled: two leaders granting at once (a deposed leader stops within the node's
//! quorum-confirmation interval, which the node's timing rules cover, not the book).

use aether_guard::lease::enforced;
use aether_guard::{Factor, LeaseBook, LeaseRequest};
use proptest::prelude::*;

const LEASE: u64 = 2_000_000_000;

proptest! {
    #[test]
    fn enforced_shares_never_exceed_the_whole(
        n in 1usize..=5,
        steps in prop::collection::vec(
            (
                0usize..5,
                0u64..5_000_000,
                0u64..900_000_000,
                prop::bool::weighted(0.03),
                prop::bool::weighted(0.1),
            ),
            1..300,
        ),
    ) {
        let ids: Vec<u64> = (0..n as u64).collect();
        // Each member's last grant: (share, until), on the member's clock.
        let mut members: Vec<Option<(Factor, u64)>> = vec![None; n];
        let mut now = 0u64;
        let mut book = LeaseBook::new(&ids, LEASE, LEASE).unwrap();
        for (who, demand, dt, new_leader, reply_lost) in steps {
            now += dt;
            if new_leader {
                // The former book stops granting now: its grants run out within a lease.
                book = LeaseBook::new(&ids, LEASE, now + LEASE).unwrap();
            }
            let who = who % n;
            // The member's lease runs from when it sent the request; the book got it later.
            let sent = now.saturating_sub(dt / 4);
            let holding = enforced(members[who], n, LEASE, sent);
            let holding_left_ns = match members[who] {
                Some((_, until)) => until.saturating_sub(sent),
                None => 0,
            };
            let req = LeaseRequest { demand_milli: demand, holding, holding_left_ns };
            let lease = book.grant(who as u64, req, now).unwrap();
            // A lost reply: the member keeps what it had.
            if !reply_lost {
                members[who] = Some((lease.share, sent + lease.lease_ns));
            }
            let sum: u64 = members
                .iter()
                .map(|m| u64::from(enforced(*m, n, LEASE, now).ppm()))
                .sum();
            prop_assert!(
                sum <= 1_000_000 + n as u64 * u64::from(Factor::MIN.ppm()),
                "sum {} at {} ({:?})", sum, now, members
            );
        }
    }
}
