//! GraphQL on the node's HTTP port: `POST /graphql` (one request or a batch, JSON),
//! GraphiQL at `GET /graphql`, and subscriptions over WebSocket (`graphql-transport-ws`,
//! `ws`). A thin adapter like the gRPC ones: resolvers call the service layer, which
//! validates, authorizes and rate-limits every operation. This module adds what only
//! GraphQL needs: the bearer token of the `Authorization` header (or the WebSocket's
//! `connection_init` payload), and the cost of a request, computed before it runs
//! (`cost`), refused above `[graphql] max_cost`, and reported on every response as
//! `extensions.cost { requested, actual, limit }`.

pub mod cost;
mod direct;
pub mod error;
pub mod scalars;
pub mod schema;
pub mod ws;

use std::sync::Arc;

use async_graphql::{
    BatchRequest, BatchResponse, EmptyMutation, Request, Response, Schema, ServerError,
};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response as HttpResponse};
use axum::routing::get;
use axum::Router;

use self::cost::{Counts, Estimate, Limits, Refusal};
use self::direct::Splices;
use self::schema::{Meter, Query, Subscription};
use crate::config::GraphqlSettings;
use crate::service::{Caller, Service, ServiceError};

pub type AetherSchema = Schema<Query, EmptyMutation, Subscription>;

/// What the `/graphql` handlers share.
#[derive(Clone)]
struct Gql {
    schema: AetherSchema,
    service: Service,
    settings: Arc<GraphqlSettings>,
    /// Subscriptions across the node's sockets (`max_subscriptions_per_node`).
    subscriptions: Arc<tokio::sync::Semaphore>,
    /// The schema's introspection lists at their longest, for the cost of introspection.
    introspection: cost::IntrospectionSizes,
}

/// The schema, with the service its resolvers call.
pub fn schema(service: Service, settings: &GraphqlSettings) -> AetherSchema {
    // No extension: `direct` answers bucket lists without per-field resolution hooks.
    Schema::build(Query, EmptyMutation, Subscription)
        .data(service)
        // The cost walk checks depth first (with the configured limit, and introspection's
        // own); this is the executor's own backstop.
        .limit_depth(settings.max_depth.max(cost::MAX_INTROSPECTION_DEPTH) + 1)
        .limit_recursive_depth(64)
        .finish()
}

/// `/graphql`, when `[graphql] enabled`.
pub fn router(service: Service) -> Router {
    let settings = service.config().graphql.clone();
    if !settings.enabled {
        return Router::new();
    }
    let schema = schema(service.clone(), &settings);
    let state = Gql {
        introspection: cost::IntrospectionSizes::of_sdl(&schema.sdl()),
        schema,
        service,
        settings: Arc::new(settings.clone()),
        subscriptions: Arc::new(tokio::sync::Semaphore::new(
            settings.max_subscriptions_per_node,
        )),
    };
    Router::new()
        .route("/graphql", get(get_graphql).post(post))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .with_state(state)
}

/// `GET /graphql`: a WebSocket upgrade (`graphql-transport-ws`) or the GraphiQL page.
async fn get_graphql(
    State(gql): State<Gql>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    request: axum::extract::Request,
) -> HttpResponse {
    use axum::extract::FromRequestParts;
    let (mut parts, _) = request.into_parts();
    if !parts.headers.contains_key(header::UPGRADE) {
        return graphiql().into_response();
    }
    let upgrade =
        match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(u) => u,
            Err(rejection) => return rejection.into_response(),
        };
    let s = &gql.settings;
    let limits = ws::WsLimits {
        init_timeout: std::time::Duration::from_millis(s.ws_init_timeout_ms),
        max_per_socket: s.max_subscriptions_per_socket,
        per_node: gql.subscriptions.clone(),
        buffer_per_subscription: s.subscription_buffer,
        max_message_bytes: s.max_body_bytes,
        lag_grace: ws::DEFAULT_LAG_GRACE,
    };
    let caller = Arc::new(std::sync::OnceLock::new());
    let executor = Costed {
        gql: gql.clone(),
        caller: caller.clone(),
    };
    let service = gql.service.clone();
    let on_init = move |payload: Option<serde_json::Value>| async move {
        let c = ws_caller(&service, peer, payload.as_ref()).map_err(|e| e.to_string())?;
        let deadline = service.credential_deadline(&c);
        let mut data = async_graphql::Data::default();
        data.insert(c.clone());
        let _ = caller.set(c);
        Ok(ws::Accepted { data, deadline })
    };
    ws::upgrade(upgrade, executor, on_init, limits)
}

/// The caller of a WebSocket, from its `connection_init` payload: `{"Authorization":
/// "Bearer <token>"}` (the header's spelling, any case) or `{"token": "<token>"}`. With
/// authentication on, a missing or bad token refuses the connection (4403).
fn ws_caller(
    service: &Service,
    peer: std::net::SocketAddr,
    payload: Option<&serde_json::Value>,
) -> Result<Caller, ServiceError> {
    let Some(verifier) = service.verifier() else {
        return Ok(Caller::anonymous(Some(peer)));
    };
    let fields = payload.and_then(|p| p.as_object());
    let header = fields.and_then(|o| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v)
    });
    let token = match (header, fields.and_then(|o| o.get("token"))) {
        (Some(serde_json::Value::String(h)), _) => super::auth::bearer_of(Some(h.as_bytes())),
        (None, Some(serde_json::Value::String(t))) => Ok(Some(t.as_str())),
        (None, None) => Ok(None),
        _ => Err(crate::auth::AuthError::Unauthenticated(
            crate::auth::Reason::Malformed("the connection_init token is not a string"),
        )),
    };
    let a = super::auth::authenticate(verifier, token)?;
    Ok(Caller::user(a.identity, a.token, Some(peer)))
}

/// The executor a WebSocket runs operations with: each is costed and checked against the
/// limits before it starts, like a request over HTTP.
#[derive(Clone)]
struct Costed {
    gql: Gql,
    caller: Arc<std::sync::OnceLock<Caller>>,
}

impl async_graphql::Executor for Costed {
    async fn execute(&self, request: Request) -> Response {
        match self.caller.get() {
            Some(c) => run(&self.gql, c, vec![request], None)
                .await
                .pop()
                .unwrap_or_default(),
            None => refused("UNAUTHENTICATED", "no connection_init yet".into(), None),
        }
    }

    fn execute_stream(
        &self,
        request: Request,
        session: Option<Arc<async_graphql::Data>>,
    ) -> futures::stream::BoxStream<'static, Response> {
        use futures::StreamExt;
        let gql = self.gql.clone();
        let Some(caller) = self.caller.get().cloned() else {
            let r = refused("UNAUTHENTICATED", "no connection_init yet".into(), None);
            return futures::stream::once(async move { r }).boxed();
        };
        futures::stream::once(async move {
            let mut request = request;
            let requested = match admit(&gql, &caller, std::slice::from_mut(&mut request)).await {
                Ok(costs) => costs[0],
                Err(refusal) => return futures::stream::once(async move { refusal }).boxed(),
            };
            let limit = gql.settings.max_cost;
            let meter = Arc::new(Meter::default());
            gql.schema
                .execute_stream_with_session_data(
                    request.data(meter.clone()),
                    session.unwrap_or_default(),
                )
                .map(move |mut r| {
                    with_codes(&mut r.errors);
                    r.extensions
                        .insert("cost".into(), cost_value(requested, meter.actual(), limit));
                    r
                })
                .boxed()
        })
        .flatten()
        .boxed()
    }
}

fn graphiql() -> Html<String> {
    Html(
        async_graphql::http::GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql")
            .title("AetherOps GraphQL")
            .finish(),
    )
}

/// The caller of a request: from its bearer token when authentication is on (a missing or
/// bad one refused), else anonymous.
fn http_caller(
    service: &Service,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
) -> Result<Caller, ServiceError> {
    let Some(verifier) = service.verifier() else {
        return Ok(Caller::anonymous(Some(peer)));
    };
    let token = super::auth::bearer_of(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()));
    let a = super::auth::authenticate(verifier, token)?;
    Ok(Caller::user(a.identity, a.token, Some(peer)))
}

/// A response that carries only errors (with `code`), and the request's cost.
fn refused(code: &str, message: String, cost: Option<(u64, u64)>) -> Response {
    let mut err = ServerError::new(message, None);
    let mut ext = async_graphql::ErrorExtensionValues::default();
    ext.set("code", code);
    err.extensions = Some(ext);
    let mut r = Response::from_errors(vec![err]);
    if let Some((requested, limit)) = cost {
        r.extensions
            .insert("cost".into(), cost_value(requested, 0, limit));
    }
    r
}

fn cost_value(requested: u64, actual: u64, limit: u64) -> async_graphql::Value {
    async_graphql::value!({ "requested": requested, "actual": actual, "limit": limit })
}

/// The response as JSON, with the bucket lists `direct` wrote as text (`splices`) in place.
fn json(status: StatusCode, body: &BatchResponse, splices: Option<&Splices>) -> HttpResponse {
    let text = serde_json::to_vec(body).unwrap_or_default();
    let text = match splices {
        Some(s) => s.apply(text),
        None => text,
    };
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/graphql-response+json")],
        text,
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

async fn post(
    State(gql): State<Gql>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    let caller = match http_caller(&gql.service, peer, &headers) {
        Ok(c) => c,
        Err(e) => {
            let r = refused(
                error::code(&e),
                e.to_string(),
                Some((0, gql.settings.max_cost)),
            );
            return json(StatusCode::UNAUTHORIZED, &BatchResponse::Single(r), None);
        }
    };
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            let r = refused(
                "BAD_REQUEST",
                format!("the body is not a GraphQL request (JSON with `query`): {e}"),
                Some((0, gql.settings.max_cost)),
            );
            return json(StatusCode::BAD_REQUEST, &BatchResponse::Single(r), None);
        }
    };
    let splices = Splices::new();
    let response = match batch {
        BatchRequest::Single(r) => BatchResponse::Single(
            run(&gql, &caller, vec![r], Some(&splices))
                .await
                .pop()
                .unwrap_or_default(),
        ),
        BatchRequest::Batch(rs) => {
            BatchResponse::Batch(run(&gql, &caller, rs, Some(&splices)).await)
        }
    };
    json(StatusCode::OK, &response, Some(&splices))
}

/// Costs a request or a batch before anything runs: each is parsed and costed, and the
/// whole checked against the limits. `Err`: the refusal that answers every request of it.
/// Each request keeps its parsed document, which the executor then uses.
async fn admit(gql: &Gql, caller: &Caller, requests: &mut [Request]) -> Result<Vec<u64>, Response> {
    let s = &gql.settings;
    let limits = Limits {
        max_cost: s.max_cost,
        max_depth: s.max_depth,
        max_aliases: s.max_aliases,
        max_fields: s.max_fields,
        max_introspection_depth: cost::MAX_INTROSPECTION_DEPTH,
        introspection: gql.introspection,
    };
    if requests.len() > s.max_batch {
        return Err(refused(
            error::QUERY_TOO_COMPLEX,
            format!(
                "a batch of {} operations exceeds the limit {}",
                requests.len(),
                s.max_batch
            ),
            Some((0, s.max_cost)),
        ));
    }
    if let Some(big) = requests.iter().find(|r| r.query.len() > s.max_query_bytes) {
        return Err(refused(
            error::QUERY_TOO_COMPLEX,
            format!(
                "a query of {} bytes exceeds the limit {}",
                big.query.len(),
                s.max_query_bytes
            ),
            Some((0, s.max_cost)),
        ));
    }
    // A parse error is left for the executor to report, at no cost.
    let (operations, variables): (Vec<_>, Vec<_>) = requests
        .iter()
        .map(|r| (r.operation_name.clone(), r.variables.clone()))
        .unzip();
    let docs: Vec<_> = requests.iter_mut().map(|r| r.parsed_query().ok()).collect();
    // The counts are store reads made before anything is admitted: a batch looks up as many
    // as one request may.
    let mut needed = std::collections::BTreeSet::new();
    for ((d, op), vars) in docs.iter().zip(&operations).zip(&variables) {
        if let Some(d) = d {
            needed.extend(cost::needs(d, op.as_deref(), vars, s.max_fields));
        }
    }
    cost::check_ranges(needed.len()).map_err(|refusal| refusal_response(&refusal, s.max_cost))?;
    let counts = known_counts(&gql.service, caller, needed).await;
    let mut estimates = Vec::with_capacity(docs.len());
    let mut whole = Estimate::default();
    for ((d, op), vars) in docs.iter().zip(&operations).zip(&variables) {
        let e = match d {
            Some(d) => cost::estimate(d, op.as_deref(), vars, &counts, &limits)
                .map_err(|refusal| refusal_response(&refusal, s.max_cost))?,
            None => Estimate::default(),
        };
        whole.requested = whole.requested.saturating_add(e.requested);
        whole.fields += e.fields;
        whole.aliases += e.aliases;
        whole.depth = whole.depth.max(e.depth);
        whole.introspection_depth = whole.introspection_depth.max(e.introspection_depth);
        if whole
            .top
            .as_ref()
            .is_none_or(|t| e.top.as_ref().is_some_and(|et| et.1 > t.1))
        {
            whole.top = e.top.clone();
        }
        estimates.push(e.requested);
    }
    cost::check(&whole, &limits).map_err(|refusal| refusal_response(&refusal, s.max_cost))?;
    Ok(estimates)
}

/// Runs a request or a batch once [`admit`] passed it; a refusal answers every request.
/// With `splices`, bucket lists may be answered as JSON text (see `direct`): the response
/// must then be serialized with [`json`] and them.
async fn run(
    gql: &Gql,
    caller: &Caller,
    mut requests: Vec<Request>,
    splices: Option<&Arc<Splices>>,
) -> Vec<Response> {
    let estimates = match admit(gql, caller, &mut requests).await {
        Ok(e) => e,
        Err(refusal) => {
            return (0..requests.len())
                .map(|_| {
                    let mut c = Response::from_errors(refusal.errors.clone());
                    c.extensions = refusal.extensions.clone();
                    c
                })
                .collect()
        }
    };
    let mut out = Vec::with_capacity(requests.len());
    for (r, requested) in requests.into_iter().zip(estimates) {
        let meter = Arc::new(Meter::default());
        let mut r = r.data(caller.clone()).data(meter.clone());
        if let Some(s) = splices.filter(|_| r.parsed_query().is_ok_and(direct::keys_once)) {
            r = r.data(s.clone());
        }
        let mut response = gql.schema.execute(r).await;
        with_codes(&mut response.errors);
        response.extensions.insert(
            "cost".into(),
            cost_value(requested, meter.actual(), gql.settings.max_cost),
        );
        out.push(response);
    }
    out
}

/// Every error names its kind: the resolvers' carry theirs; what async-graphql itself
/// refuses (a parse or validation error, a variable or argument that does not coerce) is
/// the client's input.
pub fn with_codes(errors: &mut [ServerError]) {
    for e in errors {
        let ext = e.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", error::BAD_USER_INPUT);
        }
    }
}

fn refusal_response(r: &Refusal, limit: u64) -> Response {
    let requested = match r {
        Refusal::TooCostly { cost, .. } => *cost,
        _ => 0,
    };
    refused(
        error::QUERY_TOO_COMPLEX,
        r.to_string(),
        Some((requested, limit)),
    )
}

/// The store's counts of the series ranges a request's cost depends on. A range the
/// caller may not read counts as empty: its resolver refuses it anyway.
async fn known_counts(
    service: &Service,
    caller: &Caller,
    needed: std::collections::BTreeSet<(String, i64, i64)>,
) -> Counts {
    let mut counts = Counts::new();
    for (series, start, end) in needed {
        let n = service
            .estimate_points(caller, &series, start, end)
            .await
            .unwrap_or_default();
        counts.insert((series, start, end), n);
    }
    counts
}
