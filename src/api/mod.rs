//! The boundary: gRPC services and the HTTP endpoints. Converts protobuf to core types and
//! core errors to status codes — nothing else. Logic the core needs lives in `node` and the
//! domain modules.

pub mod admin;
pub mod convert;
pub mod eventstore;
pub mod http;
pub mod telemetry;
pub mod workflow;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::node::call::{self, CallFailure};
use crate::node::{NodeError, FORWARDED_HEADER};

use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::node::{Listeners, Node};
use crate::proto::aetherops::v1::admin_server::AdminServer;
use crate::proto::aetherops::v1::event_store_server::EventStoreServer;
use crate::proto::aetherops::v1::telemetry_server::TelemetryServer;
use crate::proto::aetherops::v1::workflows_server::WorkflowsServer;
use crate::proto::raft::v1::raft_server::RaftServer;
use crate::raft::network::MAX_RAFT_MESSAGE_BYTES;
use crate::raft::service::RaftService;

/// Serves gRPC and HTTP until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<EventStoreServer<eventstore::EventStoreService>>()
        .await;
    health_reporter
        .set_serving::<AdminServer<admin::AdminService>>()
        .await;
    health_reporter
        .set_serving::<WorkflowsServer<workflow::WorkflowService>>()
        .await;
    health_reporter
        .set_serving::<TelemetryServer<telemetry::TelemetryService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Oversized requests up to twice the configured limit reach our validation, which says
    // precisely what is wrong; beyond that the transport refuses them itself.
    let max_msg = node.config.limits.max_request_bytes * 2 + (1 << 20);
    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut grpc_shutdown = shutdown_tx.subscribe();
    let mut http_shutdown = shutdown_tx.subscribe();
    let grpc = Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            EventStoreServer::new(eventstore::EventStoreService::new(node.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(AdminServer::new(admin::AdminService::new(node.clone())))
        .add_service(
            WorkflowsServer::new(workflow::WorkflowService::new(node.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            // 1M points per batch at most (~16 MiB on the wire, plus series names).
            TelemetryServer::new(telemetry::TelemetryService::new(node.clone()))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(
            RaftServer::new(RaftService::new(
                node.raft.clone(),
                node.id,
                &node.info.incarnation,
                Arc::new(node.proposer.clone()),
                crate::raft::service::ProposeRules {
                    timeout: std::time::Duration::from_millis(node.config.write_timeout_ms),
                    limits: node.config.limits.clone(),
                    max_entry_bytes: node.config.proposer.max_batch_bytes
                        + crate::config::ENTRY_OVERHEAD_BYTES,
                },
                node.clock.clone(),
            ))
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(nodelay(listeners.grpc), async move {
            let _ = grpc_shutdown.recv().await;
        });
    let http = axum::serve(listeners.http, http::router(node.clone())).with_graceful_shutdown(
        async move {
            let _ = http_shutdown.recv().await;
        },
    );
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(());
    });
    let (g, h) = tokio::join!(grpc, http);
    g?;
    h?;
    Ok(())
}

/// Accepted connections with Nagle's algorithm off: tonic sets TCP_NODELAY only on
/// listeners it binds itself, and small gRPC replies otherwise wait out delayed ACKs (40 ms).
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// Whether a request was already forwarded by another node (never forward twice).
pub(crate) fn is_forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED_HEADER)
}

/// Marks a request as forwarded by `node` and bounds it by `timeout`.
pub(crate) fn forwarded_request<T>(node: &Node, msg: T, timeout: Duration) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(timeout);
    req.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from(node.id),
    );
    req
}

/// Runs a write where the leader is. `local` tries it on this node: `Err(NodeError)` for
/// routing failures, `Ok(Err(status))` for business refusals, which are final. On a
/// follower, `remote` sends the original request to the leader (once: a forwarded request
/// is never forwarded again) and its reply is returned as is. While no leader is known, or
/// the leader moves or cannot be reached, it retries with backoff until the write deadline:
/// those attempts were not written, so retrying them is safe. A forward that fails after the
/// request may have reached the leader ends the write with "outcome unknown"
/// (`DEADLINE_EXCEEDED`): only a retry with the same ids may follow it.
pub(crate) async fn on_leader<T, LF, RF>(
    node: &Node,
    forwarded: bool,
    mut local: impl FnMut() -> LF,
    mut remote: impl FnMut(Channel, Duration) -> RF,
) -> Result<T, Status>
where
    LF: Future<Output = Result<Result<T, Status>, NodeError>>,
    RF: Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + Duration::from_millis(node.config.write_timeout_ms);
    let mut backoff = Duration::from_millis(20);
    // Why the last attempt was not written, for the reply if the deadline passes.
    let mut last: String;
    loop {
        match local().await {
            Ok(result) => return result,
            Err(NodeError::NotLeader {
                leader: Some((id, info)),
            }) if !forwarded => {
                let channel = node.network.channel(&info.grpc_addr).map_err(|e| {
                    Status::unavailable(format!(
                        "leader node {id} has a bad address {}: {e}; nothing was written",
                        info.grpc_addr
                    ))
                })?;
                let left = deadline.saturating_duration_since(Instant::now());
                node.metrics.forwarded_appends.inc();
                match remote(channel, left).await {
                    Ok(v) => return Ok(v),
                    Err(s) => match call::classify(&s) {
                        // The leader moved on while we forwarded: find the new one, retry.
                        CallFailure::Answered if s.code() == tonic::Code::Unavailable => {
                            last =
                                format!("leader node {id} at {}: {}", info.grpc_addr, s.message());
                        }
                        CallFailure::Answered => return Err(s),
                        CallFailure::NotSent => {
                            last = format!(
                                "leader node {id} at {} is unreachable ({})",
                                info.grpc_addr,
                                call::status_detail(&s)
                            );
                        }
                        CallFailure::MaybeSent => {
                            return Err(convert::status(NodeError::OutcomeUnknown(format!(
                                "write outcome unknown: the connection to leader node {id} at {} \
                                 failed after the request was sent ({}); retry with the same \
                                 event ids",
                                info.grpc_addr,
                                call::status_detail(&s)
                            ))))
                        }
                    },
                }
            }
            Err(NodeError::NotLeader { leader: None }) if !forwarded => {
                last = "no leader is known (election in progress)".into();
            }
            Err(e) => return Err(convert::status(e)),
        }
        if Instant::now() >= deadline {
            return Err(convert::status(NodeError::Unavailable(format!(
                "no leader took the write within {} ms; nothing was written (last attempt: {last})",
                node.config.write_timeout_ms
            ))));
        }
        tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}
