//! Checking a store (`fsck`) and repairing it (`repair`).
//!
//! Invariants:
//! - fsck never changes data; the only thing it writes is the `damaged` record of a chunk whose
//!   stored copy fails its hash, so the next commit or `repair --from` that supplies the same
//!   content writes a good copy instead of deduplicating against the bad one.
//! - `repair --rebuild-index` builds a complete index from the packs (their footer tables),
//!   the reflog (refs and HEAD) and the statelog (per-commit state) alone, in a new directory,
//!   and swaps it in by rename; the old index, if any, is kept beside it.

use crate::error::{Result, io_at};
use crate::model::id::{ChunkId, CommitId, ObjectId, PackId};
use crate::model::object::{Commit, KIND_COMMIT};
use crate::ops::progress::Progress;
use crate::storage::error::StoreError;
use crate::storage::index::{ChunkLoc, CommitRow, Index, META_HEAD, ObjectLoc, PackInfo};
use crate::storage::pack::{ENTRY_CHUNK, PackReader, pack_file_name};
use crate::storage::store::Store;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Options of a check.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsckOptions {
    /// Decode and re-hash chunk data.
    pub read_data: bool,
    /// Only re-hash slice `i` of `n` (1-based), so `n` runs cover every chunk.
    pub subset: Option<(u64, u64)>,
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What is wrong: missing-object, missing-chunk, missing-base, bad-index-entry,
    /// missing-pack, bad-pack, corrupt-chunk, corrupt-object, dangling-ref.
    pub kind: String,
    /// The object, chunk, ref or pack concerned.
    pub subject: String,
    pub pack: Option<String>,
    pub detail: String,
}

/// What fsck found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    pub refs: u64,
    pub commits: u64,
    pub trees: u64,
    pub chunks_referenced: u64,
    pub chunks_indexed: u64,
    pub chunks_read: u64,
    pub bytes_read: u64,
    pub packs: u64,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn problem(kind: &str, subject: String, pack: Option<PackId>, detail: String) -> Problem {
    Problem {
        kind: kind.into(),
        subject,
        pack: pack.map(|p| p.to_hex()),
        detail,
    }
}

/// Check the store. Problems are collected; the call fails only if the index cannot be read.
pub fn fsck(store: &Store, opts: &FsckOptions, progress: &dyn Progress) -> Result<FsckReport> {
    let _reading = store.read_guard();
    store.refresh()?;
    let view = store.view();
    let mut rep = FsckReport::default();

    // Packs: every pack the index knows exists, opens and has an intact footer.
    let mut pack_sizes: HashMap<PackId, u64> = HashMap::new();
    let mut table_end: HashMap<PackId, u64> = HashMap::new();
    for (pid, _info) in view.packs()? {
        rep.packs += 1;
        let path = store.packs_dir().join(pack_file_name(pid));
        if !path.exists() {
            rep.problems.push(problem(
                "missing-pack",
                pid.to_hex(),
                Some(pid),
                format!("{} does not exist", path.display()),
            ));
            continue;
        }
        match PackReader::open(&path, pid).and_then(|r| {
            let entries = r.entries_from_footer()?;
            Ok((r.size(), entries))
        }) {
            Ok((size, entries)) => {
                pack_sizes.insert(pid, size);
                let end = entries
                    .iter()
                    .map(|e| e.offset + e.header.stored_len)
                    .max()
                    .unwrap_or(0);
                table_end.insert(pid, end);
            }
            Err(e) => {
                rep.problems
                    .push(problem("bad-pack", pid.to_hex(), Some(pid), e.to_string()))
            }
        }
    }

    // Index entries lie inside sealed packs.
    let mut locs: HashMap<ChunkId, ChunkLoc> = HashMap::new();
    view.chunks(|id, loc| {
        locs.insert(id, loc);
    })?;
    rep.chunks_indexed = locs.len() as u64;
    for (id, loc) in &locs {
        match table_end.get(&loc.pack) {
            None if !pack_sizes.contains_key(&loc.pack)
                && !rep.problems.iter().any(|p| p.subject == loc.pack.to_hex()) =>
            {
                rep.problems.push(problem(
                    "missing-pack",
                    loc.pack.to_hex(),
                    Some(loc.pack),
                    "the index points into a pack that is not there".into(),
                ));
            }
            Some(end) if loc.offset + loc.stored_len > *end => rep.problems.push(problem(
                "bad-index-entry",
                id.to_hex(),
                Some(loc.pack),
                format!(
                    "entry [{}, {}) lies outside the pack's entries",
                    loc.offset,
                    loc.offset + loc.stored_len
                ),
            )),
            _ => {}
        }
        if let Some(b) = loc.base
            && !locs.contains_key(&b)
        {
            rep.problems.push(problem(
                "missing-base",
                id.to_hex(),
                Some(loc.pack),
                format!("delta base {b} is not in the store"),
            ));
        }
    }

    // Refs → commits → trees → chunks.
    let mut roots: Vec<(String, CommitId)> = view.refs("")?;
    rep.refs = roots.len() as u64;
    let mut seen: HashSet<CommitId> = HashSet::new();
    let mut referenced: HashSet<ChunkId> = HashSet::new();
    let mut trees_seen = HashSet::new();
    while let Some((via, id)) = roots.pop() {
        if !seen.insert(id) {
            continue;
        }
        let c = match store.commit(id) {
            Ok(c) => c,
            Err(e) => {
                let kind = if matches!(e, StoreError::MissingObject { .. }) {
                    "missing-object"
                } else {
                    "corrupt-object"
                };
                rep.problems.push(problem(
                    kind,
                    id.to_hex(),
                    None,
                    format!("commit reached from {via}: {e}"),
                ));
                continue;
            }
        };
        rep.commits += 1;
        for p in &c.parents {
            roots.push((format!("{}^", id.short()), *p));
        }
        let released: HashSet<String> = crate::storage::state::released_files(store, id)?
            .into_iter()
            .collect();
        match store.tree(c.tree) {
            Ok(tree) => {
                if trees_seen.insert(c.tree) {
                    rep.trees += 1;
                }
                for (path, f) in &tree.files {
                    if released.contains(path) {
                        continue;
                    }
                    for ch in f.chunks() {
                        if referenced.insert(ch.id) && !locs.contains_key(&ch.id) {
                            rep.problems.push(problem(
                                "missing-chunk",
                                ch.id.to_hex(),
                                None,
                                format!("{path} of commit {} needs it", id.short()),
                            ));
                        }
                    }
                }
            }
            Err(e) => rep.problems.push(problem(
                "missing-object",
                c.tree.to_hex(),
                None,
                format!("tree of commit {}: {e}", id.short()),
            )),
        }
    }
    rep.chunks_referenced = referenced.len() as u64;

    if opts.read_data {
        let mut ids: Vec<ChunkId> = locs.keys().copied().collect();
        ids.sort();
        if let Some((i, n)) = opts.subset {
            ids.retain(|c| {
                let x = u64::from_le_bytes(c.0[..8].try_into().expect("8 bytes"));
                x % n == i - 1
            });
        }
        let total: u64 = ids.iter().map(|c| locs[c].raw_len).sum();
        progress.begin("fsck", total);
        let results: Vec<(ChunkId, Result<usize, StoreError>)> = ids
            .par_iter()
            .map(|id| {
                let r = store.read_chunk(*id).map(|b| b.len());
                if let Ok(n) = &r {
                    progress.advance(*n as u64);
                }
                (*id, r)
            })
            .collect();
        progress.end();
        let mut damaged = Vec::new();
        for (id, r) in results {
            match r {
                Ok(n) => {
                    rep.chunks_read += 1;
                    rep.bytes_read += n as u64;
                }
                Err(e) => {
                    damaged.push(id);
                    rep.problems.push(problem(
                        "corrupt-chunk",
                        id.to_hex(),
                        Some(locs[&id].pack),
                        e.to_string(),
                    ));
                }
            }
        }
        if !damaged.is_empty() {
            // Remember them so a commit or `repair --from` heals them; ignore a read-only store.
            let _ = store.with_writer(|index| -> Result<_> {
                let mut b = index.batch()?;
                for id in &damaged {
                    b.put_damaged(id)?;
                }
                index.write(b)?;
                Ok(())
            });
        }
    }
    rep.problems
        .sort_by(|a, b| (&a.kind, &a.subject).cmp(&(&b.kind, &b.subject)));
    Ok(rep)
}

/// What `repair --rebuild-index` did.
#[derive(Clone, Debug, Serialize)]
pub struct RebuildOutcome {
    pub packs: u64,
    pub chunks: u64,
    pub objects: u64,
    pub commits: u64,
    pub refs: u64,
    pub states: u64,
    /// Where the previous index was moved, if there was one.
    pub old_index: Option<String>,
}

/// Rebuild the index from packs, reflog and statelog. Works on a store whose index is missing
/// or damaged (it does not open the old index).
pub fn rebuild_index(root: &std::path::Path) -> Result<RebuildOutcome> {
    let lock_path = root.join("locks/index.lock");
    std::fs::create_dir_all(root.join("locks")).map_err(io_at(root))?;
    let _lock = crate::storage::lock::exclusive(&lock_path).map_err(io_at(&lock_path))?;
    let packs_dir = root.join("packs");
    let mut packs: Vec<(PackId, std::path::PathBuf)> = Vec::new();
    for e in std::fs::read_dir(&packs_dir).map_err(io_at(&packs_dir))? {
        let e = e.map_err(io_at(&packs_dir))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".pack")
            && let Ok(id) = stem.parse::<PackId>()
        {
            packs.push((id, e.path()));
        }
    }
    packs.sort();
    let doomed: HashSet<String> = std::fs::read_to_string(root.join("doomed-packs"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    let mut chunks: BTreeMap<ChunkId, ChunkLoc> = BTreeMap::new();
    let mut objects: BTreeMap<ObjectId, ObjectLoc> = BTreeMap::new();
    let mut infos: Vec<(PackId, PackInfo)> = Vec::new();
    let mut commit_objs: Vec<(CommitId, PackId, u64)> = Vec::new();
    for (pid, path) in &packs {
        if doomed.contains(&pid.to_hex()) {
            continue;
        }
        let r = PackReader::open(path, *pid)?;
        let entries = r.entries()?;
        let mut info = PackInfo {
            size: r.size(),
            ..Default::default()
        };
        for e in entries {
            let h = e.header;
            if h.kind == ENTRY_CHUNK {
                info.chunks += 1;
                let loc = ChunkLoc {
                    pack: *pid,
                    offset: e.offset,
                    stored_len: h.stored_len,
                    raw_len: h.raw_len,
                    encoding: h.encoding,
                    base: h.base,
                    depth: h.depth,
                };
                // Of several copies, the one with the smallest delta depth: gc re-encodes a
                // chunk whose base it removes, and the older delta copy may outlive that base
                // in a pack gc did not rewrite.
                match chunks.entry(ChunkId(h.id)) {
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(loc);
                    }
                    std::collections::btree_map::Entry::Occupied(mut slot) => {
                        if loc.depth < slot.get().depth {
                            slot.insert(loc);
                        }
                    }
                }
            } else {
                info.objects += 1;
                let oid = ObjectId(h.id);
                if let std::collections::btree_map::Entry::Vacant(slot) = objects.entry(oid) {
                    slot.insert(ObjectLoc {
                        pack: *pid,
                        offset: e.offset,
                        stored_len: h.stored_len,
                        raw_len: h.raw_len,
                        kind: h.object_kind,
                    });
                    if h.object_kind == KIND_COMMIT {
                        commit_objs.push((CommitId(h.id), *pid, e.offset));
                    }
                }
            }
        }
        infos.push((*pid, info));
    }
    let readers: HashMap<PackId, PackReader> = packs
        .iter()
        .filter(|(p, _)| commit_objs.iter().any(|(_, cp, _)| cp == p))
        .map(|(p, path)| Ok((*p, PackReader::open(path, *p)?)))
        .collect::<Result<_>>()?;
    let mut rows: Vec<(CommitId, CommitRow)> = Vec::new();
    for (cid, pid, off) in &commit_objs {
        let (_, bytes) = readers[pid].read_object((*cid).into(), *off)?;
        let c = Commit::decode((*cid).into(), &bytes)?;
        rows.push((*cid, CommitRow::of(&c)));
    }
    // Refs: the last move of each ref in the reflog whose target exists.
    let reflog = crate::storage::refs::read_reflog(&root.join("reflog")).map_err(io_at(root))?;
    let mut refs: BTreeMap<String, Option<CommitId>> = BTreeMap::new();
    let mut head: Option<String> = None;
    for e in &reflog {
        if e.name == "HEAD" {
            head = e.new.clone();
        } else {
            let target = e
                .new_id()
                .filter(|id| objects.contains_key(&ObjectId(id.0)));
            if target.is_some() || e.new.is_none() {
                refs.insert(e.name.clone(), target);
            }
        }
    }
    let mut states: BTreeMap<CommitId, crate::storage::state::CommitState> = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(root.join("statelog")) {
        for line in text.lines() {
            if let Ok(e) = serde_json::from_str::<crate::storage::state::StateLogEntry>(line)
                && let Ok(id) = e.commit.parse::<CommitId>()
            {
                states.insert(id, e.state);
            }
        }
    }

    let fresh = root.join("index.rebuild");
    let _ = std::fs::remove_dir_all(&fresh);
    {
        let index = Index::create(&fresh)?;
        let mut b = index.batch()?;
        for (id, loc) in &chunks {
            b.put_chunk(id, loc)?;
        }
        for (id, loc) in &objects {
            b.put_object(id, loc)?;
        }
        for (id, info) in &infos {
            b.put_pack(id, info)?;
        }
        for (id, row) in &rows {
            b.put_commit_row(id, row)?;
        }
        for (name, id) in &refs {
            if let Some(id) = id {
                b.put_ref(name, id)?;
            }
        }
        let head = head.unwrap_or_else(|| {
            format!(
                "{}{}",
                crate::storage::refs::HEADS,
                crate::storage::refs::DEFAULT_BRANCH
            )
        });
        b.put_meta(META_HEAD, head.as_bytes())?;
        for (id, st) in &states {
            b.put_state_raw(id, &postcard::to_stdvec(st).expect("state encodes"))?;
        }
        index.write(b)?;
    }
    let current = root.join("index");
    let old = if current.exists() {
        let dest = root.join(format!("index.old-{}", crate::storage::store::now_ns()));
        std::fs::rename(&current, &dest).map_err(io_at(&current))?;
        Some(dest.display().to_string())
    } else {
        None
    };
    std::fs::rename(&fresh, &current).map_err(io_at(&fresh))?;
    crate::storage::fsutil::sync_dir(root).map_err(io_at(root))?;
    Ok(RebuildOutcome {
        packs: infos.len() as u64,
        chunks: chunks.len() as u64,
        objects: objects.len() as u64,
        commits: rows.len() as u64,
        refs: refs.values().filter(|v| v.is_some()).count() as u64,
        states: states.len() as u64,
        old_index: old,
    })
}
