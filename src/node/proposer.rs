//! The proposer: turns concurrent commands into Raft entries.
//!
//! Commands queue in a bounded channel. At most `max_inflight_batches` entries are in
//! flight (proposed, not yet applied); while all are, new commands gather in the queue and
//! the next entry carries up to `max_batch_commands` of them. Light load therefore costs no
//! added latency (a lone command is proposed at once), and heavy load amortizes Raft's
//! per-entry work and the log's fsync over many commands.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::config::ProposerSettings;
use crate::raft::{Command, CommandOutcome, NodeId, NodeInfo, Raft, Request};

/// Why a command was not applied (its outcome is known: it was not written), or why its
/// outcome is unknown (`Timeout`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    #[error("proposal queue is full ({0} waiting)")]
    Overloaded(usize),
    #[error("write outcome unknown after {0:?}: retry with the same event ids")]
    Timeout(Duration),
    #[error("raft is not running: {0}")]
    Stopped(String),
    #[error("membership change in progress: {0}")]
    Busy(String),
}

struct Pending {
    cmd: Command,
    weight: usize,
    reply: oneshot::Sender<Result<CommandOutcome, ProposeError>>,
}

/// Handle to the proposer task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    inflight: Arc<Semaphore>,
    settings: ProposerSettings,
    batches: Arc<AtomicUsize>,
    batched_commands: Arc<AtomicUsize>,
}

/// How full the proposer's queues are, 0.0..=1.0 each.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProposerLoad {
    pub queued: usize,
    pub queue_utilization: f64,
    pub inflight: usize,
    pub inflight_utilization: f64,
}

impl Proposer {
    pub fn start(raft: Raft, settings: ProposerSettings, dedupe_window: Duration) -> Proposer {
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let inflight = Arc::new(Semaphore::new(settings.max_inflight_batches));
        let p = Proposer {
            tx,
            inflight: inflight.clone(),
            settings: settings.clone(),
            batches: Arc::default(),
            batched_commands: Arc::default(),
        };
        let window_ns = i64::try_from(dedupe_window.as_nanos()).unwrap_or(i64::MAX);
        tokio::spawn(run(raft, rx, inflight, settings, window_ns, p.clone()));
        p
    }

    /// Proposes one command and waits for its outcome, at most `timeout`.
    pub async fn propose(
        &self,
        cmd: Command,
        weight: usize,
        timeout: Duration,
    ) -> Result<CommandOutcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Pending { cmd, weight, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    ProposeError::Overloaded(self.settings.queue_capacity)
                }
                mpsc::error::TrySendError::Closed(_) => {
                    ProposeError::Stopped("proposer stopped".into())
                }
            })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProposeError::Stopped("proposal dropped".into())),
            Err(_) => Err(ProposeError::Timeout(timeout)),
        }
    }

    pub fn load(&self) -> ProposerLoad {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        let inflight = self.settings.max_inflight_batches - self.inflight.available_permits();
        ProposerLoad {
            queued,
            queue_utilization: queued as f64 / self.settings.queue_capacity as f64,
            inflight,
            inflight_utilization: inflight as f64 / self.settings.max_inflight_batches as f64,
        }
    }

    /// (entries proposed, commands they carried) since start.
    pub fn batch_counts(&self) -> (usize, usize) {
        (
            self.batches.load(Ordering::Relaxed),
            self.batched_commands.load(Ordering::Relaxed),
        )
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    inflight: Arc<Semaphore>,
    settings: ProposerSettings,
    dedupe_window_ns: i64,
    handle: Proposer,
) {
    let mut commands = Vec::with_capacity(settings.max_batch_commands);
    loop {
        // Take a slot first: while none is free, commands gather in the queue.
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = first.weight;
        let mut replies = vec![first.reply];
        commands.push(first.cmd);
        while commands.len() < settings.max_batch_commands && bytes < settings.max_batch_bytes {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.weight;
                    replies.push(p.reply);
                    commands.push(p.cmd);
                }
                Err(_) => break,
            }
        }
        handle.batches.fetch_add(1, Ordering::Relaxed);
        handle
            .batched_commands
            .fetch_add(commands.len(), Ordering::Relaxed);
        let request = Request {
            // The leader's clock, stamped once per entry; the state machine keeps commit
            // times monotonic whatever this clock does.
            commit_time_ns: now_ns(),
            dedupe_window_ns,
            commands: std::mem::replace(
                &mut commands,
                Vec::with_capacity(settings.max_batch_commands),
            ),
        };
        // `client_write_ff` only enqueues into openraft, in order; the outcome is awaited
        // in a task of its own so that the next batch can be proposed meanwhile.
        match raft.client_write_ff(request).await {
            Ok(outcome) => {
                tokio::spawn(async move {
                    let res = outcome.await;
                    drop(permit);
                    match res {
                        Ok(Ok(resp)) => {
                            let mut outcomes = resp.data.outcomes.into_iter();
                            for reply in replies {
                                let r = outcomes.next().ok_or_else(|| {
                                    ProposeError::Stopped(
                                        "state machine returned too few outcomes".into(),
                                    )
                                });
                                let _ = reply.send(r);
                            }
                        }
                        Ok(Err(e)) => fail_all(replies, client_write_error(e)),
                        Err(_) => fail_all(
                            replies,
                            ProposeError::Stopped("raft dropped the write".into()),
                        ),
                    }
                });
            }
            Err(fatal) => fail_all(replies, ProposeError::Stopped(fatal.to_string())),
        }
    }
}

fn fail_all(replies: Vec<oneshot::Sender<Result<CommandOutcome, ProposeError>>>, e: ProposeError) {
    for r in replies {
        let _ = r.send(Err(e.clone()));
    }
}

fn client_write_error(e: ClientWriteError<NodeId, NodeInfo>) -> ProposeError {
    match e {
        ClientWriteError::ForwardToLeader(f) => ProposeError::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        ClientWriteError::ChangeMembershipError(c) => ProposeError::Busy(c.to_string()),
    }
}
