//! One interface for every limiter ([`Limiter`]) and the keyed map behind it ([`Keyed`]): the
//! state of each key (a caller, a stream prefix, a method) in a map with a bound on its size.
//!
//! **The bound on keys.** A key whose state is *idle* — a full bucket, a window with nothing
//! left in it — behaves exactly like a key never seen, so it can be dropped without changing
//! any decision. When the map is full and a new key arrives, idle keys are swept out (one pass
//! over the map, which also learns when the next key turns idle). If none is idle, the new
//! key's request is refused until then, with that time as its retry: the limiter fails closed
//! rather than forget a busy key's state (forgetting would hand that key a fresh burst, so the
//! limit would not hold for whoever can cycle keys). Until that time, further new keys are
//! refused without another pass, so a flood of new keys costs O(1) each.
//!
//! **Decisions.** `try_acquire(key, n, now)` returns whether `n` tokens (requests) were
//! admitted, how many are left, and when to retry: the exact wait until the same request
//! would pass if nothing else arrived (for the token bucket and the sliding window alike; a
//! property test checks that it passes then and not a nanosecond before). A request for more
//! than the configured limit is an error (it can never pass); one for more than the limit
//! scaled by the adaptive factor is refused with [`RETRY_WHEN_RELAXED`].
//!
//! **State for restarts.** [`Keyed::export`] gives every key's state with the policy; the
//! node writes it (serde) on shutdown and periodically and [`Keyed::restore`] reads it back:
//! stored times are wall-clock, so only the time that really elapsed refills or expires
//! anything.

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::bucket::TokenBucket;
use crate::window::SlidingWindow;
use crate::{Factor, GuardError};

/// `retry_after_ns` of a request larger than the limit scaled by the current adaptive factor:
/// it can pass only once the factor relaxes.
pub const RETRY_WHEN_RELAXED: u64 = u64::MAX;

/// A time in u128 arithmetic, saturated below [`RETRY_WHEN_RELAXED`] (a wait that long is
/// "never" in practice, and must not read as "when relaxed").
pub(crate) fn clamp_ns(ns: u128) -> u64 {
    ns.min(u128::from(RETRY_WHEN_RELAXED - 1)) as u64
}

/// `⌊x / d⌋` for a quotient below 2^40 (every `remaining`: at most 10¹² tokens or requests),
/// without a u128 division (a library call costing a fifth of a decision). The float
/// quotient is within 10⁻³ of the true one at that size, so its floor is off by at most one
/// either way, and exact integer products correct it.
pub(crate) fn small_quotient(x: u128, d: u64) -> u64 {
    let q = (x as f64 / d as f64) as u64;
    let d = u128::from(d);
    let q = q - u64::from(u128::from(q) * d > x);
    q + u64::from(u128::from(q + 1) * d <= x)
}

/// The answer to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    /// Whole tokens (requests) left for this key after the decision.
    pub remaining: u64,
    /// 0 when allowed; else the ns until this request would pass if nothing else arrives, or
    /// [`RETRY_WHEN_RELAXED`].
    pub retry_after_ns: u64,
}

impl Decision {
    pub(crate) fn allowed(remaining: u64) -> Decision {
        Decision {
            allowed: true,
            remaining,
            retry_after_ns: 0,
        }
    }

    pub(crate) fn refused(remaining: u64, retry_after_ns: u64) -> Decision {
        Decision {
            allowed: false,
            remaining,
            retry_after_ns,
        }
    }
}

/// A limiting algorithm over one key's state; [`Keyed`] holds the keys. The policy is the
/// algorithm (e.g. [`TokenBucket`]): it is immutable, the state is per key.
pub trait Algorithm: Clone + Serialize {
    type State: Clone + Serialize;
    /// The configured limit: a request for more is an error.
    fn limit(&self) -> u64;
    /// Whole tokens (requests) an unseen key has under `factor`.
    fn capacity(&self, factor: Factor) -> u64;
    /// The state of a key never seen (equivalent to any idle state).
    fn fresh(&self, now_ns: u64, factor: Factor) -> Self::State;
    /// Decide a request of `n` (≤ `limit`), updating the state.
    fn acquire(&self, st: &mut Self::State, n: u64, now_ns: u64, factor: Factor) -> Decision;
    /// Whole tokens (requests) left at `now_ns`, without changing the state.
    fn remaining(&self, st: &Self::State, now_ns: u64, factor: Factor) -> u64;
    /// The wall-clock ns from which the state is idle (equivalent to `fresh`) if nothing else
    /// arrives.
    fn idle_at(&self, st: &Self::State, factor: Factor) -> u64;
    /// A stored state, kept under `stored`, checked and brought under this policy.
    fn restore(
        &self,
        stored: &Self,
        st: Self::State,
        now_ns: u64,
    ) -> Result<Self::State, GuardError>;
}

/// The interface the node's guards use, whatever the algorithm.
pub trait Limiter<K> {
    /// Admit `n` tokens (requests) for `key` at `now_ns`, or say when to retry.
    fn try_acquire(&mut self, key: &K, n: u64, now_ns: u64) -> Result<Decision, GuardError>;

    /// The boolean form: one request.
    fn allow(&mut self, key: &K, now_ns: u64) -> bool {
        self.try_acquire(key, 1, now_ns).is_ok_and(|d| d.allowed)
    }

    /// For dashboards: tokens (requests) `key` has left at `now_ns`.
    fn remaining(&self, key: &K, now_ns: u64) -> u64;

    /// For dashboards: every key held, with what it has left at `now_ns` (in the map's order).
    fn snapshot(&self, now_ns: u64) -> Vec<(K, u64)>;

    /// Put the adaptive factor on the limit (from [`crate::AdaptiveController`]).
    fn set_factor(&mut self, factor: Factor);

    fn factor(&self) -> Factor;
}

/// Every key's state with the policy it was kept under: what is written on shutdown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LimiterState<A, S, K> {
    pub policy: A,
    pub entries: Vec<(K, S)>,
}

/// A limiter of one algorithm over many keys, at most `max_keys` of them.
#[derive(Clone, Debug)]
pub struct Keyed<K, A: Algorithm> {
    algo: A,
    factor: Factor,
    max_keys: usize,
    entries: HashMap<K, A::State>,
    /// While the map is full: before this wall-clock ns, no key is idle (no sweep needed).
    next_sweep_ns: u64,
    refused_new_keys: u64,
}

/// A token bucket per key.
pub type TokenBucketLimiter<K> = Keyed<K, TokenBucket>;
/// A sliding window per key.
pub type SlidingWindowLimiter<K> = Keyed<K, SlidingWindow>;

impl<K: Hash + Eq + Clone, A: Algorithm> Keyed<K, A> {
    /// Ten million keys: a bound on memory (the node sizes it far lower).
    pub const MAX_KEYS: usize = 10_000_000;

    pub fn new(algo: A, max_keys: usize) -> Result<Keyed<K, A>, GuardError> {
        if !(1..=Self::MAX_KEYS).contains(&max_keys) {
            return Err(GuardError::policy("max_keys", "between 1 and 10000000"));
        }
        Ok(Keyed {
            algo,
            factor: Factor::ONE,
            max_keys,
            entries: HashMap::new(),
            next_sweep_ns: 0,
            refused_new_keys: 0,
        })
    }

    pub fn policy(&self) -> &A {
        &self.algo
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Requests of new keys refused because the map was full of busy keys (a metric).
    pub fn refused_new_keys(&self) -> u64 {
        self.refused_new_keys
    }

    /// Drops idle keys; true if there is room for a new one. Learns when the next key turns
    /// idle, and sweeps no more before then.
    fn make_room(&mut self, now_ns: u64) -> bool {
        if now_ns < self.next_sweep_ns {
            return false;
        }
        let (algo, factor) = (&self.algo, self.factor);
        let mut next = u64::MAX;
        self.entries.retain(|_, st| {
            let at = algo.idle_at(st, factor);
            if at <= now_ns {
                return false;
            }
            next = next.min(at);
            true
        });
        let room = self.entries.len() < self.max_keys;
        // After freeing room, the next sweep may be needed at any time the map fills again.
        self.next_sweep_ns = if room { 0 } else { next };
        room
    }

    /// For dashboards, without copying keys: what the most drained key has left at
    /// `now_ns` (None: no key held).
    pub fn min_remaining(&self, now_ns: u64) -> Option<u64> {
        self.entries
            .values()
            .map(|st| self.algo.remaining(st, now_ns, self.factor))
            .min()
    }

    /// Every key's state, with the policy, for writing to disk.
    pub fn export(&self) -> LimiterState<A, A::State, K> {
        LimiterState {
            policy: self.algo.clone(),
            entries: self
                .entries
                .iter()
                .map(|(k, st)| (k.clone(), st.clone()))
                .collect(),
        }
    }

    /// A limiter under `algo` holding the keys of `state` (read from disk, so checked: at most
    /// `max_keys` keys, no key twice, every state fitting the policy).
    pub fn restore(
        algo: A,
        max_keys: usize,
        state: LimiterState<A, A::State, K>,
        now_ns: u64,
    ) -> Result<Keyed<K, A>, GuardError> {
        let mut limiter = Keyed::new(algo, max_keys)?;
        if state.entries.len() > max_keys {
            return Err(GuardError::InvalidState(format!(
                "{} keys stored, at most {max_keys} kept",
                state.entries.len()
            )));
        }
        for (key, st) in state.entries {
            let st = limiter.algo.restore(&state.policy, st, now_ns)?;
            if limiter.entries.insert(key, st).is_some() {
                return Err(GuardError::InvalidState("a key is stored twice".into()));
            }
        }
        Ok(limiter)
    }
}

impl<K: Hash + Eq + Clone, A: Algorithm> Limiter<K> for Keyed<K, A> {
    fn try_acquire(&mut self, key: &K, n: u64, now_ns: u64) -> Result<Decision, GuardError> {
        if n > self.algo.limit() {
            return Err(GuardError::ExceedsLimit {
                requested: n,
                limit: self.algo.limit(),
            });
        }
        if let Some(st) = self.entries.get_mut(key) {
            return Ok(self.algo.acquire(st, n, now_ns, self.factor));
        }
        if self.entries.len() >= self.max_keys && !self.make_room(now_ns) {
            self.refused_new_keys += 1;
            return Ok(Decision::refused(0, self.next_sweep_ns - now_ns));
        }
        let mut st = self.algo.fresh(now_ns, self.factor);
        let decision = self.algo.acquire(&mut st, n, now_ns, self.factor);
        self.entries.insert(key.clone(), st);
        Ok(decision)
    }

    fn remaining(&self, key: &K, now_ns: u64) -> u64 {
        self.entries.get(key).map_or_else(
            || self.algo.capacity(self.factor),
            |st| self.algo.remaining(st, now_ns, self.factor),
        )
    }

    fn snapshot(&self, now_ns: u64) -> Vec<(K, u64)> {
        self.entries
            .iter()
            .map(|(k, st)| (k.clone(), self.algo.remaining(st, now_ns, self.factor)))
            .collect()
    }

    fn set_factor(&mut self, factor: Factor) {
        self.factor = factor;
        // Idle times depend on the factor: learn them again at the next sweep.
        self.next_sweep_ns = 0;
    }

    fn factor(&self) -> Factor {
        self.factor
    }
}

#[cfg(test)]
#[path = "limiter_tests.rs"]
mod tests;
