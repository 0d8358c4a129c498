//! HTTP: `/healthz` (liveness and Raft role, JSON) and `/metrics` (Prometheus text).

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::auth;
use crate::service::{Caller, Service, ServiceError};

pub fn router(service: Service) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(service.clone())
        .merge(super::graphql::router(service))
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

/// `/metrics`: open, or (with authentication on and `auth.open_metrics` off) for a client
/// token that may read, sent as `Authorization: Bearer <token>` (Prometheus's
/// `bearer_token_file`). 401 for a missing or bad token, 403 for one without the role.
async fn metrics(
    State(service): State<Service>,
    peer: ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let caller = match http_caller(&service, peer, &headers) {
        Ok(c) => c,
        Err(e) => return refusal(e),
    };
    match service.metrics_text(&caller) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => refusal(e),
    }
}

/// The caller of an HTTP request: verified from its bearer token when the endpoint needs
/// one, else anonymous.
// The refusal is the response itself, built once per refused request: boxing it buys nothing.
#[allow(clippy::result_large_err)]
fn http_caller(
    service: &Service,
    peer: ConnectInfo<std::net::SocketAddr>,
    headers: &HeaderMap,
) -> Result<Caller, ServiceError> {
    let Some(verifier) = service.metrics_verifier() else {
        return Ok(caller(peer));
    };
    let token = auth::bearer_of(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()));
    let a = auth::authenticate(verifier, token)?;
    Ok(Caller::user(a.identity, a.token, Some(peer.0)))
}

/// A refusal as HTTP: the status code for the error, its message as text; a 401 names the
/// scheme (RFC 6750).
pub(super) fn refusal(e: ServiceError) -> Response {
    let code = match &e {
        ServiceError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = (code, e.to_string()).into_response();
    if code == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}
