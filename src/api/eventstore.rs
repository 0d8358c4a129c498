//! gRPC `aetherops.v1.EventStore`.

use std::pin::Pin;

use futures::Stream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

use super::convert::{append_command, appended, consistency, recorded};
use super::{caller, status};
use crate::eventstore::read::{Page, ReadDirection};
use crate::eventstore::subscribe::{Item, Target};
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::event_store_server::EventStore;
use crate::service::Service;

pub struct EventStoreService {
    service: Service,
}

impl EventStoreService {
    pub fn new(service: Service) -> Self {
        EventStoreService { service }
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
        let caller = caller(&req);
        let cmd = append_command(req.into_inner())?;
        let a = self.service.append(&caller, cmd).await.map_err(status)?;
        Ok(Response::new(appended(a)))
    }

    async fn read_stream(
        &self,
        req: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let caller = caller(&req);
        let r = req.into_inner();
        let p = self
            .service
            .read_stream(
                &caller,
                &r.stream,
                r.from_version,
                direction(r.backwards),
                r.limit,
                consistency(r.consistency)?,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(page(p)))
    }

    async fn read_all(
        &self,
        req: Request<pb::ReadAllRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let caller = caller(&req);
        let r = req.into_inner();
        let p = self
            .service
            .read_all(
                &caller,
                r.from_position,
                direction(r.backwards),
                r.limit,
                consistency(r.consistency)?,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(page(p)))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = caller(&req);
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
        let rx = self
            .service
            .subscribe(&caller, target, r.from)
            .map_err(status)?;
        let deadline = self.service.credential_deadline(&caller);
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
        Ok(Response::new(Box::pin(super::auth::until_expiry(
            stream, deadline,
        ))))
    }
}
