//! Time-tier rollups: per-bucket [`Moments`] plus a [`DDSketch`], mergeable
//! into coarser tiers without touching raw data.
//!
//! Because both parts merge exactly (Chan's formula with shifted means for
//! the moments, bin-count addition for the sketch), a coarse tier built from
//! a fine tier has the same mean/variance as recomputation from raw points up
//! to floating-point rounding (~1e-15 relative in practice), and the same
//! sketch bins as a sketch of the raw points, hence the same `alpha`
//! relative-error guarantee on percentiles.
//!
//! # Encoding (deterministic, little-endian)
//! ```text
//! "RB", version u8 (1), start_ns i64, moments (88 bytes, see
//! Moments::encode_into), sketch length u32, sketch bytes, crc32 u32 of all
//! preceding bytes
//! ```

use crate::telemetry::agg::gallop;
use crate::telemetry::codec::Reader;
use crate::telemetry::moments::Moments;
use crate::telemetry::sketch::{DDSketch, SketchError};
use thiserror::Error;

const MAGIC: [u8; 2] = *b"RB";
const VERSION: u8 = 1;

/// Errors of rollup construction and decoding.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RollupError {
    #[error("column length mismatch: {timestamps} timestamps, {values} values")]
    LengthMismatch { timestamps: usize, values: usize },
    #[error("timestamps must be non-decreasing (index {0})")]
    Unsorted(usize),
    #[error("bucket width must be > 0 ns, got {0}")]
    InvalidWidth(i64),
    #[error("coarse width {coarse} is not a multiple of fine width {fine}")]
    NotMultiple { fine: i64, coarse: i64 },
    #[error("bucket start {0} is not aligned to the fine width or not increasing")]
    Misaligned(i64),
    #[error("timestamp {0} has no representable bucket start")]
    TimestampOutOfRange(i64),
    #[error("sketch: {0}")]
    Sketch(#[from] SketchError),
    #[error("rollup encoding truncated")]
    Truncated,
    #[error("not a rollup bucket (bad magic)")]
    BadMagic,
    #[error("unsupported rollup version {0}")]
    UnsupportedVersion(u8),
    #[error("checksum mismatch")]
    Checksum,
    #[error("corrupt rollup bucket: {0}")]
    Corrupt(&'static str),
}

/// One bucket of a rollup tier.
#[derive(Clone, Debug, PartialEq)]
pub struct RollupBucket {
    pub start_ns: i64,
    pub moments: Moments,
    pub sketch: DDSketch,
}

impl RollupBucket {
    /// Empty bucket with a sketch of the given parameters.
    pub fn new(start_ns: i64, alpha: f64, max_bins: u32) -> Result<Self, RollupError> {
        Ok(Self {
            start_ns,
            moments: Moments::new(),
            sketch: DDSketch::with_params(alpha, max_bins)?,
        })
    }

    /// Merges `other` into `self` (keeping `self.start_ns`).
    pub fn merge(&mut self, other: &RollupBucket) -> Result<(), RollupError> {
        self.sketch.merge(&other.sketch)?;
        self.moments.merge(&other.moments);
        Ok(())
    }

    /// Deterministic checksummed encoding.
    pub fn encode(&self) -> Vec<u8> {
        let sk = self.sketch.encode();
        let mut out = Vec::with_capacity(3 + 8 + Moments::ENCODED_LEN + 4 + sk.len() + 4);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.start_ns.to_le_bytes());
        self.moments.encode_into(&mut out);
        out.extend_from_slice(&(sk.len() as u32).to_le_bytes());
        out.extend_from_slice(&sk);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes [`RollupBucket::encode`]'s bytes; corrupt input is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, RollupError> {
        let body_len = bytes.len().checked_sub(4).ok_or(RollupError::Truncated)?;
        let (body, crc) = bytes.split_at(body_len);
        let mut r = Reader::new(body);
        let t = RollupError::Truncated;
        if r.array::<2>().ok_or(t.clone())? != MAGIC {
            return Err(RollupError::BadMagic);
        }
        let version = r.u8().ok_or(t.clone())?;
        if version != VERSION {
            return Err(RollupError::UnsupportedVersion(version));
        }
        let stored = u32::from_le_bytes(crc.try_into().map_err(|_| RollupError::Truncated)?);
        if crc32fast::hash(body) != stored {
            return Err(RollupError::Checksum);
        }
        let start_ns = i64::from_le_bytes(r.array().ok_or(t.clone())?);
        let moments = Moments::decode(r.bytes(Moments::ENCODED_LEN).ok_or(t.clone())?)
            .ok_or(RollupError::Corrupt("invalid moments"))?;
        let sk_len = r.u32().ok_or(t.clone())? as usize;
        let sketch = DDSketch::decode(r.bytes(sk_len).ok_or(t)?)?;
        if r.remaining() != 0 {
            return Err(RollupError::Corrupt("trailing bytes"));
        }
        if sketch.count() != moments.count() {
            return Err(RollupError::Corrupt("sketch and moments disagree on count"));
        }
        Ok(Self {
            start_ns,
            moments,
            sketch,
        })
    }
}

/// Rolls sorted raw columns into buckets of `width_ns` (aligned to multiples
/// of the width since the epoch; empty buckets are omitted).
///
/// Non-finite values are counted in the moments but ignored by the sketch,
/// which makes the bucket fail the count check on decode; reject them first.
pub fn rollup_raw(
    ts: &[i64],
    vals: &[f64],
    width_ns: i64,
    alpha: f64,
    max_bins: u32,
) -> Result<Vec<RollupBucket>, RollupError> {
    if ts.len() != vals.len() {
        return Err(RollupError::LengthMismatch {
            timestamps: ts.len(),
            values: vals.len(),
        });
    }
    if width_ns <= 0 {
        return Err(RollupError::InvalidWidth(width_ns));
    }
    if let Some(k) = ts.windows(2).position(|w| w[1] < w[0]) {
        return Err(RollupError::Unsorted(k + 1));
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < ts.len() {
        let t = ts[i];
        let start = t
            .checked_sub(t.rem_euclid(width_ns))
            .ok_or(RollupError::TimestampOutOfRange(t))?;
        let j = match start.checked_add(width_ns) {
            Some(end) => gallop(ts, i, end),
            None => ts.len(),
        };
        let mut b = RollupBucket::new(start, alpha, max_bins)?;
        b.moments = Moments::from_sorted(&ts[i..j], &vals[i..j]);
        for &v in &vals[i..j] {
            b.sketch.insert(v);
        }
        out.push(b);
        i = j;
    }
    Ok(out)
}

/// Merges a tier of `fine_width_ns` buckets (sorted by start, each aligned)
/// into `coarse_width_ns` buckets; the coarse width must be a multiple of the
/// fine width so that no fine bucket straddles a coarse boundary.
pub fn rollup_coarser(
    fine: &[RollupBucket],
    fine_width_ns: i64,
    coarse_width_ns: i64,
) -> Result<Vec<RollupBucket>, RollupError> {
    if fine_width_ns <= 0 {
        return Err(RollupError::InvalidWidth(fine_width_ns));
    }
    if coarse_width_ns <= 0 || coarse_width_ns % fine_width_ns != 0 {
        return Err(RollupError::NotMultiple {
            fine: fine_width_ns,
            coarse: coarse_width_ns,
        });
    }
    let mut out: Vec<RollupBucket> = Vec::new();
    let mut prev: Option<i64> = None;
    for b in fine {
        if b.start_ns.rem_euclid(fine_width_ns) != 0 || prev.is_some_and(|p| p >= b.start_ns) {
            return Err(RollupError::Misaligned(b.start_ns));
        }
        prev = Some(b.start_ns);
        // Flooring to the coarse grid can underflow near i64::MIN.
        let cs = b
            .start_ns
            .checked_sub(b.start_ns.rem_euclid(coarse_width_ns))
            .ok_or(RollupError::TimestampOutOfRange(b.start_ns))?;
        match out.last_mut() {
            Some(last) if last.start_ns == cs => last.merge(b)?,
            _ => {
                let mut nb = b.clone();
                nb.start_ns = cs;
                out.push(nb);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_coarse_tiers() {
        let ts: Vec<i64> = (0..10_000).map(|i| i * 7).collect();
        let vals: Vec<f64> = (0..10_000)
            .map(|i| 1e9 + ((i * 37) % 101) as f64 * 0.01)
            .collect();
        let fine = rollup_raw(&ts, &vals, 100, 0.01, 2048).unwrap();
        let coarse = rollup_coarser(&fine, 100, 1000).unwrap();
        let direct = rollup_raw(&ts, &vals, 1000, 0.01, 2048).unwrap();
        assert_eq!(coarse.len(), direct.len());
        for (c, d) in coarse.iter().zip(&direct) {
            assert_eq!(c.start_ns, d.start_ns);
            assert_eq!(c.sketch, d.sketch);
            assert_eq!(c.moments.count(), d.moments.count());
            let (a, b) = (c.moments.variance().unwrap(), d.moments.variance().unwrap());
            assert!(((a - b) / b).abs() < 1e-12);
        }
        assert!(matches!(
            rollup_coarser(&fine, 100, 150),
            Err(RollupError::NotMultiple { .. })
        ));
        let mut rev = fine.clone();
        rev.reverse();
        assert!(matches!(
            rollup_coarser(&rev, 100, 1000),
            Err(RollupError::Misaligned(_))
        ));
    }

    #[test]
    fn encode_roundtrip_and_corruption() {
        let ts: Vec<i64> = (0..500).collect();
        let vals: Vec<f64> = (0..500).map(|i| (i as f64 - 250.0) * 0.3).collect();
        let b = &rollup_raw(&ts, &vals, 1000, 0.01, 2048).unwrap()[0];
        let bytes = b.encode();
        assert_eq!(bytes, b.encode());
        let d = RollupBucket::decode(&bytes).unwrap();
        assert_eq!(&d, b);
        for cut in 0..bytes.len() {
            assert!(RollupBucket::decode(&bytes[..cut]).is_err());
        }
        for i in 0..bytes.len() {
            let mut c = bytes.clone();
            c[i] ^= 0x10;
            assert!(
                RollupBucket::decode(&c).is_err(),
                "flip at {i} not detected"
            );
        }
    }
}
