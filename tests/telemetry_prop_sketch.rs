//! DDSketch properties: relative accuracy versus sorting, and merge equals
//! the sketch of the concatenation (bit-identical encodings).

use aetherops::telemetry::sketch::{nearest_rank, DDSketch};
use proptest::prelude::*;

/// Mixed-sign data spanning up to ~16 decades per sign, i.e. within the
/// 2048-bin cap (which covers ~17.8 decades at alpha = 0.01), so no bin is
/// collapsed and the alpha guarantee applies to every quantile. Collapsing
/// is exercised by `merge_equals_concatenation` with a 64-bin cap.
fn data() -> impl Strategy<Value = Vec<f64>> {
    let v = prop_oneof![
        4 => -1e6f64..1e6,
        2 => 1e-6f64..1e-3,
        2 => (1e-3f64..1e12).prop_map(|x| -x),
        1 => Just(0.0),
        1 => (-8i32..8).prop_map(|e| 10f64.powi(e)),
    ];
    prop::collection::vec(v, 1..3000)
}

fn assert_accurate(s: &DDSketch, data: &[f64]) -> Result<(), TestCaseError> {
    let mut sorted = data.to_vec();
    sorted.sort_by(f64::total_cmp);
    for q in [
        0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0,
    ] {
        let want = sorted[(nearest_rank(q, sorted.len() as u64) - 1) as usize];
        let got = s.quantile(q).unwrap();
        let err = if want == 0.0 {
            got.abs()
        } else {
            ((got - want) / want).abs()
        };
        // alpha plus a few ulps of slack for the log/exp bin mapping.
        prop_assert!(
            err <= s.alpha() * (1.0 + 1e-9),
            "q={} got={} want={} err={}",
            q,
            got,
            want,
            err
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn quantiles_within_relative_error(d in data()) {
        let mut s = DDSketch::new();
        for &v in &d {
            s.insert(v);
        }
        prop_assert_eq!(s.count(), d.len() as u64);
        assert_accurate(&s, &d)?;
        // Encoding round-trips exactly and stays accurate.
        let back = DDSketch::decode(&s.encode()).unwrap();
        prop_assert_eq!(&back, &s);
        assert_accurate(&back, &d)?;
    }

    #[test]
    fn merge_equals_concatenation(a in data(), b in data(), small_cap in any::<bool>()) {
        // With a small cap the collapsing path is exercised too.
        let bins = if small_cap { 64 } else { 2048 };
        let mk = |xs: &[f64]| {
            let mut s = DDSketch::with_params(0.01, bins).unwrap();
            for &v in xs {
                s.insert(v);
            }
            s
        };
        let mut merged = mk(&a);
        merged.merge(&mk(&b)).unwrap();
        let concat: Vec<f64> = a.iter().chain(&b).copied().collect();
        let direct = mk(&concat);
        prop_assert_eq!(merged.encode(), direct.encode());
        // Merge order does not matter either.
        let mut rev = mk(&b);
        rev.merge(&mk(&a)).unwrap();
        prop_assert_eq!(rev.encode(), direct.encode());
        if !small_cap {
            assert_accurate(&merged, &concat)?;
        }
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(s) = DDSketch::decode(&bytes) {
            let _ = s.quantile(0.5);
        }
    }
}
