//! The last entries of the Raft log, kept decoded in memory (`LogStore`'s read cache).
//!
//! Nearly every read of the log is of its last few entries: openraft's core reads each
//! committed entry back from the log to apply it (on every node), and a leader's replication
//! streams and commit heartbeats (`raft::carry`) read what they send. Each such read was a
//! RocksDB iterator (a merge over the memtables and every level) and a decode per entry.
//! [`Tail`] keeps a copy of the entries `LogStore::append` wrote, as long as they are the
//! log's last ones, so that these reads are a clone of entries already decoded.
//!
//! The rule that makes an answer from the tail the log's own: the tail is a run of
//! consecutive entries that **ends at the log's last entry**. `LogStore` updates it under the
//! lock readers take, in the same step as the database: an append pushes what it wrote (a
//! gap from the tail's last index empties the tail first), a truncation drops the entries it
//! removes, a purge those it purges. So a range that starts inside the tail holds exactly the
//! tail's entries from there on — the log has nothing after them — and a range that starts
//! before it is read from the database.

use std::collections::VecDeque;

use super::Entry;

/// At most this many entries are kept …
pub const TAIL_MAX_ENTRIES: usize = 256;
/// … and at most this many bytes of them, as stored. An entry larger than this alone is
/// not kept (the tail empties, and fills again from the next append).
pub const TAIL_MAX_BYTES: usize = 8 << 20;

/// Consecutive entries ending at the log's last one, each with its size as stored.
#[derive(Default)]
pub struct Tail {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

/// Which entries a read wants: those from `start` (inclusive) to `end` (exclusive), at most
/// `max` of them and `max_bytes` of stored bytes, but always the first one.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub start: u64,
    pub end: u64,
    pub max: usize,
    pub max_bytes: usize,
}

impl Tail {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    /// Forgets everything (the next push starts a new tail).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Adds the entry just written as the log's last, with its stored size. The caller
    /// pushes in log order, after the write succeeded.
    pub fn push(&mut self, entry: Entry, size: usize) {
        let follows = match self.last() {
            None => true,
            Some(last) => last.checked_add(1) == Some(entry.log_id.index),
        };
        if !follows || size > TAIL_MAX_BYTES {
            self.clear();
        }
        if size > TAIL_MAX_BYTES {
            return;
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.entries.len() > TAIL_MAX_ENTRIES || self.bytes > TAIL_MAX_BYTES {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    /// The log lost every entry from `index` on.
    pub fn truncate_from(&mut self, index: u64) {
        while self.last().is_some_and(|last| last >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// The log lost every entry up to `index`.
    pub fn purge_upto(&mut self, index: u64) {
        while self.first().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }

    /// The entries `want` asks for, if its start is in the tail; `None` means "read the
    /// database" (the start is before the tail, after it, or the tail is empty).
    pub fn read(&self, want: Want) -> Option<Vec<Entry>> {
        let (first, last) = (self.first()?, self.last()?);
        if want.start < first || want.start > last {
            return None;
        }
        let skip = usize::try_from(want.start - first).ok()?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (entry, size) in self.entries.iter().skip(skip) {
            if entry.log_id.index >= want.end || out.len() >= want.max {
                break;
            }
            bytes = bytes.saturating_add(*size);
            if !out.is_empty() && bytes > want.max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Some(out)
    }

    /// Every entry from `start` on — the whole rest of the log — if `start` is in the tail:
    /// `Some(Some(entries))` when they are at most `max` and `max_bytes` as stored,
    /// `Some(None)` when they are more (nothing is copied then), `None` when the tail cannot
    /// tell (read the database).
    pub fn rest(&self, start: u64, max: usize, max_bytes: usize) -> Option<Option<Vec<Entry>>> {
        let (first, last) = (self.first()?, self.last()?);
        if start < first || start > last {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let rest = self.entries.iter().skip(skip);
        let bytes: usize = rest.clone().map(|(_, size)| size).sum();
        if self.entries.len() - skip > max || bytes > max_bytes {
            return Some(None);
        }
        Some(Some(rest.map(|(e, _)| e.clone()).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::LogId;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, i: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), i),
            payload: EntryPayload::Blank,
        }
    }

    fn want(start: u64, end: u64) -> Want {
        Want {
            start,
            end,
            max: usize::MAX,
            max_bytes: usize::MAX,
        }
    }

    fn ids(es: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        es.map(|es| {
            es.iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect()
        })
    }

    #[test]
    fn reads_start_in_the_tail_or_go_to_the_database() {
        let mut t = Tail::default();
        assert_eq!(ids(t.read(want(1, 10))), None, "empty: nothing is known");
        for i in 3..=6 {
            t.push(entry(1, i), 10);
        }
        assert_eq!(ids(t.read(want(2, 10))), None, "before the tail");
        assert_eq!(ids(t.read(want(7, 10))), None, "after the tail");
        assert_eq!(
            ids(t.read(want(4, 100))),
            Some(vec![(1, 4), (1, 5), (1, 6)])
        );
        assert_eq!(ids(t.read(want(4, 6))), Some(vec![(1, 4), (1, 5)]));
        assert_eq!(ids(t.read(want(4, 4))), Some(vec![]));
        let limited = Want {
            max: 2,
            ..want(3, 100)
        };
        assert_eq!(ids(t.read(limited)), Some(vec![(1, 3), (1, 4)]));
        // A byte budget is kept, but the first entry always comes.
        let bytes = |b| Want {
            max_bytes: b,
            ..want(3, 100)
        };
        assert_eq!(ids(t.read(bytes(25))), Some(vec![(1, 3), (1, 4)]));
        assert_eq!(ids(t.read(bytes(1))), Some(vec![(1, 3)]));
        let rest = |start, max, bytes| t.rest(start, max, bytes).map(ids);
        assert_eq!(rest(5, 2, 20), Some(Some(vec![(1, 5), (1, 6)])));
        assert_eq!(rest(5, 1, 20), Some(None), "too many");
        assert_eq!(rest(5, 2, 19), Some(None), "too large");
        assert!(rest(2, 9, 99).is_none() && rest(7, 9, 99).is_none());
    }

    #[test]
    fn truncation_purge_and_gaps_keep_it_the_logs_last_entries() {
        let mut t = Tail::default();
        for i in 1..=5 {
            t.push(entry(1, i), 10);
        }
        // A follower's conflicting entries are replaced: truncated, then appended anew.
        t.truncate_from(4);
        assert_eq!(ids(t.read(want(4, 100))), None);
        t.push(entry(2, 4), 10);
        assert_eq!(
            ids(t.read(want(3, 100))),
            Some(vec![(1, 3), (2, 4)]),
            "the replacement, not the old entry"
        );
        t.purge_upto(2);
        assert_eq!(ids(t.read(want(2, 100))), None, "purged");
        assert_eq!(ids(t.read(want(3, 100))), Some(vec![(1, 3), (2, 4)]));
        // An entry that does not follow the last (a snapshot moved the log on) starts over.
        t.push(entry(2, 9), 10);
        assert_eq!(ids(t.read(want(3, 100))), None);
        assert_eq!(ids(t.read(want(9, 100))), Some(vec![(2, 9)]));
        t.purge_upto(20);
        assert_eq!(ids(t.read(want(9, 100))), None);
        assert_eq!(t.bytes, 0);
    }

    #[test]
    fn it_stays_within_its_bounds() {
        let mut t = Tail::default();
        for i in 1..=(TAIL_MAX_ENTRIES as u64 + 10) {
            t.push(entry(1, i), 1);
        }
        assert_eq!(t.entries.len(), TAIL_MAX_ENTRIES);
        assert_eq!(t.first(), Some(11));
        let big = TAIL_MAX_BYTES / 2 + 1;
        let next = TAIL_MAX_ENTRIES as u64 + 11;
        t.push(entry(1, next), big);
        t.push(entry(1, next + 1), big);
        assert_eq!(t.first(), Some(next + 1), "bytes bound the tail too");
        assert_eq!(t.bytes, big);
        t.push(entry(1, next + 2), TAIL_MAX_BYTES + 1);
        assert_eq!(t.entries.len(), 0, "an entry too large alone is not kept");
        assert_eq!(ids(t.read(want(next + 1, u64::MAX))), None);
        t.push(entry(1, next + 3), 1);
        assert_eq!(
            ids(t.read(want(next + 3, u64::MAX))),
            Some(vec![(1, next + 3)])
        );
    }
}
