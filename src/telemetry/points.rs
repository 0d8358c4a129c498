//! One series' points as sets: sorted and deduplicated by timestamp, and cut into segments
//! within the limits.
//!
//! A point is identified by (series, timestamp) on every path: of several values given for
//! one timestamp the last wins — the last in a client's batch at the edge
//! ([`sort_dedupe`]), the latest write (log index, seq) among stored segments ([`dedupe`]).

use bytes::Bytes;

use super::command::{SeriesSegment, MAX_SEGMENT_POINTS, MAX_SEGMENT_SPAN_NS};
use super::segment;

/// A raw point with its write order (log index, seq): the latest write of a timestamp wins.
pub(crate) type OrderedPoint = (i64, (u64, u32), f64);

/// Sorts one series' points by timestamp and keeps the last value given for a timestamp.
pub fn sort_dedupe(mut points: Vec<(i64, f64)>) -> (Vec<i64>, Vec<f64>) {
    // A stable sort keeps the order of equal timestamps: the last one given wins.
    points.sort_by_key(|p| p.0);
    let len = points.len();
    last_per_timestamp(points, len)
}

/// Sorts by (timestamp, write order) and keeps the latest write of each timestamp.
pub(crate) fn dedupe(mut pts: Vec<OrderedPoint>) -> (Vec<i64>, Vec<f64>) {
    pts.sort_by_key(|p| (p.0, p.1));
    let len = pts.len();
    last_per_timestamp(pts.into_iter().map(|(t, _, v)| (t, v)), len)
}

/// Points sorted by timestamp, as columns, keeping the last of each run of equal timestamps.
fn last_per_timestamp(
    sorted: impl IntoIterator<Item = (i64, f64)>,
    capacity: usize,
) -> (Vec<i64>, Vec<f64>) {
    let mut ts: Vec<i64> = Vec::with_capacity(capacity);
    let mut vals: Vec<f64> = Vec::with_capacity(capacity);
    for (t, v) in sorted {
        if ts.last() == Some(&t) {
            if let Some(l) = vals.last_mut() {
                *l = v;
            }
        } else {
            ts.push(t);
            vals.push(v);
        }
    }
    (ts, vals)
}

/// Splits sorted, deduplicated points of one series into segments within the limits.
pub fn segments_of(
    series: &str,
    ts: &[i64],
    vals: &[f64],
) -> std::result::Result<Vec<SeriesSegment>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ts.len() {
        let limit = ts[i].saturating_add(MAX_SEGMENT_SPAN_NS);
        let j = ts
            .partition_point(|t| *t <= limit)
            .min(i + MAX_SEGMENT_POINTS);
        let bytes = segment::encode(&ts[i..j], &vals[i..j]).map_err(|e| e.to_string())?;
        out.push(SeriesSegment {
            series: series.to_owned(),
            segment: Bytes::from(bytes),
        });
        i = j;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keeps_latest_write() {
        let pts = vec![
            (5, (2, 0), 1.0),
            (3, (1, 0), 2.0),
            (5, (1, 0), 9.0),
            (4, (3, 1), 4.0),
        ];
        assert_eq!(dedupe(pts), (vec![3, 4, 5], vec![2.0, 4.0, 1.0]));
        assert_eq!(
            sort_dedupe(vec![(2, 1.0), (1, 5.0), (2, 3.0)]),
            (vec![1, 2], vec![5.0, 3.0])
        );
    }

    #[test]
    fn segments_respect_span_and_count_limits() {
        let ts: Vec<i64> = (0..200_000).map(|i| i * 50_000_000).collect(); // 20 Hz, ~2.8 h
        let vals: Vec<f64> = ts.iter().map(|t| (*t as f64).sin()).collect();
        let segs = segments_of("s", &ts, &vals).unwrap();
        let mut total = 0;
        for s in &segs {
            let info = segment::info(&s.segment).unwrap();
            assert!(info.count <= MAX_SEGMENT_POINTS);
            assert!(info.max_ts - info.min_ts <= MAX_SEGMENT_SPAN_NS);
            total += info.count;
        }
        assert_eq!(total, ts.len());
    }
}
