use super::*;
// Expected decisions in the tables below.
use crate::Decision as D;
use crate::NANOS_PER_SEC as SEC;

fn bucket(burst: u64, rate_per_sec: f64) -> TokenBucket {
    TokenBucket::new(burst, rate_per_sec).unwrap()
}

fn half() -> Factor {
    Factor::from_ppm(500_000).unwrap()
}

#[test]
fn policy_ranges() {
    // (burst, rate per second, accepted)
    let cases: &[(u64, f64, bool)] = &[
        (1, 0.27, true),
        (0, 1.0, false),
        (TokenBucket::MAX_BURST, 1.0, true),
        (TokenBucket::MAX_BURST + 1, 1.0, false),
        (1, 0.000_001, true),
        (1, 0.000_000_9, false),
        (1, 1e9, true),
        (1, 1.1e9, false),
        (1, f64::NAN, false),
        (1, f64::INFINITY, false),
        (1, -1.0, false),
    ];
    for &(burst, rate, ok) in cases {
        assert_eq!(
            TokenBucket::new(burst, rate).is_ok(),
            ok,
            "burst {burst}, rate {rate}"
        );
    }
    let b = bucket(3, 0.27);
    assert_eq!(
        (b.burst_capacity(), b.refill_nano_per_sec()),
        (3, 270_000_000)
    );
    assert_eq!(b.refill_rate_per_sec(), 0.27);
    assert!(TokenBucket::from_nano(1, TokenBucket::MAX_REFILL_NANO_PER_SEC + 1).is_err());
}

/// Ten hours of one request every 3.7 s against 0.27 tokens/s: 0.27 × 3.7 = 0.999 tokens
/// per interval, so in thousandths of a token everything is an exact integer. The expected
/// count comes from that independent integer simulation, and from the closed forms: with a
/// burst of 1 the bucket caps (0.999 is not a token, 1.998 is capped to 1) and every other
/// request passes; with a burst ≥ 2 it never caps after the start, so the count is
/// `min(requests, ⌊burst + 0.999·intervals⌋)`.
#[test]
fn ten_hours_at_a_fractional_rate_admit_exactly_the_arithmetic() {
    let interval_ns = 3_700_000_000u64;
    let intervals = 36_000 * SEC / interval_ns; // the last request at ≤ 10 h
    assert_eq!(intervals, 9_729);
    let requests = intervals + 1;
    // (burst, closed form)
    let cases: &[(u64, u64)] = &[
        (1, requests.div_ceil(2)),
        (2, (2_000 + 999 * intervals) / 1_000),
        (5, (5_000 + 999 * intervals) / 1_000),
        (10, (10_000 + 999 * intervals) / 1_000),
        (100, requests),
    ];
    for &(burst, closed_form) in cases {
        // The reference, in thousandths of a token.
        let (mut level, mut reference) = (1_000 * burst, 0u64);
        for k in 0..requests {
            if k > 0 {
                level = (level + 999).min(1_000 * burst);
            }
            if level >= 1_000 {
                level -= 1_000;
                reference += 1;
            }
        }
        assert_eq!(
            reference,
            closed_form.min(requests),
            "burst {burst}: the reference"
        );

        let b = bucket(burst, 0.27);
        let start = 1_790_000_000 * SEC; // a wall-clock time in 2026
        let mut st = b.fresh(start, Factor::ONE);
        let admitted = (0..requests)
            .filter(|k| {
                b.acquire(&mut st, 1, start + k * interval_ns, Factor::ONE)
                    .allowed
            })
            .count() as u64;
        assert_eq!(admitted, reference, "burst {burst}");
    }
}

/// A scripted bucket: (ms since start, tokens asked, expected decision).
fn check(b: TokenBucket, factor: Factor, script: &[(u64, u64, Decision)]) {
    let mut st = b.fresh(0, factor);
    for &(ms, n, want) in script {
        let got = b.acquire(&mut st, n, ms * 1_000_000, factor);
        assert_eq!(got, want, "at {ms} ms asking {n}");
    }
}

#[test]
fn burst_then_rate_with_exact_retry_times() {
    check(
        bucket(3, 1.0),
        Factor::ONE,
        &[
            (0, 1, D::allowed(2)),
            (0, 2, D::allowed(0)),
            (0, 1, D::refused(0, SEC)),
            (500, 1, D::refused(0, SEC / 2)),
            (1_000, 1, D::allowed(0)),
            (1_000, 0, D::allowed(0)),
            // 2.5 tokens after 2.5 s: a request for 3 waits half a second.
            (3_500, 3, D::refused(2, SEC / 2)),
            (10_000, 3, D::allowed(0)),
            // A clock stepped back refills nothing until it is past 10 s again.
            (5_000, 1, D::refused(0, 6 * SEC)),
            (11_000, 1, D::allowed(0)),
        ],
    );
}

#[test]
fn the_factor_scales_capacity_and_rate() {
    check(
        bucket(4, 1.0),
        half(),
        &[
            (0, 2, D::allowed(0)),
            // Half the rate: a token takes 2 s.
            (0, 1, D::refused(0, 2 * SEC)),
            (2_000, 1, D::allowed(0)),
            // More than the tightened capacity (2): only once the factor relaxes.
            (60_000, 3, D::refused(2, RETRY_WHEN_RELAXED)),
        ],
    );
    // Never below one token.
    let tiny = bucket(1, 1.0);
    assert_eq!(tiny.capacity(Factor::MIN), 1);
    check(
        tiny,
        Factor::MIN,
        &[(0, 1, D::allowed(0)), (0, 1, D::refused(0, 1_000 * SEC))],
    );
}

#[test]
fn a_wait_longer_than_u64_is_clamped_below_the_relax_marker() {
    let b = TokenBucket::from_nano(TokenBucket::MAX_BURST, TokenBucket::MIN_REFILL_NANO_PER_SEC)
        .unwrap();
    let mut st = b.fresh(0, Factor::ONE);
    assert!(
        b.acquire(&mut st, TokenBucket::MAX_BURST, 0, Factor::ONE)
            .allowed
    );
    let d = b.acquire(&mut st, TokenBucket::MAX_BURST, 0, Factor::ONE);
    assert_eq!(d, D::refused(0, RETRY_WHEN_RELAXED - 1));
    assert_eq!(b.idle_at(&st, Factor::ONE), RETRY_WHEN_RELAXED - 1);
}

#[test]
fn remaining_and_idle_time() {
    let b = bucket(10, 2.0);
    let mut st = b.fresh(0, Factor::ONE);
    assert_eq!(b.idle_at(&st, Factor::ONE), 0, "a fresh bucket is idle");
    b.acquire(&mut st, 10, 0, Factor::ONE);
    // 10 tokens at 2/s: full again at 5 s.
    assert_eq!(b.idle_at(&st, Factor::ONE), 5 * SEC);
    assert_eq!(b.remaining(&st, 2 * SEC, Factor::ONE), 4);
    assert_eq!(b.remaining(&st, 99 * SEC, Factor::ONE), 10, "capped");
    assert_eq!(b.capacity(half()), 5);
    assert_eq!(b.limit(), 10);
}

#[test]
fn restore_keeps_the_level_and_never_refills_a_clock_step_back() {
    let b = bucket(10, 1.0);
    let stored = BucketState {
        level_atto: 0,
        updated_ns: 100 * SEC,
    };
    // A restart 2 s later refills 2 tokens; a restore at a time before the stored one takes
    // it as now.
    let later = b.restore(&b, stored, 102 * SEC).unwrap();
    assert_eq!(b.remaining(&later, 102 * SEC, Factor::ONE), 2);
    let earlier = b.restore(&b, stored, 50 * SEC).unwrap();
    assert_eq!(earlier.updated_ns, 50 * SEC);
    assert_eq!(b.remaining(&earlier, 50 * SEC, Factor::ONE), 0);
    // A level above the capacity (a policy made smaller) is capped at use.
    let over = BucketState {
        level_atto: u128::MAX,
        updated_ns: 0,
    };
    assert_eq!(b.remaining(&over, 0, Factor::ONE), 10);
}

#[test]
fn serde_validates_the_policy() {
    let b = bucket(5, 0.27);
    let json = serde_json::to_string(&b).unwrap();
    assert_eq!(
        json,
        r#"{"burst_capacity":5,"refill_nano_per_sec":270000000}"#
    );
    assert_eq!(serde_json::from_str::<TokenBucket>(&json).unwrap(), b);
    let err =
        serde_json::from_str::<TokenBucket>(r#"{"burst_capacity":0,"refill_nano_per_sec":1000}"#)
            .unwrap_err()
            .to_string();
    assert!(err.contains("burst_capacity must be"), "{err}");
}
