//! Reads of the local state machine: one stream by version, or the global log by position.
//! Consistency (read index through the leader) is arranged by the caller before reading.
//!
//! A page is bounded twice: by a number of events and by bytes ([`PageLimit`]). Events are
//! loaded in small chunks and the page ends before the event that would pass the byte
//! budget, so a read of large events holds about one budget in memory, not `limit` events
//! (10,000 events of 1 MiB would be 10 GiB). The first event is always returned, so paging
//! progresses whatever an event weighs; [`Page::next`] says where to continue.

use rocksdb::{Direction, IteratorMode, ReadOptions, ReadTier};

use crate::model::RecordedEvent;
use crate::storage::keys::{
    read_u64, stream_index_key, stream_index_version, stream_prefix, u64_key,
};
use crate::storage::sm_db::{SmDb, CF_EVENTS, CF_STREAM_INDEX};
use crate::storage::{decode, Result, StorageError};

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

/// Where a read may look for data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Anywhere, disk included: on the blocking pool.
    Any,
    /// Memtables and the block cache only, so that the read can run on an async worker. A
    /// read that would have to touch disk fails with RocksDB's `Incomplete`
    /// ([`StorageError::needs_pool`]) instead of blocking, and returns nothing.
    Memory,
}

impl Tier {
    fn options(self) -> ReadOptions {
        let mut opts = ReadOptions::default();
        if self == Tier::Memory {
            opts.set_read_tier(ReadTier::BlockCache);
        }
        opts
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadDirection {
    Forwards,
    Backwards,
}

/// The version of the stream's last event, `None` if the stream holds none.
pub fn stream_head(db: &SmDb, stream: &str) -> Result<Option<u64>> {
    stream_head_in(db, Tier::Any, stream)
}

fn stream_head_in(db: &SmDb, tier: Tier, stream: &str) -> Result<Option<u64>> {
    head_in_index(db, tier.options(), stream)
}

/// The version of the stream's last event, read as the last key of its index: every
/// version is indexed and no index entry is ever removed. A stream without a version 0 has
/// none: that point lookup, answered by the index's bloom filters, is all a new stream
/// costs (a seek finds no filter to skip what it need not read). Keys between the prefix
/// and the stream's own are other streams' whose names extend this one's past a NUL (older
/// rules did not refuse such names): skipped, as they are not prefix + 8 bytes.
pub(crate) fn head_in_index(db: &SmDb, mut opts: ReadOptions, stream: &str) -> Result<Option<u64>> {
    let cf = db.cf(CF_STREAM_INDEX)?;
    if db
        .db()
        .get_pinned_cf_opt(cf, stream_index_key(stream, 0), &opts)?
        .is_none()
    {
        return Ok(None);
    }
    let prefix = stream_prefix(stream);
    let mut past = prefix.clone();
    past.extend_from_slice(&[0xff; 9]);
    opts.set_iterate_lower_bound(prefix.clone());
    opts.set_iterate_upper_bound(past);
    let mut it = db.db().raw_iterator_cf_opt(cf, opts);
    it.seek_to_last();
    while let Some(key) = it.key() {
        if let Some(version) = stream_index_version(&prefix, key) {
            return Ok(Some(version));
        }
        it.prev();
    }
    it.status()?;
    Ok(None)
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
    read_stream_in(db, Tier::Any, stream, from, dir, limit)
}

/// [`read_stream`], looking only where `tier` allows.
fn read_stream_in(
    db: &SmDb,
    tier: Tier,
    stream: &str,
    from: Option<u64>,
    dir: ReadDirection,
    limit: PageLimit,
) -> Result<Page> {
    let head = stream_head_in(db, tier, stream)?;
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
    let mut opts = tier.options();
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
    let events = fetch(db, tier, &positions, limit.bytes)?;
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

/// The most a read on an async worker decodes ([`read_small_in_memory`]).
pub const INLINE_EVENTS: usize = 64;
pub const INLINE_BYTES: usize = 64 << 10;

/// [`read_stream`]'s page, read from memory only and at most `INLINE_EVENTS` events and
/// `INLINE_BYTES` bytes of it, none larger than `INLINE_BYTES` stored, so that it may run on
/// an async worker. `None` when that is not the whole page — it needs the disk, holds a
/// larger event, or may be larger — and nothing was read.
pub fn read_small_in_memory(
    db: &SmDb,
    stream: &str,
    from: Option<u64>,
    dir: ReadDirection,
    limit: PageLimit,
) -> Result<Option<Page>> {
    let small = PageLimit::new(
        limit.events.min(INLINE_EVENTS),
        limit.bytes.min(INLINE_BYTES),
    );
    match read_stream_in(db, Tier::Memory, stream, from, dir, small) {
        // The page the full limit gives, if it ended for a reason that limit shares: the
        // stream's end, or the number of events asked for (which fit in fewer bytes than
        // either budget). A page the smaller budget may have cut is not.
        Ok(page) if page.next.is_none() || page.events.len() == limit.events => Ok(Some(page)),
        Ok(_) => Ok(None),
        Err(e) if e.needs_pool() => Ok(None),
        Err(e) => Err(e),
    }
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
    let events = fetch(db, Tier::Any, &positions, limit.bytes)?;
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
fn fetch(db: &SmDb, tier: Tier, positions: &[u64], max_bytes: usize) -> Result<Vec<RecordedEvent>> {
    let cf = db.cf(CF_EVENTS)?;
    let opts = tier.options();
    let mut out = Vec::with_capacity(positions.len().min(1024));
    let mut bytes = 0usize;
    for chunk in positions.chunks(FETCH_CHUNK) {
        let keys: Vec<[u8; 8]> = chunk.iter().map(|p| u64_key(*p)).collect();
        for (pos, res) in
            chunk.iter().zip(
                db.db()
                    .batched_multi_get_cf_opt(cf, keys.iter(), false, &opts),
            )
        {
            let Some(value) = res? else {
                return Err(StorageError::corrupt(
                    "event",
                    format!("position {pos} missing"),
                ));
            };
            // The budget stops a page after the event that crosses it, and a page holds its
            // first event whatever its size: on a worker, each event decoded is bounded
            // instead, which bounds what a page decodes to twice `INLINE_BYTES`.
            if tier == Tier::Memory && value.len() > INLINE_BYTES {
                return Err(StorageError::TooLargeInline(value.len()));
            }
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
        }
    }

    /// A stream's head is the last key of its own index, also where other streams' names
    /// extend its name past a NUL (keys of theirs sort between its prefix and its own last
    /// key, or after it).
    #[test]
    fn heads_are_the_last_key_of_the_streams_own_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = SmStore::open(dir.path()).unwrap();
        let db = store.db();
        let cf = db.cf(CF_STREAM_INDEX).unwrap();
        let streams = [
            ("a", 3),
            ("a\0b", 5),
            ("a\0", 7),
            ("a\0\u{ff}", 2),
            ("ab", 9),
        ];
        for (stream, last) in streams {
            for v in 0..=last {
                db.db()
                    .put_cf(cf, stream_index_key(stream, v), u64_key(v))
                    .unwrap();
            }
        }
        for (stream, last) in streams {
            assert_eq!(stream_head(&db, stream).unwrap(), Some(last), "{stream:?}");
        }
        for stream in ["", "b", "a\0c", "\u{ff}"] {
            assert_eq!(stream_head(&db, stream).unwrap(), None, "{stream:?}");
        }
        // Large versions, whose keys begin with 0xff bytes.
        let big = u64::MAX - 1;
        db.db()
            .put_cf(cf, stream_index_key("a", big), u64_key(1))
            .unwrap();
        assert_eq!(stream_head(&db, "a").unwrap(), Some(big));
        assert_eq!(stream_head(&db, "a\0b").unwrap(), Some(5));
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

    /// Every stream event as one page (the whole stream, forwards).
    fn whole(db: &SmDb, stream: &str) -> Page {
        read_stream(
            db,
            stream,
            None,
            ReadDirection::Forwards,
            PageLimit::new(10_000, usize::MAX),
        )
        .unwrap()
    }

    #[test]
    fn a_read_that_needs_the_disk_is_not_answered_from_memory_until_cached() {
        let dir = tempfile::tempdir().unwrap();
        let limit = PageLimit::new(1000, 1 << 20);
        {
            let store = SmStore::open(dir.path()).unwrap();
            let db = store.db();
            store_events(&db, 20, |p| if p % 2 == 0 { "a" } else { "b" }, |_| 100);
            // In the memtable: answered from memory, the same page as from anywhere.
            let page = read_small_in_memory(&db, "a", None, ReadDirection::Forwards, limit)
                .unwrap()
                .expect("a memtable read is answered from memory");
            assert_eq!(page, whole(&db, "a"));
            assert_eq!(page.events.len(), 10);
            db.sync().unwrap();
        }
        // Reopened: the events are in table files only, and the block cache is empty.
        let store = SmStore::open(dir.path()).unwrap();
        let db = store.db();
        assert_eq!(
            read_small_in_memory(&db, "a", None, ReadDirection::Forwards, limit).unwrap(),
            None,
            "a read that needs the disk is not answered from memory"
        );
        let e = read_stream_in(&db, Tier::Memory, "a", None, ReadDirection::Forwards, limit)
            .expect_err("the disk is not touched");
        assert!(e.needs_pool(), "{e}");
        // Read once from anywhere, its blocks are cached: now memory answers, alike.
        let from_disk = whole(&db, "a");
        assert_eq!(from_disk.events.len(), 10);
        assert_eq!(
            read_small_in_memory(&db, "a", None, ReadDirection::Forwards, limit).unwrap(),
            Some(from_disk)
        );
    }

    /// A page always holds its first event, whatever the byte budget: a read on an async
    /// worker would decode an event of any size. One larger than `INLINE_BYTES` goes to the
    /// pool, even when memory holds it, first in its page or not.
    #[test]
    fn an_event_larger_than_the_inline_bytes_is_not_read_on_a_worker() {
        let dir = tempfile::tempdir().unwrap();
        let store = SmStore::open(dir.path()).unwrap();
        let db = store.db();
        let big = 4 * INLINE_BYTES;
        store_events(&db, 2, |_| "s", |p| if p == 1 { big } else { 10 });
        // Pages that are the big event alone: at the stream's end, or the one event asked.
        for (from, dir, events) in [
            (Some(1), ReadDirection::Forwards, 1000),
            (Some(1), ReadDirection::Forwards, 1),
            (None, ReadDirection::Backwards, 1),
        ] {
            let limit = PageLimit::new(events, 1 << 30);
            let full = read_stream(&db, "s", from, dir, limit).unwrap();
            assert_eq!(full.events.len(), 1);
            assert_eq!(full.events[0].payload.len(), big);
            assert_eq!(
                read_small_in_memory(&db, "s", from, dir, limit).unwrap(),
                None,
                "{from:?} {dir:?} {events}: an event of {big} bytes was decoded on a worker"
            );
        }
        // The small one alone is still answered from memory.
        let limit = PageLimit::new(1, 1 << 30);
        let page = read_small_in_memory(&db, "s", None, ReadDirection::Forwards, limit)
            .unwrap()
            .expect("a small event in the memtable is answered from memory");
        assert_eq!(
            page,
            read_stream(&db, "s", None, ReadDirection::Forwards, limit).unwrap()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// A read answered from memory is exactly the page the pool would read, whatever
        /// the page's bounds, start and direction; and a page within the inline bounds is
        /// answered from memory when the memtable holds it.
        #[test]
        fn a_read_from_memory_is_the_page_or_nothing(
            sizes in proptest::collection::vec(0usize..6_000, 1..150),
            streams in 1u64..4,
            events in 1usize..150,
            bytes in 1usize..200_000,
            from in proptest::option::of(0u64..150),
            backwards: bool,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = SmStore::open(dir.path()).unwrap();
            let db = store.db();
            const NAMES: [&str; 3] = ["s0", "s1", "s2"];
            let n = sizes.len() as u64;
            store_events(&db, n, |p| NAMES[(p % streams) as usize], |p| sizes[p as usize]);
            let dir = if backwards { ReadDirection::Backwards } else { ReadDirection::Forwards };
            let limit = PageLimit::new(events, bytes);
            for stream in &NAMES[..streams as usize] {
                let full = read_stream(&db, stream, from, dir, limit).unwrap();
                let small = read_small_in_memory(&db, stream, from, dir, limit).unwrap();
                if let Some(page) = &small {
                    proptest::prop_assert_eq!(page, &full);
                }
                let weight: usize = full.events.iter().map(RecordedEvent::size_bytes).sum();
                let within = full.events.len() <= INLINE_EVENTS
                    && (full.events.len() <= 1 || weight <= INLINE_BYTES)
                    && full.events.iter().all(|e| e.size_bytes() <= INLINE_BYTES);
                if within && (full.next.is_none() || full.events.len() == events) {
                    proptest::prop_assert!(small.is_some(), "a small page in memory went to the pool");
                }
            }
        }
    }
}
