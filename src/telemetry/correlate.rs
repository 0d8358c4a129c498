//! Correlation of series, pure (no IO): an as-of join of several time-sorted point sources
//! and mergeable Pearson co-moments over its rows.
//!
//! ## The join
//!
//! The first series drives the rows: one row per point of series 0; for every other series
//! the cell is the value of the point the [`Strategy`] picks within the tolerance, else
//! `None` — the semantics of polars' `join_asof` with exact matches allowed. Rows come a
//! [`Block`] at a time, as columns; each other series fills its column with a two-pointer
//! merge against the block's times, the strategy chosen once per run of rows. Sources yield
//! their points chunk by chunk (a stored series segment by segment, see
//! `telemetry::read::RawStream`), each strictly increasing in time; the joiner keeps one
//! chunk and one earlier point per source, so its memory is O(series) beyond the chunks
//! and it allocates nothing per point.
//!
//! ## Pearson
//!
//! [`PairMoments`] keeps count, means and co-moments of one pair: a block of rows at a time
//! in two passes (sums, then deviations from the block's mean), blocks merged with Chan's
//! rule — relative to a shift (the first pair added), like [`super::moments::Moments`], so
//! a large offset next to a small spread keeps its digits.

/// Which point of another series a row takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The latest point at or before the row's time.
    Backward,
    /// The earliest point at or after the row's time.
    Forward,
    /// The closer of the two; on a tie, the earlier.
    Nearest,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Backward => "backward",
            Strategy::Forward => "forward",
            Strategy::Nearest => "nearest",
        }
    }
}

/// Points in time order, a chunk at a time. The source keeps its current chunk and lends
/// it, so that points already in memory (columns, a decoded segment) are joined where they
/// lie, not copied first.
pub trait PointSource {
    type Error;
    /// Moves to the next chunk (its points strictly increasing, and after every point of
    /// the chunks before); `false` once none are left. An empty chunk with `true` is
    /// allowed (the caller asks again).
    fn advance(&mut self) -> Result<bool, Self::Error>;
    /// The current chunk's timestamps and values, paired by index: empty before the first
    /// [`advance`](PointSource::advance) and after the last.
    fn chunk(&self) -> (&[i64], &[f64]);
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JoinError<E> {
    /// A source broke its promise of strictly increasing timestamps (a defect or corrupt
    /// data: stored points are deduplicated).
    #[error("series {series}: timestamp {ts_ns} does not follow {prev_ns}")]
    Unsorted {
        series: usize,
        prev_ns: i64,
        ts_ns: i64,
    },
    #[error("{0}")]
    Source(E),
}

/// Whole columns as a source, lent in chunks of `chunk` points (tests, bucket means, points
/// already in memory): nothing is copied.
pub struct SliceSource<'a> {
    ts: &'a [i64],
    vals: &'a [f64],
    chunk: usize,
    /// The current chunk: `start..end`.
    start: usize,
    end: usize,
}

impl<'a> SliceSource<'a> {
    pub fn new(ts: &'a [i64], vals: &'a [f64], chunk: usize) -> Self {
        assert_eq!(ts.len(), vals.len(), "columns pair up by index");
        SliceSource {
            ts,
            vals,
            chunk: chunk.max(1),
            start: 0,
            end: 0,
        }
    }
}

impl PointSource for SliceSource<'_> {
    type Error = std::convert::Infallible;

    fn advance(&mut self) -> Result<bool, Self::Error> {
        self.start = self.end;
        self.end = self.start.saturating_add(self.chunk).min(self.ts.len());
        Ok(self.start < self.end)
    }

    fn chunk(&self) -> (&[i64], &[f64]) {
        (
            &self.ts[self.start..self.end],
            &self.vals[self.start..self.end],
        )
    }
}

/// One source, and where in its current chunk the join is.
struct Cursor<S> {
    src: S,
    series: usize,
    pos: usize,
    done: bool,
    /// The last timestamp of the chunks before (the order check spans chunks).
    prev_ts: Option<i64>,
}

impl<S: PointSource> Cursor<S> {
    fn new(src: S, series: usize) -> Self {
        Cursor {
            src,
            series,
            pos: 0,
            done: false,
            prev_ts: None,
        }
    }

    /// The next point, without consuming it.
    fn head(&mut self) -> Result<Option<(i64, f64)>, JoinError<S::Error>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let (ts, vals) = self.src.chunk();
            if self.pos < ts.len() {
                return Ok(Some((ts[self.pos], vals[self.pos])));
            }
            self.prev_ts = ts.last().copied().or(self.prev_ts);
            self.pos = 0;
            if !self.src.advance().map_err(JoinError::Source)? {
                self.done = true;
                return Ok(None);
            }
            self.check_chunk()?;
        }
    }

    /// The current chunk's timestamps from the cursor's position on (empty when done).
    fn rest(&self) -> &[i64] {
        match self.done {
            true => &[],
            false => self.src.chunk().0.get(self.pos..).unwrap_or_default(),
        }
    }

    fn check_chunk(&self) -> Result<(), JoinError<S::Error>> {
        let (ts, vals) = self.src.chunk();
        assert_eq!(ts.len(), vals.len(), "a source's columns pair up");
        let unsorted = |prev_ns, ts_ns| JoinError::Unsorted {
            series: self.series,
            prev_ns,
            ts_ns,
        };
        if let (Some(p), Some(&f)) = (self.prev_ts, ts.first()) {
            if f <= p {
                return Err(unsorted(p, f));
            }
        }
        if !super::agg::any_not_increasing(ts) {
            return Ok(());
        }
        match ts.windows(2).find(|w| w[1] <= w[0]) {
            Some(w) => Err(unsorted(w[0], w[1])),
            None => Ok(()),
        }
    }

    fn advance(&mut self) {
        debug_assert!(self.pos < self.src.chunk().0.len());
        self.pos += 1;
    }
}

/// Rows the join produces per [`Joiner::next_block`] call in the query path. Pearson's
/// moments are taken block by block (two passes over a block, blocks merged), so a fixed
/// size — not the sources' chunking — decides where blocks split, and the same rows give
/// the same bits however the points were read.
pub const BLOCK_ROWS: usize = 4096;

/// Rows of the join as columns: row `k` is at `ts[k]`, and series `j`'s cell is
/// `vals[j][k]` where `present[j][k]` (the lead's column 0 is always present).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Block {
    ts: Vec<i64>,
    vals: Vec<Vec<f64>>,
    present: Vec<Vec<bool>>,
}

impl Block {
    pub fn new(width: usize) -> Self {
        Block {
            ts: Vec::new(),
            vals: vec![Vec::new(); width],
            present: vec![Vec::new(); width],
        }
    }

    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// The rows' times, increasing.
    pub fn ts(&self) -> &[i64] {
        &self.ts
    }

    /// Series `j`'s cell in row `k`.
    pub fn cell(&self, j: usize, k: usize) -> Option<f64> {
        self.present[j][k].then(|| self.vals[j][k])
    }

    /// Row `k`'s cells, one per series.
    pub fn row(&self, k: usize) -> Vec<Option<f64>> {
        (0..self.vals.len()).map(|j| self.cell(j, k)).collect()
    }

    /// Appends a row (tests build blocks from rows). The lead's cell must be present.
    pub fn push_row(&mut self, ts: i64, cells: &[Option<f64>]) {
        assert_eq!(cells.len(), self.vals.len(), "one cell per series");
        assert!(cells[0].is_some(), "the lead's cell is always present");
        self.ts.push(ts);
        for ((v, p), c) in self.vals.iter_mut().zip(&mut self.present).zip(cells) {
            v.push(c.unwrap_or(0.0));
            p.push(c.is_some());
        }
    }

    fn clear(&mut self) {
        self.ts.clear();
        self.vals.iter_mut().for_each(Vec::clear);
        self.present.iter_mut().for_each(Vec::clear);
    }
}

/// Another series of the join: its cursor and the latest point at or before the last row.
struct Follower<S> {
    cur: Cursor<S>,
    prev: Option<(i64, f64)>,
}

impl<S: PointSource> Follower<S> {
    /// The cells of the rows at `lead` (increasing, after every row before) into `vals` and
    /// `present`. Rows before the last point of the current chunk are a tight two-pointer
    /// merge; a row at or past it (the next point may lie in a later chunk) takes the
    /// careful path, which loads chunks.
    fn fill(
        &mut self,
        strategy: Strategy,
        tol: u64,
        lead: &[i64],
        vals: &mut [f64],
        present: &mut [bool],
    ) -> Result<(), JoinError<S::Error>> {
        let mut k = 0;
        while k < lead.len() {
            let t = lead[k];
            match self.cur.rest().last() {
                Some(&last) if t < last => {
                    let end = k + lead[k..].partition_point(|&x| x < last);
                    let span = (&lead[k..end], &mut vals[k..end], &mut present[k..end]);
                    match strategy {
                        Strategy::Backward => self.merge::<true, false>(tol, span),
                        Strategy::Forward => self.merge::<false, true>(tol, span),
                        Strategy::Nearest => self.merge::<true, true>(tol, span),
                    }
                    k = end;
                }
                _ => {
                    while let Some((pt, pv)) = self.cur.head()? {
                        if pt > t {
                            break;
                        }
                        self.prev = Some((pt, pv));
                        self.cur.advance();
                    }
                    let next = match self.prev {
                        Some(p) if p.0 == t => Some(p),
                        _ => self.cur.head()?,
                    };
                    let cell = match strategy {
                        Strategy::Backward => pick::<true, false>(tol, t, self.prev, next),
                        Strategy::Forward => pick::<false, true>(tol, t, self.prev, next),
                        Strategy::Nearest => pick::<true, true>(tol, t, self.prev, next),
                    };
                    vals[k] = cell.unwrap_or(0.0);
                    present[k] = cell.is_some();
                    k += 1;
                }
            }
        }
        Ok(())
    }

    /// The two-pointer merge over rows that all lie before the current chunk's last point,
    /// so that the earliest point after a row is always in the chunk. Each row waits on
    /// the row before (where the follower stands), and that chain of a load and a compare
    /// per row would bound the merge: a long span is cut into [`MERGE_LANES`] runs, each
    /// started where a binary search puts it, and the runs advance side by side, one row
    /// of each per step, so that their chains overlap. A run's start is exactly where the
    /// runs before it would have left the follower, so the cells are the same.
    #[inline(always)]
    fn merge<const BACK: bool, const FWD: bool>(
        &mut self,
        tol: u64,
        (lead, vals, present): (&[i64], &mut [f64], &mut [bool]),
    ) {
        let (ts, vs) = self.cur.src.chunk();
        let first = match self.prev {
            Some((t, v)) => MergeAt {
                pos: self.cur.pos,
                pt: t,
                pv: v,
                has: true,
            },
            None => MergeAt {
                pos: self.cur.pos,
                pt: 0,
                pv: 0.0,
                has: false,
            },
        };
        let n = lead.len();
        let last = if n < MERGE_LANES * MIN_LANE_ROWS {
            let mut at = first;
            for ((&t, v), p) in lead.iter().zip(vals).zip(present) {
                merge_row::<BACK, FWD>(ts, vs, tol, &mut at, t, v, p);
            }
            at
        } else {
            let run = n / MERGE_LANES;
            let mut at = [first; MERGE_LANES];
            for (l, a) in at.iter_mut().enumerate().skip(1) {
                // Where the follower stands after the row before this run's first: past
                // every point at or before that row.
                let before = lead[l * run - 1];
                let pos = first.pos + ts[first.pos..].partition_point(|&x| x <= before);
                if pos > first.pos {
                    *a = MergeAt {
                        pos,
                        pt: ts[pos - 1],
                        pv: vs[pos - 1],
                        has: true,
                    };
                }
            }
            let (lead_runs, lead_tail) = lead.split_at(run * MERGE_LANES);
            let (val_runs, val_tail) = vals.split_at_mut(run * MERGE_LANES);
            let (pres_runs, pres_tail) = present.split_at_mut(run * MERGE_LANES);
            let mut lr = lead_runs.chunks_exact(run);
            let mut vr = val_runs.chunks_exact_mut(run);
            let mut pr = pres_runs.chunks_exact_mut(run);
            let mut runs: [(&[i64], &mut [f64], &mut [bool]); MERGE_LANES] =
                std::array::from_fn(|_| match (lr.next(), vr.next(), pr.next()) {
                    (Some(l), Some(v), Some(p)) => (l, v, p),
                    _ => unreachable!("the spans split into MERGE_LANES runs of `run` rows"),
                });
            for k in 0..run {
                for (a, (l, v, p)) in at.iter_mut().zip(&mut runs) {
                    merge_row::<BACK, FWD>(ts, vs, tol, a, l[k], &mut v[k], &mut p[k]);
                }
            }
            let mut tail = at[MERGE_LANES - 1];
            for ((&t, v), p) in lead_tail.iter().zip(val_tail).zip(pres_tail) {
                merge_row::<BACK, FWD>(ts, vs, tol, &mut tail, t, v, p);
            }
            tail
        };
        self.cur.pos = last.pos;
        self.prev = last.has.then_some((last.pt, last.pv));
    }
}

/// Runs a long merge is cut into (see [`Follower::merge`]).
const MERGE_LANES: usize = 2;
/// Rows per run below which a span is merged as one run.
const MIN_LANE_ROWS: usize = 16;

/// Where a merge stands: the follower's next point (`pos`), and the latest point at or
/// before the last row (`has` false before the first).
#[derive(Clone, Copy)]
struct MergeAt {
    pos: usize,
    pt: i64,
    pv: f64,
    has: bool,
}

/// One row of the merge at `t`: its cell into `v` and `p`. Written to compile to selects,
/// not branches: whether the follower moves at a row follows the data, and a mispredicted
/// branch per row would cost more than the row's whole work.
#[inline(always)]
fn merge_row<const BACK: bool, const FWD: bool>(
    ts: &[i64],
    vs: &[f64],
    tol: u64,
    at: &mut MergeAt,
    t: i64,
    v: &mut f64,
    p: &mut bool,
) {
    let MergeAt {
        mut pos,
        mut pt,
        mut pv,
        mut has,
    } = *at;
    let step = ts[pos] <= t;
    pos += usize::from(step);
    // Rare: more than one point since the last row. Ends at the chunk's last point.
    while ts[pos] <= t {
        pos += 1;
    }
    if step {
        (pt, pv, has) = (ts[pos - 1], vs[pos - 1], true);
    }
    let back_d = (t as u64).wrapping_sub(pt as u64);
    let back_ok = BACK && has && back_d <= tol;
    // Forward alone takes an exact match from `prev`; nearest gets it from `back`.
    let exact = FWD && !BACK && has && pt == t;
    let (nt, nv) = if exact { (pt, pv) } else { (ts[pos], vs[pos]) };
    let fwd_d = (nt as u64).wrapping_sub(t as u64);
    let fwd_ok = FWD && fwd_d <= tol;
    // A tie goes to the earlier point.
    let take_back = back_ok && !(fwd_ok && fwd_d < back_d);
    *v = if take_back { pv } else { nv };
    *p = take_back || fwd_ok;
    *at = MergeAt { pos, pt, pv, has };
}

/// The streaming as-of join.
pub struct Joiner<S> {
    strategy: Strategy,
    tolerance_ns: i64,
    lead: Cursor<S>,
    others: Vec<Follower<S>>,
}

impl<S: PointSource> Joiner<S> {
    /// `sources[0]` drives the rows. Panics on no source or a negative tolerance (the
    /// service checks both first).
    pub fn new(sources: Vec<S>, strategy: Strategy, tolerance_ns: i64) -> Self {
        assert!(!sources.is_empty(), "a join needs a series to drive it");
        assert!(tolerance_ns >= 0, "tolerance must not be negative");
        let mut it = sources.into_iter().enumerate();
        let lead = it.next().map(|(i, s)| Cursor::new(s, i));
        Joiner {
            strategy,
            tolerance_ns,
            lead: lead.expect("checked non-empty above"),
            others: it
                .map(|(i, s)| Follower {
                    cur: Cursor::new(s, i),
                    prev: None,
                })
                .collect(),
        }
    }

    /// Series in the join (the width of a row).
    pub fn width(&self) -> usize {
        1 + self.others.len()
    }

    /// The next rows, at most `max_rows` (at least 1) and fewer only at the end, into
    /// `block` (replacing what it held); `false` once the lead is exhausted.
    pub fn next_block(
        &mut self,
        block: &mut Block,
        max_rows: usize,
    ) -> Result<bool, JoinError<S::Error>> {
        assert_eq!(block.vals.len(), self.width(), "one column per series");
        block.clear();
        let max_rows = max_rows.max(1);
        while block.ts.len() < max_rows && self.lead.head()?.is_some() {
            let lead = &mut self.lead;
            let (ts, vals) = lead.src.chunk();
            let end = ts.len().min(lead.pos + (max_rows - block.ts.len()));
            block.ts.extend_from_slice(&ts[lead.pos..end]);
            block.vals[0].extend_from_slice(&vals[lead.pos..end]);
            lead.pos = end;
        }
        let n = block.ts.len();
        block.present[0].resize(n, true);
        let tol = self.tolerance_ns as u64; // not negative (checked in `new`)
        for (f, (vals, present)) in self
            .others
            .iter_mut()
            .zip(block.vals.iter_mut().zip(&mut block.present).skip(1))
        {
            vals.resize(n, 0.0);
            present.resize(n, false);
            f.fill(self.strategy, tol, &block.ts, vals, present)?;
        }
        Ok(n > 0)
    }
}

/// The cell of a row at `t` from the latest point at or before it and the earliest at or
/// after it: `BACK` alone is backward, `FWD` alone forward, both nearest (a tie goes to the
/// earlier). Distances as `u64`: `t - before` and `after - t` are never negative, and
/// wrapping subtraction gives them exactly wherever the timestamps lie in i64.
#[inline(always)]
fn pick<const BACK: bool, const FWD: bool>(
    tol: u64,
    t: i64,
    before: Option<(i64, f64)>,
    after: Option<(i64, f64)>,
) -> Option<f64> {
    let back = before
        .map(|(ts, v)| ((t as u64).wrapping_sub(ts as u64), v))
        .filter(|&(d, _)| BACK && d <= tol);
    let fwd = after
        .map(|(ts, v)| ((ts as u64).wrapping_sub(t as u64), v))
        .filter(|&(d, _)| FWD && d <= tol);
    match (back, fwd) {
        (Some(b), Some(f)) => Some(if f.0 < b.0 { f.1 } else { b.1 }),
        (b, f) => b.or(f).map(|x| x.1),
    }
}

/// Count, means and co-moments of the pairs `(x, y)` added: Pearson's r, mergeable.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PairMoments {
    n: u64,
    /// Reference values (the first pair): means and moments are kept relative to them.
    shift_x: f64,
    shift_y: f64,
    /// Means of `x - shift_x`, `y - shift_y`.
    mean_x: f64,
    mean_y: f64,
    /// Sums of squared deviations, and of the products of deviations.
    m2_x: f64,
    m2_y: f64,
    c_xy: f64,
}

impl PairMoments {
    /// The pairs `(x[k], y[k])` of the rows where `px[k] && py[k]`, in two passes (sums,
    /// then squared deviations from the mean), relative to `shift` — or, without one, to
    /// the first pair. Four accumulators per sum, so that the additions of a pass do not
    /// form one dependent chain; absent rows add exact zeros.
    pub fn of_columns(
        x: &[f64],
        y: &[f64],
        px: &[bool],
        py: &[bool],
        shift: Option<(f64, f64)>,
    ) -> PairMoments {
        let n = x.len();
        assert!(
            y.len() == n && px.len() == n && py.len() == n,
            "columns pair up"
        );
        let Some((sx, sy)) =
            shift.or_else(|| (0..n).find(|&k| px[k] && py[k]).map(|k| (x[k], y[k])))
        else {
            return PairMoments::default();
        };
        let count = px.iter().zip(py).filter(|(a, b)| **a & **b).count() as u64;
        if count == 0 {
            return PairMoments::default();
        }
        // Every row a pair (series that match throughout): the same sums without the masks.
        match count == n as u64 {
            true => Self::two_pass::<true>(x, y, px, py, (sx, sy), count),
            false => Self::two_pass::<false>(x, y, px, py, (sx, sy), count),
        }
    }

    /// [`PairMoments::of_columns`]'s two passes over `count` pairs; `DENSE`: all rows are.
    #[inline(always)]
    fn two_pass<const DENSE: bool>(
        x: &[f64],
        y: &[f64],
        px: &[bool],
        py: &[bool],
        (sx, sy): (f64, f64),
        count: u64,
    ) -> PairMoments {
        let (mut sum_x, mut sum_y) = ([0.0f64; L], [0.0f64; L]);
        by_lane::<DENSE>(x, y, px, py, |l, x, y, m| {
            sum_x[l] += if m { x - sx } else { 0.0 };
            sum_y[l] += if m { y - sy } else { 0.0 };
        });
        let c = count as f64;
        let mean_x = ((sum_x[0] + sum_x[1]) + (sum_x[2] + sum_x[3])) / c;
        let mean_y = ((sum_y[0] + sum_y[1]) + (sum_y[2] + sum_y[3])) / c;
        let (mut m2_x, mut m2_y, mut c_xy) = ([0.0f64; L], [0.0f64; L], [0.0f64; L]);
        by_lane::<DENSE>(x, y, px, py, |l, x, y, m| {
            let dx = if m { (x - sx) - mean_x } else { 0.0 };
            let dy = if m { (y - sy) - mean_y } else { 0.0 };
            m2_x[l] += dx * dx;
            m2_y[l] += dy * dy;
            c_xy[l] += dx * dy;
        });
        let total = |a: [f64; L]| (a[0] + a[1]) + (a[2] + a[3]);
        PairMoments {
            n: count,
            shift_x: sx,
            shift_y: sy,
            mean_x,
            mean_y,
            m2_x: total(m2_x),
            m2_y: total(m2_y),
            c_xy: total(c_xy),
        }
    }

    /// This pair's shift, once it has one (blocks added later are taken relative to it,
    /// so merging them adds no shift difference).
    fn shift(&self) -> Option<(f64, f64)> {
        (self.n > 0).then_some((self.shift_x, self.shift_y))
    }

    /// Adds `other`'s pairs (Chan et al.'s pairwise formula, relative to this shift).
    pub fn merge(&mut self, other: &PairMoments) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let dx = (other.shift_x - self.shift_x) + other.mean_x - self.mean_x;
        let dy = (other.shift_y - self.shift_y) + other.mean_y - self.mean_y;
        let w = na * nb / n;
        self.mean_x += dx * nb / n;
        self.mean_y += dy * nb / n;
        self.m2_x += other.m2_x + dx * dx * w;
        self.m2_y += other.m2_y + dy * dy * w;
        self.c_xy += other.c_xy + dx * dy * w;
        self.n += other.n;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// Pearson's r; `None` with fewer than two pairs or a constant side.
    pub fn pearson(&self) -> Option<f64> {
        if self.n < 2 || self.m2_x <= 0.0 || self.m2_y <= 0.0 {
            return None;
        }
        let r = self.c_xy / (self.m2_x.sqrt() * self.m2_y.sqrt());
        // Rounding can carry |r| a hair past 1 for perfectly (anti)correlated pairs.
        r.is_finite().then(|| r.clamp(-1.0, 1.0))
    }
}

/// Lanes of the pairwise sums in [`PairMoments::of_columns`].
const L: usize = 4;

/// `f(lane, x, y, both present)` for every row: lane `k % L`, the whole groups of `L` rows
/// first through fixed-size chunks (which keep the lanes' sums in registers), then the tail.
/// `DENSE`: every row is a pair, and the masks are not read.
#[inline(always)]
fn by_lane<const DENSE: bool>(
    x: &[f64],
    y: &[f64],
    px: &[bool],
    py: &[bool],
    mut f: impl FnMut(usize, f64, f64, bool),
) {
    let whole = x.len() - x.len() % L;
    let chunks = x[..whole]
        .chunks_exact(L)
        .zip(y[..whole].chunks_exact(L))
        .zip(px[..whole].chunks_exact(L).zip(py[..whole].chunks_exact(L)));
    for ((x, y), (px, py)) in chunks {
        for l in 0..L {
            f(l, x[l], y[l], DENSE || px[l] & py[l]);
        }
    }
    for k in whole..x.len() {
        f(k - whole, x[k], y[k], DENSE || px[k] & py[k]);
    }
}

/// Pearson co-moments of every pair of series `(a, b)`, `a < b`, over the rows where both
/// cells are present.
#[derive(Debug, Clone, PartialEq)]
pub struct Correlator {
    width: usize,
    /// Pairs in order (0,1), (0,2), …, (1,2), …
    pairs: Vec<PairMoments>,
}

impl Correlator {
    pub fn new(width: usize) -> Self {
        Correlator {
            width,
            pairs: vec![PairMoments::default(); width * width.saturating_sub(1) / 2],
        }
    }

    /// Adds a block's rows: per pair, the block's moments over the rows where both cells
    /// are present, merged in.
    pub fn add_block(&mut self, block: &Block) {
        assert_eq!(block.vals.len(), self.width, "one column per series");
        let mut k = 0;
        for a in 0..self.width {
            for b in a + 1..self.width {
                let p = &mut self.pairs[k];
                let m = PairMoments::of_columns(
                    &block.vals[a],
                    &block.vals[b],
                    &block.present[a],
                    &block.present[b],
                    p.shift(),
                );
                p.merge(&m);
                k += 1;
            }
        }
        debug_assert_eq!(k, self.pairs.len());
    }

    pub fn merge(&mut self, other: &Correlator) {
        assert_eq!(
            self.width, other.width,
            "only joins of the same series merge"
        );
        for (p, o) in self.pairs.iter_mut().zip(&other.pairs) {
            p.merge(o);
        }
    }

    /// `(a, b, moments)` for every pair, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (usize, usize, &PairMoments)> + '_ {
        (0..self.width)
            .flat_map(move |a| (a + 1..self.width).map(move |b| (a, b)))
            .zip(&self.pairs)
            .map(|((a, b), p)| (a, b, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
    use proptest::strategy::Strategy as _;
    use proptest::test_runner::Config as ProptestConfig;

    type Row = (i64, Vec<Option<f64>>);

    /// The obvious join: for each lead point, scan every other series whole.
    fn reference_join(series: &[(Vec<i64>, Vec<f64>)], strategy: Strategy, tol: i64) -> Vec<Row> {
        let tol = i128::from(tol);
        let (lead_ts, lead_vals) = &series[0];
        lead_ts
            .iter()
            .zip(lead_vals)
            .map(|(&t, &v)| {
                let mut row = vec![Some(v)];
                for (ts, vals) in &series[1..] {
                    let dist = |i: usize| (i128::from(ts[i]) - i128::from(t)).abs();
                    let back = (0..ts.len())
                        .filter(|&i| ts[i] <= t && dist(i) <= tol)
                        .max_by_key(|&i| ts[i]);
                    let fwd = (0..ts.len())
                        .filter(|&i| ts[i] >= t && dist(i) <= tol)
                        .min_by_key(|&i| ts[i]);
                    let chosen = match strategy {
                        Strategy::Backward => back,
                        Strategy::Forward => fwd,
                        Strategy::Nearest => match (back, fwd) {
                            (Some(b), Some(f)) if dist(f) < dist(b) => Some(f),
                            (Some(b), _) => Some(b),
                            (None, f) => f,
                        },
                    };
                    row.push(chosen.map(|i| vals[i]));
                }
                (t, row)
            })
            .collect()
    }

    /// Two-pass Pearson over the rows where both cells are present.
    fn reference_pearson(rows: &[Row], a: usize, b: usize) -> (u64, Option<f64>) {
        let both: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|(_, r)| Some((r[a]?, r[b]?)))
            .collect();
        let n = both.len() as f64;
        if both.len() < 2 {
            return (both.len() as u64, None);
        }
        let mx = both.iter().map(|p| p.0).sum::<f64>() / n;
        let my = both.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = both.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
        let syy: f64 = both.iter().map(|p| (p.1 - my) * (p.1 - my)).sum();
        let sxy: f64 = both.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let r = (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx.sqrt() * syy.sqrt()));
        (both.len() as u64, r)
    }

    /// The join in blocks of `block` rows over sources read in chunks of `chunk`: its rows,
    /// and the pairs over them.
    fn streaming(
        series: &[(Vec<i64>, Vec<f64>)],
        strategy: Strategy,
        tol: i64,
        chunk: usize,
        block: usize,
    ) -> (Vec<Row>, Correlator) {
        let sources = series
            .iter()
            .map(|(t, v)| SliceSource::new(t, v, chunk))
            .collect();
        let mut j = Joiner::new(sources, strategy, tol);
        let mut b = Block::new(series.len());
        let mut corr = Correlator::new(series.len());
        let mut rows = Vec::new();
        while j.next_block(&mut b, block).unwrap() {
            assert!(b.len() <= block.max(1));
            corr.add_block(&b);
            rows.extend((0..b.len()).map(|k| (b.ts()[k], b.row(k))));
        }
        (rows, corr)
    }

    /// Moments of rows accumulated as one block.
    fn block_of(rows: &[Row], width: usize) -> Correlator {
        let mut b = Block::new(width);
        rows.iter().for_each(|(t, r)| b.push_row(*t, r));
        let mut c = Correlator::new(width);
        c.add_block(&b);
        c
    }

    fn cols(points: &[(i64, f64)]) -> (Vec<i64>, Vec<f64>) {
        points.iter().copied().unzip()
    }

    fn close(a: Option<f64>, b: Option<f64>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
            (a, b) => a.is_none() && b.is_none(),
        }
    }

    /// The strategies on one small case (expected rows as data).
    #[test]
    fn strategies_pick_as_polars_join_asof() {
        let lead = cols(&[(10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0)]);
        let other = cols(&[(8, 0.8), (20, 2.0), (25, 2.5), (35, 3.5), (47, 4.7)]);
        let series = [lead, other];
        let check = |strategy, tol, want: [Option<f64>; 4]| {
            let (rows, _) = streaming(&series, strategy, tol, 2, 3);
            let got: Vec<Option<f64>> = rows.iter().map(|r| r.1[1]).collect();
            assert_eq!(got, want, "{strategy:?} tol {tol}");
            assert_eq!(rows, reference_join(&series, strategy, tol));
        };
        use super::Strategy::*;
        check(Backward, 5, [Some(0.8), Some(2.0), Some(2.5), Some(3.5)]);
        check(Backward, 1, [None, Some(2.0), None, None]);
        check(Forward, 5, [None, Some(2.0), Some(3.5), None]);
        check(Forward, 7, [None, Some(2.0), Some(3.5), Some(4.7)]);
        // 10 is 2 after 8; 30 is 5 from both 25 and 35: the earlier wins; 40 is 5 from 35, 7 from 47.
        check(Nearest, 5, [Some(0.8), Some(2.0), Some(2.5), Some(3.5)]);
        check(Nearest, 2, [Some(0.8), Some(2.0), None, None]);
        check(Backward, 0, [None, Some(2.0), None, None]);
    }

    #[test]
    fn pearson_of_known_pairs() {
        let pairs = |xs: &[(f64, f64)]| {
            let (x, y): (Vec<f64>, Vec<f64>) = xs.iter().copied().unzip();
            let all = vec![true; x.len()];
            PairMoments::of_columns(&x, &y, &all, &all, None)
        };
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 * f64::from(i) + 1e9))
            .collect();
        assert!((pairs(&line).pearson().unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(
            pairs(&[(1.0, 5.0), (2.0, 5.0)]).pearson(),
            None,
            "a constant side has no r"
        );
        assert_eq!(PairMoments::default().pearson(), None);
        // Absent rows count for nothing, whatever their values hold.
        let (x, y) = ([1.0, 9e300, 2.0, 3.0], [2.0, 1.0, 4.0, 6.0]);
        let (px, py) = ([true, true, true, true], [true, false, true, true]);
        let m = PairMoments::of_columns(&x, &y, &px, &py, None);
        assert_eq!(m.count(), 3);
        assert!((m.pearson().unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn unsorted_source_is_an_error_not_a_wrong_answer() {
        let (t0, v0) = cols(&[(1, 1.0), (2, 2.0), (5, 5.0)]);
        let (t1, v1) = cols(&[(1, 1.0), (3, 2.0), (3, 4.0)]);
        let sources = vec![SliceSource::new(&t0, &v0, 2), SliceSource::new(&t1, &v1, 2)];
        let mut j = Joiner::new(sources, Strategy::Forward, 10);
        let mut b = Block::new(2);
        let err = (0..3)
            .map(|_| j.next_block(&mut b, 1))
            .find_map(Result::err)
            .expect("the repeat of 3 across chunks is found");
        assert_eq!(
            err,
            JoinError::Unsorted {
                series: 1,
                prev_ns: 3,
                ts_ns: 3
            }
        );
    }

    /// Strictly increasing points on a coarse grid (so that timestamps repeat across series
    /// and gaps occur), integer values (so that a constant side is exactly constant).
    fn arb_series() -> impl proptest::strategy::Strategy<Value = (Vec<i64>, Vec<f64>)> {
        proptest::collection::btree_map(-40i64..40, -50i32..50, 0..40)
            .prop_map(|m| m.into_iter().map(|(t, v)| (t * 3, f64::from(v))).unzip())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The streaming join equals the obvious one, row for row, whatever the chunks and
        /// blocks; its Pearson (blocks merged; halves merged too) equals the two-pass one.
        #[test]
        fn streaming_join_equals_reference(
            series in proptest::collection::vec(arb_series(), 2..5),
            tol in prop_oneof![Just(0i64), 0i64..20, Just(i64::MAX)],
            strategy in prop_oneof![Just(Strategy::Backward), Just(Strategy::Forward), Just(Strategy::Nearest)],
            chunk in 1usize..7,
            block in prop_oneof![Just(1usize), 1usize..9, Just(BLOCK_ROWS)],
            split in 0usize..40,
        ) {
            let want = reference_join(&series, strategy, tol);
            let (rows, corr) = streaming(&series, strategy, tol, chunk, block);
            prop_assert_eq!(&rows, &want);
            let split = split.min(rows.len());
            let mut first = block_of(&rows[..split], series.len());
            first.merge(&block_of(&rows[split..], series.len()));
            for ((a, b, p), (_, _, m)) in corr.pairs().zip(first.pairs()) {
                let (n, r) = reference_pearson(&want, a, b);
                prop_assert_eq!(p.count(), n);
                prop_assert_eq!(m.count(), n);
                prop_assert!(close(p.pearson(), r), "{a},{b}: {:?} vs {:?}", p.pearson(), r);
                prop_assert!(close(m.pearson(), r), "merged {a},{b}: {:?} vs {:?}", m.pearson(), r);
            }
        }

        /// Long series, so that spans are cut into the merge's runs (`MERGE_LANES`) and a
        /// run may start before, on or after a follower's point: the rows are the obvious
        /// join's, and dense blocks' Pearson (no masks) is the two-pass one.
        #[test]
        fn long_merges_in_runs_equal_reference(
            lead in proptest::collection::btree_map(-3000i64..3000, -50i32..50, 0..1500),
            other in proptest::collection::btree_map(-3000i64..3000, -50i32..50, 0..1500),
            tol in prop_oneof![Just(0i64), 0i64..30, Just(i64::MAX)],
            strategy in prop_oneof![Just(Strategy::Backward), Just(Strategy::Forward), Just(Strategy::Nearest)],
            chunk in prop_oneof![Just(usize::MAX), 50usize..2000],
            block in prop_oneof![Just(BLOCK_ROWS), 64usize..700],
        ) {
            let col = |m: std::collections::BTreeMap<i64, i32>| -> (Vec<i64>, Vec<f64>) {
                m.into_iter().map(|(t, v)| (t, f64::from(v))).unzip()
            };
            let series = [col(lead), col(other)];
            let want = reference_join(&series, strategy, tol);
            let (rows, corr) = streaming(&series, strategy, tol, chunk, block);
            prop_assert_eq!(&rows, &want);
            let (a, b, p) = corr.pairs().next().expect("one pair");
            let (n, r) = reference_pearson(&want, a, b);
            prop_assert_eq!(p.count(), n);
            prop_assert!(close(p.pearson(), r), "{:?} vs {:?}", p.pearson(), r);
        }

        /// Timestamps anywhere in i64 (distances past i64::MAX, a tolerance of i64::MAX):
        /// the unsigned distances pick as the wide reference does.
        #[test]
        fn distances_at_the_ends_of_i64(
            lead in proptest::collection::btree_set(prop_oneof![Just(i64::MIN), Just(i64::MAX), proptest::num::i64::ANY], 1..12),
            other in proptest::collection::btree_set(prop_oneof![Just(i64::MIN), Just(i64::MAX), proptest::num::i64::ANY], 1..12),
            tol in prop_oneof![Just(i64::MAX), proptest::num::i64::ANY.prop_map(|t| t.saturating_abs())],
            strategy in prop_oneof![Just(Strategy::Backward), Just(Strategy::Forward), Just(Strategy::Nearest)],
        ) {
            let col = |s: &std::collections::BTreeSet<i64>| -> (Vec<i64>, Vec<f64>) {
                s.iter().map(|&t| (t, (t % 1000) as f64)).unzip()
            };
            let series = [col(&lead), col(&other)];
            let (rows, _) = streaming(&series, strategy, tol, 3, 4);
            prop_assert_eq!(rows, reference_join(&series, strategy, tol));
        }
    }
}
