//! HTTP: `/healthz` (liveness and Raft role, JSON) and `/metrics` (Prometheus text).

use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::service::{Caller, Service};

pub fn router(service: Service) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(service)
}

/// Serve the router with `into_make_service_with_connect_info::<SocketAddr>()`, so that
/// every request knows its peer.
fn caller(ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>) -> Caller {
    Caller::anonymous(Some(peer))
}

async fn healthz(
    State(service): State<Service>,
    peer: ConnectInfo<std::net::SocketAddr>,
) -> impl IntoResponse {
    let h = service.health(&caller(peer));
    let ok = h.raft_error.is_none();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "failed" },
        "node_id": h.node_id,
        "role": h.role,
        "leader_id": h.leader_id,
        "term": h.term,
        "applied_index": h.applied_index,
        "event_count": h.event_count,
        "error": h.raft_error,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn metrics(
    State(service): State<Service>,
    peer: ConnectInfo<std::net::SocketAddr>,
) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        service.metrics_text(&caller(peer)),
    )
}
