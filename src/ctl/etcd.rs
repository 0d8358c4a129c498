//! `aetherctl bench etcd`: the load of `bench append` (closed-loop clients, one request in
//! flight each, a new key per request) sent to an etcd cluster's v3 KV API instead, so
//! that `scripts/bench-vs-etcd` compares the two on one machine with one client.
//!
//! Only `Put` is spoken (`proto/etcd`, a wire-compatible subset of etcd's API). Durability
//! is etcd's default: a Put is answered once a quorum has it in its fsynced WAL. A Put
//! sent to a follower is forwarded to the leader by etcd itself, as for any etcd client.

use super::output::outln;

use clap::Args;
use serde_json::json;

use super::bench::{drive, LoadClient, Outcome, Spread};
use super::output::{Output, Printer};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::PutRequest;
use tonic::transport::Channel;

#[derive(Args, Debug, Clone)]
pub struct EtcdBench {
    /// etcd members' client addresses (HOST:PORT, comma-separated); clients are spread
    /// over them round-robin.
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// Value bytes per Put.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    #[command(flatten)]
    pub load: super::bench::LoadArgs,
}

/// The largest value a Put may carry here: etcd refuses requests over 1.5 MiB by default.
const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// One client: Puts keys of its own (`<prefix>/<n>`, n counting up), so every Put writes a
/// new key, as every append writes a new event.
struct PutClient {
    kv: KvClient<Channel>,
    addr: String,
    prefix: String,
    next: u64,
    value: bytes::Bytes,
}

impl LoadClient for PutClient {
    fn call(&mut self) -> impl std::future::Future<Output = Outcome> + Send {
        let req = PutRequest {
            key: format!("{}/{:012}", self.prefix, self.next).into(),
            value: self.value.clone(),
            ..Default::default()
        };
        self.next += 1;
        let mut kv = self.kv.clone();
        let addr = self.addr.clone();
        async move {
            match kv.put(req).await {
                Ok(_) => Outcome::Done,
                Err(s) => Outcome::Failed(super::status_err_at(&addr)(s).to_string()),
            }
        }
    }
}

pub async fn bench(b: EtcdBench, printer: &Printer) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.load.concurrency > 0 && b.load.connections > 0,
        "counts must be > 0"
    );
    anyhow::ensure!(
        b.value_size <= MAX_VALUE_BYTES,
        "--value-size is at most {MAX_VALUE_BYTES} bytes"
    );
    let members = super::failover::parse_addrs(&b.endpoints)?;
    // The same HTTP/2 fan-out as `bench append`.
    let spread = Spread::lazy(&members, b.load.connections)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let value = bytes::Bytes::from(vec![b'x'; b.value_size]);
    let clients = (0..b.load.concurrency)
        .map(|i| {
            let (home, ch) = spread.of(i);
            PutClient {
                kv: KvClient::new(ch),
                addr: members[home].clone(),
                prefix: format!("aetherctl-bench/{run_id}/{i}"),
                next: 0,
                value: value.clone(),
            }
        })
        .collect();
    let r = drive(clients, b.load.plan("puts"), printer).await?;
    let report = r.report(
        "puts",
        json!({
            "bench": "etcd",
            "endpoints": members,
            "concurrency": b.load.concurrency,
            "value_size": b.value_size,
        }),
    );
    match printer.format {
        Output::Json => printer.json(&report),
        Output::Text => {
            outln!(
                "etcd bench: {} clients x 1 Put of a new key with {} B against {}",
                b.load.concurrency,
                b.value_size,
                members.join(",")
            );
            r.print_requests("puts");
        }
    }
    Ok(())
}
