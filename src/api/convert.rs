//! Protobuf ⇄ core conversions and the one mapping of core errors to gRPC status codes.

use tonic::{Code, Status};

use crate::eventstore::{AppendCommand, AppendOutcome, AppendPositions};
use crate::model::{parse_event_id, ExpectedVersion, NewEvent, RecordedEvent};
use crate::node::{Consistency, NodeError};
use crate::proto::aetherops::v1 as pb;

/// Header carrying the leader's gRPC address on `UNAVAILABLE` "not the leader" replies.
pub const LEADER_HEADER: &str = "x-aether-leader";
/// Header carrying the stream's current version on expected-version conflicts.
pub const CURRENT_VERSION_HEADER: &str = "x-aether-current-version";

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

fn positions(p: AppendPositions, duplicate: bool) -> pb::AppendResponse {
    pb::AppendResponse {
        first_stream_version: p.first_stream_version,
        last_stream_version: p.last_stream_version,
        first_global_position: p.first_global_position,
        last_global_position: p.last_global_position,
        commit_time_ns: p.commit_time_ns,
        duplicate,
    }
}

pub fn append_outcome(stream: &str, o: AppendOutcome) -> Result<pb::AppendResponse, Status> {
    match o {
        AppendOutcome::Appended(p) => Ok(positions(p, false)),
        AppendOutcome::Duplicate(p) => Ok(positions(p, true)),
        AppendOutcome::WrongExpectedVersion { expected, current } => {
            let now = match current {
                Some(v) => format!("its current version is {v}"),
                None => "the stream does not exist".to_owned(),
            };
            let mut status = Status::failed_precondition(format!(
                "wrong expected version for stream {stream:?}: expected {expected}, but {now}"
            ));
            let value = current.map_or("none".to_owned(), |v| v.to_string());
            if let Ok(v) = value.parse() {
                status.metadata_mut().insert(CURRENT_VERSION_HEADER, v);
            }
            Err(status)
        }
        AppendOutcome::EventIdConflict { event_id, detail } => Err(Status::already_exists(
            format!("event id {event_id}: {detail}"),
        )),
        AppendOutcome::Rejected { reason } => Err(Status::invalid_argument(format!(
            "append to stream {stream:?} refused: {reason}"
        ))),
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

/// The one place core errors become status codes.
pub fn status(e: NodeError) -> Status {
    let code = match &e {
        NodeError::Invalid(_) | NodeError::BadRequest(_) => Code::InvalidArgument,
        NodeError::NotLeader { .. } | NodeError::Unavailable(_) => Code::Unavailable,
        NodeError::Overloaded(_) => Code::ResourceExhausted,
        NodeError::OutcomeUnknown(_) => Code::DeadlineExceeded,
        NodeError::FailedPrecondition(_) => Code::FailedPrecondition,
        NodeError::Storage(_) | NodeError::Internal(_) => Code::Internal,
    };
    if let NodeError::Storage(err) = &e {
        tracing::error!(error = %err, "storage error served as INTERNAL");
    }
    let mut status = match &e {
        NodeError::NotLeader {
            leader: Some((id, info)),
        } => Status::new(
            code,
            format!(
                "not the leader; the leader is node {id} at {}",
                info.grpc_addr
            ),
        ),
        NodeError::NotLeader { leader: None } => Status::new(
            code,
            "not the leader, and no leader is known yet: retry shortly",
        ),
        _ => Status::new(code, e.to_string()),
    };
    if let NodeError::NotLeader {
        leader: Some((_, info)),
    } = &e
    {
        if let Ok(v) = info.grpc_addr.parse() {
            status.metadata_mut().insert(LEADER_HEADER, v);
        }
    }
    status
}
