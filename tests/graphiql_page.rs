//! The GraphiQL page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/browser-test`) loads `GET /graphql` from a dev node, a query goes into the editor,
//! the run button is pressed, and the result pane's text is checked.
//!
//! Chromium is driven over the DevTools protocol (CDP) on a WebSocket (tokio-tungstenite):
//! `Runtime.evaluate` reads and acts on the page. The page loads React and GraphiQL from
//! unpkg.com, which this machine and CI cannot reach, so every request that does not go to
//! the node is paused (`Fetch.enable`) and answered here: unpkg.com files from the same npm
//! packages unpacked by `scripts/browser-test` (`$AETHEROPS_GRAPHIQL_ASSETS/name@range/path`),
//! anything else refused at once, so a missing file shows as a named failure, never a hang.
//! The whole run is bounded by `RUN_DEADLINE`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aetherops::proto::aetherops::v1 as pb;
use aetherops::proto::aetherops::v1::telemetry_client::TelemetryClient;
use base64::Engine;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The test stops by itself well within CI's bound on one test (nextest's slow-timeout).
const RUN_DEADLINE: Duration = Duration::from_secs(45);
/// How often the page is looked at while waiting for a condition on it.
const POLL: Duration = Duration::from_millis(100);
const SEC: i64 = 1_000_000_000;
const POINTS: usize = 1_234;

fn assets_dir() -> PathBuf {
    match std::env::var_os("AETHEROPS_GRAPHIQL_ASSETS") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/aetherops-graphiql")
        }
    }
}

/// A headless Chromium with its own profile, killed on drop.
struct Browser {
    child: Child,
    profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn launch() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: run scripts/browser-test (it installs Debian's chromium)"
        );
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(CHROMIUM)
            .args([
                "--headless=new",
                // Root in a container: Chromium's sandbox needs user namespaces it may not have.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-address=127.0.0.1",
                // Port 0: Chromium picks one and writes it to DevToolsActivePort.
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {CHROMIUM}: {e}"));
        Browser { child, profile }
    }

    /// The DevTools port, once Chromium has written it.
    async fn devtools_port(&mut self) -> u16 {
        let file = self.profile.path().join("DevToolsActivePort");
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                if let Some(port) = text.lines().next().and_then(|l| l.parse().ok()) {
                    return port;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited before it listened ({status})");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A CDP session on one page. Requests paused by `Fetch` are answered whenever messages are
/// read, so the page keeps loading while the test waits for a command's reply.
struct Page {
    ws: Socket,
    next_id: u64,
    node_origin: String,
    assets: PathBuf,
    /// The URLs refused (no such asset, or not the node nor unpkg.com): the failure message
    /// names them when the page does not come up.
    refused: Vec<String>,
}

impl Page {
    async fn open(port: u16, node_origin: String, assets: PathBuf) -> Page {
        let targets: Vec<Value> = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .expect("DevTools target list")
            .json()
            .await
            .expect("DevTools target list JSON");
        let url = targets
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target in {targets:?}"))
            .to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("DevTools WebSocket");
        let mut page = Page {
            ws,
            next_id: 0,
            node_origin,
            assets,
            refused: Vec::new(),
        };
        page.call(
            "Fetch.enable",
            json!({"patterns": [{"urlPattern": "*", "requestStage": "Request"}]}),
        )
        .await;
        page
    }

    async fn send(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::text(msg))
            .await
            .expect("send to DevTools");
        id
    }

    /// Sends a command and returns its result, answering paused requests meanwhile.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        loop {
            let msg = self
                .ws
                .next()
                .await
                .expect("DevTools closed the socket")
                .expect("DevTools socket");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
            if v["method"] == "Fetch.requestPaused" {
                self.answer(&v["params"]).await;
            }
            // Replies to the answers sent by `answer` and other events are not needed.
        }
    }

    /// Lets a request to the node through, serves an unpkg.com file from the npm packages,
    /// refuses anything else.
    async fn answer(&mut self, paused: &Value) {
        let request_id = paused["requestId"].clone();
        let url = paused["request"]["url"].as_str().unwrap_or_default();
        if url.starts_with(&self.node_origin) {
            self.send("Fetch.continueRequest", json!({"requestId": request_id}))
                .await;
            return;
        }
        match unpkg_file(&self.assets, url).and_then(|p| std::fs::read(&p).ok().map(|b| (p, b))) {
            Some((path, body)) => {
                let kind = match path.extension().and_then(|e| e.to_str()) {
                    Some("css") => "text/css",
                    _ => "application/javascript",
                };
                self.send(
                    "Fetch.fulfillRequest",
                    json!({
                        "requestId": request_id,
                        "responseCode": 200,
                        "responseHeaders": [
                            {"name": "Content-Type", "value": kind},
                            {"name": "Access-Control-Allow-Origin", "value": "*"},
                        ],
                        "body": base64::engine::general_purpose::STANDARD.encode(body),
                    }),
                )
                .await;
            }
            None => {
                self.refused.push(url.to_owned());
                self.send(
                    "Fetch.failRequest",
                    json!({"requestId": request_id, "errorReason": "BlockedByClient"}),
                )
                .await;
            }
        }
    }

    /// Evaluates `js` in the page; its value as JSON.
    async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("page script failed: {e}\n{js}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `js` evaluates to a non-null, non-false value, and returns it.
    async fn wait_for(&mut self, what: &str, js: &str, deadline: Instant) -> Value {
        loop {
            let v = self.eval(js).await;
            if !v.is_null() && v != false {
                return v;
            }
            if Instant::now() >= deadline {
                let body = self
                    .eval("document.body ? document.body.innerText.slice(0, 2000) : ''")
                    .await;
                panic!(
                    "timed out waiting for {what}; requests refused: {:?}; page text: {body}",
                    self.refused
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The rendered text of the element `selector` once it contains `word`.
    async fn wait_for_text(
        &mut self,
        what: &str,
        selector: &str,
        word: &str,
        deadline: Instant,
    ) -> String {
        let js = format!(
            "(() => {{ const e = document.querySelector({});
                       const t = e ? e.innerText : '';
                       return t.includes({}) ? t : null; }})()",
            json!(selector),
            json!(word)
        );
        let text = self.wait_for(what, &js, deadline).await;
        text.as_str().expect("the element's text").to_owned()
    }
}

/// The file of the npm packages behind `https://unpkg.com/name@range/path`, if any.
fn unpkg_file(assets: &Path, url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("https://unpkg.com/")?;
    let path = rest.split(['?', '#']).next()?;
    // Only plain relative paths inside the assets directory.
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return None;
    }
    Some(assets.join(path))
}

async fn ingest(node: &TestNode, series: &str, pts: &[(i64, f64)]) {
    let mut c = TelemetryClient::new(node.channel().await);
    let batch = pb::IngestBatch {
        series: vec![pb::SeriesPoints {
            series: series.into(),
            timestamps_ns: pts.iter().map(|p| p.0).collect(),
            values: pts.iter().map(|p| p.1).collect(),
        }],
    };
    c.ingest(tokio_stream::iter([batch])).await.expect("ingest");
}

fn rfc(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_runs_a_query_and_shows_the_result() {
    let assets = assets_dir();
    let missing: Vec<&str> = ["graphiql@4", "react@18", "react-dom@18"]
        .into_iter()
        .filter(|p| !assets.join(p).join("package.json").exists())
        .collect();
    assert!(
        missing.is_empty(),
        "npm packages {missing:?} missing under {}: run scripts/browser-test --prepare",
        assets.display()
    );

    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    // An hour ago, a point a second: recent enough for every retention tier.
    let t0 = (now - 3_600 * SEC) / SEC * SEC;
    let pts: Vec<(i64, f64)> = (0..POINTS)
        .map(|i| (t0 + i as i64 * SEC, 28.0 + (i % 7) as f64))
        .collect();
    ingest(&node, "sat-7/battery", &pts).await;

    let deadline = Instant::now() + RUN_DEADLINE;
    let mut browser = Browser::launch();
    let port = tokio::time::timeout(RUN_DEADLINE, browser.devtools_port())
        .await
        .expect("chromium did not open its DevTools port in time");
    let origin = format!("http://{}", node.http_addr);
    let mut page = Page::open(port, format!("{origin}/"), assets).await;
    page.call("Page.navigate", json!({"url": format!("{origin}/graphql")}))
        .await;

    // GraphiQL 4 edits with CodeMirror 5, whose instance hangs on its DOM element.
    let editor = "document.querySelector('.graphiql-query-editor .CodeMirror')";
    page.wait_for(
        "the GraphiQL query editor",
        &format!("!!({editor} && {editor}.CodeMirror)"),
        deadline,
    )
    .await;
    let query = format!(
        "{{ telemetry(series: \"sat-7/battery\", range: {{start: \"{}\", end: \"{}\"}}) {{ summary {{ count min max }} }} }}",
        rfc(t0),
        rfc(t0 + 2 * 3_600 * SEC)
    );
    page.eval(&format!(
        "{editor}.CodeMirror.setValue({}); true",
        json!(query)
    ))
    .await;
    page.eval("document.querySelector('.graphiql-execute-button').click(); true")
        .await;

    // The result pane: what GraphiQL shows of the response, as the page renders it.
    let shown = page
        .wait_for_text("the result pane", ".graphiql-response", "count", deadline)
        .await;
    let shown = shown.as_str();
    // innerText of CodeMirror's lines: the pretty-printed JSON GraphiQL put there.
    let counts: HashMap<&str, &str> = shown
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').split_once(": "))
        .map(|(k, v)| (k.trim_matches('"'), v))
        .collect();
    let count = POINTS.to_string();
    assert_eq!(
        counts.get("count"),
        Some(&count.as_str()),
        "result pane: {shown}"
    );
    assert_eq!(counts.get("min"), Some(&"28"), "result pane: {shown}");
    assert_eq!(counts.get("max"), Some(&"34"), "result pane: {shown}");
    assert!(!shown.contains("\"errors\""), "result pane: {shown}");

    // GraphiQL fetched the schema when the page loaded (its introspection query): the
    // documentation explorer shows the root types.
    page.eval(
        "document.querySelector('[aria-label=\"Show Documentation Explorer\"]').click(); true",
    )
    .await;
    let docs = page
        .wait_for_text(
            "the documentation explorer",
            ".graphiql-doc-explorer",
            "Subscription",
            deadline,
        )
        .await;
    assert!(docs.contains("Query"), "documentation explorer: {docs}");
}
