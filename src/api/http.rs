//! HTTP: `/healthz` (liveness and Raft role, JSON) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(node)
}

async fn healthz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let m = node.raft_metrics();
    let applied = node.applied_status();
    let ok = m.running_state.is_ok();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "failed" },
        "node_id": node.id,
        "role": node.role(),
        "leader_id": m.current_leader,
        "term": m.current_term,
        "applied_index": applied.applied.map(|l| l.index),
        "event_count": applied.next_global_position,
        "error": m.running_state.err().map(|e| e.to_string()),
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.render_metrics(),
    )
}
