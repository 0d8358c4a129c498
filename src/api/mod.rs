//! The boundary: gRPC services and the HTTP endpoints. Converts protobuf to core types and
//! core errors to status codes — nothing else. Logic the core needs lives in `node` and the
//! domain modules.

pub mod admin;
pub mod convert;
pub mod eventstore;
pub mod http;

use std::future::Future;
use std::sync::Arc;

use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::node::{Listeners, Node};
use crate::proto::aetherops::v1::{
    admin_server::AdminServer, event_store_server::EventStoreServer,
};
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
            RaftServer::new(RaftService::new(node.raft.clone()))
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listeners.grpc), async move {
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
