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

use std::collections::BTreeMap;

use super::agg::{AggConfig, Aggregator, Anomaly, AnomalyConfig};
use super::command::{MAX_TS, MIN_TS};
use super::keys::{decode_bucket, decode_series_id, rollup_key};
use super::m4::m4;
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
    /// z-score threshold for anomalies over raw points (None: no anomaly detection).
    pub anomaly_z: Option<f64>,
    /// Pixel columns for M4 (0: none).
    pub m4_width: u32,
    /// Exact per-bucket medians (from raw points, where they are retained).
    pub median: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BucketOut {
    pub start_ns: i64,
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
    pub bucket_ns: i64,
    pub buckets: Vec<BucketOut>,
    pub summary: Moments,
    pub summary_sketch: DDSketch,
    pub anomalies: Vec<Anomaly>,
    pub m4: Vec<M4Out>,
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
    if q.end_ns <= q.start_ns {
        return Err(QueryError::Invalid(format!(
            "empty range: end {} <= start {}",
            q.end_ns, q.start_ns
        )));
    }
    if q.start_ns < MIN_TS || q.end_ns > MAX_TS {
        return Err(QueryError::Invalid(
            "range outside the supported timestamps".into(),
        ));
    }
    let width = match (q.bucket_ns, q.target_points) {
        (w, _) if w > 0 => w,
        (_, p) if p > 0 => width_for_points(q.start_ns, q.end_ns, p),
        _ => {
            return Err(QueryError::Invalid(
                "give a bucket width or a target number of points".into(),
            ))
        }
    };
    let count = bucket_count(q.start_ns, q.end_ns, width);
    if count > MAX_QUERY_BUCKETS {
        return Err(QueryError::Invalid(format!(
            "{count} buckets requested, the limit is {MAX_QUERY_BUCKETS}"
        )));
    }
    let (series, cut) = series_at(db, view, &q.series)?;

    let mut notes = Vec::new();
    let plan = plan(q, width, &cut, &mut notes);
    let mut result = QueryResult {
        bucket_ns: width,
        buckets: Vec::new(),
        summary: Moments::new(),
        summary_sketch: DDSketch::new(),
        anomalies: Vec::new(),
        m4: Vec::new(),
        raw_points: 0,
        effective_start_ns: q.start_ns,
        effective_end_ns: q.end_ns,
        notes: Vec::new(),
    };
    if let Some((lo, hi)) = plan.widened(q.start_ns, q.end_ns) {
        result.effective_start_ns = lo.min(q.start_ns);
        result.effective_end_ns = hi.max(q.end_ns);
        notes.push(format!(
            "the answer covers [{}, {}): only coarser rollups are retained at the range's edges",
            format_timestamp(result.effective_start_ns),
            format_timestamp(result.effective_end_ns)
        ));
    }
    for (lo, hi, tier) in &plan.expired {
        notes.push(format!(
            "nothing of tier {tier} is retained in [{}, {})",
            format_timestamp(*lo),
            format_timestamp(*hi)
        ));
    }
    let mut out: BTreeMap<i64, BucketOut> = BTreeMap::new();
    // Where the range starts before the first output bucket's own start.
    let slot = |t: i64| floor(t.max(q.start_ns), width);

    // Raw pieces, and raw points for anomalies wherever raw is retained.
    let anomaly_range = q
        .anomaly_z
        .map(|_| (q.start_ns.max(cut.raw), q.end_ns))
        .filter(|(lo, hi)| lo < hi);
    if q.anomaly_z.is_some() && cut.raw > q.start_ns {
        notes.push(format!(
            "no anomalies before {}: raw points there have expired (rollups keep no points)",
            format_timestamp(cut.raw.min(q.end_ns))
        ));
    }
    let hull = plan
        .raw
        .iter()
        .copied()
        .chain(anomaly_range)
        .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
    if let Some((lo, hi)) = hull {
        let pts = read_raw(db, Some(view), series, lo, hi)?;
        if pts.len() > MAX_QUERY_RAW_POINTS {
            return Err(QueryError::Invalid(format!(
                "the range holds more than {MAX_QUERY_RAW_POINTS} raw points: narrow it or use a coarser bucket"
            )));
        }
        let (ts, vals) = dedupe(pts);
        result.raw_points = ts.len() as u64;
        if let Some(z) = q.anomaly_z {
            result.anomalies = anomalies(&ts, &vals, z)?;
        }
        for &(lo, hi) in &plan.raw {
            let (i, j) = (
                ts.partition_point(|t| *t < lo),
                ts.partition_point(|t| *t < hi),
            );
            raw_buckets(&ts[i..j], &vals[i..j], width, q, &mut out, &mut result.m4)?;
        }
    }
    for (tier, ranges) in [(TIER_MINUTE, &plan.minutes), (TIER_HOUR, &plan.hours)] {
        for &(lo, hi) in ranges {
            let mut opts = read_opts(Some(view));
            opts.set_iterate_upper_bound(rollup_key(series, tier, hi).to_vec());
            let from = rollup_key(series, tier, lo);
            for item in db.db().iterator_cf_opt(
                db.cf(CF_TM_ROLLUP)?,
                opts,
                rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
            ) {
                let (_, v) = item.map_err(StorageError::from)?;
                let b = decode_bucket(&v)?;
                add_bucket(&mut out, slot(b.start_ns), &b, Tier::of_rollup(tier))?;
                if let Some(c) = rollup_m4(q, &b) {
                    result.m4.push(c);
                }
            }
        }
    }
    if width % MINUTE_NS != 0 && !plan.minutes.is_empty()
        || width % HOUR_NS != 0 && !plan.hours.is_empty()
    {
        notes.push(format!(
            "some buckets come from a tier coarser than the {width} ns width (raw points expired there): they hold whole tier buckets"
        ));
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
    result.m4 = merge_m4(std::mem::take(&mut result.m4));
    result.notes = notes;
    Ok(result)
}

/// Which pieces cover the query: per output bucket, the tier that serves its width where
/// retained (or the tier forced), edges from finer tiers.
fn plan(q: &QuerySpec, width: i64, cut: &Cutoffs, notes: &mut Vec<String>) -> Plan {
    let mut p = Plan::default();
    let (start, end) = (q.start_ns, q.end_ns);
    match q.tier {
        TierChoice::Raw => p.raw_range(start, end, cut, false),
        TierChoice::Minute => p.minute_range(start, end, cut, false),
        TierChoice::Hour => p.hour_range(start, end, cut, false),
        TierChoice::Auto => {
            let raw_wanted = q.median || (width % MINUTE_NS != 0);
            if raw_wanted {
                p.raw_range(start, end, cut, true);
            } else if width % HOUR_NS == 0 {
                p.hour_range(start, end, cut, true);
            } else {
                p.minute_range(start, end, cut, true);
            }
        }
    }
    p.finish();
    if q.tier != TierChoice::Auto && !p.expired.is_empty() {
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

fn add_bucket(
    out: &mut BTreeMap<i64, BucketOut>,
    slot: i64,
    b: &RollupBucket,
    tier: Tier,
) -> Result<(), QueryError> {
    match out.get_mut(&slot) {
        Some(o) => {
            o.moments.merge(&b.moments);
            merge_sketch(&mut o.sketch, &b.sketch)?;
            o.tier = o.tier.max(tier);
            o.median = None;
        }
        None => {
            out.insert(
                slot,
                BucketOut {
                    start_ns: slot,
                    moments: b.moments,
                    sketch: b.sketch.clone(),
                    median: None,
                    tier,
                },
            );
        }
    }
    Ok(())
}

fn anomalies(ts: &[i64], vals: &[f64], z: f64) -> Result<Vec<Anomaly>, QueryError> {
    if ts.is_empty() {
        return Ok(Vec::new());
    }
    let cfg = AggConfig::time_width(HOUR_NS).with_anomaly(Some(AnomalyConfig {
        threshold: z,
        ..AnomalyConfig::default()
    }));
    let mut agg = Aggregator::new(cfg).map_err(|e| QueryError::Invalid(e.to_string()))?;
    agg.push(ts, vals)
        .map_err(|e| QueryError::Invalid(e.to_string()))?;
    Ok(agg.anomalies().to_vec())
}

/// Buckets (and M4 columns) over sorted, deduplicated raw points.
fn raw_buckets(
    ts: &[i64],
    vals: &[f64],
    width: i64,
    q: &QuerySpec,
    out: &mut BTreeMap<i64, BucketOut>,
    m4_out: &mut Vec<M4Out>,
) -> Result<(), QueryError> {
    if ts.is_empty() {
        return Ok(());
    }
    let cfg = AggConfig::time_width(width).with_median(q.median);
    let mut agg = Aggregator::new(cfg).map_err(|e| QueryError::Invalid(e.to_string()))?;
    agg.push(ts, vals)
        .map_err(|e| QueryError::Invalid(e.to_string()))?;
    agg.flush();
    // Percentiles per bucket: a sketch over each bucket's slice.
    let mut i = 0;
    for b in agg.closed() {
        let j = ts.partition_point(|t| *t < b.start_ns.saturating_add(width));
        let mut sketch = DDSketch::new();
        for &v in &vals[i..j] {
            sketch.insert(v);
        }
        i = j;
        match out.get_mut(&b.start_ns) {
            Some(o) => {
                o.moments.merge(&b.moments);
                merge_sketch(&mut o.sketch, &sketch)?;
                o.median = None;
            }
            None => {
                out.insert(
                    b.start_ns,
                    BucketOut {
                        start_ns: b.start_ns,
                        moments: b.moments,
                        sketch,
                        median: b.median,
                        tier: Tier::Raw,
                    },
                );
            }
        }
    }
    if q.m4_width > 0 {
        let cols = m4(ts, vals, q.start_ns, q.end_ns, q.m4_width)
            .map_err(|e| QueryError::Invalid(e.to_string()))?;
        m4_out.extend(cols.iter().map(|c| M4Out {
            pixel: c.pixel,
            first: (c.first.ts, c.first.value),
            last: (c.last.ts, c.last.value),
            min: (c.min.ts, c.min.value),
            max: (c.max.ts, c.max.value),
        }));
    }
    Ok(())
}

/// M4 over a range served by rollups: each bucket contributes its first and last points
/// and its extremes (placed at the bucket's start: rollups keep no argmin/argmax).
fn rollup_m4(q: &QuerySpec, b: &RollupBucket) -> Option<M4Out> {
    if q.m4_width == 0 || b.start_ns < q.start_ns || b.start_ns >= q.end_ns {
        return None;
    }
    let span = (q.end_ns - q.start_ns) as i128;
    let pixel = ((b.start_ns - q.start_ns) as i128 * i128::from(q.m4_width) / span) as u32;
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
        let q = |start, end, tier| QuerySpec {
            series: "a/b".into(),
            start_ns: start,
            end_ns: end,
            bucket_ns: HOUR_NS,
            target_points: 0,
            tier,
            anomaly_z: None,
            m4_width: 0,
            median: false,
        };
        let everything = cut(i64::MIN, i64::MIN, i64::MIN);
        // 00:30–07:30 with hourly buckets: hours 1..7 from the hour tier, the edges from
        // minutes.
        let mut notes = vec![];
        let p = plan(
            &q(
                30 * MINUTE_NS,
                7 * HOUR_NS + 30 * MINUTE_NS,
                TierChoice::Auto,
            ),
            HOUR_NS,
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
        let p = plan(
            &q(30 * MINUTE_NS + 5, 2 * HOUR_NS + 7, TierChoice::Auto),
            HOUR_NS,
            &everything,
            &mut notes,
        );
        assert_eq!(
            p.raw,
            vec![
                (30 * MINUTE_NS + 5, 31 * MINUTE_NS),
                (2 * HOUR_NS, 2 * HOUR_NS + 7)
            ]
        );
        assert_eq!(p.widened(30 * MINUTE_NS + 5, 2 * HOUR_NS + 7), None);
        // Only hours retained: widened, and said.
        let p = plan(
            &q(
                30 * MINUTE_NS,
                7 * HOUR_NS + 30 * MINUTE_NS,
                TierChoice::Auto,
            ),
            HOUR_NS,
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
            series: "sat-1/v".into(),
            start_ns: start,
            end_ns: start + 10 * MINUTE_NS,
            bucket_ns: 10 * MINUTE_NS,
            target_points: 0,
            tier: TierChoice::Minute,
            anomaly_z: None,
            m4_width: 0,
            median: false,
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
