//! The attack matrix against real nodes (issue 12, "Shown by"): `aetherd` processes with
//! `[auth]` on, attacked over real gRPC (raw tonic clients, an `authorization` header) and
//! real HTTP. Each case is a request, the status it must get, the status it got, and a
//! read-back with an admin token proving that a refused request wrote nothing (stream
//! version, series points, membership, event count) — printed as a table.
//!
//! Not here yet: raft.v1 with client tokens (node-plane tokens are not in this version) and
//! GraphQL/WebSocket (issue 13).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aetherops::proto::aetherops::v1 as pb;
use aetherops::proto::aetherops::v1::admin_client::AdminClient;
use aetherops::proto::aetherops::v1::event_store_client::EventStoreClient;
use aetherops::proto::aetherops::v1::telemetry_client::TelemetryClient;
use common::cluster::TestCluster;
use common::tokens::*;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use tonic::Code;

/// What a case asks the node to do.
#[derive(Clone, Copy)]
enum Call {
    Append(&'static str),
    Ingest(&'static str),
    /// An ingest stream whose one batch names no series.
    IngestEmpty,
    ReadAll,
    RemoveNode(u64),
    AddLearner(u64),
    /// HTTP GET of a path, with the token as `Authorization: Bearer`.
    Http(&'static str),
}

/// What a refused case must not have changed, read back with an admin token.
#[derive(Debug, PartialEq, Eq)]
enum ReadBack {
    /// A stream's last version.
    Stream(Option<u64>),
    /// A series' point count.
    Series(u64),
    /// Voter and learner ids.
    Membership(BTreeSet<u64>, BTreeSet<u64>),
    /// Events in the store.
    Events(u64),
    /// The last index of the Raft log (an idle single node writes nothing by itself).
    LastLog(Option<u64>),
}

/// One row: the case, the token (`None`: no header), the call, and what it must get.
struct Case {
    name: String,
    token: Option<String>,
    call: Call,
    expected: Expect,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Grpc(Code),
    Http(u16),
}

impl Expect {
    fn show(self) -> String {
        match self {
            Expect::Grpc(c) => code_name(c),
            Expect::Http(c) => format!("HTTP {c}"),
        }
    }

    /// Whether the call is to succeed (and, if it writes, write).
    fn accepted(self) -> bool {
        matches!(self, Expect::Grpc(Code::Ok) | Expect::Http(200))
    }
}

fn code_name(c: Code) -> String {
    format!("{c:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, ch)| {
            let sep = (i > 0 && ch.is_ascii_uppercase()).then_some('_');
            sep.into_iter()
                .chain(std::iter::once(ch.to_ascii_uppercase()))
        })
        .collect()
}

/// What a case got.
struct Got {
    outcome: Expect,
    message: String,
    /// `WWW-Authenticate` of an HTTP answer.
    challenge: Option<String>,
    written: bool,
}

fn case(name: impl Into<String>, token: Option<String>, call: Call, expected: Expect) -> Case {
    Case {
        name: name.into(),
        token,
        call,
        expected,
    }
}

const HOUR_NS: i64 = 3_600_000_000_000;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i64
}

/// Where a matrix runs: the node attacked, and the leader the read-backs ask (with an admin
/// token, linearizably).
struct Target<'a> {
    attacked: &'a TestNode,
    leader: &'a TestNode,
    admin_token: String,
}

impl Target<'_> {
    async fn attempt(&self, call: Call, token: Option<&str>) -> Got {
        let before = self.read_back(call).await;
        let (outcome, message, challenge) = match call {
            Call::Http(path) => {
                let auth = token.map(|t| format!("Bearer {t}"));
                let headers: Vec<(&str, &str)> =
                    auth.iter().map(|a| ("Authorization", a.as_str())).collect();
                let r = http_get_with(&self.attacked.http_addr, path, &headers).await;
                let challenge = r.header("www-authenticate").map(str::to_owned);
                (Expect::Http(r.code), r.body, challenge)
            }
            _ => {
                // A fresh connection per case: a refusal at the HTTP/2 layer (a header over
                // the peer's limit) may close the connection it came on.
                let ch = self.attacked.channel().await;
                match grpc(ch, call, token).await {
                    Ok(()) => (Expect::Grpc(Code::Ok), String::new(), None),
                    Err(s) => (Expect::Grpc(s.code()), s.message().to_owned(), None),
                }
            }
        };
        let after = self.read_back(call).await;
        Got {
            outcome,
            message,
            challenge,
            written: before != after,
        }
    }

    /// The state `call` could change, read with the admin token on the leader
    /// (linearizable reads).
    async fn read_back(&self, call: Call) -> ReadBack {
        let t = Some(self.admin_token.as_str());
        let ch = self.leader.channel().await;
        match call {
            Call::Append(stream) => {
                let r = EventStoreClient::new(ch)
                    .read_stream(bearer(
                        pb::ReadStreamRequest {
                            stream: stream.into(),
                            from_version: None,
                            backwards: true,
                            limit: 1,
                            consistency: pb::Consistency::Linearizable as i32,
                        },
                        t,
                    ))
                    .await;
                match r {
                    Ok(r) => ReadBack::Stream(r.into_inner().last),
                    Err(s) if s.code() == Code::NotFound => ReadBack::Stream(None),
                    Err(s) => panic!("read back {stream}: {s:?}"),
                }
            }
            Call::Ingest(series) => ReadBack::Series(series_points(ch, series, t).await),
            Call::IngestEmpty => {
                let s = status_as(&mut AdminClient::new(ch), &self.admin_token)
                    .await
                    .expect("status as admin");
                ReadBack::LastLog(s.last_log_index)
            }
            Call::RemoveNode(_) | Call::AddLearner(_) => {
                let s = status_as(&mut AdminClient::new(ch), &self.admin_token)
                    .await
                    .expect("status as admin");
                let ids = |m: &[pb::Member]| m.iter().map(|m| m.node_id).collect();
                ReadBack::Membership(ids(&s.voters), ids(&s.learners))
            }
            Call::ReadAll | Call::Http(_) => {
                let r = EventStoreClient::new(ch)
                    .read_all(bearer(
                        pb::ReadAllRequest {
                            from_position: None,
                            backwards: true,
                            limit: 1,
                            consistency: pb::Consistency::Linearizable as i32,
                        },
                        t,
                    ))
                    .await
                    .expect("read $all as admin")
                    .into_inner();
                ReadBack::Events(r.last.map_or(0, |l| l + 1))
            }
        }
    }
}

/// Points stored in `series` (0 if it does not exist).
async fn series_points(ch: TestChannel, series: &str, token: Option<&str>) -> u64 {
    let q = pb::TelemetryQuery {
        series: series.into(),
        // The hour around now: the cases ingest one point at the current time.
        start_ns: now_ns() - HOUR_NS,
        end_ns: now_ns() + HOUR_NS,
        bucket_ns: 0,
        target_points: 1,
        tier: "raw".into(),
        anomaly_z: 0.0,
        m4_width: 0,
        median: false,
        percentiles: vec![],
        consistency: pb::Consistency::Linearizable as i32,
        ..Default::default()
    };
    let mut stream = match TelemetryClient::new(ch).query(bearer(q, token)).await {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == Code::NotFound => return 0,
        Err(s) => panic!("query {series}: {s:?}"),
    };
    let mut count = 0;
    while let Some(chunk) = stream.message().await.expect("query chunk") {
        if let Some(summary) = chunk.summary {
            count = summary.count;
        }
    }
    count
}

/// One gRPC call of a case.
async fn grpc(ch: TestChannel, call: Call, token: Option<&str>) -> Result<(), tonic::Status> {
    match call {
        Call::Append(stream) => {
            let req = append_req(stream, None, vec![new_event("Attempted", "{}")]);
            EventStoreClient::new(ch)
                .append(bearer(req, token))
                .await
                .map(drop)
        }
        Call::Ingest(_) | Call::IngestEmpty => {
            let series = match call {
                Call::Ingest(series) => vec![pb::SeriesPoints {
                    series: series.into(),
                    timestamps_ns: vec![now_ns()],
                    values: vec![1.5],
                }],
                _ => Vec::new(),
            };
            let batch = pb::IngestBatch { series };
            TelemetryClient::new(ch)
                .ingest(bearer(tokio_stream::iter(vec![batch]), token))
                .await
                .map(drop)
        }
        Call::ReadAll => {
            let req = pb::ReadAllRequest {
                from_position: Some(0),
                backwards: false,
                limit: 10,
                consistency: pb::Consistency::Linearizable as i32,
            };
            EventStoreClient::new(ch)
                .read_all(bearer(req, token))
                .await
                .map(drop)
        }
        Call::RemoveNode(id) => AdminClient::new(ch)
            .remove_node(bearer(pb::RemoveNodeRequest { node_id: id }, token))
            .await
            .map(drop),
        Call::AddLearner(id) => {
            let member = pb::Member {
                node_id: id,
                grpc_addr: "127.0.0.1:9".into(),
                http_addr: "127.0.0.1:9".into(),
                incarnation: "attacker".into(),
            };
            let req = pb::AddLearnerRequest {
                member: Some(member),
                blocking: false,
            };
            AdminClient::new(ch)
                .add_learner(bearer(req, token))
                .await
                .map(drop)
        }
        Call::Http(_) => unreachable!("HTTP cases are not gRPC calls"),
    }
}

/// Runs every case, prints the table, and fails naming each row that got another status
/// or whose write (or absence of one) was not as it must be. Returns what each case got.
async fn run_matrix(title: &str, target: &Target<'_>, cases: &[Case]) -> Vec<Got> {
    let mut got = Vec::new();
    for c in cases {
        got.push(target.attempt(c.call, c.token.as_deref()).await);
    }
    println!(
        "\n{title}\n{:<58} {:<20} {:<20} {:<8} message",
        "case", "expected", "got", "written"
    );
    let mut failures = Vec::new();
    for (c, g) in cases.iter().zip(&got) {
        let writes = !matches!(c.call, Call::ReadAll | Call::Http(_));
        let must_write = writes && c.expected.accepted();
        let ok = g.outcome == c.expected && g.written == must_write;
        let mut message: String = g.message.chars().take(90).collect();
        message = message.replace('\n', " ");
        println!(
            "{:<58} {:<20} {:<20} {:<8} {message}{}",
            c.name,
            c.expected.show(),
            g.outcome.show(),
            if g.written { "yes" } else { "no" },
            if ok { "" } else { "   <-- WRONG" }
        );
        if !ok {
            failures.push(format!(
                "{}: expected {} (written: {must_write}), got {} (written: {}): {}",
                c.name,
                c.expected.show(),
                g.outcome.show(),
                g.written,
                g.message
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    got
}

/// A single node with an HS256 key ("dev") and an RS256 key ("rs"), attacked on every
/// entry point it has: tokens forged, spoiled or misplaced; roles and scopes overstepped;
/// `/metrics` and `/healthz` over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_matrix_on_a_node_with_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = TrustedKeys::generate();
    let attacker = RsaKey::generate();
    let node = NodeBuilder::dev()
        .config(&keys.auth_toml(tmp.path()))
        .start();
    let admin = keys.role("admin");
    node.wait_leader_as(Some(&admin)).await;
    let target = Target {
        attacked: &node,
        leader: &node,
        admin_token: admin.clone(),
    };

    use Call::*;
    let now = now();
    let writer = claims("writer");
    let good_rs = keys.rs_with_header(&json!({}), &writer);
    let parts: Vec<&str> = good_rs.split('.').collect();
    let spoiled = |key: &str, v: serde_json::Value| keys.hs(&with(writer.clone(), key, v));
    let kid = |k: &str| keys.rs_with_header(&json!({ "kid": k }), &writer);
    let by_attacker = |extra: serde_json::Value| {
        sign(
            &merged(json!({"alg": "RS256", "typ": "JWT", "kid": RS_KID}), &extra),
            &writer,
            &attacker.signing,
            Algorithm::RS256,
        )
    };
    let other_cluster = sign(
        &json!({"alg": "HS256", "typ": "JWT", "kid": DEV_KID}),
        &writer,
        &EncodingKey::from_secret(b"another cluster's secret, 32+ bytes long"),
        Algorithm::HS256,
    );
    let scoped =
        |claim: &str, prefix: &str| Some(keys.hs(&with(writer.clone(), claim, json!([prefix]))));
    let t = |s: String| Some(s);
    const UNAUTH: Expect = Expect::Grpc(Code::Unauthenticated);
    const DENIED: Expect = Expect::Grpc(Code::PermissionDenied);
    const OK: Expect = Expect::Grpc(Code::Ok);
    let s = "orders-1";
    let cases = vec![
        case(
            "control: writer, HS256 kid dev",
            t(keys.role("writer")),
            Append(s),
            OK,
        ),
        case(
            "control: writer, RS256 kid rs",
            t(good_rs.clone()),
            Append(s),
            OK,
        ),
        case("no token", None, Append(s), UNAUTH),
        case(
            "4 segments",
            t(format!("{good_rs}.AAAA")),
            Append(s),
            UNAUTH,
        ),
        case(
            "padding = on the header",
            t(format!("{}=.{}.{}", parts[0], parts[1], parts[2])),
            Append(s),
            UNAUTH,
        ),
        case(
            "padding = on the payload",
            t(format!("{}.{}=.{}", parts[0], parts[1], parts[2])),
            Append(s),
            UNAUTH,
        ),
        case(
            "bad base64 in the header",
            t(format!("e30!*.{}.{}", parts[1], parts[2])),
            Append(s),
            UNAUTH,
        ),
        case(
            "alg none, empty signature",
            t(unsigned("none", &writer)),
            Append(s),
            UNAUTH,
        ),
        case(
            "alg None, empty signature",
            t(unsigned("None", &writer)),
            Append(s),
            UNAUTH,
        ),
        case(
            "alg NONE, empty signature",
            t(unsigned("NONE", &writer)),
            Append(s),
            UNAUTH,
        ),
        case(
            "HS256 keyed with the RSA public PEM, kid rs",
            t(sign(
                &json!({"alg": "HS256", "typ": "JWT", "kid": RS_KID}),
                &writer,
                &EncodingKey::from_secret(keys.rs.public_pem.as_bytes()),
                Algorithm::HS256,
            )),
            Append(s),
            UNAUTH,
        ),
        case(
            "one payload byte flipped",
            t(flip_payload_byte(&good_rs)),
            Append(s),
            UNAUTH,
        ),
        case(
            "expired beyond the leeway (120 s ago)",
            t(spoiled("exp", json!(now - 120))),
            Append(s),
            UNAUTH,
        ),
        case(
            "expired inside the leeway (10 s ago)",
            t(keys.hs(&with(
                with(writer.clone(), "exp", json!(now - 10)),
                "nbf",
                json!(now - 60),
            ))),
            Append(s),
            OK,
        ),
        case(
            "nbf in the future (600 s)",
            t(spoiled("nbf", json!(now + 600))),
            Append(s),
            UNAUTH,
        ),
        case(
            "exp as a string",
            t(spoiled("exp", json!((now + 3600).to_string()))),
            Append(s),
            UNAUTH,
        ),
        case(
            "nbf as a string",
            t(spoiled("nbf", json!(now.to_string()))),
            Append(s),
            UNAUTH,
        ),
        case(
            "exp missing",
            t(keys.hs(&without(writer.clone(), "exp"))),
            Append(s),
            UNAUTH,
        ),
        case(
            "iss wrong",
            t(spoiled("iss", json!("https://evil.test"))),
            Append(s),
            UNAUTH,
        ),
        case(
            "iss missing",
            t(keys.hs(&without(writer.clone(), "iss"))),
            Append(s),
            UNAUTH,
        ),
        case(
            "iss numeric",
            t(spoiled("iss", json!(42))),
            Append(s),
            UNAUTH,
        ),
        case(
            "aud wrong",
            t(spoiled("aud", json!("someone-else"))),
            Append(s),
            UNAUTH,
        ),
        case(
            "aud missing",
            t(keys.hs(&without(writer.clone(), "aud"))),
            Append(s),
            UNAUTH,
        ),
        case(
            "node-plane token (aud node_audience), admin",
            t(keys.hs(&with(claims("admin"), "aud", json!(NODE_AUD)))),
            Append(s),
            UNAUTH,
        ),
        case("unknown kid", t(kid("rs-2")), Append(s), UNAUTH),
        case(
            "kid ../../dev/null",
            t(kid("../../dev/null")),
            Append(s),
            UNAUTH,
        ),
        case(
            "kid of 10 KB",
            t(kid(&"k".repeat(10 * 1024))),
            Append(s),
            UNAUTH,
        ),
        case(
            "jku to an attacker key, signed by it",
            t(by_attacker(
                json!({"jku": "https://attacker.test/jwks.json"}),
            )),
            Append(s),
            UNAUTH,
        ),
        case(
            "x5u to an attacker cert, signed by its key",
            t(by_attacker(
                json!({"x5u": "https://attacker.test/cert.pem"}),
            )),
            Append(s),
            UNAUTH,
        ),
        case(
            "embedded jwk of an attacker key, signed by it",
            t(by_attacker(json!({ "jwk": attacker.jwk() }))),
            Append(s),
            UNAUTH,
        ),
        case(
            "crit present",
            t(keys.rs_with_header(&json!({"crit": ["exp"]}), &writer)),
            Append(s),
            UNAUTH,
        ),
        case(
            "typ JWE",
            t(keys.rs_with_header(&json!({"typ": "JWE"}), &writer)),
            Append(s),
            UNAUTH,
        ),
        // The node's HTTP/2 header list limit admits any token up to the largest
        // auth.max_token_bytes (64 KiB), so the verifier refuses it by its size, before
        // decoding, with the status of every other bad token.
        case(
            "a 64 KiB token (refused by size)",
            t("A".repeat(64 << 10)),
            Append(s),
            UNAUTH,
        ),
        case(
            "another cluster's key, same kid",
            t(other_cluster.clone()),
            Append(s),
            UNAUTH,
        ),
        case(
            "reader appending",
            t(keys.role("reader")),
            Append(s),
            DENIED,
        ),
        case(
            "writer removing a voter (RemoveNode 1)",
            t(keys.role("writer")),
            RemoveNode(1),
            DENIED,
        ),
        case(
            "writer adding a learner (AddLearner 9)",
            t(keys.role("writer")),
            AddLearner(9),
            DENIED,
        ),
        case(
            "series sat-7/ ingesting into sat-8/x",
            scoped("series", "sat-7/"),
            Ingest("sat-8/x"),
            DENIED,
        ),
        // A batch without series named no resource, and once skipped every check (it
        // still appended an entry).
        case(
            "reader ingesting a batch of no series",
            t(keys.role("reader")),
            IngestEmpty,
            DENIED,
        ),
        // `aether/` is the nodes' own (breaker transitions): no client writes there.
        case(
            "writer ingesting into aether/breaker/2",
            t(keys.role("writer")),
            Ingest("aether/breaker/2"),
            Expect::Grpc(Code::InvalidArgument),
        ),
        case(
            "series sat-7/ ingesting into sat-7/x",
            scoped("series", "sat-7/"),
            Ingest("sat-7/x"),
            OK,
        ),
        case(
            "streams orders- appending to payments-1",
            scoped("streams", "orders-"),
            Append("payments-1"),
            DENIED,
        ),
        case(
            "streams orders- reading $all",
            scoped("streams", "orders-"),
            ReadAll,
            DENIED,
        ),
        case(
            "HTTP /metrics, no token",
            None,
            Http("/metrics"),
            Expect::Http(401),
        ),
        case(
            "HTTP /metrics, reader token",
            t(keys.role("reader")),
            Http("/metrics"),
            Expect::Http(200),
        ),
        case(
            "HTTP /metrics, payload byte flipped",
            t(flip_payload_byte(&good_rs)),
            Http("/metrics"),
            Expect::Http(401),
        ),
        case(
            "HTTP /metrics, alg none",
            t(unsigned("none", &claims("reader"))),
            Http("/metrics"),
            Expect::Http(401),
        ),
        case(
            "HTTP /metrics, a 64 KiB token",
            t("A".repeat(64 << 10)),
            Http("/metrics"),
            Expect::Http(401),
        ),
        case(
            "HTTP /healthz, no token",
            None,
            Http("/healthz"),
            Expect::Http(200),
        ),
    ];
    let got = run_matrix("attack matrix: one node, [auth] on", &target, &cases).await;
    let by_name = |name: &str| {
        let i = cases.iter().position(|c| c.name == name).expect("a case");
        &got[i]
    };

    // A 401 names the scheme (RFC 6750), so Prometheus and curl know what to send.
    for c in cases.iter().filter(|c| c.expected == Expect::Http(401)) {
        assert_eq!(
            by_name(&c.name).challenge.as_deref(),
            Some("Bearer"),
            "{}",
            c.name
        );
    }
    // A refusal never says which part of a signature failed: a flipped payload byte, another
    // cluster's secret and an attacker's RSA key read the same.
    let flipped = &by_name("one payload byte flipped").message;
    for other in [
        "another cluster's key, same kid",
        "jku to an attacker key, signed by it",
        "embedded jwk of an attacker key, signed by it",
    ] {
        assert_eq!(&by_name(other).message, flipped, "{other}");
    }
    assert_eq!(flipped, "unauthenticated: invalid signature");
    // Nor does any refusal echo the token or its kid.
    for (c, g) in cases.iter().zip(&got) {
        if let Some(token) = &c.token {
            let signature = token.rsplit('.').next().unwrap_or_default();
            assert!(
                signature.len() < 8 || !g.message.contains(signature),
                "{}: the message echoes the signature",
                c.name
            );
        }
        assert!(
            !g.message.contains("dev/null"),
            "{}: echoes the kid",
            c.name
        );
        assert!(
            !g.message.contains("kkkkkkkk"),
            "{}: echoes the kid",
            c.name
        );
    }
}

/// A 3-node cluster with `[auth]` on: a writer's append through a follower is forwarded
/// and lands; a reader's is refused by the follower and lands nowhere; a writer may not
/// change the membership through a follower either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_auth_forwards_a_writer_and_refuses_a_reader() {
    let keys = TrustedKeys::generate();
    let mut c = TestCluster::start_uninitialized(0, &[]).await;
    let toml = format!(
        "[raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 500\n\
         election_timeout_max_ms = 1000\n\n{}",
        keys.auth_toml(c.tmp.path())
    );
    for _ in 0..3 {
        c.spawn_node_with_config(Some(&toml)).await;
    }
    let admin = keys.role("admin");
    let mut members = Vec::new();
    for i in 0..3 {
        let s = status_as(&mut c.nodes[i].admin().await, &admin)
            .await
            .expect("status as admin");
        members.push(pb::Member {
            incarnation: s.incarnation,
            ..c.member(i)
        });
    }
    // Without a token, not even a new cluster can be initialized.
    let refused = c.nodes[0]
        .admin()
        .await
        .init(pb::InitRequest {
            members: members.clone(),
        })
        .await
        .expect_err("init without a token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    c.nodes[0]
        .admin()
        .await
        .init(bearer(pb::InitRequest { members }, Some(&admin)))
        .await
        .expect("init as admin");
    let leader = agreed_leader(&c, &admin).await;
    let follower = (leader + 1) % 3;
    let target = Target {
        attacked: &c.nodes[follower],
        leader: &c.nodes[leader],
        admin_token: admin.clone(),
    };
    use Call::*;
    let cases = vec![
        case(
            "writer appends through a follower",
            Some(keys.role("writer")),
            Append("orders-9"),
            Expect::Grpc(Code::Ok),
        ),
        case(
            "reader appends through a follower",
            Some(keys.role("reader")),
            Append("orders-9"),
            Expect::Grpc(Code::PermissionDenied),
        ),
        case(
            "no token, through a follower",
            None,
            Append("orders-9"),
            Expect::Grpc(Code::Unauthenticated),
        ),
        case(
            "writer removes the leader through a follower",
            Some(keys.role("writer")),
            RemoveNode(c.nodes[leader].id),
            Expect::Grpc(Code::PermissionDenied),
        ),
    ];
    run_matrix("attack matrix: 3-node cluster, [auth] on", &target, &cases).await;
}

/// The leader's index, once every node names the same one (status asked as admin).
async fn agreed_leader(c: &TestCluster, token: &str) -> usize {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut seen = Vec::new();
        for n in &c.nodes {
            if let Ok(s) = status_as(&mut n.admin().await, token).await {
                seen.push((s.role == "leader", s.leader_id, s.term));
            }
        }
        if seen.len() == c.nodes.len() {
            if let Some(at) = seen.iter().position(|s| s.0) {
                let id = c.nodes[at].id;
                if seen.iter().all(|s| s.1 == Some(id) && s.2 == seen[at].2) {
                    return at;
                }
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A subscription ends when its token does (`exp` plus the leeway), with `UNAUTHENTICATED`
/// saying so; until then it delivers. The expired token then opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_ends_when_its_token_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = TrustedKeys::generate();
    let node = NodeBuilder::dev()
        .config(&keys.auth_toml(tmp.path()))
        .start();
    let admin = keys.role("admin");
    node.wait_leader_as(Some(&admin)).await;
    // Accepted (inside the leeway), valid for 9-10 s more (`now()` is whole seconds): time
    // for the first message on a loaded machine, which must come before the end.
    let exp = now() + 10 - LEEWAY_SECS;
    let short = keys.hs(&with(claims("reader"), "exp", json!(exp)));
    let started = Instant::now();
    let mut sub = EventStoreClient::new(node.channel().await)
        .subscribe(bearer(
            pb::SubscribeRequest {
                target: Some(pb::subscribe_request::Target::All(true)),
                from: None,
            },
            Some(&short),
        ))
        .await
        .expect("subscribed before expiry")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), sub.message())
        .await
        .expect("an answer")
        .expect("delivered before expiry");
    assert!(first.is_some(), "caught up before expiry");
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(60), sub.message())
            .await
            .expect("the subscription ends by itself")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without saying why"),
            Err(status) => break status,
        }
    };
    println!(
        "subscription ended after {:?}: {:?} {}",
        started.elapsed(),
        end.code(),
        end.message()
    );
    assert_eq!(end.code(), Code::Unauthenticated);
    assert!(end.message().contains("expired"), "{}", end.message());
    // Past its expiry the same token opens nothing.
    let again = EventStoreClient::new(node.channel().await)
        .subscribe(bearer(
            pb::SubscribeRequest {
                target: Some(pb::subscribe_request::Target::All(true)),
                from: None,
            },
            Some(&short),
        ))
        .await;
    assert_eq!(again.err().map(|s| s.code()), Some(Code::Unauthenticated));
}
