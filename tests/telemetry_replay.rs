//! Replay determinism for telemetry (issue 9, points 2, 3, 4, 9d and the closing request):
//! the same committed log applied to two fresh state machines — one that never flushes
//! nor compacts, one with flushes, forced compactions, kill -9 style crashes (the files on
//! disk at an instant, reopened, the log re-applied from the durable applied index) and
//! snapshot installs at random points — must end with the same chained digest and the
//! same deep state digest. The workloads are random (seeded): ingests of recent data,
//! backfills of history older than every tier, re-sent batches, and retention changes both
//! longer and shorter.

mod common;

use common::crash::{copy_dir, crash, quiesce};

use aetherops::raft::state_machine::{scan_digest, ScanDigest, StateMachine};
use aetherops::raft::{Command, Entry, LogId, Request};
use aetherops::storage::sm_db::{SmWriteBatch, CF_META, CF_TM_ROLLUP};
use aetherops::storage::SmStore;
use aetherops::telemetry::command::TelemetryCommand;
use aetherops::telemetry::maintenance::{self, flush};
use aetherops::telemetry::points::segments_of;
use aetherops::telemetry::retention::RetentionPolicy;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIN: i64 = 60_000_000_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const HOUR_MS: u64 = 3_600_000;

fn entry(index: u64, commit_time_ns: i64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request {
            commit_time_ns,
            dedupe_window_ns: DAY,
            commands,
        }),
    }
}

fn ingest(series: &str, start: i64, n: usize, step: i64, rng: &mut StdRng) -> Command {
    let ts: Vec<i64> = (0..n as i64).map(|i| start + i * step).collect();
    let vals: Vec<f64> = ts
        .iter()
        .map(|_| (rng.random_range(0..10_000) as f64) * 0.01)
        .collect();
    Command::Telemetry(TelemetryCommand::Ingest(
        segments_of(series, &ts, &vals).unwrap(),
    ))
}

fn random_policy(rng: &mut StdRng) -> Command {
    let prefix = ["", "a/", "a/x", "b/"][rng.random_range(0..4)];
    let raw_ms = [HOUR_MS, 2 * HOUR_MS, 48 * HOUR_MS][rng.random_range(0..3)];
    let minute_ms = raw_ms + [HOUR_MS, 24 * HOUR_MS][rng.random_range(0..2)];
    let hour_ms = [0, minute_ms + 24 * HOUR_MS, minute_ms + 72 * HOUR_MS][rng.random_range(0..3)];
    Command::Telemetry(TelemetryCommand::SetRetention(RetentionPolicy {
        prefix: prefix.into(),
        raw_ms,
        minute_ms,
        hour_ms,
        lateness_ms: 0,
    }))
}

/// A random committed log of `len` entries.
fn workload(seed: u64, len: u64) -> Vec<Entry> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut now = 1_700_000_000_000_000_000i64;
    let mut sent: Vec<Command> = Vec::new();
    let mut log = Vec::new();
    for index in 1..=len {
        now += [MIN, 30 * MIN, 3 * HOUR, 2 * DAY][rng.random_range(0..4)];
        let mut cmds = Vec::new();
        for _ in 0..rng.random_range(1..3) {
            let r = rng.random_range(0..100);
            let cmd = if r < 15 {
                random_policy(&mut rng)
            } else if r < 35 && !sent.is_empty() {
                // A retry of an earlier batch.
                sent[rng.random_range(0..sent.len())].clone()
            } else {
                let series = ["a/x", "a/y", "b/z"][rng.random_range(0..3)];
                let age = [0, 20 * MIN, 3 * HOUR, DAY, 3 * DAY, 20 * DAY][rng.random_range(0..6)];
                let start = now - age - rng.random_range(0..2 * HOUR);
                let step = [7_000_000_000, 61_000_000_000][rng.random_range(0..2)];
                let c = ingest(series, start, rng.random_range(1..300), step, &mut rng);
                sent.push(c.clone());
                c
            };
            cmds.push(cmd);
        }
        log.push(entry(index, now, cmds));
    }
    log
}

async fn applied_index(sm: &mut StateMachine) -> u64 {
    sm.applied_state().await.unwrap().0.map_or(0, |l| l.index)
}

fn digest(sm: &StateMachine) -> ScanDigest {
    scan_digest(&sm.store()).unwrap()
}

async fn run(seed: u64, len: u64) {
    let log = workload(seed, len);
    let tmp = tempfile::tempdir().unwrap();
    let mut a = StateMachine::open(&tmp.path().join("a")).unwrap();
    a.apply(log.clone()).await.unwrap();

    let mut rng = StdRng::seed_from_u64(seed ^ 0xfeed);
    let mut dir = tmp.path().join("b0");
    let mut b = StateMachine::open(&dir).unwrap();
    let mut generation = 0;
    let mut events = Vec::new();
    loop {
        let next = applied_index(&mut b).await as usize;
        if next >= log.len() {
            break;
        }
        b.apply([log[next].clone()]).await.unwrap();
        let r = rng.random_range(0..100);
        let db = b.store().db();
        if r < 15 {
            maintenance::flush(&db).unwrap();
            events.push(format!("{}: flush", next + 1));
        } else if r < 25 {
            maintenance::compact(&db).unwrap();
            events.push(format!("{}: compact", next + 1));
        } else if r < 35 {
            drop(db);
            generation += 1;
            let to = tmp.path().join(format!("b{generation}"));
            b = crash(b, &dir, &to);
            dir = to;
            events.push(format!(
                "{}: crash, reopened at {}",
                next + 1,
                applied_index(&mut b).await
            ));
        } else if r < 40 {
            drop(db);
            let snap = b
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            generation += 1;
            dir = tmp.path().join(format!("b{generation}"));
            b = StateMachine::open(&dir).unwrap();
            b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
            events.push(format!(
                "{}: snapshot installed in a fresh machine",
                next + 1
            ));
        }
    }
    let (da, db) = (digest(&a), digest(&b));
    assert_eq!(da.applied, db.applied);
    assert_eq!(
        da.chained, db.chained,
        "seed {seed}: the replicas applied different writes; B did {events:#?}"
    );
    assert_eq!(
        (da.scan, da.records),
        (db.scan, db.records),
        "seed {seed}: live state differs; B did {events:#?}"
    );
}

/// Issue 9, point 2: the flush behind `Telemetry.Stats` and `Telemetry.Compact` must not
/// make the telemetry families durable ahead of `meta` (the applied index): a crash image
/// taken right after it holds both at the same entry. (Before the fix it flushed `tm_raw`
/// and `tm_rollup` alone, and the image held the applied index of the flush before.)
#[test]
fn telemetry_flush_keeps_column_families_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = SmStore::open(&dir.path().join("sm")).unwrap();
    let db = store.db();
    let write = |v: &[u8]| {
        let mut wb = SmWriteBatch::new(&db, 0, 1);
        wb.put(CF_TM_ROLLUP, b"bucket", v).unwrap();
        wb.put_meta(b"applied", v).unwrap();
        wb.commit().unwrap();
    };
    write(b"1");
    db.sync().unwrap();
    write(b"2");
    flush(&db).unwrap();
    quiesce(&db);
    copy_dir(&dir.path().join("sm"), &dir.path().join("crashed"));
    drop(db);
    drop(store);
    let store = SmStore::open(&dir.path().join("crashed")).unwrap();
    let db = store.db();
    let meta = db.db().get_cf(db.cf(CF_META).unwrap(), b"applied").unwrap();
    let roll = db
        .db()
        .get_cf(db.cf(CF_TM_ROLLUP).unwrap(), b"bucket")
        .unwrap();
    assert_eq!(
        meta, roll,
        "applied index and telemetry data from different flushes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_with_flushes_compactions_and_crashes_is_deterministic() {
    for seed in 0..8 {
        run(seed, 70).await;
    }
}
