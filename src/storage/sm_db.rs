//! The state machine's RocksDB instance, and the store that can replace it wholesale when a
//! snapshot is installed.
//!
//! Layout under the state-machine root: `CURRENT` names the live database directory
//! (`db-000001`, ...). Installing a snapshot loads it into a fresh directory, syncs it, then
//! atomically rewrites `CURRENT` and swaps the handle; a crash at any point leaves either the
//! old or the new database live, never a half-loaded one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use rocksdb::{Cache, ColumnFamily, ColumnFamilyDescriptor, WriteBatch, WriteOptions, DB};
use xxhash_rust::xxh3::Xxh3;

use super::{
    base_options, fsync_dir, point_lookup_cf_options, scan_and_probe_cf_options, scan_cf_options,
    Result, StorageError,
};

/// State-machine metadata: applied log id, membership, store counters, digest.
pub const CF_META: &str = "meta";
/// Events by global position.
pub const CF_EVENTS: &str = "events";
/// `stream ++ 0x00 ++ version` → global position.
pub const CF_STREAM_INDEX: &str = "stream_index";
/// Stream name → stream head (last version).
pub const CF_STREAMS: &str = "streams";
/// Event id → where it was stored (the idempotency index).
pub const CF_DEDUPE: &str = "dedupe";
/// `commit_time ++ log index` → the ids of the events that entry stored (16 bytes each):
/// lets the dedupe window expire entries in time order, with one write per entry.
pub const CF_DEDUPE_EXPIRY: &str = "dedupe_expiry";

/// Workflow id → its current projection.
pub const CF_WF_STATE: &str = "wf_state";
/// `workflow id ++ 0x00 ++ version` → projection snapshot after that version.
pub const CF_WF_SNAPSHOTS: &str = "wf_snapshots";

/// Telemetry series name → its id.
pub const CF_TM_SERIES: &str = "tm_series";
/// `series id ++ min ts ++ log index ++ seq` → a compressed columnar segment of raw points.
pub const CF_TM_RAW: &str = "tm_raw";
/// `series id ++ tier ++ bucket start` → a rollup bucket (mergeable statistics).
pub const CF_TM_ROLLUP: &str = "tm_rollup";
/// Series prefix → retention policy.
pub const CF_TM_POLICY: &str = "tm_policy";

/// Every column family of the state machine, in a fixed order: snapshots carry them all and
/// refer to them by their index in this list.
pub const SM_CFS: &[&str] = &[
    CF_META,
    CF_EVENTS,
    CF_STREAM_INDEX,
    CF_STREAMS,
    CF_DEDUPE,
    CF_DEDUPE_EXPIRY,
    CF_WF_STATE,
    CF_WF_SNAPSHOTS,
    CF_TM_SERIES,
    CF_TM_RAW,
    CF_TM_ROLLUP,
    CF_TM_POLICY,
];

/// Column families whose records may expire by retention: compaction drops what the
/// replicated state declares dead.
pub const EXPIRING_CFS: &[&str] = &[CF_TM_RAW, CF_TM_ROLLUP];

/// Says whether a record (column family, key, value) has expired by retention.
pub type DeadRule = dyn Fn(&str, &[u8], &[u8]) -> bool + Send + Sync;

/// Which records replicated state already declares dead (past retention). Compaction drops
/// them on each replica's own schedule, so nothing may depend on their presence: queries
/// filter by the same rule, and snapshots and state scans skip them.
pub trait Retention: Send + Sync + 'static {
    /// The compaction filter's rule. It must never run ahead of the durable state: what it
    /// drops must be dead in the state a crash would leave (the last flush), since the
    /// replay from there must read the same records the first apply read.
    fn is_dead(&self, cf: &str, key: &[u8], value: &[u8]) -> bool;
    /// The rule for a reader of the point-in-time `view`: dead by the state that same view
    /// holds (a snapshot dump, a state scan), whatever the compaction filter's state is.
    fn rule_at(&self, db: &SmDb, view: &rocksdb::Snapshot<'_>) -> Result<Box<DeadRule>>;
    /// Called before `db`'s memtables are all flushed; the returned action runs once the
    /// flush succeeded (the state read before it is then durable).
    fn before_flush(self: Arc<Self>, db: &SmDb) -> Result<Box<dyn FnOnce() + Send>>;
}

/// No record ever expires.
pub struct KeepAll;

impl Retention for KeepAll {
    fn is_dead(&self, _: &str, _: &[u8], _: &[u8]) -> bool {
        false
    }

    fn rule_at(&self, _: &SmDb, _: &rocksdb::Snapshot<'_>) -> Result<Box<DeadRule>> {
        Ok(Box::new(|_: &str, _: &[u8], _: &[u8]| false))
    }

    fn before_flush(self: Arc<Self>, _: &SmDb) -> Result<Box<dyn FnOnce() + Send>> {
        Ok(Box::new(|| ()))
    }
}

const CURRENT: &str = "CURRENT";
const BLOCK_CACHE_BYTES: usize = 256 << 20;

/// One open state-machine database.
pub struct SmDb {
    /// `Some` until drop: the directory may only be removed after RocksDB has closed it.
    db: Option<DB>,
    path: PathBuf,
    remove_on_drop: AtomicBool,
    retention: Arc<dyn Retention>,
}

impl SmDb {
    fn open(path: &Path, cache: &Cache, retention: &Arc<dyn Retention>) -> Result<SmDb> {
        let cfs = SM_CFS.iter().map(|name| {
            let mut opts = match *name {
                CF_STREAMS | CF_DEDUPE | CF_META | CF_WF_STATE | CF_TM_SERIES => {
                    point_lookup_cf_options(cache)
                }
                CF_STREAM_INDEX => scan_and_probe_cf_options(cache),
                _ => scan_cf_options(cache),
            };
            if EXPIRING_CFS.contains(name) {
                let retention = retention.clone();
                let cf: &'static str = name;
                opts.set_compaction_filter(
                    &format!("aether-retention-{cf}"),
                    move |_level: u32, k: &[u8], v: &[u8]| {
                        if retention.is_dead(cf, k, v) {
                            rocksdb::compaction_filter::Decision::Remove
                        } else {
                            rocksdb::compaction_filter::Decision::Keep
                        }
                    },
                );
            }
            ColumnFamilyDescriptor::new(*name, opts)
        });
        let mut opts = base_options();
        // Writes skip the WAL (see `commit`): column families must then reach disk together,
        // or a crash could leave the applied index ahead of the data it stands for.
        opts.set_atomic_flush(true);
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(SmDb {
            db: Some(db),
            path: path.to_owned(),
            remove_on_drop: AtomicBool::new(false),
            retention: retention.clone(),
        })
    }

    pub fn db(&self) -> &DB {
        // Invariant: `db` is only taken in `drop`.
        self.db.as_ref().expect("state machine db used after drop")
    }

    pub fn cf(&self, name: &'static str) -> Result<&ColumnFamily> {
        self.db()
            .cf_handle(name)
            .ok_or(StorageError::MissingColumnFamily(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every write so far durable: flushes all memtables, atomically across column
    /// families. The state machine writes without a WAL; the Raft log is the durable record
    /// until a snapshot lets the log be purged, and this runs before that. Then the
    /// compaction filter may go by the state that is now durable (see [`Retention`]).
    ///
    /// Never flush one column family alone: with `atomic_flush`, RocksDB 11.8's
    /// `DBImpl::Flush(FlushOptions, ColumnFamilyHandle*)` (db/db_impl/
    /// db_impl_compaction_flush.cc) calls `AtomicFlushMemTables` with just that family as
    /// the candidate, and `SelectColumnFamiliesForAtomicFlush` (db_impl_write.cc) keeps only
    /// the candidates given: that family alone reaches disk, ahead of `meta` and its applied
    /// index, and a crash then replays entries over data that already holds them.
    pub fn sync(&self) -> Result<()> {
        let installed = self.retention.clone().before_flush(self)?;
        self.flush_all()?;
        installed();
        Ok(())
    }

    /// Flushes every column family's memtable together (one atomic flush).
    fn flush_all(&self) -> Result<()> {
        let db = self.db();
        let cfs = SM_CFS
            .iter()
            .map(|name| self.cf(name))
            .collect::<Result<Vec<_>>>()?;
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(true);
        db.flush_cfs_opt(&cfs, &opts)?;
        Ok(())
    }
}

impl Drop for SmDb {
    fn drop(&mut self) {
        let db = self.db.take();
        let Some(remove) = self
            .remove_on_drop
            .load(Ordering::Acquire)
            .then(|| self.path.clone())
        else {
            return close(db, None);
        };
        // A database that a snapshot install replaced goes when its last holder lets go,
        // and that may be a read on an async worker (`Node::read_stream` answers small
        // reads there). Closing it and removing its files block: the pool does that. If
        // the runtime is shutting down, the task is dropped unrun, which closes the
        // database there; its directory is then removed at the next open.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || close(db, Some(remove)))),
            Err(_) => close(db, Some(remove)),
        }
    }
}

impl SmDb {
    /// Closes this database and removes its directory, before returning.
    fn discard(mut self) {
        close(self.db.take(), Some(self.path.clone()));
    }
}

/// Closes a database, then removes its directory if it was replaced.
fn close(db: Option<DB>, remove: Option<PathBuf>) {
    drop(db);
    if let Some(path) = remove {
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), error = %e, "removing replaced state machine");
        }
        #[cfg(test)]
        tests::REMOVED_ON
            .lock()
            .unwrap()
            .push((path, std::thread::current().id()));
    }
}

/// A write batch against the state machine that also folds every data write into the
/// state digest: `digest' = xxh3_128(digest ++ ops)`. Replicas that apply the same entries
/// produce the same writes, hence the same digest; any divergence shows up in it.
pub struct SmWriteBatch<'a> {
    db: &'a SmDb,
    batch: WriteBatch,
    hasher: Xxh3,
}

impl<'a> SmWriteBatch<'a> {
    /// Starts the batch of the entry at `log_index`, chained to the previous digest.
    pub fn new(db: &'a SmDb, prev_digest: u128, log_index: u64) -> Self {
        let mut hasher = Xxh3::new();
        hasher.update(&prev_digest.to_le_bytes());
        hasher.update(&log_index.to_le_bytes());
        SmWriteBatch {
            db,
            batch: WriteBatch::default(),
            hasher,
        }
    }

    fn fold(&mut self, op: u8, cf: &str, key: &[u8], value: &[u8]) {
        self.hasher.update(&[op]);
        self.hasher.update(cf.as_bytes());
        self.hasher.update(&(key.len() as u32).to_le_bytes());
        self.hasher.update(key);
        self.hasher.update(&(value.len() as u32).to_le_bytes());
        self.hasher.update(value);
    }

    pub fn put(&mut self, cf: &'static str, key: &[u8], value: &[u8]) -> Result<()> {
        self.fold(b'P', cf, key, value);
        self.batch.put_cf(self.db.cf(cf)?, key, value);
        Ok(())
    }

    pub fn delete(&mut self, cf: &'static str, key: &[u8]) -> Result<()> {
        self.fold(b'D', cf, key, &[]);
        self.batch.delete_cf(self.db.cf(cf)?, key);
        Ok(())
    }

    /// Deletes the keys of `cf` in `from..to` (one range tombstone).
    pub fn delete_range(&mut self, cf: &'static str, from: &[u8], to: &[u8]) -> Result<()> {
        self.fold(b'R', cf, from, to);
        self.batch.delete_range_cf(self.db.cf(cf)?, from, to);
        Ok(())
    }

    /// Folds bytes that describe a change without being a data write (e.g. a membership).
    pub fn fold_bytes(&mut self, bytes: &[u8]) {
        self.fold(b'F', "", bytes, &[]);
    }

    pub fn digest(&self) -> u128 {
        self.hasher.digest128()
    }

    /// A write that is not part of the digest: the bookkeeping of the state machine itself
    /// (applied log id, counters, the digest).
    pub fn put_meta(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.batch.put_cf(self.db.cf(CF_META)?, key, value);
        Ok(())
    }

    /// Writes the batch atomically, to the memtables only (no WAL): the Raft log is the
    /// durable record. After a crash the state machine reopens at its last (atomic) flush and
    /// openraft re-applies the log from the applied index stored there; [`SmDb::sync`] flushes
    /// before a snapshot lets the log be purged, and a clean close flushes too.
    pub fn commit(self) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        self.db.db().write_opt(self.batch, &opts)?;
        Ok(())
    }
}

/// The live state-machine database and the means to replace it.
pub struct SmStore {
    root: PathBuf,
    cache: Cache,
    retention: Arc<dyn Retention>,
    current: RwLock<Arc<SmDb>>,
}

impl SmStore {
    pub fn open(root: &Path) -> Result<SmStore> {
        Self::open_with(root, Arc::new(KeepAll))
    }

    /// Opens the store with the rule that says which records have expired.
    pub fn open_with(root: &Path, retention: Arc<dyn Retention>) -> Result<SmStore> {
        std::fs::create_dir_all(root)?;
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let name = match std::fs::read_to_string(root.join(CURRENT)) {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let name = db_dir_name(1);
                write_current(root, &name)?;
                name
            }
            Err(e) => return Err(e.into()),
        };
        if parse_db_dir(&name).is_none() {
            return Err(StorageError::corrupt(
                "state machine CURRENT",
                format!("{name:?}"),
            ));
        }
        // Leftovers of an install that crashed before switching, or of a replaced database.
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if parse_db_dir(&file_name).is_some() && file_name != name {
                // A replaced database may still be going in this process (its removal is
                // deferred to the pool, see `SmDb`'s drop); the next open sweeps again.
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "removing a leftover state machine");
                }
            }
        }
        let db = SmDb::open(&root.join(&name), &cache, &retention)?;
        Ok(SmStore {
            root: root.to_owned(),
            cache,
            retention,
            current: RwLock::new(Arc::new(db)),
        })
    }

    /// Which records of the point-in-time `view` of `db` have expired, by the state that
    /// view holds (see [`Retention::rule_at`]).
    pub fn dead_rule(&self, db: &SmDb, view: &rocksdb::Snapshot<'_>) -> Result<Box<DeadRule>> {
        self.retention.rule_at(db, view)
    }

    /// The live database. Holders keep a replaced database open until they drop it.
    pub fn db(&self) -> Arc<SmDb> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Builds a new database with `load`, makes it durable and switches to it atomically.
    /// The caller serializes replacements with applies (the state machine owns both).
    pub fn replace_with(&self, load: impl FnOnce(&SmDb) -> Result<()>) -> Result<Arc<SmDb>> {
        let old = self.db();
        let old_gen = old
            .path()
            .file_name()
            .and_then(|n| parse_db_dir(&n.to_string_lossy()))
            .unwrap_or(0);
        let name = db_dir_name(old_gen + 1);
        let path = self.root.join(&name);
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        let fresh = SmDb::open(&path, &self.cache, &self.retention)?;
        // Not `sync`: the fresh database is not live yet, so the compaction filter's state
        // must not move to it; the owner reloads that state after the switch.
        if let Err(e) = load(&fresh).and_then(|()| fresh.flush_all()) {
            // Now, not when dropped (which may defer to the pool): a retry reuses the name.
            fresh.discard();
            return Err(e);
        }
        write_current(&self.root, &name)?;
        let fresh = Arc::new(fresh);
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh.clone();
        old.remove_on_drop.store(true, Ordering::Release);
        Ok(fresh)
    }
}

fn db_dir_name(generation: u64) -> String {
    format!("db-{generation:06}")
}

fn parse_db_dir(name: &str) -> Option<u64> {
    name.strip_prefix("db-")?.parse().ok()
}

fn write_current(root: &Path, name: &str) -> Result<()> {
    let tmp = root.join("CURRENT.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(name.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, root.join(CURRENT))?;
    fsync_dir(root)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which thread removed each replaced database.
    pub(super) static REMOVED_ON: std::sync::Mutex<Vec<(PathBuf, std::thread::ThreadId)>> =
        std::sync::Mutex::new(Vec::new());

    /// A read on an async worker may hold the last handle of a database that a snapshot
    /// install has just replaced. Closing that database and removing its files is blocking
    /// work (RocksDB's close, `remove_dir_all` over its files): it must not run on the worker.
    #[test]
    fn a_replaced_database_dropped_on_an_async_worker_is_closed_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = SmStore::open(dir.path()).unwrap();
        let held = store.db();
        let old_path = held.path().to_owned();
        store.replace_with(|_| Ok(())).unwrap();
        assert!(old_path.exists(), "still held");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let worker = std::thread::current().id();
        rt.block_on(async move { drop(held) });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let remover = loop {
            let found = REMOVED_ON
                .lock()
                .unwrap()
                .iter()
                .find(|(p, _)| *p == old_path)
                .map(|(_, t)| *t);
            if let Some(t) = found {
                break t;
            }
            assert!(std::time::Instant::now() < deadline, "never removed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_ne!(remover, worker, "closed and removed on the async worker");
        assert!(!old_path.exists());
        assert!(store.db().path().ends_with("db-000002"));
    }

    #[test]
    fn replace_switches_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SmStore::open(dir.path()).unwrap();
        let db = store.db();
        db.db()
            .put_cf(db.cf(CF_META).unwrap(), b"k", b"old")
            .unwrap();
        let old_path = db.path().to_owned();
        drop(db);
        store
            .replace_with(|fresh| {
                fresh.db().put_cf(fresh.cf(CF_META)?, b"k", b"new")?;
                Ok(())
            })
            .unwrap();
        let db = store.db();
        assert_eq!(
            db.db().get_cf(db.cf(CF_META).unwrap(), b"k").unwrap(),
            Some(b"new".to_vec())
        );
        assert!(
            !old_path.exists(),
            "replaced database is removed once unused"
        );
        drop(db);
        drop(store);
        let store = SmStore::open(dir.path()).unwrap();
        let db = store.db();
        assert_eq!(
            db.db().get_cf(db.cf(CF_META).unwrap(), b"k").unwrap(),
            Some(b"new".to_vec())
        );
    }

    /// A load that fails leaves nothing behind by the time `replace_with` returns, even
    /// inside a runtime (where a replaced database's removal is deferred to the pool): the
    /// next install reuses the name, and a late removal would delete the live database.
    #[test]
    fn a_failed_load_is_removed_before_replace_with_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = SmStore::open(dir.path()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _inside = rt.enter();
        let res = store.replace_with(|_| Err(StorageError::corrupt("test", "boom")));
        assert!(res.is_err());
        assert!(
            !dir.path().join("db-000002").exists(),
            "the failed database is still there"
        );
        let fresh = store
            .replace_with(|fresh| {
                fresh.db().put_cf(fresh.cf(CF_META)?, b"k", b"new")?;
                Ok(())
            })
            .unwrap();
        assert!(fresh.path().ends_with("db-000002"));
        drop(fresh);
        drop(_inside);
        drop(rt);
        let db = store.db();
        assert_eq!(
            db.db().get_cf(db.cf(CF_META).unwrap(), b"k").unwrap(),
            Some(b"new".to_vec())
        );
        assert!(db.path().exists());
    }

    #[test]
    fn failed_load_keeps_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = SmStore::open(dir.path()).unwrap();
        let res = store.replace_with(|_| Err(StorageError::corrupt("test", "boom")));
        assert!(res.is_err());
        assert!(store.db().path().ends_with("db-000001"));
        drop(store);
        let store = SmStore::open(dir.path()).unwrap();
        assert!(store.db().path().ends_with("db-000001"));
    }
}
