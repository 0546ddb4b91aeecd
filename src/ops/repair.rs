//! Repairing a store: `repair --rebuild-index` ([`rebuild_index`]). (`repair --from`, which
//! writes good copies of damaged chunks, is a commit: `crate::ops::commit::heal_from`.)
//!
//! Invariants:
//! - The rebuild reads the packs (their entry tables), the reflog (refs and HEAD) and the
//!   statelog (per-commit state) alone, never the old index, so it works when that index is
//!   missing or damaged.
//! - It builds the complete new index in a new directory and swaps it in by rename, so a crash
//!   leaves the old index or the new one; the old index, if any, is kept beside it.
//! - Packs listed in `doomed-packs` (unreferenced by gc, not yet unlinked) are left out.
#![warn(missing_docs)]

use crate::model::id::{ChunkId, CommitId, ObjectId, PackId};
use crate::model::object::{Commit, KIND_COMMIT, ObjectError};
use crate::storage::index::{
    ChunkLoc, CommitRow, Index, IndexError, META_HEAD, ObjectLoc, PackInfo,
};
use crate::storage::pack::{ENTRY_CHUNK, PackError, PackReader};
use crate::storage::state::CommitState;
use serde::Serialize;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Errors of rebuilding the index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepairError {
    /// A file operation on the store (lock, packs directory, reflog, index directories)
    /// failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Creating or writing the new index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A pack failed to open, or its entry table or a commit object in it is damaged.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// A commit object does not decode.
    #[error(transparent)]
    Object(#[from] ObjectError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> RepairError + '_ {
    move |source| RepairError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `repair --rebuild-index` did.
#[derive(Clone, Debug, Serialize)]
pub struct RebuildOutcome {
    /// Packs indexed (doomed packs excluded).
    pub packs: u64,
    /// Distinct chunks indexed.
    pub chunks: u64,
    /// Distinct objects (commits, trees, tensor records) indexed.
    pub objects: u64,
    /// Commits given an index row.
    pub commits: u64,
    /// Refs restored from the reflog.
    pub refs: u64,
    /// Commit state records restored from the statelog.
    pub states: u64,
    /// Where the previous index was moved, if there was one.
    pub old_index: Option<String>,
    /// Packs whose header or entry table could not be read, with why: nothing in them was
    /// indexed, the rest of the store was.
    pub skipped_packs: Vec<Skipped>,
    /// Commit objects that did not read back or decode, with why: left out of the index (a ref
    /// that last pointed at one falls back to its previous target in the reflog).
    pub damaged_commits: Vec<Skipped>,
}

/// Something a rebuild left out, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// The pack or commit id, hex.
    pub id: String,
    /// The error it gave.
    pub error: String,
}

/// Rebuild the index from packs, reflog and statelog. Works on a store whose index is missing
/// or damaged (it does not open the old index).
pub fn rebuild_index(root: &Path) -> Result<RebuildOutcome, RepairError> {
    let lock_path = root.join("locks/index.lock");
    std::fs::create_dir_all(root.join("locks")).map_err(io_at(root))?;
    let _lock = crate::storage::lock::exclusive(&lock_path).map_err(io_at(&lock_path))?;
    let packs = list_packs(root)?;
    let mut scan = scan_packs(root, &packs)?;
    let (rows, damaged_commits) = commit_rows(&packs, &scan.commit_objs);
    for d in &damaged_commits {
        if let Ok(id) = d.id.parse::<CommitId>() {
            scan.objects.remove(&ObjectId(id.0));
        }
    }
    let Refs { refs, head } = refs_from_reflog(root, &scan.objects)?;
    let states = states_from_statelog(root);
    let fresh = root.join("index.rebuild");
    let _ = std::fs::remove_dir_all(&fresh);
    write_index(&fresh, &scan, &rows, &refs, head, &states)?;
    let old = swap_in(root, &fresh)?;
    Ok(RebuildOutcome {
        packs: scan.infos.len() as u64,
        chunks: scan.chunks.len() as u64,
        objects: scan.objects.len() as u64,
        commits: rows.len() as u64,
        refs: refs.values().filter(|v| v.is_some()).count() as u64,
        states: states.len() as u64,
        old_index: old,
        skipped_packs: scan.skipped,
        damaged_commits,
    })
}

/// Every `<id>.pack` file in the packs directory, sorted by id.
fn list_packs(root: &Path) -> Result<Vec<(PackId, PathBuf)>, RepairError> {
    let packs_dir = root.join("packs");
    let mut packs: Vec<(PackId, PathBuf)> = Vec::new();
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
    Ok(packs)
}

/// What the packs' entry tables say.
struct Scan {
    /// One location per chunk.
    chunks: BTreeMap<ChunkId, ChunkLoc>,
    /// One location per object (the first copy found).
    objects: BTreeMap<ObjectId, ObjectLoc>,
    /// Each pack read, with its size and entry counts.
    infos: Vec<(PackId, PackInfo)>,
    /// Commit objects: id, pack and offset.
    commit_objs: Vec<(CommitId, PackId, u64)>,
    /// Packs that could not be read.
    skipped: Vec<Skipped>,
}

/// Read the entry table of every pack not in `doomed-packs`.
fn scan_packs(root: &Path, packs: &[(PackId, PathBuf)]) -> Result<Scan, RepairError> {
    let doomed: HashSet<String> = std::fs::read_to_string(root.join("doomed-packs"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    let mut scan = Scan {
        chunks: BTreeMap::new(),
        objects: BTreeMap::new(),
        infos: Vec::new(),
        commit_objs: Vec::new(),
        skipped: Vec::new(),
    };
    for (pid, path) in packs {
        if doomed.contains(&pid.to_hex()) {
            continue;
        }
        // A pack whose header or table is damaged is left out, and said so: the rest of the
        // store is still worth an index.
        let read = PackReader::open(path, *pid).and_then(|r| Ok((r.entries()?, r)));
        let (entries, r) = match read {
            Ok(x) => x,
            Err(e) => {
                scan.skipped.push(Skipped {
                    id: pid.to_hex(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        let mut info = PackInfo {
            size: r.size(),
            ..Default::default()
        };
        for e in entries {
            let h = e.header;
            if h.kind == ENTRY_CHUNK {
                info.chunks += 1;
                let loc = ChunkLoc::of_entry(*pid, &e);
                // Of several copies, the one with the smallest delta depth: gc re-encodes a
                // chunk whose base it removes, and the older delta copy may outlive that base
                // in a pack gc did not rewrite.
                match scan.chunks.entry(ChunkId(h.id)) {
                    Entry::Vacant(slot) => {
                        slot.insert(loc);
                    }
                    Entry::Occupied(mut slot) => {
                        if loc.depth < slot.get().depth {
                            slot.insert(loc);
                        }
                    }
                }
            } else {
                info.objects += 1;
                let oid = ObjectId(h.id);
                if let Entry::Vacant(slot) = scan.objects.entry(oid) {
                    slot.insert(ObjectLoc {
                        pack: *pid,
                        offset: e.offset,
                        stored_len: h.stored_len,
                        raw_len: h.raw_len,
                        kind: h.object_kind,
                    });
                    if h.object_kind == KIND_COMMIT {
                        scan.commit_objs.push((CommitId(h.id), *pid, e.offset));
                    }
                }
            }
        }
        scan.infos.push((*pid, info));
    }
    Ok(scan)
}

/// The index row of every commit object found, decoded from its pack; and the commits that
/// did not read back or decode, with why.
fn commit_rows(
    packs: &[(PackId, PathBuf)],
    commit_objs: &[(CommitId, PackId, u64)],
) -> (Vec<(CommitId, CommitRow)>, Vec<Skipped>) {
    let readers: HashMap<PackId, Result<PackReader, String>> = packs
        .iter()
        .filter(|(p, _)| commit_objs.iter().any(|(_, cp, _)| cp == p))
        .map(|(p, path)| (*p, PackReader::open(path, *p).map_err(|e| e.to_string())))
        .collect();
    let mut rows: Vec<(CommitId, CommitRow)> = Vec::new();
    let mut damaged = Vec::new();
    for (cid, pid, off) in commit_objs {
        let read = match readers.get(pid) {
            Some(Ok(r)) => r
                .read_object((*cid).into(), *off)
                .map_err(|e| e.to_string())
                .and_then(|(_, bytes)| {
                    Commit::decode((*cid).into(), &bytes).map_err(|e| e.to_string())
                }),
            Some(Err(e)) => Err(e.clone()),
            None => Err("its pack is not open".to_string()),
        };
        match read {
            Ok(c) => rows.push((*cid, CommitRow::of(&c))),
            Err(error) => damaged.push(Skipped {
                id: cid.to_string(),
                error,
            }),
        }
    }
    (rows, damaged)
}

/// What the reflog says the refs are.
struct Refs {
    /// Each ref's last move whose target exists (`None`: the ref was deleted).
    refs: BTreeMap<String, Option<CommitId>>,
    /// The last value of HEAD it records.
    head: Option<String>,
}

/// Refs: the last move of each ref in the reflog whose target exists.
fn refs_from_reflog(
    root: &Path,
    objects: &BTreeMap<ObjectId, ObjectLoc>,
) -> Result<Refs, RepairError> {
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
    Ok(Refs { refs, head })
}

/// Per-commit state: the last statelog line of each commit (unreadable lines, or no statelog,
/// are skipped).
fn states_from_statelog(root: &Path) -> BTreeMap<CommitId, CommitState> {
    let mut states: BTreeMap<CommitId, CommitState> = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(root.join("statelog")) {
        for line in text.lines() {
            if let Ok(e) = serde_json::from_str::<crate::storage::state::StateLogEntry>(line)
                && let Ok(id) = e.commit.parse::<CommitId>()
            {
                states.insert(id, e.state);
            }
        }
    }
    states
}

/// Create the new index at `fresh` and write everything found in one batch.
fn write_index(
    fresh: &Path,
    scan: &Scan,
    rows: &[(CommitId, CommitRow)],
    refs: &BTreeMap<String, Option<CommitId>>,
    head: Option<String>,
    states: &BTreeMap<CommitId, CommitState>,
) -> Result<(), RepairError> {
    let index = Index::create(fresh)?;
    let mut b = index.batch()?;
    for (id, loc) in &scan.chunks {
        b.put_chunk(id, loc)?;
    }
    for (id, loc) in &scan.objects {
        b.put_object(id, loc)?;
    }
    for (id, info) in &scan.infos {
        b.put_pack(id, info)?;
    }
    for (id, row) in rows {
        b.put_commit_row(id, row)?;
    }
    for (name, id) in refs {
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
    for (id, st) in states {
        b.put_state_raw(id, &postcard::to_stdvec(st).expect("state encodes"))?;
    }
    index.write(b)?;
    Ok(())
}

/// Move the current index aside (if any) and the fresh one into its place, then make the
/// renames durable. Returns where the old index went.
fn swap_in(root: &Path, fresh: &Path) -> Result<Option<String>, RepairError> {
    let current = root.join("index");
    let old = if current.exists() {
        let dest = root.join(format!("index.old-{}", crate::storage::store::now_ns()));
        std::fs::rename(&current, &dest).map_err(io_at(&current))?;
        Some(dest.display().to_string())
    } else {
        None
    };
    std::fs::rename(fresh, &current).map_err(io_at(fresh))?;
    crate::storage::fsutil::sync_dir(root).map_err(io_at(root))?;
    Ok(old)
}
