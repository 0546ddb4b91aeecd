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

use crate::commit::{CommitOptions, index_pack};
use crate::id::{ChunkId, CommitId, ObjectId, PackId, TreeId};
use crate::index::CommitRow;
use crate::object::{Commit, KIND_COMMIT, KIND_TREE, Metadata, Tree};
use crate::pack::{PackReader, PackWriter, SealedPack, pack_file_name};
use crate::refs::{self, ReflogEntry};
use crate::store::{Error, Result, Store, io_at, now_ns};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Staged parts of a transaction older than this (24 h) are abandoned.
pub const ABANDON_AFTER_NS: i64 = 24 * 3600 * 1_000_000_000;

/// Which part of which transaction a commit stages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnPart {
    pub id: String,
    /// 1-based.
    pub part: u32,
    pub total: u32,
}

impl TxnPart {
    /// From `--txn ID --part I/N`.
    pub fn parse(id: &str, part: &str) -> Result<TxnPart> {
        let usage = |what: String| Error::Usage { what };
        if id.is_empty()
            || id.len() > 100
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            || id.starts_with('.')
        {
            return Err(usage(format!(
                "--txn {id:?}: use 1-100 letters, digits, '.', '_' or '-'"
            )));
        }
        let (i, n) = part
            .split_once('/')
            .and_then(|(i, n)| Some((i.parse::<u32>().ok()?, n.parse::<u32>().ok()?)))
            .filter(|(i, n)| *i >= 1 && i <= n && *n <= 65_536)
            .ok_or_else(|| usage(format!("--part {part:?}: expected I/N with 1 <= I <= N")))?;
        Ok(TxnPart {
            id: id.to_string(),
            part: i,
            total: n,
        })
    }
}

/// Where a transaction stands after staging a part.
#[derive(Clone, Debug, Serialize)]
pub struct TxnStatus {
    pub id: String,
    pub part: u32,
    pub total: u32,
    pub staged: u32,
    /// The commit, once the last part is staged.
    pub commit: Option<CommitId>,
    pub parent: Option<CommitId>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    part: u32,
    total: u32,
    tree: TreeId,
    packs: Vec<PackId>,
    branch: String,
    message: String,
    author: String,
    time_ns: i64,
    meta: Metadata,
    reused: Vec<ChunkId>,
    staged_ns: i64,
}

fn txn_dir(store: &Store, id: &str) -> PathBuf {
    store.root().join("txn").join(id)
}

fn read_manifests(dir: &std::path::Path) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let e = e.map_err(io_at(dir))?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("part-") && name.ends_with(".bin") {
            let bytes = std::fs::read(e.path()).map_err(io_at(&e.path()))?;
            let m: Manifest = postcard::from_bytes(&bytes).map_err(|err| Error::BadInput {
                path: e.path().display().to_string(),
                what: format!("transaction manifest does not decode: {err}"),
            })?;
            out.push(m);
        }
    }
    out.sort_by_key(|m| m.part);
    Ok(out)
}

fn sealed_of(store: &Store, id: PackId) -> Result<(SealedPack, PackReader)> {
    let path = store.packs_dir().join(pack_file_name(id));
    let r = PackReader::open(&path, id)?;
    let entries = r.entries()?;
    Ok((
        SealedPack {
            id,
            path,
            size: r.size(),
            entries,
        },
        r,
    ))
}

/// A part's tree, read from its own packs (it is not indexed yet).
fn part_tree(store: &Store, m: &Manifest) -> Result<Tree> {
    for pid in &m.packs {
        let (sealed, r) = sealed_of(store, *pid)?;
        if let Some(e) = sealed
            .entries
            .iter()
            .find(|e| e.header.id == m.tree.0 && e.header.object_kind == KIND_TREE)
        {
            let (_, bytes) = r.read_object(m.tree.into(), e.offset)?;
            return Ok(Tree::decode(m.tree.into(), &bytes)?);
        }
    }
    Err(Error::MissingObject { id: m.tree.into() })
}

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
    crate::fsutil::create_dir_all(&dir).map_err(io_at(&dir))?;
    let lock_path = dir.join("lock");
    let _lock = crate::lock::exclusive(&lock_path).map_err(io_at(&lock_path))?;
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
        crate::fsutil::write_atomic(&path, &postcard::to_stdvec(&m).expect("manifest encodes"))
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
                    let _ = crate::fsutil::remove_file(&path);
                }
                return Err(e);
            }
        };
        crate::fsutil::write_atomic(&done, commit.to_hex().as_bytes()).map_err(io_at(&done))?;
        for m in &all {
            let _ = crate::fsutil::remove_file(&dir.join(format!("part-{}.bin", m.part)));
        }
        // Staged manifests must not come back after a crash beside the `done` marker.
        crate::fsutil::sync_dir(&dir).map_err(io_at(&dir))?;
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
    store.with_writer(|index| {
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
        crate::fsutil::sync_dir(&d).map_err(io_at(&d))?;
        let mut b = index.batch()?;
        for m in parts {
            for c in &m.reused {
                if index.chunk(c)?.is_none() {
                    return Err(Error::MissingChunk { id: *c });
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
            index_pack(index, &mut b, p)?;
        }
        b.put_commit_row(&commit_id, &CommitRow::of(&commit))?;
        b.put_ref(&branch_ref, &commit_id)?;
        index.write(b)?;
        Ok((commit_id, head))
    })
}

/// A part staged but not committed, as gc sees it.
#[derive(Clone, Debug)]
pub struct Pending {
    pub txn: String,
    pub part: u32,
    pub packs: Vec<PackId>,
    pub chunks: Vec<ChunkId>,
    /// No part of this transaction was staged for [`ABANDON_AFTER_NS`].
    pub abandoned: bool,
}

/// Every staged part of every uncommitted transaction.
pub fn pending(store: &Store, now: i64) -> Result<Vec<Pending>> {
    let root = store.root().join("txn");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&root) else {
        return Ok(out);
    };
    for e in rd {
        let e = e.map_err(io_at(&root))?;
        let name = e.file_name().to_string_lossy().to_string();
        if e.path().join("done").exists() {
            continue;
        }
        let parts = read_manifests(&e.path())?;
        let newest = parts.iter().map(|m| m.staged_ns).max().unwrap_or(0);
        let abandoned = now.saturating_sub(newest) > ABANDON_AFTER_NS;
        for m in &parts {
            let mut chunks: Vec<ChunkId> = m.reused.clone();
            if let Ok(t) = part_tree(store, m) {
                chunks.extend(t.files.values().flat_map(|f| f.chunks().map(|c| c.id)));
            }
            out.push(Pending {
                txn: name.clone(),
                part: m.part,
                packs: m.packs.clone(),
                chunks,
                abandoned,
            });
        }
    }
    Ok(out)
}

/// Remove an abandoned transaction's manifests (its packs then count as leftovers).
pub fn abandon(store: &Store, txn: &str) -> Result<()> {
    let dir = txn_dir(store, txn);
    crate::fsutil::remove_dir_all(&dir).map_err(io_at(&dir))
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
