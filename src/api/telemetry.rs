//! gRPC `aetherops.v1.Telemetry`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{consistency, status};
use crate::node::{Node, NodeError};
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::telemetry_server::Telemetry;
use crate::telemetry::command::{check_name, TelemetryCommand, TelemetryOutcome, MAX_TS, MIN_TS};
use crate::telemetry::maintenance;
use crate::telemetry::points::{segments_of, sort_dedupe};
use crate::telemetry::query::{self, QueryError, QuerySpec, TierChoice};
use crate::telemetry::retention::RetentionPolicy;

/// Points one ingest batch may carry.
pub const MAX_POINTS_PER_BATCH: usize = 1_000_000;
/// Batches of one ingest stream proposed and not yet acknowledged, at most.
const INGEST_PIPELINE: usize = 4;
/// Buckets per streamed query chunk.
const CHUNK_BUCKETS: usize = 1000;

pub struct TelemetryService {
    node: Arc<Node>,
}

impl TelemetryService {
    pub fn new(node: Arc<Node>) -> Self {
        TelemetryService { node }
    }
}

/// Validates a batch and turns it into one ingest command: per series, points sorted by
/// time (the last value given for a timestamp wins), cut into segments.
fn ingest_command(node: &Node, batch: pb::IngestBatch) -> Result<(TelemetryCommand, u64), Status> {
    let mut by_series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    let mut total = 0usize;
    for s in batch.series {
        node.config
            .limits
            .validate_stream(&s.series)
            .map_err(|e| Status::invalid_argument(format!("series: {e}")))?;
        check_name(&s.series, false).map_err(Status::invalid_argument)?;
        if s.timestamps_ns.len() != s.values.len() {
            return Err(Status::invalid_argument(format!(
                "series {}: {} timestamps but {} values",
                s.series,
                s.timestamps_ns.len(),
                s.values.len()
            )));
        }
        total += s.values.len();
        if total > MAX_POINTS_PER_BATCH {
            return Err(Status::invalid_argument(format!(
                "batch carries more than {MAX_POINTS_PER_BATCH} points"
            )));
        }
        if let Some(v) = s.values.iter().find(|v| !v.is_finite()) {
            return Err(Status::invalid_argument(format!(
                "series {}: value {v} is not finite",
                s.series
            )));
        }
        if let Some(t) = s
            .timestamps_ns
            .iter()
            .find(|t| !(MIN_TS..=MAX_TS).contains(*t))
        {
            return Err(Status::invalid_argument(format!(
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
        segments.extend(segments_of(&series, &ts, &vals).map_err(Status::internal)?);
    }
    Ok((TelemetryCommand::Ingest(segments), total as u64))
}

/// Proposes a telemetry command, retrying while no leader is known (followers hand their
/// batches to the leader through the proposer).
async fn propose(node: &Node, cmd: TelemetryCommand) -> Result<TelemetryOutcome, Status> {
    let deadline = Instant::now() + Duration::from_millis(node.config.write_timeout_ms);
    let mut backoff = Duration::from_millis(20);
    loop {
        match node.telemetry(cmd.clone()).await {
            Ok(TelemetryOutcome::Rejected { reason }) => {
                return Err(Status::invalid_argument(reason))
            }
            Ok(o) => return Ok(o),
            Err(NodeError::NotLeader { .. }) if Instant::now() + backoff < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(status(e)),
        }
    }
}

fn query_status(e: QueryError) -> Status {
    match e {
        QueryError::Invalid(m) => Status::invalid_argument(m),
        e @ QueryError::NotFound(_) => Status::not_found(e.to_string()),
        QueryError::Storage(s) => status(s.into()),
    }
}

type QueryStream = Pin<Box<dyn Stream<Item = Result<pb::TelemetryQueryChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    async fn ingest(
        &self,
        req: Request<Streaming<pb::IngestBatch>>,
    ) -> Result<Response<pb::IngestSummary>, Status> {
        let mut input = req.into_inner();
        let mut pending = futures::stream::FuturesOrdered::new();
        let mut summary = pb::IngestSummary::default();
        let node = self.node.clone();
        let settle = |summary: &mut pb::IngestSummary, o: TelemetryOutcome| {
            if let TelemetryOutcome::Ingested {
                points,
                late_dropped,
                skipped,
            } = o
            {
                summary.batches += 1;
                summary.points += points;
                summary.late_dropped += late_dropped;
                summary.skipped += skipped;
            }
        };
        while let Some(batch) = input.message().await? {
            let (cmd, _) = ingest_command(&node, batch)?;
            let node = node.clone();
            pending.push_back(async move { propose(&node, cmd).await });
            // Keep a few batches in flight: the next is read and encoded while earlier
            // ones replicate.
            if pending.len() >= INGEST_PIPELINE {
                if let Some(r) = pending.next().await {
                    settle(&mut summary, r?);
                }
            }
        }
        while let Some(r) = pending.next().await {
            settle(&mut summary, r?);
        }
        Ok(Response::new(summary))
    }

    type QueryStream = QueryStream;

    async fn query(
        &self,
        req: Request<pb::TelemetryQuery>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let q = req.into_inner();
        self.node
            .read_barrier(consistency(q.consistency)?)
            .await
            .map_err(status)?;
        let tier = match q.tier.as_str() {
            "" | "auto" => TierChoice::Auto,
            "raw" => TierChoice::Raw,
            "minute" => TierChoice::Minute,
            "hour" => TierChoice::Hour,
            other => {
                return Err(Status::invalid_argument(format!(
                    "tier {other:?}: auto, raw, minute or hour"
                )))
            }
        };
        let percentiles = if q.percentiles.is_empty() {
            vec![0.5, 0.9, 0.99]
        } else {
            q.percentiles.clone()
        };
        if percentiles.iter().any(|p| !(0.0..=1.0).contains(p)) || percentiles.len() > 32 {
            return Err(Status::invalid_argument(
                "percentiles are up to 32 quantiles in 0..1",
            ));
        }
        if !(q.anomaly_z == 0.0 || q.anomaly_z.is_finite() && q.anomaly_z > 0.0) {
            return Err(Status::invalid_argument(
                "anomaly_z must be 0 (off) or positive",
            ));
        }
        if q.m4_width > 100_000 {
            return Err(Status::invalid_argument("m4_width is at most 100000"));
        }
        let spec = QuerySpec {
            series: q.series.clone(),
            start_ns: q.start_ns,
            end_ns: q.end_ns,
            bucket_ns: q.bucket_ns,
            target_points: q.target_points,
            tier,
            anomaly_z: (q.anomaly_z > 0.0).then_some(q.anomaly_z),
            m4_width: q.m4_width,
            median: q.median,
        };
        let db = self.node.store.db();
        let result = tokio::task::spawn_blocking(move || query::query(&db, &spec))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(query_status)?;
        let quantiles = |s: &crate::telemetry::sketch::DDSketch| -> Vec<f64> {
            percentiles
                .iter()
                .map(|p| s.quantile(*p).unwrap_or(f64::NAN))
                .collect()
        };
        let mut chunks: Vec<pb::TelemetryQueryChunk> = result
            .buckets
            .chunks(CHUNK_BUCKETS)
            .map(|c| pb::TelemetryQueryChunk {
                buckets: c
                    .iter()
                    .map(|b| pb::TelemetryBucket {
                        start_ns: b.start_ns,
                        count: b.moments.count(),
                        sum: b.moments.sum(),
                        mean: b.moments.mean().unwrap_or(f64::NAN),
                        min: b.moments.min().unwrap_or(f64::NAN),
                        max: b.moments.max().unwrap_or(f64::NAN),
                        first: b.moments.first().map_or(f64::NAN, |x| x.1),
                        last: b.moments.last().map_or(f64::NAN, |x| x.1),
                        variance: b.moments.variance().unwrap_or(f64::NAN),
                        stddev: b.moments.stddev().unwrap_or(f64::NAN),
                        sample_variance: b.moments.sample_variance().unwrap_or(f64::NAN),
                        sample_stddev: b.moments.sample_variance().map_or(f64::NAN, f64::sqrt),
                        median: b.median,
                        percentiles: quantiles(&b.sketch),
                        tier: b.tier.as_str().to_owned(),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        let s = &result.summary;
        let last = pb::TelemetryQueryChunk {
            buckets: Vec::new(),
            summary: Some(pb::TelemetrySummary {
                count: s.count(),
                mean: s.mean().unwrap_or(f64::NAN),
                variance: s.variance().unwrap_or(f64::NAN),
                stddev: s.stddev().unwrap_or(f64::NAN),
                min: s.min().unwrap_or(f64::NAN),
                max: s.max().unwrap_or(f64::NAN),
                percentiles: quantiles(&result.summary_sketch),
                raw_points_read: result.raw_points,
                bucket_ns: result.bucket_ns,
                sample_variance: s.sample_variance().unwrap_or(f64::NAN),
                sample_stddev: s.sample_variance().map_or(f64::NAN, f64::sqrt),
                effective_start_ns: result.effective_start_ns,
                effective_end_ns: result.effective_end_ns,
                notes: result.notes.clone(),
            }),
            anomalies: result
                .anomalies
                .iter()
                .map(|a| pb::TelemetryAnomaly {
                    ts_ns: a.ts,
                    value: a.value,
                    z: a.z,
                })
                .collect(),
            m4: result
                .m4
                .iter()
                .map(|c| pb::M4Column {
                    pixel: c.pixel,
                    first_ts: c.first.0,
                    first: c.first.1,
                    last_ts: c.last.0,
                    last: c.last.1,
                    min_ts: c.min.0,
                    min: c.min.1,
                    max_ts: c.max.0,
                    max: c.max.1,
                })
                .collect(),
        };
        chunks.push(last);
        Ok(Response::new(Box::pin(futures::stream::iter(
            chunks.into_iter().map(Ok),
        ))))
    }

    async fn set_retention(
        &self,
        req: Request<pb::RetentionPolicyRequest>,
    ) -> Result<Response<pb::RetentionPolicyResponse>, Status> {
        let r = req.into_inner();
        let policy = RetentionPolicy {
            prefix: r.prefix,
            raw_ms: r.raw_ms,
            minute_ms: r.minute_ms,
            hour_ms: r.hour_ms,
            lateness_ms: r.lateness_ms,
        };
        check_name(&policy.prefix, true)
            .and_then(|()| policy.validate())
            .map_err(Status::invalid_argument)?;
        propose(&self.node, TelemetryCommand::SetRetention(policy)).await?;
        Ok(Response::new(pb::RetentionPolicyResponse {}))
    }

    async fn compact(
        &self,
        _: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        let db = self.node.store.db();
        let r = tokio::task::spawn_blocking(
            move || -> Result<pb::CompactResponse, crate::storage::StorageError> {
                maintenance::flush(&db)?;
                let (raw0, roll0) = maintenance::disk_usage(&db)?;
                maintenance::compact(&db)?;
                let (raw1, roll1) = maintenance::disk_usage(&db)?;
                Ok(pb::CompactResponse {
                    raw_bytes_before: raw0,
                    raw_bytes_after: raw1,
                    rollup_bytes_before: roll0,
                    rollup_bytes_after: roll1,
                })
            },
        )
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| status(e.into()))?;
        Ok(Response::new(r))
    }

    async fn stats(
        &self,
        _: Request<pb::TelemetryStatsRequest>,
    ) -> Result<Response<pb::TelemetryStatsResponse>, Status> {
        let db = self.node.store.db();
        let (raw, rollup) = tokio::task::spawn_blocking(move || {
            maintenance::flush(&db)?;
            maintenance::disk_usage(&db)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| status(e.into()))?;
        Ok(Response::new(pb::TelemetryStatsResponse {
            raw_bytes: raw,
            rollup_bytes: rollup,
        }))
    }
}
