//! The `aetherctl` contract scripts rely on: commands, flags, JSON lines, exit codes.

mod common;

use std::process::Output;

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
