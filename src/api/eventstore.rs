//! gRPC `aetherops.v1.EventStore`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert::{append_command, append_outcome, consistency, recorded, status};
use crate::eventstore::read::{Page, ReadDirection};
use crate::eventstore::subscribe::{Item, Target};
use crate::node::{Node, NodeError, FORWARDED_HEADER};
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::event_store_client::EventStoreClient;
use crate::proto::aetherops::v1::event_store_server::EventStore;
use crate::raft::NodeInfo;

pub struct EventStoreService {
    node: Arc<Node>,
}

impl EventStoreService {
    pub fn new(node: Arc<Node>) -> Self {
        EventStoreService { node }
    }

    /// Sends an append to the leader on the client's behalf; the reply is the leader's.
    async fn forward(
        &self,
        leader: &NodeInfo,
        req: pb::AppendRequest,
        timeout: Duration,
    ) -> Result<pb::AppendResponse, Status> {
        let channel = self.node.network.channel(&leader.grpc_addr).map_err(|e| {
            Status::unavailable(format!("leader address {}: {e}", leader.grpc_addr))
        })?;
        let mut fwd = Request::new(req);
        fwd.set_timeout(timeout);
        fwd.metadata_mut().insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from(self.node.id),
        );
        self.node.metrics.forwarded_appends.inc();
        EventStoreClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
            .append(fwd)
            .await
            .map(Response::into_inner)
    }

    async fn append_inner(
        &self,
        req: Request<pb::AppendRequest>,
    ) -> Result<pb::AppendResponse, Status> {
        let forwarded = req.metadata().contains_key(FORWARDED_HEADER);
        let req = req.into_inner();
        let stream = req.stream.clone();
        let deadline = Instant::now() + Duration::from_millis(self.node.config.write_timeout_ms);
        let mut backoff = Duration::from_millis(20);
        loop {
            let cmd = append_command(req.clone())?;
            match self.node.append(cmd).await {
                Ok(outcome) => {
                    if let crate::eventstore::AppendOutcome::Appended(p) = &outcome {
                        self.node
                            .metrics
                            .events_appended
                            .inc_by(p.last_global_position - p.first_global_position + 1);
                    }
                    return append_outcome(&stream, outcome);
                }
                Err(NodeError::NotLeader {
                    leader: Some((_, info)),
                }) if !forwarded => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.forward(&info, req.clone(), left).await {
                        // The leader moved on while we forwarded: find the new one and retry.
                        Err(s)
                            if s.code() == tonic::Code::Unavailable
                                && Instant::now() < deadline => {}
                        other => return other,
                    }
                }
                // No leader yet (election running): wait a little and retry, within the
                // request's deadline. Refused writes were not written, so retrying is safe.
                Err(NodeError::NotLeader { .. }) if !forwarded && Instant::now() < deadline => {}
                Err(e) => return Err(status(e)),
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            if Instant::now() >= deadline {
                return Err(status(NodeError::Unavailable(
                    "no leader could take the write before the deadline".into(),
                )));
            }
        }
    }
}

fn page(p: Page) -> pb::ReadResponse {
    pb::ReadResponse {
        events: p.events.into_iter().map(recorded).collect(),
        next: p.next,
        last: p.last,
    }
}

fn direction(backwards: bool) -> ReadDirection {
    if backwards {
        ReadDirection::Backwards
    } else {
        ReadDirection::Forwards
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EventStore for EventStoreService {
    async fn append(
        &self,
        req: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let started = Instant::now();
        let res = self.append_inner(req).await;
        let m = &self.node.metrics;
        m.append_seconds.observe(started.elapsed().as_secs_f64());
        m.count_append(match &res {
            Ok(_) => "OK",
            Err(s) => code_name(s.code()),
        });
        res.map(Response::new)
    }

    async fn read_stream(
        &self,
        req: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let r = req.into_inner();
        self.node
            .read_barrier(consistency(r.consistency)?)
            .await
            .map_err(status)?;
        let p = self
            .node
            .read_stream(&r.stream, r.from_version, direction(r.backwards), r.limit)
            .map_err(status)?;
        Ok(Response::new(page(p)))
    }

    async fn read_all(
        &self,
        req: Request<pb::ReadAllRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let r = req.into_inner();
        self.node
            .read_barrier(consistency(r.consistency)?)
            .await
            .map_err(status)?;
        let p = self
            .node
            .read_all(r.from_position, direction(r.backwards), r.limit)
            .map_err(status)?;
        Ok(Response::new(page(p)))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = req.into_inner();
        let target = match r.target {
            Some(pb::subscribe_request::Target::Stream(s)) => Target::Stream(s),
            Some(pb::subscribe_request::Target::All(true)) => Target::All,
            _ => {
                return Err(Status::invalid_argument(
                    "subscribe to a stream or to all (all = true)",
                ))
            }
        };
        let rx = self.node.subscribe(target, r.from).map_err(status)?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| {
            Ok(pb::SubscribeResponse {
                kind: Some(match item {
                    Item::Event(e) => pb::subscribe_response::Kind::Event(recorded(*e)),
                    Item::CaughtUp { next } => {
                        pb::subscribe_response::Kind::CaughtUp(pb::CaughtUp { next })
                    }
                }),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

use tokio_stream::StreamExt as _;

/// Stable names for the outcome label of `aether_appends`.
fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        InvalidArgument => "INVALID_ARGUMENT",
        FailedPrecondition => "FAILED_PRECONDITION",
        AlreadyExists => "ALREADY_EXISTS",
        Unavailable => "UNAVAILABLE",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        Internal => "INTERNAL",
        _ => "OTHER",
    }
}
