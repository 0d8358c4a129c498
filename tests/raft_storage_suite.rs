//! openraft's own storage conformance suite, run against the RocksDB log store and state
//! machine on real disk (a temporary directory per case).

use std::sync::Arc;

use aetherops::raft::log_store::LogStore;
use aetherops::raft::state_machine::StateMachine;
use aetherops::raft::{NodeId, TypeConfig};
use aetherops::storage::LogDb;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::new(Arc::new(
            LogDb::open(&dir.path().join("raft")).expect("open log db"),
        ));
        let sm = StateMachine::open(dir.path()).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(RocksBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
