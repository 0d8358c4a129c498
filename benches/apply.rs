//! State-machine apply throughput (criterion): what one replica spends per appended event —
//! every replica of a cluster pays it. Run: `cargo bench --bench apply -j 1`.
//!
//! Each iteration applies one log entry the way the state machine does (an `Applier` over
//! one `SmWriteBatch`, `finish_entry`, commit) to a RocksDB database on disk
//! that keeps growing across iterations. `thrpt` is events/s. The two id kinds show why
//! generated ids are time-ordered (UUIDv7): the idempotency index is keyed by event id.

use std::hint::black_box;
use std::time::Duration;

use aetherops::eventstore::apply::{Applier, HeadCache};
use aetherops::eventstore::{AppendCommand, StoreState};
use aetherops::model::{ExpectedVersion, NewEvent};
use aetherops::storage::sm_db::{SmDb, SmWriteBatch};
use aetherops::storage::SmStore;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use uuid::Uuid;

const STREAMS: usize = 64;
const WINDOW_NS: i64 = 24 * 3600 * 1_000_000_000;

#[derive(Clone, Copy)]
enum Ids {
    RandomV4,
    TimeOrderedV7,
    /// Time-ordered ids, and every append to a stream not written before: each append
    /// looks its stream's head up in the store (the head cache cannot know it).
    NewStreamsV7,
}

struct Replica {
    _dir: tempfile::TempDir,
    _store: SmStore,
    db: std::sync::Arc<SmDb>,
    heads: HeadCache,
    state: Option<StoreState>,
    index: u64,
    payload: bytes::Bytes,
}

impl Replica {
    fn new() -> Replica {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SmStore::open(dir.path()).expect("open state machine");
        let db = store.db();
        Replica {
            _dir: dir,
            _store: store,
            db,
            heads: HeadCache::default(),
            state: Some(StoreState::default()),
            index: 0,
            payload: bytes::Bytes::from(vec![b'x'; 256]),
        }
    }

    /// One entry: `appends` appends of `per_append` events each, to streams in turn.
    fn apply_entry(&mut self, ids: Ids, appends: usize, per_append: usize) {
        self.index += 1;
        let now = 1_700_000_000_000_000_000 + self.index as i64 * 1_000_000;
        let cmds: Vec<AppendCommand> = (0..appends)
            .map(|i| AppendCommand {
                stream: match ids {
                    Ids::NewStreamsV7 => format!("new-{}-{i}", self.index),
                    _ => format!("bench-{}", (self.index as usize * appends + i) % STREAMS),
                },
                expected: ExpectedVersion::Any,
                events: (0..per_append)
                    .map(|_| NewEvent {
                        event_id: match ids {
                            Ids::RandomV4 => Uuid::new_v4(),
                            Ids::TimeOrderedV7 | Ids::NewStreamsV7 => Uuid::now_v7(),
                        },
                        event_type: "BenchEvent".into(),
                        schema_version: 1,
                        event_time_ns: 0,
                        payload: self.payload.clone(),
                        metadata: Default::default(),
                    })
                    .collect(),
            })
            .collect();
        let db = &self.db;
        let mut wb = SmWriteBatch::new(db, 0, self.index);
        let state = self.state.take().expect("state");
        let mut applier = Applier::new(db, &self.heads, state);
        let t = applier.commit_time(now);
        // As the state machine does: the entry's idempotency records read in one batch.
        applier
            .prefetch_dedupe(cmds.iter().flat_map(|c| &c.events).map(|e| &e.event_id))
            .expect("prefetch");
        for c in &cmds {
            black_box(applier.append(&mut wb, t, WINDOW_NS, c).expect("append"));
        }
        applier
            .finish_entry(&mut wb, t, self.index, WINDOW_NS)
            .expect("finish entry");
        let (state, heads) = applier.into_parts();
        wb.commit().expect("commit");
        self.heads.commit(heads);
        self.state = Some(state);
    }
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.measurement_time(Duration::from_secs(8));
    for (appends, per_append) in [(32, 1), (32, 16)] {
        for (name, ids) in [
            ("v4", Ids::RandomV4),
            ("v7", Ids::TimeOrderedV7),
            ("v7-new-streams", Ids::NewStreamsV7),
        ] {
            g.throughput(Throughput::Elements((appends * per_append) as u64));
            let mut replica = Replica::new();
            g.bench_function(
                BenchmarkId::new(format!("{appends}x{per_append}-events"), name),
                |b| b.iter(|| replica.apply_entry(ids, appends, per_append)),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
