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
    let (code, body) = match service.node_status(&caller(peer)) {
        Ok(s) => {
            let ok = s.raft_error.is_none();
            let body = serde_json::json!({
                "status": if ok { "ok" } else { "failed" },
                "node_id": s.node_id,
                "role": s.role,
                "leader_id": s.leader_id,
                "term": s.term,
                "applied_index": s.applied_index,
                "event_count": s.event_count,
                "error": s.raft_error,
            });
            let code = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, body)
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "failed", "error": e.to_string() }),
        ),
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
