//! The multiplier the adaptive controller puts on every limit, in parts per million.
//!
//! Integer on purpose: limiters scale their capacities and rates by it in integer arithmetic
//! (rounding down, so a scaled limit never admits more than the factor says), and a factor
//! read from a metric or a file compares exactly. `ONE` is the limits as configured; a factor
//! never goes above `ONE` (the controller only tightens and relaxes back) nor below `MIN`
//! (so a scaled rate stays above zero: see [`crate::bucket`]).

use serde::{Deserialize, Serialize};

use crate::GuardError;

const PPM: u32 = 1_000_000;

/// A factor in `[MIN, ONE]`, in parts per million.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Factor(u32);

impl Factor {
    /// Limits as configured.
    pub const ONE: Factor = Factor(PPM);
    /// The lowest factor: 0.1% of every limit.
    pub const MIN: Factor = Factor(1_000);

    /// A factor of `ppm` parts per million, in `[MIN, ONE]`.
    pub fn from_ppm(ppm: u32) -> Result<Factor, GuardError> {
        if (Factor::MIN.0..=PPM).contains(&ppm) {
            Ok(Factor(ppm))
        } else {
            Err(GuardError::policy("factor", "between 1000 and 1000000 ppm"))
        }
    }

    pub fn ppm(self) -> u32 {
        self.0
    }

    /// `self × other`, rounded down, never below [`Factor::MIN`]: a node's share of a policy
    /// times the cluster's adaptive factor.
    pub fn times(self, other: Factor) -> Factor {
        let ppm = u64::from(self.0) * u64::from(other.0) / u64::from(PPM);
        Factor((ppm as u32).max(Factor::MIN.0))
    }

    /// For metrics: the factor as a fraction (1.0 = limits as configured).
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / f64::from(PPM)
    }

    /// `x × factor`, rounded down. `x` stays below 2^108 in every caller (capacities ≤ 2^100
    /// atto-tokens, rates ≤ 2^60), so the product fits `u128`. At `ONE` (nearly always) it
    /// skips the u128 division, a library call that was a third of a decision's cost.
    pub(crate) fn scale(self, x: u128) -> u128 {
        if self == Factor::ONE {
            return x;
        }
        x * u128::from(self.0) / u128::from(PPM)
    }

    /// Half of this factor, never below `floor`.
    pub(crate) fn halved(self, floor: Factor) -> Factor {
        Factor((self.0 / 2).max(floor.0))
    }

    /// This factor plus `step`, never above `ONE`.
    pub(crate) fn plus(self, step: Factor) -> Factor {
        Factor((self.0 + step.0).min(PPM))
    }
}

impl TryFrom<u32> for Factor {
    type Error = GuardError;
    fn try_from(ppm: u32) -> Result<Factor, GuardError> {
        Factor::from_ppm(ppm)
    }
}

impl From<Factor> for u32 {
    fn from(f: Factor) -> u32 {
        f.0
    }
}

#[cfg(test)]
#[path = "factor_tests.rs"]
mod tests;
