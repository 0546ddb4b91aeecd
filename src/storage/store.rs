//! The store: its directory layout, opening and creating it, and the read path.
//!
//! Layout of a store directory (docs/format.md has the bytes):
//! ```text
//! CAIRN          format marker: JSON {"format": 1, "store_id", "created_ns"}; written last
//!                by init, checked on open
//! packs/         sealed packs <id>.pack; <id>.pack.tmp while a writer holds it locked
//! index/         RocksDB: the index over the packs, refs, HEAD, per-commit state, gc marks
//! reflog         every ref move, one JSON line each, appended and fsynced before the index
//! statelog       every per-commit state update, one JSON line each, fsynced before the index
//! locks/         index.lock, writers.lock, readers.lock, gc.lock, gc-queue.lock (see
//!                storage::lock and ops::gc)
//! tmp/           scratch directories of running commands, each beside a `.lock` file held
//!                while it runs; one whose lock nobody holds is a killed command's leftover
//!                and is removed (`Store::clean_stale_tmp`, by `--verify-cmd` and gc)
//! txn/<id>/      a sharded commit's staged parts (see storage::staging)
//! retention      the stored retention policy (gc)
//! doomed-packs   packs gc unindexed but could not unlink yet, for a later run
//! gc-status.json the last gc run, for `cairn gc --status` (a report only)
//! ```
//! `repair --rebuild-index` also leaves the replaced index as `index.old-<ns>`.
//!
//! Invariants:
//! - Readers open the index read-only and never wait for a writer. A writer holds
//!   `locks/index.lock` for the few milliseconds it has the index open read-write.
//! - Every byte handed out by the read path was verified against its blake3 id.
//! - Refs move by compare-and-swap: [`Store::update_ref`] fails with [`StoreError::RefMoved`] when
//!   the ref is not where the caller last saw it; every move is in the reflog before the index.
#![warn(missing_docs)]

use crate::model::id::{ChunkId, CommitId, ObjectId, PackId, TreeId};
use crate::model::object::{Commit, KIND_COMMIT, KIND_TREE, ObjectError, Tree, kind_name};
pub use crate::storage::error::{Result, StoreError, io_at};
use crate::storage::index::{ChunkLoc, Index, META_HEAD};
use crate::storage::lock;
use crate::storage::pack::{PackError, PackReader, pack_file_name};
use crate::storage::refs::{self, ReflogEntry};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub use crate::storage::{DEFAULT_DIR, FORMAT_VERSION, MARKER};

/// Contents of the `CAIRN` marker file (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Marker {
    /// The store's format version; must equal [`FORMAT_VERSION`] to open.
    format: u32,
    /// 32 random hex digits naming this store, chosen at init.
    store_id: String,
    /// When the store was created, nanoseconds since the Unix epoch.
    created_ns: i64,
}

pub use crate::model::time::now_ns;

/// Payload buffers larger than this are not kept between chunk reads.
const KEEP_PAYLOAD_BYTES: usize = 4 << 20;

thread_local! {
    /// The payload buffers of this thread's chunk decodes (one per link of a delta chain), kept
    /// between chunks so a stream of reads neither faults in fresh pages nor zeroes them.
    static PAYLOADS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An open store: its root, a read-only view of the index and a cache of open packs. Cheap
/// to share across threads (`&Store` is `Sync`).
pub struct Store {
    root: PathBuf,
    marker: Marker,
    view: RwLock<Arc<Index>>,
    /// The modification time of the index directory, taken just before the view was opened:
    /// every publish flushes a new table file into it, so a different time means there may be
    /// more to see ([`Store::refresh_if_changed`]).
    view_stamp: Mutex<Option<std::time::SystemTime>>,
    packs: Mutex<HashMap<PackId, Arc<PackReader>>>,
    /// Where chunks this store lacks can be fetched from (a lazy clone's remote).
    source: std::sync::OnceLock<Arc<dyn ChunkSource>>,
}

/// Where chunks missing from a store can come from: a lazy clone's remote. Storage never
/// imports the remote, so the caller that opens a lazy store attaches one
/// ([`Store::set_chunk_source`]).
///
/// Invariant: [`ChunkSource::fetch`] adds chunks only as verified entries of sealed local packs,
/// indexed like any other, so every later read of them is local and checked as usual.
pub trait ChunkSource: Send + Sync {
    /// Make the chunks `ids` local, with every delta base they need, in as few requests as it
    /// can. Chunks it does not know are left missing (the read then reports them).
    fn fetch(&self, store: &Store, ids: &[ChunkId]) -> Result<()>;
    /// Whether it can supply chunk `id`.
    fn has(&self, id: &ChunkId) -> bool;
    /// Where it fetches from, for messages (a remote's URL).
    fn describe(&self) -> String;
}

/// The index directory's modification time, if it can be read.
fn index_stamp(root: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(root.join("index"))
        .and_then(|m| m.modified())
        .ok()
}

/// Where to find a store, and which stores found by walking up are trusted.
#[derive(Clone, Debug)]
pub struct Discovery<'a> {
    /// A `--store` flag: used as it is.
    pub explicit: Option<&'a Path>,
    /// `$CAIRN_STORE`, which the caller reads: used as it is.
    pub env: Option<&'a Path>,
    /// Where the walk up starts (the working directory).
    pub cwd: &'a Path,
    /// Stores another user owns that may still be found by the walk (the `safe_stores` of the
    /// config file); `*` trusts every store.
    pub safe_stores: &'a [PathBuf],
    /// Where the config file is, for the message that says how to trust a store.
    pub config_path: &'a str,
}

/// The cairn config file: `{"safe_stores": ["/shared/runs/.cairn", ...]}` (JSON; every key
/// optional). `safe_stores` lists stores another user owns that the walk up from the working
/// directory may still use, as git's `safe.directory`; `"*"` trusts all.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Stores owned by another user that discovery may use.
    #[serde(default)]
    pub safe_stores: Vec<PathBuf>,
}

impl Config {
    /// Read the config file at `path`; a missing file is the default config. Fails with
    /// [`StoreError::BadConfig`] when it cannot be read or does not parse.
    pub fn load(path: &Path) -> Result<Config> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::BadConfig {
                path: path.to_path_buf(),
                what: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(StoreError::BadConfig {
                path: path.to_path_buf(),
                what: e.to_string(),
            }),
        }
    }
}

/// Where the config file is, from the caller's environment (the library reads none): the
/// variable `CAIRN_CONFIG`, else `$XDG_CONFIG_HOME/cairn/config.json`, else
/// `$HOME/.config/cairn/config.json`. Empty values count as unset.
pub fn config_path(
    cairn_config: Option<&std::ffi::OsStr>,
    xdg_config_home: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> PathBuf {
    let set = |v: Option<&std::ffi::OsStr>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = set(cairn_config) {
        return p;
    }
    set(xdg_config_home)
        .or_else(|| set(home).map(|h| h.join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"))
        .join("cairn")
        .join("config.json")
}

/// The uid this process runs as: the owner of `/proc/self` (Linux); `None` when unknown.
fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Where to find a store: `explicit` (a `--store` flag), else `env` (`$CAIRN_STORE`), else the
/// nearest `.cairn` holding a marker, from `cwd` upward. An explicit or environment path is
/// returned unchecked. A store the walk finds must be owned by the user cairn runs as, or be
/// listed in `safe_stores` (as git refuses a repository another user owns): fails with
/// [`StoreError::UnsafeStore`] otherwise, and with [`StoreError::NoStoreFound`] when the walk
/// finds none.
pub fn discover(d: &Discovery<'_>) -> Result<PathBuf> {
    if let Some(p) = d.explicit.or(d.env) {
        return Ok(p.to_path_buf());
    }
    let mut dir = Some(d.cwd);
    while let Some(at) = dir {
        let candidate = at.join(DEFAULT_DIR);
        if candidate.join(MARKER).is_file() {
            check_owner(&candidate, d)?;
            return Ok(candidate);
        }
        dir = at.parent();
    }
    Err(StoreError::NoStoreFound {
        start: d.cwd.to_path_buf(),
    })
}

/// A store found by the walk: owned by us, or trusted by `safe_stores`.
fn check_owner(store: &Path, d: &Discovery<'_>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (Some(you), Ok(meta)) = (current_uid(), std::fs::metadata(store)) else {
        return Ok(());
    };
    if meta.uid() == you {
        return Ok(());
    }
    let canon = std::fs::canonicalize(store).unwrap_or_else(|_| store.to_path_buf());
    let trusted = d
        .safe_stores
        .iter()
        .any(|s| s.as_os_str() == "*" || std::fs::canonicalize(s).is_ok_and(|c| c == canon));
    if trusted {
        return Ok(());
    }
    Err(StoreError::UnsafeStore {
        path: store.to_path_buf(),
        owner: meta.uid(),
        you,
        config: d.config_path.to_string(),
    })
}

impl Store {
    /// Create a store at `root` (a new or empty directory, or one a crashed init left) with
    /// branch `main` checked out, and open it. Fails with [`StoreError::AlreadyAStore`] when
    /// `root` has a marker, [`StoreError::NotEmpty`] when it holds other files, and otherwise
    /// when a directory, the index or the marker cannot be created.
    pub fn init(root: &Path) -> Result<Store> {
        if root.join(MARKER).exists() {
            return Err(StoreError::AlreadyAStore {
                path: root.to_path_buf(),
            });
        }
        if root.exists() {
            let ours = ["packs", "index", "locks", "tmp", "reflog"];
            let entries = std::fs::read_dir(root).map_err(io_at(root))?;
            for e in entries {
                let e = e.map_err(io_at(root))?;
                // A crashed init leaves only our own names; anything else is the user's.
                if !ours.iter().any(|o| e.file_name() == *o) {
                    return Err(StoreError::NotEmpty {
                        path: root.to_path_buf(),
                    });
                }
            }
        }
        for d in ["", "packs", "locks", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        {
            let _lock = lock::exclusive(&root.join("locks/index.lock")).map_err(io_at(root))?;
            let index = Index::create(&root.join("index"))?;
            if index.meta(META_HEAD)?.is_none() {
                let mut b = index.batch()?;
                b.put_meta(
                    META_HEAD,
                    format!("{}{}", refs::HEADS, refs::DEFAULT_BRANCH).as_bytes(),
                )?;
                index.write(b)?;
            }
        }
        let marker = Marker {
            format: FORMAT_VERSION,
            store_id: crate::model::id::PackId::random().to_hex(),
            created_ns: now_ns(),
        };
        let bytes = serde_json::to_vec_pretty(&marker).expect("marker serializes");
        // The marker goes last: a store without it is an unfinished init, never half a store.
        crate::storage::fsutil::write_atomic(&root.join(MARKER), &bytes).map_err(io_at(root))?;
        if let Some(parent) = root.parent() {
            let _ = crate::storage::fsutil::sync_dir(parent);
        }
        Store::open(root)
    }

    /// Open an existing store at `root`. Fails with [`StoreError::NotAStore`] without a marker,
    /// [`StoreError::BadMarker`] when the marker does not parse or the index is missing,
    /// [`StoreError::FormatVersion`] for another format, and when the index cannot be opened.
    pub fn open(root: &Path) -> Result<Store> {
        let marker_path = root.join(MARKER);
        let bytes = match std::fs::read(&marker_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotAStore {
                    path: root.to_path_buf(),
                });
            }
            Err(e) => return Err(io_at(&marker_path)(e)),
        };
        let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| StoreError::BadMarker {
            path: marker_path.clone(),
            what: e.to_string(),
        })?;
        if marker.format != FORMAT_VERSION {
            return Err(StoreError::FormatVersion {
                path: root.to_path_buf(),
                found: marker.format,
            });
        }
        let index_path = root.join("index");
        if !index_path.join("CURRENT").exists() {
            return Err(StoreError::BadMarker {
                path: index_path,
                what: "the index is missing; the packs still hold every chunk and object".into(),
            });
        }
        let stamp = index_stamp(root);
        let view = Index::open_read(&index_path)?;
        Ok(Store {
            root: root.to_path_buf(),
            marker,
            view: RwLock::new(Arc::new(view)),
            view_stamp: Mutex::new(stamp),
            packs: Mutex::new(HashMap::new()),
            source: std::sync::OnceLock::new(),
        })
    }

    /// Attach the source missing chunks are fetched from. Fails (returning it) when one is
    /// attached already.
    pub fn set_chunk_source(
        &self,
        source: Arc<dyn ChunkSource>,
    ) -> std::result::Result<(), Arc<dyn ChunkSource>> {
        self.source.set(source)
    }

    /// The attached chunk source, if any.
    pub fn chunk_source(&self) -> Option<&Arc<dyn ChunkSource>> {
        self.source.get()
    }

    /// Make the chunks `ids` local through the chunk source, in one batch, when some are
    /// missing and a source is attached; otherwise do nothing. Readers call it before reading
    /// many chunks (a checkout, a tensor), so a lazy clone fetches them in few requests.
    /// Takes an iterator, so a store with no source (the usual case) collects nothing.
    pub fn prefetch(&self, ids: impl IntoIterator<Item = ChunkId>) -> Result<()> {
        let Some(src) = self.source.get() else {
            return Ok(());
        };
        let view = self.view();
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            if seen.insert(id) && view.chunk(&id)?.is_none() && src.has(&id) {
                missing.push(id);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        src.fetch(self, &missing)
    }

    /// Run `f`; when it fails for a chunk this store lacks and the chunk source has it, fetch
    /// the chunk (with its bases) and run `f` once more.
    fn with_fetch<T>(&self, id: ChunkId, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        match f() {
            Err(StoreError::MissingChunk { id: missing }) => match self.source.get() {
                Some(src) if src.has(&missing) || src.has(&id) => {
                    src.fetch(self, &[id, missing])?;
                    f()
                }
                _ => Err(StoreError::MissingChunk { id: missing }),
            },
            other => other,
        }
    }

    /// The store's root directory, as it was opened.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The store's id from its marker: 32 hex digits chosen at init.
    pub fn store_id(&self) -> &str {
        &self.marker.store_id
    }
    /// `packs/`, where sealed packs live.
    pub fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }
    /// `tmp/`, scratch space for running commands (load-test checkouts).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A new scratch directory `tmp/<prefix>-<random>/` for one running command, removed when
    /// the returned guard drops. Its lock file `tmp/<prefix>-<random>.lock` is created and
    /// locked first and stays locked while the guard lives, so [`Store::clean_stale_tmp`] can
    /// tell a live command's directory from one a killed command left behind.
    pub fn scratch_dir(&self, prefix: &str) -> Result<ScratchDir> {
        let name = format!("{prefix}-{}", crate::model::id::PackId::random());
        let tmp = self.tmp_dir();
        std::fs::create_dir_all(&tmp).map_err(io_at(&tmp))?;
        let lock_path = tmp.join(format!("{name}.lock"));
        let lock = lock::exclusive(&lock_path).map_err(io_at(&lock_path))?;
        let path = tmp.join(&name);
        std::fs::create_dir(&path).map_err(io_at(&path))?;
        Ok(ScratchDir {
            path,
            lock_path,
            _lock: lock,
        })
    }

    /// Remove what killed commands left in `tmp/`: every scratch directory whose lock file
    /// nobody holds, and directories from before scratch directories had lock files
    /// (`check-*` without one). Returns how many directories were removed. Live commands'
    /// directories stay: their lock files are held.
    pub fn clean_stale_tmp(&self) -> Result<u64> {
        let tmp = self.tmp_dir();
        let Ok(entries) = std::fs::read_dir(&tmp) else {
            return Ok(0);
        };
        let mut removed = 0;
        for e in entries {
            let e = e.map_err(io_at(&tmp))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".lock") {
                let lock_path = e.path();
                // Held by a live command: leave it. Taking it proves its owner is gone.
                let Some(_held) = lock::try_exclusive(&lock_path).map_err(io_at(&lock_path))?
                else {
                    continue;
                };
                let dir = tmp.join(stem);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
                    removed += 1;
                }
                let _ = std::fs::remove_file(&lock_path);
            } else if name.starts_with("check-")
                && e.path().is_dir()
                && !tmp.join(format!("{name}.lock")).exists()
            {
                std::fs::remove_dir_all(e.path()).map_err(io_at(&e.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
    fn reflog_path(&self) -> PathBuf {
        self.root.join("reflog")
    }
    fn index_lock_path(&self) -> PathBuf {
        self.root.join("locks/index.lock")
    }
    /// `locks/writers.lock`: every commit holds it shared; gc tries it exclusively.
    pub fn writers_lock_path(&self) -> PathBuf {
        self.root.join("locks/writers.lock")
    }
    /// `locks/readers.lock`: see [`Store::read_guard`].
    pub fn readers_lock_path(&self) -> PathBuf {
        self.root.join("locks/readers.lock")
    }

    /// Hold while reading many chunks: gc leaves old packs in place while any reader holds it.
    /// On a read-only store (where the lock file cannot be created) reads go ahead unguarded:
    /// nobody can be deleting packs there either.
    pub fn read_guard(&self) -> Option<lock::LockGuard> {
        lock::shared(&self.readers_lock_path()).ok()
    }

    /// The current read-only view of the index.
    pub fn view(&self) -> Arc<Index> {
        self.view
            .read()
            .expect("the view lock is never poisoned: no panics while held")
            .clone()
    }

    /// Reopen the read-only view so it sees everything published so far. Fails when the index
    /// cannot be opened; the old view then stays.
    pub fn refresh(&self) -> Result<()> {
        let stamp = index_stamp(&self.root);
        let fresh = Arc::new(Index::open_read(&self.root.join("index"))?);
        *self
            .view
            .write()
            .expect("the view lock is never poisoned: no panics while held") = fresh;
        *self.view_stamp.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
        Ok(())
    }

    /// [`Store::refresh`], only when the index directory changed since the view was opened
    /// (or its time cannot be read): what a long-lived handle (the Python package's) calls
    /// before each read, so another process's commits are seen without reopening the index on
    /// every call (which costs about 2 ms).
    pub fn refresh_if_changed(&self) -> Result<()> {
        let now = index_stamp(&self.root);
        let seen = *self.view_stamp.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now == seen {
            return Ok(());
        }
        self.refresh()
    }

    /// Run `f` with the index open read-write, holding the index lock; then refresh the view.
    /// Generic over the closure's error, so an operation can keep its own error type. When `f`
    /// succeeds the memtables are flushed before the lock is released. Fails when the lock or
    /// the index cannot be taken or opened, `f` fails, or the flush or the refresh fails.
    pub fn with_writer<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Index) -> Result<T, E>,
    ) -> Result<T, E> {
        let lock_path = self.index_lock_path();
        let guard = lock::exclusive(&lock_path).map_err(io_at(&lock_path))?;
        let out = {
            let index = Index::open_write(&self.root.join("index")).map_err(StoreError::from)?;
            let out = f(&index);
            if out.is_ok() {
                index.flush().map_err(StoreError::from)?;
            }
            out
        };
        drop(guard);
        self.refresh()?;
        out
    }

    fn pack(&self, id: PackId) -> Result<Arc<PackReader>> {
        let mut cache = self
            .packs
            .lock()
            .expect("the pack cache lock is never poisoned: no panics while held");
        if let Some(r) = cache.get(&id) {
            return Ok(r.clone());
        }
        let path = self.packs_dir().join(pack_file_name(id));
        let r = Arc::new(PackReader::open(&path, id)?);
        cache.insert(id, r.clone());
        Ok(r)
    }

    /// Read and verify object `id`: its kind byte and canonical bytes. Fails with
    /// [`StoreError::MissingObject`] when it is not indexed, and with a pack error when its
    /// entry is damaged or does not hash to `id`.
    pub fn read_object(&self, id: ObjectId) -> Result<(u8, Vec<u8>)> {
        self.retry_moved(|| {
            let view = self.view();
            let loc = view.object(&id)?.ok_or(StoreError::MissingObject { id })?;
            Ok(self.pack(loc.pack)?.read_object(id, loc.offset)?)
        })
    }

    /// Run a read; if the pack it looked in is gone (gc repacked or deleted it after this
    /// handle's view was taken), refresh the view once and try again.
    fn retry_moved<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        match f() {
            Err(StoreError::Pack(PackError::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                self.refresh()?;
                f()
            }
            other => other,
        }
    }

    /// Read, verify and decode commit `id`. Fails as [`Store::read_object`] does, and when the
    /// object is not a commit or does not decode.
    pub fn commit(&self, id: CommitId) -> Result<Commit> {
        let (kind, bytes) = self.read_object(id.into())?;
        if kind != KIND_COMMIT {
            return Err(ObjectError::WrongKind {
                id: id.into(),
                found: kind_name(kind),
                expected: "commit",
            }
            .into());
        }
        Ok(Commit::decode(id.into(), &bytes)?)
    }

    /// Read, verify and decode tree `id`. Fails as [`Store::read_object`] does, and when the
    /// object is not a tree or does not decode.
    pub fn tree(&self, id: TreeId) -> Result<Tree> {
        let (kind, bytes) = self.read_object(id.into())?;
        if kind != KIND_TREE {
            return Err(ObjectError::WrongKind {
                id: id.into(),
                found: kind_name(kind),
                expected: "tree",
            }
            .into());
        }
        Ok(Tree::decode(id.into(), &bytes)?)
    }

    /// Where chunk `id` is stored, or `None` when it is not indexed.
    pub fn chunk_loc(&self, id: ChunkId) -> Result<Option<ChunkLoc>> {
        Ok(self.view().chunk(&id)?)
    }

    /// Chunk `id`'s location and stored (encoded, not decoded) bytes, after checking its entry
    /// header names it with the indexed raw length: what a push copies into a remote's pack.
    /// Fails with [`StoreError::MissingChunk`] when it is not indexed, and a pack error when the
    /// entry is damaged or cannot be read.
    pub fn stored_chunk(&self, id: ChunkId) -> Result<(ChunkLoc, Vec<u8>)> {
        self.retry_moved(|| {
            let loc = self.chunk_loc(id)?.ok_or(StoreError::MissingChunk { id })?;
            let len = usize::try_from(loc.raw_len).map_err(|_| StoreError::DeltaChain { id })?;
            let (_, stored) = self.pack(loc.pack)?.chunk_payload(id, loc.offset, len)?;
            Ok((loc, stored))
        })
    }

    /// Read and verify chunk `id`'s raw bytes, decoding its delta chain when it has one. Fails
    /// with [`StoreError::MissingChunk`] when it (or a base) is not indexed,
    /// [`StoreError::DeltaChain`] for a chain too deep, and a pack error naming the damaged
    /// chunk.
    pub fn read_chunk(&self, id: ChunkId) -> Result<Vec<u8>> {
        self.with_fetch(id, || self.read_chunk_local(id))
    }

    fn read_chunk_local(&self, id: ChunkId) -> Result<Vec<u8>> {
        let loc = self.chunk_loc(id)?.ok_or(StoreError::MissingChunk { id })?;
        let len = usize::try_from(loc.raw_len).map_err(|_| StoreError::DeltaChain { id })?;
        if len > crate::codec::MAX_RAW_LEN {
            // Not a chunk this store writes; the verified path reports what is wrong with it.
            return self.retry_moved(|| self.read_chunk_depth(id, 0));
        }
        let mut out = vec![0u8; len];
        self.read_chunk_into(id, &mut out)?;
        Ok(out)
    }

    /// Read a chunk of exactly `out.len()` raw bytes into `out` and verify it against its id.
    ///
    /// A delta chain decodes into `out` itself: its root first, then each delta over it in place,
    /// and only the end result is hashed, which proves every link (a chunk's id is the hash of
    /// its raw bytes). When that check fails, the chain is decoded again link by link, each link
    /// verified against its own id, so the error names the damaged chunk. Fails also with
    /// [`StoreError::ChunkLength`] when the chunk is not `out.len()` bytes long.
    pub fn read_chunk_into(&self, id: ChunkId, out: &mut [u8]) -> Result<()> {
        self.with_fetch(id, || self.read_chunk_into_local(id, out))
    }

    fn read_chunk_into_local(&self, id: ChunkId, out: &mut [u8]) -> Result<()> {
        self.retry_moved(|| {
            if self.decode_chain_into(id, out)? && ChunkId::of(out) == id {
                return Ok(());
            }
            let raw = self.read_chunk_depth(id, 0)?;
            if raw.len() != out.len() {
                return Err(StoreError::ChunkLength {
                    id,
                    got: raw.len(),
                    want: out.len(),
                });
            }
            out.copy_from_slice(&raw);
            Ok(())
        })
    }

    /// Decode `id`'s delta chain into `out` without verifying it. `Ok(false)` when the chain does
    /// not decode as the index describes it (the caller then takes the verified path).
    fn decode_chain_into(&self, id: ChunkId, out: &mut [u8]) -> Result<bool> {
        let mut chain = Vec::with_capacity(crate::codec::MAX_DELTA_DEPTH as usize);
        let mut next = Some(id);
        while let Some(cur) = next {
            if chain.len() > 64 {
                return Err(StoreError::DeltaChain { id });
            }
            let Some(loc) = self.chunk_loc(cur)? else {
                return Ok(false);
            };
            next = loc.base.filter(|_| loc.encoding.needs_base());
            chain.push((cur, loc));
        }
        let packs = chain
            .iter()
            .map(|(_, loc)| self.pack(loc.pack))
            .collect::<Result<Vec<_>>>()?;
        if let [(cur, loc)] = chain.as_slice()
            && loc.encoding == crate::codec::Encoding::Raw
        {
            // The common case of a chunk stored as it is: read it straight into place.
            return match packs[0].raw_chunk_into(*cur, loc.offset, out) {
                Ok(read) => Ok(read),
                Err(PackError::BadChunk { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            };
        }
        // This thread's payload buffers, kept from one chunk to the next (never zeroed again).
        let mut bufs = PAYLOADS.with(|p| std::mem::take(&mut *p.borrow_mut()));
        bufs.resize_with(bufs.len().max(chain.len()), Vec::new);
        let decoded = (|| -> Result<bool> {
            let mut encs = Vec::with_capacity(chain.len());
            for (((cur, loc), pack), buf) in chain.iter().zip(&packs).rev().zip(bufs.iter_mut()) {
                match pack.chunk_payload_into(*cur, loc.offset, out.len(), buf) {
                    Ok((enc, len)) if enc == loc.encoding => encs.push((enc, len)),
                    Ok(_) | Err(PackError::BadChunk { .. }) => return Ok(false),
                    Err(e) => return Err(e.into()),
                }
            }
            let links: Vec<(crate::codec::Encoding, &[u8])> = encs
                .iter()
                .zip(&bufs)
                .map(|((e, len), b)| (*e, &b[..*len]))
                .collect();
            Ok(match links.split_first() {
                Some(((enc, stored), deltas)) if !enc.needs_base() => {
                    crate::codec::decode_into(*enc, stored, out)
                        .and_then(|()| crate::codec::apply_deltas_into(deltas, out))
                        .is_ok()
                }
                _ => false,
            })
        })();
        // Keep ordinary buffers only: a stranger's 64 MiB chunk does not pin 64 MiB per thread.
        bufs.retain(|b| b.capacity() <= KEEP_PAYLOAD_BYTES);
        PAYLOADS.with(|p| *p.borrow_mut() = bufs);
        decoded
    }

    fn read_chunk_depth(&self, id: ChunkId, depth: u32) -> Result<Vec<u8>> {
        if depth > 64 {
            return Err(StoreError::DeltaChain { id });
        }
        let loc = self.chunk_loc(id)?.ok_or(StoreError::MissingChunk { id })?;
        let base = match loc.base {
            Some(b) if loc.encoding.needs_base() => Some(self.read_chunk_depth(b, depth + 1)?),
            _ => None,
        };
        Ok(self
            .pack(loc.pack)?
            .read_chunk(id, loc.offset, None, base.as_deref())?)
    }

    /// The full name of the current branch (`refs/heads/...`).
    fn head_ref(&self) -> Result<String> {
        let v = self.view().meta(META_HEAD)?;
        Ok(v.and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(|| format!("{}{}", refs::HEADS, refs::DEFAULT_BRANCH)))
    }

    /// The current branch's short name.
    pub fn current_branch(&self) -> Result<String> {
        Ok(refs::short_name(&self.head_ref()?).to_string())
    }

    /// The commit HEAD points at, or `None` on an unborn branch.
    pub fn head(&self) -> Result<Option<CommitId>> {
        let r = self.head_ref()?;
        Ok(self.view().get_ref(&r)?)
    }

    /// The commit the full ref name `full` points at, or `None` when there is no such ref.
    pub fn get_ref(&self, full: &str) -> Result<Option<CommitId>> {
        Ok(self.view().get_ref(full)?)
    }

    /// Every branch, by short name with its commit, sorted by name.
    pub fn branches(&self) -> Result<Vec<(String, CommitId)>> {
        Ok(self
            .view()
            .refs(refs::HEADS)?
            .into_iter()
            .map(|(n, id)| (refs::short_name(&n).to_string(), id))
            .collect())
    }

    /// Every tag, by short name with its commit, sorted by name.
    pub fn tags(&self) -> Result<Vec<(String, CommitId)>> {
        Ok(self
            .view()
            .refs(refs::TAGS)?
            .into_iter()
            .map(|(n, id)| (refs::short_name(&n).to_string(), id))
            .collect())
    }

    /// Move ref `full` from `expected` to `new` by compare-and-swap, recording it in the reflog.
    /// `expected = None` means the ref must not exist yet. `who`, `action` and `message` go to
    /// the reflog entry. Fails with [`StoreError::RefMoved`] when the ref is elsewhere,
    /// [`StoreError::MissingObject`] when `new` is not indexed, and when the reflog append or
    /// the index write fails (the reflog may then name a move the index never made).
    pub fn update_ref(
        &self,
        full: &str,
        expected: Option<CommitId>,
        new: CommitId,
        who: &str,
        action: &str,
        message: &str,
    ) -> Result<()> {
        self.with_writer(|index| {
            let current = index.get_ref(full)?;
            if current != expected {
                return Err(StoreError::RefMoved {
                    name: full.to_string(),
                    expected: expected.map_or("nothing".into(), |c| c.to_hex()),
                    found: current.map_or("nothing".into(), |c| c.to_hex()),
                });
            }
            if index.object(&new.into())?.is_none() {
                return Err(StoreError::MissingObject { id: new.into() });
            }
            self.append_reflog(&ReflogEntry {
                name: full.to_string(),
                old: current.map(|c| c.to_hex()),
                new: Some(new.to_hex()),
                time_ns: now_ns(),
                who: who.to_string(),
                action: action.to_string(),
                message: message.to_string(),
            })?;
            let mut b = index.batch()?;
            b.put_ref(full, &new)?;
            index.write(b)?;
            Ok(())
        })
    }

    /// Make `branch` (a short name) the current branch, recording the switch in the reflog as
    /// `HEAD` by `who`. Fails with a [`StoreError::Ref`] for a bad name and
    /// [`StoreError::NoSuchRef`] when the branch has no commit yet.
    pub fn switch(&self, branch: &str, who: &str) -> Result<()> {
        let full = refs::branch_ref(branch)?;
        self.with_writer(|index| {
            if index.get_ref(&full)?.is_none() {
                return Err(StoreError::NoSuchRef { name: full.clone() });
            }
            let old = index
                .meta(META_HEAD)?
                .and_then(|b| String::from_utf8(b).ok());
            self.append_reflog(&ReflogEntry {
                name: "HEAD".into(),
                old,
                new: Some(full.clone()),
                time_ns: now_ns(),
                who: who.to_string(),
                action: "switch".into(),
                message: String::new(),
            })?;
            let mut b = index.batch()?;
            b.put_meta(META_HEAD, full.as_bytes())?;
            index.write(b)?;
            Ok(())
        })
    }

    pub(crate) fn append_reflog(&self, e: &ReflogEntry) -> Result<()> {
        let p = self.reflog_path();
        refs::append_reflog(&p, e).map_err(io_at(&p))
    }

    /// The reflog, oldest first, optionally only for one full ref name (`HEAD` for switches).
    /// Fails when the reflog cannot be read or a line other than the last is damaged.
    pub fn reflog(&self, full: Option<&str>) -> Result<Vec<ReflogEntry>> {
        let p = self.reflog_path();
        let all = refs::read_reflog(&p).map_err(io_at(&p))?;
        Ok(match full {
            Some(n) => all.into_iter().filter(|e| e.name == n).collect(),
            None => all,
        })
    }
}

/// A scratch directory of one running command (see [`Store::scratch_dir`]); removed, with its
/// lock file, when dropped.
pub struct ScratchDir {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: lock::LockGuard,
}

impl ScratchDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // The directory first, the lock file while still holding it: a cleaner never sees an
        // unlocked lock file beside a directory still in use.
        let _ = std::fs::remove_dir_all(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}
