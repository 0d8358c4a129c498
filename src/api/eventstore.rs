//! gRPC `aetherops.v1.EventStore`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert::{append_command, append_outcome, consistency, recorded, status};
use crate::eventstore::read::{Page, ReadDirection};
use crate::eventstore::subscribe::{Item, Target};
use crate::eventstore::AppendOutcome;
use crate::node::Node;
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::event_store_client::EventStoreClient;
use crate::proto::aetherops::v1::event_store_server::EventStore;

pub struct EventStoreService {
    node: Arc<Node>,
}

impl EventStoreService {
    pub fn new(node: Arc<Node>) -> Self {
        EventStoreService { node }
    }

    async fn append_inner(
        &self,
        req: Request<pb::AppendRequest>,
    ) -> Result<pb::AppendResponse, Status> {
        let forwarded = super::is_forwarded(&req);
        let mut req = req.into_inner();
        // Ids chosen once, here: every retry and forward below carries the same ones, so the
        // store's idempotency makes them safe even when an outcome was unknown.
        for e in &mut req.events {
            if e.event_id.is_empty() {
                e.event_id = crate::model::new_event_id().to_string();
            }
        }
        let node = &self.node;
        super::on_leader(
            node,
            forwarded,
            || async {
                let cmd = match append_command(req.clone()) {
                    Ok(c) => c,
                    Err(s) => return Ok(Err(s)),
                };
                let outcome = node.append(cmd).await?;
                if let AppendOutcome::Appended(p) = &outcome {
                    node.metrics
                        .events_appended
                        .inc_by(p.last_global_position - p.first_global_position + 1);
                }
                Ok(append_outcome(&req.stream, outcome))
            },
            |channel, timeout| {
                let fwd = super::forwarded_request(node, req.clone(), timeout);
                async move {
                    EventStoreClient::new(channel)
                        .max_decoding_message_size(usize::MAX)
                        .max_encoding_message_size(usize::MAX)
                        .append(fwd)
                        .await
                        .map(Response::into_inner)
                }
            },
        )
        .await
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
            .await
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
            .await
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
                    // The delivery (and its share of the subscriber's buffer) ends here.
                    Item::Event(d) => pb::subscribe_response::Kind::Event(recorded(d.event)),
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
