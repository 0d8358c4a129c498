//! Reads of the local state machine: one stream by version, or the global log by position.
//! Consistency (read index through the leader) is arranged by the caller before reading.

use rocksdb::{Direction, IteratorMode, ReadOptions};

use crate::model::RecordedEvent;
use crate::storage::keys::{read_u64, stream_index_version, stream_prefix, u64_key};
use crate::storage::sm_db::{SmDb, CF_EVENTS, CF_STREAMS, CF_STREAM_INDEX};
use crate::storage::{decode, Result, StorageError};

use super::StreamHead;

/// A page of events and where the next page starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub events: Vec<RecordedEvent>,
    /// Start of the next page, if there may be more in this direction.
    pub next: Option<u64>,
    /// Last stream version (stream reads) or last global position (global reads).
    pub last: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadDirection {
    Forwards,
    Backwards,
}

/// The version of the stream's last event, `None` if the stream holds none.
pub fn stream_head(db: &SmDb, stream: &str) -> Result<Option<u64>> {
    match db.db().get_pinned_cf(db.cf(CF_STREAMS)?, stream)? {
        Some(bytes) => Ok(Some(
            decode::<StreamHead>("stream head", &bytes)?.last_version,
        )),
        None => Ok(None),
    }
}

/// The event at a global position.
pub fn event_at(db: &SmDb, position: u64) -> Result<Option<RecordedEvent>> {
    match db
        .db()
        .get_pinned_cf(db.cf(CF_EVENTS)?, u64_key(position))?
    {
        Some(bytes) => Ok(Some(decode("event", &bytes)?)),
        None => Ok(None),
    }
}

/// Up to `limit` events of `stream` starting at version `from` (inclusive). `from = None`
/// starts at the first event (forwards) or the last one (backwards).
pub fn read_stream(
    db: &SmDb,
    stream: &str,
    from: Option<u64>,
    dir: ReadDirection,
    limit: usize,
) -> Result<Page> {
    let head = stream_head(db, stream)?;
    let Some(last) = head else {
        return Ok(Page::default());
    };
    let prefix = stream_prefix(stream);
    let start = match (dir, from) {
        (ReadDirection::Forwards, f) => f.unwrap_or(0),
        (ReadDirection::Backwards, f) => f.unwrap_or(last).min(last),
    };
    let start_key = [prefix.as_slice(), &u64_key(start)].concat();
    let mode = match dir {
        ReadDirection::Forwards => IteratorMode::From(&start_key, Direction::Forward),
        ReadDirection::Backwards => IteratorMode::From(&start_key, Direction::Reverse),
    };
    let mut opts = ReadOptions::default();
    opts.set_prefix_same_as_start(false);
    let mut positions = Vec::with_capacity(limit.min(1024));
    let mut versions = Vec::with_capacity(limit.min(1024));
    for item in db.db().iterator_cf_opt(db.cf(CF_STREAM_INDEX)?, opts, mode) {
        let (k, v) = item?;
        let Some(version) = stream_index_version(&prefix, &k) else {
            break;
        };
        if positions.len() >= limit {
            break;
        }
        let pos =
            read_u64(&v).ok_or_else(|| StorageError::corrupt("stream index", "short value"))?;
        positions.push(pos);
        versions.push(version);
    }
    let events = fetch(db, &positions)?;
    for (e, v) in events.iter().zip(&versions) {
        if e.stream != stream || e.stream_version != *v {
            return Err(StorageError::corrupt(
                "stream index",
                format!("{stream}@{v} points at {}@{}", e.stream, e.stream_version),
            ));
        }
    }
    let next = match (dir, versions.last()) {
        (_, None) => None,
        (ReadDirection::Forwards, Some(&v)) => (v < last).then_some(v + 1),
        (ReadDirection::Backwards, Some(&v)) => v.checked_sub(1),
    };
    Ok(Page {
        events,
        next,
        last: Some(last),
    })
}

/// Up to `limit` events of the global log from position `from` (inclusive), given the
/// store's next global position (`end`, exclusive).
pub fn read_all(
    db: &SmDb,
    from: Option<u64>,
    dir: ReadDirection,
    limit: usize,
    end: u64,
) -> Result<Page> {
    if end == 0 {
        return Ok(Page::default());
    }
    let last = end - 1;
    let positions: Vec<u64> = match dir {
        ReadDirection::Forwards => {
            let start = from.unwrap_or(0);
            (start..end).take(limit).collect()
        }
        ReadDirection::Backwards => {
            let start = from.unwrap_or(last).min(last);
            (0..=start).rev().take(limit).collect()
        }
    };
    let events = fetch(db, &positions)?;
    let next = match (dir, positions.last()) {
        (_, None) => None,
        (ReadDirection::Forwards, Some(&p)) => (p < last).then_some(p + 1),
        (ReadDirection::Backwards, Some(&p)) => p.checked_sub(1),
    };
    Ok(Page {
        events,
        next,
        last: Some(last),
    })
}

/// Loads events by global position; every position must exist (the caller derived them from
/// the replicated state), so a missing one is corruption.
fn fetch(db: &SmDb, positions: &[u64]) -> Result<Vec<RecordedEvent>> {
    let cf = db.cf(CF_EVENTS)?;
    let keys: Vec<[u8; 8]> = positions.iter().map(|p| u64_key(*p)).collect();
    let mut out = Vec::with_capacity(keys.len());
    for (pos, res) in positions
        .iter()
        .zip(db.db().batched_multi_get_cf(cf, keys.iter(), false))
    {
        match res? {
            Some(bytes) => {
                let e: RecordedEvent = decode("event", &bytes)?;
                if e.global_position != *pos {
                    return Err(StorageError::corrupt(
                        "event",
                        format!("key {pos} holds position {}", e.global_position),
                    ));
                }
                out.push(e)
            }
            None => {
                return Err(StorageError::corrupt(
                    "event",
                    format!("position {pos} missing"),
                ))
            }
        }
    }
    Ok(out)
}
