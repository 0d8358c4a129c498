//! Queries over a series: buckets stitched from raw segments and rollup tiers, summary
//! statistics, percentiles, anomalies and M4 — answered from one point-in-time view, with
//! the retention rule derived from that same view (a function of replicated state only).
//!
//! ## Exactly `[start, end)`
//!
//! The range is covered by pieces: raw ranges (where raw points are retained), minute
//! buckets and hour buckets. A bucket of a tier is used only where it lies inside the range,
//! and the edges of a range that do not fall on a tier's bucket edges are served by the next
//! finer tier (hour → minute → raw). Only where no finer tier is retained is a coarser
//! bucket used across an edge: then the answer says so (`notes`) and reports the range it
//! effectively covers (`effective_start_ns`, `effective_end_ns`); never silently. Each tier
//! bucket is used once, in the output bucket that holds its start.
//!
//! ## Buckets
//!
//! Either of a fixed width (aligned to its multiples since the epoch; derived from a target
//! number of points if asked), or between explicit edges (calendar buckets: local midnights
//! of a time zone, 23, 24 or 25 hours apart). Both are planned by the same rule, bucket by
//! bucket for edges: the coarsest tier that fits inside it, its edges from finer tiers, so a
//! bucket holds exactly the points a fixed-width bucket over the same span would.
//!
//! ## Anomalies and drift
//!
//! Anomalies (z-score and MAD, [`super::anomaly`]) come from the raw points of the range
//! wherever they are retained. Drift ([`super::drift`]) comes from the means of consecutive
//! windows, planned as buckets of the window's width: from rollups where raw points expired.

use std::collections::BTreeMap;

use super::agg::{gallop, median_in_place, AggConfig, Aggregator, AnomalyConfig};
use super::anomaly::{mad_anomalies, AnomalyOut};
use super::command::{MAX_TS, MIN_TS};
pub use super::drift::WindowDrift as DriftOut;
use super::drift::{drift_over_windows, window_warmup, CusumConfig};
use super::keys::{decode_bucket, decode_series_id, rollup_key};
use super::moments::Moments;
use super::points::dedupe;
use super::read::{read_opts, read_raw};
use super::retention::{floor, load_policies, Cutoffs, ReadView, HOUR_NS, MINUTE_NS};
use super::retention::{TIER_HOUR, TIER_MINUTE};
use super::rollup::RollupBucket;
use super::sketch::DDSketch;
use crate::storage::sm_db::{SmDb, CF_TM_ROLLUP, CF_TM_SERIES};
use crate::storage::StorageError;
use crate::time::format_timestamp;

/// Which tier serves a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierChoice {
    /// The coarsest tier that serves the bucket width, where it is retained.
    Auto,
    Raw,
    Minute,
    Hour,
}

/// A tier of stored data, finest first: raw points, then the 1-minute and 1-hour rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Raw,
    Minute,
    Hour,
}

impl Tier {
    /// The name on the wire and in messages: `raw`, `minute` or `hour`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Raw => "raw",
            Tier::Minute => "minute",
            Tier::Hour => "hour",
        }
    }

    /// The rollup tier with id `tier` in rollup keys.
    fn of_rollup(tier: u8) -> Tier {
        if tier == TIER_HOUR {
            Tier::Hour
        } else {
            Tier::Minute
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct QuerySpec {
    pub series: String,
    pub start_ns: i64,
    pub end_ns: i64,
    /// Bucket width; 0 with `target_points` set derives it.
    pub bucket_ns: i64,
    pub target_points: u32,
    pub tier: TierChoice,
    /// Explicit bucket boundaries instead of `bucket_ns`/`target_points` (both 0): strictly
    /// increasing, inside `[start, end]`. The range's start and end are boundaries too
    /// (added where not given): bucket `i` is `[b_i, b_{i+1})` and every point of the range
    /// lies in one bucket.
    pub edges: Option<Vec<i64>>,
    /// z-score threshold for anomalies over raw points (None: no z-score anomalies).
    pub anomaly_z: Option<f64>,
    /// Modified z-score threshold for MAD anomalies over raw points (None: none; the usual
    /// threshold is [`super::anomaly::DEFAULT_MAD_THRESHOLD`]).
    pub anomaly_mad: Option<f64>,
    /// Pixel columns for M4 (0: none).
    pub m4_width: u32,
    /// Exact per-bucket medians (from raw points, where they are retained).
    pub median: bool,
    /// Change points in the means of consecutive windows (None: no drift detection).
    pub drift: Option<DriftSpec>,
}

impl QuerySpec {
    /// A query of `[start_ns, end_ns)` with nothing asked yet (no buckets, tier auto): set
    /// the fields wanted with `QuerySpec { bucket_ns, ..QuerySpec::range(..) }`.
    pub fn range(series: impl Into<String>, start_ns: i64, end_ns: i64) -> Self {
        QuerySpec {
            series: series.into(),
            start_ns,
            end_ns,
            bucket_ns: 0,
            target_points: 0,
            tier: TierChoice::Auto,
            edges: None,
            anomaly_z: None,
            anomaly_mad: None,
            m4_width: 0,
            median: false,
            drift: None,
        }
    }
}

/// Drift detection over a query's range: two-sided CUSUM over the means of consecutive
/// windows (aligned to multiples of `window_ns` since the epoch, like buckets; empty windows
/// left out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftSpec {
    pub window_ns: i64,
    /// CUSUM's decision threshold `h`, in baseline standard deviations of the window means
    /// (None: [`CusumConfig`]'s default, 10).
    pub threshold: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BucketOut {
    pub start_ns: i64,
    /// Exclusive: `start_ns` + the width, or the next edge (`i64::MAX` where that overflows).
    pub end_ns: i64,
    pub moments: Moments,
    pub sketch: DDSketch,
    pub median: Option<f64>,
    /// The coarsest tier that contributed.
    pub tier: Tier,
}

#[derive(Debug, Clone, PartialEq)]
pub struct M4Out {
    pub pixel: u32,
    pub first: (i64, f64),
    pub last: (i64, f64),
    pub min: (i64, f64),
    pub max: (i64, f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    /// The bucket width (0 with explicit edges).
    pub bucket_ns: i64,
    pub buckets: Vec<BucketOut>,
    pub summary: Moments,
    pub summary_sketch: DDSketch,
    /// Anomalies by every method asked for, in time order.
    pub anomalies: Vec<AnomalyOut>,
    pub m4: Vec<M4Out>,
    /// Changes in the window means, in time order.
    pub drift: Vec<DriftOut>,
    /// Raw points read.
    pub raw_points: u64,
    /// The range the answer covers: the query's, unless only a coarser tier was retained
    /// at an edge.
    pub effective_start_ns: i64,
    pub effective_end_ns: i64,
    /// What the answer could not do as asked, and why (widened edges, expired raw points
    /// for anomalies or medians, buckets coarser than the width).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Invalid(String),
    #[error("series {0:?} not found")]
    NotFound(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Most buckets one query returns.
pub const MAX_QUERY_BUCKETS: i64 = 100_000;
/// Most raw points one query reads (bounds memory and time).
pub const MAX_QUERY_RAW_POINTS: usize = 50_000_000;
/// Most anomalies one query returns: a threshold that flags most points would otherwise
/// answer with as many anomalies as raw points, far beyond what any reader uses or a
/// response carries.
pub const MAX_QUERY_ANOMALIES: usize = 100_000;

/// The smallest width ≥ `w` a tier can serve: whole hours, whole minutes, or any width
/// below a minute. Saturates instead of overflowing.
pub(crate) fn nice_width(w: i64) -> i64 {
    let up = |unit: i64| {
        let n = w / unit + i64::from(w % unit != 0);
        n.checked_mul(unit).unwrap_or(i64::MAX / unit * unit)
    };
    if w >= HOUR_NS {
        up(HOUR_NS)
    } else if w >= MINUTE_NS {
        up(MINUTE_NS)
    } else {
        w.max(1)
    }
}

/// Output buckets (aligned to multiples of `width`) that `[start, end)` touches.
fn bucket_count(start: i64, end: i64, width: i64) -> i64 {
    let first = floor(start, width);
    let span = end.saturating_sub(first);
    span / width + i64::from(span % width != 0)
}

/// The bucket width for `target` buckets at most over `[start, end)`.
fn width_for_points(start: i64, end: i64, target: u32) -> i64 {
    let p = i64::from(target);
    let span = end - start;
    let mut w = nice_width(span / p + i64::from(span % p != 0));
    // Alignment to multiples of the width can add a bucket: widen until it fits.
    while bucket_count(start, end, w) > p && w < i64::MAX / 2 {
        let need = bucket_count(start, end, w) - p;
        let unit = if w >= HOUR_NS {
            HOUR_NS
        } else if w >= MINUTE_NS {
            MINUTE_NS
        } else {
            1
        };
        w = nice_width(w.saturating_add((w / p).max(unit).saturating_mul(need.min(4))));
    }
    w
}

fn ceil(t: i64, width: i64) -> i64 {
    let f = floor(t, width);
    if f == t {
        t
    } else {
        f.saturating_add(width)
    }
}

/// The pieces that cover a query: raw ranges, and ranges of minute and hour buckets (by
/// bucket start, `[lo, hi)`) to read. Ranges, not sets: a long range of hours stays small.
#[derive(Default)]
struct Plan {
    raw: Vec<(i64, i64)>,
    minutes: Vec<(i64, i64)>,
    hours: Vec<(i64, i64)>,
    /// Parts with nothing retained in the tier asked for.
    expired: Vec<(i64, i64, Tier)>,
}

/// Adds `[lo, hi)` to a list of ranges.
fn add_range(ranges: &mut Vec<(i64, i64)>, lo: i64, hi: i64) {
    if lo < hi {
        ranges.push((lo, hi));
    }
}

/// Sorted, with overlapping and touching ranges merged: every bucket is used once.
fn normalize(ranges: &mut Vec<(i64, i64)>) {
    ranges.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for &(lo, hi) in ranges.iter() {
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    *ranges = out;
}

impl Plan {
    /// The range the pieces cover, where it reaches beyond `[start, end)`.
    fn widened(&self, start: i64, end: i64) -> Option<(i64, i64)> {
        let all = || self.minutes.iter().chain(&self.hours);
        let lo = all().map(|r| r.0).fold(start, i64::min);
        let hi = all().map(|r| r.1).fold(end, i64::max);
        (lo < start || hi > end).then_some((lo, hi))
    }

    fn finish(&mut self) {
        normalize(&mut self.raw);
        normalize(&mut self.minutes);
        normalize(&mut self.hours);
        // Bucket by bucket (edges), expired parts come in pieces: one note per stretch.
        self.expired.sort_unstable_by_key(|e| (e.2, e.0));
        let mut merged: Vec<(i64, i64, Tier)> = Vec::with_capacity(self.expired.len());
        for &(lo, hi, tier) in &self.expired {
            match merged.last_mut() {
                Some(last) if last.2 == tier && lo <= last.1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi, tier)),
            }
        }
        self.expired = merged;
    }

    /// `[lo, dead_hi)` has expired in `tier`: served by `coarser` if given, else reported.
    fn expired_part(
        &mut self,
        lo: i64,
        dead_hi: i64,
        tier: Tier,
        coarser: Option<impl FnOnce(&mut Plan, i64, i64)>,
    ) {
        if lo >= dead_hi {
            return;
        }
        match coarser {
            Some(serve) => serve(self, lo, dead_hi),
            None => self.expired.push((lo, dead_hi, tier)),
        }
    }

    /// `[lo, hi)` from raw points; where they expired, from minute buckets (widened).
    fn raw_range(&mut self, lo: i64, hi: i64, cut: &Cutoffs, fallback: bool) {
        if lo >= hi {
            return;
        }
        let coarser = |p: &mut Plan, lo, hi| {
            p.minute_range(floor(lo, MINUTE_NS), ceil(hi, MINUTE_NS), cut, true)
        };
        self.expired_part(lo, hi.min(cut.raw), Tier::Raw, fallback.then_some(coarser));
        add_range(&mut self.raw, lo.max(cut.raw), hi);
    }

    /// `[lo, hi)` from minute buckets inside it, edges from raw; where minutes expired,
    /// from hour buckets (widened).
    fn minute_range(&mut self, lo: i64, hi: i64, cut: &Cutoffs, fallback: bool) {
        if lo >= hi {
            return;
        }
        let (a, b) = (ceil(lo, MINUTE_NS), floor(hi, MINUTE_NS));
        if a >= b {
            // Inside one minute.
            if fallback {
                self.raw_range(lo, hi, cut, true);
            } else {
                self.minute_bucket(floor(lo, MINUTE_NS), cut);
            }
            return;
        }
        if fallback {
            self.raw_range(lo, a, cut, true);
            self.raw_range(b, hi, cut, true);
        } else {
            if lo < a {
                self.minute_bucket(floor(lo, MINUTE_NS), cut);
            }
            if b < hi {
                self.minute_bucket(b, cut);
            }
        }
        // Dead minutes lie in whole dead hours (the minute cutoff is hour-aligned).
        let coarser =
            |p: &mut Plan, lo, hi| p.hour_range(floor(lo, HOUR_NS), ceil(hi, HOUR_NS), cut, false);
        self.expired_part(
            a,
            b.min(cut.minute),
            Tier::Minute,
            fallback.then_some(coarser),
        );
        add_range(&mut self.minutes, a.max(cut.minute), b);
    }

    /// One minute bucket across an edge (a forced minute tier).
    fn minute_bucket(&mut self, m: i64, cut: &Cutoffs) {
        if m >= cut.minute {
            add_range(&mut self.minutes, m, m + MINUTE_NS);
        }
    }

    /// `[lo, hi)` from hour buckets inside it; the edges from minutes (and raw) when
    /// `fine_edges`, else from the hour buckets across them (widened).
    fn hour_range(&mut self, lo: i64, hi: i64, cut: &Cutoffs, fine_edges: bool) {
        if lo >= hi {
            return;
        }
        let (a, b) = (ceil(lo, HOUR_NS), floor(hi, HOUR_NS));
        if fine_edges && a >= b {
            self.minute_range(lo, hi, cut, true);
            return;
        }
        let (a, b) = if fine_edges {
            self.minute_range(lo, a, cut, true);
            self.minute_range(b, hi, cut, true);
            (a, b)
        } else {
            (floor(lo, HOUR_NS), ceil(hi, HOUR_NS))
        };
        self.expired_part(
            a,
            b.min(cut.hour),
            Tier::Hour,
            None::<fn(&mut Plan, i64, i64)>,
        );
        add_range(&mut self.hours, a.max(cut.hour), b);
    }
}

/// How the range is cut into output buckets.
#[derive(Debug, Clone, PartialEq)]
enum Layout {
    /// Buckets of this width, aligned to its multiples since the epoch.
    Width(i64),
    /// Bucket `i` is `[b[i], b[i+1])`; `b` starts at the range's start and ends at its end.
    Edges(Vec<i64>),
}

impl Layout {
    /// The bucket `[start, end)` that holds time `t` (times before the range, from a rollup
    /// bucket across its start, go to the first bucket). `end` is None where it overflows.
    fn bucket_of(&self, range_start: i64, t: i64) -> (i64, Option<i64>) {
        let t = t.max(range_start);
        match self {
            Layout::Width(w) => {
                let s = floor(t, *w);
                (s, s.checked_add(*w))
            }
            Layout::Edges(b) => {
                // Clamped: a rollup bucket across the range's end starts inside the last
                // bucket anyway.
                let i = b.partition_point(|e| *e <= t).clamp(1, b.len() - 1) - 1;
                (b[i], Some(b[i + 1]))
            }
        }
    }

    /// Whether every boundary between buckets falls on a multiple of `unit` (the range's
    /// own edges are the `widened` note's concern).
    fn inner_edges_on(&self, unit: i64) -> bool {
        match self {
            Layout::Width(w) => w % unit == 0,
            Layout::Edges(b) => b[1..b.len() - 1].iter().all(|e| e % unit == 0),
        }
    }
}

/// Checks a query and says how its range is cut into buckets.
fn layout(q: &QuerySpec) -> Result<Layout, QueryError> {
    let invalid = |m: String| Err(QueryError::Invalid(m));
    if q.end_ns <= q.start_ns {
        return invalid(format!(
            "empty range: end {} <= start {}",
            q.end_ns, q.start_ns
        ));
    }
    if q.start_ns < MIN_TS || q.end_ns > MAX_TS {
        return invalid("range outside the supported timestamps".into());
    }
    for (name, t) in [("anomaly_z", q.anomaly_z), ("anomaly_mad", q.anomaly_mad)] {
        if t.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
            return invalid(format!("{name} must be a positive threshold"));
        }
    }
    if let Some(d) = &q.drift {
        if d.window_ns <= 0 {
            return invalid(format!("drift window {} ns: must be > 0", d.window_ns));
        }
        let windows = bucket_count(q.start_ns, q.end_ns, d.window_ns);
        if windows > MAX_QUERY_BUCKETS {
            return invalid(format!(
                "{windows} drift windows requested, the limit is {MAX_QUERY_BUCKETS}"
            ));
        }
        if d.threshold.is_some_and(|h| !(h.is_finite() && h > 0.0)) {
            return invalid("the drift threshold must be positive".into());
        }
    }
    let layout = match (&q.edges, q.bucket_ns, q.target_points) {
        (Some(_), w, p) if w != 0 || p != 0 => {
            return invalid(
                "bucket edges exclude a bucket width and a target number of points".into(),
            )
        }
        (Some(edges), _, _) => Layout::Edges(bounds(q.start_ns, q.end_ns, edges)?),
        (None, w, _) if w > 0 => Layout::Width(w),
        (None, _, p) if p > 0 => Layout::Width(width_for_points(q.start_ns, q.end_ns, p)),
        _ => {
            return invalid(
                "give a bucket width or a target number of points, or bucket edges".into(),
            )
        }
    };
    if let Layout::Width(width) = layout {
        let count = bucket_count(q.start_ns, q.end_ns, width);
        if count > MAX_QUERY_BUCKETS {
            return invalid(format!(
                "{count} buckets requested, the limit is {MAX_QUERY_BUCKETS}"
            ));
        }
    }
    Ok(layout)
}

/// The boundaries of buckets given by `edges`: strictly increasing, inside `[start, end]`;
/// `start` and `end` added where not given, so every point of the range is in one bucket.
fn bounds(start: i64, end: i64, edges: &[i64]) -> Result<Vec<i64>, QueryError> {
    let limit = usize::try_from(MAX_QUERY_BUCKETS).unwrap_or(usize::MAX);
    if edges.len() > limit + 1 {
        return Err(QueryError::Invalid(format!(
            "{} bucket edges, the limit is {} ({MAX_QUERY_BUCKETS} buckets)",
            edges.len(),
            limit + 1
        )));
    }
    if let Some(i) = edges.windows(2).position(|w| w[0] >= w[1]) {
        return Err(QueryError::Invalid(format!(
            "bucket edges must increase strictly: edge {} ({}) is not below edge {} ({})",
            i,
            edges[i],
            i + 1,
            edges[i + 1]
        )));
    }
    if let Some(e) = edges.iter().find(|e| !(start..=end).contains(*e)) {
        return Err(QueryError::Invalid(format!(
            "bucket edge {e} lies outside the range [{start}, {end}]"
        )));
    }
    let mut b = Vec::with_capacity(edges.len() + 2);
    if edges.first() != Some(&start) {
        b.push(start);
    }
    b.extend_from_slice(edges);
    if b.last() != Some(&end) {
        b.push(end);
    }
    if b.len() - 1 > limit {
        return Err(QueryError::Invalid(format!(
            "{} buckets requested, the limit is {MAX_QUERY_BUCKETS}",
            b.len() - 1
        )));
    }
    Ok(b)
}

/// Where a query reads: one point-in-time view of one series.
struct Source<'a> {
    db: &'a SmDb,
    view: &'a rocksdb::Snapshot<'a>,
    series: u64,
}

/// Answers a query from the current state: one point-in-time view for everything read.
pub fn query(db: &SmDb, q: &QuerySpec) -> Result<QueryResult, QueryError> {
    query_at(db, &db.db().snapshot(), q)
}

/// A series' id and retention cutoffs in `view` (`NotFound` if it does not exist).
pub(crate) fn series_at(
    db: &SmDb,
    view: &ReadView<'_>,
    name: &str,
) -> Result<(u64, Cutoffs), QueryError> {
    let series = match view.get_cf(db.cf(CF_TM_SERIES)?, name.as_bytes()) {
        Ok(Some(b)) => decode_series_id(&b)?,
        Ok(None) => return Err(QueryError::NotFound(name.to_owned())),
        Err(e) => return Err(StorageError::from(e).into()),
    };
    let now = super::retention::commit_time(db, view)?;
    Ok((series, load_policies(db, view)?.cutoffs(series, name, now)))
}

/// [`query`] in a given point-in-time view (a caller reading several series shares one).
pub fn query_at(db: &SmDb, view: &ReadView<'_>, q: &QuerySpec) -> Result<QueryResult, QueryError> {
    let layout = layout(q)?;
    let (series, cut) = series_at(db, view, &q.series)?;
    let src = Source { db, view, series };

    let mut notes = Vec::new();
    let main_plan = plan(
        q.tier, q.median, q.start_ns, q.end_ns, &layout, &cut, &mut notes,
    );
    // Drift windows are buckets of their own width, planned alike (from rollups where raw
    // points expired).
    let drift_plan = q.drift.as_ref().map(|d| {
        let windows = Layout::Width(d.window_ns);
        let mut drift_notes = Vec::new();
        let p = plan(
            q.tier,
            false,
            q.start_ns,
            q.end_ns,
            &windows,
            &cut,
            &mut drift_notes,
        );
        notes.extend(
            drift_notes
                .into_iter()
                .map(|n| format!("drift windows: {n}")),
        );
        (windows, p)
    });
    let mut result = QueryResult {
        bucket_ns: match layout {
            Layout::Width(w) => w,
            Layout::Edges(_) => 0,
        },
        buckets: Vec::new(),
        summary: Moments::new(),
        summary_sketch: DDSketch::new(),
        anomalies: Vec::new(),
        m4: Vec::new(),
        drift: Vec::new(),
        raw_points: 0,
        effective_start_ns: q.start_ns,
        effective_end_ns: q.end_ns,
        notes: Vec::new(),
    };
    if let Some((lo, hi)) = main_plan.widened(q.start_ns, q.end_ns) {
        result.effective_start_ns = lo.min(q.start_ns);
        result.effective_end_ns = hi.max(q.end_ns);
        notes.push(format!(
            "the answer covers [{}, {}): only coarser rollups are retained at the range's edges",
            format_timestamp(result.effective_start_ns),
            format_timestamp(result.effective_end_ns)
        ));
    }
    for (lo, hi, tier) in &main_plan.expired {
        notes.push(format!(
            "nothing of tier {tier} is retained in [{}, {})",
            format_timestamp(*lo),
            format_timestamp(*hi)
        ));
    }

    // Raw points: for the raw pieces, and for anomalies wherever raw is retained.
    let wants_anomalies = q.anomaly_z.is_some() || q.anomaly_mad.is_some();
    let anomaly_range = wants_anomalies
        .then_some((q.start_ns.max(cut.raw), q.end_ns))
        .filter(|(lo, hi)| lo < hi);
    if wants_anomalies && cut.raw > q.start_ns {
        notes.push(format!(
            "no anomalies before {}: raw points there have expired (rollups keep no points)",
            format_timestamp(cut.raw.min(q.end_ns))
        ));
    }
    let hull = main_plan
        .raw
        .iter()
        .chain(drift_plan.iter().flat_map(|(_, p)| &p.raw))
        .copied()
        .chain(anomaly_range)
        .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
    let (ts, vals) = match hull {
        Some((lo, hi)) => {
            let pts = read_raw(db, Some(view), series, lo, hi)?;
            if pts.len() > MAX_QUERY_RAW_POINTS {
                return Err(QueryError::Invalid(format!(
                    "the range holds more than {MAX_QUERY_RAW_POINTS} raw points: narrow it or use a coarser bucket"
                )));
            }
            dedupe(pts)
        }
        None => (Vec::new(), Vec::new()),
    };
    result.raw_points = ts.len() as u64;
    if let Some((lo, hi)) = anomaly_range {
        let (i, j) = (
            ts.partition_point(|t| *t < lo),
            ts.partition_point(|t| *t < hi),
        );
        result.anomalies = anomalies(&ts[i..j], &vals[i..j], q, &mut notes)?;
    }

    let mut m4_cols = Vec::new();
    let m4 = M4Spec {
        width: q.m4_width,
        start_ns: q.start_ns,
        end_ns: q.end_ns,
    };
    let out = fill(
        &src,
        &main_plan,
        &layout,
        q.start_ns,
        &ts,
        &vals,
        q.median,
        m4,
        &mut m4_cols,
    )?;
    if !layout.inner_edges_on(MINUTE_NS) && !main_plan.minutes.is_empty()
        || !layout.inner_edges_on(HOUR_NS) && !main_plan.hours.is_empty()
    {
        notes.push(match layout {
            Layout::Width(width) => format!(
                "some buckets come from a tier coarser than the {width} ns width (raw points expired there): they hold whole tier buckets"
            ),
            Layout::Edges(_) => "some buckets come from a tier coarser than their edges (raw points expired there): they hold whole tier buckets".into(),
        });
    }
    if q.median && out.values().any(|b| b.tier != Tier::Raw) {
        notes.push(
            "exact medians only where raw points are retained: rollup buckets carry none (p50 is the sketch's estimate)".into(),
        );
    }
    result.buckets = out.into_values().collect();
    for b in &result.buckets {
        result.summary.merge(&b.moments);
        merge_sketch(&mut result.summary_sketch, &b.sketch)?;
    }
    result.m4 = merge_m4(m4_cols);

    if let (Some(d), Some((windows, p))) = (&q.drift, drift_plan) {
        let none = M4Spec { width: 0, ..m4 };
        let out = fill(
            &src,
            &p,
            &windows,
            q.start_ns,
            &ts,
            &vals,
            false,
            none,
            &mut Vec::new(),
        )?;
        let means: Vec<(i64, Moments)> =
            out.into_values().map(|b| (b.start_ns, b.moments)).collect();
        let warmup = window_warmup(means.len());
        if means.len() <= warmup {
            notes.push(format!(
                "no drift can be found in {} windows: the baseline takes {warmup} (use shorter windows)",
                means.len()
            ));
        }
        let h = d.threshold.unwrap_or(CusumConfig::default().h);
        result.drift = drift_over_windows(&means, h);
    }
    result.notes = notes;
    Ok(result)
}

/// M4 columns wanted: `width` pixel columns over `[start, end)` (0: none).
#[derive(Debug, Clone, Copy)]
struct M4Spec {
    width: u32,
    start_ns: i64,
    end_ns: i64,
}

/// The output buckets of a plan: raw pieces from `(ts, vals)` (sorted, deduplicated, holding
/// at least every raw piece), rollup pieces read from `src`; M4 columns into `m4_out`.
#[allow(clippy::too_many_arguments)]
fn fill(
    src: &Source<'_>,
    plan: &Plan,
    layout: &Layout,
    range_start: i64,
    ts: &[i64],
    vals: &[f64],
    median: bool,
    m4: M4Spec,
    m4_out: &mut Vec<M4Out>,
) -> Result<BTreeMap<i64, BucketOut>, QueryError> {
    let mut out: BTreeMap<i64, BucketOut> = BTreeMap::new();
    let mut scratch = Vec::new();
    for &(lo, hi) in &plan.raw {
        let (i, j) = (
            ts.partition_point(|t| *t < lo),
            ts.partition_point(|t| *t < hi),
        );
        raw_buckets(
            &ts[i..j],
            &vals[i..j],
            layout,
            range_start,
            median.then_some(&mut scratch),
            &mut out,
        )?;
        raw_m4(&ts[i..j], &vals[i..j], m4, m4_out)?;
    }
    for (tier, ranges) in [(TIER_MINUTE, &plan.minutes), (TIER_HOUR, &plan.hours)] {
        for &(lo, hi) in ranges {
            let mut opts = read_opts(Some(src.view));
            opts.set_iterate_upper_bound(rollup_key(src.series, tier, hi).to_vec());
            let from = rollup_key(src.series, tier, lo);
            for item in src.db.db().iterator_cf_opt(
                src.db.cf(CF_TM_ROLLUP)?,
                opts,
                rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
            ) {
                let (_, v) = item.map_err(StorageError::from)?;
                let b = decode_bucket(&v)?;
                let slot = layout.bucket_of(range_start, b.start_ns);
                add_bucket(&mut out, slot, &b, Tier::of_rollup(tier))?;
                if let Some(c) = rollup_m4(m4, &b) {
                    m4_out.push(c);
                }
            }
        }
    }
    Ok(out)
}

/// Which pieces cover `[start, end)`: per output bucket, the tier that serves it where
/// retained (or the tier forced), edges from finer tiers.
fn plan(
    tier: TierChoice,
    median: bool,
    start: i64,
    end: i64,
    layout: &Layout,
    cut: &Cutoffs,
    notes: &mut Vec<String>,
) -> Plan {
    let mut p = Plan::default();
    let cover = |p: &mut Plan, lo: i64, hi: i64, width: Option<i64>| match tier {
        TierChoice::Raw => p.raw_range(lo, hi, cut, false),
        TierChoice::Minute => p.minute_range(lo, hi, cut, false),
        TierChoice::Hour => p.hour_range(lo, hi, cut, false),
        TierChoice::Auto => match width {
            _ if median => p.raw_range(lo, hi, cut, true),
            Some(w) if w % MINUTE_NS != 0 => p.raw_range(lo, hi, cut, true),
            Some(w) if w % HOUR_NS != 0 => p.minute_range(lo, hi, cut, true),
            // Hours where they fit inside, minutes and raw points at the edges.
            _ => p.hour_range(lo, hi, cut, true),
        },
    };
    match layout {
        Layout::Width(w) => cover(&mut p, start, end, Some(*w)),
        // Each bucket on its own: the coarsest tier that fits inside it, whatever its
        // length (a 23 h day is whole hours; an edge off the hour is served by minutes).
        Layout::Edges(b) => {
            for e in b.windows(2) {
                cover(&mut p, e[0], e[1], None);
            }
        }
    }
    p.finish();
    if tier != TierChoice::Auto && !p.expired.is_empty() {
        notes.push("the tier asked for has expired in part of the range: tier auto answers from what is retained".into());
    }
    p
}

/// Merges two sketches of one answer. They were all made with the store's accuracy: one that
/// cannot be merged was read off disk wrong, and is reported as corruption rather than left
/// out of the percentiles.
fn merge_sketch(into: &mut DDSketch, from: &DDSketch) -> Result<(), QueryError> {
    into.merge(from)
        .map_err(|e| QueryError::Storage(StorageError::corrupt("rollup sketch", e)))
}

/// Adds a bucket's statistics to the output bucket `slot` (`(start, end)`).
fn add_to(
    out: &mut BTreeMap<i64, BucketOut>,
    slot: (i64, Option<i64>),
    moments: &Moments,
    sketch: DDSketch,
    median: Option<f64>,
    tier: Tier,
) -> Result<(), QueryError> {
    match out.get_mut(&slot.0) {
        Some(o) => {
            o.moments.merge(moments);
            merge_sketch(&mut o.sketch, &sketch)?;
            o.tier = o.tier.max(tier);
            // Pieces of one bucket from several places: no exact median over all of them.
            o.median = None;
        }
        None => {
            out.insert(
                slot.0,
                BucketOut {
                    start_ns: slot.0,
                    end_ns: slot.1.unwrap_or(i64::MAX),
                    moments: *moments,
                    sketch,
                    median,
                    tier,
                },
            );
        }
    }
    Ok(())
}

fn add_bucket(
    out: &mut BTreeMap<i64, BucketOut>,
    slot: (i64, Option<i64>),
    b: &RollupBucket,
    tier: Tier,
) -> Result<(), QueryError> {
    add_to(out, slot, &b.moments, b.sketch.clone(), None, tier)
}

/// Anomalies of the raw points in the range, by every method asked for, in time order;
/// at most [`MAX_QUERY_ANOMALIES`].
fn anomalies(
    ts: &[i64],
    vals: &[f64],
    q: &QuerySpec,
    notes: &mut Vec<String>,
) -> Result<Vec<AnomalyOut>, QueryError> {
    let mut found = Vec::new();
    if let (Some(z), false) = (q.anomaly_z, ts.is_empty()) {
        let cfg = AggConfig::time_width(HOUR_NS).with_anomaly(Some(AnomalyConfig {
            threshold: z,
            ..AnomalyConfig::default()
        }));
        let mut agg = Aggregator::new(cfg).map_err(|e| QueryError::Invalid(e.to_string()))?;
        agg.push(ts, vals)
            .map_err(|e| QueryError::Invalid(e.to_string()))?;
        found.extend(agg.anomalies().iter().map(AnomalyOut::from_z));
    }
    if let Some(t) = q.anomaly_mad {
        found.extend(mad_anomalies(ts, vals, t, &mut Vec::new()));
    }
    // Stable: at one time, the z-score's before the MAD's.
    found.sort_by_key(|a| a.ts_ns);
    if found.len() > MAX_QUERY_ANOMALIES {
        notes.push(format!(
            "{} anomalies found, the first {MAX_QUERY_ANOMALIES} are returned: raise the threshold",
            found.len()
        ));
        found.truncate(MAX_QUERY_ANOMALIES);
    }
    Ok(found)
}

/// Buckets over sorted, deduplicated raw points: each bucket's slice summarized in one
/// pass (the aggregator's block kernel), its percentiles by a sketch over the slice, its
/// exact median (with `median` as scratch) where asked.
fn raw_buckets(
    ts: &[i64],
    vals: &[f64],
    layout: &Layout,
    range_start: i64,
    mut median: Option<&mut Vec<f64>>,
    out: &mut BTreeMap<i64, BucketOut>,
) -> Result<(), QueryError> {
    let mut i = 0;
    while i < ts.len() {
        let slot = layout.bucket_of(range_start, ts[i]);
        let j = match slot.1 {
            Some(end) => gallop(ts, i, end),
            None => ts.len(),
        };
        assert!(j > i, "the bucket of ts[i] holds ts[i]");
        let (bt, bv) = (&ts[i..j], &vals[i..j]);
        let mut sketch = DDSketch::new();
        for &v in bv {
            sketch.insert(v);
        }
        let med = median.as_deref_mut().and_then(|s| {
            s.clear();
            s.extend_from_slice(bv);
            median_in_place(s)
        });
        add_to(
            out,
            slot,
            &Moments::from_sorted(bt, bv),
            sketch,
            med,
            Tier::Raw,
        )?;
        i = j;
    }
    Ok(())
}

/// M4 columns over sorted raw points.
fn raw_m4(ts: &[i64], vals: &[f64], m4: M4Spec, out: &mut Vec<M4Out>) -> Result<(), QueryError> {
    if m4.width == 0 || ts.is_empty() {
        return Ok(());
    }
    let cols = super::m4::m4(ts, vals, m4.start_ns, m4.end_ns, m4.width)
        .map_err(|e| QueryError::Invalid(e.to_string()))?;
    out.extend(cols.iter().map(|c| M4Out {
        pixel: c.pixel,
        first: (c.first.ts, c.first.value),
        last: (c.last.ts, c.last.value),
        min: (c.min.ts, c.min.value),
        max: (c.max.ts, c.max.value),
    }));
    Ok(())
}

/// M4 over a range served by rollups: each bucket contributes its first and last points
/// and its extremes (placed at the bucket's start: rollups keep no argmin/argmax).
fn rollup_m4(m4: M4Spec, b: &RollupBucket) -> Option<M4Out> {
    if m4.width == 0 || b.start_ns < m4.start_ns || b.start_ns >= m4.end_ns {
        return None;
    }
    let span = (m4.end_ns - m4.start_ns) as i128;
    let pixel = ((b.start_ns - m4.start_ns) as i128 * i128::from(m4.width) / span) as u32;
    Some(M4Out {
        pixel,
        first: b.moments.first()?,
        last: b.moments.last()?,
        min: (b.start_ns, b.moments.min()?),
        max: (b.start_ns, b.moments.max()?),
    })
}

/// One column per pixel: columns of the same pixel (from several pieces) merged.
fn merge_m4(mut cols: Vec<M4Out>) -> Vec<M4Out> {
    cols.sort_by_key(|c| (c.pixel, c.first.0));
    let mut out: Vec<M4Out> = Vec::with_capacity(cols.len());
    for c in cols {
        match out.last_mut() {
            Some(o) if o.pixel == c.pixel => {
                if c.last.0 > o.last.0 {
                    o.last = c.last;
                }
                if c.min.1 < o.min.1 {
                    o.min = c.min;
                }
                if c.max.1 > o.max.1 {
                    o.max = c.max;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9, point 9c: widths near the ends of the range do not overflow.
    #[test]
    fn nice_width_saturates() {
        assert_eq!(nice_width(1), 1);
        assert_eq!(nice_width(MINUTE_NS + 1), 2 * MINUTE_NS);
        assert_eq!(nice_width(HOUR_NS + 1), 2 * HOUR_NS);
        let w = nice_width(i64::MAX);
        assert!(w > 0 && w % HOUR_NS == 0);
        // One point over the widest range.
        let w = width_for_points(MIN_TS, MAX_TS, 1);
        assert!(w > 0);
        assert!(bucket_count(MIN_TS, MAX_TS, w) <= 1 || w >= i64::MAX / 2);
    }

    /// Issue 9, point 11b: a target number of points is never exceeded.
    #[test]
    fn never_more_buckets_than_asked() {
        let start = 30 * MINUTE_NS;
        for end in [
            7 * HOUR_NS + 30 * MINUTE_NS,
            80 * 24 * HOUR_NS + 7,
            3 * MINUTE_NS + 5,
        ] {
            for p in [1u32, 2, 3, 7, 100, 1000] {
                let w = width_for_points(start, end, p);
                assert!(
                    bucket_count(start, end, w) <= i64::from(p),
                    "{end} {p}: width {w} gives {}",
                    bucket_count(start, end, w)
                );
                assert_eq!(nice_width(w), w);
            }
        }
    }

    fn cut(raw: i64, minute: i64, hour: i64) -> Cutoffs {
        Cutoffs { raw, minute, hour }
    }

    #[test]
    fn plans_cover_the_range_exactly_where_finer_tiers_exist() {
        let hourly = |start, end, cut: &Cutoffs, notes: &mut Vec<String>| {
            let layout = Layout::Width(HOUR_NS);
            plan(TierChoice::Auto, false, start, end, &layout, cut, notes)
        };
        let everything = cut(i64::MIN, i64::MIN, i64::MIN);
        // 00:30–07:30 with hourly buckets: hours 1..7 from the hour tier, the edges from
        // minutes.
        let mut notes = vec![];
        let p = hourly(
            30 * MINUTE_NS,
            7 * HOUR_NS + 30 * MINUTE_NS,
            &everything,
            &mut notes,
        );
        assert_eq!(p.hours, vec![(HOUR_NS, 7 * HOUR_NS)]);
        assert_eq!(
            p.minutes,
            vec![
                (30 * MINUTE_NS, HOUR_NS),
                (7 * HOUR_NS, 7 * HOUR_NS + 30 * MINUTE_NS)
            ]
        );
        assert!(p.raw.is_empty() && notes.is_empty());
        assert_eq!(
            p.widened(30 * MINUTE_NS, 7 * HOUR_NS + 30 * MINUTE_NS),
            None
        );
        // Unaligned edges go down to raw.
        let p = hourly(30 * MINUTE_NS + 5, 2 * HOUR_NS + 7, &everything, &mut notes);
        assert_eq!(
            p.raw,
            vec![
                (30 * MINUTE_NS + 5, 31 * MINUTE_NS),
                (2 * HOUR_NS, 2 * HOUR_NS + 7)
            ]
        );
        assert_eq!(p.widened(30 * MINUTE_NS + 5, 2 * HOUR_NS + 7), None);
        // Only hours retained: widened, and said.
        let p = hourly(
            30 * MINUTE_NS,
            7 * HOUR_NS + 30 * MINUTE_NS,
            &cut(100 * HOUR_NS, 100 * HOUR_NS, i64::MIN),
            &mut notes,
        );
        assert_eq!(p.hours, vec![(0, 8 * HOUR_NS)]);
        assert_eq!(
            p.widened(30 * MINUTE_NS, 7 * HOUR_NS + 30 * MINUTE_NS),
            Some((0, 8 * HOUR_NS))
        );
    }
}

#[cfg(test)]
mod corruption_tests {
    use super::*;
    use crate::raft::state_machine::StateMachine;
    use crate::raft::{Command, Entry, LogId, Request};
    use crate::storage::sm_db::CF_TM_ROLLUP;
    use crate::telemetry::command::TelemetryCommand;
    use crate::telemetry::points::segments_of;
    use crate::telemetry::rollup::RollupBucket;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};

    /// Issue 10: a rollup whose sketch cannot be merged (another accuracy, read off disk) is
    /// corruption, reported — not a percentile silently left out of the answer.
    #[tokio::test]
    async fn an_unmergeable_stored_sketch_is_a_corruption_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let now: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
        let start = now - 30 * MINUTE_NS;
        let ts: Vec<i64> = (0..20).map(|i| start + i * MINUTE_NS / 2).collect();
        let vals: Vec<f64> = (0..20).map(f64::from).collect();
        let cmd = Command::Telemetry(TelemetryCommand::Ingest(
            segments_of("sat-1/v", &ts, &vals).unwrap(),
        ));
        sm.apply([Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Request {
                commit_time_ns: now,
                dedupe_window_ns: 1,
                commands: vec![cmd],
            }),
        }])
        .await
        .unwrap();
        let db = sm.store().db();
        let spec = QuerySpec {
            bucket_ns: 10 * MINUTE_NS,
            tier: TierChoice::Minute,
            ..QuerySpec::range("sat-1/v", start, start + 10 * MINUTE_NS)
        };
        assert!(query(&db, &spec).is_ok());
        // Rewrite one minute bucket with a sketch of another accuracy (a valid record).
        let cf = db.cf(CF_TM_ROLLUP).unwrap();
        let (key, value) = db
            .db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .next()
            .unwrap()
            .unwrap();
        let stored = RollupBucket::decode(&value).unwrap();
        let mut odd = RollupBucket::new(stored.start_ns, 0.05, 512).unwrap();
        odd.moments = stored.moments;
        for _ in 0..stored.sketch.count() {
            odd.sketch.insert(1.0);
        }
        db.db().put_cf(cf, &key, odd.encode()).unwrap();
        match query(&db, &spec) {
            Err(QueryError::Storage(e)) => assert!(e.to_string().contains("sketch"), "{e}"),
            Err(e) => panic!("other error: {e}"),
            other => panic!("expected a corruption error, got {other:?}"),
        }
    }
}
