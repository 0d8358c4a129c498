//! Tokens on the GraphQL API of a real node with authentication on: the `Authorization`
//! header over HTTP, the `connection_init` payload over WebSocket, each resolver's scope
//! check, and a subscription closed when its token expires. Printed as a table (case →
//! expected → got); every refused case also shows that nothing was answered.

mod common;
#[path = "ws_client/mod.rs"]
mod ws_client;

use std::net::SocketAddr;

use aetherops::proto::aetherops::v1 as pb;
use common::tokens::{claims, flip_payload_byte, now, with, TrustedKeys, LEEWAY_SECS, NODE_AUD};
use common::*;
use serde_json::{json, Value};
use ws_client::{Client, Got};

async fn post(node: &TestNode, auth: Option<&str>, query: &str) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/graphql", node.http_addr))
        .json(&json!({ "query": query }));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.expect("POST /graphql");
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, challenge, r.json().await.expect("a JSON body"))
}

fn code(body: &Value) -> String {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("ok")
        .to_owned()
}

fn scoped(role: &str, key: &str, prefixes: &[&str]) -> Value {
    with(claims(role), key, json!(prefixes))
}

async fn auth_node(keys: &TrustedKeys, tmp: &std::path::Path) -> TestNode {
    let config = format!(
        "{}\n[graphql]\nws_init_timeout_ms = 700\n",
        keys.auth_toml(tmp)
    );
    let node = NodeBuilder::dev().config(&config).start();
    node.wait_leader_as(Some(&keys.role("admin"))).await;
    node
}

async fn ingest_as(node: &TestNode, token: &str, series: &str) {
    let mut c = pb::telemetry_client::TelemetryClient::new(node.channel().await);
    let t = (now() as i64 - 3600) * 1_000_000_000;
    let batch = pb::IngestBatch {
        series: vec![pb::SeriesPoints {
            series: series.into(),
            timestamps_ns: (0..100).map(|i| t + i * 1_000_000_000).collect(),
            values: (0..100).map(|i| i as f64).collect(),
        }],
    };
    c.ingest(common::tokens::bearer(
        tokio_stream::iter(vec![batch]),
        Some(token),
    ))
    .await
    .expect("ingest");
}

fn summary_of(series: &str) -> String {
    let end = now() + 60;
    let start = end - 7200;
    let at = |s: u64| jiff::Timestamp::from_second(s as i64).unwrap().to_string();
    format!(
        r#"{{ telemetry(series: "{series}", range: {{start: "{}", end: "{}"}}) {{ summary {{ count }} }} }}"#,
        at(start),
        at(end)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_over_http_and_scopes_per_resolver() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = TrustedKeys::generate();
    let node = auth_node(&keys, tmp.path()).await;
    let writer = keys.role("writer");
    ingest_as(&node, &writer, "sat-7/v").await;
    ingest_as(&node, &writer, "sat-8/v").await;

    let sat7 = summary_of("sat-7/v");
    let sat8 = summary_of("sat-8/v");
    let bearer = |t: &str| format!("Bearer {t}");
    let reader = keys.role("reader");
    let sat7_reader = keys.hs(&scoped("reader", "series", &["sat-7/"]));
    let expired = keys.hs(&with(
        claims("reader"),
        "exp",
        json!(now() - LEEWAY_SECS - 60),
    ));
    let node_plane = keys.hs(&with(claims("reader"), "aud", json!(NODE_AUD)));
    let cases: Vec<(&str, Option<String>, &str, u16, &str)> = vec![
        ("no token", None, &sat7, 401, "UNAUTHENTICATED"),
        (
            "not a bearer header",
            Some("Basic dXNlcg==".into()),
            &sat7,
            401,
            "UNAUTHENTICATED",
        ),
        (
            "one payload byte flipped",
            Some(bearer(&flip_payload_byte(&reader))),
            &sat7,
            401,
            "UNAUTHENTICATED",
        ),
        (
            "expired beyond the leeway",
            Some(bearer(&expired)),
            &sat7,
            401,
            "UNAUTHENTICATED",
        ),
        (
            "a node-plane token",
            Some(bearer(&node_plane)),
            &sat7,
            401,
            "UNAUTHENTICATED",
        ),
        ("reader", Some(bearer(&reader)), &sat7, 200, "ok"),
        (
            "reader scoped to sat-7/, on sat-7",
            Some(bearer(&sat7_reader)),
            &sat7,
            200,
            "ok",
        ),
        (
            "reader scoped to sat-7/, on sat-8",
            Some(bearer(&sat7_reader)),
            &sat8,
            200,
            "FORBIDDEN",
        ),
    ];
    println!("{:<38} {:>9} {:>9}", "case", "expected", "got");
    for (name, auth, query, status, expected) in cases {
        let (got_status, challenge, body) = post(&node, auth.as_deref(), query).await;
        let got = code(&body);
        println!("{name:<38} {status} {expected:<16} {got_status} {got}");
        assert_eq!(
            (got_status, got.as_str()),
            (status, expected),
            "{name}: {body:#}"
        );
        if status == 401 {
            assert_eq!(challenge.as_deref(), Some("Bearer"), "{name}");
        }
        if expected == "ok" {
            assert_eq!(body["data"]["telemetry"]["summary"]["count"], 100, "{name}");
        } else {
            assert!(
                body["data"].is_null() || body["data"]["telemetry"].is_null(),
                "{name}: nothing answered: {body:#}"
            );
            let msg = body["errors"][0]["message"].as_str().unwrap();
            // Which part of a signature failed is never said.
            assert!(
                !msg.contains("signature") || msg.ends_with("invalid signature"),
                "{msg}"
            );
        }
    }
    // One operation touching both series: the part out of scope is refused, the rest is
    // answered (a partial GraphQL response), never the other way round.
    let both = format!(
        "{{ a: {} b: {} }}",
        &sat7[2..sat7.len() - 2],
        &sat8[2..sat8.len() - 2]
    );
    let (_, _, body) = post(&node, Some(&bearer(&sat7_reader)), &both).await;
    assert_eq!(body["data"]["a"]["summary"]["count"], 100, "{body:#}");
    assert!(body["data"]["b"].is_null(), "{body:#}");
    assert_eq!(code(&body), "FORBIDDEN");
    // A correlation over sat-7/* and sat-8/* needs both: refused whole for the sat-7/
    // reader (nothing of sat-7 is answered either), answered for a reader of both.
    let end = now() + 60;
    let at = |s: u64| jiff::Timestamp::from_second(s as i64).unwrap().to_string();
    let corr = format!(
        r#"{{ correlate(series: ["sat-7/v", "sat-8/v"], range: {{start: "{}", end: "{}"}}, tolerance: "1s") {{ rowsTotal pairs {{ pearson }} }} }}"#,
        at(end - 7200),
        at(end)
    );
    let (_, _, body) = post(&node, Some(&bearer(&sat7_reader)), &corr).await;
    assert_eq!(code(&body), "FORBIDDEN", "{body:#}");
    assert!(body["data"].is_null(), "{body:#}");
    let both_reader = keys.hs(&scoped("reader", "series", &["sat-7/", "sat-8/"]));
    let (_, _, body) = post(&node, Some(&bearer(&both_reader)), &corr).await;
    assert_eq!(body["data"]["correlate"]["rowsTotal"], 100, "{body:#}");
    println!(
        "{:<38} {:>9} {:>9}",
        "correlate sat-7 × sat-8, sat-7/ reader", "FORBIDDEN", "FORBIDDEN"
    );
}

async fn ws(node: &TestNode) -> Client {
    Client::connect(node.http_addr.parse::<SocketAddr>().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_init_carries_the_token_and_a_subscription_ends_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = TrustedKeys::generate();
    let node = auth_node(&keys, tmp.path()).await;
    let writer = keys.role("writer");
    let reader = keys.role("reader");
    let sub = r#"subscription { events(stream: "orders-1") { version type payload } }"#;

    println!("{:<40} {:>10} {:>10}", "websocket case", "expected", "got");
    let report = |name: &str, expected: u16, got: &Got| {
        let g = match got {
            Got::Closed(code, _) => code.to_string(),
            other => format!("{other:?}"),
        };
        println!("{name:<40} {expected:>10} {g:>10}");
    };
    // Subscribe before connection_init: 4401.
    let mut c = ws(&node).await;
    c.subscribe("1", sub).await;
    let got = c.next().await;
    report("subscribe before connection_init", 4401, &got);
    assert!(matches!(got, Got::Closed(4401, _)), "{got:?}");
    // A bad token in connection_init: 4403, with the reason.
    for (name, payload) in [
        ("init without a token", json!({})),
        (
            "init with a flipped token",
            json!({"Authorization": format!("Bearer {}", flip_payload_byte(&reader))}),
        ),
        (
            "init with a token that is not a string",
            json!({"token": 7}),
        ),
    ] {
        let mut c = ws(&node).await;
        c.send(json!({"type": "connection_init", "payload": payload}))
            .await;
        let got = c.next().await;
        report(name, 4403, &got);
        assert!(
            matches!(&got, Got::Closed(4403, r) if !r.is_empty()),
            "{name}: {got:?}"
        );
    }
    // Silence: 4408 after ws_init_timeout_ms.
    let mut c = ws(&node).await;
    let got = c.next().await;
    report("no connection_init at all", 4408, &got);
    assert!(matches!(got, Got::Closed(4408, _)), "{got:?}");

    // A reader's subscription delivers what a writer appends, until the token expires (here
    // inside the leeway, 9-10 s left: `now()` is whole seconds): then the socket closes 4403
    // saying so. The event must arrive before that deadline, so the window is wide enough
    // for a loaded machine (with 2-3 s, the close once came first in CI).
    let short = keys.hs(&with(
        claims("reader"),
        "exp",
        json!(now() + 10 - LEEWAY_SECS),
    ));
    let mut c = ws(&node).await;
    c.send(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {short}")}}),
    )
    .await;
    assert_eq!(c.next().await, Got::Json(json!({"type": "connection_ack"})));
    c.subscribe("s", sub).await;
    let mut es = node.client().await;
    es.append(common::tokens::bearer(
        append_req("orders-1", None, vec![new_event("Placed", "{\"n\":1}")]),
        Some(&writer),
    ))
    .await
    .expect("append");
    let got = match c.next().await {
        Got::Json(got) => got,
        other => panic!("expected the event, got {other:?}"),
    };
    assert_eq!(
        (&got["id"], &got["type"]),
        (&json!("s"), &json!("next")),
        "{got}"
    );
    assert_eq!(
        got["payload"]["data"],
        json!({"events": {"version": 0, "type": "Placed", "payload": "{\"n\":1}"}})
    );
    let opened = std::time::Instant::now();
    let got = c.next().await;
    report("subscription outliving its token", 4403, &got);
    match got {
        Got::Closed(4403, reason) => assert!(reason.contains("expired"), "{reason}"),
        other => panic!("expected 4403 at expiry, got {other:?}"),
    }
    println!(
        "closed {:.1} s after the first event",
        opened.elapsed().as_secs_f64()
    );
}
