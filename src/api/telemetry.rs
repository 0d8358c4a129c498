//! gRPC `aetherops.v1.Telemetry`.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{anomaly, consistency, drift, query_spec};
use super::{caller, status};
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::telemetry_server::Telemetry;
use crate::service::telemetry::{Ingested, SeriesPoints, TelemetryAnswer, TelemetryQuery};
use crate::service::Service;
use crate::telemetry::retention::RetentionPolicy;

/// Batches of one ingest stream proposed and not yet acknowledged, at most.
const INGEST_PIPELINE: usize = 4;
/// Buckets per streamed query chunk.
const CHUNK_BUCKETS: usize = 1000;

pub struct TelemetryService {
    service: Service,
}

impl TelemetryService {
    pub fn new(service: Service) -> Self {
        TelemetryService { service }
    }
}

fn series_points(batch: pb::IngestBatch) -> Vec<SeriesPoints> {
    batch
        .series
        .into_iter()
        .map(|s| SeriesPoints {
            series: s.series,
            timestamps_ns: s.timestamps_ns,
            values: s.values,
        })
        .collect()
}

type QueryStream = Pin<Box<dyn Stream<Item = Result<pb::TelemetryQueryChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    async fn ingest(
        &self,
        req: Request<Streaming<pb::IngestBatch>>,
    ) -> Result<Response<pb::IngestSummary>, Status> {
        let caller = caller(&req);
        let mut input = req.into_inner();
        let mut pending = futures::stream::FuturesOrdered::new();
        let mut summary = pb::IngestSummary::default();
        let settle = |summary: &mut pb::IngestSummary, i: Ingested| {
            summary.batches += 1;
            summary.points += i.points;
            summary.late_dropped += i.late_dropped;
            summary.skipped += i.skipped;
        };
        while let Some(batch) = input.message().await? {
            let service = self.service.clone();
            let caller = caller.clone();
            let batch = service
                .prepare_ingest(&caller, series_points(batch))
                .map_err(status)?;
            pending.push_back(async move { service.ingest(&caller, batch).await });
            // Keep a few batches in flight: the next is read and encoded while earlier
            // ones replicate.
            if pending.len() >= INGEST_PIPELINE {
                if let Some(r) = pending.next().await {
                    settle(&mut summary, r.map_err(status)?);
                }
            }
        }
        while let Some(r) = pending.next().await {
            settle(&mut summary, r.map_err(status)?);
        }
        Ok(Response::new(summary))
    }

    type QueryStream = QueryStream;

    async fn query(
        &self,
        req: Request<pb::TelemetryQuery>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let caller = caller(&req);
        let mut q = req.into_inner();
        let query = TelemetryQuery {
            quantiles: std::mem::take(&mut q.percentiles),
            consistency: consistency(q.consistency)?,
            spec: query_spec(q)?,
        };
        let TelemetryAnswer {
            result,
            quantiles: percentiles,
        } = self
            .service
            .telemetry_query(&caller, query)
            .await
            .map_err(status)?;
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
                        end_ns: b.end_ns,
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
            anomalies: result.anomalies.iter().map(anomaly).collect(),
            drift: result.drift.iter().map(drift).collect(),
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
        let caller = caller(&req);
        let r = req.into_inner();
        let policy = RetentionPolicy {
            prefix: r.prefix,
            raw_ms: r.raw_ms,
            minute_ms: r.minute_ms,
            hour_ms: r.hour_ms,
            lateness_ms: r.lateness_ms,
        };
        self.service
            .set_retention(&caller, policy)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RetentionPolicyResponse {}))
    }

    async fn compact(
        &self,
        req: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        let (before, after) = self
            .service
            .compact_telemetry(&caller(&req))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CompactResponse {
            raw_bytes_before: before.raw_bytes,
            raw_bytes_after: after.raw_bytes,
            rollup_bytes_before: before.rollup_bytes,
            rollup_bytes_after: after.rollup_bytes,
        }))
    }

    async fn stats(
        &self,
        req: Request<pb::TelemetryStatsRequest>,
    ) -> Result<Response<pb::TelemetryStatsResponse>, Status> {
        let usage = self
            .service
            .telemetry_disk_usage(&caller(&req))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::TelemetryStatsResponse {
            raw_bytes: usage.raw_bytes,
            rollup_bytes: usage.rollup_bytes,
        }))
    }
}
