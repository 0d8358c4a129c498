//! The Raft log's RocksDB instance: entries by index, plus a few metadata keys (vote,
//! committed, last purged). Entries are opaque bytes here; the `raft` module encodes them.
//!
//! Durability: entries are written without sync (so they are readable at once) and a single
//! syncer thread then syncs the WAL once for every callback that queued up meanwhile (group
//! commit). A callback fires only after the WAL holding its entries is on disk.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use super::keys::{read_u64, u64_key};
use super::{base_options, Result, StorageError};

const CF_LOGS: &str = "logs";
const CF_META: &str = "meta";

/// Called once the WAL that holds the caller's writes is synced (or failed to sync).
pub type SyncCallback = Box<dyn FnOnce(std::io::Result<()>) + Send>;

/// Counters of the group-commit syncer, for `/metrics`.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub syncs: AtomicU64,
    pub callbacks: AtomicU64,
    pub sync_micros: AtomicU64,
}

pub struct LogDb {
    db: Arc<DB>,
    /// `None` only while dropping.
    syncer: Option<mpsc::Sender<SyncCallback>>,
    syncer_thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<SyncStats>,
}

impl Drop for LogDb {
    /// Stops the syncer (it drains what is queued first) and waits for it, so that the
    /// database is closed when this returns — never torn down by process exit while a
    /// thread still uses it.
    fn drop(&mut self) {
        drop(self.syncer.take());
        if let Some(t) = self.syncer_thread.take() {
            let _ = t.join();
        }
    }
}

impl LogDb {
    pub fn open(path: &Path) -> Result<LogDb> {
        let opts = base_options();
        let mut logs = base_options();
        // Log entries are written once, read soon, and deleted by range: keep memtables
        // modest and let compaction drop purged ranges.
        logs.set_write_buffer_size(64 << 20);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOGS, logs),
            ColumnFamilyDescriptor::new(CF_META, base_options()),
        ];
        let db = Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?);
        let stats = Arc::new(SyncStats::default());
        let (tx, rx) = mpsc::channel::<SyncCallback>();
        let sync_db = db.clone();
        let sync_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || run_syncer(sync_db, rx, sync_stats))?;
        Ok(LogDb {
            db,
            syncer: Some(tx),
            syncer_thread: Some(thread),
            stats,
        })
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or(StorageError::MissingColumnFamily(name))
    }

    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// Writes entries (index, bytes) without waiting for the disk; see [`LogDb::sync_then`].
    pub fn put_entries<I>(&self, entries: I) -> Result<()>
    where
        I: IntoIterator<Item = (u64, Vec<u8>)>,
    {
        let cf = self.cf(CF_LOGS)?;
        let mut batch = WriteBatch::default();
        for (index, bytes) in entries {
            batch.put_cf(cf, u64_key(index), bytes);
        }
        self.db.write_opt(batch, &no_sync())?;
        Ok(())
    }

    /// Queues `cb` to run once everything written so far is synced to disk.
    pub fn sync_then(&self, cb: SyncCallback) {
        match &self.syncer {
            Some(tx) => {
                if let Err(mpsc::SendError(cb)) = tx.send(cb) {
                    cb(Err(std::io::Error::other("log syncer stopped")));
                }
            }
            None => cb(Err(std::io::Error::other("log syncer stopped"))),
        }
    }

    /// Entries with index in `[start, end)`, at most `max` of them, in order.
    pub fn entries(&self, start: u64, end: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.entries_within(start, end, max, usize::MAX)
    }

    /// Like [`LogDb::entries`], and ending before the entry that would take the stored
    /// bytes past `max_bytes` (the first entry is always returned).
    pub fn entries_within(
        &self,
        start: u64,
        end: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let cf = self.cf(CF_LOGS)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let from = u64_key(start);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (k, v) = item?;
            let index =
                read_u64(&k).ok_or_else(|| StorageError::corrupt("log key", "not 8 bytes"))?;
            if index >= end || out.len() >= max {
                break;
            }
            bytes = bytes.saturating_add(v.len());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push((index, v.into_vec()));
        }
        Ok(out)
    }

    /// The entry with the highest index.
    pub fn last_entry(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let cf = self.cf(CF_LOGS)?;
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                let index =
                    read_u64(&k).ok_or_else(|| StorageError::corrupt("log key", "not 8 bytes"))?;
                Ok(Some((index, v.into_vec())))
            }
        }
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_META)?, key)?)
    }

    /// Writes a metadata key; with `sync` it is on disk when this returns.
    pub fn put_meta(&self, key: &str, value: &[u8], sync: bool) -> Result<()> {
        let opts = if sync { with_sync() } else { no_sync() };
        self.db.put_cf_opt(self.cf(CF_META)?, key, value, &opts)?;
        Ok(())
    }

    /// Deletes entries with index >= `from`, durably (truncation is rare: conflicts only).
    pub fn truncate_from(&self, from: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOGS)?, u64_key(from), u64_key(u64::MAX));
        // u64::MAX itself is never a real index, so the exclusive end loses nothing.
        self.db.write_opt(batch, &with_sync())?;
        Ok(())
    }

    /// Deletes entries with index <= `upto` and records `meta_key = meta_value` in the same
    /// batch, so the "last purged" marker and the deletion land together.
    pub fn purge_upto(&self, upto: u64, meta_key: &str, meta_value: &[u8]) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META)?, meta_key, meta_value);
        batch.delete_range_cf(
            self.cf(CF_LOGS)?,
            u64_key(0),
            u64_key(upto.saturating_add(1)),
        );
        self.db.write_opt(batch, &no_sync())?;
        Ok(())
    }
}

fn no_sync() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(false);
    o
}

fn with_sync() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

/// One thread, one fsync per wake-up, however many appends queued meanwhile.
fn run_syncer(db: Arc<DB>, rx: mpsc::Receiver<SyncCallback>, stats: Arc<SyncStats>) {
    let mut pending: Vec<SyncCallback> = Vec::with_capacity(1024);
    while let Ok(first) = rx.recv() {
        pending.push(first);
        while let Ok(cb) = rx.try_recv() {
            pending.push(cb);
        }
        let started = Instant::now();
        let res = db.flush_wal(true);
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats
            .sync_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats
            .callbacks
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        for cb in pending.drain(..) {
            cb(res
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_meta_truncate_purge() {
        let dir = tempfile::tempdir().unwrap();
        let db = LogDb::open(dir.path()).unwrap();
        db.put_entries((1..=10).map(|i| (i, vec![i as u8])))
            .unwrap();
        assert_eq!(db.last_entry().unwrap(), Some((10, vec![10])));
        let got = db.entries(3, 6, 100).unwrap();
        assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(db.entries(1, 100, 2).unwrap().len(), 2);
        // A byte budget ends the read early, but never before its first entry.
        let one = db.entries(3, 4, 1).unwrap()[0].1.len();
        assert_eq!(db.entries_within(3, 6, 100, 2 * one).unwrap().len(), 2);
        assert_eq!(db.entries_within(3, 6, 100, 0).unwrap().len(), 1);
        db.truncate_from(8).unwrap();
        assert_eq!(db.last_entry().unwrap().map(|e| e.0), Some(7));
        db.purge_upto(4, "purged", b"4").unwrap();
        assert_eq!(db.entries(0, 100, 100).unwrap()[0].0, 5);
        assert_eq!(db.get_meta("purged").unwrap(), Some(b"4".to_vec()));
        let (tx, rx) = std::sync::mpsc::channel();
        db.sync_then(Box::new(move |r| tx.send(r.is_ok()).unwrap()));
        assert!(rx.recv().unwrap());
        assert!(db.stats().syncs.load(Ordering::Relaxed) >= 1);
    }
}
