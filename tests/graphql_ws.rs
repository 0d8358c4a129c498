//! `api::graphql::ws` against graphql-ws's PROTOCOL.md, over a real WebSocket on 127.0.0.1:
//! a toy schema served by axum, and a client that speaks the protocol by hand (JSON written
//! here, tokio-tungstenite underneath; nothing of the server's code). Every wait has a
//! deadline; none is a fixed sleep.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aetherops::api::graphql::ws::{self, Accepted, WsLimits};
use async_graphql::{Context, Data, EmptyMutation, Object, Schema, Subscription};
use axum::extract::ws::WebSocketUpgrade;
use axum::routing::get;
use axum::Router;
use futures::Stream;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use ws_client::{complete, next, Client, Got};

#[path = "ws_client/mod.rs"]
mod ws_client;
use ws_client::PATIENCE;

// ---- the toy schema ----

/// Who the connection is, from the ConnectionInit payload (session data).
struct User(String);

struct Query;

#[Object]
impl Query {
    async fn hello(&self, ctx: &Context<'_>) -> String {
        let user = ctx.data_opt::<User>().map_or("nobody", |u| u.0.as_str());
        format!("hello {user}")
    }
}

struct Subscription;

#[Subscription]
impl Subscription {
    /// 0..to, as fast as the consumer pulls.
    async fn count(&self, to: i64) -> impl Stream<Item = i64> {
        futures::stream::iter(0..to)
    }

    /// 0, 1, 2, … without end, as fast as the consumer pulls.
    async fn forever(&self) -> impl Stream<Item = i64> {
        futures::stream::iter(0..)
    }

    /// 0..n, one every `every_ms` milliseconds.
    async fn ticks(&self, n: i64, every_ms: u64) -> impl Stream<Item = i64> {
        let every = Duration::from_millis(every_ms);
        futures::stream::unfold(0, move |i| async move {
            if i >= n {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((i, i + 1))
        })
    }

    /// Nothing, ever: an operation that stays active.
    async fn silent(&self) -> impl Stream<Item = i64> {
        futures::stream::pending()
    }
}

type ToySchema = Schema<Query, EmptyMutation, Subscription>;

fn limits(per_node: usize) -> WsLimits {
    WsLimits {
        init_timeout: Duration::from_secs(30),
        max_per_socket: 8,
        per_node: Arc::new(Semaphore::new(per_node)),
        buffer_per_subscription: 16,
        max_message_bytes: 16 * 1024,
        lag_grace: Duration::from_secs(30),
    }
}

/// The toy's `on_init`: `{"user": u}` names the caller, `{"refuse": reason}` refuses,
/// `{"expires_in_ms": n}` sets the token deadline.
async fn on_init(payload: Option<Value>) -> Result<Accepted, String> {
    let payload = payload.unwrap_or(Value::Null);
    if let Some(reason) = payload["refuse"].as_str() {
        return Err(reason.to_owned());
    }
    let mut data = Data::default();
    if let Some(user) = payload["user"].as_str() {
        data.insert(User(user.to_owned()));
    }
    let deadline = payload["expires_in_ms"]
        .as_u64()
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    Ok(Accepted { data, deadline })
}

/// Serve the toy schema at ws://addr/graphql with these limits.
async fn start(limits: WsLimits) -> SocketAddr {
    let schema: ToySchema = Schema::new(Query, EmptyMutation, Subscription);
    let app = Router::new().route(
        "/graphql",
        get(move |upgrade: WebSocketUpgrade| {
            let (schema, limits) = (schema.clone(), limits.clone());
            async move { ws::upgrade(upgrade, schema, on_init, limits) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Wait until the node's semaphore has `n` free permits (operations ended and released them).
async fn permits_back(limits: &WsLimits, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    while limits.per_node.available_permits() != n {
        assert!(
            Instant::now() < deadline,
            "permits not released: {}",
            limits.per_node.available_permits()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- the protocol ----

/// Ping before init is answered; init is acknowledged; a query over the socket is one Next
/// (with the session's data from `on_init`) and a Complete; a Pong from the client is ignored.
#[tokio::test]
async fn init_ack_ping_pong_and_a_single_result_operation() {
    let addr = start(limits(100)).await;
    let mut client = Client::connect(addr).await;
    client
        .send(json!({"type": "ping", "payload": {"t": 1}}))
        .await;
    assert_eq!(
        client.next().await,
        Got::Json(json!({"type": "pong", "payload": {"t": 1}}))
    );
    client
        .send(json!({"type": "connection_init", "payload": {"user": "alice"}}))
        .await;
    assert_eq!(
        client.next().await,
        Got::Json(json!({"type": "connection_ack"}))
    );
    client.send(json!({"type": "pong"})).await;
    client.hello("q", "alice").await;
    client.still_open().await;
}

/// A subscription streams Next messages in order, then Complete; the id is free again after.
#[tokio::test]
async fn a_stream_is_next_in_order_then_complete_and_its_id_is_reusable() {
    let addr = start(limits(100)).await;
    let mut client = Client::acked(addr, Value::Null).await;
    for _ in 0..2 {
        client.subscribe("s", "subscription { count(to: 3) }").await;
        for i in 0..3 {
            assert_eq!(client.next().await, next("s", json!({"count": i})));
        }
        assert_eq!(client.next().await, complete("s"));
    }
}

#[tokio::test]
async fn no_init_within_the_timeout_closes_4408() {
    let mut limits = limits(100);
    limits.init_timeout = Duration::from_millis(300);
    let addr = start(limits).await;
    let mut client = Client::connect(addr).await;
    let reason = client.closed_with(4408).await;
    assert_eq!(reason, "Connection initialisation timeout");
}

#[tokio::test]
async fn a_second_init_closes_4429() {
    let addr = start(limits(100)).await;
    let mut client = Client::acked(addr, Value::Null).await;
    client.send(json!({"type": "connection_init"})).await;
    assert_eq!(
        client.closed_with(4429).await,
        "Too many initialisation requests"
    );
}

#[tokio::test]
async fn subscribe_before_ack_closes_4401() {
    let addr = start(limits(100)).await;
    let mut client = Client::connect(addr).await;
    client.subscribe("1", "{ hello }").await;
    assert_eq!(client.closed_with(4401).await, "Unauthorized");
}

#[tokio::test]
async fn a_refused_init_closes_4403_with_the_reason() {
    let addr = start(limits(100)).await;
    let mut client = Client::connect(addr).await;
    let long = "x".repeat(300);
    client
        .send(
            json!({"type": "connection_init", "payload": {"refuse": format!("bad token {long}")}}),
        )
        .await;
    let reason = client.closed_with(4403).await;
    assert!(reason.starts_with("bad token x"), "{reason}");
    assert_eq!(reason.len(), 123, "a close reason is cut to 123 bytes");
}

#[tokio::test]
async fn a_duplicate_active_id_closes_4409() {
    let addr = start(limits(100)).await;
    let mut client = Client::acked(addr, Value::Null).await;
    client.subscribe("dup", "subscription { silent }").await;
    client.subscribe("dup", "{ hello }").await;
    assert_eq!(
        client.closed_with(4409).await,
        "Subscriber for dup already exists"
    );
}

/// Each kind of invalid message closes its socket with 4400 and a reason naming the fault.
#[tokio::test]
async fn invalid_messages_close_4400_with_a_reason() {
    let addr = start(limits(100)).await;
    let cases = [
        ("{not json", "not JSON"),
        (r#"{"type":"unheard_of"}"#, "unknown type 'unheard_of'"),
        (
            r#"{"type":"subscribe","payload":{"query":"{ hello }"}}"#,
            "no 'id'",
        ),
        (
            r#"{"type":"subscribe","id":"1"}"#,
            "'payload' is not an object",
        ),
        (r#"{"id":"1","payload":{"query":"{ hello }"}}"#, "no 'type'"),
        (
            r#"{"type":"next","id":"1","payload":{}}"#,
            "sent by the server only",
        ),
    ];
    for (text, fault) in cases {
        let mut client = Client::acked(addr, Value::Null).await;
        client.send_text(text.to_owned()).await;
        let reason = client.closed_with(4400).await;
        assert!(reason.contains(fault), "{text}: {reason}");
    }
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_1009() {
    let mut limits = limits(100);
    limits.max_message_bytes = 1024;
    let addr = start(limits).await;
    let mut client = Client::acked(addr, Value::Null).await;
    let query = format!("{{ hello }} # {}", "x".repeat(1500));
    client.subscribe("big", &query).await;
    let reason = client.closed_with(1009).await;
    assert!(reason.contains("over the limit of 1024"), "{reason}");
}

/// A request that fails validation is an Error message with the GraphQL errors (the socket
/// stays open); the id is free again at once.
#[tokio::test]
async fn a_validation_failure_is_an_error_message_not_a_close() {
    let addr = start(limits(100)).await;
    let mut client = Client::acked(addr, Value::Null).await;
    client.subscribe("v", "{ nosuchfield }").await;
    let errors = client.error_for("v").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("nosuchfield"), "{message}");
    assert!(errors[0]["locations"].is_array(), "{errors:?}");
    client.hello("v", "nobody").await;
}

/// Complete from the client stops the operation: its stream is dropped and its node permit
/// released; nothing more is sent for it, and the id can be used again.
#[tokio::test]
async fn complete_from_the_client_stops_the_operation() {
    let limits = limits(100);
    let addr = start(limits.clone()).await;
    let mut client = Client::acked(addr, Value::Null).await;
    client.subscribe("c", "subscription { silent }").await;
    permits_back(&limits, 99).await;
    client.send(json!({"id": "c", "type": "complete"})).await;
    permits_back(&limits, 100).await;
    // An unknown id is ignored, per spec.
    client
        .send(json!({"id": "never", "type": "complete"}))
        .await;
    client.still_open().await;
    client.subscribe("c", "subscription { count(to: 1) }").await;
    assert_eq!(client.next().await, next("c", json!({"count": 0})));
    assert_eq!(client.next().await, complete("c"));
}

/// At the token deadline from `on_init` the socket closes with 4403 and every operation ends.
#[tokio::test]
async fn the_token_deadline_closes_4403_and_ends_every_operation() {
    let limits = limits(100);
    let addr = start(limits.clone()).await;
    let mut client = Client::acked(addr, json!({"expires_in_ms": 1000})).await;
    client.subscribe("a", "subscription { silent }").await;
    client.subscribe("b", "subscription { silent }").await;
    permits_back(&limits, 98).await;
    assert_eq!(client.closed_with(4403).await, "Forbidden: token expired");
    permits_back(&limits, 100).await;
}

#[tokio::test]
async fn a_client_without_the_subprotocol_is_closed_4406() {
    let addr = start(limits(100)).await;
    let mut client = Client::connect_with(addr, None).await;
    assert_eq!(client.closed_with(4406).await, "Subprotocol not acceptable");
}

// ---- the bounds ----

/// Over `max_per_socket` active operations, a Subscribe gets an Error (not a close) naming
/// the cap; once one ends, a new one is accepted.
#[tokio::test]
async fn the_per_socket_cap_refuses_with_an_error_message() {
    let mut limits = limits(100);
    limits.max_per_socket = 2;
    let addr = start(limits).await;
    let mut client = Client::acked(addr, Value::Null).await;
    client.subscribe("1", "subscription { silent }").await;
    client.subscribe("2", "subscription { silent }").await;
    client.subscribe("3", "subscription { silent }").await;
    let errors = client.error_for("3").await;
    assert_eq!(errors[0]["extensions"]["code"], "RESOURCE_EXHAUSTED");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("the limit is 2"), "{message}");
    client.still_open().await;
    client.send(json!({"id": "1", "type": "complete"})).await;
    client.hello("3", "nobody").await;
}

/// The node's semaphore is shared by sockets: with one permit, a second socket's Subscribe is
/// refused with an Error until the first operation ends, and the permit comes back.
#[tokio::test]
async fn the_per_node_permits_are_taken_per_operation_and_released() {
    let limits = limits(1);
    let addr = start(limits.clone()).await;
    let mut first = Client::acked(addr, Value::Null).await;
    let mut second = Client::acked(addr, Value::Null).await;
    first.subscribe("a", "subscription { silent }").await;
    permits_back(&limits, 0).await;
    second.subscribe("b", "{ hello }").await;
    let errors = second.error_for("b").await;
    assert_eq!(errors[0]["extensions"]["code"], "RESOURCE_EXHAUSTED");
    first.send(json!({"id": "a", "type": "complete"})).await;
    permits_back(&limits, 1).await;
    second.hello("b", "nobody").await;
    permits_back(&limits, 1).await;
    drop(first);
}

/// A stream emitting as fast as it can and a slow periodic one on the same socket: both
/// deliver, each in order, and the slow one completes while the fast one is still going.
#[tokio::test]
async fn a_busy_stream_does_not_starve_a_slow_one() {
    let limits = limits(100);
    let addr = start(limits.clone()).await;
    let mut client = Client::acked(addr, Value::Null).await;
    client.subscribe("fast", "subscription { forever }").await;
    client
        .subscribe("slow", "subscription { ticks(n: 10, everyMs: 20) }")
        .await;
    let (mut fast, mut slow) = (0i64, 0i64);
    loop {
        let Got::Json(message) = client.next().await else {
            panic!("the socket ended")
        };
        match (message["id"].as_str(), message["type"].as_str()) {
            (Some("fast"), Some("next")) => {
                assert_eq!(message["payload"]["data"]["forever"], fast, "fast in order");
                fast += 1;
            }
            (Some("slow"), Some("next")) => {
                assert_eq!(message["payload"]["data"]["ticks"], slow, "slow in order");
                slow += 1;
            }
            (Some("slow"), Some("complete")) => break,
            _ => panic!("unexpected {message}"),
        }
    }
    assert_eq!(slow, 10);
    assert!(fast > 0, "the fast stream delivered too");
    println!("fast stream: {fast} messages while the slow one sent 10");
    client.send(json!({"id": "fast", "type": "complete"})).await;
    permits_back(&limits, 100).await;
}

/// A client that does not read: the operation's queue fills, stays full for `lag_grace`, and
/// the server gives up on it (its permit comes back while the client still reads nothing).
/// When the client reads at last: the Next messages it got are in order without a gap, then
/// an Error with `extensions.code` LAGGING, then the close 4499.
#[tokio::test]
async fn a_client_that_does_not_read_is_told_it_lags_and_closed_4499() {
    let mut limits = limits(100);
    limits.buffer_per_subscription = 4;
    limits.lag_grace = Duration::from_millis(200);
    let addr = start(limits.clone()).await;
    let mut client = Client::acked(addr, Value::Null).await;
    client.subscribe("f", "subscription { forever }").await;
    permits_back(&limits, 99).await;
    permits_back(&limits, 100).await;
    let mut expected = 0i64;
    let error = loop {
        let Got::Json(message) = client.next().await else {
            panic!("the socket ended before the LAGGING error")
        };
        assert_eq!(message["id"], "f");
        if message["type"] == "error" {
            break message;
        }
        assert_eq!(message["payload"]["data"]["forever"], expected);
        expected += 1;
    };
    assert_eq!(error["payload"][0]["extensions"]["code"], "LAGGING");
    assert_eq!(client.closed_with(4499).await, "Client too slow");
    println!("the client had {expected} messages in flight when it was cut off");
}
