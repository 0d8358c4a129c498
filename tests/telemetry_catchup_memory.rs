//! A resumed telemetry stream reads the writes it missed from the store: in bounded pieces,
//! not all at once. This binary counts the heap its own process holds (the node runs in it),
//! so it has this one test to itself.

mod service_node;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use aetherops::node::Consistency;
use aetherops::service::telemetry_stream::TelemetrySubscribe;
use aetherops::telemetry::command::MAX_SEGMENT_POINTS;
use aetherops::telemetry::stream::Position;
use service_node::{caller, ingest, stamps, start, t0, value, MS};

/// The system allocator, counting the bytes held now and the most held since a reset.
struct Peak;
static HELD: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

fn grew(by: usize) {
    let now = HELD.fetch_add(by as i64, Ordering::Relaxed) + by as i64;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(by: usize) {
    HELD.fetch_sub(by as i64, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        shrank(l.size());
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if n > l.size() {
            grew(n - l.size());
        } else {
            shrank(l.size() - n);
        }
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

/// The most heap held from now on, above what is held now.
fn reset_peak() -> i64 {
    let now = HELD.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// A guard against a hang, not a timed assertion: every wait below is on a condition.
const HANG: Duration = Duration::from_secs(300);

/// Full segments written while a subscriber was away (64 Ki points each: 3 Mi points, 48 MiB
/// as decoded `(ts, value)` pairs).
const MISSED_SEGMENTS: i64 = 48;

/// A subscriber away while 48 full segments were written resumes from its cursor and gets
/// every point once, in order; meanwhile the process's heap grows by a few MiB, not by the
/// 48 MiB of those segments decoded at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_stream_reads_what_it_missed_in_bounded_memory() {
    let c = start(4).await;
    let t0 = t0();
    let req = TelemetrySubscribe {
        series: vec!["m/x".into()],
        from_ns: None,
        resume: None,
        batch_size: 16_384,
        max_latency: Duration::from_millis(20),
        consistency: Consistency::Linearizable,
    };
    // A live subscription, its first batch, and then it goes away.
    let mut rx = c
        .svc
        .telemetry_subscribe(&caller(), req.clone())
        .await
        .unwrap();
    ingest(&c.svc, "m/x", &[t0], 0).await;
    let first = tokio::time::timeout(HANG, rx.recv())
        .await
        .expect("a batch in time")
        .expect("the stream is open")
        .expect("a batch, not an error");
    assert!(matches!(first.cursor.position, Position::Live { .. }));
    assert_eq!(first.points.len(), 1);
    drop(rx);

    // What it misses: full segments, one per write, 1 ms apart.
    let seg = MAX_SEGMENT_POINTS as i64;
    for w in 0..MISSED_SEGMENTS {
        let ts = stamps(t0 + (1 + w * seg) * MS, seg);
        ingest(&c.svc, "m/x", &ts, w as u32 + 1).await;
    }
    let total = (MISSED_SEGMENTS * seg) as usize;

    let base = reset_peak();
    let mut resumed = req;
    resumed.resume = Some(first.cursor);
    let mut rx = c.svc.telemetry_subscribe(&caller(), resumed).await.unwrap();
    let mut got = 0usize;
    while got < total {
        let b = tokio::time::timeout(HANG, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no batch after {got} points"))
            .expect("the stream is open")
            .expect("a batch, not an error");
        for p in &b.points {
            let (w, i) = (got as i64 / seg, got as i64 % seg);
            let ts = t0 + (1 + w * seg + i) * MS;
            assert_eq!(
                (p.ts_ns, p.value),
                (ts, value(ts, w as u32 + 1)),
                "point {got}: every missed point once, in write order"
            );
            got += 1;
        }
    }
    let peak = PEAK.load(Ordering::Relaxed) - base;
    println!(
        "resumed over {MISSED_SEGMENTS} full segments ({total} points): heap peak +{:.1} MiB",
        peak as f64 / f64::from(1 << 20)
    );
    // The missed points decoded at once are 48 MiB; the stream may hold a few passes' worth
    // and its buffered batches (~2 MiB).
    assert!(
        peak < 16 << 20,
        "the heap grew by {:.1} MiB while a resumed stream caught up",
        peak as f64 / f64::from(1 << 20)
    );
}
