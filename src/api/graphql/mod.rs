//! GraphQL on the node's HTTP port: `POST /graphql` (one request or a batch, JSON),
//! GraphiQL at `GET /graphql`, and subscriptions over WebSocket (`graphql-transport-ws`,
//! `ws`). A thin adapter like the gRPC ones: resolvers call the service layer, which
//! validates, authorizes and rate-limits every operation. This module adds what only
//! GraphQL needs: the bearer token of the `Authorization` header (or the WebSocket's
//! `connection_init` payload), and the cost of a request, computed before it runs
//! (`cost`), refused above `[graphql] max_cost`, and reported on every response as
//! `extensions.cost { requested, actual, limit }`.

pub mod cost;
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
use self::schema::{Meter, Query};
use crate::config::GraphqlSettings;
use crate::service::{Caller, Service, ServiceError};

pub type AetherSchema = Schema<Query, EmptyMutation, async_graphql::EmptySubscription>;

/// What the `/graphql` handlers share.
#[derive(Clone)]
struct Gql {
    schema: AetherSchema,
    service: Service,
    settings: Arc<GraphqlSettings>,
}

/// The schema, with the service its resolvers call.
pub fn schema(service: Service, settings: &GraphqlSettings) -> AetherSchema {
    Schema::build(Query, EmptyMutation, async_graphql::EmptySubscription)
        .data(service)
        // The cost walk checks depth first (with the configured limit); this is the
        // executor's own backstop.
        .limit_depth(settings.max_depth + 1)
        .limit_recursive_depth(64)
        .finish()
}

/// `/graphql`, when `[graphql] enabled`.
pub fn router(service: Service) -> Router {
    let settings = service.config().graphql.clone();
    if !settings.enabled {
        return Router::new();
    }
    let state = Gql {
        schema: schema(service.clone(), &settings),
        service,
        settings: Arc::new(settings.clone()),
    };
    Router::new()
        .route("/graphql", get(graphiql).post(post))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .with_state(state)
}

async fn graphiql() -> Html<String> {
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

fn json(status: StatusCode, body: &BatchResponse) -> HttpResponse {
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/graphql-response+json")],
        serde_json::to_vec(body).unwrap_or_default(),
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
            let r = refused(error::code(&e), e.to_string(), None);
            return json(StatusCode::UNAUTHORIZED, &BatchResponse::Single(r));
        }
    };
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            let r = refused(
                "BAD_REQUEST",
                format!("the body is not a GraphQL request (JSON with `query`): {e}"),
                None,
            );
            return json(StatusCode::BAD_REQUEST, &BatchResponse::Single(r));
        }
    };
    let response = match batch {
        BatchRequest::Single(r) => {
            BatchResponse::Single(run(&gql, &caller, vec![r]).await.pop().unwrap_or_default())
        }
        BatchRequest::Batch(rs) => BatchResponse::Batch(run(&gql, &caller, rs).await),
    };
    json(StatusCode::OK, &response)
}

/// Runs a request or a batch: each is parsed and costed first; if the whole is within the
/// limits, each runs, else none does and every one is answered with the refusal.
async fn run(gql: &Gql, caller: &Caller, requests: Vec<Request>) -> Vec<Response> {
    let s = &gql.settings;
    let limits = Limits {
        max_cost: s.max_cost,
        max_depth: s.max_depth,
        max_aliases: s.max_aliases,
        max_fields: s.max_fields,
    };
    // A refusal answers every request of the batch (none of them runs).
    let n = requests.len();
    let everyone = |r: Response| {
        (0..n)
            .map(|_| {
                let mut c = Response::from_errors(r.errors.clone());
                c.extensions = r.extensions.clone();
                c
            })
            .collect::<Vec<_>>()
    };
    if requests.len() > s.max_batch {
        return everyone(refused(
            error::QUERY_TOO_COMPLEX,
            format!(
                "a batch of {} operations exceeds the limit {}",
                requests.len(),
                s.max_batch
            ),
            None,
        ));
    }
    if let Some(big) = requests.iter().find(|r| r.query.len() > s.max_query_bytes) {
        return everyone(refused(
            error::QUERY_TOO_COMPLEX,
            format!(
                "a query of {} bytes exceeds the limit {}",
                big.query.len(),
                s.max_query_bytes
            ),
            None,
        ));
    }
    // Parse every request (a parse error is left for the executor to report, at no cost).
    let docs: Vec<_> = requests
        .iter()
        .map(|r| async_graphql::parser::parse_query(&r.query).ok())
        .collect();
    let mut needed = std::collections::BTreeSet::new();
    for (r, d) in requests.iter().zip(&docs) {
        if let Some(d) = d {
            needed.extend(cost::needs(d, r.operation_name.as_deref(), &r.variables));
        }
    }
    let counts = known_counts(&gql.service, caller, needed).await;
    let mut estimates = Vec::with_capacity(requests.len());
    let mut whole = Estimate::default();
    for (r, d) in requests.iter().zip(&docs) {
        let e = match d {
            Some(d) => match cost::estimate(
                d,
                r.operation_name.as_deref(),
                &r.variables,
                &counts,
                &limits,
            ) {
                Ok(e) => e,
                Err(refusal) => return everyone(refusal_response(&refusal, s.max_cost)),
            },
            None => Estimate::default(),
        };
        whole.requested = whole.requested.saturating_add(e.requested);
        whole.fields += e.fields;
        whole.aliases += e.aliases;
        whole.depth = whole.depth.max(e.depth);
        if whole
            .top
            .as_ref()
            .is_none_or(|t| e.top.as_ref().is_some_and(|et| et.1 > t.1))
        {
            whole.top = e.top.clone();
        }
        estimates.push(e.requested);
    }
    if let Err(refusal) = cost::check(&whole, &limits) {
        return everyone(refusal_response(&refusal, s.max_cost));
    }
    let mut out = Vec::with_capacity(requests.len());
    for (r, requested) in requests.into_iter().zip(estimates) {
        let meter = Arc::new(Meter::default());
        let mut response = gql
            .schema
            .execute(r.data(caller.clone()).data(meter.clone()))
            .await;
        with_codes(&mut response.errors);
        response.extensions.insert(
            "cost".into(),
            cost_value(requested, meter.actual(), s.max_cost),
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
        let n = {
            let _ = (service, caller, &series, start, end);
            0 // MERGE: service.estimate_points (h/corr)
        };
        counts.insert((series, start, end), n);
    }
    counts
}
