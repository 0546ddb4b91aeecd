//! The index: RocksDB column families over the packs, plus refs, HEAD, per-commit state and
//! gc's and fsck's chunk marks.
//!
//! Column families (values are postcard encodings unless said otherwise):
//! - `chunks`: chunk id (32 bytes) → [`ChunkLoc`];
//! - `objects`: object id (32 bytes) → [`ObjectLoc`];
//! - `commits`: commit id (32 bytes) → [`CommitRow`];
//! - `packs`: pack id (16 bytes) → [`PackInfo`];
//! - `refs`: full ref name (`refs/heads/x`, `refs/tags/y`) → commit id (32 raw bytes);
//! - `meta`: [`META_HEAD`] → the current branch's full ref name;
//! - `states`: commit id (32 bytes) → its [`crate::storage::state::CommitState`];
//! - `marks`: chunk id (32 bytes) → when gc marked it dead (i64 little-endian, nanoseconds
//!   since the Unix epoch);
//! - `damaged`: chunk id (32 bytes) → empty, for chunks whose stored copy fsck found corrupt.
//!
//! Invariants:
//! - The index only ever points at sealed, fsynced packs: a writer adds entries for a pack in
//!   the same synced batch that first mentions it, after the pack and its directory were fsynced.
//! - Everything in `chunks`, `objects`, `commits` and `packs` can be rebuilt from the packs; refs
//!   and HEAD from the reflog; `states` from the statelog. `states` holds mutable per-commit
//!   records (pruned, verified, ...), never part of a hashed object. `marks` and `damaged` are
//!   not rebuilt: the next gc marks again, and fsck `--read-data` finds damage again.
//! - Every batch is a synced write ([`Index::write`]): once it returns, it survives power loss.
//! - One process at a time opens the index read-write, holding `locks/index.lock`; everyone else
//!   opens it read-only and never blocks on a writer.
#![warn(missing_docs)]

use crate::codec::Encoding;
use crate::model::id::{ChunkId, CommitId, ObjectId, PackId};
use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Chunk id → [`ChunkLoc`].
const CF_CHUNKS: &str = "chunks";
/// Object id → [`ObjectLoc`]; pass it to [`Index::for_each`] or [`Index::ids`] to walk objects.
pub const CF_OBJECTS: &str = "objects";
/// Commit id → [`CommitRow`].
const CF_COMMITS: &str = "commits";
/// Full ref name → commit id.
const CF_REFS: &str = "refs";
/// Store-wide settings; today only [`META_HEAD`].
const CF_META: &str = "meta";
/// Pack id → [`PackInfo`].
const CF_PACKS: &str = "packs";
/// Commit id → encoded per-commit state record.
const CF_STATES: &str = "states";
/// Chunks gc found dead while writers were running: deleted by a later gc unless a writer
/// reuses them first (it clears the mark).
pub const CF_MARKS: &str = "marks";
/// Chunks fsck found corrupt: commits and `repair --from` write a good copy instead of
/// deduplicating against them.
pub const CF_DAMAGED: &str = "damaged";
/// Every column family, in creation order; an index opens with all of them.
pub const ALL_CFS: [&str; 9] = [
    CF_CHUNKS, CF_OBJECTS, CF_COMMITS, CF_REFS, CF_META, CF_PACKS, CF_STATES, CF_MARKS, CF_DAMAGED,
];

/// Key in `meta` of the symbolic HEAD (the current branch's ref name).
pub const META_HEAD: &[u8] = b"HEAD";

/// What can go wrong opening, reading or writing the index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// RocksDB refused an open, read or write.
    #[error("index at {path}: {source}")]
    Rocks {
        /// The index directory (`index/` of the store).
        path: PathBuf,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// The database lacks one of [`ALL_CFS`].
    #[error("index at {path}: column family {cf} is missing")]
    MissingCf {
        /// The index directory.
        path: PathBuf,
        /// The missing column family's name.
        cf: &'static str,
    },
    /// A value did not decode as the record its column family holds.
    #[error("index at {path}: record {key} in {cf} does not decode: {what}")]
    BadRecord {
        /// The index directory.
        path: PathBuf,
        /// The column family the record is in.
        cf: &'static str,
        /// The record's key, in hex.
        key: String,
        /// The decoder's message.
        what: String,
    },
}

/// Where a chunk is stored and how: a copy of its pack entry's header fields, so a read needs
/// no header lookup to plan, and the header check can compare lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLoc {
    /// The sealed pack holding the chunk.
    pub pack: PackId,
    /// Byte offset of the payload in the pack file (just past its entry header).
    pub offset: u64,
    /// Bytes of the payload in the pack.
    pub stored_len: u64,
    /// Bytes of the decoded chunk.
    pub raw_len: u64,
    /// How the payload encodes the chunk.
    pub encoding: Encoding,
    /// The chunk it is a delta of, when `encoding` needs a base.
    pub base: Option<ChunkId>,
    /// Delta links below this chunk down to a standalone encoding (0 for one).
    pub depth: u32,
}

/// Where an object (a commit or a tree) is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLoc {
    /// The sealed pack holding the object.
    pub pack: PackId,
    /// Byte offset of the payload in the pack file (just past its entry header).
    pub offset: u64,
    /// Bytes of the payload in the pack.
    pub stored_len: u64,
    /// Bytes of the object's canonical encoding, decoded.
    pub raw_len: u64,
    /// The object kind byte (1 = commit, 2 = tree).
    pub kind: u8,
}

/// What the index keeps about each pack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackInfo {
    /// Bytes the pack file takes on disk, footer included.
    pub size: u64,
    /// Chunk entries the pack holds, copies of chunks also stored elsewhere included.
    pub chunks: u64,
    /// Object entries the pack holds.
    pub objects: u64,
}

/// A commit's catalog row: what listing, `stats` and catalog queries need, so they scan one
/// column family instead of reading commit objects. Derived from the commit object (rebuildable).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitRow {
    /// Commit time, nanoseconds since the Unix epoch (UTC).
    pub time_ns: i64,
    /// Sum of the sizes of the commit's files, in bytes.
    pub logical_size: u64,
    /// Parent commits, first parent first.
    pub parents: Vec<CommitId>,
    /// Training step from the commit's metadata.
    pub step: Option<u64>,
    /// Training epoch from the commit's metadata.
    pub epoch: Option<f64>,
    /// Run id from the commit's metadata.
    pub run_id: Option<String>,
    /// Metrics (name → value) from the commit's metadata.
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// Hyperparameters (name → text) from the commit's metadata.
    pub params: std::collections::BTreeMap<String, String>,
    /// Captured environment (name → text) from the commit's metadata.
    pub env: std::collections::BTreeMap<String, String>,
    /// The git commit hash of the training code, when it was captured.
    pub git: Option<String>,
    /// Fingerprints of the datasets the commit names.
    pub datasets: Vec<String>,
    /// The commit's author.
    pub author: String,
    /// First line of the message.
    pub message: String,
}

impl ChunkLoc {
    /// Where the chunk entry `e` of sealed pack `pack` lives, as its header describes it.
    pub fn of_entry(pack: PackId, e: &crate::storage::pack::Entry) -> ChunkLoc {
        let h = &e.header;
        ChunkLoc {
            pack,
            offset: e.offset,
            stored_len: h.stored_len,
            raw_len: h.raw_len,
            encoding: h.encoding,
            base: h.base,
            depth: h.depth,
        }
    }
}

impl CommitRow {
    /// The row of commit `c`, every field copied from it (the message cut to its first line).
    pub fn of(c: &crate::model::object::Commit) -> CommitRow {
        CommitRow {
            time_ns: c.time_ns,
            logical_size: c.logical_size,
            parents: c.parents.clone(),
            step: c.meta.step,
            epoch: c.meta.epoch,
            run_id: c.meta.run_id.clone(),
            metrics: c.meta.metrics.clone(),
            params: c.meta.params.clone(),
            env: c.meta.env.clone(),
            git: c.meta.git.as_ref().map(|g| g.commit.clone()),
            datasets: c
                .meta
                .datasets
                .iter()
                .map(|d| d.fingerprint.clone())
                .collect(),
            author: c.author.clone(),
            message: c.message.lines().next().unwrap_or("").to_string(),
        }
    }
}

/// An open index, read-only or read-write.
pub struct Index {
    db: DB,
    path: PathBuf,
}

fn db_options() -> Options {
    let mut base = Options::default();
    // Small stores stay small: no fallocate'd WAL or manifest, a modest write buffer, few
    // info logs.
    let mut opts = base
        .get_options_from_string("allow_fallocate=false")
        .unwrap_or_default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_write_buffer_size(4 << 20);
    opts.set_manifest_preallocation_size(64 << 10);
    opts.set_keep_log_file_num(2);
    opts.set_max_log_file_size(256 << 10);
    opts.set_recycle_log_file_num(0);
    opts.set_max_total_wal_size(16 << 20);
    opts.set_paranoid_checks(true);
    opts.set_log_level(rocksdb::LogLevel::Warn);
    // Opening a handful of table files needs no thread pool (the default starts 16 threads per
    // open, and every command opens the index at least once).
    opts.set_max_file_opening_threads(1);
    opts
}

impl Index {
    /// Create the index of a new store at `path` (RocksDB creates the directory), opened
    /// read-write; the caller holds `locks/index.lock`. Also opens an existing index. Fails
    /// when RocksDB cannot create or open it.
    pub fn create(path: &Path) -> Result<Index, IndexError> {
        Self::open_write(path)
    }

    /// Open read-write, creating missing column families. The caller holds `locks/index.lock`
    /// (RocksDB refuses a second read-write opener). Fails when RocksDB cannot open it.
    pub(crate) fn open_write(path: &Path) -> Result<Index, IndexError> {
        let opts = db_options();
        let cfs = ALL_CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, db_options()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| IndexError::Rocks {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Index {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Open read-only: a consistent view as of now, never blocked by a writer. Retries for
    /// about a second while a writer's compaction deletes files under the open; fails when the
    /// index is missing or damaged, or still cannot be opened.
    pub(crate) fn open_read(path: &Path) -> Result<Index, IndexError> {
        let mut opts = db_options();
        opts.create_if_missing(false);
        // A writer's compaction may delete a table file between our reading the manifest and
        // opening the file; that surfaces as an IO error, and a second look sees the new state.
        let mut last = None;
        for attempt in 0..20 {
            match DB::open_cf_for_read_only(&opts, path, ALL_CFS, false) {
                Ok(db) => {
                    return Ok(Index {
                        db,
                        path: path.to_path_buf(),
                    });
                }
                Err(e) => {
                    // RocksDB reports a table file deleted under it as IOError or as a
                    // Corruption wrapping "No such file"; both are transient here. Real damage
                    // fails every attempt and is reported.
                    let transient = path.join("CURRENT").exists()
                        && (e.kind() == rocksdb::ErrorKind::IOError
                            || (e.kind() == rocksdb::ErrorKind::Corruption
                                && e.to_string().contains("No such file")));
                    last = Some(e);
                    if !transient {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5 * (attempt + 1)));
                }
            }
        }
        Err(IndexError::Rocks {
            path: path.to_path_buf(),
            source: last.expect("the loop ran at least once"),
        })
    }

    /// The index directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, IndexError> {
        self.db.cf_handle(name).ok_or(IndexError::MissingCf {
            path: self.path.clone(),
            cf: name,
        })
    }

    fn rocks(&self) -> impl FnOnce(rocksdb::Error) -> IndexError + '_ {
        |source| IndexError::Rocks {
            path: self.path.clone(),
            source,
        }
    }

    fn get_raw(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        let h = self.cf(cf)?;
        self.db.get_cf(h, key).map_err(self.rocks())
    }

    fn decode<T: for<'a> Deserialize<'a>>(
        &self,
        cf: &'static str,
        key: &[u8],
        v: &[u8],
    ) -> Result<T, IndexError> {
        postcard::from_bytes(v).map_err(|e| IndexError::BadRecord {
            path: self.path.clone(),
            cf,
            key: hex::encode(key),
            what: e.to_string(),
        })
    }

    fn get<T: for<'a> Deserialize<'a>>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, IndexError> {
        match self.get_raw(cf, key)? {
            Some(v) => Ok(Some(self.decode(cf, key, &v)?)),
            None => Ok(None),
        }
    }

    /// Where chunk `id` is stored, or `None` when the index has no entry for it. Fails when
    /// RocksDB fails or the record does not decode (so for every getter below).
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkLoc>, IndexError> {
        self.get(CF_CHUNKS, id.as_bytes())
    }
    /// Where object `id` is stored, or `None`.
    pub fn object(&self, id: &ObjectId) -> Result<Option<ObjectLoc>, IndexError> {
        self.get(CF_OBJECTS, id.as_bytes())
    }
    /// Commit `id`'s catalog row, or `None`.
    pub fn commit_row(&self, id: &CommitId) -> Result<Option<CommitRow>, IndexError> {
        self.get(CF_COMMITS, id.as_bytes())
    }
    /// The index's record of pack `id`, or `None` when the pack is not indexed.
    pub fn pack(&self, id: &PackId) -> Result<Option<PackInfo>, IndexError> {
        self.get(CF_PACKS, &id.0)
    }
    /// Commit `id`'s encoded state record, undecoded (`storage::state` decodes it), or `None`.
    pub fn state_raw(&self, id: &CommitId) -> Result<Option<Vec<u8>>, IndexError> {
        self.get_raw(CF_STATES, id.as_bytes())
    }
    /// When gc marked this chunk dead (deferred deletion), in nanoseconds since the Unix epoch,
    /// if it did.
    pub fn mark(&self, id: &ChunkId) -> Result<Option<i64>, IndexError> {
        Ok(self
            .get_raw(CF_MARKS, id.as_bytes())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(i64::from_le_bytes))
    }
    /// Whether fsck recorded this chunk's stored copy as corrupt.
    pub fn is_damaged(&self, id: &ChunkId) -> Result<bool, IndexError> {
        Ok(self.get_raw(CF_DAMAGED, id.as_bytes())?.is_some())
    }
    /// Every key of column family `cf` that is 32 bytes long (ids), in key order; other keys
    /// are skipped.
    pub fn ids(&self, cf: &'static str) -> Result<Vec<[u8; 32]>, IndexError> {
        let mut out = Vec::new();
        self.for_each(cf, |k, _| {
            if let Ok(id) = <[u8; 32]>::try_from(k) {
                out.push(id);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The commit the full ref name `name` points at, or `None` when there is no such ref.
    pub fn get_ref(&self, name: &str) -> Result<Option<CommitId>, IndexError> {
        Ok(self
            .get_raw(CF_REFS, name.as_bytes())?
            .and_then(|v| CommitId::from_slice(&v)))
    }

    /// All refs under `prefix` ("refs/heads/", "refs/tags/" or "" for all), sorted by name.
    pub fn refs(&self, prefix: &str) -> Result<Vec<(String, CommitId)>, IndexError> {
        let h = self.cf(CF_REFS)?;
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            h,
            IteratorMode::From(prefix.as_bytes(), rocksdb::Direction::Forward),
        );
        for kv in it {
            let (k, v) = kv.map_err(self.rocks())?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if let (Ok(name), Some(id)) = (String::from_utf8(k.to_vec()), CommitId::from_slice(&v))
            {
                out.push((name, id));
            }
        }
        Ok(out)
    }

    /// The raw value of `key` in `meta` (see [`META_HEAD`]), or `None`.
    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        self.get_raw(CF_META, key)
    }

    /// Commit ids whose bytes start with `prefix` (at most `limit`), in id order.
    pub fn commits_with_prefix(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<CommitId>, IndexError> {
        let h = self.cf(CF_COMMITS)?;
        let mut out = Vec::new();
        for kv in self
            .db
            .iterator_cf(h, IteratorMode::From(prefix, rocksdb::Direction::Forward))
        {
            let (k, _) = kv.map_err(self.rocks())?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            if let Some(id) = CommitId::from_slice(&k) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Visit every record (key, value) of column family `cf` in key order; stops at the first
    /// error `f` returns, and returns it.
    pub fn for_each(
        &self,
        cf: &'static str,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let h = self.cf(cf)?;
        for kv in self.db.iterator_cf(h, IteratorMode::Start) {
            let (k, v) = kv.map_err(self.rocks())?;
            f(&k, &v)?;
        }
        Ok(())
    }

    /// Visit every indexed chunk with its location, in id order. Fails at the first record that
    /// does not decode.
    pub fn chunks(&self, mut f: impl FnMut(ChunkId, ChunkLoc)) -> Result<(), IndexError> {
        self.for_each(CF_CHUNKS, |k, v| {
            let loc: ChunkLoc = self.decode(CF_CHUNKS, k, v)?;
            if let Some(id) = ChunkId::from_slice(k) {
                f(id, loc);
            }
            Ok(())
        })
    }

    /// Every commit row, in id order.
    pub fn commit_rows(&self) -> Result<Vec<(CommitId, CommitRow)>, IndexError> {
        let mut out = Vec::new();
        self.for_each(CF_COMMITS, |k, v| {
            let row: CommitRow = self.decode(CF_COMMITS, k, v)?;
            if let Some(id) = CommitId::from_slice(k) {
                out.push((id, row));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Every pack the index knows, in id order.
    pub fn packs(&self) -> Result<Vec<(PackId, PackInfo)>, IndexError> {
        let mut out = Vec::new();
        self.for_each(CF_PACKS, |k, v| {
            let info: PackInfo = self.decode(CF_PACKS, k, v)?;
            if let Ok(id) = <[u8; 16]>::try_from(k) {
                out.push((PackId(id), info));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Write a batch atomically and wait until it is on disk (WAL fsync). Fails when RocksDB
    /// refuses it (a read-only handle always does).
    pub fn write(&self, batch: Batch) -> Result<(), IndexError> {
        let mut wo = WriteOptions::default();
        // The batch publishes data that callers will acknowledge: it must survive power loss.
        wo.set_sync(true);
        // Failpoints just before and just after the batch.
        crate::storage::crashsim::failpoint(crate::storage::crashsim::Op::DbWrite(&self.path));
        self.db.write_opt(batch.inner, &wo).map_err(self.rocks())?;
        crate::storage::crashsim::failpoint(crate::storage::crashsim::Op::DbWritten(&self.path));
        Ok(())
    }

    /// Write every memtable to table files, so the write-ahead log holds nothing a reader's
    /// read-only open would have to replay (a large last batch otherwise costs every later
    /// `open_read` the replay). Also compacts a column family once it holds 32 table files.
    pub(crate) fn flush(&self) -> Result<(), IndexError> {
        let cfs: Vec<&rocksdb::ColumnFamily> = ALL_CFS
            .iter()
            .map(|n| self.cf(n))
            .collect::<Result<_, _>>()?;
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
            .map_err(self.rocks())?;
        // Writers keep the index open only for a moment, so background compaction rarely gets
        // to run; compact here once a column family has piled up level-0 files, which keeps
        // read-only opens fast and writes clear of RocksDB's level-0 stall.
        // Small batches of random-looking keys also land as many tiny non-overlapping files
        // that RocksDB moves down without merging; past a few dozen, rewrite the family into
        // one sorted run (it is small: index records, not data).
        for cf in cfs {
            let mut files = 0;
            for level in 0..7 {
                files += self
                    .db
                    .property_int_value_cf(
                        cf,
                        format!("rocksdb.num-files-at-level{level}").as_str(),
                    )
                    .map_err(self.rocks())?
                    .unwrap_or(0);
            }
            if files >= 32 {
                let mut opts = rocksdb::CompactOptions::default();
                opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
                self.db
                    .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
            }
        }
        Ok(())
    }

    /// An empty batch for this index; it does not fail today (column families are checked as
    /// records are added).
    pub fn batch(&self) -> Result<Batch<'_>, IndexError> {
        Ok(Batch {
            inner: WriteBatch::default(),
            index: self,
        })
    }
}

/// Index updates applied together, atomically, by [`Index::write`]. Each method queues one
/// put or delete; it fails only when the column family is missing.
pub struct Batch<'a> {
    inner: WriteBatch,
    index: &'a Index,
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("postcard encodes plain data into a Vec without failing")
}

impl Batch<'_> {
    fn put(&mut self, cf: &'static str, k: &[u8], v: &[u8]) -> Result<(), IndexError> {
        let h = self.index.cf(cf)?;
        self.inner.put_cf(h, k, v);
        Ok(())
    }
    fn delete(&mut self, cf: &'static str, k: &[u8]) -> Result<(), IndexError> {
        let h = self.index.cf(cf)?;
        self.inner.delete_cf(h, k);
        Ok(())
    }
    /// Set where chunk `id` is stored, replacing any earlier location.
    pub fn put_chunk(&mut self, id: &ChunkId, loc: &ChunkLoc) -> Result<(), IndexError> {
        self.put(CF_CHUNKS, id.as_bytes(), &enc(loc))
    }
    /// Forget chunk `id` (gc, once it is dead).
    pub fn delete_chunk(&mut self, id: &ChunkId) -> Result<(), IndexError> {
        self.delete(CF_CHUNKS, id.as_bytes())
    }
    /// Set where object `id` is stored, replacing any earlier location.
    pub fn put_object(&mut self, id: &ObjectId, loc: &ObjectLoc) -> Result<(), IndexError> {
        self.put(CF_OBJECTS, id.as_bytes(), &enc(loc))
    }
    /// Forget object `id`.
    pub fn delete_object(&mut self, id: &ObjectId) -> Result<(), IndexError> {
        self.delete(CF_OBJECTS, id.as_bytes())
    }
    /// Set commit `id`'s catalog row.
    pub fn put_commit_row(&mut self, id: &CommitId, row: &CommitRow) -> Result<(), IndexError> {
        self.put(CF_COMMITS, id.as_bytes(), &enc(row))
    }
    /// Record pack `id`, which must be sealed and fsynced with its directory.
    pub fn put_pack(&mut self, id: &PackId, info: &PackInfo) -> Result<(), IndexError> {
        self.put(CF_PACKS, &id.0, &enc(info))
    }
    /// Forget pack `id` (gc, before it unlinks the file).
    pub fn delete_pack(&mut self, id: &PackId) -> Result<(), IndexError> {
        self.delete(CF_PACKS, &id.0)
    }
    /// Point the full ref name `name` at commit `id`. Callers check the ref's old value under
    /// the index lock (compare-and-swap) and append the move to the reflog first.
    pub fn put_ref(&mut self, name: &str, id: &CommitId) -> Result<(), IndexError> {
        self.put(CF_REFS, name.as_bytes(), id.as_bytes())
    }
    /// Set `key` in `meta` to the raw value `v` (see [`META_HEAD`]).
    pub fn put_meta(&mut self, key: &[u8], v: &[u8]) -> Result<(), IndexError> {
        self.put(CF_META, key, v)
    }
    /// Set commit `id`'s encoded state record; `storage::state::put_state` journals it first.
    pub fn put_state_raw(&mut self, id: &CommitId, v: &[u8]) -> Result<(), IndexError> {
        self.put(CF_STATES, id.as_bytes(), v)
    }
    /// Mark chunk `id` dead as of `time_ns` (nanoseconds since the Unix epoch), for a later gc
    /// to delete.
    pub fn put_mark(&mut self, id: &ChunkId, time_ns: i64) -> Result<(), IndexError> {
        self.put(CF_MARKS, id.as_bytes(), &time_ns.to_le_bytes())
    }
    /// Clear chunk `id`'s dead mark (a writer reuses it, or gc deleted it).
    pub fn delete_mark(&mut self, id: &ChunkId) -> Result<(), IndexError> {
        self.delete(CF_MARKS, id.as_bytes())
    }
    /// Record that chunk `id`'s stored copy is corrupt, so writers store a good copy instead of
    /// deduplicating against it.
    pub fn put_damaged(&mut self, id: &ChunkId) -> Result<(), IndexError> {
        self.put(CF_DAMAGED, id.as_bytes(), b"")
    }
    /// Clear chunk `id`'s damaged record (a good copy was indexed).
    pub fn delete_damaged(&mut self, id: &ChunkId) -> Result<(), IndexError> {
        self.delete(CF_DAMAGED, id.as_bytes())
    }
}

/// Add every entry of a sealed pack to `b` (chunks the index lacks, or whose stored copy is
/// damaged; objects it lacks) and the pack's record. Lookups go to `index`, so entries the
/// same batch already added are not seen: a chunk stored twice in `p` is put twice, the later
/// entry winning. Fails when a lookup fails.
pub fn index_pack(
    index: &Index,
    b: &mut Batch<'_>,
    p: &crate::storage::pack::SealedPack,
) -> Result<(), IndexError> {
    let mut info = PackInfo {
        size: p.size,
        ..Default::default()
    };
    for e in &p.entries {
        let h = &e.header;
        if h.kind == crate::storage::pack::ENTRY_CHUNK {
            info.chunks += 1;
            let id = ChunkId(h.id);
            let damaged = index.is_damaged(&id)?;
            if damaged {
                b.delete_damaged(&id)?;
            }
            if damaged || index.chunk(&id)?.is_none() {
                b.put_chunk(&id, &ChunkLoc::of_entry(p.id, e))?;
            }
        } else {
            info.objects += 1;
            let id = ObjectId(h.id);
            if index.object(&id)?.is_none() {
                b.put_object(
                    &id,
                    &ObjectLoc {
                        pack: p.id,
                        offset: e.offset,
                        stored_len: h.stored_len,
                        raw_len: h.raw_len,
                        kind: h.object_kind,
                    },
                )?;
            }
        }
    }
    b.put_pack(&p.id, &info)?;
    Ok(())
}
