//! Where telemetry lives in the state machine's column families, and how its keys and
//! records are encoded.
//!
//! * `tm_series`: series name → id (assigned by the state machine, in log order).
//! * `tm_raw`: `series id ++ min ts ++ log index ++ seq` → one pco segment (≤ 1 h, ≤ 64 Ki
//!   points) as the ingesting node encoded it; nothing is re-encoded on apply.
//! * `tm_rollup`: `series id ++ tier ++ bucket start` → [`RollupBucket`] (count, sum, min,
//!   max, first, last, M2, DDSketch) for the 1-minute and 1-hour tiers.
//! * `tm_policy`: series prefix → [`super::retention::PolicyRecord`] (policy and floors;
//!   longest prefix wins; see [`super::retention`]).
//! * `meta` / [`STATE_KEY`]: [`TelemetryState`], the next series id.

use serde::{Deserialize, Serialize};

use super::rollup::RollupBucket;
use crate::storage::keys::{i64_ordered, read_u64};
use crate::storage::{decode, encode, Result, StorageError};

/// Key of [`TelemetryState`] in the `meta` column family.
pub(crate) const STATE_KEY: &[u8] = b"tm_state";

/// Telemetry's replicated counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TelemetryState {
    pub(crate) next_series_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SeriesMeta {
    id: u64,
}

/// A `tm_series` record.
pub(crate) fn encode_series_id(id: u64) -> Result<Vec<u8>> {
    encode("series", &SeriesMeta { id })
}

/// The id in a `tm_series` record.
pub fn decode_series_id(bytes: &[u8]) -> Result<u64> {
    Ok(decode::<SeriesMeta>("series", bytes)?.id)
}

pub(crate) fn raw_key(series: u64, min_ts: i64, log_index: u64, seq: u32) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..8].copy_from_slice(&series.to_be_bytes());
    k[8..16].copy_from_slice(&i64_ordered(min_ts));
    k[16..24].copy_from_slice(&log_index.to_be_bytes());
    k[24..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The write order (log index, seq) in a `tm_raw` key: the later write of a timestamp wins.
pub(crate) fn raw_key_order(k: &[u8]) -> (u64, u32) {
    (
        k.get(16..).and_then(read_u64).unwrap_or(0),
        k.get(24..28)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
    )
}

pub(crate) fn rollup_key(series: u64, tier: u8, start: i64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&series.to_be_bytes());
    k[8] = tier;
    k[9..].copy_from_slice(&i64_ordered(start));
    k
}

pub(crate) fn decode_bucket(bytes: &[u8]) -> Result<RollupBucket> {
    RollupBucket::decode(bytes).map_err(|e| StorageError::corrupt("rollup bucket", e))
}
