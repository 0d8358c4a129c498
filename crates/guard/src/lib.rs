//! The pure cores of AetherOps' guards: rate limiters (a token bucket and a sliding window
//! behind one keyed [`Limiter`] interface), the [`AdaptiveController`] that tightens every
//! limit while the node's queues are full, the [`LeaseBook`] that shares a cluster-wide limit
//! among the nodes in proportion to their demand, and the [`CircuitBreaker`] with its failure
//! detectors.
//!
//! Pure means: no IO, no threads, no clock. Whatever depends on time takes `now_ns`, the
//! wall-clock time in nanoseconds since the Unix epoch, read by the caller. Wall-clock based
//! because limiter state is stored across restarts and a monotonic clock's origin changes with
//! every boot. A clock that steps back is tolerated everywhere: time that runs backwards
//! refills and expires nothing, and no interval is ever counted twice.
//!
//! Every collection has a bound: keys per limiter, sub-windows per window, calls in a
//! breaker's window, probes, pending transition events. Every number that can come from an
//! operator or from a stored file is validated (a [`GuardError`], never a panic).
//!
//! The crate depends on serde and thiserror only, so its coverage build is quick; the node
//! re-exports it as `aetherops::guard` and does the IO (metrics, persistence, the clock).

pub mod adaptive;
pub mod breaker;
pub mod bucket;
mod error;
pub mod factor;
pub mod lease;
pub mod limiter;
pub mod window;

pub use adaptive::{AdaptiveController, AdaptivePolicy, FactorChange};
pub use breaker::{
    BreakerMetrics, BreakerPolicy, CircuitBreaker, ErrorKinds, FailureDetector, GrpcCodes, Reason,
    SlowerThan, State, Transition,
};
pub use bucket::{BucketState, TokenBucket};
pub use error::GuardError;
pub use factor::Factor;
pub use lease::{Lease, LeaseBook, LeaseRequest};
pub use limiter::{
    Algorithm, Decision, Keyed, Limiter, LimiterState, SlidingWindowLimiter, TokenBucketLimiter,
    RETRY_WHEN_RELAXED,
};
pub use window::{SlidingWindow, WindowState};

/// Nanoseconds in a second: rates are per second, times are nanoseconds.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;
