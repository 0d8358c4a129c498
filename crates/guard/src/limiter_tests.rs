use super::*;
use crate::NANOS_PER_SEC as SEC;

fn buckets(burst: u64, max_keys: usize) -> TokenBucketLimiter<&'static str> {
    Keyed::new(TokenBucket::new(burst, 1.0).unwrap(), max_keys).unwrap()
}

#[test]
fn requests_beyond_the_limit_are_errors_and_allow_is_the_boolean() {
    let mut l = buckets(2, 10);
    let err = l.try_acquire(&"a", 3, 0).unwrap_err();
    assert_eq!(
        err,
        GuardError::ExceedsLimit {
            requested: 3,
            limit: 2
        }
    );
    assert!(l.allow(&"a", 0));
    assert!(l.allow(&"a", 0));
    assert!(!l.allow(&"a", 0));
    assert_eq!(
        Keyed::<&str, _>::new(*l.policy(), 0)
            .unwrap_err()
            .to_string(),
        "invalid policy: max_keys must be between 1 and 10000000"
    );
}

#[test]
fn a_full_map_of_busy_keys_refuses_new_keys_until_one_is_idle() {
    let mut l = buckets(1, 2);
    assert!(l.allow(&"a", 0));
    assert!(l.allow(&"b", 0));
    // Both drained: idle (full again) at 1 s. A new key waits for that.
    let refused = l.try_acquire(&"c", 1, 0).unwrap();
    assert_eq!((refused.allowed, refused.retry_after_ns), (false, SEC));
    // Before then, no sweep: refused at once, with the time left.
    let refused = l.try_acquire(&"d", 1, SEC / 2).unwrap();
    assert_eq!((refused.allowed, refused.retry_after_ns), (false, SEC / 2));
    assert_eq!(l.refused_new_keys(), 2);
    // Known keys are decided as usual meanwhile.
    assert!(!l.allow(&"a", SEC / 2));
    // At 1 s both are idle and swept out; the new key gets its burst.
    assert!(l.allow(&"c", SEC));
    assert_eq!((l.len(), l.max_keys()), (1, 2));
    assert!(l.allow(&"d", SEC));
    assert!(!l.is_empty());
}

#[test]
fn a_new_factor_makes_the_next_sweep_look_again() {
    let mut l = buckets(2, 1);
    assert!(l.allow(&"a", 0));
    assert!(!l.allow(&"b", 0), "a has 1 of 2 tokens: busy until 1 s");
    // Halved, the capacity is 1 token: "a" is full, so idle, at once.
    l.set_factor(Factor::from_ppm(500_000).unwrap());
    assert_eq!(l.factor().ppm(), 500_000);
    assert!(l.allow(&"b", SEC / 2));
}

#[test]
fn remaining_and_snapshot_for_dashboards() {
    let mut l = buckets(5, 10);
    assert_eq!(l.remaining(&"a", 0), 5, "an unseen key has the full burst");
    l.try_acquire(&"a", 3, 0).unwrap();
    assert_eq!(l.remaining(&"a", 0), 2);
    assert_eq!(l.remaining(&"a", SEC), 3);
    assert_eq!(l.snapshot(SEC), vec![("a", 3)]);
}

#[test]
fn restore_refuses_what_it_cannot_hold() {
    let mut l = buckets(5, 10);
    l.try_acquire(&"a", 3, 0).unwrap();
    l.try_acquire(&"b", 1, 0).unwrap();
    let state = l.export();
    assert_eq!(state.entries.len(), 2);
    let policy = *l.policy();

    let err = Keyed::restore(policy, 1, state.clone(), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 keys stored, at most 1 kept"), "{err}");

    let mut twice = state.clone();
    twice.entries.push(twice.entries[0]);
    let err = Keyed::restore(policy, 10, twice, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("stored twice"), "{err}");

    let err = Keyed::restore(policy, 0, state.clone(), 0).unwrap_err();
    assert!(
        matches!(
            err,
            GuardError::InvalidPolicy {
                field: "max_keys",
                ..
            }
        ),
        "{err}"
    );

    let back = Keyed::restore(policy, 10, state, 0).unwrap();
    assert_eq!((back.remaining(&"a", 0), back.remaining(&"b", 0)), (2, 4));

    // A window state kept under another geometry is refused, with the reason.
    let w = SlidingWindow::new(10, SEC, 10).unwrap();
    let mut wl: SlidingWindowLimiter<u32> = Keyed::new(w, 10).unwrap();
    wl.try_acquire(&7, 1, 0).unwrap();
    let other = SlidingWindow::new(10, SEC, 5).unwrap();
    let err = Keyed::restore(other, 10, wl.export(), 0).unwrap_err();
    assert!(matches!(err, GuardError::InvalidState(_)), "{err}");
}

#[test]
fn small_quotients_are_exact_floors() {
    let atto = 1_000_000_000_000_000_000u64;
    let mut cases = vec![(0u128, 1u64), (5, 7), (u128::from(u64::MAX), u64::MAX)];
    // Around every multiple the float quotient could misjudge, up to the largest (10¹²).
    for q in [1u128, 3, 17, 999_999, 123_456_789_012, 1_000_000_000_000] {
        for d in [atto, 3, 1_000_000_007, 604_800_000_000_000] {
            let m = q * u128::from(d);
            cases.extend([(m - 1, d), (m, d), (m + 1, d)]);
        }
    }
    for (x, d) in cases {
        assert_eq!(
            u128::from(small_quotient(x, d)),
            x / u128::from(d),
            "{x} / {d}"
        );
    }
}

#[test]
fn the_most_drained_key_is_read_without_copying_keys() {
    let mut l = Keyed::new(TokenBucket::from_nano(4, 1_000_000_000).unwrap(), 10).unwrap();
    assert_eq!(l.min_remaining(0), None);
    l.try_acquire(&"a", 1, 0).unwrap();
    l.try_acquire(&"b", 3, 0).unwrap();
    assert_eq!(l.min_remaining(0), Some(1));
    assert_eq!(l.len(), 2);
}
