//! Reads across stored series, each from one point-in-time view and never past retention:
//! the correlation of several series (their raw points streamed through
//! [`super::correlate`], or their bucket means from the tiered [`super::query`]), a page of
//! series names with their extent, a page of raw points, and an estimate of the raw points
//! in a range from segment headers alone.

use std::cell::Cell;

use super::command::{MAX_SEGMENT_SPAN_NS, MAX_TS, MIN_TS};
use super::correlate::{
    Block, Correlator, JoinError, Joiner, PointSource, SliceSource, Strategy, BLOCK_ROWS,
};
use super::keys::{decode_bucket, decode_series_id, raw_key, rollup_key};
use super::moments::Moments;
use super::query::{query_at, series_at, QueryError, QuerySpec};
use super::read::{read_opts, RawStream, ScanError};
use super::retention::{load_policies, ReadView, HOUR_NS, TIER_HOUR};
use super::segment;
use crate::storage::sm_db::{SmDb, CF_TM_RAW, CF_TM_ROLLUP, CF_TM_SERIES};
use crate::storage::StorageError;

/// Raw points one correlation decodes at most, over all its series (bounds its time; its
/// memory is bounded by streaming whatever the range holds).
pub const MAX_CORRELATE_RAW_POINTS: usize = super::query::MAX_QUERY_RAW_POINTS;

/// What to correlate (validated by the caller: 2 or more distinct series, a non-empty
/// range, a tolerance ≥ 0, a positive bucket width).
#[derive(Debug, Clone)]
pub struct CorrelateSpec {
    pub series: Vec<String>,
    pub start_ns: i64,
    pub end_ns: i64,
    pub tolerance_ns: i64,
    pub strategy: Strategy,
    /// Join bucket means of this width instead of raw points.
    pub every_ns: Option<i64>,
    /// Rows returned at most (the pairs cover every row).
    pub limit: usize,
    /// Only rows after this time are returned.
    pub after_ns: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CorrelatedRow {
    pub ts_ns: i64,
    /// One cell per series, in the order asked (`values[0]` is the driving series').
    pub values: Vec<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PairCorrelation {
    pub a: String,
    pub b: String,
    /// Rows where both cells are present.
    pub matched: u64,
    pub pearson: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Correlation {
    pub rows: Vec<CorrelatedRow>,
    /// Over every row of the range, not only the page.
    pub pairs: Vec<PairCorrelation>,
    pub rows_total: u64,
    /// The `after_ns` of the next page (`None`: this was the last).
    pub next_after: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInfo {
    pub name: String,
    /// The first and last retained timestamps (`None`: nothing is retained).
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    /// Retained points.
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPage {
    pub series: Vec<SeriesInfo>,
    pub next_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PointsPage {
    pub points: Vec<(i64, f64)>,
    pub next_after: Option<i64>,
}

fn check_range(start_ns: i64, end_ns: i64) -> Result<(), QueryError> {
    if end_ns <= start_ns {
        return Err(QueryError::Invalid(format!(
            "empty range: end {end_ns} <= start {start_ns}"
        )));
    }
    if start_ns < MIN_TS || end_ns > MAX_TS {
        return Err(QueryError::Invalid(
            "range outside the supported timestamps".into(),
        ));
    }
    Ok(())
}

fn scan_error(e: ScanError) -> QueryError {
    match e {
        ScanError::Storage(s) => QueryError::Storage(s),
        e @ ScanError::TooManyPoints(_) => QueryError::Invalid(e.to_string()),
    }
}

fn join_error<E>(e: JoinError<E>, to_query: impl FnOnce(E) -> QueryError) -> QueryError {
    match e {
        JoinError::Source(e) => to_query(e),
        // Stored points are deduplicated per series: a repeat is a broken store.
        JoinError::Unsorted {
            series,
            prev_ns,
            ts_ns,
        } => QueryError::Storage(StorageError::corrupt(
            "raw points",
            format!("series #{series}: timestamp {ts_ns} does not follow {prev_ns}"),
        )),
    }
}

/// Correlates stored series over `[start, end)`: the rows of the page and the pairs over
/// every row. Raw points: the first series' in the range, the others' a tolerance wider on
/// both sides (a row near an edge takes a point just outside it), each from its raw cutoff
/// on. Bucket means (`every_ns`): every series' buckets of the range.
pub fn correlate(db: &SmDb, spec: &CorrelateSpec) -> Result<Correlation, QueryError> {
    assert!(spec.series.len() >= 2, "validated by the caller");
    check_range(spec.start_ns, spec.end_ns)?;
    let view = db.db().snapshot();
    let mut ids = Vec::with_capacity(spec.series.len());
    for name in &spec.series {
        ids.push(series_at(db, &view, name)?);
    }
    let mut page = Page::new(spec);
    match spec.every_ns {
        None => {
            let budget = Cell::new(MAX_CORRELATE_RAW_POINTS);
            let mut sources = Vec::with_capacity(ids.len());
            for (i, &(id, cut)) in ids.iter().enumerate() {
                // The range bounds the rows (the first series' points); the others are read
                // a tolerance wider on both sides, so that a row near an edge takes a point
                // just outside it, as the join of whole series would.
                let widen = if i == 0 { 0 } else { spec.tolerance_ns };
                let from = spec.start_ns.saturating_sub(widen).max(cut.raw);
                let to = spec.end_ns.saturating_add(widen).min(MAX_TS);
                sources.push(RawStream::new(db, &view, id, from, to, &budget)?);
            }
            page.run(sources, spec, scan_error)?;
        }
        Some(every_ns) => {
            // Bucket means from the tiered query path, one series at a time (each holds at
            // most `MAX_QUERY_BUCKETS` buckets).
            let mut columns = Vec::with_capacity(spec.series.len());
            for name in &spec.series {
                let q = QuerySpec {
                    bucket_ns: every_ns,
                    ..QuerySpec::range(name.clone(), spec.start_ns, spec.end_ns)
                };
                let r = query_at(db, &view, &q)?;
                let means: (Vec<i64>, Vec<f64>) = r
                    .buckets
                    .iter()
                    .filter_map(|b| Some((b.start_ns, b.moments.mean()?)))
                    .unzip();
                columns.push(means);
            }
            let sources = columns
                .iter()
                .map(|(t, v)| SliceSource::new(t, v, usize::MAX))
                .collect();
            page.run(sources, spec, |never| match never {})?;
        }
    }
    Ok(page.finish(spec))
}

/// The rows of one page and the pairs over all rows, as the join produces them.
struct Page {
    rows: Vec<CorrelatedRow>,
    corr: Correlator,
    total: u64,
    more: bool,
}

impl Page {
    fn new(spec: &CorrelateSpec) -> Self {
        Page {
            rows: Vec::with_capacity(spec.limit.min(1024)),
            corr: Correlator::new(spec.series.len()),
            total: 0,
            more: false,
        }
    }

    fn run<S: PointSource>(
        &mut self,
        sources: Vec<S>,
        spec: &CorrelateSpec,
        to_query: impl Fn(S::Error) -> QueryError + Copy,
    ) -> Result<(), QueryError> {
        let mut join = Joiner::new(sources, spec.strategy, spec.tolerance_ns);
        let mut block = Block::new(spec.series.len());
        while join
            .next_block(&mut block, BLOCK_ROWS)
            .map_err(|e| join_error(e, to_query))?
        {
            self.total += block.len() as u64;
            self.corr.add_block(&block);
            if self.more {
                continue;
            }
            let from = spec
                .after_ns
                .map_or(0, |a| block.ts().partition_point(|&t| t <= a));
            for k in from..block.len() {
                if self.rows.len() == spec.limit {
                    self.more = true;
                    break;
                }
                self.rows.push(CorrelatedRow {
                    ts_ns: block.ts()[k],
                    values: block.row(k),
                });
            }
        }
        Ok(())
    }

    fn finish(self, spec: &CorrelateSpec) -> Correlation {
        let pairs = self
            .corr
            .pairs()
            .map(|(a, b, p)| PairCorrelation {
                a: spec.series[a].clone(),
                b: spec.series[b].clone(),
                matched: p.count(),
                pearson: p.pearson(),
            })
            .collect();
        Correlation {
            next_after: self
                .more
                .then(|| self.rows.last().map(|r| r.ts_ns))
                .flatten(),
            rows: self.rows,
            pairs,
            rows_total: self.total,
        }
    }
}

/// Series whose name starts with `prefix`, in name order, after `after`, at most `first`,
/// with their retained extent. The extent comes from the hour rollups: every point ever
/// ingested is in one (rollups are kept from ingest on, deduplicated), and the hour tier is
/// retained longest (its cutoff is the earliest), so they cover exactly what is retained —
/// where segment headers would count an overwritten point twice and cannot tell which
/// points of a segment across the raw cutoff are dead. One record per hour is read, and no
/// point decoded.
pub fn list_series(
    db: &SmDb,
    prefix: &str,
    first: usize,
    after: Option<&str>,
) -> Result<SeriesPage, QueryError> {
    let view = db.db().snapshot();
    let now = super::retention::commit_time(db, &view)?;
    let policies = load_policies(db, &view)?;
    let start = match after {
        Some(a) if a >= prefix => a.as_bytes().to_vec(),
        _ => prefix.as_bytes().to_vec(),
    };
    let mut page = SeriesPage {
        series: Vec::new(),
        next_after: None,
    };
    let iter = view.iterator_cf(
        db.cf(CF_TM_SERIES)?,
        rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
    );
    for item in iter {
        let (k, v) = item.map_err(StorageError::from)?;
        if !k.starts_with(prefix.as_bytes()) {
            break;
        }
        if after.is_some_and(|a| *k <= *a.as_bytes()) {
            continue;
        }
        let name =
            String::from_utf8(k.into_vec()).map_err(|e| StorageError::corrupt("series name", e))?;
        if page.series.len() == first {
            page.next_after = page.series.last().map(|s| s.name.clone());
            break;
        }
        let id = decode_series_id(&v)?;
        let cut = policies.cutoffs(id, &name, now);
        let extent = hour_extent(db, &view, id, cut.hour)?;
        page.series.push(SeriesInfo {
            name,
            first_ns: extent.first().map(|f| f.0),
            last_ns: extent.last().map(|l| l.0),
            count: extent.count(),
        });
    }
    Ok(page)
}

/// The hour buckets of a series from `from` on, merged.
fn hour_extent(
    db: &SmDb,
    view: &ReadView<'_>,
    series: u64,
    from: i64,
) -> Result<Moments, QueryError> {
    let mut opts = read_opts(Some(view));
    // Every key of the hour tier sorts before the next tier's first.
    opts.set_iterate_upper_bound(rollup_key(series, TIER_HOUR + 1, i64::MIN).to_vec());
    let start = rollup_key(series, TIER_HOUR, from);
    let mut all = Moments::new();
    for item in db.db().iterator_cf_opt(
        db.cf(CF_TM_ROLLUP)?,
        opts,
        rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
    ) {
        let (_, v) = item.map_err(StorageError::from)?;
        all.merge(&decode_bucket(&v)?.moments);
    }
    Ok(all)
}

/// A page of a series' raw points in `[start, end)` after `after_ns`, deduplicated (the
/// latest write of a timestamp wins), from its raw cutoff on; at most `limit` (≥ 1).
pub fn raw_points(
    db: &SmDb,
    series: &str,
    start_ns: i64,
    end_ns: i64,
    limit: usize,
    after_ns: Option<i64>,
) -> Result<PointsPage, QueryError> {
    assert!(limit >= 1, "validated by the caller");
    check_range(start_ns, end_ns)?;
    let view = db.db().snapshot();
    let (id, cut) = series_at(db, &view, series)?;
    let from = start_ns
        .max(cut.raw)
        .max(after_ns.map_or(i64::MIN, |a| a.saturating_add(1)));
    // Only the segments holding the page (and the one after) are decoded.
    let budget = Cell::new(MAX_CORRELATE_RAW_POINTS);
    let mut stream = RawStream::new(db, &view, id, from, end_ns, &budget)?;
    let mut page = PointsPage {
        points: Vec::with_capacity(limit.min(4096)),
        next_after: None,
    };
    while stream.advance().map_err(scan_error)? {
        let (ts, vals) = stream.chunk();
        let room = limit - page.points.len();
        page.points
            .extend(ts.iter().copied().zip(vals.iter().copied()).take(room));
        if ts.len() > room {
            page.next_after = page.points.last().map(|p| p.0);
            break;
        }
    }
    Ok(page)
}

/// What the store knows of a series' points in a range, for a cost estimate (no decoding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    /// Raw points still retained: what pages, correlation rows and streams read.
    pub raw: u64,
    /// Points some tier still holds: the raw ones, plus, where raw points expired, those
    /// the hour rollups counted — what buckets and summaries are answered from.
    pub held: u64,
}

/// The points of `[start, end)` a series holds, estimated without decoding a point: the raw
/// ones from segment headers (a segment across an edge by the share of its span inside, a
/// point written again counted again, as raw readers decode it again), and before the raw
/// cutoff those the hour rollups counted (an hour across an edge by the share of the span
/// between its first and last point). A missing series holds none.
pub fn estimate_points(
    db: &SmDb,
    series: &str,
    start_ns: i64,
    end_ns: i64,
) -> Result<Known, QueryError> {
    check_range(start_ns, end_ns)?;
    let view = db.db().snapshot();
    let (id, cut) = match series_at(db, &view, series) {
        Ok(x) => x,
        Err(QueryError::NotFound(_)) => return Ok(Known::default()),
        Err(e) => return Err(e),
    };
    // Raw points are retained from `cut.raw` on, and `cut.raw >= cut.hour`.
    let (lo, hi) = (start_ns.max(cut.raw), end_ns);
    let raw = counted_share(
        db,
        &view,
        CF_TM_RAW,
        (
            &raw_key(id, lo.saturating_sub(MAX_SEGMENT_SPAN_NS), 0, 0),
            &raw_key(id, hi, 0, 0),
        ),
        (lo, hi),
        |v| {
            // The header only: checking the payload's CRC would cost what decoding does.
            let info = segment::header(v).map_err(|e| StorageError::corrupt("segment", e))?;
            Ok((info.min_ts, info.max_ts, info.count as u64))
        },
    )?;
    let (lo, hi) = (start_ns.max(cut.hour), end_ns.min(cut.raw));
    let rolled = counted_share(
        db,
        &view,
        CF_TM_ROLLUP,
        (
            &rollup_key(id, TIER_HOUR, lo.saturating_sub(lo.rem_euclid(HOUR_NS))),
            &rollup_key(id, TIER_HOUR, hi),
        ),
        (lo, hi),
        |v| {
            let m = decode_bucket(v)?.moments;
            let span = m.first().map(|f| f.0).zip(m.last().map(|l| l.0));
            Ok(span.map_or((0, 0, 0), |(first, last)| (first, last, m.count())))
        },
    )?;
    Ok(Known {
        raw,
        held: raw.saturating_add(rolled),
    })
}

/// The records of `cf` in `[keys.0, keys.1)` summed by `span` (each record's first and last
/// time and its count), a record across an edge of `[lo, hi)` by the share of its span
/// inside. Values are read in place (a segment is not copied to read its header).
fn counted_share(
    db: &SmDb,
    view: &ReadView<'_>,
    cf: &'static str,
    keys: (&[u8], &[u8]),
    (lo, hi): (i64, i64),
    span: impl Fn(&[u8]) -> Result<(i64, i64, u64), StorageError>,
) -> Result<u64, QueryError> {
    if lo >= hi {
        return Ok(0);
    }
    let mut opts = read_opts(Some(view));
    opts.set_iterate_upper_bound(keys.1.to_vec());
    let mut it = db.db().raw_iterator_cf_opt(db.cf(cf)?, opts);
    it.seek(keys.0);
    let mut total = 0f64;
    while let Some(v) = it.value() {
        let (first, last, count) = span(v)?;
        if count > 0 {
            total += overlap_share(first, last, lo, hi) * count as f64;
        }
        it.next();
    }
    it.status().map_err(StorageError::from)?;
    Ok(total.round() as u64)
}

/// The share of `[min, max]` (inclusive, a segment's span) inside `[lo, hi)`.
fn overlap_share(min: i64, max: i64, lo: i64, hi: i64) -> f64 {
    let (a, b) = (i128::from(min.max(lo)), i128::from(max.min(hi - 1)));
    if a > b {
        return 0.0;
    }
    let span = i128::from(max) - i128::from(min) + 1;
    ((b - a + 1) as f64 / span as f64).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_share_prorates_edges() {
        assert_eq!(overlap_share(0, 9, 0, 10), 1.0);
        assert_eq!(overlap_share(0, 9, 5, 100), 0.5);
        assert_eq!(overlap_share(0, 9, 10, 20), 0.0);
        assert_eq!(overlap_share(5, 5, 0, 6), 1.0);
        assert_eq!(overlap_share(MIN_TS, MAX_TS, MIN_TS, MAX_TS), 1.0);
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::raft::state_machine::StateMachine;
    use crate::raft::{Command, Entry, LogId, Request};
    use crate::telemetry::command::TelemetryCommand;
    use crate::telemetry::points::{dedupe, segments_of};
    use crate::telemetry::read::read_raw;
    use crate::telemetry::retention::{HOUR_NS, MINUTE_NS};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};

    const NOW: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
    const SEC: i64 = 1_000_000_000;

    struct Store {
        _dir: tempfile::TempDir,
        sm: StateMachine,
        index: u64,
    }

    impl Store {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let sm = StateMachine::open(dir.path()).unwrap();
            Store {
                _dir: dir,
                sm,
                index: 0,
            }
        }

        /// One entry writing `points` of each series (each series' segments in one
        /// command, so a later entry overwrites an earlier one's timestamps).
        async fn ingest(&mut self, commit_ns: i64, series: &[(&str, Vec<(i64, f64)>)]) {
            let mut segments = Vec::new();
            for (name, pts) in series {
                let (ts, vals): (Vec<i64>, Vec<f64>) = pts.iter().copied().unzip();
                segments.extend(segments_of(name, &ts, &vals).unwrap());
            }
            self.index += 1;
            self.sm
                .apply([Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
                    payload: EntryPayload::Normal(Request {
                        commit_time_ns: commit_ns,
                        dedupe_window_ns: 1,
                        commands: vec![Command::Telemetry(TelemetryCommand::Ingest(segments))],
                    }),
                }])
                .await
                .unwrap();
        }

        fn db(&self) -> std::sync::Arc<SmDb> {
            self.sm.store().db()
        }

        /// What a query reads: every raw point of the range, deduplicated.
        fn reference(&self, series: &str, start: i64, end: i64) -> Vec<(i64, f64)> {
            let db = self.db();
            let id = crate::telemetry::read::series_id(&db, series)
                .unwrap()
                .unwrap();
            let (ts, vals) = dedupe(read_raw(&db, None, id, start, end).unwrap());
            ts.into_iter().zip(vals).collect()
        }
    }

    /// Two series over 3 hours at 1 s and 7 s, then a late write that overlaps the first
    /// (overwriting every 5th second and adding half-seconds): segments overlap in time.
    async fn overlapping() -> Store {
        let mut s = Store::new();
        let t0 = NOW - 3 * HOUR_NS;
        let x: Vec<(i64, f64)> = (0..3 * 3600)
            .map(|i| (t0 + i * SEC, (i as f64 * 0.01).sin()))
            .collect();
        let y: Vec<(i64, f64)> = (0..3 * 3600 / 7)
            .map(|i| (t0 + i * 7 * SEC, (i as f64 * 0.07).sin() * 2.0 + 1e6))
            .collect();
        s.ingest(NOW, &[("a/x", x), ("a/y", y)]).await;
        let late: Vec<(i64, f64)> = (0..3 * 3600 / 5)
            .flat_map(|i| [(t0 + i * 5 * SEC, -1.0), (t0 + i * 5 * SEC + SEC / 2, -2.0)])
            .collect();
        s.ingest(NOW + SEC, &[("a/x", late)]).await;
        s
    }

    #[tokio::test]
    async fn raw_pages_equal_the_deduplicated_points() {
        let s = overlapping().await;
        let db = s.db();
        let (start, end) = (NOW - 2 * HOUR_NS - 17 * SEC, NOW - 30 * MINUTE_NS);
        let want = s.reference("a/x", start, end);
        assert!(want.iter().any(|p| p.1 == -1.0) && want.iter().any(|p| p.1 == -2.0));
        for limit in [97usize, 999, 7000, 1_000_000] {
            let (mut got, mut after) = (Vec::new(), None);
            loop {
                let page = raw_points(&db, "a/x", start, end, limit, after).unwrap();
                assert!(page.points.len() <= limit);
                got.extend_from_slice(&page.points);
                match page.next_after {
                    Some(a) => after = Some(a),
                    None => break,
                }
            }
            assert_eq!(got, want, "pages of {limit}");
        }
        assert!(matches!(
            raw_points(&db, "a/none", start, end, 5, None),
            Err(QueryError::NotFound(_))
        ));
        assert!(matches!(
            raw_points(&db, "a/x", end, start, 5, None),
            Err(QueryError::Invalid(_))
        ));
    }

    fn spec(series: &[&str], start: i64, end: i64, limit: usize) -> CorrelateSpec {
        CorrelateSpec {
            series: series.iter().map(|s| s.to_string()).collect(),
            start_ns: start,
            end_ns: end,
            tolerance_ns: 3 * SEC,
            strategy: Strategy::Nearest,
            every_ns: None,
            limit,
            after_ns: None,
        }
    }

    /// The join of stored series equals the join (already checked against the reference)
    /// of their deduplicated points; pages concatenate to the whole, with the same pairs.
    #[tokio::test]
    async fn correlation_of_stored_series_pages_through_the_join() {
        let s = overlapping().await;
        let db = s.db();
        let (start, end) = (NOW - 2 * HOUR_NS, NOW - HOUR_NS + 11 * SEC);
        // The rows' series in the range, the other a tolerance (3 s) wider.
        let cols: Vec<(Vec<i64>, Vec<f64>)> = [
            s.reference("a/y", start, end),
            s.reference("a/x", start - 3 * SEC, end + 3 * SEC),
        ]
        .into_iter()
        .map(|pts| pts.into_iter().unzip())
        .collect();
        let mut join = Joiner::new(
            cols.iter()
                .map(|(t, v)| SliceSource::new(t, v, 100))
                .collect(),
            Strategy::Nearest,
            3 * SEC,
        );
        let (mut want, mut block, mut corr) = (Vec::new(), Block::new(2), Correlator::new(2));
        while join.next_block(&mut block, BLOCK_ROWS).unwrap() {
            corr.add_block(&block);
            want.extend((0..block.len()).map(|k| CorrelatedRow {
                ts_ns: block.ts()[k],
                values: block.row(k),
            }));
        }
        let all = correlate(&db, &spec(&["a/y", "a/x"], start, end, usize::MAX)).unwrap();
        assert_eq!(all.rows, want);
        assert_eq!(all.rows_total, want.len() as u64);
        assert_eq!(all.next_after, None);
        let (_, _, p) = corr.pairs().next().unwrap();
        assert_eq!(all.pairs[0].matched, p.count());
        assert_eq!(all.pairs[0].pearson, p.pearson());
        assert!(p.count() > 100 && p.pearson().is_some());

        let (mut rows, mut q) = (Vec::new(), spec(&["a/y", "a/x"], start, end, 37));
        loop {
            let page = correlate(&db, &q).unwrap();
            assert!(page.rows.len() <= 37);
            assert_eq!(
                (page.pairs.clone(), page.rows_total),
                (all.pairs.clone(), all.rows_total)
            );
            rows.extend(page.rows);
            match page.next_after {
                Some(a) => q.after_ns = Some(a),
                None => break,
            }
        }
        assert_eq!(rows, all.rows);
        // The pairs only.
        let none = correlate(&db, &spec(&["a/y", "a/x"], start, end, 0)).unwrap();
        assert!(none.rows.is_empty() && none.pairs == all.pairs);
        assert!(matches!(
            correlate(&db, &spec(&["a/y", "a/none"], start, end, 5)),
            Err(QueryError::NotFound(_))
        ));
    }

    /// Bucket mode joins the tiered query's means: one row per bucket of the first series.
    #[tokio::test]
    async fn bucket_means_are_joined() {
        let s = overlapping().await;
        let db = s.db();
        let (start, end) = (NOW - 2 * HOUR_NS, NOW - HOUR_NS);
        let mut q = spec(&["a/x", "a/y"], start, end, usize::MAX);
        q.every_ns = Some(10 * MINUTE_NS);
        q.tolerance_ns = 0;
        let c = correlate(&db, &q).unwrap();
        assert_eq!(c.rows.len(), 6);
        for row in &c.rows {
            let pts = s.reference("a/x", row.ts_ns, row.ts_ns + 10 * MINUTE_NS);
            let mean = pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;
            let got = row.values[0].unwrap();
            assert!((got - mean).abs() < 1e-9, "{got} vs {mean}");
            assert!(row.values[1].is_some());
        }
        assert_eq!(c.pairs[0].matched, 6);
    }

    /// The range bounds the driving series' rows; a row near an edge takes the other
    /// series' points within the tolerance on the far side of it, as an as-of join of the
    /// whole series cut to those rows would.
    #[tokio::test]
    async fn rows_at_the_edges_match_points_outside_the_range() {
        let mut s = Store::new();
        let (start, end) = (NOW - HOUR_NS, NOW - HOUR_NS + 10 * SEC);
        s.ingest(
            NOW,
            &[
                ("e/a", vec![(start, 1.0), (end - SEC, 2.0), (end, 9.0)]),
                ("e/b", vec![(start - SEC, 10.0), (end + SEC / 2, 20.0)]),
            ],
        )
        .await;
        let db = s.db();
        let mut q = spec(&["e/a", "e/b"], start, end, 10);
        q.tolerance_ns = 2 * SEC;
        let rows = |strategy| {
            let q = CorrelateSpec {
                strategy,
                ..q.clone()
            };
            let c = correlate(&db, &q).unwrap();
            c.rows
                .iter()
                .map(|r| (r.ts_ns, r.values.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rows(Strategy::Backward),
            [
                (start, vec![Some(1.0), Some(10.0)]),
                (end - SEC, vec![Some(2.0), None])
            ]
        );
        assert_eq!(
            rows(Strategy::Forward),
            [
                (start, vec![Some(1.0), None]),
                (end - SEC, vec![Some(2.0), Some(20.0)])
            ]
        );
        assert_eq!(
            rows(Strategy::Nearest),
            [
                (start, vec![Some(1.0), Some(10.0)]),
                (end - SEC, vec![Some(2.0), Some(20.0)])
            ]
        );
    }

    /// Estimates follow where the points are, not the clock: a burst inside one second of
    /// an hour is counted whole over that second (raw, and from the hour rollup once raw
    /// points expired), and a timestamp written again is read (and counted) again.
    #[tokio::test]
    async fn estimates_follow_the_points_and_count_rewrites() {
        let mut s = Store::new();
        let h = NOW - 3 * HOUR_NS;
        let burst: Vec<(i64, f64)> = (0..10_000).map(|i| (h + i * 100_000, i as f64)).collect();
        s.ingest(NOW, &[("b/x", burst.clone())]).await;
        let db = s.db();
        let second = estimate_points(&db, "b/x", h, h + SEC).unwrap();
        assert_eq!(
            second,
            Known {
                raw: 10_000,
                held: 10_000
            }
        );
        // Written again: raw readers decode both copies, so both are counted.
        s.ingest(NOW + SEC, &[("b/x", burst)]).await;
        let db = s.db();
        assert_eq!(estimate_points(&db, "b/x", h, h + SEC).unwrap().raw, 20_000);
        // Raw points expired (48 h): the hour rollup's points are where its first and last
        // say, all of them inside that second.
        s.ingest(
            NOW + 72 * HOUR_NS,
            &[("b/y", vec![(NOW + 72 * HOUR_NS, 1.0)])],
        )
        .await;
        let db = s.db();
        let gone = estimate_points(&db, "b/x", h, h + SEC).unwrap();
        assert_eq!(gone.raw, 0);
        assert_eq!(gone.held, 10_000, "{gone:?}");
    }

    #[tokio::test]
    async fn listing_and_estimates_follow_retention() {
        let mut s = overlapping().await;
        s.ingest(NOW, &[("b/z", vec![(NOW - SEC, 1.0)])]).await;
        let db = s.db();
        let x = s.reference("a/x", MIN_TS, MAX_TS);
        let y = s.reference("a/y", MIN_TS, MAX_TS);
        let info = |name: &str, pts: &[(i64, f64)]| SeriesInfo {
            name: name.into(),
            first_ns: pts.first().map(|p| p.0),
            last_ns: pts.last().map(|p| p.0),
            count: pts.len() as u64,
        };
        let page = list_series(&db, "a/", 1, None).unwrap();
        assert_eq!(page.series, vec![info("a/x", &x)]);
        assert_eq!(page.next_after.as_deref(), Some("a/x"));
        let page = list_series(&db, "a/", 10, page.next_after.as_deref()).unwrap();
        assert_eq!(page.series, vec![info("a/y", &y)]);
        assert_eq!(page.next_after, None);
        let names = |p: SeriesPage| p.series.into_iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(
            names(list_series(&db, "", 10, None).unwrap()),
            ["a/x", "a/y", "b/z"]
        );
        assert_eq!(
            names(list_series(&db, "", 10, Some("a/y")).unwrap()),
            ["b/z"]
        );
        assert!(list_series(&db, "c", 10, None).unwrap().series.is_empty());

        // Segments do not overlap for a/y: the estimate of its whole span is exact, and of
        // a part, close.
        let n = y.len() as u64;
        assert_eq!(
            estimate_points(&db, "a/y", MIN_TS, MAX_TS).unwrap(),
            Known { raw: n, held: n }
        );
        let (a, b) = (NOW - 2 * HOUR_NS - 1234 * SEC, NOW - HOUR_NS);
        let part = s.reference("a/y", a, b).len() as f64;
        let est = estimate_points(&db, "a/y", a, b).unwrap();
        assert!((est.raw as f64 - part).abs() <= 2.0, "{est:?} vs {part}");
        assert_eq!(est.held, est.raw, "raw points are all there: held = raw");
        assert_eq!(
            estimate_points(&db, "a/none", a, b).unwrap(),
            Known::default()
        );

        // Three days on, raw points (48 h) are dead; minutes (30 d) keep the extent.
        s.ingest(
            NOW + 72 * HOUR_NS,
            &[("b/z", vec![(NOW + 72 * HOUR_NS, 2.0)])],
        )
        .await;
        let db = s.db();
        assert!(raw_points(&db, "a/x", MIN_TS, MAX_TS, 10, None)
            .unwrap()
            .points
            .is_empty());
        // The raw points are gone; the rollups still hold them all (the hour tier's counts).
        assert_eq!(
            estimate_points(&db, "a/x", MIN_TS, MAX_TS).unwrap(),
            Known {
                raw: 0,
                held: x.len() as u64
            }
        );
        let (a, b) = (NOW - 2 * HOUR_NS - 1234 * SEC, NOW - HOUR_NS + 17 * SEC);
        let part = s.reference("a/x", a, b).len() as f64;
        let est = estimate_points(&db, "a/x", a, b).unwrap();
        assert_eq!(est.raw, 0);
        assert!((est.held as f64 - part).abs() <= 2.0, "{est:?} vs {part}");
        let c = correlate(&db, &spec(&["a/x", "a/y"], MIN_TS, MAX_TS, 10)).unwrap();
        assert_eq!((c.rows_total, c.pairs[0].matched), (0, 0));
        let page = list_series(&db, "a/", 10, None).unwrap();
        assert_eq!(page.series, vec![info("a/x", &x), info("a/y", &y)]);
    }
}
