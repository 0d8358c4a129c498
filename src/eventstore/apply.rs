//! Applying appends to the state machine's write batch. Deterministic: everything depends on
//! the command, the commit time stamped into the log entry, and the replicated state.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AppendCommand, AppendOutcome, AppendPositions, StoreState, StreamHead};
use crate::model::{check_append_structure, check_plain_append_target, RecordedEvent};
use crate::storage::keys::{i64_ordered, stream_index_key, u64_key};
use crate::storage::sm_db::{
    SmDb, SmWriteBatch, CF_DEDUPE, CF_DEDUPE_EXPIRY, CF_EVENTS, CF_STREAMS, CF_STREAM_INDEX,
};
use crate::storage::{decode, encode, Result, StorageError};

/// The idempotency record of one event id.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DedupeEntry {
    stream: String,
    stream_version: u64,
    global_position: u64,
    commit_time_ns: i64,
}

/// Most expired event ids examined per applied entry (whole expiry records, so a little
/// more): bounds the work of one apply while still outpacing any sustainable write rate.
const MAX_EXPIRED_PER_APPLY: usize = 4096;

/// Most stream heads a [`HeadCache`] keeps; past this it starts over (it is only a cache).
const HEAD_CACHE_CAPACITY: usize = 100_000;

/// The last version of streams recently read or written, as committed to the state machine.
/// Spares every append the lookup of its stream's head: once a search among all the versions
/// of the head record still in the memtable, which perf showed costing more than the rest of
/// the append's index work; from rules 4 a seek to the last key of the stream's index.
/// Owned by the state machine; only committed heads go in ([`HeadCache::commit`]), and a new
/// database (snapshot install) gets a new, empty cache.
#[derive(Default)]
pub struct HeadCache {
    heads: HashMap<String, Option<u64>>,
}

impl HeadCache {
    /// Records the heads an applier read or wrote, once its batch is committed.
    pub fn commit(&mut self, heads: HashMap<String, Option<u64>>) {
        if self.heads.len() + heads.len() > HEAD_CACHE_CAPACITY {
            self.heads.clear();
        }
        self.heads.extend(heads);
    }
}

/// Applies appends of one batch of log entries. Keeps what this batch wrote but RocksDB
/// does not show yet (heads, dedupe entries), so later commands see earlier ones.
pub struct Applier<'a> {
    db: &'a SmDb,
    committed_heads: &'a HeadCache,
    state: StoreState,
    heads: HashMap<String, Option<u64>>,
    dedupe: HashMap<Uuid, DedupeEntry>,
    /// Idempotency records read ahead for this entry ([`Applier::prefetch_dedupe`]), as
    /// stored: `None` for an id with none.
    prefetched: HashMap<Uuid, Option<Vec<u8>>>,
    /// Ids of the events this entry stored, 16 bytes each: one expiry record per entry.
    stored_ids: Vec<u8>,
    /// The apply rules in force (replicated; see `APPLY_RULES_VERSION`).
    rules_version: u32,
}

impl<'a> Applier<'a> {
    pub fn new(db: &'a SmDb, committed_heads: &'a HeadCache, state: StoreState) -> Self {
        Applier {
            db,
            committed_heads,
            state,
            heads: HashMap::new(),
            dedupe: HashMap::new(),
            prefetched: HashMap::new(),
            stored_ids: Vec::new(),
            rules_version: super::APPLY_RULES_VERSION,
        }
    }

    /// Applies under these rules (the replicated version; the newest by default).
    pub fn with_rules(mut self, rules_version: u32) -> Self {
        self.set_rules(rules_version);
        self
    }

    pub fn set_rules(&mut self, rules_version: u32) {
        self.rules_version = rules_version;
    }

    pub fn rules_version(&self) -> u32 {
        self.rules_version
    }

    /// Refuses what the rules in force refuse of an append's shape: no events (always), and
    /// from version 2 malformed stream names and repeated event ids.
    pub fn check_shape(&self, stream: &str, events: &[crate::model::NewEvent]) -> Option<String> {
        if events.is_empty() {
            return Some(crate::model::ValidationError::NoEvents.to_string());
        }
        if self.rules_version >= 2 {
            if let Err(e) = check_append_structure(stream, events) {
                return Some(e.to_string());
            }
        }
        None
    }

    /// The store state after this batch, and the stream heads it read or wrote (for
    /// [`HeadCache::commit`] once the batch is written).
    pub fn into_parts(self) -> (StoreState, HashMap<String, Option<u64>>) {
        (self.state, self.heads)
    }

    /// The commit time of an entry: the leader's stamp, never earlier than the last one.
    pub fn commit_time(&mut self, stamped_ns: i64) -> i64 {
        let t = stamped_ns.max(self.state.last_commit_time_ns);
        self.state.last_commit_time_ns = t;
        t
    }

    /// The stream's last version as this entry sees it.
    pub fn head(&mut self, stream: &str) -> Result<Option<u64>> {
        if let Some(h) = self.heads.get(stream) {
            return Ok(*h);
        }
        if let Some(h) = self.committed_heads.heads.get(stream) {
            self.heads.insert(stream.to_owned(), *h);
            return Ok(*h);
        }
        let h = super::read::head_in_index(self.db, rocksdb::ReadOptions::default(), stream)?;
        self.heads.insert(stream.to_owned(), h);
        Ok(h)
    }

    /// The live (inside the window) dedupe entry of an event id.
    fn dedupe_entry(&self, id: &Uuid, oldest_live_ns: i64) -> Result<Option<DedupeEntry>> {
        let stored = |bytes: &[u8]| decode::<DedupeEntry>("dedupe entry", bytes).map(Some);
        let entry = match (self.dedupe.get(id), self.prefetched.get(id)) {
            (Some(e), _) => Some(e.clone()),
            (None, Some(read)) => read.as_deref().map_or(Ok(None), stored)?,
            (None, None) => match self
                .db
                .db()
                .get_pinned_cf(self.db.cf(CF_DEDUPE)?, id.as_bytes())?
            {
                Some(bytes) => stored(&bytes)?,
                None => None,
            },
        };
        // Expiry is exact even when physical removal lags: an entry outside the window is
        // treated as absent by every replica alike.
        Ok(entry.filter(|e| e.commit_time_ns >= oldest_live_ns))
    }

    /// Reads the idempotency records of `ids` in one batched lookup (RocksDB's MultiGet:
    /// the keys' filter and index probes made together, in key order), for the appends of
    /// this entry to check against instead of one lookup per event. It reads what those
    /// lookups would: the database changes only when the entry's batch commits, and the
    /// ids the entry itself stores are answered from what it stored first. Records are
    /// decoded only when an append asks for them; a key the batch could not read is left
    /// to a lookup of its own.
    pub fn prefetch_dedupe<'i>(&mut self, ids: impl IntoIterator<Item = &'i Uuid>) -> Result<()> {
        let mut keys: Vec<&Uuid> = ids.into_iter().collect();
        // Byte order, which `Uuid`'s order is, and the family's comparator.
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            // An entry without plain appends (telemetry, workflows): nothing to read.
            return Ok(());
        }
        let cf = self.db.cf(CF_DEDUPE)?;
        let read = self
            .db
            .db()
            .batched_multi_get_cf(cf, keys.iter().map(|k| k.as_bytes()), true);
        for (id, got) in keys.into_iter().zip(read) {
            if let Ok(value) = got {
                self.prefetched.insert(*id, value.map(|v| v.to_vec()));
            }
        }
        Ok(())
    }

    /// Applies one plain append (the event API's): workflow streams are refused, whatever
    /// the edge checked, so that their transition rules cannot be bypassed.
    pub fn append(
        &mut self,
        wb: &mut SmWriteBatch,
        commit_time_ns: i64,
        dedupe_window_ns: i64,
        cmd: &AppendCommand,
    ) -> Result<AppendOutcome> {
        if self.rules_version >= 2 {
            if let Err(e) = check_plain_append_target(&cmd.stream) {
                return Ok(rejected(e));
            }
        }
        self.append_checked(wb, commit_time_ns, dedupe_window_ns, cmd)
    }

    /// Applies one append whose target the caller vouches for (the workflow applier, after
    /// checking every event against the projection). `dedupe_window_ns` comes from the log
    /// entry, so every replica expires idempotency records alike.
    pub fn append_checked(
        &mut self,
        wb: &mut SmWriteBatch,
        commit_time_ns: i64,
        dedupe_window_ns: i64,
        cmd: &AppendCommand,
    ) -> Result<AppendOutcome> {
        // Apply is total: what would break an invariant is a replicated refusal, never a
        // panic or an error that halts the state machine.
        if let Some(reason) = self.check_shape(&cmd.stream, &cmd.events) {
            return Ok(rejected(reason));
        }
        let oldest_live_ns = commit_time_ns.saturating_sub(dedupe_window_ns);
        if let Some(outcome) = self.check_duplicate(cmd, oldest_live_ns)? {
            return Ok(outcome);
        }
        let current = self.head(&cmd.stream)?;
        if !cmd.expected.admits(current) {
            return Ok(AppendOutcome::WrongExpectedVersion {
                expected: cmd.expected,
                current,
            });
        }
        let count = cmd.events.len() as u64;
        let first_version = match current {
            None => Some(0),
            Some(v) => v.checked_add(1),
        };
        let first_position = self.state.next_global_position;
        let (Some(first_version), Some(last_version), Some(next_position)) = (
            first_version,
            first_version.and_then(|v| v.checked_add(count - 1)),
            first_position.checked_add(count),
        ) else {
            return Ok(rejected(format!(
                "stream {:?} or the global log would pass the largest position",
                cmd.stream
            )));
        };
        for (i, e) in cmd.events.iter().enumerate() {
            let version = first_version + i as u64;
            let position = first_position + i as u64;
            let record = RecordedEvent {
                event_id: e.event_id,
                stream: cmd.stream.clone(),
                stream_version: version,
                global_position: position,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                event_time_ns: if e.event_time_ns == 0 {
                    commit_time_ns
                } else {
                    e.event_time_ns
                },
                commit_time_ns,
                payload: e.payload.clone(),
                metadata: e.metadata.clone(),
            };
            wb.put(CF_EVENTS, &u64_key(position), &encode("event", &record)?)?;
            wb.put(
                CF_STREAM_INDEX,
                &stream_index_key(&cmd.stream, version),
                &u64_key(position),
            )?;
            let entry = DedupeEntry {
                stream: cmd.stream.clone(),
                stream_version: version,
                global_position: position,
                commit_time_ns,
            };
            wb.put(
                CF_DEDUPE,
                e.event_id.as_bytes(),
                &encode("dedupe entry", &entry)?,
            )?;
            self.stored_ids.extend_from_slice(e.event_id.as_bytes());
            self.dedupe.insert(e.event_id, entry);
        }
        debug_assert_eq!(last_version - first_version + 1, count);
        if self.rules_version < super::INDEXED_HEADS_RULES_VERSION {
            wb.put(
                CF_STREAMS,
                cmd.stream.as_bytes(),
                &encode("stream head", &StreamHead { last_version })?,
            )?;
        }
        self.heads.insert(cmd.stream.clone(), Some(last_version));
        self.state.next_global_position = next_position;
        Ok(AppendOutcome::Appended(AppendPositions {
            first_stream_version: first_version,
            last_stream_version: last_version,
            first_global_position: first_position,
            last_global_position: next_position - 1,
            commit_time_ns,
        }))
    }

    /// A retry of an earlier append returns its positions; a partial overlap is refused.
    pub fn check_duplicate(
        &self,
        cmd: &AppendCommand,
        oldest_live_ns: i64,
    ) -> Result<Option<AppendOutcome>> {
        let mut found = Vec::with_capacity(cmd.events.len());
        for e in &cmd.events {
            found.push(self.dedupe_entry(&e.event_id, oldest_live_ns)?);
        }
        let known = found.iter().filter(|f| f.is_some()).count();
        if known == 0 {
            return Ok(None);
        }
        let conflict = |event_id: Uuid, detail: String| {
            Ok(Some(AppendOutcome::EventIdConflict { event_id, detail }))
        };
        if known < found.len() {
            let i = found.iter().position(|f| f.is_some()).unwrap_or(0);
            return conflict(
                cmd.events[i].event_id,
                format!(
                    "{known} of the {} event ids were already stored by another append",
                    found.len()
                ),
            );
        }
        let entries: Vec<DedupeEntry> = found.into_iter().flatten().collect();
        for (i, entry) in entries.iter().enumerate() {
            if entry.stream != cmd.stream {
                return conflict(
                    cmd.events[i].event_id,
                    format!("event id already stored in stream {:?}", entry.stream),
                );
            }
            if i > 0 && entry.stream_version != entries[i - 1].stream_version + 1 {
                return conflict(
                    cmd.events[i].event_id,
                    "event ids were stored, but not as one append in this order".to_owned(),
                );
            }
        }
        let (first, last) = (&entries[0], &entries[entries.len() - 1]);
        Ok(Some(AppendOutcome::Duplicate(AppendPositions {
            first_stream_version: first.stream_version,
            last_stream_version: last.stream_version,
            first_global_position: first.global_position,
            last_global_position: last.global_position,
            commit_time_ns: first.commit_time_ns,
        })))
    }

    /// Ends a log entry: records the ids of the events it stored under one expiry key, then
    /// sweeps idempotency records that fell out of the window. Returns the ids the sweep
    /// examined.
    pub fn finish_entry(
        &mut self,
        wb: &mut SmWriteBatch,
        commit_time_ns: i64,
        log_index: u64,
        dedupe_window_ns: i64,
    ) -> Result<usize> {
        self.record_expiry(wb, commit_time_ns, log_index)?;
        self.expire_dedupe(wb, commit_time_ns.saturating_sub(dedupe_window_ns))
    }

    /// Records, under one expiry key for the whole log entry, the ids of the events it stored
    /// (one write per entry rather than one per event).
    fn record_expiry(
        &mut self,
        wb: &mut SmWriteBatch,
        commit_time_ns: i64,
        log_index: u64,
    ) -> Result<()> {
        if self.stored_ids.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.stored_ids);
        wb.put(
            CF_DEDUPE_EXPIRY,
            &expiry_key(commit_time_ns, log_index),
            &ids,
        )
    }

    /// Deletes idempotency records that fell out of the window, oldest first, a bounded
    /// number per call. Deterministic: driven by replicated commit times only. The sweep
    /// starts where the last one stopped, so it never wades through its own tombstones.
    fn expire_dedupe(&mut self, wb: &mut SmWriteBatch, oldest_live_ns: i64) -> Result<usize> {
        let expiry_cf = self.db.cf(CF_DEDUPE_EXPIRY)?;
        let mut opts = rocksdb::ReadOptions::default();
        // Strictly after the last swept key: that key plus a 0 byte is its successor.
        let mut lower = self.state.dedupe_swept_key.clone();
        lower.push(0);
        opts.set_iterate_lower_bound(lower);
        opts.set_iterate_upper_bound(i64_ordered(oldest_live_ns).to_vec());
        let mut removed = 0;
        let iter = self
            .db
            .db()
            .iterator_cf_opt(expiry_cf, opts, rocksdb::IteratorMode::Start);
        for item in iter {
            if removed >= MAX_EXPIRED_PER_APPLY {
                break;
            }
            let (key, value) = item?;
            // Databases written before expiry records were per entry hold one key per event
            // (`commit time ++ event id`, empty value): the id is in the key.
            let ids: &[u8] = if value.is_empty() && key.len() == 24 {
                &key[8..]
            } else {
                &value
            };
            if !ids.len().is_multiple_of(16) {
                return Err(StorageError::corrupt(
                    "dedupe expiry record",
                    format!("{} bytes is not a list of 16-byte ids", ids.len()),
                ));
            }
            for raw in ids.chunks_exact(16) {
                let id = Uuid::from_slice(raw)
                    .map_err(|e| StorageError::corrupt("dedupe expiry record", e))?;
                // The id may have been re-used after expiring: only drop the record it points
                // to if that record is itself out of the window.
                if let Some(entry) = self.dedupe_entry(&id, i64::MIN)? {
                    if entry.commit_time_ns < oldest_live_ns {
                        wb.delete(CF_DEDUPE, id.as_bytes())?;
                        self.dedupe.remove(&id);
                    }
                }
                removed += 1;
            }
            wb.delete(CF_DEDUPE_EXPIRY, &key)?;
            self.state.dedupe_swept_key = key.to_vec();
        }
        Ok(removed)
    }
}

fn rejected(reason: impl std::fmt::Display) -> AppendOutcome {
    AppendOutcome::Rejected {
        reason: reason.to_string(),
    }
}

/// `commit time ++ log index`: unique per entry, in time order.
fn expiry_key(commit_time_ns: i64, log_index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&i64_ordered(commit_time_ns));
    k.extend_from_slice(&u64_key(log_index));
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExpectedVersion, NewEvent};
    use crate::storage::SmStore;

    const SEC: i64 = 1_000_000_000;

    fn cmd(stream: &str, ids: &[Uuid]) -> AppendCommand {
        AppendCommand {
            stream: stream.into(),
            expected: ExpectedVersion::Any,
            events: ids
                .iter()
                .map(|id| NewEvent::new(*id, "T", b"{}"))
                .collect(),
        }
    }

    /// Applies one entry (one append at `time`, window `window`) like the state machine does.
    fn apply_entry(
        db: &SmDb,
        heads: &HeadCache,
        state: StoreState,
        index: u64,
        time: i64,
        window: i64,
        c: &AppendCommand,
    ) -> (StoreState, AppendOutcome, usize) {
        let mut wb = SmWriteBatch::new(db, 0, index);
        let mut a = Applier::new(db, heads, state);
        let out = a.append(&mut wb, time, window, c).unwrap();
        let swept = a.finish_entry(&mut wb, time, index, window).unwrap();
        wb.commit().unwrap();
        (a.into_parts().0, out, swept)
    }

    fn dedupe_records(db: &SmDb) -> usize {
        db.db()
            .iterator_cf(db.cf(CF_DEDUPE).unwrap(), rocksdb::IteratorMode::Start)
            .count()
    }

    #[test]
    fn the_sweep_also_expires_per_event_keys_of_older_databases() {
        let dir = tempfile::tempdir().unwrap();
        let store = SmStore::open(dir.path()).unwrap();
        let db = store.db();
        let heads = HeadCache::default();
        let old = Uuid::now_v7();
        let st = StoreState::default();
        let (st, _, _) = apply_entry(&db, &heads, st, 1, SEC, 10 * SEC, &cmd("s", &[old]));
        // Rewrite its expiry record the old way: one key per event, empty value.
        let cf = db.cf(CF_DEDUPE_EXPIRY).unwrap();
        let (key, _) = db
            .db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .next()
            .unwrap()
            .unwrap();
        db.db().delete_cf(cf, &key).unwrap();
        let mut legacy = i64_ordered(SEC).to_vec();
        legacy.extend_from_slice(old.as_bytes());
        db.db().put_cf(cf, &legacy, []).unwrap();
        let fresh = Uuid::now_v7();
        let (_, _, swept) =
            apply_entry(&db, &heads, st, 2, 20 * SEC, 10 * SEC, &cmd("s", &[fresh]));
        assert_eq!(swept, 1);
        assert_eq!(
            dedupe_records(&db),
            1,
            "the old id's record is gone, the fresh one stays"
        );
    }

    #[test]
    fn the_window_sweep_removes_expired_ids_per_entry_record_and_spares_reused_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SmStore::open(dir.path()).unwrap();
        let db = store.db();
        let heads = HeadCache::default();
        let window = 10 * SEC;
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let st = StoreState::default();
        let (st, out, _) = apply_entry(&db, &heads, st, 1, SEC, window, &cmd("s", &[a, b]));
        assert!(matches!(out, AppendOutcome::Appended(_)));
        // One expiry record for the entry, holding both ids.
        let expiry: Vec<_> = db
            .db()
            .iterator_cf(
                db.cf(CF_DEDUPE_EXPIRY).unwrap(),
                rocksdb::IteratorMode::Start,
            )
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(expiry.len(), 1);
        assert_eq!(expiry[0].1.len(), 32);
        // Inside the window: a retry is a duplicate, nothing is swept.
        let (st, out, swept) = apply_entry(&db, &heads, st, 2, 5 * SEC, window, &cmd("s", &[a, b]));
        assert!(matches!(out, AppendOutcome::Duplicate(_)));
        assert_eq!(swept, 0);
        // Past the window, `a` is reused (stored again) by the very entry whose sweep
        // expires the old record: the old ids go, the fresh record of `a` stays.
        let (st, out, swept) = apply_entry(&db, &heads, st, 3, 20 * SEC, window, &cmd("t", &[a]));
        assert!(matches!(out, AppendOutcome::Appended(_)));
        assert_eq!(swept, 2, "both ids of the expired record examined");
        assert_eq!(dedupe_records(&db), 1, "b removed, the reused a kept");
        // A retry of the reuse is still recognised.
        let (_, out, _) = apply_entry(&db, &heads, st, 4, 21 * SEC, window, &cmd("t", &[a]));
        assert!(matches!(out, AppendOutcome::Duplicate(_)));
    }

    /// Idempotency records read ahead in one batch answer every append as lookups one by
    /// one do: the same entries applied to two stores, with and without the read-ahead,
    /// give the same outcomes — retries across entries and within one, partial and
    /// reordered retries, an id reused in another stream, and an expired window.
    #[test]
    fn read_ahead_idempotency_records_answer_as_lookups_do() {
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
        let window = 10 * SEC;
        let entries: Vec<(i64, Vec<AppendCommand>)> = vec![
            (SEC, vec![cmd("s", &ids[0..2]), cmd("t", &ids[2..3])]),
            // Retries: whole, within the same entry twice, partial, reordered, elsewhere.
            (
                2 * SEC,
                vec![
                    cmd("s", &ids[0..2]),
                    cmd("u", &ids[3..4]),
                    cmd("u", &ids[3..4]),
                    cmd("s", &[ids[1], ids[4]]),
                    cmd("s", &[ids[1], ids[0]]),
                    cmd("v", &ids[2..3]),
                ],
            ),
            // Past the window: ids 0..3 may be stored again; 3 is still known.
            (
                12 * SEC,
                vec![
                    cmd("w", &ids[0..1]),
                    cmd("u", &ids[3..4]),
                    cmd("w", &ids[5..6]),
                ],
            ),
        ];
        let run = |read_ahead: bool| {
            let dir = tempfile::tempdir().unwrap();
            let store = SmStore::open(dir.path()).unwrap();
            let db = store.db();
            let heads = HeadCache::default();
            let mut state = StoreState::default();
            let mut outcomes = Vec::new();
            for (i, (time, cmds)) in entries.iter().enumerate() {
                let index = i as u64 + 1;
                let mut wb = SmWriteBatch::new(&db, 0, index);
                let mut a = Applier::new(&db, &heads, state);
                if read_ahead {
                    a.prefetch_dedupe(cmds.iter().flat_map(|c| &c.events).map(|e| &e.event_id))
                        .unwrap();
                }
                for c in cmds {
                    outcomes.push(format!(
                        "{:?}",
                        a.append(&mut wb, *time, window, c).unwrap()
                    ));
                }
                a.finish_entry(&mut wb, *time, index, window).unwrap();
                wb.commit().unwrap();
                state = a.into_parts().0;
            }
            outcomes
        };
        let (ahead, one_by_one) = (run(true), run(false));
        assert_eq!(ahead, one_by_one);
        let count = |kind: &str| ahead.iter().filter(|o| o.starts_with(kind)).count();
        assert_eq!(
            (
                count("Appended"),
                count("Duplicate"),
                count("EventIdConflict")
            ),
            (5, 3, 3),
            "{ahead:#?}"
        );
    }

    #[test]
    fn head_cache_keeps_committed_heads_and_starts_over_when_full() {
        let mut cache = HeadCache::default();
        cache.commit(HashMap::from([
            ("a".to_owned(), Some(3)),
            ("b".to_owned(), None),
        ]));
        cache.commit(HashMap::from([("a".to_owned(), Some(4))]));
        assert_eq!(cache.heads.get("a"), Some(&Some(4)));
        assert_eq!(cache.heads.get("b"), Some(&None));
        let many: HashMap<String, Option<u64>> = (0..HEAD_CACHE_CAPACITY as u64)
            .map(|i| (format!("s{i}"), Some(i)))
            .collect();
        cache.commit(many);
        assert_eq!(
            cache.heads.len(),
            HEAD_CACHE_CAPACITY,
            "cleared, then refilled"
        );
        assert!(!cache.heads.contains_key("a"));
    }
}
