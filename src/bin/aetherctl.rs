//! `aetherctl`: parses the command line and runs it; errors go to stderr, exit code 1.

use clap::Parser;

/// mimalloc: the request path (tonic, h2, prost, batching) allocates per message, and
/// glibc malloc spent ~7% of the cluster's CPU on it (measured with perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = aetherops::ctl::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(aetherops::ctl::run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
