//! Telemetry: ingest (validated, batched into segments, replicated) and tiered queries
//! over one point-in-time view; retention policies; compaction and disk usage.

use std::collections::BTreeMap;

use super::{Caller, Consistency, Service, ServiceError};
use crate::auth::Resource;
use crate::limits::Method;
use crate::telemetry::command::{check_name, TelemetryCommand, TelemetryOutcome, MAX_TS, MIN_TS};
use crate::telemetry::maintenance;
use crate::telemetry::points::{segments_of, sort_dedupe};
use crate::telemetry::query::{QueryError, QueryResult, QuerySpec};
use crate::telemetry::retention::RetentionPolicy;

/// Points one ingest batch may carry.
pub const MAX_POINTS_PER_BATCH: usize = 1_000_000;
/// Quantiles one query may ask for.
pub const MAX_QUANTILES: usize = 32;
/// Widest M4 rendering a query may ask for (pixel columns).
pub const MAX_M4_WIDTH: u32 = 100_000;

/// One series' points in an ingest batch (timestamps and values pair up by index).
#[derive(Debug, Clone, Default)]
pub struct SeriesPoints {
    pub series: String,
    pub timestamps_ns: Vec<i64>,
    pub values: Vec<f64>,
}

/// What one ingest batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    pub points: u64,
    /// Older than the lateness bound of their series' policy.
    pub late_dropped: u64,
    /// Past every tier's retention, or inside a span only rollups keep.
    pub skipped: u64,
}

/// A telemetry query: the range and shape of the answer.
#[derive(Debug, Clone)]
pub struct TelemetryQuery {
    pub spec: QuerySpec,
    /// Quantiles (0..1) wanted per bucket and for the summary; empty: 0.5, 0.9, 0.99.
    pub quantiles: Vec<f64>,
    pub consistency: Consistency,
}

/// A query's answer, with the quantiles it was asked for.
#[derive(Debug)]
pub struct TelemetryAnswer {
    pub result: QueryResult,
    pub quantiles: Vec<f64>,
}

/// Bytes the telemetry column families take on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub raw_bytes: u64,
    pub rollup_bytes: u64,
}

/// An ingest batch validated and cut into segments, ready to be written.
#[derive(Debug, Clone)]
pub struct PreparedIngest(TelemetryCommand);

/// Series the nodes write themselves (breaker transitions, `aether/breaker/<peer>`): no
/// client ingests there.
pub const RESERVED_SERIES_PREFIX: &str = "aether/";

impl Service {
    /// Validates a batch and cuts it into segments (per series sorted by time; the last
    /// value given for a timestamp wins). A stream of batches prepares each before it sends
    /// it, so that a bad batch stops the stream before anything after it is written.
    pub fn prepare_ingest(
        &self,
        caller: &Caller,
        batch: Vec<SeriesPoints>,
    ) -> Result<PreparedIngest, ServiceError> {
        // A batch that names no series touches no resource, so the loop below would check
        // nothing: the caller must still be allowed to ingest, and then learns the batch is
        // empty (nothing is proposed).
        if batch.is_empty() {
            self.authorize(caller, Method::Ingest, &[Resource::SeriesWithPrefix("")])?;
            return Err(ServiceError::invalid("an ingest batch names no series"));
        }
        // Telemetry limits count points, per series (a `stream-prefix` key counts each
        // series' prefix).
        for s in &batch {
            self.admit(
                caller,
                Method::Ingest,
                Resource::Series(&s.series),
                s.values.len() as u64,
            )?;
        }
        self.ingest_command(batch).map(PreparedIngest)
    }

    /// Writes a prepared batch as one replicated command.
    pub async fn ingest(
        &self,
        caller: &Caller,
        batch: PreparedIngest,
    ) -> Result<Ingested, ServiceError> {
        match self.telemetry_write(caller, batch.0).await? {
            TelemetryOutcome::Ingested {
                points,
                late_dropped,
                skipped,
            } => Ok(Ingested {
                points,
                late_dropped,
                skipped,
            }),
            other => Err(ServiceError::Internal(format!(
                "ingest answered with {other:?}"
            ))),
        }
    }

    fn ingest_command(&self, batch: Vec<SeriesPoints>) -> Result<TelemetryCommand, ServiceError> {
        let limits = &self.node.config().limits;
        let mut by_series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
        let mut total = 0usize;
        for s in batch {
            limits
                .validate_stream(&s.series)
                .map_err(|e| ServiceError::invalid(format!("series: {e}")))?;
            check_name(&s.series, false).map_err(ServiceError::Invalid)?;
            if s.series.starts_with(RESERVED_SERIES_PREFIX) {
                return Err(ServiceError::invalid(format!(
                    "series {}: names under {RESERVED_SERIES_PREFIX:?} are written by the nodes \
                     themselves",
                    s.series
                )));
            }
            if s.timestamps_ns.len() != s.values.len() {
                return Err(ServiceError::invalid(format!(
                    "series {}: {} timestamps but {} values",
                    s.series,
                    s.timestamps_ns.len(),
                    s.values.len()
                )));
            }
            total += s.values.len();
            if total > MAX_POINTS_PER_BATCH {
                return Err(ServiceError::invalid(format!(
                    "batch carries more than {MAX_POINTS_PER_BATCH} points"
                )));
            }
            if let Some(v) = s.values.iter().find(|v| !v.is_finite()) {
                return Err(ServiceError::invalid(format!(
                    "series {}: value {v} is not finite",
                    s.series
                )));
            }
            if let Some(t) = s
                .timestamps_ns
                .iter()
                .find(|t| !(MIN_TS..=MAX_TS).contains(*t))
            {
                return Err(ServiceError::invalid(format!(
                    "series {}: timestamp {t} is out of range",
                    s.series
                )));
            }
            by_series
                .entry(s.series)
                .or_default()
                .extend(s.timestamps_ns.into_iter().zip(s.values));
        }
        let mut segments = Vec::new();
        for (series, points) in by_series {
            let (ts, vals) = sort_dedupe(points);
            segments.extend(segments_of(&series, &ts, &vals).map_err(ServiceError::Internal)?);
        }
        Ok(TelemetryCommand::Ingest(segments))
    }

    /// Proposes a telemetry command until a leader takes it; a replicated refusal is the
    /// caller's error.
    async fn telemetry_write(
        &self,
        caller: &Caller,
        cmd: TelemetryCommand,
    ) -> Result<TelemetryOutcome, ServiceError> {
        let node = &self.node;
        match self
            .on_leader(|left| node.telemetry(cmd.clone(), caller.token.clone(), left))
            .await?
        {
            TelemetryOutcome::Rejected { reason } => Err(ServiceError::Invalid(reason)),
            o => Ok(o),
        }
    }

    pub async fn telemetry_query(
        &self,
        caller: &Caller,
        q: TelemetryQuery,
    ) -> Result<TelemetryAnswer, ServiceError> {
        self.admit(
            caller,
            Method::TelemetryQuery,
            Resource::Series(&q.spec.series),
            1,
        )?;
        self.node.read_barrier(q.consistency).await?;
        let quantiles = if q.quantiles.is_empty() {
            vec![0.5, 0.9, 0.99]
        } else {
            q.quantiles
        };
        if quantiles.iter().any(|p| !(0.0..=1.0).contains(p)) || quantiles.len() > MAX_QUANTILES {
            return Err(ServiceError::invalid(format!(
                "percentiles are up to {MAX_QUANTILES} quantiles in 0..1"
            )));
        }
        if q.spec.m4_width > MAX_M4_WIDTH {
            return Err(ServiceError::invalid(format!(
                "m4_width is at most {MAX_M4_WIDTH}"
            )));
        }
        let spec = q.spec;
        let result = self
            .node
            .read_store(move |db| Ok(crate::telemetry::query::query(db, &spec)))
            .await?
            .map_err(query_error)?;
        Ok(TelemetryAnswer { result, quantiles })
    }

    pub async fn set_retention(
        &self,
        caller: &Caller,
        policy: RetentionPolicy,
    ) -> Result<(), ServiceError> {
        self.admit(
            caller,
            Method::Admin,
            Resource::SeriesWithPrefix(&policy.prefix),
            1,
        )?;
        check_name(&policy.prefix, true)
            .and_then(|()| policy.validate())
            .map_err(ServiceError::Invalid)?;
        self.telemetry_write(caller, TelemetryCommand::SetRetention(policy))
            .await?;
        Ok(())
    }

    /// Flushes and compacts the telemetry column families (expired data is dropped by the
    /// compaction filter); disk usage before and after.
    pub async fn compact_telemetry(
        &self,
        caller: &Caller,
    ) -> Result<(DiskUsage, DiskUsage), ServiceError> {
        self.admit(caller, Method::Admin, Resource::Cluster, 1)?;
        Ok(self
            .node
            .maintain_store(|db| {
                let before = usage(db)?;
                maintenance::compact(db)?;
                Ok((before, usage(db)?))
            })
            .await?)
    }

    pub async fn telemetry_disk_usage(&self, caller: &Caller) -> Result<DiskUsage, ServiceError> {
        self.admit(caller, Method::Admin, Resource::Cluster, 1)?;
        Ok(self.node.maintain_store(usage).await?)
    }
}

/// A query's error as the service's.
pub(super) fn query_error(e: QueryError) -> ServiceError {
    match e {
        QueryError::Invalid(m) => ServiceError::Invalid(m),
        e @ QueryError::NotFound(_) => ServiceError::NotFound(e.to_string()),
        QueryError::Storage(s) => s.into(),
    }
}

fn usage(db: &crate::storage::SmDb) -> Result<DiskUsage, crate::node::NodeError> {
    maintenance::flush(db)?;
    let (raw_bytes, rollup_bytes) = maintenance::disk_usage(db)?;
    Ok(DiskUsage {
        raw_bytes,
        rollup_bytes,
    })
}
