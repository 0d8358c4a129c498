//! Coarser rollup tiers equal recomputation from raw data: mean and variance
//! within 1e-12 relative, percentiles within the sketch's 1% relative error.

use aetherops::telemetry::reference::two_pass;
use aetherops::telemetry::rollup::{rollup_coarser, rollup_raw, RollupBucket};
use aetherops::telemetry::sketch::nearest_rank;

#[path = "telemetry_common/mod.rs"]
mod common;
use common::Rng;

const SEC: i64 = 1_000_000_000;

fn check_tier(tier: &[RollupBucket], width: i64, ts: &[i64], vals: &[f64]) {
    let mut i = 0;
    for b in tier {
        let j = i + ts[i..].partition_point(|&t| t < b.start_ns + width);
        let raw = &vals[i..j];
        assert!(!raw.is_empty());
        assert_eq!(b.moments.count(), raw.len() as u64);
        let (_, mean, m2) = two_pass(raw);
        let var = m2 / raw.len() as f64;
        let gm = b.moments.mean().unwrap();
        let gv = b.moments.variance().unwrap();
        assert!(
            (gm - mean).abs() <= 1e-12 * mean.abs(),
            "mean {gm} vs {mean}"
        );
        assert!((gv - var).abs() <= 1e-12 * var.abs(), "var {gv} vs {var}");
        let mut sorted = raw.to_vec();
        sorted.sort_by(f64::total_cmp);
        for q in [0.01, 0.5, 0.9, 0.99, 0.999] {
            let want = sorted[(nearest_rank(q, sorted.len() as u64) - 1) as usize];
            let got = b.sketch.quantile(q).unwrap();
            assert!(
                ((got - want) / want).abs() <= 0.01 * (1.0 + 1e-9),
                "q{q} {got} vs {want}"
            );
        }
        i = j;
    }
    assert_eq!(i, vals.len());
}

#[test]
fn tiers_match_raw_recomputation() {
    // 2 hours at 10 Hz of a large-offset signal (1e9 + small variation, the
    // case that breaks naive variance), with irregular gaps.
    let mut r = Rng(42);
    let mut ts = Vec::new();
    let mut vals = Vec::new();
    let mut t = 1_700_000_000 * SEC;
    for k in 0..72_000 {
        t += 100_000_000 + (r.next_u64() % 1000) as i64;
        if r.next_u64().is_multiple_of(50) {
            t += 30 * SEC; // outage
        }
        ts.push(t);
        let x = k as f64 / 72_000.0;
        vals.push(1e9 + 3.0 * (x * 20.0).sin() + 0.5 * r.gauss());
    }
    let tier_1s = rollup_raw(&ts, &vals, SEC, 0.01, 2048).unwrap();
    let tier_1m = rollup_coarser(&tier_1s, SEC, 60 * SEC).unwrap();
    let tier_1h = rollup_coarser(&tier_1m, 60 * SEC, 3600 * SEC).unwrap();
    check_tier(&tier_1s, SEC, &ts, &vals);
    check_tier(&tier_1m, 60 * SEC, &ts, &vals);
    check_tier(&tier_1h, 3600 * SEC, &ts, &vals);
    // Coarse tiers equal direct rollups of raw data in sketch bins and counts.
    let direct_1h = rollup_raw(&ts, &vals, 3600 * SEC, 0.01, 2048).unwrap();
    assert_eq!(direct_1h.len(), tier_1h.len());
    for (a, b) in direct_1h.iter().zip(&tier_1h) {
        assert_eq!(a.start_ns, b.start_ns);
        assert_eq!(a.sketch, b.sketch);
        assert_eq!(a.moments.count(), b.moments.count());
        assert_eq!(a.moments.min(), b.moments.min());
        assert_eq!(a.moments.first(), b.moments.first());
        assert_eq!(a.moments.last(), b.moments.last());
    }
    // Encoded tiers survive a round trip bit-exactly.
    for b in &tier_1m {
        let bytes = b.encode();
        let d = RollupBucket::decode(&bytes).unwrap();
        assert_eq!(d.encode(), bytes);
    }
    println!(
        "rollup tiers: {} raw points -> {} x 1s, {} x 1m, {} x 1h buckets",
        vals.len(),
        tier_1s.len(),
        tier_1m.len(),
        tier_1h.len()
    );
}
