//! Sharded commits: R processes (one per training rank) each stage their part of one
//! checkpoint under a shared transaction id; the commit becomes visible atomically when the
//! last part is staged.
//!
//! Invariants:
//! - A part writes and seals its packs (fsynced, directory fsynced) exactly as a commit does,
//!   including its own part tree, but indexes nothing: until the transaction commits, none of
//!   it is visible.
//! - A part is staged by an atomically written manifest `txn/<id>/part-<i>.bin` (postcard),
//!   under the transaction's lock `txn/<id>/lock`. The process that stages the last part merges
//!   the part trees (two parts may not hold the same path), writes the merged tree and the commit
//!   object, and publishes everything in one index batch with the ref move, as a commit does.
//!   Then it writes `txn/<id>/done` and removes the part manifests.
//! - gc treats staged parts as roots (their chunks are live, their packs are not leftovers);
//!   a transaction whose last part was staged more than [`ABANDON_AFTER_NS`] ago without
//!   committing is abandoned: gc removes its manifests, and its packs become leftovers.

#![warn(missing_docs)]

use super::error::{CommitError, Result, io_at};
use super::options::CommitOptions;
pub use super::options::{TxnPart, TxnStatus};
use super::publish::{log_ref_move, revive_reused, seal_extra_pack, write_batch};
use crate::model::id::{ChunkId, CommitId, ObjectId, TreeId};
use crate::model::object::{Commit, KIND_COMMIT, KIND_TREE, Tree};
use crate::storage::index::{CommitRow, Index};
use crate::storage::pack::SealedPack;
use crate::storage::refs;
pub use crate::storage::staging::{ABANDON_AFTER_NS, Pending, abandon, pending};
use crate::storage::staging::{Manifest, part_tree, read_manifests, sealed_of, txn_dir};
use crate::storage::store::{Store, now_ns};
use std::path::Path;

/// Stage a part; commit the transaction when it is the last one.
pub(super) fn stage(
    store: &Store,
    part: &TxnPart,
    opts: &CommitOptions,
    branch: &str,
    tree: TreeId,
    sealed: &[SealedPack],
    reused: &std::collections::HashSet<ChunkId>,
) -> Result<TxnStatus> {
    let dir = txn_dir(store, &part.id);
    crate::storage::fsutil::create_dir_all(&dir).map_err(io_at(&dir))?;
    let lock_path = dir.join("lock");
    let _lock = crate::storage::lock::exclusive(&lock_path).map_err(io_at(&lock_path))?;
    let (existing, interrupted) = check_stageable(&dir, part)?;
    let m = Manifest {
        part: part.part,
        total: part.total,
        tree,
        packs: sealed.iter().map(|p| p.id).collect(),
        branch: branch.to_string(),
        message: opts.message.clone(),
        author: opts.author.clone(),
        time_ns: opts.time_ns.unwrap_or_else(now_ns),
        meta: opts.meta.clone(),
        reused: reused.iter().copied().collect(),
        staged_ns: now_ns(),
    };
    let path = dir.join(format!("part-{}.bin", part.part));
    let mut all = existing;
    if !interrupted {
        // The part's packs were fsynced with their directory before this manifest names them.
        crate::storage::fsutil::write_atomic(
            &path,
            &postcard::to_stdvec(&m).expect("manifest encodes"),
        )
        .map_err(io_at(&path))?;
        all.push(m);
    }
    let mut status = TxnStatus {
        id: part.id.clone(),
        part: part.part,
        total: part.total,
        staged: all.len() as u32,
        commit: None,
        parent: None,
    };
    if all.len() as u32 == part.total {
        all.sort_by_key(|m| m.part);
        let (commit, parent) = match finalize(store, &part.id, &all) {
            Ok(x) => x,
            Err(e) => {
                // Unstage this part, so it can be fixed and staged again.
                if !interrupted {
                    let _ = crate::storage::fsutil::remove_file(&path);
                }
                return Err(e);
            }
        };
        mark_done(&dir, commit, &all)?;
        status.commit = Some(commit);
        status.parent = parent;
    }
    Ok(status)
}

/// Refuse to stage `part` in transaction directory `dir` when the transaction is committed,
/// disagrees on its part count, or holds this part already. Returns the parts staged so far,
/// and whether every part is staged but the transaction is not committed (a crash cut the last
/// part's publish short: staging any part again finishes it from the staged manifests, and
/// this run's packs become leftovers).
fn check_stageable(dir: &Path, part: &TxnPart) -> Result<(Vec<Manifest>, bool)> {
    if let Ok(c) = std::fs::read_to_string(dir.join("done")) {
        return Err(CommitError::TxnCommitted {
            id: part.id.clone(),
            commit: c.trim().to_string(),
        });
    }
    let existing = read_manifests(dir)?;
    if let Some(m) = existing.iter().find(|m| m.total != part.total) {
        return Err(CommitError::TxnPartCount {
            id: part.id.clone(),
            part: m.part,
            said: m.total,
            says: part.total,
        });
    }
    let interrupted = existing.len() as u32 == part.total;
    if existing.iter().any(|m| m.part == part.part) && !interrupted {
        return Err(CommitError::TxnPartStaged {
            id: part.id.clone(),
            part: part.part,
        });
    }
    Ok((existing, interrupted))
}

/// Record the transaction in `dir` as committed as `commit`, and remove the manifests of
/// `parts`.
fn mark_done(dir: &Path, commit: CommitId, parts: &[Manifest]) -> Result<()> {
    let done = dir.join("done");
    crate::storage::fsutil::write_atomic(&done, commit.to_hex().as_bytes())
        .map_err(io_at(&done))?;
    for m in parts {
        let _ = crate::storage::fsutil::remove_file(&dir.join(format!("part-{}.bin", m.part)));
    }
    // Staged manifests must not come back after a crash beside the `done` marker.
    crate::storage::fsutil::sync_dir(dir).map_err(io_at(dir))?;
    Ok(())
}

/// Merge the part trees into one (two parts may not hold the same path).
fn merge_parts(store: &Store, id: &str, parts: &[Manifest]) -> Result<Tree> {
    let mut merged = Tree::default();
    let mut owner = std::collections::HashMap::new();
    for m in parts {
        let t = part_tree(store, m)?;
        for (path, f) in t.files {
            if let Some(other) = owner.insert(path.clone(), m.part) {
                return Err(CommitError::TxnOverlap {
                    path: path.clone(),
                    id: id.to_string(),
                    first: other,
                    second: m.part,
                });
            }
            merged.files.insert(path, f);
        }
        merged.empty_dirs.extend(t.empty_dirs);
    }
    // Parts may clash without sharing a path: `a` in one, `a/b` in another.
    merged.check().map_err(|what| CommitError::TxnClash {
        id: id.to_string(),
        what,
    })?;
    Ok(merged)
}

/// Commit the transaction: merge the parts' trees, write the tree and the commit object, and
/// publish everything in one index batch with the ref move, as a commit's step 4 does.
/// Returns the commit and its parent.
fn finalize(store: &Store, id: &str, parts: &[Manifest]) -> Result<(CommitId, Option<CommitId>)> {
    let first = &parts[0];
    let merged = merge_parts(store, id, parts)?;
    let (tree_id, tree_bytes) = merged.encode();
    let mut sealed: Vec<SealedPack> = Vec::new();
    for m in parts {
        for pid in &m.packs {
            sealed.push(sealed_of(store, *pid)?.0);
        }
    }
    let branch_ref = refs::branch_ref(&first.branch)?;
    store.with_writer(|index| -> Result<_> {
        if let Some(done) = published_before(store, index, &branch_ref, id)? {
            return Ok(done);
        }
        let head = index.get_ref(&branch_ref)?;
        let commit = Commit {
            parents: head.into_iter().collect(),
            tree: tree_id,
            time_ns: first.time_ns,
            author: first.author.clone(),
            message: first.message.clone(),
            meta: first.meta.clone(),
            logical_size: merged.logical_size(),
            file_count: merged.files.len() as u64,
        };
        let (commit_id, commit_bytes) = commit.encode();
        let mut objects: Vec<(ObjectId, u8, &[u8])> = Vec::new();
        if index.object(&ObjectId(tree_id.0))?.is_none() {
            objects.push((tree_id.into(), KIND_TREE, &tree_bytes));
        }
        objects.push((commit_id.into(), KIND_COMMIT, &commit_bytes));
        // The merged tree and commit must be durable before the index names them.
        sealed.push(seal_extra_pack(store, &objects)?);
        let mut b = index.batch()?;
        revive_reused(index, &mut b, parts.iter().flat_map(|m| &m.reused))?;
        let message = format!("transaction {id} ({} parts)", parts.len());
        log_ref_move(
            store,
            &branch_ref,
            (head, commit_id),
            &first.author,
            message,
        )?;
        let row = CommitRow::of(&commit);
        write_batch(index, b, &sealed, (&branch_ref, commit_id), &row)?;
        Ok((commit_id, head))
    })
}

/// A crash after the publish but before `done` was written: the reflog names the commit and
/// the index holds it. The commit and its parent when so, so it is published once, never twice.
fn published_before(
    store: &Store,
    index: &Index,
    branch_ref: &str,
    id: &str,
) -> Result<Option<(CommitId, Option<CommitId>)>> {
    let reflog_tag = format!("transaction {id} (");
    for e in store.reflog(Some(branch_ref))?.iter().rev() {
        if !e.message.starts_with(&reflog_tag) {
            continue;
        }
        if let Some(c) = e.new.as_deref().and_then(|h| h.parse::<CommitId>().ok())
            && let Some(row) = index.commit_row(&c)?
        {
            return Ok(Some((c, row.parents.first().copied())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_syntax() {
        assert_eq!(
            TxnPart::parse("step-500", "3/8").unwrap(),
            TxnPart {
                id: "step-500".into(),
                part: 3,
                total: 8
            }
        );
        for (id, p) in [
            ("", "1/2"),
            ("a/b", "1/2"),
            ("..", "1/2"),
            ("x", "0/2"),
            ("x", "3/2"),
            ("x", "2"),
            ("x", "a/b"),
        ] {
            assert!(TxnPart::parse(id, p).is_err(), "{id} {p}");
        }
    }
}
