//! Test harness: real `aetherd` processes on 127.0.0.1 with temporary data directories.
//!
//! Nodes bind port 0 and report their ports in `listen.json`; restarts reuse them. Every
//! wait is on a condition with a generous deadline (the suite runs on a loaded 2-core
//! machine). Processes are killed when their handle drops, and a failing test prints the
//! node's log.
//!
//! With `AETHER_TEST_SECURE=1` cluster members start with `[auth]` and `[tls]` on and the
//! harness's clients follow suit ([`secure`]).

#![allow(dead_code)]

pub mod cluster;
pub mod crash;
pub mod proxy;
pub mod secure;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aetherops::proto::aetherops::v1 as pb;
use aetherops::proto::aetherops::v1::admin_client::AdminClient;
use aetherops::proto::aetherops::v1::event_store_client::EventStoreClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub const AETHERD: &str = env!("CARGO_BIN_EXE_aetherd");
pub const AETHERCTL: &str = env!("CARGO_BIN_EXE_aetherctl");

/// Generous: cluster tests share 2 cores with everything else.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A connection to a node as the harness hands it out: with the harness's admin token on
/// every request in secure mode (none otherwise).
pub type TestChannel = InterceptedService<Channel, secure::Bearer>;

/// How the harness started a node.
#[derive(Debug, Clone)]
pub enum Protection {
    /// Neither `[auth]` nor `[tls]`.
    Plain,
    /// Secure mode: the harness's `[auth]` and `[tls]`; its clients use these files.
    Secure(secure::NodeFiles),
    /// The test's config has its own `[auth]` or `[tls]`: the test brings its own tokens
    /// and TLS, the harness's clients stay plain.
    OwnConfig,
}

pub struct TestNode {
    pub id: u64,
    pub dir: PathBuf,
    pub grpc_addr: String,
    pub http_addr: String,
    child: Option<Child>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    dev: bool,
    pub protection: Protection,
    _tmp: Option<tempfile::TempDir>,
}

#[derive(serde::Deserialize)]
struct Listen {
    grpc_addr: String,
    http_addr: String,
    pid: u32,
}

pub struct NodeBuilder {
    id: u64,
    ip: String,
    dev: bool,
    dir: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    config: Option<String>,
}

impl NodeBuilder {
    pub fn dev() -> Self {
        NodeBuilder {
            id: 1,
            ip: "127.0.0.1".into(),
            dev: true,
            dir: None,
            args: Vec::new(),
            env: Vec::new(),
            config: None,
        }
    }

    /// A cluster member, not initialized: the test initializes the cluster.
    pub fn member(id: u64, dir: PathBuf) -> Self {
        NodeBuilder {
            id,
            ip: "127.0.0.1".into(),
            dev: false,
            dir: Some(dir),
            args: Vec::new(),
            env: Vec::new(),
            config: None,
        }
    }

    /// The loopback IP the node listens on and connects from.
    pub fn ip(mut self, ip: impl Into<String>) -> Self {
        self.ip = ip.into();
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Starts the node with this TOML as its config file (written next to its data dir).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn start(self) -> TestNode {
        let (dir, tmp) = match self.dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir().expect("temp dir");
                (t.path().join("data"), Some(t))
            }
        };
        let mut args = self.args;
        let (config, protection) =
            protect(&mut args, self.config, self.dev, &dir, self.id, &self.ip);
        if let Some(toml) = config {
            let path = dir.with_extension("toml");
            std::fs::create_dir_all(dir.parent().expect("data dir has a parent")).expect("dir");
            std::fs::write(&path, toml).expect("config file");
            args.push("--config".into());
            args.push(path.to_string_lossy().into_owned());
        }
        let mut node = TestNode {
            id: self.id,
            dir,
            grpc_addr: format!("{}:0", self.ip),
            http_addr: format!("{}:0", self.ip),
            child: None,
            extra_args: args,
            env: self.env,
            dev: self.dev,
            protection,
            _tmp: tmp,
        };
        node.spawn();
        node
    }
}

/// The config a node starts with, and how it is protected. The test's config (its text,
/// and a `--config FILE` among its arguments) is looked at for `[auth]` and `[tls]` of its
/// own. In secure mode a cluster member without them gets the harness's, merged into one
/// config file (the `--config` argument is then replaced by it); otherwise the node starts
/// exactly as the test said.
fn protect(
    args: &mut Vec<String>,
    config: Option<String>,
    dev: bool,
    dir: &Path,
    id: u64,
    ip: &str,
) -> (Option<String>, Protection) {
    let file_at = args.iter().position(|a| a == "--config");
    assert!(
        !args.iter().any(|a| a.starts_with("--config=")),
        "the harness reads `--config FILE` only"
    );
    let mut table = toml::Table::new();
    let mut merge = |text: &str, from: &str| {
        for (k, v) in secure::parse_config(text, from) {
            assert!(
                table.insert(k.clone(), v).is_none(),
                "the test's configs both set `{k}`"
            );
        }
    };
    if let Some(i) = file_at {
        let path = args.get(i + 1).expect("--config needs a file");
        let text = std::fs::read_to_string(path).expect("the test's config file");
        merge(&text, path);
    }
    if let Some(text) = &config {
        merge(text, "NodeBuilder::config");
    }
    if table.contains_key("auth") || table.contains_key("tls") {
        return (config, Protection::OwnConfig);
    }
    if dev || !secure::enabled() {
        return (config, Protection::Plain);
    }
    if let Some(i) = file_at {
        args.drain(i..i + 2);
    }
    let (sections, files) = secure::material().node_config(&dir.with_extension("secure"), id, ip);
    table.extend(sections);
    let text = toml::to_string(&table).expect("the merged config serializes");
    (Some(text), Protection::Secure(files))
}

impl TestNode {
    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("data dir");
        let listen = self.dir.join("listen.json");
        let _ = std::fs::remove_file(&listen);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.dir
                    .parent()
                    .unwrap_or(&self.dir)
                    .join(format!("node-{}.log", self.id)),
            )
            .expect("log file");
        let mut cmd = Command::new(AETHERD);
        cmd.arg("--node-id")
            .arg(self.id.to_string())
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--grpc-addr")
            .arg(&self.grpc_addr)
            .arg("--http-addr")
            .arg(&self.http_addr)
            .arg("--log")
            .arg("info,openraft=info")
            .args(&self.extra_args)
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log));
        if self.dev {
            cmd.arg("--dev");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn aetherd");
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(text) = std::fs::read_to_string(&listen) {
                if let Ok(l) = serde_json::from_str::<Listen>(&text) {
                    if l.pid == pid {
                        self.grpc_addr = l.grpc_addr;
                        self.http_addr = l.http_addr;
                        return;
                    }
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("aetherd exited during start ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "aetherd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir
            .parent()
            .unwrap_or(&self.dir)
            .join(format!("node-{}.log", self.id))
    }

    /// The node's log: every line that reports a panic (a backtrace can push its message
    /// out of the tail), then the last 80 lines.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let panics: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("panicked at"))
            .flat_map(|(i, _)| lines[i..(i + 2).min(lines.len())].iter().copied())
            .collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        match panics.is_empty() {
            true => tail,
            false => format!("panics:\n{}\n(last 80 lines:)\n{tail}", panics.join("\n")),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `kill -9`: no chance to flush or shut down cleanly.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let deadline = Instant::now() + DEADLINE;
            loop {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(
                        status.success(),
                        "aetherd exited with {status} on SIGTERM:\n{}",
                        self.log()
                    );
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("aetherd did not stop on SIGTERM:\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn pause(&self) {
        signal(self.pid().expect("running"), "STOP");
    }

    pub fn resume(&self) {
        signal(self.pid().expect("running"), "CONT");
    }

    /// Starts the process again on the same data directory and the same ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running node");
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The endpoint of this node's gRPC port: TLS with the harness's CA when the harness
    /// secured the node, plaintext otherwise.
    pub fn endpoint(&self) -> Endpoint {
        match &self.protection {
            Protection::Secure(_) => secure::material().endpoint(&self.grpc_addr),
            _ => Endpoint::from_shared(format!("http://{}", self.grpc_addr)).expect("endpoint"),
        }
    }

    /// The token this node's harness clients carry (the admin token when secured).
    pub fn bearer(&self) -> secure::Bearer {
        match &self.protection {
            Protection::Secure(_) => secure::material().bearer(),
            _ => secure::Bearer::default(),
        }
    }

    pub async fn channel(&self) -> TestChannel {
        let ep = self
            .endpoint()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        let deadline = Instant::now() + DEADLINE;
        loop {
            match ep.connect().await {
                Ok(c) => return TestChannel::new(c, self.bearer()),
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "connect {}: {e}\n{}",
                        self.grpc_addr,
                        self.log()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    pub async fn client(&self) -> EventStoreClient<TestChannel> {
        EventStoreClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> AdminClient<TestChannel> {
        AdminClient::new(self.channel().await)
    }

    pub async fn status(&self) -> pb::StatusResponse {
        self.admin()
            .await
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// Waits until this node leads and has applied everything it committed.
    /// Waits until a new cluster adopted this version's apply rules (the adoption also
    /// seeds the replicated idempotency window, which `status` shows).
    pub async fn wait_rules_adopted(&self) {
        let deadline = Instant::now() + DEADLINE;
        while self.status().await.dedupe_window_secs.is_none() {
            assert!(Instant::now() < deadline, "rules never adopted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_leader(&self) {
        self.wait_leader_as(None).await
    }

    /// [`TestNode::wait_leader`], asking for the status with `token` (a node with auth on
    /// refuses to say without one).
    pub async fn wait_leader_as(&self, token: Option<&str>) {
        let mut admin = self.admin().await;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let req = tokens::bearer(pb::StatusRequest {}, token);
            if let Ok(s) = admin.status(req).await {
                let s = s.into_inner();
                if s.role == "leader"
                    && s.applied_index.is_some()
                    && s.applied_index >= s.commit_index
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {} never led:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `aetherctl --addr <this node> ARGS` (with the CA and the admin token of a node
    /// the harness secured).
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_stdin(args, None)
    }

    pub fn ctl_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(AETHERCTL);
        cmd.arg("--addr").arg(&self.grpc_addr);
        if let Protection::Secure(files) = &self.protection {
            cmd.arg("--ca-file")
                .arg(&files.ca_file)
                .arg("--token-file")
                .arg(&files.token_file);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aetherctl");
        {
            let mut si = child.stdin.take().expect("stdin");
            if let Some(data) = stdin {
                si.write_all(data).expect("write stdin");
            }
        }
        child.wait_with_output().expect("aetherctl output")
    }

    /// GET `path` from this node's HTTP port: HTTPS with the admin token when the harness
    /// secured the node.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        if let Protection::Secure(_) = self.protection {
            let m = secure::material();
            let bearer = format!("Bearer {}", m.admin_token());
            let r =
                secure::https_get_with(&self.http_addr, path, &[("authorization", &bearer)]).await;
            return (r.code, r.body);
        }
        http_get(&self.http_addr, path).await
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // A paused process must be resumed to die promptly on some kernels.
            signal(pid, "CONT");
        }
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- log of node {} ----\n{}", self.id, self.log());
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A minimal HTTP/1.1 GET over a raw socket (no extra client dependency).
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let r = http_get_with(addr, path, &[]).await;
    (r.code, r.body)
}

/// What [`http_get_with`] got back.
pub struct HttpReply {
    pub code: u16,
    /// The status line and headers, as sent.
    pub head: String,
    pub body: String,
}

impl HttpReply {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// [`http_get`] with extra request headers, keeping the response's headers.
pub async fn http_get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    http_exchange(s, addr, path, headers).await
}

/// One GET over a connection (plain or TLS) to `addr`, read until the server closes it.
pub async fn http_exchange<S>(
    mut s: S,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpReply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    // A TLS peer may end without close_notify after `Connection: close` (an unexpected EOF
    // to rustls; plain TCP never says so): the reply is in.
    if let Err(e) = s.read_to_end(&mut buf).await {
        assert!(
            e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty(),
            "read {addr}: {e}"
        );
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    HttpReply {
        code,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

pub fn new_event(ty: &str, payload: &str) -> pb::NewEvent {
    pb::NewEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        event_type: ty.into(),
        schema_version: 1,
        event_time_ns: 0,
        payload: payload.as_bytes().to_vec().into(),
        metadata: Default::default(),
    }
}

pub fn expected(kind: pb::expected_version::Kind, version: u64) -> Option<pb::ExpectedVersion> {
    Some(pb::ExpectedVersion {
        kind: kind as i32,
        version,
    })
}

pub fn append_req(
    stream: &str,
    exp: Option<pb::ExpectedVersion>,
    events: Vec<pb::NewEvent>,
) -> pb::AppendRequest {
    pb::AppendRequest {
        stream: stream.into(),
        expected_version: exp,
        events,
    }
}

/// Every event of the global log, read page by page.
pub async fn read_all_events(
    c: &mut EventStoreClient<TestChannel>,
    consistency: pb::Consistency,
) -> Vec<pb::RecordedEvent> {
    let mut out = Vec::new();
    let mut from = Some(0);
    while let Some(f) = from {
        let r = c
            .read_all(pb::ReadAllRequest {
                from_position: Some(f),
                backwards: false,
                limit: 1000,
                consistency: consistency as i32,
            })
            .await
            .expect("read_all")
            .into_inner();
        if r.events.is_empty() {
            break;
        }
        out.extend(r.events);
        from = r.next;
    }
    out
}

pub fn data_dir_in(tmp: &Path, name: &str) -> PathBuf {
    tmp.join(name)
}

/// An appender that keeps retrying the same request (same event ids) against a rotating set
/// of nodes until it is acknowledged — what a careful client does when outcomes are unknown.
pub struct RetryingAppender {
    addrs: Vec<String>,
    next: usize,
    clients: std::collections::HashMap<String, EventStoreClient<TestChannel>>,
}

impl RetryingAppender {
    pub fn new(addrs: Vec<String>) -> Self {
        RetryingAppender {
            addrs,
            next: 0,
            clients: Default::default(),
        }
    }

    async fn client(&mut self, addr: &str) -> Option<EventStoreClient<TestChannel>> {
        if let Some(c) = self.clients.get(addr) {
            return Some(c.clone());
        }
        let ch = secure::endpoint(addr)
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()?;
        let c = EventStoreClient::with_interceptor(ch, secure::bearer());
        self.clients.insert(addr.to_owned(), c.clone());
        Some(c)
    }

    /// Appends until acknowledged, or panics after the deadline.
    pub async fn append(&mut self, req: pb::AppendRequest) -> pb::AppendResponse {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let addr = self.addrs[self.next % self.addrs.len()].clone();
            if let Some(mut c) = self.client(&addr).await {
                match c.append(req.clone()).await {
                    Ok(r) => return r.into_inner(),
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::InvalidArgument
                                | tonic::Code::FailedPrecondition
                                | tonic::Code::AlreadyExists
                        ) =>
                    {
                        panic!("append refused: {s:?}")
                    }
                    Err(_) => {
                        self.clients.remove(&addr);
                    }
                }
            }
            self.next += 1;
            assert!(Instant::now() < deadline, "append never acknowledged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// (global position, event id, stream, stream version) of every event on a node, read
/// locally (that node's own state).
pub async fn local_log(node: &TestNode) -> Vec<(u64, String, String, u64)> {
    let mut c = node.client().await;
    read_all_events(&mut c, pb::Consistency::Local)
        .await
        .into_iter()
        .map(|e| (e.global_position, e.event_id, e.stream, e.stream_version))
        .collect()
}

/// Checks that every node holds the same log, every acknowledged event exactly once at
/// the position it was acknowledged with, positions gap-free.
pub async fn check_logs(nodes: &[&TestNode], acked: &[(String, u64)]) -> usize {
    let reference = local_log(nodes[0]).await;
    for n in &nodes[1..] {
        let other = local_log(n).await;
        assert_eq!(
            other.len(),
            reference.len(),
            "node {} holds another number of events",
            n.id
        );
        assert!(
            other == reference,
            "node {} holds another log than node {}",
            n.id,
            nodes[0].id
        );
    }
    let positions: Vec<u64> = reference.iter().map(|e| e.0).collect();
    assert_eq!(
        positions,
        (0..reference.len() as u64).collect::<Vec<_>>(),
        "gap-free positions"
    );
    let mut by_id = std::collections::HashMap::new();
    for e in &reference {
        assert!(
            by_id.insert(e.1.clone(), e.0).is_none(),
            "event {} stored twice",
            e.1
        );
    }
    for (id, pos) in acked {
        match by_id.get(id) {
            Some(p) => assert_eq!(p, pos, "event {id} moved"),
            None => panic!("acknowledged event {id} lost"),
        }
    }
    reference.len()
}

/// Sets a rate-limit policy through `node`. A new cluster adopts the rules that know policies
/// once every voter answered the clock probe; until then the node says so, and this waits.
pub async fn set_limit_when_ready(node: &TestNode, policy: pb::LimitPolicy) -> bool {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = node
            .admin()
            .await
            .set_limit(pb::SetLimitRequest {
                policy: Some(policy.clone()),
            })
            .await;
        match r {
            Ok(r) => return r.into_inner().replaced,
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                assert!(s.message().contains("rules"), "{s:?}");
                assert!(Instant::now() < deadline, "rules 3 never adopted: {s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("set limit: {s:?}"),
        }
    }
}
