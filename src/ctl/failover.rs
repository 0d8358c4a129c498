//! Fail-over across the `--addr` list: one circuit breaker per address (`aether_guard`'s),
//! and one rule for when a call may go on to the next address.
//!
//! A call tries the addresses in order (from a given start, so that load generators spread
//! their clients), skipping an address whose breaker is open, and returns the first answer.
//! It goes on to the next address only when the failure says nothing about the request and
//! the request is safe to send again:
//!
//! - the connection could not be made (nothing was sent), or the node answered `UNAVAILABLE`
//!   (no leader took it: not written, see the README's "Errors and retries"): any call;
//! - the connection broke after the request may have left (a reset, a local timeout): reads
//!   only. A write's outcome is then unknown; it is surfaced with the id that makes a retry
//!   safe, never sent again blindly. So is a node's `DEADLINE_EXCEEDED`.
//!
//! Every other status (`NOT_FOUND`, `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, …) is the
//! node's answer and final. When no address could take the call, the error names each
//! address and why.
//!
//! The breakers only decide whom to try first: a one-shot command meets each dead address
//! once anyway; a long run (pages of a read, an import, `bench`) stops calling a dead node
//! after a few failures and probes it once per `reset_timeout`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::{CallError, CallKind};
use crate::guard::{BreakerPolicy, CircuitBreaker, FailureDetector, GrpcCodes, State};
use crate::node::call::CallFailure;

/// The addresses `--addr` names (comma-separated), in order, without blanks.
pub fn parse_addrs(addrs: &str) -> anyhow::Result<Vec<String>> {
    let list: Vec<String> = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(!list.is_empty(), "--addr names no address");
    Ok(list)
}

/// The CLI's breaker: open once half of the last 10 calls failed (at least 3 in), probe once
/// a second. Slowness is not its business (the per-request timeout is), so no call is slow.
pub fn cli_policy() -> BreakerPolicy {
    BreakerPolicy {
        failure_rate_pct: 50,
        slow_call_rate_pct: 100,
        slow_call_threshold_ns: u64::MAX,
        window_calls: 10,
        minimum_calls: 3,
        reset_timeout_ns: 1_000_000_000,
        probe_count: 1,
        success_threshold: 1,
    }
}

/// What the breaker counts against a node: a transport failure (reported as `UNAVAILABLE`),
/// `UNAVAILABLE` and `DEADLINE_EXCEEDED`. Not `RESOURCE_EXHAUSTED`: a rate limit refusing a
/// busy client is a healthy node, and moving to another node would only spread the load the
/// limit is there to stop.
fn detector() -> GrpcCodes {
    GrpcCodes::new(&[Code::DeadlineExceeded as i32, Code::Unavailable as i32])
        .expect("valid gRPC codes")
}

/// The code a failure is judged by: a transport failure is the node's unavailability.
fn judged_code(e: &CallError) -> i32 {
    match e.failure {
        CallFailure::Answered => e.code as i32,
        CallFailure::NotSent | CallFailure::MaybeSent => Code::Unavailable as i32,
    }
}

/// May a call that failed so go on to the next address?
fn may_try_next(kind: &CallKind, e: &CallError) -> bool {
    match e.failure {
        CallFailure::NotSent => true,
        CallFailure::MaybeSent => *kind == CallKind::Read,
        CallFailure::Answered => e.code == Code::Unavailable,
    }
}

/// Time for the breakers, in ns. Injected so that tests drive it; the CLI's is monotonic
/// (from the process start): its breakers are never stored, so the wall clock's one merit
/// for the guard crate — surviving restarts — does not apply, and a monotonic clock never
/// steps back.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn monotonic_clock() -> Clock {
    let start = Instant::now();
    Arc::new(move || u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// Counts per address, for reports (`bench`).
#[derive(Debug, Default)]
pub struct Counts {
    /// Calls sent to this address.
    pub attempts: AtomicU64,
    /// Of those, calls it answered with success.
    pub ok: AtomicU64,
    /// Of those, failures the breaker counted.
    pub failures: AtomicU64,
    /// Calls that passed this address by because its breaker was open.
    pub skipped: AtomicU64,
}

struct Target<C> {
    addr: String,
    conn: C,
    breaker: Mutex<CircuitBreaker>,
    counts: Counts,
}

/// One address's part in a failed call.
#[derive(Debug)]
pub enum Attempt {
    Failed(CallError),
    /// Not tried: its breaker is open.
    Skipped,
}

/// No address took the call, or one failed so that trying another is not safe (then it is
/// the last attempt).
#[derive(Debug)]
pub struct FailoverError {
    pub attempts: Vec<(String, Attempt)>,
    /// Every address was tried or skipped.
    pub exhausted: bool,
}

impl FailoverError {
    /// Every address was skipped: their breakers are all open.
    pub fn all_skipped(&self) -> bool {
        self.attempts
            .iter()
            .all(|(_, a)| matches!(a, Attempt::Skipped))
    }
}

impl std::fmt::Display for FailoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.exhausted {
            f.write_str("every address failed: ")?;
        }
        for (i, (addr, attempt)) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            match attempt {
                Attempt::Failed(e) => write!(f, "{addr}: {e}")?,
                Attempt::Skipped => write!(
                    f,
                    "{addr}: not tried, its circuit breaker is open (recent calls failed)"
                )?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for FailoverError {}

/// The addresses, each with its connection (`C`: a lazy channel, or several) and breaker.
pub struct Failover<C> {
    targets: Vec<Target<C>>,
    clock: Clock,
}

impl Failover<Channel> {
    /// A lazy channel per address: nothing connects until a call needs it, so a dead
    /// address costs a refused connection when tried, not the command's start.
    pub fn connect_lazy(addrs: &str, timeout: Duration) -> anyhow::Result<Failover<Channel>> {
        Self::lazy_with(addrs, timeout, Endpoint::connect_lazy)
    }
}

impl<C: Clone> Failover<C> {
    /// What `make` makes of each address's endpoint (a lazy channel, or several).
    pub fn lazy_with(
        addrs: &str,
        timeout: Duration,
        mut make: impl FnMut(&Endpoint) -> C,
    ) -> anyhow::Result<Failover<C>> {
        let mut targets = Vec::new();
        for addr in parse_addrs(addrs)? {
            let conn = make(&super::endpoint(&addr, timeout)?);
            targets.push((addr, conn));
        }
        Failover::new(targets, cli_policy(), monotonic_clock())
    }

    pub fn new(
        targets: Vec<(String, C)>,
        policy: BreakerPolicy,
        clock: Clock,
    ) -> anyhow::Result<Failover<C>> {
        anyhow::ensure!(!targets.is_empty(), "--addr names no address");
        let targets = targets
            .into_iter()
            .map(|(addr, conn)| {
                Ok(Target {
                    addr,
                    conn,
                    breaker: Mutex::new(CircuitBreaker::new(policy)?),
                    counts: Counts::default(),
                })
            })
            .collect::<Result<Vec<_>, crate::guard::GuardError>>()?;
        Ok(Failover { targets, clock })
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn addr(&self, i: usize) -> &str {
        &self.targets[i].addr
    }

    pub fn counts(&self, i: usize) -> &Counts {
        &self.targets[i].counts
    }

    pub fn state(&self, i: usize) -> State {
        self.breaker(i).state()
    }

    fn breaker(&self, i: usize) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        // A panic elsewhere cannot leave a breaker half-updated: its methods do not unwind.
        self.targets[i]
            .breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `call` on the first address that takes it; see the module's rules.
    pub async fn call<T, F, Fut>(&self, kind: CallKind, call: F) -> anyhow::Result<T>
    where
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        Ok(self.call_from(0, kind, call).await?.1)
    }

    /// As [`Failover::call`], starting at address `start` (modulo their count) and going
    /// round; also says which address answered.
    pub async fn call_from<T, F, Fut>(
        &self,
        start: usize,
        kind: CallKind,
        mut call: F,
    ) -> anyhow::Result<(usize, T)>
    where
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.targets.len();
        let mut attempts = Vec::new();
        for i in (0..n).map(|k| (start + k) % n) {
            let t = &self.targets[i];
            if !self.breaker(i).allow_request((self.clock)()) {
                t.counts.skipped.fetch_add(1, Ordering::Relaxed);
                attempts.push((t.addr.clone(), Attempt::Skipped));
                continue;
            }
            t.counts.attempts.fetch_add(1, Ordering::Relaxed);
            let sent = (self.clock)();
            let result = call(t.conn.clone()).await;
            let now = (self.clock)();
            let latency = now.saturating_sub(sent);
            let status = match result {
                Ok(v) => {
                    t.counts.ok.fetch_add(1, Ordering::Relaxed);
                    self.breaker(i).record_success(now, latency);
                    return Ok((i, v));
                }
                Err(s) => s,
            };
            let mut e = CallError::new(&status, kind.clone());
            let code = judged_code(&e);
            let d = detector();
            if d.is_failure(&code) {
                t.counts.failures.fetch_add(1, Ordering::Relaxed);
            }
            self.breaker(i).record_outcome(&d, &code, now, latency);
            if !may_try_next(&kind, &e) {
                // An answer is the answer, whatever failed before it; it names the node
                // only when there was a choice (one node's answer reads as it always did).
                let answered = e.failure == CallFailure::Answered;
                if answered || attempts.is_empty() {
                    if n > 1 || !answered {
                        e.addr = Some(t.addr.clone());
                    }
                    return Err(e.into());
                }
                attempts.push((t.addr.clone(), Attempt::Failed(e)));
                return Err(self.failed(attempts, false));
            }
            attempts.push((t.addr.clone(), Attempt::Failed(e)));
        }
        Err(self.failed(attempts, true))
    }

    fn failed(&self, mut attempts: Vec<(String, Attempt)>, exhausted: bool) -> anyhow::Error {
        if let [(addr, Attempt::Failed(_))] = attempts.as_slice() {
            let addr = addr.clone();
            if let Some((_, Attempt::Failed(mut e))) = attempts.pop() {
                // One address: its error as it always read, naming it.
                e.addr = Some(addr);
                return e.into();
            }
        }
        FailoverError {
            attempts,
            exhausted,
        }
        .into()
    }

    /// The first address (from `start`, going round) that accepts a connection, with a
    /// fresh channel to it: for calls that cannot be sent twice (a client stream fed as it
    /// is read), so the choice is made before anything is sent.
    pub async fn connect_from(
        &self,
        start: usize,
        timeout: Duration,
    ) -> anyhow::Result<(usize, Channel)> {
        let n = self.targets.len();
        let mut attempts = Vec::new();
        for i in (0..n).map(|k| (start + k) % n) {
            let t = &self.targets[i];
            let addr = t.addr.clone();
            if !self.breaker(i).allow_request((self.clock)()) {
                t.counts.skipped.fetch_add(1, Ordering::Relaxed);
                attempts.push((addr, Attempt::Skipped));
                continue;
            }
            t.counts.attempts.fetch_add(1, Ordering::Relaxed);
            match super::channel(&addr, timeout).await {
                Ok(ch) => {
                    t.counts.ok.fetch_add(1, Ordering::Relaxed);
                    let now = (self.clock)();
                    self.breaker(i).record_success(now, 0);
                    return Ok((i, ch));
                }
                Err(err) => {
                    let now = (self.clock)();
                    self.breaker(i).record_failure(now, 0);
                    t.counts.failures.fetch_add(1, Ordering::Relaxed);
                    let mut e = err.downcast::<CallError>()?;
                    e.addr = None;
                    attempts.push((addr, Attempt::Failed(e)));
                }
            }
        }
        Err(self.failed(attempts, true))
    }
}

#[cfg(test)]
#[path = "failover_tests.rs"]
mod tests;
