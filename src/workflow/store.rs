//! Workflows in the replicated store: applying workflow commands inside the state machine
//! (transition rules checked against the projection, atomically with the append), and the
//! server-side queries — state now, at a version, at a time — answered from projection
//! snapshots plus the few events after them.
//!
//! A workflow's events live in the event store, in stream `workflow-{id}`: there is no
//! separate copy. Beside them the state machine keeps, per workflow, the current projection
//! (`wf_state`) and a projection snapshot every `snapshot_every` events (`wf_snapshots`).

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::events::{stream_name, WorkflowEvent, WorkflowRecord};
use super::projection::{state_after_replay, WorkflowProjection};
use super::replay::{replay_converges, state_difference, state_fingerprint};
use super::snapshot::{decode_projection_snapshot, encode_projection_snapshot, snapshot_due};
use super::state::WorkflowState;
use crate::eventstore::apply::Applier;
use crate::eventstore::read::{read_stream, PageLimit, ReadDirection};
use crate::eventstore::{AppendCommand, AppendOutcome, AppendPositions};
use crate::model::{ExpectedVersion, NewEvent, RecordedEvent};
use crate::storage::keys::stream_index_key;
use crate::storage::sm_db::{SmDb, SmWriteBatch, CF_WF_SNAPSHOTS, CF_WF_STATE};
use crate::storage::{Result, StorageError};

/// One event of a workflow command, as the client sent it (any supported schema version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowEventIn {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Bytes,
}

/// Appends events to one workflow, checked against its projection, all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowCommand {
    pub workflow_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<WorkflowEventIn>,
    /// Projection snapshot interval in force (the leader's setting, stamped into the entry
    /// so that every replica stores the same snapshots).
    pub snapshot_every: u64,
}

impl WorkflowCommand {
    /// The same events as a plain append to the workflow's stream.
    pub fn as_append(&self) -> AppendCommand {
        AppendCommand {
            stream: stream_name(&self.workflow_id),
            expected: self.expected,
            events: self
                .events
                .iter()
                .map(|e| NewEvent {
                    event_id: e.event_id,
                    event_type: e.event_type.clone(),
                    schema_version: e.schema_version,
                    event_time_ns: 0,
                    payload: e.payload.clone(),
                    metadata: Default::default(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkflowOutcome {
    /// Appended (or, with `duplicate`, already appended by an identical earlier command).
    Applied {
        positions: AppendPositions,
        duplicate: bool,
        /// The workflow's version and status after the command.
        version: u64,
        status: String,
    },
    WrongExpectedVersion {
        expected: ExpectedVersion,
        current: Option<u64>,
    },
    EventIdConflict {
        event_id: Uuid,
        detail: String,
    },
    /// An illegal transition (or an undecodable event): nothing was written.
    Rejected {
        index: usize,
        reason: String,
    },
}

/// Applies the workflow commands of one log entry; keeps the projections it changed so
/// that later commands of the same entry see them.
pub struct WorkflowApplier<'a> {
    db: &'a SmDb,
    states: HashMap<String, Option<WorkflowState>>,
}

impl<'a> WorkflowApplier<'a> {
    pub fn new(db: &'a SmDb) -> Self {
        WorkflowApplier {
            db,
            states: HashMap::new(),
        }
    }

    fn state(&mut self, workflow_id: &str) -> Result<Option<WorkflowState>> {
        if let Some(s) = self.states.get(workflow_id) {
            return Ok(s.clone());
        }
        let s = load_state(self.db, workflow_id)?;
        self.states.insert(workflow_id.to_owned(), s.clone());
        Ok(s)
    }

    pub fn apply(
        &mut self,
        events: &mut Applier<'_>,
        wb: &mut SmWriteBatch,
        commit_time_ns: i64,
        dedupe_window_ns: i64,
        cmd: &WorkflowCommand,
    ) -> Result<WorkflowOutcome> {
        let mut append = cmd.as_append();
        // Apply is total: a command without events (or otherwise malformed) is refused here,
        // alike on every replica, before it can reach the projection.
        if let Some(reason) = events.check_shape(&append.stream, &append.events) {
            return Ok(rejected(0, reason));
        }
        let oldest_live = commit_time_ns.saturating_sub(dedupe_window_ns);
        // A retry of a command that was applied is answered as such, before the transition
        // rules (which would now refuse it) are consulted.
        if let Some(dup) = events.check_duplicate(&append, oldest_live)? {
            return self.outcome(&cmd.workflow_id, dup);
        }
        let current = events.head(&append.stream)?;
        if !cmd.expected.admits(current) {
            return Ok(WorkflowOutcome::WrongExpectedVersion {
                expected: cmd.expected,
                current,
            });
        }
        let before = self.state(&cmd.workflow_id)?;
        let mut projection = match before.clone() {
            Some(s) => WorkflowProjection::from_snapshot(s),
            None => WorkflowProjection::new(),
        };
        let mut snapshots = Vec::new();
        for (index, (ev_in, stored)) in cmd.events.iter().zip(append.events.iter_mut()).enumerate()
        {
            let record = WorkflowRecord {
                stream_version: projection.next_version(),
                commit_time_ns,
                event_type: ev_in.event_type.clone(),
                schema_version: ev_in.schema_version,
                payload: ev_in.payload.to_vec(),
            };
            let mut event = match WorkflowEvent::decode(&record) {
                Ok(e) => e,
                Err(e) => return Ok(rejected(index, e)),
            };
            if fill_attempt(&mut event, projection.state()) {
                // The state machine chose the attempt number: store the event as applied.
                let encoded = match event.encode() {
                    Ok(e) => e,
                    Err(e) => return Ok(rejected(index, e)),
                };
                stored.schema_version = encoded.schema_version;
                stored.payload = Bytes::from(encoded.payload);
            }
            if let Some(id) = &workflow_id_of(&event) {
                if *id != cmd.workflow_id {
                    return Ok(rejected(
                        index,
                        format!(
                            "event names workflow {id:?} but was sent to {:?}",
                            cmd.workflow_id
                        ),
                    ));
                }
            }
            if let Err(e) = projection.apply(&event, commit_time_ns, record.stream_version) {
                return Ok(rejected(index, e));
            }
            if let Some(state) = projection.state() {
                if snapshot_due(state, cmd.snapshot_every) {
                    snapshots.push(state.clone());
                }
            }
        }
        let positions =
            match events.append_checked(wb, commit_time_ns, dedupe_window_ns, &append)? {
                AppendOutcome::Appended(p) => p,
                AppendOutcome::Rejected { reason } => return Ok(rejected(0, reason)),
                // The checks above ran on the same state: any other outcome is a bug here.
                other => {
                    return Err(StorageError::corrupt(
                        "workflow apply",
                        format!("append after checks returned {other:?}"),
                    ))
                }
            };
        let state = projection
            .into_state()
            .ok_or_else(|| StorageError::corrupt("workflow apply", "no state after events"))?;
        for snap in &snapshots {
            wb.put(
                CF_WF_SNAPSHOTS,
                &snapshot_key(&cmd.workflow_id, snap.version),
                &encode_state(snap)?,
            )?;
        }
        wb.put(
            CF_WF_STATE,
            cmd.workflow_id.as_bytes(),
            &encode_state(&state)?,
        )?;
        let (version, status) = (state.version, state.status.to_string());
        self.states.insert(cmd.workflow_id.clone(), Some(state));
        Ok(WorkflowOutcome::Applied {
            positions,
            duplicate: false,
            version,
            status,
        })
    }

    fn outcome(&mut self, workflow_id: &str, o: AppendOutcome) -> Result<WorkflowOutcome> {
        Ok(match o {
            AppendOutcome::Appended(p) | AppendOutcome::Duplicate(p) => {
                let state = self.state(workflow_id)?;
                WorkflowOutcome::Applied {
                    positions: p,
                    duplicate: true,
                    version: state.as_ref().map_or(0, |s| s.version),
                    status: state.map_or_else(String::new, |s| s.status.to_string()),
                }
            }
            AppendOutcome::WrongExpectedVersion { expected, current } => {
                WorkflowOutcome::WrongExpectedVersion { expected, current }
            }
            AppendOutcome::EventIdConflict { event_id, detail } => {
                WorkflowOutcome::EventIdConflict { event_id, detail }
            }
            AppendOutcome::Rejected { reason } => rejected(0, reason),
        })
    }
}

fn rejected(index: usize, e: impl std::fmt::Display) -> WorkflowOutcome {
    WorkflowOutcome::Rejected {
        index,
        reason: e.to_string(),
    }
}

fn workflow_id_of(event: &WorkflowEvent) -> Option<String> {
    match event {
        WorkflowEvent::WorkflowCreated(c) => Some(c.workflow_id.clone()),
        WorkflowEvent::WorkflowSnapshot(s) => Some(s.state.workflow_id.clone()),
        _ => None,
    }
}

/// `attempt: 0` in StepStarted / StepFailed means "the next attempt" / "the running
/// attempt": the state machine fills it in from the projection (deterministically), so that
/// clients need not know it. Returns whether the event changed.
fn fill_attempt(event: &mut WorkflowEvent, state: Option<&WorkflowState>) -> bool {
    let Some(state) = state else {
        return false;
    };
    match event {
        WorkflowEvent::StepStarted(e) if e.attempt == 0 => {
            e.attempt = state
                .step(&e.step_id)
                .map_or(1, |s| s.attempts.saturating_add(1));
            true
        }
        WorkflowEvent::StepFailed(e) if e.attempt == 0 => {
            e.attempt = state.step(&e.step_id).map_or(1, |s| s.attempts.max(1));
            true
        }
        _ => false,
    }
}

fn snapshot_key(workflow_id: &str, version: u64) -> Vec<u8> {
    // Workflow ids form valid stream names, so they hold no NUL: the same key shape as the
    // stream index.
    stream_index_key(workflow_id, version)
}

fn encode_state(state: &WorkflowState) -> Result<Vec<u8>> {
    encode_projection_snapshot(state).map_err(|e| StorageError::Encode {
        what: "workflow state",
        detail: e.to_string(),
    })
}

fn decode_state(bytes: &[u8]) -> Result<WorkflowState> {
    decode_projection_snapshot(bytes).map_err(|e| StorageError::corrupt("workflow state", e))
}

/// The current projection of a workflow.
pub fn load_state(db: &SmDb, workflow_id: &str) -> Result<Option<WorkflowState>> {
    match db
        .db()
        .get_pinned_cf(db.cf(CF_WF_STATE)?, workflow_id.as_bytes())?
    {
        Some(b) => Ok(Some(decode_state(&b)?)),
        None => Ok(None),
    }
}

/// Why a temporal query has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("workflow {0:?} does not exist")]
    NotFound(String),
    #[error("workflow {id:?} has no version {version} (its last version is {last})")]
    NoSuchVersion { id: String, version: u64, last: u64 },
    #[error("workflow {id:?} did not exist yet at that time (it was created later)")]
    BeforeCreation { id: String },
    #[error("replaying workflow {id:?}: {detail}")]
    Replay { id: String, detail: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn record_of(e: RecordedEvent) -> WorkflowRecord {
    WorkflowRecord {
        stream_version: e.stream_version,
        commit_time_ns: e.commit_time_ns,
        event_type: e.event_type,
        schema_version: e.schema_version,
        payload: e.payload.to_vec(),
    }
}

/// Bytes per page when a query replays a workflow's stream.
const REPLAY_PAGE_BYTES: usize = 4 << 20;

/// The state after the event at `version`: the nearest projection snapshot at or below it,
/// plus the events after that snapshot.
pub fn state_at_version(
    db: &SmDb,
    workflow_id: &str,
    version: u64,
) -> Result<WorkflowState, QueryError> {
    state_at_version_of(db, workflow_id, load_current(db, workflow_id)?, version)
}

/// The current projection, or `NotFound`.
fn load_current(db: &SmDb, workflow_id: &str) -> Result<WorkflowState, QueryError> {
    load_state(db, workflow_id)?.ok_or_else(|| QueryError::NotFound(workflow_id.to_owned()))
}

/// [`state_at_version`] given the `current` projection.
fn state_at_version_of(
    db: &SmDb,
    workflow_id: &str,
    current: WorkflowState,
    version: u64,
) -> Result<WorkflowState, QueryError> {
    if version == current.version {
        return Ok(current);
    }
    if version > current.version {
        return Err(QueryError::NoSuchVersion {
            id: workflow_id.to_owned(),
            version,
            last: current.version,
        });
    }
    let snapshot = nearest_snapshot(db, workflow_id, version)?;
    let from = snapshot.as_ref().map_or(0, |s| s.version + 1);
    let stream = stream_name(workflow_id);
    let mut records = Vec::with_capacity((version + 1 - from) as usize);
    let mut next = Some(from);
    while let Some(f) = next.filter(|f| *f <= version) {
        let page = read_stream(
            db,
            &stream,
            Some(f),
            ReadDirection::Forwards,
            PageLimit::new((version + 1 - f).min(1000) as usize, REPLAY_PAGE_BYTES),
        )?;
        if page.events.is_empty() {
            break;
        }
        next = page.events.last().map(|e| e.stream_version + 1);
        records.extend(page.events.into_iter().map(record_of));
    }
    let replay = |e: String| QueryError::Replay {
        id: workflow_id.to_owned(),
        detail: e,
    };
    state_after_replay(snapshot, &records)
        .map_err(|e| replay(e.to_string()))?
        .ok_or_else(|| replay("no state".into()))
}

fn nearest_snapshot(db: &SmDb, workflow_id: &str, version: u64) -> Result<Option<WorkflowState>> {
    let cf = db.cf(CF_WF_SNAPSHOTS)?;
    let key = snapshot_key(workflow_id, version);
    let prefix = &key[..key.len() - 8];
    let mut it = db.db().raw_iterator_cf(cf);
    it.seek_for_prev(&key);
    if it.valid() {
        if let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.len() == key.len() && k.starts_with(prefix) {
                return Ok(Some(decode_state(v)?));
            }
        }
    }
    it.status()?;
    Ok(None)
}

/// Commit time of the event at `version` of `stream`.
fn commit_time_at(db: &SmDb, stream: &str, version: u64) -> Result<i64> {
    let pos = db
        .db()
        .get_pinned_cf(
            db.cf(crate::storage::sm_db::CF_STREAM_INDEX)?,
            stream_index_key(stream, version),
        )?
        .and_then(|b| crate::storage::keys::read_u64(&b))
        .ok_or_else(|| {
            StorageError::corrupt("stream index", format!("{stream}@{version} missing"))
        })?;
    let event = crate::eventstore::read::event_at(db, pos)?
        .ok_or_else(|| StorageError::corrupt("event", format!("position {pos} missing")))?;
    Ok(event.commit_time_ns)
}

/// The version of the last event committed at or before `t_ns` (commit times never
/// decrease along a stream, so this is a binary search over O(log n) point reads).
pub fn version_at_time(db: &SmDb, workflow_id: &str, t_ns: i64) -> Result<Option<u64>, QueryError> {
    version_at_time_of(db, workflow_id, &load_current(db, workflow_id)?, t_ns)
}

/// [`version_at_time`] given the `current` projection.
fn version_at_time_of(
    db: &SmDb,
    workflow_id: &str,
    current: &WorkflowState,
    t_ns: i64,
) -> Result<Option<u64>, QueryError> {
    let stream = stream_name(workflow_id);
    if commit_time_at(db, &stream, 0)? > t_ns {
        return Ok(None);
    }
    // Invariant: commit_time(lo) <= t; commit_time(hi + 1) > t or hi is the last version.
    let (mut lo, mut hi) = (0u64, current.version);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if commit_time_at(db, &stream, mid)? <= t_ns {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(Some(lo))
}

/// The state as it was at time `t_ns`: after the last event committed at or before it.
pub fn state_at_time(db: &SmDb, workflow_id: &str, t_ns: i64) -> Result<WorkflowState, QueryError> {
    // The current projection is read once, for both halves.
    let current = load_current(db, workflow_id)?;
    match version_at_time_of(db, workflow_id, &current, t_ns)? {
        Some(v) => state_at_version_of(db, workflow_id, current, v),
        None => Err(QueryError::BeforeCreation {
            id: workflow_id.to_owned(),
        }),
    }
}

/// Workflows in id order, starting after `after`.
pub fn list(db: &SmDb, after: Option<&str>, limit: usize) -> Result<Vec<WorkflowState>> {
    let cf = db
        .db()
        .cf_handle(CF_WF_STATE)
        .ok_or(StorageError::MissingColumnFamily(CF_WF_STATE))?;
    let mut it = db.db().raw_iterator_cf(cf);
    match after {
        Some(a) => {
            it.seek(a.as_bytes());
            if it.key() == Some(a.as_bytes()) {
                it.next();
            }
        }
        None => it.seek_to_first(),
    }
    let mut out = Vec::new();
    while it.valid() && out.len() < limit {
        if let Some(v) = it.value() {
            out.push(decode_state(v)?);
        }
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// The replay check of one workflow on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub workflow_id: String,
    pub events: u64,
    pub version: Option<u64>,
    /// Fingerprint of the state rebuilt from scratch.
    pub fingerprint: Option<u64>,
    /// Projection snapshots stored by the state machine and checked against the rebuild.
    pub stored_snapshots_checked: u64,
    /// `None` when the rebuild, every stored snapshot, the in-place snapshots of the pure
    /// check and the incrementally maintained projection all agree.
    pub divergence: Option<String>,
}

/// `replay_converges` on the server: rebuilds the projection from the stream alone and
/// compares it with the incrementally maintained one and with every stored snapshot.
pub fn verify(db: &SmDb, workflow_id: &str) -> Result<VerifyReport, QueryError> {
    let stored = load_current(db, workflow_id)?;
    let stream = stream_name(workflow_id);
    let mut records = Vec::new();
    let mut next = Some(0);
    while let Some(f) = next {
        let page = read_stream(
            db,
            &stream,
            Some(f),
            ReadDirection::Forwards,
            PageLimit::new(1000, REPLAY_PAGE_BYTES),
        )?;
        next = page.next;
        records.extend(page.events.into_iter().map(record_of));
    }
    let pure = replay_converges(&records).map_err(|e| QueryError::Replay {
        id: workflow_id.to_owned(),
        detail: e.to_string(),
    })?;
    let mut divergence = pure.divergence.as_ref().map(|d| format!("{d:?}"));
    let rebuilt = state_after_replay(None, &records).map_err(|e| QueryError::Replay {
        id: workflow_id.to_owned(),
        detail: e.to_string(),
    })?;
    if divergence.is_none() {
        divergence = match &rebuilt {
            Some(r) => state_difference(r, &stored)
                .map(|d| format!("maintained projection differs from rebuild: {d}")),
            None => Some("rebuild produced no state".into()),
        };
    }
    // Every stored projection snapshot equals the rebuild at its version.
    let mut checked = 0;
    let cf = db.cf(CF_WF_SNAPSHOTS)?;
    let prefix = crate::storage::keys::stream_prefix(workflow_id);
    let mut it = db.db().raw_iterator_cf(cf);
    it.seek(&prefix);
    let mut projection = WorkflowProjection::new();
    let mut folded = 0usize;
    while it.valid() && divergence.is_none() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        let Some(version) = crate::storage::keys::stream_index_version(&prefix, k) else {
            break;
        };
        let snap = decode_state(v)?;
        while folded < records.len() && records[folded].stream_version <= version {
            projection
                .apply_record(&records[folded])
                .map_err(|e| QueryError::Replay {
                    id: workflow_id.to_owned(),
                    detail: e.to_string(),
                })?;
            folded += 1;
        }
        if let Some(d) = projection.state().and_then(|s| state_difference(s, &snap)) {
            divergence = Some(format!(
                "stored snapshot at version {version} differs from rebuild: {d}"
            ));
        }
        checked += 1;
        it.next();
    }
    it.status().map_err(StorageError::from)?;
    let fingerprint = match &rebuilt {
        Some(s) => Some(state_fingerprint(s).map_err(|e| QueryError::Replay {
            id: workflow_id.to_owned(),
            detail: e.to_string(),
        })?),
        None => None,
    };
    Ok(VerifyReport {
        workflow_id: workflow_id.to_owned(),
        events: records.len() as u64,
        version: rebuilt.as_ref().map(|s| s.version),
        fingerprint,
        stored_snapshots_checked: checked,
        divergence,
    })
}

/// Deterministic event id for importing a workflow: the same workflow imported twice gets
/// the same id, so a re-run of an import is a no-op.
pub fn import_event_id(workflow_id: &str) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x5c1e_7a2b_8f3d_4e6a_9b0c_1d2e_3f4a_5b6c);
    Uuid::new_v5(&NAMESPACE, workflow_id.as_bytes())
}

/// A workflow event as the workflow code reads it: upcast to the current schema.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowEventRecord {
    pub workflow_id: String,
    pub stream_version: u64,
    pub global_position: u64,
    pub commit_time_ns: i64,
    /// The schema version it was stored with (the event itself is in the current shape).
    pub stored_schema_version: u32,
    pub event: WorkflowEvent,
}

/// A page of workflow events, and where the next page starts (a stream version for one
/// workflow's events, a global position for events since a time), if there may be more.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkflowEventsPage {
    pub events: Vec<WorkflowEventRecord>,
    pub next: Option<u64>,
}

/// The event store as the workflow code sees it — backed by the replicated store (the
/// workflow's events are ordinary events of stream `workflow-{id}`), not by a copy.
/// Reads come in pages bounded in events and bytes, like every read of the store.
#[allow(async_fn_in_trait)]
pub trait WorkflowEventStore {
    type Error;
    /// Appends one event, checked against the workflow's projection in the state machine.
    async fn append(
        &self,
        workflow_id: &str,
        expected: ExpectedVersion,
        event_id: Uuid,
        event: &WorkflowEvent,
    ) -> std::result::Result<WorkflowOutcome, Self::Error>;
    /// One workflow's events in order, from stream version `from`.
    async fn get_events(
        &self,
        workflow_id: &str,
        from: u64,
        limit: PageLimit,
    ) -> std::result::Result<WorkflowEventsPage, Self::Error>;
    /// Events of all workflows committed at or after `t_ns`, in commit order; `from` (a
    /// global position, the `next` of a previous page) continues a listing.
    async fn get_events_since(
        &self,
        t_ns: i64,
        from: Option<u64>,
        limit: PageLimit,
    ) -> std::result::Result<WorkflowEventsPage, Self::Error>;
}

fn event_record(e: RecordedEvent) -> std::result::Result<Option<WorkflowEventRecord>, QueryError> {
    let Some(workflow_id) = super::events::workflow_id_from_stream(&e.stream).map(str::to_owned)
    else {
        return Ok(None);
    };
    let stored_schema_version = e.schema_version;
    let global_position = e.global_position;
    let record = record_of(e);
    let event = WorkflowEvent::decode(&record).map_err(|err| QueryError::Replay {
        id: workflow_id.clone(),
        detail: err.to_string(),
    })?;
    Ok(Some(WorkflowEventRecord {
        workflow_id,
        stream_version: record.stream_version,
        global_position,
        commit_time_ns: record.commit_time_ns,
        stored_schema_version,
        event,
    }))
}

/// A page of one workflow's events from stream version `from`, upcast to the current
/// schema. A workflow that does not exist has no events.
pub fn events_of(
    db: &SmDb,
    workflow_id: &str,
    from: u64,
    limit: PageLimit,
) -> std::result::Result<WorkflowEventsPage, QueryError> {
    let stream = stream_name(workflow_id);
    let page = read_stream(db, &stream, Some(from), ReadDirection::Forwards, limit)?;
    let mut events = Vec::with_capacity(page.events.len());
    for e in page.events {
        events.extend(event_record(e)?);
    }
    Ok(WorkflowEventsPage {
        events,
        next: page.next,
    })
}

/// Pages of the global log one `events_since` call scans at most: between workflow events
/// there may be any number of others, and one call must stay bounded in time, not only in
/// memory. A page that stops there is returned with `next` set (possibly empty).
const SINCE_SCAN_PAGES: usize = 16;

/// A page of the workflow events committed at or after `t_ns`, starting at global position
/// `from` if given (a previous page's `next`). Commit times never decrease along the
/// global log, so without `from` the start is a binary search over positions; then the log
/// is read forward, page by page, keeping the workflow events within `limit`.
pub fn events_since(
    db: &SmDb,
    t_ns: i64,
    from: Option<u64>,
    limit: PageLimit,
) -> std::result::Result<WorkflowEventsPage, QueryError> {
    let end = crate::eventstore::StoreState::load(db)?.next_global_position;
    let commit_time = |p: u64| -> std::result::Result<i64, QueryError> {
        Ok(crate::eventstore::read::event_at(db, p)?
            .ok_or_else(|| StorageError::corrupt("event", format!("position {p} missing")))?
            .commit_time_ns)
    };
    let mut next = match from {
        Some(p) => p,
        None => {
            // First position with commit time >= t.
            let (mut lo, mut hi) = (0u64, end);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if commit_time(mid)? < t_ns {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        }
    };
    let mut out = Vec::new();
    let mut bytes = 0usize;
    'pages: for _ in 0..SINCE_SCAN_PAGES {
        if next >= end || out.len() >= limit.events {
            break;
        }
        let left = PageLimit::new(limit.events - out.len(), limit.bytes);
        let page =
            crate::eventstore::read::read_all(db, Some(next), ReadDirection::Forwards, left, end)?;
        if page.events.is_empty() {
            break;
        }
        for e in page.events {
            let position = e.global_position;
            if super::events::workflow_id_from_stream(&e.stream).is_some() {
                let size = e.size_bytes();
                if !out.is_empty() && bytes.saturating_add(size) > limit.bytes {
                    break 'pages;
                }
                bytes = bytes.saturating_add(size);
                out.extend(event_record(e)?);
            }
            next = position + 1;
            if out.len() >= limit.events {
                break 'pages;
            }
        }
    }
    Ok(WorkflowEventsPage {
        events: out,
        next: (next < end).then_some(next),
    })
}
