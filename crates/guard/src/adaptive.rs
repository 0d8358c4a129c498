//! The adaptive factor: every limit is multiplied by a [`Factor`] that follows the node's
//! queue utilization (`queue_health()`: proposer queue and in-flight work, 0..1), so that an
//! overloaded node admits less before its queues overflow.
//!
//! Multiplicative decrease, additive increase (TCP's AIMD, for the same reason: back off fast
//! when the queue is full, probe back slowly so the load does not return all at once):
//!
//! - utilization above `tighten_above` (0.8): the factor halves, down to `floor`; at once the
//!   first time, then at most once per `interval_ns` while the overload lasts;
//! - below `relax_below` (0.4): the factor grows by `relax_step` toward 1, one step per
//!   `interval_ns` since the last change — it cannot jump back in one call;
//! - in between: no change. The band between the two thresholds is the hysteresis: a queue
//!   hovering around either threshold does not make the factor flap, and a full tighten-relax
//!   cycle takes at least `interval_ns`.
//!
//! Pure: the caller feeds `observe(utilization, now_ns)` (a time going backwards counts as no
//! time passed) and copies [`AdaptiveController::factor`] into its limiters; the factor and the
//! last utilization are its metrics.

use serde::{Deserialize, Serialize};

use crate::{Factor, GuardError};

/// When and how much the factor moves.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaptivePolicy {
    /// Utilization above which the factor halves (0.8).
    pub tighten_above: f64,
    /// Utilization below which it relaxes (0.4).
    pub relax_below: f64,
    /// The lowest factor (1/8).
    pub floor: Factor,
    /// What one relax step adds (1/8).
    pub relax_step: Factor,
    /// The least time between two tightenings, and from any change to a relax step (1 s).
    pub interval_ns: u64,
}

impl Default for AdaptivePolicy {
    fn default() -> AdaptivePolicy {
        AdaptivePolicy {
            tighten_above: 0.8,
            relax_below: 0.4,
            floor: Factor::from_ppm(125_000).expect("1/8 is a valid factor"),
            relax_step: Factor::from_ppm(125_000).expect("1/8 is a valid factor"),
            interval_ns: crate::NANOS_PER_SEC,
        }
    }
}

impl AdaptivePolicy {
    pub fn validate(&self) -> Result<(), GuardError> {
        // Written so that NaN fails every comparison.
        if !(self.relax_below >= 0.0
            && self.relax_below < self.tighten_above
            && self.tighten_above <= 1.0)
        {
            return Err(GuardError::policy(
                "relax_below, tighten_above",
                "0 ≤ relax_below < tighten_above ≤ 1",
            ));
        }
        if self.interval_ns == 0 {
            return Err(GuardError::policy("interval_ns", "at least 1"));
        }
        Ok(())
    }
}

/// A change of the factor, for the node's log and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FactorChange {
    pub from: Factor,
    pub to: Factor,
    pub utilization: f64,
    pub at_ns: u64,
}

/// The controller: feed it utilizations, read the factor. (Serialize only, for status output:
/// a controller is built from a validated policy, never read back.)
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdaptiveController {
    policy: AdaptivePolicy,
    factor: Factor,
    utilization: f64,
    last_tighten_ns: Option<u64>,
    last_change_ns: Option<u64>,
}

impl AdaptiveController {
    pub fn new(policy: AdaptivePolicy) -> Result<AdaptiveController, GuardError> {
        policy.validate()?;
        Ok(AdaptiveController {
            policy,
            factor: Factor::ONE,
            utilization: 0.0,
            last_tighten_ns: None,
            last_change_ns: None,
        })
    }

    pub fn factor(&self) -> Factor {
        self.factor
    }

    /// The last utilization observed (as used: clamped to 0..1).
    pub fn utilization(&self) -> f64 {
        self.utilization
    }

    pub fn policy(&self) -> &AdaptivePolicy {
        &self.policy
    }

    /// Take one utilization reading. Out-of-range readings are clamped to 0..1; NaN (a broken
    /// gauge) reads as 1: tightening is the safe side.
    pub fn observe(&mut self, utilization: f64, now_ns: u64) -> Option<FactorChange> {
        let u = if utilization.is_nan() {
            1.0
        } else {
            utilization.clamp(0.0, 1.0)
        };
        self.utilization = u;
        let since = |t: Option<u64>| t.map_or(u64::MAX, |t| now_ns.saturating_sub(t));
        let to = if u > self.policy.tighten_above
            && since(self.last_tighten_ns) >= self.policy.interval_ns
        {
            self.last_tighten_ns = Some(now_ns);
            self.factor.halved(self.policy.floor)
        } else if u < self.policy.relax_below
            && since(self.last_change_ns) >= self.policy.interval_ns
        {
            self.factor.plus(self.policy.relax_step)
        } else {
            return None;
        };
        if to == self.factor {
            return None;
        }
        let change = FactorChange {
            from: self.factor,
            to,
            utilization: u,
            at_ns: now_ns,
        };
        self.factor = to;
        self.last_change_ns = Some(now_ns);
        Some(change)
    }
}

#[cfg(test)]
#[path = "adaptive_tests.rs"]
mod tests;
