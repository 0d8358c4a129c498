//! Reads of stored telemetry that apply and queries share: a series' id, the replicated
//! counters, and the raw points of a range with their write order — from the live database
//! or from a point-in-time view of it.

use super::command::MAX_SEGMENT_SPAN_NS;
use super::keys::{decode_series_id, raw_key, raw_key_order, TelemetryState, STATE_KEY};
use super::points::OrderedPoint;
use super::segment;
use crate::storage::sm_db::{SmDb, CF_META, CF_TM_RAW, CF_TM_SERIES};
use crate::storage::{decode, Result, StorageError};

/// Read options on the live database, or on a point-in-time view of it.
pub(crate) fn read_opts(view: Option<&rocksdb::Snapshot<'_>>) -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    if let Some(v) = view {
        opts.set_snapshot(v);
    }
    opts
}

/// Raw points of a series in `[from, to)` from the database, with their write order.
pub(crate) fn read_raw(
    db: &SmDb,
    view: Option<&rocksdb::Snapshot<'_>>,
    series: u64,
    from: i64,
    to: i64,
) -> Result<Vec<OrderedPoint>> {
    let start = raw_key(series, from.saturating_sub(MAX_SEGMENT_SPAN_NS), 0, 0);
    let end = raw_key(series, to, 0, 0);
    let mut opts = read_opts(view);
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
        let order = raw_key_order(&k);
        let lo = ts.partition_point(|t| *t < from);
        let hi = ts.partition_point(|t| *t < to);
        out.extend((lo..hi).map(|i| (ts[i], order, vals[i])));
    }
    Ok(out)
}

pub(crate) fn load_state(db: &SmDb) -> Result<TelemetryState> {
    match db.db().get_pinned_cf(db.cf(CF_META)?, STATE_KEY)? {
        Some(b) => decode("telemetry state", &b),
        None => Ok(TelemetryState::default()),
    }
}

/// The id of series `name`, if it exists.
pub fn series_id(db: &SmDb, name: &str) -> Result<Option<u64>> {
    match db
        .db()
        .get_pinned_cf(db.cf(CF_TM_SERIES)?, name.as_bytes())?
    {
        Some(b) => Ok(Some(decode_series_id(&b)?)),
        None => Ok(None),
    }
}

/// Why a [`RawStream`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The read would pass the points it was allowed (shared by the streams of one query).
    #[error("the range holds more than {0} raw points: narrow it or use buckets")]
    TooManyPoints(usize),
}

/// Points decoded per chunk at most: bounds a chunk's buffers whatever the overlap.
const STREAM_CHUNK_POINTS: usize = 65_536;

/// A segment read but not decoded yet: its first timestamp (from its key), write order
/// and bytes.
type PendingSegment = (i64, (u64, u32), Box<[u8]>);

/// A decoded segment whose points `[pos, end)` are still to be merged.
struct OpenSegment {
    ts: Vec<i64>,
    vals: Vec<f64>,
    pos: usize,
    end: usize,
    /// (log index, seq): of equal timestamps the latest write wins.
    order: (u64, u32),
}

/// One series' raw points in `[from, to)`, in time order and deduplicated like
/// [`super::points::dedupe`] (the latest write of a timestamp wins), streamed segment by
/// segment from one point-in-time view.
///
/// Segments are keyed by their first timestamp, so when the next unread segment starts at
/// `h`, no unread segment holds a point before `h`: the points before `h` of the segments
/// already open (those overlapping it, usually one) are final and are merged out. Memory
/// is the open segments (each ≤ `MAX_SEGMENT_POINTS`) and one chunk.
pub struct RawStream<'a> {
    iter: rocksdb::DBIteratorWithThreadMode<'a, rocksdb::DB>,
    /// The next segment not opened yet.
    pending: Option<PendingSegment>,
    exhausted: bool,
    open: Vec<OpenSegment>,
    /// Buffers of drained segments, reused.
    spare: Vec<(Vec<i64>, Vec<f64>)>,
    /// The chunk [`PointSource::chunk`] lends.
    chunk_ts: Vec<i64>,
    chunk_vals: Vec<f64>,
    from: i64,
    to: i64,
    /// Points this stream and its siblings may still decode.
    budget: &'a std::cell::Cell<usize>,
    budget_total: usize,
}

impl<'a> RawStream<'a> {
    /// `from` should already be past the series' raw retention cutoff: points before it
    /// are never served.
    pub fn new(
        db: &'a SmDb,
        view: &'a rocksdb::Snapshot<'a>,
        series: u64,
        from: i64,
        to: i64,
        budget: &'a std::cell::Cell<usize>,
    ) -> Result<Self> {
        let start = raw_key(series, from.saturating_sub(MAX_SEGMENT_SPAN_NS), 0, 0);
        let mut opts = read_opts(Some(view));
        opts.set_iterate_upper_bound(raw_key(series, to, 0, 0).to_vec());
        let iter = db.db().iterator_cf_opt(
            db.cf(CF_TM_RAW)?,
            opts,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        Ok(RawStream {
            iter,
            pending: None,
            exhausted: from >= to,
            open: Vec::new(),
            spare: Vec::new(),
            chunk_ts: Vec::new(),
            chunk_vals: Vec::new(),
            from,
            to,
            budget,
            budget_total: budget.get(),
        })
    }

    /// Loads the next segment that reaches `from` into `pending`.
    fn load_pending(&mut self) -> Result<()> {
        while self.pending.is_none() && !self.exhausted {
            let Some(item) = self.iter.next() else {
                self.exhausted = true;
                break;
            };
            let (k, v) = item?;
            // The header without the checksum: a segment opened is decoded, which checks
            // it; one passed by is checked here, so a corrupt header cannot hide points.
            let corrupt = |e| StorageError::corrupt("segment", e);
            let info = segment::header(&v).map_err(corrupt)?;
            if info.max_ts < self.from {
                segment::info(&v).map_err(corrupt)?;
                continue;
            }
            let min_ts = k
                .get(8..16)
                .and_then(crate::storage::keys::read_i64_ordered)
                .ok_or_else(|| StorageError::corrupt("segment key", "too short"))?;
            if info.min_ts != min_ts {
                return Err(StorageError::corrupt(
                    "segment",
                    format!(
                        "first timestamp {} differs from its key's {min_ts}",
                        info.min_ts
                    ),
                ));
            }
            self.pending = Some((min_ts, raw_key_order(&k), v));
        }
        Ok(())
    }

    fn open_pending(&mut self) -> std::result::Result<(), ScanError> {
        let Some((_, order, bytes)) = self.pending.take() else {
            return Ok(());
        };
        let (mut ts, mut vals) = self.spare.pop().unwrap_or_default();
        segment::decode_into(&bytes, &mut ts, &mut vals)
            .map_err(|e| StorageError::corrupt("segment", e))?;
        // Stored segments are deduplicated; one that is not keeps its last value per
        // timestamp, as `dedupe` would.
        if ts.windows(2).any(|w| w[1] <= w[0]) {
            if ts.windows(2).any(|w| w[1] < w[0]) {
                return Err(StorageError::corrupt("segment", "timestamps out of order").into());
            }
            let mut w = 0;
            for r in 0..ts.len() {
                if r + 1 < ts.len() && ts[r + 1] == ts[r] {
                    continue;
                }
                ts[w] = ts[r];
                vals[w] = vals[r];
                w += 1;
            }
            ts.truncate(w);
            vals.truncate(w);
        }
        let pos = ts.partition_point(|t| *t < self.from);
        let end = ts.partition_point(|t| *t < self.to);
        let left = self.budget.get();
        let n = end.saturating_sub(pos);
        if n > left {
            return Err(ScanError::TooManyPoints(self.budget_total));
        }
        self.budget.set(left - n);
        self.open.push(OpenSegment {
            ts,
            vals,
            pos,
            end,
            order,
        });
        Ok(())
    }

    /// Moves the open segments' points before `horizon` into the chunk, merged by time,
    /// the latest write of a timestamp winning; at most `STREAM_CHUNK_POINTS` of them.
    fn merge_before(&mut self, horizon: i64, out_ts: &mut Vec<i64>, out_vals: &mut Vec<f64>) {
        // Drained segments give their buffers back.
        let mut i = 0;
        while i < self.open.len() {
            if self.open[i].pos >= self.open[i].end {
                let s = self.open.swap_remove(i);
                self.spare.push((s.ts, s.vals));
            } else {
                i += 1;
            }
        }
        if let [s] = self.open.as_mut_slice() {
            // The common case (segments do not overlap): a copy.
            let room = STREAM_CHUNK_POINTS - out_ts.len();
            let stop =
                (s.pos + s.ts[s.pos..s.end].partition_point(|t| *t < horizon)).min(s.pos + room);
            if out_ts.is_empty() && s.pos == 0 && stop == s.ts.len() {
                // The whole segment: its buffers are handed over, the chunk's taken back
                // (drained, they go to `spare` next time).
                std::mem::swap(out_ts, &mut s.ts);
                std::mem::swap(out_vals, &mut s.vals);
                s.ts.clear();
                s.vals.clear();
                (s.pos, s.end) = (0, 0);
                return;
            }
            out_ts.extend_from_slice(&s.ts[s.pos..stop]);
            out_vals.extend_from_slice(&s.vals[s.pos..stop]);
            s.pos = stop;
            return;
        }
        while out_ts.len() < STREAM_CHUNK_POINTS {
            let Some(t) = self
                .open
                .iter()
                .filter(|s| s.pos < s.end)
                .map(|s| s.ts[s.pos])
                .min()
            else {
                return;
            };
            if t >= horizon {
                return;
            }
            let mut best: Option<((u64, u32), f64)> = None;
            for s in self
                .open
                .iter_mut()
                .filter(|s| s.pos < s.end && s.ts[s.pos] == t)
            {
                let v = s.vals[s.pos];
                if best.is_none_or(|(o, _)| s.order > o) {
                    best = Some((s.order, v));
                }
                s.pos += 1;
            }
            if let Some((_, v)) = best {
                out_ts.push(t);
                out_vals.push(v);
            }
        }
    }
}

impl super::correlate::PointSource for RawStream<'_> {
    type Error = ScanError;

    fn advance(&mut self) -> std::result::Result<bool, ScanError> {
        let (mut ts, mut vals) = (
            std::mem::take(&mut self.chunk_ts),
            std::mem::take(&mut self.chunk_vals),
        );
        ts.clear();
        vals.clear();
        let more = self.fill_chunk(&mut ts, &mut vals);
        (self.chunk_ts, self.chunk_vals) = (ts, vals);
        more
    }

    fn chunk(&self) -> (&[i64], &[f64]) {
        (&self.chunk_ts, &self.chunk_vals)
    }
}

impl RawStream<'_> {
    /// The next chunk into `ts` and `vals` (empty): `false` once no point is left.
    fn fill_chunk(
        &mut self,
        ts: &mut Vec<i64>,
        vals: &mut Vec<f64>,
    ) -> std::result::Result<bool, ScanError> {
        loop {
            self.load_pending()?;
            let horizon = self.pending.as_ref().map_or(i64::MAX, |p| p.0);
            self.merge_before(horizon, ts, vals);
            if !ts.is_empty() {
                return Ok(true);
            }
            if self.pending.is_none() {
                // Nothing before the end of time is left in the open segments.
                debug_assert!(self.open.iter().all(|s| s.pos >= s.end));
                return Ok(false);
            }
            self.open_pending()?;
        }
    }
}
