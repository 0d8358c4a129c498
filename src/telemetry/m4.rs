//! M4 downsampling (Jugel et al., VLDB 2014): for each pixel column of a
//! chart keep the first, last, minimum and maximum point. Rendering those (at
//! most 4 per column) as a line chart is pixel-identical to rendering every
//! point, so a query never needs to return more than `4 * width` points.

use crate::telemetry::agg::gallop;
use thiserror::Error;

/// Errors of [`m4`].
#[derive(Debug, Error, Clone, PartialEq)]
pub enum M4Error {
    #[error("column length mismatch: {timestamps} timestamps, {values} values")]
    LengthMismatch { timestamps: usize, values: usize },
    #[error("empty or inverted time range [{0}, {1})")]
    EmptyRange(i64, i64),
    #[error("pixel width must be > 0")]
    ZeroWidth,
    #[error("timestamps must be non-decreasing (index {0})")]
    Unsorted(usize),
}

/// A point kept by M4; `index` is its position in the input columns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct M4Point {
    pub index: usize,
    pub ts: i64,
    pub value: f64,
}

/// The four extreme points of one non-empty pixel column.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct M4Column {
    /// Column number in `0..width`.
    pub pixel: u32,
    pub first: M4Point,
    pub last: M4Point,
    /// Earliest point with the minimum value (NaN values are skipped unless
    /// the column holds only NaN).
    pub min: M4Point,
    /// Earliest point with the maximum value.
    pub max: M4Point,
}

impl M4Column {
    /// The distinct points of the column in input order (1 to 4 of them).
    pub fn points(&self) -> impl Iterator<Item = M4Point> {
        let mut p = [self.first, self.min, self.max, self.last];
        p.sort_by_key(|x| x.index);
        let mut prev = usize::MAX;
        p.into_iter().filter(move |x| {
            let keep = x.index != prev;
            prev = x.index;
            keep
        })
    }
}

/// Computes M4 columns over `[t_start, t_end)` at `width` pixels. Points
/// outside the range are ignored; pixel `p` covers timestamps `t` with
/// `floor((t - t_start) * width / (t_end - t_start)) == p` (exact integer
/// arithmetic in i128). Empty columns are omitted.
pub fn m4(
    ts: &[i64],
    vals: &[f64],
    t_start: i64,
    t_end: i64,
    width: u32,
) -> Result<Vec<M4Column>, M4Error> {
    if ts.len() != vals.len() {
        return Err(M4Error::LengthMismatch {
            timestamps: ts.len(),
            values: vals.len(),
        });
    }
    if t_end <= t_start {
        return Err(M4Error::EmptyRange(t_start, t_end));
    }
    if width == 0 {
        return Err(M4Error::ZeroWidth);
    }
    if let Some(k) = ts.windows(2).position(|w| w[1] < w[0]) {
        return Err(M4Error::Unsorted(k + 1));
    }
    let span = i128::from(t_end) - i128::from(t_start);
    let w = i128::from(width);
    let lo = ts.partition_point(|&t| t < t_start);
    let hi = ts.partition_point(|&t| t < t_end);
    let mut out = Vec::with_capacity((width as usize).min(hi - lo));
    let mut i = lo;
    while i < hi {
        let p = ((i128::from(ts[i]) - i128::from(t_start)) * w / span) as u32;
        // First timestamp of pixel p + 1: t_start + ceil((p + 1) * span / w).
        let next = i128::from(t_start) + (i128::from(p + 1) * span + w - 1) / w;
        let j = if next >= i128::from(t_end) {
            hi
        } else {
            gallop(&ts[..hi], i, next as i64)
        };
        let pt = |k: usize| M4Point {
            index: k,
            ts: ts[k],
            value: vals[k],
        };
        let (mut mn, mut mx) = (i, i);
        for k in i + 1..j {
            let v = vals[k];
            if v < vals[mn] || vals[mn].is_nan() && !v.is_nan() {
                mn = k;
            }
            if v > vals[mx] || vals[mx].is_nan() && !v.is_nan() {
                mx = k;
            }
        }
        out.push(M4Column {
            pixel: p,
            first: pt(i),
            last: pt(j - 1),
            min: pt(mn),
            max: pt(mx),
        });
        i = j;
    }
    Ok(out)
}

/// Flattens M4 columns into the point list to draw, in input order.
pub fn m4_points(columns: &[M4Column]) -> Vec<M4Point> {
    columns.iter().flat_map(M4Column::points).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_extremes_per_pixel() {
        let ts: Vec<i64> = (0..100).collect();
        let vals: Vec<f64> = (0..100).map(|i| ((i * 37) % 17) as f64).collect();
        let cols = m4(&ts, &vals, 0, 100, 10).unwrap();
        assert_eq!(cols.len(), 10);
        for (p, c) in cols.iter().enumerate() {
            let r = p * 10..p * 10 + 10;
            assert_eq!(c.pixel as usize, p);
            assert_eq!(c.first.index, r.start);
            assert_eq!(c.last.index, r.end - 1);
            let mn = vals[r.clone()]
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min);
            let mx = vals[r.clone()]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(c.min.value, mn);
            assert_eq!(c.max.value, mx);
        }
        let pts = m4_points(&cols);
        assert!(pts.windows(2).all(|w| w[0].index < w[1].index));
        assert!(pts.len() <= 40);
    }

    #[test]
    fn uneven_pixels_and_range_clipping() {
        let ts: Vec<i64> = (-5..20).collect();
        let vals = vec![1.0; ts.len()];
        // 7 ns over 3 pixels: pixel = floor(t * 3 / 7).
        let cols = m4(&ts, &vals, 0, 7, 3).unwrap();
        let spans: Vec<(u32, i64, i64)> = cols
            .iter()
            .map(|c| (c.pixel, c.first.ts, c.last.ts))
            .collect();
        assert_eq!(spans, vec![(0, 0, 2), (1, 3, 4), (2, 5, 6)]);
        for t in 0..7i64 {
            let p = (t * 3 / 7) as u32;
            assert!(cols
                .iter()
                .any(|c| c.pixel == p && c.first.ts <= t && t <= c.last.ts));
        }
        assert_eq!(m4(&ts, &vals, 5, 5, 3), Err(M4Error::EmptyRange(5, 5)));
        assert_eq!(m4(&ts, &vals, 0, 5, 0), Err(M4Error::ZeroWidth));
        assert!(m4(&[i64::MIN, i64::MAX], &[1.0, 2.0], i64::MIN, i64::MAX, 1000).is_ok());
    }
}
