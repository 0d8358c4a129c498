use super::*;

const SEC: u64 = crate::NANOS_PER_SEC;

fn ppm(f: Factor) -> u32 {
    f.ppm()
}

/// Feeds (seconds, utilization) and checks the factor (ppm) after each.
fn check(script: &[(u64, f64, u32)]) {
    let mut c = AdaptiveController::new(AdaptivePolicy::default()).unwrap();
    for &(s, u, want) in script {
        let before = c.factor();
        let change = c.observe(u, s * SEC);
        assert_eq!(ppm(c.factor()), want, "at {s} s, utilization {u}");
        match change {
            Some(ch) => {
                assert_eq!((ch.from, ch.to, ch.at_ns), (before, c.factor(), s * SEC));
                assert_eq!(ch.utilization, c.utilization());
            }
            None => assert_eq!(before, c.factor()),
        }
    }
}

#[test]
fn tightens_at_once_then_per_interval_down_to_the_floor() {
    check(&[
        (0, 0.5, 1_000_000),
        (1, 0.81, 500_000),
        // Still overloaded half a second later: not yet.
        (1, 0.95, 500_000),
        (2, 0.95, 250_000),
        (3, 0.95, 125_000),
        (4, 1.0, 125_000),
        (9, 1.0, 125_000),
    ]);
}

#[test]
fn relaxes_one_step_per_interval_and_holds_in_the_band() {
    check(&[
        (10, 0.9, 500_000),
        // Below 0.4, but within an interval of the change.
        (10, 0.1, 500_000),
        (11, 0.1, 625_000),
        (11, 0.0, 625_000),
        // The band: no change however long.
        (20, 0.6, 625_000),
        (30, 0.79, 625_000),
        (40, 0.4, 625_000),
        (41, 0.39, 750_000),
        (42, 0.2, 875_000),
        (43, 0.2, 1_000_000),
        (44, 0.2, 1_000_000),
    ]);
}

#[test]
fn out_of_range_readings_are_clamped_and_nan_reads_as_full() {
    let mut c = AdaptiveController::new(AdaptivePolicy::default()).unwrap();
    c.observe(-3.0, 0);
    assert_eq!(c.utilization(), 0.0);
    c.observe(f64::NAN, 0);
    assert_eq!((c.utilization(), ppm(c.factor())), (1.0, 500_000));
    c.observe(7.0, 5 * SEC);
    assert_eq!((c.utilization(), ppm(c.factor())), (1.0, 250_000));
    // A clock stepped back is no time passed.
    assert!(c.observe(0.0, SEC).is_none());
    assert_eq!(c.policy().interval_ns, SEC);
}

#[test]
fn policy_ranges() {
    let base = AdaptivePolicy::default();
    // (tighten_above, relax_below, interval_ns, accepted)
    let cases = [
        (0.8, 0.4, 1, true),
        (1.0, 0.0, 1, true),
        (0.4, 0.4, 1, false),
        (1.1, 0.4, 1, false),
        (0.8, -0.1, 1, false),
        (f64::NAN, 0.4, 1, false),
        (0.8, f64::NAN, 1, false),
        (0.8, 0.4, 0, false),
    ];
    for (hi, lo, interval_ns, ok) in cases {
        let p = AdaptivePolicy {
            tighten_above: hi,
            relax_below: lo,
            interval_ns,
            ..base
        };
        assert_eq!(
            AdaptiveController::new(p).is_ok(),
            ok,
            "{hi} {lo} {interval_ns}"
        );
    }
}
