//! Telemetry in the replicated store: ingest applied by the state machine (raw columnar
//! segments plus mergeable rollup tiers), retention policies, the rule that says which
//! records have expired, and queries that stitch tiers together.
//!
//! ## Data
//!
//! * `tm_series`: series name → id (assigned by the state machine, in log order).
//! * `tm_raw`: `series id ++ min ts ++ log index ++ seq` → one pco segment (≤ 1 h, ≤ 64 Ki
//!   points) as the ingesting node encoded it; nothing is re-encoded on apply.
//! * `tm_rollup`: `series id ++ tier ++ bucket start` → [`RollupBucket`] (count, sum, min,
//!   max, first, last, M2, DDSketch) for the 1-minute and 1-hour tiers.
//! * `tm_policy`: series prefix → [`RetentionPolicy`] (longest prefix wins).
//!
//! ## Out-of-order and duplicate points
//!
//! Points may arrive in any order and more than once. A point's timestamp is its identity:
//! the latest write of a timestamp wins (by log order), in queries and in rollups. Every
//! ingest recomputes the minute buckets it touches from all retained raw points of those
//! minutes (deduplicated), and their hours from the minutes — so rollups always equal a
//! recomputation from the deduplicated raw data. Points older than the series' raw
//! retention (a backfill of old data) are merged into the rollups directly, as their raw
//! neighbours may already be gone: such late points cannot be deduplicated. Points older
//! than the policy's `lateness_ms` (if set) are refused and counted.
//!
//! ## Time and determinism
//!
//! "Now" is the replicated commit time (the leader's clock, stamped into each entry, never
//! decreasing), never a replica's clock. Retention cutoffs derive from it and the
//! replicated policies; [`RetentionView`] holds that state for RocksDB's compaction filter,
//! which may drop only records already dead by it, and queries apply the same cutoffs — so
//! every replica answers alike whatever its compactions did.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::agg::{AggConfig, Aggregator, AnomalyConfig};
use super::m4::m4;
use super::moments::Moments;
use super::rollup::RollupBucket;
use super::segment;
use super::sketch::{DDSketch, DEFAULT_ALPHA, DEFAULT_MAX_BINS};

use crate::storage::keys::{i64_ordered, read_i64_ordered, read_u64};
use crate::storage::sm_db::{
    Retention, SmDb, SmWriteBatch, CF_META, CF_TM_POLICY, CF_TM_RAW, CF_TM_ROLLUP, CF_TM_SERIES,
};
use crate::storage::{decode, encode, Result, StorageError};

pub const MINUTE_NS: i64 = 60_000_000_000;
pub const HOUR_NS: i64 = 60 * MINUTE_NS;
/// Tier ids in rollup keys.
pub const TIER_MINUTE: u8 = 1;
pub const TIER_HOUR: u8 = 2;
/// Longest time span of one raw segment; a range read starts this much earlier.
pub const MAX_SEGMENT_SPAN_NS: i64 = HOUR_NS;
/// Most points in one raw segment.
pub const MAX_SEGMENT_POINTS: usize = 65_536;
/// Timestamps must leave room for bucket arithmetic.
pub const MIN_TS: i64 = i64::MIN / 2;
pub const MAX_TS: i64 = i64::MAX / 2;

const STATE_KEY: &[u8] = b"tm_state";

/// Retention of one series prefix. Durations in milliseconds; `hour_ms = 0` keeps the
/// hour tier forever; `lateness_ms = 0` accepts points of any age.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    pub prefix: String,
    pub raw_ms: u64,
    pub minute_ms: u64,
    pub hour_ms: u64,
    pub lateness_ms: u64,
}

impl RetentionPolicy {
    /// raw 48 h → 1 minute for 30 days → 1 hour forever.
    pub fn default_for(prefix: &str) -> Self {
        RetentionPolicy {
            prefix: prefix.to_owned(),
            raw_ms: 48 * 3_600_000,
            minute_ms: 30 * 24 * 3_600_000,
            hour_ms: 0,
            lateness_ms: 0,
        }
    }

    /// Each tier must outlive the finer one by at least one of its buckets, so that every
    /// range is served by some tier.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.raw_ms == 0 {
            return Err("raw retention must be > 0".into());
        }
        if self.minute_ms < self.raw_ms + 3_600_000 {
            return Err("minute retention must exceed raw retention by at least an hour".into());
        }
        if self.hour_ms != 0 && self.hour_ms < self.minute_ms + 24 * 3_600_000 {
            return Err(
                "hour retention must be 0 (forever) or exceed minute retention by a day".into(),
            );
        }
        Ok(())
    }

    /// The tier cutoffs at replicated time `now_ns`, aligned to the tier's buckets: raw
    /// points older than `raw`, minute buckets older than `minute`, hour buckets older than
    /// `hour` are dead.
    pub fn cutoffs(&self, now_ns: i64) -> Cutoffs {
        let ago = |ms: u64| {
            now_ns.saturating_sub(i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX))
        };
        Cutoffs {
            raw: floor(ago(self.raw_ms), MINUTE_NS),
            minute: floor(ago(self.minute_ms), HOUR_NS),
            hour: if self.hour_ms == 0 {
                i64::MIN
            } else {
                floor(ago(self.hour_ms), HOUR_NS)
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    pub raw: i64,
    pub minute: i64,
    pub hour: i64,
}

fn floor(t: i64, width: i64) -> i64 {
    t.saturating_sub(t.rem_euclid(width))
}

/// Raw points of one series, as the ingesting node encoded them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesSegment {
    pub series: String,
    pub segment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TelemetryCommand {
    Ingest(Vec<SeriesSegment>),
    SetRetention(RetentionPolicy),
}

impl TelemetryCommand {
    /// The checks at every edge where a command enters (a client API or a peer's
    /// `Propose`): series names and policies. Segment contents are checked on apply.
    pub fn validate(&self, limits: &crate::model::Limits) -> std::result::Result<(), String> {
        match self {
            TelemetryCommand::Ingest(segments) => {
                for s in segments {
                    limits
                        .validate_stream(&s.series)
                        .map_err(|e| format!("series: {e}"))?;
                    if !s.series.contains('/') {
                        return Err(format!("series {:?} is not source/channel", s.series));
                    }
                }
                Ok(())
            }
            TelemetryCommand::SetRetention(p) => p.validate(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TelemetryOutcome {
    Ingested { points: u64, late_dropped: u64 },
    RetentionSet,
    Rejected { reason: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TelemetryState {
    next_series_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SeriesMeta {
    id: u64,
}

fn raw_key(series: u64, min_ts: i64, log_index: u64, seq: u32) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..8].copy_from_slice(&series.to_be_bytes());
    k[8..16].copy_from_slice(&i64_ordered(min_ts));
    k[16..24].copy_from_slice(&log_index.to_be_bytes());
    k[24..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn rollup_key(series: u64, tier: u8, start: i64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&series.to_be_bytes());
    k[8] = tier;
    k[9..].copy_from_slice(&i64_ordered(start));
    k
}

fn new_bucket(start: i64) -> Result<RollupBucket> {
    RollupBucket::new(start, DEFAULT_ALPHA, DEFAULT_MAX_BINS)
        .map_err(|e| StorageError::corrupt("rollup", e))
}

fn decode_bucket(bytes: &[u8]) -> Result<RollupBucket> {
    RollupBucket::decode(bytes).map_err(|e| StorageError::corrupt("rollup bucket", e))
}

fn bucket_of(ts: &[i64], vals: &[f64], start: i64) -> Result<RollupBucket> {
    let mut b = new_bucket(start)?;
    b.moments = Moments::from_sorted(ts, vals);
    for &v in vals {
        b.sketch.insert(v);
    }
    Ok(b)
}

/// The replicated facts retention depends on — commit time, series ids, policies — kept in
/// memory for the compaction filter and the query path. Updated by the state machine after
/// it applies; always at or behind the applied state, and since cutoffs only move forward,
/// anything it declares dead is dead in every later state too.
#[derive(Default)]
pub struct RetentionView {
    inner: RwLock<ViewInner>,
}

#[derive(Default)]
struct ViewInner {
    now_ns: i64,
    policies: Vec<RetentionPolicy>,
    /// Series id → its policy's cutoffs at `now_ns`.
    series: HashMap<u64, (String, Cutoffs)>,
}

impl ViewInner {
    fn policy_for(&self, series: &str) -> RetentionPolicy {
        policy_for(&self.policies, series)
    }

    fn recompute(&mut self) {
        let now = self.now_ns;
        let policies = self.policies.clone();
        for (name, cut) in self.series.values_mut() {
            *cut = policy_for(&policies, name).cutoffs(now);
        }
    }
}

fn policy_for(policies: &[RetentionPolicy], series: &str) -> RetentionPolicy {
    policies
        .iter()
        .filter(|p| series.starts_with(&p.prefix))
        .max_by_key(|p| p.prefix.len())
        .cloned()
        .unwrap_or_else(|| RetentionPolicy::default_for(""))
}

impl RetentionView {
    pub fn new() -> Arc<Self> {
        Arc::new(RetentionView::default())
    }

    /// Reloads everything from a state-machine database (at open, after a snapshot install).
    pub fn reload(&self, db: &SmDb, now_ns: i64) -> Result<()> {
        let mut policies = Vec::new();
        for item in db
            .db()
            .iterator_cf(db.cf(CF_TM_POLICY)?, rocksdb::IteratorMode::Start)
        {
            let (_, v) = item?;
            policies.push(decode::<RetentionPolicy>("retention policy", &v)?);
        }
        let mut names = Vec::new();
        for item in db
            .db()
            .iterator_cf(db.cf(CF_TM_SERIES)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            let meta: SeriesMeta = decode("series", &v)?;
            names.push((meta.id, String::from_utf8_lossy(&k).into_owned()));
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.now_ns = now_ns;
        inner.policies = policies;
        inner.series = names
            .into_iter()
            .map(|(id, name)| {
                (
                    id,
                    (
                        name,
                        Cutoffs {
                            raw: i64::MIN,
                            minute: i64::MIN,
                            hour: i64::MIN,
                        },
                    ),
                )
            })
            .collect();
        inner.recompute();
        Ok(())
    }

    /// The state machine applied entries up to replicated time `now_ns`.
    pub fn advance(&self, now_ns: i64) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if now_ns > inner.now_ns {
            inner.now_ns = now_ns;
            inner.recompute();
        }
    }

    fn add_series(&self, id: u64, name: &str) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let cut = inner.policy_for(name).cutoffs(inner.now_ns);
        inner.series.insert(id, (name.to_owned(), cut));
    }

    fn set_policy(&self, policy: RetentionPolicy) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.policies.retain(|p| p.prefix != policy.prefix);
        inner.policies.push(policy);
        inner.recompute();
    }

    fn cutoffs(&self, series: u64) -> Option<Cutoffs> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.series.get(&series).map(|(_, c)| *c)
    }
}

impl Retention for RetentionView {
    fn is_dead(&self, cf: &str, key: &[u8], value: &[u8]) -> bool {
        let Some(series) = read_u64(key) else {
            return false;
        };
        let Some(cut) = self.cutoffs(series) else {
            return false;
        };
        match cf {
            // A segment dies when its newest point is older than the raw cutoff.
            CF_TM_RAW => segment::info(value).is_ok_and(|i| i.max_ts < cut.raw),
            CF_TM_ROLLUP => {
                let (Some(&tier), Some(start)) =
                    (key.get(8), key.get(9..).and_then(read_i64_ordered))
                else {
                    return false;
                };
                match tier {
                    TIER_MINUTE => start + MINUTE_NS <= cut.minute,
                    TIER_HOUR => start + HOUR_NS <= cut.hour,
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

/// A segment written by the entry being applied (not yet visible in RocksDB).
struct EntrySegment {
    series: u64,
    min_ts: i64,
    seq: u32,
    ts: Vec<i64>,
    vals: Vec<f64>,
}

/// A raw point with its write order (log index, seq): the latest write of a timestamp wins.
type OrderedPoint = (i64, (u64, u32), f64);

/// Applies the telemetry commands of one log entry. Keeps what the entry wrote but
/// RocksDB does not show yet (series ids, segments, rollups) for later commands of it.
pub struct TelemetryApplier<'a> {
    db: &'a SmDb,
    view: &'a RetentionView,
    log_index: u64,
    seq: u32,
    state: Option<TelemetryState>,
    series: HashMap<String, u64>,
    new_series: Vec<(u64, String)>,
    /// Segments written by this entry.
    segments: Vec<EntrySegment>,
    rollups: BTreeMap<[u8; 17], RollupBucket>,
    policies: Option<Vec<RetentionPolicy>>,
}

impl<'a> TelemetryApplier<'a> {
    pub fn new(db: &'a SmDb, view: &'a RetentionView, log_index: u64) -> Self {
        TelemetryApplier {
            db,
            view,
            log_index,
            seq: 0,
            state: None,
            series: HashMap::new(),
            new_series: Vec::new(),
            segments: Vec::new(),
            rollups: BTreeMap::new(),
            policies: None,
        }
    }

    pub fn apply(
        &mut self,
        wb: &mut SmWriteBatch,
        commit_time_ns: i64,
        cmd: &TelemetryCommand,
    ) -> Result<TelemetryOutcome> {
        match cmd {
            TelemetryCommand::SetRetention(p) => {
                if let Err(reason) = p.validate() {
                    return Ok(TelemetryOutcome::Rejected { reason });
                }
                wb.put(
                    CF_TM_POLICY,
                    p.prefix.as_bytes(),
                    &encode("retention policy", p)?,
                )?;
                let policies = self.policies()?;
                policies.retain(|q| q.prefix != p.prefix);
                policies.push(p.clone());
                self.view.set_policy(p.clone());
                Ok(TelemetryOutcome::RetentionSet)
            }
            TelemetryCommand::Ingest(segments) => {
                // Decode and check everything before writing anything: all or nothing.
                let mut decoded = Vec::with_capacity(segments.len());
                for s in segments {
                    let (ts, vals) = match segment::decode(&s.segment) {
                        Ok(x) => x,
                        Err(e) => {
                            return Ok(TelemetryOutcome::Rejected {
                                reason: format!("series {}: {e}", s.series),
                            })
                        }
                    };
                    if ts.len() > MAX_SEGMENT_POINTS
                        || ts.windows(2).any(|w| w[1] <= w[0])
                        || vals.iter().any(|v| !v.is_finite())
                        || ts.first().is_some_and(|t| *t < MIN_TS)
                        || ts.last().is_some_and(|t| *t > MAX_TS)
                        || ts
                            .last()
                            .zip(ts.first())
                            .is_some_and(|(l, f)| l - f > MAX_SEGMENT_SPAN_NS)
                    {
                        return Ok(TelemetryOutcome::Rejected {
                            reason: format!("series {}: segment breaks the ingest rules", s.series),
                        });
                    }
                    decoded.push((s, ts, vals));
                }
                let mut points = 0;
                let mut late = 0;
                for (s, ts, vals) in decoded {
                    let (p, l) = self.ingest(wb, commit_time_ns, s, ts, vals)?;
                    points += p;
                    late += l;
                }
                Ok(TelemetryOutcome::Ingested {
                    points,
                    late_dropped: late,
                })
            }
        }
    }

    fn policies(&mut self) -> Result<&mut Vec<RetentionPolicy>> {
        if self.policies.is_none() {
            let mut v = Vec::new();
            for item in self
                .db
                .db()
                .iterator_cf(self.db.cf(CF_TM_POLICY)?, rocksdb::IteratorMode::Start)
            {
                let (_, b) = item?;
                v.push(decode::<RetentionPolicy>("retention policy", &b)?);
            }
            self.policies = Some(v);
        }
        Ok(self.policies.get_or_insert_with(Vec::new))
    }

    fn series_id(&mut self, wb: &mut SmWriteBatch, name: &str) -> Result<u64> {
        if let Some(id) = self.series.get(name) {
            return Ok(*id);
        }
        let id = match self
            .db
            .db()
            .get_pinned_cf(self.db.cf(CF_TM_SERIES)?, name.as_bytes())?
        {
            Some(b) => decode::<SeriesMeta>("series", &b)?.id,
            None => {
                let mut state = match self.state {
                    Some(s) => s,
                    None => load_state(self.db)?,
                };
                let id = state.next_series_id;
                state.next_series_id += 1;
                self.state = Some(state);
                wb.put(
                    CF_TM_SERIES,
                    name.as_bytes(),
                    &encode("series", &SeriesMeta { id })?,
                )?;
                wb.put_meta(STATE_KEY, &encode("telemetry state", &state)?)?;
                // Part of the state, so part of the digest too.
                wb.fold_bytes(name.as_bytes());
                self.new_series.push((id, name.to_owned()));
                id
            }
        };
        self.series.insert(name.to_owned(), id);
        Ok(id)
    }

    /// Registers the series this entry created with the retention view (after commit).
    pub fn finish(self) {
        for (id, name) in &self.new_series {
            self.view.add_series(*id, name);
        }
    }

    fn ingest(
        &mut self,
        wb: &mut SmWriteBatch,
        now_ns: i64,
        s: &SeriesSegment,
        ts: Vec<i64>,
        vals: Vec<f64>,
    ) -> Result<(u64, u64)> {
        let policy = policy_for(self.policies()?, &s.series);
        let cut = policy.cutoffs(now_ns);
        // Points older than the lateness bound are refused (counted, not stored).
        let (ts, vals, late) = if policy.lateness_ms > 0 {
            let oldest = now_ns.saturating_sub(
                i64::try_from(policy.lateness_ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
            );
            let keep = ts.partition_point(|t| *t < oldest);
            (ts[keep..].to_vec(), vals[keep..].to_vec(), keep as u64)
        } else {
            (ts, vals, 0)
        };
        if ts.is_empty() {
            return Ok((0, late));
        }
        let series = self.series_id(wb, &s.series)?;
        let seq = self.seq;
        self.seq += 1;
        let bytes: Vec<u8> = if late == 0 {
            s.segment.to_vec()
        } else {
            segment::encode(&ts, &vals).map_err(|e| StorageError::corrupt("segment", e))?
        };
        wb.put(
            CF_TM_RAW,
            &raw_key(series, ts[0], self.log_index, seq),
            &bytes,
        )?;
        self.segments.push(EntrySegment {
            series,
            min_ts: ts[0],
            seq,
            ts: ts.clone(),
            vals: vals.clone(),
        });

        // Minute buckets touched by this segment, then their hours.
        let mut hours = Vec::new();
        let mut i = 0;
        while i < ts.len() {
            let b = floor(ts[i], MINUTE_NS);
            let j = ts.partition_point(|t| *t < b + MINUTE_NS);
            let minute_key = rollup_key(series, TIER_MINUTE, b);
            let hour = floor(b, HOUR_NS);
            if b >= cut.raw {
                // Raw retained: the minute is recomputed from every retained raw point.
                let (mts, mvals) = self.raw_points(series, b, b + MINUTE_NS)?;
                let bucket = bucket_of(&mts, &mvals, b)?;
                self.put_rollup(wb, minute_key, bucket)?;
                if hours.last() != Some(&hour) {
                    hours.push(hour);
                }
            } else {
                // Raw already expired here (a backfill): merge into the tiers directly.
                let delta = bucket_of(&ts[i..j], &vals[i..j], b)?;
                if b + MINUTE_NS > cut.minute {
                    let mut m = self.rollup(minute_key)?.unwrap_or(new_bucket(b)?);
                    m.merge(&delta)
                        .map_err(|e| StorageError::corrupt("rollup merge", e))?;
                    self.put_rollup(wb, minute_key, m)?;
                }
                let hour_key = rollup_key(series, TIER_HOUR, hour);
                let mut h = self.rollup(hour_key)?.unwrap_or(new_bucket(hour)?);
                let mut d = delta.clone();
                d.start_ns = hour;
                h.merge(&d)
                    .map_err(|e| StorageError::corrupt("rollup merge", e))?;
                self.put_rollup(wb, hour_key, h)?;
            }
            i = j;
        }
        // An hour whose minutes are all retained is the merge of its minutes.
        for hour in hours {
            let mut h = new_bucket(hour)?;
            let from = rollup_key(series, TIER_MINUTE, hour);
            let to = rollup_key(series, TIER_MINUTE, hour + HOUR_NS);
            for (_, m) in self.rollups_in(from, to)? {
                h.merge(&m)
                    .map_err(|e| StorageError::corrupt("rollup merge", e))?;
            }
            self.put_rollup(wb, rollup_key(series, TIER_HOUR, hour), h)?;
        }
        Ok((ts.len() as u64, late))
    }

    fn put_rollup(&mut self, wb: &mut SmWriteBatch, key: [u8; 17], b: RollupBucket) -> Result<()> {
        wb.put(CF_TM_ROLLUP, &key, &b.encode())?;
        self.rollups.insert(key, b);
        Ok(())
    }

    fn rollup(&self, key: [u8; 17]) -> Result<Option<RollupBucket>> {
        if let Some(b) = self.rollups.get(&key) {
            return Ok(Some(b.clone()));
        }
        match self.db.db().get_pinned_cf(self.db.cf(CF_TM_ROLLUP)?, key)? {
            Some(b) => Ok(Some(decode_bucket(&b)?)),
            None => Ok(None),
        }
    }

    /// Rollup buckets with keys in `[from, to)`: the database's, overlaid with this entry's.
    fn rollups_in(&self, from: [u8; 17], to: [u8; 17]) -> Result<Vec<([u8; 17], RollupBucket)>> {
        let mut out: BTreeMap<[u8; 17], RollupBucket> = BTreeMap::new();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(to.to_vec());
        for item in self.db.db().iterator_cf_opt(
            self.db.cf(CF_TM_ROLLUP)?,
            opts,
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            if let Ok(key) = <[u8; 17]>::try_from(&k[..]) {
                out.insert(key, decode_bucket(&v)?);
            }
        }
        for (k, b) in self.rollups.range(from..to) {
            out.insert(*k, b.clone());
        }
        Ok(out.into_iter().collect())
    }

    /// Every retained raw point of `series` in `[from, to)`, deduplicated by timestamp (the
    /// latest write wins), sorted: the database's segments plus this entry's.
    fn raw_points(&self, series: u64, from: i64, to: i64) -> Result<(Vec<i64>, Vec<f64>)> {
        let mut pts = read_raw(self.db, series, from, to)?;
        for s in &self.segments {
            if s.series != series || s.min_ts >= to {
                continue;
            }
            let order = (self.log_index, s.seq);
            let lo = s.ts.partition_point(|t| *t < from);
            let hi = s.ts.partition_point(|t| *t < to);
            pts.extend((lo..hi).map(|i| (s.ts[i], order, s.vals[i])));
        }
        Ok(dedupe(pts))
    }
}

/// Sorts by (timestamp, write order) and keeps the latest write of each timestamp.
fn dedupe(mut pts: Vec<OrderedPoint>) -> (Vec<i64>, Vec<f64>) {
    pts.sort_by_key(|p| (p.0, p.1));
    let mut ts = Vec::with_capacity(pts.len());
    let mut vals: Vec<f64> = Vec::with_capacity(pts.len());
    for (t, _, v) in pts {
        if ts.last() == Some(&t) {
            if let Some(last) = vals.last_mut() {
                *last = v;
            }
        } else {
            ts.push(t);
            vals.push(v);
        }
    }
    (ts, vals)
}

/// Raw points of a series in `[from, to)` from the database, with their write order.
fn read_raw(db: &SmDb, series: u64, from: i64, to: i64) -> Result<Vec<OrderedPoint>> {
    let start = raw_key(series, from.saturating_sub(MAX_SEGMENT_SPAN_NS), 0, 0);
    let end = raw_key(series, to, 0, 0);
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(end.to_vec());
    let mut out = Vec::new();
    let (mut ts, mut vals) = (Vec::new(), Vec::new());
    for item in db.db().iterator_cf_opt(
        db.cf(CF_TM_RAW)?,
        opts,
        rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
    ) {
        let (k, v) = item?;
        let info = segment::info(&v).map_err(|e| StorageError::corrupt("segment", e))?;
        if info.max_ts < from {
            continue;
        }
        segment::decode_into(&v, &mut ts, &mut vals)
            .map_err(|e| StorageError::corrupt("segment", e))?;
        let order = (
            read_u64(&k[16..]).unwrap_or(0),
            k.get(24..28)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        );
        let lo = ts.partition_point(|t| *t < from);
        let hi = ts.partition_point(|t| *t < to);
        out.extend((lo..hi).map(|i| (ts[i], order, vals[i])));
    }
    Ok(out)
}

fn load_state(db: &SmDb) -> Result<TelemetryState> {
    match db.db().get_pinned_cf(db.cf(CF_META)?, STATE_KEY)? {
        Some(b) => decode("telemetry state", &b),
        None => Ok(TelemetryState::default()),
    }
}

pub fn series_id(db: &SmDb, name: &str) -> Result<Option<u64>> {
    match db
        .db()
        .get_pinned_cf(db.cf(CF_TM_SERIES)?, name.as_bytes())?
    {
        Some(b) => Ok(Some(decode::<SeriesMeta>("series", &b)?.id)),
        None => Ok(None),
    }
}

pub fn policy(db: &SmDb, series: &str) -> Result<RetentionPolicy> {
    let mut v = Vec::new();
    for item in db
        .db()
        .iterator_cf(db.cf(CF_TM_POLICY)?, rocksdb::IteratorMode::Start)
    {
        let (_, b) = item?;
        v.push(decode::<RetentionPolicy>("retention policy", &b)?);
    }
    Ok(policy_for(&v, series))
}

/// Which tier serves a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierChoice {
    /// The coarsest tier that serves the bucket width, where it is retained.
    Auto,
    Raw,
    Minute,
    Hour,
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
    /// Exact per-bucket medians for raw buckets.
    pub median: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BucketOut {
    pub start_ns: i64,
    pub moments: Moments,
    pub sketch: DDSketch,
    pub median: Option<f64>,
    /// "raw", "minute" or "hour".
    pub tier: &'static str,
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
    pub anomalies: Vec<super::agg::Anomaly>,
    pub m4: Vec<M4Out>,
    /// Raw points read.
    pub raw_points: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Most buckets one query returns.
pub const MAX_QUERY_BUCKETS: i64 = 100_000;
/// Most raw points one query reads (bounds memory and time).
pub const MAX_QUERY_RAW_POINTS: usize = 50_000_000;

fn nice_width(w: i64) -> i64 {
    if w >= HOUR_NS {
        (w + HOUR_NS - 1) / HOUR_NS * HOUR_NS
    } else if w >= MINUTE_NS {
        (w + MINUTE_NS - 1) / MINUTE_NS * MINUTE_NS
    } else {
        w.max(1)
    }
}

/// Answers a query at replicated time `now_ns`.
pub fn query(db: &SmDb, now_ns: i64, q: &QuerySpec) -> Result<QueryResult, QueryError> {
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
    let span = q.end_ns - q.start_ns;
    let width = match (q.bucket_ns, q.target_points) {
        (w, _) if w > 0 => w,
        (_, p) if p > 0 => nice_width((span + i64::from(p) - 1) / i64::from(p)),
        _ => {
            return Err(QueryError::Invalid(
                "give a bucket width or a target number of points".into(),
            ))
        }
    };
    if span / width > MAX_QUERY_BUCKETS {
        return Err(QueryError::Invalid(format!(
            "{} buckets requested, the limit is {MAX_QUERY_BUCKETS}",
            span / width
        )));
    }
    let mut result = QueryResult {
        bucket_ns: width,
        buckets: Vec::new(),
        summary: Moments::new(),
        summary_sketch: DDSketch::new(),
        anomalies: Vec::new(),
        m4: Vec::new(),
        raw_points: 0,
    };
    let Some(series) = series_id(db, &q.series)? else {
        return Ok(result);
    };
    let cut = policy(db, &q.series)?.cutoffs(now_ns);
    // Output buckets are aligned to multiples of the width since the epoch.
    let first = floor(q.start_ns, width);
    // Which tier serves a bucket starting at `s`.
    let tier_of = |s: i64| -> &'static str {
        match q.tier {
            TierChoice::Raw => "raw",
            TierChoice::Minute => "minute",
            TierChoice::Hour => "hour",
            TierChoice::Auto => {
                if width % HOUR_NS == 0 {
                    "hour"
                } else if width % MINUTE_NS == 0 && s >= cut.minute {
                    "minute"
                } else if s >= cut.raw {
                    "raw"
                } else if s >= cut.minute {
                    "minute"
                } else {
                    "hour"
                }
            }
        }
    };
    // Group consecutive output buckets by tier and read each run at once.
    let mut s = first;
    while s < q.end_ns {
        let tier = tier_of(s);
        let mut e = s + width;
        while e < q.end_ns && tier_of(e) == tier {
            e += width;
        }
        let (lo, hi) = (s.max(q.start_ns), e.min(q.end_ns));
        match tier {
            "raw" => read_raw_run(db, series, cut, lo, hi, width, q, &mut result)?,
            t => {
                let (tier_id, tier_width, dead_before) = if t == "minute" {
                    (TIER_MINUTE, MINUTE_NS, cut.minute)
                } else {
                    (TIER_HOUR, HOUR_NS, cut.hour)
                };
                read_rollup_run(
                    db,
                    series,
                    tier_id,
                    tier_width,
                    dead_before,
                    lo,
                    hi,
                    width,
                    t,
                    q,
                    &mut result,
                )?;
            }
        }
        s = e;
    }
    for b in &result.buckets {
        result.summary.merge(&b.moments);
        let _ = result.summary_sketch.merge(&b.sketch);
    }
    Ok(result)
}

#[allow(clippy::too_many_arguments)]
fn read_rollup_run(
    db: &SmDb,
    series: u64,
    tier: u8,
    tier_width: i64,
    dead_before: i64,
    lo: i64,
    hi: i64,
    width: i64,
    name: &'static str,
    q: &QuerySpec,
    out: &mut QueryResult,
) -> Result<(), QueryError> {
    let from = rollup_key(series, tier, floor(lo, tier_width));
    let to = rollup_key(series, tier, hi);
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(to.to_vec());
    for item in db.db().iterator_cf_opt(
        db.cf(CF_TM_ROLLUP)?,
        opts,
        rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
    ) {
        let (_, v) = item.map_err(StorageError::from)?;
        let b = decode_bucket(&v)?;
        // Dead by retention, whether or not compaction removed it here yet.
        if b.start_ns + tier_width <= dead_before || b.start_ns < floor(lo, tier_width) {
            continue;
        }
        let start = floor(b.start_ns, width);
        match out.buckets.last_mut() {
            Some(last) if last.start_ns == start && last.tier == name => {
                last.moments.merge(&b.moments);
                let _ = last.sketch.merge(&b.sketch);
            }
            _ => out.buckets.push(BucketOut {
                start_ns: start,
                moments: b.moments,
                sketch: b.sketch.clone(),
                median: None,
                tier: name,
            }),
        }
        rollup_m4(q, &b, out);
    }
    Ok(())
}

/// M4 over a range served by rollups: each bucket contributes its first and last points
/// and its extremes (placed at the bucket's start: rollups keep no argmin/argmax).
fn rollup_m4(q: &QuerySpec, b: &RollupBucket, out: &mut QueryResult) {
    if q.m4_width == 0 || b.start_ns < q.start_ns || b.start_ns >= q.end_ns {
        return;
    }
    let (Some(first), Some(last), Some(min), Some(max)) = (
        b.moments.first(),
        b.moments.last(),
        b.moments.min(),
        b.moments.max(),
    ) else {
        return;
    };
    let span = (q.end_ns - q.start_ns) as i128;
    let pixel = ((b.start_ns - q.start_ns) as i128 * i128::from(q.m4_width) / span) as u32;
    match out.m4.last_mut() {
        Some(c) if c.pixel == pixel => {
            c.last = last;
            if min < c.min.1 {
                c.min = (b.start_ns, min);
            }
            if max > c.max.1 {
                c.max = (b.start_ns, max);
            }
        }
        _ => out.m4.push(M4Out {
            pixel,
            first,
            last,
            min: (b.start_ns, min),
            max: (b.start_ns, max),
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn read_raw_run(
    db: &SmDb,
    series: u64,
    cut: Cutoffs,
    lo: i64,
    hi: i64,
    width: i64,
    q: &QuerySpec,
    out: &mut QueryResult,
) -> Result<(), QueryError> {
    // Points older than the raw cutoff are dead whether or not compaction removed them.
    let lo = lo.max(cut.raw);
    if lo >= hi {
        return Ok(());
    }
    let pts = read_raw(db, series, lo, hi)?;
    if pts.len() > MAX_QUERY_RAW_POINTS {
        return Err(QueryError::Invalid(format!(
            "the range holds more than {MAX_QUERY_RAW_POINTS} raw points: narrow it or use a coarser bucket"
        )));
    }
    let (ts, vals) = dedupe(pts);
    out.raw_points += ts.len() as u64;
    if ts.is_empty() {
        return Ok(());
    }
    let cfg = AggConfig::time_width(width)
        .with_median(q.median)
        .with_anomaly(q.anomaly_z.map(|z| AnomalyConfig {
            threshold: z,
            ..AnomalyConfig::default()
        }));
    let mut agg = Aggregator::new(cfg).map_err(|e| QueryError::Invalid(e.to_string()))?;
    agg.push(&ts, &vals)
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
        out.buckets.push(BucketOut {
            start_ns: b.start_ns,
            moments: b.moments,
            sketch,
            median: b.median,
            tier: "raw",
        });
    }
    out.anomalies.extend_from_slice(agg.anomalies());
    if q.m4_width > 0 {
        let cols = m4(&ts, &vals, q.start_ns, q.end_ns, q.m4_width)
            .map_err(|e| QueryError::Invalid(e.to_string()))?;
        out.m4.extend(cols.iter().map(|c| M4Out {
            pixel: c.pixel,
            first: (c.first.ts, c.first.value),
            last: (c.last.ts, c.last.value),
            min: (c.min.ts, c.min.value),
            max: (c.max.ts, c.max.value),
        }));
    }
    Ok(())
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

/// Sorts one series' points by timestamp and keeps the last value given for a timestamp.
pub fn sort_dedupe(mut points: Vec<(i64, f64)>) -> (Vec<i64>, Vec<f64>) {
    // A stable sort keeps the order of equal timestamps: the last one given wins.
    points.sort_by_key(|p| p.0);
    let mut ts: Vec<i64> = Vec::with_capacity(points.len());
    let mut vals: Vec<f64> = Vec::with_capacity(points.len());
    for (t, v) in points {
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

/// Bytes on disk per tier (live SST files), for operators and the reclaim test.
pub fn disk_usage(db: &SmDb) -> Result<(u64, u64)> {
    let prop = |cf: &'static str| -> Result<u64> {
        Ok(db
            .db()
            .property_int_value_cf(db.cf(cf)?, "rocksdb.total-sst-files-size")?
            .unwrap_or(0))
    };
    Ok((prop(CF_TM_RAW)?, prop(CF_TM_ROLLUP)?))
}

/// Flushes the telemetry column families to disk (so their size shows in SST files).
pub fn flush(db: &SmDb) -> Result<()> {
    for cf in [CF_TM_RAW, CF_TM_ROLLUP] {
        db.db().flush_cf(db.cf(cf)?)?;
    }
    Ok(())
}

/// Flushes and compacts the telemetry column families: expired records go now.
pub fn compact(db: &SmDb) -> Result<()> {
    flush(db)?;
    for cf in [CF_TM_RAW, CF_TM_ROLLUP] {
        let h = db.cf(cf)?;
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        db.db()
            .compact_range_cf_opt(h, None::<&[u8]>, None::<&[u8]>, &opts);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_cutoffs_and_validation() {
        let p = RetentionPolicy::default_for("sat-");
        assert!(p.validate().is_ok());
        let now = 10 * 24 * HOUR_NS + 17 * MINUTE_NS + 5;
        let c = p.cutoffs(now);
        assert_eq!(c.raw, floor(now - 48 * HOUR_NS, MINUTE_NS));
        assert_eq!(c.raw % MINUTE_NS, 0);
        assert_eq!(c.hour, i64::MIN);
        let bad = RetentionPolicy {
            minute_ms: p.raw_ms,
            ..p.clone()
        };
        assert!(bad.validate().is_err());
        let policies = vec![
            RetentionPolicy::default_for("sat-"),
            RetentionPolicy {
                raw_ms: 1,
                ..RetentionPolicy::default_for("sat-7/")
            },
        ];
        assert_eq!(policy_for(&policies, "sat-7/battery_v").raw_ms, 1);
        assert_eq!(policy_for(&policies, "sat-8/x").prefix, "sat-");
        assert_eq!(policy_for(&policies, "ground/x").prefix, "");
    }

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
