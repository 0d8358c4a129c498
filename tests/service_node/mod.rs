//! A one-node cluster started in the test's own process (RocksDB, Raft, the state machine's
//! feed), with the service layer on it: for tests of operations that have no transport of
//! their own to go through, or that measure the process itself.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aetherops::config::Config;
use aetherops::node::Node;
use aetherops::service::telemetry::SeriesPoints;
use aetherops::service::{Caller, Service};

pub const MS: i64 = 1_000_000;

pub struct Cluster {
    _dir: tempfile::TempDir,
    _node: Arc<Node>,
    pub svc: Service,
}

/// Starts the node in a temporary directory and waits until it has elected itself.
pub async fn start(max_subscriptions: usize) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        dev: true,
        max_subscriptions,
        ..Config::default()
    };
    let node = Node::open(config, "127.0.0.1:1".into(), "127.0.0.1:2".into())
        .await
        .unwrap();
    let svc = Service::new(node.clone());
    // The one-node cluster elects itself; a read barrier before that says "no leader".
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.current_leader() != Some(node.config().node_id) {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Cluster {
        _dir: dir,
        _node: node,
        svc,
    }
}

pub fn caller() -> Caller {
    Caller::anonymous(None)
}

/// A start time the default retention (48 h raw) keeps, with two hours after it that are
/// not in the future.
pub fn t0() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now.as_nanos() as i64) - 3 * 3_600_000 * MS
}

/// A value that tells writes apart: the timestamp and which write it came from.
pub fn value(ts: i64, write: u32) -> f64 {
    (ts % 1_000_000) as f64 + f64::from(write) * 1e7
}

/// Writes the points `ts` of `series` (values from [`value`]) as one replicated command.
pub async fn ingest(svc: &Service, series: &str, ts: &[i64], write: u32) {
    let batch = vec![SeriesPoints {
        series: series.into(),
        timestamps_ns: ts.to_vec(),
        values: ts.iter().map(|t| value(*t, write)).collect(),
    }];
    let prepared = svc.prepare_ingest(&caller(), batch).unwrap();
    svc.ingest(&caller(), prepared).await.unwrap();
}

/// `n` timestamps from `start`, one every millisecond.
pub fn stamps(start: i64, n: i64) -> Vec<i64> {
    (0..n).map(|i| start + i * MS).collect()
}
