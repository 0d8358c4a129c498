//! Correlation of series, pure (no IO): an as-of join of several time-sorted point sources
//! and mergeable Pearson co-moments over its rows.
//!
//! ## The join
//!
//! The first series drives the rows: one row per point of series 0; for every other series
//! the cell is the value of the point the [`Strategy`] picks within the tolerance, else
//! `None` — the semantics of polars' `join_asof` with exact matches allowed. Sources yield
//! their points chunk by chunk (a stored series segment by segment, see
//! `telemetry::read::RawStream`), each strictly increasing in time; the joiner keeps one
//! chunk and one earlier point per source, so its memory is O(series) beyond the chunks
//! and it allocates nothing per point.
//!
//! ## Pearson
//!
//! [`PairMoments`] keeps count, means and co-moments of one pair, updated with Welford's
//! rule and merged with Chan's — relative to a shift (the first pair added), like
//! [`super::moments::Moments`], so a large offset next to a small spread keeps its digits.

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

/// Points in time order, a chunk at a time.
pub trait PointSource {
    type Error;
    /// Replaces `ts` and `vals` with the next points (strictly increasing, and after every
    /// point of the chunks before); `false` once none are left. An empty chunk with `true`
    /// is allowed (the caller asks again).
    fn next_chunk(&mut self, ts: &mut Vec<i64>, vals: &mut Vec<f64>) -> Result<bool, Self::Error>;
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

/// Whole columns as a source, in chunks of `chunk` points (tests, bucket means).
pub struct SliceSource<'a> {
    ts: &'a [i64],
    vals: &'a [f64],
    chunk: usize,
    pos: usize,
}

impl<'a> SliceSource<'a> {
    pub fn new(ts: &'a [i64], vals: &'a [f64], chunk: usize) -> Self {
        assert_eq!(ts.len(), vals.len(), "columns pair up by index");
        SliceSource {
            ts,
            vals,
            chunk: chunk.max(1),
            pos: 0,
        }
    }
}

impl PointSource for SliceSource<'_> {
    type Error = std::convert::Infallible;
    fn next_chunk(&mut self, ts: &mut Vec<i64>, vals: &mut Vec<f64>) -> Result<bool, Self::Error> {
        ts.clear();
        vals.clear();
        if self.pos >= self.ts.len() {
            return Ok(false);
        }
        let end = (self.pos + self.chunk).min(self.ts.len());
        ts.extend_from_slice(&self.ts[self.pos..end]);
        vals.extend_from_slice(&self.vals[self.pos..end]);
        self.pos = end;
        Ok(true)
    }
}

/// One source with its current chunk.
struct Cursor<S> {
    src: S,
    series: usize,
    ts: Vec<i64>,
    vals: Vec<f64>,
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
            ts: Vec::new(),
            vals: Vec::new(),
            pos: 0,
            done: false,
            prev_ts: None,
        }
    }

    /// The next point, without consuming it.
    fn head(&mut self) -> Result<Option<(i64, f64)>, JoinError<S::Error>> {
        while self.pos == self.ts.len() {
            if self.done {
                return Ok(None);
            }
            self.prev_ts = self.ts.last().copied().or(self.prev_ts);
            self.pos = 0;
            if !self
                .src
                .next_chunk(&mut self.ts, &mut self.vals)
                .map_err(JoinError::Source)?
            {
                self.done = true;
                self.ts.clear();
                self.vals.clear();
                return Ok(None);
            }
            self.check_chunk()?;
        }
        Ok(Some((self.ts[self.pos], self.vals[self.pos])))
    }

    fn check_chunk(&self) -> Result<(), JoinError<S::Error>> {
        assert_eq!(self.ts.len(), self.vals.len(), "a source's columns pair up");
        let unsorted = |prev_ns, ts_ns| JoinError::Unsorted {
            series: self.series,
            prev_ns,
            ts_ns,
        };
        if let (Some(p), Some(&f)) = (self.prev_ts, self.ts.first()) {
            if f <= p {
                return Err(unsorted(p, f));
            }
        }
        match self.ts.windows(2).find(|w| w[1] <= w[0]) {
            Some(w) => Err(unsorted(w[0], w[1])),
            None => Ok(()),
        }
    }

    fn advance(&mut self) {
        debug_assert!(self.pos < self.ts.len());
        self.pos += 1;
    }
}

/// Another series of the join: its cursor and the latest point at or before the last row.
struct Follower<S> {
    cur: Cursor<S>,
    prev: Option<(i64, f64)>,
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

    /// The next row: its time, with `row[j]` set to series j's cell (`row[0]` is the lead's
    /// value). `None` when the lead is exhausted.
    pub fn next_row(
        &mut self,
        row: &mut [Option<f64>],
    ) -> Result<Option<i64>, JoinError<S::Error>> {
        assert_eq!(row.len(), self.width(), "one cell per series");
        let Some((t, v)) = self.lead.head()? else {
            return Ok(None);
        };
        self.lead.advance();
        row[0] = Some(v);
        for (f, cell) in self.others.iter_mut().zip(&mut row[1..]) {
            while let Some((pt, pv)) = f.cur.head()? {
                if pt > t {
                    break;
                }
                f.prev = Some((pt, pv));
                f.cur.advance();
            }
            let next = match f.prev {
                Some(p) if p.0 == t => Some(p),
                _ => f.cur.head()?,
            };
            *cell = pick(self.strategy, self.tolerance_ns, t, f.prev, next);
        }
        Ok(Some(t))
    }
}

/// The cell of a row at `t` from the latest point at or before it and the earliest at or
/// after it. Distances in i128: timestamps may lie anywhere in i64.
fn pick(
    strategy: Strategy,
    tolerance_ns: i64,
    t: i64,
    before: Option<(i64, f64)>,
    after: Option<(i64, f64)>,
) -> Option<f64> {
    let tol = i128::from(tolerance_ns);
    let back = before
        .map(|(ts, v)| (i128::from(t) - i128::from(ts), v))
        .filter(|(d, _)| *d <= tol);
    let fwd = after
        .map(|(ts, v)| (i128::from(ts) - i128::from(t), v))
        .filter(|(d, _)| *d <= tol);
    match strategy {
        Strategy::Backward => back.map(|b| b.1),
        Strategy::Forward => fwd.map(|f| f.1),
        Strategy::Nearest => match (back, fwd) {
            (Some(b), Some(f)) => Some(if f.0 < b.0 { f.1 } else { b.1 }),
            (b, f) => b.or(f).map(|x| x.1),
        },
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
    pub fn push(&mut self, x: f64, y: f64) {
        if self.n == 0 {
            self.shift_x = x;
            self.shift_y = y;
        }
        self.n += 1;
        let n = self.n as f64;
        let (x, y) = (x - self.shift_x, y - self.shift_y);
        let dx = x - self.mean_x;
        self.mean_x += dx / n;
        let dy = y - self.mean_y;
        self.mean_y += dy / n;
        self.m2_x += dx * (x - self.mean_x);
        self.m2_y += dy * (y - self.mean_y);
        self.c_xy += dx * (y - self.mean_y);
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

    pub fn add_row(&mut self, row: &[Option<f64>]) {
        assert_eq!(row.len(), self.width, "one cell per series");
        let mut k = 0;
        for (a, x) in row.iter().enumerate() {
            for y in &row[a + 1..] {
                if let (Some(x), Some(y)) = (x, y) {
                    self.pairs[k].push(*x, *y);
                }
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

    fn streaming(
        series: &[(Vec<i64>, Vec<f64>)],
        strategy: Strategy,
        tol: i64,
        chunk: usize,
    ) -> (Vec<Row>, Correlator) {
        let sources = series
            .iter()
            .map(|(t, v)| SliceSource::new(t, v, chunk))
            .collect();
        let mut j = Joiner::new(sources, strategy, tol);
        let mut cells = vec![None; series.len()];
        let mut corr = Correlator::new(series.len());
        let mut rows = Vec::new();
        while let Some(t) = j.next_row(&mut cells).unwrap() {
            corr.add_row(&cells);
            rows.push((t, cells.clone()));
        }
        (rows, corr)
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
            let (rows, _) = streaming(&series, strategy, tol, 2);
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
        let mut p = PairMoments::default();
        for i in 0..10 {
            p.push(f64::from(i), 3.0 * f64::from(i) + 1e9);
        }
        assert!((p.pearson().unwrap() - 1.0).abs() < 1e-12);
        let mut q = PairMoments::default();
        q.push(1.0, 5.0);
        q.push(2.0, 5.0);
        assert_eq!(q.pearson(), None, "a constant side has no r");
        assert_eq!(PairMoments::default().pearson(), None);
    }

    #[test]
    fn unsorted_source_is_an_error_not_a_wrong_answer() {
        let (t0, v0) = cols(&[(1, 1.0), (2, 2.0), (5, 5.0)]);
        let (t1, v1) = cols(&[(1, 1.0), (3, 2.0), (3, 4.0)]);
        let sources = vec![SliceSource::new(&t0, &v0, 2), SliceSource::new(&t1, &v1, 2)];
        let mut j = Joiner::new(sources, Strategy::Forward, 10);
        let mut row = [None; 2];
        let err = (0..3)
            .map(|_| j.next_row(&mut row))
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

        /// The streaming join equals the obvious one, row for row; its Pearson (Welford,
        /// merged halves too) equals the two-pass one.
        #[test]
        fn streaming_join_equals_reference(
            series in proptest::collection::vec(arb_series(), 2..5),
            tol in prop_oneof![Just(0i64), 0i64..20, Just(i64::MAX)],
            strategy in prop_oneof![Just(Strategy::Backward), Just(Strategy::Forward), Just(Strategy::Nearest)],
            chunk in 1usize..7,
            split in 0usize..40,
        ) {
            let want = reference_join(&series, strategy, tol);
            let (rows, corr) = streaming(&series, strategy, tol, chunk);
            prop_assert_eq!(&rows, &want);
            // Halves accumulated apart and merged.
            let split = split.min(rows.len());
            let (mut first, mut second) = (Correlator::new(series.len()), Correlator::new(series.len()));
            rows[..split].iter().for_each(|r| first.add_row(&r.1));
            rows[split..].iter().for_each(|r| second.add_row(&r.1));
            first.merge(&second);
            for ((a, b, p), (_, _, m)) in corr.pairs().zip(first.pairs()) {
                let (n, r) = reference_pearson(&want, a, b);
                prop_assert_eq!(p.count(), n);
                prop_assert_eq!(m.count(), n);
                prop_assert!(close(p.pearson(), r), "{a},{b}: {:?} vs {:?}", p.pearson(), r);
                prop_assert!(close(m.pearson(), r), "merged {a},{b}: {:?} vs {:?}", m.pearson(), r);
            }
        }
    }
}
