//! Reads across series for exploration: correlation (an as-of join of several series, with
//! Pearson's r of every pair), a page of series names, a page of raw points, and the
//! estimate of a range's raw points a cost model asks for before a query.

use super::telemetry::query_error;
use super::{Caller, Consistency, Service, ServiceError};
use crate::auth::Resource;
use crate::limits::Method;
use crate::telemetry::browse::{self, CorrelateSpec};
pub use crate::telemetry::browse::{
    CorrelatedRow, Correlation, PairCorrelation, PointsPage, SeriesInfo, SeriesPage,
};
pub use crate::telemetry::correlate::Strategy;

/// Most series one correlation joins: its pairs grow with the square (120 at 16).
pub const MAX_CORRELATE_SERIES: usize = 16;
/// Most rows one correlation page returns.
pub const MAX_CORRELATE_ROWS: u32 = 10_000;
/// Most series one page lists (each costs a scan of its hour rollups).
pub const MAX_LIST_SERIES: u32 = 1_000;
/// Most raw points one page returns.
pub const MAX_RAW_POINTS_PAGE: u32 = 100_000;

/// A correlation: see [`Service::correlate`].
#[derive(Debug, Clone)]
pub struct CorrelateQuery {
    /// 2..=[`MAX_CORRELATE_SERIES`] distinct series; the first drives the rows.
    pub series: Vec<String>,
    pub start_ns: i64,
    /// Exclusive.
    pub end_ns: i64,
    /// How far (≥ 0) a matched point may lie from its row.
    pub tolerance_ns: i64,
    pub strategy: Strategy,
    /// Join bucket means of this width (> 0) instead of raw points.
    pub every_ns: Option<i64>,
    /// Rows returned (capped at [`MAX_CORRELATE_ROWS`]; 0: the pairs only).
    pub limit: u32,
    /// Only rows after this time (the previous page's `next_after`).
    pub after_ns: Option<i64>,
    pub consistency: Consistency,
}

impl Service {
    /// An as-of join of several series over `[start, end)`: a row per point (or bucket
    /// mean, with `every_ns`) of the first series, each other series' cell the value the
    /// strategy picks within the tolerance (raw points of the others are read a tolerance
    /// past both ends of the range, so that edge rows match as in a whole-series join); a
    /// page of the rows, and Pearson's r of every
    /// pair over all rows of the range. Every series is authorized at once; the call is
    /// rate-limited once per series read.
    pub async fn correlate(
        &self,
        caller: &Caller,
        q: CorrelateQuery,
    ) -> Result<Correlation, ServiceError> {
        let resources: Vec<Resource<'_>> = q.series.iter().map(|s| Resource::Series(s)).collect();
        self.admit_all(caller, Method::TelemetryQuery, &resources, 1)?;
        if !(2..=MAX_CORRELATE_SERIES).contains(&q.series.len()) {
            return Err(ServiceError::invalid(format!(
                "a correlation joins 2 to {MAX_CORRELATE_SERIES} series, not {}",
                q.series.len()
            )));
        }
        for (i, s) in q.series.iter().enumerate() {
            if q.series[..i].contains(s) {
                return Err(ServiceError::invalid(format!(
                    "series {s:?} is named twice"
                )));
            }
        }
        if q.tolerance_ns < 0 {
            return Err(ServiceError::invalid("tolerance must not be negative"));
        }
        if q.every_ns.is_some_and(|w| w <= 0) {
            return Err(ServiceError::invalid("every must be a positive width"));
        }
        self.node.read_barrier(q.consistency).await?;
        let spec = CorrelateSpec {
            series: q.series,
            start_ns: q.start_ns,
            end_ns: q.end_ns,
            tolerance_ns: q.tolerance_ns,
            strategy: q.strategy,
            every_ns: q.every_ns,
            limit: q.limit.min(MAX_CORRELATE_ROWS) as usize,
            after_ns: q.after_ns,
        };
        self.node
            .read_store(move |db| Ok(browse::correlate(db, &spec)))
            .await?
            .map_err(query_error)
    }

    /// Series whose name starts with `prefix`, in name order, after `after`: at most
    /// `first` (capped at [`MAX_LIST_SERIES`]), each with its retained extent (first and
    /// last timestamps, points). The nodes' own series (`aether/…`) are listed too.
    pub async fn list_series(
        &self,
        caller: &Caller,
        prefix: &str,
        first: u32,
        after: Option<String>,
        consistency: Consistency,
    ) -> Result<SeriesPage, ServiceError> {
        self.admit(
            caller,
            Method::TelemetryQuery,
            Resource::SeriesWithPrefix(prefix),
            1,
        )?;
        if first == 0 {
            return Err(ServiceError::invalid("first must be at least 1"));
        }
        self.node.read_barrier(consistency).await?;
        let (prefix, first) = (prefix.to_owned(), first.min(MAX_LIST_SERIES) as usize);
        self.node
            .read_store(move |db| Ok(browse::list_series(db, &prefix, first, after.as_deref())))
            .await?
            .map_err(query_error)
    }

    /// A page of a series' raw points in `[start, end)` after `after_ns`, in time order,
    /// deduplicated as queries are (the latest write of a timestamp wins); at most `limit`
    /// (capped at [`MAX_RAW_POINTS_PAGE`]). Points retention has made dead are not served.
    #[allow(clippy::too_many_arguments)]
    pub async fn raw_points(
        &self,
        caller: &Caller,
        series: &str,
        start_ns: i64,
        end_ns: i64,
        limit: u32,
        after_ns: Option<i64>,
        consistency: Consistency,
    ) -> Result<PointsPage, ServiceError> {
        self.admit(caller, Method::TelemetryQuery, Resource::Series(series), 1)?;
        if limit == 0 {
            return Err(ServiceError::invalid("limit must be at least 1"));
        }
        self.node.read_barrier(consistency).await?;
        let (series, limit) = (series.to_owned(), limit.min(MAX_RAW_POINTS_PAGE) as usize);
        self.node
            .read_store(move |db| {
                Ok(browse::raw_points(
                    db, &series, start_ns, end_ns, limit, after_ns,
                ))
            })
            .await?
            .map_err(query_error)
    }

    /// About how many points `[start, end)` of a series holds — raw, and in any tier — from
    /// segment headers and hour rollups (no decoding; overwritten points count twice), for
    /// a cost model that runs before a query: authorized, but spends no rate-limit tokens.
    /// A missing series holds none.
    pub async fn estimate_points(
        &self,
        caller: &Caller,
        series: &str,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<browse::Known, ServiceError> {
        self.authorize(caller, Method::TelemetryQuery, &[Resource::Series(series)])?;
        let series = series.to_owned();
        self.node
            .read_store(move |db| Ok(browse::estimate_points(db, &series, start_ns, end_ns)))
            .await?
            .map_err(query_error)
    }
}
