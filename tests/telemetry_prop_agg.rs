//! Streaming aggregator == multi-pass reference, for arbitrary inputs,
//! arbitrary push() batch splits and adversarial large-offset data.

use aetherops::telemetry::agg::{
    AggConfig, AggError, Aggregator, AnomalyConfig, BucketStats, Bucketing,
};
use aetherops::telemetry::moments::Moments;
use aetherops::telemetry::reference::{reference_aggregate, RefBucket, RefOutput};
use proptest::prelude::*;

/// Closeness for sums/means: 1e-12 relative to the magnitude of the summands
/// (the condition-aware scale; the result itself may cancel to ~0) or 1e-9
/// absolute near zero.
fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= 1e-12 * scale.max(a.abs()).max(b.abs()) || (a - b).abs() <= 1e-9
}

/// Variances: 1e-12 relative, with an absolute floor at the variance of
/// ulp-level noise of the data (below that a variance is not meaningful).
fn close_var(a: f64, b: f64, max_abs: f64) -> bool {
    let floor = (4.0 * f64::EPSILON * max_abs).powi(2);
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()) + floor
}

fn check_bucket(
    got: &Moments,
    median: Option<f64>,
    start: i64,
    want: &RefBucket,
    vals_abs: f64,
    max_abs: f64,
) {
    let n = want.count as f64;
    assert_eq!(start, want.start_ns);
    assert_eq!(got.count(), want.count);
    assert_eq!(got.min(), Some(want.min));
    assert_eq!(got.max(), Some(want.max));
    assert_eq!(got.first(), Some(want.first));
    assert_eq!(got.last(), Some(want.last));
    assert!(
        close(got.sum(), want.sum, vals_abs),
        "sum {} vs {}",
        got.sum(),
        want.sum
    );
    let mean = got.mean().unwrap();
    assert!(
        close(mean, want.mean, vals_abs / n),
        "mean {mean} vs {}",
        want.mean
    );
    let var = got.variance().unwrap();
    assert!(
        close_var(var, want.variance, max_abs),
        "var {var} vs {}",
        want.variance
    );
    assert_eq!(median, want.median);
}

fn check(
    buckets: &[BucketStats],
    running: &Moments,
    anomalies: &[aetherops::telemetry::agg::Anomaly],
    r: &RefOutput,
    ts: &[i64],
    vals: &[f64],
    thr: f64,
) {
    assert_eq!(buckets.len(), r.buckets.len());
    let max_abs = vals.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut i = 0;
    for (b, w) in buckets.iter().zip(&r.buckets) {
        let k = w.count as usize;
        let abs: f64 = vals[i..i + k].iter().map(|v| v.abs()).sum();
        check_bucket(&b.moments, b.median, b.start_ns, w, abs, max_abs);
        i += k;
    }
    if let Some(t) = &r.total {
        let abs: f64 = vals.iter().map(|v| v.abs()).sum();
        check_bucket(
            running,
            None,
            t.start_ns,
            &RefBucket {
                start_ns: t.start_ns,
                median: None,
                ..t.clone()
            },
            abs,
            max_abs,
        );
    }
    // Anomalies: identical sets except for points whose |z| is within 1e-9
    // (relative) of the threshold, where rounding may legitimately decide.
    let near = |z: f64| (z.abs() - thr).abs() <= 1e-9 * thr;
    for a in anomalies {
        match r.anomalies.iter().find(|x| x.index == a.index) {
            Some(x) => {
                assert_eq!((a.ts, a.value.to_bits()), (x.ts, x.value.to_bits()));
                assert!(
                    (a.z - x.z).abs() <= 1e-6 * x.z.abs(),
                    "z {} vs {}",
                    a.z,
                    x.z
                );
            }
            None => assert!(near(a.z), "extra anomaly {a:?}"),
        }
    }
    for x in &r.anomalies {
        if !anomalies.iter().any(|a| a.index == x.index) {
            assert!(near(x.z), "missed anomaly {x:?}");
        }
    }
    let _ = ts;
}

fn run(
    ts: &[i64],
    vals: &[f64],
    cfg: AggConfig,
    cuts: &[usize],
) -> (
    Vec<BucketStats>,
    Moments,
    Vec<aetherops::telemetry::agg::Anomaly>,
) {
    let mut a = Aggregator::new(cfg).unwrap();
    let mut prev = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (ts.len() + 1)).collect();
    cuts.sort();
    cuts.push(ts.len());
    for c in cuts {
        a.push(&ts[prev..c], &vals[prev..c]).unwrap();
        // Mid-stream running statistics never need a flush.
        assert_eq!(a.running().count(), c as u64);
        prev = c;
    }
    let running = a.running();
    a.flush();
    (a.closed().to_vec(), running, a.anomalies().to_vec())
}

/// Values: plain, integer, or huge offset + tiny spread, with spikes.
fn values(n: usize) -> impl Strategy<Value = Vec<f64>> {
    let kind = prop_oneof![
        Just((0.0, 1e3, false)),
        Just((0.0, 100.0, true)),
        Just((1e9, 0.1, false)),
        Just((-1e9, 0.3, false)),
        Just((1e12, 1e-3, false)),
        Just((1e12, 1e3, false)),
        Just((5.0, 1e-9, false)),
    ];
    (kind, prop::collection::vec((-1.0f64..1.0, 0u32..100), n)).prop_map(
        |((off, spread, int), raw)| {
            raw.into_iter()
                .map(|(u, spike)| {
                    let mut v = u * spread;
                    if spike < 4 {
                        v *= 20.0;
                    }
                    if int {
                        v = v.round();
                    }
                    off + v
                })
                .collect()
        },
    )
}

fn input() -> impl Strategy<Value = (Vec<i64>, Vec<f64>)> {
    (1usize..1500).prop_flat_map(|n| {
        let gaps = prop::collection::vec(prop_oneof![3 => 0i64..3, 1 => 0i64..200], n);
        (-1_000_000i64..1_000_000, gaps, values(n)).prop_map(|(base, gaps, vals)| {
            let mut t = base;
            let ts = gaps
                .into_iter()
                .map(|g| {
                    t += g;
                    t
                })
                .collect();
            (ts, vals)
        })
    })
}

fn config() -> impl Strategy<Value = AggConfig> {
    let bucketing = prop_oneof![
        (1i64..500).prop_map(Bucketing::TimeWidth),
        (1u64..200).prop_map(Bucketing::PointCount)
    ];
    let anomaly = prop::option::of(
        (0.5f64..4.0, 0u64..60).prop_map(|(threshold, warmup)| AnomalyConfig { threshold, warmup }),
    );
    (bucketing, any::<bool>(), anomaly).prop_map(|(bucketing, median, anomaly)| AggConfig {
        bucketing,
        median,
        anomaly,
        expected_buckets: 0,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn streaming_matches_reference((ts, vals) in input(), cfg in config(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let r = reference_aggregate(&ts, &vals, &cfg).unwrap();
        let thr = cfg.anomaly.map_or(1.0, |a| a.threshold);
        // All at once.
        let (b, m, a) = run(&ts, &vals, cfg, &[]);
        check(&b, &m, &a, &r, &ts, &vals, thr);
        // Arbitrary batches (including empty ones).
        let (b2, m2, a2) = run(&ts, &vals, cfg, &cuts);
        check(&b2, &m2, &a2, &r, &ts, &vals, thr);
        // Incremental == all at once on every exact field.
        prop_assert_eq!(b.len(), b2.len());
        for (x, y) in b.iter().zip(&b2) {
            prop_assert_eq!(x.start_ns, y.start_ns);
            prop_assert_eq!(x.moments.count(), y.moments.count());
            prop_assert_eq!(x.moments.first(), y.moments.first());
            prop_assert_eq!(x.moments.last(), y.moments.last());
            prop_assert_eq!(x.moments.min(), y.moments.min());
            prop_assert_eq!(x.moments.max(), y.moments.max());
            prop_assert_eq!(x.median, y.median);
        }
    }

    #[test]
    fn one_point_per_push_matches_reference((ts, vals) in input(), w in 1i64..300) {
        let cfg = AggConfig::time_width(w).with_median(true).with_anomaly(Some(AnomalyConfig::default()));
        let r = reference_aggregate(&ts, &vals, &cfg).unwrap();
        let cuts: Vec<usize> = (0..ts.len()).collect();
        let (b, m, a) = run(&ts, &vals, cfg, &cuts);
        check(&b, &m, &a, &r, &ts, &vals, 3.5);
    }
}

#[test]
fn adversarial_large_offsets() {
    // 1e9 + {0.1, 0.2, 0.3} and 1e12 + 1e-3 spreads: naive sum-of-squares
    // variance returns garbage (often negative) here.
    for (off, spread) in [(1e9, 0.1), (1e12, 1e-3), (-3e15, 1.0)] {
        let n = 100_003;
        let ts: Vec<i64> = (0..n as i64).collect();
        let vals: Vec<f64> = (0..n)
            .map(|i| off + ((i * 7919) % 3 + 1) as f64 * spread)
            .collect();
        // Large buckets (the block kernel) and buckets of 7 points (the short one).
        for width in [10_000, 7] {
            let cfg = AggConfig::time_width(width);
            let r = reference_aggregate(&ts, &vals, &cfg).unwrap();
            let (b, m, a) = run(&ts, &vals, cfg, &[5, 777, 50_000]);
            check(&b, &m, &a, &r, &ts, &vals, 1.0);
            let want = r.total.as_ref().unwrap().variance;
            assert!(((m.variance().unwrap() - want) / want).abs() < 1e-12);
        }
    }
}

/// Timestamps of mostly regular spacing (the boundary guess hits) with occasional jumps,
/// duplicates and gaps (it misses), so that runs of many small buckets are closed phase
/// by phase and cut by pushes anywhere.
fn regular_input() -> impl Strategy<Value = (Vec<i64>, Vec<f64>)> {
    (1usize..3000).prop_flat_map(|n| {
        let step = prop_oneof![
            20 => Just(1i64),
            1 => Just(0i64),
            1 => 2i64..50,
            1 => Just(100_000i64)
        ];
        (
            -1_000_000i64..1_000_000,
            prop::collection::vec(step, n),
            values(n),
        )
            .prop_map(|(base, steps, vals)| {
                let mut t = base;
                let ts = steps
                    .into_iter()
                    .map(|g| {
                        t += g;
                        t
                    })
                    .collect();
                (ts, vals)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn runs_of_small_buckets_match_reference(
        (ts, vals) in regular_input(),
        bucketing in prop_oneof![
            (1i64..40).prop_map(Bucketing::TimeWidth),
            (1u64..40).prop_map(Bucketing::PointCount)
        ],
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let cfg = AggConfig { bucketing, median: false, anomaly: None, expected_buckets: 0 };
        let r = reference_aggregate(&ts, &vals, &cfg).unwrap();
        let (b, m, a) = run(&ts, &vals, cfg, &[]);
        check(&b, &m, &a, &r, &ts, &vals, 1.0);
        let (b2, m2, a2) = run(&ts, &vals, cfg, &cuts);
        check(&b2, &m2, &a2, &r, &ts, &vals, 1.0);
    }
}

#[test]
fn runs_at_the_ends_of_i64() {
    // Widths up to i64::MAX, timestamps at both ends (bucket ends that overflow stay
    // unbounded, and a next timestamp 2^64 - 2 past the last bucket's end), duplicates, one
    // point, pushes of every split.
    let cases: Vec<(i64, Vec<i64>)> = vec![
        (1, vec![i64::MIN, i64::MAX]),
        (
            1,
            vec![
                i64::MIN,
                i64::MIN,
                -1,
                0,
                0,
                1,
                i64::MAX - 1,
                i64::MAX,
                i64::MAX,
            ],
        ),
        (2, vec![i64::MIN, i64::MIN + 1, i64::MAX - 2, i64::MAX]),
        (i64::MAX, vec![-1, 0, 1, i64::MAX - 1, i64::MAX]),
        (i64::MAX, vec![i64::MIN + 1, -1, 0, i64::MAX]),
        (i64::MAX / 2, vec![-5, 0, 7, i64::MAX / 2, i64::MAX]),
        (3, vec![i64::MAX]),
        (7, (0..200).map(|i| i64::MAX - 200 + i).collect()),
    ];
    for (w, ts) in cases {
        let vals: Vec<f64> = (0..ts.len()).map(|i| (i * 37 % 11) as f64 - 5.0).collect();
        for bucketing in [Bucketing::TimeWidth(w), Bucketing::PointCount(2)] {
            let cfg = AggConfig {
                bucketing,
                median: false,
                anomaly: None,
                expected_buckets: 0,
            };
            let r = reference_aggregate(&ts, &vals, &cfg).unwrap();
            for cut in 0..=ts.len() {
                let (b, m, a) = run(&ts, &vals, cfg, &[cut]);
                check(&b, &m, &a, &r, &ts, &vals, 1.0);
            }
        }
    }
    // Nothing pushed, or only empty pushes: no bucket.
    let mut a = Aggregator::new(AggConfig::time_width(5)).unwrap();
    a.push(&[], &[]).unwrap();
    a.flush();
    assert!(a.closed().is_empty());
    assert!(a.running().is_empty());
}

/// Everything a caller can see of an aggregator: closed buckets, the open one, points seen,
/// running totals and anomalies.
type Observed = (
    Vec<BucketStats>,
    Option<(i64, Moments)>,
    u64,
    Moments,
    Vec<aetherops::telemetry::agg::Anomaly>,
);

fn observed(a: &Aggregator) -> Observed {
    (
        a.closed().to_vec(),
        a.open_bucket().map(|(s, m)| (s, *m)),
        a.points_seen(),
        a.running(),
        a.anomalies().to_vec(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    /// A batch with one timestamp out of order anywhere (at its start, inside the bucket
    /// left open by the push before, or after runs of buckets that close inside it) is
    /// refused with the error naming the first such point, and changes nothing: the same
    /// buckets, open bucket, counts and anomalies, and the same results once the valid
    /// batch is pushed instead.
    #[test]
    fn a_batch_out_of_order_anywhere_changes_nothing(
        (ts, vals) in regular_input(),
        cfg in prop_oneof![
            config(),
            prop_oneof![
                (1i64..40).prop_map(Bucketing::TimeWidth),
                (1u64..40).prop_map(Bucketing::PointCount)
            ]
            .prop_map(|bucketing| AggConfig { bucketing, median: false, anomaly: None, expected_buckets: 0 }),
        ],
        split in any::<usize>(),
        at in any::<usize>(),
        back in prop_oneof![1i64..3, 1i64..1000, Just(i64::MAX)],
        also in prop::option::of((any::<usize>(), prop_oneof![Just(i64::MAX), 1i64..1000])),
    ) {
        let p = split % ts.len();
        let mut a = Aggregator::new(cfg).unwrap();
        a.push(&ts[..p], &vals[..p]).unwrap();
        let (ok_ts, ok_vals) = (&ts[p..], &vals[p..]);
        let mut bad = ok_ts.to_vec();
        // The point `k` goes below the one before it (the last pushed one for `k == 0`).
        let k = at % bad.len();
        let before = if k == 0 { ts[..p].last().copied() } else { Some(bad[k - 1]) };
        prop_assume!(before.is_some_and(|b| b > i64::MIN));
        let b = before.unwrap();
        bad[k] = b.saturating_sub(back).min(b - 1);
        // Sometimes a second point out of order, raised instead (up to i64::MAX: the
        // boundary search stops early and bucket ends overflow), before or after the first.
        if let Some((at2, up)) = also {
            let k2 = at2 % bad.len();
            if k2 != k {
                bad[k2] = bad[k2].saturating_add(up);
            }
        }
        let want_index = (1..bad.len()).find(|&i| bad[i] < bad[i - 1]);
        let was = observed(&a);
        let err = a.push(&bad, ok_vals).unwrap_err();
        // The first pair out of order: the last point pushed and the batch's first, or one
        // inside the batch.
        let first_low = ts[..p].last().is_some_and(|&l| bad[0] < l);
        match err {
            AggError::OutOfOrder { index, previous, ts: t } if first_low => {
                prop_assert_eq!((index, previous, t), (0, ts[p - 1], bad[0]));
            }
            AggError::OutOfOrder { index, previous, ts: t } => {
                let i = want_index.unwrap();
                prop_assert_eq!((index, previous, t), (i, bad[i - 1], bad[i]));
            }
            e => prop_assert!(false, "unexpected error {e}"),
        }
        prop_assert_eq!(observed(&a), was);
        // The valid batch then gives what it gives to an aggregator that never saw the bad one.
        let mut fresh = Aggregator::new(cfg).unwrap();
        fresh.push(&ts[..p], &vals[..p]).unwrap();
        a.push(ok_ts, ok_vals).unwrap();
        fresh.push(ok_ts, ok_vals).unwrap();
        prop_assert_eq!(observed(&a), observed(&fresh));
        a.flush();
        fresh.flush();
        prop_assert_eq!(observed(&a), observed(&fresh));
    }
}
