//! Streaming bucket aggregator over time-sorted columns.
//!
//! Input arrives as batches of parallel columns (`&[i64]` ns timestamps,
//! `&[f64]` values) via [`Aggregator::push`]. Points are grouped into buckets
//! of a fixed time width (aligned to multiples of the width from the Unix
//! epoch: `start = ts - ts.rem_euclid(width)`) or of a fixed point count
//! (starting at the bucket's first timestamp). Only non-empty buckets are
//! produced. The last bucket stays *open* until a point beyond it arrives (or
//! [`Aggregator::flush`] is called), so batches may split buckets anywhere and
//! no earlier point is ever reprocessed.
//!
//! # Hot path
//! Per-point work with a division (Welford) caps out around 100-200 M
//! points/s. Instead the aggregator sums whole bucket slices with
//! [`crate::telemetry::moments`]'s kernels: below 16 points one pass of
//! shifted sums (sum, sum of squares, min, max of the deviations from the
//! bucket's first value; four register lanes each), from 16 on the block
//! kernel (blocks of 16 values: vectorized sum/min/max, exact per-block mean
//! and M2, Chan-merged across blocks). That is one pass over memory with no
//! per-point branches or divisions. (The one-pass M2 of a small bucket is
//! stable because its shift is one of its values: see
//! [`crate::telemetry::moments`]'s `short_one_pass`.)
//!
//! Buckets that end inside a batch (and are not extending an open bucket, with
//! no median asked for) are closed in *runs* of up to 64, phase by phase rather
//! than bucket by bucket, so that the fixed costs of small buckets overlap
//! instead of chaining:
//! 1. boundaries: each bucket's end index (the run's length and last end kept
//!    in registers, not stored and reloaded per bucket). On regular data the next bucket has
//!    the previous one's length, which two comparisons confirm; otherwise a
//!    galloping search. The next bucket's start is the previous end when the
//!    next point lies within one width of it, so the i64 division
//!    (`rem_euclid`) runs only after a gap. This phase also asks the cache for
//!    the points some 8 KiB ahead (software prefetch), so that the sums below
//!    find them there;
//! 2. the order of the run's timestamps (AVX2 64-bit compares where the CPU has
//!    them), then the sums of every bucket of the run (a bucket of 16 or more points whole),
//!    into arrays the aggregator keeps (no run clears them). On x86-64 this
//!    phase is compiled a second time with AVX2, taken where the CPU has it: a
//!    bucket's four lanes then fill one register. No FMA, same operations in
//!    the same order: the same bits either way;
//! 3. each bucket's mean (an exact division), M2 and sum, written to the closed
//!    buffer word by word (a record assembled elsewhere and copied with wider
//!    loads stalls on store forwarding).
//!
//! A closed bucket is kept as an 88-byte record: a [`BucketStats`] without its
//! shift (a bucket's shift is its first value) and its median (kept apart, and
//! only when asked for). [`Aggregator::closed`] rebuilds each [`BucketStats`]
//! on the way out. Once the buffer is larger than 4 MiB its records are written
//! with non-temporal stores (no read of each line before it is written, the
//! cache left to the input); a smaller buffer stays in cache for the caller.
//! The running totals are merged from the closed buckets only when asked for.
//!
//! # Optional work
//! * **Median** (exact): needs every value of the open bucket, so the values
//!   of the open bucket are copied into one reusable scratch buffer and the
//!   median is taken with `select_nth_unstable` when the bucket closes.
//!   Memory: `8 bytes * (largest bucket's point count)`, retained and reused
//!   (no allocation per point once the buffer has grown to that size).
//! * **Anomalies**: point `i` is anomalous if `|z| > threshold` where `z` is
//!   its deviation from the mean of all points *before* it, in units of
//!   their population standard deviation, once at least `warmup` points were
//!   seen. This is inherently sequential (each point updates the statistics
//!   of the next), so it runs as a separate per-point Welford pass, only when
//!   enabled. A zero prior standard deviation yields no anomaly (z undefined).
//!
//! # Errors
//! Timestamps must be non-decreasing within and across pushes; the storage
//! layer sorts before aggregating. A push that violates this, or whose
//! columns differ in length, is rejected with an error and changes nothing.
//! Lengths and the first timestamp are checked before any work. With neither
//! median nor anomalies, the batch's order is checked a stretch at a time just
//! before the stretch is used (a run's timestamps are in cache then, where a
//! pass of its own over the batch read them from memory once more, 12% of the
//! time at 10 points per bucket), and a stretch out of order puts back what the
//! push had changed: the closed buckets appended, the open bucket and the end
//! of the last closed bucket. Otherwise the whole batch is checked first.

use crate::telemetry::moments::{block_stats, short_m2, short_one_pass, Moments, LANES};
use thiserror::Error;

/// How points are grouped into buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucketing {
    /// Buckets of this many nanoseconds (> 0), aligned to multiples of the
    /// width since the epoch.
    TimeWidth(i64),
    /// Buckets of this many points (> 0).
    PointCount(u64),
}

/// Z-score anomaly detection settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnomalyConfig {
    /// `|z|` strictly above this is anomalous (default 3.5).
    pub threshold: f64,
    /// Points seen before any point may be flagged (default 30).
    pub warmup: u64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            threshold: 3.5,
            warmup: 30,
        }
    }
}

/// Aggregator configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AggConfig {
    pub bucketing: Bucketing,
    /// Compute the exact median of each bucket.
    pub median: bool,
    /// Enable z-score anomaly detection.
    pub anomaly: Option<AnomalyConfig>,
    /// Closed buckets to reserve room for up front.
    pub expected_buckets: usize,
}

impl AggConfig {
    /// Time-width buckets, no median, no anomaly detection.
    pub fn time_width(width_ns: i64) -> Self {
        Self {
            bucketing: Bucketing::TimeWidth(width_ns),
            median: false,
            anomaly: None,
            expected_buckets: 0,
        }
    }

    /// Point-count buckets, no median, no anomaly detection.
    pub fn point_count(n: u64) -> Self {
        Self {
            bucketing: Bucketing::PointCount(n),
            ..Self::time_width(1)
        }
    }

    pub fn with_median(mut self, on: bool) -> Self {
        self.median = on;
        self
    }

    pub fn with_anomaly(mut self, a: Option<AnomalyConfig>) -> Self {
        self.anomaly = a;
        self
    }

    pub fn with_expected_buckets(mut self, n: usize) -> Self {
        self.expected_buckets = n;
        self
    }
}

/// Errors of the aggregator.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum AggError {
    #[error("column length mismatch: {timestamps} timestamps, {values} values")]
    LengthMismatch { timestamps: usize, values: usize },
    #[error("timestamp {ts} at batch index {index} precedes previous timestamp {previous}")]
    OutOfOrder {
        index: usize,
        previous: i64,
        ts: i64,
    },
    #[error("bucket width must be > 0 ns, got {0}")]
    InvalidWidth(i64),
    #[error("bucket point count must be > 0")]
    InvalidPointCount,
    #[error("anomaly threshold must be finite and > 0, got {0}")]
    InvalidThreshold(f64),
    #[error("timestamp {0} has no representable bucket start")]
    TimestampOutOfRange(i64),
}

/// Statistics of one bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketStats {
    /// Aligned start (time buckets) or first timestamp (point buckets).
    pub start_ns: i64,
    pub moments: Moments,
    /// Exact median (mean of the two middle values for even counts), when
    /// configured.
    pub median: Option<f64>,
}

/// A point flagged by the z-score detector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Anomaly {
    /// Index of the point among all points pushed since the aggregator began.
    pub index: u64,
    pub ts: i64,
    pub value: f64,
    /// Deviation from the prior mean in prior population standard deviations.
    pub z: f64,
}

/// One closed bucket as the aggregator keeps it: a [`BucketStats`] without the shift (a
/// bucket's shift is its first value) and without the median (kept apart, only when asked
/// for): 88 bytes instead of 112, all of them 8-byte words.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Rec {
    start: i64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    first_ts: i64,
    first_value: f64,
    last_ts: i64,
    last_value: f64,
    mean_dev: f64,
    m2: f64,
}

const _: () = {
    use std::mem::offset_of;
    assert!(size_of::<Rec>() == 88 && align_of::<Rec>() == 8);
    assert!(offset_of!(Rec, start) == 0 && offset_of!(Rec, count) == 8);
    assert!(offset_of!(Rec, sum) == 16 && offset_of!(Rec, min) == 24);
    assert!(offset_of!(Rec, max) == 32 && offset_of!(Rec, first_ts) == 40);
    assert!(offset_of!(Rec, first_value) == 48 && offset_of!(Rec, last_ts) == 56);
    assert!(offset_of!(Rec, last_value) == 64 && offset_of!(Rec, mean_dev) == 72);
    assert!(offset_of!(Rec, m2) == 80);
};

impl Rec {
    fn of(start: i64, m: &Moments) -> Self {
        assert!(
            m.count() > 0 && m.shift_is_first(),
            "a bucket's shift is its first value"
        );
        let (first, last) = (m.first().unwrap_or_default(), m.last().unwrap_or_default());
        Rec {
            start,
            count: m.count(),
            sum: m.sum(),
            min: m.min().unwrap_or(f64::INFINITY),
            max: m.max().unwrap_or(f64::NEG_INFINITY),
            first_ts: first.0,
            first_value: first.1,
            last_ts: last.0,
            last_value: last.1,
            mean_dev: m.mean_dev(),
            m2: m.m2(),
        }
    }
}

/// The closed buckets: records, and their medians apart when asked for.
#[derive(Clone, Debug)]
struct ClosedBuf {
    recs: Vec<Rec>,
    /// [`STREAM_BYTES`] (a test lowers or raises it).
    stream_past: usize,
    /// Empty unless the median is configured.
    median: Vec<f64>,
}

/// Bytes of buffered closed buckets past which a run's records are written with non-temporal stores
/// (x86-64 `movnti`), which skip the read of each line before it is written (that read is
/// a third of the memory traffic at 10 points per bucket) and leave the cache to the input.
/// A buffer this large outgrows a core's private cache anyway: its first buckets are gone
/// from there before a reader that starts at the beginning gets to them. Below, plain
/// stores keep a small result in cache for the caller (streaming stores measured 8% slower
/// there).
const STREAM_BYTES: usize = 4 << 20;

impl ClosedBuf {
    fn with_capacity(n: usize, median: bool) -> Self {
        ClosedBuf {
            recs: Vec::with_capacity(n),
            stream_past: STREAM_BYTES,
            median: if median {
                Vec::with_capacity(n)
            } else {
                Vec::new()
            },
        }
    }

    fn len(&self) -> usize {
        self.recs.len()
    }

    fn clear(&mut self) {
        self.recs.clear();
        self.median.clear();
    }

    /// Keeps the first `len` buckets.
    fn truncate(&mut self, len: usize) {
        self.recs.truncate(len);
        self.median.truncate(len);
    }

    fn push(&mut self, start: i64, m: &Moments, median: Option<f64>) {
        self.recs.push(Rec::of(start, m));
        if let Some(x) = median {
            self.median.push(x);
        }
    }

    /// Makes room for `k` more records; true if they are to be streamed (see
    /// [`STREAM_BYTES`]).
    #[inline(always)]
    fn reserve(&mut self, k: usize) -> bool {
        self.recs.reserve(k);
        cfg!(target_arch = "x86_64") && (self.recs.len() + k) * size_of::<Rec>() > self.stream_past
    }

    /// Appends a record given as its eleven words (the fields of [`Rec`] in order), one by one into
    /// the buffer: a record built elsewhere and copied in wider loads would wait on store
    /// forwarding. With `stream`, non-temporal stores; [`ClosedBuf::fence`] then orders them.
    /// Panics if [`ClosedBuf::reserve`] left no room.
    #[inline(always)]
    fn put(&mut self, words: [u64; 11], stream: bool) {
        let len = self.recs.len();
        assert!(len < self.recs.capacity(), "reserved");
        // SAFETY: record `len` lies inside the allocation (asserted), 8-aligned. `Rec` is
        // `repr(C)` with eleven 8-byte fields and no padding (asserted at compile time), in
        // the order given, and every bit pattern is a valid `u64`/`i64`/`f64`: the
        // eleven words written make a valid record before `set_len` counts it.
        unsafe {
            let dst = self.recs.as_mut_ptr().add(len).cast::<u64>();
            for (q, w) in words.into_iter().enumerate() {
                #[cfg(target_arch = "x86_64")]
                if stream {
                    std::arch::x86_64::_mm_stream_si64(dst.add(q).cast(), w as i64);
                    continue;
                }
                dst.add(q).write(w);
            }
            self.recs.set_len(len + 1);
        }
    }

    /// After streamed [`ClosedBuf::put`]s: orders them before any later store (such as one
    /// that hands the buffer to another thread).
    #[inline(always)]
    fn fence(&self, stream: bool) {
        #[cfg(target_arch = "x86_64")]
        if stream {
            // SAFETY: a store fence; it touches no memory.
            unsafe { std::arch::x86_64::_mm_sfence() };
        }
        let _ = stream;
    }

    /// Bucket `i` (`i < len`); `median`: whether the median is configured.
    #[inline]
    fn get(&self, i: usize, median: bool) -> BucketStats {
        let r = &self.recs[i];
        BucketStats {
            start_ns: r.start,
            moments: Moments::from_fields(
                r.count,
                r.sum,
                r.min,
                r.max,
                (r.first_ts, r.first_value),
                (r.last_ts, r.last_value),
                r.mean_dev,
                r.m2,
            ),
            median: median.then(|| self.median[i]),
        }
    }
}

/// The closed buckets of an [`Aggregator`], not yet drained, in time order: a view of its
/// records that yields [`BucketStats`] by value.
#[derive(Clone, Copy, Debug)]
pub struct Closed<'a> {
    cols: &'a ClosedBuf,
    median: bool,
}

impl<'a> Closed<'a> {
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cols.len() == 0
    }

    /// Bucket `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<BucketStats> {
        (i < self.len()).then(|| self.cols.get(i, self.median))
    }

    /// Every bucket, in time order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = BucketStats> + DoubleEndedIterator + 'a {
        let (cols, median) = (self.cols, self.median);
        (0..cols.len()).map(move |i| cols.get(i, median))
    }

    pub fn to_vec(&self) -> Vec<BucketStats> {
        self.iter().collect()
    }
}

/// [`Aggregator::drain_closed`]'s buckets: yields them in time order and, when dropped,
/// merges them into the running totals and empties the buffer (which keeps its capacity).
/// Forgotten (`mem::forget`), it changes nothing: the buckets stay closed, counted once.
pub struct Drained<'a> {
    cols: &'a mut ClosedBuf,
    totals: &'a mut Moments,
    median: bool,
    next: usize,
}

impl Iterator for Drained<'_> {
    type Item = BucketStats;

    fn next(&mut self) -> Option<BucketStats> {
        let i = self.next;
        (i < self.cols.len()).then(|| {
            self.next += 1;
            self.cols.get(i, self.median)
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.cols.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Drained<'_> {}

impl Drop for Drained<'_> {
    fn drop(&mut self) {
        for i in 0..self.cols.len() {
            self.totals.merge(&self.cols.get(i, self.median).moments);
        }
        self.cols.clear();
    }
}

#[derive(Clone, Copy, Debug)]
struct OpenBucket {
    start: i64,
    /// Exclusive end for time buckets; None = unbounded (end overflows i64).
    end: Option<i64>,
    moments: Moments,
}

/// Sequential running statistics for the anomaly detector (Welford relative
/// to the first value, see [`crate::telemetry::moments`] for why the shift).
#[derive(Clone, Debug)]
struct Detector {
    cfg: AnomalyConfig,
    threshold_sq: f64,
    n: u64,
    shift: f64,
    mean_dev: f64,
    m2: f64,
    found: Vec<Anomaly>,
}

impl Detector {
    fn run(&mut self, first_index: u64, ts: &[i64], vals: &[f64]) {
        if self.n == 0 {
            if let Some(&v) = vals.first() {
                self.shift = v;
            }
        }
        for (i, (&t, &x)) in ts.iter().zip(vals).enumerate() {
            let y = x - self.shift;
            let d = y - self.mean_dev;
            if self.n >= self.cfg.warmup && self.n > 0 {
                let var = self.m2 / self.n as f64;
                // |z| > thr  <=>  d^2 > thr^2 var  (no sqrt/division on the
                // common path).
                if var > 0.0 && d * d > self.threshold_sq * var {
                    self.found.push(Anomaly {
                        index: first_index + i as u64,
                        ts: t,
                        value: x,
                        z: d / var.sqrt(),
                    });
                }
            }
            self.n += 1;
            self.mean_dev += d / self.n as f64;
            self.m2 += d * (y - self.mean_dev);
        }
    }
}

/// Incremental bucket aggregator. See the module documentation.
#[derive(Clone, Debug)]
pub struct Aggregator {
    cfg: AggConfig,
    closed: ClosedBuf,
    open: Option<OpenBucket>,
    /// Merge of the drained buckets. Those still in `closed` are merged when asked for
    /// ([`Aggregator::running`]) or drained, not one by one as they close — Chan's merge
    /// has a division, and it is a chain through every bucket.
    closed_totals: Moments,
    /// Values of the open bucket (median only).
    scratch: Vec<f64>,
    points: u64,
    last_ts: Option<i64>,
    /// Exclusive end of the last closed time bucket (start of the next).
    last_end: Option<i64>,
    detector: Option<Detector>,
    sums: Box<Sums>,
}

/// Exact median of `v` (reordered in place); None if empty.
///
/// The even-count median is `f64::midpoint` of the two middle values.
pub fn median_in_place(v: &mut [f64]) -> Option<f64> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    let (lower, &mut hi, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 {
        return Some(hi);
    }
    let lo = lower
        .iter()
        .copied()
        .max_by(f64::total_cmp)
        .expect("n >= 2 so the lower half is non-empty");
    Some(lo.midpoint(hi))
}

/// Index of the first `ts[k] >= end` at or after `i` (`ts` sorted), found by
/// galloping from `i`: O(log bucket_len) rather than O(log batch_len), which
/// matters when buckets are small.
#[inline]
pub(crate) fn gallop(ts: &[i64], i: usize, end: i64) -> usize {
    let n = ts.len();
    // Small buckets: a short linear scan beats the search's unpredictable
    // branches.
    let scan_end = n.min(i + 16);
    let mut k = i;
    while k < scan_end {
        if ts[k] >= end {
            return k;
        }
        k += 1;
    }
    if k == n {
        return n;
    }
    let mut step = 1usize;
    let mut lo = k - 1;
    loop {
        let probe = lo + step;
        if probe >= n || ts[probe] >= end {
            let hi = probe.min(n);
            return lo + ts[lo..hi].partition_point(|&t| t < end);
        }
        lo = probe;
        step *= 2;
    }
}

/// Buckets closed per [`Aggregator::close_run`]: enough independent buckets to fill the
/// pipeline, few enough for the stack (~4 KiB).
const RUN: usize = 64;

/// Consecutive buckets of one batch: bucket `k` is `cuts[k]..cuts[k + 1]`.
struct Run {
    cuts: [usize; RUN + 1],
    starts: [i64; RUN],
    len: usize,
}

impl Run {
    fn new(first: usize) -> Self {
        let mut cuts = [0; RUN + 1];
        cuts[0] = first;
        Self {
            cuts,
            starts: [0; RUN],
            len: 0,
        }
    }
}

/// Points ahead of the boundary search that it asks the cache for (8 KiB of each column:
/// about a run of 10-point buckets ahead, so that a run's first pass finds its values in
/// cache). The hardware prefetcher alone leaves the summing waiting on memory.
const AHEAD: usize = 1024;

/// Hints the cache to fetch point `i + AHEAD` of both columns (of equal length).
#[inline(always)]
fn prefetch(ts: &[i64], vals: &[f64], i: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let k = (i + AHEAD).min(ts.len().min(vals.len()).saturating_sub(1));
        if k < ts.len().min(vals.len()) {
            // SAFETY: `k` is inside both slices; a prefetch reads nothing into the program.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(ts.as_ptr().add(k).cast());
                _mm_prefetch::<_MM_HINT_T0>(vals.as_ptr().add(k).cast());
            }
        }
    }
    let _ = (ts, vals, i);
}

/// A run's sums, an array per field (see [`Aggregator::close_run`]); kept by the
/// aggregator, so that no run clears them.
#[derive(Clone, Debug)]
struct Sums {
    sum: [f64; RUN],
    /// Sums of squared deviations (buckets below [`LANES`] points) or M2.
    m2: [f64; RUN],
    min: [f64; RUN],
    max: [f64; RUN],
    /// Means of deviations (buckets of [`LANES`] points or more).
    mean: [f64; RUN],
}

/// The first phase of [`Aggregator::close_run`] over the buckets `cuts` delimits: each
/// bucket's sums relative to its first value (below [`LANES`] points one pass, with `m2`
/// holding the sum of squares). Compiled twice on x86-64,
/// the second time with AVX2 (taken where the CPU has it): a bucket's four lanes then fill
/// one register instead of two. No FMA, and the same operations in the same order, so the
/// bits are the same either way.
fn first_pass(cuts: &[usize], vals: &[f64], out: &mut Sums) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { first_pass_avx2(cuts, vals, out) };
    }
    first_pass_body(cuts, vals, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn first_pass_avx2(cuts: &[usize], vals: &[f64], out: &mut Sums) {
    first_pass_body(cuts, vals, out)
}

#[inline(always)]
fn first_pass_body(cuts: &[usize], vals: &[f64], out: &mut Sums) {
    for (b, w) in cuts.windows(2).enumerate().take(RUN) {
        let v = &vals[w[0]..w[1]];
        if v.len() < LANES {
            (out.sum[b], out.m2[b], out.min[b], out.max[b]) = short_one_pass(v, v[0]);
        } else {
            let s = block_stats(v, v[0]);
            (out.sum[b], out.min[b], out.max[b]) = (s.sum_dev, s.min, s.max);
            (out.mean[b], out.m2[b]) = (s.mean_dev, s.m2);
        }
    }
}

/// True if some `ts[k + 1] < ts[k]`. Signed `x < y` is the sign bit of
/// `(x - y) ^ ((x ^ y) & ((x - y) ^ x))` (Hacker's Delight 2-12), computed with wrapping
/// subtraction: only 64-bit sub/xor/and/or, which vectorize on every x86-64 (a 64-bit
/// compare needs SSE4.2), so the check costs a fraction of a pass over memory.
fn any_descending(ts: &[i64]) -> bool {
    let acc = ts.iter().skip(1).zip(ts).fold(0i64, |acc, (&x, &y)| {
        let d = x.wrapping_sub(y);
        acc | (d ^ ((x ^ y) & (d ^ x)))
    });
    acc < 0
}

/// Start of the time bucket of width `w` of `t`, which lies at or after `last_end`, the end
/// of the last closed bucket.
#[inline(always)]
fn bucket_start(last_end: Option<i64>, t: i64, w: i64) -> i64 {
    match last_end {
        // Dense data: the next bucket usually directly follows the last one; skip the
        // i64 division. `t - e` is taken in u64, where it is exact for `t >= e` (in
        // i64 it overflows when the two lie far apart on either side of zero).
        Some(e) if t >= e && (t as u64).wrapping_sub(e as u64) < w as u64 => e,
        // Exact for every timestamp at or after the batch's first (checked to have a
        // start); one out of order may wrap before the check refuses it.
        _ => t.wrapping_sub(t.rem_euclid(w)),
    }
}

/// The error for the first `ts[k + 1] < ts[k]`, if there is one.
fn order_error(ts: &[i64]) -> Option<AggError> {
    if !any_descending(ts) {
        return None;
    }
    let k = ts.windows(2).position(|w| w[1] < w[0])?;
    Some(AggError::OutOfOrder {
        index: k + 1,
        previous: ts[k],
        ts: ts[k + 1],
    })
}

/// How much of a batch is known to be in order: `ts[..upto]`. [`Aggregator::push`] checks
/// each stretch just before it sums or closes anything with it (a run's timestamps are then
/// in cache: the boundary search asked for them), instead of in a pass of its own ahead of
/// the work; a stretch out of order puts back what the push changed before (see [`Undo`]).
struct Sorted {
    upto: usize,
}

impl Sorted {
    /// Whether `ts[..end]` is in order, checking what was not checked yet.
    #[inline(always)]
    fn through(&mut self, ts: &[i64], end: usize) -> bool {
        if end <= self.upto {
            return true;
        }
        // `upto >= 1`: the pair across the last checked point is checked too.
        if any_descending_fast(&ts[self.upto - 1..end]) {
            return false;
        }
        self.upto = end;
        true
    }
}

/// What a push that checks its order as it goes may have changed before it finds a point
/// out of order, to be put back: the closed buckets (only appended to), the end of the last
/// closed bucket and the open bucket.
struct Undo {
    closed: usize,
    last_end: Option<i64>,
    open: Option<OpenBucket>,
}

/// [`any_descending`], with AVX2's 64-bit compares where the CPU has them.
#[inline]
fn any_descending_fast(ts: &[i64]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { any_descending_avx2(ts) };
    }
    any_descending(ts)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn any_descending_avx2(ts: &[i64]) -> bool {
    ts.iter()
        .skip(1)
        .zip(ts)
        .fold(false, |acc, (&x, &y)| acc | (x < y))
}

/// True if some `ts[k + 1] <= ts[k]`: [`any_descending`]'s test, or the two equal (`v == 0`
/// is the sign bit of `!v & (v - 1)`), with the same vectorizable operations.
pub(crate) fn any_not_increasing(ts: &[i64]) -> bool {
    let acc = ts.iter().skip(1).zip(ts).fold(0i64, |acc, (&x, &y)| {
        let d = x.wrapping_sub(y);
        let eq = x ^ y;
        acc | (d ^ ((x ^ y) & (d ^ x))) | (!eq & eq.wrapping_sub(1))
    });
    acc < 0
}

impl Aggregator {
    /// Validates `cfg` and reserves `cfg.expected_buckets`.
    pub fn new(cfg: AggConfig) -> Result<Self, AggError> {
        match cfg.bucketing {
            Bucketing::TimeWidth(w) if w <= 0 => return Err(AggError::InvalidWidth(w)),
            Bucketing::PointCount(0) => return Err(AggError::InvalidPointCount),
            _ => {}
        }
        let detector = match cfg.anomaly {
            Some(a) if !(a.threshold.is_finite() && a.threshold > 0.0) => {
                return Err(AggError::InvalidThreshold(a.threshold));
            }
            Some(a) => Some(Detector {
                cfg: a,
                threshold_sq: a.threshold * a.threshold,
                n: 0,
                shift: 0.0,
                mean_dev: 0.0,
                m2: 0.0,
                found: Vec::new(),
            }),
            None => None,
        };
        Ok(Self {
            cfg,
            closed: ClosedBuf::with_capacity(cfg.expected_buckets, cfg.median),
            open: None,
            closed_totals: Moments::new(),
            scratch: Vec::new(),
            points: 0,
            last_ts: None,
            last_end: None,
            detector,
            sums: Box::new(Sums {
                sum: [0.0; RUN],
                m2: [0.0; RUN],
                min: [0.0; RUN],
                max: [0.0; RUN],
                mean: [0.0; RUN],
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AggConfig {
        &self.cfg
    }

    /// Points accepted so far.
    pub fn points_seen(&self) -> u64 {
        self.points
    }

    /// Buckets closed so far (not yet drained), in time order.
    pub fn closed(&self) -> Closed<'_> {
        Closed {
            cols: &self.closed,
            median: self.cfg.median,
        }
    }

    /// Removes and returns the closed buckets; the buffer keeps its capacity.
    pub fn drain_closed(&mut self) -> Drained<'_> {
        Drained {
            cols: &mut self.closed,
            totals: &mut self.closed_totals,
            median: self.cfg.median,
            next: 0,
        }
    }

    /// The open (last, possibly still growing) bucket's start and moments.
    pub fn open_bucket(&self) -> Option<(i64, &Moments)> {
        self.open.as_ref().map(|o| (o.start, &o.moments))
    }

    /// Anomalies found so far (empty when detection is disabled).
    pub fn anomalies(&self) -> &[Anomaly] {
        self.detector.as_ref().map_or(&[], |d| &d.found)
    }

    /// Running statistics over every point pushed so far (closed buckets
    /// Chan-merged with the open one).
    pub fn running(&self) -> Moments {
        let mut m = self.closed_totals;
        for b in self.closed().iter() {
            m.merge(&b.moments);
        }
        if let Some(o) = &self.open {
            m.merge(&o.moments);
        }
        m
    }

    /// Forgets all points and results but keeps every buffer's capacity, so
    /// a long-lived worker can aggregate query after query without
    /// allocating.
    pub fn reset(&mut self) {
        self.closed.clear();
        self.open = None;
        self.closed_totals = Moments::new();
        self.scratch.clear();
        self.points = 0;
        self.last_ts = None;
        self.last_end = None;
        if let Some(d) = &mut self.detector {
            d.n = 0;
            d.shift = 0.0;
            d.mean_dev = 0.0;
            d.m2 = 0.0;
            d.found.clear();
        }
    }

    /// Closes the open bucket (end of stream / end of query range).
    pub fn flush(&mut self) {
        self.close_open();
    }

    fn close_open(&mut self) {
        if let Some(o) = self.open.take() {
            self.last_end = o.end;
            let median = if self.cfg.median {
                let m = median_in_place(&mut self.scratch);
                self.scratch.clear();
                m
            } else {
                None
            };
            self.closed.push(o.start, &o.moments, median);
        }
    }

    /// Checks a batch whole before anything is changed: the detector and the median path
    /// take it this way.
    fn validate(&self, ts: &[i64], vals: &[f64]) -> Result<(), AggError> {
        self.validate_edges(ts, vals)?;
        match order_error(ts) {
            Some(e) => Err(e),
            None => self.validate_range(ts),
        }
    }

    /// What [`Aggregator::push`] checks before it changes anything when the batch's order
    /// is checked as it goes: lengths, and the first timestamp against the last one seen.
    fn validate_edges(&self, ts: &[i64], vals: &[f64]) -> Result<(), AggError> {
        if ts.len() != vals.len() {
            return Err(AggError::LengthMismatch {
                timestamps: ts.len(),
                values: vals.len(),
            });
        }
        if let (Some(prev), Some(&t0)) = (self.last_ts, ts.first()) {
            if t0 < prev {
                return Err(AggError::OutOfOrder {
                    index: 0,
                    previous: prev,
                    ts: t0,
                });
            }
        }
        Ok(())
    }

    /// The first timestamp's bucket start is representable. In a sorted batch only the
    /// first timestamp can produce the lowest start.
    fn validate_range(&self, ts: &[i64]) -> Result<(), AggError> {
        if let (Bucketing::TimeWidth(w), Some(&t0)) = (self.cfg.bucketing, ts.first()) {
            if t0.checked_sub(t0.rem_euclid(w)).is_none() {
                return Err(AggError::TimestampOutOfRange(t0));
            }
        }
        Ok(())
    }

    /// Closes every time bucket of width `w` that ends inside `ts`, from index `i` on (no
    /// bucket is open), [`RUN`] buckets at a time; returns the index of the first point
    /// left (in the bucket that reaches the end of `ts`, or `ts.len()`); None if a run's
    /// points are out of order (nothing of that run is closed).
    fn close_time_buckets(
        &mut self,
        w: i64,
        (ts, vals): (&[i64], &[f64]),
        mut i: usize,
        sorted: &mut Sorted,
    ) -> Option<usize> {
        let n = ts.len();
        // Length of the last bucket: on regular data the next one ends at the same offset,
        // and two comparisons confirm it without a search.
        let mut guess = 1;
        loop {
            let mut run = Run::new(i);
            // The run's length and the last bucket's end stay in registers until the run
            // is cut: kept in the run or in `self`, each bucket stored and reloaded them, a
            // chain through memory from one bucket to the next.
            let (mut len, mut last_end) = (0, self.last_end);
            while len < RUN && i < n {
                prefetch(ts, vals, i);
                let start = bucket_start(last_end, ts[i], w);
                let Some(end) = start.checked_add(w) else {
                    break;
                };
                let g = i + guess;
                let j = if g < n && ts[g - 1] < end && ts[g] >= end {
                    g
                } else {
                    gallop(ts, i, end)
                };
                if j == n {
                    break;
                }
                run.starts[len] = start;
                len += 1;
                run.cuts[len] = j;
                guess = j - i;
                i = j;
                last_end = Some(end);
            }
            run.len = len;
            self.last_end = last_end;
            let full = run.len == RUN;
            self.close_run(&run, ts, vals, sorted)?;
            if !full {
                return Some(i);
            }
        }
    }

    /// [`Aggregator::close_time_buckets`] for buckets of `cap` points: closes every bucket
    /// that has more points after it in `ts`.
    fn close_count_buckets(
        &mut self,
        cap: u64,
        (ts, vals): (&[i64], &[f64]),
        mut i: usize,
        sorted: &mut Sorted,
    ) -> Option<usize> {
        let n = ts.len();
        loop {
            let mut run = Run::new(i);
            let mut len = 0;
            while len < RUN && (n - i) as u64 > cap {
                let j = i + cap as usize;
                run.starts[len] = ts[i];
                len += 1;
                run.cuts[len] = j;
                i = j;
            }
            run.len = len;
            let full = run.len == RUN;
            self.close_run(&run, ts, vals, sorted)?;
            if !full {
                return Some(i);
            }
        }
    }

    /// Sums the buckets of `run` and pushes them closed, phase by phase over the whole run
    /// rather than bucket by bucket: first pass (sum, min, max; large buckets whole) of
    /// every bucket, then the mean and M2 pass of every small bucket, then the output. A
    /// bucket's passes form one dependency chain through its division; in a phase, the
    /// chains of consecutive buckets are independent and overlap in the pipeline. None,
    /// and nothing closed, if the run's points are out of order.
    fn close_run(
        &mut self,
        run: &Run,
        ts: &[i64],
        vals: &[f64],
        sorted: &mut Sorted,
    ) -> Option<()> {
        let k = run.len;
        if k == 0 {
            return Some(());
        }
        if !sorted.through(ts, run.cuts[k]) {
            return None;
        }
        // One array per field, the run's sums. A bucket's shift is its first value (as in
        // `Moments::from_sorted`). Small buckets leave the sum of squared deviations in `m2`;
        // their mean and M2 are taken as each record is written.
        let cuts = &run.cuts[..=k];
        let sums = &mut *self.sums;
        first_pass(cuts, vals, sums);
        let stream = self.closed.reserve(k);
        for (b, (w, &start)) in cuts.windows(2).zip(&run.starts).enumerate() {
            let (a, z) = (w[0], w[1] - 1);
            let n = w[1] - w[0];
            let (mean, m2) = if n < LANES {
                short_m2(n as f64, sums.sum[b], sums.m2[b])
            } else {
                (sums.mean[b], sums.m2[b])
            };
            // The sum of the values, from the sum of deviations (as `Moments::of_block`).
            let sum = sums.sum[b] + n as f64 * vals[a];
            self.closed.put(
                [
                    start as u64,
                    n as u64,
                    sum.to_bits(),
                    sums.min[b].to_bits(),
                    sums.max[b].to_bits(),
                    ts[a] as u64,
                    vals[a].to_bits(),
                    ts[z] as u64,
                    vals[z].to_bits(),
                    mean.to_bits(),
                    m2.to_bits(),
                ],
                stream,
            );
        }
        self.closed.fence(stream);
        Some(())
    }

    /// Adds a batch of time-sorted points. On error nothing is changed that a caller can
    /// see (a refused batch may leave the closed buffer's capacity grown).
    ///
    /// Without a median or anomaly detection, the order of the batch is checked as it is
    /// worked through (see [`Sorted`]), and a point out of order puts back what the push
    /// changed before it; otherwise the batch is checked whole first.
    pub fn push(&mut self, ts: &[i64], vals: &[f64]) -> Result<(), AggError> {
        let whole = self.detector.is_some() || self.cfg.median;
        if whole {
            self.validate(ts, vals)?;
        } else {
            self.validate_edges(ts, vals)?;
            if self.validate_range(ts).is_err() {
                // A point out of order is reported first, as when the batch is checked whole.
                return self.validate(ts, vals);
            }
        }
        let n = ts.len();
        if n == 0 {
            return Ok(());
        }
        let undo = Undo {
            closed: self.closed.len(),
            last_end: self.last_end,
            open: self.open,
        };
        let mut sorted = Sorted {
            upto: if whole { n } else { 1 },
        };
        if self.push_checked(ts, vals, &mut sorted).is_none() {
            self.closed.truncate(undo.closed);
            self.last_end = undo.last_end;
            self.open = undo.open;
            // The check that failed and `order_error` test the same pairs, so it finds one.
            let found = order_error(ts);
            debug_assert!(
                found.is_some(),
                "a failed order check has a pair out of order"
            );
            return Err(found.unwrap_or(AggError::OutOfOrder {
                index: sorted.upto,
                previous: ts[sorted.upto - 1],
                ts: ts[sorted.upto - 1],
            }));
        }
        self.points += n as u64;
        self.last_ts = Some(ts[n - 1]);
        Ok(())
    }

    /// [`Aggregator::push`]'s work on a batch whose edges are checked and whose order is
    /// known up to `sorted`; None, part done, at a stretch out of order.
    fn push_checked(&mut self, ts: &[i64], vals: &[f64], sorted: &mut Sorted) -> Option<()> {
        let n = ts.len();
        if let Some(d) = &mut self.detector {
            d.run(self.points, ts, vals);
        }
        let mut i = 0;
        while i < n {
            if self.open.is_none() && !self.cfg.median {
                // Every bucket that ends inside this batch is closed here, a run at a time;
                // what is left (the bucket that reaches the batch's end) opens below.
                i = match self.cfg.bucketing {
                    Bucketing::TimeWidth(w) => self.close_time_buckets(w, (ts, vals), i, sorted)?,
                    Bucketing::PointCount(cap) => {
                        self.close_count_buckets(cap, (ts, vals), i, sorted)?
                    }
                };
                if i == n {
                    break;
                }
            }
            let j = match self.cfg.bucketing {
                Bucketing::TimeWidth(w) => {
                    if self.open.is_none() {
                        // Exact for points at or after the batch's first (checked to have a
                        // start); one out of order may wrap, and the order check then
                        // refuses the push before the bucket is kept.
                        let start = bucket_start(self.last_end, ts[i], w);
                        self.open = Some(OpenBucket {
                            start,
                            end: start.checked_add(w),
                            moments: Moments::new(),
                        });
                    }
                    match self.open.as_ref().and_then(|o| o.end) {
                        Some(end) => gallop(ts, i, end),
                        None => n,
                    }
                }
                Bucketing::PointCount(cap) => {
                    let have = self.open.as_ref().map_or(0, |o| o.moments.count());
                    if self.open.is_none() {
                        self.open = Some(OpenBucket {
                            start: ts[i],
                            end: None,
                            moments: Moments::new(),
                        });
                    }
                    let room = (cap - have).min((n - i) as u64) as usize;
                    i + room
                }
            };
            if j > i {
                if !sorted.through(ts, j) {
                    return None;
                }
                let o = self.open.as_mut().expect("opened above");
                o.moments.extend_sorted(&ts[i..j], &vals[i..j]);
                if self.cfg.median {
                    self.scratch.extend_from_slice(&vals[i..j]);
                }
            }
            let full = match self.cfg.bucketing {
                Bucketing::TimeWidth(_) => j < n,
                Bucketing::PointCount(cap) => {
                    self.open.as_ref().is_some_and(|o| o.moments.count() >= cap)
                }
            };
            if full {
                self.close_open();
            }
            i = j;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The sign-bit order checks agree with plain compares, timestamps anywhere in i64.
        #[test]
        fn order_checks_agree_with_compares(
            ts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::Just(i64::MIN),
                    proptest::prelude::Just(i64::MAX),
                    proptest::prelude::Just(0i64),
                    -3i64..3,
                    proptest::num::i64::ANY,
                ],
                0..6,
            ),
        ) {
            proptest::prop_assert_eq!(any_descending(&ts), ts.windows(2).any(|w| w[1] < w[0]));
            proptest::prop_assert_eq!(any_descending_fast(&ts), any_descending(&ts));
            proptest::prop_assert_eq!(
                any_not_increasing(&ts),
                ts.windows(2).any(|w| w[1] <= w[0])
            );
        }
    }

    /// Points ~10 to a bucket of width 10, with gaps, repeats and a few long buckets (the
    /// block kernel), in pushes of uneven size.
    fn uneven(n: usize) -> (Vec<i64>, Vec<f64>) {
        let mut t = -1_000_003i64;
        let mut ts = Vec::with_capacity(n);
        let mut vals = Vec::with_capacity(n);
        for i in 0..n {
            t += match i % 997 {
                0 => 5_000,
                1..=40 => 0,
                _ => 1,
            };
            ts.push(t);
            vals.push(1e9 + ((i * 7919) % 1013) as f64 * 0.25 - (i % 3) as f64);
        }
        (ts, vals)
    }

    fn closed_after(
        cfg: AggConfig,
        stream_past: usize,
        ts: &[i64],
        vals: &[f64],
    ) -> (Aggregator, Vec<BucketStats>) {
        let mut a = Aggregator::new(cfg).unwrap();
        a.closed.stream_past = stream_past;
        for (t, v) in ts.chunks(9_999).zip(vals.chunks(9_999)) {
            a.push(t, v).unwrap();
        }
        a.flush();
        let closed = a.closed().to_vec();
        (a, closed)
    }

    /// A batch refused for a point out of order late in it, after runs closed with
    /// non-temporal stores, leaves the buckets as they were; the valid batch then gives
    /// the buckets it gives without the refused one.
    #[test]
    fn a_refused_batch_after_streamed_runs_changes_nothing() {
        let (ts, vals) = uneven(100_000);
        let cfg = AggConfig::time_width(10);
        let mut a = Aggregator::new(cfg).unwrap();
        a.closed.stream_past = 0;
        a.push(&ts[..40_000], &vals[..40_000]).unwrap();
        assert!(a.closed().len() > 3_000);
        let before = a.closed().to_vec();
        let open = a.open_bucket().map(|(s, m)| (s, *m));
        for (k, t) in [
            (99_000, ts[98_999] - 1),
            (59_000, i64::MIN),
            (50_000, i64::MAX),
        ] {
            let mut bad = ts[40_000..].to_vec();
            let at = k - 40_000;
            bad[at] = t;
            let err = a.push(&bad, &vals[40_000..]).unwrap_err();
            let first = (1..bad.len()).find(|&i| bad[i] < bad[i - 1]).unwrap();
            assert_eq!(
                err,
                AggError::OutOfOrder {
                    index: first,
                    previous: bad[first - 1],
                    ts: bad[first]
                }
            );
            assert_eq!(a.closed().to_vec(), before);
            assert_eq!(a.open_bucket().map(|(s, m)| (s, *m)), open);
            assert_eq!(a.points_seen(), 40_000);
        }
        let mut fresh = Aggregator::new(cfg).unwrap();
        fresh.closed.stream_past = 0;
        for b in [&mut a, &mut fresh] {
            if b.points_seen() == 0 {
                b.push(&ts[..40_000], &vals[..40_000]).unwrap();
            }
            b.push(&ts[40_000..], &vals[40_000..]).unwrap();
            b.flush();
        }
        assert_eq!(a.closed().to_vec(), fresh.closed().to_vec());
    }

    /// A closed buffer past `STREAM_BYTES` is written with non-temporal stores: the
    /// buckets are the same, bit for bit, as those written with plain stores.
    #[test]
    fn streamed_buckets_equal_plainly_stored_ones() {
        let (ts, vals) = uneven(300_000);
        let cfg = AggConfig::time_width(10);
        let (_, want) = closed_after(cfg, usize::MAX, &ts, &vals);
        // Every run streamed; then streamed once past the default threshold.
        let (_, got) = closed_after(cfg, 0, &ts, &vals);
        let (past, got_past) = closed_after(cfg, 1 << 20, &ts, &vals);
        assert!(past.closed.len() * size_of::<Rec>() > 2 << 20);
        assert_eq!(got_past, want);
        assert!(want.len() > 25_000, "{}", want.len());
        assert!(want.iter().any(|b| b.moments.count() >= LANES as u64));
        let bits = |b: &BucketStats| {
            let m = &b.moments;
            [
                b.start_ns as u64,
                m.count(),
                m.sum().to_bits(),
                m.min().unwrap().to_bits(),
                m.max().unwrap().to_bits(),
                m.first().unwrap().0 as u64,
                m.first().unwrap().1.to_bits(),
                m.last().unwrap().0 as u64,
                m.last().unwrap().1.to_bits(),
                m.mean().unwrap().to_bits(),
                m.m2().to_bits(),
            ]
        };
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(bits(g), bits(w));
            assert_eq!(g.median, None);
        }
        // And each is its slice summed on its own (the count, the ends, the extremes exact).
        let mut k = 0;
        for b in &want {
            let n = b.moments.count() as usize;
            let m = Moments::from_sorted(&ts[k..k + n], &vals[k..k + n]);
            assert_eq!(
                (m.count(), m.first(), m.last(), m.min(), m.max()),
                (
                    n as u64,
                    b.moments.first(),
                    b.moments.last(),
                    b.moments.min(),
                    b.moments.max()
                )
            );
            let var = m.variance().unwrap();
            assert!((b.moments.variance().unwrap() - var).abs() <= 1e-9 * var.max(1.0));
            k += n;
        }
        assert_eq!(k, ts.len());
    }

    /// The one-pass M2 of a small bucket: deviations past ~1e154 overflow its sum of squares,
    /// which gives an infinite variance (`inf - inf` was clamped to zero), and a NaN value
    /// makes it NaN.
    #[test]
    fn small_buckets_whose_squares_overflow_are_not_given_zero_variance() {
        for (vals, want_inf) in [
            (vec![0.0, 2e154, 0.0], true),
            (vec![1e200, -1e200, 3.0], true),
            (vec![1.0, f64::NAN, 2.0], false),
        ] {
            let mut a = Aggregator::new(AggConfig::time_width(10)).unwrap();
            a.push(&[0, 1, 10], &vals).unwrap();
            let b = a.closed().get(0).expect("the first bucket closed in a run");
            let var = b.moments.variance().unwrap();
            match want_inf {
                true => assert_eq!(var, f64::INFINITY, "{vals:?}"),
                false => assert!(var.is_nan(), "{vals:?}: {var}"),
            }
        }
    }

    /// A drain forgotten (`mem::forget`) changes nothing: the buckets stay closed and count
    /// once in the totals.
    #[test]
    fn a_forgotten_drain_counts_its_buckets_once() {
        let (ts, vals) = uneven(1_000);
        let mut a = Aggregator::new(AggConfig::point_count(7)).unwrap();
        a.push(&ts, &vals).unwrap();
        let closed = a.closed().len();
        std::mem::forget(a.drain_closed());
        assert_eq!(a.closed().len(), closed);
        assert_eq!(a.running().count(), a.points_seen());
        a.drain_closed().for_each(drop);
        assert!(a.closed().is_empty());
        assert_eq!(a.running().count(), a.points_seen());
    }

    /// Drained buckets leave the buffer empty even when not all were taken, and still count
    /// in the running totals; a median configured comes out with each bucket.
    #[test]
    fn drained_buckets_leave_the_buffer_empty_and_count_in_the_totals() {
        let (ts, vals) = uneven(5_000);
        for median in [false, true] {
            let cfg = AggConfig::point_count(7).with_median(median);
            let mut a = Aggregator::new(cfg).unwrap();
            a.push(&ts[..3_000], &vals[..3_000]).unwrap();
            let closed = a.closed().len();
            let mut d = a.drain_closed();
            assert_eq!(d.len(), closed);
            let first = d.next().unwrap();
            assert_eq!(first.median.is_some(), median);
            assert_eq!(d.len(), closed - 1);
            drop(d);
            assert!(a.closed().is_empty());
            a.push(&ts[3_000..], &vals[3_000..]).unwrap();
            a.flush();
            let all = Moments::from_sorted(&ts, &vals);
            assert_eq!(a.running().count(), all.count());
            assert_eq!(
                (a.running().min(), a.running().max()),
                (all.min(), all.max())
            );
            assert!((a.running().sum() - all.sum()).abs() <= 1e-12 * all.sum().abs());
            let got: u64 = a.closed().iter().map(|b| b.moments.count()).sum();
            assert_eq!(got as usize + closed * 7, ts.len());
            assert_eq!(a.closed().get(a.closed().len()), None);
        }
    }

    #[test]
    fn time_buckets_align_to_epoch_multiples() {
        let mut a = Aggregator::new(AggConfig::time_width(10)).unwrap();
        a.push(
            &[-15, -11, -10, 3, 9, 10, 25],
            &[1., 2., 3., 4., 5., 6., 7.],
        )
        .unwrap();
        a.flush();
        let starts: Vec<i64> = a.closed().iter().map(|b| b.start_ns).collect();
        assert_eq!(starts, vec![-20, -10, 0, 10, 20]);
        let counts: Vec<u64> = a.closed().iter().map(|b| b.moments.count()).collect();
        assert_eq!(counts, vec![2, 1, 2, 1, 1]);
        assert_eq!(a.running().count(), 7);
        assert_eq!(a.running().sum(), 28.0);
    }

    #[test]
    fn point_buckets_and_batches() {
        let mut a = Aggregator::new(AggConfig::point_count(3).with_median(true)).unwrap();
        a.push(&[1, 2], &[5.0, 1.0]).unwrap();
        a.push(&[3, 4, 5, 6, 7], &[3.0, 4.0, 8.0, 6.0, 9.0])
            .unwrap();
        a.flush();
        let c = a.closed().to_vec();
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].start_ns, c[0].median), (1, Some(3.0)));
        assert_eq!((c[1].start_ns, c[1].median), (4, Some(6.0)));
        assert_eq!((c[2].start_ns, c[2].median), (7, Some(9.0)));
    }

    #[test]
    fn rejects_bad_input_without_side_effects() {
        let mut a = Aggregator::new(AggConfig::time_width(10)).unwrap();
        assert!(matches!(
            a.push(&[1, 2], &[1.0]),
            Err(AggError::LengthMismatch { .. })
        ));
        assert_eq!(
            a.push(&[1, 3, 2], &[1.0, 2.0, 3.0]),
            Err(AggError::OutOfOrder {
                index: 2,
                previous: 3,
                ts: 2
            })
        );
        a.push(&[5], &[1.0]).unwrap();
        assert!(matches!(
            a.push(&[4], &[1.0]),
            Err(AggError::OutOfOrder { index: 0, .. })
        ));
        assert_eq!(a.points_seen(), 1);
        assert!(Aggregator::new(AggConfig::time_width(0)).is_err());
        assert!(Aggregator::new(AggConfig::point_count(0)).is_err());
        let bad = AggConfig::time_width(1).with_anomaly(Some(AnomalyConfig {
            threshold: f64::NAN,
            warmup: 1,
        }));
        assert!(Aggregator::new(bad).is_err());
        let mut b = Aggregator::new(AggConfig::time_width(3)).unwrap();
        assert_eq!(
            b.push(&[i64::MIN], &[0.0]),
            Err(AggError::TimestampOutOfRange(i64::MIN))
        );
        // Near i64::MAX the bucket end overflows: the bucket is unbounded.
        b.push(&[i64::MAX - 1, i64::MAX], &[1.0, 2.0]).unwrap();
        b.flush();
        assert_eq!(b.closed().len(), 1);
    }

    #[test]
    fn anomaly_flags_spike_after_warmup() {
        let cfg = AggConfig::time_width(1_000).with_anomaly(Some(AnomalyConfig::default()));
        let mut a = Aggregator::new(cfg).unwrap();
        let ts: Vec<i64> = (0..100).collect();
        let mut v: Vec<f64> = (0..100).map(|i| (i % 5) as f64).collect();
        v[10] = 100.0; // inside warm-up: never flagged
        v[60] = 100.0;
        a.push(&ts, &v).unwrap();
        let idx: Vec<u64> = a.anomalies().iter().map(|x| x.index).collect();
        assert_eq!(idx, vec![60]);
        assert!(a.anomalies()[0].z > 3.5);
    }

    #[test]
    fn median_even_odd() {
        assert_eq!(median_in_place(&mut []), None);
        assert_eq!(median_in_place(&mut [3.0]), Some(3.0));
        assert_eq!(median_in_place(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn gallop_matches_partition_point() {
        let ts: Vec<i64> = (0..1000).map(|i| i / 3).collect();
        for i in 0..ts.len() {
            for end in [ts[i], ts[i] + 1, ts[i] + 50, 10_000] {
                let want = i + ts[i..].partition_point(|&t| t < end);
                assert_eq!(gallop(&ts, i, end), want);
            }
        }
    }
}
