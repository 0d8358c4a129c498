//! Telemetry subscriptions, the store's side: the feed of raw segments the state machine
//! stored (`Feed`), the reads a subscription makes (history as of one applied index, the
//! segments written after a position, one segment after a point of it), and the cursor a
//! client resumes from.
//!
//! ## Why "as of I" is exact without holding a snapshot
//!
//! A raw segment's key carries the log index that wrote it (`series ++ min ts ++ index ++
//! seq`), and a segment is never rewritten: apply only adds segments, and compaction only
//! drops segments that retention made dead (which every reader skips anyway, and cutoffs
//! never move back). So "the history as of applied index I" is the set of segments with
//! index ≤ I, deduplicated by timestamp (the latest write wins), read from any later view.
//! Each history page opens its own view: no RocksDB snapshot is pinned for the length of a
//! stream, and a resumed stream reads the same history its cursor was taken from.
//!
//! ## Order and identity of points
//!
//! History: per series (in the subscription's order), by timestamp, one point per
//! timestamp. Live: by write order `(log index, seq)` — commit order — then timestamp within
//! a segment. A live point is a write: a timestamp written again is delivered again.

use std::collections::BinaryHeap;
use std::sync::Arc;

use base64::Engine as _;
use tokio::sync::broadcast;

use super::command::MAX_SEGMENT_SPAN_NS;
use super::keys::{raw_key, raw_key_order};
use super::points::{dedupe, OrderedPoint};
use super::retention::{commit_time, load_policies, Cutoffs, ReadView};
use super::segment;
use crate::storage::keys::{read_i64_ordered, read_u64};
use crate::storage::sm_db::{SmDb, CF_TM_RAW, CF_TM_SERIES};
use crate::storage::{Result, StorageError};

/// Applied entries the feed keeps for subscribers that have not read them yet. Each holds
/// only the keys of the segments an entry wrote (~40 bytes each), never points: the bound on
/// memory is this × the segments of an entry. A subscriber more than this many telemetry
/// entries behind is told it lags and is ended (it resumes from its cursor, from the store).
pub const FEED_ENTRIES: usize = 1024;

/// A raw segment an applied entry wrote: its `tm_raw` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentRef {
    pub index: u64,
    pub seq: u32,
    pub series: u64,
    pub min_ts: i64,
}

impl SegmentRef {
    fn key(&self) -> [u8; 28] {
        raw_key(self.series, self.min_ts, self.index, self.seq)
    }

    fn of_key(k: &[u8]) -> Option<SegmentRef> {
        let (index, seq) = raw_key_order(k);
        Some(SegmentRef {
            index,
            seq,
            series: read_u64(k)?,
            min_ts: read_i64_ordered(k.get(8..16)?)?,
        })
    }
}

/// What the state machine tells subscribers after an entry is committed.
#[derive(Debug)]
pub enum Applied {
    /// The raw segments entry `index` stored, in write order.
    Segments {
        index: u64,
        segments: Vec<SegmentRef>,
    },
    /// The state machine's data was replaced by a snapshot: entries were skipped.
    Replaced,
}

/// The broadcast of what apply stored, bounded (see [`FEED_ENTRIES`]).
#[derive(Clone)]
pub struct Feed(broadcast::Sender<Arc<Applied>>);

impl Default for Feed {
    fn default() -> Self {
        Feed(broadcast::channel(FEED_ENTRIES).0)
    }
}

impl Feed {
    /// Whether anyone listens: apply builds nothing for the feed otherwise.
    pub fn is_heard(&self) -> bool {
        self.0.receiver_count() > 0
    }

    pub fn publish(&self, a: Applied) {
        // No receiver: nothing to tell, and nothing is kept.
        let _ = self.0.send(Arc::new(a));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Applied>> {
        self.0.subscribe()
    }
}

/// Where a stream stands: the position after the last point it delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// In the history as of applied index `as_of`: series number `series` (in the
    /// subscription's order), after timestamp `after_ts` (`None`: from its start).
    History {
        as_of: u64,
        series: u32,
        after_ts: Option<i64>,
    },
    /// Live: after the point at `after_ts` of segment `(index, seq)` (`None`: after all of
    /// it; `index` 0 with `None`: before every write).
    Live {
        index: u64,
        seq: u32,
        after_ts: Option<i64>,
    },
}

/// A stream's resumable position, bound to its subscription (series and `from`), in an
/// opaque string form. Clients hand it back; it is untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Fingerprint of the subscription (see [`fingerprint`]).
    pub subscription: u64,
    pub position: Position,
}

/// Bytes of an encoded cursor: version, kind, fingerprint, index, series or seq, flag, ts.
const CURSOR_BYTES: usize = 1 + 1 + 8 + 8 + 4 + 1 + 8;
const CURSOR_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad cursor: {0}")]
pub struct CursorError(&'static str);

impl Cursor {
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(CURSOR_BYTES);
        b.push(CURSOR_VERSION);
        let (kind, index, n, ts) = match self.position {
            Position::History {
                as_of,
                series,
                after_ts,
            } => (b'h', as_of, series, after_ts),
            Position::Live {
                index,
                seq,
                after_ts,
            } => (b'l', index, seq, after_ts),
        };
        b.push(kind);
        b.extend_from_slice(&self.subscription.to_be_bytes());
        b.extend_from_slice(&index.to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.push(u8::from(ts.is_some()));
        b.extend_from_slice(&ts.unwrap_or(0).to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    pub fn decode(s: &str) -> std::result::Result<Cursor, CursorError> {
        // A cursor is ~50 characters; refuse anything far off before decoding it.
        if s.len() > 2 * CURSOR_BYTES {
            return Err(CursorError("too long"));
        }
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| CursorError("not base64url"))?;
        let b: [u8; CURSOR_BYTES] = b.try_into().map_err(|_| CursorError("wrong length"))?;
        if b[0] != CURSOR_VERSION {
            return Err(CursorError("unknown version"));
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let n = u32::from_be_bytes([b[18], b[19], b[20], b[21]]);
        let ts = match b[22] {
            0 => None,
            1 => Some(u64_at(23) as i64),
            _ => return Err(CursorError("bad flag")),
        };
        let position = match b[1] {
            b'h' => Position::History {
                as_of: u64_at(10),
                series: n,
                after_ts: ts,
            },
            b'l' => Position::Live {
                index: u64_at(10),
                seq: n,
                after_ts: ts,
            },
            _ => return Err(CursorError("unknown kind")),
        };
        Ok(Cursor {
            subscription: u64_at(2),
            position,
        })
    }
}

/// The fingerprint of a subscription: its series (in order) and `from`. A cursor resumes
/// only the subscription it was taken from.
pub fn fingerprint(series: &[String], from_ns: Option<i64>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for s in series {
        h.update(s.as_bytes());
        h.update(&[0]);
    }
    h.update(&from_ns.map_or([0xff; 9], |f| {
        let mut b = [0u8; 9];
        b[1..].copy_from_slice(&f.to_be_bytes());
        b
    }));
    h.digest()
}

/// A view of the store for one read: the series' ids and raw cutoffs there.
pub struct View<'a> {
    db: &'a SmDb,
    snap: ReadView<'a>,
}

impl<'a> View<'a> {
    pub fn new(db: &'a SmDb) -> View<'a> {
        // One RocksDB snapshot per read: ids, cutoffs and data agree.
        View {
            db,
            snap: db.db().snapshot(),
        }
    }

    pub fn snapshot(&self) -> &ReadView<'a> {
        &self.snap
    }

    /// Each series' id (`None`: not written yet) and its raw cutoff (points before it are
    /// dead by retention in this view and are never served).
    pub fn series(&self, names: &[String]) -> Result<Vec<Option<(u64, i64)>>> {
        let now = commit_time(self.db, &self.snap)?;
        let policies = load_policies(self.db, &self.snap)?;
        let cf = self.db.cf(CF_TM_SERIES)?;
        names
            .iter()
            .map(|name| {
                let Some(b) = self.snap.get_cf(cf, name.as_bytes())? else {
                    return Ok(None);
                };
                let id = super::keys::decode_series_id(&b)?;
                let cut: Cutoffs = policies.cutoffs(id, name, now);
                Ok(Some((id, cut.raw)))
            })
            .collect()
    }

    /// Up to `limit` points of `series` with `ts >= lo`, as of applied index `as_of`: by
    /// timestamp, the latest write (index ≤ `as_of`) of each. Also whether more may follow.
    ///
    /// Memory: segments are read in key order (by their first timestamp); points before the
    /// next segment's first timestamp are final, so reading stops once `limit` of them are;
    /// at most `limit` points plus the segments overlapping the last one (≤ 1 h each) are held.
    pub fn history_page(
        &self,
        series: u64,
        as_of: u64,
        lo: i64,
        limit: usize,
    ) -> Result<(Vec<(i64, f64)>, bool)> {
        assert!(limit > 0, "a history page holds at least one point");
        let start = raw_key(series, lo.saturating_sub(MAX_SEGMENT_SPAN_NS), 0, 0);
        let mut buf: Vec<OrderedPoint> = Vec::new();
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        let mut check_at = limit;
        // Points below this are final (no unread segment holds any).
        let mut final_below = i64::MAX;
        let mut exhausted = true;
        for item in self.snap.iterator_cf(
            self.db.cf(CF_TM_RAW)?,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            let Some(seg) = SegmentRef::of_key(&k).filter(|s| s.series == series) else {
                break;
            };
            if buf.len() >= check_at {
                buf = dedupe_ordered(buf);
                let done = buf.partition_point(|p| p.0 < seg.min_ts);
                if done >= limit {
                    final_below = seg.min_ts;
                    exhausted = false;
                    break;
                }
                check_at = buf.len().saturating_mul(2).max(limit);
            }
            if seg.index > as_of {
                continue;
            }
            let info = segment::info(&v).map_err(|e| StorageError::corrupt("segment", e))?;
            if info.max_ts < lo {
                continue;
            }
            segment::decode_into(&v, &mut ts, &mut vals)
                .map_err(|e| StorageError::corrupt("segment", e))?;
            let from = ts.partition_point(|t| *t < lo);
            let order = (seg.index, seg.seq);
            buf.extend((from..ts.len()).map(|i| (ts[i], order, vals[i])));
        }
        let (ts, vals) = dedupe(buf);
        let n = ts.partition_point(|t| *t < final_below).min(limit);
        let more = !exhausted || ts.len() > n;
        Ok((
            ts[..n]
                .iter()
                .copied()
                .zip(vals[..n].iter().copied())
                .collect(),
            more,
        ))
    }

    /// The first `max` segments of `series` written at or after `start` (by write order:
    /// log index, seq) up to applied index `upto`, whose points may reach `lo` — the writes
    /// a resumed stream missed. Keys only are compared; at most `max` are held.
    pub fn segments_after(
        &self,
        series: &[u64],
        lo: i64,
        start: (u64, u32),
        upto: u64,
        max: usize,
    ) -> Result<Vec<SegmentRef>> {
        let mut best: BinaryHeap<SegmentRef> = BinaryHeap::new();
        let cf = self.db.cf(CF_TM_RAW)?;
        for &s in series {
            let first = raw_key(s, lo.saturating_sub(MAX_SEGMENT_SPAN_NS), 0, 0);
            for item in self.snap.iterator_cf(
                cf,
                rocksdb::IteratorMode::From(&first, rocksdb::Direction::Forward),
            ) {
                let (k, _) = item?;
                let Some(seg) = SegmentRef::of_key(&k).filter(|x| x.series == s) else {
                    break;
                };
                if (seg.index, seg.seq) < start || seg.index > upto {
                    continue;
                }
                // Ordered by (index, seq) first: the heap's top is the latest kept.
                best.push(seg);
                if best.len() > max {
                    best.pop();
                }
            }
        }
        Ok(best.into_sorted_vec())
    }

    /// The points of one segment with `ts >= lo` and after `after_ts` (`None`: all), or
    /// nothing if retention has dropped it.
    pub fn segment_points(
        &self,
        seg: &SegmentRef,
        lo: i64,
        after_ts: Option<i64>,
    ) -> Result<Vec<(i64, f64)>> {
        let Some(v) = self.snap.get_cf(self.db.cf(CF_TM_RAW)?, seg.key())? else {
            return Ok(Vec::new());
        };
        let (ts, vals) = segment::decode(&v).map_err(|e| StorageError::corrupt("segment", e))?;
        let lo = after_ts.map_or(lo, |a| lo.max(a.saturating_add(1)));
        let from = ts.partition_point(|t| *t < lo);
        Ok(ts[from..]
            .iter()
            .copied()
            .zip(vals[from..].iter().copied())
            .collect())
    }
}

/// [`dedupe`], keeping the write order (so a later check can dedupe again).
fn dedupe_ordered(mut pts: Vec<OrderedPoint>) -> Vec<OrderedPoint> {
    pts.sort_by_key(|p| (p.0, p.1));
    let mut out: Vec<OrderedPoint> = Vec::with_capacity(pts.len());
    for p in pts {
        match out.last_mut() {
            Some(last) if last.0 == p.0 => *last = p,
            _ => out.push(p),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(c: Cursor) {
        let s = c.encode();
        assert_eq!(Cursor::decode(&s), Ok(c), "{s}");
    }

    #[test]
    fn cursors_round_trip() {
        for position in [
            Position::History {
                as_of: 7,
                series: 2,
                after_ts: Some(-5),
            },
            Position::History {
                as_of: u64::MAX,
                series: 0,
                after_ts: None,
            },
            Position::Live {
                index: 9,
                seq: u32::MAX,
                after_ts: Some(i64::MIN),
            },
            Position::Live {
                index: 0,
                seq: 0,
                after_ts: None,
            },
        ] {
            check(Cursor {
                subscription: 42,
                position,
            });
        }
    }

    #[test]
    fn bad_cursors_are_errors() {
        let good = Cursor {
            subscription: 1,
            position: Position::Live {
                index: 1,
                seq: 0,
                after_ts: None,
            },
        }
        .encode();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut bad_kind = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&good)
            .unwrap();
        bad_kind[1] = b'x';
        let mut bad_flag = bad_kind.clone();
        bad_flag[1] = b'h';
        bad_flag[22] = 7;
        for (input, why) in [
            ("", "wrong length"),
            ("!!!", "not base64url"),
            (&"A".repeat(500)[..], "too long"),
            (&b64(&[2; CURSOR_BYTES])[..], "unknown version"),
            (&b64(&bad_kind)[..], "unknown kind"),
            (&b64(&bad_flag)[..], "bad flag"),
            (&good[..good.len() - 2], "wrong length"),
        ] {
            assert_eq!(Cursor::decode(input), Err(CursorError(why)), "{input}");
        }
    }

    #[test]
    fn fingerprints_tell_subscriptions_apart() {
        let a = vec!["a/b".to_owned(), "c/d".to_owned()];
        let b = vec!["a/bc".to_owned(), "/d".to_owned()];
        assert_ne!(fingerprint(&a, None), fingerprint(&b, None));
        assert_ne!(fingerprint(&a, None), fingerprint(&a, Some(0)));
        assert_eq!(fingerprint(&a, Some(3)), fingerprint(&a, Some(3)));
    }
}
