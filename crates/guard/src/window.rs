//! Sliding window: at most `limit` requests per `window`, counted over `window_count`
//! sub-windows of `window / window_count` each, aligned to the epoch (so every node and every
//! restart agree on the boundaries).
//!
//! A key keeps the counts of the sub-window `now` is in, the `window_count − 1` before it, and
//! one more: the oldest, which straddles the window's start. The estimate of the requests in
//! the window `(now − window, now]` is the sum of the sub-windows entirely inside it plus the
//! oldest one's count weighted by the fraction of it still inside — the "previous window's
//! weighted estimate" (Cloudflare's sliding window counter is the case `window_count = 1`).
//! A request of `n` is admitted when `estimate + n ≤ limit`.
//!
//! **Error bound.** Let `s = window / window_count`, `f = (now mod s) / s`, and `c_old` the
//! count of the oldest (straddling) sub-window. Only that sub-window is estimated, and a
//! fraction `1 − f` of it lies in the window, so with `exact` the true count in
//! `(now − window, now]`:
//!
//! ```text
//! exact − c_old·f  ≤  estimate  ≤  exact + c_old·(1 − f)        (so |estimate − exact| ≤ c_old)
//! ```
//!
//! Every admission keeps `estimate ≤ limit`, so the requests admitted in any window ending at
//! an admission are at most `limit + c_old·f < limit + c_old`; and a request is never refused
//! while `exact + n ≤ limit − c_old·(1 − f)`. `c_old ≤ limit` always; with traffic spread
//! evenly `c_old ≈ limit / window_count`, so more sub-windows mean a tighter bound (the
//! worst case, a whole window's worth in the last instant of one sub-window, admits just
//! under `2 × limit` over one window). `tests/prop_window.rs` checks both inequalities
//! against a log of every admitted request.
//!
//! **Under the adaptive factor** the limit is scaled by it, rounding down, never below 1.
//! Counts are integers and the comparison is done in integer arithmetic (both sides times
//! `s`), so the decision is exact.

use serde::{Deserialize, Serialize};

use crate::limiter::{clamp_ns, small_quotient, Algorithm, Decision, RETRY_WHEN_RELAXED};
use crate::{Factor, GuardError};

/// A sliding window policy (also the algorithm: see [`Algorithm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SlidingWindowFields")]
pub struct SlidingWindow {
    limit: u64,
    window_ns: u64,
    window_count: u32,
    #[serde(skip_serializing)]
    sub_ns: u64,
}

/// The serialized form, validated into a [`SlidingWindow`].
#[derive(Deserialize)]
struct SlidingWindowFields {
    limit: u64,
    window_ns: u64,
    window_count: u32,
}

impl TryFrom<SlidingWindowFields> for SlidingWindow {
    type Error = GuardError;
    fn try_from(f: SlidingWindowFields) -> Result<SlidingWindow, GuardError> {
        SlidingWindow::new(f.limit, f.window_ns, f.window_count)
    }
}

/// One key's counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowState {
    /// The latest wall-clock ns seen: `counts[0]` is the sub-window it falls in.
    pub last_ns: u64,
    /// Requests admitted per sub-window, newest first: `counts[j]` is `j` sub-windows before
    /// `counts[0]`; `window_count + 1` of them.
    pub counts: Vec<u64>,
}

impl SlidingWindow {
    pub const MAX_LIMIT: u64 = 1_000_000_000_000;
    /// Each decision sums the counts: a bound on its cost.
    pub const MAX_WINDOW_COUNT: u32 = 256;
    /// One week.
    pub const MAX_WINDOW_NS: u64 = 7 * 24 * 3600 * crate::NANOS_PER_SEC;

    /// `limit` requests per `window_ns`, over `window_count` sub-windows (`window_ns` must
    /// divide into them evenly, so that sub-windows are whole nanoseconds).
    pub fn new(limit: u64, window_ns: u64, window_count: u32) -> Result<SlidingWindow, GuardError> {
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(GuardError::policy("limit", "between 1 and 1000000000000"));
        }
        if !(1..=Self::MAX_WINDOW_COUNT).contains(&window_count) {
            return Err(GuardError::policy("window_count", "between 1 and 256"));
        }
        if !(1..=Self::MAX_WINDOW_NS).contains(&window_ns) {
            return Err(GuardError::policy("window", "between 1 ns and 7 days"));
        }
        if !window_ns.is_multiple_of(u64::from(window_count)) {
            return Err(GuardError::policy(
                "window",
                "a whole multiple of window_count nanoseconds",
            ));
        }
        Ok(SlidingWindow {
            limit,
            window_ns,
            window_count,
            sub_ns: window_ns / u64::from(window_count),
        })
    }

    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    pub fn window_count(&self) -> u32 {
        self.window_count
    }

    fn limit_scaled(&self, factor: Factor) -> u128 {
        factor.scale(u128::from(self.limit)).max(1)
    }

    /// Brings `st` to `now_ns` (never backwards): sub-windows that ended shift out. Returns
    /// the time it is at and that time's offset in its sub-window (divisions cost: two here,
    /// none more on the way to a decision).
    fn advance(&self, st: &mut WindowState, now_ns: u64) -> (u64, u64) {
        let t = now_ns.max(st.last_ns);
        let index = t / self.sub_ns;
        let moved = index - st.last_ns / self.sub_ns;
        let shift = moved.min(st.counts.len() as u64) as usize;
        st.counts.rotate_right(shift);
        st.counts[..shift].fill(0);
        st.last_ns = t;
        (t, t - index * self.sub_ns)
    }

    /// The sub-window length `s`, ns.
    pub fn sub_window_ns(&self) -> u64 {
        self.sub_ns
    }

    /// The estimated count of the window ending at `now_ns`, times `s` (so it is an exact
    /// integer: divide by [`Self::sub_window_ns`] for the count), without changing `st`.
    pub fn estimate_scaled(&self, st: &WindowState, now_ns: u64) -> u128 {
        let t = now_ns.max(st.last_ns);
        let moved = t / self.sub_ns - st.last_ns / self.sub_ns;
        self.estimate_shifted(&st.counts, moved, t % self.sub_ns)
    }

    /// The estimate times `s` from `counts` shifted by `moved` sub-windows, at offset `r` in
    /// the current one.
    fn estimate_shifted(&self, counts: &[u64], moved: u64, r: u64) -> u128 {
        let k = self.window_count as usize;
        let moved = moved.min(k as u64 + 1) as usize;
        // Shifted by `moved`, the counts still in the window are counts[..k + 1 − moved],
        // newest first: the last of them straddles the window's start, the others are full.
        let (old, full) = match counts[..k + 1 - moved].split_last() {
            Some((old, full)) => (u128::from(*old), full.iter().map(|&c| u128::from(c)).sum()),
            None => (0, 0),
        };
        let sub = u128::from(self.sub_ns);
        full * sub + old * (sub - u128::from(r))
    }

    /// Nanoseconds from `t` (≥ `st.last_ns`, `st` advanced to it) until a request of `n`
    /// (≤ `limit`) fits, if nothing else is admitted meanwhile. In the sub-window `d` after
    /// `t`'s, the counts have shifted by `d`: the full ones are `counts[..k − d]` and the
    /// straddling one `counts[k − d]`, whose weight falls linearly across the sub-window.
    fn retry_after(&self, st: &WindowState, t: u64, n: u64, limit: u128) -> u64 {
        let k = self.window_count as usize;
        let sub = u128::from(self.sub_ns);
        let budget = (limit - u128::from(n)) * sub;
        let start = u128::from(t) / sub * sub;
        let r = u128::from(t) % sub;
        let mut full: u128 = st.counts.iter().map(|&c| u128::from(c)).sum();
        for (d, &old) in st.counts.iter().rev().enumerate() {
            let old = u128::from(old);
            full -= old;
            if full * sub > budget {
                continue;
            }
            // estimate(r') = full·s + old·(s − r') ≤ budget  ⟺  old·r' ≥ full·s + old·s − budget.
            // A positive deficit implies old > 0 (full·s ≤ budget).
            let deficit = (full * sub + old * sub).saturating_sub(budget);
            let from = if d == 0 { r } else { 0 };
            let at = deficit.div_ceil(old.max(1)).max(from);
            if at < sub {
                return clamp_ns(start + d as u128 * sub + at - u128::from(t));
            }
        }
        // Every count has left the window.
        clamp_ns(start + (k as u128 + 1) * sub - u128::from(t))
    }
}

impl Algorithm for SlidingWindow {
    type State = WindowState;

    fn limit(&self) -> u64 {
        self.limit
    }

    fn capacity(&self, factor: Factor) -> u64 {
        self.limit_scaled(factor) as u64
    }

    fn fresh(&self, now_ns: u64, _factor: Factor) -> WindowState {
        WindowState {
            last_ns: now_ns,
            counts: vec![0; self.window_count as usize + 1],
        }
    }

    fn acquire(&self, st: &mut WindowState, n: u64, now_ns: u64, factor: Factor) -> Decision {
        let (t, r) = self.advance(st, now_ns);
        let limit = self.limit_scaled(factor);
        let sub = u128::from(self.sub_ns);
        let budget = limit * sub;
        let estimate = self.estimate_shifted(&st.counts, 0, r);
        let with = estimate + u128::from(n) * sub;
        if with <= budget {
            st.counts[0] += n;
            return Decision::allowed(small_quotient(budget - with, self.sub_ns));
        }
        let remaining = small_quotient(budget.saturating_sub(estimate), self.sub_ns);
        let retry_after_ns = if u128::from(n) > limit {
            RETRY_WHEN_RELAXED
        } else {
            // Counted from `t`, later than now if the clock stepped back.
            clamp_ns(u128::from(self.retry_after(st, t, n, limit)) + u128::from(t - now_ns))
        };
        Decision::refused(remaining, retry_after_ns)
    }

    fn remaining(&self, st: &WindowState, now_ns: u64, factor: Factor) -> u64 {
        let budget = self.limit_scaled(factor) * u128::from(self.sub_ns);
        small_quotient(
            budget.saturating_sub(self.estimate_scaled(st, now_ns)),
            self.sub_ns,
        )
    }

    fn idle_at(&self, st: &WindowState, _factor: Factor) -> u64 {
        // The newest non-empty sub-window leaves the window `window_count + 1` sub-windows
        // after it began.
        st.counts.iter().position(|&c| c > 0).map_or(0, |j| {
            let newest = u128::from(st.last_ns / self.sub_ns) - j as u128;
            clamp_ns((newest + u128::from(self.window_count) + 1) * u128::from(self.sub_ns))
        })
    }

    fn restore(
        &self,
        stored: &SlidingWindow,
        st: WindowState,
        now_ns: u64,
    ) -> Result<WindowState, GuardError> {
        if (stored.window_ns, stored.window_count) != (self.window_ns, self.window_count) {
            return Err(GuardError::InvalidState(format!(
                "counts were kept over {} sub-windows of a {} ns window; the policy now has {} of a {} ns window",
                stored.window_count, stored.window_ns, self.window_count, self.window_ns
            )));
        }
        if st.counts.len() != self.window_count as usize + 1 {
            return Err(GuardError::InvalidState(format!(
                "a key has {} sub-window counts; the policy keeps {}",
                st.counts.len(),
                self.window_count + 1
            )));
        }
        // A time ahead of now (the clock stepped back, or a foreign file) is taken as now:
        // the counts stay, as the latest sub-windows.
        Ok(WindowState {
            last_ns: st.last_ns.min(now_ns),
            counts: st.counts,
        })
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
