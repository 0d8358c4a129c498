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
    memtable_bloom_filter(&mut opts);
    opts
}

/// Most lookups in a family with bloom filters miss (a new event id, a new stream): a
/// memtable bloom filter answers those without walking the skiplist.
fn memtable_bloom_filter(opts: &mut rocksdb::Options) {
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(0.1);
}

/// Column family options for CFs mostly read by range scans.
pub(crate) fn scan_cf_options(cache: &rocksdb::Cache) -> rocksdb::Options {
    scan_options(cache, false)
}

/// [`scan_cf_options`] with a whole-key bloom filter (tables and memtable), for a CF read by
/// range scans that also answers "is this key absent?" often: the stream index, whose
/// version-0 key says whether a stream exists (most appends to a stream the head cache does
/// not know are to a new stream).
pub(crate) fn scan_and_probe_cf_options(cache: &rocksdb::Cache) -> rocksdb::Options {
    scan_options(cache, true)
}

/// Whole-key bloom filters kept in the block cache, partitioned: an SST's filter is ~1.25
/// bytes a key, so a large table's whole filter (a 64 MiB table of short keys: several MiB)
/// outgrows a cache shard (256 MiB in 64 shards), is never kept, and is read again from the
/// file, checksum and all, by every lookup that consults it — measured at 60% of apply's
/// CPU for appends to new streams once the stream index had grown (`cargo bench --bench
/// apply`, `v7-new-streams`: the new streams' keys fall inside the tables' key ranges).
/// Partitions are 4 KiB blocks cached one by one; the top-level index of each table stays
/// pinned. (The point-lookup families keep whole filters: partitioned ones measured slower
/// there, and their misses — new time-ordered ids — mostly fall past every table's range.)
fn partitioned_bloom_filters(block: &mut rocksdb::BlockBasedOptions) {
    block.set_bloom_filter(10.0, false);
    block.set_cache_index_and_filter_blocks(true);
    block.set_partition_filters(true);
    block.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    block.set_metadata_block_size(4096);
    block.set_pin_top_level_index_and_filter(true);
}

fn scan_options(cache: &rocksdb::Cache, probed: bool) -> rocksdb::Options {
    let mut opts = base_options();
    let mut block = rocksdb::BlockBasedOptions::default();
    block.set_block_cache(cache);
    block.set_block_size(32 << 10);
    if probed {
        partitioned_bloom_filters(&mut block);
        memtable_bloom_filter(&mut opts);
    }
    opts.set_block_based_table_factory(&block);
    opts
}

/// Makes a rename or file creation in `dir` durable.
pub(crate) fn fsync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
