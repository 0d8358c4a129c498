//! Columnar, pco-compressed segments of a time-sorted series.
//!
//! # Layout (little-endian)
//! ```text
//!  0  magic "AETS"          4
//!  4  version (1)           u8
//!  5  value encoding        u8   0 = pco f64, 1 = pco i64 multiples of `base`
//!  6  reserved (0)          u16
//!  8  point count           u32
//! 12  min timestamp         i64  (= first; timestamps are non-decreasing)
//! 20  max timestamp         i64  (= last)
//! 28  base                  f64  (0 unless encoding 1)
//! 36  timestamp column len  u32
//! 40  value column len      u32
//! 44  crc32                 u32  over bytes 0..44 and the whole payload
//! 48  payload: timestamp column (pco i64), value column (pco)
//! ```
//! The header is 48 bytes; everything else is pco. Timestamps use pco's
//! automatic delta selection: a regular series becomes an all-zero
//! second-order delta stream and costs a few hundred bytes per million points.
//!
//! # Value encodings, chosen per segment
//! * `0`: the f64 column with pco's automatic mode, which itself bids
//!   `FloatMult` (values ~ multiples of a base, e.g. scaled ADC codes) and
//!   `FloatQuant` (values with many trailing zero mantissa bits).
//! * `1`: when every value is *exactly* `m * base` for an integer `m` (a
//!   quantized sensor scaled to engineering units), the integers are stored as
//!   an i64 column and `base` in the header. Decoding is `m as f64 * base`,
//!   bit-exact by construction (verified at encode time). It compresses about
//!   as well as `FloatMult` but decodes ~1.4x faster (integer latents, no
//!   float reconstruction), so it wins ties within [`INT_PREFERENCE`].
//!
//! # Robustness
//! Decoding never trusts the input: lengths are bounds-checked, the CRC is
//! verified before pco sees a byte, point counts are capped at
//! [`MAX_POINTS`] (so a forged header cannot make us allocate unbounded
//! memory), pco errors are mapped to [`SegmentError::Pco`], and the decoded
//! column lengths and timestamp bounds are checked against the header.

use crate::telemetry::codec::Reader;
use pco::standalone::{simple_compress, simple_decompress_into_uninit};
use pco::{errors::PcoError, ChunkConfig};
use std::mem::MaybeUninit;
use thiserror::Error;

const MAGIC: [u8; 4] = *b"AETS";
const VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 48;
const CRC_OFFSET: usize = 44;
/// Largest segment accepted (and produced): 16 Mi points = 256 MiB decoded.
pub const MAX_POINTS: usize = 1 << 24;
/// The integer encoding is kept if it is at most this factor larger than the
/// float encoding (it decodes faster).
pub const INT_PREFERENCE: f64 = 1.01;
/// Values sampled to guess the quantization step.
const BASE_SAMPLE: usize = 4096;

/// Value column encoding of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueEncoding {
    /// pco-compressed f64 (automatic mode).
    Float,
    /// pco-compressed i64 multiples of a base stored in the header.
    ScaledInt,
}

/// Errors of segment encoding/decoding.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SegmentError {
    #[error("column length mismatch: {timestamps} timestamps, {values} values")]
    LengthMismatch { timestamps: usize, values: usize },
    #[error("timestamps must be non-decreasing (index {0})")]
    Unsorted(usize),
    #[error("segment of {0} points exceeds the maximum of {MAX_POINTS}")]
    TooLarge(usize),
    #[error("segment truncated")]
    Truncated,
    #[error("not a segment (bad magic)")]
    BadMagic,
    #[error("unsupported segment version {0}")]
    UnsupportedVersion(u8),
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("corrupt segment: {0}")]
    Corrupt(&'static str),
    #[error("pco: {0}")]
    Pco(#[from] PcoError),
}

/// Header fields of an encoded segment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegmentInfo {
    pub count: usize,
    pub min_ts: i64,
    pub max_ts: i64,
    pub encoding: ValueEncoding,
    pub ts_bytes: usize,
    pub value_bytes: usize,
}

fn pco_config() -> ChunkConfig {
    // Defaults: compression level 8, automatic mode and delta selection.
    // Pages of up to 2^18 values keep pco's per-page state small.
    ChunkConfig::default()
}

/// Finds `base` such that every value is exactly `m * base` with integer
/// `|m| <= 2^53`, or None. The base is guessed as the smallest gap between
/// distinct values of a sample and then verified on every value.
fn detect_base(vals: &[f64]) -> Option<f64> {
    if vals.is_empty() || vals.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let stride = vals.len().div_ceil(BASE_SAMPLE).max(1);
    let mut sample: Vec<f64> = vals.iter().step_by(stride).copied().collect();
    sample.sort_by(f64::total_cmp);
    sample.dedup();
    let base = sample
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|g| *g > 0.0)
        .fold(f64::INFINITY, f64::min);
    // A single distinct value: use it as the base (m = 1) unless it is zero.
    let base = if base.is_finite() {
        base
    } else {
        sample[0].abs()
    };
    if !(base.is_normal()) {
        return None;
    }
    let ok = vals.iter().all(|&v| {
        let m = (v / base).round();
        m.abs() <= 9_007_199_254_740_992.0 && (m * base).to_bits() == v.to_bits()
    });
    ok.then_some(base)
}

/// Encodes sorted columns into a self-describing, checksummed segment.
pub fn encode(ts: &[i64], vals: &[f64]) -> Result<Vec<u8>, SegmentError> {
    if ts.len() != vals.len() {
        return Err(SegmentError::LengthMismatch {
            timestamps: ts.len(),
            values: vals.len(),
        });
    }
    if ts.len() > MAX_POINTS {
        return Err(SegmentError::TooLarge(ts.len()));
    }
    if let Some(k) = ts.windows(2).position(|w| w[1] < w[0]) {
        return Err(SegmentError::Unsorted(k + 1));
    }
    let n = ts.len();
    let cfg = pco_config();
    let (ts_col, val_col, encoding, base) = if n == 0 {
        (Vec::new(), Vec::new(), ValueEncoding::Float, 0.0)
    } else {
        let ts_col = simple_compress(ts, &cfg)?;
        let float_col = simple_compress(vals, &cfg)?;
        let int_col = match detect_base(vals) {
            Some(base) => {
                let ints: Vec<i64> = vals.iter().map(|&v| (v / base).round() as i64).collect();
                Some((simple_compress(&ints, &cfg)?, base))
            }
            None => None,
        };
        match int_col {
            Some((c, base)) if c.len() as f64 <= float_col.len() as f64 * INT_PREFERENCE => {
                (ts_col, c, ValueEncoding::ScaledInt, base)
            }
            _ => (ts_col, float_col, ValueEncoding::Float, 0.0),
        }
    };
    let ts_len = u32::try_from(ts_col.len()).map_err(|_| SegmentError::TooLarge(n))?;
    let val_len = u32::try_from(val_col.len()).map_err(|_| SegmentError::TooLarge(n))?;
    let mut out = Vec::with_capacity(HEADER_LEN + ts_col.len() + val_col.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(match encoding {
        ValueEncoding::Float => 0,
        ValueEncoding::ScaledInt => 1,
    });
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&ts.first().copied().unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&ts.last().copied().unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&base.to_bits().to_le_bytes());
    out.extend_from_slice(&ts_len.to_le_bytes());
    out.extend_from_slice(&val_len.to_le_bytes());
    debug_assert_eq!(out.len(), CRC_OFFSET);
    let mut h = crc32fast::Hasher::new();
    h.update(&out);
    h.update(&ts_col);
    h.update(&val_col);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&ts_col);
    out.extend_from_slice(&val_col);
    Ok(out)
}

struct Parsed<'a> {
    info: SegmentInfo,
    base: f64,
    ts_col: &'a [u8],
    val_col: &'a [u8],
}

/// The fields of a segment, with lengths checked against `bytes` but not the checksum.
struct Fields<'a> {
    enc: u8,
    count: usize,
    min_ts: i64,
    max_ts: i64,
    base: f64,
    stored_crc: u32,
    ts_col: &'a [u8],
    val_col: &'a [u8],
}

fn fields(bytes: &[u8]) -> Result<Fields<'_>, SegmentError> {
    let mut r = Reader::new(bytes);
    let t = SegmentError::Truncated;
    if r.array::<4>().ok_or(t.clone())? != MAGIC {
        return Err(SegmentError::BadMagic);
    }
    let version = r.u8().ok_or(t.clone())?;
    if version != VERSION {
        return Err(SegmentError::UnsupportedVersion(version));
    }
    let enc = r.u8().ok_or(t.clone())?;
    let _reserved = r.array::<2>().ok_or(t.clone())?;
    let count = r.u32().ok_or(t.clone())? as usize;
    let min_ts = r.i64().ok_or(t.clone())?;
    let max_ts = r.i64().ok_or(t.clone())?;
    let base = r.f64().ok_or(t.clone())?;
    let ts_len = r.u32().ok_or(t.clone())? as usize;
    let val_len = r.u32().ok_or(t.clone())? as usize;
    let stored_crc = r.u32().ok_or(t.clone())?;
    let ts_col = r.bytes(ts_len).ok_or(t.clone())?;
    let val_col = r.bytes(val_len).ok_or(t)?;
    if r.remaining() != 0 {
        return Err(SegmentError::Corrupt("trailing bytes"));
    }
    Ok(Fields {
        enc,
        count,
        min_ts,
        max_ts,
        base,
        stored_crc,
        ts_col,
        val_col,
    })
}

fn parse(bytes: &[u8]) -> Result<Parsed<'_>, SegmentError> {
    let f = fields(bytes)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..CRC_OFFSET]);
    h.update(&bytes[HEADER_LEN..]);
    let computed = h.finalize();
    if computed != f.stored_crc {
        return Err(SegmentError::Checksum {
            stored: f.stored_crc,
            computed,
        });
    }
    // Past the CRC, inconsistencies mean a buggy or malicious writer.
    checked(f)
}

fn checked(f: Fields<'_>) -> Result<Parsed<'_>, SegmentError> {
    let encoding = match f.enc {
        0 => ValueEncoding::Float,
        1 if f.base.is_normal() => ValueEncoding::ScaledInt,
        _ => return Err(SegmentError::Corrupt("unknown value encoding")),
    };
    if f.count > MAX_POINTS {
        return Err(SegmentError::TooLarge(f.count));
    }
    let (ts_len, val_len) = (f.ts_col.len(), f.val_col.len());
    if f.min_ts > f.max_ts || ((f.count == 0) != (ts_len == 0 && val_len == 0)) {
        return Err(SegmentError::Corrupt("inconsistent header"));
    }
    Ok(Parsed {
        info: SegmentInfo {
            count: f.count,
            min_ts: f.min_ts,
            max_ts: f.max_ts,
            encoding,
            ts_bytes: ts_len,
            value_bytes: val_len,
        },
        base: f.base,
        ts_col: f.ts_col,
        val_col: f.val_col,
    })
}

/// The header, checked for consistency with itself and the segment's length but **not**
/// against the checksum, so without reading the payload: for a cost estimate, which counts
/// points before a query and must not cost what the query does. A read that serves points
/// uses [`info`] or a decode, which verify.
pub fn header(bytes: &[u8]) -> Result<SegmentInfo, SegmentError> {
    checked(fields(bytes)?).map(|p| p.info)
}

/// Reads and validates the header (including the checksum) only.
pub fn info(bytes: &[u8]) -> Result<SegmentInfo, SegmentError> {
    parse(bytes).map(|p| p.info)
}

/// Decompresses exactly `n` numbers of a pco column into `dst`'s spare
/// capacity (no zero-fill pass), replacing its contents.
fn decompress_exact<T: pco::data_types::Number>(
    col: &[u8],
    n: usize,
    dst: &mut Vec<T>,
) -> Result<(), SegmentError> {
    dst.clear();
    dst.reserve(n);
    let spare = &mut dst.spare_capacity_mut()[..n];
    let progress = simple_decompress_into_uninit(col, spare)?;
    if progress.n_processed != n || !progress.finished {
        return Err(SegmentError::Corrupt("column length differs from header"));
    }
    // SAFETY: pco guarantees the first `n_processed` (= n) elements of
    // `spare` were initialized, and capacity >= n was reserved above.
    unsafe { dst.set_len(n) };
    Ok(())
}

/// Decodes into caller-owned buffers (cleared first), reusing their capacity.
pub fn decode_into(
    bytes: &[u8],
    ts: &mut Vec<i64>,
    vals: &mut Vec<f64>,
) -> Result<SegmentInfo, SegmentError> {
    let p = parse(bytes)?;
    let n = p.info.count;
    ts.clear();
    vals.clear();
    if n == 0 {
        return Ok(p.info);
    }
    decompress_exact(p.ts_col, n, ts)?;
    match p.info.encoding {
        ValueEncoding::Float => decompress_exact(p.val_col, n, vals)?,
        ValueEncoding::ScaledInt => {
            vals.reserve(n);
            let spare: &mut [MaybeUninit<f64>] = &mut vals.spare_capacity_mut()[..n];
            // SAFETY: f64 and i64 have identical size and alignment, and
            // MaybeUninit<_> imposes no validity requirement, so viewing the
            // uninitialized f64 slots as uninitialized i64 slots is sound.
            let as_int: &mut [MaybeUninit<i64>] = unsafe {
                std::slice::from_raw_parts_mut(
                    spare.as_mut_ptr().cast::<MaybeUninit<i64>>(),
                    spare.len(),
                )
            };
            let progress = simple_decompress_into_uninit(p.val_col, as_int)?;
            if progress.n_processed != n || !progress.finished {
                return Err(SegmentError::Corrupt("column length differs from header"));
            }
            // SAFETY: all n slots were initialized (with i64 bit patterns,
            // every one of which is a valid f64 bit pattern).
            unsafe { vals.set_len(n) };
            let base = p.base;
            for v in vals.iter_mut() {
                *v = (v.to_bits() as i64) as f64 * base;
            }
        }
    }
    if ts[0] != p.info.min_ts || ts[n - 1] != p.info.max_ts {
        ts.clear();
        vals.clear();
        return Err(SegmentError::Corrupt("timestamp bounds differ from header"));
    }
    Ok(p.info)
}

/// Decodes into new vectors.
pub fn decode(bytes: &[u8]) -> Result<(Vec<i64>, Vec<f64>), SegmentError> {
    let (mut ts, mut vals) = (Vec::new(), Vec::new());
    decode_into(bytes, &mut ts, &mut vals)?;
    Ok((ts, vals))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(ts: &[i64], vals: &[f64]) -> Vec<u8> {
        let b = encode(ts, vals).unwrap();
        let (t2, v2) = decode(&b).unwrap();
        assert_eq!(t2, ts);
        assert_eq!(v2.len(), vals.len());
        for (a, b) in v2.iter().zip(vals) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        b
    }

    #[test]
    fn roundtrips() {
        roundtrip(&[], &[]);
        roundtrip(&[5], &[1.25]);
        roundtrip(&[1, 1, 2], &[-0.0, f64::NAN, f64::INFINITY]);
        let ts: Vec<i64> = (0..5000).map(|i| i * 1_000_000).collect();
        let vals: Vec<f64> = (0..5000)
            .map(|i| ((i % 37) as f64) * (10.0 / 65536.0))
            .collect();
        let b = roundtrip(&ts, &vals);
        assert_eq!(info(&b).unwrap().encoding, ValueEncoding::ScaledInt);
        let vals: Vec<f64> = (0..5000).map(|i| (i as f64).sin()).collect();
        let b = roundtrip(&ts, &vals);
        assert_eq!(info(&b).unwrap().encoding, ValueEncoding::Float);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            encode(&[1, 2], &[1.0]),
            Err(SegmentError::LengthMismatch { .. })
        ));
        assert_eq!(encode(&[2, 1], &[1.0, 1.0]), Err(SegmentError::Unsorted(1)));
        assert_eq!(decode(b"AETS"), Err(SegmentError::Truncated));
        assert_eq!(decode(b"nope"), Err(SegmentError::BadMagic));
        assert!(matches!(decode(&[0u8; 48]), Err(SegmentError::BadMagic)));
    }

    #[test]
    fn header_reads_what_info_verifies_without_the_payload() {
        let ts: Vec<i64> = (0..1000).map(|i| 7 + i * 3).collect();
        let vals: Vec<f64> = ts.iter().map(|&t| t as f64 * 0.5).collect();
        let mut b = encode(&ts, &vals).unwrap();
        assert_eq!(header(&b).unwrap(), info(&b).unwrap());
        // A flipped payload byte: the header still reads (an estimate may count it), the
        // checked paths refuse it.
        let last = b.len() - 1;
        b[last] ^= 0x40;
        assert_eq!(header(&b).unwrap().count, 1000);
        assert!(matches!(info(&b), Err(SegmentError::Checksum { .. })));
        assert!(matches!(decode(&b), Err(SegmentError::Checksum { .. })));
        // What the header alone can tell is still refused.
        assert_eq!(header(&b[..b.len() - 1]), Err(SegmentError::Truncated));
        let mut inverted = encode(&ts, &vals).unwrap();
        inverted[12..20].copy_from_slice(&i64::MAX.to_le_bytes());
        assert_eq!(
            header(&inverted),
            Err(SegmentError::Corrupt("inconsistent header"))
        );
    }

    #[test]
    fn detect_base_cases() {
        assert_eq!(detect_base(&[0.5, 1.0, 2.5]), Some(0.5));
        assert_eq!(detect_base(&[3.0, 3.0]), Some(3.0));
        assert_eq!(detect_base(&[0.0]), None);
        assert_eq!(detect_base(&[0.1, 0.2, 0.3]), None); // not exact multiples in binary
        assert_eq!(detect_base(&[1.0, f64::NAN]), None);
    }
}
