//! `aetherd`: one AetherOps node. Parses flags, environment and config file, then runs.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Parser;

use aetherops::config::Config;

/// mimalloc: the request path (tonic, h2, prost, batching) allocates per message, and
/// glibc malloc spent ~7% of the cluster's CPU on it (measured with perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An AetherOps node (Raft member, event store, telemetry store).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML config file; flags and AETHER_* variables override it.
    #[arg(long, env = "AETHER_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: a one-node cluster on 127.0.0.1, initialized on first start.
    #[arg(long, env = "AETHER_DEV")]
    dev: bool,
    /// Serve on a non-loopback address without authentication (refused otherwise).
    #[arg(long, env = "AETHER_INSECURE")]
    insecure: bool,
    #[arg(long, env = "AETHER_NODE_ID")]
    node_id: Option<u64>,
    /// Data directory (default ./data).
    #[arg(long, env = "AETHER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address (default 127.0.0.1:50051).
    #[arg(long, env = "AETHER_GRPC_ADDR")]
    grpc_addr: Option<String>,
    /// HTTP listen address for /healthz and /metrics (default 127.0.0.1:8080).
    #[arg(long, env = "AETHER_HTTP_ADDR")]
    http_addr: Option<String>,
    /// gRPC address peers and clients use, if not the bound one.
    #[arg(long, env = "AETHER_ADVERTISE_GRPC_ADDR")]
    advertise_grpc_addr: Option<String>,
    /// HTTP address peers report, if not the bound one.
    #[arg(long, env = "AETHER_ADVERTISE_HTTP_ADDR")]
    advertise_http_addr: Option<String>,
    /// Log filter, e.g. "info" or "aetherops=debug,openraft=info".
    #[arg(long, env = "AETHER_LOG", default_value = "info,openraft=warn")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Colour escapes only on a terminal: in a log file or a pipe they are noise.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut config = match &args.config {
        Some(path) => Config {
            source_file: Some(path.clone()),
            ..Config::from_file(path)?
        },
        None => Config::default(),
    };
    config.dev |= args.dev;
    config.insecure |= args.insecure;
    if let Some(v) = args.node_id {
        config.node_id = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.grpc_addr {
        config.grpc_addr = v;
    }
    if let Some(v) = args.http_addr {
        config.http_addr = v;
    }
    if args.advertise_grpc_addr.is_some() {
        config.advertise_grpc_addr = args.advertise_grpc_addr;
    }
    if args.advertise_http_addr.is_some() {
        config.advertise_http_addr = args.advertise_http_addr;
    }
    config.validate()?;
    // Say loudly what an unprotected node is: on stderr (the log) and on stdout, where
    // someone who started it by hand looks.
    if !config.auth.enabled {
        let why = if config.dev {
            "DEV MODE: authentication is OFF; listening on loopback only"
        } else if config.insecure {
            "INSECURE: authentication is OFF on a node others can reach (--insecure)"
        } else {
            "authentication is OFF (no [auth]); listening on loopback only"
        };
        tracing::warn!("{why}");
        println!("aetherd: {why}");
    }
    if config.auth.enabled && config.tls.is_none() && config.exposed_addr().is_some() {
        // Tokens cross the network in the clear: anyone who sees one can replay it until
        // it expires (node tokens included).
        let why = "tokens are checked but [tls] is not configured on a reachable address: \
                   bearer tokens travel in the clear";
        tracing::warn!("{why}");
        println!("aetherd: WARNING: {why}");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let rt = builder.enable_all().build()?;
    let result = rt.block_on(aetherops::server::run(config));
    // Drop every task (and with them the stores) before the process exits: RocksDB must be
    // closed, not torn down by exit while its threads still run.
    drop(rt);
    result
}
