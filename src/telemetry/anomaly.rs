//! Anomalies over a query's raw points, by either method, reported alike (time, value,
//! score, high or low).
//!
//! * **z-score** ([`super::agg`]'s streaming detector, unchanged): each point against the
//!   mean and standard deviation of the points *before* it, after a warm-up.
//! * **MAD** (Iglewicz & Hoaglin's modified z-score): each point against the median of all
//!   the range's points, in units of their median absolute deviation,
//!   `0.6745 · (x − median) / MAD` (0.6745 makes the score a z-score for normal data).
//!   Robust where the z-score is not: a burst of outliers moves neither median nor MAD.
//!
//! ## MAD = 0
//!
//! When more than half of the points hold one value (a sensor that mostly reads a constant),
//! the MAD is 0 and the modified z-score is undefined. Flagging nothing there would hide
//! exactly the departures from that constant an operator looks for, so the score then uses
//! the mean absolute deviation around the median, scaled to estimate a standard deviation
//! for normal data: `(x − median) / (1.253314 · MeanAD)` (the substitution IBM's SPSS and
//! most references make). Only when every point holds the same value is that 0 too, and
//! then nothing deviates: nothing is flagged.

use super::agg::{median_in_place, Anomaly};

/// `|score|` strictly above this is anomalous, by default (Iglewicz & Hoaglin's 3.5).
pub const DEFAULT_MAD_THRESHOLD: f64 = 3.5;
/// Scales the MAD to a standard deviation for normal data (Φ⁻¹(3/4) ≈ 0.6745).
const MAD_SCALE: f64 = 0.6745;
/// Scales the mean absolute deviation to a standard deviation for normal data (√(π/2)).
const MEAN_AD_SCALE: f64 = 1.253314;

/// How anomalies are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyMethod {
    ZScore,
    Mad,
}

impl AnomalyMethod {
    /// The name on the wire: `zscore` or `mad`.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyMethod::ZScore => "zscore",
            AnomalyMethod::Mad => "mad",
        }
    }
}

/// Above or below the expected value: the sign of the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyKind {
    High,
    Low,
}

impl AnomalyKind {
    /// The name on the wire: `high` or `low`.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::High => "high",
            AnomalyKind::Low => "low",
        }
    }

    fn of(score: f64) -> Self {
        if score < 0.0 {
            AnomalyKind::Low
        } else {
            AnomalyKind::High
        }
    }
}

/// One anomalous point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalyOut {
    pub ts_ns: i64,
    pub value: f64,
    /// The z-score, or the modified z-score (MAD): signed, its magnitude above the threshold.
    pub score: f64,
    pub kind: AnomalyKind,
    pub method: AnomalyMethod,
}

impl AnomalyOut {
    /// A point the streaming z-score detector flagged.
    pub fn from_z(a: &Anomaly) -> Self {
        AnomalyOut {
            ts_ns: a.ts,
            value: a.value,
            score: a.z,
            kind: AnomalyKind::of(a.z),
            method: AnomalyMethod::ZScore,
        }
    }
}

/// The points of `(ts, vals)` whose modified z-score exceeds `threshold` in magnitude, in
/// time order. `scratch` is reused for the medians (one copy of the values: memory is
/// bounded by the caller's bound on the points).
pub fn mad_anomalies(
    ts: &[i64],
    vals: &[f64],
    threshold: f64,
    scratch: &mut Vec<f64>,
) -> Vec<AnomalyOut> {
    assert_eq!(ts.len(), vals.len(), "column length mismatch");
    assert!(
        threshold.is_finite() && threshold > 0.0,
        "validated by the caller"
    );
    scratch.clear();
    scratch.extend_from_slice(vals);
    let Some(median) = median_in_place(scratch) else {
        return Vec::new();
    };
    for (d, v) in scratch.iter_mut().zip(vals) {
        *d = (v - median).abs();
    }
    let mad = median_in_place(scratch).unwrap_or(0.0);
    // The factor that turns a deviation from the median into a score (see the module doc).
    let per_unit = if mad > 0.0 {
        MAD_SCALE / mad
    } else {
        let mean_ad = vals.iter().map(|v| (v - median).abs()).sum::<f64>() / vals.len() as f64;
        if mean_ad > 0.0 {
            1.0 / (MEAN_AD_SCALE * mean_ad)
        } else {
            return Vec::new();
        }
    };
    ts.iter()
        .zip(vals)
        .filter_map(|(&t, &v)| {
            let score = (v - median) * per_unit;
            (score.abs() > threshold).then_some(AnomalyOut {
                ts_ns: t,
                value: v,
                score,
                kind: AnomalyKind::of(score),
                method: AnomalyMethod::Mad,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(vals: &[f64], threshold: f64) -> Vec<(i64, f64, AnomalyKind)> {
        let ts: Vec<i64> = (0..vals.len() as i64).collect();
        mad_anomalies(&ts, vals, threshold, &mut Vec::new())
            .into_iter()
            .map(|a| (a.ts_ns, (a.score * 1e4).round() / 1e4, a.kind))
            .collect()
    }

    #[test]
    fn modified_z_scores_by_hand() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 100.0];
        // Median (3+4)/2 = 3.5; deviations 2.5 1.5 .5 .5 1.5 96.5 -> MAD 1.5.
        assert_eq!(
            run(&v, 3.5),
            vec![(
                5,
                (0.6745 * 96.5 / 1.5 * 1e4_f64).round() / 1e4,
                AnomalyKind::High
            )]
        );
        let low = [10.0, 11.0, 9.0, 10.0, -50.0, 10.0, 10.5];
        let got = run(&low, 3.5);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].2), (4, AnomalyKind::Low));
        assert!(got[0].1 < -3.5);
        // A lower threshold flags more; nothing when no point deviates enough.
        assert!(run(&low, 1.0).len() > 1);
        assert!(run(&[1.0, 2.0, 3.0], 3.5).is_empty());
        assert!(run(&[], 3.5).is_empty());
    }

    /// A burst of outliers hides itself from the z-score (it inflates the standard
    /// deviation) but not from the MAD.
    #[test]
    fn robust_where_the_z_score_is_not() {
        let mut v: Vec<f64> = (0..200).map(|i| 5.0 + f64::from(i % 7) * 0.1).collect();
        for x in &mut v[100..110] {
            *x = 50.0;
        }
        let flagged: Vec<i64> = run(&v, 3.5).iter().map(|a| a.0).collect();
        assert_eq!(flagged, (100..110).collect::<Vec<_>>());
    }

    /// MAD = 0 (most points equal): the mean absolute deviation stands in; every point
    /// equal: nothing deviates, nothing is flagged.
    #[test]
    fn zero_mad_falls_back_to_the_mean_absolute_deviation() {
        let mut v = vec![7.0; 100];
        v[40] = 8.0;
        v[70] = 6.0;
        // Median 7, MAD 0, MeanAD 2/100 -> score ±1/(1.253314·0.02) = ±39.89.
        let got = run(&v, 3.5);
        assert_eq!(
            got,
            vec![
                (40, 39.8942, AnomalyKind::High),
                (70, -39.8942, AnomalyKind::Low)
            ]
        );
        assert!(run(&[7.0; 50], 3.5).is_empty());
    }
}
