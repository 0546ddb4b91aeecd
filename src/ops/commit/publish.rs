//! Steps 3 and 4 of the write path, the durability protocol (docs/architecture.md, "The write
//! path", numbers the same steps):
//!
//! - 3, [`seal`]: the tree (if new) and the commit object are appended; each pack gets its
//!   footer, is fsynced and renamed from `.pack.tmp` to `.pack`; the packs directory is
//!   fsynced.
//! - 4, [`Publish::run`], under `locks/index.lock` with the index open read-write
//!   (4.1, [`Store::with_writer`]):
//!   4.2 [`revive_reused`]: every chunk the commit reuses is still indexed;
//!   4.3 [`Publish::swap_branch`]: compare-and-swap the branch, re-making the commit on the
//!   new head in a small extra pack ([`seal_extra_pack`]) if it moved;
//!   4.4 [`log_ref_move`]: append the ref move to the reflog (fsync);
//!   4.5 [`write_batch`]: one index batch with every new chunk, object, pack, the commit row
//!   and the ref (sync); 4.6-4.7, flushing and closing the index, are the store's.
//!
//! Invariant: nothing is visible before 4.5's batch, and everything it names is durable
//! before it. A crash before it leaves only unreferenced sealed packs (dead bytes gc
//! reclaims) or `.pack.tmp` files (removed by cleanup once no writer holds them); the commit
//! is not acknowledged. After the batch, it is complete and durable.

#![warn(missing_docs)]

use super::error::{Result, io_at};
use super::writer::Writer;
use crate::model::id::{ChunkId, CommitId, ObjectId, TreeId};
use crate::model::object::{Commit, KIND_COMMIT, KIND_TREE};
use crate::storage::error::StoreError;
use crate::storage::index::{Batch, CommitRow, Index};
use crate::storage::pack::{PackWriter, SealedPack};
use crate::storage::refs::ReflogEntry;
use crate::storage::store::{Store, now_ns};

/// Step 3: append the tree object (unless the index has it) and the commit object, seal every
/// pack and fsync the packs directory. Returns the commit's id and the sealed packs.
pub(super) fn seal(
    w: &mut Writer<'_>,
    view: &Index,
    (tree_id, tree_bytes): (TreeId, &[u8]),
    commit: &Commit,
) -> Result<(CommitId, Vec<SealedPack>)> {
    if view.object(&tree_id.into())?.is_none() {
        w.add_object(tree_id.into(), KIND_TREE, tree_bytes)?;
    }
    let (commit_id, commit_bytes) = commit.encode();
    w.add_object(commit_id.into(), KIND_COMMIT, &commit_bytes)?;
    Ok((commit_id, w.seal_all()?))
}

/// Step 4 of one commit: what it publishes and where.
pub(super) struct Publish<'a> {
    /// The store.
    pub(super) store: &'a Store,
    /// The full name of the branch that moves.
    pub(super) branch_ref: &'a str,
    /// The branch head seen at step 1, the commit's parent.
    pub(super) expected_parent: Option<CommitId>,
    /// The commit object step 3 wrote.
    pub(super) commit: &'a Commit,
    /// Its id.
    pub(super) commit_id: CommitId,
    /// Chunks the commit references without writing them.
    pub(super) reused: &'a std::collections::HashSet<ChunkId>,
}

/// What step 4 did.
pub(super) struct Published {
    /// The commit the branch now points at (`commit_id`, or the re-made commit).
    pub(super) commit: CommitId,
    /// Its parent: the branch head the compare-and-swap found.
    pub(super) parent: Option<CommitId>,
    /// Whether the branch had moved, so the commit was re-made on the new head.
    pub(super) reparented: bool,
}

impl Publish<'_> {
    /// Run step 4. `sealed` holds the packs step 3 sealed; a pack made for a re-made commit is
    /// added to it.
    pub(super) fn run(&self, sealed: &mut Vec<SealedPack>) -> Result<Published> {
        self.store.with_writer(|index| -> Result<_> {
            let mut b = index.batch()?;
            revive_reused(index, &mut b, self.reused.iter())?;
            let head = index.get_ref(self.branch_ref)?;
            let (final_id, reparented) = self.swap_branch(head, sealed)?;
            log_ref_move(
                self.store,
                self.branch_ref,
                (head, final_id),
                &self.commit.author,
                self.commit.message.lines().next().unwrap_or("").to_string(),
            )?;
            let mut row = CommitRow::of(self.commit);
            row.parents = head.into_iter().collect();
            write_batch(index, b, sealed, (self.branch_ref, final_id), &row)?;
            Ok(Published {
                commit: final_id,
                parent: head,
                reparented,
            })
        })
    }

    /// 4.3: the commit to point the branch at. When the branch is still where step 1 saw it,
    /// the commit step 3 wrote; when another writer moved it, the commit re-made with `head`
    /// as parent, in an extra pack pushed onto `sealed`.
    fn swap_branch(
        &self,
        head: Option<CommitId>,
        sealed: &mut Vec<SealedPack>,
    ) -> Result<(CommitId, bool)> {
        if head == self.expected_parent {
            return Ok((self.commit_id, false));
        }
        let mut c = self.commit.clone();
        c.parents = head.into_iter().collect();
        let (id, bytes) = c.encode();
        sealed.push(seal_extra_pack(
            self.store,
            &[(id.into(), KIND_COMMIT, &bytes)],
        )?);
        Ok((id, true))
    }
}

/// 4.2: check that every chunk in `reused` is still indexed, and clear the dead marks of those
/// a deferred gc marked: holding `writers.lock` kept gc from deleting them, and reusing a chunk
/// brings it back to life.
pub(super) fn revive_reused<'c>(
    index: &Index,
    b: &mut Batch<'_>,
    reused: impl Iterator<Item = &'c ChunkId>,
) -> Result<()> {
    for id in reused {
        if index.chunk(id)?.is_none() {
            return Err(StoreError::MissingChunk { id: *id }.into());
        }
        if index.mark(id)?.is_some() {
            b.delete_mark(id)?;
        }
    }
    Ok(())
}

/// Write `objects` (id, kind, bytes) to a pack of their own, sealed, with the packs directory
/// fsynced.
pub(super) fn seal_extra_pack(
    store: &Store,
    objects: &[(ObjectId, u8, &[u8])],
) -> Result<SealedPack> {
    let mut extra = PackWriter::create(&store.packs_dir())?;
    for (id, kind, bytes) in objects {
        extra.append_object(*id, *kind, bytes)?;
    }
    let p = extra.seal()?;
    let d = store.packs_dir();
    // The pack must be durable before the index names what it holds.
    crate::storage::fsutil::sync_dir(&d).map_err(io_at(&d))?;
    Ok(p)
}

/// 4.4: append the move of `branch_ref` from `old` to `new` to the reflog (fsynced), as a
/// commit by `who` with `message`.
pub(super) fn log_ref_move(
    store: &Store,
    branch_ref: &str,
    (old, new): (Option<CommitId>, CommitId),
    who: &str,
    message: String,
) -> Result<()> {
    store.append_reflog(&ReflogEntry {
        name: branch_ref.to_string(),
        old: old.map(|c| c.to_hex()),
        new: Some(new.to_hex()),
        time_ns: now_ns(),
        who: who.to_string(),
        action: "commit".into(),
        message,
    })?;
    Ok(())
}

/// 4.5: one synced index batch: every entry of the `sealed` packs, the commit's `row` and the
/// ref `branch_ref` pointing at `commit`.
pub(super) fn write_batch(
    index: &Index,
    mut b: Batch<'_>,
    sealed: &[SealedPack],
    (branch_ref, commit): (&str, CommitId),
    row: &CommitRow,
) -> Result<()> {
    for p in sealed {
        crate::storage::index::index_pack(index, &mut b, p)?;
    }
    b.put_commit_row(&commit, row)?;
    b.put_ref(branch_ref, &commit)?;
    index.write(b)?;
    Ok(())
}
