//! openraft's log storage on [`LogDb`]: entries are checksummed, written at once (readable
//! immediately) and acknowledged to openraft only after the group-commit syncer has synced
//! the WAL that holds them. The last entries written are also kept decoded
//! (`raft::log_tail`), for the reads apply and replication make.

// openraft's `StorageError` is the error type its traits impose.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};

use super::log_tail::{Tail, Want};
use super::{sto_err, Entry, LogId, RaftStorageError, TypeConfig, Vote};
use crate::storage::{decode, encode, LogDb, StorageError};

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

/// At most this many entries per read: replication asks for bounded ranges anyway, this is
/// the backstop that keeps one read from loading an unbounded log into memory.
const MAX_ENTRIES_PER_READ: usize = 64 * 1024;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<LogDb>,
    /// The index of the last entry appended: a replication stream's heartbeat waits on it
    /// for entries to carry (`raft::carry`).
    appended: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bytes of entries one replication read returns at most (one entry always).
    read_bytes: usize,
    /// The log's last entries, decoded: what apply, replication and carried heartbeats
    /// read (`raft::log_tail`). Changed only together with the database, under this lock.
    tail: Arc<Mutex<Tail>>,
}

impl LogStore {
    pub fn new(db: Arc<LogDb>) -> Self {
        LogStore {
            db,
            appended: Arc::new(tokio::sync::watch::channel(0).0),
            read_bytes: usize::MAX,
            tail: Arc::default(),
        }
    }

    /// The tail, locked. A panic while it was held (none of its code panics) would leave it
    /// possibly out of step with the database, so it is emptied then: reads go to the
    /// database until appends fill it again.
    fn tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|poisoned| {
            let mut tail = poisoned.into_inner();
            tail.clear();
            self.tail.clear_poison();
            tail
        })
    }

    /// Entries `want` asks for, from the tail when it starts there, else from the database.
    fn read(&self, want: Want) -> Result<Vec<Entry>, RaftStorageError> {
        if let Some(entries) = self.tail().read(want) {
            return Ok(entries);
        }
        let raw = self
            .db
            .entries_within(want.start, want.end, want.max, want.max_bytes)
            .map_err(|e| sto_err(ErrorVerb::Read, ErrorSubject::Logs, e))?;
        raw.iter().map(|(i, b)| decode_entry(*i, b)).collect()
    }

    /// Bounds the entries replication reads for one AppendEntries message by bytes
    /// (`raft.max_payload_bytes`): a follower far behind is sent messages of about this
    /// size, and the leader never loads more than that of the log per message.
    pub fn with_read_bytes(mut self, bytes: usize) -> Self {
        self.read_bytes = bytes;
        self
    }

    /// Follows the index of the last entry appended (written, readable; not yet synced), or
    /// the last one a truncation left.
    pub fn appended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    pub fn db(&self) -> &Arc<LogDb> {
        &self.db
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, RaftStorageError> {
        let read = |e: StorageError| sto_err(ErrorVerb::Read, subject.clone(), e);
        match self.db.get_meta(key).map_err(read)? {
            None => Ok(None),
            Some(bytes) => decode("log meta", &bytes).map(Some).map_err(read),
        }
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        sync: bool,
        subject: ErrorSubject<u64>,
    ) -> Result<(), RaftStorageError> {
        let write = |e: StorageError| sto_err(ErrorVerb::Write, subject.clone(), e);
        let bytes = encode("log meta", value).map_err(write)?;
        self.db.put_meta(key, &bytes, sync).map_err(write)
    }

    /// The last committed log id this node recorded.
    pub fn committed(&self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(self
            .meta::<Option<LogId>>(KEY_COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    /// Every entry from `start` on, if there are 1 to `max_entries` of them and they take at
    /// most `max_bytes` as stored: a short tail, which a heartbeat may carry
    /// (`raft::carry`). `None` otherwise: a follower with more to catch up is sent them by
    /// openraft's replication, which sizes its messages to what gets through.
    pub fn short_tail(
        &self,
        start: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<Entry>>, RaftStorageError> {
        if let Some(rest) = self.tail().rest(start, max_entries, max_bytes) {
            return Ok(rest);
        }
        let short = |n: usize, bytes: usize| n > 0 && n <= max_entries && bytes <= max_bytes;
        let raw = self
            .db
            .entries_within(start, u64::MAX, max_entries.saturating_add(1), max_bytes)
            .map_err(|e| sto_err(ErrorVerb::Read, ErrorSubject::Logs, e))?;
        // The last index appended, read after the entries: an append in between makes
        // this tail look short of the end, and nothing is carried (never the other way).
        let last = *self.appended.borrow();
        let bytes: usize = raw.iter().map(|(_, b)| b.len()).sum();
        if !short(raw.len(), bytes) || raw.last().map(|(i, _)| *i) != Some(last) {
            return Ok(None);
        }
        raw.iter()
            .map(|(i, b)| decode_entry(*i, b))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Index of the last purged entry, if any.
    pub fn purged(&self) -> Result<Option<LogId>, RaftStorageError> {
        self.meta(KEY_PURGED, ErrorSubject::Logs)
    }
}

/// After a change to the log failed, what the database holds is not known: the tail is
/// emptied, and reads go to the database (openraft stops on a storage error anyway).
fn tail_follows<T>(tail: &mut Tail, change: &Result<T, StorageError>) {
    if change.is_err() {
        tail.clear();
    }
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, RaftStorageError> {
    let entry: Entry = decode("log entry", bytes)
        .map_err(|e| sto_err(ErrorVerb::Read, ErrorSubject::LogIndex(index), e))?;
    if entry.log_id.index != index {
        return Err(sto_err(
            ErrorVerb::Read,
            ErrorSubject::LogIndex(index),
            StorageError::corrupt("log entry", format!("key {index} holds {}", entry.log_id)),
        ));
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        self.read(Want {
            start,
            end,
            max: MAX_ENTRIES_PER_READ,
            max_bytes: usize::MAX,
        })
    }

    /// What replication sends in one AppendEntries message: at most `read_bytes` of
    /// entries, and at least one (openraft requires a non-empty answer for a non-empty
    /// range; config validation keeps one entry within the budget).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        self.read(Want {
            start,
            end,
            max: MAX_ENTRIES_PER_READ,
            max_bytes: self.read_bytes,
        })
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id = self.purged()?;
        let last = self
            .db
            .last_entry()
            .map_err(|e| sto_err(ErrorVerb::Read, ErrorSubject::Logs, e))?;
        let last_log_id = match last {
            Some((index, bytes)) => Some(decode_entry(index, &bytes)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Durable when it returns (openraft requires it of votes).
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        self.put_meta(KEY_VOTE, vote, true, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        self.meta(KEY_VOTE, ErrorSubject::Vote)
    }

    /// Kept so that a restarted node re-applies what it knew committed without waiting for
    /// the leader. Not synced: losing it only delays re-applying.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        self.put_meta(KEY_COMMITTED, &committed, false, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        self.committed()
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        let mut written = Vec::new();
        let mut last = None;
        for entry in entries {
            let bytes = encode("log entry", &entry).map_err(|e| {
                sto_err(
                    ErrorVerb::Write,
                    ErrorSubject::LogIndex(entry.log_id.index),
                    e,
                )
            })?;
            let index = entry.log_id.index;
            last = Some(index);
            written.push((entry, bytes.len()));
            encoded.push((index, bytes));
        }
        {
            let mut tail = self.tail();
            let put = self.db.put_entries(encoded);
            tail_follows(&mut tail, &put);
            put.map_err(|e| sto_err(ErrorVerb::Write, ErrorSubject::Logs, e))?;
            for (entry, size) in written {
                tail.push(entry, size);
            }
        }
        if let Some(last) = last {
            self.appended.send_replace(last);
        }
        // The callback — and with it openraft's acknowledgement of these entries — waits
        // for the WAL sync. Never call it earlier: that is how acknowledged writes get lost.
        self.db
            .sync_then(Box::new(move |res| callback.log_io_completed(res)));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let mut tail = self.tail();
        tail.truncate_from(log_id.index);
        let done = self.db.truncate_from(log_id.index);
        tail_follows(&mut tail, &done);
        done.map_err(|e| sto_err(ErrorVerb::Delete, ErrorSubject::Logs, e))?;
        self.appended.send_if_modified(|last| {
            let truncated = *last >= log_id.index;
            if truncated {
                *last = log_id.index.saturating_sub(1);
            }
            truncated
        });
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let bytes = encode("log meta", &log_id)
            .map_err(|e| sto_err(ErrorVerb::Delete, ErrorSubject::Logs, e))?;
        let mut tail = self.tail();
        tail.purge_upto(log_id.index);
        let done = self.db.purge_upto(log_id.index, KEY_PURGED, &bytes);
        tail_follows(&mut tail, &done);
        done.map_err(|e| sto_err(ErrorVerb::Delete, ErrorSubject::Logs, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    /// A short tail is every entry after `start`, few and small enough; anything else is
    /// left to openraft's replication.
    #[test]
    fn a_short_tail_is_all_that_follows_and_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(Arc::new(LogDb::open(dir.path()).unwrap()));
        let entry = |i: u64| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Blank,
        };
        let put = |from: u64, to: u64| {
            let encoded = (from..=to).map(|i| (i, encode("log entry", &entry(i)).unwrap()));
            store.db.put_entries(encoded).unwrap();
            store.appended.send_replace(to);
        };
        put(1, 5);
        let one = encode("log entry", &entry(4)).unwrap().len();
        let tail = |start, n, bytes| {
            store
                .short_tail(start, n, bytes)
                .unwrap()
                .map(|es| es.iter().map(|e| e.log_id.index).collect::<Vec<_>>())
        };
        assert_eq!(tail(4, 16, 1 << 20), Some(vec![4, 5]));
        assert_eq!(tail(4, 2, 2 * one), Some(vec![4, 5]));
        // More entries than allowed, more bytes than allowed (even a first entry alone), or
        // nothing at all after `start`: no tail.
        assert_eq!(tail(3, 2, 1 << 20), None);
        assert_eq!(tail(4, 16, 2 * one - 1), None);
        assert_eq!(tail(5, 16, one - 1), None);
        assert_eq!(tail(6, 16, 1 << 20), None);
        put(6, 6);
        assert_eq!(tail(6, 16, 1 << 20), Some(vec![6]));
    }
}

/// The tail (`raft::log_tail`) answers every read as the database would: random appends,
/// truncations and purges through `LogStore`, each followed by reads through it and through
/// a copy of it whose tail stays empty (so it reads the database).
#[cfg(test)]
mod tail_tests {
    use super::*;
    use crate::raft::{Command, Request};
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};
    use proptest::prelude::{prop_assert_eq, prop_oneof, proptest, Just};
    use proptest::strategy::Strategy as _;
    use proptest::test_runner::Config as ProptestConfig;

    #[derive(Debug, Clone)]
    enum Op {
        /// Append this many entries, with commands per entry from the sizes, in a new term?
        Append(Vec<usize>, bool),
        /// Truncate from the n-th entry of the log (modulo its length).
        Truncate(usize),
        /// Purge up to the n-th entry of the log (modulo its length and 4 more: past its end).
        Purge(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        prop_oneof![
            6 => (proptest::collection::vec(0usize..6, 1..40), proptest::bool::weighted(0.2))
                .prop_map(|(sizes, new_term)| Op::Append(sizes, new_term)),
            1 => (0usize..1000).prop_map(Op::Truncate),
            1 => (0usize..1000).prop_map(Op::Purge),
            1 => Just(Op::Append(vec![3], false)),
        ]
    }

    fn entry(term: u64, index: u64, commands: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Request {
                commit_time_ns: index as i64,
                dedupe_window_ns: 0,
                commands: vec![Command::SetDedupeWindow { window_ns: 7 }; commands],
            }),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn the_tail_answers_as_the_database(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let db = Arc::new(LogDb::open(dir.path()).unwrap());
            let mut store = LogStore::new(db).with_read_bytes(600);
            // The same store but for an empty tail of its own, which stays empty.
            let mut plain = LogStore { tail: Arc::default(), ..store.clone() };
            let (mut term, mut first, mut next) = (1u64, 1u64, 1u64);
            for op in ops {
                match op {
                    Op::Append(sizes, new_term) => {
                        term += u64::from(new_term);
                        let entries: Vec<Entry> = sizes
                            .iter()
                            .enumerate()
                            .map(|(k, n)| entry(term, next + k as u64, *n))
                            .collect();
                        next += entries.len() as u64;
                        rt.block_on(store.blocking_append(entries)).unwrap();
                        // Reads of the last entries are the tail's from here on.
                        prop_assert_eq!(store.tail().rest(next - 1, 1, usize::MAX).flatten().map(|es| es.len()), Some(1));
                    }
                    Op::Truncate(n) if next > first => {
                        let at = first + (n as u64) % (next - first);
                        rt.block_on(store.truncate(LogId::new(CommittedLeaderId::new(term, 1), at)))
                            .unwrap();
                        next = at;
                    }
                    Op::Purge(n) => {
                        // Past the log's last entry too, as after a snapshot install: the
                        // log then goes on after the purged index.
                        let upto = first + (n as u64) % (next - first + 4);
                        rt.block_on(store.purge(LogId::new(CommittedLeaderId::new(term, 1), upto)))
                            .unwrap();
                        first = upto + 1;
                        next = next.max(first);
                    }
                    Op::Truncate(_) => {}
                }
                // Around both ends of the log and of the tail (at most 256 entries).
                let mut starts: Vec<u64> = [0, 1, 2, 30]
                    .iter()
                    .map(|d| first + d)
                    .chain([0, 1, 2, 5, 30, 255, 256, 257, 300].iter().map(|d| next.saturating_sub(*d)))
                    .filter(|s| (first..=next + 1).contains(s))
                    .collect();
                starts.sort_unstable();
                starts.dedup();
                for start in starts {
                    for end in [start, start + 1, start + 3, next, next + 1, u64::MAX] {
                        let end = end.max(start);
                        prop_assert_eq!(
                            rt.block_on(store.try_get_log_entries(start..end)).unwrap(),
                            rt.block_on(plain.try_get_log_entries(start..end)).unwrap()
                        );
                        prop_assert_eq!(
                            rt.block_on(store.limited_get_log_entries(start, end)).unwrap(),
                            rt.block_on(plain.limited_get_log_entries(start, end)).unwrap()
                        );
                    }
                    for (n, bytes) in [(1, 1 << 20), (4, 1 << 20), (16, 300), (16, 1 << 20)] {
                        prop_assert_eq!(
                            store.short_tail(start, n, bytes).unwrap(),
                            plain.short_tail(start, n, bytes).unwrap()
                        );
                    }
                }
            }
        }
    }
}
