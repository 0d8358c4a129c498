//! Ingest in the replicated store: the state machine's applier of telemetry commands,
//! writing raw columnar segments and the mergeable rollup tiers (see [`super::keys`] for
//! where they are stored).
//!
//! ## A point is identified by (series, timestamp) on every path
//!
//! Points may arrive in any order and more than once; re-sending anything is harmless.
//! * Where raw points are retained, every ingest recomputes the minute buckets it touches
//!   from all retained raw points of those minutes (deduplicated: the latest write of a
//!   timestamp wins, by log order), and their hours from the minutes — so rollups always
//!   equal a recomputation from the deduplicated raw data.
//! * Where raw has expired (a backfill of history older than the raw retention), points go
//!   to the finest tier still retained for their time, and a bucket there cannot tell which
//!   timestamps it already holds. So a backfill adds to an existing bucket only the points
//!   outside the time span it already covers (before its first or after its last point);
//!   points inside that span are skipped and counted (`skipped`): a re-sent point always
//!   lies inside it. A bucket whose tier has expired is never written (every replica would
//!   otherwise write bytes that depend on whether it compacted); its points are skipped
//!   too. Points older than the policy's `lateness_ms` (if set) are refused and counted.
//!
//! ## Apply is total
//!
//! Whatever a command holds (a series name, a segment, a policy), apply answers
//! [`TelemetryOutcome::Rejected`] for what breaks the rules — fixed structural rules, never
//! a node's configuration — and writes nothing for it; only a storage failure is an error.

use std::collections::{BTreeMap, HashMap};

use super::command::{
    check_name, SeriesSegment, TelemetryCommand, TelemetryOutcome, MAX_SEGMENT_POINTS,
    MAX_SEGMENT_SPAN_NS, MAX_TS, MIN_TS,
};
use super::keys::{
    decode_bucket, encode_series_id, raw_key, rollup_key, TelemetryState, STATE_KEY,
};
use super::moments::Moments;
use super::points::dedupe;
use super::read::{load_state, read_raw, series_id};
use super::retention::{floor, Policies, PolicyRecord, HOUR_NS, MINUTE_NS, TIER_HOUR, TIER_MINUTE};
use super::rollup::RollupBucket;
use super::segment;
use super::sketch::{DEFAULT_ALPHA, DEFAULT_MAX_BINS};
use crate::storage::sm_db::{
    SmDb, SmWriteBatch, CF_TM_POLICY, CF_TM_RAW, CF_TM_ROLLUP, CF_TM_SERIES,
};
use crate::storage::{encode, Result, StorageError};

fn new_bucket(start: i64) -> Result<RollupBucket> {
    RollupBucket::new(start, DEFAULT_ALPHA, DEFAULT_MAX_BINS)
        .map_err(|e| StorageError::corrupt("rollup", e))
}

fn bucket_of(ts: &[i64], vals: &[f64], start: i64) -> Result<RollupBucket> {
    let mut b = new_bucket(start)?;
    b.moments = Moments::from_sorted(ts, vals);
    for &v in vals {
        b.sketch.insert(v);
    }
    Ok(b)
}

fn merge_into(b: &mut RollupBucket, delta: &RollupBucket) -> Result<()> {
    b.merge(delta)
        .map_err(|e| StorageError::corrupt("rollup merge", e))
}

/// A segment written by the entry being applied (not yet visible in RocksDB).
struct EntrySegment {
    series: u64,
    min_ts: i64,
    seq: u32,
    ts: Vec<i64>,
    vals: Vec<f64>,
}

/// What one segment's ingest did.
#[derive(Default)]
struct Counts {
    points: u64,
    late: u64,
    skipped: u64,
}

/// Applies the telemetry commands of one log entry. Keeps what the entry wrote but
/// RocksDB does not show yet (series ids, segments, rollups, policies) for later commands
/// of it.
pub struct TelemetryApplier<'a> {
    db: &'a SmDb,
    log_index: u64,
    seq: u32,
    state: Option<TelemetryState>,
    series: HashMap<String, u64>,
    /// Segments written by this entry.
    segments: Vec<EntrySegment>,
    rollups: BTreeMap<[u8; 17], RollupBucket>,
    policies: Option<Policies>,
}

impl<'a> TelemetryApplier<'a> {
    /// The raw segments this entry wrote, in write order (for [`super::stream::Feed`]).
    pub fn written(&self) -> Vec<super::stream::SegmentRef> {
        self.segments
            .iter()
            .map(|s| super::stream::SegmentRef {
                index: self.log_index,
                seq: s.seq,
                series: s.series,
                min_ts: s.min_ts,
            })
            .collect()
    }

    pub fn new(db: &'a SmDb, log_index: u64) -> Self {
        TelemetryApplier {
            db,
            log_index,
            seq: 0,
            state: None,
            series: HashMap::new(),
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
        let rejected = |reason: String| Ok(TelemetryOutcome::Rejected { reason });
        match cmd {
            TelemetryCommand::SetRetention(p) => {
                if let Err(reason) = check_name(&p.prefix, true).and_then(|()| p.validate()) {
                    return rejected(reason);
                }
                let next = self.state()?.next_series_id;
                let record = self.policies()?.record_for(p.clone(), commit_time_ns, next);
                wb.put(
                    CF_TM_POLICY,
                    p.prefix.as_bytes(),
                    &encode("retention policy", &record)?,
                )?;
                self.policies()?.set(record);
                Ok(TelemetryOutcome::RetentionSet)
            }
            TelemetryCommand::Ingest(segments) => {
                if segments.is_empty() {
                    return rejected("an ingest carries at least one segment".into());
                }
                // Decode and check everything before writing anything: all or nothing.
                let mut decoded = Vec::with_capacity(segments.len());
                for s in segments {
                    if let Err(reason) = check_name(&s.series, false) {
                        return rejected(reason);
                    }
                    let (ts, vals) = match segment::decode(&s.segment) {
                        Ok(x) => x,
                        Err(e) => return rejected(format!("series {}: {e}", s.series)),
                    };
                    if ts.is_empty()
                        || ts.len() > MAX_SEGMENT_POINTS
                        || ts.windows(2).any(|w| w[1] <= w[0])
                        || vals.iter().any(|v| !v.is_finite())
                        || ts.first().is_some_and(|t| *t < MIN_TS)
                        || ts.last().is_some_and(|t| *t > MAX_TS)
                        || ts
                            .last()
                            .zip(ts.first())
                            .is_some_and(|(l, f)| l - f > MAX_SEGMENT_SPAN_NS)
                    {
                        return rejected(format!(
                            "series {}: segment breaks the ingest rules",
                            s.series
                        ));
                    }
                    decoded.push((s, ts, vals));
                }
                let mut total = Counts::default();
                for (s, ts, vals) in decoded {
                    let c = self.ingest(wb, commit_time_ns, s, ts, vals)?;
                    total.points += c.points;
                    total.late += c.late;
                    total.skipped += c.skipped;
                }
                Ok(TelemetryOutcome::Ingested {
                    points: total.points,
                    late_dropped: total.late,
                    skipped: total.skipped,
                })
            }
        }
    }

    fn policies(&mut self) -> Result<&mut Policies> {
        if self.policies.is_none() {
            let mut records = Vec::new();
            for item in self
                .db
                .db()
                .iterator_cf(self.db.cf(CF_TM_POLICY)?, rocksdb::IteratorMode::Start)
            {
                let (_, b) = item?;
                records.push(PolicyRecord::decode(&b)?);
            }
            self.policies = Some(Policies::from_records(records));
        }
        Ok(self.policies.get_or_insert_with(Policies::default))
    }

    fn state(&mut self) -> Result<TelemetryState> {
        if let Some(s) = self.state {
            return Ok(s);
        }
        let s = load_state(self.db)?;
        self.state = Some(s);
        Ok(s)
    }

    fn series_id(&mut self, wb: &mut SmWriteBatch, name: &str) -> Result<u64> {
        if let Some(id) = self.series.get(name) {
            return Ok(*id);
        }
        let id = match series_id(self.db, name)? {
            Some(id) => id,
            None => {
                let mut state = self.state()?;
                let id = state.next_series_id;
                state.next_series_id += 1;
                self.state = Some(state);
                wb.put(CF_TM_SERIES, name.as_bytes(), &encode_series_id(id)?)?;
                wb.put_meta(STATE_KEY, &encode("telemetry state", &state)?)?;
                // Part of the state, so part of the digest too.
                wb.fold_bytes(name.as_bytes());
                id
            }
        };
        self.series.insert(name.to_owned(), id);
        Ok(id)
    }

    fn ingest(
        &mut self,
        wb: &mut SmWriteBatch,
        now_ns: i64,
        s: &SeriesSegment,
        ts: Vec<i64>,
        vals: Vec<f64>,
    ) -> Result<Counts> {
        let oldest = self
            .policies()?
            .policy_for(&s.series)
            .oldest_accepted(now_ns);
        // Points older than the lateness bound are refused (counted, not stored).
        let keep = ts.partition_point(|t| *t < oldest);
        let (ts, vals) = if keep > 0 {
            (ts[keep..].to_vec(), vals[keep..].to_vec())
        } else {
            (ts, vals)
        };
        let mut counts = Counts {
            late: keep as u64,
            ..Counts::default()
        };
        let (Some(&first), Some(&last)) = (ts.first(), ts.last()) else {
            return Ok(counts);
        };
        let series = self.series_id(wb, &s.series)?;
        let cut = self.policies()?.cutoffs(series, &s.series, now_ns);
        // A segment none of whose points is retained raw is not written: it would be dead
        // on arrival.
        if last >= cut.raw {
            let seq = self.seq;
            self.seq += 1;
            let bytes: Vec<u8> = if keep == 0 {
                s.segment.to_vec()
            } else {
                segment::encode(&ts, &vals).map_err(|e| StorageError::corrupt("segment", e))?
            };
            wb.put(
                CF_TM_RAW,
                &raw_key(series, first, self.log_index, seq),
                &bytes,
            )?;
            self.segments.push(EntrySegment {
                series,
                min_ts: first,
                seq,
                ts: ts.clone(),
                vals: vals.clone(),
            });
        }

        // Every retained raw point of the minutes this segment touches, read at once (one
        // range read per segment, not one per minute).
        let retained_from = floor(first, MINUTE_NS).max(cut.raw);
        let (rts, rvals) = if last >= retained_from {
            self.raw_points(series, retained_from, floor(last, MINUTE_NS) + MINUTE_NS)?
        } else {
            (Vec::new(), Vec::new())
        };
        // Hours whose minutes changed: recomputed from their minutes at the end.
        let mut hours: Vec<i64> = Vec::new();
        let mut i = 0;
        while i < ts.len() {
            let minute = floor(ts[i], MINUTE_NS);
            let hour = floor(minute, HOUR_NS);
            let j;
            if minute >= cut.raw {
                // Raw retained: the minute is recomputed from every retained raw point.
                j = ts.partition_point(|t| *t < minute + MINUTE_NS);
                let lo = rts.partition_point(|t| *t < minute);
                let hi = rts.partition_point(|t| *t < minute + MINUTE_NS);
                let bucket = bucket_of(&rts[lo..hi], &rvals[lo..hi], minute)?;
                self.put_rollup(wb, rollup_key(series, TIER_MINUTE, minute), bucket)?;
                counts.points += (j - i) as u64;
                if hours.last() != Some(&hour) {
                    hours.push(hour);
                }
            } else if minute >= cut.minute {
                // Raw expired, the minute retained (then its whole hour is: the minute
                // cutoff is hour-aligned).
                j = ts.partition_point(|t| *t < minute + MINUTE_NS);
                let key = rollup_key(series, TIER_MINUTE, minute);
                let stored = self.backfill(wb, key, minute, &ts[i..j], &vals[i..j])?;
                counts.points += stored;
                counts.skipped += (j - i) as u64 - stored;
                if stored > 0 && hours.last() != Some(&hour) {
                    hours.push(hour);
                }
            } else {
                // Only the hour tier may be retained for this whole hour.
                j = ts.partition_point(|t| *t < hour + HOUR_NS);
                let stored = if hour >= cut.hour {
                    let key = rollup_key(series, TIER_HOUR, hour);
                    self.backfill(wb, key, hour, &ts[i..j], &vals[i..j])?
                } else {
                    0
                };
                counts.points += stored;
                counts.skipped += (j - i) as u64 - stored;
            }
            i = j;
        }
        // An hour whose minutes are retained is the merge of its minutes.
        for hour in hours {
            let mut h = new_bucket(hour)?;
            let from = rollup_key(series, TIER_MINUTE, hour);
            let to = rollup_key(series, TIER_MINUTE, hour + HOUR_NS);
            for (_, m) in self.rollups_in(from, to)? {
                merge_into(&mut h, &m)?;
            }
            self.put_rollup(wb, rollup_key(series, TIER_HOUR, hour), h)?;
        }
        Ok(counts)
    }

    /// Adds to the rollup bucket at `key` the points outside the span it already covers;
    /// returns how many it added.
    fn backfill(
        &mut self,
        wb: &mut SmWriteBatch,
        key: [u8; 17],
        start: i64,
        ts: &[i64],
        vals: &[f64],
    ) -> Result<u64> {
        let existing = self.rollup(key)?;
        let span = existing
            .as_ref()
            .and_then(|b| Some((b.moments.first()?.0, b.moments.last()?.0)));
        let (new_ts, new_vals): (Vec<i64>, Vec<f64>) = match span {
            None => (ts.to_vec(), vals.to_vec()),
            Some((lo, hi)) => ts
                .iter()
                .zip(vals)
                .filter(|(t, _)| **t < lo || **t > hi)
                .map(|(t, v)| (*t, *v))
                .unzip(),
        };
        if new_ts.is_empty() {
            return Ok(0);
        }
        let mut b = match existing {
            Some(b) => b,
            None => new_bucket(start)?,
        };
        merge_into(&mut b, &bucket_of(&new_ts, &new_vals, start)?)?;
        self.put_rollup(wb, key, b)?;
        Ok(new_ts.len() as u64)
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
        let mut pts = read_raw(self.db, None, series, from, to)?;
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::telemetry::points::segments_of;
    use crate::telemetry::retention::{RetentionPolicy, RetentionView};

    type Records = Vec<(Box<[u8]>, Box<[u8]>)>;

    fn records(db: &SmDb, cf: &'static str) -> Records {
        db.db()
            .iterator_cf(db.cf(cf).unwrap(), rocksdb::IteratorMode::Start)
            .map(|r| r.unwrap())
            .collect()
    }

    fn fresh_store() -> (tempfile::TempDir, crate::storage::SmStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::SmStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn apply_entry(db: &SmDb, index: u64, now: i64, cmd: &TelemetryCommand) -> TelemetryOutcome {
        let mut wb = SmWriteBatch::new(db, 0, index);
        let outcome = TelemetryApplier::new(db, index)
            .apply(&mut wb, now, cmd)
            .unwrap();
        let state = crate::eventstore::StoreState {
            last_commit_time_ns: now,
            ..Default::default()
        };
        wb.put_meta(crate::eventstore::STATE_KEY, &state.encode().unwrap())
            .unwrap();
        wb.commit().unwrap();
        outcome
    }

    fn points(series: &str, start: i64, n: i64) -> TelemetryCommand {
        let ts: Vec<i64> = (0..n).map(|i| start + i * 1_000_000_000).collect();
        let vals: Vec<f64> = ts.iter().map(|t| (t % 7) as f64).collect();
        TelemetryCommand::Ingest(segments_of(series, &ts, &vals).unwrap())
    }

    /// Issue 9, points 3b, 3c and 9d: the compaction filter goes by the state at the last
    /// durable point (moved by `sync` only, never by apply, never by a batch not written);
    /// a point-in-time reader (snapshot dump, state scan) goes by the state of its view.
    #[test]
    fn compaction_view_lags_durable_state_and_readers_use_their_own() {
        use crate::storage::sm_db::{Retention, SmStore};
        let dir = tempfile::tempdir().unwrap();
        let view = RetentionView::new();
        let store = SmStore::open_with(dir.path(), view.clone()).unwrap();
        let db = store.db();
        let t0 = 1_700_000_000_000_000_000i64;
        apply_entry(&db, 1, t0, &points("s/a", t0 - 10 * MINUTE_NS, 30));
        db.sync().unwrap();
        let raw = records(&db, CF_TM_RAW);
        assert_eq!(raw.len(), 1);
        let (k, v) = &raw[0];
        let dead_now = |store: &SmStore| {
            let snap = db.db().snapshot();
            store.dead_rule(&db, &snap).unwrap()(CF_TM_RAW, k, v)
        };
        // Three days later (raw retention is 48 h), and a policy in a batch never written.
        apply_entry(
            &db,
            2,
            t0 + 72 * HOUR_NS,
            &points("s/b", t0 + 72 * HOUR_NS, 3),
        );
        let mut wb = SmWriteBatch::new(&db, 0, 3);
        let short = RetentionPolicy {
            raw_ms: 1,
            ..RetentionPolicy::default_for("s/")
        };
        TelemetryApplier::new(&db, 3)
            .apply(
                &mut wb,
                t0 + 72 * HOUR_NS,
                &TelemetryCommand::SetRetention(short),
            )
            .unwrap();
        drop(wb);
        assert!(!view.is_dead(CF_TM_RAW, k, v), "not durable yet: kept");
        assert!(
            dead_now(&store),
            "a reader of the current state sees it dead"
        );
        db.sync().unwrap();
        assert!(
            view.is_dead(CF_TM_RAW, k, v),
            "durable now: compaction may drop it"
        );
    }

    /// (points stored, points skipped) of an ingest.
    fn stored_skipped(o: &TelemetryOutcome) -> Option<(u64, u64)> {
        match o {
            TelemetryOutcome::Ingested {
                points, skipped, ..
            } => Some((*points, *skipped)),
            _ => None,
        }
    }

    /// Issue 9, points 4 and 11a: a backfill never writes a bucket whose tier has expired,
    /// and re-sending it changes nothing.
    #[test]
    fn backfill_is_idempotent_and_leaves_expired_tiers_alone() {
        let (_dir, store) = fresh_store();
        let db = store.db();
        let now = 1_700_000_000_000_000_000i64;
        let finite = RetentionPolicy {
            hour_ms: 40 * 24 * 3_600_000,
            ..RetentionPolicy::default_for("h/")
        };
        apply_entry(&db, 1, now, &TelemetryCommand::SetRetention(finite));
        let old = floor(now - 60 * 24 * HOUR_NS, HOUR_NS);
        let mid = floor(now - 10 * 24 * HOUR_NS, HOUR_NS);
        let cmd = points("h/x", mid, 200);
        let first = apply_entry(&db, 2, now, &cmd);
        assert_eq!(stored_skipped(&first), Some((200, 0)), "{first:?}");
        let rollups = |db: &SmDb| records(db, CF_TM_ROLLUP);
        let before = rollups(&db);
        let again = apply_entry(&db, 3, now, &cmd);
        assert_eq!(stored_skipped(&again), Some((0, 200)), "{again:?}");
        assert_eq!(rollups(&db), before, "a re-sent backfill writes nothing");
        let expired = apply_entry(&db, 4, now, &points("h/x", old, 10));
        assert_eq!(stored_skipped(&expired), Some((0, 10)), "{expired:?}");
        assert_eq!(
            rollups(&db),
            before,
            "no bucket of an expired tier is written"
        );
    }

    #[test]
    fn bad_commands_are_rejected_not_errors() {
        let (_dir, store) = fresh_store();
        let db = store.db();
        let seg = |series: &str| SeriesSegment {
            series: series.into(),
            segment: Bytes::from(segment::encode(&[1], &[1.0]).unwrap()),
        };
        for cmd in [
            TelemetryCommand::Ingest(vec![]),
            TelemetryCommand::Ingest(vec![seg("no-channel")]),
            TelemetryCommand::Ingest(vec![seg("bad name/x")]),
            TelemetryCommand::Ingest(vec![SeriesSegment {
                series: "a/b".into(),
                segment: Bytes::from_static(b"garbage"),
            }]),
            TelemetryCommand::SetRetention(RetentionPolicy {
                raw_ms: u64::MAX,
                ..RetentionPolicy::default_for("a/")
            }),
            TelemetryCommand::SetRetention(RetentionPolicy::default_for("bad prefix")),
        ] {
            let out = apply_entry(&db, 1, 0, &cmd);
            assert!(
                matches!(out, TelemetryOutcome::Rejected { .. }),
                "{cmd:?}: {out:?}"
            );
        }
    }
}
