//! Checking a store (`fsck`): every pack the index knows, every index entry, everything
//! reachable from the refs, and optionally every chunk's data. Repairing is
//! [`crate::ops::repair`]'s.
//!
//! Invariants:
//! - fsck never changes data; the only thing it writes is the `damaged` record of a chunk whose
//!   stored copy fails its hash, so the next commit or `repair --from` that supplies the same
//!   content writes a good copy instead of deduplicating against the bad one.
//! - Problems are collected, never returned as errors: the call fails only if the index cannot
//!   be read.
//! - With `read_data` each chunk is decoded once: the file pass verifies every chunk of a file
//!   that decodes whole (against its id, on the way to the file's SHA-256), and the chunk pass
//!   reads only the chunks no such file covered, plus every chunk of a file that failed, so the
//!   damaged chunk is named rather than the file.
#![warn(missing_docs)]

use crate::model::id::{ChunkId, CommitId, PackId};
use crate::model::object::FileEntry;
use crate::ops::progress::Progress;
use crate::storage::error::StoreError;
use crate::storage::index::{ChunkLoc, Index, IndexError};
use crate::storage::pack::{PackReader, pack_file_name};
use crate::storage::store::Store;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Errors that stop a check (problems in the store are reported in the [`FsckReport`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsckError {
    /// Refreshing the view of the store, or reading a commit's state record, failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The index could not be read.
    #[error(transparent)]
    Index(#[from] IndexError),
}

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
    /// missing-pack, bad-pack, corrupt-chunk, corrupt-object, dangling-ref,
    /// file-digest-mismatch.
    pub kind: String,
    /// The object, chunk, ref or pack concerned.
    pub subject: String,
    /// The pack concerned (hex id), when there is one.
    pub pack: Option<String>,
    /// What was found, for a person to read.
    pub detail: String,
}

/// What fsck found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    /// Refs checked (branches and tags).
    pub refs: u64,
    /// Commits reached from the refs, through all parents.
    pub commits: u64,
    /// Distinct trees of those commits.
    pub trees: u64,
    /// Distinct chunks those trees reference (released files excepted).
    pub chunks_referenced: u64,
    /// Chunks the index holds.
    pub chunks_indexed: u64,
    /// Referenced chunks only a lazy clone's remote holds (not problems; `fsck --remote`
    /// checks them there).
    pub chunks_remote: u64,
    /// Chunks whose data was read back and verified (`read_data`).
    pub chunks_read: u64,
    /// Raw bytes those chunks decoded to.
    pub bytes_read: u64,
    /// Distinct files (by content) whose bytes were decoded whole and checked against their
    /// recorded size and SHA-256 (`read_data`).
    pub files_verified: u64,
    /// Packs the index knows.
    pub packs: u64,
    /// Everything wrong, sorted by kind, then subject.
    pub problems: Vec<Problem>,
}

impl FsckReport {
    /// No problem was found.
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
pub fn fsck(
    store: &Store,
    opts: &FsckOptions,
    progress: &dyn Progress,
) -> Result<FsckReport, FsckError> {
    let _reading = store.read_guard();
    store.refresh()?;
    let view = store.view();
    let mut rep = FsckReport::default();
    let packs = check_packs(store, &view, &mut rep)?;
    let mut locs: HashMap<ChunkId, ChunkLoc> = HashMap::new();
    view.chunks(|id, loc| {
        locs.insert(id, loc);
    })?;
    rep.chunks_indexed = locs.len() as u64;
    check_index_entries(&locs, &packs, &mut rep);
    let files = walk_refs(store, &view, &locs, &mut rep)?;
    if opts.read_data {
        // Files first: decoding a file verifies each of its chunks by BLAKE3 on the way, so
        // the chunk pass then reads only what no verified file covered (one decode per chunk).
        let files = verify_files(store, opts, &locs, files, progress, &mut rep);
        read_data(store, opts, &locs, files, progress, &mut rep);
    }
    rep.problems
        .sort_by(|a, b| (&a.kind, &a.subject).cmp(&(&b.kind, &b.subject)));
    Ok(rep)
}

/// The packs that opened with an intact footer.
struct GoodPacks {
    /// Each one's file size.
    sizes: HashMap<PackId, u64>,
    /// Where each one's last entry ends.
    table_end: HashMap<PackId, u64>,
}

/// Packs: every pack the index knows exists, opens and has an intact footer.
fn check_packs(store: &Store, view: &Index, rep: &mut FsckReport) -> Result<GoodPacks, FsckError> {
    let mut good = GoodPacks {
        sizes: HashMap::new(),
        table_end: HashMap::new(),
    };
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
                good.sizes.insert(pid, size);
                let end = entries
                    .iter()
                    .map(|e| e.offset + e.header.stored_len)
                    .max()
                    .unwrap_or(0);
                good.table_end.insert(pid, end);
            }
            Err(e) => {
                rep.problems
                    .push(problem("bad-pack", pid.to_hex(), Some(pid), e.to_string()))
            }
        }
    }
    Ok(good)
}

/// Index entries lie inside sealed packs, and their delta bases are in the store.
fn check_index_entries(locs: &HashMap<ChunkId, ChunkLoc>, packs: &GoodPacks, rep: &mut FsckReport) {
    for (id, loc) in locs {
        match packs.table_end.get(&loc.pack) {
            None if !packs.sizes.contains_key(&loc.pack)
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
}

/// A file to check whole: a path that holds it, its commit, its entry.
type FileToCheck = (String, CommitId, FileEntry);

/// Refs → commits → trees → chunks: every commit reachable through all parents reads, its
/// tree reads, and every chunk it references (released files excepted) is indexed. Returns
/// one file of each distinct content (digest, size and chunks), for [`verify_files`].
fn walk_refs(
    store: &Store,
    view: &Index,
    locs: &HashMap<ChunkId, ChunkLoc>,
    rep: &mut FsckReport,
) -> Result<Vec<FileToCheck>, FsckError> {
    let mut files = Vec::new();
    let mut files_seen: HashSet<([u8; 32], u64, Vec<ChunkId>)> = HashSet::new();
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
                    if files_seen.insert((f.sha256, f.size, f.chunks().map(|c| c.id).collect())) {
                        files.push((path.clone(), id, f.clone()));
                    }
                    for ch in f.chunks() {
                        let first = referenced.insert(ch.id);
                        match locs.get(&ch.id) {
                            // A lazy clone's chunk that only its remote holds.
                            None if first
                                && store.chunk_source().is_some_and(|s| s.has(&ch.id)) =>
                            {
                                rep.chunks_remote += 1;
                            }
                            None if first => rep.problems.push(problem(
                                "missing-chunk",
                                ch.id.to_hex(),
                                None,
                                format!("{path} of commit {} needs it", id.short()),
                            )),
                            // A reference must agree with the chunk it names, or a read
                            // would come up short or long.
                            Some(loc) if loc.raw_len != ch.len => rep.problems.push(problem(
                                "chunk-length-mismatch",
                                ch.id.to_hex(),
                                Some(loc.pack),
                                format!(
                                    "{path} of commit {} says {} bytes, the chunk holds {}",
                                    id.short(),
                                    ch.len,
                                    loc.raw_len
                                ),
                            )),
                            _ => {}
                        }
                    }
                }
            }
            Err(e) => {
                let kind = match &e {
                    StoreError::MissingObject { .. } => "missing-object",
                    StoreError::Object(crate::model::object::ObjectError::BadTree { .. }) => {
                        "malformed-tree"
                    }
                    _ => "corrupt-object",
                };
                rep.problems.push(problem(
                    kind,
                    c.tree.to_hex(),
                    None,
                    format!("tree of commit {}: {e}", id.short()),
                ))
            }
        }
    }
    rep.chunks_referenced = referenced.len() as u64;
    Ok(files)
}

/// What the file pass leaves to the chunk pass.
struct FilePass {
    /// Chunks of files that decoded whole: each was verified against its id on the way.
    verified: HashSet<ChunkId>,
    /// Files whose decoding failed on a chunk (not on their size or digest), with the error:
    /// their chunks are read one by one, and the file is reported only if none of them is
    /// found damaged (the damaged chunk is then the problem to report).
    failed: Vec<(String, CommitId, FileEntry, String)>,
}

/// Decode each distinct file whole and check its size and recorded SHA-256 (what checkout
/// checks only with `--paranoid`): one file per content, those of slice `subset` by the first
/// bytes of their digest. Files with a chunk that is not local (a lazy clone's) are left to
/// that problem.
fn verify_files(
    store: &Store,
    opts: &FsckOptions,
    locs: &HashMap<ChunkId, ChunkLoc>,
    mut files: Vec<FileToCheck>,
    progress: &dyn Progress,
    rep: &mut FsckReport,
) -> FilePass {
    use crate::ops::read::ReadError;
    files.retain(|(_, _, f)| {
        let x = u64::from_le_bytes(f.sha256[..8].try_into().expect("8 bytes"));
        opts.subset.is_none_or(|(i, n)| x % n == i - 1)
            && f.chunks().all(|c| locs.contains_key(&c.id))
    });
    let mut pass = FilePass {
        verified: HashSet::new(),
        failed: Vec::new(),
    };
    progress.begin("fsck files", files.iter().map(|(_, _, f)| f.size).sum());
    for (path, commit, f) in files {
        match crate::ops::read::write_file_to(
            store,
            &path,
            &f,
            &mut std::io::sink(),
            true,
            progress,
        ) {
            Ok(()) => {
                rep.files_verified += 1;
                pass.verified.extend(f.chunks().map(|c| c.id));
            }
            // Every chunk decoded and matched its id; the file's record is what is wrong.
            Err(e @ (ReadError::SizeMismatch { .. } | ReadError::Sha256Mismatch { .. })) => {
                pass.verified.extend(f.chunks().map(|c| c.id));
                rep.problems.push(problem(
                    "file-digest-mismatch",
                    format!("{}:{path}", commit.short()),
                    None,
                    e.to_string(),
                ));
            }
            Err(e) => pass.failed.push((path, commit, f, e.to_string())),
        }
    }
    progress.end();
    pass
}

/// Read back (decode and verify) every indexed chunk of slice `subset` (all without one) that
/// the file pass did not verify, and every chunk of a file that failed there, in parallel;
/// record the ones that fail as damaged. A failed file none of whose chunks is damaged (a
/// read error that did not recur) is reported as a `file-digest-mismatch` with its error.
fn read_data(
    store: &Store,
    opts: &FsckOptions,
    locs: &HashMap<ChunkId, ChunkLoc>,
    files: FilePass,
    progress: &dyn Progress,
    rep: &mut FsckReport,
) {
    let in_slice = |c: &ChunkId| {
        let x = u64::from_le_bytes(c.0[..8].try_into().expect("8 bytes"));
        opts.subset.is_none_or(|(i, n)| x % n == i - 1)
    };
    // In id order, as the chunk pass always read them.
    let mut todo: std::collections::BTreeSet<ChunkId> = locs
        .keys()
        .filter(|c| in_slice(c) && !files.verified.contains(c))
        .copied()
        .collect();
    todo.extend(
        files
            .failed
            .iter()
            .flat_map(|(_, _, f, _)| f.chunks().map(|c| c.id)),
    );
    let ids: Vec<ChunkId> = todo.into_iter().collect();
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
    for id in &files.verified {
        rep.chunks_read += 1;
        rep.bytes_read += locs[id].raw_len;
    }
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
    let bad: HashSet<&ChunkId> = damaged.iter().collect();
    for (path, commit, f, err) in &files.failed {
        if !f.chunks().any(|c| bad.contains(&c.id)) {
            rep.problems.push(problem(
                "file-digest-mismatch",
                format!("{}:{path}", commit.short()),
                None,
                err.clone(),
            ));
        }
    }
    if !damaged.is_empty() {
        // Remember them so a commit or `repair --from` heals them; ignore a read-only store.
        let _ = store.with_writer(|index| -> Result<_, FsckError> {
            let mut b = index.batch()?;
            for id in &damaged {
                b.put_damaged(id)?;
            }
            index.write(b)?;
            Ok(())
        });
    }
}
