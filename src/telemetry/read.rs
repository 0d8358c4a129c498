//! Reads of stored telemetry that apply and queries share: a series' id, the replicated
//! counters, and the raw points of a range with their write order — from the live database
//! or from a point-in-time view of it.

use super::command::MAX_SEGMENT_SPAN_NS;
use super::keys::{decode_series_id, raw_key, raw_key_order, TelemetryState, STATE_KEY};
use super::points::OrderedPoint;
use super::segment;
use crate::storage::sm_db::{SmDb, CF_META, CF_TM_RAW, CF_TM_SERIES};
use crate::storage::{decode, Result, StorageError};

/// Read options on the live database, or on a point-in-time view of it.
pub(crate) fn read_opts(view: Option<&rocksdb::Snapshot<'_>>) -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    if let Some(v) = view {
        opts.set_snapshot(v);
    }
    opts
}

/// Raw points of a series in `[from, to)` from the database, with their write order.
pub(crate) fn read_raw(
    db: &SmDb,
    view: Option<&rocksdb::Snapshot<'_>>,
    series: u64,
    from: i64,
    to: i64,
) -> Result<Vec<OrderedPoint>> {
    let start = raw_key(series, from.saturating_sub(MAX_SEGMENT_SPAN_NS), 0, 0);
    let end = raw_key(series, to, 0, 0);
    let mut opts = read_opts(view);
    opts.set_iterate_upper_bound(end.to_vec());
    let mut out = Vec::new();
    let (mut ts, mut vals) = (Vec::new(), Vec::new());
    for item in db.db().iterator_cf_opt(
        db.cf(CF_TM_RAW)?,
        opts,
        rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
    ) {
        let (k, v) = item?;
        let info = segment::info(&v).map_err(|e| StorageError::corrupt("segment", e))?;
        if info.max_ts < from {
            continue;
        }
        segment::decode_into(&v, &mut ts, &mut vals)
            .map_err(|e| StorageError::corrupt("segment", e))?;
        let order = raw_key_order(&k);
        let lo = ts.partition_point(|t| *t < from);
        let hi = ts.partition_point(|t| *t < to);
        out.extend((lo..hi).map(|i| (ts[i], order, vals[i])));
    }
    Ok(out)
}

pub(crate) fn load_state(db: &SmDb) -> Result<TelemetryState> {
    match db.db().get_pinned_cf(db.cf(CF_META)?, STATE_KEY)? {
        Some(b) => decode("telemetry state", &b),
        None => Ok(TelemetryState::default()),
    }
}

/// The id of series `name`, if it exists.
pub fn series_id(db: &SmDb, name: &str) -> Result<Option<u64>> {
    match db
        .db()
        .get_pinned_cf(db.cf(CF_TM_SERIES)?, name.as_bytes())?
    {
        Some(b) => Ok(Some(decode_series_id(&b)?)),
        None => Ok(None),
    }
}
