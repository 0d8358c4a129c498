//! The circuit breaker under random call sequences: every transition it emits is in the
//! legal table, transitions chain (each starts where the last ended), each state answers
//! `allow_request` as it must, and HalfOpen admits at most `probe_count` probes. A long
//! seeded run then shows that every state is reachable and every legal transition happens.

use std::collections::HashSet;

use aether_guard::breaker::{is_legal, LEGAL_TRANSITIONS};
use aether_guard::{BreakerPolicy, CircuitBreaker, State, Transition};
use proptest::prelude::*;

const MS: u64 = 1_000_000;

#[derive(Clone, Copy, Debug)]
enum Op {
    Allow,
    Success { latency_ms: u64 },
    Failure { latency_ms: u64 },
    ForceOpen,
    ForceClosed,
    Release,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => Just(Op::Allow),
        6 => (0u64..40).prop_map(|latency_ms| Op::Success { latency_ms }),
        6 => (0u64..40).prop_map(|latency_ms| Op::Failure { latency_ms }),
        1 => Just(Op::ForceOpen),
        1 => Just(Op::ForceClosed),
        1 => Just(Op::Release),
    ]
}

fn policy() -> impl Strategy<Value = BreakerPolicy> {
    (1u8..=100, 1u8..=100, 1u32..=8, 1u32..=4).prop_flat_map(|(fail, slow, window, probes)| {
        (1..=window, 1..=probes).prop_map(move |(minimum_calls, success_threshold)| BreakerPolicy {
            failure_rate_pct: fail,
            slow_call_rate_pct: slow,
            slow_call_threshold_ns: 20 * MS,
            window_calls: window,
            minimum_calls,
            reset_timeout_ns: 100 * MS,
            probe_count: probes,
            success_threshold,
        })
    })
}

/// Applies one op at `now` and checks what can be checked from outside.
struct Checker {
    b: CircuitBreaker,
    state: State,
    probes: u32,
    seen_states: HashSet<State>,
    seen_transitions: HashSet<(State, State, aether_guard::Reason)>,
}

impl Checker {
    fn new(policy: BreakerPolicy) -> Checker {
        Checker {
            b: CircuitBreaker::new(policy).unwrap(),
            state: State::Closed,
            probes: 0,
            seen_states: HashSet::from([State::Closed]),
            seen_transitions: HashSet::new(),
        }
    }

    fn apply(&mut self, op: Op, now: u64) -> Result<(), TestCaseError> {
        let before = self.state;
        let answer = match op {
            Op::Allow => Some(self.b.allow_request(now)),
            Op::Success { latency_ms } => {
                self.b.record_success(now, latency_ms * MS);
                None
            }
            Op::Failure { latency_ms } => {
                self.b.record_failure(now, latency_ms * MS);
                None
            }
            Op::ForceOpen => {
                self.b.force_open(now);
                None
            }
            Op::ForceClosed => {
                self.b.force_closed(now);
                None
            }
            Op::Release => {
                self.b.release(now);
                None
            }
        };
        let transitions: Vec<Transition> = self.b.drain_transitions().collect();
        for t in &transitions {
            prop_assert!(is_legal(t.from, t.to, t.reason), "illegal {:?}", t);
            prop_assert_eq!(t.from, self.state, "transitions chain");
            prop_assert_eq!(t.at_ns, now);
            self.state = t.to;
            self.probes = 0;
            self.seen_states.insert(t.to);
            self.seen_transitions.insert((t.from, t.to, t.reason));
        }
        prop_assert!(
            transitions.len() <= 1,
            "one op, one transition: {:?}",
            transitions
        );
        prop_assert_eq!(self.b.state(), self.state);
        if let Some(allowed) = answer {
            match (before, self.state) {
                (State::Closed | State::ForcedClosed, _) => prop_assert!(allowed),
                (State::ForcedOpen, _) => prop_assert!(!allowed),
                // Refused while open; the call that finds the timeout passed is the first probe.
                (State::Open, State::Open) => prop_assert!(!allowed),
                (State::Open, State::HalfOpen) => prop_assert!(allowed),
                (State::HalfOpen, State::Open) => prop_assert!(!allowed),
                (from, to) => prop_assert_eq!(from, to),
            }
            if allowed && self.state == State::HalfOpen {
                self.probes += 1;
                prop_assert!(self.probes <= self.b.policy().probe_count);
            }
        }
        Ok(())
    }
}

proptest! {
    #[test]
    fn transitions_are_legal_and_states_answer_as_they_must(
        policy in policy(),
        ops in prop::collection::vec((0u64..150, op()), 1..300),
    ) {
        let mut c = Checker::new(policy);
        let mut now = 1_790_000_000_000 * MS;
        for (dt_ms, op) in ops {
            now += dt_ms * MS;
            c.apply(op, now)?;
        }
    }
}

/// SplitMix64: a seeded sequence for the long run below (no dependency for it).
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn every_state_and_every_legal_transition_is_reached() {
    let policy = BreakerPolicy {
        failure_rate_pct: 50,
        slow_call_rate_pct: 50,
        slow_call_threshold_ns: 20 * MS,
        window_calls: 4,
        minimum_calls: 2,
        reset_timeout_ns: 100 * MS,
        probe_count: 2,
        success_threshold: 1,
    };
    let mut c = Checker::new(policy);
    let mut seed = 11;
    let mut now = 0;
    for _ in 0..20_000 {
        now += next(&mut seed) % 60 * MS;
        let roll = next(&mut seed) % 100;
        let latency_ms = next(&mut seed) % 40;
        let op = match roll {
            0..=39 => Op::Allow,
            40..=64 => Op::Success { latency_ms },
            65..=94 => Op::Failure { latency_ms },
            95..=96 => Op::ForceOpen,
            97..=98 => Op::ForceClosed,
            _ => Op::Release,
        };
        c.apply(op, now).unwrap();
    }
    let all_states = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::ForcedClosed,
    ];
    assert_eq!(c.seen_states, HashSet::from(all_states));
    let legal: HashSet<_> = LEGAL_TRANSITIONS.iter().copied().collect();
    let missing: Vec<_> = legal.difference(&c.seen_transitions).collect();
    assert!(missing.is_empty(), "never happened: {missing:?}");
}
