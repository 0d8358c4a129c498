//! Telemetry: high-frequency sensor series `(source/channel)` of `(timestamp ns, f64)`.
//!
//! Pure parts (no IO): the columnar segment codec (`segment`, pco), mergeable statistics
//! (`moments`, Welford/Chan) and quantile sketches (`sketch`, DDSketch), rollup buckets
//! (`rollup`), the single-pass streaming aggregator (`agg`, with its multi-pass `reference`
//! for property tests), M4/LTTB downsampling and drift detection. `store` applies ingests
//! inside the replicated state machine; `retention` says what is dead, from replicated state
//! only; `query` answers queries across tiers.

pub mod agg;
mod codec;
pub mod drift;
pub mod lttb;
pub mod m4;
pub mod moments;
pub mod query;
pub mod reference;
pub mod retention;
pub mod rollup;
pub mod segment;
pub mod sketch;
pub mod store;
