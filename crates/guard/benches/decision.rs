//! The cost of one guard decision on the hot path, uncontended (one thread, the limiter owned):
//! a token bucket and a sliding window over one key and over 10k keys (u64 keys, and short
//! string keys as callers and stream prefixes are), and a breaker's allow + record.
//! Target: ≤ 100 ns per decision. Run: `cargo bench -p aether-guard --bench decision`.
//!
//! Time advances 1 µs per decision, so buckets refill and windows slide as under load; the
//! policies are sized so that most decisions admit (the common case on the hot path).

use std::hint::black_box;

use aether_guard::{
    Algorithm, BreakerPolicy, CircuitBreaker, Keyed, Limiter, SlidingWindow, TokenBucket,
    NANOS_PER_SEC,
};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

const T0: u64 = 1_790_000_000 * NANOS_PER_SEC;
const KEYS: usize = 10_000;

fn bucket() -> TokenBucket {
    TokenBucket::new(1_000, 1_000_000.0).unwrap()
}

fn window() -> SlidingWindow {
    SlidingWindow::new(1_000_000, NANOS_PER_SEC, 10).unwrap()
}

/// One decision per iteration on `l`, cycling through `keys` keys.
fn keyed<A: Algorithm>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, algo: A, keys: u64) {
    let mut l = Keyed::new(algo, KEYS).unwrap();
    let (mut now, mut i) = (T0, 0u64);
    g.bench_function(BenchmarkId::new(name, keys), |b| {
        b.iter(|| {
            now += 1_000;
            i = (i + 1) % keys;
            black_box(l.try_acquire(black_box(&i), 1, now).unwrap())
        })
    });
}

fn limiters(c: &mut Criterion) {
    let mut g = c.benchmark_group("decision");
    g.throughput(Throughput::Elements(1));
    for keys in [1, KEYS as u64] {
        keyed(&mut g, "token_bucket", bucket(), keys);
        keyed(&mut g, "sliding_window", window(), keys);
    }
    let names: Vec<String> = (0..KEYS).map(|i| format!("tenant-{i}/orders")).collect();
    let mut l = Keyed::new(bucket(), KEYS).unwrap();
    let (mut now, mut i) = (T0, 0usize);
    g.bench_function(BenchmarkId::new("token_bucket_string_keys", KEYS), |b| {
        b.iter(|| {
            now += 1_000;
            i = (i + 1) % KEYS;
            black_box(l.try_acquire(black_box(&names[i]), 1, now).unwrap())
        })
    });
    g.finish();
}

fn breaker(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    g.throughput(Throughput::Elements(1));
    let mut b = CircuitBreaker::new(BreakerPolicy::default()).unwrap();
    let mut now = T0;
    g.bench_function("allow_and_record_success", |bench| {
        bench.iter(|| {
            now += 1_000;
            let allowed = b.allow_request(black_box(now));
            b.record_success(now, black_box(50_000));
            black_box(allowed)
        })
    });
    g.finish();
}

criterion_group!(benches, limiters, breaker);
criterion_main!(benches);
