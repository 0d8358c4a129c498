//! The aggregator allocates nothing per point: after construction (and a
//! warm-up push that sizes the median scratch buffer), pushing 1M points
//! costs the same number of allocations as pushing 10.

use aetherops::telemetry::agg::{AggConfig, Aggregator, AnomalyConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made while pushing `n` points in batches of 4096, after one
/// 1000-point warm-up push (which sizes the median scratch to a full bucket).
fn allocs_for(cfg: AggConfig, n: usize) -> u64 {
    let total = n + 1000;
    let ts: Vec<i64> = (0..total as i64).map(|i| i * 1_000_000).collect();
    let vals: Vec<f64> = (0..total)
        .map(|i| ((i * 7919) % 1000) as f64 * 0.01)
        .collect();
    let mut a = Aggregator::new(cfg).unwrap();
    a.push(&ts[..1000], &vals[..1000]).unwrap();
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut i = 1000;
    while i < total {
        let j = (i + 4096).min(total);
        a.push(&ts[i..j], &vals[i..j]).unwrap();
        i = j;
        // A consumer drains closed buckets; the buffer keeps its capacity.
        a.drain_closed().for_each(drop);
    }
    a.flush();
    let after = ALLOCS.load(Ordering::Relaxed);
    std::hint::black_box(&a);
    after - before
}

#[test]
fn zero_allocations_per_point() {
    // 1 s buckets of 1 kHz data; reserve room for the closed buckets of one
    // batch (a consumer drains them).
    let base = AggConfig::time_width(1_000_000_000).with_expected_buckets(16);
    for (name, cfg) in [
        ("moments", base),
        ("moments+median", base.with_median(true)),
        (
            "moments+median+anomaly",
            base.with_median(true)
                .with_anomaly(Some(AnomalyConfig::default())),
        ),
        (
            "point-count",
            AggConfig::point_count(1000)
                .with_expected_buckets(16)
                .with_median(true),
        ),
    ] {
        let small = allocs_for(cfg, 10);
        let large = allocs_for(cfg, 1_000_000);
        println!("{name}: allocations for 10 points = {small}, for 1M points = {large}");
        assert_eq!(
            large, small,
            "{name}: allocations grew with the point count"
        );
        assert_eq!(large, 0, "{name}");
    }
}
