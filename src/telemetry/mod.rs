//! Telemetry: high-frequency sensor series `(source/channel)` of `(timestamp ns, f64)`.
//!
//! Pure parts (no IO): the columnar segment codec (`segment`, pco), mergeable statistics
//! (`moments`, Welford/Chan) and quantile sketches (`sketch`, DDSketch), rollup buckets
//! (`rollup`), the single-pass streaming aggregator (`agg`, with its multi-pass `reference`
//! for property tests), M4/LTTB downsampling, drift detection and anomaly scoring
//! (`anomaly`: z-score results and MAD); `command`: what the log
//! carries and the fixed rules it is checked by; `points`: a series' points sorted,
//! deduplicated and cut into segments.
//!
//! In the replicated store: `keys` says where records live and how they are encoded;
//! `ingest` applies commands inside the state machine; `read` holds the reads apply and
//! queries share; `retention` says what is dead, from replicated state only; `query`
//! answers queries across tiers; `maintenance` flushes, compacts and measures a node's data;
//! `stream` feeds subscriptions: what apply stored, history as of an index, cursors.

pub mod agg;
pub mod anomaly;
pub mod browse;
mod codec;
pub mod command;
pub mod correlate;
pub mod drift;
pub mod ingest;
pub mod keys;
pub mod lttb;
pub mod m4;
pub mod maintenance;
pub mod moments;
pub mod points;
pub mod query;
pub mod read;
pub mod reference;
pub mod retention;
pub mod rollup;
pub mod segment;
pub mod sketch;
pub mod stream;
