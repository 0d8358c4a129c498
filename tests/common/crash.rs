//! Crash images of a state machine on disk: what a kill -9 leaves, without killing the test.

use std::path::Path;
use std::time::{Duration, Instant};

use aetherops::raft::state_machine::StateMachine;
use aetherops::storage::sm_db::{SmDb, SM_CFS};

/// Stops compactions from starting, waits until none (and no flush) runs, and keeps files
/// from being deleted: the files on disk are then what a kill -9 at this instant leaves
/// (memtables are lost: the state machine writes no WAL), and they stay consistent while
/// they are copied. Not `cancel_all_background_work`: that flushes memtables first.
pub fn quiesce(db: &SmDb) {
    use rocksdb::properties::{NUM_RUNNING_COMPACTIONS, NUM_RUNNING_FLUSHES};
    for name in SM_CFS {
        db.db()
            .set_options_cf(
                db.cf(name).unwrap(),
                &[("disable_auto_compactions", "true")],
            )
            .unwrap();
    }
    db.db().disable_file_deletions().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let busy = |p| db.db().property_int_value(p).unwrap().unwrap_or(0);
        if busy(NUM_RUNNING_FLUSHES) == 0 && busy(NUM_RUNNING_COMPACTIONS) == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "background work never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Copies a directory tree (a RocksDB's `LOCK` file included: it is only an flock target).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// What a kill -9 of `sm` (whose directory is `dir`) leaves, reopened from a copy in `into`.
pub fn crash(sm: StateMachine, dir: &Path, into: &Path) -> StateMachine {
    let store = sm.store();
    quiesce(&store.db());
    copy_dir(dir, into);
    drop(store);
    drop(sm);
    StateMachine::open(into).unwrap()
}
