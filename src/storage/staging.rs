//! The staging area of sharded commits: `txn/<id>/part-<i>.bin` manifests, each naming a
//! part's sealed (but unindexed) packs and its tree, `txn/<id>/lock` held while a part stages
//! or finalizes, and `txn/<id>/done` (the commit id) once the transaction committed.
//! [`crate::ops::commit::sharded`] stages and finalizes; gc reads [`pending`] parts as roots
//! and [`abandon`]s stale transactions.
//!
//! Invariants: a manifest is written atomically, after the packs it names are fsynced with
//! their directory; a transaction with `done` has no manifests left that matter; an
//! uncommitted transaction none of whose parts was staged in the last [`ABANDON_AFTER_NS`]
//! counts as abandoned.
#![warn(missing_docs)]

use crate::model::id::{ChunkId, PackId, TreeId};
use crate::model::object::{KIND_TREE, Metadata, Tree};
use crate::storage::error::{Result, StoreError, io_at};
use crate::storage::pack::{PackReader, SealedPack, pack_file_name};
use crate::storage::store::Store;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Nanoseconds (24 h) after its newest part was staged that an uncommitted transaction counts
/// as abandoned.
pub const ABANDON_AFTER_NS: i64 = 24 * 3600 * 1_000_000_000;

/// A staged part, as `txn/<id>/part-<i>.bin` holds it (postcard).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// This part's number, counting from 1.
    pub(crate) part: u32,
    /// How many parts the transaction has.
    pub(crate) total: u32,
    /// The tree of this part's files, stored in its own packs.
    pub(crate) tree: TreeId,
    /// The sealed, unindexed packs this part wrote.
    pub(crate) packs: Vec<PackId>,
    /// Short name of the branch the commit goes to.
    pub(crate) branch: String,
    /// The commit message.
    pub(crate) message: String,
    /// The commit's author.
    pub(crate) author: String,
    /// The commit time, nanoseconds since the Unix epoch.
    pub(crate) time_ns: i64,
    /// The commit metadata this part was given (part 1's goes into the commit).
    pub(crate) meta: Metadata,
    /// Chunks this part deduplicated against the index instead of storing, checked again at
    /// publish.
    pub(crate) reused: Vec<ChunkId>,
    /// When this part was staged, nanoseconds since the Unix epoch.
    pub(crate) staged_ns: i64,
}

/// The directory of transaction `id`: `txn/<id>` under the store root.
pub(crate) fn txn_dir(store: &Store, id: &str) -> PathBuf {
    store.root().join("txn").join(id)
}

/// Every manifest in the transaction directory `dir`, sorted by part number. Fails when the
/// directory or a manifest cannot be read, or a manifest does not decode.
pub(crate) fn read_manifests(dir: &std::path::Path) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let e = e.map_err(io_at(dir))?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("part-") && name.ends_with(".bin") {
            let bytes = std::fs::read(e.path()).map_err(io_at(&e.path()))?;
            let m: Manifest =
                postcard::from_bytes(&bytes).map_err(|err| StoreError::BadManifest {
                    path: e.path(),
                    what: err.to_string(),
                })?;
            out.push(m);
        }
    }
    out.sort_by_key(|m| m.part);
    Ok(out)
}

/// Open the sealed pack `id` of the store and list its entries (from its footer, else by scan).
pub(crate) fn sealed_of(store: &Store, id: PackId) -> Result<(SealedPack, PackReader)> {
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
pub(crate) fn part_tree(store: &Store, m: &Manifest) -> Result<Tree> {
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
    Err(StoreError::MissingObject { id: m.tree.into() })
}

/// A part staged but not committed, as gc sees it.
#[derive(Clone, Debug)]
pub struct Pending {
    /// The transaction id (its directory name under `txn/`).
    pub txn: String,
    /// The part's number, counting from 1.
    pub part: u32,
    /// The packs the part wrote; gc must not delete them.
    pub packs: Vec<PackId>,
    /// Chunks the part needs: those it reused from the index and those its tree names (when
    /// the tree can be read); gc counts them as live.
    pub chunks: Vec<ChunkId>,
    /// No part of this transaction was staged for [`ABANDON_AFTER_NS`].
    pub abandoned: bool,
}

/// Every staged part of every uncommitted transaction (one without `done`), judged abandoned
/// against `now` (nanoseconds since the Unix epoch). No `txn/` directory means none. Fails
/// when a transaction directory or manifest cannot be read or decoded.
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

/// Remove transaction `txn`'s directory, manifests included (its packs then count as
/// leftovers, for gc to remove). Not fsynced here. Fails when the removal fails.
pub fn abandon(store: &Store, txn: &str) -> Result<()> {
    let dir = txn_dir(store, txn);
    crate::storage::fsutil::remove_dir_all(&dir).map_err(io_at(&dir))
}
