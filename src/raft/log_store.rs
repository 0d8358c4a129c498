//! openraft's log storage on [`LogDb`]: entries are checksummed, written at once (readable
//! immediately) and acknowledged to openraft only after the group-commit syncer has synced
//! the WAL that holds them.

// openraft's `StorageError` is the error type its traits impose.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};

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
}

impl LogStore {
    pub fn new(db: Arc<LogDb>) -> Self {
        LogStore {
            db,
            appended: Arc::new(tokio::sync::watch::channel(0).0),
            read_bytes: usize::MAX,
        }
    }

    /// Bounds the entries replication reads for one AppendEntries message by bytes
    /// (`raft.max_payload_bytes`): a follower far behind is sent messages of about this
    /// size, and the leader never loads more than that of the log per message.
    pub fn with_read_bytes(mut self, bytes: usize) -> Self {
        self.read_bytes = bytes;
        self
    }

    /// Follows the index of the last entry appended (written, readable; not yet synced).
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
        let raw = self
            .db
            .entries_within(start, u64::MAX, max_entries.saturating_add(1), max_bytes)
            .map_err(|e| sto_err(ErrorVerb::Read, ErrorSubject::Logs, e))?;
        // The last index appended, read after the entries: an append in between makes
        // this tail look short of the end, and nothing is carried (never the other way).
        let last = *self.appended.borrow();
        let bytes: usize = raw.iter().map(|(_, b)| b.len()).sum();
        if raw.is_empty()
            || raw.len() > max_entries
            || bytes > max_bytes
            || raw.last().map(|(i, _)| *i) != Some(last)
        {
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
        let raw = self
            .db
            .entries(start, end, MAX_ENTRIES_PER_READ)
            .map_err(|e| sto_err(ErrorVerb::Read, ErrorSubject::Logs, e))?;
        raw.iter().map(|(i, b)| decode_entry(*i, b)).collect()
    }

    /// What replication sends in one AppendEntries message: at most `read_bytes` of
    /// entries, and at least one (openraft requires a non-empty answer for a non-empty
    /// range; config validation keeps one entry within the budget).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let raw = self
            .db
            .entries_within(start, end, MAX_ENTRIES_PER_READ, self.read_bytes)
            .map_err(|e| sto_err(ErrorVerb::Read, ErrorSubject::Logs, e))?;
        raw.iter().map(|(i, b)| decode_entry(*i, b)).collect()
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
        let mut last = None;
        for entry in entries {
            let bytes = encode("log entry", &entry).map_err(|e| {
                sto_err(
                    ErrorVerb::Write,
                    ErrorSubject::LogIndex(entry.log_id.index),
                    e,
                )
            })?;
            last = Some(entry.log_id.index);
            encoded.push((entry.log_id.index, bytes));
        }
        self.db
            .put_entries(encoded)
            .map_err(|e| sto_err(ErrorVerb::Write, ErrorSubject::Logs, e))?;
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
        self.db
            .truncate_from(log_id.index)
            .map_err(|e| sto_err(ErrorVerb::Delete, ErrorSubject::Logs, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let bytes = encode("log meta", &log_id)
            .map_err(|e| sto_err(ErrorVerb::Delete, ErrorSubject::Logs, e))?;
        self.db
            .purge_upto(log_id.index, KEY_PURGED, &bytes)
            .map_err(|e| sto_err(ErrorVerb::Delete, ErrorSubject::Logs, e))
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
