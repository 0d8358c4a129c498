//! The token bucket against its definition. Over any sequence of requests (times
//! non-decreasing) it never admits more than `burst + rate × elapsed`, and it decides exactly
//! as the closed form of a token bucket says: before request `i` the level is
//! `min(B, min over j < i of B + r·(t_i − t_j) − A[j, i))`, with `A[j, i)` the tokens admitted
//! from request `j` up to `i` — no running level, no cap clamping, all in exact integers.
//! A refused request's `retry_after_ns` is exact: it passes then, not a nanosecond before.

use aether_guard::bucket::ATTO_PER_TOKEN;
use aether_guard::{Algorithm, Factor, TokenBucket, RETRY_WHEN_RELAXED};
use proptest::prelude::*;

const T0: u64 = 1_790_000_000_000_000_000;

fn case() -> impl Strategy<Value = (u64, u64, Vec<(u64, u64)>)> {
    (1u64..=50, 1_000_000u64..=50_000_000_000).prop_flat_map(|(burst, rate_nano)| {
        let steps = prop::collection::vec((0u64..=3_000_000_000, 0u64..=burst), 1..150);
        (Just(burst), Just(rate_nano), steps)
    })
}

proptest! {
    #[test]
    fn admits_what_the_closed_form_says_and_never_more_than_burst_plus_rate(
        (burst, rate_nano, steps) in case()
    ) {
        let b = TokenBucket::from_nano(burst, rate_nano).unwrap();
        let cap = u128::from(burst) * ATTO_PER_TOKEN;
        let r = u128::from(rate_nano);
        let mut st = b.fresh(T0, Factor::ONE);
        let mut t = T0;
        // (time, tokens admitted) of every request so far.
        let mut log: Vec<(u64, u64)> = Vec::new();
        for (dt, n) in steps {
            t += dt;
            let mut level = cap;
            let mut admitted_since = 0u128;
            for &(tj, aj) in log.iter().rev() {
                admitted_since += u128::from(aj) * ATTO_PER_TOKEN;
                level = level.min((cap + r * u128::from(t - tj)).saturating_sub(admitted_since));
            }
            let cost = u128::from(n) * ATTO_PER_TOKEN;
            let before = st;
            let d = b.acquire(&mut st, n, t, Factor::ONE);
            prop_assert_eq!(d.allowed, cost <= level, "at {} asking {}, level {}", t - T0, n, level);
            log.push((t, if d.allowed { n } else { 0 }));

            let total: u128 = log.iter().map(|&(_, a)| u128::from(a) * ATTO_PER_TOKEN).sum();
            prop_assert!(total <= cap + r * u128::from(t - T0));

            if !d.allowed {
                prop_assert!(d.retry_after_ns > 0 && d.retry_after_ns < RETRY_WHEN_RELAXED);
                let mut later = before;
                prop_assert!(b.acquire(&mut later, n, t + d.retry_after_ns, Factor::ONE).allowed);
                let mut sooner = before;
                prop_assert!(!b.acquire(&mut sooner, n, t + d.retry_after_ns - 1, Factor::ONE).allowed);
            }
        }
    }
}
