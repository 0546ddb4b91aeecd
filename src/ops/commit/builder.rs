//! [`CommitBuilder`]: collects a commit's files (from a directory, single files, memory or
//! tensors), then runs the write path over them, steps 1 to 4 in order, and the store's
//! retention policy after.
//!
//! Invariants: paths entering a commit pass [`check_rel_path`]; tensors given from memory are
//! checked against their dtype and shape before they are laid out; the write path runs under
//! a shared `locks/writers.lock`, so gc deletes nothing between the dedup checks and the
//! publish.

#![warn(missing_docs)]

use super::error::{CommitError, Result, io_at};
use super::gate::Gate;
use super::input::{Data, Input};
use super::options::{AutoGc, CommitOptions, CommitOutcome, DeltaBase, TensorInput};
use super::pipeline::{self, Streamed};
use super::plan::{build_globs, check_paths, plan_file};
use super::publish::{self, Publish};
use super::writer::Writer;
use crate::codec::{DELTA_DEPTH_LIMIT, MAX_DELTA_DEPTH};
use crate::formats::safetensors;
use crate::model::dtype::DType;
use crate::model::id::{CommitId, TreeId};
use crate::model::object::{Commit, KIND_TREE, Tree};
use crate::model::path::check_rel_path;
use crate::ops::progress::{NoProgress, Progress};
use crate::storage::pack::SealedPack;
use crate::storage::refs;
use crate::storage::store::{Store, now_ns};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

/// Builds one commit. Add files, then call [`CommitBuilder::commit`].
pub struct CommitBuilder<'s> {
    pub(super) store: &'s Store,
    pub(super) inputs: Vec<Input<'s>>,
    empty_dirs: BTreeSet<String>,
    opts: CommitOptions,
    progress: &'s dyn Progress,
    gate: Option<Arc<Gate>>,
}

/// Check that `len` bytes are exactly what tensor `name` of file `rel` takes.
pub(super) fn check_tensor_len(
    rel: &str,
    name: &str,
    dtype: DType,
    shape: &[u64],
    len: usize,
) -> Result<()> {
    let want = dtype
        .byte_len(shape)
        .map_err(|source| CommitError::TensorShape {
            path: format!("{rel}:{name}"),
            source,
        })?;
    if want != len as u64 {
        return Err(CommitError::TensorLength {
            path: format!("{rel}:{name}"),
            len,
            dtype,
            shape: shape.to_vec(),
            want,
        });
    }
    Ok(())
}

/// The safetensors header of a file laying out `tensors` in the order given, once each tensor's
/// bytes are checked to be exactly what its dtype and shape take.
pub(super) fn tensor_file_header(
    rel: &str,
    tensors: &[crate::ops::commit::async_commit::TensorSlice<'_>],
    metadata: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    for t in tensors {
        check_tensor_len(rel, t.name, t.dtype, t.shape, t.data.len())?;
    }
    let specs: Vec<(String, DType, Vec<u64>)> = tensors
        .iter()
        .map(|t| (t.name.to_string(), t.dtype, t.shape.to_vec()))
        .collect();
    safetensors::serialize_header(&specs, metadata).map_err(|source| CommitError::Safetensors {
        path: rel.to_string(),
        source,
    })
}

impl<'s> CommitBuilder<'s> {
    /// A builder for a commit to `store` with `opts`, holding no file yet.
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

    /// Report the bytes streamed (step 2) to `p`.
    pub fn progress(mut self, p: &'s dyn Progress) -> Self {
        self.progress = p;
        self
    }

    /// Wait at `gate` before each chunk (see [`Gate`]).
    pub(super) fn gate(mut self, gate: Arc<Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The commit's options, to change before [`CommitBuilder::commit`].
    pub fn options_mut(&mut self) -> &mut CommitOptions {
        &mut self.opts
    }

    /// Add every file under `dir`, at paths relative to `dir`. Symlinks to files are followed;
    /// symlinks to directories and special files are refused.
    pub fn add_dir(&mut self, dir: &Path) -> Result<()> {
        let meta = std::fs::metadata(dir).map_err(io_at(dir))?;
        if !meta.is_dir() {
            return Err(CommitError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        let root = std::fs::canonicalize(dir).map_err(io_at(dir))?;
        self.walk(&root, dir, "")
    }

    /// Add the files under `dir` (whose canonical form is under `root`) at `prefix`.
    fn walk(&mut self, root: &Path, dir: &Path, prefix: &str) -> Result<()> {
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
            let name = e
                .file_name()
                .into_string()
                .map_err(|name| CommitError::NonUtf8Name {
                    path: path.clone(),
                    name,
                })?;
            let rel = format!("{prefix}{name}");
            let ft = e.file_type().map_err(io_at(&path))?;
            if ft.is_dir() {
                self.walk(root, &path, &format!("{rel}/"))?;
            } else if ft.is_file() {
                self.add_path(&path, &rel)?;
            } else if ft.is_symlink() {
                let target = std::fs::canonicalize(&path).map_err(io_at(&path))?;
                if !self.opts.follow_symlinks && !target.starts_with(root) {
                    return Err(CommitError::SymlinkLeavesDir {
                        path,
                        target,
                        dir: root.to_path_buf(),
                    });
                }
                let m = std::fs::metadata(&path).map_err(io_at(&path))?;
                if !m.is_file() {
                    return Err(CommitError::SymlinkNotToFile { path });
                }
                self.add_path(&path, &rel)?;
            } else {
                return Err(CommitError::SpecialFile { path });
            }
        }
        Ok(())
    }

    /// Add one file from disk at `rel`.
    pub fn add_path(&mut self, path: &Path, rel: &str) -> Result<()> {
        check_rel_path(rel)?;
        let m = std::fs::metadata(path).map_err(io_at(path))?;
        if !m.is_file() {
            return Err(CommitError::NotAFile {
                path: path.to_path_buf(),
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
        self.add_shared(rel, Arc::new(bytes))
    }

    /// Add a file from memory that the caller keeps a reference to: once the commit is done
    /// and the builder dropped, the caller's `Arc` is the only one left (the async committer
    /// takes its buffers back this way).
    pub(super) fn add_shared(&mut self, rel: &str, bytes: Arc<Vec<u8>>) -> Result<()> {
        check_rel_path(rel)?;
        self.inputs.push(Input {
            rel: rel.to_string(),
            data: Data::Memory(bytes),
            executable: false,
        });
        Ok(())
    }

    /// Add `bytes` as the file at `rel` without copying them: they are read from the caller's
    /// memory while the commit runs.
    pub fn add_borrowed_bytes(&mut self, rel: &str, bytes: &'s [u8]) -> Result<()> {
        check_rel_path(rel)?;
        self.inputs.push(Input {
            rel: rel.to_string(),
            data: Data::Pieces(vec![std::borrow::Cow::Borrowed(bytes)]),
            executable: false,
        });
        Ok(())
    }

    /// Lay `tensors` out as one safetensors file at `rel` (tensors in the order given) without
    /// copying them: the file is the header followed by the tensors' bytes, read from the
    /// caller's memory while the commit runs (the builder borrows them), so a commit from
    /// memory costs no second copy of the checkpoint (the Python package uses this). Names,
    /// dtypes, shapes and lengths are checked here.
    pub fn add_tensor_slices(
        &mut self,
        rel: &str,
        tensors: &[crate::ops::commit::async_commit::TensorSlice<'s>],
        metadata: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<()> {
        check_rel_path(rel)?;
        let header = tensor_file_header(rel, tensors, metadata)?;
        let mut pieces = Vec::with_capacity(tensors.len() + 1);
        pieces.push(std::borrow::Cow::Owned(header));
        pieces.extend(tensors.iter().map(|t| std::borrow::Cow::Borrowed(t.data)));
        self.inputs.push(Input {
            rel: rel.to_string(),
            data: Data::Pieces(pieces),
            executable: false,
        });
        Ok(())
    }

    /// Add tensors from memory as one safetensors file at `rel` (laid out in the order given).
    /// The tensors' buffers become the file's pieces: nothing is copied.
    pub fn add_tensors(
        &mut self,
        rel: &str,
        tensors: Vec<TensorInput>,
        metadata: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<()> {
        check_rel_path(rel)?;
        let slices: Vec<crate::ops::commit::async_commit::TensorSlice<'_>> = tensors
            .iter()
            .map(|t| crate::ops::commit::async_commit::TensorSlice {
                name: &t.name,
                dtype: t.dtype,
                shape: &t.shape,
                data: &t.data,
            })
            .collect();
        let header = tensor_file_header(rel, &slices, metadata)?;
        let mut pieces = Vec::with_capacity(tensors.len() + 1);
        pieces.push(std::borrow::Cow::Owned(header));
        pieces.extend(tensors.into_iter().map(|t| std::borrow::Cow::Owned(t.data)));
        self.inputs.push(Input {
            rel: rel.to_string(),
            data: Data::Pieces(pieces),
            executable: false,
        });
        Ok(())
    }

    /// Write and publish the commit. If the store has a retention policy, the outcome's
    /// [`CommitOutcome::auto_gc`] says it is due on the branch; this call does not run it, so
    /// the commit's outcome comes as soon as it is durable and published. The caller runs
    /// [`crate::ops::gc::run_policy`] off the training loop's path (the CLI starts it in a
    /// detached process; [`super::async_commit::AsyncCommitter`] and the Python package on a
    /// thread of their own).
    pub fn commit(self) -> Result<CommitOutcome> {
        let store = self.store;
        let mut out = self.write()?;
        out.auto_gc = auto_gc(store, &out.branch)?;
        Ok(out)
    }

    /// The write path, steps 1 to 4 (see [`super`]).
    fn write(self) -> Result<CommitOutcome> {
        let CommitBuilder {
            store,
            mut inputs,
            empty_dirs,
            mut opts,
            progress,
            gate,
        } = self;
        let settings = Settings::of(store, &mut inputs, &mut opts)?;
        let writers = store.writers_lock_path();
        // Held for the whole commit: gc deletes nothing while a commit is between its dedup
        // checks and its publish.
        let _writing = crate::storage::lock::shared(&writers).map_err(io_at(&writers))?;
        // A view taken before the lock (when the store was opened, or by the last commit of an
        // async committer) may predate a gc that deleted chunks it still lists: deduplicating
        // against it would reuse chunks that are gone, and publish would fail. Under the lock
        // gc deletes nothing, so a view taken now stays true until this commit publishes.
        store.refresh()?;

        // Step 1: plan. Every safetensors header is parsed before any byte is written.
        let expected_parent = store.get_ref(&settings.branch_ref)?;
        let mut planned = Vec::with_capacity(inputs.len());
        for input in inputs {
            planned.push(plan_file(input, &settings.opaque)?);
        }

        // Step 2: stream.
        let gate = gate.as_deref();
        let delta = settings.delta;
        let streamed = pipeline::stream(store, &planned, expected_parent, progress, gate, delta)?;
        let Streamed {
            mut w,
            files,
            view,
            sha256_from_parent,
        } = streamed;

        // Step 3: objects and seal.
        let mut tree = Tree {
            files: Default::default(),
            empty_dirs,
        };
        for (p, f) in planned.iter().zip(files) {
            tree.files.insert(p.input.rel.clone(), f);
        }
        let (tree_id, tree_bytes) = tree.encode();
        let mut out = outcome(&tree, tree_id, settings.branch, &w, sha256_from_parent);
        if let Some(part) = &opts.txn {
            // A part's tree lives in its own pack, unindexed until the transaction commits.
            w.add_object(tree_id.into(), KIND_TREE, &tree_bytes)?;
            let sealed = w.seal_all()?;
            let branch = &out.branch;
            let status =
                super::sharded::stage(store, part, &opts, branch, tree_id, &sealed, &w.reused_ids)?;
            out.commit = status.commit.unwrap_or(CommitId([0; 32]));
            out.parent = status.parent;
            out.txn = Some(status);
            return Ok(with_packs(out, &sealed));
        }
        let commit = commit_object(&opts, &tree, tree_id, expected_parent);
        let (commit_id, mut sealed) =
            publish::seal(&mut w, &view, (tree_id, &tree_bytes), &commit)?;

        // Step 4: publish.
        let published = Publish {
            store,
            branch_ref: &settings.branch_ref,
            expected_parent,
            commit: &commit,
            commit_id,
            reused: &w.reused_ids,
        }
        .run(&mut sealed)?;
        out.commit = published.commit;
        out.parent = published.parent;
        out.reparented = published.reparented;
        Ok(with_packs(out, &sealed))
    }
}

/// What the write path settles from the inputs and options before step 1.
struct Settings {
    /// K and the delta base mode.
    delta: (u32, DeltaBase),
    /// The branch committed to.
    branch: String,
    /// Its full ref name.
    branch_ref: String,
    /// The `--opaque` globs.
    opaque: globset::GlobSet,
}

impl Settings {
    /// Sort and check the inputs' paths, check K, read a top-level `trainer_state.json` into
    /// the metadata (unless told not to), and resolve the branch.
    fn of(store: &Store, inputs: &mut [Input], opts: &mut CommitOptions) -> Result<Settings> {
        check_paths(inputs)?;
        let delta_depth = opts.delta_depth.unwrap_or(MAX_DELTA_DEPTH);
        if !(1..=DELTA_DEPTH_LIMIT).contains(&delta_depth) {
            return Err(CommitError::DeltaDepth { depth: delta_depth });
        }
        let delta = (delta_depth, opts.delta_base);
        if !opts.ignore_trainer_state {
            apply_trainer_state(inputs, opts)?;
        }
        let branch = match &opts.branch {
            Some(b) => b.clone(),
            None => store.current_branch()?,
        };
        let branch_ref = refs::branch_ref(&branch)?;
        let opaque = build_globs(&opts.opaque)?;
        Ok(Settings {
            delta,
            branch,
            branch_ref,
            opaque,
        })
    }
}

/// The outcome of a commit of `tree` to `branch` as streaming left it: no commit, parent or
/// packs yet.
fn outcome(
    tree: &Tree,
    tree_id: TreeId,
    branch: String,
    w: &Writer<'_>,
    sha256_from_parent: u64,
) -> CommitOutcome {
    CommitOutcome {
        commit: CommitId([0; 32]),
        tree: tree_id,
        parent: None,
        branch,
        files: tree.files.len() as u64,
        logical_bytes: tree.logical_size(),
        new_chunks: w.new_chunks,
        new_chunk_bytes: w.new_chunk_bytes,
        reused_chunks: w.reused,
        sha256_from_parent,
        stored_bytes_added: 0,
        packs: Vec::new(),
        reparented: false,
        auto_gc: None,
        txn: None,
    }
}

/// The commit object of `tree` on `parent`, as `opts` describe it.
fn commit_object(
    opts: &CommitOptions,
    tree: &Tree,
    tree_id: TreeId,
    parent: Option<CommitId>,
) -> Commit {
    Commit {
        parents: parent.into_iter().collect(),
        tree: tree_id,
        time_ns: opts.time_ns.unwrap_or_else(now_ns),
        author: opts.author.clone(),
        message: opts.message.clone(),
        meta: opts.meta.clone(),
        logical_size: tree.logical_size(),
        file_count: tree.files.len() as u64,
    }
}

/// `out` with the packs written and their bytes on disk.
fn with_packs(mut out: CommitOutcome, sealed: &[SealedPack]) -> CommitOutcome {
    out.stored_bytes_added = sealed.iter().map(|p| p.size).sum();
    out.packs = sealed.iter().map(|p| p.id).collect();
    out
}

/// Read step, epoch and metrics from a top-level `trainer_state.json` into `opts.meta`.
fn apply_trainer_state(inputs: &[Input], opts: &mut CommitOptions) -> Result<()> {
    let Some(ts) = inputs.iter().find(|i| i.rel == "trainer_state.json") else {
        return Ok(());
    };
    let bytes = match &ts.data {
        Data::Disk(p) => std::fs::read(p).map_err(io_at(p))?,
        Data::Memory(_) | Data::Pieces(_) => {
            let mut b = vec![0u8; ts.data.memory_len().unwrap_or(0) as usize];
            if !ts.data.read_memory(0, &mut b) {
                return Err(CommitError::ReadPastEnd {
                    path: ts.rel.clone(),
                });
            }
            b
        }
    };
    let state = crate::ops::provenance::parse_trainer_state(&ts.rel, &bytes)?;
    crate::ops::provenance::apply_trainer_state(&mut opts.meta, &state)?;
    Ok(())
}

/// The store's retention policy, if it has one, as the run due on `branch` after this commit.
fn auto_gc(store: &Store, branch: &str) -> Result<Option<AutoGc>> {
    Ok(crate::ops::gc::stored_policy(store)?.map(|policy| AutoGc {
        policy: policy.to_text(),
        branch: branch.to_string(),
    }))
}
