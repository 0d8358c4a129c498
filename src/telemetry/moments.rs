//! Mergeable first/second-order summary statistics of a series.
//!
//! # Numerical design
//!
//! Telemetry routinely carries a huge constant offset next to a tiny spread
//! (a clock in ns, a 1e12 counter, a sensor bias of 1e9 with 0.1 of noise).
//! Textbook `sum(x^2) - sum(x)^2/n` loses every significant digit there, and
//! even Welford's/Chan's updates lose ~`eps * |mean| / stddev` relative
//! precision because the running mean itself can only be stored to
//! `ulp(|mean|)`: at 1e9 that is 1.2e-7, which is already 1e-6 of a 0.1 spread.
//!
//! [`Moments`] therefore stores the mean as `shift + mean_dev`, where `shift` is
//! a representative value of the data (the first value ever added) and
//! `mean_dev` is the mean of `x - shift`. Deviations `x - shift` of nearby
//! values are computed exactly (Sterbenz), so `mean_dev` and `m2` are carried
//! at the precision of the *spread* and not of the offset. Merging two
//! summaries with different shifts computes `shift_b - shift_a` first (exact
//! when the shifts are close), so Chan's merge keeps that precision too.
//!
//! All operations are plain sequential IEEE-754 arithmetic without FMA
//! contraction or parallel reduction whose order could vary, so the same
//! inputs in the same order give bit-identical results.
//!
//! Non-finite values are not rejected; they propagate per IEEE-754 (a NaN makes
//! the sum/mean/variance NaN; min/max in the presence of NaN are unspecified).
//! The storage layer is expected to reject them.

use serde::{Deserialize, Serialize};

/// Lane width of the block kernel. 16 values of f64 fill 8 SSE2 / 4 AVX2
/// registers, which is the sweet spot between amortizing the scalar Chan merge
/// (one division per block) and register pressure.
pub(crate) const LANES: usize = 16;

/// Summary statistics of a set of `(timestamp, value)` points.
///
/// `first`/`last` are decided by timestamp; on equal timestamps the point that
/// was added (or merged) earlier is `first` and the one added later is `last`,
/// which matches arrival order in an append-only store.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    first_ts: i64,
    first_value: f64,
    last_ts: i64,
    last_value: f64,
    /// Reference point for `mean_dev`; see the module documentation.
    shift: f64,
    /// Mean of `x - shift`.
    mean_dev: f64,
    /// Sum of squared deviations from the mean.
    m2: f64,
}

impl Default for Moments {
    fn default() -> Self {
        Self::new()
    }
}

/// Raw statistics of one contiguous block of values, relative to a shift.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    pub n: u64,
    /// Sum of `x - shift`.
    pub sum_dev: f64,
    /// Mean of `x - shift`.
    pub mean_dev: f64,
    pub m2: f64,
    pub min: f64,
    pub max: f64,
}

/// `a < b ? a : b`: a single minpd/minsd. `f64::min` adds NaN handling the
/// hot loop does not need (min/max of NaN inputs are documented as
/// unspecified).
#[inline(always)]
fn fmin(a: f64, b: f64) -> f64 {
    if a < b {
        a
    } else {
        b
    }
}

#[inline(always)]
fn fmax(a: f64, b: f64) -> f64 {
    if a > b {
        a
    } else {
        b
    }
}

#[inline(always)]
fn tree_sum(v: &[f64; LANES]) -> f64 {
    // Fixed pairwise order: vectorizes and is deterministic.
    let mut a = [0.0; 8];
    for j in 0..8 {
        a[j] = v[j] + v[j + 8];
    }
    let b = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (b[0] + b[2]) + (b[1] + b[3])
}

/// Chan et al. merge of `(n_b, mean_b, m2_b)` into `(n_a, mean_a, m2_a)`,
/// means relative to the same shift.
#[inline(always)]
fn chan(n_a: f64, mean_a: &mut f64, m2_a: &mut f64, n_b: f64, mean_b: f64, m2_b: f64) {
    let n = n_a + n_b;
    let delta = mean_b - *mean_a;
    let fb = n_b / n;
    *mean_a += delta * fb;
    *m2_a += m2_b + delta * delta * n_a * fb;
}

/// One-pass statistics of `vals` relative to `shift`.
///
/// Values are processed in blocks of [`LANES`]: each block gets its exact
/// (corrected two-pass, in registers) mean and M2, and blocks are combined
/// with Chan's formula. That reads memory once, has no per-point division,
/// auto-vectorizes, and is as stable as Welford (error grows with the
/// within-block condition number, not with `|mean| / stddev`).
pub(crate) fn block_stats(vals: &[f64], shift: f64) -> Block {
    let mut mn = [f64::INFINITY; 4];
    let mut mx = [f64::NEG_INFINITY; 4];
    let mut n_acc = 0.0f64;
    let mut mean_acc = 0.0f64;
    let mut m2_acc = 0.0f64;
    let mut sum_acc = 0.0f64;
    const INV_L: f64 = 1.0 / LANES as f64;

    let chunks = vals.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        let c: &[f64; LANES] = c.try_into().expect("chunks_exact yields LANES");
        let mut y = [0.0; LANES];
        for j in 0..LANES {
            y[j] = c[j] - shift;
        }
        // Min/max as a fixed tree in registers (a loop-carried lane index
        // would keep the accumulators in memory and serialize the loop).
        let mut lo = [0.0; 8];
        let mut hi = [0.0; 8];
        for j in 0..8 {
            lo[j] = fmin(c[j], c[j + 8]);
            hi[j] = fmax(c[j], c[j + 8]);
        }
        for j in 0..4 {
            mn[j] = fmin(mn[j], fmin(lo[j], lo[j + 4]));
            mx[j] = fmax(mx[j], fmax(hi[j], hi[j + 4]));
        }
        let s = tree_sum(&y);
        let m = s * INV_L;
        let mut d = [0.0; LANES];
        let mut q = [0.0; LANES];
        for j in 0..LANES {
            d[j] = y[j] - m;
            q[j] = d[j] * d[j];
        }
        let e = tree_sum(&d);
        // Corrected two-pass: removes the first-order effect of rounding in m.
        let m2c = (tree_sum(&q) - e * e * INV_L).max(0.0);
        chan(n_acc, &mut mean_acc, &mut m2_acc, LANES as f64, m, m2c);
        n_acc += LANES as f64;
        sum_acc += s;
    }
    if !rem.is_empty() {
        // Tail shorter than LANES (also every bucket smaller than LANES):
        // plain corrected two-pass. `s / r` (not `s * (1 / r)`) keeps the
        // mean exact whenever it is representable, e.g. for integer data. (A padded/masked 16-lane version was
        // measured slower: copying a variable-length tail into a fixed array
        // costs more than the short serial loops.)
        let r = rem.len() as f64;
        let mut s = 0.0;
        for &x in rem {
            s += x - shift;
            mn[0] = fmin(x, mn[0]);
            mx[0] = fmax(x, mx[0]);
        }
        let m = s / r;
        let (mut q, mut e) = (0.0, 0.0);
        for &x in rem {
            let d = (x - shift) - m;
            q += d * d;
            e += d;
        }
        let m2c = (q - e * e / r).max(0.0);
        if n_acc == 0.0 {
            // Small buckets (< LANES points) skip the merge and its division.
            mean_acc = m;
            m2_acc = m2c;
        } else {
            chan(n_acc, &mut mean_acc, &mut m2_acc, r, m, m2c);
        }
        n_acc += r;
        sum_acc += s;
    }
    let min = fmin(fmin(mn[0], mn[1]), fmin(mn[2], mn[3]));
    let max = fmax(fmax(mx[0], mx[1]), fmax(mx[2], mx[3]));
    Block {
        n: n_acc as u64,
        sum_dev: sum_acc,
        mean_dev: mean_acc,
        m2: m2_acc,
        min,
        max,
    }
}

/// The sums of fewer than [`LANES`] values in one pass: `(sum of deviations from shift, sum
/// of their squares, min, max)`, each over four independent lanes. The aggregator takes
/// M2 from them as `sq - sum · mean` ([`short_m2`]).
///
/// That is the textbook one-pass formula, stable here because `shift` is one of the values
/// (the bucket's first). With `d = x - shift`, `Σd² = M2 + n (mean - x₀)²`, and a single
/// value lies at most `√(M2 (n-1)/n)` from the mean (the others' deviations sum to minus
/// its own), so `Σd² ≤ n M2`: the cancellation multiplies the rounding errors of the sums by
/// at most about `n` (< 16), a relative error of the order of 2⁻⁴⁵ at worst (the tests ask
/// for 1e-12, about 2⁻⁴⁰). In exchange a bucket reads its values once, and no pass waits for
/// its division.
#[inline(always)]
pub(crate) fn short_one_pass(vals: &[f64], shift: f64) -> (f64, f64, f64, f64) {
    debug_assert!(!vals.is_empty() && vals.len() < LANES);
    let quads = vals.chunks_exact(4);
    let tail = quads.remainder();
    let mut s = [0.0; 4];
    let mut q = [0.0; 4];
    let mut lo = [f64::INFINITY; 4];
    let mut hi = [f64::NEG_INFINITY; 4];
    let mut add = |l: usize, x: f64, s: &mut [f64; 4], q: &mut [f64; 4]| {
        let d = x - shift;
        s[l] += d;
        q[l] += d * d;
        lo[l] = fmin(x, lo[l]);
        hi[l] = fmax(x, hi[l]);
    };
    for c in quads {
        add(0, c[0], &mut s, &mut q);
        add(1, c[1], &mut s, &mut q);
        add(2, c[2], &mut s, &mut q);
        add(3, c[3], &mut s, &mut q);
    }
    for (l, &x) in tail.iter().enumerate().take(3) {
        add(l, x, &mut s, &mut q);
    }
    (
        (s[0] + s[1]) + (s[2] + s[3]),
        (q[0] + q[1]) + (q[2] + q[3]),
        fmin(fmin(lo[0], lo[1]), fmin(lo[2], lo[3])),
        fmax(fmax(hi[0], hi[1]), fmax(hi[2], hi[3])),
    )
}

/// `(mean of deviations, M2)` of `n` values from [`short_one_pass`]'s sums: the mean by an
/// exact division (exact whenever it is representable), M2 clamped at zero. A sum of
/// squares that overflowed (deviations past ~1e154) gives an infinite M2, not `inf - inf`
/// clamped to zero; a NaN value gives NaN.
#[inline(always)]
pub(crate) fn short_m2(n: f64, sum: f64, sq: f64) -> (f64, f64) {
    let m = sum / n;
    let m2 = sq - sum * m;
    let m2 = if m2 >= 0.0 {
        m2
    } else if m2 < 0.0 {
        0.0
    } else if sq.is_nan() {
        f64::NAN
    } else {
        f64::INFINITY
    };
    (m, m2)
}

impl Moments {
    /// An empty summary.
    pub const fn new() -> Self {
        Self {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            first_ts: i64::MAX,
            first_value: 0.0,
            last_ts: i64::MIN,
            last_value: 0.0,
            shift: 0.0,
            mean_dev: 0.0,
            m2: 0.0,
        }
    }

    /// Summary of time-sorted columns (one pass, vectorized; see
    /// [`Moments::extend_sorted`]).
    ///
    /// # Panics
    /// If the columns have different lengths (a programming error; the
    /// aggregator validates user input before calling this).
    pub fn from_sorted(ts: &[i64], vals: &[f64]) -> Self {
        let mut m = Self::new();
        m.extend_sorted(ts, vals);
        m
    }

    /// Adds time-sorted columns in one vectorized pass. Equivalent to calling
    /// [`Moments::push`] for each point, up to floating-point rounding.
    ///
    /// # Panics
    /// If the columns have different lengths.
    pub fn extend_sorted(&mut self, ts: &[i64], vals: &[f64]) {
        assert_eq!(ts.len(), vals.len(), "column length mismatch");
        let (Some(&t0), Some(&tn)) = (ts.first(), ts.last()) else {
            return;
        };
        if self.count == 0 {
            self.shift = vals[0];
        }
        let b = block_stats(vals, self.shift);
        self.merge_block(b, self.shift, (t0, vals[0]), (tn, vals[vals.len() - 1]));
    }

    /// Merges a block whose deviations are relative to `shift`.
    pub(crate) fn merge_block(
        &mut self,
        b: Block,
        shift: f64,
        first: (i64, f64),
        last: (i64, f64),
    ) {
        if b.n == 0 {
            return;
        }
        self.merge(&Self::of_block(b, shift, first, last));
    }

    /// The summary of one non-empty block. The streaming aggregator's closed buckets hold
    /// the same fields in columns, from [`short_one_pass`] (below [`LANES`] points) or
    /// [`block_stats`]. Rollups and queries keep [`Moments::from_sorted`], whose rounding
    /// the stored rollups were made with (replicas on two versions must store the same
    /// bits).
    #[inline(always)]
    pub(crate) fn of_block(b: Block, shift: f64, first: (i64, f64), last: (i64, f64)) -> Self {
        Moments {
            count: b.n,
            sum: b.sum_dev + b.n as f64 * shift,
            min: b.min,
            max: b.max,
            first_ts: first.0,
            first_value: first.1,
            last_ts: last.0,
            last_value: last.1,
            shift,
            mean_dev: b.mean_dev,
            m2: b.m2,
        }
    }

    /// A summary from its fields, with the first value as the shift (as every summary built
    /// from time-sorted points has it: see [`Moments::shift_is_first`]).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(crate) fn from_fields(
        count: u64,
        sum: f64,
        min: f64,
        max: f64,
        first: (i64, f64),
        last: (i64, f64),
        mean_dev: f64,
        m2: f64,
    ) -> Self {
        Moments {
            count,
            sum,
            min,
            max,
            first_ts: first.0,
            first_value: first.1,
            last_ts: last.0,
            last_value: last.1,
            shift: first.1,
            mean_dev,
            m2,
        }
    }

    /// Mean of the deviations from the shift.
    pub(crate) fn mean_dev(&self) -> f64 {
        self.mean_dev
    }

    /// True when the shift is the first value, bit for bit (so that
    /// [`Moments::from_fields`] rebuilds the summary exactly).
    pub(crate) fn shift_is_first(&self) -> bool {
        self.shift.to_bits() == self.first_value.to_bits()
    }

    /// Adds one point (Welford's update, relative to the shift).
    pub fn push(&mut self, ts: i64, value: f64) {
        if self.count == 0 {
            self.shift = value;
            self.first_ts = ts;
            self.first_value = value;
        } else if ts < self.first_ts {
            self.first_ts = ts;
            self.first_value = value;
        }
        if ts >= self.last_ts {
            self.last_ts = ts;
            self.last_value = value;
        }
        self.count += 1;
        self.sum += value;
        if value < self.min {
            self.min = value;
        }
        if value > self.max {
            self.max = value;
        }
        let y = value - self.shift;
        let delta = y - self.mean_dev;
        self.mean_dev += delta / self.count as f64;
        self.m2 += delta * (y - self.mean_dev);
    }

    /// Merges `other` into `self` (Chan et al.'s parallel formula).
    ///
    /// `other` is treated as having arrived after `self` for first/last ties.
    pub fn merge(&mut self, other: &Moments) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        // other's mean relative to self's shift. The shift difference is
        // exact when the shifts are within a factor of two (the common case)
        // and otherwise has a relative error of eps, which is harmless because
        // then the deviation is large compared to the data's spread.
        let mean_b = (other.shift - self.shift) + other.mean_dev;
        chan(na, &mut self.mean_dev, &mut self.m2, nb, mean_b, other.m2);
        self.count += other.count;
        self.sum += other.sum;
        if other.min < self.min {
            self.min = other.min;
        }
        if other.max > self.max {
            self.max = other.max;
        }
        if other.first_ts < self.first_ts {
            self.first_ts = other.first_ts;
            self.first_value = other.first_value;
        }
        if other.last_ts >= self.last_ts {
            self.last_ts = other.last_ts;
            self.last_value = other.last_value;
        }
    }

    /// Number of points.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// True when no point was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Sum of values (0 when empty).
    pub fn sum(&self) -> f64 {
        self.sum
    }
    /// Minimum value (None when empty).
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }
    /// Maximum value (None when empty).
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }
    /// Earliest point `(ts, value)`.
    pub fn first(&self) -> Option<(i64, f64)> {
        (self.count > 0).then_some((self.first_ts, self.first_value))
    }
    /// Latest point `(ts, value)`.
    pub fn last(&self) -> Option<(i64, f64)> {
        (self.count > 0).then_some((self.last_ts, self.last_value))
    }
    /// Arithmetic mean (None when empty).
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then_some(self.shift + self.mean_dev)
    }
    /// Sum of squared deviations from the mean (Welford's M2).
    pub fn m2(&self) -> f64 {
        self.m2
    }
    /// Population variance `M2 / n` (None when empty).
    pub fn variance(&self) -> Option<f64> {
        (self.count > 0).then(|| self.m2 / self.count as f64)
    }
    /// Sample variance `M2 / (n - 1)` (None for fewer than two points).
    pub fn sample_variance(&self) -> Option<f64> {
        (self.count > 1).then(|| self.m2 / (self.count - 1) as f64)
    }
    /// Population standard deviation.
    pub fn stddev(&self) -> Option<f64> {
        self.variance().map(f64::sqrt)
    }

    /// Size of [`Moments::encode_into`]'s output.
    pub const ENCODED_LEN: usize = 8 * 11;

    /// Appends a fixed-size little-endian encoding (88 bytes).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.count.to_le_bytes());
        for f in [self.sum, self.min, self.max] {
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        out.extend_from_slice(&self.first_ts.to_le_bytes());
        out.extend_from_slice(&self.first_value.to_bits().to_le_bytes());
        out.extend_from_slice(&self.last_ts.to_le_bytes());
        for f in [self.last_value, self.shift, self.mean_dev, self.m2] {
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
    }

    /// Decodes [`Moments::encode_into`]'s output. Returns None if `bytes` is
    /// not exactly [`Moments::ENCODED_LEN`] long or the fields are
    /// inconsistent (which a checksum would normally have caught first).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        let w = |i: usize| -> [u8; 8] { bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes") };
        let f = |i: usize| f64::from_bits(u64::from_le_bytes(w(i)));
        let m = Moments {
            count: u64::from_le_bytes(w(0)),
            sum: f(1),
            min: f(2),
            max: f(3),
            first_ts: i64::from_le_bytes(w(4)),
            first_value: f(5),
            last_ts: i64::from_le_bytes(w(6)),
            last_value: f(7),
            shift: f(8),
            mean_dev: f(9),
            m2: f(10),
        };
        let empty = Moments::new();
        let ok = if m.count == 0 {
            // Canonical empty form only, so encodings stay unique.
            m.encode_bits() == empty.encode_bits()
        } else {
            // NaN is tolerated (it propagates from NaN inputs), an
            // inverted range or a negative M2 is not.
            let ordered = m.min <= m.max || m.min.is_nan() || m.max.is_nan();
            let m2_ok = m.m2 >= 0.0 || m.m2.is_nan();
            m.first_ts <= m.last_ts && ordered && m2_ok
        };
        ok.then_some(m)
    }

    fn encode_bits(&self) -> [u64; 11] {
        [
            self.count,
            self.sum.to_bits(),
            self.min.to_bits(),
            self.max.to_bits(),
            self.first_ts as u64,
            self.first_value.to_bits(),
            self.last_ts as u64,
            self.last_value.to_bits(),
            self.shift.to_bits(),
            self.mean_dev.to_bits(),
            self.m2.to_bits(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact-enough reference: shift by the first value (exact for nearby
    /// values), then corrected two-pass.
    fn ref_var(xs: &[f64]) -> f64 {
        let k = xs[0];
        let n = xs.len() as f64;
        let m = xs.iter().map(|x| x - k).sum::<f64>() / n;
        let d: Vec<f64> = xs.iter().map(|x| (x - k) - m).collect();
        let e: f64 = d.iter().sum();
        (d.iter().map(|d| d * d).sum::<f64>() - e * e / n) / n
    }

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn welford_and_block_agree_on_simple_data() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let ts: Vec<i64> = (0..8).collect();
        let mut a = Moments::new();
        for (t, x) in ts.iter().zip(xs) {
            a.push(*t, x);
        }
        let b = Moments::from_sorted(&ts, &xs);
        for m in [a, b] {
            assert_eq!(m.count(), 8);
            assert_eq!(m.sum(), 40.0);
            assert_eq!(m.mean(), Some(5.0));
            assert_eq!(m.variance(), Some(4.0));
            assert_eq!(m.stddev(), Some(2.0));
            assert_eq!(m.sample_variance(), Some(32.0 / 7.0));
            assert_eq!(m.min(), Some(2.0));
            assert_eq!(m.max(), Some(9.0));
            assert_eq!(m.first(), Some((0, 2.0)));
            assert_eq!(m.last(), Some((7, 9.0)));
        }
    }

    #[test]
    fn empty_is_none() {
        let m = Moments::new();
        assert!(m.is_empty());
        assert_eq!(m.mean(), None);
        assert_eq!(m.variance(), None);
        assert_eq!(m.min(), None);
        assert_eq!(m.first(), None);
        let one = Moments::from_sorted(&[5], &[1.5]);
        assert_eq!(one.sample_variance(), None);
        assert_eq!(one.variance(), Some(0.0));
    }

    #[test]
    fn catastrophic_cancellation_inputs() {
        // Classic counterexample for sum-of-squares variance.
        let base = [1e9 + 0.1, 1e9 + 0.2, 1e9 + 0.3];
        let xs: Vec<f64> = base.iter().cycle().take(3000).copied().collect();
        let ts: Vec<i64> = (0..xs.len() as i64).collect();
        let want = ref_var(&xs);
        let mut w = Moments::new();
        for (&t, &x) in ts.iter().zip(&xs) {
            w.push(t, x);
        }
        let b = Moments::from_sorted(&ts, &xs);
        assert!(
            rel(w.variance().unwrap(), want) < 1e-12,
            "{:?} {want}",
            w.variance()
        );
        assert!(
            rel(b.variance().unwrap(), want) < 1e-12,
            "{:?} {want}",
            b.variance()
        );
        assert!(rel(b.mean().unwrap(), 1e9 + 0.2) < 1e-15);

        // 1e12 offset, 1e-3 spread, split and merged in uneven pieces.
        let xs: Vec<f64> = (0..10_007)
            .map(|i| 1e12 + ((i * 7919) % 1000) as f64 * 1e-6)
            .collect();
        let ts: Vec<i64> = (0..xs.len() as i64).collect();
        let want = ref_var(&xs);
        let mut merged = Moments::new();
        for (a, b) in [(0, 3), (3, 1000), (1000, 1001), (1001, 10_007)] {
            merged.merge(&Moments::from_sorted(&ts[a..b], &xs[a..b]));
        }
        assert!(rel(merged.variance().unwrap(), want) < 1e-12);
        let all = Moments::from_sorted(&ts, &xs);
        assert!(rel(all.variance().unwrap(), want) < 1e-12);
    }

    #[test]
    fn merge_respects_time_order_for_first_last() {
        let mut late = Moments::from_sorted(&[10, 20], &[1.0, 2.0]);
        let early = Moments::from_sorted(&[5, 7], &[3.0, 4.0]);
        late.merge(&early);
        assert_eq!(late.first(), Some((5, 3.0)));
        assert_eq!(late.last(), Some((20, 2.0)));
        // Ties: the merged (later-arriving) summary wins `last`, not `first`.
        let mut a = Moments::from_sorted(&[1, 2], &[1.0, 2.0]);
        a.merge(&Moments::from_sorted(&[1, 2], &[8.0, 9.0]));
        assert_eq!(a.first(), Some((1, 1.0)));
        assert_eq!(a.last(), Some((2, 9.0)));
    }

    #[test]
    fn deterministic_bits() {
        let xs: Vec<f64> = (0..1000)
            .map(|i| ((i * 31) % 97) as f64 * 0.37 + 1e6)
            .collect();
        let ts: Vec<i64> = (0..1000).collect();
        let a = Moments::from_sorted(&ts, &xs);
        let b = Moments::from_sorted(&ts, &xs);
        assert_eq!(a.encode_bits(), b.encode_bits());
    }

    #[test]
    fn encode_roundtrip_and_reject() {
        let m = Moments::from_sorted(&[1, 2, 3], &[1.0, -2.0, 3.5]);
        let mut buf = Vec::new();
        m.encode_into(&mut buf);
        assert_eq!(buf.len(), Moments::ENCODED_LEN);
        assert_eq!(Moments::decode(&buf), Some(m));
        assert_eq!(Moments::decode(&buf[1..]), None);
        let mut e = Vec::new();
        Moments::new().encode_into(&mut e);
        assert!(Moments::decode(&e).unwrap().is_empty());
        e[8] ^= 1; // non-canonical empty
        assert_eq!(Moments::decode(&e), None);
    }
}
