//! Plain event streams: append, reads, subscriptions.

use std::time::Instant;

use tokio::sync::mpsc;

use super::{Caller, Consistency, Service, ServiceError};
use crate::auth::Resource;
use crate::eventstore::read::{Page, ReadDirection};
use crate::eventstore::subscribe::{Item, Target};
use crate::eventstore::{AppendCommand, AppendOutcome, AppendPositions};
use crate::limits::Method;

/// A successful append: where the events landed; `duplicate` when it was a retry of an
/// append already applied (its original positions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub positions: AppendPositions,
    pub duplicate: bool,
}

impl Service {
    /// Appends events to a stream (ids are the caller's: a retry with the same ids is
    /// answered with the original positions).
    pub async fn append(
        &self,
        caller: &Caller,
        cmd: AppendCommand,
    ) -> Result<Appended, ServiceError> {
        self.admit(caller, Method::Append, Resource::Stream(&cmd.stream), 1)?;
        let started = Instant::now();
        let stream = cmd.stream.clone();
        let node = &self.node;
        let res = self
            .on_leader(|left| node.append(cmd.clone(), caller.token.clone(), left))
            .await
            .and_then(|o| append_outcome(&stream, o));
        let m = node.metrics();
        m.append_seconds.observe(started.elapsed().as_secs_f64());
        match &res {
            Ok(a) => {
                if !a.duplicate {
                    let p = a.positions;
                    m.events_appended
                        .inc_by(p.last_global_position - p.first_global_position + 1);
                }
                m.count_append("OK");
            }
            Err(e) => m.count_append(e.kind()),
        }
        res
    }

    pub async fn read_stream(
        &self,
        caller: &Caller,
        stream: &str,
        from: Option<u64>,
        direction: ReadDirection,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Page, ServiceError> {
        self.admit(caller, Method::Read, Resource::Stream(stream), 1)?;
        self.node.read_barrier(consistency).await?;
        Ok(self
            .node
            .read_stream(stream, from, direction, limit)
            .await?)
    }

    pub async fn read_all(
        &self,
        caller: &Caller,
        from: Option<u64>,
        direction: ReadDirection,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Page, ServiceError> {
        // `$all` reaches every stream: only a token without a stream scope (or with an
        // empty prefix) reads it.
        self.admit(caller, Method::Read, Resource::StreamsWithPrefix(""), 1)?;
        self.node.read_barrier(consistency).await?;
        Ok(self.node.read_all(from, direction, limit).await?)
    }

    /// Catch-up then live events of a stream or of all streams, from `from`.
    pub fn subscribe(
        &self,
        caller: &Caller,
        target: Target,
        from: Option<u64>,
    ) -> Result<mpsc::Receiver<Item>, ServiceError> {
        let resource = match &target {
            Target::Stream(s) => Resource::Stream(s),
            Target::All => Resource::StreamsWithPrefix(""),
        };
        self.admit(caller, Method::Subscribe, resource, 1)?;
        Ok(self.node.subscribe(target, from)?)
    }
}

/// An append's outcome as a result: business refusals are errors the caller can act on.
fn append_outcome(stream: &str, o: AppendOutcome) -> Result<Appended, ServiceError> {
    match o {
        AppendOutcome::Appended(positions) => Ok(Appended {
            positions,
            duplicate: false,
        }),
        AppendOutcome::Duplicate(positions) => Ok(Appended {
            positions,
            duplicate: true,
        }),
        AppendOutcome::WrongExpectedVersion { expected, current } => {
            let now = match current {
                Some(v) => format!("its current version is {v}"),
                None => "the stream does not exist".to_owned(),
            };
            Err(ServiceError::WrongExpectedVersion {
                message: format!(
                    "wrong expected version for stream {stream:?}: expected {expected}, but {now}"
                ),
                current,
            })
        }
        AppendOutcome::EventIdConflict { event_id, detail } => Err(ServiceError::AlreadyExists(
            format!("event id {event_id}: {detail}"),
        )),
        AppendOutcome::Rejected { reason } => Err(ServiceError::Invalid(format!(
            "append to stream {stream:?} refused: {reason}"
        ))),
    }
}
