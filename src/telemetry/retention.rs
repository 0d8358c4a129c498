//! Retention: which telemetry records are dead, as a function of replicated state only.
//!
//! A series' records die by three cutoffs (raw points, minute buckets, hour buckets) that
//! derive from the replicated commit time ("now": the last entry's leader-stamped time,
//! never decreasing) and the replicated policies (`SetRetention`, longest prefix wins).
//!
//! ## Cutoffs never move backwards
//!
//! Compaction drops dead records on each replica's own schedule, so a record once dead must
//! stay dead in every later state: otherwise a longer policy would make data "alive" again
//! on a replica that kept it and absent on one that compacted it (answers, the minute
//! recompute in apply and digests would diverge). `now` only grows and a policy's cutoffs
//! grow with it; a policy *change* could move them back. So every policy record keeps
//! **floors**: when a prefix gets a new policy at time T, the series that existed then
//! (ids below the next series id — ids are assigned in log order) keep at least the cutoffs
//! they had at T. A longer policy therefore lengthens retention for series created after
//! it, and for the others only once its own cutoffs pass the floor. A floor that the
//! policy's own cutoffs have passed is dropped (it can never bind again).
//!
//! This is also what makes importing history work: set a prefix's policy first (e.g.
//! `--raw forever`), then import; the imported series are new, so the policy holds for them
//! fully.
//!
//! ## Who sees which state
//!
//! * Apply computes cutoffs from the state it is applying (commit time of the entry,
//!   policies as of the entry) and never reads a record dead by them.
//! * Queries, snapshots and the deep state scan derive the rule from the point-in-time
//!   view they read ([`RetentionState::load`] on a RocksDB snapshot), never from a cache.
//! * The compaction filter uses [`RetentionView`], which only moves at a *durable point*:
//!   the state is captured from the database just before all column families are flushed
//!   together ([`crate::storage::SmDb::sync`]) and installed after the flush succeeded. So
//!   the filter never drops what a replay after a crash (which resumes at the last flush)
//!   still reads, and never sees a policy before the batch that set it is durable.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::segment;
use crate::storage::keys::{read_i64_ordered, read_u64};
use crate::storage::sm_db::{
    DeadRule, Retention, SmDb, CF_META, CF_TM_POLICY, CF_TM_RAW, CF_TM_ROLLUP, CF_TM_SERIES,
};
use crate::storage::{decode, Result, StorageError};

pub const MINUTE_NS: i64 = 60_000_000_000;
pub const HOUR_NS: i64 = 60 * MINUTE_NS;
/// Tier ids in rollup keys.
pub const TIER_MINUTE: u8 = 1;
pub const TIER_HOUR: u8 = 2;
/// Longest retention one tier may be given: its span in ns must fit an i64 (~292 years).
pub const MAX_RETENTION_MS: u64 = (i64::MAX / 1_000_000) as u64;

/// Retention of one series prefix. Durations in milliseconds; 0 keeps that tier forever
/// (a tier kept forever implies the coarser ones are too); `lateness_ms = 0` accepts
/// points of any age.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    pub prefix: String,
    pub raw_ms: u64,
    pub minute_ms: u64,
    pub hour_ms: u64,
    pub lateness_ms: u64,
}

impl RetentionPolicy {
    /// raw 48 h → 1 minute for 30 days → 1 hour forever.
    pub fn default_for(prefix: &str) -> Self {
        RetentionPolicy {
            prefix: prefix.to_owned(),
            raw_ms: 48 * 3_600_000,
            minute_ms: 30 * 24 * 3_600_000,
            hour_ms: 0,
            lateness_ms: 0,
        }
    }

    /// Each tier must outlive the finer one by at least one of its buckets, so that every
    /// range is served by some tier. Checked arithmetic: any u64 input is answered.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, ms) in [
            ("raw", self.raw_ms),
            ("minute", self.minute_ms),
            ("hour", self.hour_ms),
            ("lateness", self.lateness_ms),
        ] {
            if ms > MAX_RETENTION_MS {
                return Err(format!(
                    "{name} retention {ms} ms is longer than {MAX_RETENTION_MS} ms (use 0 for forever)"
                ));
            }
        }
        if self.raw_ms == 0 && (self.minute_ms != 0 || self.hour_ms != 0) {
            return Err("raw kept forever: minute and hour must be forever (0) too".into());
        }
        if self.minute_ms == 0 && self.hour_ms != 0 {
            return Err("minute kept forever: hour must be forever (0) too".into());
        }
        if self.minute_ms != 0 && self.minute_ms < self.raw_ms.saturating_add(3_600_000) {
            return Err("minute retention must exceed raw retention by at least an hour".into());
        }
        if self.hour_ms != 0 && self.hour_ms < self.minute_ms.saturating_add(24 * 3_600_000) {
            return Err(
                "hour retention must be 0 (forever) or exceed minute retention by a day".into(),
            );
        }
        Ok(())
    }

    /// The tier cutoffs at replicated time `now_ns`, aligned to the tier's buckets: raw
    /// points older than `raw`, minute buckets older than `minute`, hour buckets older than
    /// `hour` are dead.
    pub fn cutoffs(&self, now_ns: i64) -> Cutoffs {
        let ago = |ms: u64, width: i64| {
            if ms == 0 {
                return i64::MIN;
            }
            let span = i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
            floor(now_ns.saturating_sub(span), width)
        };
        Cutoffs {
            raw: ago(self.raw_ms, MINUTE_NS),
            minute: ago(self.minute_ms, HOUR_NS),
            hour: ago(self.hour_ms, HOUR_NS),
        }
    }

    /// The oldest timestamp accepted at `now_ns` (`i64::MIN`: any).
    pub fn oldest_accepted(&self, now_ns: i64) -> i64 {
        if self.lateness_ms == 0 {
            return i64::MIN;
        }
        now_ns.saturating_sub(
            i64::try_from(self.lateness_ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
        )
    }
}

/// Where each tier's retained data starts: records before are dead. Raw is minute-aligned,
/// the others hour-aligned, and `raw >= minute >= hour`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cutoffs {
    pub raw: i64,
    pub minute: i64,
    pub hour: i64,
}

impl Cutoffs {
    pub const NONE: Cutoffs = Cutoffs {
        raw: i64::MIN,
        minute: i64::MIN,
        hour: i64::MIN,
    };

    /// Tier by tier, the later cutoff.
    pub fn max(self, o: Cutoffs) -> Cutoffs {
        Cutoffs {
            raw: self.raw.max(o.raw),
            minute: self.minute.max(o.minute),
            hour: self.hour.max(o.hour),
        }
    }

    fn le(self, o: Cutoffs) -> bool {
        self.raw <= o.raw && self.minute <= o.minute && self.hour <= o.hour
    }

    /// Whether a stored record is dead by these cutoffs.
    pub fn is_dead(&self, cf: &str, key: &[u8], value: &[u8]) -> bool {
        match cf {
            // A segment dies when its newest point is older than the raw cutoff.
            CF_TM_RAW => segment::info(value).is_ok_and(|i| i.max_ts < self.raw),
            CF_TM_ROLLUP => {
                let (Some(&tier), Some(start)) =
                    (key.get(8), key.get(9..).and_then(read_i64_ordered))
                else {
                    return false;
                };
                match tier {
                    TIER_MINUTE => start < self.minute,
                    TIER_HOUR => start < self.hour,
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

pub(crate) fn floor(t: i64, width: i64) -> i64 {
    t.saturating_sub(t.rem_euclid(width))
}

/// Series created before `below_series` keep at least `cutoffs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    pub below_series: u64,
    pub cutoffs: Cutoffs,
}

/// What `tm_policy` stores per prefix: the policy and its floors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub policy: RetentionPolicy,
    pub floors: Vec<Floor>,
}

impl PolicyRecord {
    /// Decodes a record; records written before floors existed hold the bare policy.
    pub fn decode(bytes: &[u8]) -> Result<PolicyRecord> {
        decode::<PolicyRecord>("retention policy", bytes).or_else(|e| {
            decode::<RetentionPolicy>("retention policy", bytes)
                .map(|policy| PolicyRecord {
                    policy,
                    floors: Vec::new(),
                })
                .map_err(|_| e)
        })
    }

    fn cutoffs(&self, series: u64, now_ns: i64) -> Cutoffs {
        self.floors
            .iter()
            .filter(|f| series < f.below_series)
            .fold(self.policy.cutoffs(now_ns), |c, f| c.max(f.cutoffs))
    }
}

/// Every stored policy record, with the longest-prefix rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    records: Vec<PolicyRecord>,
}

impl Policies {
    pub fn from_records(records: Vec<PolicyRecord>) -> Self {
        Policies { records }
    }

    fn governor(&self, name: &str) -> Option<&PolicyRecord> {
        self.records
            .iter()
            .filter(|r| name.starts_with(&r.policy.prefix))
            .max_by_key(|r| r.policy.prefix.len())
    }

    /// The policy that governs `series` (the built-in default when none matches).
    pub fn policy_for(&self, series: &str) -> RetentionPolicy {
        self.governor(series)
            .map(|r| r.policy.clone())
            .unwrap_or_else(|| RetentionPolicy::default_for(""))
    }

    /// The cutoffs of series `id` named `name` at `now_ns`, floors included.
    pub fn cutoffs(&self, id: u64, name: &str, now_ns: i64) -> Cutoffs {
        match self.governor(name) {
            Some(r) => r.cutoffs(id, now_ns),
            None => RetentionPolicy::default_for("").cutoffs(now_ns),
        }
    }

    /// The record that setting `policy` at `now_ns` stores, when the next series id is
    /// `next_series`: the series it takes over keep the cutoffs they had (see the module
    /// documentation).
    pub fn record_for(
        &self,
        policy: RetentionPolicy,
        now_ns: i64,
        next_series: u64,
    ) -> PolicyRecord {
        // The series `policy` takes over were governed by the longest existing prefix of its
        // prefix (itself, if set before): no other policy's series change hands.
        let (mut floors, was) = match self.governor(&policy.prefix) {
            Some(r) => (r.floors.clone(), r.policy.cutoffs(now_ns)),
            None => (Vec::new(), RetentionPolicy::default_for("").cutoffs(now_ns)),
        };
        floors.push(Floor {
            below_series: next_series,
            cutoffs: was,
        });
        let own = policy.cutoffs(now_ns);
        floors.retain(|f| f.below_series > 0 && !f.cutoffs.le(own));
        PolicyRecord { policy, floors }
    }

    /// Replaces (or adds) the record of its prefix.
    pub fn set(&mut self, record: PolicyRecord) {
        self.records
            .retain(|r| r.policy.prefix != record.policy.prefix);
        self.records.push(record);
    }
}

/// A point-in-time read of the state machine: the live database or a RocksDB snapshot.
pub type ReadView<'a> = rocksdb::SnapshotWithThreadMode<'a, rocksdb::DB>;

/// The replicated facts retention depends on, read from one point-in-time view.
#[derive(Debug, Clone, Default)]
pub struct RetentionState {
    pub now_ns: i64,
    pub policies: Policies,
    /// Series id → name.
    pub series: HashMap<u64, String>,
}

impl RetentionState {
    /// Reads commit time, policies and series from `view`.
    pub fn load(db: &SmDb, view: &ReadView<'_>) -> Result<RetentionState> {
        Ok(RetentionState {
            now_ns: commit_time(db, view)?,
            policies: load_policies(db, view)?,
            series: load_series(db, view)?,
        })
    }

    /// Every known series' cutoffs.
    pub fn cutoffs(&self) -> HashMap<u64, Cutoffs> {
        self.series
            .iter()
            .map(|(id, name)| (*id, self.policies.cutoffs(*id, name, self.now_ns)))
            .collect()
    }
}

/// Which records a set of per-series cutoffs declares dead (records of unknown series and
/// of other column families never are).
pub fn dead_by(cutoffs: &HashMap<u64, Cutoffs>, cf: &str, key: &[u8], value: &[u8]) -> bool {
    read_u64(key)
        .and_then(|s| cutoffs.get(&s))
        .is_some_and(|c| c.is_dead(cf, key, value))
}

/// The replicated commit time stored with the applied state in `view`.
pub fn commit_time(db: &SmDb, view: &ReadView<'_>) -> Result<i64> {
    match view.get_cf(db.cf(CF_META)?, crate::eventstore::STATE_KEY)? {
        Some(b) => {
            Ok(decode::<crate::eventstore::StoreState>("store state", &b)?.last_commit_time_ns)
        }
        None => Ok(i64::MIN),
    }
}

pub fn load_policies(db: &SmDb, view: &ReadView<'_>) -> Result<Policies> {
    let mut records = Vec::new();
    for item in view.iterator_cf(db.cf(CF_TM_POLICY)?, rocksdb::IteratorMode::Start) {
        let (_, v) = item?;
        records.push(PolicyRecord::decode(&v)?);
    }
    Ok(Policies { records })
}

fn load_series(db: &SmDb, view: &ReadView<'_>) -> Result<HashMap<u64, String>> {
    let mut out = HashMap::new();
    for item in view.iterator_cf(db.cf(CF_TM_SERIES)?, rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        let id = super::keys::decode_series_id(&v)?;
        let name =
            String::from_utf8(k.to_vec()).map_err(|e| StorageError::corrupt("series name", e))?;
        out.insert(id, name);
    }
    Ok(out)
}

/// The retention state the compaction filter goes by: the state at the last durable point
/// (see the module documentation), never ahead of what a crash would leave on disk.
#[derive(Default)]
pub struct RetentionView {
    inner: RwLock<ViewInner>,
}

#[derive(Default)]
struct ViewInner {
    now_ns: i64,
    cutoffs: HashMap<u64, Cutoffs>,
}

impl RetentionView {
    pub fn new() -> Arc<Self> {
        Arc::new(RetentionView::default())
    }

    /// Takes the state of `db` as it is now (at open, or after a snapshot install, when the
    /// whole database is durable).
    pub fn reload(&self, db: &SmDb) -> Result<()> {
        let view = db.db().snapshot();
        let state = RetentionState::load(db, &view)?;
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.now_ns = state.now_ns;
        inner.cutoffs = state.cutoffs();
        Ok(())
    }

    /// The replicated time the filter goes by.
    pub fn now_ns(&self) -> i64 {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).now_ns
    }

    fn install(&self, state: &RetentionState) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        // A capture from a database that was replaced meanwhile is older: keep the newer.
        if state.now_ns >= inner.now_ns {
            inner.now_ns = state.now_ns;
            inner.cutoffs = state.cutoffs();
        }
    }
}

impl Retention for RetentionView {
    fn is_dead(&self, cf: &str, key: &[u8], value: &[u8]) -> bool {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        dead_by(&inner.cutoffs, cf, key, value)
    }

    fn rule_at(&self, db: &SmDb, view: &ReadView<'_>) -> Result<Box<DeadRule>> {
        let cutoffs = RetentionState::load(db, view)?.cutoffs();
        Ok(Box::new(move |cf: &str, k: &[u8], v: &[u8]| {
            dead_by(&cutoffs, cf, k, v)
        }))
    }

    fn before_flush(self: Arc<Self>, db: &SmDb) -> Result<Box<dyn FnOnce() + Send>> {
        // Read before the flush: everything this state describes is on disk after it.
        let view = db.db().snapshot();
        let state = RetentionState::load(db, &view)?;
        Ok(Box::new(move || self.install(&state)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(prefix: &str, raw_h: u64, minute_h: u64) -> RetentionPolicy {
        RetentionPolicy {
            prefix: prefix.into(),
            raw_ms: raw_h * 3_600_000,
            minute_ms: minute_h * 3_600_000,
            hour_ms: 0,
            lateness_ms: 0,
        }
    }

    #[test]
    fn policy_cutoffs_and_validation() {
        let p = RetentionPolicy::default_for("sat-");
        assert!(p.validate().is_ok());
        let now = 10 * 24 * HOUR_NS + 17 * MINUTE_NS + 5;
        let c = p.cutoffs(now);
        assert_eq!(c.raw, floor(now - 48 * HOUR_NS, MINUTE_NS));
        assert_eq!(c.raw % MINUTE_NS, 0);
        assert_eq!(c.hour, i64::MIN);
        let bad = RetentionPolicy {
            minute_ms: p.raw_ms,
            ..p.clone()
        };
        assert!(bad.validate().is_err());
        let mut policies = Policies::default();
        policies.set(PolicyRecord {
            policy: RetentionPolicy::default_for("sat-"),
            floors: vec![],
        });
        policies.set(PolicyRecord {
            policy: RetentionPolicy {
                raw_ms: 1,
                ..RetentionPolicy::default_for("sat-7/")
            },
            floors: vec![],
        });
        assert_eq!(policies.policy_for("sat-7/battery_v").raw_ms, 1);
        assert_eq!(policies.policy_for("sat-8/x").prefix, "sat-");
        assert_eq!(policies.policy_for("ground/x").prefix, "");
        // Forever: every tier.
        let forever = RetentionPolicy {
            raw_ms: 0,
            minute_ms: 0,
            hour_ms: 0,
            ..p.clone()
        };
        assert!(forever.validate().is_ok());
        assert_eq!(forever.cutoffs(now), Cutoffs::NONE);
        assert!(RetentionPolicy {
            minute_ms: 5,
            ..forever.clone()
        }
        .validate()
        .is_err());
    }

    /// Issue 9, point 9c: the extreme durations are answered, never an overflow panic.
    #[test]
    fn validate_survives_extreme_durations() {
        for (raw, minute, hour) in [
            (u64::MAX, u64::MAX, u64::MAX),
            (u64::MAX - 1, u64::MAX, 0),
            (MAX_RETENTION_MS, MAX_RETENTION_MS, 0),
            (MAX_RETENTION_MS - 3_600_000, MAX_RETENTION_MS, 0),
            (1, u64::MAX, u64::MAX),
        ] {
            let p = RetentionPolicy {
                prefix: "x/".into(),
                raw_ms: raw,
                minute_ms: minute,
                hour_ms: hour,
                lateness_ms: u64::MAX,
            };
            let _ = p.validate();
            let c = p.cutoffs(i64::MAX);
            assert!(c.raw >= c.minute && c.minute >= c.hour, "{c:?}");
            let _ = p.cutoffs(i64::MIN);
            let _ = p.oldest_accepted(i64::MIN);
        }
        let ok = RetentionPolicy {
            prefix: "x/".into(),
            raw_ms: MAX_RETENTION_MS - 3_600_000,
            minute_ms: MAX_RETENTION_MS,
            hour_ms: 0,
            lateness_ms: 0,
        };
        assert!(ok.validate().is_ok());
        assert!(RetentionPolicy {
            raw_ms: MAX_RETENTION_MS + 1,
            ..ok
        }
        .validate()
        .unwrap_err()
        .contains("longer than"));
    }

    /// Issue 9, point 3a: a longer policy never moves a series' cutoffs backwards; series
    /// created after it get it fully.
    #[test]
    fn longer_policy_never_revives_dead_data() {
        let t0 = 1000 * HOUR_NS;
        let mut policies = Policies::default();
        // Series 0 and 1 exist, under "sat-" with raw 2 h.
        policies.set(policies.record_for(policy("sat-", 2, 30), t0, 2));
        let before = policies.cutoffs(1, "sat-1/x", t0 + HOUR_NS);
        // A longer policy on the same prefix, then on a longer prefix.
        let t1 = t0 + HOUR_NS;
        policies.set(policies.record_for(policy("sat-", 48, 24 * 30), t1, 2));
        assert_eq!(policies.cutoffs(1, "sat-1/x", t1), before);
        policies.set(policies.record_for(policy("sat-1/", 96, 24 * 30), t1, 3));
        assert_eq!(policies.cutoffs(1, "sat-1/x", t1), before);
        for dt in [0, HOUR_NS, 10 * HOUR_NS, 100 * HOUR_NS] {
            let c = policies.cutoffs(1, "sat-1/x", t1 + dt);
            assert!(before.le(c), "{dt}: {c:?} went back from {before:?}");
        }
        // A series created later (id 3) has the new policy's retention.
        assert_eq!(
            policies.cutoffs(3, "sat-1/y", t1),
            policy("sat-1/", 96, 24 * 30).cutoffs(t1)
        );
        // Floors that the policy's own cutoffs have passed are dropped.
        let late = t1 + 1000 * HOUR_NS;
        policies.set(policies.record_for(policy("sat-1/", 96, 24 * 30), late, 4));
        assert!(policies.governor("sat-1/").unwrap().floors.is_empty());
        // A shorter policy needs no floor.
        let r = policies.record_for(policy("sat-1/", 1, 2), late, 4);
        assert!(r.floors.is_empty());
    }

    #[test]
    fn old_policy_records_still_decode() {
        let p = RetentionPolicy::default_for("old/");
        let bytes = crate::storage::encode("retention policy", &p).unwrap();
        assert_eq!(
            PolicyRecord::decode(&bytes).unwrap(),
            PolicyRecord {
                policy: p.clone(),
                floors: vec![]
            }
        );
        let rec = PolicyRecord {
            policy: p,
            floors: vec![Floor {
                below_series: 3,
                cutoffs: Cutoffs::NONE,
            }],
        };
        let bytes = crate::storage::encode("retention policy", &rec).unwrap();
        assert_eq!(PolicyRecord::decode(&bytes).unwrap(), rec);
    }
}
