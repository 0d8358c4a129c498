//! RocksDB on disk: the two instances a node keeps (the Raft log, and the state machine),
//! their column families, key encodings and checksummed record codec.
//!
//! The log and the state machine are separate RocksDB instances so that the state machine's
//! directory can be replaced wholesale when a snapshot is installed, and so that the log's
//! fsync cadence (every append) does not drag the state machine's writes with it.
//!
//! This module knows RocksDB and bytes; it does not know gRPC, Raft or business rules.

pub mod codec;
pub mod keys;
pub mod log_db;
pub mod sm_db;

pub use codec::{decode, encode};
pub use log_db::LogDb;
pub use sm_db::{SmDb, SmStore};

/// What can go wrong below the state machine and the log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt record in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("encoding {what}: {detail}")]
    Encode { what: &'static str, detail: String },
    #[error("missing column family {0}")]
    MissingColumnFamily(&'static str),
    /// A read limited to memory met an event larger than a read on an async worker may
    /// decode (`eventstore::read::INLINE_BYTES`).
    #[error("an event of {0} bytes is too large to read on an async worker")]
    TooLargeInline(usize),
}

impl StorageError {
    /// A read limited to memory (`ReadTier::BlockCache`) that needed the disk, or met an
    /// event too large to decode on an async worker: nothing was read; the same read may be
    /// retried where blocking is allowed.
    pub fn needs_pool(&self) -> bool {
        match self {
            StorageError::Rocks(e) => e.kind() == rocksdb::ErrorKind::Incomplete,
            StorageError::TooLargeInline(_) => true,
            _ => false,
        }
    }

    pub fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> Self {
        StorageError::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Options shared by both instances: modest background work (the machine has 2 cores),
/// LZ4 for upper levels and ZSTD for the bottom, where most bytes live.
pub(crate) fn base_options() -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(4);
    opts.set_max_total_wal_size(256 << 20);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    opts
}

/// Column family options with a bloom filter, for CFs served by point lookups.
pub(crate) fn point_lookup_cf_options(cache: &rocksdb::Cache) -> rocksdb::Options {
    let mut opts = base_options();
    let mut block = rocksdb::BlockBasedOptions::default();
    block.set_block_cache(cache);
    block.set_bloom_filter(10.0, false);
    block.set_cache_index_and_filter_blocks(true);
    opts.set_block_based_table_factory(&block);
    // Most lookups here miss (a new event id, a new stream): a memtable bloom filter
    // answers those without walking the skiplist.
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts
}

/// Column family options for CFs mostly read by range scans.
pub(crate) fn scan_cf_options(cache: &rocksdb::Cache) -> rocksdb::Options {
    let mut opts = base_options();
    let mut block = rocksdb::BlockBasedOptions::default();
    block.set_block_cache(cache);
    block.set_block_size(32 << 10);
    opts.set_block_based_table_factory(&block);
    opts
}

/// Makes a rename or file creation in `dir` durable.
pub(crate) fn fsync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
