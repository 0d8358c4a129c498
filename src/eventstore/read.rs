//! Reads of the local state machine: one stream by version, or the global log by position.
//! Consistency (read index through the leader) is arranged by the caller before reading.
//!
//! A page is bounded twice: by a number of events and by bytes ([`PageLimit`]). Events are
//! loaded in small chunks and the page ends before the event that would pass the byte
//! budget, so a read of large events holds about one budget in memory, not `limit` events
//! (10,000 events of 1 MiB would be 10 GiB). The first event is always returned, so paging
//! progresses whatever an event weighs; [`Page::next`] says where to continue.

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

/// How much one page may hold: at most `events` events and, beyond its first event, at most
/// `bytes` bytes ([`RecordedEvent::size_bytes`] summed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    pub events: usize,
    pub bytes: usize,
}

impl PageLimit {
    pub fn new(events: usize, bytes: usize) -> Self {
        PageLimit { events, bytes }
    }
}

/// Events fetched from RocksDB per multi-get: small, so that the values pinned beyond the
/// byte budget of a page stay few.
const FETCH_CHUNK: usize = 16;

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

/// A page (at most `limit`) of the events of `stream` starting at version `from`
/// (inclusive). `from = None` starts at the first event (forwards) or the last one
/// (backwards).
pub fn read_stream(
    db: &SmDb,
    stream: &str,
    from: Option<u64>,
    dir: ReadDirection,
    limit: PageLimit,
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
    let mut positions = Vec::with_capacity(limit.events.min(1024));
    let mut versions = Vec::with_capacity(limit.events.min(1024));
    for item in db.db().iterator_cf_opt(db.cf(CF_STREAM_INDEX)?, opts, mode) {
        let (k, v) = item?;
        let Some(version) = stream_index_version(&prefix, &k) else {
            break;
        };
        if positions.len() >= limit.events {
            break;
        }
        let pos =
            read_u64(&v).ok_or_else(|| StorageError::corrupt("stream index", "short value"))?;
        positions.push(pos);
        versions.push(version);
    }
    let events = fetch(db, &positions, limit.bytes)?;
    let versions = &versions[..events.len()];
    for (e, v) in events.iter().zip(versions) {
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

/// A page (at most `limit`) of the global log from position `from` (inclusive), given the
/// store's next global position (`end`, exclusive).
pub fn read_all(
    db: &SmDb,
    from: Option<u64>,
    dir: ReadDirection,
    limit: PageLimit,
    end: u64,
) -> Result<Page> {
    if end == 0 {
        return Ok(Page::default());
    }
    let last = end - 1;
    let positions: Vec<u64> = match dir {
        ReadDirection::Forwards => {
            let start = from.unwrap_or(0);
            (start..end).take(limit.events).collect()
        }
        ReadDirection::Backwards => {
            let start = from.unwrap_or(last).min(last);
            (0..=start).rev().take(limit.events).collect()
        }
    };
    let events = fetch(db, &positions, limit.bytes)?;
    let next = match (dir, events.last().map(|e| e.global_position)) {
        (_, None) => None,
        (ReadDirection::Forwards, Some(p)) => (p < last).then_some(p + 1),
        (ReadDirection::Backwards, Some(p)) => p.checked_sub(1),
    };
    Ok(Page {
        events,
        next,
        last: Some(last),
    })
}

/// Loads events by global position, in order, until the next one would take the page past
/// `max_bytes` (the first is always loaded). Every position must exist (the caller derived
/// them from the replicated state), so a missing one is corruption.
fn fetch(db: &SmDb, positions: &[u64], max_bytes: usize) -> Result<Vec<RecordedEvent>> {
    let cf = db.cf(CF_EVENTS)?;
    let mut out = Vec::with_capacity(positions.len().min(1024));
    let mut bytes = 0usize;
    for chunk in positions.chunks(FETCH_CHUNK) {
        let keys: Vec<[u8; 8]> = chunk.iter().map(|p| u64_key(*p)).collect();
        for (pos, res) in chunk
            .iter()
            .zip(db.db().batched_multi_get_cf(cf, keys.iter(), false))
        {
            let Some(value) = res? else {
                return Err(StorageError::corrupt(
                    "event",
                    format!("position {pos} missing"),
                ));
            };
            let e: RecordedEvent = decode("event", &value)?;
            if e.global_position != *pos {
                return Err(StorageError::corrupt(
                    "event",
                    format!("key {pos} holds position {}", e.global_position),
                ));
            }
            let size = e.size_bytes();
            if !out.is_empty() && bytes.saturating_add(size) > max_bytes {
                return Ok(out);
            }
            bytes = bytes.saturating_add(size);
            out.push(e);
        }
    }
    debug_assert_eq!(out.len(), positions.len());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::keys::stream_index_key;
    use crate::storage::{encode, SmStore};

    /// Writes events straight into the column families the reads use: positions in order,
    /// streams chosen by `stream_of`, payload sizes by `size_of`.
    fn store_events(
        db: &SmDb,
        n: u64,
        stream_of: impl Fn(u64) -> &'static str,
        size_of: impl Fn(u64) -> usize,
    ) {
        let mut heads = std::collections::BTreeMap::new();
        for pos in 0..n {
            let stream = stream_of(pos);
            let version = heads.get(stream).map_or(0, |v| v + 1);
            heads.insert(stream, version);
            let e = RecordedEvent {
                event_id: uuid::Uuid::new_v4(),
                stream: stream.into(),
                stream_version: version,
                global_position: pos,
                event_type: "Blob".into(),
                schema_version: 1,
                event_time_ns: 0,
                commit_time_ns: 1,
                payload: vec![b'x'; size_of(pos)].into(),
                metadata: Default::default(),
            };
            let d = db.db();
            d.put_cf(
                db.cf(CF_EVENTS).unwrap(),
                u64_key(pos),
                encode("event", &e).unwrap(),
            )
            .unwrap();
            d.put_cf(
                db.cf(CF_STREAM_INDEX).unwrap(),
                stream_index_key(stream, version),
                u64_key(pos),
            )
            .unwrap();
            let head = StreamHead {
                last_version: version,
            };
            d.put_cf(
                db.cf(CF_STREAMS).unwrap(),
                stream,
                encode("stream head", &head).unwrap(),
            )
            .unwrap();
        }
    }

    /// Pages through a stream or the log in one direction: every page within its bounds,
    /// and the events in the order read.
    fn page_through(
        mut read: impl FnMut(Option<u64>) -> Page,
        limit: PageLimit,
    ) -> Vec<RecordedEvent> {
        let mut out = Vec::new();
        let mut from = None;
        loop {
            let page = read(from);
            assert!(page.events.len() <= limit.events);
            let bytes: usize = page.events.iter().map(RecordedEvent::size_bytes).sum();
            assert!(
                page.events.len() == 1 || bytes <= limit.bytes,
                "a page of {} events holds {bytes} bytes, over {}",
                page.events.len(),
                limit.bytes
            );
            out.extend(page.events);
            match page.next {
                Some(n) => from = Some(n),
                None => return out,
            }
        }
    }

    #[test]
    fn pages_of_large_events_are_bounded_by_bytes_and_reach_every_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SmStore::open(dir.path()).unwrap();
        let db = store.db();
        // 60 events of 256 KiB in "big", small ones of "small" in between.
        let n = 90;
        let stream_of = |p: u64| if p % 3 == 2 { "small" } else { "big" };
        let size_of = |p: u64| if p % 3 == 2 { 10 } else { 256 << 10 };
        store_events(&db, n, stream_of, size_of);
        let limit = PageLimit::new(10_000, 1 << 20);

        for dir in [ReadDirection::Forwards, ReadDirection::Backwards] {
            let mut pages = 0;
            let got = page_through(
                |from| {
                    pages += 1;
                    read_stream(&db, "big", from, dir, limit).unwrap()
                },
                limit,
            );
            let mut versions: Vec<u64> = got.iter().map(|e| e.stream_version).collect();
            if dir == ReadDirection::Backwards {
                versions.reverse();
            }
            assert_eq!(versions, (0..60).collect::<Vec<_>>(), "{dir:?}");
            // Three 256 KiB events fit 1 MiB, four do not.
            assert_eq!(pages, 20, "{dir:?}");

            let got = page_through(|from| read_all(&db, from, dir, limit, n).unwrap(), limit);
            let mut positions: Vec<u64> = got.iter().map(|e| e.global_position).collect();
            if dir == ReadDirection::Backwards {
                positions.reverse();
            }
            assert_eq!(positions, (0..n).collect::<Vec<_>>(), "{dir:?}");
        }
    }

    #[test]
    fn an_event_larger_than_the_byte_budget_comes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SmStore::open(dir.path()).unwrap();
        let db = store.db();
        store_events(&db, 3, |_| "s", |p| if p == 1 { 5000 } else { 10 });
        let limit = PageLimit::new(100, 1000);
        let page = read_stream(&db, "s", Some(0), ReadDirection::Forwards, limit).unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.next, Some(1));
        let page = read_all(&db, Some(1), ReadDirection::Forwards, limit, 3).unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].payload.len(), 5000);
        assert_eq!(page.next, Some(2));
        // The count still bounds pages of small events.
        let page = read_all(
            &db,
            None,
            ReadDirection::Backwards,
            PageLimit::new(1, 1 << 20),
            3,
        )
        .unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.next, Some(1));
    }
}
