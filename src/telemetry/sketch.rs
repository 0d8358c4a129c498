//! DDSketch: a mergeable quantile sketch with relative-error guarantees
//! (Masson, Rim, Lee; VLDB 2019).
//!
//! A value `v > 0` goes to bin `k = ceil(log_gamma(v))` with
//! `gamma = (1 + alpha) / (1 - alpha)`; bin `k` covers `(gamma^(k-1), gamma^k]`
//! and is represented by `2 gamma^k / (gamma + 1)`, which is within a relative
//! error `alpha` of every value in the bin. Negative values use a mirrored
//! store keyed on `|v|`, and values with `|v| < f64::MIN_POSITIVE` (zeros and
//! subnormals) go to a dedicated zero counter. Bins are plain counts, so
//! merging is exact and order-independent: merging sketches gives the same
//! sketch as inserting the concatenated data.
//!
//! # Bounded memory
//! Each store keeps at most `max_bins` contiguous bins (default 2048, i.e.
//! 16 KiB per store). When a new key would widen a store past that, the
//! *lowest* keys (the smallest magnitudes) are collapsed into the lowest kept
//! bin. For the positive store this sacrifices the accuracy of the lowest
//! quantiles, for the negative store that of the values closest to zero.
//! With `alpha = 0.01` 2048 bins span a magnitude ratio of `gamma^2048 ~ 6e17`,
//! so collapsing only occurs for data spanning more than ~17 orders of
//! magnitude within one sign. The collapsed result is still independent of the
//! insertion/merge order.
//!
//! # Bit-exact bins
//! Bins are computed inside the replicated state machine (rollup buckets), so every
//! machine must compute the same key for the same value. `f64::ln` calls the platform's
//! libm, whose last-bit rounding differs between implementations (glibc, musl, macOS), and
//! a value near a bin boundary could then land in different bins on different replicas.
//! Keys therefore use [`portable_ln`]: fdlibm's `__ieee754_log` algorithm written with
//! IEEE-754 basic operations only (+, -, *, / are correctly rounded everywhere, and Rust
//! never contracts them into FMAs), so it gives the same bits on every platform.
//!
//! # Non-finite values
//! `insert` ignores NaN and infinities (they have no meaningful bin) and
//! reports that through its return value.

use crate::telemetry::codec::{put_varint, unzigzag, zigzag, Reader};
use thiserror::Error;

/// Default relative accuracy.
pub const DEFAULT_ALPHA: f64 = 0.01;
/// Default cap on bins per store.
pub const DEFAULT_MAX_BINS: u32 = 2048;
const MIN_ALPHA: f64 = 1e-6;
const MAX_ALPHA: f64 = 0.5;
const MIN_MAX_BINS: u32 = 16;
const MAX_MAX_BINS: u32 = 1 << 16;
const MAGIC: [u8; 2] = *b"DD";
const VERSION: u8 = 1;

/// Errors of sketch construction, merging and decoding.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SketchError {
    #[error("relative accuracy {0} outside [{MIN_ALPHA}, {MAX_ALPHA}]")]
    InvalidAlpha(f64),
    #[error("max_bins {0} outside [{MIN_MAX_BINS}, {MAX_MAX_BINS}]")]
    InvalidMaxBins(u32),
    #[error("cannot merge sketches with different accuracy ({0} vs {1})")]
    IncompatibleAlpha(f64, f64),
    #[error("sketch encoding truncated")]
    Truncated,
    #[error("not a sketch encoding (bad magic)")]
    BadMagic,
    #[error("unsupported sketch encoding version {0}")]
    UnsupportedVersion(u8),
    #[error("corrupt sketch encoding: {0}")]
    Corrupt(&'static str),
}

/// The 1-based nearest rank of quantile `q` among `n` sorted values:
/// `max(1, ceil(q * n))`. Shared by the sketch and by tests so both agree on
/// the definition.
pub fn nearest_rank(q: f64, n: u64) -> u64 {
    ((q * n as f64).ceil() as u64).clamp(1, n.max(1))
}

/// Contiguous bin counts for keys `offset .. offset + counts.len()`.
#[derive(Clone, Debug, Default)]
struct Store {
    offset: i32,
    counts: Vec<u64>,
}

impl Store {
    fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    fn max_key(&self) -> i32 {
        self.offset + self.counts.len() as i32 - 1
    }

    /// Makes room for `[lo, hi]`, collapsing the lowest keys if the range
    /// would exceed `max_bins`. Returns the lowest key kept; keys below it
    /// must be counted in that bin.
    fn reserve_range(&mut self, lo: i32, hi: i32, max_bins: u32) -> i32 {
        let (cur_lo, cur_hi) = if self.counts.is_empty() {
            (lo, hi)
        } else {
            (self.offset, self.max_key())
        };
        let new_hi = hi.max(cur_hi);
        let mut new_lo = lo.min(cur_lo);
        let span = i64::from(new_hi) - i64::from(new_lo) + 1;
        if span > i64::from(max_bins) {
            new_lo = new_hi - max_bins as i32 + 1;
        }
        if self.counts.is_empty() {
            self.offset = new_lo;
            self.counts.resize((new_hi - new_lo + 1) as usize, 0);
            return new_lo;
        }
        if new_lo > cur_lo {
            // Collapse: fold everything below new_lo into new_lo.
            let cut = (new_lo - cur_lo) as usize;
            let folded: u64 = self.counts[..cut.min(self.counts.len())].iter().sum();
            if cut >= self.counts.len() {
                self.counts.clear();
            } else {
                self.counts.drain(..cut);
            }
            self.offset = new_lo;
            if self.counts.is_empty() {
                self.counts.push(0);
            }
            self.counts[0] += folded;
        } else if new_lo < cur_lo {
            let grow = (cur_lo - new_lo) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = new_lo;
        }
        let len = (new_hi - self.offset + 1) as usize;
        if len > self.counts.len() {
            self.counts.resize(len, 0);
        }
        new_lo
    }

    fn add(&mut self, key: i32, n: u64, max_bins: u32) {
        // Fast path: key inside the current range (the steady state).
        let idx = i64::from(key) - i64::from(self.offset);
        if idx >= 0 {
            if let Some(c) = self.counts.get_mut(idx as usize) {
                *c += n;
                return;
            }
        }
        let lo = self.reserve_range(key, key, max_bins);
        let k = key.max(lo);
        self.counts[(k - self.offset) as usize] += n;
    }

    fn merge(&mut self, other: &Store, max_bins: u32) {
        let Some((olo, ohi)) = other.nonzero_range() else {
            return;
        };
        let lo = self.reserve_range(olo, ohi, max_bins);
        for (key, c) in other.iter() {
            let k = key.max(lo);
            self.counts[(k - self.offset) as usize] += c;
        }
    }

    /// Non-zero `(key, count)` pairs in ascending key order.
    fn iter(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (self.offset + i as i32, *c))
    }

    fn nonzero_range(&self) -> Option<(i32, i32)> {
        let first = self.counts.iter().position(|&c| c > 0)?;
        let last = self.counts.iter().rposition(|&c| c > 0)?;
        Some((self.offset + first as i32, self.offset + last as i32))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self.nonzero_range() {
            None => put_varint(out, 0),
            Some((lo, hi)) => {
                put_varint(out, (hi - lo + 1) as u64);
                put_varint(out, zigzag(i64::from(lo)));
                let base = (lo - self.offset) as usize;
                for &c in &self.counts[base..=base + (hi - lo) as usize] {
                    put_varint(out, c);
                }
            }
        }
    }

    fn decode(r: &mut Reader<'_>, max_bins: u32, key_limit: i64) -> Result<Store, SketchError> {
        let n = r.varint().ok_or(SketchError::Truncated)?;
        if n == 0 {
            return Ok(Store::default());
        }
        if n > u64::from(max_bins) {
            return Err(SketchError::Corrupt("store wider than max_bins"));
        }
        // Each count takes at least one byte: reject before allocating.
        if n as usize > r.remaining() {
            return Err(SketchError::Truncated);
        }
        let lo = unzigzag(r.varint().ok_or(SketchError::Truncated)?);
        if lo < -key_limit || lo > key_limit {
            return Err(SketchError::Corrupt("bin key out of range"));
        }
        // Cannot overflow: |lo| and n are both far below i64::MAX / 2.
        let hi = lo + n as i64 - 1;
        if hi > key_limit {
            return Err(SketchError::Corrupt("bin key out of range"));
        }
        let mut counts = Vec::with_capacity(n as usize);
        for _ in 0..n {
            counts.push(r.varint().ok_or(SketchError::Truncated)?);
        }
        if counts[0] == 0 || counts[counts.len() - 1] == 0 {
            return Err(SketchError::Corrupt("non-canonical store bounds"));
        }
        Ok(Store {
            offset: lo as i32,
            counts,
        })
    }
}

/// Natural logarithm of a positive finite `x`, bit-identical on every platform (see the
/// module documentation): fdlibm's `e_log.c` (error < 1 ulp), with basic operations only.
/// Returns NaN for `x <= 0` or non-finite `x`.
pub fn portable_ln(x: f64) -> f64 {
    // fdlibm's constants, by their bits.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const TWO54: f64 = f64::from_bits(0x4350_0000_0000_0000);
    const LG1: f64 = f64::from_bits(0x3fe5_5555_5555_5593);
    const LG2: f64 = f64::from_bits(0x3fd9_9999_9997_fa04);
    const LG3: f64 = f64::from_bits(0x3fd2_4924_9422_9359);
    const LG4: f64 = f64::from_bits(0x3fcc_71c5_1d8e_78af);
    const LG5: f64 = f64::from_bits(0x3fc7_4664_96cb_03de);
    const LG6: f64 = f64::from_bits(0x3fc3_9a09_d078_c69f);
    const LG7: f64 = f64::from_bits(0x3fc2_f112_df3e_5244);
    const THIRD: f64 = f64::from_bits(0x3fd5_5555_5555_5555);
    if x.is_nan() || x <= 0.0 || x.is_infinite() {
        return f64::NAN;
    }
    let mut x = x;
    let mut k: i32 = 0;
    let mut hx = (x.to_bits() >> 32) as i32;
    if hx < 0x0010_0000 {
        // Subnormal: scale up.
        k -= 54;
        x *= TWO54;
        hx = (x.to_bits() >> 32) as i32;
    }
    k += (hx >> 20) - 1023;
    hx &= 0x000f_ffff;
    let i = (hx + 0x9_5f64) & 0x10_0000;
    // Normalize x or x/2 into [sqrt(2)/2, sqrt(2)).
    let lo = x.to_bits() & 0xffff_ffff;
    x = f64::from_bits((((hx | (i ^ 0x3ff0_0000)) as u32 as u64) << 32) | lo);
    k += i >> 20;
    let f = x - 1.0;
    let dk = f64::from(k);
    if (0x000f_ffff & (2 + hx)) < 3 {
        // -2^-20 <= f < 2^-20.
        if f == 0.0 {
            return dk * LN2_HI + dk * LN2_LO;
        }
        let r = f * f * (0.5 - THIRD * f);
        return dk * LN2_HI - ((r - dk * LN2_LO) - f);
    }
    let s = f / (2.0 + f);
    let z = s * s;
    let mut i = hx - 0x6_147a;
    let w = z * z;
    let j = 0x6_b851 - hx;
    let t1 = w * (LG2 + w * (LG4 + w * LG6));
    let t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    i |= j;
    let r = t2 + t1;
    if i > 0 {
        let hfsq = 0.5 * f * f;
        dk * LN2_HI - ((hfsq - (s * (hfsq + r) + dk * LN2_LO)) - f)
    } else {
        dk * LN2_HI - ((s * (f - r) - dk * LN2_LO) - f)
    }
}

/// Mergeable relative-error quantile sketch. See the module documentation.
#[derive(Clone, Debug)]
pub struct DDSketch {
    alpha: f64,
    ln_gamma: f64,
    inv_ln_gamma: f64,
    /// `2 / (gamma + 1)`: scales `gamma^k` to the bin's representative.
    rep_factor: f64,
    max_bins: u32,
    pos: Store,
    neg: Store,
    zero: u64,
    count: u64,
    min: f64,
    max: f64,
}

impl Default for DDSketch {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for DDSketch {
    /// Logical equality: same parameters, same non-zero bins, same extrema.
    fn eq(&self, other: &Self) -> bool {
        self.encode() == other.encode()
    }
}

impl DDSketch {
    /// Sketch with [`DEFAULT_ALPHA`] and [`DEFAULT_MAX_BINS`].
    pub fn new() -> Self {
        Self::with_params(DEFAULT_ALPHA, DEFAULT_MAX_BINS).expect("defaults are valid")
    }

    /// Sketch with relative accuracy `alpha` (in `[1e-6, 0.5]`) and at most
    /// `max_bins` (in `[16, 65536]`) bins per sign.
    pub fn with_params(alpha: f64, max_bins: u32) -> Result<Self, SketchError> {
        if !(MIN_ALPHA..=MAX_ALPHA).contains(&alpha) {
            return Err(SketchError::InvalidAlpha(alpha));
        }
        if !(MIN_MAX_BINS..=MAX_MAX_BINS).contains(&max_bins) {
            return Err(SketchError::InvalidMaxBins(max_bins));
        }
        let gamma = (1.0 + alpha) / (1.0 - alpha);
        let ln_gamma = portable_ln(gamma);
        Ok(Self {
            alpha,
            ln_gamma,
            inv_ln_gamma: 1.0 / ln_gamma,
            rep_factor: 2.0 / (gamma + 1.0),
            max_bins,
            pos: Store::default(),
            neg: Store::default(),
            zero: 0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        })
    }

    /// Relative accuracy.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Bin cap per store.
    pub fn max_bins(&self) -> u32 {
        self.max_bins
    }

    /// Number of values inserted (NaN/inf excluded).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Exact minimum (None when empty).
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// Exact maximum (None when empty).
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// Largest absolute bin key for this alpha: keys of all finite normal
    /// values lie within `+-key_limit`.
    fn key_limit(&self) -> i64 {
        (portable_ln(f64::MAX) * self.inv_ln_gamma).ceil() as i64 + 1
    }

    #[inline]
    fn key(&self, magnitude: f64) -> i32 {
        (portable_ln(magnitude) * self.inv_ln_gamma).ceil() as i32
    }

    fn representative(&self, key: i32) -> f64 {
        (f64::from(key) * self.ln_gamma).exp() * self.rep_factor
    }

    /// Adds a value. Returns false (and ignores the value) for NaN/inf.
    pub fn insert(&mut self, v: f64) -> bool {
        if !v.is_finite() {
            return false;
        }
        let a = v.abs();
        if a < f64::MIN_POSITIVE {
            self.zero += 1;
        } else if v > 0.0 {
            let k = self.key(a);
            self.pos.add(k, 1, self.max_bins);
        } else {
            let k = self.key(a);
            self.neg.add(k, 1, self.max_bins);
        }
        self.count += 1;
        if v < self.min {
            self.min = v;
        }
        if v > self.max {
            self.max = v;
        }
        true
    }

    /// Merges `other` into `self`. Both must have the same `alpha`; the bin
    /// cap of `self` applies to the result.
    pub fn merge(&mut self, other: &DDSketch) -> Result<(), SketchError> {
        if self.alpha.to_bits() != other.alpha.to_bits() {
            return Err(SketchError::IncompatibleAlpha(self.alpha, other.alpha));
        }
        self.pos.merge(&other.pos, self.max_bins);
        self.neg.merge(&other.neg, self.max_bins);
        self.zero += other.zero;
        self.count += other.count;
        if other.min < self.min {
            self.min = other.min;
        }
        if other.max > self.max {
            self.max = other.max;
        }
        Ok(())
    }

    /// Estimate of the nearest-rank quantile `q` in `[0, 1]` (see
    /// [`nearest_rank`]), within relative error `alpha` of the true value
    /// unless it fell in a collapsed bin. None when empty or `q` is out of
    /// range.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = nearest_rank(q, self.count);
        let mut seen = 0u64;
        let clamp = |v: f64| v.clamp(self.min, self.max);
        // Most negative first: descending magnitude keys of the negative store.
        for (key, c) in self.neg.iter().rev() {
            seen += c;
            if seen >= rank {
                return Some(clamp(-self.representative(key)));
            }
        }
        seen += self.zero;
        if seen >= rank {
            return Some(clamp(0.0));
        }
        for (key, c) in self.pos.iter() {
            seen += c;
            if seen >= rank {
                return Some(clamp(self.representative(key)));
            }
        }
        // Unreachable for consistent counts; decode guarantees consistency.
        Some(self.max)
    }

    /// Deterministic compact encoding: equal sketches (see `PartialEq`) have
    /// equal bytes.
    ///
    /// Layout: `"DD"`, version u8, alpha f64 LE, max_bins u32 LE, min f64 LE,
    /// max f64 LE, zero count varint, then the positive and the negative
    /// store, each `nbins` varint followed (if non-zero) by the zig-zag
    /// varint of its lowest key and `nbins` varint counts. Stores are trimmed
    /// to their first/last non-zero bin.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + 2 * (self.pos.counts.len() + self.neg.counts.len()));
        self.encode_into(&mut out);
        out
    }

    /// Appends [`DDSketch::encode`]'s bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.alpha.to_bits().to_le_bytes());
        out.extend_from_slice(&self.max_bins.to_le_bytes());
        out.extend_from_slice(&self.min.to_bits().to_le_bytes());
        out.extend_from_slice(&self.max.to_bits().to_le_bytes());
        put_varint(out, self.zero);
        self.pos.encode(out);
        self.neg.encode(out);
    }

    /// Decodes [`DDSketch::encode`]'s bytes, validating every field; corrupt
    /// input yields an error, never a panic or an unbounded allocation.
    pub fn decode(bytes: &[u8]) -> Result<Self, SketchError> {
        let mut r = Reader::new(bytes);
        let magic = r.array::<2>().ok_or(SketchError::Truncated)?;
        if magic != MAGIC {
            return Err(SketchError::BadMagic);
        }
        let version = r.u8().ok_or(SketchError::Truncated)?;
        if version != VERSION {
            return Err(SketchError::UnsupportedVersion(version));
        }
        let alpha = r.f64().ok_or(SketchError::Truncated)?;
        let max_bins = r.u32().ok_or(SketchError::Truncated)?;
        let mut s = Self::with_params(alpha, max_bins)?;
        s.min = r.f64().ok_or(SketchError::Truncated)?;
        s.max = r.f64().ok_or(SketchError::Truncated)?;
        s.zero = r.varint().ok_or(SketchError::Truncated)?;
        let limit = s.key_limit();
        s.pos = Store::decode(&mut r, max_bins, limit)?;
        s.neg = Store::decode(&mut r, max_bins, limit)?;
        if r.remaining() != 0 {
            return Err(SketchError::Corrupt("trailing bytes"));
        }
        let mut count = s.zero;
        for c in s.pos.counts.iter().chain(&s.neg.counts) {
            count = count
                .checked_add(*c)
                .ok_or(SketchError::Corrupt("count overflow"))?;
        }
        s.count = count;
        let consistent = if count == 0 {
            s.min == f64::INFINITY && s.max == f64::NEG_INFINITY
        } else {
            s.min.is_finite()
                && s.max.is_finite()
                && s.min <= s.max
                && (s.neg.is_empty() || s.min < 0.0)
                && (s.pos.is_empty() || s.max > 0.0)
        };
        if !consistent {
            return Err(SketchError::Corrupt("extrema inconsistent with bins"));
        }
        Ok(s)
    }

    /// Approximate heap bytes held (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        8 * (self.pos.counts.capacity() + self.neg.counts.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(nearest_rank(q, sorted.len() as u64) - 1) as usize]
    }

    /// Issue 9, point 9b: the bin function uses basic IEEE operations only. It agrees with
    /// the platform's `ln` to within an ulp, and its bits are pinned here: a build whose
    /// arithmetic differed would fail this test rather than split replicas.
    #[test]
    fn portable_ln_is_accurate_and_pinned() {
        let mut x = f64::MIN_POSITIVE;
        let mut checked = 0;
        while x < f64::MAX / 1.37 {
            for v in [x, x * 1.000_000_1, x * 0.999_999_9, 1.0 + x.fract()] {
                let (a, b) = (portable_ln(v), v.ln());
                let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
                assert!(ulps <= 1, "ln({v:e}) = {a:e} vs platform {b:e}");
                checked += 1;
            }
            x *= 1.37;
        }
        assert!(checked > 4000);
        assert!(portable_ln(0.0).is_nan() && portable_ln(-1.0).is_nan());
        assert!(portable_ln(f64::INFINITY).is_nan() && portable_ln(f64::NAN).is_nan());
        assert_eq!(portable_ln(1.0), 0.0);
        // Golden bits (fdlibm's results): any platform must reproduce them exactly.
        for (v, bits) in PINNED_LN {
            assert_eq!(portable_ln(*v).to_bits(), *bits, "ln({v:e})");
        }
        // And the sketch's keys of values around bin boundaries.
        let s = DDSketch::new();
        let gamma: f64 = 1.01 / 0.99;
        for k in [-700, -3, 1, 2, 57, 700] {
            let edge = gamma.powi(k);
            for v in [edge, edge * (1.0 + 1e-15), edge * (1.0 - 1e-15)] {
                let key = s.key(v);
                assert!((key - k).abs() <= 1, "key({v:e}) = {key}, edge {k}");
            }
        }
    }

    const PINNED_LN: &[(f64, u64)] = &[
        (2.0, 0x3fe6_2e42_fefa_39ef),
        (10.0, 0x4002_6bb1_bbb5_5516),
        (0.5, 0xbfe6_2e42_fefa_39ef),
        (1.5, 0x3fd9_f323_ecbf_984c),
        (1e300, 0x4085_9634_47f8_7fb5),
        (1e-300, 0xc085_9634_47f8_7fb5),
        (1.01 / 0.99, 0x3f94_7b0e_059d_057d),
    ];

    #[test]
    fn basic_quantiles_mixed_signs() {
        let mut s = DDSketch::new();
        let mut data: Vec<f64> = (-500..=500).map(|i| i as f64 * 0.37).collect();
        data.push(0.0);
        for &v in &data {
            assert!(s.insert(v));
        }
        assert!(!s.insert(f64::NAN));
        assert!(!s.insert(f64::INFINITY));
        data.sort_by(f64::total_cmp);
        assert_eq!(s.count(), data.len() as u64);
        for q in [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0] {
            let want = exact(&data, q);
            let got = s.quantile(q).unwrap();
            let err = if want == 0.0 {
                got.abs()
            } else {
                ((got - want) / want).abs()
            };
            assert!(err <= 0.01 + 1e-12, "q={q} got={got} want={want}");
        }
        assert_eq!(s.quantile(0.0), Some(data[0]));
        assert_eq!(s.quantile(1.0), Some(data[data.len() - 1]));
        assert_eq!(s.quantile(1.5), None);
        assert_eq!(DDSketch::new().quantile(0.5), None);
    }

    #[test]
    fn collapsing_bounds_memory_and_keeps_high_quantiles() {
        let mut s = DDSketch::with_params(0.01, 64).unwrap();
        let mut data = Vec::new();
        for i in 0..2000 {
            let v = 1.05f64.powi(i - 1000);
            s.insert(v);
            data.push(v);
        }
        assert!(s.pos.counts.len() <= 64);
        data.sort_by(f64::total_cmp);
        // The top 64 bins (~ top 1.3 orders of magnitude) stay accurate.
        for q in [0.99, 0.999, 1.0] {
            let want = exact(&data, q);
            let got = s.quantile(q).unwrap();
            assert!(((got - want) / want).abs() <= 0.01 + 1e-12);
        }
        assert_eq!(s.count(), 2000);
    }

    #[test]
    fn merge_rejects_different_alpha() {
        let mut a = DDSketch::new();
        let b = DDSketch::with_params(0.02, 2048).unwrap();
        assert!(matches!(
            a.merge(&b),
            Err(SketchError::IncompatibleAlpha(..))
        ));
    }

    #[test]
    fn encode_roundtrip_and_corruption() {
        let mut s = DDSketch::new();
        for i in 0..1000 {
            s.insert((i as f64 - 300.0) * 1.7);
        }
        let b = s.encode();
        let d = DDSketch::decode(&b).unwrap();
        assert_eq!(d, s);
        assert_eq!(d.count(), s.count());
        assert_eq!(d.encode(), b);
        assert_eq!(
            DDSketch::decode(&DDSketch::new().encode()).unwrap().count(),
            0
        );
        for cut in 0..b.len() {
            assert!(DDSketch::decode(&b[..cut]).is_err());
        }
        // Every single-byte corruption must decode to an error or to a valid
        // sketch, never panic.
        for i in 0..b.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut c = b.clone();
                c[i] ^= x;
                if let Ok(d) = DDSketch::decode(&c) {
                    let _ = d.quantile(0.5);
                }
            }
        }
    }
}
