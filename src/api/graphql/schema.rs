//! The GraphQL schema: thin resolvers over the service layer (the same calls, validation
//! and authorization the gRPC adapters use), rendering times in the range's zone.

use std::sync::atomic::{AtomicU64, Ordering};

use async_graphql::{Context, Enum, Json, Object, SimpleObject, ID};
use futures::StreamExt;

use super::direct::Buckets;
use super::error::{bad_input, OrGql};
use super::scalars::{DateTime, Duration, Range, TimeRangeInput};
use crate::eventstore::subscribe::{Item, Target};
use crate::service::telemetry::{TelemetryAnswer, TelemetryQuery};
use crate::service::workflows::{At, EventsOf};
use crate::service::{Caller, Consistency, Service};
use crate::telemetry::moments::Moments;
use crate::telemetry::query::{QuerySpec, MAX_QUERY_BUCKETS};
use crate::telemetry::sketch::DDSketch;

/// Raw points that cost one unit to read (pco decodes a segment of points in about the time
/// a rollup record is read and decoded).
pub const RAW_POINTS_PER_UNIT: u64 = 64;

/// What a request actually spent, in the cost model's units: resolvers add what they read
/// and returned; the response reports it beside the estimate.
#[derive(Debug, Default)]
pub struct Meter {
    actual: AtomicU64,
}

impl Meter {
    pub fn add(&self, units: u64) {
        self.actual.fetch_add(units, Ordering::Relaxed);
    }

    pub fn actual(&self) -> u64 {
        self.actual.load(Ordering::Relaxed)
    }
}

fn service<'a>(ctx: &Context<'a>) -> &'a Service {
    ctx.data_unchecked::<Service>()
}

fn caller<'a>(ctx: &Context<'a>) -> &'a Caller {
    ctx.data_unchecked::<Caller>()
}

fn meter(ctx: &Context<'_>, units: u64) {
    if let Some(m) = ctx.data_opt::<std::sync::Arc<Meter>>() {
        m.add(units);
    }
}

/// Which replica state a read sees.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "Consistency")]
pub enum ReadConsistency {
    /// Every write acknowledged before the read began (the leader's read index).
    Linearizable,
    /// This node's applied state, possibly behind on a follower; no round trip.
    Local,
}

impl From<ReadConsistency> for Consistency {
    fn from(c: ReadConsistency) -> Self {
        match c {
            ReadConsistency::Linearizable => Consistency::Linearizable,
            ReadConsistency::Local => Consistency::Local,
        }
    }
}

/// A range as output: its instants in its zone.
#[derive(SimpleObject)]
pub struct TimeRange {
    pub start: DateTime,
    pub end: DateTime,
    pub zone: Option<String>,
}

pub struct Query;

#[Object]
impl Query {
    /// One series over a range: raw points, buckets, statistics, anomalies, drift, M4.
    async fn telemetry(
        &self,
        series: String,
        range: TimeRangeInput,
        #[graphql(default_with = "ReadConsistency::Linearizable")] consistency: ReadConsistency,
    ) -> async_graphql::Result<Telemetry> {
        Ok(Telemetry {
            series,
            range: range.validate().gql()?,
            consistency: consistency.into(),
        })
    }

    /// A workflow's projected state now, at a time (`at`, its state after the last event
    /// committed at or before it) or after a version.
    async fn workflow(
        &self,
        ctx: &Context<'_>,
        id: ID,
        at: Option<DateTime>,
        version: Option<u64>,
        #[graphql(default_with = "ReadConsistency::Linearizable")] consistency: ReadConsistency,
    ) -> async_graphql::Result<Workflow> {
        let when = match (at, version) {
            (Some(_), Some(_)) => return Err(bad_input("give `at` or `version`, not both")),
            (Some(t), None) => At::Time(t.ns),
            (None, Some(v)) => At::Version(v),
            (None, None) => At::Now,
        };
        let state = service(ctx)
            .workflow_state(caller(ctx), &id, when, consistency.into())
            .await
            .gql()?;
        meter(ctx, 1);
        Ok(Workflow {
            state,
            consistency: consistency.into(),
        })
    }

    /// The series that exist (a dashboard's picker), in name order, with their retained
    /// extent: at most `first`, after the series named `after`.
    async fn series(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] prefix: String,
        #[graphql(default = 100)] first: u32,
        after: Option<String>,
        #[graphql(default_with = "ReadConsistency::Linearizable")] consistency: ReadConsistency,
    ) -> async_graphql::Result<SeriesPage> {
        let page = service(ctx)
            .list_series(caller(ctx), &prefix, first, after, consistency.into())
            .await
            .gql()?;
        meter(ctx, page.series.len() as u64);
        Ok(SeriesPage {
            series: page
                .series
                .into_iter()
                .map(|s| SeriesInfo {
                    first: s.first_ns.map(DateTime::utc),
                    last: s.last_ns.map(DateTime::utc),
                    count: s.count,
                    name: s.name,
                })
                .collect(),
            next_after: page.next_after,
        })
    }

    /// Series joined by time: a row per point of the first series (or per bucket mean of
    /// `every`) in the range, each other series' value chosen by `strategy` within
    /// `tolerance` (null where none; without `every`, a row near an edge of the range may
    /// take a point just outside it), and Pearson's r of every pair over all rows of the range. Rows come in
    /// pages of `limit`, after `after`. Every series must be readable by the caller.
    #[allow(clippy::too_many_arguments)]
    async fn correlate(
        &self,
        ctx: &Context<'_>,
        series: Vec<String>,
        range: TimeRangeInput,
        tolerance: Duration,
        #[graphql(default_with = "JoinStrategy::Backward")] strategy: JoinStrategy,
        every: Option<Duration>,
        #[graphql(default = 1000)] limit: u32,
        after: Option<DateTime>,
        #[graphql(default_with = "ReadConsistency::Linearizable")] consistency: ReadConsistency,
    ) -> async_graphql::Result<Correlation> {
        let range = range.validate().gql()?;
        let every_ns = match every {
            Some(e) => Some(e.fixed_ns().gql()?),
            None => None,
        };
        let c = service(ctx)
            .correlate(
                caller(ctx),
                crate::service::correlate::CorrelateQuery {
                    series: series.clone(),
                    start_ns: range.start_ns,
                    end_ns: range.end_ns,
                    tolerance_ns: tolerance.fixed_ns().gql()?,
                    strategy: strategy.into(),
                    every_ns,
                    limit,
                    after_ns: after.map(|a| a.ns),
                    consistency: consistency.into(),
                },
            )
            .await
            .gql()?;
        meter(
            ctx,
            c.rows_total.div_ceil(RAW_POINTS_PER_UNIT) * series.len() as u64
                + c.rows.len() as u64 * series.len() as u64,
        );
        Ok(Correlation {
            series,
            rows: c
                .rows
                .into_iter()
                .map(|r| CorrelatedRow {
                    time: range.at(r.ts_ns),
                    values: r.values,
                })
                .collect(),
            pairs: c
                .pairs
                .into_iter()
                .map(|p| PairCorrelation {
                    a: p.a,
                    b: p.b,
                    matched: p.matched,
                    pearson: p.pearson,
                })
                .collect(),
            rows_total: c.rows_total,
            next_after: c.next_after.map(|t| range.at(t)),
        })
    }

    /// A page of a stream's events, from stream version `from`.
    async fn events(
        &self,
        ctx: &Context<'_>,
        stream: String,
        #[graphql(default)] from: u64,
        #[graphql(default = 100)] limit: u32,
        #[graphql(default_with = "ReadConsistency::Linearizable")] consistency: ReadConsistency,
    ) -> async_graphql::Result<EventPage> {
        let page = service(ctx)
            .read_stream(
                caller(ctx),
                &stream,
                Some(from),
                crate::eventstore::read::ReadDirection::Forwards,
                limit,
                consistency.into(),
            )
            .await
            .gql()?;
        meter(ctx, page.events.len() as u64);
        Ok(EventPage {
            events: page.events.into_iter().map(Event::from).collect(),
            next: page.next,
        })
    }
}

/// A series over a range; every field is one read of the replicated state.
pub struct Telemetry {
    series: String,
    range: Range,
    consistency: Consistency,
}

/// Aggregates a bucket can report.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum AggFn {
    Count,
    Sum,
    Mean,
    Min,
    Max,
    First,
    Last,
    /// Population variance.
    Variance,
    /// Population standard deviation.
    Stddev,
    /// Exact where raw points are retained, else from the bucket's sketch.
    Median,
    P90,
    P95,
    P99,
}

/// How anomalies are scored.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum AnomalyMethod {
    /// Deviation from the running mean in running standard deviations (after a warm-up).
    Zscore,
    /// Modified z-score against the range's median and median absolute deviation.
    Mad,
}

impl Telemetry {
    /// The query every field starts from: this series and range, nothing else asked.
    fn spec(&self) -> QuerySpec {
        QuerySpec {
            target_points: 1,
            ..QuerySpec::range(self.series.clone(), self.range.start_ns, self.range.end_ns)
        }
    }

    async fn run(
        &self,
        ctx: &Context<'_>,
        spec: QuerySpec,
        quantiles: Vec<f64>,
    ) -> async_graphql::Result<TelemetryAnswer> {
        let answer = service(ctx)
            .telemetry_query(
                caller(ctx),
                TelemetryQuery {
                    spec,
                    quantiles,
                    consistency: self.consistency,
                },
            )
            .await
            .gql()?;
        meter(
            ctx,
            answer.result.raw_points.div_ceil(RAW_POINTS_PER_UNIT)
                + answer.result.buckets.len() as u64,
        );
        Ok(answer)
    }
}

#[Object]
impl Telemetry {
    async fn series(&self) -> &str {
        &self.series
    }

    async fn range(&self) -> TimeRange {
        TimeRange {
            start: self.range.at(self.range.start_ns),
            end: self.range.at(self.range.end_ns),
            zone: self.range.zone.name(),
        }
    }

    /// The range in buckets: of width `every` (calendar units follow the range's zone), or
    /// about `points` of them. Served from the coarsest rollup tier that fits each bucket;
    /// `tier` says which served it.
    async fn buckets(
        &self,
        ctx: &Context<'_>,
        every: Option<Duration>,
        points: Option<u32>,
        #[graphql(default_with = "vec![AggFn::Mean]")] agg: Vec<AggFn>,
    ) -> async_graphql::Result<Buckets> {
        let mut spec = self.spec();
        spec.target_points = 0;
        match (&every, points) {
            (Some(_), Some(_)) => return Err(bad_input("give `every` or `points`, not both")),
            (None, None) => return Err(bad_input("give `every` or `points`")),
            // Calendar units follow the range's zone (UTC without one): local midnights.
            (Some(every), None) if every.is_calendar() => {
                spec.edges = Some(
                    self.range
                        .calendar_edges(every, MAX_QUERY_BUCKETS as usize)
                        .gql()?,
                );
            }
            (Some(every), None) => spec.bucket_ns = every.fixed_ns().gql()?,
            (None, Some(0)) => return Err(bad_input("`points` must be at least 1")),
            (None, Some(p)) => spec.target_points = p.min(MAX_QUERY_BUCKETS as u32),
        }
        spec.median = agg.contains(&AggFn::Median);
        let answer = self.run(ctx, spec, Vec::new()).await?;
        Ok(Buckets(
            answer
                .result
                .buckets
                .into_iter()
                .map(|b| Bucket {
                    start: self.range.at(b.start_ns.max(self.range.start_ns)),
                    end: self.range.at(b.end_ns.min(self.range.end_ns)),
                    tier: b.tier.as_str(),
                    values: agg
                        .iter()
                        .map(|f| AggValue {
                            r#fn: *f,
                            value: aggregate(*f, &b.moments, &b.sketch, b.median),
                        })
                        .collect(),
                    median: b.median,
                    moments: b.moments,
                    sketch: b.sketch,
                })
                .collect(),
        ))
    }

    /// Raw points in time order (the latest write of a timestamp wins), `limit` per page,
    /// after `after`.
    async fn points(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 1000)] limit: u32,
        after: Option<DateTime>,
    ) -> async_graphql::Result<PointPage> {
        let page = service(ctx)
            .raw_points(
                caller(ctx),
                &self.series,
                self.range.start_ns,
                self.range.end_ns,
                // The page the cost model charges for, at most.
                limit.min(super::cost::MAX_POINTS_PAGE as u32),
                after.map(|a| a.ns),
                self.consistency,
            )
            .await
            .gql()?;
        let n = page.points.len() as u64;
        meter(ctx, n + n.div_ceil(RAW_POINTS_PER_UNIT));
        Ok(PointPage {
            points: page
                .points
                .into_iter()
                .map(|(t, v)| Point {
                    time: self.range.at(t),
                    value: v,
                })
                .collect(),
            next_after: page.next_after.map(|t| self.range.at(t)),
        })
    }

    /// Statistics over the whole range (percentiles from the same sketches as gRPC's).
    async fn summary(&self, ctx: &Context<'_>) -> async_graphql::Result<Summary> {
        let answer = self.run(ctx, self.spec(), Vec::new()).await?;
        Ok(Summary {
            moments: answer.result.summary,
            sketch: answer.result.summary_sketch,
        })
    }

    /// Points that stand out, over the raw points of the range.
    async fn anomalies(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "AnomalyMethod::Zscore")] method: AnomalyMethod,
        threshold: Option<f64>,
    ) -> async_graphql::Result<Vec<Anomaly>> {
        let threshold = threshold.unwrap_or(crate::telemetry::anomaly::DEFAULT_MAD_THRESHOLD);
        let mut spec = self.spec();
        match method {
            AnomalyMethod::Zscore => spec.anomaly_z = Some(threshold),
            AnomalyMethod::Mad => spec.anomaly_mad = Some(threshold),
        }
        let answer = self.run(ctx, spec, Vec::new()).await?;
        Ok(answer
            .result
            .anomalies
            .into_iter()
            .map(|a| Anomaly {
                time: self.range.at(a.ts_ns),
                value: a.value,
                score: a.score,
                kind: match a.kind {
                    crate::telemetry::anomaly::AnomalyKind::High => AnomalyKind::High,
                    crate::telemetry::anomaly::AnomalyKind::Low => AnomalyKind::Low,
                },
            })
            .collect())
    }

    /// Level shifts: CUSUM over the means of consecutive windows of `window` (served from
    /// rollups where they fit, so it works where raw points expired); `threshold` is the
    /// detector's `h` in baseline standard deviations (default 10).
    async fn drift(
        &self,
        ctx: &Context<'_>,
        window: Duration,
        threshold: Option<f64>,
    ) -> async_graphql::Result<Vec<Drift>> {
        let mut spec = self.spec();
        spec.drift = Some(crate::telemetry::query::DriftSpec {
            window_ns: window.fixed_ns().gql()?,
            threshold,
        });
        let answer = self.run(ctx, spec, Vec::new()).await?;
        Ok(answer
            .result
            .drift
            .into_iter()
            .map(|d| Drift {
                start: self.range.at(d.start_ns),
                alarm: self.range.at(d.alarm_ns),
                direction: match d.direction {
                    crate::telemetry::drift::Direction::Up => DriftDirection::Up,
                    crate::telemetry::drift::Direction::Down => DriftDirection::Down,
                },
                mean_before: d.mean_before,
                mean_after: d.mean_after,
            })
            .collect())
    }

    /// M4 over `width` pixel columns: each column's first, last, min and max points.
    async fn m4(&self, ctx: &Context<'_>, width: u32) -> async_graphql::Result<Vec<M4Pixel>> {
        if width == 0 {
            return Err(bad_input("`width` must be at least 1"));
        }
        let mut spec = self.spec();
        spec.m4_width = width;
        let answer = self.run(ctx, spec, Vec::new()).await?;
        let p = |(ts, v): (i64, f64)| Point {
            time: self.range.at(ts),
            value: v,
        };
        Ok(answer
            .result
            .m4
            .into_iter()
            .map(|m| M4Pixel {
                pixel: m.pixel,
                first: p(m.first),
                last: p(m.last),
                min: p(m.min),
                max: p(m.max),
            })
            .collect())
    }
}

/// The value of one aggregate (NaN-free: `None` where the bucket has no value).
fn aggregate(f: AggFn, m: &Moments, s: &DDSketch, exact_median: Option<f64>) -> Option<f64> {
    match f {
        AggFn::Count => Some(m.count() as f64),
        AggFn::Sum => Some(m.sum()),
        AggFn::Mean => m.mean(),
        AggFn::Min => m.min(),
        AggFn::Max => m.max(),
        AggFn::First => m.first().map(|x| x.1),
        AggFn::Last => m.last().map(|x| x.1),
        AggFn::Variance => m.variance(),
        AggFn::Stddev => m.stddev(),
        AggFn::Median => exact_median.or_else(|| s.quantile(0.5)),
        AggFn::P90 => s.quantile(0.9),
        AggFn::P95 => s.quantile(0.95),
        AggFn::P99 => s.quantile(0.99),
    }
    .filter(|v| v.is_finite())
}

pub(super) fn check_quantile(p: f64) -> async_graphql::Result<f64> {
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(bad_input(format!("percentile {p} is not in 0..1")))
    }
}

#[derive(SimpleObject)]
pub struct AggValue {
    pub r#fn: AggFn,
    pub value: Option<f64>,
}

pub struct Bucket {
    pub(super) start: DateTime,
    /// The exact median where raw points answered it (`MEDIAN` asked for).
    pub(super) median: Option<f64>,
    pub(super) end: DateTime,
    pub(super) tier: &'static str,
    pub(super) values: Vec<AggValue>,
    pub(super) moments: Moments,
    pub(super) sketch: DDSketch,
}

impl Bucket {
    pub(super) fn agg(&self, f: AggFn) -> Option<f64> {
        aggregate(f, &self.moments, &self.sketch, self.median)
    }
}

#[Object]
impl Bucket {
    async fn start(&self) -> &DateTime {
        &self.start
    }
    /// Exclusive.
    async fn end(&self) -> &DateTime {
        &self.end
    }
    /// The coarsest stored tier that served it: `raw`, `minute` or `hour`.
    async fn tier(&self) -> &str {
        self.tier
    }
    /// The aggregates asked for in `agg`, in that order.
    async fn values(&self) -> &[AggValue] {
        &self.values
    }
    async fn count(&self) -> u64 {
        self.moments.count()
    }
    // The aggregates as fields too, each as `values` computes it (a field of a bucket is
    // a map entry, an item of `values` a whole object: large answers read faster this way).
    async fn sum(&self) -> Option<f64> {
        self.agg(AggFn::Sum)
    }
    async fn mean(&self) -> Option<f64> {
        self.agg(AggFn::Mean)
    }
    async fn min(&self) -> Option<f64> {
        self.agg(AggFn::Min)
    }
    async fn max(&self) -> Option<f64> {
        self.agg(AggFn::Max)
    }
    async fn first(&self) -> Option<f64> {
        self.agg(AggFn::First)
    }
    async fn last(&self) -> Option<f64> {
        self.agg(AggFn::Last)
    }
    /// Population variance.
    async fn variance(&self) -> Option<f64> {
        self.agg(AggFn::Variance)
    }
    /// Population standard deviation.
    async fn stddev(&self) -> Option<f64> {
        self.agg(AggFn::Stddev)
    }
    /// A percentile (0..1) from the bucket's sketch (relative error ≤ 1%).
    async fn percentile(&self, p: f64) -> async_graphql::Result<Option<f64>> {
        Ok(self.sketch.quantile(check_quantile(p)?))
    }
}

pub struct Summary {
    moments: Moments,
    sketch: DDSketch,
}

#[Object(name = "StatisticalSummary")]
impl Summary {
    async fn count(&self) -> u64 {
        self.moments.count()
    }
    async fn sum(&self) -> f64 {
        self.moments.sum()
    }
    async fn mean(&self) -> Option<f64> {
        self.moments.mean()
    }
    /// Population variance.
    async fn variance(&self) -> Option<f64> {
        self.moments.variance()
    }
    /// Population standard deviation.
    async fn stddev(&self) -> Option<f64> {
        self.moments.stddev()
    }
    async fn sample_variance(&self) -> Option<f64> {
        self.moments.sample_variance()
    }
    async fn min(&self) -> Option<f64> {
        self.moments.min()
    }
    async fn max(&self) -> Option<f64> {
        self.moments.max()
    }
    /// From the sketch (relative error ≤ 1%), as every percentile.
    async fn median(&self) -> Option<f64> {
        self.sketch.quantile(0.5)
    }
    async fn percentile(&self, p: f64) -> async_graphql::Result<Option<f64>> {
        Ok(self.sketch.quantile(check_quantile(p)?))
    }
    async fn percentiles(&self, ps: Vec<f64>) -> async_graphql::Result<Vec<Option<f64>>> {
        if ps.len() > crate::service::telemetry::MAX_QUANTILES {
            return Err(bad_input(format!(
                "at most {} percentiles",
                crate::service::telemetry::MAX_QUANTILES
            )));
        }
        ps.into_iter()
            .map(|p| Ok(self.sketch.quantile(check_quantile(p)?)))
            .collect()
    }
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum AnomalyKind {
    /// Above what the method expects.
    High,
    /// Below it.
    Low,
}

#[derive(SimpleObject)]
pub struct Anomaly {
    pub time: DateTime,
    pub value: f64,
    pub score: f64,
    pub kind: AnomalyKind,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum DriftDirection {
    Up,
    Down,
}

/// A change of level.
#[derive(SimpleObject)]
pub struct Drift {
    /// Where the changed regime begins (the detector's estimate).
    pub start: DateTime,
    /// The window whose mean raised the alarm.
    pub alarm: DateTime,
    pub direction: DriftDirection,
    pub mean_before: f64,
    pub mean_after: f64,
}

#[derive(SimpleObject)]
pub struct Point {
    pub time: DateTime,
    pub value: f64,
}

#[derive(SimpleObject)]
pub struct PointPage {
    pub points: Vec<Point>,
    /// The `after` of the next page (absent: this was the last).
    pub next_after: Option<DateTime>,
}

#[derive(SimpleObject)]
pub struct SeriesInfo {
    pub name: String,
    /// The first and last retained timestamps (absent: nothing is retained).
    pub first: Option<DateTime>,
    pub last: Option<DateTime>,
    /// Retained points.
    pub count: u64,
}

#[derive(SimpleObject)]
pub struct SeriesPage {
    pub series: Vec<SeriesInfo>,
    /// The `after` of the next page (absent: this was the last).
    pub next_after: Option<String>,
}

/// How a correlation picks the other series' point for a row.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum JoinStrategy {
    /// The latest point at or before the row's time.
    Backward,
    /// The earliest point at or after it.
    Forward,
    /// The closer of the two (on a tie, the earlier).
    Nearest,
}

impl From<JoinStrategy> for crate::service::correlate::Strategy {
    fn from(s: JoinStrategy) -> Self {
        use crate::service::correlate::Strategy;
        match s {
            JoinStrategy::Backward => Strategy::Backward,
            JoinStrategy::Forward => Strategy::Forward,
            JoinStrategy::Nearest => Strategy::Nearest,
        }
    }
}

#[derive(SimpleObject)]
pub struct CorrelatedRow {
    pub time: DateTime,
    /// One cell per series, in the order asked (the first is the driving series').
    pub values: Vec<Option<f64>>,
}

#[derive(SimpleObject)]
pub struct PairCorrelation {
    pub a: String,
    pub b: String,
    /// Rows where both cells are present.
    pub matched: u64,
    /// Pearson's r over those rows (absent with fewer than two, or no variance).
    pub pearson: Option<f64>,
}

#[derive(SimpleObject)]
pub struct Correlation {
    pub series: Vec<String>,
    pub rows: Vec<CorrelatedRow>,
    /// Every pair, over all rows of the range (not only this page).
    pub pairs: Vec<PairCorrelation>,
    pub rows_total: u64,
    pub next_after: Option<DateTime>,
}

#[derive(SimpleObject)]
pub struct M4Pixel {
    pub pixel: u32,
    pub first: Point,
    pub last: Point,
    pub min: Point,
    pub max: Point,
}

pub struct Workflow {
    state: crate::workflow::state::WorkflowState,
    consistency: Consistency,
}

#[derive(SimpleObject)]
pub struct Step {
    pub id: String,
    pub name: String,
    pub status: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub started_at: Option<DateTime>,
    pub ended_at: Option<DateTime>,
    pub output: Json<serde_json::Value>,
}

#[derive(SimpleObject)]
pub struct Entry {
    pub key: String,
    pub value: String,
}

#[derive(SimpleObject)]
pub struct WorkflowEvent {
    pub version: u64,
    pub position: u64,
    #[graphql(name = "type")]
    pub event_type: String,
    /// The schema version it was stored with; `data` is in the current shape (upcast).
    pub stored_schema_version: u32,
    pub commit_time: DateTime,
    pub data: Json<serde_json::Value>,
}

impl WorkflowEvent {
    /// An event (already in the current schema) as GraphQL shows it: its type and its data.
    fn new(
        event: &crate::workflow::events::WorkflowEvent,
        version: u64,
        position: u64,
        stored_schema_version: u32,
        commit_ns: i64,
    ) -> async_graphql::Result<Self> {
        let encoded = event
            .encode()
            .map_err(|e| async_graphql::Error::new(e.to_string()))?;
        Ok(WorkflowEvent {
            version,
            position,
            event_type: encoded.event_type.to_owned(),
            stored_schema_version,
            commit_time: DateTime::utc(commit_ns),
            data: Json(serde_json::from_slice(&encoded.payload).unwrap_or_default()),
        })
    }
}

/// Most events one `history` returns.
const MAX_HISTORY: u32 = 10_000;
/// Most pages one `history` reads (events before `since` are read and skipped).
const MAX_HISTORY_PAGES: u32 = 100;

/// Events of one workflow read per page while filtering by time.
const HISTORY_PAGE: u32 = 500;

#[Object]
impl Workflow {
    async fn id(&self) -> ID {
        ID(self.state.workflow_id.clone())
    }
    async fn name(&self) -> &str {
        &self.state.name
    }
    async fn status(&self) -> &str {
        self.state.status.as_str()
    }
    async fn version(&self) -> u64 {
        self.state.version
    }
    async fn event_count(&self) -> u64 {
        self.state.event_count
    }
    async fn created_at(&self) -> DateTime {
        DateTime::utc(self.state.created_at_ns)
    }
    async fn updated_at(&self) -> DateTime {
        DateTime::utc(self.state.updated_at_ns)
    }
    async fn completed_at(&self) -> Option<DateTime> {
        self.state.completed_at_ns.map(DateTime::utc)
    }
    async fn completion_reason(&self) -> Option<&str> {
        self.state.completion_reason.as_deref()
    }
    async fn current_step(&self) -> Option<&str> {
        self.state.current_step.as_deref()
    }
    async fn steps(&self) -> Vec<Step> {
        self.state
            .steps
            .iter()
            .map(|s| Step {
                id: s.id.clone(),
                name: s.name.clone(),
                status: s.status.as_str().to_owned(),
                attempts: s.attempts,
                max_attempts: s.max_attempts,
                started_at: s.started_at_ns.map(DateTime::utc),
                ended_at: s.ended_at_ns.map(DateTime::utc),
                output: Json(s.output.clone()),
            })
            .collect()
    }
    async fn metadata(&self) -> Vec<Entry> {
        self.state
            .metadata
            .iter()
            .map(|(k, v)| Entry {
                key: k.clone(),
                value: v.clone(),
            })
            .collect()
    }

    /// The workflow's events (upcast to the current schema) up to the state above,
    /// committed at or after `since`; at most `first`.
    async fn history(
        &self,
        ctx: &Context<'_>,
        since: Option<DateTime>,
        #[graphql(default = 100)] first: u32,
    ) -> async_graphql::Result<Vec<WorkflowEvent>> {
        let since = since.map_or(i64::MIN, |t| t.ns);
        // As the cost model charges: at most MAX_HISTORY events returned, and the pages read
        // to find them bounded too (a `since` past every event reads no further than that).
        let first = first.min(MAX_HISTORY);
        let mut out = Vec::new();
        let mut from = 0;
        let mut pages = 0;
        while (out.len() as u32) < first && pages < MAX_HISTORY_PAGES {
            pages += 1;
            let page = service(ctx)
                .workflow_events(
                    caller(ctx),
                    EventsOf::Workflow {
                        id: self.state.workflow_id.clone(),
                        from,
                    },
                    HISTORY_PAGE,
                    self.consistency,
                )
                .await
                .gql()?;
            meter(ctx, page.events.len() as u64);
            for r in page.events {
                if r.stream_version > self.state.version || out.len() as u32 >= first {
                    return Ok(out);
                }
                if r.commit_time_ns < since {
                    continue;
                }
                out.push(WorkflowEvent::new(
                    &r.event,
                    r.stream_version,
                    r.global_position,
                    r.stored_schema_version,
                    r.commit_time_ns,
                )?);
            }
            match page.next {
                Some(n) => from = n,
                None => break,
            }
        }
        Ok(out)
    }
}

#[derive(SimpleObject)]
pub struct Event {
    pub stream: String,
    pub version: u64,
    pub position: u64,
    #[graphql(name = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub event_time: DateTime,
    pub commit_time: DateTime,
    /// The payload as text when it is UTF-8, else base64 (`payloadEncoding` says which).
    pub payload: String,
    pub payload_encoding: &'static str,
    pub metadata: Vec<Entry>,
}

impl From<crate::model::RecordedEvent> for Event {
    fn from(e: crate::model::RecordedEvent) -> Self {
        use base64::Engine;
        let (payload, payload_encoding) = match std::str::from_utf8(&e.payload) {
            Ok(s) => (s.to_owned(), "utf8"),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(&e.payload),
                "base64",
            ),
        };
        Event {
            stream: e.stream,
            version: e.stream_version,
            position: e.global_position,
            event_type: e.event_type,
            schema_version: e.schema_version,
            event_time: DateTime::utc(e.event_time_ns),
            commit_time: DateTime::utc(e.commit_time_ns),
            payload,
            payload_encoding,
            metadata: e
                .metadata
                .into_iter()
                .map(|(key, value)| Entry { key, value })
                .collect(),
        }
    }
}

#[derive(SimpleObject)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// The stream version the next page starts at, if there may be more.
    pub next: Option<u64>,
}

/// Live streams over WebSocket (`graphql-transport-ws`): what is stored from `from`, then
/// what commits, each item once and in order (the gRPC `Subscribe`'s rule).
pub struct Subscription;

#[async_graphql::Subscription]
impl Subscription {
    /// Points of `series`: those stored with a time from `from` (none without it), then the
    /// points of every later ingest as it commits, in batches of `batchSize` (a batch goes
    /// out when full, or `maxLatency` after its first point). No point is missed or
    /// repeated across the switch; each batch's `cursor` resumes after a reconnect
    /// (`resume`), with every later point once. A subscriber that falls too far behind is
    /// ended with an error and resumes from its last cursor.
    async fn telemetry_stream(
        &self,
        ctx: &Context<'_>,
        series: Vec<String>,
        from: Option<DateTime>,
        batch_size: u32,
        max_latency: Option<Duration>,
        resume: Option<String>,
    ) -> async_graphql::Result<impl futures::Stream<Item = async_graphql::Result<PointBatch>>> {
        let resume = match resume {
            Some(c) => Some(
                crate::telemetry::stream::Cursor::decode(&c)
                    .map_err(|e| bad_input(format!("resume: {e}")))?,
            ),
            None => None,
        };
        let max_latency = match max_latency {
            Some(d) => std::time::Duration::from_nanos(d.fixed_ns().gql()? as u64),
            None => std::time::Duration::from_millis(100),
        };
        let rx = service(ctx)
            .telemetry_subscribe(
                caller(ctx),
                crate::service::telemetry_stream::TelemetrySubscribe {
                    series,
                    from_ns: from.map(|f| f.ns),
                    resume,
                    batch_size: batch_size as usize,
                    max_latency,
                    consistency: Consistency::Linearizable,
                },
            )
            .await
            .gql()?;
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| {
            let b = b.gql()?;
            Ok(PointBatch {
                points: b
                    .points
                    .iter()
                    .map(|p| StreamPoint {
                        series: b.series.get(p.series as usize).cloned().unwrap_or_default(),
                        time: DateTime::utc(p.ts_ns),
                        value: p.value,
                    })
                    .collect(),
                cursor: b.cursor.encode(),
                live: b.live,
            })
        }))
    }

    /// A stream's events from stream version `from` (default: its start), then live.
    async fn events(
        &self,
        ctx: &Context<'_>,
        stream: String,
        from: Option<u64>,
    ) -> async_graphql::Result<impl futures::Stream<Item = Event>> {
        let rx = service(ctx)
            .subscribe(caller(ctx), Target::Stream(stream), from)
            .gql()?;
        Ok(events_of(rx).map(Event::from))
    }

    /// A workflow's events (upcast to the current schema) from version `from`, then live.
    async fn workflow_events(
        &self,
        ctx: &Context<'_>,
        id: ID,
        from: Option<u64>,
    ) -> async_graphql::Result<impl futures::Stream<Item = async_graphql::Result<WorkflowEvent>>>
    {
        let rx = service(ctx)
            .subscribe(
                caller(ctx),
                Target::Stream(crate::workflow::events::stream_name(&id)),
                from,
            )
            .gql()?;
        Ok(events_of(rx).map(|e| {
            let record = crate::workflow::events::WorkflowRecord {
                stream_version: e.stream_version,
                commit_time_ns: e.commit_time_ns,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                payload: e.payload.to_vec(),
            };
            let event = crate::workflow::events::WorkflowEvent::decode(&record)
                .map_err(|err| async_graphql::Error::new(err.to_string()))?;
            WorkflowEvent::new(
                &event,
                e.stream_version,
                e.global_position,
                e.schema_version,
                e.commit_time_ns,
            )
        }))
    }
}

#[derive(SimpleObject)]
pub struct StreamPoint {
    pub series: String,
    pub time: DateTime,
    pub value: f64,
}

#[derive(SimpleObject)]
pub struct PointBatch {
    pub points: Vec<StreamPoint>,
    /// Resume after this batch (`telemetryStream(resume: ...)`).
    pub cursor: String,
    /// Whether the points were committed after the subscription began (else history).
    pub live: bool,
}

/// The events of a subscription (its catch-up marker is the protocol's business, not
/// GraphQL's: the stream simply goes on).
fn events_of(
    rx: tokio::sync::mpsc::Receiver<Item>,
) -> impl futures::Stream<Item = crate::model::RecordedEvent> {
    tokio_stream::wrappers::ReceiverStream::new(rx).filter_map(|item| async move {
        match item {
            Item::Event(d) => Some(d.event),
            Item::CaughtUp { .. } => None,
        }
    })
}
