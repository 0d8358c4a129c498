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
use crate::eventstore::AppendOutcome;
use crate::eventstore::{
    check_dedupe_window, load_dedupe_window, load_rules_version, StoreState, APPLY_RULES_VERSION,
    MAX_DEDUPE_WINDOW_NS, RULES_KEY, STATE_KEY, WINDOW_KEY,
};
use crate::storage::sm_db::{SmDb, SmWriteBatch, CF_META};
use crate::storage::{decode, encode, fsync_dir, SmStore, StorageError};
use crate::telemetry::ingest::TelemetryApplier;
use crate::telemetry::retention::{ReadView, RetentionView};
use crate::telemetry::stream::{Applied, Feed};
use crate::workflow::store::WorkflowApplier;
use crate::workflow::store::WorkflowOutcome;

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
    /// The replicated time of the last entry applied (ns since the Unix epoch; 0: none).
    pub last_commit_time_ns: i64,
}

/// The state machine's bookkeeping, cached from its meta column family.
#[derive(Default)]
struct Cached {
    applied: Option<LogId>,
    membership: StoredMembership,
    state: StoreState,
    digest: u128,
    /// The replicated idempotency window (None until set: each entry's own is used).
    dedupe_window_ns: Option<i64>,
    /// The apply rules in force (replicated).
    rules_version: u32,
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
            dedupe_window_ns: load_dedupe_window(db)?,
            rules_version: load_rules_version(db)?,
            heads: HeadCache::default(),
        })
    }

    fn status(&self) -> AppliedStatus {
        AppliedStatus {
            applied: self.applied,
            next_global_position: self.state.next_global_position,
            digest: self.digest,
            last_commit_time_ns: self.state.last_commit_time_ns,
        }
    }
}

/// The invariants one entry's apply must keep, checked after the fact (cheap: the outcomes
/// are in memory): commit time never goes back, and the events it stored took the global
/// positions right after the previous entry's, consecutively, in command order. A breach is
/// a bug that would make this replica diverge: stop here, loudly, instead.
fn check_positions(
    before: &StoreState,
    after: &StoreState,
    commit_time_ns: i64,
    outcomes: &[CommandOutcome],
) -> Result<(), StorageError> {
    let breach = |what: String| Err(StorageError::corrupt("apply invariant", what));
    if commit_time_ns < before.last_commit_time_ns || after.last_commit_time_ns != commit_time_ns {
        return breach(format!(
            "commit time {commit_time_ns} after {}",
            before.last_commit_time_ns
        ));
    }
    let mut next = before.next_global_position;
    for o in outcomes {
        let p = match o {
            CommandOutcome::Append(AppendOutcome::Appended(p)) => p,
            CommandOutcome::Workflow(WorkflowOutcome::Applied {
                positions,
                duplicate: false,
                ..
            }) => positions,
            _ => continue,
        };
        let versions = p.last_stream_version.checked_sub(p.first_stream_version);
        let positions = p.last_global_position.checked_sub(p.first_global_position);
        if p.first_global_position != next || versions.is_none() || versions != positions {
            return breach(format!("positions {p:?} where {next} was next"));
        }
        next = p.last_global_position + 1;
    }
    if next != after.next_global_position {
        return breach(format!(
            "next position {} after storing up to {next}",
            after.next_global_position
        ));
    }
    Ok(())
}

/// The idempotency window while an entry applies.
struct Window {
    ns: i64,
    /// Set in replicated state (else the entry's own, as older versions did).
    replicated: bool,
    /// Set by this entry.
    changed: bool,
}

impl Window {
    fn set(&mut self, wb: &mut SmWriteBatch, ns: i64) -> Result<(), StorageError> {
        self.ns = ns;
        self.replicated = true;
        self.changed = true;
        wb.put(CF_META, WINDOW_KEY, &encode("dedupe window", &ns)?)
    }
}

pub struct StateMachine {
    store: Arc<SmStore>,
    retention: Arc<RetentionView>,
    snapshots: Arc<SnapshotSlot>,
    cached: Cached,
    status_tx: watch::Sender<AppliedStatus>,
    /// Tells telemetry subscribers which raw segments each entry stored, after its batch
    /// is committed (`telemetry::stream`).
    feed: Feed,
}

/// The directory holding `current.snap`, and the lock under which builds and installs
/// replace it. A snapshot build runs concurrently with apply and with installs: a slow build
/// from an older view must not rename its file over a newer installed one, so `current.snap`
/// is replaced only by a snapshot at least as new (compared under the lock).
pub struct SnapshotSlot {
    dir: PathBuf,
    lock: std::sync::Mutex<()>,
}

impl SnapshotSlot {
    pub fn new(dir: PathBuf) -> SnapshotSlot {
        SnapshotSlot {
            dir,
            lock: std::sync::Mutex::new(()),
        }
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT_SNAPSHOT)
    }

    /// The header of `current.snap`, if there is one.
    pub fn current_header(&self) -> Result<Option<SnapshotHeader>, StorageError> {
        match std::fs::File::open(self.current_path()) {
            Ok(mut f) => Ok(Some(snapshot::read_header(&mut f)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes the complete, synced snapshot file `tmp` (of `meta`) the current one, unless the
    /// current one is newer; `tmp` is gone either way (an open handle still reads it).
    /// Returns whether it became current.
    pub fn publish(&self, tmp: &Path, meta: &SnapshotMeta) -> Result<bool, StorageError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let newer_exists = self
            .current_header()?
            .is_some_and(|h| h.meta.last_log_id > meta.last_log_id);
        if newer_exists {
            std::fs::remove_file(tmp)?;
            return Ok(false);
        }
        std::fs::rename(tmp, self.current_path())?;
        fsync_dir(&self.dir)?;
        Ok(true)
    }
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
        let snapshots = Arc::new(SnapshotSlot::new(snapshot_dir));
        let mut cached = Cached::load(&store.db())?;
        // An install publishes the snapshot file before it switches the database: a crash in
        // between leaves a current snapshot newer than the state machine. Finish the install.
        if let Some(header) = snapshots.current_header()? {
            if header.meta.last_log_id > cached.applied {
                tracing::warn!(
                    "state machine at {:?} is behind its current snapshot {:?} (an install \
                     was interrupted): loading the snapshot",
                    cached.applied,
                    header.meta.last_log_id
                );
                let path = snapshots.current_path();
                store.replace_with(|fresh| snapshot::load(&path, fresh).map(|_| ()))?;
                cached = Cached::load(&store.db())?;
            }
        }
        retention.reload(&store.db())?;
        let (status_tx, _) = watch::channel(cached.status());
        Ok(StateMachine {
            store,
            retention,
            snapshots,
            cached,
            status_tx,
            feed: Feed::default(),
        })
    }

    /// The feed of raw segments stored by applied entries.
    pub fn telemetry_feed(&self) -> Feed {
        self.feed.clone()
    }

    pub fn store(&self) -> Arc<SmStore> {
        self.store.clone()
    }

    /// Follows what has been applied.
    pub fn status(&self) -> watch::Receiver<AppliedStatus> {
        self.status_tx.subscribe()
    }

    fn apply_one(&mut self, db: &SmDb, entry: Entry) -> Result<Response, StorageError> {
        // Entries apply once each, in log order: anything else would fork this replica.
        if let Some(prev) = self.cached.applied {
            if entry.log_id.index <= prev.index {
                return Err(StorageError::corrupt(
                    "apply order",
                    format!(
                        "entry {} after entry {} was applied",
                        entry.log_id.index, prev.index
                    ),
                ));
            }
        }
        let mut wb = SmWriteBatch::new(db, self.cached.digest, entry.log_id.index);
        let mut outcomes = Vec::new();
        let mut touched_heads = HashMap::new();
        let mut new_window = None;
        let mut new_rules = None;
        let is_membership = matches!(entry.payload, EntryPayload::Membership(_));
        let mut written_segments = Vec::new();
        match entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(req) => {
                let before = self.cached.state.clone();
                let mut applier = Applier::new(
                    db,
                    &self.cached.heads,
                    std::mem::take(&mut self.cached.state),
                )
                .with_rules(self.cached.rules_version);
                applier.prefetch_dedupe(
                    req.commands
                        .iter()
                        .flat_map(|c| match c {
                            Command::Append(a) => a.events.as_slice(),
                            _ => &[],
                        })
                        .map(|e| &e.event_id),
                )?;
                let mut workflows = WorkflowApplier::new(db);
                let mut telemetry = TelemetryApplier::new(db, entry.log_id.index);
                let mut policies = crate::limits::PolicyApplier::new(db);
                let commit_time = applier.commit_time(req.commit_time_ns);
                // The window is replicated state once set (`AdoptRules` seeds it,
                // `SetDedupeWindow` changes it); until then each entry's own, as before.
                let mut window = Window {
                    ns: self
                        .cached
                        .dedupe_window_ns
                        .unwrap_or_else(|| req.dedupe_window_ns.clamp(1, MAX_DEDUPE_WINDOW_NS)),
                    replicated: self.cached.dedupe_window_ns.is_some(),
                    changed: false,
                };
                outcomes.reserve(req.commands.len());
                for cmd in &req.commands {
                    outcomes.push(match cmd {
                        Command::Append(a) => CommandOutcome::Append(applier.append(
                            &mut wb,
                            commit_time,
                            window.ns,
                            a,
                        )?),
                        Command::Workflow(w) => CommandOutcome::Workflow(workflows.apply(
                            &mut applier,
                            &mut wb,
                            commit_time,
                            window.ns,
                            w,
                        )?),
                        Command::Telemetry(t) => {
                            CommandOutcome::Telemetry(telemetry.apply(&mut wb, commit_time, t)?)
                        }
                        Command::SetDedupeWindow { window_ns } => {
                            match check_dedupe_window(*window_ns) {
                                Ok(()) => {
                                    window.set(&mut wb, *window_ns)?;
                                    CommandOutcome::DedupeWindowSet {
                                        window_ns: *window_ns,
                                    }
                                }
                                Err(reason) => CommandOutcome::Refused { reason },
                            }
                        }
                        Command::SetLimit(policy) => CommandOutcome::Limit(
                            if applier.rules_version() < crate::limits::POLICY_RULES_VERSION {
                                no_policies_yet()
                            } else {
                                policies.set(&mut wb, policy)?
                            },
                        ),
                        Command::DeleteLimit { name } => CommandOutcome::Limit(
                            if applier.rules_version() < crate::limits::POLICY_RULES_VERSION {
                                no_policies_yet()
                            } else {
                                policies.delete(&mut wb, name)?
                            },
                        ),
                        Command::AdoptRules {
                            version,
                            dedupe_window_ns,
                        } => {
                            if *version > APPLY_RULES_VERSION {
                                // The cluster adopted rules this code cannot apply (it was
                                // rolled back, or joined with an older binary). Refusing
                                // and going on would fork this replica from those that
                                // apply them: stop here, loudly, until it is upgraded.
                                return Err(StorageError::corrupt(
                                    "apply rules",
                                    format!(
                                        "entry {} adopts apply rules {version}, but this \
                                         node's code knows rules up to {APPLY_RULES_VERSION}: \
                                         upgrade this node to the cluster's version",
                                        entry.log_id.index
                                    ),
                                ));
                            } else {
                                let adopted = applier.rules_version().max(*version);
                                if adopted != applier.rules_version() {
                                    if applier.rules_version()
                                        < crate::eventstore::INDEXED_HEADS_RULES_VERSION
                                        && adopted >= crate::eventstore::INDEXED_HEADS_RULES_VERSION
                                    {
                                        crate::eventstore::drop_head_records(&mut wb)?;
                                    }
                                    wb.put(
                                        CF_META,
                                        RULES_KEY,
                                        &encode("apply rules version", &adopted)?,
                                    )?;
                                    applier.set_rules(adopted);
                                    new_rules = Some(adopted);
                                }
                                if !window.replicated
                                    && check_dedupe_window(*dedupe_window_ns).is_ok()
                                {
                                    window.set(&mut wb, *dedupe_window_ns)?;
                                }
                                CommandOutcome::RulesAdopted { version: adopted }
                            }
                        }
                    });
                }
                applier.finish_entry(&mut wb, commit_time, entry.log_id.index, window.ns)?;
                if self.feed.is_heard() {
                    written_segments = telemetry.written();
                }
                new_window = window.changed.then_some(window.ns);
                let (state, heads) = applier.into_parts();
                check_positions(&before, &state, commit_time, &outcomes)?;
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
        if !written_segments.is_empty() {
            // After the commit: a subscriber reads each segment from the store by its key.
            self.feed.publish(Applied::Segments {
                index: entry.log_id.index,
                segments: written_segments,
            });
        }
        self.cached.heads.commit(touched_heads);
        if new_window.is_some() {
            self.cached.dedupe_window_ns = new_window;
        }
        if let Some(r) = new_rules {
            self.cached.rules_version = r;
        }
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
            slot: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, RaftStorageError> {
        let path = self
            .snapshots
            .dir
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
        let slot = self.snapshots.clone();
        let want = meta.clone();
        let installed =
            tokio::task::spawn_blocking(move || install_blocking(&store, &slot, std_file, &want))
                .await
                .map_err(|e| err(StorageError::Io(std::io::Error::other(e))))?;
        installed.map_err(err)?;
        self.cached = Cached::load(&self.store.db()).map_err(err)?;
        self.retention.reload(&self.store.db()).map_err(err)?;
        // Entries were skipped: live telemetry subscribers cannot tell what they missed
        // from the feed (they resume from their cursors, from the store).
        self.feed.publish(Applied::Replaced);
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        current_snapshot(&self.snapshots.dir).await
    }
}

/// Copies the received snapshot to disk, verifies it while loading it into a fresh
/// database, makes it the current snapshot, then switches to the fresh database. The file
/// is published first: a crash before the switch is finished at the next open (see
/// [`StateMachine::open`]), so `current.snap` is never older than the state machine it
/// produced.
fn install_blocking(
    store: &SmStore,
    slot: &SnapshotSlot,
    mut received: std::fs::File,
    want: &SnapshotMeta,
) -> Result<(), StorageError> {
    let tmp = slot
        .dir
        .join(format!("install-{}.tmp", uuid::Uuid::new_v4()));
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
        store.replace_with(|fresh| {
            snapshot::load(&tmp, fresh)?;
            fresh.sync()?;
            slot.publish(&tmp, want).map(|_| ())
        })?;
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
    slot: Arc<SnapshotSlot>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let store = self.store.clone();
        let db = self.store.db();
        let slot = self.slot.clone();
        let err = |e: StorageError| sto_err(ErrorVerb::Write, ErrorSubject::Snapshot(None), e);
        let (header, file) = tokio::task::spawn_blocking(move || {
            let tmp = slot.dir.join(format!("build-{}.tmp", uuid::Uuid::new_v4()));
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
                // returned, whatever replaces `current` later (or if a newer one, installed
                // while this build ran, stays current).
                let file = std::fs::File::open(&tmp)?;
                slot.publish(&tmp, &header.meta)?;
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

/// The index of the last entry applied in `view` (0: none).
pub fn applied_index(db: &SmDb, view: &ReadView<'_>) -> Result<u64, StorageError> {
    let applied: Option<LogId> = match view.get_cf(db.cf(CF_META)?, KEY_APPLIED)? {
        Some(b) => decode("applied log id", &b)?,
        None => None,
    };
    Ok(applied.map_or(0, |l| l.index))
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

/// A policy change before the cluster adopted the rules that know policies: refused on
/// every replica alike.
fn no_policies_yet() -> crate::limits::PolicyOutcome {
    crate::limits::PolicyOutcome::Refused {
        reason: format!(
            "the cluster has not adopted apply rules {} (rate-limit policies) yet: every voter \
             must run this version, then a leader adopts them within seconds",
            crate::limits::POLICY_RULES_VERSION
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstore::{AppendCommand, AppendOutcome};
    use crate::model::{ExpectedVersion, NewEvent};
    use crate::raft::Request;
    use crate::workflow::store::{WorkflowCommand, WorkflowOutcome};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64, commands: Vec<Command>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                commit_time_ns: 1_000_000_000 * index as i64,
                dedupe_window_ns: 60_000_000_000,
                commands,
            }),
        }
    }

    fn append(stream: &str, n: usize) -> Command {
        Command::Append(AppendCommand {
            stream: stream.into(),
            expected: ExpectedVersion::Any,
            events: (0..n)
                .map(|_| NewEvent::new(uuid::Uuid::now_v7(), "T", b"{}"))
                .collect(),
        })
    }

    fn adopt(window_secs: i64) -> Command {
        Command::AdoptRules {
            version: APPLY_RULES_VERSION,
            dedupe_window_ns: window_secs * 1_000_000_000,
        }
    }

    async fn apply(sm: &mut StateMachine, e: Entry) -> Vec<CommandOutcome> {
        let mut r = sm.apply([e]).await.expect("apply never fails on bad input");
        r.pop().unwrap().outcomes
    }

    fn appended(o: &CommandOutcome) -> (u64, u64) {
        match o {
            CommandOutcome::Append(AppendOutcome::Appended(p)) => {
                (p.last_stream_version, p.last_global_position)
            }
            other => panic!("expected an append, got {other:?}"),
        }
    }

    /// Issue 9.1: commands that skipped edge validation reach apply. They are refused there,
    /// per command, deterministically: no panic, no storage error halting the state
    /// machine, no wrapped positions.
    #[tokio::test]
    async fn apply_refuses_malformed_commands_and_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let empty_workflow = Command::Workflow(WorkflowCommand {
            workflow_id: "wf-1".into(),
            expected: ExpectedVersion::Any,
            events: vec![],
            snapshot_every: 100,
        });
        let bad_stream = append("has space\0nul", 1);
        let mut out = apply(
            &mut sm,
            entry(
                1,
                vec![
                    adopt(60),
                    append("s", 0),
                    empty_workflow,
                    bad_stream,
                    append("s", 2),
                ],
            ),
        )
        .await;
        assert_eq!(
            out.remove(0),
            CommandOutcome::RulesAdopted {
                version: APPLY_RULES_VERSION
            }
        );
        assert!(
            matches!(&out[0], CommandOutcome::Append(AppendOutcome::Rejected { reason }) if reason.contains("no events")),
            "{:?}",
            out[0]
        );
        assert!(
            matches!(
                &out[1],
                CommandOutcome::Workflow(WorkflowOutcome::Rejected { .. })
            ),
            "{:?}",
            out[1]
        );
        assert!(
            matches!(
                &out[2],
                CommandOutcome::Append(AppendOutcome::Rejected { .. })
            ),
            "{:?}",
            out[2]
        );
        assert_eq!(appended(&out[3]), (1, 1), "positions start at 0, no wrap");
        // The state machine goes on, and the stream's head is intact.
        let out = apply(&mut sm, entry(2, vec![append("s", 1)])).await;
        assert_eq!(appended(&out[0]), (2, 2));
        assert_eq!(sm.status().borrow().next_global_position, 3);
    }

    /// Issue 10.6: an entry applied twice or out of order stops the state machine with an
    /// error (a loud stop) instead of forking this replica.
    #[tokio::test]
    async fn entries_apply_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        apply(&mut sm, entry(2, vec![append("s", 1)])).await;
        for index in [2, 1] {
            let e = sm.apply([entry(index, vec![append("s", 1)])]).await;
            assert!(e.is_err(), "entry {index} applied again");
        }
        assert_eq!(sm.status().borrow().next_global_position, 1);
    }

    /// Issue 9.12: a plain append cannot write a workflow's stream, whatever the edge did —
    /// from the log position where the cluster adopted the rules that say so. Before it,
    /// entries apply as older versions applied them, so that a replica replaying them after
    /// an upgrade agrees with the replicas that applied them before.
    #[tokio::test]
    async fn plain_appends_to_workflow_streams_are_refused_in_apply_once_the_rules_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let out = apply(&mut sm, entry(1, vec![append("workflow-wf-3", 1)])).await;
        assert_eq!(appended(&out[0]), (0, 0), "version 1 rules, as before");
        let out = apply(
            &mut sm,
            entry(2, vec![adopt(60), append("workflow-wf-3", 1)]),
        )
        .await;
        assert!(
            matches!(&out[1], CommandOutcome::Append(AppendOutcome::Rejected { reason }) if reason.contains("Workflows API")),
            "{:?}",
            out[1]
        );
        assert_eq!(sm.status().borrow().next_global_position, 1);
        // Adopted for good: a restart keeps the rules.
        drop(sm);
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let out = apply(&mut sm, entry(3, vec![append("workflow-wf-3", 1)])).await;
        assert!(matches!(
            &out[0],
            CommandOutcome::Append(AppendOutcome::Rejected { .. })
        ));
    }

    fn entry_at(index: u64, secs: i64, window_secs: i64, commands: Vec<Command>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                commit_time_ns: secs * 1_000_000_000,
                dedupe_window_ns: window_secs * 1_000_000_000,
                commands,
            }),
        }
    }

    /// Issue 9.9e: the idempotency window is replicated state. Leaders configured with
    /// different windows do not change it; only `SetDedupeWindow` does.
    #[tokio::test]
    async fn the_idempotency_window_is_replicated_state_not_the_leaders_setting() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let cmd = append("s", 1);
        // Adopting the rules seeds the window: 10 s (the proposing leader's setting).
        let out = apply(&mut sm, entry_at(1, 100, 10, vec![adopt(10), cmd.clone()])).await;
        assert_eq!(appended(&out[1]), (0, 0));
        // A leader configured with 1000 s: the id expired after 10 s all the same, so the
        // retry at 120 s is a new append, not a duplicate.
        let out = apply(&mut sm, entry_at(2, 120, 1000, vec![cmd.clone()])).await;
        assert_eq!(
            appended(&out[0]),
            (1, 1),
            "expired by the replicated window"
        );
        // The operator sets 1000 s: from then on a retry within it is a duplicate.
        let out = apply(
            &mut sm,
            entry_at(
                3,
                121,
                10,
                vec![Command::SetDedupeWindow {
                    window_ns: 1_000_000_000_000,
                }],
            ),
        )
        .await;
        assert_eq!(
            out[0],
            CommandOutcome::DedupeWindowSet {
                window_ns: 1_000_000_000_000
            }
        );
        let out = apply(&mut sm, entry_at(4, 500, 10, vec![cmd.clone()])).await;
        assert!(
            matches!(out[0], CommandOutcome::Append(AppendOutcome::Duplicate(_))),
            "{:?}",
            out[0]
        );
        // A window out of range is refused, and the window stays.
        let out = apply(
            &mut sm,
            entry_at(5, 501, 10, vec![Command::SetDedupeWindow { window_ns: 0 }]),
        )
        .await;
        assert!(matches!(out[0], CommandOutcome::Refused { .. }));
        // It survives a restart.
        drop(sm);
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let out = apply(&mut sm, entry_at(6, 900, 10, vec![cmd])).await;
        assert!(matches!(
            out[0],
            CommandOutcome::Append(AppendOutcome::Duplicate(_))
        ));
    }

    /// The idempotency records an entry reads ahead (`Applier::prefetch_dedupe`) are
    /// checked the way lookups were: against the window in force at each command (a window
    /// change earlier in the same entry counts), and after what earlier commands of the
    /// entry stored.
    #[tokio::test]
    async fn read_ahead_records_meet_the_window_and_the_entrys_own_appends() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let cmd = append("s", 1);
        let out = apply(
            &mut sm,
            entry_at(1, 100, 1000, vec![adopt(1000), cmd.clone()]),
        )
        .await;
        assert_eq!(appended(&out[1]), (0, 0));
        let window = |secs: i64| Command::SetDedupeWindow {
            window_ns: secs * 1_000_000_000,
        };
        let out = apply(
            &mut sm,
            entry_at(
                2,
                105,
                1000,
                vec![
                    // Within 1000 s: the read-ahead record says duplicate.
                    cmd.clone(),
                    // A 1 s window from here on: the same record has expired.
                    window(1),
                    cmd.clone(),
                    // What the command before stored answers the next retry.
                    cmd.clone(),
                ],
            ),
        )
        .await;
        assert!(
            matches!(out[0], CommandOutcome::Append(AppendOutcome::Duplicate(_))),
            "{:?}",
            out[0]
        );
        assert_eq!(
            appended(&out[2]),
            (1, 1),
            "expired by the entry's own window"
        );
        match &out[3] {
            CommandOutcome::Append(AppendOutcome::Duplicate(p)) => {
                assert_eq!((p.last_stream_version, p.last_global_position), (1, 1));
            }
            other => panic!("expected a duplicate of the retry, got {other:?}"),
        }
    }

    /// Review of issue 10: an entry adopting rules this code does not know stops the state
    /// machine (it used to be refused and skipped, which forks this replica from those that
    /// apply them).
    #[tokio::test]
    async fn rules_this_code_does_not_know_stop_the_state_machine() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        apply(&mut sm, entry(1, vec![append("s", 1)])).await;
        let newer = Command::AdoptRules {
            version: APPLY_RULES_VERSION + 1,
            dedupe_window_ns: 60_000_000_000,
        };
        let err = sm
            .apply([entry(2, vec![newer])])
            .await
            .expect_err("an entry this code cannot apply");
        assert!(err.to_string().contains("upgrade this node"), "{err}");
        assert_eq!(
            sm.status().borrow().applied.map(|l| l.index),
            Some(1),
            "nothing of the entry was applied"
        );
    }

    /// Rate-limit policies are replicated state from rules version 3 on: refused alike on
    /// every replica before; within one entry a later change sees an earlier one; kept
    /// across a restart.
    #[tokio::test]
    async fn limit_policies_apply_from_rules_3_and_see_their_entry() {
        use crate::limits::{Algorithm, KeyBy, LimitPolicy, PolicyOutcome};
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let policy = |name: &str, burst| {
            Command::SetLimit(LimitPolicy {
                name: name.into(),
                methods: vec![],
                key: KeyBy::Shared,
                algorithm: Algorithm::TokenBucket {
                    burst,
                    refill_millis: 1000,
                },
                shadow: false,
            })
        };
        let out = apply(&mut sm, entry_at(1, 100, 10, vec![policy("a", 5)])).await;
        assert!(
            matches!(&out[0], CommandOutcome::Limit(PolicyOutcome::Refused { reason }) if reason.contains("rules 3")),
            "{out:?}"
        );
        assert!(crate::limits::load_all(&sm.store().db())
            .unwrap()
            .is_empty());
        apply(&mut sm, entry_at(2, 101, 10, vec![adopt(10)])).await;
        let out = apply(
            &mut sm,
            entry_at(
                3,
                102,
                10,
                vec![
                    policy("a", 5),
                    policy("a", 6),
                    policy("b", 7),
                    Command::DeleteLimit { name: "b".into() },
                    Command::DeleteLimit { name: "b".into() },
                    policy("bad name", 1),
                ],
            ),
        )
        .await;
        assert_eq!(
            out[..5],
            [
                CommandOutcome::Limit(PolicyOutcome::Set { replaced: false }),
                CommandOutcome::Limit(PolicyOutcome::Set { replaced: true }),
                CommandOutcome::Limit(PolicyOutcome::Set { replaced: false }),
                CommandOutcome::Limit(PolicyOutcome::Deleted { existed: true }),
                CommandOutcome::Limit(PolicyOutcome::Deleted { existed: false }),
            ]
        );
        assert!(matches!(
            out[5],
            CommandOutcome::Limit(PolicyOutcome::Refused { .. })
        ));
        drop(sm);
        let sm = StateMachine::open(dir.path()).unwrap();
        let all = crate::limits::load_all(&sm.store().db()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(Command::SetLimit(all[0].clone()), policy("a", 6));
    }

    /// The stream head records in the state machine, by stream.
    fn head_records(sm: &StateMachine) -> Vec<String> {
        let db = sm.store().db();
        let cf = db.cf(crate::storage::sm_db::CF_STREAMS).unwrap();
        db.db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|kv| String::from_utf8(kv.unwrap().0.to_vec()).unwrap())
            .collect()
    }

    /// Rules 4: an append writes no head record (the head is the last key of the stream's
    /// index). Before them, entries write the records as older code did (the digest of a
    /// replayed log must not change); the entry adopting them removes those records; and
    /// streams written before go on from their last version, after a restart too (an empty
    /// head cache), read from the index.
    #[tokio::test]
    async fn rules_4_keep_no_head_records_and_streams_go_on_from_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let out = apply(&mut sm, entry(1, vec![append("s", 2), append("t", 1)])).await;
        assert_eq!((appended(&out[0]).0, appended(&out[1]).0), (1, 0));
        assert_eq!(head_records(&sm), ["s", "t"], "rules 1 write head records");
        let out = apply(&mut sm, entry(2, vec![adopt(60), append("s", 1)])).await;
        assert_eq!(
            out[0],
            CommandOutcome::RulesAdopted {
                version: APPLY_RULES_VERSION
            }
        );
        assert_eq!(appended(&out[1]).0, 2);
        assert!(head_records(&sm).is_empty(), "{:?}", head_records(&sm));
        drop(sm);
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let out = apply(
            &mut sm,
            entry(3, vec![append("t", 1), append("s", 2), append("u", 1)]),
        )
        .await;
        let versions: Vec<u64> = out.iter().map(|o| appended(o).0).collect();
        assert_eq!(versions, [1, 4, 0]);
        assert!(head_records(&sm).is_empty());
        let db = sm.store().db();
        for (stream, head) in [("s", Some(4)), ("t", Some(1)), ("u", Some(0)), ("v", None)] {
            assert_eq!(
                crate::eventstore::read::stream_head(&db, stream).unwrap(),
                head,
                "{stream}"
            );
        }
    }

    async fn build(sm: &mut StateMachine) -> SnapshotMeta {
        let mut b = sm.get_snapshot_builder().await;
        b.build_snapshot().await.unwrap().meta
    }

    /// Issue 9.6: a build that finishes after a newer snapshot became current (a slow build
    /// racing an install) does not replace it.
    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        apply(&mut sm, entry(1, vec![append("s", 1)])).await;
        let old = build(&mut sm).await;
        let old_copy = dir.path().join("old.snap");
        std::fs::copy(sm.snapshots.current_path(), &old_copy).unwrap();
        apply(&mut sm, entry(2, vec![append("s", 1)])).await;
        let new = build(&mut sm).await;
        assert!(new.last_log_id > old.last_log_id);
        // The slow build publishes last.
        assert!(!sm.snapshots.publish(&old_copy, &old).unwrap());
        assert!(!old_copy.exists(), "the losing file is removed");
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, new.last_log_id);
    }

    /// Issue 9.6: a crash between an install's publishing of the snapshot file and its
    /// switch to the new database is finished at the next open: the state machine is never
    /// behind its current snapshot.
    #[tokio::test]
    async fn an_interrupted_install_is_finished_at_open() {
        let leader_dir = tempfile::tempdir().unwrap();
        let mut leader = StateMachine::open(leader_dir.path()).unwrap();
        for i in 1..=3 {
            apply(&mut leader, entry(i, vec![append("s", 2)])).await;
        }
        let meta = build(&mut leader).await;
        let want = leader.status().borrow().clone();

        let dir = tempfile::tempdir().unwrap();
        {
            let mut follower = StateMachine::open(dir.path()).unwrap();
            apply(&mut follower, entry(1, vec![append("s", 2)])).await;
        }
        // The install published the file, then the process died.
        std::fs::copy(
            leader.snapshots.current_path(),
            dir.path().join("snapshots").join(CURRENT_SNAPSHOT),
        )
        .unwrap();
        let follower = StateMachine::open(dir.path()).unwrap();
        let got = follower.status().borrow().clone();
        assert_eq!(got.applied, meta.last_log_id);
        assert_eq!(got, want, "same applied index, positions and digest");
    }
}
