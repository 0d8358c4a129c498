//! What the node does with its peers' circuit breakers (`raft::breakers`): every transition
//! is counted and logged, the gauges follow the states, refusals are counted, and every
//! transition becomes a point of the telemetry series `aether/breaker/<peer id>` (value: the
//! state entered, 0 closed / 1 half-open / 2 open; timestamp: the transition's time), so
//! that `aetherctl telemetry query aether/breaker/<id>` shows when a breaker opened.
//!
//! Telemetry is replicated state: the points are proposed through Raft like any ingest
//! (a point written to this node's store alone would make the replicas diverge). A breaker
//! opens precisely when the leader cannot be reached, so the points wait in a bounded
//! queue (`breakers.max_pending_points`; the oldest are dropped and counted beyond it) and
//! are written once a leader takes them. Re-sending after an unknown outcome is harmless:
//! a telemetry point is identified by (series, timestamp).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::metrics::{Metrics, PeerLabel, TransitionLabel};
use super::{Node, NodeError};
use crate::guard::{State, Transition};
use crate::raft::breakers::{state_code, BreakerEvents};
use crate::raft::NodeId;
use crate::telemetry::command::{check_name, TelemetryCommand, TelemetryOutcome};
use crate::telemetry::points::{segments_of, sort_dedupe};

/// Points one write carries at most (a handful in practice: transitions are rare).
const MAX_POINTS_PER_WRITE: usize = 1024;
/// Wait between attempts while no leader takes the points.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// The series of the breaker to `peer`.
pub fn series(peer: NodeId) -> String {
    format!("{}{peer}", crate::raft::BREAKER_SERIES_PREFIX)
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Closed => "closed",
        State::HalfOpen => "half_open",
        State::Open => "open",
        State::ForcedOpen => "forced_open",
        State::ForcedClosed => "forced_closed",
    }
}

/// One transition, waiting to be written.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    peer: NodeId,
    at_ns: i64,
    code: u8,
}

/// The node's observer of its breakers, and the queue of points to write.
pub struct BreakerLog {
    state: Family<PeerLabel, Gauge>,
    transitions: Family<TransitionLabel, Counter>,
    refused: Family<PeerLabel, Counter>,
    pending_gauge: Gauge,
    dropped: Counter,
    pending: Mutex<VecDeque<Point>>,
    max_pending: usize,
    wake: tokio::sync::Notify,
}

impl BreakerLog {
    pub fn new(metrics: &Metrics, max_pending: usize) -> BreakerLog {
        BreakerLog {
            state: metrics.breaker_state.clone(),
            transitions: metrics.breaker_transitions.clone(),
            refused: metrics.breaker_refused.clone(),
            pending_gauge: metrics.breaker_points_pending.clone(),
            dropped: metrics.breaker_points_dropped.clone(),
            pending: Mutex::new(VecDeque::new()),
            max_pending: max_pending.max(1),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Point>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends points at the back (new) or puts them back at the front (not written yet),
    /// dropping the oldest beyond the bound: the latest states matter most.
    fn enqueue(&self, points: Vec<Point>, front: bool) {
        let mut q = self.queue();
        if front {
            for p in points.into_iter().rev() {
                q.push_front(p);
            }
        } else {
            q.extend(points);
        }
        let over = q.len().saturating_sub(self.max_pending);
        q.drain(..over);
        self.dropped.inc_by(over as u64);
        self.pending_gauge.set(q.len() as i64);
    }

    fn take(&self, max: usize) -> Vec<Point> {
        let mut q = self.queue();
        let n = q.len().min(max);
        let batch: Vec<Point> = q.drain(..n).collect();
        self.pending_gauge.set(q.len() as i64);
        batch
    }
}

impl BreakerEvents for BreakerLog {
    fn transition(&self, peer: NodeId, t: &Transition) {
        let code = state_code(t.to);
        self.state
            .get_or_create(&PeerLabel {
                peer: peer.to_string(),
            })
            .set(i64::from(code));
        self.transitions
            .get_or_create(&TransitionLabel {
                peer: peer.to_string(),
                to: state_name(t.to).to_owned(),
            })
            .inc();
        let (from, to) = (state_name(t.from), state_name(t.to));
        let reason = format!("{:?}", t.reason);
        if t.to == State::Open {
            tracing::warn!(
                peer,
                from,
                to,
                reason,
                calls = t.calls,
                failures = t.failures,
                slow = t.slow,
                "circuit breaker to node {peer} opened: its calls fail at once"
            );
        } else {
            tracing::info!(
                peer,
                from,
                to,
                reason,
                calls = t.calls,
                failures = t.failures,
                successes = t.successes,
                "circuit breaker to node {peer} is {to}"
            );
        }
        let point = Point {
            peer,
            at_ns: i64::try_from(t.at_ns).unwrap_or(i64::MAX),
            code,
        };
        self.enqueue(vec![point], false);
        self.wake.notify_one();
    }

    fn refused(&self, peer: NodeId) {
        self.refused
            .get_or_create(&PeerLabel {
                peer: peer.to_string(),
            })
            .inc();
    }
}

/// The ingest command for `points`: one series per peer.
fn command(points: &[Point]) -> Result<TelemetryCommand, String> {
    let mut by_series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for p in points {
        by_series
            .entry(series(p.peer))
            .or_default()
            .push((p.at_ns, f64::from(p.code)));
    }
    let mut segments = Vec::new();
    for (name, pts) in by_series {
        check_name(&name, false)?;
        let (ts, vals) = sort_dedupe(pts);
        segments.extend(segments_of(&name, &ts, &vals)?);
    }
    Ok(TelemetryCommand::Ingest(segments))
}

/// Writes the pending points through Raft until the node is gone; while no leader takes
/// them they stay queued and the write is tried again.
pub async fn write_points(node: Weak<Node>, log: std::sync::Arc<BreakerLog>) {
    loop {
        log.wake.notified().await;
        loop {
            let batch = log.take(MAX_POINTS_PER_WRITE);
            if batch.is_empty() {
                break;
            }
            let Some(n) = node.upgrade() else { return };
            let timeout = Duration::from_millis(n.config().write_timeout_ms);
            let cmd = match command(&batch) {
                Ok(cmd) => cmd,
                Err(e) => {
                    tracing::error!("breaker transitions not recordable as telemetry: {e}");
                    continue;
                }
            };
            match n.telemetry(cmd, None, timeout).await {
                Ok(TelemetryOutcome::Rejected { reason }) => {
                    tracing::error!("breaker transitions refused by the state machine: {reason}")
                }
                Ok(_) => {}
                Err(e @ (NodeError::Invalid(_) | NodeError::BadRequest(_))) => {
                    tracing::error!("breaker transitions refused: {e}")
                }
                Err(e) => {
                    tracing::debug!("breaker transitions not written yet ({e}); retrying");
                    log.enqueue(batch, true);
                    drop(n);
                    tokio::time::sleep(RETRY_EVERY).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::Reason;

    fn transition(to: State, at_ns: u64) -> Transition {
        Transition {
            from: State::Closed,
            to,
            reason: Reason::FailureRate,
            calls: 3,
            failures: 3,
            successes: 0,
            slow: 3,
            at_ns,
        }
    }

    /// Transitions become points of one series per peer; past the bound the oldest go and
    /// are counted; a batch not written goes back in front of newer points.
    #[test]
    fn transitions_queue_boundedly_in_order() {
        let metrics = Metrics::default();
        let log = BreakerLog::new(&metrics, 3);
        for (i, to) in [State::Open, State::HalfOpen, State::Closed, State::Open]
            .into_iter()
            .enumerate()
        {
            log.transition(7, &transition(to, 100 + i as u64));
        }
        assert_eq!(metrics.breaker_points_dropped.get(), 1);
        let batch = log.take(2);
        assert_eq!(
            batch.iter().map(|p| (p.at_ns, p.code)).collect::<Vec<_>>(),
            [(101, 1), (102, 0)]
        );
        log.transition(8, &transition(State::Open, 200));
        log.enqueue(batch, true);
        let all = log.take(10);
        assert_eq!(
            all.iter().map(|p| (p.peer, p.at_ns)).collect::<Vec<_>>(),
            [(7, 102), (7, 103), (8, 200)],
            "the oldest dropped again, keeping the bound of 3"
        );
        assert_eq!(metrics.breaker_points_dropped.get(), 2);
        let text = metrics.render();
        assert!(
            text.contains("aether_breaker_state{peer=\"8\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("aether_breaker_transitions_total{peer=\"7\",to=\"open\"} 2"),
            "{text}"
        );
        match command(&all).unwrap() {
            TelemetryCommand::Ingest(segments) => {
                let names: Vec<&str> = segments.iter().map(|s| s.series.as_str()).collect();
                assert_eq!(names, ["aether/breaker/7", "aether/breaker/8"]);
            }
            other => panic!("{other:?}"),
        }
    }
}
