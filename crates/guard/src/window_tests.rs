use super::*;
// Expected decisions in the tables below.
use crate::Decision as D;
use crate::NANOS_PER_SEC as SEC;

const MS: u64 = 1_000_000;

fn window(limit: u64, window_ns: u64, count: u32) -> SlidingWindow {
    SlidingWindow::new(limit, window_ns, count).unwrap()
}

/// A scripted window: (ms, requests asked, expected decision).
fn check(w: SlidingWindow, factor: Factor, script: &[(u64, u64, Decision)]) {
    let mut st = w.fresh(0, factor);
    for &(ms, n, want) in script {
        let got = w.acquire(&mut st, n, ms * MS, factor);
        assert_eq!(got, want, "at {ms} ms asking {n}");
    }
}

#[test]
fn policy_ranges() {
    // (limit, window ns, window count, accepted)
    let cases: &[(u64, u64, u32, bool)] = &[
        (10, SEC, 10, true),
        (0, SEC, 10, false),
        (SlidingWindow::MAX_LIMIT + 1, SEC, 10, false),
        (10, SEC, 0, false),
        (10, SEC, 257, false),
        (10, 0, 1, false),
        (10, SlidingWindow::MAX_WINDOW_NS + 1, 1, false),
        (10, SEC, 7, false),
        (10, 7, 7, true),
    ];
    for &(limit, window_ns, count, ok) in cases {
        let got = SlidingWindow::new(limit, window_ns, count);
        assert_eq!(got.is_ok(), ok, "{limit} per {window_ns} ns over {count}");
    }
    let w = window(10, SEC, 10);
    assert_eq!((w.limit(), w.window_ns(), w.window_count()), (10, SEC, 10));
}

/// One sub-window (Cloudflare's counter): the previous second's count weighted by the part
/// of it still inside the window.
#[test]
fn one_sub_window_weights_the_previous_window() {
    check(
        window(10, SEC, 1),
        Factor::ONE,
        &[
            (0, 10, D::allowed(0)),
            // est 10: one more waits until 1.1 s, when the previous 10 weigh 9.
            (500, 1, D::refused(0, 600 * MS)),
            (1_100, 1, D::allowed(0)),
            // est 1 + 10 × 0.5 = 6.
            (1_500, 1, D::allowed(3)),
            // est 7: four more fit at 1.6 s (2 + 10 × 0.4 = 6).
            (1_500, 4, D::refused(3, 100 * MS)),
            // est 2 (last second's, whole): ten fit only once it has slid out, at 3 s.
            (2_000, 10, D::refused(8, SEC)),
            (3_000, 3, D::allowed(7)),
            // Nothing in this second slides out before 4 s, and what it holds weighs on
            // until 5 s: ten fit at 5 s.
            (3_000, 10, D::refused(7, 2 * SEC)),
            // A clock stepped back counts from the latest time seen (3 s).
            (2_500, 10, D::refused(7, 2_500 * MS)),
            (5_000, 10, D::allowed(0)),
        ],
    );
}

#[test]
fn sub_windows_slide_out_one_by_one() {
    // 6 per 3 s in sub-windows of 1 s.
    check(
        window(6, 3 * SEC, 3),
        Factor::ONE,
        &[
            (0, 2, D::allowed(4)),
            (1_000, 2, D::allowed(2)),
            (2_000, 2, D::allowed(0)),
            (2_999, 1, D::refused(0, 501 * MS)),
            // At 3.5 s the first two weigh 1: one fits; two more at 4.5 s (3 + 2 × 0.5).
            (3_500, 1, D::allowed(0)),
            (3_500, 2, D::refused(0, SEC)),
            // Long idle: everything has left.
            (60_000, 6, D::allowed(0)),
        ],
    );
}

#[test]
fn the_factor_scales_the_limit() {
    let half = Factor::from_ppm(500_000).unwrap();
    check(
        window(4, SEC, 2),
        half,
        &[
            (0, 2, D::allowed(0)),
            (0, 3, D::refused(0, RETRY_WHEN_RELAXED)),
            // The two slide out of a 1 s window from 1 s on: one fits at 1.25 s.
            (100, 1, D::refused(0, 1_150 * MS)),
        ],
    );
    let w = window(1, SEC, 1);
    assert_eq!(w.capacity(Factor::MIN), 1, "never below one request");
    assert_eq!(w.capacity(half), 1);
}

#[test]
fn remaining_and_idle_time() {
    let w = window(10, 4 * SEC, 4);
    let mut st = w.fresh(0, Factor::ONE);
    assert_eq!(w.idle_at(&st, Factor::ONE), 0, "nothing counted: idle");
    w.acquire(&mut st, 4, 0, Factor::ONE);
    w.acquire(&mut st, 2, 2 * SEC, Factor::ONE);
    // The newest count (at 2 s) has left the window at 2 + 4 + 1 sub-windows.
    assert_eq!(w.idle_at(&st, Factor::ONE), 7 * SEC);
    assert_eq!(w.remaining(&st, 2 * SEC, Factor::ONE), 4);
    // At 4.5 s the first 4 straddle the start with weight 1/2.
    assert_eq!(w.remaining(&st, 4_500 * MS, Factor::ONE), 6);
    assert_eq!(w.remaining(&st, 7 * SEC, Factor::ONE), 10);
    assert_eq!(w.remaining(&st, 3_600 * SEC, Factor::ONE), 10);
    // A time before the state's counts as the state's.
    assert_eq!(w.remaining(&st, 0, Factor::ONE), 4);
}

#[test]
fn restore_checks_the_geometry_and_clamps_the_time() {
    let w = window(10, 4 * SEC, 4);
    let st = WindowState {
        last_ns: 100 * SEC,
        counts: vec![5, 0, 0, 0, 0],
    };
    let same = w.restore(&w, st.clone(), 101 * SEC).unwrap();
    assert_eq!(same, st);
    assert_eq!(w.remaining(&same, 101 * SEC, Factor::ONE), 5);
    // A different limit keeps the counts; a different geometry cannot.
    assert!(w
        .restore(&window(99, 4 * SEC, 4), st.clone(), 101 * SEC)
        .is_ok());
    for other in [window(10, 8 * SEC, 4), window(10, 4 * SEC, 2)] {
        let err = w.restore(&other, st.clone(), 101 * SEC).unwrap_err();
        assert!(matches!(err, GuardError::InvalidState(_)), "{err}");
    }
    let short = WindowState {
        last_ns: 0,
        counts: vec![1, 2],
    };
    let err = w.restore(&w, short, 0).unwrap_err().to_string();
    assert!(err.contains("2 sub-window counts"), "{err}");
    // From the future: the counts are taken as now's.
    let ahead = w.restore(&w, st, 50 * SEC).unwrap();
    assert_eq!((ahead.last_ns, ahead.counts[0]), (50 * SEC, 5));
}

#[test]
fn serde_validates_the_policy() {
    let w = window(10, SEC, 10);
    let json = serde_json::to_string(&w).unwrap();
    assert_eq!(
        json,
        r#"{"limit":10,"window_ns":1000000000,"window_count":10}"#
    );
    assert_eq!(serde_json::from_str::<SlidingWindow>(&json).unwrap(), w);
    let bad = r#"{"limit":10,"window_ns":1000000000,"window_count":7}"#;
    let err = serde_json::from_str::<SlidingWindow>(bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("whole multiple"), "{err}");
}
