//! Looking at history: log, show and stats, with the stable JSON shapes scripts rely on
//! (documented in docs/cli.md).
//!
//! Invariant: these read the index and objects only, never write.
#![warn(missing_docs)]

use crate::model::id::CommitId;
use crate::model::object::{Commit, DatasetRef, FileFormat, GitInfo, SegmentKind};
use crate::storage::error::{Result, StoreError};
use crate::storage::store::Store;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};

pub use crate::model::time::format_time;

/// A commit as `log --json` and `show --json` print it.
#[derive(Clone, Debug, Serialize)]
pub struct CommitInfo {
    /// Full hex id.
    pub id: String,
    /// `cairn://STORE_ID/COMMIT_ID`: names the commit across stores.
    pub uri: String,
    /// Hex ids of the parents, first parent first.
    pub parents: Vec<String>,
    /// Hex id of the tree.
    pub tree: String,
    /// Commit time, RFC 3339 UTC.
    pub time: String,
    /// Commit time, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// Who committed.
    pub author: String,
    /// The commit message.
    pub message: String,
    /// The training run this checkpoint belongs to.
    pub run_id: Option<String>,
    /// Training epoch (fractional epochs allowed).
    pub epoch: Option<f64>,
    /// Global training step.
    pub step: Option<u64>,
    /// Recorded metrics by name (validation loss, accuracy, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Hyperparameters by name, as given.
    pub params: BTreeMap<String, String>,
    /// The recorded config, parsed as JSON when it is JSON.
    pub config: Option<serde_json::Value>,
    /// The code that produced the checkpoint.
    pub git: Option<GitInfo>,
    /// Fingerprints of the data it was trained on.
    pub datasets: Vec<DatasetRef>,
    /// Environment facts (host, GPU, library versions).
    pub env: BTreeMap<String, String>,
    /// Free-form metadata.
    pub extra: BTreeMap<String, String>,
    /// Sum of the files' sizes, in bytes.
    pub logical_size: u64,
    /// Number of files.
    pub file_count: u64,
}

impl CommitInfo {
    /// The JSON view of commit `c` (with id `id`) of `store`.
    pub fn new(store: &Store, id: CommitId, c: &Commit) -> CommitInfo {
        CommitInfo {
            id: id.to_hex(),
            uri: format!("cairn://{}/{}", store.store_id(), id.to_hex()),
            parents: c.parents.iter().map(|p| p.to_hex()).collect(),
            tree: c.tree.to_hex(),
            time: format_time(c.time_ns),
            time_ns: c.time_ns,
            author: c.author.clone(),
            message: c.message.clone(),
            run_id: c.meta.run_id.clone(),
            epoch: c.meta.epoch,
            step: c.meta.step,
            metrics: c.meta.metrics.clone(),
            params: c.meta.params.clone(),
            config: c
                .meta
                .config
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok()),
            git: c.meta.git.clone(),
            datasets: c.meta.datasets.clone(),
            env: c.meta.env.clone(),
            extra: c.meta.extra.clone(),
            logical_size: c.logical_size,
            file_count: c.file_count,
        }
    }
}

/// Commits from `start` following first parents, newest first, at most `limit`. Fails on the
/// first commit that cannot be read; [`log_partial`] keeps what came before it.
pub fn log(
    store: &Store,
    start: CommitId,
    limit: Option<usize>,
) -> Result<Vec<(CommitId, Commit)>> {
    match log_partial(store, start, limit) {
        (out, None) => Ok(out),
        (_, Some((_, e))) => Err(e),
    }
}

/// What [`log_partial`] returns: the commits read, and the first that could not be, with why.
pub type PartialLog = (Vec<(CommitId, Commit)>, Option<(CommitId, StoreError)>);

/// [`log`], keeping the commits read before one that cannot be (damaged, or missing from a
/// store rebuilt without it), and that commit with its error: a history can still be shown
/// down to the damage, which it then names.
pub fn log_partial(store: &Store, start: CommitId, limit: Option<usize>) -> PartialLog {
    let mut out = Vec::new();
    let mut next = Some(start);
    let mut seen = HashSet::new();
    while let Some(id) = next {
        if limit.is_some_and(|l| out.len() >= l) || !seen.insert(id) {
            break;
        }
        match store.commit(id) {
            Ok(c) => {
                next = c.parents.first().copied();
                out.push((id, c));
            }
            Err(e) => return (out, Some((id, e))),
        }
    }
    (out, None)
}

/// One tensor in `show`.
#[derive(Clone, Debug, Serialize)]
pub struct TensorInfo {
    /// Tensor name as in the file.
    pub name: String,
    /// Element type, safetensors spelling (`F32`, `BF16`, ...).
    pub dtype: String,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Byte offset of its data in the file.
    pub offset: u64,
    /// Length of its data in bytes.
    pub bytes: u64,
}

/// One file in `show`.
#[derive(Clone, Debug, Serialize)]
pub struct FileInfo {
    /// Path in the commit.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the whole file.
    pub sha256: String,
    /// opaque, safetensors, torch-zip or fallback.
    pub format: String,
    /// Why a structured-looking file was stored opaque, when it was.
    pub fallback_reason: Option<String>,
    /// Chunk references that make the file (a repeated chunk counts each time).
    pub chunks: u64,
    /// Its tensors, in file order (empty for opaque files).
    pub tensors: Vec<TensorInfo>,
}

/// Everything `show` prints.
#[derive(Clone, Debug, Serialize)]
pub struct ShowInfo {
    /// The commit's metadata.
    #[serde(flatten)]
    pub commit: CommitInfo,
    /// Every file, by path.
    pub files: Vec<FileInfo>,
    /// Directories holding no file, restored by checkout.
    pub empty_dirs: Vec<String>,
    /// Sum of file sizes.
    pub logical_bytes: u64,
    /// Distinct chunks the commit references.
    pub unique_chunks: u64,
    /// Stored (encoded) bytes of those chunks, each counted once, shared or not.
    pub stored_bytes: u64,
    /// Stored bytes of chunks the first parent does not reference.
    pub stored_bytes_new_vs_parent: u64,
    /// What the checkpoint holds for resuming training.
    pub resume: crate::ops::provenance::Resume,
    /// Verification, load-test and pruning records.
    pub state: crate::storage::state::CommitState,
}

/// Everything about commit `id`: metadata, files, tensors, stored sizes, resume parts, state.
pub fn show(store: &Store, id: CommitId) -> Result<ShowInfo> {
    let c = store.commit(id)?;
    let tree = store.tree(c.tree)?;
    let mut files = Vec::new();
    for (path, f) in &tree.files {
        let (format, fallback_reason) = match &f.format {
            FileFormat::Opaque => ("opaque", None),
            FileFormat::Safetensors => ("safetensors", None),
            FileFormat::TorchZip => ("torch-zip", None),
            FileFormat::Fallback(r) => ("fallback", Some(r.clone())),
        };
        let tensors = f
            .tensors()
            .filter_map(|(off, s)| match &s.kind {
                SegmentKind::Tensor { name, dtype, shape } => Some(TensorInfo {
                    name: name.clone(),
                    dtype: dtype.to_string(),
                    shape: shape.clone(),
                    offset: off,
                    bytes: s.len(),
                }),
                SegmentKind::Raw => None,
            })
            .collect();
        files.push(FileInfo {
            path: path.clone(),
            size: f.size,
            sha256: f.sha256_hex(),
            format: format.into(),
            fallback_reason,
            chunks: f.chunks().count() as u64,
            tensors,
        });
    }
    let chunks = tree.chunk_ids().collect::<BTreeSet<_>>();
    let parent_chunks = match c.parents.first() {
        Some(p) => {
            let pc = store.commit(*p)?;
            store.tree(pc.tree)?.chunk_ids().collect::<BTreeSet<_>>()
        }
        None => Default::default(),
    };
    let view = store.view();
    let mut stored = 0;
    let mut new_vs_parent = 0;
    for id in &chunks {
        if let Some(loc) = view.chunk(id)? {
            stored += loc.stored_len;
            if !parent_chunks.contains(id) {
                new_vs_parent += loc.stored_len;
            }
        }
    }
    Ok(ShowInfo {
        commit: CommitInfo::new(store, id, &c),
        files,
        empty_dirs: tree.empty_dirs.iter().cloned().collect(),
        logical_bytes: tree.logical_size(),
        unique_chunks: chunks.len() as u64,
        stored_bytes: stored,
        stored_bytes_new_vs_parent: new_vs_parent,
        resume: crate::ops::provenance::resume_report(
            tree.files.keys().map(|k| k.as_str()),
            &c.meta.extra,
        ),
        state: crate::storage::state::state(store, id)?,
    })
}

/// Store-wide figures for `stats`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Commits in the index.
    pub commits: u64,
    /// Branches.
    pub branches: u64,
    /// Tags.
    pub tags: u64,
    /// Sum over all commits of their files' sizes: what plain copies would take.
    pub logical_bytes: u64,
    /// Distinct chunks stored.
    pub chunks: u64,
    /// Raw bytes of the distinct chunks.
    pub unique_bytes: u64,
    /// Encoded bytes of the distinct chunks.
    pub chunk_stored_bytes: u64,
    /// Pack files.
    pub packs: u64,
    /// Size of all pack files on disk.
    pub pack_bytes: u64,
    /// logical / unique: what deduplication saves.
    pub dedup_ratio: f64,
    /// unique / chunk stored: what encoding saves.
    pub compression_ratio: f64,
    /// logical / pack bytes: the whole saving.
    pub total_ratio: f64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// Store-wide figures, from the index alone (no pack data is read).
pub fn stats(store: &Store) -> Result<Stats> {
    let view = store.view();
    let mut s = Stats::default();
    for (_, row) in view.commit_rows()? {
        s.commits += 1;
        s.logical_bytes += row.logical_size;
    }
    view.chunks(|_, loc| {
        s.chunks += 1;
        s.unique_bytes += loc.raw_len;
        s.chunk_stored_bytes += loc.stored_len;
    })?;
    for (_, info) in view.packs()? {
        s.packs += 1;
        s.pack_bytes += info.size;
    }
    s.branches = store.branches()?.len() as u64;
    s.tags = store.tags()?.len() as u64;
    s.dedup_ratio = ratio(s.logical_bytes, s.unique_bytes);
    s.compression_ratio = ratio(s.unique_bytes, s.chunk_stored_bytes);
    s.total_ratio = ratio(s.logical_bytes, s.pack_bytes);
    Ok(s)
}
