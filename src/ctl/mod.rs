//! `aetherctl`: the command-line client users script against. The contract (commands,
//! flags, `--output json` lines, exit codes) is relied on by tests and checks.
//!
//! Errors go to stderr as `error: <gRPC code>: <server message>` with exit code 1.

pub mod auth;
pub mod bench;
pub mod cluster;
pub mod cpu;
pub mod etcd;
pub mod failover;
pub mod limits;
pub mod output;
pub mod telemetry;
pub mod workflow;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tonic::transport::{Channel, Endpoint};

use crate::node::call::{self, CallFailure};
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::admin_client::AdminClient;
use crate::proto::aetherops::v1::event_store_client::EventStoreClient;
use failover::Failover;
use output::{Output, Printer};

#[derive(Parser, Debug)]
#[command(
    name = "aetherctl",
    version,
    about = "Command-line client for AetherOps"
)]
pub struct Cli {
    /// Node to talk to (HOST:PORT of its gRPC address). Several, comma-separated: a command
    /// goes to the first that takes it (a dead node is passed by); `bench` spreads its load
    /// over all of them.
    #[arg(
        long,
        global = true,
        env = "AETHER_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub addr: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Per-request timeout in milliseconds.
    #[arg(long, global = true, default_value_t = 15_000)]
    pub timeout_ms: u64,
    /// The cluster's CA certificate (PEM): every connection uses TLS and trusts this CA
    /// only. An `https://HOST:PORT` address needs it; `http://HOST:PORT` stays plaintext.
    #[arg(long, global = true, env = "AETHER_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Bearer token (JWT) sent with every call. Prefer --token-file or AETHER_TOKEN: a
    /// token on the command line shows in the process list.
    #[arg(long, global = true, env = "AETHER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (surrounding whitespace ignored).
    #[arg(long, global = true, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Append one event to a stream.
    Append(AppendArgs),
    /// Read a stream.
    Read(ReadArgs),
    /// Read the global log ($all).
    ReadAll(ReadAllArgs),
    /// Follow a stream or the global log: catch up, then print new events as they arrive.
    Tail(TailArgs),
    /// Show this node's status.
    Status,
    /// Cluster administration.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Event-sourced workflows.
    #[command(subcommand)]
    Workflow(workflow::WorkflowCmd),
    /// Telemetry series: ingest, query, retention.
    #[command(subcommand)]
    Telemetry(telemetry::TelemetryCmd),
    /// Rate-limit policies, cluster-wide.
    #[command(subcommand)]
    Limits(limits::LimitsCmd),
    /// Load generators.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Tokens: `mint` one for development; `whoami` shows what a node makes of yours.
    #[command(subcommand)]
    Auth(auth::AuthCmd),
}

#[derive(Args, Debug)]
pub struct AppendArgs {
    pub stream: String,
    /// Event type.
    #[arg(long = "type")]
    pub event_type: String,
    /// JSON payload; `@FILE` reads a file, `-` reads stdin.
    #[arg(long)]
    pub data: String,
    /// any | no-stream | exists | N
    #[arg(long, default_value = "any")]
    pub expected_version: String,
    /// Event id (UUID); the idempotency key. Default: a fresh one.
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub schema_version: u32,
    /// Metadata entries, KEY=VALUE (repeatable).
    #[arg(long = "meta")]
    pub metadata: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ConsistencyArg {
    Linearizable,
    Local,
}

impl ConsistencyArg {
    pub(super) fn pb(self) -> i32 {
        match self {
            ConsistencyArg::Linearizable => pb::Consistency::Linearizable as i32,
            ConsistencyArg::Local => pb::Consistency::Local as i32,
        }
    }
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    pub stream: String,
    /// First stream version to read (default: first, or last with --backwards).
    #[arg(long)]
    pub from: Option<u64>,
    #[arg(long)]
    pub backwards: bool,
    /// At most this many events (default: all).
    #[arg(long)]
    pub limit: Option<u64>,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

#[derive(Args, Debug)]
pub struct ReadAllArgs {
    /// First global position to read.
    #[arg(long)]
    pub from: Option<u64>,
    #[arg(long)]
    pub backwards: bool,
    #[arg(long)]
    pub limit: Option<u64>,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Stream to follow.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub stream: Option<String>,
    /// Follow the global log instead of one stream.
    #[arg(long)]
    pub all: bool,
    /// Start at this version (stream) or position (--all); default: only new events.
    #[arg(long)]
    pub from: Option<u64>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

/// Runs a parsed command line; the binary's `main` is this and error printing.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(ca) = &cli.ca_file {
        let pem = crate::tls::read_ca(ca)?;
        // Set once, before any connection: every endpoint (`endpoint`) reads it.
        let _ = CA_PEM.set(pem);
    }
    if let Some(path) = &cli.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        set_token(&text).with_context(|| format!("the token in {}", path.display()))?;
    } else if let Some(token) = &cli.token {
        set_token(token).context("--token / AETHER_TOKEN")?;
    }
    // With one address, every call went there; with several, the calls name their node.
    let only = failover::parse_addrs(&cli.addr)
        .ok()
        .filter(|a| a.len() == 1)
        .and_then(|mut a| a.pop());
    run_command(cli).await.map_err(|mut e| {
        // A transport failure names the node it happened with (an answer needs no address:
        // it came from the node the user named).
        if let (Some(c), Some(addr)) = (e.downcast_mut::<CallError>(), only) {
            if c.failure != CallFailure::Answered {
                c.addr.get_or_insert(addr);
            }
        }
        e
    })
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    let printer = Printer::new(cli.output);
    let timeout = Duration::from_millis(cli.timeout_ms);
    match cli.command {
        Cmd::Append(a) => append(&cli.addr, timeout, a, &printer).await,
        Cmd::Read(a) => read(&cli.addr, timeout, a, &printer).await,
        Cmd::ReadAll(a) => read_all(&cli.addr, timeout, a, &printer).await,
        Cmd::Tail(a) => tail(&cli.addr, a, &printer).await,
        Cmd::Status => {
            let nodes = Failover::connect_lazy(&cli.addr, timeout)?;
            let (_, s) = status_via(&nodes).await?;
            printer.status(&s);
            Ok(())
        }
        Cmd::Cluster(c) => cluster::run(&cli.addr, timeout, c, &printer).await,
        Cmd::Workflow(w) => workflow::run(&cli.addr, timeout, w, &printer).await,
        Cmd::Telemetry(t) => telemetry::run(&cli.addr, timeout, t, &printer).await,
        Cmd::Limits(l) => limits::run(&cli.addr, timeout, l, &printer).await,
        Cmd::Bench(b) => bench::run(&cli.addr, b, &printer).await,
        Cmd::Auth(a) => auth::run(&cli.addr, timeout, a, &printer).await,
    }
}

/// What a call was for: what a failure mid-call may have done depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallKind {
    /// Not said (a write, perhaps).
    Unknown,
    /// A read: it changed nothing.
    Read,
    /// A write, and how to retry it safely when its outcome is unknown.
    Write { retry: String },
}

/// A failed call as the user should read it: the server's answer (its code and message), or
/// what failed in the transport, with which node, and whether a write may have happened.
#[derive(Debug)]
pub struct CallError {
    pub code: tonic::Code,
    pub failure: CallFailure,
    /// The server's message, or the transport failure's causes.
    pub detail: String,
    /// The node called (filled in by [`run`] for the `--addr` node when not set).
    pub addr: Option<String>,
    pub kind: CallKind,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let with = self
            .addr
            .as_deref()
            .map_or_else(String::new, |a| format!(" to {a}"));
        match self.failure {
            CallFailure::Answered => match &self.addr {
                Some(a) => write!(f, "{a} answered {:?}: {}", self.code, self.detail)?,
                None => write!(f, "{:?}: {}", self.code, self.detail)?,
            },
            CallFailure::NotSent => {
                write!(f, "cannot connect{with}: {}; nothing was sent", self.detail)?
            }
            CallFailure::MaybeSent => write!(
                f,
                "the connection{with} failed during the call ({})",
                self.detail
            )?,
        }
        let unknown_outcome = self.failure == CallFailure::MaybeSent
            || (self.failure == CallFailure::Answered
                && self.code == tonic::Code::DeadlineExceeded);
        match (&self.kind, unknown_outcome) {
            (_, false) | (CallKind::Read, true) => Ok(()),
            (CallKind::Unknown, true) => {
                write!(f, "; if it was a write, it may or may not have happened")
            }
            (CallKind::Write { retry }, true) => {
                write!(f, "; the write may or may not have happened: {retry}")
            }
        }
    }
}

impl std::error::Error for CallError {}

impl CallError {
    pub fn new(s: &tonic::Status, kind: CallKind) -> CallError {
        let failure = call::classify(s);
        CallError {
            code: s.code(),
            failure,
            detail: match failure {
                CallFailure::Answered => s.message().to_owned(),
                _ => call::status_detail(s),
            },
            addr: None,
            kind,
        }
    }
}

/// A failed call (on the one `--addr` node) as the user should read it.
pub fn status_err(s: tonic::Status) -> anyhow::Error {
    CallError::new(&s, CallKind::Unknown).into()
}

/// A failed read (on the one `--addr` node).
pub fn read_err(s: tonic::Status) -> anyhow::Error {
    CallError::new(&s, CallKind::Read).into()
}

/// A failed call on the node at `addr`.
pub fn status_err_at(addr: &str) -> impl FnOnce(tonic::Status) -> anyhow::Error + '_ {
    move |s| {
        let mut e = CallError::new(&s, CallKind::Unknown);
        e.addr = Some(addr.to_owned());
        e.into()
    }
}

pub fn first_addr(addrs: &str) -> &str {
    addrs.split(',').next().unwrap_or(addrs).trim()
}

/// The `--ca-file` CA, read once at start. Process-wide rather than passed down: every
/// command, cluster commands dialling the addresses nodes report included, must connect the
/// same way, and [`endpoint`] is the one place connections are made.
static CA_PEM: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// The endpoint of `addr` (`HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`): TLS
/// trusting the `--ca-file` CA when one is given or the address says `https://`, plaintext
/// otherwise. The server's certificate must name the host dialled.
pub fn endpoint(addr: &str, timeout: Duration) -> anyhow::Result<Endpoint> {
    let (https, host_port) = match (addr.strip_prefix("https://"), addr.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => (CA_PEM.get().is_some(), addr),
    };
    let scheme = if https { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{host_port}"))
        .with_context(|| format!("bad address {addr:?}"))?;
    if https {
        let ca = CA_PEM.get().ok_or_else(|| {
            anyhow!("{addr}: TLS needs the cluster's CA: --ca-file (or AETHER_CA_FILE)")
        })?;
        ep = ep
            .tls_config(crate::tls::client_trusting(ca, host_port))
            .with_context(|| format!("TLS towards {addr}"))?;
    }
    Ok(ep
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .tcp_nodelay(true))
}

/// The `--token` / `--token-file` / `AETHER_TOKEN` bearer header, set once at start.
static TOKEN: std::sync::OnceLock<tonic::metadata::AsciiMetadataValue> = std::sync::OnceLock::new();

/// Sets the bearer token every call carries (once, at start). A token that cannot be a
/// header value (not visible ASCII) is refused here, not at the first call.
pub fn set_token(token: &str) -> anyhow::Result<()> {
    let token = token.trim();
    anyhow::ensure!(!token.is_empty(), "the token is empty");
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow!("the token has characters a header cannot carry"))?;
    let _ = TOKEN.set(value);
    Ok(())
}

/// The `Authorization` header value of the caller's token, for HTTP (GraphQL) calls.
pub fn bearer_header() -> Option<&'static str> {
    TOKEN.get().and_then(|v| v.to_str().ok())
}

/// Puts the bearer token (if any) on every request of a connection.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connection to a node as clients use it: the channel, with the caller's token.
pub type Conn = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// `ch` with the caller's token on every request.
pub fn authed(ch: Channel) -> Conn {
    Conn::new(ch, Bearer(TOKEN.get().cloned()))
}

pub async fn channel(addr: &str, timeout: Duration) -> anyhow::Result<Channel> {
    endpoint(addr, timeout)?.connect().await.map_err(|e| {
        CallError {
            code: tonic::Code::Unavailable,
            failure: CallFailure::NotSent,
            detail: call::chain_detail(&e),
            addr: Some(addr.to_owned()),
            kind: CallKind::Unknown,
        }
        .into()
    })
}

/// The event store's client on a channel, with no message size limit of its own (the node
/// bounds pages).
pub fn events(ch: Channel) -> EventStoreClient<Conn> {
    EventStoreClient::new(authed(ch))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

pub async fn admin(addr: &str, timeout: Duration) -> anyhow::Result<AdminClient<Conn>> {
    Ok(AdminClient::new(authed(channel(addr, timeout).await?)))
}

fn read_data(data: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = if data == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        buf
    } else if let Some(path) = data.strip_prefix('@') {
        std::fs::read(PathBuf::from(path)).with_context(|| format!("reading {path}"))?
    } else {
        data.as_bytes().to_vec()
    };
    serde_json::from_slice::<serde_json::Value>(&bytes).context("--data is not valid JSON")?;
    Ok(bytes)
}

pub fn parse_expected(s: &str) -> anyhow::Result<pb::ExpectedVersion> {
    use pb::expected_version::Kind;
    let (kind, version) = match s {
        "any" => (Kind::Any, 0),
        "no-stream" => (Kind::NoStream, 0),
        "exists" | "stream-exists" => (Kind::StreamExists, 0),
        n => (
            Kind::Exact,
            n.parse().map_err(|_| {
                anyhow!("--expected-version must be any, no-stream, exists or a number, not {n:?}")
            })?,
        ),
    };
    Ok(pb::ExpectedVersion {
        kind: kind as i32,
        version,
    })
}

async fn append(
    addr: &str,
    timeout: Duration,
    a: AppendArgs,
    printer: &Printer,
) -> anyhow::Result<()> {
    let payload = read_data(&a.data)?;
    let mut metadata = std::collections::HashMap::new();
    for m in &a.metadata {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| anyhow!("--meta takes KEY=VALUE, not {m:?}"))?;
        metadata.insert(k.to_owned(), v.to_owned());
    }
    // The id is chosen here, so that a failure with an unknown outcome can name it: a retry
    // with the same id never writes twice.
    let event_id =
        a.id.unwrap_or_else(|| crate::model::new_event_id().to_string());
    let retry = format!("retry with --id {event_id}");
    let req = pb::AppendRequest {
        stream: a.stream.clone(),
        expected_version: Some(parse_expected(&a.expected_version)?),
        events: vec![pb::NewEvent {
            event_id,
            event_type: a.event_type,
            schema_version: a.schema_version,
            event_time_ns: 0,
            payload: payload.into(),
            metadata,
        }],
    };
    let nodes = Failover::connect_lazy(addr, timeout)?;
    let r = nodes
        .call(CallKind::Write { retry }, |ch| {
            let req = req.clone();
            async move { Ok(events(ch).append(req).await?.into_inner()) }
        })
        .await?;
    printer.appended(&a.stream, &r);
    Ok(())
}

/// Prints pages from `fetch(from, page_size)` until `limit` events or the end.
async fn print_pages<F, Fut>(
    mut from: Option<u64>,
    limit: Option<u64>,
    printer: &Printer,
    mut fetch: F,
) -> anyhow::Result<()>
where
    F: FnMut(Option<u64>, u32) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<pb::ReadResponse>>,
{
    let mut left = limit.unwrap_or(u64::MAX);
    while left > 0 {
        let r = fetch(from, left.min(1000) as u32).await?;
        left -= r.events.len() as u64;
        for e in &r.events {
            printer.event(e);
        }
        match r.next {
            Some(n) if !r.events.is_empty() => from = Some(n),
            _ => break,
        }
    }
    Ok(())
}

async fn read(addr: &str, timeout: Duration, a: ReadArgs, printer: &Printer) -> anyhow::Result<()> {
    let nodes = &Failover::connect_lazy(addr, timeout)?;
    print_pages(a.from, a.limit, printer, |from, limit| {
        let req = pb::ReadStreamRequest {
            stream: a.stream.clone(),
            from_version: from,
            backwards: a.backwards,
            limit,
            consistency: a.consistency.pb(),
        };
        nodes.call(CallKind::Read, move |ch| {
            let req = req.clone();
            async move { Ok(events(ch).read_stream(req).await?.into_inner()) }
        })
    })
    .await
}

async fn read_all(
    addr: &str,
    timeout: Duration,
    a: ReadAllArgs,
    printer: &Printer,
) -> anyhow::Result<()> {
    let nodes = &Failover::connect_lazy(addr, timeout)?;
    print_pages(a.from, a.limit, printer, |from, limit| {
        let req = pb::ReadAllRequest {
            from_position: from,
            backwards: a.backwards,
            limit,
            consistency: a.consistency.pb(),
        };
        nodes.call(CallKind::Read, move |ch| async move {
            Ok(events(ch).read_all(req).await?.into_inner())
        })
    })
    .await
}

async fn tail(addr: &str, a: TailArgs, printer: &Printer) -> anyhow::Result<()> {
    // No per-request timeout: a subscription lives as long as the user wants it.
    let nodes = Failover::connect_lazy(addr, Duration::from_secs(u64::MAX / 4))?;
    let target = match (a.all, a.stream) {
        (true, _) => pb::subscribe_request::Target::All(true),
        (false, Some(s)) => pb::subscribe_request::Target::Stream(s),
        (false, None) => bail!("give a stream or --all"),
    };
    // Where to pick up if the node goes away: the next version (position) to print.
    let mut next = a.from;
    let mut seen = 0u64;
    // Subscriptions that broke before delivering anything, in a row: a bound, so that a
    // node that accepts and then drops every subscription does not keep us going round.
    let mut fruitless = 0;
    while a.count.is_none_or(|n| seen < n) {
        let req = pb::SubscribeRequest {
            target: Some(target.clone()),
            from: next,
        };
        let mut stream = nodes
            .call(CallKind::Read, |ch| {
                let req = req.clone();
                async move { Ok(events(ch).subscribe(req).await?.into_inner()) }
            })
            .await?;
        let mut delivered = false;
        while a.count.is_none_or(|n| seen < n) {
            let msg = match stream.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => bail!("the server ended the subscription"),
                // A broken connection or a node going away: the subscription resumes on the
                // next node that takes it, from the next event, so nothing is skipped or
                // printed twice.
                Err(s) if resumable(&s) && next.is_some() && fruitless < 2 * nodes.len() => {
                    break;
                }
                Err(s) => return Err(read_err(s)),
            };
            delivered = true;
            match msg.kind {
                Some(pb::subscribe_response::Kind::Event(e)) => {
                    next = Some(if a.all {
                        e.global_position + 1
                    } else {
                        e.stream_version + 1
                    });
                    printer.event(&e);
                    seen += 1;
                }
                Some(pb::subscribe_response::Kind::CaughtUp(c)) => {
                    next = Some(c.next);
                    printer.caught_up(c.next);
                }
                None => {}
            }
        }
        fruitless = if delivered { 0 } else { fruitless + 1 };
    }
    Ok(())
}

/// A subscription that broke so may be taken up elsewhere (it changed nothing).
fn resumable(s: &tonic::Status) -> bool {
    match call::classify(s) {
        CallFailure::Answered => s.code() == tonic::Code::Unavailable,
        CallFailure::NotSent | CallFailure::MaybeSent => true,
    }
}

/// The status of the first of the `--addr` nodes that answers, and its address.
pub(crate) async fn status_via(
    nodes: &Failover<Channel>,
) -> anyhow::Result<(String, pb::StatusResponse)> {
    let (at, s) = nodes
        .call_from(0, CallKind::Read, |ch| async move {
            Ok(AdminClient::new(authed(ch))
                .status(pb::StatusRequest {})
                .await?
                .into_inner())
        })
        .await?;
    Ok((nodes.addr(at).to_owned(), s))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The step output flag once shared its name with the global `--output` format flag,
    /// and clap panicked on access ("Mismatch between definition and access of `output`").
    #[test]
    fn a_step_output_given_as_output_is_an_error_not_a_panic() {
        let parsed = std::panic::catch_unwind(|| {
            Cli::try_parse_from([
                "aetherctl",
                "workflow",
                "complete-step",
                "wf-1",
                "plan",
                "--output",
                r#"{"dv":1.5}"#,
            ])
            .map(|_| ())
            .map_err(|e| e.to_string())
        });
        assert!(parsed.is_ok(), "parsing panicked");
    }

    /// A broken read changed nothing; a broken write names how to retry it safely.
    #[test]
    fn a_broken_call_says_what_it_means_for_a_write() {
        let reset = tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        let mut read = CallError::new(&reset, CallKind::Read);
        read.addr = Some("127.0.0.1:7".into());
        assert_eq!(
            read.to_string(),
            "the connection to 127.0.0.1:7 failed during the call (connection reset)"
        );
        let retry = "retry with --id X".to_owned();
        let write = CallError::new(&reset, CallKind::Write { retry });
        assert_eq!(
            write.to_string(),
            "the connection failed during the call (connection reset); the write may or may \
             not have happened: retry with --id X"
        );
        let answered = tonic::Status::failed_precondition("wrong expected version");
        let refused = CallError::new(&answered, CallKind::Write { retry: "-".into() });
        assert_eq!(
            refused.to_string(),
            "FailedPrecondition: wrong expected version"
        );
    }

    #[test]
    fn complete_step_takes_its_output_json_next_to_the_output_format() {
        let cli = Cli::try_parse_from([
            "aetherctl",
            "--output",
            "json",
            "workflow",
            "complete-step",
            "wf-1",
            "plan",
            "--result",
            r#"{"dv":1.5}"#,
        ])
        .expect("parses");
        assert_eq!(cli.output, Output::Json);
        match cli.command {
            Cmd::Workflow(workflow::WorkflowCmd::CompleteStep { result, .. }) => {
                assert_eq!(result, r#"{"dv":1.5}"#)
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
