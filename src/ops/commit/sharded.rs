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

use super::options::CommitOptions;
pub use super::options::{TxnPart, TxnStatus};
use crate::error::{Error, Result, io_at};
use crate::model::id::{ChunkId, CommitId, ObjectId, TreeId};
use crate::model::object::{Commit, KIND_COMMIT, KIND_TREE, Tree};
use crate::storage::error::StoreError;
use crate::storage::index::CommitRow;
use crate::storage::pack::{PackWriter, SealedPack};
use crate::storage::refs::{self, ReflogEntry};
pub use crate::storage::staging::{ABANDON_AFTER_NS, Pending, abandon, pending};
use crate::storage::staging::{Manifest, part_tree, read_manifests, sealed_of, txn_dir};
use crate::storage::store::{Store, now_ns};

/// Stage a part; commit the transaction when it is the last one.
pub(crate) fn stage(
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
    let done = dir.join("done");
    if let Ok(c) = std::fs::read_to_string(&done) {
        return Err(Error::Usage {
            what: format!(
                "transaction {} is already committed (as {})",
                part.id,
                c.trim()
            ),
        });
    }
    let existing = read_manifests(&dir)?;
    if let Some(m) = existing.iter().find(|m| m.total != part.total) {
        return Err(Error::Usage {
            what: format!(
                "transaction {}: part {} said there are {} parts, this one says {}",
                part.id, m.part, m.total, part.total
            ),
        });
    }
    // Every part staged but no `done`: a crash cut the last part's publish short. Staging any
    // part again finishes it from the staged manifests (this run's packs become leftovers).
    let interrupted = existing.len() as u32 == part.total;
    if existing.iter().any(|m| m.part == part.part) && !interrupted {
        return Err(Error::Usage {
            what: format!(
                "transaction {}: part {} is already staged",
                part.id, part.part
            ),
        });
    }
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
        crate::storage::fsutil::write_atomic(&done, commit.to_hex().as_bytes())
            .map_err(io_at(&done))?;
        for m in &all {
            let _ = crate::storage::fsutil::remove_file(&dir.join(format!("part-{}.bin", m.part)));
        }
        // Staged manifests must not come back after a crash beside the `done` marker.
        crate::storage::fsutil::sync_dir(&dir).map_err(io_at(&dir))?;
        status.commit = Some(commit);
        status.parent = parent;
    }
    Ok(status)
}

fn finalize(store: &Store, id: &str, parts: &[Manifest]) -> Result<(CommitId, Option<CommitId>)> {
    let first = &parts[0];
    let mut merged = Tree::default();
    let mut owner = std::collections::HashMap::new();
    for m in parts {
        let t = part_tree(store, m)?;
        for (path, f) in t.files {
            if let Some(other) = owner.insert(path.clone(), m.part) {
                return Err(Error::BadInput {
                    path: path.clone(),
                    what: format!(
                        "transaction {id}: parts {other} and {} both hold this file",
                        m.part
                    ),
                });
            }
            merged.files.insert(path, f);
        }
        merged.empty_dirs.extend(t.empty_dirs);
    }
    let (tree_id, tree_bytes) = merged.encode();
    let mut sealed: Vec<SealedPack> = Vec::new();
    for m in parts {
        for pid in &m.packs {
            sealed.push(sealed_of(store, *pid)?.0);
        }
    }
    let branch_ref = refs::branch_ref(&first.branch)?;
    let reflog_tag = format!("transaction {id} (");
    store.with_writer(|index| -> Result<_> {
        // A crash after the publish but before `done` was written: the reflog names the
        // commit and the index holds it. Publish it once, never twice.
        for e in store.reflog(Some(&branch_ref))?.iter().rev() {
            if !e.message.starts_with(&reflog_tag) {
                continue;
            }
            if let Some(c) = e.new.as_deref().and_then(|h| h.parse::<CommitId>().ok())
                && let Some(row) = index.commit_row(&c)?
            {
                return Ok((c, row.parents.first().copied()));
            }
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
        let mut w = PackWriter::create(&store.packs_dir())?;
        if index.object(&ObjectId(tree_id.0))?.is_none() {
            w.append_object(tree_id.into(), KIND_TREE, &tree_bytes)?;
        }
        w.append_object(commit_id.into(), KIND_COMMIT, &commit_bytes)?;
        let own = w.seal()?;
        let d = store.packs_dir();
        // The merged tree and commit must be durable before the index names them.
        crate::storage::fsutil::sync_dir(&d).map_err(io_at(&d))?;
        let mut b = index.batch()?;
        for m in parts {
            for c in &m.reused {
                if index.chunk(c)?.is_none() {
                    return Err(StoreError::MissingChunk { id: *c }.into());
                }
                if index.mark(c)?.is_some() {
                    b.delete_mark(c)?;
                }
            }
        }
        store.append_reflog(&ReflogEntry {
            name: branch_ref.clone(),
            old: head.map(|c| c.to_hex()),
            new: Some(commit_id.to_hex()),
            time_ns: now_ns(),
            who: first.author.clone(),
            action: "commit".into(),
            message: format!("transaction {id} ({} parts)", parts.len()),
        })?;
        for p in sealed.iter().chain(std::iter::once(&own)) {
            crate::storage::index::index_pack(index, &mut b, p)?;
        }
        b.put_commit_row(&commit_id, &CommitRow::of(&commit))?;
        b.put_ref(&branch_ref, &commit_id)?;
        index.write(b)?;
        Ok((commit_id, head))
    })
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
