//! Throughput benchmarks (criterion). Run: `cargo bench -j 1`.
//!
//! Figures printed by criterion are per iteration; `thrpt` is points/s.
//! Bytes/point of the synthetic ADC series and of every NAB file are printed
//! once at start-up.

use aetherops::telemetry::agg::{AggConfig, Aggregator, AnomalyConfig, Bucketing};
use aetherops::telemetry::correlate::{
    Block, Correlator, Joiner, PointSource, SliceSource, Strategy, BLOCK_ROWS,
};
use aetherops::telemetry::reference::reference_aggregate;
use aetherops::telemetry::rollup::rollup_raw;
use aetherops::telemetry::segment;
use aetherops::telemetry::sketch::DDSketch;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

#[path = "../tests/telemetry_common/mod.rs"]
mod common;

const N: usize = 1 << 20;

/// The most direct hand-written multi-pass code (no allocation, no
/// compensated sums): per bucket, a linear scan for the boundary, then one
/// pass for sum/min/max and one pass for squared deviations. A second, tougher
/// baseline next to the `reference` module (which allocates and uses
/// compensated sums for accuracy).
fn tight_two_pass(
    ts: &[i64],
    vals: &[f64],
    width: i64,
    out: &mut Vec<(i64, u64, f64, f64, f64, f64)>,
) {
    out.clear();
    let mut i = 0;
    while i < ts.len() {
        let start = ts[i] - ts[i].rem_euclid(width);
        let mut j = i;
        while j < ts.len() && ts[j] < start + width {
            j += 1;
        }
        let s = &vals[i..j];
        let (mut sum, mut mn, mut mx) = (0.0, f64::INFINITY, f64::NEG_INFINITY);
        for &v in s {
            sum += v;
            mn = mn.min(v);
            mx = mx.max(v);
        }
        let mean = sum / s.len() as f64;
        let mut m2 = 0.0;
        for &v in s {
            m2 += (v - mean) * (v - mean);
        }
        out.push((start, s.len() as u64, sum, mn, mx, m2));
        i = j;
    }
}

fn print_sizes() {
    println!("--- bytes/point ---");
    for n in [65_536usize, 1_000_000] {
        let (ts, vals) = common::adc_series(n, 11);
        let b = segment::encode(&ts, &vals).unwrap();
        let info = segment::info(&b).unwrap();
        println!(
            "ADC 16-bit 1 kHz {n:>8} pts: {:.4} B/pt (ts {:.4}, values {:.4}, {:?})",
            b.len() as f64 / n as f64,
            info.ts_bytes as f64 / n as f64,
            info.value_bytes as f64 / n as f64,
            info.encoding
        );
    }
    match common::nab_dir() {
        None => println!("NAB data folder absent: skipping NAB sizes"),
        Some(dir) => {
            for path in common::nab_files(&dir) {
                let (ts, vals) = common::load_nab_csv(&path);
                let b = segment::encode(&ts, &vals).unwrap();
                println!(
                    "NAB {:45} {:6} pts: {:.3} B/pt",
                    path.file_name().unwrap().to_string_lossy(),
                    ts.len(),
                    b.len() as f64 / ts.len() as f64
                );
            }
        }
    }
}

fn bench_aggregate(c: &mut Criterion) {
    print_sizes();
    let (ts, vals) = common::adc_series(N, 3);
    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(N as u64));
    for (label, width) in [
        ("10000pts_per_bucket", 10_000_000_000i64),
        ("1000pts_per_bucket", 1_000_000_000i64),
        ("100pts_per_bucket", 100_000_000),
        ("10pts_per_bucket", 10_000_000),
    ] {
        let buckets = N / (width / 1_000_000) as usize + 2;
        let cfg = AggConfig::time_width(width).with_expected_buckets(buckets);
        let mut agg = Aggregator::new(cfg).unwrap();
        g.bench_function(BenchmarkId::new("streaming", label), |b| {
            b.iter(|| {
                // Reuse the aggregator's buffers like a long-lived query
                // worker: reset, then push the whole column.
                agg.reset();
                agg.push(black_box(&ts), black_box(&vals)).unwrap();
                agg.flush();
                black_box(agg.closed().len());
            })
        });
        let mut out = Vec::with_capacity(buckets);
        g.bench_function(BenchmarkId::new("tight_two_pass", label), |b| {
            b.iter(|| {
                tight_two_pass(black_box(&ts), black_box(&vals), width, &mut out);
                black_box(out.len());
            })
        });
        g.bench_function(BenchmarkId::new("reference", label), |b| {
            b.iter(|| {
                black_box(
                    reference_aggregate(black_box(&ts), black_box(&vals), &cfg)
                        .unwrap()
                        .buckets
                        .len(),
                )
            })
        });
    }
    // 10-point buckets over 1/16 of the points: input and output stay in cache, and the
    // closed buffer is small enough for plain stores (see `agg::STREAM_BYTES`).
    {
        let m = N / 16;
        let cfg = AggConfig::time_width(10_000_000).with_expected_buckets(m / 10 + 2);
        let mut agg = Aggregator::new(cfg).unwrap();
        let (ts, vals) = (&ts[..m], &vals[..m]);
        g.throughput(Throughput::Elements(m as u64));
        g.bench_function("streaming/10pts_per_bucket_in_cache", |b| {
            b.iter(|| {
                agg.reset();
                agg.push(black_box(ts), black_box(vals)).unwrap();
                agg.flush();
                black_box(agg.closed().len());
            })
        });
        g.throughput(Throughput::Elements(N as u64));
    }
    // Batches of 4096 points (ingest-sized pushes) instead of one column.
    let cfg = AggConfig::time_width(1_000_000_000).with_expected_buckets(N / 1000 + 2);
    g.bench_function("streaming/1000pts_per_bucket_batches_4096", |b| {
        b.iter(|| {
            let mut a = Aggregator::new(cfg).unwrap();
            for (t, v) in ts.chunks(4096).zip(vals.chunks(4096)) {
                a.push(t, v).unwrap();
            }
            a.flush();
            black_box(a.closed().len())
        })
    });
    let cfg = AggConfig {
        bucketing: Bucketing::PointCount(1000),
        median: false,
        anomaly: None,
        expected_buckets: N / 1000 + 2,
    };
    g.bench_function("streaming/point_count_1000", |b| {
        b.iter(|| {
            let mut a = Aggregator::new(cfg).unwrap();
            a.push(&ts, &vals).unwrap();
            a.flush();
            black_box(a.closed().len())
        })
    });
    let cfg = AggConfig::time_width(1_000_000_000)
        .with_expected_buckets(N / 1000 + 2)
        .with_median(true);
    g.bench_function("streaming+median/1000pts_per_bucket", |b| {
        b.iter(|| {
            let mut a = Aggregator::new(cfg).unwrap();
            a.push(&ts, &vals).unwrap();
            a.flush();
            black_box(a.closed().len())
        })
    });
    let cfg = AggConfig::time_width(1_000_000_000)
        .with_expected_buckets(N / 1000 + 2)
        .with_anomaly(Some(AnomalyConfig::default()));
    g.bench_function("streaming+anomaly/1000pts_per_bucket", |b| {
        b.iter(|| {
            let mut a = Aggregator::new(cfg).unwrap();
            a.push(&ts, &vals).unwrap();
            a.flush();
            black_box(a.anomalies().len())
        })
    });
    g.finish();
}

fn bench_segments(c: &mut Criterion) {
    let mut g = c.benchmark_group("segment");
    for n in [65_536usize, 1 << 20] {
        let (ts, vals) = common::adc_series(n, 5);
        let bytes = segment::encode(&ts, &vals).unwrap();
        g.throughput(Throughput::Elements(n as u64));
        let (mut t2, mut v2) = (Vec::with_capacity(n), Vec::with_capacity(n));
        g.bench_function(BenchmarkId::new("decode_into", n), |b| {
            b.iter(|| {
                segment::decode_into(black_box(&bytes), &mut t2, &mut v2).unwrap();
                black_box(v2.len())
            })
        });
        let cfg = AggConfig::time_width(1_000_000_000).with_expected_buckets(n / 1000 + 2);
        let mut agg = Aggregator::new(cfg).unwrap();
        g.bench_function(BenchmarkId::new("decode_into+aggregate_1s", n), |b| {
            b.iter(|| {
                segment::decode_into(black_box(&bytes), &mut t2, &mut v2).unwrap();
                agg.reset();
                agg.push(&t2, &v2).unwrap();
                agg.flush();
                black_box(agg.closed().len());
            })
        });
        // Same data forced through the f64 (FloatMult) path for comparison.
        let float_vals: Vec<f64> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| if i == 0 { v + 1e-13 } else { *v })
            .collect();
        let fbytes = segment::encode(&ts, &float_vals).unwrap();
        assert_eq!(
            segment::info(&fbytes).unwrap().encoding,
            segment::ValueEncoding::Float
        );
        g.bench_function(BenchmarkId::new("decode_into_float_path", n), |b| {
            b.iter(|| {
                segment::decode_into(black_box(&fbytes), &mut t2, &mut v2).unwrap();
                black_box(v2.len())
            })
        });
        if n == 65_536 {
            g.bench_function(BenchmarkId::new("encode", n), |b| {
                b.iter(|| black_box(segment::encode(&ts, &vals).unwrap().len()))
            });
        }
    }
    g.finish();
}

fn bench_sketch_rollup(c: &mut Criterion) {
    let (ts, vals) = common::adc_series(N, 9);
    let mut g = c.benchmark_group("sketch_rollup");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("ddsketch_insert", |b| {
        b.iter(|| {
            let mut s = DDSketch::new();
            for &v in black_box(&vals) {
                s.insert(v);
            }
            black_box(s.count())
        })
    });
    g.bench_function("rollup_raw_1s", |b| {
        b.iter(|| {
            black_box(
                rollup_raw(&ts, &vals, 1_000_000_000, 0.01, 2048)
                    .unwrap()
                    .len(),
            )
        })
    });
    g.finish();
}

/// Two series of 1M points (100 Hz, and ~77 Hz with jitter) for the as-of join.
fn correlate_series() -> [(Vec<i64>, Vec<f64>); 2] {
    const MS: i64 = 1_000_000;
    let a: (Vec<i64>, Vec<f64>) = (0..1_000_000i64)
        .map(|i| (i * 10 * MS, (i as f64 * 1e-3).sin()))
        .unzip();
    let b: (Vec<i64>, Vec<f64>) = (0..1_000_000i64)
        .map(|i| {
            (
                i * 13 * MS + (i * 7919) % 3 * MS,
                (i as f64 * 1.3e-3).sin() + 0.1,
            )
        })
        .unzip();
    [a, b]
}

/// Segments decoded one at a time, as stored points are read (without RocksDB).
struct SegmentSource<'a> {
    segments: std::slice::Iter<'a, Vec<u8>>,
    ts: Vec<i64>,
    vals: Vec<f64>,
}

impl<'a> SegmentSource<'a> {
    fn new(segments: &'a [Vec<u8>]) -> Self {
        SegmentSource {
            segments: segments.iter(),
            ts: Vec::new(),
            vals: Vec::new(),
        }
    }
}

impl PointSource for SegmentSource<'_> {
    type Error = segment::SegmentError;
    fn advance(&mut self) -> Result<bool, Self::Error> {
        self.ts.clear();
        self.vals.clear();
        match self.segments.next() {
            Some(s) => segment::decode_into(s, &mut self.ts, &mut self.vals).map(|_| true),
            None => Ok(false),
        }
    }

    fn chunk(&self) -> (&[i64], &[f64]) {
        (&self.ts, &self.vals)
    }
}

/// Rows joined and their Pearson co-moments: the streaming join's whole work per row.
fn join_all<S: PointSource>(sources: Vec<S>) -> (u64, Option<f64>)
where
    S::Error: std::fmt::Debug,
{
    let mut join = Joiner::new(sources, Strategy::Nearest, 10_000_000);
    let mut corr = Correlator::new(2);
    let (mut rows, mut block) = (0u64, Block::new(2));
    while join.next_block(&mut block, BLOCK_ROWS).unwrap() {
        corr.add_block(&block);
        rows += block.len() as u64;
    }
    let r = corr.pairs().next().and_then(|p| p.2.pearson());
    (rows, r)
}

/// The as-of join (nearest within 10 ms) of 2 series × 1M points with Pearson's r:
/// `thrpt` is rows/s. Compared with polars' `join_asof` in the issue.
fn bench_correlate(c: &mut Criterion) {
    let series = correlate_series();
    let encoded: Vec<Vec<Vec<u8>>> = series
        .iter()
        .map(|(ts, vals)| {
            ts.chunks(65_536)
                .zip(vals.chunks(65_536))
                .map(|(t, v)| segment::encode(t, v).unwrap())
                .collect()
        })
        .collect();
    let (rows, r) = join_all(
        series
            .iter()
            .map(|(t, v)| SliceSource::new(t, v, 65_536))
            .collect(),
    );
    println!("correlate: {rows} rows, pearson {r:?}");
    let mut g = c.benchmark_group("correlate");
    g.throughput(Throughput::Elements(rows));
    g.bench_function("join_2x1M_in_memory", |b| {
        b.iter(|| {
            black_box(join_all(
                series
                    .iter()
                    .map(|(t, v)| SliceSource::new(t, v, 65_536))
                    .collect(),
            ))
        })
    });
    g.bench_function("join_2x1M_from_segments", |b| {
        b.iter(|| {
            black_box(join_all(
                encoded.iter().map(|s| SegmentSource::new(s)).collect(),
            ))
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = bench_aggregate, bench_segments, bench_sketch_rollup, bench_correlate }
criterion_main!(benches);
