//! The `aetherctl` contract scripts rely on: commands, flags, JSON lines, exit codes.

mod common;

use std::process::Output;

use common::cluster::TestCluster;
use common::*;

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "aetherctl failed: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_tail_status_from_the_command_line() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;

    let out = ok(&node.ctl(&[
        "--output",
        "json",
        "append",
        "orders-1",
        "--type",
        "Placed",
        "--data",
        r#"{"qty":2}"#,
        "--expected-version",
        "no-stream",
    ]));
    let v = &json_lines(&out)[0];
    assert_eq!(v["first_stream_version"], 0);
    assert_eq!(v["duplicate"], false);

    // --data @file and --data - (stdin).
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ev.json");
    std::fs::write(&f, r#"{"qty":3}"#).unwrap();
    ok(&node.ctl(&[
        "append",
        "orders-1",
        "--type",
        "Paid",
        "--data",
        &format!("@{}", f.display()),
        "--expected-version",
        "0",
    ]));
    ok(&node.ctl_stdin(
        &[
            "append",
            "orders-1",
            "--type",
            "Shipped",
            "--data",
            "-",
            "--meta",
            "carrier=ups",
        ],
        Some(br#"{"qty":4}"#),
    ));

    // An explicit id makes a retry idempotent.
    let id = uuid::Uuid::new_v4().to_string();
    ok(&node.ctl(&[
        "append", "orders-1", "--type", "Note", "--data", "{}", "--id", &id,
    ]));
    let again = json_lines(&ok(&node.ctl(&[
        "--output", "json", "append", "orders-1", "--type", "Note", "--data", "{}", "--id", &id,
    ])));
    assert_eq!(again[0]["duplicate"], true);
    assert_eq!(again[0]["first_stream_version"], 3);

    let lines = json_lines(&ok(&node.ctl(&["--output", "json", "read", "orders-1"])));
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["event_type"], "Placed");
    assert_eq!(lines[0]["data"]["qty"], 2);
    assert_eq!(lines[2]["metadata"]["carrier"], "ups");
    assert_eq!(lines[3]["event_id"], id);
    for key in [
        "event_id",
        "stream",
        "stream_version",
        "global_position",
        "event_type",
        "schema_version",
        "event_time_ns",
        "commit_time_ns",
        "data",
        "metadata",
    ] {
        assert!(lines[0].get(key).is_some(), "{key} missing");
    }
    let back = json_lines(&ok(&node.ctl(&[
        "--output",
        "json",
        "read",
        "orders-1",
        "--backwards",
        "--limit",
        "2",
    ])));
    assert_eq!(
        back.iter()
            .map(|v| v["stream_version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![3, 2]
    );
    let from = json_lines(&ok(
        &node.ctl(&["--output", "json", "read", "orders-1", "--from", "2"])
    ));
    assert_eq!(from.len(), 2);
    ok(&node.ctl(&["append", "orders-2", "--type", "Placed", "--data", "{}"]));
    let all = json_lines(&ok(
        &node.ctl(&["--output", "json", "read-all", "--from", "3"])
    ));
    assert_eq!(
        all.iter()
            .map(|v| v["global_position"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![3, 4]
    );
    let text = ok(&node.ctl(&["read", "orders-1", "--limit", "1"]));
    assert!(text.starts_with("orders-1@0 #0 Placed"), "{text}");

    let tail = json_lines(&ok(&node.ctl(&[
        "--output", "json", "tail", "--all", "--from", "0", "--count", "5",
    ])));
    assert_eq!(tail.len(), 5);
    let tail = json_lines(&ok(&node.ctl(&[
        "--output", "json", "tail", "orders-1", "--from", "1", "--count", "2",
    ])));
    assert_eq!(
        tail.iter()
            .map(|v| v["stream_version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );

    let status = json_lines(&ok(&node.ctl(&["--output", "json", "status"])));
    assert_eq!(status[0]["role"], "leader");
    assert_eq!(status[0]["event_count"], 5);
    assert!(ok(&node.ctl(&["status"])).contains("(leader)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_go_to_stderr_with_a_nonzero_exit() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    ok(&node.ctl(&["append", "s", "--type", "A", "--data", "{}"]));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "append",
                "s",
                "--type",
                "A",
                "--data",
                "{}",
                "--expected-version",
                "7",
            ],
            "FailedPrecondition",
        ),
        (
            vec!["append", "bad name", "--type", "A", "--data", "{}"],
            "InvalidArgument",
        ),
        (
            vec!["append", "s", "--type", "A", "--data", "not json"],
            "not valid JSON",
        ),
        (
            vec![
                "append",
                "s",
                "--type",
                "A",
                "--data",
                "{}",
                "--expected-version",
                "sometimes",
            ],
            "--expected-version",
        ),
        (
            vec!["append", "s", "--type", "A", "--data", "{}", "--id", "nope"],
            "not a UUID",
        ),
    ];
    for (args, msg) in cases {
        let out = node.ctl(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(msg),
            "{args:?}: expected {msg:?} in stderr: {err}"
        );
        assert!(out.stdout.is_empty(), "errors print nothing on stdout");
    }
}

/// A port nothing listens on.
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

/// The one line a failed aetherctl printed on stderr.
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "should fail");
    assert!(out.stdout.is_empty(), "errors print nothing on stdout");
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn an_unreachable_node_is_named_in_one_line_that_says_nothing_was_sent() {
    let addr = closed_port();
    let commands: [&[&str]; 4] = [
        &["status"],
        &["append", "s", "--type", "A", "--data", "{}"],
        &["read", "s"],
        &["workflow", "get", "wf-1"],
    ];
    for args in commands {
        let out = std::process::Command::new(AETHERCTL)
            .arg("--addr")
            .arg(&addr)
            .args(args)
            .output()
            .unwrap();
        let err = error_line(&out);
        assert!(
            err.starts_with(&format!("error: cannot connect to {addr}: ")),
            "{args:?}: {err}"
        );
        assert!(
            err.to_lowercase().contains("connection refused"),
            "{args:?}: {err}"
        );
        assert!(err.ends_with("nothing was sent"), "{args:?}: {err}");
        // No cause said twice ("tcp connect error: tcp connect error: …").
        let parts: Vec<&str> = err.split(": ").collect();
        let unique: std::collections::HashSet<&&str> = parts.iter().collect();
        assert_eq!(unique.len(), parts.len(), "{args:?}: repeated: {err}");
    }
}

/// The connection breaks after the append went out: aetherctl cannot know whether it was
/// written, says so, and names the event id that makes a retry safe.
#[test]
fn a_connection_lost_during_a_write_says_the_write_may_have_happened() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    const MARK: &[u8] = b"marker-7f3a";
    // A server that reads the request and hangs up without answering.
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let (mut seen, mut buf) = (Vec::new(), [0u8; 4096]);
        while !seen.windows(MARK.len()).any(|w| w == MARK) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    });
    let id = uuid::Uuid::new_v4().to_string();
    let out = std::process::Command::new(AETHERCTL)
        .args(["--addr", &addr, "append", "s", "--type", "A", "--id", &id])
        .args(["--data", r#"{"m":"marker-7f3a"}"#])
        .output()
        .unwrap();
    server.join().unwrap();
    let err = error_line(&out);
    assert!(
        err.starts_with(&format!(
            "error: the connection to {addr} failed during the call"
        )),
        "{err}"
    );
    assert!(
        err.contains("the write may or may not have happened"),
        "{err}"
    );
    assert!(err.contains(&format!("--id {id}")), "{err}");
}

/// A log written to a file (the harness sends aetherd's stderr to one) is plain text: colour
/// escapes are for terminals only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_logging_to_a_file_writes_no_colour_escapes() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    ok(&node.ctl(&["append", "s", "--type", "A", "--data", "{}"]));
    let log = std::fs::read_to_string(node.log_path()).expect("log");
    assert!(
        log.contains("aetherd serving"),
        "the node logged its start: {log}"
    );
    assert!(
        !log.contains("\x1b["),
        "ANSI escapes in a log file: {:?}",
        log.lines()
            .find(|l| l.contains("\x1b["))
            .unwrap_or_default()
    );
}

/// Runs `aetherctl --addr ADDRS ARGS`.
fn ctl_at(addrs: &str, args: &[&str]) -> Output {
    std::process::Command::new(AETHERCTL)
        .arg("--addr")
        .arg(addrs)
        .args(args)
        .output()
        .expect("run aetherctl")
}

/// A dead first address is passed by: the append goes to the next node, and reads, status
/// and the workflow commands work the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_address_is_passed_by() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let addrs = format!("{},{}", closed_port(), node.grpc_addr);
    let appended = json_lines(&ok(&ctl_at(
        &addrs,
        &[
            "--output",
            "json",
            "append",
            "orders-1",
            "--type",
            "Placed",
            "--data",
            r#"{"qty":2}"#,
            "--expected-version",
            "no-stream",
        ],
    )));
    assert_eq!(appended[0]["first_stream_version"], 0);
    let read = json_lines(&ok(&ctl_at(
        &addrs,
        &["--output", "json", "read", "orders-1"],
    )));
    assert_eq!(read.len(), 1);
    assert_eq!(read[0]["data"]["qty"], 2);
    let status = json_lines(&ok(&ctl_at(&addrs, &["--output", "json", "status"])));
    assert_eq!(status[0]["role"], "leader");
    ok(&ctl_at(
        &addrs,
        &["workflow", "create", "wf-1", "--name", "n", "--steps", "a"],
    ));
    let wf = json_lines(&ok(&ctl_at(
        &addrs,
        &["--output", "json", "workflow", "get", "wf-1"],
    )));
    assert_eq!(wf[0]["workflow_id"], "wf-1");

    // An answer is final: the live node's refusal, naming it, not a fail-over.
    let refused = error_line(&ctl_at(
        &addrs,
        &["append", "orders-1", "--type", "A", "--data", "{}"]
            .into_iter()
            .chain(["--expected-version", "no-stream"])
            .collect::<Vec<_>>(),
    ));
    assert!(
        refused.starts_with(&format!(
            "error: {} answered FailedPrecondition",
            node.grpc_addr
        )),
        "{refused}"
    );
}

#[test]
fn with_every_address_dead_the_error_names_each_and_why() {
    let (a, b) = (closed_port(), closed_port());
    let addrs = format!("{a},{b}");
    for args in [
        &["append", "s", "--type", "A", "--data", "{}"][..],
        &["read", "s"],
        &["status"],
    ] {
        let err = error_line(&ctl_at(&addrs, args));
        assert!(
            err.starts_with(&format!(
                "error: every address failed: {a}: cannot connect: "
            )),
            "{args:?}: {err}"
        );
        let (first, second) = err.split_once(" | ").expect("one part per address");
        for (part, addr) in [(first, &a), (second, &b)] {
            assert!(part.contains(addr.as_str()), "{args:?}: {err}");
            assert!(
                part.to_lowercase().contains("connection refused"),
                "{args:?}: {err}"
            );
            assert!(part.ends_with("nothing was sent"), "{args:?}: {err}");
        }
    }
}

/// `bench append` over three nodes, one of them killed: every append is acknowledged by the
/// two others, and the dead node's breaker keeps the clients that start there from calling
/// it again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_over_three_nodes_with_one_dead_completes() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(&c.all()).await;
    let dead = (leader + 1) % 3;
    c.nodes[dead].kill9();
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    const COUNT: u64 = 300;
    let out = ok(&ctl_at(
        &addrs.join(","),
        &[
            "--output",
            "json",
            "bench",
            "append",
            "--concurrency",
            "6",
            "--connections",
            "1",
            "--warmup",
            "1",
            "--count",
            &COUNT.to_string(),
            "--duration-secs",
            "300",
        ],
    ));
    let report = &json_lines(&out)[0];
    println!("per node: {}", report["per_node"]);
    let (appends, errors) = (
        report["appends"].as_u64().unwrap(),
        report["errors"].as_u64().unwrap(),
    );
    assert_eq!(appends + errors, COUNT, "{report}");
    assert_eq!(errors, 0, "a follower's death fails no append: {report}");
    let per_node = report["per_node"].as_array().expect("per_node");
    let d = per_node
        .iter()
        .find(|n| n["addr"] == addrs[dead].as_str())
        .expect("the dead node's figures");
    assert_eq!(d["acks"], 0, "{report}");
    // Two of the six clients start at the dead node: without a breaker they would call it
    // before every one of their appends (a third of them); with it, a few failures open it
    // and after that it is passed by (and probed once a second).
    let attempts = d["attempts"].as_u64().unwrap();
    assert!(attempts * 6 < COUNT, "{report}");
    assert!(d["skipped"].as_u64().unwrap() > 0, "{report}");
}

/// `tail` follows on the next node when its node dies: from the next event, so nothing is
/// skipped or printed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_resumes_on_the_next_node_from_the_next_event() {
    use std::io::BufRead;
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(&c.all()).await;
    let (first, second) = ((leader + 1) % 3, (leader + 2) % 3);
    let append = |c: &TestCluster| {
        ok(&c.nodes[leader].ctl(&["append", "s", "--type", "A", "--data", "{}"]));
    };
    append(&c);
    append(&c);
    let mut child = std::process::Command::new(AETHERCTL)
        .arg("--addr")
        .arg(format!(
            "{},{}",
            c.nodes[first].grpc_addr, c.nodes[second].grpc_addr
        ))
        .args([
            "--output", "json", "tail", "--all", "--from", "0", "--count", "4",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn aetherctl");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    for _ in 0..2 {
        lines.push(rx.recv_timeout(DEADLINE).expect("the first events"));
    }
    c.nodes[first].kill9();
    append(&c);
    append(&c);
    for _ in 0..2 {
        lines.push(
            rx.recv_timeout(DEADLINE)
                .expect("the events after the kill"),
        );
    }
    assert!(child.wait().expect("aetherctl exits").success());
    let positions: Vec<u64> = json_lines(&lines.join("\n"))
        .iter()
        .map(|v| v["global_position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions.len(), 4);
    assert!(
        positions.windows(2).all(|w| w[1] == w[0] + 1),
        "{positions:?}"
    );
}

/// `aetherctl auth mint` prints a token the node's verifier accepts with the same secret
/// file, carrying what was asked; a secret under 32 bytes is refused. No node is needed.
#[test]
fn auth_mint_makes_a_token_the_verifier_accepts() {
    use aetherops::auth::{
        Algorithm, KeySource, KeySources, KeySpec, Plane, Policy, Resource, Role, Verifier,
    };
    use aetherops::limits::Method;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("dev.secret");
    std::fs::write(&secret, "a shared development secret, 40 bytes.\n").unwrap();
    let mint = |args: &[&str]| {
        std::process::Command::new(AETHERCTL)
            .args(["auth", "mint", "--secret-file"])
            .arg(&secret)
            .args(args)
            .output()
            .unwrap()
    };
    let out = mint(&[
        "--sub",
        "ci-writer",
        "--role",
        "writer",
        "--stream-prefix",
        "orders-",
        "--series-prefix",
        "sat-7/",
        "--ttl",
        "10m",
        "--kid",
        "dev",
    ]);
    let token = ok(&out).trim().to_owned();
    let verifier = Verifier::new(
        Policy {
            issuer: "aetherops-dev".into(),
            audience: "aetherops".into(),
            node_audience: "aetherops-node".into(),
            leeway_secs: 30,
            max_token_bytes: 8192,
            cache_entries: 16,
        },
        KeySources {
            keys: vec![KeySpec {
                kid: "dev".into(),
                algorithms: vec![Algorithm::HS256],
                source: KeySource::HmacSecretFile(secret.clone()),
                node: None,
                node_plane: false,
            }],
            jwks_file: None,
        },
    )
    .unwrap();
    let id = verifier.verify(&token, Plane::Client).unwrap();
    println!(
        "minted: sub {} roles {:?} streams {:?} series {:?}",
        id.subject, id.roles, id.stream_prefixes, id.series_prefixes
    );
    assert_eq!(id.subject, "ci-writer");
    assert!(id.roles.contains(&Role::Writer));
    assert_eq!(id.stream_prefixes, Some(vec!["orders-".to_owned()]));
    assert_eq!(id.series_prefixes, Some(vec!["sat-7/".to_owned()]));
    id.authorize(Method::Append, &[Resource::Stream("orders-1")])
        .unwrap();
    assert!(id
        .authorize(Method::Ingest, &[Resource::Series("sat-8/x")])
        .is_err());
    // A client token is no node-plane token.
    assert!(verifier.verify(&token, Plane::Node).is_err());

    // --output json carries the token and its expiry.
    let out = std::process::Command::new(AETHERCTL)
        .args(["--output", "json", "auth", "mint", "--secret-file"])
        .arg(&secret)
        .args(["--sub", "r", "--role", "reader"])
        .output()
        .unwrap();
    let v = &json_lines(&ok(&out))[0];
    verifier
        .verify(v["token"].as_str().unwrap(), Plane::Client)
        .unwrap();
    assert!(v["expires_at"].as_u64().unwrap() > 0);

    std::fs::write(&secret, "too short\n").unwrap();
    let out = mint(&["--sub", "x", "--role", "reader"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("HMAC secret of 9 bytes"), "{err}");
    let out = mint(&["--sub", "x", "--role", "root"]);
    assert!(!out.status.success());
}

/// Waits (bounded) until a node's open `/healthz` says it leads: with authentication on,
/// the status RPC the other helpers poll needs a token.
async fn wait_leading(node: &TestNode) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (code, body) = node.http_get("/healthz").await;
        if code == 200 && body.contains("\"role\":\"leader\"") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader: {code} {body}\n{}",
            node.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An `[auth]` section with HS256 keys `kids`, each with its own secret file in `dir`; the
/// last one also signs the node's own node-plane tokens.
fn auth_toml(dir: &std::path::Path, kids: &[&str]) -> String {
    let node_kid = kids.last().expect("a key");
    let mut toml = format!(
        "[auth]\nenabled = true\nissuer = \"aetherops-dev\"\naudience = \"aetherops\"\n\
         node_audience = \"aetherops-node\"\nnode_key_kid = {node_kid:?}\nnode_key_file = {:?}\n",
        dir.join(format!("{node_kid}.secret"))
    );
    for kid in kids {
        let secret = dir.join(format!("{kid}.secret"));
        if !secret.exists() {
            std::fs::write(
                &secret,
                format!("{kid}: a development secret of 40+ bytes\n"),
            )
            .unwrap();
        }
        toml.push_str(&format!(
            "[[auth.keys]]\nkid = {kid:?}\nalgorithms = [\"HS256\"]\nnode_plane = true\nhmac_secret_file = {:?}\n",
            secret
        ));
    }
    toml
}

/// `aetherctl auth mint` with key `kid`'s secret in `dir`.
fn mint(dir: &std::path::Path, kid: &str, sub: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(AETHERCTL)
        .args(["auth", "mint", "--kid", kid, "--sub", sub, "--secret-file"])
        .arg(dir.join(format!("{kid}.secret")))
        .args(extra)
        .output()
        .unwrap();
    ok(&out).trim().to_owned()
}

/// With `[auth]` on, aetherctl carries a token from `--token`, `--token-file` or
/// `AETHER_TOKEN`; a missing one is UNAUTHENTICATED and a reader's append PERMISSION_DENIED,
/// neither writes; `auth whoami` shows what the node verified; `status` says how the node
/// is protected. Then key rotation: the config drops the old key, SIGHUP, and tokens signed
/// with it are refused — same process, no restart — while the new key's still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_command_line_and_key_rotation_by_sighup() {
    let keys = tempfile::tempdir().unwrap();
    let node = NodeBuilder::dev()
        .config(&auth_toml(keys.path(), &["old", "new"]))
        .start();
    wait_leading(&node).await;
    let writer = mint(keys.path(), "old", "ci-writer", &["--role", "writer"]);
    let reader = mint(keys.path(), "new", "ci-reader", &["--role", "reader"]);
    let scoped = mint(
        keys.path(),
        "new",
        "worker-7",
        &[
            "--role",
            "writer",
            "--stream-prefix",
            "workflow-",
            "--ttl",
            "10m",
        ],
    );
    let append = ["append", "orders-1", "--type", "Placed", "--data", "{}"];
    let version = |token: &str| {
        let out = node.ctl(&["--token", token, "--output", "json", "read", "orders-1"]);
        json_lines(&ok(&out)).len()
    };

    let err = error_line(&node.ctl(&append));
    assert!(
        err.contains("Unauthenticated") && err.contains("token"),
        "{err}"
    );
    assert_eq!(
        version(&reader),
        0,
        "refused without a token: nothing written"
    );

    let err = error_line(&node.ctl(&[&["--token", &reader][..], &append[..]].concat()));
    assert!(
        err.contains("PermissionDenied") && err.contains("writer"),
        "{err}"
    );
    assert_eq!(version(&reader), 0, "a reader's append wrote nothing");

    let file = keys.path().join("writer.token");
    std::fs::write(&file, format!("{writer}\n")).unwrap();
    ok(&node.ctl(&[&["--token-file", file.to_str().unwrap()][..], &append[..]].concat()));
    assert_eq!(version(&reader), 1);

    // AETHER_TOKEN, and what the node makes of it.
    let out = std::process::Command::new(AETHERCTL)
        .env("AETHER_TOKEN", &scoped)
        .args([
            "--addr",
            &node.grpc_addr,
            "--output",
            "json",
            "auth",
            "whoami",
        ])
        .output()
        .unwrap();
    let me = &json_lines(&ok(&out))[0];
    println!("whoami: {me}");
    assert_eq!(me["auth"], true);
    assert_eq!(me["subject"], "worker-7");
    assert_eq!(me["roles"], serde_json::json!(["writer"]));
    assert_eq!(me["streams"], serde_json::json!(["workflow-"]));
    assert_eq!(me["series"], serde_json::Value::Null);

    let status = ok(&node.ctl(&["--token", &reader, "status"]));
    assert!(
        status.contains("security: tokens checked, TLS off"),
        "{status}"
    );

    // Rotation: the configuration keeps only "new"; SIGHUP.
    let config = node.dir.with_extension("toml");
    std::fs::write(&config, auth_toml(keys.path(), &["new"])).unwrap();
    let pid = node.pid().expect("running");
    signal(pid, "HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = node.ctl(&["--token", &writer, "read", "orders-1"]);
        if !out.status.success() {
            let err = error_line(&out);
            assert!(err.contains("Unauthenticated"), "{err}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "old key still accepted after SIGHUP"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(node.pid(), Some(pid), "no restart");
    assert_eq!(version(&reader), 1, "the new key's tokens still work");
    let err = error_line(&node.ctl(&[&["--token", &writer][..], &append[..]].concat()));
    assert!(err.contains("Unauthenticated"), "{err}");
    assert_eq!(version(&reader), 1, "the old key's append wrote nothing");
}

/// `--dev` without `[auth]` says so loudly, at start and in `aetherctl status`; a dev node
/// will not listen beyond loopback, and no node without `[auth]` will unless `--insecure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprotected_nodes_say_so_and_stay_on_loopback() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let status = ok(&node.ctl(&["status"]));
    assert!(
        status.contains("security: DEV MODE: AUTHENTICATION OFF, loopback only, TLS off"),
        "{status}"
    );
    let v = &json_lines(&ok(&node.ctl(&["--output", "json", "status"])))[0];
    assert_eq!(v["security"]["auth"], false);
    assert_eq!(v["security"]["dev"], true);
    // Said at start too (the test harness keeps the node's output in its log).
    let log = node.log();
    assert!(log.contains("DEV MODE: authentication is OFF"), "{log}");
    // The same in a data-less check: aetherd refuses before opening anything.
    let refuse = |args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(AETHERD)
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--http-addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refuse(&["--dev", "--grpc-addr", "0.0.0.0:0"]);
    assert!(
        err.contains("dev mode listens on loopback addresses only"),
        "{err}"
    );
    let err = refuse(&["--node-id", "1", "--grpc-addr", "0.0.0.0:0"]);
    assert!(
        err.contains("[auth] is not enabled") && err.contains("--insecure"),
        "{err}"
    );
}

/// `bench etcd` speaks etcd's v3 `KV.Put`: against a stand-in KV service, the report counts
/// the Puts it was asked for, every Put (warm-up included) writes a key no other Put wrote,
/// and every value is `--value-size` bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_etcd_puts_new_keys_of_the_value_size() {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use aetherops::proto::etcdserverpb::kv_server::{Kv, KvServer};
    use aetherops::proto::etcdserverpb::{PutRequest, PutResponse};

    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<(bytes::Bytes, usize)>>>);

    #[tonic::async_trait]
    impl Kv for Recorder {
        async fn put(
            &self,
            req: tonic::Request<PutRequest>,
        ) -> Result<tonic::Response<PutResponse>, tonic::Status> {
            let r = req.into_inner();
            self.0.lock().unwrap().push((r.key, r.value.len()));
            Ok(tonic::Response::new(PutResponse::default()))
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let rec = Recorder::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(rec.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    const COUNT: u64 = 200;
    const CLIENTS: u64 = 4;
    let out = tokio::task::spawn_blocking(move || {
        ctl_at(
            "127.0.0.1:1",
            &[
                "--output",
                "json",
                "bench",
                "etcd",
                "--endpoints",
                &format!("{addr},{addr}"),
                "--concurrency",
                &CLIENTS.to_string(),
                "--connections",
                "1",
                "--warmup",
                "1",
                "--count",
                &COUNT.to_string(),
                "--value-size",
                "256",
                "--duration-secs",
                "300",
            ],
        )
    })
    .await
    .unwrap();
    let report = &json_lines(&ok(&out))[0];
    assert_eq!(report["puts"], COUNT, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let seen = rec.0.lock().unwrap();
    assert_eq!(
        seen.len() as u64,
        COUNT + CLIENTS,
        "one warm-up Put per client"
    );
    assert!(seen.iter().all(|(_, len)| *len == 256), "value sizes");
    let keys: HashSet<_> = seen.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys.len(), seen.len(), "every Put writes a new key");
}

/// The node's counter of stream reads answered from memory (`aether_reads_in_memory_total`).
async fn reads_in_memory(node: &TestNode) -> u64 {
    let (_, body) = node.http_get("/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix("aether_reads_in_memory_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no aether_reads_in_memory_total in /metrics:\n{body}"))
}

/// `bench read` times linearizable and local reads of one small stream, and health checks,
/// on either client runtime; a small stream just written is read from memory on the node
/// (every read of the bench; nothing else reads here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_read_times_reads_of_a_small_stream_answered_from_memory() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let before = reads_in_memory(&node).await;
    for threads in ["1", "2"] {
        let out = ok(&node.ctl(&[
            "--output",
            "json",
            "bench",
            "read",
            "--events",
            "5",
            "--reads",
            "20",
            "--client-threads",
            threads,
        ]));
        let report = &json_lines(&out)[0];
        println!("{report}");
        assert_eq!(report["bench"], "read", "{report}");
        assert_eq!(report["events"], 5, "{report}");
        for kind in ["linearizable_ms", "local_ms", "health_check_ms"] {
            let p50 = report[kind]["p50"].as_f64().expect("p50");
            assert!(p50 > 0.0, "{kind}: {report}");
        }
    }
    // Two runs of 20 reads of each consistency.
    assert_eq!(reads_in_memory(&node).await - before, 80);
}

/// `bench health` sends health checks in a closed loop (the unary-call floor): exactly
/// `--count` of them after each client's warm-up, none failed; behind `[auth]` with health
/// not left open (`open_health = false`) a check without a token fails — counted as an
/// error, never as a check — and one with a token passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_health_counts_its_checks_and_counts_refusals_as_errors() {
    const COUNT: u64 = 60;
    let keys = tempfile::tempdir().unwrap();
    let toml = auth_toml(keys.path(), &["k"]).replace(
        "[auth]\nenabled = true\n",
        "[auth]\nenabled = true\nopen_health = false\n",
    );
    assert!(toml.contains("open_health = false"), "{toml}");
    let node = NodeBuilder::dev().config(&toml).start();
    wait_leading(&node).await;
    let bench = |token: Option<&str>| {
        let mut args = vec![];
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        let count = COUNT.to_string();
        args.extend([
            "--output",
            "json",
            "bench",
            "health",
            "--concurrency",
            "4",
            "--connections",
            "2",
            "--warmup",
            "1",
            "--count",
            &count,
            "--duration-secs",
            "60",
        ]);
        let out = node.ctl(&args);
        json_lines(&ok(&out)).remove(0)
    };
    let token = mint(keys.path(), "k", "ci-reader", &["--role", "reader"]);
    let report = bench(Some(&token));
    println!("{report}");
    assert_eq!(report["bench"], "health", "{report}");
    assert_eq!(report["checks"], COUNT, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["checks_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    // What the run cost: this client's CPU per check, and the machine's where it can be read.
    let cpu = &report["cpu"];
    assert!(
        cpu["client_core_us_per_request"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    if let Some(busy) = cpu["machine"]["busy"].as_f64() {
        assert!((0.0..=1.0).contains(&busy), "{report}");
        assert!(cpu["machine"]["cpus"].as_u64().unwrap() >= 1, "{report}");
    }

    let report = bench(None);
    assert_eq!(report["checks"], 0, "{report}");
    assert!(
        report["cpu"]["client_core_us_per_request"].is_null(),
        "no check, no cost per check: {report}"
    );
    assert_eq!(report["errors"], COUNT, "{report}");
    let first = report["first_error"].as_str().unwrap_or_default();
    assert!(first.contains("Unauthenticated"), "{report}");
}

/// Output into a pipe nobody reads (`aetherctl … | head -1` after `head` exits) ends the
/// command the way it ends `cat`: quietly, by SIGPIPE, not with a panic and a backtrace on
/// stderr. (SIGPIPE stays ignored until then: a write to a socket the peer closed must fail
/// with an error, not kill the process.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_pipe_ends_the_command_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(AETHERCTL)
        .args(["--addr", &node.grpc_addr, "--output", "json"])
        .args(["bench", "read", "--events", "1", "--reads", "1"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run aetherctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE: {out:?}");
}
