//! Circuit breaker: fail fast instead of piling calls onto a sick peer.
//!
//! One state machine with an explicit [`State`]:
//!
//! - **Closed**: every call passes; outcomes go into a window of the last `window_calls`
//!   calls. Once it holds at least `minimum_calls`, the breaker opens when the failure rate
//!   reaches `failure_rate_pct`, or the slow-call rate reaches `slow_call_rate_pct`.
//! - **Open**: every call is refused until `reset_timeout_ns` has passed since it opened.
//! - **HalfOpen**: exactly `probe_count` calls are admitted as probes; once all their
//!   outcomes are in, it closes if at least `success_threshold` of them succeeded (and were
//!   not slow), else opens again. Probes whose outcomes never come (a lost call) do not hold
//!   it half-open forever: `reset_timeout_ns` after it went half-open, with outcomes missing,
//!   it opens again.
//! - **ForcedOpen** / **ForcedClosed**: set by an operator; refuse / admit everything and
//!   record nothing until released (to Closed, with an empty window).
//!
//! **Failure rate, not count** (as resilience4j): a count would open a busy peer's breaker on
//! a few failures among thousands of calls, and never open a quiet one's. `minimum_calls`
//! keeps a handful of calls from deciding.
//!
//! **Slow calls are their own rate**: a call slower than `slow_call_threshold_ns` counts as
//! slow whether it succeeded or not, and the slow rate has its own threshold, so a peer that
//! answers correctly but ever more slowly opens the breaker too (set `slow_call_rate_pct` to
//! 100 to open only when every call is slow). Callers who want slowness to count as failure
//! use the [`SlowerThan`] detector instead.
//!
//! What counts as a failure is the caller's [`FailureDetector`]'s call ([`GrpcCodes`],
//! [`ErrorKinds`], [`SlowerThan`], or its own); the breaker only sees success or failure and a
//! latency. Outcomes that arrive while the breaker is Open or forced (calls admitted before it
//! opened) are ignored, and so are outcomes in HalfOpen beyond the probes admitted.
//!
//! Every transition is an event ([`Transition`]: from, to, reason, the counts it was decided
//! on, time), queued in the breaker (at most [`MAX_PENDING_TRANSITIONS`]; the oldest is
//! dropped and counted past that) for the caller to drain into its metrics and telemetry.
//! [`is_legal`] is the table of transitions that may happen at all.

mod detector;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::GuardError;

pub use detector::{ErrorKinds, FailureDetector, GrpcCodes, SlowerThan};

/// Transitions kept until drained.
pub const MAX_PENDING_TRANSITIONS: usize = 256;

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    ForcedClosed,
}

/// Why a transition happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// Closed → Open: the failure rate reached its threshold.
    FailureRate,
    /// Closed → Open: the slow-call rate reached its threshold.
    SlowCallRate,
    /// Open → HalfOpen: `reset_timeout_ns` passed.
    ResetTimeout,
    /// HalfOpen → Closed: enough probes succeeded.
    ProbesSucceeded,
    /// HalfOpen → Open: too few probes succeeded.
    ProbesFailed,
    /// HalfOpen → Open: probe outcomes still missing `reset_timeout_ns` after going half-open.
    ProbeTimeout,
    /// An operator forced or released the breaker.
    Operator,
}

/// The legal transitions (from, to, reason): everything else is a bug.
pub const LEGAL_TRANSITIONS: &[(State, State, Reason)] = &[
    (State::Closed, State::Open, Reason::FailureRate),
    (State::Closed, State::Open, Reason::SlowCallRate),
    (State::Open, State::HalfOpen, Reason::ResetTimeout),
    (State::HalfOpen, State::Closed, Reason::ProbesSucceeded),
    (State::HalfOpen, State::Open, Reason::ProbesFailed),
    (State::HalfOpen, State::Open, Reason::ProbeTimeout),
    (State::Closed, State::ForcedOpen, Reason::Operator),
    (State::Open, State::ForcedOpen, Reason::Operator),
    (State::HalfOpen, State::ForcedOpen, Reason::Operator),
    (State::ForcedClosed, State::ForcedOpen, Reason::Operator),
    (State::Closed, State::ForcedClosed, Reason::Operator),
    (State::Open, State::ForcedClosed, Reason::Operator),
    (State::HalfOpen, State::ForcedClosed, Reason::Operator),
    (State::ForcedOpen, State::ForcedClosed, Reason::Operator),
    (State::ForcedOpen, State::Closed, Reason::Operator),
    (State::ForcedClosed, State::Closed, Reason::Operator),
];

/// Whether `from → to` for `reason` is in [`LEGAL_TRANSITIONS`].
pub fn is_legal(from: State, to: State, reason: Reason) -> bool {
    LEGAL_TRANSITIONS.contains(&(from, to, reason))
}

/// One transition: what changed, why, and the counts it was decided on (the window's in
/// Closed and Open; the probes' in HalfOpen, where a slow probe is among the `failures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
    pub calls: u32,
    pub failures: u32,
    pub successes: u32,
    pub slow: u32,
    pub at_ns: u64,
}

/// The breaker's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerPolicy {
    /// Open when failures × 100 ≥ this × calls (1..=100).
    pub failure_rate_pct: u8,
    /// Open when slow calls × 100 ≥ this × calls (1..=100).
    pub slow_call_rate_pct: u8,
    /// A call slower than this is slow (ns, ≥ 1).
    pub slow_call_threshold_ns: u64,
    /// Calls in the window (1..=10000).
    pub window_calls: u32,
    /// Calls the window needs before its rates decide (1..=window_calls).
    pub minimum_calls: u32,
    /// Open → HalfOpen after this; also the longest wait for probe outcomes (ns, ≥ 1).
    pub reset_timeout_ns: u64,
    /// Probes admitted in HalfOpen (1..=1000).
    pub probe_count: u32,
    /// Probes that must succeed to close (1..=probe_count).
    pub success_threshold: u32,
}

impl Default for BreakerPolicy {
    /// For calls to peers: open at half the calls failing (or all slower than 1 s) over the
    /// last 20, at least 10 of them; try again after 1 s with 3 probes, 2 of which must pass.
    fn default() -> BreakerPolicy {
        BreakerPolicy {
            failure_rate_pct: 50,
            slow_call_rate_pct: 100,
            slow_call_threshold_ns: crate::NANOS_PER_SEC,
            window_calls: 20,
            minimum_calls: 10,
            reset_timeout_ns: crate::NANOS_PER_SEC,
            probe_count: 3,
            success_threshold: 2,
        }
    }
}

impl BreakerPolicy {
    pub const MAX_WINDOW_CALLS: u32 = 10_000;
    pub const MAX_PROBES: u32 = 1_000;

    pub fn validate(&self) -> Result<(), GuardError> {
        let checks: [(bool, &'static str, &'static str); 8] = [
            (
                (1..=100).contains(&self.failure_rate_pct),
                "failure_rate_pct",
                "between 1 and 100",
            ),
            (
                (1..=100).contains(&self.slow_call_rate_pct),
                "slow_call_rate_pct",
                "between 1 and 100",
            ),
            (
                self.slow_call_threshold_ns > 0,
                "slow_call_threshold_ns",
                "at least 1",
            ),
            (
                (1..=Self::MAX_WINDOW_CALLS).contains(&self.window_calls),
                "window_calls",
                "between 1 and 10000",
            ),
            (
                (1..=self.window_calls).contains(&self.minimum_calls),
                "minimum_calls",
                "between 1 and window_calls",
            ),
            (self.reset_timeout_ns > 0, "reset_timeout_ns", "at least 1"),
            (
                (1..=Self::MAX_PROBES).contains(&self.probe_count),
                "probe_count",
                "between 1 and 1000",
            ),
            (
                (1..=self.probe_count).contains(&self.success_threshold),
                "success_threshold",
                "between 1 and probe_count",
            ),
        ];
        match checks.iter().find(|(ok, _, _)| !ok) {
            Some(&(_, field, rule)) => Err(GuardError::policy(field, rule)),
            None => Ok(()),
        }
    }
}

/// What the breaker knows now, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerMetrics {
    pub state: State,
    /// The window's calls, failures and slow calls.
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
    /// In HalfOpen: probes admitted, and the outcomes in so far.
    pub probes_admitted: u32,
    pub probe_successes: u32,
    pub probe_failures: u32,
    /// Transitions dropped because nobody drained them.
    pub transitions_dropped: u64,
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

/// The last `window_calls` outcomes, as a ring of flags with running counts.
#[derive(Clone, Debug)]
struct Window {
    ring: Vec<u8>,
    next: usize,
    calls: u32,
    failures: u32,
    slow: u32,
}

impl Window {
    fn new(size: u32) -> Window {
        Window {
            ring: vec![0; size as usize],
            next: 0,
            calls: 0,
            failures: 0,
            slow: 0,
        }
    }

    fn push(&mut self, flags: u8) {
        let evicted = std::mem::replace(&mut self.ring[self.next], flags);
        // A slot not yet written holds 0 and takes nothing away.
        let full = self.calls as usize == self.ring.len();
        self.calls += u32::from(!full);
        self.failures = self.failures + u32::from(flags & FAILED) - u32::from(evicted & FAILED);
        self.slow = self.slow + u32::from(flags & SLOW != 0) - u32::from(evicted & SLOW != 0);
        self.next = (self.next + 1) % self.ring.len();
    }

    fn clear(&mut self) {
        let size = self.ring.len() as u32;
        *self = Window::new(size);
    }
}

/// The circuit breaker for one peer (or one dependency).
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    state: State,
    window: Window,
    /// When the breaker last opened or went half-open.
    since_ns: u64,
    probes_admitted: u32,
    probe_successes: u32,
    probe_failures: u32,
    pending: VecDeque<Transition>,
    transitions_dropped: u64,
}

impl CircuitBreaker {
    pub fn new(policy: BreakerPolicy) -> Result<CircuitBreaker, GuardError> {
        policy.validate()?;
        Ok(CircuitBreaker {
            policy,
            state: State::Closed,
            window: Window::new(policy.window_calls),
            since_ns: 0,
            probes_admitted: 0,
            probe_successes: 0,
            probe_failures: 0,
            pending: VecDeque::new(),
            transitions_dropped: 0,
        })
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    pub fn metrics(&self) -> BreakerMetrics {
        BreakerMetrics {
            state: self.state,
            calls: self.window.calls,
            failures: self.window.failures,
            slow: self.window.slow,
            probes_admitted: self.probes_admitted,
            probe_successes: self.probe_successes,
            probe_failures: self.probe_failures,
            transitions_dropped: self.transitions_dropped,
        }
    }

    /// The transitions since the last drain, oldest first.
    pub fn drain_transitions(&mut self) -> impl Iterator<Item = Transition> + '_ {
        self.pending.drain(..)
    }

    /// May a call go out now? In HalfOpen a `true` is one of the probes: report its outcome.
    pub fn allow_request(&mut self, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.since_ns);
        match self.state {
            State::Closed | State::ForcedClosed => true,
            State::ForcedOpen => false,
            State::Open if elapsed >= self.policy.reset_timeout_ns => {
                self.go(State::HalfOpen, Reason::ResetTimeout, now_ns);
                self.probes_admitted = 1;
                true
            }
            State::Open => false,
            State::HalfOpen if self.probes_admitted < self.policy.probe_count => {
                self.probes_admitted += 1;
                true
            }
            State::HalfOpen if elapsed >= self.policy.reset_timeout_ns => {
                self.go(State::Open, Reason::ProbeTimeout, now_ns);
                false
            }
            State::HalfOpen => false,
        }
    }

    pub fn record_success(&mut self, now_ns: u64, latency_ns: u64) {
        self.record(now_ns, latency_ns, false);
    }

    pub fn record_failure(&mut self, now_ns: u64, latency_ns: u64) {
        self.record(now_ns, latency_ns, true);
    }

    /// Record a call's outcome as `detector` judges it.
    pub fn record_outcome<D: FailureDetector>(
        &mut self,
        detector: &D,
        outcome: &D::Outcome,
        now_ns: u64,
        latency_ns: u64,
    ) {
        self.record(now_ns, latency_ns, detector.is_failure(outcome));
    }

    fn record(&mut self, now_ns: u64, latency_ns: u64, failed: bool) {
        let slow = latency_ns > self.policy.slow_call_threshold_ns;
        match self.state {
            State::Closed => {
                self.window
                    .push((u8::from(failed) * FAILED) | (u8::from(slow) * SLOW));
                let w = &self.window;
                let p = &self.policy;
                if w.calls < p.minimum_calls {
                    return;
                }
                let reached = |count: u32, pct: u8| {
                    u64::from(count) * 100 >= u64::from(pct) * u64::from(w.calls)
                };
                if reached(w.failures, p.failure_rate_pct) {
                    self.go(State::Open, Reason::FailureRate, now_ns);
                } else if reached(w.slow, p.slow_call_rate_pct) {
                    self.go(State::Open, Reason::SlowCallRate, now_ns);
                }
            }
            State::HalfOpen
                if self.probe_successes + self.probe_failures < self.probes_admitted =>
            {
                if failed || slow {
                    self.probe_failures += 1;
                } else {
                    self.probe_successes += 1;
                }
                if self.probe_successes + self.probe_failures < self.policy.probe_count {
                    return;
                }
                if self.probe_successes >= self.policy.success_threshold {
                    self.go(State::Closed, Reason::ProbesSucceeded, now_ns);
                } else {
                    self.go(State::Open, Reason::ProbesFailed, now_ns);
                }
            }
            // Late outcomes: of calls admitted before the breaker opened, of probes beyond
            // those admitted, or while an operator holds the breaker.
            State::HalfOpen | State::Open | State::ForcedOpen | State::ForcedClosed => {}
        }
    }

    /// Operator: refuse every call until released.
    pub fn force_open(&mut self, now_ns: u64) {
        self.force(State::ForcedOpen, now_ns);
    }

    /// Operator: admit every call (recording nothing) until released.
    pub fn force_closed(&mut self, now_ns: u64) {
        self.force(State::ForcedClosed, now_ns);
    }

    /// Operator: from a forced state back to Closed with an empty window. Elsewhere it does
    /// nothing (the breaker is not held).
    pub fn release(&mut self, now_ns: u64) {
        if matches!(self.state, State::ForcedOpen | State::ForcedClosed) {
            self.go(State::Closed, Reason::Operator, now_ns);
        }
    }

    fn force(&mut self, to: State, now_ns: u64) {
        if self.state != to {
            self.go(to, Reason::Operator, now_ns);
        }
    }

    /// Enter `to`: record the event with the counts the decision was made on, then reset
    /// what the new state starts from.
    fn go(&mut self, to: State, reason: Reason, now_ns: u64) {
        let (calls, failures, slow, successes) = if self.state == State::HalfOpen {
            let probes = self.probe_successes + self.probe_failures;
            (probes, self.probe_failures, 0, self.probe_successes)
        } else {
            let w = &self.window;
            (w.calls, w.failures, w.slow, w.calls - w.failures)
        };
        if self.pending.len() == MAX_PENDING_TRANSITIONS {
            self.pending.pop_front();
            self.transitions_dropped += 1;
        }
        self.pending.push_back(Transition {
            from: self.state,
            to,
            reason,
            calls,
            failures,
            successes,
            slow,
            at_ns: now_ns,
        });
        self.state = to;
        self.since_ns = now_ns;
        self.probes_admitted = 0;
        self.probe_successes = 0;
        self.probe_failures = 0;
        if to == State::Closed {
            self.window.clear();
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
