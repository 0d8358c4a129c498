//! The README's own commands, run as a new user would run them: every `scripts/aetherctl …`
//! line of the README's `sh` blocks, in order, against one dev node, each expected to exit 0.
//! So the README cannot rot.
//!
//! What the README leaves to the reader is filled in here: the files it names (`payment.json`,
//! `export.jsonl`, `dev.secret`) are written into the working directory the commands run in; the NAB data
//! comes from where `tests/telemetry_nab.rs` finds it (lines that need it are skipped loudly
//! when it is absent); `--addr` always names the test's node (the 3-node cluster block's
//! commands run against it too); a `--at` time becomes the current time, written the way the
//! README writes it (a time before the workflow existed has no state). `tail` follows forever:
//! it runs until it reports that it caught up, then is stopped. Benchmarks, `cluster/local.sh`
//! and `cargo` lines are not run here. A new kind of line (another pipe, another
//! placeholder) makes this test fail until it is taught the line.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::*;

/// One command line of a `sh` block (continuations joined, comment removed).
#[derive(Debug)]
struct Line {
    text: String,
    /// The commands of a pipeline, split into words.
    pipeline: Vec<Vec<String>>,
}

/// Removes a trailing `# comment` (a `#` after a blank, outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return line[..i].trim_end(),
            _ => {}
        }
        prev = c;
    }
    line.trim_end()
}

/// Splits a line at `|` outside quotes.
fn split_pipeline(line: &str) -> Vec<&str> {
    let (mut single, mut double) = (false, false);
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '|' if !single && !double => {
                parts.push(line[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(line[start..].trim());
    parts
}

fn sh_lines(readme: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for raw in readme.lines() {
        let t = raw.trim();
        if !in_sh {
            in_sh = t == "```sh";
            continue;
        }
        if t == "```" {
            in_sh = false;
            continue;
        }
        let code = strip_comment(raw);
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let text = std::mem::take(&mut pending).trim().to_owned();
        if text.is_empty() {
            continue;
        }
        let pipeline = split_pipeline(&text)
            .into_iter()
            .map(|p| shlex::split(p).unwrap_or_else(|| panic!("unbalanced quotes in {text:?}")))
            .collect();
        out.push(Line { text, pipeline });
    }
    out
}

fn is_aetherctl(word: &str) -> bool {
    word == "aetherctl" || word.ends_with("/aetherctl")
}

/// What the README's `@FILE` and file arguments name.
fn write_fixtures(dir: &Path) {
    std::fs::write(
        dir.join("dev.secret"),
        "a development secret of 32 bytes or more\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("payment.json"),
        r#"{"method":"card","amount_eur":120}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("export.jsonl"),
        concat!(
            r#"{"id":"legacy-1","name":"Deorbit sat-42","status":"running","created_at":"2026-01-02T03:04:05Z","#,
            r#""steps":[{"id":"plan","status":"completed","attempts":1,"output":{"dv":12.5}},"#,
            r#"{"id":"burn","status":"pending"}]}"#,
            "\n",
            r#"{"id":"legacy-2","name":"Antenna check","status":"cancelled","created_at":"2025-12-30T10:00:00Z","#,
            r#""completed_at":"2025-12-30T11:00:00Z","reason":"superseded"}"#,
            "\n"
        ),
    )
    .unwrap();
}

fn nab_dir() -> Option<PathBuf> {
    [
        std::env::var("AETHER_NAB_DIR").ok().map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/nab")),
        Some(PathBuf::from("/work/shared/data/nab")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_dir())
}

/// The current time as the README writes times: RFC 3339 with a +01:00 zone.
fn now_with_zone() -> String {
    time::OffsetDateTime::now_utc()
        .to_offset(time::macros::offset!(+1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The aetherctl arguments of a README command, placeholders filled in; `None` when the line
/// needs data this machine does not have.
fn args_for(words: &[String], node: &TestNode, skipped: &mut Vec<String>) -> Option<Vec<String>> {
    let mut args = vec!["--addr".to_owned(), node.grpc_addr.clone()];
    let mut it = words[1..].iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "--addr" => {
                it.next();
            }
            "--at" => {
                it.next();
                args.push("--at".into());
                args.push(now_with_zone());
            }
            w if w.contains("shared/data/nab/") => {
                let file = Path::new(w).file_name().expect("a NAB file name");
                let Some(dir) = nab_dir() else {
                    skipped.push(
                        "NAB data folder not found (/work/shared/data/nab or $AETHER_NAB_DIR)"
                            .into(),
                    );
                    return None;
                };
                args.push(dir.join(file).to_string_lossy().into_owned());
            }
            w => args.push(w.to_owned()),
        }
    }
    Some(args)
}

fn ctl(cwd: &Path) -> Command {
    let mut c = Command::new(AETHERCTL);
    c.current_dir(cwd)
        .env_remove("AETHER_ADDR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs a command that exits by itself; panics with the README line when it fails.
fn run_to_end(line: &Line, args: &[String], stdin: Option<&str>, cwd: &Path) -> String {
    let mut child = ctl(cwd)
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn aetherctl");
    {
        let mut si = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            si.write_all(s.as_bytes()).expect("stdin");
        }
    }
    let out = child.wait_with_output().expect("aetherctl output");
    assert!(
        out.status.success(),
        "README command failed ({}):\n  {}\nargs: {args:?}\nstderr: {}\nstdout: {}",
        out.status,
        line.text,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a following command (`tail`) until it reports that it caught up, then stops it.
fn run_until_caught_up(line: &Line, args: &[String], cwd: &Path) -> String {
    let mut child = ctl(cwd)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn aetherctl");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("caught up") => break,
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().expect("wait");
                panic!(
                    "README command never caught up ({status}):\n  {}\nargs: {args:?}\nstderr: {}",
                    line.text,
                    seen.join("\n")
                );
            }
        }
    }
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "`{}` exited after catching up instead of following",
        line.text
    );
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_command_runs_against_a_dev_node() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let lines = sh_lines(&readme);
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    // Replicated settings (the idempotency window, rate-limit policies) are taken once the
    // node adopted this version's apply rules, which also seeds the window: wait for it.
    node.wait_rules_adopted().await;
    let cwd = tempfile::tempdir().unwrap();
    write_fixtures(cwd.path());

    let (mut ran, mut not_run) = (Vec::new(), Vec::new());
    let mut skipped_series: Vec<String> = Vec::new();
    for line in &lines {
        let Some(pos) = line.pipeline.iter().position(|c| is_aetherctl(&c[0])) else {
            if line.pipeline[0][0] == "curl" {
                check_curl(line, &node).await;
                println!("ok: {}", line.text);
                ran.push(line.text.clone());
            } else {
                not_run.push(line.text.clone());
            }
            continue;
        };
        let words = &line.pipeline[pos];
        if words.iter().any(|w| w == "bench") {
            not_run.push(line.text.clone());
            continue;
        }
        assert_eq!(
            pos + 1,
            line.pipeline.len(),
            "teach this test to pipe aetherctl's output: {}",
            line.text
        );
        let stdin = match pos {
            0 => None,
            1 if line.pipeline[0][0] == "echo" => {
                Some(format!("{}\n", line.pipeline[0][1..].join(" ")))
            }
            _ => panic!("teach this test the producer of this pipe: {}", line.text),
        };
        if let Some(s) = skipped_series.iter().find(|s| words.contains(s)) {
            println!("SKIPPED (series {s} was not ingested): {}", line.text);
            continue;
        }
        let mut why = Vec::new();
        let Some(args) = args_for(words, &node, &mut why) else {
            println!("SKIPPED ({}): {}", why.join("; "), line.text);
            if let Some(i) = words.iter().position(|w| w == "--series") {
                skipped_series.extend(words.get(i + 1).cloned());
            }
            continue;
        };
        let follows = words.iter().any(|w| w == "tail") && !words.iter().any(|w| w == "--count");
        let out = if follows {
            let out = run_until_caught_up(line, &args, cwd.path());
            assert!(!out.is_empty(), "`{}` printed no events", line.text);
            out
        } else {
            run_to_end(line, &args, stdin.as_deref(), cwd.path())
        };
        println!("ok: {}\n{}", line.text, indent(&out));
        ran.push(line.text.clone());
    }
    println!("not run here: {not_run:#?}");
    // The quickstart, workflows, telemetry and cluster blocks hold more than this; fewer
    // means the extraction broke, not that the README shrank.
    assert!(
        ran.len() >= 15,
        "only {} README commands ran: {ran:#?}",
        ran.len()
    );
}

fn indent(s: &str) -> String {
    s.lines()
        .take(5)
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `curl -s HOST:PORT/PATH | grep WORD`, against the test node's HTTP address.
async fn check_curl(line: &Line, node: &TestNode) {
    let url = line.pipeline[0]
        .iter()
        .skip(1)
        .find(|w| !w.starts_with('-'))
        .unwrap_or_else(|| panic!("no URL in {}", line.text));
    let path = url
        .find('/')
        .map(|i| &url[i..])
        .unwrap_or_else(|| panic!("no path in {url}"));
    let (code, body) = node.http_get(path).await;
    assert_eq!(code, 200, "{}: HTTP {code}", line.text);
    for cmd in &line.pipeline[1..] {
        match cmd.as_slice() {
            [grep, word] if grep == "grep" => {
                assert!(
                    body.contains(word.as_str()),
                    "{}: no {word:?} in {body}",
                    line.text
                )
            }
            _ => panic!("teach this test the consumer of this pipe: {}", line.text),
        }
    }
}
