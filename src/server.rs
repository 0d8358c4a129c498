//! The process: binds the listeners, opens the node, serves the client APIs (over the
//! service layer) and the node-to-node service, and shuts down cleanly on a signal. The
//! one module that sees both the node and the API adapters.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::api::auth::ClientAuth;
use crate::api::{admin, eventstore, http, telemetry, workflow};
use crate::config::Config;
use crate::node::Node;
use crate::proto::aetherops::v1::admin_server::AdminServer;
use crate::proto::aetherops::v1::event_store_server::EventStoreServer;
use crate::proto::aetherops::v1::telemetry_server::TelemetryServer;
use crate::proto::aetherops::v1::workflows_server::WorkflowsServer;
use crate::proto::raft::v1::raft_server::RaftServer;
use crate::raft::network::MAX_RAFT_MESSAGE_BYTES;
use crate::service::Service;

/// Listeners bound before anything else starts, so their real ports are known.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let grpc = TcpListener::bind(&config.grpc_addr).await?;
        let http = TcpListener::bind(&config.http_addr).await?;
        Ok(Listeners {
            grpc_addr: grpc.local_addr()?,
            http_addr: http.local_addr()?,
            grpc,
            http,
        })
    }
}

/// Runs a node until SIGINT or SIGTERM: binds, opens, serves, shuts down cleanly.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config)
        .await
        .with_context(|| format!("binding {} and {}", config.grpc_addr, config.http_addr))?;
    let grpc_addr = config
        .advertise_grpc_addr
        .clone()
        .unwrap_or_else(|| listeners.grpc_addr.to_string());
    let http_addr = config
        .advertise_http_addr
        .clone()
        .unwrap_or_else(|| listeners.http_addr.to_string());
    let data_dir = config.data_dir.clone();
    let node = Node::open(config, grpc_addr, http_addr).await?;
    // Before the node says it serves (listen.json): a SIGHUP from then on reloads.
    if let Some(reload) = reload_on_sighup(node.clone()) {
        tokio::spawn(reload);
    }
    let info = node.info().clone();
    // Tools and tests that started us with port 0 learn the real ports here.
    let listen = serde_json::json!({
        "node_id": node.id(),
        "grpc_addr": listeners.grpc_addr.to_string(),
        "http_addr": listeners.http_addr.to_string(),
        "pid": std::process::id(),
    });
    let tmp = data_dir.join("listen.json.tmp");
    std::fs::write(&tmp, listen.to_string())?;
    std::fs::rename(&tmp, data_dir.join("listen.json"))?;
    tracing::info!(node_id = node.id(), grpc = %info.grpc_addr, http = %info.http_addr, "aetherd serving");
    println!(
        "aetherd node {} serving gRPC on {} and HTTP on {} (data in {})",
        node.id(),
        listeners.grpc_addr,
        listeners.http_addr,
        data_dir.display()
    );
    serve(node.clone(), listeners, shutdown_signal()).await?;
    tracing::info!("shutting down raft");
    node.shutdown().await?;
    Ok(())
}

/// Serves gRPC and HTTP until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let service = Service::new(node.clone());
    let service_for_shutdown = service.clone();
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
    let max_msg = node.config().limits.max_request_bytes * 2 + (1 << 20);
    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut grpc_shutdown = shutdown_tx.subscribe();
    let mut http_shutdown = shutdown_tx.subscribe();
    // With `[tls]`, every listener serves TLS and raft.v1 asks for a member certificate.
    let tls = node.tls().cloned();
    // Every client service sits behind the one token check; health and reflection too
    // unless the configuration leaves them open. The node-to-node service checks node-plane
    // credentials itself.
    let auth = ClientAuth::new(node.auth().cloned());
    let settings = &node.config().auth;
    let open_or_auth = |open: bool| {
        if open {
            ClientAuth::new(None)
        } else {
            auth.clone()
        }
    };
    // The HTTP/2 header list must hold the largest token the configuration allows (hyper's
    // default, 16 KiB, would end a connection with a longer token before the verifier
    // could refuse it by its size, with the status every bad token gets).
    let max_headers = *crate::config::AuthSettings::TOKEN_BYTES_RANGE.end() + (16 << 10);
    let mut grpc = Server::builder()
        .tcp_nodelay(true)
        .http2_max_header_list_size(u32::try_from(max_headers).unwrap_or(u32::MAX));
    let grpc = grpc
        .add_service(InterceptedService::new(
            health_service,
            open_or_auth(settings.open_health),
        ))
        .add_service(InterceptedService::new(
            reflection,
            open_or_auth(settings.open_reflection),
        ))
        .add_service(InterceptedService::new(
            EventStoreServer::new(eventstore::EventStoreService::new(service.clone()))
                .max_decoding_message_size(max_msg),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            AdminServer::new(admin::AdminService::new(service.clone())),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            WorkflowsServer::new(workflow::WorkflowService::new(service.clone()))
                .max_decoding_message_size(max_msg),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            // 1M points per batch at most (~16 MiB on the wire, plus series names).
            TelemetryServer::new(telemetry::TelemetryService::new(service.clone()))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            RaftServer::new(node.raft_service())
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
            crate::tls::require_member_certificate(tls.is_some()),
        ));
    let grpc_stopped = async move {
        let _ = grpc_shutdown.recv().await;
    };
    // With TLS the handshakes are ours (`tls::LiveTls::grpc_incoming`), with the material
    // in force when a connection arrives, so that SIGHUP can rotate it (tests/tls.rs
    // checks that a plaintext client is refused).
    let grpc: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match &tls
    {
        Some(t) => Box::pin(
            grpc.serve_with_incoming_shutdown(t.grpc_incoming(listeners.grpc), grpc_stopped),
        ),
        None => Box::pin(grpc.serve_with_incoming_shutdown(nodelay(listeners.grpc), grpc_stopped)),
    };
    let router = http::router(service).into_make_service_with_connect_info::<SocketAddr>();
    let http_stopped = async move {
        let _ = http_shutdown.recv().await;
    };
    let https = node.config().tls.as_ref().is_some_and(|t| t.http);
    let http: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
        match tls.as_ref().filter(|_| https) {
            // `tap_io` (a no-op here) because axum gives the connections of a tapped
            // listener their peer address as `ConnectInfo`, which the handlers read.
            Some(t) => Box::pin(
                axum::serve(t.http_listener(listeners.http)?.tap_io(|_| {}), router)
                    .with_graceful_shutdown(http_stopped)
                    .into_future(),
            ),
            None => Box::pin(
                axum::serve(listeners.http, router)
                    .with_graceful_shutdown(http_stopped)
                    .into_future(),
            ),
        };
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(());
    });
    let (g, h) = tokio::join!(grpc, http);
    // The servers are down: no request changes the limiters any more.
    service_for_shutdown.save_limits();
    g?;
    h?;
    Ok(())
}

/// Accepted connections with Nagle's algorithm off: tonic sets TCP_NODELAY only on
/// listeners it binds itself, and small gRPC replies otherwise wait out delayed ACKs (40 ms).
fn nodelay(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// SIGHUP: what rotates without a restart is read again.
/// - The token keys: from the configuration file when the node has one (keys added or
///   removed there take effect), else the same key files. Other `[auth]` settings
///   (issuer, audiences) take a restart.
/// - The TLS certificate, key and CA, from the same files (`tls::LiveTls::reload`): new
///   connections, to either listener and to peers, use them; open ones keep theirs.
///   `[tls]` paths take a restart.
///
/// Each is reloaded on its own: a key set or TLS files that do not load leave the ones in
/// force, and the log says why.
///
/// The handler is in place when this returns (SIGHUP's default action ends the process);
/// the returned task serves it. `None`: nothing to reload.
fn reload_on_sighup(node: Arc<Node>) -> Option<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    if node.auth().is_none() && node.tls().is_none() {
        return None;
    }
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP: token keys and TLS files reload only on restart");
            return None;
        }
    };
    Some(async move {
        while hup.recv().await.is_some() {
            if let Some(verifier) = node.auth() {
                let reloaded = match &node.config().source_file {
                    Some(path) => Config::from_file(path)
                        .map_err(|e| e.to_string())
                        .and_then(|c| c.auth.key_sources().map_err(|e| e.to_string()))
                        .and_then(|sources| {
                            verifier.reload_from(sources).map_err(|e| e.to_string())
                        }),
                    None => verifier.reload().map_err(|e| e.to_string()),
                };
                node.metrics().count_reload("keys", reloaded.is_ok());
                match reloaded {
                    Ok(kids) => tracing::info!(?kids, "SIGHUP: token keys reloaded"),
                    Err(e) => {
                        tracing::error!(
                            "SIGHUP: token keys NOT reloaded, the previous ones stay: {e}"
                        )
                    }
                }
            }
            if let Some(tls) = node.tls() {
                let reloaded = tls.reload();
                node.metrics().count_reload("tls", reloaded.is_ok());
                match reloaded {
                    Ok(generation) => {
                        node.metrics()
                            .tls_certificate_expiry
                            .set(tls.current().not_after());
                        tracing::info!(generation, "SIGHUP: TLS files reloaded")
                    }
                    Err(e) => {
                        tracing::error!(
                            "SIGHUP: TLS files NOT reloaded, the previous ones stay: {e}"
                        )
                    }
                }
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received");
}
