//! Making a commit: reading files, chunking, hashing, deduplicating, encoding, writing packs, and
//! publishing.
//!
//! The write path, in order (docs/architecture.md numbers the same steps):
//! 1. Plan: walk the inputs, parse every `*.safetensors` header strictly (any error aborts the
//!    commit before anything is written), and note the branch head as the expected parent.
//! 2. Stream: a reader thread reads files in order in bounded batches (computing each file's
//!    SHA-256 as it goes); the batch is hashed, checked against the index and encoded on all
//!    cores; new chunks are appended to a pack in input order.
//! 3. Seal: the tree and commit objects are appended, each pack gets its footer and is fsynced,
//!    renamed from `.pack.tmp` to `.pack`, and the packs directory is fsynced.
//! 4. Publish, under `locks/index.lock` with the index open read-write: check that every chunk
//!    the commit reuses is still indexed; compare-and-swap the branch (if it moved, the commit is
//!    re-made with the new head as parent, in a small extra pack, fsynced the same way); append
//!    the ref move to the reflog (fsync); write one index batch with every new chunk, object,
//!    pack and the ref (sync).
//!
//! A crash before step 4's batch leaves only unreferenced sealed packs (dead bytes gc reclaims)
//! or `.pack.tmp` files (removed by cleanup once no writer holds them); the commit is not
//! acknowledged. After the batch, it is complete and durable.

pub mod async_commit;
mod options;
pub mod sharded;

pub use options::{AutoGc, CommitOptions, CommitOutcome, DeltaBase, TensorInput};

use crate::codec::{self, DELTA_DEPTH_LIMIT, Encoding, MAX_DELTA_DEPTH};
use crate::error::{Error, Result, io_at};
use crate::formats::safetensors;
use crate::model::chunker;
use crate::model::dtype::DType;
use crate::model::id::{ChunkId, CommitId, ObjectId};
use crate::model::object::{
    ChunkRef, Commit, FileEntry, FileFormat, KIND_COMMIT, KIND_TREE, Segment, SegmentKind, Tree,
};
use crate::model::path::check_rel_path;
use crate::ops::progress::{NoProgress, Progress};
use crate::storage::error::StoreError;
use crate::storage::index::{ChunkLoc, CommitRow};
use crate::storage::pack::{PackWriter, SealedPack, TARGET_PACK_SIZE};
use crate::storage::refs::{self, ReflogEntry};
use crate::storage::store::{Store, now_ns};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

/// Bytes read ahead per batch: bounds commit memory to a few batches.
const BATCH_BYTES: u64 = 16 << 20;

/// Chunk buffers handed back by the encoders and the pack writer for the reader to fill again:
/// a steady stream of reads then costs neither fresh pages (faults, zeroing) nor allocator
/// round trips. Bounded: at most [`BufPool::KEEP`] idle buffers.
#[derive(Default)]
struct BufPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl BufPool {
    /// Free buffers kept: raw chunk buffers and encoded-chunk buffers share the pool.
    const KEEP: usize = 128;

    /// An empty buffer, keeping the capacity of a spent one: for the encoder's output.
    fn take_empty(&self) -> Vec<u8> {
        let got = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut v = got.unwrap_or_default();
        v.clear();
        v
    }

    /// A buffer of exactly `n` bytes (contents unspecified: the caller overwrites them all).
    fn take(&self, n: usize) -> Vec<u8> {
        let got = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match got {
            Some(mut v) => {
                v.resize(n, 0);
                v
            }
            None => vec![0; n],
        }
    }

    fn give(&self, v: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < Self::KEEP && v.capacity() > 0 {
            free.push(v);
        }
    }
}

/// Tensors of the parent commit, by (file path, tensor name): dtype, shape, chunks.
type ParentTensors = std::collections::HashMap<(String, String), (DType, Vec<u64>, Vec<ChunkRef>)>;

/// The parent commit's time and tree, when there is a parent.
fn parent_tree(store: &Store, parent: Option<CommitId>) -> Result<Option<(i64, Tree)>> {
    let Some(p) = parent else { return Ok(None) };
    let c = store.commit(p)?;
    Ok(Some((c.time_ns, store.tree(c.tree)?)))
}

fn parent_tensors(tree: Option<&Tree>) -> ParentTensors {
    let mut out = ParentTensors::new();
    let Some(tree) = tree else { return out };
    for (path, f) in &tree.files {
        for s in &f.segments {
            if let SegmentKind::Tensor { name, dtype, shape } = &s.kind {
                out.insert(
                    (path.clone(), name.clone()),
                    (*dtype, shape.clone(), s.chunks.clone()),
                );
            }
        }
    }
    out
}

/// Whether `pf` is probably the parent's file unchanged: same path and size, and (on disk) not
/// modified since the parent commit. Such a file's SHA-256 is taken from the parent once its
/// chunks prove it identical, and computed in a second, verified pass otherwise.
fn probably_unchanged(pf: &PlannedFile, parent: Option<&(i64, Tree)>) -> bool {
    let Some((time_ns, tree)) = parent else {
        return false;
    };
    let Some(f) = tree.files.get(&pf.input.rel) else {
        return false;
    };
    if f.size != pf.size {
        return false;
    }
    match &pf.input.data {
        Data::Memory(_) => true,
        Data::Disk(p) => {
            pf.mtime
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|d| (d.as_nanos() as i128) <= *time_ns as i128)
                || probe_unchanged(p, f)
        }
    }
}

/// For a file written again since the parent commit (a newer mtime, as when a training loop
/// saves every file of each checkpoint) but the same size: whether three of the parent's
/// chunks, the first, the middle and the last, read back from it at the parent's offsets,
/// still hash to the parent's ids. Costs three chunk reads. A file that passes is read without
/// a SHA-256; should it differ elsewhere, its chunks will not match the parent's and the
/// checked second pass ([`sha256_verified`]) computes its digest.
fn probe_unchanged(path: &Path, parent: &FileEntry) -> bool {
    let mut at = 0u64;
    let chunks: Vec<(u64, ChunkRef)> = parent
        .chunks()
        .map(|c| {
            let here = at;
            at += c.len;
            (here, *c)
        })
        .collect();
    let Ok(file) = File::open(path) else {
        return false;
    };
    let n = chunks.len();
    let mut picks = vec![0, n / 2, n.saturating_sub(1)];
    picks.dedup();
    let mut buf = Vec::new();
    picks.into_iter().filter(|&i| i < n).all(|i| {
        let (off, c) = chunks[i];
        let Ok(len) = usize::try_from(c.len) else {
            return false;
        };
        buf.resize(len, 0);
        file.read_exact_at(&mut buf, off).is_ok() && ChunkId::of(&buf) == c.id
    })
}

/// SHA-256 of a file whose chunks are already known, re-read and checked chunk by chunk: the
/// digest is of exactly the bytes the chunks hold, or the file changed and the commit fails.
fn sha256_verified(pf: &PlannedFile, entry: &FileEntry) -> Result<[u8; 32]> {
    let file = match &pf.input.data {
        Data::Disk(p) => Some(File::open(p).map_err(io_at(p))?),
        Data::Memory(_) => None,
    };
    let mut sha = Sha256::new();
    let mut off = 0u64;
    for seg in &entry.segments {
        for c in &seg.chunks {
            let data = read_at(&pf.input.data, file.as_ref(), off, c.len, &pf.input.rel)?;
            if ChunkId::of(&data) != c.id {
                return Err(Error::ChangedWhileReading {
                    path: pf.input.rel.clone(),
                });
            }
            sha.update(&data);
            off += c.len;
        }
    }
    if off != pf.size {
        return Err(Error::ChangedWhileReading {
            path: pf.input.rel.clone(),
        });
    }
    Ok(sha.finalize().into())
}

enum Data {
    Disk(PathBuf),
    Memory(Arc<Vec<u8>>),
}

struct Input {
    rel: String,
    data: Data,
    executable: bool,
}

enum Plan {
    /// Segment kinds and their `[start, end)` ranges, covering the file.
    Structured(FileFormat, Vec<(SegmentKind, u64, u64)>),
    Opaque,
    /// A file that looked like a torch.save archive but could not be read as one: stored
    /// opaque, with the reason recorded (`show --json` reports it).
    Fallback(String),
}

/// Torch checkpoints by name (`.pt`, `.pth`, `.bin`, `.ckpt`, `.jit`, `.tar`) that start
/// with a zip local-file signature.
fn looks_like_torch(input: &Input, size: u64) -> Result<bool> {
    let name = input.rel.rsplit('/').next().unwrap_or(&input.rel);
    let ext_ok = [".pt", ".pth", ".bin", ".ckpt", ".jit", ".tar"]
        .iter()
        .any(|e| name.ends_with(e));
    if !ext_ok || size < 4 {
        return Ok(false);
    }
    let file = match &input.data {
        Data::Disk(p) => Some(File::open(p).map_err(io_at(p))?),
        Data::Memory(_) => None,
    };
    Ok(read_at(&input.data, file.as_ref(), 0, 4, &input.rel)? == b"PK\x03\x04")
}

/// Storage-aligned segments of a torch zip archive, or why it cannot be read as one.
fn plan_torch_zip(
    input: &Input,
    size: u64,
) -> std::result::Result<Vec<(SegmentKind, u64, u64)>, String> {
    let file = match &input.data {
        Data::Disk(p) => Some(File::open(p).map_err(|e| e.to_string())?),
        Data::Memory(_) => None,
    };
    let mut reader = |off: u64, buf: &mut [u8]| -> std::io::Result<()> {
        match (&input.data, &file) {
            (Data::Disk(_), Some(f)) => f.read_exact_at(buf, off),
            (Data::Memory(m), _) => {
                let start = usize::try_from(off).map_err(std::io::Error::other)?;
                let src = m
                    .get(start..start.saturating_add(buf.len()))
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                buf.copy_from_slice(src);
                Ok(())
            }
            (Data::Disk(_), None) => Err(std::io::Error::other("file not open")),
        }
    };
    let z = crate::formats::torchzip::parse(size, &mut reader).map_err(|e| e.to_string())?;
    let mut segs = Vec::new();
    for r in crate::formats::torchzip::segments(&z, size) {
        match r {
            crate::formats::torchzip::SegmentRange::Raw { start, end } => {
                segs.push((SegmentKind::Raw, start, end))
            }
            crate::formats::torchzip::SegmentRange::Storage { start, end, index } => {
                let st = &z.storages[index];
                let len = end - start;
                // A storage is a flat run of elements; its dtype drives the codec. Unknown
                // dtypes (untyped or unreferenced storages) are recorded as bytes.
                let (dtype, shape) = match st.dtype {
                    Some(d) if d.byte_width().is_some_and(|w| len % w as u64 == 0) => {
                        (d, vec![len / d.byte_width().expect("checked") as u64])
                    }
                    _ => (DType::U8, vec![len]),
                };
                segs.push((
                    SegmentKind::Tensor {
                        name: st.entry.clone(),
                        dtype,
                        shape,
                    },
                    start,
                    end,
                ));
            }
        }
    }
    let covered: u64 = segs.iter().map(|(_, a, b)| b - a).sum();
    if covered != size {
        return Err(format!("segments cover {covered} of {size} bytes"));
    }
    Ok(segs)
}

struct PlannedFile {
    input: Input,
    size: u64,
    mtime: Option<std::time::SystemTime>,
    plan: Plan,
}

/// Builds one commit. Add files, then call [`CommitBuilder::commit`].
pub struct CommitBuilder<'s> {
    store: &'s Store,
    inputs: Vec<Input>,
    empty_dirs: BTreeSet<String>,
    opts: CommitOptions,
    progress: &'s dyn Progress,
    gate: Option<Arc<Gate>>,
}

/// Lets a commit running in the background step aside: while any [`GateClosed`] guard lives,
/// the commit's reader, encoders and pack writer wait before their next chunk. The async
/// committer closes it while the training loop copies its next checkpoint, so that copy gets
/// the cores and the memory bus to itself (docs/architecture.md, "Async commit").
#[derive(Debug, Default)]
pub(crate) struct Gate {
    closed: Mutex<usize>,
    opened: std::sync::Condvar,
    /// The same count, read without the lock on every chunk.
    any: std::sync::atomic::AtomicUsize,
}

/// Keeps a [`Gate`] closed until dropped.
pub(crate) struct GateClosed<'g>(&'g Gate);

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.closed
            .lock()
            .expect("the gate lock is never poisoned: no panics while held")
    }

    pub(crate) fn close(&self) -> GateClosed<'_> {
        *self.lock() += 1;
        self.any.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        GateClosed(self)
    }

    /// Wait while the gate is closed.
    pub(crate) fn pass(&self) {
        if self.any.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            return;
        }
        let mut closed = self.lock();
        while *closed > 0 {
            closed = self
                .opened
                .wait(closed)
                .expect("the gate lock is never poisoned: no panics while held");
        }
    }
}

impl Drop for GateClosed<'_> {
    fn drop(&mut self) {
        let mut closed = self.0.lock();
        *closed -= 1;
        self.0.any.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if *closed == 0 {
            self.0.opened.notify_all();
        }
    }
}

fn pass(gate: Option<&Gate>) {
    if let Some(g) = gate {
        g.pass();
    }
}

/// Check that `len` bytes are exactly what tensor `name` of file `rel` takes.
pub(crate) fn check_tensor_len(
    rel: &str,
    name: &str,
    dtype: DType,
    shape: &[u64],
    len: usize,
) -> Result<()> {
    let want = dtype.byte_len(shape).map_err(|e| Error::BadInput {
        path: format!("{rel}:{name}"),
        what: e.to_string(),
    })?;
    if want != len as u64 {
        return Err(Error::BadInput {
            path: format!("{rel}:{name}"),
            what: format!(
                "{len} bytes given for dtype {dtype} and shape {shape:?}, which take {want}"
            ),
        });
    }
    Ok(())
}

impl<'s> CommitBuilder<'s> {
    pub fn new(store: &'s Store, opts: CommitOptions) -> CommitBuilder<'s> {
        CommitBuilder {
            store,
            inputs: Vec::new(),
            empty_dirs: BTreeSet::new(),
            opts,
            progress: &NoProgress,
            gate: None,
        }
    }

    pub fn progress(mut self, p: &'s dyn Progress) -> Self {
        self.progress = p;
        self
    }

    /// Wait at `gate` before each chunk (see [`Gate`]).
    pub(crate) fn gate(mut self, gate: Arc<Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    pub fn options_mut(&mut self) -> &mut CommitOptions {
        &mut self.opts
    }

    /// Add every file under `dir`, at paths relative to `dir`. Symlinks to files are followed;
    /// symlinks to directories and special files are refused.
    pub fn add_dir(&mut self, dir: &Path) -> Result<()> {
        let meta = std::fs::metadata(dir).map_err(io_at(dir))?;
        if !meta.is_dir() {
            return Err(Error::BadInput {
                path: dir.display().to_string(),
                what: "not a directory".into(),
            });
        }
        self.walk(dir, "")
    }

    fn walk(&mut self, dir: &Path, prefix: &str) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(io_at(dir))?
            .collect::<std::result::Result<_, _>>()
            .map_err(io_at(dir))?;
        entries.sort_by_key(|e| e.file_name());
        if entries.is_empty() && !prefix.is_empty() {
            self.empty_dirs
                .insert(prefix.trim_end_matches('/').to_string());
        }
        for e in entries {
            let path = e.path();
            let name = e.file_name().into_string().map_err(|n| Error::BadInput {
                path: path.display().to_string(),
                what: format!("file name {n:?} is not UTF-8"),
            })?;
            let rel = format!("{prefix}{name}");
            let ft = e.file_type().map_err(io_at(&path))?;
            if ft.is_dir() {
                self.walk(&path, &format!("{rel}/"))?;
            } else if ft.is_file() {
                self.add_path(&path, &rel)?;
            } else if ft.is_symlink() {
                let m = std::fs::metadata(&path).map_err(io_at(&path))?;
                if m.is_file() {
                    self.add_path(&path, &rel)?;
                } else {
                    return Err(Error::BadInput {
                        path: path.display().to_string(),
                        what: "symlink to a directory or special file; cairn follows only symlinks to files".into(),
                    });
                }
            } else {
                return Err(Error::BadInput {
                    path: path.display().to_string(),
                    what: "not a regular file or directory".into(),
                });
            }
        }
        Ok(())
    }

    /// Add one file from disk at `rel`.
    pub fn add_path(&mut self, path: &Path, rel: &str) -> Result<()> {
        check_rel_path(rel)?;
        let m = std::fs::metadata(path).map_err(io_at(path))?;
        if !m.is_file() {
            return Err(Error::BadInput {
                path: path.display().to_string(),
                what: "not a regular file".into(),
            });
        }
        self.inputs.push(Input {
            rel: rel.to_string(),
            data: Data::Disk(path.to_path_buf()),
            executable: m.permissions().mode() & 0o111 != 0,
        });
        Ok(())
    }

    /// Add a file from memory at `rel`.
    pub fn add_bytes(&mut self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        check_rel_path(rel)?;
        self.inputs.push(Input {
            rel: rel.to_string(),
            data: Data::Memory(Arc::new(bytes)),
            executable: false,
        });
        Ok(())
    }

    /// Add a file from memory that the caller keeps a reference to: once the commit is done
    /// and the builder dropped, the caller's `Arc` is the only one left (the async committer
    /// takes its buffers back this way).
    pub(crate) fn add_shared(&mut self, rel: &str, bytes: Arc<Vec<u8>>) -> Result<()> {
        check_rel_path(rel)?;
        self.inputs.push(Input {
            rel: rel.to_string(),
            data: Data::Memory(bytes),
            executable: false,
        });
        Ok(())
    }

    /// Add tensors from memory as one safetensors file at `rel` (laid out in the order given).
    pub fn add_tensors(
        &mut self,
        rel: &str,
        tensors: Vec<TensorInput>,
        metadata: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<()> {
        let specs: Vec<(String, DType, Vec<u64>)> = tensors
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
            .collect();
        let mut file = safetensors::serialize_header(&specs, metadata).map_err(|source| {
            Error::Safetensors {
                path: rel.to_string(),
                source,
            }
        })?;
        for t in &tensors {
            check_tensor_len(rel, &t.name, t.dtype, &t.shape, t.data.len())?;
        }
        let total: usize = tensors.iter().map(|t| t.data.len()).sum();
        file.reserve(total);
        for t in tensors {
            file.extend_from_slice(&t.data);
        }
        self.add_bytes(rel, file)
    }

    /// Write and publish the commit; then, if the store has a retention policy, apply it to the
    /// branch (its outcome, or its error, is reported in [`CommitOutcome::auto_gc`]; the commit
    /// stands either way).
    pub fn commit(self) -> Result<CommitOutcome> {
        let store = self.store;
        let mut out = self.publish()?;
        if let Some(policy) = crate::ops::gc::stored_policy(store)? {
            let opts = crate::ops::gc::GcOptions {
                retention: policy,
                branches: vec![out.branch.clone()],
                ..Default::default()
            };
            out.auto_gc = Some(match crate::ops::gc::gc(store, &opts, false) {
                Ok(g) => AutoGc {
                    pruned: g
                        .plan
                        .commits
                        .iter()
                        .filter(|c| c.decision == crate::ops::gc::Decision::Prune)
                        .count() as u64,
                    mode: g.mode,
                    bytes_freed: g.disk_bytes_before.saturating_sub(g.disk_bytes_after),
                    error: None,
                },
                Err(e) => AutoGc {
                    pruned: 0,
                    mode: "failed".into(),
                    bytes_freed: 0,
                    error: Some(e.to_string()),
                },
            });
        }
        Ok(out)
    }

    fn publish(self) -> Result<CommitOutcome> {
        let CommitBuilder {
            store,
            mut inputs,
            empty_dirs,
            opts,
            progress,
            gate,
        } = self;
        let gate = gate.as_deref();
        inputs.sort_by(|a, b| a.rel.cmp(&b.rel));
        for w in inputs.windows(2) {
            if w[0].rel == w[1].rel {
                return Err(Error::BadInput {
                    path: w[0].rel.clone(),
                    what: "added twice".into(),
                });
            }
        }
        let file_names: HashSet<&str> = inputs.iter().map(|i| i.rel.as_str()).collect();
        for i in &inputs {
            let mut p = i.rel.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if file_names.contains(parent) {
                    return Err(Error::BadInput {
                        path: i.rel.clone(),
                        what: format!("{parent} is both a file and a directory"),
                    });
                }
                p = parent;
            }
        }
        let mut opts = opts;
        let delta_depth = opts.delta_depth.unwrap_or(MAX_DELTA_DEPTH);
        if !(1..=DELTA_DEPTH_LIMIT).contains(&delta_depth) {
            return Err(Error::Usage {
                what: format!(
                    "delta depth {delta_depth} is out of range: K is 1 (no delta coding) to \
                     {DELTA_DEPTH_LIMIT}"
                ),
            });
        }
        let delta = (delta_depth, opts.delta_base);
        if !opts.ignore_trainer_state
            && let Some(ts) = inputs.iter().find(|i| i.rel == "trainer_state.json")
        {
            let bytes = match &ts.data {
                Data::Disk(p) => std::fs::read(p).map_err(io_at(p))?,
                Data::Memory(m) => m.to_vec(),
            };
            let state = crate::ops::provenance::parse_trainer_state(&ts.rel, &bytes)?;
            crate::ops::provenance::apply_trainer_state(&mut opts.meta, &state)?;
        }
        let branch = match &opts.branch {
            Some(b) => b.clone(),
            None => store.current_branch()?,
        };
        let branch_ref = refs::branch_ref(&branch)?;
        let opaque = build_globs(&opts.opaque)?;
        let writers = store.writers_lock_path();
        // Held for the whole commit: gc deletes nothing while a commit is between its dedup
        // checks and its publish.
        let _writing = crate::storage::lock::shared(&writers).map_err(io_at(&writers))?;

        // Step 1: plan. Every safetensors header is parsed before any byte is written.
        let expected_parent = store.get_ref(&branch_ref)?;
        let mut planned = Vec::with_capacity(inputs.len());
        for input in inputs {
            planned.push(plan_file(input, &opaque)?);
        }
        let total: u64 = planned.iter().map(|p| p.size).sum();

        // Step 2: stream.
        progress.begin("commit", total);
        let mut w = Writer::new(store)?;
        let mut files: Vec<FileEntry> = planned
            .iter()
            .map(|p| FileEntry {
                size: p.size,
                sha256: [0; 32],
                executable: p.input.executable,
                format: match &p.plan {
                    Plan::Structured(f, _) => f.clone(),
                    Plan::Opaque => FileFormat::Opaque,
                    Plan::Fallback(reason) => FileFormat::Fallback(reason.clone()),
                },
                segments: match &p.plan {
                    Plan::Structured(_, segs) => segs
                        .iter()
                        .map(|(k, _, _)| Segment {
                            kind: k.clone(),
                            chunks: Vec::new(),
                        })
                        .collect(),
                    Plan::Opaque | Plan::Fallback(_) => vec![Segment {
                        kind: SegmentKind::Raw,
                        chunks: Vec::new(),
                    }],
                },
            })
            .collect();
        let view = store.view();
        let ptree = parent_tree(store, expected_parent)?;
        let parent = parent_tensors(ptree.as_ref().map(|(_, t)| t));
        let speculative: Vec<bool> = planned
            .iter()
            .map(|pf| probably_unchanged(pf, ptree.as_ref()))
            .collect();
        let (tx, rx) = sync_channel::<std::result::Result<Vec<Item>, Error>>(1);
        // Hashing and encoding (rayon) overlap the pack writes (a thread of their own) and the
        // reading (another): each stage hands the next one batch at a time.
        let (wtx, wrx) = sync_channel::<Vec<Processed>>(1);
        let mut shas: Vec<Option<[u8; 32]>> = vec![None; planned.len()];
        let pool = BufPool::default();
        let pipeline = std::thread::scope(|s| -> Result<()> {
            let planned = &planned;
            let parent = &parent;
            let speculative = &speculative;
            let pool = &pool;
            s.spawn(move || read_all(planned, parent, speculative, Some(pool), gate, &tx));
            let files = &mut files;
            let shas = &mut shas;
            let w = &mut w;
            let writer = s.spawn(move || -> Result<()> {
                for batch in wrx {
                    for p in batch {
                        pass(gate);
                        match p {
                            Processed::Chunk {
                                file,
                                seg,
                                id,
                                raw,
                                encoded,
                                len,
                                base,
                            } => {
                                files[file].segments[seg].chunks.push(ChunkRef { id, len });
                                let spent = w.add_chunk(id, len, raw.as_deref(), encoded, base)?;
                                for b in raw.into_iter().chain(spent) {
                                    pool.give(b);
                                }
                                progress.advance(len);
                            }
                            Processed::FileDone { file, sha256 } => shas[file] = sha256,
                        }
                    }
                }
                Ok(())
            });
            let mut result = Ok(());
            for batch in rx {
                let processed = batch.and_then(|batch| {
                    batch
                        .into_par_iter()
                        .map(|item| {
                            pass(gate);
                            process(item, store, &view, Some(pool), delta)
                        })
                        .collect::<Result<Vec<_>>>()
                });
                match processed {
                    // A closed channel means the writer failed: its error is the one to report.
                    Ok(p) => {
                        if wtx.send(p).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            drop(wtx);
            let written = writer
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            result.and(written)
        });
        progress.end();
        pipeline?;
        // Files read without a digest: the parent's when the chunks match it, else a checked
        // second pass.
        let mut sha256_from_parent = 0u64;
        for (i, pf) in planned.iter().enumerate() {
            files[i].sha256 = match shas[i] {
                Some(d) => d,
                None => {
                    let same = ptree
                        .as_ref()
                        .and_then(|(_, t)| t.files.get(&pf.input.rel))
                        .filter(|pfe| pfe.segments == files[i].segments && pfe.size == pf.size);
                    match same {
                        Some(pfe) => {
                            sha256_from_parent += 1;
                            pfe.sha256
                        }
                        None => sha256_verified(pf, &files[i])?,
                    }
                }
            };
        }

        // Step 3: objects and seal.
        let mut tree = Tree {
            files: Default::default(),
            empty_dirs,
        };
        for (p, f) in planned.iter().zip(files) {
            tree.files.insert(p.input.rel.clone(), f);
        }
        let (tree_id, tree_bytes) = tree.encode();
        if let Some(part) = &opts.txn {
            // A part's tree lives in its own pack, unindexed until the transaction commits.
            w.add_object(tree_id.into(), KIND_TREE, &tree_bytes)?;
            let sealed = w.seal_all()?;
            let status = crate::ops::commit::sharded::stage(
                store,
                part,
                &opts,
                &branch,
                tree_id,
                &sealed,
                &w.reused_ids,
            )?;
            return Ok(CommitOutcome {
                commit: status.commit.unwrap_or(CommitId([0; 32])),
                tree: tree_id,
                parent: status.parent,
                branch,
                files: tree.files.len() as u64,
                logical_bytes: tree.logical_size(),
                new_chunks: w.new_chunks,
                new_chunk_bytes: w.new_chunk_bytes,
                reused_chunks: w.reused,
                sha256_from_parent,
                stored_bytes_added: sealed.iter().map(|p| p.size).sum(),
                packs: sealed.iter().map(|p| p.id).collect(),
                reparented: false,
                auto_gc: None,
                txn: Some(status),
            });
        }
        if view.object(&tree_id.into())?.is_none() {
            w.add_object(tree_id.into(), KIND_TREE, &tree_bytes)?;
        }
        let commit = Commit {
            parents: expected_parent.into_iter().collect(),
            tree: tree_id,
            time_ns: opts.time_ns.unwrap_or_else(now_ns),
            author: opts.author.clone(),
            message: opts.message.clone(),
            meta: opts.meta.clone(),
            logical_size: tree.logical_size(),
            file_count: tree.files.len() as u64,
        };
        let (commit_id, commit_bytes) = commit.encode();
        w.add_object(commit_id.into(), KIND_COMMIT, &commit_bytes)?;
        let mut sealed = w.seal_all()?;

        // Step 4: publish.
        let reused = w.reused;
        let new_chunks = w.new_chunks;
        let new_chunk_bytes = w.new_chunk_bytes;
        let (final_id, parent, reparented) = store.with_writer(|index| -> Result<_> {
            let mut b = index.batch()?;
            for id in &w.reused_ids {
                // Holding writers.lock kept gc from deleting it; a deferred gc may have marked
                // it dead meanwhile, and reusing it brings it back to life.
                if index.chunk(id)?.is_none() {
                    return Err(StoreError::MissingChunk { id: *id }.into());
                }
                if index.mark(id)?.is_some() {
                    b.delete_mark(id)?;
                }
            }
            let head = index.get_ref(&branch_ref)?;
            let (final_id, reparented) = if head == expected_parent {
                (commit_id, false)
            } else {
                // Another writer moved the branch: re-make the commit on top of it.
                let mut c = commit.clone();
                c.parents = head.into_iter().collect();
                let (id, bytes) = c.encode();
                let mut extra = PackWriter::create(&store.packs_dir())?;
                extra.append_object(id.into(), KIND_COMMIT, &bytes)?;
                let p = extra.seal()?;
                let d = store.packs_dir();
                // The re-made commit's pack must be durable before the index names it.
                crate::storage::fsutil::sync_dir(&d).map_err(io_at(&d))?;
                sealed.push(p);
                (id, true)
            };
            store.append_reflog(&ReflogEntry {
                name: branch_ref.clone(),
                old: head.map(|c| c.to_hex()),
                new: Some(final_id.to_hex()),
                time_ns: now_ns(),
                who: opts.author.clone(),
                action: "commit".into(),
                message: opts.message.lines().next().unwrap_or("").to_string(),
            })?;
            for p in &sealed {
                crate::storage::index::index_pack(index, &mut b, p)?;
            }
            let mut row = CommitRow::of(&commit);
            row.parents = head.into_iter().collect();
            b.put_commit_row(&final_id, &row)?;
            b.put_ref(&branch_ref, &final_id)?;
            index.write(b)?;
            Ok((final_id, head, reparented))
        })?;
        Ok(CommitOutcome {
            commit: final_id,
            tree: tree_id,
            parent,
            branch,
            files: tree.files.len() as u64,
            logical_bytes: tree.logical_size(),
            new_chunks,
            new_chunk_bytes,
            reused_chunks: reused,
            sha256_from_parent,
            stored_bytes_added: sealed.iter().map(|p| p.size).sum(),
            packs: sealed.iter().map(|p| p.id).collect(),
            reparented,
            auto_gc: None,
            txn: None,
        })
    }
}

fn build_globs(globs: &[String]) -> Result<globset::GlobSet> {
    let mut b = globset::GlobSetBuilder::new();
    for g in globs {
        b.add(globset::Glob::new(g).map_err(|e| Error::Usage {
            what: format!("bad --opaque glob {g:?}: {e}"),
        })?);
    }
    b.build().map_err(|e| Error::Usage {
        what: format!("bad --opaque globs: {e}"),
    })
}

fn read_at(data: &Data, file: Option<&File>, offset: u64, len: u64, rel: &str) -> Result<Vec<u8>> {
    read_at_pooled(data, file, offset, len, rel, None)
}

/// [`read_at`] into a buffer from `pool` when there is one.
fn read_at_pooled(
    data: &Data,
    file: Option<&File>,
    offset: u64,
    len: u64,
    rel: &str,
    pool: Option<&BufPool>,
) -> Result<Vec<u8>> {
    let n = usize::try_from(len).map_err(|_| Error::BadInput {
        path: rel.to_string(),
        what: "piece too large".into(),
    })?;
    let new_buf = |n: usize| pool.map_or_else(|| vec![0u8; n], |p| p.take(n));
    match (data, file) {
        (Data::Memory(m), _) => {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let src = m
                .get(start..start.saturating_add(n))
                .ok_or_else(|| Error::BadInput {
                    path: rel.to_string(),
                    what: "read past the end".into(),
                })?;
            let mut buf = new_buf(n);
            buf.copy_from_slice(src);
            Ok(buf)
        }
        (Data::Disk(path), Some(f)) => {
            let mut buf = new_buf(n);
            f.read_exact_at(&mut buf, offset).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    Error::ChangedWhileReading {
                        path: rel.to_string(),
                    }
                } else {
                    io_at(path)(e)
                }
            })?;
            Ok(buf)
        }
        (Data::Disk(path), None) => Err(Error::Io {
            path: path.clone(),
            source: std::io::Error::other("file not open"),
        }),
    }
}

fn plan_file(input: Input, opaque: &globset::GlobSet) -> Result<PlannedFile> {
    let (size, mtime) = match &input.data {
        Data::Disk(p) => {
            let m = std::fs::metadata(p).map_err(io_at(p))?;
            (m.len(), m.modified().ok())
        }
        Data::Memory(m) => (m.len() as u64, None),
    };
    let name = input.rel.rsplit('/').next().unwrap_or(&input.rel);
    let is_opaque = opaque.is_match(&input.rel) || opaque.is_match(name);
    let plan = if !is_opaque && input.rel.ends_with(".safetensors") {
        let file = match &input.data {
            Data::Disk(p) => Some(File::open(p).map_err(io_at(p))?),
            Data::Memory(_) => None,
        };
        let st_err = |source| Error::Safetensors {
            path: input.rel.clone(),
            source,
        };
        let prefix_len = size.min(8);
        let prefix = read_at(&input.data, file.as_ref(), 0, prefix_len, &input.rel)?;
        let n = safetensors::header_len(&prefix, size).map_err(st_err)?;
        let json = read_at(&input.data, file.as_ref(), 8, n, &input.rel)?;
        let header = safetensors::parse_header(&json, size).map_err(st_err)?;
        let start = header.data_start();
        let mut segs = vec![(SegmentKind::Raw, 0, start)];
        for t in header.tensors {
            segs.push((
                SegmentKind::Tensor {
                    name: t.name,
                    dtype: t.dtype,
                    shape: t.shape,
                },
                start + t.begin,
                start + t.end,
            ));
        }
        Plan::Structured(FileFormat::Safetensors, segs)
    } else if !is_opaque && looks_like_torch(&input, size)? {
        match plan_torch_zip(&input, size) {
            Ok(segs) => Plan::Structured(FileFormat::TorchZip, segs),
            Err(reason) => Plan::Fallback(reason),
        }
    } else {
        Plan::Opaque
    };
    Ok(PlannedFile {
        input,
        size,
        mtime,
        plan,
    })
}

enum Item {
    Piece {
        file: usize,
        seg: usize,
        data: Vec<u8>,
        dtype: Option<DType>,
        /// The parent's corresponding chunk, the delta candidate.
        base: Option<ChunkId>,
    },
    FileDone {
        file: usize,
        /// None for a file read without a digest (see [`probably_unchanged`]).
        sha256: Option<[u8; 32]>,
    },
}

enum Processed {
    Chunk {
        file: usize,
        seg: usize,
        id: ChunkId,
        len: u64,
        /// Raw bytes, kept only for a new chunk stored raw.
        raw: Option<Vec<u8>>,
        /// Set for a chunk the index does not have yet.
        encoded: Option<codec::Encoded>,
        /// The delta base the encoding used, and the resulting chain depth.
        base: Option<(ChunkId, u32)>,
    },
    FileDone {
        file: usize,
        sha256: Option<[u8; 32]>,
    },
}

fn process(
    item: Item,
    store: &Store,
    view: &crate::storage::index::Index,
    pool: Option<&BufPool>,
    delta: (u32, DeltaBase),
) -> Result<Processed> {
    let recycle = |data: Vec<u8>| {
        if let Some(p) = pool {
            p.give(data);
        }
    };
    match item {
        Item::FileDone { file, sha256 } => Ok(Processed::FileDone { file, sha256 }),
        Item::Piece {
            file,
            seg,
            data,
            dtype,
            base,
        } => {
            let id = ChunkId::of(&data);
            let len = data.len() as u64;
            // A stored copy fsck found corrupt is not reused: this good copy replaces it.
            if view.chunk(&id)?.is_some() && !view.is_damaged(&id)? {
                recycle(data);
                return Ok(Processed::Chunk {
                    file,
                    seg,
                    id,
                    len,
                    raw: None,
                    encoded: None,
                    base: None,
                });
            }
            // Delta against the parent's chunk (or its chain's root), when the depth leaves
            // room and the base reads back.
            let base_raw = match base {
                Some(b) if b != id => match pick_base(view, b, len, delta)? {
                    Some((b, depth)) => {
                        // Decoded into a recycled buffer: no fresh pages, no zeroing.
                        let mut raw =
                            pool.map_or_else(|| vec![0u8; data.len()], |p| p.take(data.len()));
                        match store.read_chunk_into(b, &mut raw) {
                            Ok(()) => Some((b, depth, raw)),
                            Err(_) => {
                                recycle(raw);
                                None
                            }
                        }
                    }
                    None => None,
                },
                _ => None,
            };
            let encoded = codec::encode_into(
                &data,
                codec::Hint {
                    dtype,
                    base: base_raw.as_ref().map(|(_, _, r)| r.as_slice()),
                },
                pool.map_or_else(Vec::new, BufPool::take_empty),
            );
            let base = match (&base_raw, encoded.used_base) {
                (Some((b, depth, _)), true) => Some((*b, *depth)),
                _ => None,
            };
            if let Some((_, _, raw)) = base_raw {
                recycle(raw);
            }
            let raw = if encoded.encoding == Encoding::Raw {
                Some(data)
            } else {
                recycle(data);
                None
            };
            Ok(Processed::Chunk {
                file,
                seg,
                id,
                len,
                raw,
                encoded: Some(encoded),
                base,
            })
        }
    }
}

/// The base to delta-code a new version of the parent's chunk `parent` (of `len` raw bytes)
/// against, and the new chunk's depth; `None` when it is to be stored standalone: the parent
/// chunk is unknown, damaged, of another length, or already K-1 versions from its root.
fn pick_base(
    view: &crate::storage::index::Index,
    parent: ChunkId,
    len: u64,
    (k, mode): (u32, DeltaBase),
) -> Result<Option<(ChunkId, u32)>> {
    let usable = |id: &ChunkId, loc: &ChunkLoc| -> Result<bool> {
        Ok(loc.raw_len == len && !view.is_damaged(id)?)
    };
    let Some(loc) = view.chunk(&parent)? else {
        return Ok(None);
    };
    if loc.depth.saturating_add(1) >= k || !usable(&parent, &loc)? {
        return Ok(None);
    }
    let depth = loc.depth + 1;
    if mode == DeltaBase::Parent {
        return Ok(Some((parent, depth)));
    }
    // Down the parent's chain to its standalone root (one link for chunks this mode wrote).
    let (mut cur, mut cur_loc) = (parent, loc);
    for _ in 0..=DELTA_DEPTH_LIMIT {
        let next = match cur_loc.base {
            Some(b) if cur_loc.encoding.needs_base() => b,
            _ => return Ok(Some((cur, depth))),
        };
        match view.chunk(&next)? {
            Some(l) if usable(&next, &l)? => (cur, cur_loc) = (next, l),
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// The reader thread: every file in order, in batches of about [`BATCH_BYTES`].
fn read_all(
    planned: &[PlannedFile],
    parent: &ParentTensors,
    speculative: &[bool],
    pool: Option<&BufPool>,
    gate: Option<&Gate>,
    tx: &std::sync::mpsc::SyncSender<std::result::Result<Vec<Item>, Error>>,
) {
    let mut batch = Vec::new();
    let mut batch_bytes = 0u64;
    let push = |item: Item, batch: &mut Vec<Item>, batch_bytes: &mut u64| -> bool {
        if let Item::Piece { data, .. } = &item {
            *batch_bytes += data.len() as u64;
        }
        batch.push(item);
        if *batch_bytes >= BATCH_BYTES {
            *batch_bytes = 0;
            return tx.send(Ok(std::mem::take(batch))).is_ok();
        }
        true
    };
    for (fi, pf) in planned.iter().enumerate() {
        let r = (|| -> Result<bool> {
            let file = match &pf.input.data {
                Data::Disk(p) => Some(File::open(p).map_err(io_at(p))?),
                Data::Memory(_) => None,
            };
            let mut sha = (!speculative.get(fi).copied().unwrap_or(false)).then(Sha256::new);
            let mut read = 0u64;
            match &pf.plan {
                Plan::Structured(_, segs) => {
                    for (si, (kind, start, end)) in segs.iter().enumerate() {
                        let (dtype, bases) = match kind {
                            SegmentKind::Tensor { dtype, shape, name } => {
                                let bases = parent
                                    .get(&(pf.input.rel.clone(), name.clone()))
                                    .filter(|(d, s, _)| d == dtype && s == shape)
                                    .map(|(_, _, c)| c.as_slice());
                                (Some(*dtype), bases)
                            }
                            SegmentKind::Raw => (None, None),
                        };
                        for (ci, (off, len)) in chunker::fixed(*start, end - start).enumerate() {
                            pass(gate);
                            let data = read_at_pooled(
                                &pf.input.data,
                                file.as_ref(),
                                off,
                                len,
                                &pf.input.rel,
                                pool,
                            )?;
                            if let Some(sha) = &mut sha {
                                sha.update(&data);
                            }
                            read += len;
                            let base = bases
                                .and_then(|b| b.get(ci))
                                .filter(|c| c.len == len)
                                .map(|c| c.id);
                            let item = Item::Piece {
                                file: fi,
                                seg: si,
                                data,
                                dtype,
                                base,
                            };
                            if !push(item, &mut batch, &mut batch_bytes) {
                                return Ok(false);
                            }
                        }
                    }
                }
                Plan::Opaque | Plan::Fallback(_) => {
                    let iter: Box<dyn Iterator<Item = std::io::Result<(u64, Vec<u8>)>>> =
                        match (&pf.input.data, &file) {
                            (Data::Memory(m), _) => {
                                Box::new(chunker::cdc(std::io::Cursor::new(m.as_slice())))
                            }
                            (Data::Disk(_), Some(f)) => Box::new(chunker::cdc(
                                std::io::BufReader::with_capacity(1 << 20, f),
                            )),
                            (Data::Disk(p), None) => {
                                return Err(Error::Io {
                                    path: p.clone(),
                                    source: std::io::Error::other("file not open"),
                                });
                            }
                        };
                    for r in iter {
                        pass(gate);
                        let (_, data) = r.map_err(|e| Error::Io {
                            path: PathBuf::from(&pf.input.rel),
                            source: e,
                        })?;
                        if let Some(sha) = &mut sha {
                            sha.update(&data);
                        }
                        read += data.len() as u64;
                        let item = Item::Piece {
                            file: fi,
                            seg: 0,
                            data,
                            dtype: None,
                            base: None,
                        };
                        if !push(item, &mut batch, &mut batch_bytes) {
                            return Ok(false);
                        }
                    }
                }
            }
            if let Data::Disk(p) = &pf.input.data {
                let m = std::fs::metadata(p).map_err(io_at(p))?;
                if read != pf.size || m.len() != pf.size || m.modified().ok() != pf.mtime {
                    return Err(Error::ChangedWhileReading {
                        path: pf.input.rel.clone(),
                    });
                }
            }
            let item = Item::FileDone {
                file: fi,
                sha256: sha.map(|s| s.finalize().into()),
            };
            Ok(push(item, &mut batch, &mut batch_bytes))
        })();
        match r {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(Ok(batch));
    }
}

/// Appends new chunks and objects to packs, rolling to a new pack past the target size.
pub(crate) struct Writer<'s> {
    store: &'s Store,
    current: Option<PackWriter>,
    sealed: Vec<SealedPack>,
    written: HashSet<ChunkId>,
    pub(crate) reused_ids: HashSet<ChunkId>,
    reused: u64,
    new_chunks: u64,
    new_chunk_bytes: u64,
}

impl<'s> Writer<'s> {
    fn new(store: &'s Store) -> Result<Writer<'s>> {
        Ok(Writer {
            store,
            current: None,
            sealed: Vec::new(),
            written: HashSet::new(),
            reused_ids: HashSet::new(),
            reused: 0,
            new_chunks: 0,
            new_chunk_bytes: 0,
        })
    }

    fn pack(&mut self) -> Result<&mut PackWriter> {
        if self
            .current
            .as_ref()
            .is_some_and(|p| p.len() >= TARGET_PACK_SIZE)
        {
            let full = self.current.take().expect("checked above");
            self.sealed.push(full.seal()?);
        }
        if self.current.is_none() {
            self.current = Some(PackWriter::create(&self.store.packs_dir())?);
        }
        Ok(self.current.as_mut().expect("set above"))
    }

    /// Append a chunk (or count a reused one). Returns the encoded bytes' buffer, spent, for
    /// reuse.
    fn add_chunk(
        &mut self,
        id: ChunkId,
        len: u64,
        raw: Option<&[u8]>,
        encoded: Option<codec::Encoded>,
        base: Option<(ChunkId, u32)>,
    ) -> Result<Option<Vec<u8>>> {
        let Some(enc) = encoded else {
            self.reused += 1;
            if !self.written.contains(&id) {
                self.reused_ids.insert(id);
            }
            return Ok(None);
        };
        if self.written.contains(&id) {
            self.reused += 1;
            return Ok(Some(enc.bytes));
        }
        let stored: &[u8] = match (enc.encoding, raw) {
            (Encoding::Raw, Some(r)) => r,
            _ => &enc.bytes,
        };
        let (base_id, depth) = match base {
            Some((b, d)) => {
                // The base must still be there at publish: check it like a reused chunk.
                self.reused_ids.insert(b);
                (Some(b), d)
            }
            None => (None, 0),
        };
        self.pack()?
            .append_chunk(id, enc.encoding, len, stored, base_id, depth)?;
        self.written.insert(id);
        self.new_chunks += 1;
        self.new_chunk_bytes += len;
        Ok(Some(enc.bytes))
    }

    fn add_object(&mut self, id: ObjectId, kind: u8, bytes: &[u8]) -> Result<()> {
        self.pack()?.append_object(id, kind, bytes)?;
        Ok(())
    }

    /// Seal every pack and fsync the packs directory.
    fn seal_all(&mut self) -> Result<Vec<SealedPack>> {
        if let Some(p) = self.current.take() {
            self.sealed.push(p.seal()?);
        }
        let d = self.store.packs_dir();
        // Renamed packs must be durable before the index batch that names them.
        crate::storage::fsutil::sync_dir(&d).map_err(io_at(&d))?;
        Ok(std::mem::take(&mut self.sealed))
    }
}

/// Re-chunk the files under `path` (a directory or one file) exactly as a commit would, and
/// write a good copy of every chunk fsck recorded as damaged; the index then points at the new
/// copy. Returns how many damaged chunks were healed.
pub fn heal_from(store: &Store, path: &Path) -> Result<u64> {
    let damaged: HashSet<ChunkId> = store
        .view()
        .ids(crate::storage::index::CF_DAMAGED)?
        .into_iter()
        .map(ChunkId)
        .collect();
    if damaged.is_empty() {
        return Ok(0);
    }
    let mut b = CommitBuilder::new(store, CommitOptions::default());
    if std::fs::metadata(path).map_err(io_at(path))?.is_dir() {
        b.add_dir(path)?;
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "file".into());
        b.add_path(path, &name)?;
    }
    let opaque = build_globs(&[])?;
    let planned: Vec<PlannedFile> = b
        .inputs
        .into_iter()
        .map(|i| plan_file(i, &opaque))
        .collect::<Result<_>>()?;
    let mut w = Writer::new(store)?;
    let (tx, rx) = sync_channel::<std::result::Result<Vec<Item>, Error>>(1);
    let none = ParentTensors::new();
    std::thread::scope(|s| -> Result<()> {
        let planned = &planned;
        let none = &none;
        s.spawn(move || read_all(planned, none, &[], None, None, &tx));
        for batch in rx {
            for item in batch? {
                if let Item::Piece { data, dtype, .. } = item {
                    let id = ChunkId::of(&data);
                    if damaged.contains(&id) && !w.written.contains(&id) {
                        let len = data.len() as u64;
                        let enc = codec::encode(&data, codec::Hint { dtype, base: None });
                        let raw = (enc.encoding == Encoding::Raw).then_some(data.as_slice());
                        w.add_chunk(id, len, raw, Some(enc), None)?;
                    }
                }
            }
        }
        Ok(())
    })?;
    if w.written.is_empty() {
        return Ok(0);
    }
    let sealed = w.seal_all()?;
    // Every entry of these packs is a damaged chunk: indexing them re-points each one at
    // its good copy and clears its damaged record.
    store.with_writer(|index| -> Result<_> {
        let mut b = index.batch()?;
        for p in &sealed {
            crate::storage::index::index_pack(index, &mut b, p)?;
        }
        index.write(b)?;
        Ok(sealed.iter().map(|p| p.entries.len() as u64).sum())
    })
}
