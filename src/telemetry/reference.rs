//! Obviously-correct multi-pass reference for [`crate::telemetry::agg`], used by
//! property tests and as the benchmark baseline. Not for production paths.
//!
//! Steps: group points into buckets with a per-point loop; per bucket compute
//! the (compensated) sum, then the mean (of deviations from the first value,
//! see [`two_pass`]), then `M2` as the sum of squared deviations from that
//! mean with the textbook correction term `- (sum of deviations)^2
//! / n` (Bjorck's corrected two-pass algorithm, which cancels the rounding
//! error of the computed mean and keeps the reference accurate on
//! large-offset data), the median by sorting, and anomalies by recomputing
//! the statistics of every prefix from scratch (O(n^2)).

use crate::telemetry::agg::{AggConfig, AggError, Anomaly, Bucketing};

/// Plain statistics of one bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct RefBucket {
    pub start_ns: i64,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first: (i64, f64),
    pub last: (i64, f64),
    pub mean: f64,
    pub m2: f64,
    pub variance: f64,
    pub median: Option<f64>,
}

/// Output of [`reference_aggregate`].
#[derive(Clone, Debug, PartialEq)]
pub struct RefOutput {
    pub buckets: Vec<RefBucket>,
    /// Statistics over all points, computed directly (not merged).
    pub total: Option<RefBucket>,
    pub anomalies: Vec<Anomaly>,
}

/// Neumaier-compensated sum: error ~eps * |sum| instead of ~n * eps * sum|x|.
pub fn compensated_sum(vals: &[f64]) -> f64 {
    let mut sum = 0.0f64;
    let mut c = 0.0f64;
    for &v in vals {
        let t = sum + v;
        if sum.abs() >= v.abs() {
            c += (sum - t) + v;
        } else {
            c += (v - t) + sum;
        }
        sum = t;
    }
    sum + c
}

/// `(sum, mean, M2)`, in three plain passes: compensated sum; mean of the
/// deviations `y = x - x[0]` (exact for nearby values by Sterbenz's lemma) by
/// compensated sum / n; then the corrected two-pass M2 of `y`,
/// `sum (y - m)^2 - (sum (y - m))^2 / n`. Working on `y` keeps the reference
/// exact to ~n*eps relative even for 1e12 offsets with a 1e-3 spread, where
/// the mean itself cannot be stored to better than 6e-5.
pub fn two_pass(vals: &[f64]) -> (f64, f64, f64) {
    let (sum, c, m, m2) = shifted_two_pass(vals);
    (sum, c + m, m2)
}

/// `(sum, shift, mean of x - shift, M2)` with `shift = vals[0]`; see
/// [`two_pass`].
pub fn shifted_two_pass(vals: &[f64]) -> (f64, f64, f64, f64) {
    let n = vals.len() as f64;
    let sum = compensated_sum(vals);
    let c = vals[0];
    let y: Vec<f64> = vals.iter().map(|&x| x - c).collect();
    let m = compensated_sum(&y) / n;
    let mut sq = 0.0;
    let mut dev = 0.0;
    for &v in &y {
        sq += (v - m) * (v - m);
        dev += v - m;
    }
    (sum, c, m, (sq - dev * dev / n).max(0.0))
}

fn stats(start_ns: i64, ts: &[i64], vals: &[f64], median: bool) -> RefBucket {
    let (sum, mean, m2) = two_pass(vals);
    let mut min = vals[0];
    let mut max = vals[0];
    for &v in vals {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let median = median.then(|| {
        let mut s = vals.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            s[n / 2 - 1].midpoint(s[n / 2])
        }
    });
    RefBucket {
        start_ns,
        count: vals.len() as u64,
        sum,
        min,
        max,
        first: (ts[0], vals[0]),
        last: (ts[ts.len() - 1], vals[vals.len() - 1]),
        mean,
        m2,
        variance: m2 / vals.len() as f64,
        median,
    }
}

/// Aggregates the whole input at once. Same contract as
/// [`crate::telemetry::agg::Aggregator`] followed by `flush()`.
pub fn reference_aggregate(
    ts: &[i64],
    vals: &[f64],
    cfg: &AggConfig,
) -> Result<RefOutput, AggError> {
    if ts.len() != vals.len() {
        return Err(AggError::LengthMismatch {
            timestamps: ts.len(),
            values: vals.len(),
        });
    }
    for k in 1..ts.len() {
        if ts[k] < ts[k - 1] {
            return Err(AggError::OutOfOrder {
                index: k,
                previous: ts[k - 1],
                ts: ts[k],
            });
        }
    }
    // Pass 1: assign bucket keys.
    let mut groups: Vec<(i64, usize, usize)> = Vec::new(); // (start, from, to)
    for (k, &t) in ts.iter().enumerate() {
        let start = match cfg.bucketing {
            Bucketing::TimeWidth(w) if w <= 0 => return Err(AggError::InvalidWidth(w)),
            Bucketing::TimeWidth(w) => t
                .checked_sub(t.rem_euclid(w))
                .ok_or(AggError::TimestampOutOfRange(t))?,
            Bucketing::PointCount(0) => return Err(AggError::InvalidPointCount),
            Bucketing::PointCount(c) => ts[(k as u64 / c * c) as usize],
        };
        let same = match (groups.last(), cfg.bucketing) {
            (Some(g), Bucketing::TimeWidth(_)) => g.0 == start,
            (Some(g), Bucketing::PointCount(c)) => ((g.2 - g.1) as u64) < c,
            (None, _) => false,
        };
        if same {
            groups.last_mut().expect("checked").2 = k + 1;
        } else {
            groups.push((start, k, k + 1));
        }
    }
    // Pass 2: statistics per bucket.
    let buckets = groups
        .iter()
        .map(|&(s, a, b)| stats(s, &ts[a..b], &vals[a..b], cfg.median))
        .collect();
    let total = (!ts.is_empty()).then(|| stats(ts[0], ts, vals, false));
    // Pass 3: anomalies against freshly recomputed prefix statistics.
    let mut anomalies = Vec::new();
    if let Some(a) = cfg.anomaly {
        for k in 0..vals.len() {
            if (k as u64) < a.warmup || k == 0 {
                continue;
            }
            let (_, c, m, m2) = shifted_two_pass(&vals[..k]);
            let sd = (m2 / k as f64).sqrt();
            if sd > 0.0 {
                let z = ((vals[k] - c) - m) / sd;
                if z.abs() > a.threshold {
                    anomalies.push(Anomaly {
                        index: k as u64,
                        ts: ts[k],
                        value: vals[k],
                        z,
                    });
                }
            }
        }
    }
    Ok(RefOutput {
        buckets,
        total,
        anomalies,
    })
}
