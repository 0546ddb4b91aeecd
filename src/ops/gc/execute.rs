//! Executing a gc [`Plan`]: exactly the plan, and the chunk sets it was computed from, less what
//! commits that landed while gc ran made live again; nothing else recomputed.
//!
//! The steps, in order (docs/architecture.md, "Garbage collection", numbers them with their
//! invariants; a crash between any two leaves a store that reads correctly); step 1 is the
//! plan ([`super::plan`]), made before execution:
//! 2. Copy, beside running commits (no lock): [`Executor::rewrite`] re-encodes live chunks whose
//!    delta base dies and copies the live entries of repacked packs into one new pack, sealed
//!    and fsynced with its directory. Nothing points at it yet. A background run (the retention
//!    policy's) steps aside before each chunk while a commit runs.
//! 3. Wait for `writers.lock` exclusively (a commit holds it shared from its dedup checks to its
//!    publish), polling up to [`super::GcOptions::wait_for_writers`]; past that, fall back to the
//!    deferred mode (the new pack is removed, dead chunks are only marked).
//! 4. Under the lock, reconcile ([`Executor::reconcile`]): a chunk the plan found dead but that
//!    a commit published since the plan, a staged part, or a chunk indexed since (as its delta
//!    base) needs is kept alive, with its pack; a moved entry is re-pointed only if its location
//!    is still the one it was copied from; orphan files and abandoned transactions are only
//!    those that still are.
//! 5. [`Executor::publish`]: one synced index batch records pruned and slimmed commits, drops
//!    dead chunks, re-points moved entries and forgets dropped packs (deferred: marks dead
//!    chunks). Then the lock is released: writers were excluded for steps 4 and 5 only.
//! 6. [`Executor::remove_files`]: only after that batch is durable, remove abandoned staging
//!    manifests, orphan files and unreferenced packs; a pack is unlinked only while gc holds
//!    `readers.lock` exclusively, otherwise it is listed as doomed for a later run.
#![warn(missing_docs)]

use super::GcError;
use super::GcOutcome;
use super::plan::{Decision, Plan, Work, orphan_files_now};
use super::stored::{doomed_packs, io_at, save_doomed};
use crate::model::id::{ChunkId, CommitId, ObjectId, PackId};
use crate::storage::fsutil;
use crate::storage::index::{Batch, ChunkLoc, Index, ObjectLoc, PackInfo};
use crate::storage::lock;
use crate::storage::pack::{ENTRY_CHUNK, PackError, PackReader, PackWriter, pack_file_name};
use crate::storage::state::{CommitState, PruneRecord};
use crate::storage::store::{Store, now_ns};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Execute `plan`, computed with `work` under `opts`: copy (no lock), then publish under
/// `writers.lock`, waiting for it up to `opts.wait_for_writers`. Counts go into `out`.
pub(super) fn execute(
    store: &Store,
    plan: &Plan,
    work: &Work,
    opts: &super::GcOptions,
    out: &mut GcOutcome,
) -> Result<(), GcError> {
    let wait = opts
        .wait_for_writers
        .unwrap_or(super::DEFAULT_WAIT_FOR_WRITERS);
    let copy_hook = opts.copy_hook.as_ref();
    let view = store.view();
    let ex = Executor {
        store,
        plan,
        work,
        now: now_ns(),
        // The time the plan judged staged parts against.
        plan_now: opts.now_ns.unwrap_or_else(now_ns),
        background: opts.background,
        wait,
        reencoding: work.reencode.iter().map(|(id, _)| *id).collect(),
        repack: plan
            .repack_packs
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
    };
    // Step 2 of the protocol (docs/architecture.md; step 1, the plan, is done): copy, while
    // commits run.
    if let Some(h) = copy_hook {
        (h.0)();
    }
    let rewritten = if !ex.repack.is_empty() || !ex.reencoding.is_empty() {
        ex.rewrite(&view, out)?
    } else {
        Rewritten::default()
    };
    drop(view);
    // Step 3: wait for the running commits to publish.
    let writers = store.writers_lock_path();
    let started = Instant::now();
    let quiet = loop {
        if let Some(g) = lock::try_exclusive(&writers).map_err(io_at(&writers))? {
            break Some(g);
        }
        if started.elapsed() >= wait {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let Some(quiet) = quiet else {
        out.mode = "deferred".into();
        out.chunks_reencoded = 0;
        ex.drop_rewritten(&rewritten)?;
        ex.publish_deferred()?;
        return ex.remove_files(Vec::new(), &Reconciled::default(), out);
    };
    // Steps 4 (reconcile) and 5 (publish), writers excluded.
    let excluded = Instant::now();
    store.refresh()?;
    let rec = ex.reconcile(&rewritten)?;
    let unlink = ex.publish(&rewritten, &rec, out)?;
    // A transaction abandoned now cannot get a new part while the lock is held.
    for txn in &rec.abandoned_txns {
        crate::storage::staging::abandon(store, txn)?;
    }
    drop(quiet);
    out.writers_excluded_ms = excluded.elapsed().as_secs_f64() * 1e3;
    out.chunks_kept_alive = rec.resurrected;
    // Step 6: unlink.
    ex.remove_files(unlink, &rec, out)
}

/// One execution: the plan and the chunk sets it acts on.
struct Executor<'a> {
    store: &'a Store,
    plan: &'a Plan,
    work: &'a Work,
    /// The time recorded in prune records and marks (nanoseconds since the epoch).
    now: i64,
    /// The time the plan judged staged parts against (abandoned or not).
    plan_now: i64,
    /// A background run (the retention policy's): its copy steps aside while commits run.
    background: bool,
    /// How long gc waits for writers (to publish, and at most per step aside).
    wait: Duration,
    /// Live chunks re-encoded without their dying base.
    reencoding: HashSet<ChunkId>,
    /// Packs whose live entries are copied out.
    repack: Vec<PackId>,
}

/// The entries step 2 (copy) wrote to a new pack, for the index batch to point at.
#[derive(Default)]
struct Rewritten {
    /// Chunks re-encoded or copied: their new location, and the (pack, offset) they were read
    /// from.
    moved: Vec<(ChunkId, ChunkLoc, (PackId, u64))>,
    /// Objects copied, likewise.
    moved_objects: Vec<(ObjectId, ObjectLoc, (PackId, u64))>,
    /// The new pack (at most one), sealed and durable.
    new_packs: Vec<(PackId, PackInfo)>,
}

/// What step 4 (reconcile) found, under `writers.lock`.
#[derive(Default)]
struct Reconciled {
    /// The plan's dead chunks that are still dead.
    dead: HashSet<ChunkId>,
    /// Dead chunks a commit, staged part or new chunk needs again.
    resurrected: u64,
    /// Packs that hold such a chunk: neither dropped nor unlinked.
    keep_packs: HashSet<PackId>,
    /// Where each indexed chunk is now.
    locs: HashMap<ChunkId, ChunkLoc>,
    /// The plan's orphan files that are still orphans.
    orphan_files: Vec<String>,
    /// The plan's abandoned transactions that still are.
    abandoned_txns: Vec<String>,
}

impl Executor<'_> {
    /// Step 2 (copy): write re-encoded chunks and the live entries of repacked packs to a new pack,
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

    /// A background run's copy steps aside while a commit runs (one holds `writers.lock`
    /// shared): it waits before its next chunk, so a training loop's commits never share the
    /// cores and the disk with it; it goes on between commits, or once one wait has lasted as
    /// long as it would wait to publish (a stuck writer does not hold gc forever). A manual gc
    /// does not wait.
    fn step_aside(&self) -> Result<(), GcError> {
        if !self.background {
            return Ok(());
        }
        let w = self.store.writers_lock_path();
        let started = Instant::now();
        while w.exists()
            && started.elapsed() < self.wait
            && lock::is_locked(&w).map_err(io_at(&w))?
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Deferred fallback: remove the pack step 2 wrote (nothing points at it).
    fn drop_rewritten(&self, rw: &Rewritten) -> Result<(), GcError> {
        let d = self.store.packs_dir();
        for (pid, _) in &rw.new_packs {
            let p = d.join(pack_file_name(*pid));
            match fsutil::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(&p)(e)),
            }
        }
        if !rw.new_packs.is_empty() {
            fsutil::sync_dir(&d).map_err(io_at(&d))?;
        }
        Ok(())
    }

    /// Step 4, reconcile (under `writers.lock`, after a refresh): what commits that landed while gc copied
    /// changed. Every chunk they need is live: the chunks of commits reachable now but not when
    /// the plan was made, of staged parts, and of chunks indexed since, each with its chain of
    /// delta bases. A dead chunk among them is kept, and so is its pack. Fails closed: a commit
    /// or tree that does not read stops gc before it deletes anything.
    fn reconcile(&self, rw: &Rewritten) -> Result<Reconciled, GcError> {
        let view = self.store.view();
        let mut rec = Reconciled::default();
        view.chunks(|id, loc| {
            rec.locs.insert(id, loc);
        })?;
        // A re-encoded chunk's new copy has no base, so its old base is not needed: but only if
        // the copy will be published, which it is when the chunk is still where it was read
        // from (a commit healing a damaged chunk may have rewritten it since). One that will
        // not be is a live chunk with a dying base: a seed.
        let reencoded: HashSet<ChunkId> = rw
            .moved
            .iter()
            .filter(|(id, _, (pack, offset))| {
                self.reencoding.contains(id)
                    && rec
                        .locs
                        .get(id)
                        .is_some_and(|l| l.pack == *pack && l.offset == *offset)
            })
            .map(|(id, _, _)| *id)
            .collect();
        let mut seeds: Vec<ChunkId> = self
            .reencoding
            .iter()
            .filter(|id| !reencoded.contains(id))
            .copied()
            .collect();
        // The plan's roots: branches and tags.
        let mut todo: Vec<CommitId> = view
            .refs(crate::storage::refs::HEADS)?
            .into_iter()
            .chain(view.refs(crate::storage::refs::TAGS)?)
            .map(|(_, id)| id)
            .collect();
        let mut seen: HashSet<CommitId> = HashSet::new();
        while let Some(id) = todo.pop() {
            if self.work.reachable.contains(&id) || !seen.insert(id) {
                continue;
            }
            let c = self.store.commit(id)?;
            todo.extend(c.parents.iter().copied());
            let tree = self.store.tree(c.tree)?;
            seeds.extend(tree.files.values().flat_map(|f| f.chunks().map(|c| c.id)));
        }
        let mut pending_packs: HashSet<String> = HashSet::new();
        let mut still_abandoned: HashSet<String> = HashSet::new();
        for p in crate::storage::staging::pending(self.store, self.plan_now)? {
            if p.abandoned {
                still_abandoned.insert(p.txn);
            } else {
                seeds.extend(p.chunks);
                pending_packs.extend(p.packs.iter().map(|id| pack_file_name(*id)));
            }
        }
        seeds.extend(
            rec.locs
                .keys()
                .filter(|id| !self.work.known.contains_key(id)),
        );
        let mut visited: HashSet<ChunkId> = HashSet::new();
        let mut resurrect: HashSet<ChunkId> = HashSet::new();
        while let Some(id) = seeds.pop() {
            if !visited.insert(id) {
                continue;
            }
            if self.work.dead.contains(&id) {
                resurrect.insert(id);
            }
            if !reencoded.contains(&id)
                && let Some(b) = rec.locs.get(&id).and_then(|l| l.base)
            {
                seeds.push(b);
            }
        }
        rec.resurrected = resurrect.len() as u64;
        rec.keep_packs = resurrect
            .iter()
            .filter_map(|id| rec.locs.get(id).map(|l| l.pack))
            .collect();
        rec.dead = self
            .work
            .dead
            .iter()
            .filter(|id| !resurrect.contains(id))
            .copied()
            .collect();
        let ours: HashSet<String> = rw
            .new_packs
            .iter()
            .map(|(id, _)| pack_file_name(*id))
            .collect();
        let now: HashSet<String> = orphan_files_now(self.store, &pending_packs, &ours)?
            .into_iter()
            .collect();
        rec.orphan_files = self
            .plan
            .orphan_files
            .iter()
            .filter(|n| now.contains(*n))
            .cloned()
            .collect();
        rec.abandoned_txns = self
            .plan
            .abandoned_txns
            .iter()
            .filter(|t| still_abandoned.contains(*t))
            .cloned()
            .collect();
        Ok(rec)
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
            self.step_aside()?;
            let Some(from) = view.chunk(id)? else {
                continue;
            };
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
                (from.pack, from.offset),
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
            self.step_aside()?;
            let h = e.header;
            if h.kind == ENTRY_CHUNK {
                let id = ChunkId(h.id);
                let Some(loc) = view.chunk(&id)? else {
                    continue;
                };
                if loc.pack != pid
                    || loc.offset != e.offset
                    || self.work.dead.contains(&id)
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
                    (pid, e.offset),
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
                    (pid, e.offset),
                ));
            }
        }
        Ok(())
    }

    /// Step 5, publish: the one index batch, with what step 4 found. Returns the packs it stopped
    /// referencing.
    fn publish(
        &self,
        rw: &Rewritten,
        rec: &Reconciled,
        out: &mut GcOutcome,
    ) -> Result<Vec<PackId>, GcError> {
        let mut unlink: Vec<PackId> = Vec::new();
        self.store.with_writer(|index| -> Result<_, GcError> {
            let mut b = index.batch()?;
            self.record_pruned(index, &mut b)?;
            for id in &rec.dead {
                b.delete_chunk(id)?;
                b.delete_mark(id)?;
                out.chunks_removed += 1;
            }
            // Compare and swap: an entry moves only from where it was copied from.
            for (id, loc, (pack, offset)) in &rw.moved {
                if rec
                    .locs
                    .get(id)
                    .is_some_and(|l| l.pack == *pack && l.offset == *offset)
                {
                    b.put_chunk(id, loc)?;
                }
            }
            for (id, loc, (pack, offset)) in &rw.moved_objects {
                if index
                    .object(id)?
                    .is_some_and(|l| l.pack == *pack && l.offset == *offset)
                {
                    b.put_object(id, loc)?;
                }
            }
            for (pid, info) in &rw.new_packs {
                b.put_pack(pid, info)?;
            }
            let plan = self.plan;
            for p in plan.delete_packs.iter().chain(plan.repack_packs.iter()) {
                if let Ok(pid) = p.parse::<PackId>()
                    && !rec.keep_packs.contains(&pid)
                {
                    b.delete_pack(&pid)?;
                    unlink.push(pid);
                }
            }
            out.packs_repacked = self
                .repack
                .iter()
                .filter(|p| !rec.keep_packs.contains(p))
                .count() as u64;
            index.write(b)?;
            Ok(())
        })?;
        Ok(unlink)
    }

    /// Step 5 of the deferred fallback: record pruned commits and mark the dead chunks (less
    /// the delta bases live chunks still need, as nothing was re-encoded) for a later run.
    fn publish_deferred(&self) -> Result<(), GcError> {
        self.store.with_writer(|index| -> Result<_, GcError> {
            let mut b = index.batch()?;
            self.record_pruned(index, &mut b)?;
            for id in self.work.dead.difference(&self.work.bases) {
                if index.mark(id)?.is_none() {
                    b.put_mark(id, self.now)?;
                }
            }
            index.write(b)?;
            Ok(())
        })
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

    /// Step 6, unlink: the batch is durable, so the packs in `unlink` are unreferenced. Unlink them now
    /// if no reader can be between resolving a location and opening its pack; otherwise leave
    /// them for later.
    fn remove_files(
        &self,
        unlink: Vec<PackId>,
        rec: &Reconciled,
        out: &mut GcOutcome,
    ) -> Result<(), GcError> {
        let readers = self.store.readers_lock_path();
        let no_readers = lock::try_exclusive(&readers).map_err(io_at(&readers))?;
        let mut doomed = doomed_packs(self.store)?;
        doomed.extend(unlink);
        let d = self.store.packs_dir();
        for name in &rec.orphan_files {
            remove_counted(&d.join(name), out)?;
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
