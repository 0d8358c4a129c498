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

    /// For metrics: the factor as a fraction (1.0 = limits as configured).
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / f64::from(PPM)
    }

    /// `x × factor`, rounded down. `x` stays below 2^108 in every caller (capacities ≤ 2^100
    /// atto-tokens, rates ≤ 2^60), so the product fits `u128`.
    pub(crate) fn scale(self, x: u128) -> u128 {
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
mod tests {
    use super::*;

    #[test]
    fn range_is_checked_and_arithmetic_stays_inside() {
        // (ppm, accepted)
        for (ppm, ok) in [
            (0, false),
            (999, false),
            (1_000, true),
            (1_000_000, true),
            (1_000_001, false),
        ] {
            assert_eq!(Factor::from_ppm(ppm).is_ok(), ok, "{ppm}");
        }
        let half = Factor::ONE.halved(Factor::MIN);
        assert_eq!(half.ppm(), 500_000);
        assert_eq!(half.as_f64(), 0.5);
        assert_eq!(Factor::MIN.halved(Factor::MIN), Factor::MIN);
        assert_eq!(half.plus(half).plus(half), Factor::ONE);
        assert_eq!(half.scale(7), 3, "rounds down");
        assert_eq!(
            Factor::ONE.scale(u128::from(u64::MAX)),
            u128::from(u64::MAX)
        );
    }

    #[test]
    fn serde_refuses_a_factor_out_of_range() {
        assert_eq!(serde_json::to_string(&Factor::ONE).unwrap(), "1000000");
        assert_eq!(
            serde_json::from_str::<Factor>("500000").unwrap().ppm(),
            500_000
        );
        let err = serde_json::from_str::<Factor>("5").unwrap_err().to_string();
        assert!(err.contains("factor must be between"), "{err}");
    }
}
