//! Token bucket: `burst_capacity` tokens, refilled at `refill_rate` tokens per second. A burst
//! up to the capacity passes at once; over any span of `elapsed` seconds at most
//! `burst_capacity + refill_rate × elapsed` tokens are admitted, so the average rate holds.
//!
//! **Exact over long runs.** The rate is kept as an integer of nano-tokens per second
//! (`refill_nano_per_sec`: 0.27 tokens/s is 270_000_000, exactly), time is integer
//! nanoseconds, and the bucket's level is an integer of atto-tokens (10⁻¹⁸): the refill over
//! `dt` ns is `refill_nano_per_sec × dt` atto-tokens, exactly, with no rounding at all. So
//! there is no drift to accumulate: ten hours of one request per 3.7 s against 0.27 tokens/s
//! admit exactly what rational arithmetic says (a float level, or GCRA's emission interval
//! rounded to whole nanoseconds — 3.7037… s here — would not). The only rounding is of the
//! configured rate, once, to 10⁻⁹ tokens/s.
//!
//! **Under the adaptive factor** (see [`crate::adaptive`]) capacity and rate are both scaled
//! by it, rounding down (never more than the factor allows); capacity never below one token,
//! so a single request can always pass eventually. A request larger than the scaled capacity
//! (but within the configured one) is refused with [`crate::RETRY_WHEN_RELAXED`].
//!
//! **Time.** The state stores the wall-clock time it was last brought up to date. A restart
//! refills only what elapsed (a drained bucket stays drained); a clock that steps back refills
//! nothing until it passes the stored time again.

use serde::{Deserialize, Serialize};

use crate::limiter::{clamp_ns, small_quotient, Algorithm, Decision, RETRY_WHEN_RELAXED};
use crate::{Factor, GuardError};

/// Atto-tokens (10⁻¹⁸) in a token: nano-tokens per second × nanoseconds.
pub const ATTO_PER_TOKEN: u128 = 1_000_000_000_000_000_000;

/// A token bucket policy (also the algorithm: see [`Algorithm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TokenBucketFields")]
pub struct TokenBucket {
    burst_capacity: u64,
    refill_nano_per_sec: u64,
}

/// The serialized form, validated into a [`TokenBucket`].
#[derive(Deserialize)]
struct TokenBucketFields {
    burst_capacity: u64,
    refill_nano_per_sec: u64,
}

impl TryFrom<TokenBucketFields> for TokenBucket {
    type Error = GuardError;
    fn try_from(f: TokenBucketFields) -> Result<TokenBucket, GuardError> {
        TokenBucket::from_nano(f.burst_capacity, f.refill_nano_per_sec)
    }
}

/// One key's bucket: its level and when it was last brought up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketState {
    /// Tokens in the bucket, in atto-tokens (10⁻¹⁸ token).
    pub level_atto: u128,
    /// Wall-clock ns the level was computed at.
    pub updated_ns: u64,
}

impl TokenBucket {
    /// Burst capacities above 10¹² tokens make no sense for one key and would let the level
    /// (atto-tokens) outgrow the arithmetic's headroom.
    pub const MAX_BURST: u64 = 1_000_000_000_000;
    /// One token per ~11.6 days: with the factor at its minimum the scaled rate is still ≥ 1
    /// nano-token per second.
    pub const MIN_REFILL_NANO_PER_SEC: u64 = 1_000;
    /// 10⁹ tokens per second.
    pub const MAX_REFILL_NANO_PER_SEC: u64 = 1_000_000_000_000_000_000;

    /// `burst_capacity` tokens, `refill_rate_per_sec` tokens per second (rounded once to
    /// 10⁻⁹ tokens per second).
    pub fn new(burst_capacity: u64, refill_rate_per_sec: f64) -> Result<TokenBucket, GuardError> {
        let nano = (refill_rate_per_sec * 1e9).round();
        let range = Self::MIN_REFILL_NANO_PER_SEC as f64..=Self::MAX_REFILL_NANO_PER_SEC as f64;
        if !range.contains(&nano) {
            return Err(GuardError::policy(
                "refill_rate",
                "between 0.000001 and 1000000000 tokens per second",
            ));
        }
        TokenBucket::from_nano(burst_capacity, nano as u64)
    }

    /// The exact form: `refill_nano_per_sec` is tokens per second × 10⁹.
    pub fn from_nano(
        burst_capacity: u64,
        refill_nano_per_sec: u64,
    ) -> Result<TokenBucket, GuardError> {
        if !(1..=Self::MAX_BURST).contains(&burst_capacity) {
            return Err(GuardError::policy(
                "burst_capacity",
                "between 1 and 1000000000000 tokens",
            ));
        }
        if !(Self::MIN_REFILL_NANO_PER_SEC..=Self::MAX_REFILL_NANO_PER_SEC)
            .contains(&refill_nano_per_sec)
        {
            return Err(GuardError::policy(
                "refill_nano_per_sec",
                "between 1000 and 10^18 (0.000001 to 10^9 tokens per second)",
            ));
        }
        Ok(TokenBucket {
            burst_capacity,
            refill_nano_per_sec,
        })
    }

    pub fn burst_capacity(&self) -> u64 {
        self.burst_capacity
    }

    pub fn refill_nano_per_sec(&self) -> u64 {
        self.refill_nano_per_sec
    }

    /// For display: tokens per second.
    pub fn refill_rate_per_sec(&self) -> f64 {
        self.refill_nano_per_sec as f64 / 1e9
    }

    /// Capacity under `factor`, in atto-tokens: at least one token.
    fn capacity_atto(&self, factor: Factor) -> u128 {
        factor
            .scale(u128::from(self.burst_capacity) * ATTO_PER_TOKEN)
            .max(ATTO_PER_TOKEN)
    }

    /// Refill under `factor`, in atto-tokens per ns (≥ 1: see `MIN_REFILL_NANO_PER_SEC`).
    fn rate(&self, factor: Factor) -> u128 {
        factor.scale(u128::from(self.refill_nano_per_sec))
    }

    /// The level at `now_ns`: what was there plus the refill since, up to the capacity.
    fn level_at(&self, st: &BucketState, now_ns: u64, factor: Factor) -> u128 {
        let elapsed = u128::from(now_ns.saturating_sub(st.updated_ns));
        st.level_atto
            .saturating_add(self.rate(factor) * elapsed)
            .min(self.capacity_atto(factor))
    }
}

/// Whole tokens in a level (a level is at most the capacity, ≤ 10¹² tokens).
fn whole_tokens(level_atto: u128) -> u64 {
    small_quotient(level_atto, ATTO_PER_TOKEN as u64)
}

impl Algorithm for TokenBucket {
    type State = BucketState;

    fn limit(&self) -> u64 {
        self.burst_capacity
    }

    fn capacity(&self, factor: Factor) -> u64 {
        whole_tokens(self.capacity_atto(factor))
    }

    fn fresh(&self, now_ns: u64, factor: Factor) -> BucketState {
        BucketState {
            level_atto: self.capacity_atto(factor),
            updated_ns: now_ns,
        }
    }

    fn acquire(&self, st: &mut BucketState, n: u64, now_ns: u64, factor: Factor) -> Decision {
        let level = self.level_at(st, now_ns, factor);
        st.level_atto = level;
        st.updated_ns = st.updated_ns.max(now_ns);
        let cost = u128::from(n) * ATTO_PER_TOKEN;
        if cost <= level {
            st.level_atto = level - cost;
            return Decision::allowed(whole_tokens(level - cost));
        }
        // Refill resumes from the state's time (later than now if the clock stepped back).
        let resumes_in = u128::from(st.updated_ns.saturating_sub(now_ns));
        let retry_after_ns = if cost > self.capacity_atto(factor) {
            RETRY_WHEN_RELAXED
        } else {
            clamp_ns(resumes_in + (cost - level).div_ceil(self.rate(factor)))
        };
        Decision::refused(whole_tokens(level), retry_after_ns)
    }

    fn remaining(&self, st: &BucketState, now_ns: u64, factor: Factor) -> u64 {
        whole_tokens(self.level_at(st, now_ns, factor))
    }

    fn idle_at(&self, st: &BucketState, factor: Factor) -> u64 {
        let missing = self.capacity_atto(factor).saturating_sub(st.level_atto);
        clamp_ns(u128::from(st.updated_ns) + missing.div_ceil(self.rate(factor)))
    }

    fn restore(
        &self,
        _stored: &TokenBucket,
        st: BucketState,
        now_ns: u64,
    ) -> Result<BucketState, GuardError> {
        // Any level fits any bucket (it is capped at use); a time ahead of now (the clock
        // stepped back, or a foreign file) is taken as now: the gap is never refilled.
        Ok(BucketState {
            level_atto: st.level_atto,
            updated_ns: st.updated_ns.min(now_ns),
        })
    }
}

#[cfg(test)]
#[path = "bucket_tests.rs"]
mod tests;
