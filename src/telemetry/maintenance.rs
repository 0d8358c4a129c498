//! Operator actions on this node's telemetry data: flush, compact (expired records go now),
//! and bytes on disk per tier. Local to the node, outside the replicated state.

use crate::storage::sm_db::{SmDb, CF_TM_RAW, CF_TM_ROLLUP};
use crate::storage::Result;

/// Bytes on disk per tier (live SST files), for operators and the reclaim test.
pub fn disk_usage(db: &SmDb) -> Result<(u64, u64)> {
    let prop = |cf: &'static str| -> Result<u64> {
        Ok(db
            .db()
            .property_int_value_cf(db.cf(cf)?, "rocksdb.total-sst-files-size")?
            .unwrap_or(0))
    };
    Ok((prop(CF_TM_RAW)?, prop(CF_TM_ROLLUP)?))
}

/// Flushes to disk (so the telemetry data's size shows in SST files). Every column family
/// goes together, never the telemetry ones alone (see [`SmDb::sync`]): that also lets the
/// compaction filter go by the state now durable.
pub fn flush(db: &SmDb) -> Result<()> {
    db.sync()
}

/// Flushes and compacts the telemetry column families: expired records go now.
pub fn compact(db: &SmDb) -> Result<()> {
    flush(db)?;
    for cf in [CF_TM_RAW, CF_TM_ROLLUP] {
        let h = db.cf(cf)?;
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        db.db()
            .compact_range_cf_opt(h, None::<&[u8]>, None::<&[u8]>, &opts);
    }
    Ok(())
}
