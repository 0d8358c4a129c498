//! Telemetry subscriptions: the history of some series from a time as of one applied index,
//! then the points every later entry stores, in commit order — batched, resumable from a
//! cursor, with no gap and no duplicate across the switch.
//!
//! How "no gap, no duplicate" holds: the node's feed of stored segments
//! (`telemetry::stream::Feed`, sent by the state machine after each entry's batch commits)
//! is subscribed *before* the view the history is read from, and that view carries its
//! applied index I. History is the segments with index ≤ I; live is every fed segment with
//! index > I. A resumed stream reads the writes between its cursor and the new view's index
//! from the store (segment keys carry their write order), then goes on with the feed.
//! A subscriber that falls more than `FEED_ENTRIES` entries behind the feed — a client
//! that stops reading, since the stream then waits for it — is told (`Overloaded`) and
//! ended; it resumes from its last cursor.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use super::{guard, limit_key, Caller, Consistency, Service, ServiceError};
use crate::auth::Resource;
use crate::limits::Method;
use crate::node::Node;
use crate::raft::state_machine::AppliedStatus;
use crate::telemetry::command::{check_name, MAX_TS, MIN_TS};
use crate::telemetry::stream::{fingerprint, Applied, Cursor, Position, SegmentRef, FEED_ENTRIES};

/// Series one subscription may follow (each is a range scan per page of a resume).
pub const MAX_STREAM_SERIES: usize = 64;
/// Points a batch may hold: with [`STREAM_BUFFER_BATCHES`], what a subscriber may hold
/// (16 Ki × 24 bytes × 5 ≈ 2 MiB).
pub const MAX_STREAM_BATCH_POINTS: usize = 16_384;
/// Batches ready for the client but not taken yet (one more slot is kept for the error that
/// ends a stream, so the client is always told why).
pub const STREAM_BUFFER_BATCHES: usize = 4;
/// The longest a live point may wait for its batch to fill.
pub const MAX_STREAM_LATENCY: Duration = Duration::from_secs(60);
/// Segments a resumed stream lists per pass over the keys of its series.
const CATCHUP_SEGMENTS: usize = 256;
/// Points a resumed stream decodes per pass, at most (plus one segment's): 4 MiB as
/// `(ts, value)` pairs. Without it, one pass could decode 256 full segments (16 Mi points,
/// 256 MiB) before sending any. The passes share one listing.
const CATCHUP_POINTS: usize = 4 * crate::telemetry::command::MAX_SEGMENT_POINTS;

/// A telemetry subscription.
#[derive(Debug, Clone)]
pub struct TelemetrySubscribe {
    /// The series, in the order points of the history come in (no repeats).
    pub series: Vec<String>,
    /// History from this time (ns); `None`: no history, live points only. Live points
    /// before it are left out too.
    pub from_ns: Option<i64>,
    /// Go on after this batch's cursor (same series and `from`).
    pub resume: Option<Cursor>,
    pub batch_size: usize,
    /// A live point waits at most this long for its batch to fill.
    pub max_latency: Duration,
    pub consistency: Consistency,
}

/// One point of a batch: `series` indexes the batch's series list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamPoint {
    pub series: u32,
    pub ts_ns: i64,
    pub value: f64,
}

/// Points in stream order, and where the stream stands after them.
#[derive(Debug, Clone)]
pub struct PointBatch {
    /// The subscription's series (shared by every batch of it).
    pub series: Arc<[String]>,
    pub points: Vec<StreamPoint>,
    pub cursor: Cursor,
    /// Whether these points are live (written after the history's index).
    pub live: bool,
}

/// What a subscriber receives: batches, and at most one error, last.
pub type TelemetryStream = mpsc::Receiver<Result<PointBatch, ServiceError>>;

impl Service {
    pub async fn telemetry_subscribe(
        &self,
        caller: &Caller,
        req: TelemetrySubscribe,
    ) -> Result<TelemetryStream, ServiceError> {
        let resources: Vec<Resource<'_>> = req.series.iter().map(|s| Resource::Series(s)).collect();
        let Some(first) = resources.first().copied() else {
            self.authorize(caller, Method::Subscribe, &[Resource::SeriesWithPrefix("")])?;
            return Err(ServiceError::invalid(
                "a subscription names at least one series",
            ));
        };
        self.authorize(caller, Method::Subscribe, &resources)?;
        self.guards.admit(
            caller,
            Method::Subscribe,
            limit_key(first),
            1,
            guard::wall_now_ns(),
        )?;
        validate(&req)?;
        let subscription = fingerprint(&req.series, req.from_ns);
        if let Some(c) = req.resume {
            if c.subscription != subscription {
                return Err(ServiceError::invalid(
                    "the cursor belongs to another subscription (other series or from)",
                ));
            }
        }
        let slot = self.node.subscription_slot()?;
        self.node.read_barrier(req.consistency).await?;
        // The feed first, then the view: whatever is applied after the view is fed.
        let feed = self.node.telemetry_feed();
        let names: Arc<[String]> = req.series.clone().into();
        let n = names.clone();
        let (index, _) = self
            .node
            .read_telemetry(move |v, applied| Ok((applied, v.series(&n)?)))
            .await?;
        let pos = match req.resume {
            Some(c) => check_resume(c.position, index, names.len())?,
            None if req.from_ns.is_some() => Position::History {
                as_of: index,
                series: 0,
                after_ts: None,
            },
            None => all_of(index),
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER_BATCHES + 1);
        let pump = Pump {
            node: self.node.clone(),
            series: names,
            lo: req.from_ns.unwrap_or(i64::MIN),
            subscription,
            batch_size: req.batch_size,
            max_latency: req.max_latency,
            tx,
            feed,
            applied: self.node.applied_watch(),
            out: Vec::with_capacity(req.batch_size),
            live: false,
            pos,
            deadline: None,
        };
        // Open until the pump ends, however it ends: the guard's drop also runs when a
        // panic unwinds the task.
        struct Open(prometheus_client::metrics::gauge::Gauge);
        impl Drop for Open {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let open = Open(self.node.metrics().telemetry_subscribers.clone());
        open.0.inc();
        tokio::spawn(async move {
            pump.run(index).await;
            drop((open, slot));
        });
        Ok(rx)
    }
}

fn validate(req: &TelemetrySubscribe) -> Result<(), ServiceError> {
    if req.series.len() > MAX_STREAM_SERIES {
        return Err(ServiceError::invalid(format!(
            "a subscription follows at most {MAX_STREAM_SERIES} series"
        )));
    }
    for (i, s) in req.series.iter().enumerate() {
        check_name(s, false).map_err(ServiceError::Invalid)?;
        if req.series[..i].contains(s) {
            return Err(ServiceError::invalid(format!("series {s} is named twice")));
        }
    }
    if !(1..=MAX_STREAM_BATCH_POINTS).contains(&req.batch_size) {
        return Err(ServiceError::invalid(format!(
            "batch size is 1 to {MAX_STREAM_BATCH_POINTS} points"
        )));
    }
    if req.max_latency.is_zero() || req.max_latency > MAX_STREAM_LATENCY {
        return Err(ServiceError::invalid(format!(
            "max latency is more than 0 and at most {} s",
            MAX_STREAM_LATENCY.as_secs()
        )));
    }
    if let Some(f) = req.from_ns {
        if !(MIN_TS..=MAX_TS).contains(&f) {
            return Err(ServiceError::invalid(format!("from {f} is out of range")));
        }
    }
    Ok(())
}

/// A resumed position, checked against this node's state (a cursor is untrusted input).
fn check_resume(p: Position, applied: u64, series: usize) -> Result<Position, ServiceError> {
    let index = match p {
        Position::History {
            as_of, series: k, ..
        } => {
            if k as usize >= series {
                return Err(ServiceError::invalid(
                    "the cursor names a series past the list",
                ));
            }
            as_of
        }
        Position::Live { index, .. } => index,
    };
    if index > applied {
        // A follower read with `Local` consistency may be behind the node the cursor came
        // from; a linearizable one never is.
        return Err(ServiceError::Unavailable(format!(
            "this node has applied up to {applied}, the cursor is at {index}: retry, or \
             resume with linearizable consistency"
        )));
    }
    Ok(p)
}

/// The live position after every write up to `index`.
fn all_of(index: u64) -> Position {
    Position::Live {
        index,
        seq: u32::MAX,
        after_ts: None,
    }
}

/// Why a stream stopped without an error for the client (it went away).
struct Gone;

enum Stop {
    Gone,
    Error(ServiceError),
}

impl From<Gone> for Stop {
    fn from(_: Gone) -> Self {
        Stop::Gone
    }
}

impl From<ServiceError> for Stop {
    fn from(e: ServiceError) -> Self {
        Stop::Error(e)
    }
}

impl From<crate::node::NodeError> for Stop {
    fn from(e: crate::node::NodeError) -> Self {
        Stop::Error(e.into())
    }
}

fn lagged() -> ServiceError {
    ServiceError::Overloaded(format!(
        "subscriber too slow: more than {FEED_ENTRIES} telemetry entries behind; resume from \
         the last batch's cursor"
    ))
}

/// One subscription's task: reads, batches and sends.
struct Pump {
    node: Arc<Node>,
    series: Arc<[String]>,
    /// The oldest timestamp served (`from`, or any).
    lo: i64,
    subscription: u64,
    batch_size: usize,
    max_latency: Duration,
    tx: mpsc::Sender<Result<PointBatch, ServiceError>>,
    feed: broadcast::Receiver<Arc<Applied>>,
    applied: watch::Receiver<AppliedStatus>,
    /// The batch being filled, and whether its points are live.
    out: Vec<StreamPoint>,
    live: bool,
    /// The position after the last point in `out` (or sent).
    pos: Position,
    /// When the batch being filled must go, full or not (live points only).
    deadline: Option<Instant>,
}

impl Pump {
    async fn run(mut self, index: u64) {
        match self.stream(index).await {
            Ok(()) | Err(Stop::Gone) => {}
            Err(Stop::Error(e)) => {
                // A slot is always free for it (batches leave one).
                let _ = self.tx.try_send(Err(e));
            }
        }
    }

    async fn stream(&mut self, index: u64) -> Result<(), Stop> {
        if let Position::History {
            as_of,
            series,
            after_ts,
        } = self.pos
        {
            self.history(as_of, series, after_ts).await?;
            self.pos = all_of(as_of);
            self.flush().await?;
        }
        self.catch_up(index).await?;
        self.flush().await?;
        self.live = true;
        loop {
            let deadline = self.deadline;
            tokio::select! {
                msg = self.feed.recv() => match msg {
                    Ok(a) => self.on_applied(index, &a).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => return Err(lagged().into()),
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(ServiceError::Unavailable("node is shutting down".into()).into())
                    }
                },
                _ = sleep_until(deadline), if deadline.is_some() => self.flush().await?,
                _ = self.tx.closed() => return Err(Stop::Gone),
            }
        }
    }

    /// The history as of `as_of`, series by series from number `from_series`.
    async fn history(
        &mut self,
        as_of: u64,
        from_series: u32,
        mut after_ts: Option<i64>,
    ) -> Result<(), Stop> {
        for k in from_series as usize..self.series.len() {
            loop {
                let names = self.series.clone();
                let (lo, limit) = (self.lo, self.batch_size - self.out.len());
                let page = self
                    .node
                    .read_telemetry(move |v, _| {
                        let Some((id, cut)) = v.series(&names[k..=k])?[0] else {
                            return Ok((Vec::new(), false));
                        };
                        let lo = after_ts.map_or(lo, |a| lo.max(a.saturating_add(1)));
                        Ok(v.history_page(id, as_of, lo.max(cut), limit)?)
                    })
                    .await?;
                let (points, more) = page;
                for (ts, value) in points {
                    after_ts = Some(ts);
                    self.push(
                        k,
                        ts,
                        value,
                        Position::History {
                            as_of,
                            series: k as u32,
                            after_ts,
                        },
                    )
                    .await?;
                }
                if !more {
                    break;
                }
            }
            after_ts = None;
        }
        Ok(())
    }

    /// The writes after the current position up to `upto`, read from the store: segments
    /// listed [`CATCHUP_SEGMENTS`] at a time (a key scan of the series), each list decoded in
    /// order, [`CATCHUP_POINTS`] at a time.
    async fn catch_up(&mut self, upto: u64) -> Result<(), Stop> {
        // Listed, in write order, and not decoded yet; whether the last listing was the end.
        let mut listed: Vec<SegmentRef> = Vec::new();
        let mut listed_to_end = false;
        loop {
            let Position::Live {
                index,
                seq,
                after_ts,
            } = self.pos
            else {
                unreachable!("catch-up follows the history");
            };
            if listed.is_empty() {
                if index >= upto && after_ts.is_none() && seq == u32::MAX {
                    return Ok(());
                }
                if listed_to_end {
                    // Every write of these series up to `upto` is delivered.
                    self.pos = all_of(upto);
                    return Ok(());
                }
                // The current segment again if it was cut short, else the next one.
                let start = match after_ts {
                    Some(_) => (index, seq),
                    None if seq == u32::MAX => (index + 1, 0),
                    None => (index, seq + 1),
                };
                let (names, lo) = (self.series.clone(), self.lo);
                listed = self
                    .node
                    .read_telemetry(move |v, _| {
                        let ids: Vec<u64> =
                            v.series(&names)?.iter().flatten().map(|x| x.0).collect();
                        Ok(v.segments_after(&ids, lo, start, upto, CATCHUP_SEGMENTS)?)
                    })
                    .await?;
                listed_to_end = listed.len() < CATCHUP_SEGMENTS;
                continue;
            }
            // Segments are never rewritten: those listed read the same from a later view (or
            // nothing, once retention dropped them).
            let (names, lo, pending) = (self.series.clone(), self.lo, listed.clone());
            let segments = self
                .node
                .read_telemetry(move |v, _| {
                    let known = v.series(&names)?;
                    let (mut out, mut held) = (Vec::new(), 0);
                    for seg in &pending {
                        if held >= CATCHUP_POINTS {
                            break;
                        }
                        let read = read_segment(v, &known, seg, lo, after_ts, (index, seq))?;
                        held += read.2.len();
                        out.push(read);
                    }
                    Ok(out)
                })
                .await?;
            listed.drain(..segments.len());
            for (k, seg, points) in segments {
                self.push_segment(k, &seg, points).await?;
            }
        }
    }

    /// Live: the segments an applied entry stored, for this stream's series.
    async fn on_applied(&mut self, history_index: u64, a: &Applied) -> Result<(), Stop> {
        let (index, segments) = match a {
            Applied::Segments { index, segments } => (*index, segments),
            Applied::Replaced => {
                return Err(ServiceError::Unavailable(
                    "this node's state was replaced by a snapshot: resume from the last \
                     batch's cursor"
                        .into(),
                )
                .into())
            }
        };
        if index <= history_index {
            return Ok(());
        }
        let Position::Live {
            index: at,
            seq,
            after_ts,
        } = self.pos
        else {
            unreachable!("live follows the history");
        };
        // A segment the position stopped in is served from there on; one it passed, never.
        let wanted: Vec<SegmentRef> = segments
            .iter()
            .filter(|s| match after_ts {
                Some(_) => (s.index, s.seq) >= (at, seq),
                None => (s.index, s.seq) > (at, seq),
            })
            .copied()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let (names, lo) = (self.series.clone(), self.lo);
        let found = self
            .node
            .read_telemetry(move |v, _| {
                let known = v.series(&names)?;
                let mut out = Vec::new();
                for seg in &wanted {
                    if known.iter().flatten().any(|x| x.0 == seg.series) {
                        out.push(read_segment(v, &known, seg, lo, after_ts, (at, seq))?);
                    }
                }
                Ok(out)
            })
            .await?;
        for (k, seg, points) in found {
            self.push_segment(k, &seg, points).await?;
        }
        Ok(())
    }

    async fn push_segment(
        &mut self,
        k: usize,
        seg: &SegmentRef,
        points: Vec<(i64, f64)>,
    ) -> Result<(), Stop> {
        for (ts, value) in points {
            let pos = Position::Live {
                index: seg.index,
                seq: seg.seq,
                after_ts: Some(ts),
            };
            self.push(k, ts, value, pos).await?;
        }
        // The segment is done: the position moves past it (also when none of its points
        // were served).
        self.pos = Position::Live {
            index: seg.index,
            seq: seg.seq,
            after_ts: None,
        };
        Ok(())
    }

    async fn push(&mut self, k: usize, ts: i64, value: f64, pos: Position) -> Result<(), Stop> {
        debug_assert!(k < self.series.len());
        if self.out.is_empty() && self.live {
            self.deadline = Some(Instant::now() + self.max_latency);
        }
        self.out.push(StreamPoint {
            series: k as u32,
            ts_ns: ts,
            value,
        });
        self.pos = pos;
        if self.out.len() >= self.batch_size {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the batch being filled (if any), waiting for the client; a client so slow
    /// that the feed overflows meanwhile is ended.
    async fn flush(&mut self) -> Result<(), Stop> {
        self.deadline = None;
        if self.out.is_empty() {
            return Ok(());
        }
        let batch = PointBatch {
            series: self.series.clone(),
            points: std::mem::replace(&mut self.out, Vec::with_capacity(self.batch_size)),
            cursor: Cursor {
                subscription: self.subscription,
                position: self.pos,
            },
            live: self.live,
        };
        loop {
            tokio::select! {
                // Two slots: one for this batch, one always left for the final error.
                permits = self.tx.reserve_many(2) => {
                    let mut permits = permits.map_err(|_| Gone)?;
                    if let Some(p) = permits.next() {
                        // Counted before it is sent: a client that has the points and
                        // then reads /metrics sees them counted.
                        let sent = batch.points.len() as u64;
                        self.node.metrics().telemetry_stream_points.inc_by(sent);
                        p.send(Ok(batch));
                    }
                    return Ok(());
                }
                changed = self.applied.changed() => {
                    changed.map_err(|_| {
                        ServiceError::Unavailable("node is shutting down".into())
                    })?;
                    if self.feed.len() > FEED_ENTRIES {
                        return Err(lagged().into());
                    }
                }
            }
        }
    }
}

/// A segment's points to serve, with its series' number.
type SegmentPoints = (usize, SegmentRef, Vec<(i64, f64)>);

/// A segment's points to serve: `(series number, segment, points)`. Points are those at or
/// after `lo` and the series' raw cutoff, and past `after_ts` if the segment is the one
/// the position `at` stopped in.
fn read_segment(
    v: &crate::telemetry::stream::View<'_>,
    known: &[Option<(u64, i64)>],
    seg: &SegmentRef,
    lo: i64,
    after_ts: Option<i64>,
    at: (u64, u32),
) -> Result<SegmentPoints, crate::node::NodeError> {
    let (k, cut) = known
        .iter()
        .enumerate()
        .find_map(|(k, x)| x.filter(|x| x.0 == seg.series).map(|x| (k, x.1)))
        .ok_or_else(|| crate::node::NodeError::Internal("segment of an unknown series".into()))?;
    let after = if (seg.index, seg.seq) == at {
        after_ts
    } else {
        None
    };
    Ok((k, *seg, v.segment_points(seg, lo.max(cut), after)?))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
