//! Executing a gc [`Plan`]: exactly the plan, and the chunk sets it was computed from, nothing
//! recomputed.
//!
//! The steps, in order (a crash between any two leaves a store that reads correctly):
//! 1. [`Executor::rewrite`] (immediate gc only): re-encode live chunks whose delta base dies and
//!    copy the live entries of repacked packs into one new pack, sealed and fsynced with its
//!    directory before anything points at it.
//! 2. [`Executor::publish`]: one synced index batch records pruned and slimmed commits, and
//!    either drops dead chunks, re-points moved entries and forgets dropped packs (immediate), or
//!    marks dead chunks for a later run (deferred: a writer was running).
//! 3. [`Executor::remove_files`]: only after that batch is durable, remove abandoned staging
//!    manifests, orphan files and unreferenced packs; a pack is unlinked only while gc holds
//!    `readers.lock` exclusively, otherwise it is listed as doomed for a later run.
#![warn(missing_docs)]

use super::GcError;
use super::GcOutcome;
use super::plan::{Decision, Plan, Work};
use super::stored::{doomed_packs, io_at, save_doomed};
use crate::model::id::{ChunkId, CommitId, ObjectId, PackId};
use crate::storage::fsutil;
use crate::storage::index::{Batch, ChunkLoc, Index, ObjectLoc, PackInfo};
use crate::storage::lock;
use crate::storage::pack::{ENTRY_CHUNK, PackError, PackReader, PackWriter, pack_file_name};
use crate::storage::state::{CommitState, PruneRecord};
use crate::storage::store::{Store, now_ns};
use std::borrow::Cow;
use std::collections::HashSet;

/// Execute `plan`, computed with `work`. `immediate`: gc holds `writers.lock` exclusively, so
/// it may delete and rewrite; otherwise it only marks. Counts go into `out`.
pub(super) fn execute(
    store: &Store,
    plan: &Plan,
    work: &Work,
    immediate: bool,
    out: &mut GcOutcome,
) -> Result<(), GcError> {
    let view = store.view();
    // A deferred gc cannot re-encode: the bases re-encoding would free stay alive.
    let dead = if immediate {
        Cow::Borrowed(&work.dead)
    } else {
        Cow::Owned(work.dead.difference(&work.bases).copied().collect())
    };
    let reencoding: HashSet<ChunkId> = if immediate {
        work.reencode.iter().map(|(id, _)| *id).collect()
    } else {
        HashSet::new()
    };
    let repack: Vec<PackId> = if immediate {
        plan.repack_packs
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect()
    } else {
        Vec::new()
    };
    let ex = Executor {
        store,
        plan,
        work,
        immediate,
        now: now_ns(),
        dead,
        reencoding,
        repack,
    };
    // Repack first (immediate mode only): copy live entries of each repacked pack into a new
    // pack, durable before the index points at it.
    let rewritten = if !ex.repack.is_empty() || !ex.reencoding.is_empty() {
        ex.rewrite(&view, out)?
    } else {
        Rewritten::default()
    };
    let unlink = ex.publish(&rewritten, out)?;
    ex.remove_files(unlink, out)
}

/// One execution: the plan, the chunk sets it acts on, and the mode.
struct Executor<'a> {
    store: &'a Store,
    plan: &'a Plan,
    work: &'a Work,
    /// Delete and rewrite now (`writers.lock` held), rather than mark.
    immediate: bool,
    /// The time recorded in prune records and marks (nanoseconds since the epoch).
    now: i64,
    /// The chunks dropped (immediate) or marked (deferred).
    dead: Cow<'a, HashSet<ChunkId>>,
    /// Live chunks re-encoded without their dying base (immediate only, else empty).
    reencoding: HashSet<ChunkId>,
    /// Packs whose live entries are copied out (immediate only, else empty).
    repack: Vec<PackId>,
}

/// The entries step 1 wrote to a new pack, for the index batch to point at.
#[derive(Default)]
struct Rewritten {
    /// Chunks re-encoded or copied, at their new location.
    moved: Vec<(ChunkId, ChunkLoc)>,
    /// Objects copied, at their new location.
    moved_objects: Vec<(ObjectId, ObjectLoc)>,
    /// The new pack (at most one), sealed and durable.
    new_packs: Vec<(PackId, PackInfo)>,
}

impl Executor<'_> {
    /// Step 1: write re-encoded chunks and the live entries of repacked packs to a new pack,
    /// and make it durable.
    fn rewrite(&self, view: &Index, out: &mut GcOutcome) -> Result<Rewritten, GcError> {
        let mut rw = Rewritten::default();
        let mut w = PackWriter::create(&self.store.packs_dir())?;
        self.reencode_chunks(view, &mut w, &mut rw, out)?;
        for pid in &self.repack {
            self.copy_live_entries(view, &mut w, *pid, &mut rw)?;
        }
        let sealed = w.seal()?;
        let d = self.store.packs_dir();
        // The copies must be durable before the index batch points at them.
        fsutil::sync_dir(&d).map_err(io_at(&d))?;
        rw.new_packs.push((
            sealed.id,
            PackInfo {
                size: sealed.size,
                chunks: rw.moved.len() as u64,
                objects: rw.moved_objects.len() as u64,
            },
        ));
        Ok(rw)
    }

    /// Chunks whose base dies: decoded through their chain (verified), encoded on their own.
    fn reencode_chunks(
        &self,
        view: &Index,
        w: &mut PackWriter,
        rw: &mut Rewritten,
        out: &mut GcOutcome,
    ) -> Result<(), GcError> {
        for (id, dtype) in &self.work.reencode {
            if view.chunk(id)?.is_none() {
                continue;
            }
            let raw = self.store.read_chunk(*id)?;
            let enc = crate::codec::encode(
                &raw,
                crate::codec::Hint {
                    dtype: *dtype,
                    base: None,
                },
            );
            let stored: &[u8] = match enc.encoding {
                crate::codec::Encoding::Raw => &raw,
                _ => &enc.bytes,
            };
            let ne = w.append_chunk(*id, enc.encoding, raw.len() as u64, stored, None, 0)?;
            rw.moved.push((
                *id,
                ChunkLoc {
                    pack: w.id(),
                    offset: ne.offset,
                    stored_len: stored.len() as u64,
                    raw_len: raw.len() as u64,
                    encoding: enc.encoding,
                    base: None,
                    depth: 0,
                },
            ));
            out.chunks_reencoded += 1;
        }
        Ok(())
    }

    /// Copy the entries of pack `pid` the index still points at (and that are neither dead nor
    /// re-encoded) into `w`, stored bytes as they are.
    fn copy_live_entries(
        &self,
        view: &Index,
        w: &mut PackWriter,
        pid: PackId,
        rw: &mut Rewritten,
    ) -> Result<(), GcError> {
        let path = self.store.packs_dir().join(pack_file_name(pid));
        let r = PackReader::open(&path, pid)?;
        for e in r.entries()? {
            let h = e.header;
            if h.kind == ENTRY_CHUNK {
                let id = ChunkId(h.id);
                let Some(loc) = view.chunk(&id)? else {
                    continue;
                };
                if loc.pack != pid
                    || loc.offset != e.offset
                    || self.dead.contains(&id)
                    || self.reencoding.contains(&id)
                {
                    continue;
                }
                let stored =
                    r.payload(e.offset, h.stored_len)
                        .map_err(|what| PackError::BadChunk {
                            chunk: id,
                            pack: pid,
                            what: what.to_string(),
                        })?;
                let ne = w.append_chunk(id, h.encoding, h.raw_len, &stored, h.base, h.depth)?;
                rw.moved.push((
                    id,
                    ChunkLoc {
                        pack: w.id(),
                        offset: ne.offset,
                        ..loc
                    },
                ));
            } else {
                let oid = ObjectId(h.id);
                let Some(loc) = view.object(&oid)? else {
                    continue;
                };
                if loc.pack != pid || loc.offset != e.offset {
                    continue;
                }
                let (kind, bytes) = r.read_object(oid, e.offset)?;
                let ne = w.append_object(oid, kind, &bytes)?;
                rw.moved_objects.push((
                    oid,
                    ObjectLoc {
                        pack: w.id(),
                        offset: ne.offset,
                        stored_len: ne.header.stored_len,
                        raw_len: ne.header.raw_len,
                        kind,
                    },
                ));
            }
        }
        Ok(())
    }

    /// Step 2: the one index batch. Returns the packs it stopped referencing.
    fn publish(&self, rw: &Rewritten, out: &mut GcOutcome) -> Result<Vec<PackId>, GcError> {
        let mut unlink: Vec<PackId> = Vec::new();
        self.store.with_writer(|index| -> Result<_, GcError> {
            let mut b = index.batch()?;
            self.record_pruned(index, &mut b)?;
            if self.immediate {
                for id in self.dead.iter() {
                    b.delete_chunk(id)?;
                    b.delete_mark(id)?;
                    out.chunks_removed += 1;
                }
                for (id, loc) in &rw.moved {
                    b.put_chunk(id, loc)?;
                }
                for (id, loc) in &rw.moved_objects {
                    b.put_object(id, loc)?;
                }
                for (pid, info) in &rw.new_packs {
                    b.put_pack(pid, info)?;
                }
                let plan = self.plan;
                for p in plan.delete_packs.iter().chain(plan.repack_packs.iter()) {
                    if let Ok(pid) = p.parse::<PackId>() {
                        b.delete_pack(&pid)?;
                        unlink.push(pid);
                    }
                }
                out.packs_repacked = self.repack.len() as u64;
            } else {
                for id in self.dead.iter() {
                    if index.mark(id)?.is_none() {
                        b.put_mark(id, self.now)?;
                    }
                }
            }
            index.write(b)?;
            Ok(())
        })?;
        Ok(unlink)
    }

    /// Record in `b` the prune record of every commit the plan prunes or slims (the state
    /// record and the statelog, never the hashed commit).
    fn record_pruned(&self, index: &Index, b: &mut Batch<'_>) -> Result<(), GcError> {
        let plan = self.plan;
        for pc in &plan.commits {
            if !matches!(pc.decision, Decision::Prune | Decision::Slim) {
                continue;
            }
            let id: CommitId = pc
                .id
                .parse()
                .map_err(|_| GcError::BadPlanCommit { id: pc.id.clone() })?;
            let mut st: CommitState = match index.state_raw(&id)? {
                Some(v) => postcard::from_bytes(&v).unwrap_or_default(),
                None => CommitState::default(),
            };
            st.pruned = Some(PruneRecord {
                time_ns: self.now,
                reason: format!(
                    "policy: {}",
                    if plan.policy.is_empty() {
                        "none"
                    } else {
                        &plan.policy
                    }
                ),
                released: if pc.decision == Decision::Prune {
                    Vec::new()
                } else {
                    pc.released.clone()
                },
            });
            crate::storage::state::put_state(self.store, b, id, &st)?;
        }
        Ok(())
    }

    /// Step 3: the batch is durable, so the packs in `unlink` are unreferenced. Unlink them now
    /// if no reader can be between resolving a location and opening its pack; otherwise leave
    /// them for later.
    fn remove_files(&self, unlink: Vec<PackId>, out: &mut GcOutcome) -> Result<(), GcError> {
        let readers = self.store.readers_lock_path();
        let no_readers = lock::try_exclusive(&readers).map_err(io_at(&readers))?;
        let mut doomed = doomed_packs(self.store)?;
        doomed.extend(unlink);
        let d = self.store.packs_dir();
        if self.immediate {
            for txn in &self.plan.abandoned_txns {
                crate::storage::staging::abandon(self.store, txn)?;
            }
            for name in &self.plan.orphan_files {
                remove_counted(&d.join(name), out)?;
            }
        }
        if no_readers.is_some() {
            for pid in &doomed {
                remove_counted(&d.join(pack_file_name(*pid)), out)?;
            }
            doomed.clear();
            fsutil::sync_dir(&d).map_err(io_at(&d))?;
        } else {
            out.packs_doomed = doomed.len() as u64;
        }
        save_doomed(self.store, &doomed)
    }
}

/// Remove a pack file, counting it in `packs_deleted`; one already gone is neither an error
/// nor counted.
fn remove_counted(p: &std::path::Path, out: &mut GcOutcome) -> Result<(), GcError> {
    match fsutil::remove_file(p) {
        Ok(()) => {
            out.packs_deleted += 1;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(p)(e)),
    }
}
