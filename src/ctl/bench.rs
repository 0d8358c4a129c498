//! `aetherctl bench`: end-to-end load against real nodes, with a progress bar, reporting
//! throughput and latency percentiles. Bounded by time or count; stops by itself.

use super::output::outln;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::failover::{Failover, FailoverError};
use super::output::{Output, Printer};
use super::{events, parse_expected, CallKind, Conn, ConsistencyArg};
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::event_store_client::EventStoreClient;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Appends from many concurrent clients, each to its own stream.
    Append(AppendBench),
    /// Builds one workflow with many events, then times "state at time T" queries at random
    /// times over its life (and "state at version V").
    WorkflowState(WorkflowStateBench),
    /// Writes one small stream, then times reads of it one at a time, linearizable and
    /// local in turn: the read floor of one node.
    Read(ReadBench),
    /// Ingests synthetic 1 kHz ADC-like series; acknowledged only when durable.
    Ingest(super::telemetry::IngestBench),
    /// Ingests one series, then times 1000-bucket queries served from rollups and from raw.
    Query(super::telemetry::QueryBench),
    /// Puts new keys into an etcd cluster (v3 gRPC API) the way `append` appends, to compare
    /// the two on one machine (`scripts/bench-vs-etcd`).
    Etcd(super::etcd::EtcdBench),
    /// gRPC health checks (`grpc.health.v1.Health/Check`, no work behind them) from the
    /// load of `append`: the floor of a unary call through this client and the servers on
    /// this machine. etcd serves the same service, so `--addr` may name etcd's members.
    Health(HealthBench),
}

#[derive(Args, Debug, Clone)]
pub struct HealthBench {
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Args, Debug, Clone)]
pub struct WorkflowStateBench {
    /// Events in the workflow.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Steps of the workflow (its events are start/fail pairs cycling over the steps).
    #[arg(long, default_value_t = 50)]
    pub steps: u32,
    /// Events per AppendEvents request while building.
    #[arg(long, default_value_t = 1000)]
    pub batch: u64,
    /// Queries to time (each kind).
    #[arg(long, default_value_t = 2000)]
    pub queries: u64,
    /// The queries' consistency.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

#[derive(Args, Debug, Clone)]
pub struct ReadBench {
    /// Events in the stream read.
    #[arg(long, default_value_t = 10)]
    pub events: u32,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 256)]
    pub event_size: usize,
    /// Reads to time (each consistency).
    #[arg(long, default_value_t = 5000)]
    pub reads: u64,
    /// Worker threads of the client's runtime while it times: 1 is a current-thread
    /// runtime (the call and its connection on one thread, no hand-offs in the client).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
}

#[derive(Args, Debug, Clone)]
pub struct AppendBench {
    /// Events per append.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 256)]
    pub event_size: usize,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// The shape of a closed-loop load run (`bench append`, `bench etcd`, `bench health`).
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Concurrent clients (each waits for its request before sending the next).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Run this long (seconds), unless --count is reached first.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Stop after this many requests in total.
    #[arg(long)]
    pub count: Option<u64>,
    /// gRPC connections per address (clients share them round-robin).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Requests before measuring starts (per client), to warm connections and caches.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
}

impl LoadArgs {
    /// The run's plan; `unit` names a request in the progress bar.
    pub(super) fn plan(&self, unit: &'static str) -> LoadPlan {
        LoadPlan {
            duration_secs: self.duration_secs,
            count: self.count,
            warmup: self.warmup,
            unit,
        }
    }
}

pub async fn run(addrs: &str, cmd: BenchCmd, printer: &Printer) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Append(b) => append(addrs, b, printer).await,
        BenchCmd::WorkflowState(b) => workflow_state(addrs, b, printer).await,
        BenchCmd::Read(b) => read(addrs, b, printer).await,
        BenchCmd::Ingest(b) => super::telemetry::bench_ingest(addrs, b, printer).await,
        BenchCmd::Query(b) => super::telemetry::bench_query(addrs, b, printer).await,
        BenchCmd::Etcd(b) => super::etcd::bench(b, printer).await,
        BenchCmd::Health(b) => health(addrs, b, printer).await,
    }
}

/// A JSON payload of exactly `size` bytes (at least the 10 bytes of `{"d":"…"}`).
fn payload(size: usize) -> bytes::Bytes {
    let fill = size.saturating_sub(8).max(1);
    format!("{{\"d\":\"{}\"}}", "x".repeat(fill)).into()
}

/// Where client `i` of a load goes among `addrs` addresses with `connections` connections
/// each: (address, connection). Clients are spread over the addresses first, then over
/// each one's connections.
pub(super) fn slot(i: usize, addrs: usize, connections: usize) -> (usize, usize) {
    (i % addrs, (i / addrs) % connections)
}

/// `connections` lazy channels to each of `addrs`, handed out by [`slot`].
pub(super) struct Spread {
    channels: Vec<Vec<tonic::transport::Channel>>,
}

impl Spread {
    pub fn lazy(addrs: &[String], connections: usize) -> anyhow::Result<Spread> {
        anyhow::ensure!(
            !addrs.is_empty() && connections > 0,
            "a load needs an address and a connection"
        );
        let timeout = Duration::from_secs(30);
        let mut channels = Vec::with_capacity(addrs.len());
        for a in addrs {
            let ep = super::endpoint(a, timeout)?;
            channels.push((0..connections).map(|_| ep.connect_lazy()).collect());
        }
        Ok(Spread { channels })
    }

    /// Client `i`'s address (its index) and channel.
    pub fn of(&self, i: usize) -> (usize, tonic::transport::Channel) {
        let (home, conn) = slot(i, self.channels.len(), self.channels[0].len());
        (home, self.channels[home][conn].clone())
    }
}

/// How long a bench client waits when every node's breaker is open (a breaker lets a probe
/// through a second after it opened).
const ALL_OPEN_PAUSE: Duration = Duration::from_millis(50);

/// The largest latency a load run records (µs); longer ones count as this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What one request of a load run came to.
pub(super) enum Outcome {
    /// Acknowledged: its latency is recorded.
    Done,
    /// Not sent (every node's breaker open): it is given back to the budget, and the client
    /// waits [`ALL_OPEN_PAUSE`] rather than spinning through it.
    NotSent,
    /// Failed: counted as an error.
    Failed(String),
}

/// One client of a closed-loop load run: it sends a request, waits for its outcome, and
/// sends the next. Every system benchmarked (our nodes, etcd) is driven by [`drive`], so
/// their figures are measured the same way.
pub(super) trait LoadClient: Send + 'static {
    fn call(&mut self) -> impl std::future::Future<Output = Outcome> + Send;
}

/// How long a load run lasts and how it starts.
pub(super) struct LoadPlan {
    /// Run this long, unless `count` requests were done first.
    pub duration_secs: u64,
    pub count: Option<u64>,
    /// Requests per client before measuring starts (connections and caches warm up).
    pub warmup: u64,
    /// What a request is called in the progress bar ("appends", "puts", "checks").
    pub unit: &'static str,
}

/// The figures of a load run, merged over its clients.
pub(super) struct LoadResult {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed_secs: f64,
    /// What the machine and this client spent while the clients ran.
    pub cpu: super::cpu::CpuUse,
}

impl LoadResult {
    /// Requests acknowledged while measuring.
    pub fn done(&self) -> u64 {
        self.hist.len()
    }

    pub fn per_sec(&self) -> f64 {
        self.done() as f64 / self.elapsed_secs
    }

    /// The JSON report's `latency_ms`.
    pub fn latency_json(&self) -> serde_json::Value {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        json!({
            "p50": ms(0.50),
            "p90": ms(0.90),
            "p99": ms(0.99),
            "p999": ms(0.999),
            "max": self.hist.max() as f64 / 1000.0,
        })
    }

    /// A JSON report: `fields` (what this bench sets) and what every load reports — the
    /// time, the count and rate of `unit` ("checks": `checks`, `checks_per_sec`), the errors,
    /// the latencies and the CPU.
    pub fn report(&self, unit: &str, fields: serde_json::Value) -> serde_json::Value {
        let mut report = fields;
        if let Some(map) = report.as_object_mut() {
            map.insert("elapsed_secs".into(), json!(self.elapsed_secs));
            map.insert(unit.into(), json!(self.done()));
            map.insert(format!("{unit}_per_sec"), json!(self.per_sec()));
            map.insert("errors".into(), json!(self.errors));
            map.insert("first_error".into(), json!(self.first_error));
            map.insert("latency_ms".into(), self.latency_json());
            map.insert("cpu".into(), self.cpu_json());
        }
        report
    }

    /// The text report's lines for a load of one kind of request (`unit`: "puts",
    /// "checks"): how many in how long, the rate, the latency line and the first error.
    pub fn print_requests(&self, unit: &str) {
        outln!(
            "  {} {unit} in {:.2}s: {:.0} {unit}/s, {} errors",
            self.done(),
            self.elapsed_secs,
            self.per_sec(),
            self.errors
        );
        self.print_latency();
        self.print_cpu();
        if let Some(e) = &self.first_error {
            outln!("  first error: {e}");
        }
    }

    /// The text report's CPU line: the machine's and this client's core-µs per request.
    pub fn print_cpu(&self) {
        self.cpu.print(self.done());
    }

    /// The JSON report's `cpu`.
    pub fn cpu_json(&self) -> serde_json::Value {
        self.cpu.json(self.done())
    }

    /// The text report's latency line.
    pub fn print_latency(&self) {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        outln!(
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            ms(0.50),
            ms(0.90),
            ms(0.99),
            ms(0.999),
            self.hist.max() as f64 / 1000.0
        );
    }
}

struct ClientResult {
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs one task per client until the plan's time or count is used up, all clients starting
/// together after their warm-up, with a progress bar in text mode.
pub(super) async fn drive<C: LoadClient>(
    clients: Vec<C>,
    plan: LoadPlan,
    printer: &Printer,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!clients.is_empty(), "counts must be > 0");
    let done = Arc::new(AtomicU64::new(0));
    let deadline_holder = Arc::new(std::sync::OnceLock::<Instant>::new());
    let budget = Arc::new(AtomicU64::new(plan.count.unwrap_or(u64::MAX)));

    let pb_bar = if printer.format == Output::Text {
        let bar = match plan.count {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new(plan.duration_secs),
        };
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
                .context("progress template")?
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len() + 1));
    let mut tasks = Vec::with_capacity(clients.len());
    for mut client in clients {
        let done = done.clone();
        let budget = budget.clone();
        let barrier = barrier.clone();
        let deadline = deadline_holder.clone();
        let warmup = plan.warmup;
        tasks.push(tokio::spawn(async move {
            let mut res = ClientResult {
                hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                    .expect("valid histogram bounds"),
                errors: 0,
                first_error: None,
            };
            for _ in 0..warmup {
                client.call().await;
            }
            barrier.wait().await;
            let Some(&end) = deadline.get() else {
                return res;
            };
            loop {
                if Instant::now() >= end {
                    break;
                }
                if budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                let t = Instant::now();
                match client.call().await {
                    Outcome::Done => {
                        let us = t.elapsed().as_micros().max(1) as u64;
                        let _ = res.hist.record(us.min(MAX_LATENCY_US));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::NotSent => {
                        budget.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(ALL_OPEN_PAUSE).await;
                    }
                    Outcome::Failed(e) => {
                        res.errors += 1;
                        res.first_error.get_or_insert(e);
                    }
                }
            }
            res
        }));
    }
    let _ = deadline_holder.set(Instant::now() + Duration::from_secs(plan.duration_secs));
    barrier.wait().await;
    let started = Instant::now();
    let cpu_at_start = super::cpu::CpuSample::now();
    let ticker = {
        let done = done.clone();
        let bar = pb_bar.clone();
        let count_mode = plan.count.is_some();
        let unit = plan.unit;
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let n = done.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, n);
                if count_mode {
                    bar.set_position(n);
                } else {
                    bar.set_position(started.elapsed().as_secs());
                }
                bar.set_message(format!("{rate:.0} {unit}/s"));
            }
        })
    };
    let mut all = ClientResult {
        hist: Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)?,
        errors: 0,
        first_error: None,
    };
    for t in tasks {
        let r = t.await?;
        all.hist.add(&r.hist)?;
        all.errors += r.errors;
        all.first_error = all.first_error.or(r.first_error);
    }
    let result = LoadResult {
        hist: all.hist,
        errors: all.errors,
        first_error: all.first_error,
        elapsed_secs: started.elapsed().as_secs_f64(),
        cpu: super::cpu::CpuUse::between(&cpu_at_start, &super::cpu::CpuSample::now()),
    };
    ticker.abort();
    pb_bar.finish_and_clear();
    Ok(result)
}

/// One `bench append` client: appends to its own stream through the shared failover,
/// starting at its home node on its connection there.
struct AppendClient {
    failover: Arc<Failover<Arc<[EventStoreClient<Conn>]>>>,
    home: usize,
    conn: usize,
    stream: String,
    body: bytes::Bytes,
    batch_size: usize,
    expected: pb::ExpectedVersion,
}

impl LoadClient for AppendClient {
    fn call(&mut self) -> impl std::future::Future<Output = Outcome> + Send {
        let req = pb::AppendRequest {
            stream: self.stream.clone(),
            expected_version: Some(self.expected),
            events: (0..self.batch_size)
                .map(|_| pb::NewEvent {
                    event_id: crate::model::new_event_id().to_string(),
                    event_type: "BenchEvent".into(),
                    schema_version: 1,
                    event_time_ns: 0,
                    payload: self.body.clone(),
                    metadata: Default::default(),
                })
                .collect(),
        };
        let (failover, home, conn) = (self.failover.clone(), self.home, self.conn);
        async move {
            let r = failover
                .call_from(home, CallKind::Unknown, move |conns| {
                    let (mut c, req) = (conns[conn].clone(), req.clone());
                    async move { c.append(req).await }
                })
                .await;
            match r {
                Ok(_) => Outcome::Done,
                Err(e)
                    if e.downcast_ref::<FailoverError>()
                        .is_some_and(FailoverError::all_skipped) =>
                {
                    Outcome::NotSent
                }
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
    }
}

/// One `bench health` client: checks its server's health, on its connection there.
struct HealthCheckClient {
    client: HealthClient<Conn>,
    addr: String,
}

impl LoadClient for HealthCheckClient {
    fn call(&mut self) -> impl std::future::Future<Output = Outcome> + Send {
        let mut client = self.client.clone();
        let addr = self.addr.clone();
        async move {
            match client.check(HealthCheckRequest::default()).await {
                Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => Outcome::Done,
                Ok(r) => Outcome::Failed(format!("{addr}: status {}", r.get_ref().status)),
                Err(s) => Outcome::Failed(super::status_err_at(&addr)(s).to_string()),
            }
        }
    }
}

async fn health(addrs: &str, b: HealthBench, printer: &Printer) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.load.concurrency > 0 && b.load.connections > 0,
        "counts must be > 0"
    );
    let nodes = super::failover::parse_addrs(addrs)?;
    let spread = Spread::lazy(&nodes, b.load.connections)?;
    let clients = (0..b.load.concurrency)
        .map(|i| {
            let (home, ch) = spread.of(i);
            HealthCheckClient {
                client: HealthClient::new(super::authed(ch)),
                addr: nodes[home].clone(),
            }
        })
        .collect();
    let r = drive(clients, b.load.plan("checks"), printer).await?;
    let report = r.report(
        "checks",
        json!({
            "bench": "health",
            "nodes": nodes,
            "concurrency": b.load.concurrency,
        }),
    );
    match printer.format {
        Output::Json => printer.json(&report),
        Output::Text => {
            outln!(
                "health bench: {} clients x 1 health check against {}",
                b.load.concurrency,
                nodes.join(",")
            );
            r.print_requests("checks");
        }
    }
    Ok(())
}

async fn append(addrs: &str, b: AppendBench, printer: &Printer) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.load.concurrency > 0 && b.batch_size > 0 && b.load.connections > 0,
        "counts must be > 0"
    );
    let timeout = Duration::from_secs(30);
    // `connections` lazy channels per address, behind one breaker per address shared by
    // every client: a dead node is passed by (and probed now and then), not hammered.
    let failover = Arc::new(Failover::lazy_with(addrs, timeout, |ep| {
        (0..b.load.connections)
            .map(|_| events(ep.connect_lazy()))
            .collect::<Arc<[_]>>()
    })?);
    let nodes: Vec<String> = (0..failover.len())
        .map(|i| failover.addr(i).to_owned())
        .collect();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let body = payload(b.event_size);
    let expected = parse_expected("any")?;
    let clients = (0..b.load.concurrency)
        .map(|i| {
            // A client whose node does not take its call goes on to the next node (same
            // connection index there).
            let (home, conn) = slot(i, nodes.len(), b.load.connections);
            AppendClient {
                failover: failover.clone(),
                home,
                conn,
                stream: format!("bench-{run_id}-{i}"),
                body: body.clone(),
                batch_size: b.batch_size,
                expected,
            }
        })
        .collect();
    let r = drive(clients, b.load.plan("appends"), printer).await?;
    let (appends, elapsed) = (r.done(), r.elapsed_secs);
    let events = appends * b.batch_size as u64;
    let per_node: Vec<serde_json::Value> = (0..failover.len())
        .map(|i| {
            let c = failover.counts(i);
            json!({
                "addr": failover.addr(i),
                "acks": c.ok.load(Ordering::Relaxed),
                "attempts": c.attempts.load(Ordering::Relaxed),
                "failures": c.failures.load(Ordering::Relaxed),
                "skipped": c.skipped.load(Ordering::Relaxed),
                "breaker": format!("{:?}", failover.state(i)),
            })
        })
        .collect();
    let report = r.report(
        "appends",
        json!({
            "bench": "append",
            "nodes": nodes,
            "concurrency": b.load.concurrency,
            "batch_size": b.batch_size,
            "event_size": b.event_size,
            "events": events,
            "per_node": per_node,
            "events_per_sec": events as f64 / elapsed,
        }),
    );
    match printer.format {
        Output::Json => printer.json(&report),
        Output::Text => {
            outln!(
                "append bench: {} clients x {} events of {} B against {}",
                b.load.concurrency,
                b.batch_size,
                b.event_size,
                nodes.join(",")
            );
            outln!(
                "  {appends} appends ({events} events) in {elapsed:.2}s: {:.0} appends/s, {:.0} events/s, {} errors",
                r.per_sec(),
                events as f64 / elapsed,
                r.errors
            );
            r.print_latency();
            r.print_cpu();
            for n in &per_node {
                outln!(
                    "  {}: {} acks (warm-up included), {} failed calls, passed by {} times, breaker {}",
                    n["addr"].as_str().unwrap_or_default(),
                    n["acks"],
                    n["failures"],
                    n["skipped"],
                    n["breaker"].as_str().unwrap_or_default()
                );
            }
            if let Some(e) = &r.first_error {
                outln!("  first error: {e}");
            }
        }
    }
    Ok(())
}

fn bar(printer: &Printer, len: u64, what: &str) -> anyhow::Result<ProgressBar> {
    if printer.format != Output::Text {
        return Ok(ProgressBar::hidden());
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {what}"
        ))?
        .progress_chars("=> "),
    );
    Ok(bar)
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "p50": h.value_at_quantile(0.50) as f64 / 1000.0,
        "p90": h.value_at_quantile(0.90) as f64 / 1000.0,
        "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
        "max": h.max() as f64 / 1000.0,
    })
}

async fn workflow_state(
    addrs: &str,
    b: WorkflowStateBench,
    printer: &Printer,
) -> anyhow::Result<()> {
    use crate::proto::aetherops::v1::workflows_client::WorkflowsClient;
    use crate::time::format_timestamp;
    use crate::workflow::events::{
        StepDef, StepFailed, StepStarted, WorkflowCreated, WorkflowEvent,
    };
    use rand::Rng;

    anyhow::ensure!(
        b.events >= 2 && b.steps > 0 && b.batch > 0,
        "counts must be > 0"
    );
    let (node, ch) = one_node(addrs).await?;
    let node = node.as_str();
    let mut c = WorkflowsClient::new(super::authed(ch))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let id = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let pairs = (b.events - 1).div_ceil(2);
    let attempts = u32::try_from(pairs.div_ceil(u64::from(b.steps)) + 1)
        .context("too many events per step")?;
    let created = WorkflowEvent::WorkflowCreated(WorkflowCreated {
        workflow_id: id.clone(),
        name: "state-at-T benchmark".into(),
        steps: (0..b.steps)
            .map(|i| {
                StepDef::new(format!("step-{i}"), format!("step {i}")).with_max_attempts(attempts)
            })
            .collect(),
        metadata: Default::default(),
    });
    // The event sequence: created, then (start, fail) pairs cycling over the steps.
    let event = |n: u64| -> WorkflowEvent {
        if n == 0 {
            return created.clone();
        }
        let pair = (n - 1) / 2;
        let step = format!("step-{}", pair % u64::from(b.steps));
        let attempt = (pair / u64::from(b.steps) + 1) as u32;
        if (n - 1).is_multiple_of(2) {
            WorkflowEvent::StepStarted(StepStarted {
                step_id: step,
                attempt,
                worker: None,
            })
        } else {
            WorkflowEvent::StepFailed(StepFailed {
                step_id: step,
                error: "bench".into(),
                attempt,
                retryable: true,
            })
        }
    };
    let build = bar(printer, b.events, "events written")?;
    let mut times = Vec::with_capacity((b.events / b.batch + 1) as usize);
    let mut n = 0;
    let started = Instant::now();
    while n < b.events {
        let end = (n + b.batch).min(b.events);
        let mut events = Vec::with_capacity((end - n) as usize);
        for i in n..end {
            let e = event(i).encode()?;
            events.push(pb::WorkflowEventInput {
                event_id: String::new(),
                event_type: e.event_type.to_owned(),
                schema_version: e.schema_version,
                payload: e.payload.into(),
            });
        }
        let r = c
            .append_events(pb::AppendWorkflowEventsRequest {
                workflow_id: id.clone(),
                expected_version: Some(parse_expected(&if n == 0 {
                    "no-stream".to_owned()
                } else {
                    (n - 1).to_string()
                })?),
                events,
            })
            .await
            .map_err(super::status_err_at(node))?
            .into_inner();
        times.push(r.commit_time_ns);
        n = end;
        build.set_position(n);
    }
    build.finish_and_clear();
    let build_secs = started.elapsed().as_secs_f64();
    let (first, last) = (times[0], *times.last().unwrap_or(&times[0]));

    let mut rng = rand::rng();
    let mut by_time = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut by_version = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let q = bar(printer, b.queries * 2, "queries")?;
    for i in 0..b.queries * 2 {
        let at = if i % 2 == 0 {
            let t = rng.random_range(first..=last.max(first + 1));
            pb::get_workflow_state_request::At::AtTime(format_timestamp(t))
        } else {
            pb::get_workflow_state_request::At::AtVersion(rng.random_range(0..b.events))
        };
        let t = Instant::now();
        let r = c
            .get_state(pb::GetWorkflowStateRequest {
                workflow_id: id.clone(),
                at: Some(at),
                consistency: b.consistency.pb(),
            })
            .await
            .map_err(super::status_err_at(node))?;
        let us = t.elapsed().as_micros().max(1) as u64;
        anyhow::ensure!(!r.get_ref().state_json.is_empty(), "empty state");
        if i % 2 == 0 {
            by_time.record(us.min(60_000_000))?;
        } else {
            by_version.record(us.min(60_000_000))?;
        }
        q.inc(1);
    }
    q.finish_and_clear();
    let report = json!({
        "bench": "workflow-state",
        "workflow_id": id,
        "events": b.events,
        "steps": b.steps,
        "build_secs": build_secs,
        "build_events_per_sec": b.events as f64 / build_secs,
        "queries": b.queries,
        "consistency": format!("{:?}", b.consistency),
        "state_at_time_ms": percentiles(&by_time),
        "state_at_version_ms": percentiles(&by_version),
    });
    match printer.format {
        Output::Json => printer.json(&report),
        Output::Text => {
            outln!("workflow-state bench: one workflow of {} events ({} steps), built in {build_secs:.1}s", b.events, b.steps);
            for (name, h) in [
                ("state at time T", &by_time),
                ("state at version V", &by_version),
            ] {
                print_latency_line(&format!("{name} ({:?})", b.consistency), b.queries, h);
            }
        }
    }
    Ok(())
}

/// One node answers every call (the first of `addrs` that takes a connection): the figures
/// are that node's.
async fn one_node(addrs: &str) -> anyhow::Result<(String, tonic::transport::Channel)> {
    let timeout = Duration::from_secs(60);
    let nodes = Failover::connect_lazy(addrs, timeout)?;
    let (at, ch) = nodes.connect_from(0, timeout).await?;
    Ok((nodes.addr(at).to_owned(), ch))
}

fn print_latency_line(name: &str, count: u64, h: &Histogram<u64>) {
    outln!(
        "  {name}: {count} calls, latency ms p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

/// `bench read`: one small stream, read whole one call at a time (nothing else in flight),
/// linearizable and local in turn, so both see the same node in the same state; and beside
/// them a gRPC health check on the same connection, the transport's own floor.
async fn read(addrs: &str, b: ReadBench, printer: &Printer) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.events > 0 && b.reads > 0 && b.client_threads > 0,
        "counts must be > 0"
    );
    let rt = if b.client_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        rt.worker_threads(b.client_threads);
        rt
    }
    .enable_all()
    .build()?;
    let (addrs, bench) = (addrs.to_owned(), b.clone());
    let timer_printer = Printer {
        format: printer.format,
    };
    // The client's connection lives on the runtime chosen, on a thread of its own.
    let (node, hists) = tokio::task::spawn_blocking(move || {
        rt.block_on(time_reads(&addrs, &bench, &timer_printer))
    })
    .await??;
    let [lin, local, health] = &hists;
    let report = json!({
        "bench": "read",
        "node": node,
        "events": b.events,
        "event_size": b.event_size,
        "reads": b.reads,
        "client_threads": b.client_threads,
        "linearizable_ms": percentiles(lin),
        "local_ms": percentiles(local),
        "health_check_ms": percentiles(health),
    });
    match printer.format {
        Output::Json => printer.json(&report),
        Output::Text => {
            outln!(
                "read bench: one stream of {} events of {} B at {node}, one call at a time, \
                 client runtime of {} thread(s)",
                b.events,
                b.event_size,
                b.client_threads
            );
            print_latency_line("read (linearizable)", b.reads, lin);
            print_latency_line("read (local)", b.reads, local);
            print_latency_line("gRPC health check (the transport)", b.reads, health);
        }
    }
    Ok(())
}

/// Writes the stream, then times reads and health checks in turn: latencies in µs of
/// linearizable reads, local reads and health checks.
async fn time_reads(
    addrs: &str,
    b: &ReadBench,
    printer: &Printer,
) -> anyhow::Result<(String, [Histogram<u64>; 3])> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    let (node, ch) = one_node(addrs).await?;
    let mut health = HealthClient::new(super::authed(ch.clone()));
    let mut c = events(ch);
    let stream = format!("bench-read-{}", uuid::Uuid::new_v4().simple());
    let body = payload(b.event_size);
    c.append(pb::AppendRequest {
        stream: stream.clone(),
        expected_version: Some(parse_expected("no-stream")?),
        events: (0..b.events)
            .map(|_| pb::NewEvent {
                event_id: crate::model::new_event_id().to_string(),
                event_type: "BenchEvent".into(),
                schema_version: 1,
                event_time_ns: 0,
                payload: body.clone(),
                metadata: Default::default(),
            })
            .collect(),
    })
    .await
    .map_err(super::status_err_at(&node))?;
    let new = || Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3);
    let mut hists = [new()?, new()?, new()?];
    let q = bar(printer, b.reads * 3, "calls")?;
    for i in 0..b.reads * 3 {
        let k = (i % 3) as usize;
        let t = Instant::now();
        if k == 2 {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(super::status_err_at(&node))?;
        } else {
            let consistency = [ConsistencyArg::Linearizable, ConsistencyArg::Local][k];
            let r = c
                .read_stream(pb::ReadStreamRequest {
                    stream: stream.clone(),
                    from_version: None,
                    backwards: false,
                    limit: 0,
                    consistency: consistency.pb(),
                })
                .await
                .map_err(super::status_err_at(&node))?;
            anyhow::ensure!(
                r.get_ref().events.len() == b.events as usize,
                "read {} events of {}",
                r.get_ref().events.len(),
                b.events
            );
        }
        let us = t.elapsed().as_micros().max(1) as u64;
        hists[k].record(us.min(MAX_LATENCY_US))?;
        q.inc(1);
    }
    q.finish_and_clear();
    Ok((node, hists))
}

#[cfg(test)]
mod tests {
    use super::slot;

    /// Clients go round the addresses first, then round each address's connections, and
    /// every (address, connection) pair gets the same share.
    #[test]
    fn clients_spread_over_addresses_then_connections() {
        let first: Vec<_> = (0..6).map(|i| slot(i, 3, 2)).collect();
        assert_eq!(first, [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]);
        assert!((0..60).all(|i| slot(i + 6, 3, 2) == slot(i, 3, 2)));
        assert!((0..5).all(|i| slot(i, 1, 1) == (0, 0)));
    }
}
