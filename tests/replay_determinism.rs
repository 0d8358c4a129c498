//! Replicas that applied the same committed log hold the same state, whatever their own
//! flush and compaction timings and crashes did (issue 9).
//!
//! Random logs — appends, telemetry ingests with backfills and re-sent points, retention
//! changes (longer and shorter) — are applied to two fresh state machines on disk. Replica A
//! applies them straight. Replica B, between entries, is forced to flush, to run the
//! telemetry compaction (which flushes and compacts with the retention filter), or to crash:
//! its directory is copied while it is quiescent (what a kill -9 leaves: the state as of its
//! last flush, as the state machine writes no WAL), and it reopens from the copy and replays
//! the log from its applied index, as openraft would. At the end both must report the same
//! outcomes for every entry, the same chained digest and the same deep (whole-state) digest.

mod common;

use aetherops::eventstore::AppendCommand;
use aetherops::model::{ExpectedVersion, NewEvent};
use aetherops::raft::state_machine::{scan_digest, StateMachine};
use aetherops::raft::{Command, Entry, LogId, Request, Response};
use aetherops::telemetry::command::TelemetryCommand;
use aetherops::telemetry::points::segments_of;
use aetherops::telemetry::retention::RetentionPolicy;
use common::crash::crash;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;

const HOUR_MS: u64 = 3_600_000;
const MIN_NS: i64 = 60_000_000_000;
/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: u8,
        events: u8,
        exact: Option<u64>,
    },
    /// `age_min` minutes before the entry's commit time, `n` points one minute apart.
    Ingest {
        series: u8,
        age_min: i64,
        n: u8,
        value: i8,
    },
    Retention {
        raw_hours: u64,
    },
}

/// What B does after an entry.
#[derive(Debug, Clone, Copy)]
enum Chaos {
    Nothing,
    Flush,
    Compact,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..3, 1u8..4, proptest::option::of(0u64..6))
            .prop_map(|(stream, events, exact)| Op::Append { stream, events, exact }),
        4 => (0u8..2, prop_oneof![0i64..90, 200i64..4000], 1u8..40, any::<i8>())
            .prop_map(|(series, age_min, n, value)| Op::Ingest { series, age_min, n, value }),
        1 => prop_oneof![Just(1u64), Just(2), Just(6), Just(48)]
            .prop_map(|raw_hours| Op::Retention { raw_hours }),
    ]
}

fn chaos() -> impl Strategy<Value = Chaos> {
    prop_oneof![
        6 => Just(Chaos::Nothing),
        2 => Just(Chaos::Flush),
        2 => Just(Chaos::Compact),
        1 => Just(Chaos::Crash),
    ]
}

/// One entry: minutes since the previous one, its commands, and what B does after it.
type Step = (i64, Vec<Op>, Chaos);

fn command(op: &Op, commit_ns: i64, seq: &mut u64) -> Command {
    match op {
        Op::Append {
            stream,
            events,
            exact,
        } => Command::Append(AppendCommand {
            stream: format!("s-{stream}"),
            expected: exact.map_or(ExpectedVersion::Any, ExpectedVersion::Exact),
            events: (0..*events)
                .map(|_| {
                    *seq += 1;
                    NewEvent {
                        // Deterministic ids: both replicas get byte-identical commands anyway,
                        // and a fixed id sequence keeps failures reproducible.
                        event_id: uuid::Uuid::from_u128(u128::from(*seq)),
                        event_type: "T".into(),
                        schema_version: 1,
                        event_time_ns: 0,
                        payload: bytes::Bytes::from(format!("{{\"n\":{seq}}}")),
                        metadata: Default::default(),
                    }
                })
                .collect(),
        }),
        Op::Ingest {
            series,
            age_min,
            n,
            value,
        } => {
            // Whole minutes, so that re-sent ranges hit the same timestamps.
            let start = (commit_ns - age_min * MIN_NS).div_euclid(MIN_NS) * MIN_NS;
            let ts: Vec<i64> = (0..i64::from(*n)).map(|i| start + i * MIN_NS).collect();
            let vals: Vec<f64> = (0..*n).map(|i| f64::from(*value) + f64::from(i)).collect();
            let series = format!("sat-{series}/v");
            Command::Telemetry(TelemetryCommand::Ingest(
                segments_of(&series, &ts, &vals).expect("segments"),
            ))
        }
        Op::Retention { raw_hours } => {
            Command::Telemetry(TelemetryCommand::SetRetention(RetentionPolicy {
                prefix: "sat-".into(),
                raw_ms: raw_hours * HOUR_MS,
                minute_ms: (raw_hours + 2) * HOUR_MS,
                hour_ms: 0,
                lateness_ms: 0,
            }))
        }
    }
}

fn entries(steps: &[Step]) -> Vec<Entry> {
    let mut t = T0;
    let mut seq = 0;
    steps
        .iter()
        .enumerate()
        .map(|(i, (gap_min, ops, _))| {
            t += gap_min * MIN_NS;
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
                payload: EntryPayload::Normal(Request {
                    commit_time_ns: t,
                    dedupe_window_ns: 6 * 60 * MIN_NS,
                    commands: ops.iter().map(|o| command(o, t, &mut seq)).collect(),
                }),
            }
        })
        .collect()
}

async fn apply(sm: &mut StateMachine, e: &Entry) -> Response {
    let mut r = sm.apply([e.clone()]).await.expect("apply");
    r.pop().expect("one response")
}

async fn check(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let log = entries(&steps);
    let tmp = tempfile::tempdir().unwrap();
    let dir_a = tmp.path().join("a");
    let mut a = StateMachine::open(&dir_a).unwrap();
    let mut b_dir = tmp.path().join("b0");
    let mut b = StateMachine::open(&b_dir).unwrap();
    let mut crashes = 0;
    let mut outcomes = Vec::with_capacity(log.len());
    for (i, e) in log.iter().enumerate() {
        let ra = apply(&mut a, e).await;
        let rb = apply(&mut b, e).await;
        prop_assert_eq!(&ra, &rb, "outcomes of entry {}", i + 1);
        outcomes.push(ra);
        match steps[i].2 {
            Chaos::Nothing => {}
            Chaos::Flush => b.store().db().sync().unwrap(),
            Chaos::Compact => aetherops::telemetry::maintenance::compact(&b.store().db()).unwrap(),
            Chaos::Crash => {
                // What survives a kill -9: the files as they are, memtables lost.
                crashes += 1;
                let copy = tmp.path().join(format!("b{crashes}"));
                b = crash(b, &b_dir, &copy);
                b_dir = copy;
                let applied = b.status().borrow().applied.map_or(0, |l| l.index);
                // openraft re-applies the committed entries after the state machine's index.
                for (j, e) in log.iter().enumerate().take(i + 1).skip(applied as usize) {
                    let again = apply(&mut b, e).await;
                    prop_assert_eq!(&again, &outcomes[j], "replayed entry {}", j + 1);
                }
            }
        }
    }
    let (da, db) = (
        scan_digest(&a.store()).unwrap(),
        scan_digest(&b.store()).unwrap(),
    );
    prop_assert_eq!(da.applied, db.applied);
    prop_assert_eq!(da.chained, db.chained, "chained digests");
    prop_assert_eq!(
        da.scan,
        db.scan,
        "deep digests ({} vs {} records)",
        da.records,
        db.records
    );
    Ok(())
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        (
            prop_oneof![0i64..5, 30i64..200],
            proptest::collection::vec(op(), 1..4),
            chaos(),
        ),
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_agree_whatever_their_flushes_compactions_and_crashes(steps in steps()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(check(steps))?;
    }
}
