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
    with_base(rocksdb::Options::default())
}

fn with_base(mut opts: rocksdb::Options) -> rocksdb::Options {
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(4);
    opts.set_max_total_wal_size(256 << 20);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    opts
}

/// Where a column family's new keys land in its memtable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inserts {
    /// Anywhere in the key space (stream names, heads): each insert searches the skiplist.
    Anywhere,
    /// Mostly just after the previous one (log indexes, global positions, time-ordered
    /// keys): the memtable keeps the last insert's place as a hint
    /// (`memtable_insert_with_hint_prefix_extractor`, one hint for the whole column family)
    /// and starts the next search there, so an insert at the tail links in without walking
    /// down the skiplist. On a node sharing its cores and caches the walk is a chain of
    /// cache misses per level; a key that is not near the hint falls back to a search from
    /// the level where the hint stops bracketing it.
    NearTheLast,
}

/// The option string of [`Inserts::NearTheLast`]: a fixed prefix of zero bytes puts every
/// key under one hint. Only settable by name (the C API has no setter for it).
pub(crate) const TAIL_INSERT_HINT: &str =
    "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.0";

/// Column family options (the shared base) for keys inserted as `inserts` says.
pub(crate) fn base_cf_options(inserts: Inserts) -> Result<rocksdb::Options> {
    let opts = match inserts {
        Inserts::Anywhere => rocksdb::Options::default(),
        Inserts::NearTheLast => {
            rocksdb::Options::default().get_options_from_string(TAIL_INSERT_HINT)?
        }
    };
    Ok(with_base(opts))
}

/// Column family options with a bloom filter, for CFs served by point lookups.
pub(crate) fn point_lookup_cf_options(
    cache: &rocksdb::Cache,
    inserts: Inserts,
) -> Result<rocksdb::Options> {
    let mut opts = base_cf_options(inserts)?;
    let mut block = rocksdb::BlockBasedOptions::default();
    block.set_block_cache(cache);
    block.set_bloom_filter(10.0, false);
    block.set_cache_index_and_filter_blocks(true);
    opts.set_block_based_table_factory(&block);
    // Most lookups here miss (a new event id, a new stream): a memtable bloom filter
    // answers those without walking the skiplist.
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(0.1);
    Ok(opts)
}

/// Column family options for CFs mostly read by range scans.
pub(crate) fn scan_cf_options(
    cache: &rocksdb::Cache,
    inserts: Inserts,
) -> Result<rocksdb::Options> {
    let mut opts = base_cf_options(inserts)?;
    let mut block = rocksdb::BlockBasedOptions::default();
    block.set_block_cache(cache);
    block.set_block_size(32 << 10);
    opts.set_block_based_table_factory(&block);
    Ok(opts)
}

/// Makes a rename or file creation in `dir` durable.
pub(crate) fn fsync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    /// One column family's value of `option` in the newest OPTIONS file RocksDB wrote for
    /// the database at `dir` (what the open database runs with).
    pub(crate) fn cf_option(dir: &Path, cf: &str, option: &str) -> Option<String> {
        let newest = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("OPTIONS-") && !n.ends_with(".dbtmp"))
            })
            .max()
            .expect("an OPTIONS file");
        let text = std::fs::read_to_string(newest).unwrap();
        let header = format!("[CFOptions \"{cf}\"]");
        let section = text
            .split_once(&header)
            .expect("the column family's section")
            .1;
        let section = section.split("\n[").next().unwrap();
        section.lines().find_map(|line| {
            let (k, v) = line.trim().split_once('=')?;
            (k == option).then(|| v.to_owned())
        })
    }

    /// The hint option as RocksDB reports it for a column family opened with `inserts`.
    pub(crate) fn hint_of(dir: &Path, cf: &str) -> Option<String> {
        cf_option(dir, cf, "memtable_insert_with_hint_prefix_extractor").filter(|v| v != "nullptr")
    }

    #[test]
    fn the_tail_hint_option_parses() {
        let opts = super::base_cf_options(super::Inserts::NearTheLast);
        assert!(opts.is_ok(), "{:?}", opts.err());
    }
}
