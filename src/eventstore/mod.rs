//! The event store's rules: appending with expected versions and idempotency, assigning
//! gap-free stream versions and global positions, reading streams and the global log, and
//! subscriptions that catch up and then follow live without gap or duplicate.
//!
//! Writes reach this module only through the replicated state machine (`apply`): nothing
//! here proposes or bypasses Raft. Reads and subscriptions read the local state machine.

pub mod apply;
pub mod read;
pub mod read_pool;
pub mod subscribe;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{ExpectedVersion, NewEvent};
use crate::storage::sm_db::{SmDb, CF_META};
use crate::storage::{decode, encode, Result};

/// The key of [`StoreState`] in the state machine's metadata.
pub const STATE_KEY: &[u8] = b"store_state";

/// The key of the idempotency window (ns, replicated) in the state machine's metadata.
pub const WINDOW_KEY: &[u8] = b"dedupe_window";

/// The key of the apply-rules version (replicated) in the state machine's metadata.
pub const RULES_KEY: &[u8] = b"apply_rules";

/// The apply rules this code knows. Rules are replicated state: a rule that refuses what an
/// older version accepted may only apply from a log position every replica agrees on, or a
/// replica replaying older entries after an upgrade would refuse what the others accepted.
/// Version 1: the original rules. Version 2 adds, in apply: well-formed stream names, unique
/// event ids within an append, and no plain append to a workflow's stream. (Appends without
/// events and positions past `u64::MAX` are refused under every version: older code panicked
/// or halted on them, so no healthy log holds one.) Version 3 adds rate-limit policies
/// (`Command::SetLimit`, `Command::DeleteLimit`; refused before). Version 4 keeps no stream
/// head records: a stream's head is the last key of its index (see
/// [`INDEXED_HEADS_RULES_VERSION`]). A leader adopts the newest version once every voter runs
/// code that knows it (`Command::AdoptRules`; each voter says which rules it knows in its
/// answer to the clock probe).
pub const APPLY_RULES_VERSION: u32 = 4;

/// The apply rules from which an append writes no head record (`CF_STREAMS`): the head is
/// the last key of the stream's index, which every append writes anyway and nothing ever
/// removes, so under every version the two agree and heads are read from the index alone.
/// The record was one of an append's four writes, and a costly one (a memtable insert at
/// the stream's place in the key space; measured 11–14% of 3-node append throughput).
/// Adopting these rules removes the records older rules wrote ([`drop_head_records`]).
pub const INDEXED_HEADS_RULES_VERSION: u32 = 4;

/// Removes every stream head record that rules before [`INDEXED_HEADS_RULES_VERSION`]
/// wrote: one range deletion, in the entry that adopts those rules. Keys are stream names,
/// UTF-8, so none is at or past `0xff`.
pub fn drop_head_records(wb: &mut crate::storage::sm_db::SmWriteBatch<'_>) -> Result<()> {
    wb.delete_range(crate::storage::sm_db::CF_STREAMS, b"", b"\xff")
}

/// The apply rules from which the idempotency window is replicated state
/// (`Command::SetDedupeWindow`).
pub const DEDUPE_WINDOW_RULES_VERSION: u32 = 2;

/// The apply-rules version in force (1 until a cluster adopts a newer one).
pub fn load_rules_version(db: &SmDb) -> Result<u32> {
    match db.db().get_pinned_cf(db.cf(CF_META)?, RULES_KEY)? {
        Some(bytes) => decode("apply rules version", &bytes),
        None => Ok(1),
    }
}

/// Longest idempotency window a cluster may set: a year.
pub const MAX_DEDUPE_WINDOW_NS: i64 = 365 * 24 * 3600 * 1_000_000_000;

/// The replicated idempotency window, if one was recorded yet.
pub fn load_dedupe_window(db: &SmDb) -> Result<Option<i64>> {
    match db.db().get_pinned_cf(db.cf(CF_META)?, WINDOW_KEY)? {
        Some(bytes) => decode("dedupe window", &bytes).map(Some),
        None => Ok(None),
    }
}

/// Checks a window an operator asks for.
pub fn check_dedupe_window(window_ns: i64) -> std::result::Result<(), String> {
    if window_ns <= 0 || window_ns > MAX_DEDUPE_WINDOW_NS {
        return Err(format!(
            "the idempotency window must be more than 0 and at most 365 days, not {} s",
            window_ns / 1_000_000_000
        ));
    }
    Ok(())
}

/// An append, as it travels through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendCommand {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// Where an append's events landed. Versions and positions of one append are consecutive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendPositions {
    pub first_stream_version: u64,
    pub last_stream_version: u64,
    pub first_global_position: u64,
    pub last_global_position: u64,
    pub commit_time_ns: i64,
}

/// What applying an append produced. Business refusals are outcomes, not storage errors:
/// they are replicated decisions, identical on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    Appended(AppendPositions),
    /// Every event id was already stored by one earlier append to this stream.
    Duplicate(AppendPositions),
    WrongExpectedVersion {
        expected: ExpectedVersion,
        current: Option<u64>,
    },
    /// Some event ids were stored before, but not as this same append.
    EventIdConflict {
        event_id: Uuid,
        detail: String,
    },
    /// The command breaks a rule the store relies on (no events, a malformed stream name,
    /// positions that would overflow): refused by every replica alike, nothing written.
    Rejected {
        reason: String,
    },
}

/// Counters of the store that live in the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreState {
    /// The position the next event gets; also the number of events stored.
    pub next_global_position: u64,
    /// Commit times never go backwards, whatever the leaders' clocks do.
    pub last_commit_time_ns: i64,
    /// The last expiry key swept (commit time ++ log index); sweeping resumes after it.
    pub dedupe_swept_key: Vec<u8>,
}

impl StoreState {
    pub fn load(db: &SmDb) -> Result<StoreState> {
        match db.db().get_pinned_cf(db.cf(CF_META)?, STATE_KEY)? {
            Some(bytes) => decode("store state", &bytes),
            None => Ok(StoreState::default()),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        encode("store state", self)
    }
}

/// The stream head record in `CF_STREAMS`, written by rules before
/// [`INDEXED_HEADS_RULES_VERSION`] (and read by nothing: heads come from the index).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct StreamHead {
    pub last_version: u64,
}
