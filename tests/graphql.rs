//! The GraphQL API over real HTTP against real nodes, with a client that shares no code
//! with the server (reqwest and JSON written here): answers equal the gRPC query path's on
//! the same data, exactly; time zones; cost limits (estimated and actual cost printed, the
//! expensive and the alias- or batch-multiplied refused before anything runs); errors with
//! their codes; authentication and scopes.

mod common;

use aetherops::proto::aetherops::v1 as pb;
use aetherops::proto::aetherops::v1::telemetry_client::TelemetryClient;
use common::*;
use serde_json::{json, Value};

const SEC: i64 = 1_000_000_000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;

/// Where the tests' series begin: a whole hour 40 hours ago, so that every tier, raw points
/// included (kept 48 hours by default), still holds them.
fn t0() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    now / HOUR * HOUR - 40 * HOUR
}

fn rfc(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .unwrap()
        .to_string()
}

/// `ns` written with a fixed UTC offset of `minutes`.
fn rfc_at(ns: i64, minutes: i32) -> String {
    let t = jiff::Timestamp::from_nanosecond(i128::from(ns)).unwrap();
    let offset = jiff::tz::Offset::from_seconds(minutes * 60).unwrap();
    t.display_with_offset(offset).to_string()
}

/// POSTs a GraphQL request (a single one or a batch) and returns the status and JSON body.
async fn post(node: &TestNode, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/graphql", node.http_addr))
        .json(body);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.expect("POST /graphql");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, body)
}

async fn gql(node: &TestNode, query: &str, vars: Value) -> Value {
    let (status, body) = post(node, None, &json!({"query": query, "variables": vars})).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The data of a response that must have no errors.
fn data(body: &Value) -> &Value {
    assert!(body.get("errors").is_none(), "unexpected errors: {body:#}");
    &body["data"]
}

/// The `extensions.code` of a response's first error.
fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body:#}"))
}

async fn ingest(node: &TestNode, series: &str, pts: &[(i64, f64)]) {
    let mut c = TelemetryClient::new(node.channel().await);
    let batches: Vec<pb::IngestBatch> = pts
        .chunks(50_000)
        .map(|c| pb::IngestBatch {
            series: vec![pb::SeriesPoints {
                series: series.into(),
                timestamps_ns: c.iter().map(|p| p.0).collect(),
                values: c.iter().map(|p| p.1).collect(),
            }],
        })
        .collect();
    c.ingest(tokio_stream::iter(batches)).await.expect("ingest");
}

/// A battery-voltage-like series: `n` points every `step`, a daily wave, noise, a few spikes.
fn series(n: usize, step: i64, seed: u64) -> Vec<(i64, f64)> {
    let t0 = t0();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.2;
            let t = t0 + i as i64 * step;
            let wave = ((t - t0) as f64 / (24.0 * HOUR as f64) * std::f64::consts::TAU).sin();
            let spike = if i % 9973 == 5000 { 3.0 } else { 0.0 };
            (t, 28.0 + wave + noise + spike)
        })
        .collect()
}

struct GrpcAnswer {
    buckets: Vec<pb::TelemetryBucket>,
    summary: pb::TelemetrySummary,
    anomalies: Vec<pb::TelemetryAnomaly>,
    m4: Vec<pb::M4Column>,
    drift: Vec<pb::TelemetryDrift>,
}

async fn grpc_query(node: &TestNode, q: pb::TelemetryQuery) -> GrpcAnswer {
    let mut c = TelemetryClient::new(node.channel().await);
    let mut s = c.query(q).await.expect("gRPC query").into_inner();
    let mut a = GrpcAnswer {
        buckets: vec![],
        summary: Default::default(),
        anomalies: vec![],
        m4: vec![],
        drift: vec![],
    };
    while let Some(chunk) = s.message().await.expect("chunk") {
        a.buckets.extend(chunk.buckets);
        a.anomalies.extend(chunk.anomalies);
        a.m4.extend(chunk.m4);
        a.drift.extend(chunk.drift);
        if let Some(x) = chunk.summary {
            a.summary = x;
        }
    }
    a
}

fn grpc_spec(series: &str, start: i64, end: i64) -> pb::TelemetryQuery {
    pb::TelemetryQuery {
        series: series.into(),
        start_ns: start,
        end_ns: end,
        bucket_ns: 0,
        target_points: 0,
        tier: String::new(),
        anomaly_z: 0.0,
        m4_width: 0,
        median: false,
        percentiles: vec![],
        consistency: 0,
        ..Default::default()
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_answers_equal_the_grpc_query_path() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    // 36 hours every 10 s: raw points, minute and hour rollups all serve.
    let pts = series(12_960, 10 * SEC, 7);
    ingest(&node, "sat-7/battery", &pts).await;
    let t0 = pts[0].0;
    let (start, end) = (t0 + 7 * MIN + 3 * SEC, t0 + 35 * HOUR + 11 * MIN);

    let body = gql(
        &node,
        r#"query($r: TimeRangeInput!) { telemetry(series: "sat-7/battery", range: $r) {
            series
            buckets(every: "1h", agg: [COUNT, SUM, MEAN, MIN, MAX, FIRST, LAST, VARIANCE, STDDEV]) {
              start end tier count values { fn value } p99: percentile(p: 0.99) }
            summary { count sum mean variance stddev min max median percentile(p: 0.9) percentiles(ps: [0.1, 0.5]) }
            anomalies(method: ZSCORE, threshold: 4) { time value score kind }
            mad: anomalies(method: MAD, threshold: 2.5) { time value score kind }
            drift(window: "PT30M", threshold: 6) { start alarm direction meanBefore meanAfter }
            m4(width: 40) { pixel first { time value } min { time value } max { time value } last { time value } }
        } }"#,
        json!({"r": {"start": rfc(start), "end": rfc(end)}}),
    )
    .await;
    let t = &data(&body)["telemetry"];
    assert_eq!(t["series"], "sat-7/battery");

    let mut q = grpc_spec("sat-7/battery", start, end);
    q.bucket_ns = HOUR;
    q.percentiles = vec![0.99];
    let buckets = grpc_query(&node, q).await.buckets;
    let got = t["buckets"].as_array().unwrap();
    assert_eq!(got.len(), buckets.len());
    assert!(buckets.len() >= 36, "{}", buckets.len());
    for (g, b) in got.iter().zip(&buckets) {
        assert_eq!(g["start"], rfc(b.start_ns.max(start)));
        assert_eq!(g["tier"], b.tier);
        assert_eq!(g["count"].as_u64().unwrap(), b.count);
        let values: Vec<f64> = g["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| f(&v["value"]))
            .collect();
        assert_eq!(
            values,
            aetherops::ctl::telemetry::bucket_aggregates(b),
            "bucket {}",
            g["start"]
        );
        assert_eq!(f(&g["p99"]), b.percentiles[0]);
    }

    let mut q = grpc_spec("sat-7/battery", start, end);
    q.target_points = 1;
    q.percentiles = vec![0.9, 0.1, 0.5];
    q.anomaly_z = 4.0;
    q.m4_width = 40;
    let GrpcAnswer {
        summary: s,
        anomalies,
        m4,
        ..
    } = grpc_query(&node, q).await;
    let sm = &t["summary"];
    assert_eq!(sm["count"].as_u64().unwrap(), s.count);
    assert!(s.notes.is_empty(), "{:?}", s.notes);
    assert_eq!(
        s.count,
        pts.iter().filter(|p| (start..end).contains(&p.0)).count() as u64
    );
    assert_eq!(
        [
            f(&sm["mean"]),
            f(&sm["variance"]),
            f(&sm["stddev"]),
            f(&sm["min"]),
            f(&sm["max"])
        ],
        [s.mean, s.variance, s.stddev, s.min, s.max]
    );
    assert_eq!(f(&sm["percentile"]), s.percentiles[0]);
    assert_eq!(f(&sm["percentiles"][0]), s.percentiles[1]);
    assert_eq!(f(&sm["median"]), s.percentiles[2]);
    assert_eq!(f(&sm["percentiles"][1]), s.percentiles[2]);

    let ga = t["anomalies"].as_array().unwrap();
    assert!(!anomalies.is_empty(), "the spikes are anomalies");
    assert_eq!(ga.len(), anomalies.len());
    for (g, a) in ga.iter().zip(&anomalies) {
        assert_eq!(g["time"], rfc(a.ts_ns));
        assert_eq!((f(&g["value"]), f(&g["score"])), (a.value, a.z));
        assert_eq!(g["kind"], if a.z > 0.0 { "HIGH" } else { "LOW" });
    }
    let mut q = grpc_spec("sat-7/battery", start, end);
    q.target_points = 1;
    q.anomaly_mad = Some(2.5);
    q.drift = Some(pb::DriftRequest {
        window_ns: 30 * MIN,
        threshold: 6.0,
    });
    let GrpcAnswer {
        anomalies: mad,
        drift,
        ..
    } = grpc_query(&node, q).await;
    let gmad = t["mad"].as_array().unwrap();
    assert_eq!(gmad.len(), mad.len());
    for (g, a) in gmad.iter().zip(&mad) {
        assert_eq!(g["time"], rfc(a.ts_ns));
        assert_eq!((f(&g["value"]), f(&g["score"])), (a.value, a.score));
        assert_eq!(g["kind"].as_str().unwrap().to_lowercase(), a.kind);
    }
    let gd = t["drift"].as_array().unwrap();
    assert_eq!(gd.len(), drift.len());
    for (g, d) in gd.iter().zip(&drift) {
        assert_eq!(
            (&g["start"], &g["alarm"]),
            (&json!(rfc(d.start_ns)), &json!(rfc(d.alarm_ns)))
        );
        assert_eq!(g["direction"].as_str().unwrap().to_lowercase(), d.direction);
        assert_eq!(
            (f(&g["meanBefore"]), f(&g["meanAfter"])),
            (d.mean_before, d.mean_after)
        );
    }
    println!(
        "z-score anomalies {}, MAD anomalies {}, drifts {}: equal on both paths",
        anomalies.len(),
        mad.len(),
        drift.len()
    );
    let gm = t["m4"].as_array().unwrap();
    assert_eq!(gm.len(), m4.len());
    for (g, m) in gm.iter().zip(&m4) {
        assert_eq!(g["pixel"].as_u64().unwrap(), u64::from(m.pixel));
        let point = |p: &Value| (p["time"].clone(), f(&p["value"]));
        assert_eq!(point(&g["first"]), (json!(rfc(m.first_ts)), m.first));
        assert_eq!(point(&g["min"]), (json!(rfc(m.min_ts)), m.min));
        assert_eq!(point(&g["max"]), (json!(rfc(m.max_ts)), m.max));
        assert_eq!(point(&g["last"]), (json!(rfc(m.last_ts)), m.last));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instants_in_any_offset_answer_alike_and_times_without_a_zone_are_refused() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let pts = series(3_000, 30 * SEC, 3);
    ingest(&node, "sat-8/temp", &pts).await;
    let t0 = pts[0].0;
    let query = r#"query($s: DateTime!, $e: DateTime!) { telemetry(series: "sat-8/temp", range: {start: $s, end: $e}) {
        range { start end } buckets(every: "PT15M", agg: [MEAN, COUNT]) { start values { value } } summary { count mean } } }"#;
    // t0 + 3:30 → t0 + 17:45 written in UTC, +05:30 and -08:00.
    let (s, e) = (t0 + 3 * HOUR + 30 * MIN, t0 + 17 * HOUR + 45 * MIN);
    let mut answers = Vec::new();
    for minutes in [0, 330, -480] {
        let vars = json!({"s": rfc_at(s, minutes), "e": rfc_at(e, minutes)});
        if minutes == 330 {
            assert!(vars["s"].as_str().unwrap().ends_with("+05:30"), "{vars}");
        }
        let body = gql(&node, query, vars).await;
        answers.push(data(&body).clone());
    }
    assert_eq!(answers[0]["telemetry"]["range"]["start"], rfc(s));
    assert!(
        answers[0]["telemetry"]["summary"]["count"]
            .as_u64()
            .unwrap()
            > 1000
    );
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);

    for bad in ["2026-01-01T03:30:00", "2026-01-01"] {
        let body = gql(&node, query, json!({"s": bad, "e": rfc(e)})).await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{body:#}");
        let msg = body["errors"][0]["message"].as_str().unwrap();
        assert!(msg.contains("no time zone"), "{msg}");
    }
    // Inverted and empty ranges, an unknown zone, a bad duration.
    for (vars, inline) in [
        (json!({"s": rfc(e), "e": rfc(s)}), "inverted"),
        (json!({"s": rfc(s), "e": rfc(s)}), "empty"),
    ] {
        let body = gql(&node, query, vars).await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{inline}: {body:#}");
    }
    let body = gql(
        &node,
        r#"{ telemetry(series: "sat-8/temp", range: {start: "2026-01-01T00:00:00Z", end: "2026-01-02T00:00:00Z", zone: "Mars/Olympus"}) { series } }"#,
        json!({}),
    )
    .await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body:#}");
    let body = gql(
        &node,
        r#"{ telemetry(series: "sat-8/temp", range: {start: "2026-01-01T00:00:00Z", end: "2026-01-02T00:00:00Z"}) { buckets(every: "soon") { start } } }"#,
        json!({}),
    )
    .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not a duration"),
        "{body:#}"
    );
    // A series that does not exist.
    let body = gql(
        &node,
        r#"{ telemetry(series: "sat-9/none", range: {start: "2026-01-01T00:00:00Z", end: "2026-01-02T00:00:00Z"}) { summary { count } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(code(&body), "NOT_FOUND", "{body:#}");
    // Output in a zone carries its offset.
    let body = gql(
        &node,
        r#"query($s: DateTime!, $e: DateTime!) { telemetry(series: "sat-8/temp", range: {start: $s, end: $e, zone: "Asia/Kolkata"}) { range { start end zone } } }"#,
        json!({"s": rfc(s), "e": rfc(e)}),
    )
    .await;
    assert_eq!(
        data(&body)["telemetry"]["range"],
        json!({"start": rfc_at(s, 330), "end": rfc_at(e, 330), "zone": "Asia/Kolkata"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_buckets_in_berlin_follow_its_dst_changes() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    // Keep every tier of dst/ forever, so that points from March and October stay raw.
    let mut c = TelemetryClient::new(node.channel().await);
    c.set_retention(pb::RetentionPolicyRequest {
        prefix: "dst/".into(),
        ..Default::default()
    })
    .await
    .expect("retention");
    let hourly = |from: &str, hours: i64| -> Vec<(i64, f64)> {
        let t = aetherops::api::graphql::scalars::parse_instant(from).unwrap();
        (0..hours)
            .map(|h| (t + h * HOUR + 30 * MIN, h as f64))
            .collect()
    };
    let mut pts = hourly("2026-03-27T00:00:00Z", 5 * 24);
    pts.extend(hourly("2026-10-23T00:00:00Z", 5 * 24));
    ingest(&node, "dst/x", &pts).await;
    let days = |start: &str, end: &str| {
        let query = format!(
            r#"{{ telemetry(series: "dst/x", range: {{start: "{start}", end: "{end}", zone: "Europe/Berlin"}}) {{
                buckets(every: "P1D", agg: [COUNT]) {{ start end count }} }} }}"#
        );
        let node = &node;
        async move {
            let body = gql(node, &query, json!({})).await;
            data(&body)["telemetry"]["buckets"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let hours = |b: &Value| {
        let s =
            aetherops::api::graphql::scalars::parse_instant(b["start"].as_str().unwrap()).unwrap();
        let e =
            aetherops::api::graphql::scalars::parse_instant(b["end"].as_str().unwrap()).unwrap();
        (e - s) / HOUR
    };
    // 28, 29 (spring forward: 23 h) and 30 March, local midnights.
    let spring = days("2026-03-28T00:00:00+01:00", "2026-03-31T00:00:00+02:00").await;
    assert_eq!(
        spring.iter().map(hours).collect::<Vec<_>>(),
        [24, 23, 24],
        "{spring:#?}"
    );
    assert_eq!(
        spring
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [24, 23, 24]
    );
    assert_eq!(spring[1]["start"], "2026-03-29T00:00:00+01:00");
    assert_eq!(spring[2]["start"], "2026-03-30T00:00:00+02:00");
    // 24, 25 (fall back: 25 h) and 26 October.
    let autumn = days("2026-10-24T00:00:00+02:00", "2026-10-27T00:00:00+01:00").await;
    assert_eq!(
        autumn.iter().map(hours).collect::<Vec<_>>(),
        [24, 25, 24],
        "{autumn:#?}"
    );
    assert_eq!(
        autumn
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [24, 25, 24]
    );
    assert_eq!(autumn[1]["end"], "2026-10-26T00:00:00+01:00");
}

/// Bucket lists with a plain selection are answered in one pass (`api::graphql::direct`);
/// a fragment, a directive or a variable argument sends them through the executor. Both
/// give the same answer, field for field and in the same order (a zone's offsets and
/// aliases included), and an invalid percentile is the executor's located error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_lists_answer_alike_with_and_without_the_executor() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    // Points every 10 s for 6 hours with a 2-hour hole: empty buckets in the middle.
    let pts: Vec<(i64, f64)> = series(2160, 10 * SEC, 3)
        .into_iter()
        .filter(|p| !(2 * HOUR..4 * HOUR).contains(&(p.0 - t0())))
        .collect();
    ingest(&node, "direct/x", &pts).await;
    let range =
        json!({"start": rfc(t0() + 7 * SEC), "end": rfc(t0() + 6 * HOUR), "zone": "Asia/Kolkata"});
    let fields = "__typename start end tier count sum mean min max first last variance stddev \
        p99: percentile(p: 0.99) median: percentile(p: 0.5) \
        values { fn value __typename } v: values { value }";
    // The response text as sent (the key order is part of the answer).
    let text = |selection: String| {
        let p = if selection.contains("$p") {
            ", $p: Float! = 0.99"
        } else {
            ""
        };
        let q = format!(
            r#"query($r: TimeRangeInput!{p}) {{ telemetry(series: "direct/x", range: $r) {{
                buckets(every: "PT20M", agg: [COUNT, MEAN, STDDEV, P90, FIRST]) {{ {selection} }} }} }}"#
        );
        let body = json!({"query": q, "variables": {"r": range}});
        let url = format!("http://{}/graphql", node.http_addr);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    let direct = text(fields.to_owned()).await;
    let parsed: Value = serde_json::from_str(&direct).unwrap();
    let buckets = data(&parsed)["telemetry"]["buckets"].as_array().unwrap();
    assert!(buckets.len() >= 12, "{parsed:#}");
    assert!(
        buckets[1]["start"].as_str().unwrap().ends_with("+05:30"),
        "{parsed:#}"
    );
    let first = &direct[direct.find("{\"__typename\":\"Bucket\"").unwrap()..];
    let order = [
        "__typename",
        "start",
        "end",
        "tier",
        "count",
        "mean",
        "min",
        "max",
        "p99",
        "median",
        "values",
        "v",
    ]
    .map(|k| first.find(&format!("\"{k}\":")).unwrap());
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "selection order kept: {first:.300}"
    );
    for through in [
        format!("... on Bucket {{ {fields} }}"),
        fields.replace("tier count", "tier @include(if: true) count"),
        fields.replace("percentile(p: 0.99)", "percentile(p: $p)"),
    ] {
        assert_eq!(
            text(through.clone()).await,
            direct,
            "through the executor: {through}"
        );
    }
    // In a batch, each answer is written as alone (the direct path's text is spliced into
    // the whole batch's response).
    let q = format!(
        r#"query($r: TimeRangeInput!) {{ telemetry(series: "direct/x", range: $r) {{
            buckets(every: "PT20M", agg: [COUNT, MEAN, STDDEV, P90, FIRST]) {{ {fields} }} }} }}"#
    );
    let one = json!({"query": q, "variables": {"r": range}});
    let batch = reqwest::Client::new()
        .post(format!("http://{}/graphql", node.http_addr))
        .json(&json!([one, one]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(batch, format!("[{direct},{direct}]"));
    // Over a WebSocket (no splicing there: the executor answers) the data is the same.
    let mut ws = ws_client::Client::acked(node.http_addr.parse().unwrap(), json!({})).await;
    ws.send(json!({"id": "b", "type": "subscribe", "payload": one}))
        .await;
    match ws.next().await {
        ws_client::Got::Json(m) => assert_eq!(
            (&m["type"], &m["payload"]["data"]),
            (&json!("next"), &parsed["data"]),
            "{m:#}"
        ),
        other => panic!("{other:?}"),
    }
    // A response key selected twice (two fields, two fragments, or two parents) is one
    // key whose selections the executor merges: every bucket has both halves.
    let telemetry = r#"telemetry(series: "direct/x", range: $r)"#;
    let both = |sel: &str| format!("query($r: TimeRangeInput!) {{ {sel} }}");
    let whole = gql(
        &node,
        &both(&format!(
            r#"{telemetry} {{ buckets(every: "PT20M") {{ start end }} }}"#
        )),
        json!({"r": range}),
    )
    .await;
    assert!(
        whole["data"]["telemetry"]["buckets"][1]["end"].is_string(),
        "{whole:#}"
    );
    for sel in [
        format!(
            r#"{telemetry} {{ buckets(every: "PT20M") {{ start }} buckets(every: "PT20M") {{ end }} }}"#
        ),
        format!(r#"{telemetry} {{ ...S ...E }}"#),
        format!(
            r#"{telemetry} {{ buckets(every: "PT20M") {{ start }} }} {telemetry} {{ buckets(every: "PT20M") {{ end }} }}"#
        ),
    ] {
        let fragments = r#"fragment S on Telemetry { buckets(every: "PT20M") { start } }
            fragment E on Telemetry { buckets(every: "PT20M") { end } }"#;
        let q = match sel.contains("...S") {
            true => format!("{} {fragments}", both(&sel)),
            false => both(&sel),
        };
        let got = gql(&node, &q, json!({"r": range})).await;
        assert_eq!(got["data"], whole["data"], "{sel}: {got:#}");
    }
    let bad = gql(
        &node,
        r#"query($r: TimeRangeInput!) { telemetry(series: "direct/x", range: $r) {
            buckets(every: "PT20M") { start percentile(p: 1.5) } } }"#,
        json!({"r": range}),
    )
    .await;
    assert_eq!(code(&bad), "BAD_USER_INPUT", "{bad:#}");
    assert_eq!(
        bad["errors"][0]["path"],
        json!(["telemetry", "buckets", 0, "percentile"]),
        "{bad:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_is_served() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let (status, body) = node.http_get("/graphql").await;
    assert_eq!(status, 200);
    assert!(body.to_lowercase().contains("graphiql"), "{body}");
}

/// The schema query GraphiQL sends when its page loads is answered under the default limits
/// (it was refused on depth, so GraphiQL had no schema: no documentation, no completion),
/// and what it costs is reported like any query's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_schema_query_is_answered_under_the_default_limits() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let q = include_str!("fixtures/graphiql-introspection.graphql");
    let (status, body) = post(
        &node,
        None,
        &json!({"query": q, "operationName": "IntrospectionQuery"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let schema = &data(&body)["__schema"];
    assert_eq!(schema["queryType"]["name"], "Query", "{schema:#}");
    let types = schema["types"].as_array().expect("types");
    let names: Vec<&str> = types.iter().filter_map(|t| t["name"].as_str()).collect();
    for want in ["Query", "Subscription", "__Type", "String"] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    let cost = &body["extensions"]["cost"];
    let requested = cost["requested"].as_u64().expect("requested");
    assert!(requested > 10_000 && requested < 1_000_000, "{cost}");
}

/// The day from `t0` as a range argument.
fn day(t0: i64) -> String {
    format!(
        r#"range: {{start: "{}", end: "{}"}}"#,
        rfc(t0),
        rfc(t0 + 24 * HOUR)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costs_are_computed_before_running_reported_and_enforced() {
    let node = NodeBuilder::dev()
        .config("[graphql]\nmax_cost = 50000\nmax_batch = 20\nmax_aliases = 200\n")
        .start();
    node.wait_leader().await;
    let pts = series(86_400, SEC, 1);
    ingest(&node, "sat-1/x", &pts).await;
    let day = day(pts[0].0);
    // TelemetryQuery behind a token bucket that hardly refills: the tokens left tell how
    // many calls reached the service layer.
    set_limit_when_ready(
        &node,
        pb::LimitPolicy {
            name: "tq".into(),
            methods: vec!["TelemetryQuery".into()],
            key: "shared".into(),
            algorithm: Some(pb::limit_policy::Algorithm::TokenBucket(pb::TokenBucket {
                burst: 1000,
                refill_millis: 1,
            })),
            shadow: false,
        },
    )
    .await;
    let tokens = || async {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let s = node
                .admin()
                .await
                .limit_status(pb::LimitStatusRequest {})
                .await
                .expect("limit status")
                .into_inner();
            if let Some(p) = s.policies.iter().find(|p| p.name == "tq" && p.leased) {
                return p.tokens_left;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "policy never in force: {s:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let one = |field: &str| format!("telemetry(series: \"sat-1/x\", {day}) {{ {field} }}");
    let aliased = |n: usize, field: &str| -> String {
        (0..n).map(|i| format!("a{i}: {} ", one(field))).collect()
    };
    let cases: Vec<(&str, Value, bool)> = vec![
        (
            "summary over a day",
            json!({"query": format!("{{ {} }}", one("summary { mean }"))}),
            true,
        ),
        (
            "1,440 minute buckets × 2 aggs",
            json!({"query": format!("{{ {} }}", one("buckets(every: \"1m\", agg: [MEAN, MAX]) { start }"))}),
            true,
        ),
        (
            "86,400 raw 1 s buckets",
            json!({"query": format!("{{ {} }}", one("buckets(every: \"1s\") { start }"))}),
            false,
        ),
        (
            "24 buckets by target count",
            json!({"query": format!("{{ {} }}", one("points: buckets(points: 24) { count }"))}),
            true,
        ),
        (
            "100 aliases of minute buckets",
            json!({"query": format!("{{ {} }}", aliased(100, "buckets(every: \"1m\") { start }"))}),
            false,
        ),
        (
            "fragment spread 40 times",
            json!({"query": format!("{{ {} }} fragment F on Telemetry {{ buckets(every: \"1m\") {{ start }} }}", (0..40).map(|i| format!("t{i}: telemetry(series: \"sat-1/x\", {day}) {{ ...F }} ")).collect::<String>())}),
            false,
        ),
    ];
    println!(
        "{:<34} {:>10} {:>8} {:>7}  outcome",
        "query", "requested", "actual", "limit"
    );
    for (name, body, ok) in cases {
        let before = tokens().await;
        let (status, r) = post(&node, None, &body).await;
        let spent = before - tokens().await;
        assert_eq!(status, 200, "{r:#}");
        let c = &r["extensions"]["cost"];
        let (requested, actual, limit) = (
            c["requested"].as_u64().unwrap(),
            c["actual"].as_u64().unwrap(),
            c["limit"].as_u64().unwrap(),
        );
        let outcome = r["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or("ok");
        println!(
            "{name:<34} {requested:>10} {actual:>8} {limit:>7}  {outcome} ({spent} service calls)"
        );
        assert_eq!(limit, 50_000);
        if ok {
            data(&r);
            assert!(requested > 0 && actual > 0, "{name}: {c}");
            assert!(spent > 0, "{name}: it ran");
        } else {
            assert_eq!(outcome, "QUERY_TOO_COMPLEX", "{name}: {r:#}");
            assert!(requested > limit, "{name}: {c}");
            assert_eq!((actual, spent), (0, 0), "{name}: nothing ran");
            assert!(r["data"].is_null(), "{name}: {r:#}");
            let msg = r["errors"][0]["message"].as_str().unwrap();
            assert!(
                msg.contains(&requested.to_string())
                    && msg.contains("50000")
                    && msg.contains("buckets"),
                "{name}: {msg}"
            );
        }
    }
    // Batches: 500 cheap queries are over the batch cap; 4 queries of a third of the limit
    // each pass alone but not together.
    let cheap = json!({"query": "{ __typename }"});
    let (_, r) = post(&node, None, &Value::Array(vec![cheap; 500])).await;
    let r = r.as_array().expect("a batch answers with a list");
    assert_eq!(r.len(), 500);
    assert!(
        r.iter().all(|x| code(x) == "QUERY_TOO_COMPLEX"),
        "{:#}",
        r[0]
    );
    let third = json!({"query": format!("{{ {} }}", aliased(6, "buckets(every: \"1m\", agg: [MEAN, MAX]) { start }"))});
    let (_, alone) = post(&node, None, &third).await;
    let cost = alone["extensions"]["cost"]["requested"].as_u64().unwrap();
    assert!(cost * 4 > 50_000 && cost < 50_000, "{cost}");
    data(&alone);
    let (_, r) = post(&node, None, &Value::Array(vec![third; 4])).await;
    let r = r.as_array().unwrap();
    assert!(
        r.iter().all(|x| code(x) == "QUERY_TOO_COMPLEX"),
        "{:#}",
        r[0]
    );
    println!(
        "batch of 4 × {cost}: refused as a whole ({})",
        r[0]["errors"][0]["message"]
    );
    // Counts are looked up for at most 64 distinct series ranges per request or batch: 3
    // requests of 25 distinct ranges each are refused as a whole, and nothing runs.
    let distinct = |k: usize| -> Value {
        let fields: String = (0..25)
            .map(|i| {
                let day = self::day(pts[0].0 + (k * 25 + i) as i64 * SEC);
                format!(r#"s{i}: telemetry(series: "sat-1/x", {day}) {{ summary {{ mean }} }} "#)
            })
            .collect();
        json!({"query": format!("{{ {fields} }}")})
    };
    let (_, alone) = post(&node, None, &distinct(0)).await;
    data(&alone);
    let before = tokens().await;
    let (_, r) = post(&node, None, &json!([distinct(0), distinct(1), distinct(2)])).await;
    let r = r.as_array().unwrap();
    let msg = r[0]["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        r.iter().all(|x| code(x) == "QUERY_TOO_COMPLEX")
            && msg.contains("distinct series ranges 75"),
        "{:#}",
        r[0]
    );
    assert_eq!(before - tokens().await, 0, "nothing ran");
    // The limits in force are what `aetherctl status` shows.
    let out = node.ctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("graphql:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("cost ≤ 50000")
            && line.contains("batch ≤ 20")
            && line.contains("aliases ≤ 200"),
        "{line}"
    );
    // Limits on the query's size and depth.
    let long = json!({"query": format!("{{ __typename {} }}", " ".repeat(20_000))});
    let (_, r) = post(&node, None, &long).await;
    assert_eq!(code(&r), "QUERY_TOO_COMPLEX");
    assert!(r["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_points_and_correlation() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let a = series(2_000, 10 * SEC, 11);
    // b: a's values doubled plus one, 3 s later; c: every third point of a, negated.
    let b: Vec<(i64, f64)> = a
        .iter()
        .map(|&(t, v)| (t + 3 * SEC, 2.0 * v + 1.0))
        .collect();
    let c: Vec<(i64, f64)> = a.iter().step_by(3).map(|&(t, v)| (t, -v)).collect();
    ingest(&node, "corr/a", &a).await;
    ingest(&node, "corr/b", &b).await;
    ingest(&node, "corr/c", &c).await;
    // The range holds b's last point too (a correlation reads only inside its range).
    let (start, end) = (a[0].0, a[a.len() - 1].0 + 4 * SEC);

    // The picker: names in order, extents and counts, paged.
    let body = gql(
        &node,
        r#"{ series(prefix: "corr/", first: 2) { series { name first last count } nextAfter } }"#,
        json!({}),
    )
    .await;
    let p = &data(&body)["series"];
    assert_eq!(
        p["series"][0],
        json!({"name": "corr/a", "first": rfc(a[0].0), "last": rfc(a[1999].0), "count": 2000})
    );
    assert_eq!(p["series"][1]["name"], "corr/b");
    assert_eq!(p["nextAfter"], "corr/b");
    let body = gql(
        &node,
        r#"{ series(prefix: "corr/", after: "corr/b") { series { name count } nextAfter } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        data(&body)["series"]["series"],
        json!([{"name": "corr/c", "count": 667}])
    );

    // Raw points, paged: the pages join up to the series.
    let mut got = Vec::new();
    let mut after = Value::Null;
    loop {
        let body = gql(
            &node,
            r#"query($r: TimeRangeInput!, $after: DateTime) { telemetry(series: "corr/a", range: $r) { points(limit: 700, after: $after) { points { time value } nextAfter } } }"#,
            json!({"r": {"start": rfc(start), "end": rfc(end)}, "after": after}),
        )
        .await;
        let page = &data(&body)["telemetry"]["points"];
        got.extend(
            page["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["time"].as_str().unwrap().to_owned(), f(&p["value"]))),
        );
        after = page["nextAfter"].clone();
        if after.is_null() {
            break;
        }
    }
    let want: Vec<(String, f64)> = a.iter().map(|&(t, v)| (rfc(t), v)).collect();
    assert_eq!(got, want);

    // As-of join: b is found 3 s before (FORWARD within 5 s, not BACKWARD within 2 s); c on
    // every third row; Pearson a~b is 1 and a~c is -1 over the matched rows.
    let q = r#"query($r: TimeRangeInput!, $s: JoinStrategy!, $tol: Duration!) {
        correlate(series: ["corr/a", "corr/b", "corr/c"], range: $r, tolerance: $tol, strategy: $s, limit: 6) {
          rows { time values } pairs { a b matched pearson } rowsTotal nextAfter } }"#;
    let body = gql(
        &node,
        q,
        json!({"r": {"start": rfc(start), "end": rfc(end)}, "s": "FORWARD", "tol": "PT5S"}),
    )
    .await;
    let cr = &data(&body)["correlate"];
    assert_eq!(cr["rowsTotal"], 2000);
    let rows = cr["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["time"], rfc(a[i].0));
        assert_eq!(f(&r["values"][0]), a[i].1);
        assert_eq!(f(&r["values"][1]), b[i].1);
        if i % 3 == 0 {
            assert_eq!(f(&r["values"][2]), -a[i].1);
        } else {
            assert!(r["values"][2].is_null(), "{r}");
        }
    }
    assert_eq!(cr["nextAfter"], rfc(a[5].0));
    let pairs = cr["pairs"].as_array().unwrap();
    let pair = |x: &str, y: &str| {
        pairs
            .iter()
            .find(|p| p["a"] == x && p["b"] == y)
            .unwrap_or_else(|| panic!("{pairs:?}"))
    };
    assert_eq!(pair("corr/a", "corr/b")["matched"], 2000);
    assert!((f(&pair("corr/a", "corr/b")["pearson"]) - 1.0).abs() < 1e-9);
    assert_eq!(pair("corr/a", "corr/c")["matched"], 667);
    assert!((f(&pair("corr/a", "corr/c")["pearson"]) + 1.0).abs() < 1e-9);
    let body = gql(
        &node,
        q,
        json!({"r": {"start": rfc(start), "end": rfc(end)}, "s": "BACKWARD", "tol": "2s"}),
    )
    .await;
    let cr = &data(&body)["correlate"];
    assert_eq!(
        pair_matched(cr, "corr/a", "corr/b"),
        0,
        "b lies 3 s after a: nothing within 2 s before"
    );
    // Bad input is refused with its code.
    for bad in [r#"["corr/a"]"#, r#"["corr/a", "corr/a"]"#] {
        let body = gql(
            &node,
            &format!(r#"query($r: TimeRangeInput!) {{ correlate(series: {bad}, range: $r, tolerance: "1s") {{ rowsTotal }} }}"#),
            json!({"r": {"start": rfc(start), "end": rfc(end)}}),
        )
        .await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{body:#}");
    }
}

fn pair_matched(c: &Value, x: &str, y: &str) -> u64 {
    c["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["a"] == x && p["b"] == y)
        .and_then(|p| p["matched"].as_u64())
        .unwrap_or_else(|| panic!("{c}"))
}

#[path = "ws_client/mod.rs"]
mod ws_client;

/// Reads `telemetryStream` batches from `client` (subscription `id`) until `want` points
/// arrived; returns them with the cursor after each batch.
async fn stream_points(
    client: &mut ws_client::Client,
    id: &str,
    want: usize,
) -> Vec<((String, i64, f64), String)> {
    let mut got = Vec::new();
    while got.len() < want {
        match client.next().await {
            ws_client::Got::Json(m) if m["type"] == "next" && m["id"] == id => {
                let b = &m["payload"]["data"]["telemetryStream"];
                assert!(m["payload"]["errors"].is_null(), "{m}");
                let cursor = b["cursor"].as_str().unwrap().to_owned();
                for p in b["points"].as_array().unwrap() {
                    let t = aetherops::api::graphql::scalars::parse_instant(
                        p["time"].as_str().unwrap(),
                    )
                    .unwrap();
                    got.push((
                        (p["series"].as_str().unwrap().to_owned(), t, f(&p["value"])),
                        cursor.clone(),
                    ));
                }
            }
            other => panic!("expected a batch, got {other:?}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_stream_sends_history_then_live_points_once_and_resumes() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let history = series(100_000, SEC / 10, 5);
    ingest(&node, "live/x", &history).await;
    let from = history[0].0;
    let sub = format!(
        r#"subscription {{ telemetryStream(series: ["live/x"], from: "{}", batchSize: 5000, maxLatency: "PT0.05S") {{ points {{ series time value }} cursor live }} }}"#,
        rfc(from)
    );
    let mut client = ws_client::Client::connect(node.http_addr.parse().unwrap()).await;
    client.send(json!({"type": "connection_init"})).await;
    assert_eq!(
        client.next().await,
        ws_client::Got::Json(json!({"type": "connection_ack"}))
    );
    client.subscribe("t", &sub).await;
    let mut got = stream_points(&mut client, "t", history.len()).await;
    // Live: points committed while the stream runs, some of them older than the newest
    // history point (late), each once, in commit order.
    let last = history[history.len() - 1].0;
    let live: Vec<(i64, f64)> = (0..300)
        .map(|i| {
            (
                if i % 50 == 7 {
                    from + i * SEC + 1
                } else {
                    last + (i + 1) * SEC
                },
                i as f64,
            )
        })
        .collect();
    for chunk in live.chunks(60) {
        ingest(&node, "live/x", chunk).await;
    }
    got.extend(stream_points(&mut client, "t", live.len()).await);
    // An ingest's points are stored sorted by time: commit order is ingest by ingest.
    let committed = live.chunks(60).flat_map(|c| {
        let mut c = c.to_vec();
        c.sort_by_key(|p| p.0);
        c
    });
    let want: Vec<(String, i64, f64)> = history
        .iter()
        .copied()
        .chain(committed)
        .map(|(t, v)| ("live/x".to_owned(), t, v))
        .collect();
    let points: Vec<_> = got.iter().map(|g| g.0.clone()).collect();
    assert_eq!(points.len(), want.len(), "every point once");
    let differ = points.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        differ, None,
        "history in time order, then live in commit order: first difference"
    );
    // Resume from a cursor taken mid-history: the rest, exactly.
    // (Batches need not be full: the cursor of point 42,000's batch resumes after its last.)
    let cursor = got[41_999].1.clone();
    let resume = format!(
        r#"subscription {{ telemetryStream(series: ["live/x"], from: "{}", batchSize: 5000, resume: "{cursor}") {{ points {{ series time value }} cursor }} }}"#,
        rfc(from)
    );
    let last_of_batch = got.iter().rposition(|g| g.1 == cursor).unwrap();
    client.subscribe("r", &resume).await;
    let rest = stream_points(&mut client, "r", want.len() - last_of_batch - 1).await;
    let rest: Vec<_> = rest.into_iter().map(|g| g.0).collect();
    assert_eq!(rest.len(), want.len() - last_of_batch - 1);
    assert!(
        rest == want[last_of_batch + 1..],
        "resumed: nothing missed, nothing repeated"
    );
    // /metrics counts both open streams and at least every point they delivered; once
    // the client completes them, none is open.
    let metric = |body: &str, name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {body}"))
    };
    let (_, body) = node.http_get("/metrics").await;
    assert_eq!(metric(&body, "aether_telemetry_subscribers"), 2, "{body}");
    let sent = metric(&body, "aether_telemetry_stream_points_total");
    assert!(sent >= (points.len() + rest.len()) as u64, "{sent}");
    for id in ["t", "r"] {
        client.send(json!({"id": id, "type": "complete"})).await;
    }
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let (_, body) = node.http_get("/metrics").await;
        if metric(&body, "aether_telemetry_subscribers") == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The node's peak resident memory (`VmHWM`) or its resident memory now (`VmRSS`), in bytes.
fn rss(pid: u32, which: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(which)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {which} in {status}"));
    kb * 1024
}

/// The node's peak resident memory so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    rss(pid, "VmHWM")
}

/// Resets the node's peak resident memory to what it holds now (Linux's `clear_refs` 5),
/// and returns that: the peak of what comes after, without what came before.
fn reset_peak_rss(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
    rss(pid, "VmRSS")
}

/// 2 M historical points then live ingest over one subscription: every point once and in
/// order (checked as they arrive), the live ones (committed while the history still streams)
/// after it in commit order; and the node's peak memory grows by far less than what it sent
/// (a node that gathered the history, or queued it for a client, would grow by more than the
/// ~150 MB of JSON it sends). The peak is reset before the stream starts: the ingest before it
/// peaks on its own, by tens of MB more or less from run to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_stream_of_two_million_points_then_live_once_in_bounded_memory() {
    const N: usize = 2_000_000;
    const LIVE: usize = 20_000;
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let history = series(N, SEC / 100, 11);
    ingest(&node, "big/x", &history).await;
    let last = history[N - 1].0;
    let live: Vec<(i64, f64)> = (0..LIVE as i64)
        .map(|i| (last + (i + 1) * 7 * SEC / 1000, i as f64 * 0.5))
        .collect();
    let want = |i: usize| if i < N { history[i] } else { live[i - N] };

    let pid = node.pid().expect("the node runs as a process");
    let before = reset_peak_rss(pid);
    let mut client = ws_client::Client::connect(node.http_addr.parse().unwrap()).await;
    client.send(json!({"type": "connection_init"})).await;
    assert_eq!(
        client.next().await,
        ws_client::Got::Json(json!({"type": "connection_ack"}))
    );
    let sub = format!(
        r#"subscription {{ telemetryStream(series: ["big/x"], from: "{}", batchSize: 2000, maxLatency: "PT0.05S") {{ points {{ series time value }} cursor }} }}"#,
        rfc(history[0].0)
    );
    client.subscribe("big", &sub).await;
    let (mut got, mut bytes, mut ingesting) = (0usize, 0usize, None);
    while got < N + LIVE {
        // Halfway through the history, live points start committing (in chunks, in order).
        if got >= N / 2 && ingesting.is_none() {
            let mut c = TelemetryClient::new(node.channel().await);
            let live = live.clone();
            ingesting = Some(tokio::spawn(async move {
                for chunk in live.chunks(2000) {
                    c.ingest(tokio_stream::iter([pb::IngestBatch {
                        series: vec![pb::SeriesPoints {
                            series: "big/x".into(),
                            timestamps_ns: chunk.iter().map(|p| p.0).collect(),
                            values: chunk.iter().map(|p| p.1).collect(),
                        }],
                    }]))
                    .await
                    .expect("live ingest");
                }
            }));
        }
        let m = match client.next().await {
            ws_client::Got::Json(m) if m["type"] == "next" && m["id"] == "big" => m,
            other => panic!("expected a batch after {got} points, got {other:?}"),
        };
        bytes += m.to_string().len();
        assert!(m["payload"]["errors"].is_null(), "{m}");
        for p in m["payload"]["data"]["telemetryStream"]["points"]
            .as_array()
            .unwrap()
        {
            let t = aetherops::api::graphql::scalars::parse_instant(p["time"].as_str().unwrap())
                .unwrap();
            assert!(got < N + LIVE, "more points than were written: {p}");
            assert_eq!(
                (p["series"].as_str().unwrap(), t, f(&p["value"])),
                ("big/x", want(got).0, want(got).1),
                "point {got}: every point once, history in time order, then live"
            );
            got += 1;
        }
    }
    ingesting.unwrap().await.unwrap();
    let after = peak_rss(pid);
    let grew = after.saturating_sub(before);
    println!(
        "telemetryStream: {} points ({} MB of messages); node peak RSS {} MB before, {} MB after (+{} MB)",
        got,
        bytes >> 20,
        before >> 20,
        after >> 20,
        grew >> 20
    );
    assert!(
        grew < 120 << 20,
        "the node's peak memory grew by {} MB while streaming {} MB",
        grew >> 20,
        bytes >> 20
    );
}
