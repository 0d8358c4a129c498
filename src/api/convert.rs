//! Protobuf ⇄ core conversions shared by the gRPC services. Decoding fails with
//! `INVALID_ARGUMENT` on what the wire cannot express in core types; every other check is
//! the service layer's.

use tonic::Status;

use crate::eventstore::AppendCommand;
use crate::model::{parse_event_id, ExpectedVersion, NewEvent, RecordedEvent};
use crate::proto::aetherops::v1 as pb;
use crate::service::events::Appended;
use crate::service::Consistency;
use crate::telemetry::anomaly::{AnomalyOut, DEFAULT_MAD_THRESHOLD};
use crate::telemetry::query::{DriftOut, DriftSpec, QuerySpec, TierChoice};

/// An expected version from the wire; unset means any.
pub fn expected_version(ev: Option<pb::ExpectedVersion>) -> Result<ExpectedVersion, Status> {
    let Some(ev) = ev else {
        return Ok(ExpectedVersion::Any);
    };
    match pb::expected_version::Kind::try_from(ev.kind) {
        Ok(pb::expected_version::Kind::Any) => Ok(ExpectedVersion::Any),
        Ok(pb::expected_version::Kind::NoStream) => Ok(ExpectedVersion::NoStream),
        Ok(pb::expected_version::Kind::StreamExists) => Ok(ExpectedVersion::StreamExists),
        Ok(pb::expected_version::Kind::Exact) => Ok(ExpectedVersion::Exact(ev.version)),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown expected version kind {}",
            ev.kind
        ))),
    }
}

/// An append from the wire. Event ids left empty are chosen here, once: every retry the
/// service makes carries the same ones, so the store's idempotency makes retries safe.
pub fn append_command(req: pb::AppendRequest) -> Result<AppendCommand, Status> {
    let expected = expected_version(req.expected_version)?;
    let mut events = Vec::with_capacity(req.events.len());
    for (index, e) in req.events.into_iter().enumerate() {
        let event_id = parse_event_id(index, &e.event_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        events.push(NewEvent {
            event_id,
            event_type: e.event_type,
            schema_version: e.schema_version,
            event_time_ns: e.event_time_ns,
            payload: e.payload,
            metadata: e.metadata.into_iter().collect(),
        });
    }
    Ok(AppendCommand {
        stream: req.stream,
        expected,
        events,
    })
}

/// Where an append landed, for the wire.
pub fn appended(a: Appended) -> pb::AppendResponse {
    let p = a.positions;
    pb::AppendResponse {
        first_stream_version: p.first_stream_version,
        last_stream_version: p.last_stream_version,
        first_global_position: p.first_global_position,
        last_global_position: p.last_global_position,
        commit_time_ns: p.commit_time_ns,
        duplicate: a.duplicate,
    }
}

pub fn recorded(e: RecordedEvent) -> pb::RecordedEvent {
    pb::RecordedEvent {
        event_id: e.event_id.to_string(),
        stream: e.stream,
        stream_version: e.stream_version,
        global_position: e.global_position,
        event_type: e.event_type,
        schema_version: e.schema_version,
        event_time_ns: e.event_time_ns,
        commit_time_ns: e.commit_time_ns,
        payload: e.payload,
        metadata: e.metadata.into_iter().collect(),
    }
}

pub fn consistency(c: i32) -> Result<Consistency, Status> {
    match pb::Consistency::try_from(c) {
        Ok(pb::Consistency::Linearizable) => Ok(Consistency::Linearizable),
        Ok(pb::Consistency::Local) => Ok(Consistency::Local),
        Err(_) => Err(Status::invalid_argument(format!("unknown consistency {c}"))),
    }
}

/// A telemetry query's shape from the wire (percentiles and consistency are the caller's).
/// 0 means "off" or "the default" where the wire has no presence; every check of the values
/// is the query's own (`telemetry::query`), shared with every other adapter.
pub fn query_spec(q: pb::TelemetryQuery) -> Result<QuerySpec, Status> {
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
    let or_default = |x: f64, default: f64| if x == 0.0 { default } else { x };
    Ok(QuerySpec {
        bucket_ns: q.bucket_ns,
        target_points: q.target_points,
        tier,
        edges: (!q.edges.is_empty()).then_some(q.edges),
        anomaly_z: (q.anomaly_z != 0.0).then_some(q.anomaly_z),
        anomaly_mad: q.anomaly_mad.map(|t| or_default(t, DEFAULT_MAD_THRESHOLD)),
        m4_width: q.m4_width,
        median: q.median,
        drift: q.drift.map(|d| DriftSpec {
            window_ns: d.window_ns,
            threshold: (d.threshold != 0.0).then_some(d.threshold),
        }),
        ..QuerySpec::range(q.series, q.start_ns, q.end_ns)
    })
}

pub fn anomaly(a: &AnomalyOut) -> pb::TelemetryAnomaly {
    pb::TelemetryAnomaly {
        ts_ns: a.ts_ns,
        value: a.value,
        z: a.score,
        score: a.score,
        kind: a.kind.as_str().to_owned(),
        method: a.method.as_str().to_owned(),
    }
}

pub fn drift(d: &DriftOut) -> pb::TelemetryDrift {
    pb::TelemetryDrift {
        start_ns: d.start_ns,
        alarm_ns: d.alarm_ns,
        direction: d.direction.as_str().to_owned(),
        mean_before: d.mean_before,
        mean_after: d.mean_after,
    }
}
