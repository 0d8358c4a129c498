//! openraft's state machine on [`SmStore`]: applies each log entry in one RocksDB write
//! batch that also carries the applied log id, the membership, the store counters and the
//! chained state digest — so what is applied and the record of having applied it can never
//! disagree after a crash.

// openraft's `StorageError` is the error type its traits impose.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use tokio::io::AsyncSeekExt;
use tokio::sync::watch;

use super::snapshot::{self, SnapshotHeader};
use super::{
    sto_err, Command, CommandOutcome, Entry, LogId, RaftStorageError, Response, SnapshotMeta,
    StoredMembership, TypeConfig,
};
use crate::eventstore::apply::{Applier, HeadCache};
use crate::eventstore::{StoreState, STATE_KEY};
use crate::storage::sm_db::{SmDb, SmWriteBatch, CF_META};
use crate::storage::{decode, encode, fsync_dir, SmStore, StorageError};
use crate::telemetry::store::{RetentionView, TelemetryApplier};
use crate::workflow::store::WorkflowApplier;

pub const KEY_APPLIED: &[u8] = b"applied";
pub const KEY_MEMBERSHIP: &[u8] = b"membership";
pub const KEY_DIGEST: &[u8] = b"digest";

const CURRENT_SNAPSHOT: &str = "current.snap";

/// What the state machine has applied, published after every apply for readers, metrics
/// and the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedStatus {
    pub applied: Option<LogId>,
    /// The next global position (= number of events stored).
    pub next_global_position: u64,
    /// Chained digest of every write applied up to `applied`.
    pub digest: u128,
}

/// The state machine's bookkeeping, cached from its meta column family.
#[derive(Default)]
struct Cached {
    applied: Option<LogId>,
    membership: StoredMembership,
    state: StoreState,
    digest: u128,
    /// Stream heads as committed to this database.
    heads: HeadCache,
}

impl Cached {
    fn load(db: &SmDb) -> Result<Cached, StorageError> {
        let meta = db.cf(CF_META)?;
        let get = |k: &[u8]| db.db().get_pinned_cf(meta, k);
        Ok(Cached {
            applied: match get(KEY_APPLIED)? {
                Some(b) => decode("applied log id", &b)?,
                None => None,
            },
            membership: match get(KEY_MEMBERSHIP)? {
                Some(b) => decode("membership", &b)?,
                None => StoredMembership::default(),
            },
            state: StoreState::load(db)?,
            digest: match get(KEY_DIGEST)? {
                Some(b) => decode("digest", &b)?,
                None => 0,
            },
            heads: HeadCache::default(),
        })
    }

    fn status(&self) -> AppliedStatus {
        AppliedStatus {
            applied: self.applied,
            next_global_position: self.state.next_global_position,
            digest: self.digest,
        }
    }
}

pub struct StateMachine {
    store: Arc<SmStore>,
    retention: Arc<RetentionView>,
    snapshot_dir: PathBuf,
    cached: Cached,
    status_tx: watch::Sender<AppliedStatus>,
}

impl StateMachine {
    /// Opens the state machine under `dir` (`dir/sm` for the database, `dir/snapshots`).
    pub fn open(dir: &Path) -> Result<StateMachine, StorageError> {
        let retention = RetentionView::new();
        let store = Arc::new(SmStore::open_with(&dir.join("sm"), retention.clone())?);
        let snapshot_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir)?;
        // Leftovers of interrupted builds or installs.
        for entry in std::fs::read_dir(&snapshot_dir)? {
            let entry = entry?;
            if entry.file_name() != CURRENT_SNAPSHOT {
                std::fs::remove_file(entry.path())?;
            }
        }
        let cached = Cached::load(&store.db())?;
        retention.reload(&store.db())?;
        let (status_tx, _) = watch::channel(cached.status());
        Ok(StateMachine {
            store,
            retention,
            snapshot_dir,
            cached,
            status_tx,
        })
    }

    pub fn store(&self) -> Arc<SmStore> {
        self.store.clone()
    }

    /// Follows what has been applied.
    pub fn status(&self) -> watch::Receiver<AppliedStatus> {
        self.status_tx.subscribe()
    }

    fn apply_one(&mut self, db: &SmDb, entry: Entry) -> Result<Response, StorageError> {
        let mut wb = SmWriteBatch::new(db, self.cached.digest, entry.log_id.index);
        let mut outcomes = Vec::new();
        let mut touched_heads = HashMap::new();
        let is_membership = matches!(entry.payload, EntryPayload::Membership(_));
        match entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(req) => {
                let mut applier = Applier::new(
                    db,
                    &self.cached.heads,
                    std::mem::take(&mut self.cached.state),
                );
                let mut workflows = WorkflowApplier::new(db);
                let mut telemetry = TelemetryApplier::new(db, entry.log_id.index);
                let commit_time = applier.commit_time(req.commit_time_ns);
                let window = req.dedupe_window_ns;
                outcomes.reserve(req.commands.len());
                for cmd in &req.commands {
                    outcomes.push(match cmd {
                        Command::Append(a) => CommandOutcome::Append(applier.append(
                            &mut wb,
                            commit_time,
                            window,
                            a,
                        )?),
                        Command::Workflow(w) => CommandOutcome::Workflow(workflows.apply(
                            &mut applier,
                            &mut wb,
                            commit_time,
                            window,
                            w,
                        )?),
                        Command::Telemetry(t) => {
                            CommandOutcome::Telemetry(telemetry.apply(&mut wb, commit_time, t)?)
                        }
                    });
                }
                applier.finish_entry(
                    &mut wb,
                    commit_time,
                    entry.log_id.index,
                    req.dedupe_window_ns,
                )?;
                let (state, heads) = applier.into_parts();
                self.cached.state = state;
                touched_heads = heads;
            }
            EntryPayload::Membership(m) => {
                self.cached.membership = StoredMembership::new(Some(entry.log_id), m);
                wb.fold_bytes(&encode("membership", &self.cached.membership)?);
            }
        }
        self.cached.applied = Some(entry.log_id);
        self.cached.digest = wb.digest();
        wb.put_meta(
            KEY_APPLIED,
            &encode("applied log id", &self.cached.applied)?,
        )?;
        if is_membership {
            // Stored when it changes only; `applied_state` reads the last one written.
            wb.put_meta(
                KEY_MEMBERSHIP,
                &encode("membership", &self.cached.membership)?,
            )?;
        }
        wb.put_meta(STATE_KEY, &self.cached.state.encode()?)?;
        wb.put_meta(KEY_DIGEST, &encode("digest", &self.cached.digest)?)?;
        wb.commit()?;
        self.cached.heads.commit(touched_heads);
        // The compaction filter's retention state moves only at durable points
        // (`SmDb::sync`), never here: see `telemetry::retention`.
        Ok(Response { outcomes })
    }

    fn publish(&self) {
        self.status_tx.send_replace(self.cached.status());
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        Ok((self.cached.applied, self.cached.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let db = self.store.db();
        let mut replies = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            match self.apply_one(&db, entry) {
                Ok(r) => replies.push(r),
                Err(e) => {
                    // The cache may be ahead of the database now; openraft stops the node on
                    // this error, and a restart reloads the cache from disk.
                    return Err(sto_err(ErrorVerb::Write, ErrorSubject::Apply(log_id), e));
                }
            }
        }
        self.publish();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            dir: self.snapshot_dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, RaftStorageError> {
        let path = self
            .snapshot_dir
            .join(format!("recv-{}.tmp", uuid::Uuid::new_v4()));
        let err = |e: std::io::Error| sto_err(ErrorVerb::Write, ErrorSubject::Snapshot(None), e);
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(err)?;
        // An anonymous file: the handle keeps the data, nothing is left behind on any exit.
        tokio::fs::remove_file(&path).await.map_err(err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), RaftStorageError> {
        let sig = Some(meta.signature());
        let err =
            |e: StorageError| sto_err(ErrorVerb::Write, ErrorSubject::Snapshot(sig.clone()), e);
        let mut file = *snapshot;
        file.seek(SeekFrom::Start(0))
            .await
            .map_err(|e| err(e.into()))?;
        let std_file = file.into_std().await;
        let store = self.store.clone();
        let dir = self.snapshot_dir.clone();
        let want = meta.clone();
        let installed =
            tokio::task::spawn_blocking(move || install_blocking(&store, &dir, std_file, &want))
                .await
                .map_err(|e| err(StorageError::Io(std::io::Error::other(e))))?;
        installed.map_err(err)?;
        self.cached = Cached::load(&self.store.db()).map_err(err)?;
        self.retention.reload(&self.store.db()).map_err(err)?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        current_snapshot(&self.snapshot_dir).await
    }
}

/// Copies the received snapshot to disk, verifies it, loads it into a fresh database and
/// switches to it; then makes it the current snapshot.
fn install_blocking(
    store: &SmStore,
    dir: &Path,
    mut received: std::fs::File,
    want: &SnapshotMeta,
) -> Result<(), StorageError> {
    let tmp = dir.join(format!("install-{}.tmp", uuid::Uuid::new_v4()));
    let copy = (|| {
        let mut out = std::fs::File::create(&tmp)?;
        std::io::copy(&mut received, &mut out)?;
        out.sync_all()?;
        let header = snapshot::read_header(&mut std::fs::File::open(&tmp)?)?;
        if header.meta != *want {
            return Err(StorageError::corrupt(
                "snapshot file",
                format!("header {:?} does not match {:?}", header.meta, want),
            ));
        }
        store.replace_with(|fresh| snapshot::load(&tmp, fresh).map(|_| ()))?;
        std::fs::rename(&tmp, dir.join(CURRENT_SNAPSHOT))?;
        fsync_dir(dir)?;
        Ok(())
    })();
    if copy.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    copy
}

async fn current_snapshot(dir: &Path) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
    let path = dir.join(CURRENT_SNAPSHOT);
    let err = |e: StorageError| sto_err(ErrorVerb::Read, ErrorSubject::Snapshot(None), e);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.into())),
    };
    let header: SnapshotHeader = snapshot::read_header(&mut file).map_err(err)?;
    let mut file = tokio::fs::File::from_std(file);
    file.seek(SeekFrom::Start(0))
        .await
        .map_err(|e| err(e.into()))?;
    Ok(Some(Snapshot {
        meta: header.meta,
        snapshot: Box::new(file),
    }))
}

/// Builds snapshots from a RocksDB point-in-time view while applies go on.
pub struct SnapshotBuilder {
    store: Arc<SmStore>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let store = self.store.clone();
        let db = self.store.db();
        let dir = self.dir.clone();
        let err = |e: StorageError| sto_err(ErrorVerb::Write, ErrorSubject::Snapshot(None), e);
        let (header, file) = tokio::task::spawn_blocking(move || {
            let tmp = dir.join(format!("build-{}.tmp", uuid::Uuid::new_v4()));
            let built = (|| {
                let dead = |db: &SmDb, view: &rocksdb::Snapshot<'_>| store.dead_rule(db, view);
                let header = snapshot::write(&db, &tmp, &dead, |last| {
                    let (term, index) = last.map_or((0, 0), |l| (l.leader_id.term, l.index));
                    format!("{term}-{index}-{}", uuid::Uuid::new_v4().simple())
                })?;
                // The log may be purged up to this snapshot once it is reported: make the
                // state machine durable at least up to the view the snapshot was taken from.
                db.sync()?;
                // Hold the file open across the rename: it is this build's snapshot that is
                // returned, whatever replaces `current` later.
                let file = std::fs::File::open(&tmp)?;
                std::fs::rename(&tmp, dir.join(CURRENT_SNAPSHOT))?;
                fsync_dir(&dir)?;
                Ok((header, file))
            })();
            if built.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            built
        })
        .await
        .map_err(|e| err(StorageError::Io(std::io::Error::other(e))))?
        .map_err(err)?;
        Ok(Snapshot {
            meta: header.meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

/// A whole-state digest taken from one point-in-time view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanDigest {
    pub applied: Option<LogId>,
    /// The chained digest of writes stored at `applied`.
    pub chained: u128,
    /// xxh3-128 over every (column family, key, value), column families in their fixed
    /// order, keys in RocksDB order.
    pub scan: u128,
    pub records: u64,
}

/// Digests the whole state machine. Unlike the chained digest, which vouches for the writes
/// that were applied, this vouches for what is on disk now: a record changed or lost at
/// rest shows up here.
pub fn scan_digest(store: &SmStore) -> Result<ScanDigest, StorageError> {
    use xxhash_rust::xxh3::Xxh3;
    let db = store.db();
    let view = db.db().snapshot();
    let meta = db.cf(CF_META)?;
    let applied: Option<LogId> = match view.get_cf(meta, KEY_APPLIED)? {
        Some(b) => decode("applied log id", &b)?,
        None => None,
    };
    let chained: u128 = match view.get_cf(meta, KEY_DIGEST)? {
        Some(b) => decode("digest", &b)?,
        None => 0,
    };
    // Expired records vanish at compaction, on each replica's own schedule: skip what the
    // state in this same view declares dead.
    let dead = store.dead_rule(&db, &view)?;
    let mut hasher = Xxh3::new();
    let mut records = 0u64;
    for (i, name) in crate::storage::sm_db::SM_CFS.iter().enumerate() {
        for item in view.iterator_cf(db.cf(name)?, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            if dead(name, &k, &v) {
                continue;
            }
            hasher.update(&[i as u8]);
            hasher.update(&(k.len() as u32).to_le_bytes());
            hasher.update(&k);
            hasher.update(&(v.len() as u32).to_le_bytes());
            hasher.update(&v);
            records += 1;
        }
    }
    Ok(ScanDigest {
        applied,
        chained,
        scan: hasher.digest128(),
        records,
    })
}
