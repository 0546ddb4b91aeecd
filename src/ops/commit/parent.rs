//! What a commit takes from its parent: the tensors to delta-code against, and the SHA-256 of
//! files whose chunks prove them unchanged.
//!
//! Invariant: a file's recorded SHA-256 is always of exactly the bytes its chunks hold. A file
//! read without a digest ([`probably_unchanged`]) gets the parent's digest only when its chunk
//! list equals the parent file's; otherwise [`sha256_verified`] re-reads it, checking every
//! chunk id, and a file changed meanwhile fails the commit.

#![warn(missing_docs)]

use super::error::{CommitError, Result};
use super::input::Data;
use super::plan::PlannedFile;
use crate::model::dtype::DType;
use crate::model::id::{ChunkId, CommitId};
use crate::model::object::{ChunkRef, FileEntry, SegmentKind, Tree};
use crate::storage::store::Store;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Tensors of the parent commit, by (file path, tensor name): dtype, shape, chunks.
pub(super) type ParentTensors =
    std::collections::HashMap<(String, String), (DType, Vec<u64>, Vec<ChunkRef>)>;

/// The parent commit's time (ns since the epoch) and tree, when there is a parent.
pub(super) fn parent_tree(store: &Store, parent: Option<CommitId>) -> Result<Option<(i64, Tree)>> {
    let Some(p) = parent else { return Ok(None) };
    let c = store.commit(p)?;
    Ok(Some((c.time_ns, store.tree(c.tree)?)))
}

/// Every tensor of `tree`, for delta coding the same tensor's new version.
pub(super) fn parent_tensors(tree: Option<&Tree>) -> ParentTensors {
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
pub(super) fn probably_unchanged(pf: &PlannedFile, parent: Option<&(i64, Tree)>) -> bool {
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
        Data::Memory(_) | Data::Pieces(_) => true,
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

/// Set every file's SHA-256: the reader's digest when it computed one (`shas`), else the
/// parent's when the chunks match it, else a checked second pass. Returns how many files took
/// the parent's digest.
pub(super) fn fill_digests(
    planned: &[PlannedFile],
    files: &mut [FileEntry],
    shas: &[Option<[u8; 32]>],
    ptree: Option<&(i64, Tree)>,
) -> Result<u64> {
    let mut sha256_from_parent = 0u64;
    for (i, pf) in planned.iter().enumerate() {
        files[i].sha256 = match shas[i] {
            Some(d) => d,
            None => {
                let same = ptree
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
    Ok(sha256_from_parent)
}

/// SHA-256 of a file whose chunks are already known, re-read and checked chunk by chunk: the
/// digest is of exactly the bytes the chunks hold, or the file changed and the commit fails.
fn sha256_verified(pf: &PlannedFile, entry: &FileEntry) -> Result<[u8; 32]> {
    let file = pf.input.open()?;
    let changed = || CommitError::ChangedWhileReading {
        path: pf.input.rel.clone(),
    };
    let mut sha = Sha256::new();
    let mut off = 0u64;
    for seg in &entry.segments {
        for c in &seg.chunks {
            let data = pf.input.read_at(file.as_ref(), off, c.len)?;
            if ChunkId::of(&data) != c.id {
                return Err(changed());
            }
            sha.update(&data);
            off += c.len;
        }
    }
    if off != pf.size {
        return Err(changed());
    }
    Ok(sha.finalize().into())
}
