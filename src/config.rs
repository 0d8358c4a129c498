//! Node configuration: defaults, then an optional TOML file, then `AETHER_*` environment
//! variables and command-line flags (the binary merges those last two through clap).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Limits;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's Raft id; fixed for the life of its data directory.
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Where the gRPC server listens (public API, admin, Raft). Port 0 picks a free port.
    pub grpc_addr: String,
    /// Where the HTTP server listens (`/healthz`, `/metrics`).
    pub http_addr: String,
    /// Addresses other nodes and clients use to reach this node; default: the bound ones.
    pub advertise_grpc_addr: Option<String>,
    pub advertise_http_addr: Option<String>,
    /// Single-node development mode: initialize a one-node cluster on first start.
    pub dev: bool,
    /// Async runtime threads; 0 means one per CPU. Nodes sharing a machine (a local
    /// cluster) do better with 1 each: fewer threads contending for the same cores.
    pub worker_threads: usize,
    pub limits: Limits,
    /// How long an event id keeps its idempotency record.
    pub dedupe_window_secs: u64,
    /// How long an append waits for its outcome before reporting it unknown.
    pub write_timeout_ms: u64,
    /// Events buffered per subscriber before the subscriber's reader waits.
    pub subscriber_buffer: usize,
    /// A workflow projection snapshot is stored every this many events of a workflow, so a
    /// temporal query replays at most this many events.
    pub workflow_snapshot_every: u64,
    pub raft: RaftSettings,
    pub proposer: ProposerSettings,
    /// Fault injection for tests: shifts this node's wall clock by this much. Keep 0.
    pub clock_offset_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept behind a snapshot, so slow followers can still catch up by log.
    pub max_in_snapshot_log_to_keep: u64,
    pub install_snapshot_timeout_ms: u64,
    pub max_payload_entries: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProposerSettings {
    /// Proposals waiting to be batched; beyond it appends get RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Commands per Raft entry at most.
    pub max_batch_commands: usize,
    /// Payload bytes per Raft entry at most (a single larger command still goes alone).
    pub max_batch_bytes: usize,
    /// Raft entries proposed but not yet applied at most; while all are in flight, new
    /// proposals gather into the next batch. openraft 0.9 syncs the log entry by entry, so
    /// one big entry beats several small ones: measured best at 1.
    pub max_inflight_batches: usize,
    /// On a follower: batches sent to the leader and not yet answered, at most.
    pub max_forwarding_batches: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from("./data"),
            grpc_addr: "127.0.0.1:50051".into(),
            http_addr: "127.0.0.1:8080".into(),
            advertise_grpc_addr: None,
            advertise_http_addr: None,
            dev: false,
            worker_threads: 0,
            limits: Limits::default(),
            dedupe_window_secs: 24 * 3600,
            write_timeout_ms: 10_000,
            subscriber_buffer: 256,
            workflow_snapshot_every: 64,
            raft: RaftSettings::default(),
            proposer: ProposerSettings::default(),
            clock_offset_ms: 0,
        }
    }
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every_entries: 50_000,
            max_in_snapshot_log_to_keep: 10_000,
            install_snapshot_timeout_ms: 30_000,
            max_payload_entries: 512,
        }
    }
}

impl Default for ProposerSettings {
    fn default() -> Self {
        ProposerSettings {
            queue_capacity: 8192,
            max_batch_commands: 256,
            max_batch_bytes: 4 << 20,
            max_inflight_batches: 1,
            max_forwarding_batches: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Rejects settings that cannot work, with a message that names them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.node_id == 0 {
            return bad("node_id must be at least 1");
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return bad(
                "raft.election_timeout_min_ms must exceed raft.heartbeat_interval_ms (> 0)",
            );
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad("raft.election_timeout_max_ms must exceed raft.election_timeout_min_ms");
        }
        let p = &self.proposer;
        if p.queue_capacity == 0
            || p.max_batch_commands == 0
            || p.max_inflight_batches == 0
            || p.max_forwarding_batches == 0
        {
            return bad("proposer.queue_capacity, max_batch_commands, max_inflight_batches and max_forwarding_batches must be > 0");
        }
        if self.subscriber_buffer == 0 {
            return bad("subscriber_buffer must be > 0");
        }
        let l = &self.limits;
        if l.max_event_bytes == 0 || l.max_request_bytes < l.max_event_bytes {
            return bad("limits.max_request_bytes must be at least limits.max_event_bytes (> 0)");
        }
        if l.max_events_per_append == 0 || l.max_read_limit == 0 {
            return bad("limits.max_events_per_append and limits.max_read_limit must be > 0");
        }
        if self.workflow_snapshot_every == 0 {
            return bad("workflow_snapshot_every must be > 0");
        }
        if self.dedupe_window_secs == 0 {
            return bad("dedupe_window_secs must be > 0");
        }
        Ok(())
    }

    pub fn openraft_config(&self) -> openraft::Config {
        let r = &self.raft;
        openraft::Config {
            cluster_name: "aetherops".into(),
            heartbeat_interval: r.heartbeat_interval_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            install_snapshot_timeout: r.install_snapshot_timeout_ms,
            max_payload_entries: r.max_payload_entries,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_every_entries),
            max_in_snapshot_log_to_keep: r.max_in_snapshot_log_to_keep,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(
            &p,
            "node_id = 3\ngrpc_addr = \"127.0.0.1:7000\"\n[limits]\nmax_event_bytes = 2048\n",
        )
        .unwrap();
        let c = Config::from_file(&p).unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.grpc_addr, "127.0.0.1:7000");
        assert_eq!(c.limits.max_event_bytes, 2048);
        assert_eq!(c.http_addr, Config::default().http_addr);
        std::fs::write(&p, "nodeid = 3\n").unwrap();
        assert!(matches!(
            Config::from_file(&p),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        c.raft.election_timeout_min_ms = 50;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("election_timeout_min_ms"), "{e}");
    }
}
