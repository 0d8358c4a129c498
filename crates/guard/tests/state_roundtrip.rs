//! Limiter state through serde_json and back, as the node writes it on shutdown and reads it
//! at start: the restored limiter decides exactly as the original would have, a drained
//! bucket stays drained across a short restart, and only the time that elapsed refills it.

use aether_guard::{
    Keyed, Limiter, LimiterState, SlidingWindow, SlidingWindowLimiter, TokenBucket,
    TokenBucketLimiter,
};
use proptest::prelude::*;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_790_000_000 * SEC;

#[test]
fn a_drained_bucket_stays_drained_across_a_short_restart() {
    let policy = TokenBucket::new(10, 1.0).unwrap();
    let mut l: TokenBucketLimiter<String> = Keyed::new(policy, 100).unwrap();
    let caller = "caller-1".to_string();
    assert!(l.try_acquire(&caller, 10, T0).unwrap().allowed);
    let json = serde_json::to_string(&l.export()).unwrap();

    // Back 300 ms later: 0.3 tokens, not a fresh burst of 10.
    let state: LimiterState<TokenBucket, _, String> = serde_json::from_str(&json).unwrap();
    let mut back = Keyed::restore(policy, 100, state, T0 + 300_000_000).unwrap();
    assert_eq!(back.remaining(&caller, T0 + 300_000_000), 0);
    let d = back.try_acquire(&caller, 1, T0 + 300_000_000).unwrap();
    assert_eq!((d.allowed, d.retry_after_ns), (false, 700_000_000));

    // Back an hour later: full again (capped at the burst).
    let state: LimiterState<TokenBucket, _, String> = serde_json::from_str(&json).unwrap();
    let back = Keyed::restore(policy, 100, state, T0 + 3600 * SEC).unwrap();
    assert_eq!(back.remaining(&caller, T0 + 3600 * SEC), 10);
}

#[test]
fn a_window_remembers_its_counts_across_a_restart() {
    let policy = SlidingWindow::new(5, 10 * SEC, 10).unwrap();
    let mut l: SlidingWindowLimiter<String> = Keyed::new(policy, 100).unwrap();
    let key = "stream/a".to_string();
    assert!(l.try_acquire(&key, 5, T0).unwrap().allowed);
    let json = serde_json::to_string(&l.export()).unwrap();
    let state: LimiterState<SlidingWindow, _, String> = serde_json::from_str(&json).unwrap();
    let mut back = Keyed::restore(policy, 100, state, T0 + SEC).unwrap();
    assert!(!back.allow(&key, T0 + SEC), "the window is still full");
    assert!(back.allow(&key, T0 + 11 * SEC), "and empties as it slides");
}

/// Requests (key, tokens, ms since the last) for either limiter.
fn ops() -> impl Strategy<Value = (Vec<(u8, u64, u64)>, usize)> {
    prop::collection::vec((0u8..8, 1u64..=4, 0u64..700), 2..120).prop_flat_map(|ops| {
        let len = ops.len();
        (Just(ops), 0..len)
    })
}

/// Runs `ops` on `original`; at `cut` exports it through JSON into a restored copy; from then
/// on both must decide alike. (Room for every key: a full map's time of its next sweep is a
/// cache, not state, so a restored full map may give a new key a later — more exact — retry.)
fn check_round_trip<A>(
    mut original: Keyed<u8, A>,
    ops: &[(u8, u64, u64)],
    cut: usize,
) -> Result<(), TestCaseError>
where
    A: aether_guard::Algorithm + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    A::State: serde::de::DeserializeOwned,
{
    let mut t = T0;
    let mut restored: Option<Keyed<u8, A>> = None;
    for (i, &(key, n, dt_ms)) in ops.iter().enumerate() {
        t += dt_ms * 1_000_000;
        if i == cut {
            let json = serde_json::to_string(&original.export()).unwrap();
            let state: LimiterState<A, A::State, u8> = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&state.policy, original.policy());
            restored = Some(
                Keyed::restore(original.policy().clone(), original.max_keys(), state, t).unwrap(),
            );
        }
        let want = original.try_acquire(&key, n, t).unwrap();
        if let Some(r) = restored.as_mut() {
            prop_assert_eq!(r.try_acquire(&key, n, t).unwrap(), want);
            prop_assert_eq!(r.remaining(&key, t), original.remaining(&key, t));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn restored_buckets_decide_as_the_originals((ops, cut) in ops()) {
        let policy = TokenBucket::new(4, 2.7).unwrap();
        check_round_trip(Keyed::new(policy, 8).unwrap(), &ops, cut)?;
    }

    #[test]
    fn restored_windows_decide_as_the_originals((ops, cut) in ops()) {
        let policy = SlidingWindow::new(6, 3 * SEC, 6).unwrap();
        check_round_trip(Keyed::new(policy, 8).unwrap(), &ops, cut)?;
    }
}
