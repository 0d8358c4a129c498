//! `/metrics`: Prometheus text exposition (OpenMetrics flavour) of the node's counters,
//! Raft state and queue utilization.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabel {
    pub peer: String,
    /// The state entered: closed, half_open, open (forced_open, forced_closed by operators).
    pub to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabel {
    /// What SIGHUP read again: `keys` (the token keys) or `tls` (certificate, key, CA).
    pub what: String,
    /// `ok`, or `failed` (the previous ones stay in force).
    pub result: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub appends: Family<CodeLabel, Counter>,
    pub events_appended: Counter,
    pub append_seconds: Histogram,
    pub forwarded_appends: Counter,
    pub reads: Counter,
    pub reads_in_memory: Counter,
    pub subscribers: Gauge,
    pub telemetry_subscribers: Gauge,
    pub telemetry_stream_points: Counter,
    pub raft_term: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub events_stored: Gauge,
    pub log_syncs: Gauge,
    pub log_sync_callbacks: Gauge,
    pub log_sync_seconds: FloatGauge,
    pub raft_heartbeats_carrying: Gauge,
    pub raft_answered_from_carried: Gauge,
    pub clock_skew_seconds: FloatGauge,
    pub commit_time_lag_seconds: FloatGauge,
    pub proposer_batches: Gauge,
    pub proposer_commands: Gauge,
    pub queue_utilization: Family<QueueLabel, FloatGauge>,
    pub limit_refused: Family<PolicyLabel, Gauge>,
    pub limit_shadow_refused: Family<PolicyLabel, Gauge>,
    pub limit_share: Family<PolicyLabel, FloatGauge>,
    pub limit_tokens_left: Family<PolicyLabel, Gauge>,
    pub limit_demand: Family<PolicyLabel, FloatGauge>,
    pub limit_factor: FloatGauge,
    pub limit_utilization: FloatGauge,
    pub breaker_state: Family<PeerLabel, Gauge>,
    pub breaker_transitions: Family<TransitionLabel, Counter>,
    pub breaker_refused: Family<PeerLabel, Counter>,
    pub breaker_points_pending: Gauge,
    pub breaker_points_dropped: Counter,
    pub reloads: Family<ReloadLabel, Counter>,
    pub tls_certificate_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aether");
        let m = Metrics {
            appends: Family::default(),
            events_appended: Counter::default(),
            append_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            forwarded_appends: Counter::default(),
            reads: Counter::default(),
            reads_in_memory: Counter::default(),
            subscribers: Gauge::default(),
            telemetry_subscribers: Gauge::default(),
            telemetry_stream_points: Counter::default(),
            raft_term: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            events_stored: Gauge::default(),
            log_syncs: Gauge::default(),
            log_sync_callbacks: Gauge::default(),
            raft_heartbeats_carrying: Gauge::default(),
            raft_answered_from_carried: Gauge::default(),
            log_sync_seconds: FloatGauge::default(),
            clock_skew_seconds: FloatGauge::default(),
            commit_time_lag_seconds: FloatGauge::default(),
            proposer_batches: Gauge::default(),
            proposer_commands: Gauge::default(),
            queue_utilization: Family::default(),
            limit_refused: Family::default(),
            limit_shadow_refused: Family::default(),
            limit_share: Family::default(),
            limit_tokens_left: Family::default(),
            limit_demand: Family::default(),
            limit_factor: FloatGauge::default(),
            limit_utilization: FloatGauge::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            breaker_refused: Family::default(),
            breaker_points_pending: Gauge::default(),
            breaker_points_dropped: Counter::default(),
            reloads: Family::default(),
            tls_certificate_expiry: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "appends",
            "Append requests by outcome code",
            m.appends.clone(),
        );
        registry.register(
            "events_appended",
            "Events written by appends",
            m.events_appended.clone(),
        );
        registry.register(
            "append_seconds",
            "Append latency as served by this node",
            m.append_seconds.clone(),
        );
        registry.register(
            "forwarded_appends",
            "Client commands (appends, workflow commands, telemetry writes) this node handed to the leader",
            m.forwarded_appends.clone(),
        );
        registry.register("reads", "Read requests served", m.reads.clone());
        registry.register(
            "reads_in_memory",
            "Stream reads answered on an async worker from memtables and the block cache, without the blocking pool",
            m.reads_in_memory.clone(),
        );
        registry.register("subscribers", "Open subscriptions", m.subscribers.clone());
        registry.register(
            "telemetry_subscribers",
            "Open telemetry subscriptions (gRPC Subscribe and GraphQL telemetryStream)",
            m.telemetry_subscribers.clone(),
        );
        registry.register(
            "telemetry_stream_points",
            "Points handed to telemetry subscriptions",
            m.telemetry_stream_points.clone(),
        );
        registry.register("raft_term", "Current Raft term", m.raft_term.clone());
        registry.register(
            "raft_is_leader",
            "1 if this node leads",
            m.raft_is_leader.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Last log index",
            m.raft_last_log_index.clone(),
        );
        registry.register(
            "raft_commit_index",
            "Committed index known here",
            m.raft_commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Applied index",
            m.raft_applied_index.clone(),
        );
        registry.register(
            "events_stored",
            "Events in the store (next global position)",
            m.events_stored.clone(),
        );
        registry.register(
            "log_syncs",
            "WAL syncs of the Raft log (group commits)",
            m.log_syncs.clone(),
        );
        registry.register(
            "log_sync_callbacks",
            "Log appends acknowledged by those syncs",
            m.log_sync_callbacks.clone(),
        );
        registry.register(
            "raft_heartbeats_carrying",
            "Commit heartbeats to followers that carried the next entries and were answered (raft.carry_wait_ms)",
            m.raft_heartbeats_carrying.clone(),
        );
        registry.register(
            "raft_answered_from_carried",
            "AppendEntries answered from a follower's success to carried entries, not sent again",
            m.raft_answered_from_carried.clone(),
        );
        registry.register(
            "log_sync_seconds",
            "Time spent in those syncs (divide by log_syncs for the mean fsync latency)",
            m.log_sync_seconds.clone(),
        );
        registry.register(
            "clock_skew_seconds",
            "This node's wall clock minus the majority of the voters' (measured while leading)",
            m.clock_skew_seconds.clone(),
        );
        registry.register(
            "commit_time_lag_seconds",
            "This node's wall clock minus the last applied commit time",
            m.commit_time_lag_seconds.clone(),
        );
        registry.register(
            "proposer_batches",
            "Raft entries proposed by the batcher",
            m.proposer_batches.clone(),
        );
        registry.register(
            "proposer_commands",
            "Commands carried by those entries",
            m.proposer_commands.clone(),
        );
        registry.register(
            "queue_utilization",
            "Fill of each bounded queue on the write path, 0..1 (the node's queue health)",
            m.queue_utilization.clone(),
        );
        registry.register(
            "limit_refused",
            "Requests a rate-limit policy refused on this node",
            m.limit_refused.clone(),
        );
        registry.register(
            "limit_shadow_refused",
            "Requests a shadow rate-limit policy would have refused on this node",
            m.limit_shadow_refused.clone(),
        );
        registry.register(
            "limit_share",
            "This node's share of each rate-limit policy (1 = the whole policy)",
            m.limit_share.clone(),
        );
        registry.register(
            "limit_tokens_left",
            "Tokens (requests) a rate-limit policy has left on this node: of its shared key, \
             or of its most drained key",
            m.limit_tokens_left.clone(),
        );
        registry.register(
            "limit_demand",
            "Units per second asked of a rate-limit policy on this node, refused ones included \
             (what its leased share follows)",
            m.limit_demand.clone(),
        );
        registry.register(
            "limit_factor",
            "The cluster's adaptive factor on every rate limit (1 = as configured; halves while \
             the leader's proposer queue is over 80% full)",
            m.limit_factor.clone(),
        );
        registry.register(
            "limit_utilization",
            "The leader's proposer queue utilization (0..1) the adaptive factor follows",
            m.limit_utilization.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker of this node's calls to each peer: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Transitions of the breakers to each peer, by the state entered",
            m.breaker_transitions.clone(),
        );
        registry.register(
            "breaker_refused",
            "Calls to each peer refused by its open breaker (answered at once, nothing sent)",
            m.breaker_refused.clone(),
        );
        registry.register(
            "breaker_points_pending",
            "Breaker transitions waiting to be written to the telemetry series aether/breaker/<peer>",
            m.breaker_points_pending.clone(),
        );
        registry.register(
            "breaker_points_dropped",
            "Breaker transitions not written to telemetry: more were pending than breakers.max_pending_points",
            m.breaker_points_dropped.clone(),
        );
        registry.register(
            "reloads",
            "Reloads on SIGHUP, by what was read again (keys, tls) and result (ok; failed: the \
             previous ones stay in force)",
            m.reloads.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the node certificate in force expires (Unix seconds; 0 without TLS)",
            m.tls_certificate_expiry.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// One rate-limit policy's gauges.
pub struct LimitGauges {
    pub policy: String,
    /// This node's share (1 = the whole policy).
    pub share: f64,
    pub tokens_left: u64,
    /// Units asked per second.
    pub demand: f64,
    pub refused: u64,
    pub shadow_refused: u64,
}

impl Metrics {
    /// The rate-limit gauges: the cluster's factor and the utilization it follows, and per
    /// policy in force what it does on this node. Policies no longer in force lose their
    /// series (a deleted policy leaves no stale gauge behind).
    pub fn set_limits(&self, factor: f64, utilization: f64, policies: &[LimitGauges]) {
        self.limit_factor.set(factor);
        self.limit_utilization.set(utilization);
        self.limit_share.clear();
        self.limit_refused.clear();
        self.limit_shadow_refused.clear();
        self.limit_tokens_left.clear();
        self.limit_demand.clear();
        for p in policies {
            let label = PolicyLabel {
                policy: p.policy.clone(),
            };
            self.limit_share.get_or_create(&label).set(p.share);
            self.limit_refused
                .get_or_create(&label)
                .set(p.refused as i64);
            self.limit_shadow_refused
                .get_or_create(&label)
                .set(p.shadow_refused as i64);
            self.limit_tokens_left
                .get_or_create(&label)
                .set(p.tokens_left.min(i64::MAX as u64) as i64);
            self.limit_demand.get_or_create(&label).set(p.demand);
        }
    }

    /// The breaker to `peer` is in state `code` (see `raft::breakers::state_code`).
    pub fn set_breaker_state(&self, peer: u64, code: u8) {
        self.breaker_state
            .get_or_create(&PeerLabel {
                peer: peer.to_string(),
            })
            .set(i64::from(code));
    }

    pub fn set_queue(&self, queue: &str, utilization: f64) {
        self.queue_utilization
            .get_or_create(&QueueLabel {
                queue: queue.to_owned(),
            })
            .set(utilization);
    }

    /// A SIGHUP reload of `what` (`keys`, `tls`) ended with `ok`.
    pub fn count_reload(&self, what: &str, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabel {
                what: what.to_owned(),
                result: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    pub fn count_append(&self, code: &str) {
        self.appends
            .get_or_create(&CodeLabel {
                code: code.to_owned(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
