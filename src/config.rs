//! Node configuration: defaults, then an optional TOML file, then `AETHER_*` environment
//! variables and command-line flags (the binary merges those last two through clap).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Limits;
use crate::raft::network::MAX_RAFT_MESSAGE_BYTES;

/// Bytes an entry adds to its commands' encodings (log id, commit time, window, counts).
pub const ENTRY_OVERHEAD_BYTES: usize = 4 << 10;

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
    /// Bytes of events buffered per subscriber before its reader waits (an event larger
    /// than this is buffered alone). A subscription holds at most this plus one read page
    /// (`limits.max_read_bytes`).
    pub subscriber_buffer_bytes: u32,
    /// Subscriptions this node serves at once; more are refused with RESOURCE_EXHAUSTED.
    /// With the buffers above, subscriptions hold at most
    /// `max_subscriptions * (subscriber_buffer_bytes + limits.max_read_bytes)` bytes.
    pub max_subscriptions: usize,
    /// Reads of the store (pages of streams, of the log, of workflow events, subscription
    /// pages) running at once, each on the blocking pool with at most one page
    /// (`limits.max_read_bytes`) in memory; more wait for a slot.
    pub max_concurrent_reads: usize,
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
    /// Entries per AppendEntries message at most.
    pub max_payload_entries: u64,
    /// Bytes of entries per AppendEntries message at most; one entry is always sent, so
    /// this must hold the largest entry (`proposer.max_batch_bytes`). A message must reach
    /// the follower within `heartbeat_interval_ms` (openraft's limit for one
    /// AppendEntries), which is what keeps this modest: a follower far behind catches up
    /// in messages of this size.
    pub max_payload_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProposerSettings {
    /// Proposals waiting to be batched; beyond it appends get RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Commands per Raft entry at most.
    pub max_batch_commands: usize,
    /// Bytes per Raft entry at most (commands as encoded in the log). A command that
    /// encodes larger is refused; the largest append `limits` admit must fit.
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
            subscriber_buffer_bytes: 2 << 20,
            max_subscriptions: 512,
            max_concurrent_reads: 16,
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
            max_payload_bytes: 16 << 20,
        }
    }
}

impl Default for ProposerSettings {
    fn default() -> Self {
        ProposerSettings {
            queue_capacity: 8192,
            max_batch_commands: 256,
            max_batch_bytes: 8 << 20,
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
        if self.subscriber_buffer == 0
            || self.subscriber_buffer_bytes == 0
            || self.max_subscriptions == 0
            || self.max_concurrent_reads == 0
        {
            return bad("subscriber_buffer, subscriber_buffer_bytes, max_subscriptions and max_concurrent_reads must be > 0");
        }
        let l = &self.limits;
        if l.max_event_bytes == 0 || l.max_request_bytes < l.max_event_bytes {
            return bad("limits.max_request_bytes must be at least limits.max_event_bytes (> 0)");
        }
        if l.max_events_per_append == 0 || l.max_read_limit == 0 || l.max_read_bytes == 0 {
            return bad("limits.max_events_per_append, limits.max_read_limit and limits.max_read_bytes must be > 0");
        }
        self.validate_entry_sizes()?;
        if self.workflow_snapshot_every == 0 {
            return bad("workflow_snapshot_every must be > 0");
        }
        if self.dedupe_window_secs == 0 {
            return bad("dedupe_window_secs must be > 0");
        }
        Ok(())
    }

    /// Any entry must be shippable to a follower: the largest append the limits admit fits
    /// one entry, an entry fits one AppendEntries message, and a message fits what the
    /// transport accepts. Otherwise a follower that fell behind could be sent a message it
    /// can never take, again and again.
    fn validate_entry_sizes(&self) -> Result<(), ConfigError> {
        let append = self.limits.max_append_encoded_bytes();
        let batch = self.proposer.max_batch_bytes;
        let payload = self.raft.max_payload_bytes;
        if append > batch {
            return Err(ConfigError::Invalid(format!(
                "proposer.max_batch_bytes ({batch}) must hold the largest append the limits \
                 admit ({append} bytes encoded, from limits.max_request_bytes, \
                 max_events_per_append, max_metadata_entries and max_stream_name_bytes)"
            )));
        }
        if batch.saturating_add(ENTRY_OVERHEAD_BYTES) > payload {
            return Err(ConfigError::Invalid(format!(
                "raft.max_payload_bytes ({payload}) must hold one entry: \
                 proposer.max_batch_bytes ({batch}) + {ENTRY_OVERHEAD_BYTES}"
            )));
        }
        if payload.saturating_add(ENTRY_OVERHEAD_BYTES) > MAX_RAFT_MESSAGE_BYTES {
            return Err(ConfigError::Invalid(format!(
                "raft.max_payload_bytes ({payload}) must stay below the transport's message \
                 limit ({MAX_RAFT_MESSAGE_BYTES} bytes) by {ENTRY_OVERHEAD_BYTES}"
            )));
        }
        if self.raft.max_payload_entries == 0 {
            return Err(ConfigError::Invalid(
                "raft.max_payload_entries must be > 0".into(),
            ));
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

    /// Each broken link of "append ≤ entry ≤ message ≤ transport" is refused at startup,
    /// naming the settings to change; raising them together is fine.
    #[test]
    fn every_entry_must_be_shippable_to_a_follower() {
        // (case, change to the defaults, a word the refusal names or None if accepted)
        type Case = (&'static str, fn(&mut Config), Option<&'static str>);
        let cases: &[Case] = &[
            ("defaults", |_| {}, None),
            (
                "append over batch",
                |c| c.limits.max_request_bytes = 16 << 20,
                Some("proposer.max_batch_bytes"),
            ),
            (
                "append over batch by its overhead",
                |c| c.limits.max_request_bytes = c.proposer.max_batch_bytes,
                Some("proposer.max_batch_bytes"),
            ),
            (
                "batch over message",
                |c| c.proposer.max_batch_bytes = 32 << 20,
                Some("raft.max_payload_bytes"),
            ),
            (
                "message over transport",
                |c| {
                    c.proposer.max_batch_bytes = 64 << 20;
                    c.raft.max_payload_bytes = MAX_RAFT_MESSAGE_BYTES;
                },
                Some("transport"),
            ),
            (
                "all raised together",
                |c| {
                    c.limits.max_event_bytes = 8 << 20;
                    c.limits.max_request_bytes = 32 << 20;
                    c.proposer.max_batch_bytes = 40 << 20;
                    c.raft.max_payload_bytes = 64 << 20;
                },
                None,
            ),
        ];
        for (name, change, refused) in cases {
            let mut c = Config::default();
            change(&mut c);
            match (c.validate(), refused) {
                (Ok(()), None) => {}
                (Err(e), Some(word)) => {
                    assert!(e.to_string().contains(word), "{name}: {e}")
                }
                (got, want) => panic!("{name}: got {got:?}, wanted a refusal naming {want:?}"),
            }
        }
    }

    /// The bound the validation uses holds for the largest append the limits admit: the
    /// most events, each with the most metadata, the longest stream name, ids and times
    /// at their widest encodings.
    #[test]
    fn the_largest_admitted_append_encodes_within_the_bound() {
        use crate::eventstore::AppendCommand;
        use crate::model::{ExpectedVersion, NewEvent};
        let l = Limits {
            max_events_per_append: 50,
            max_request_bytes: 1 << 20,
            ..Limits::default()
        };
        let events: Vec<NewEvent> = (0..l.max_events_per_append)
            .map(|i| {
                let metadata = (0..l.max_metadata_entries)
                    .map(|k| (format!("{i:03}-{k:03}"), String::new()))
                    .collect();
                NewEvent {
                    event_id: uuid::Uuid::new_v4(),
                    event_type: "T".repeat(l.max_event_type_bytes),
                    schema_version: u32::MAX,
                    event_time_ns: i64::MIN,
                    payload: bytes::Bytes::new(),
                    metadata,
                }
            })
            .collect();
        let used: usize = events.iter().map(NewEvent::weight_bytes).sum();
        let mut events = events;
        events[0].payload = vec![0u8; l.max_request_bytes - used].into();
        let stream = "s".repeat(l.max_stream_name_bytes);
        l.validate_append(&stream, &events).unwrap();
        let cmd = crate::raft::Command::Append(AppendCommand {
            stream,
            expected: ExpectedVersion::Exact(u64::MAX),
            events,
        });
        let encoded = postcard::to_allocvec(&cmd).unwrap().len();
        assert!(
            encoded <= l.max_append_encoded_bytes(),
            "{encoded} > {}",
            l.max_append_encoded_bytes()
        );
    }
}
