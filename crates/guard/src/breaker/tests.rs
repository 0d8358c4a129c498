use std::io::ErrorKind;

use super::*;

const MS: u64 = 1_000_000;

/// A small policy: decide over the last 4 calls, all 4 needed; open at 50% failures or 75%
/// slow (> 100 ms); half-open after 1 s with 2 probes, both must pass.
fn policy() -> BreakerPolicy {
    BreakerPolicy {
        failure_rate_pct: 50,
        slow_call_rate_pct: 75,
        slow_call_threshold_ns: 100 * MS,
        window_calls: 4,
        minimum_calls: 4,
        reset_timeout_ns: 1_000 * MS,
        probe_count: 2,
        success_threshold: 2,
    }
}

/// One step of a script; times in ms.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// `allow_request`, and what it must answer.
    Allow(u64, bool),
    /// A success with this latency (ms).
    Good(u64, u64),
    Fail(u64),
    ForceOpen(u64),
    ForceClosed(u64),
    Release(u64),
}
use Op::*;

/// Runs `ops` and checks the transitions: (from, to, reason, at ms).
fn check(ops: &[Op], want: &[(State, State, Reason, u64)]) -> CircuitBreaker {
    let mut b = CircuitBreaker::new(policy()).unwrap();
    for &op in ops {
        match op {
            Allow(t, expect) => assert_eq!(b.allow_request(t * MS), expect, "{op:?}"),
            Good(t, latency) => b.record_success(t * MS, latency * MS),
            Fail(t) => b.record_failure(t * MS, MS),
            ForceOpen(t) => b.force_open(t * MS),
            ForceClosed(t) => b.force_closed(t * MS),
            Release(t) => b.release(t * MS),
        }
    }
    let got: Vec<_> = b
        .drain_transitions()
        .map(|t| {
            assert!(is_legal(t.from, t.to, t.reason), "{t:?}");
            (t.from, t.to, t.reason, t.at_ns / MS)
        })
        .collect();
    assert_eq!(got, want);
    b
}

use Reason::*;
use State::*;

#[test]
fn failure_rate_opens_then_probes_close() {
    let b = check(
        &[
            Good(0, 10),
            Fail(1),
            Good(2, 10),
            Allow(2, true),
            Fail(3),
            Allow(500, false),
            Allow(1_003, true),
            Allow(1_004, true),
            Allow(1_005, false),
            Good(1_006, 10),
            Good(1_007, 10),
            Allow(1_008, true),
        ],
        &[
            (Closed, Open, FailureRate, 3),
            (Open, HalfOpen, ResetTimeout, 1_003),
            (HalfOpen, Closed, ProbesSucceeded, 1_007),
        ],
    );
    assert_eq!(b.metrics().calls, 0, "closing starts a new window");
}

#[test]
fn the_transition_carries_the_counts_it_was_decided_on() {
    let mut b = CircuitBreaker::new(policy()).unwrap();
    for (i, failed) in [false, true, false, true].into_iter().enumerate() {
        let t = i as u64 * MS;
        if failed {
            b.record_failure(t, 200 * MS);
        } else {
            b.record_success(t, MS);
        }
    }
    let opened: Vec<_> = b.drain_transitions().collect();
    let want = Transition {
        from: Closed,
        to: Open,
        reason: FailureRate,
        calls: 4,
        failures: 2,
        successes: 2,
        slow: 2,
        at_ns: 3 * MS,
    };
    assert_eq!(opened, vec![want]);
    assert!(b.allow_request(1_003 * MS));
    b.record_failure(1_004 * MS, MS);
    assert!(b.allow_request(1_005 * MS));
    b.record_success(1_006 * MS, MS);
    let probes: Vec<_> = b
        .drain_transitions()
        .map(|t| (t.calls, t.failures, t.successes))
        .collect();
    assert_eq!(probes, vec![(4, 2, 2), (2, 1, 1)]);
    assert_eq!(b.state(), Open);
}

#[test]
fn a_low_failure_rate_keeps_it_closed_and_old_calls_leave_the_window() {
    let b = check(
        &[
            Fail(0),
            Good(1, 10),
            Good(2, 10),
            Good(3, 10),
            // Pushes the failure out of the window of 4.
            Good(4, 10),
            Fail(5),
        ],
        &[],
    );
    let m = b.metrics();
    assert_eq!((m.state, m.calls, m.failures, m.slow), (Closed, 4, 1, 0));
}

#[test]
fn slow_calls_open_and_slow_probes_fail() {
    check(
        &[
            Good(0, 200),
            Good(1, 200),
            Good(2, 10),
            Good(3, 200),
            Allow(1_003, true),
            Allow(1_004, true),
            Fail(1_005),
            Good(1_006, 200),
            // Late: ignored while open.
            Good(1_007, 10),
        ],
        &[
            (Closed, Open, SlowCallRate, 3),
            (Open, HalfOpen, ResetTimeout, 1_003),
            (HalfOpen, Open, ProbesFailed, 1_006),
        ],
    );
}

#[test]
fn outcomes_beyond_the_probes_admitted_are_ignored_and_lost_probes_time_out() {
    check(
        &[
            Fail(0),
            Fail(1),
            Fail(2),
            Fail(3),
            Allow(1_003, true),
            Good(1_004, 10),
            // Only one probe went out: this outcome is a late one.
            Good(1_005, 10),
            Allow(1_006, true),
            Fail(1_007),
            Allow(2_007, true),
            Allow(2_008, true),
            // Both probes out, no outcome: refused until reset_timeout, then open again.
            Allow(2_500, false),
            Allow(3_007, false),
            Good(3_008, 10),
            Allow(3_009, false),
        ],
        &[
            (Closed, Open, FailureRate, 3),
            (Open, HalfOpen, ResetTimeout, 1_003),
            (HalfOpen, Open, ProbesFailed, 1_007),
            (Open, HalfOpen, ResetTimeout, 2_007),
            (HalfOpen, Open, ProbeTimeout, 3_007),
        ],
    );
}

#[test]
fn operators_force_and_release() {
    check(
        &[
            ForceOpen(0),
            Allow(1, false),
            Fail(2),
            ForceOpen(3),
            ForceClosed(4),
            Allow(5, true),
            Fail(5),
            Fail(5),
            Fail(5),
            Fail(5),
            Release(6),
            Release(7),
            Fail(8),
            Fail(9),
            Fail(10),
            Fail(11),
            ForceClosed(12),
            ForceOpen(13),
            Release(14),
        ],
        &[
            (Closed, ForcedOpen, Operator, 0),
            (ForcedOpen, ForcedClosed, Operator, 4),
            (ForcedClosed, Closed, Operator, 6),
            (Closed, Open, FailureRate, 11),
            (Open, ForcedClosed, Operator, 12),
            (ForcedClosed, ForcedOpen, Operator, 13),
            (ForcedOpen, Closed, Operator, 14),
        ],
    );
    // From HalfOpen, too.
    let mut b = check(
        &[Fail(0), Fail(1), Fail(2), Fail(3), Allow(1_003, true)],
        &[
            (Closed, Open, FailureRate, 3),
            (Open, HalfOpen, ResetTimeout, 1_003),
        ],
    );
    b.force_open(1_004 * MS);
    assert_eq!(b.state(), ForcedOpen);
}

#[test]
fn undrained_transitions_are_bounded() {
    let mut b = CircuitBreaker::new(policy()).unwrap();
    for i in 0..150 {
        b.force_open(2 * i);
        b.force_closed(2 * i + 1);
    }
    assert_eq!(
        b.metrics().transitions_dropped,
        300 - MAX_PENDING_TRANSITIONS as u64
    );
    let kept: Vec<_> = b.drain_transitions().collect();
    assert_eq!(kept.len(), MAX_PENDING_TRANSITIONS);
    assert_eq!(
        kept[0].at_ns,
        300 - MAX_PENDING_TRANSITIONS as u64,
        "the oldest are dropped"
    );
    assert_eq!(b.drain_transitions().count(), 0);
}

#[test]
fn policy_ranges() {
    let p = policy();
    assert_eq!(CircuitBreaker::new(p).unwrap().policy(), &p);
    assert!(BreakerPolicy::default().validate().is_ok());
    // (a change to the small policy, the field named in the error)
    let cases: [(BreakerPolicy, &str); 9] = [
        (
            BreakerPolicy {
                failure_rate_pct: 0,
                ..p
            },
            "failure_rate_pct",
        ),
        (
            BreakerPolicy {
                failure_rate_pct: 101,
                ..p
            },
            "failure_rate_pct",
        ),
        (
            BreakerPolicy {
                slow_call_rate_pct: 0,
                ..p
            },
            "slow_call_rate_pct",
        ),
        (
            BreakerPolicy {
                slow_call_threshold_ns: 0,
                ..p
            },
            "slow_call_threshold_ns",
        ),
        (
            BreakerPolicy {
                window_calls: 10_001,
                minimum_calls: 1,
                ..p
            },
            "window_calls",
        ),
        (
            BreakerPolicy {
                minimum_calls: 5,
                ..p
            },
            "minimum_calls",
        ),
        (
            BreakerPolicy {
                reset_timeout_ns: 0,
                ..p
            },
            "reset_timeout_ns",
        ),
        (
            BreakerPolicy {
                probe_count: 0,
                ..p
            },
            "probe_count",
        ),
        (
            BreakerPolicy {
                success_threshold: 3,
                ..p
            },
            "success_threshold",
        ),
    ];
    for (bad, field) in cases {
        match CircuitBreaker::new(bad).unwrap_err() {
            GuardError::InvalidPolicy { field: got, .. } => assert_eq!(got, field),
            other => panic!("{other}"),
        }
    }
}

#[test]
fn grpc_codes_count_the_callees_faults_only() {
    let d = GrpcCodes::default();
    // (code, counts as a failure)
    let cases = [
        (0, false),  // OK
        (1, false),  // CANCELLED
        (2, true),   // UNKNOWN
        (3, false),  // INVALID_ARGUMENT
        (4, true),   // DEADLINE_EXCEEDED
        (5, false),  // NOT_FOUND
        (7, false),  // PERMISSION_DENIED
        (8, true),   // RESOURCE_EXHAUSTED
        (9, false),  // FAILED_PRECONDITION
        (13, true),  // INTERNAL
        (14, true),  // UNAVAILABLE
        (15, true),  // DATA_LOSS
        (16, false), // UNAUTHENTICATED
        (17, true),  // not in the spec: taken as UNKNOWN
        (-1, true),
    ];
    for (code, failure) in cases {
        assert_eq!(d.is_failure(&code), failure, "code {code}");
    }
    let only_unavailable = GrpcCodes::new(&[14]).unwrap();
    assert!(only_unavailable.is_failure(&14) && !only_unavailable.is_failure(&4));
    assert!(
        !only_unavailable.is_failure(&99),
        "UNKNOWN is not in this set"
    );
    for bad in [0, 17, -3] {
        assert!(GrpcCodes::new(&[bad]).is_err(), "{bad}");
    }
}

#[test]
fn error_kinds_and_latency() {
    let d = ErrorKinds::transport();
    // (kind, counts as a failure)
    let cases = [
        (ErrorKind::ConnectionRefused, true),
        (ErrorKind::TimedOut, true),
        (ErrorKind::BrokenPipe, true),
        (ErrorKind::InvalidInput, false),
        (ErrorKind::NotFound, false),
        (ErrorKind::PermissionDenied, false),
    ];
    for (kind, failure) in cases {
        assert_eq!(d.is_failure(&kind), failure, "{kind:?}");
    }
    let custom = ErrorKinds::new(&[ErrorKind::NotFound]).unwrap();
    assert!(custom.is_failure(&ErrorKind::NotFound));
    assert!(ErrorKinds::new(&[ErrorKind::Other; 65]).is_err());

    let slow = SlowerThan { threshold_ns: 100 };
    assert!(!slow.is_failure(&100));
    assert!(slow.is_failure(&101));
}

/// A detector of the caller's own: HTTP statuses, where 5xx and 429 are the callee's fault.
struct HttpStatus;

impl FailureDetector for HttpStatus {
    type Outcome = u16;
    fn is_failure(&self, status: &u16) -> bool {
        *status >= 500 || *status == 429
    }
}

#[test]
fn a_custom_detector_drives_the_breaker() {
    let mut b = CircuitBreaker::new(policy()).unwrap();
    for (t, status) in [200u16, 404, 503, 429].into_iter().enumerate() {
        b.record_outcome(&HttpStatus, &status, t as u64 * MS, MS);
    }
    assert_eq!(b.state(), Open, "{:?}", b.metrics());
    let mut g = CircuitBreaker::new(policy()).unwrap();
    for (t, code) in [0, 3, 5, 14].into_iter().enumerate() {
        g.record_outcome(&GrpcCodes::default(), &code, t as u64 * MS, MS);
    }
    assert_eq!(g.state(), Closed, "1 failure in 4 is under 50%");
}
