//! The sliding window against a log of every admitted request, checking the error bound its
//! module documents. With `s` the sub-window length, `r = now mod s`, `exact` the admitted
//! count in `(now − window, now]` and `c_old` the count of the sub-window the window's start
//! falls in (all from the log), after every request:
//!
//! - `exact·s − c_old·r ≤ estimate·s ≤ exact·s + c_old·(s − r)`;
//! - an admission leaves at most `limit + c_old·r/s` in the window;
//! - a refusal happens only with `exact + n > limit − c_old·(s − r)/s`;
//! - a refused request's `retry_after_ns` is exact: it passes then, not a nanosecond before.

use aether_guard::{Algorithm, Factor, SlidingWindow, RETRY_WHEN_RELAXED};
use proptest::prelude::*;

const T0: u64 = 1_790_000_000_000_000_000;

fn case() -> impl Strategy<Value = (u64, u32, u64, Vec<(u64, u64)>)> {
    (1u64..=20, 1u32..=6, 1u64..=1_000).prop_flat_map(|(limit, count, sub_ns)| {
        let window = sub_ns * u64::from(count);
        let steps = prop::collection::vec((0..=2 * window, 1..=limit), 1..200);
        (Just(limit), Just(count), Just(sub_ns), steps)
    })
}

proptest! {
    #[test]
    fn stays_within_the_documented_bound((limit, count, sub_ns, steps) in case()) {
        let window = sub_ns * u64::from(count);
        let w = SlidingWindow::new(limit, window, count).unwrap();
        prop_assert_eq!(w.sub_window_ns(), sub_ns);
        let (s, lim) = (u128::from(sub_ns), u128::from(limit));
        let mut st = w.fresh(T0, Factor::ONE);
        let mut t = T0;
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (dt, n) in steps {
            t += dt;
            let before = st.clone();
            let d = w.acquire(&mut st, n, t, Factor::ONE);
            if d.allowed {
                admitted.push((t, n));
            }
            let count_in = |from_excl: u64, to_incl: u64| -> u128 {
                admitted.iter().filter(|&&(ts, _)| ts > from_excl && ts <= to_incl).map(|&(_, n)| u128::from(n)).sum()
            };
            let exact = count_in(t - window, t);
            let old_start = (t / sub_ns - u64::from(count)) * sub_ns;
            let c_old = count_in(old_start - 1, old_start + sub_ns - 1);
            let r = u128::from(t % sub_ns);
            let est = w.estimate_scaled(&st, t);
            prop_assert!(exact * s <= est + c_old * r, "exact {} est/s {} c_old {}", exact, est, c_old);
            prop_assert!(est <= exact * s + c_old * (s - r), "exact {} est/s {} c_old {}", exact, est, c_old);
            if d.allowed {
                prop_assert!(exact * s <= lim * s + c_old * r);
            } else {
                prop_assert!((exact + u128::from(n)) * s + c_old * (s - r) > lim * s);
                prop_assert!(d.retry_after_ns > 0 && d.retry_after_ns < RETRY_WHEN_RELAXED);
                let mut later = before.clone();
                prop_assert!(w.acquire(&mut later, n, t + d.retry_after_ns, Factor::ONE).allowed);
                let mut sooner = before;
                prop_assert!(!w.acquire(&mut sooner, n, t + d.retry_after_ns - 1, Factor::ONE).allowed);
            }
        }
    }
}
