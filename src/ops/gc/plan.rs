//! Building the gc [`Plan`]: what `gc --dry-run` prints and what [`super::execute`] then does,
//! exactly. Planning reads the index, commit and tree objects, the staging area and the packs
//! directory listing; it never reads chunk data and changes nothing.
//!
//! Invariants:
//! - Fail closed: every error listing refs or reading a commit row, commit or tree is returned,
//!   so gc never acts on a plan built from a partial view of the roots.
//! - Every ref's target is kept; a branch outside the scope protects its whole history.
//! - A chunk is dead only if no kept commit (minus its released files) and no staged part of a
//!   live sharded commit references it.
//!
//! The phases, in order, each a function below: [`Planner::roots`], [`Planner::decide_rules`],
//! [`Planner::protect_out_of_scope`], [`keep_ref_targets`], [`Planner::reachable`],
//! [`Planner::commit_fates`], [`Planner::pending_roots`], [`delta_bases`], [`dead_chunks`],
//! [`Planner::pack_fates`] and [`Planner::orphan_files`].
#![warn(missing_docs)]

use super::policy::{Retention, apply_rules};
use super::stored::{doomed_packs, io_at};
use super::{GcError, GcOptions};
use crate::model::dtype::DType;
use crate::model::id::{ChunkId, CommitId, PackId};
use crate::model::object::Tree;
use crate::storage::index::{CF_MARKS, CF_OBJECTS, ChunkLoc, CommitRow, Index, ObjectLoc};
use crate::storage::lock;
use crate::storage::pack::pack_file_name;
use crate::storage::refs::{HEADS, TAGS, branch_ref, short_name};
use crate::storage::state::CommitState;
use crate::storage::store::{Store, now_ns};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// What happens to one commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// A rule (or a ref, or being out of scope) keeps all its data.
    Keep,
    /// No rule keeps it: all its chunk data is released; its commit and tree objects stay.
    Prune,
    /// Kept, but the files matching the `slim` globs are released.
    Slim,
    /// An earlier gc pruned it; nothing more to release.
    AlreadyPruned,
}

/// One commit in the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanCommit {
    /// The commit id, 64 hex digits.
    pub id: String,
    /// The training step it records, if any.
    pub step: Option<u64>,
    /// When it was made, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// What happens to it.
    pub decision: Decision,
    /// The rules that keep it (`head of main`, `tag best`, `keep-last 5`, ...), or why not.
    pub reasons: Vec<String>,
    /// Files released (slim: the matching ones; prune: all).
    pub released: Vec<String>,
    /// Stored bytes of chunks this commit references that become dead: what releasing it
    /// frees. A chunk shared by several released commits counts in each of them, once in the
    /// total.
    pub frees_bytes: u64,
}

/// The plan of a gc run: exactly what executing it does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The policy applied, in its canonical text ([`Retention::to_text`]).
    pub policy: String,
    /// The branches the rules were applied to (short names).
    pub branches: Vec<String>,
    /// Every commit reachable from a ref, newest first.
    pub commits: Vec<PlanCommit>,
    /// Chunks that become dead.
    pub dead_chunks: u64,
    /// Their stored bytes.
    pub dead_bytes: u64,
    /// Live chunks delta-coded against a chunk that dies: gc re-encodes each on its own (no
    /// base), so their bases and the bases' dead ancestors are freed too. `reencode_bytes` is
    /// what they store now; a full encoding is usually larger.
    pub reencode_chunks: u64,
    /// Stored bytes of the chunks to re-encode, as they are stored now.
    pub reencode_bytes: u64,
    /// Dead chunks those delta chains need: counted in `dead_chunks` (an immediate gc frees
    /// them), kept alive only by a deferred gc (commits running), which cannot re-encode.
    pub kept_as_delta_base: u64,
    /// Packs whose every entry is dead: deleted.
    pub delete_packs: Vec<String>,
    /// Packs with more than the threshold dead: live entries copied to a new pack.
    pub repack_packs: Vec<String>,
    /// Chunks marked dead by an earlier deferred run and still dead: deleted now.
    pub marked_chunks: u64,
    /// Pack files the index does not know (left by a crashed commit before its publish, or by
    /// an abandoned sharded commit) and `.pack.tmp` files no writer holds: removed when no
    /// writer is running.
    pub orphan_files: Vec<String>,
    /// Sharded commits with no part staged for 24 h: their manifests are removed.
    pub abandoned_txns: Vec<String>,
}

/// The chunk sets a plan was computed from: execution acts on exactly these.
pub(super) struct Work {
    /// Dead chunks (an immediate gc deletes them all).
    pub(super) dead: HashSet<ChunkId>,
    /// Live chunks whose delta base dies, with their element type when a kept tree names it:
    /// re-encoded on their own by an immediate gc.
    pub(super) reencode: Vec<(ChunkId, Option<DType>)>,
    /// The dead bases (and their dead ancestors) those chunks need: a deferred gc, which cannot
    /// re-encode, leaves them alive.
    pub(super) bases: HashSet<ChunkId>,
    /// Every commit the plan reached from the refs: a commit outside it was published while gc
    /// ran, and its chunks are live whatever the plan says.
    pub(super) reachable: HashSet<CommitId>,
    /// Every chunk the index held when the plan was made, where it was: a chunk outside it was
    /// written while gc ran, and a location that changed since is not gc's to move.
    pub(super) known: HashMap<ChunkId, ChunkLoc>,
}

/// Build the plan. Reads only the index and tree objects, never chunk data.
pub fn plan(store: &Store, opts: &GcOptions) -> Result<Plan, GcError> {
    Ok(plan_with_dead(store, opts)?.0)
}

/// The plan and the chunk sets it was computed from.
pub(super) fn plan_with_dead(store: &Store, opts: &GcOptions) -> Result<(Plan, Work), GcError> {
    let p = Planner {
        store,
        view: store.view(),
        opts,
        now: opts.now_ns.unwrap_or_else(now_ns),
    };
    let roots = p.roots()?;
    let slim = glob_set(&opts.retention.slim)?;
    let mut rules = p.decide_rules(&roots.scope)?;
    p.protect_out_of_scope(&roots, &mut rules.candidates)?;
    keep_ref_targets(&roots, &mut rules.reasons);
    let reachable = p.reachable(&roots)?;
    let mut locs: HashMap<ChunkId, ChunkLoc> = HashMap::new();
    p.view.chunks(|id, loc| {
        locs.insert(id, loc);
    })?;
    let inputs = FateInputs {
        retention: &opts.retention,
        rules: &rules,
        slim: &slim,
        locs: &locs,
    };
    let mut fates = p.commit_fates(&reachable, &inputs)?;
    let (pending_packs, abandoned_txns) = p.pending_roots(&mut fates.live)?;
    let bases = delta_bases(&fates.live, &locs, &fates.dtypes);
    let dead = dead_chunks(&fates.live, &locs);
    for (i, chunks) in &fates.releasing {
        fates.commits[*i].frees_bytes = chunks
            .iter()
            .filter(|c| dead.contains(c))
            .filter_map(|c| locs.get(c).map(|l| l.stored_len))
            .sum();
    }
    let dead_bytes = dead
        .iter()
        .filter_map(|c| locs.get(c).map(|l| l.stored_len))
        .sum();
    let marked = p
        .view
        .ids(CF_MARKS)?
        .into_iter()
        .map(ChunkId)
        .filter(|c| dead.contains(c))
        .count() as u64;
    let packs = p.pack_fates(&locs, &dead, &bases.reencoding)?;
    let orphan_files = p.orphan_files(&packs.known, &pending_packs)?;
    let mut commits = fates.commits;
    commits.sort_by(|a, b| b.time_ns.cmp(&a.time_ns).then(a.id.cmp(&b.id)));
    let plan = Plan {
        policy: opts.retention.to_text(),
        branches: roots.scope,
        commits,
        dead_chunks: dead.len() as u64,
        dead_bytes,
        reencode_chunks: bases.reencode.len() as u64,
        reencode_bytes: bases.reencode_bytes,
        kept_as_delta_base: bases.bases.len() as u64,
        delete_packs: packs.delete,
        repack_packs: packs.repack,
        marked_chunks: marked,
        orphan_files,
        abandoned_txns: abandoned_txns.into_iter().collect(),
    };
    let work = Work {
        dead,
        reencode: bases.reencode,
        bases: bases.bases,
        reachable: reachable.keys().copied().collect(),
        known: locs,
    };
    Ok((plan, work))
}

/// What every phase reads: the store, one view of its index, the options and the time rules
/// count back from.
struct Planner<'a> {
    store: &'a Store,
    view: Arc<Index>,
    opts: &'a GcOptions,
    /// `keep-within` counts back from here, and staged parts older than 24 h before it are
    /// abandoned (nanoseconds since the epoch).
    now: i64,
}

/// Phase 1: the roots and the branches the rules apply to.
struct Roots {
    /// Every branch (full ref name) and its head.
    branches: Vec<(String, CommitId)>,
    /// Every tag (full ref name) and its target.
    tags: Vec<(String, CommitId)>,
    /// Short names of the branches in scope.
    scope: Vec<String>,
}

/// Phase 2: what the rules decided on the branches in scope.
struct Rules {
    /// Commits of in-scope first-parent histories: the ones gc may prune or slim.
    candidates: BTreeMap<CommitId, CommitRow>,
    /// Why each kept commit is kept.
    reasons: HashMap<CommitId, Vec<String>>,
    /// The newest `slim-keep-last` commits of each in-scope branch.
    slim_exempt: HashSet<CommitId>,
}

/// Phase 6: the fate of every reachable commit, and the chunks that stay live.
#[derive(Default)]
struct Fates {
    /// One entry per reachable commit, in id order.
    commits: Vec<PlanCommit>,
    /// Chunks some kept commit still references (outside its released files).
    live: HashSet<ChunkId>,
    /// Element types of live delta-coded chunks, for re-encoding one whose base dies.
    dtypes: HashMap<ChunkId, DType>,
    /// For each commit releasing data (an index into `commits`), the chunks it releases.
    releasing: Vec<(usize, HashSet<ChunkId>)>,
}

/// What phase 6 decides each commit from.
struct FateInputs<'a> {
    retention: &'a Retention,
    rules: &'a Rules,
    slim: &'a globset::GlobSet,
    locs: &'a HashMap<ChunkId, ChunkLoc>,
}

/// Phase 8: live chunks whose delta base dies.
struct Bases {
    /// Those chunks, sorted, with their element type when known.
    reencode: Vec<(ChunkId, Option<DType>)>,
    /// The same chunks, as a set.
    reencoding: HashSet<ChunkId>,
    /// The dead bases they need, and those bases' dead ancestors.
    bases: HashSet<ChunkId>,
    /// Stored bytes of the chunks in `reencode`.
    reencode_bytes: u64,
}

/// Phase 10: what happens to each pack.
struct PackFates {
    /// Packs with no live entry: deleted (hex ids, sorted).
    delete: Vec<String>,
    /// Packs over the dead-bytes threshold: rewritten (hex ids, sorted).
    repack: Vec<String>,
    /// File names of every pack the index knows.
    known: HashSet<String>,
}

impl Planner<'_> {
    /// Phase 1: roots are every ref. Any failure here is returned: gc that cannot list roots
    /// deletes nothing.
    fn roots(&self) -> Result<Roots, GcError> {
        let branches = self.view.refs(HEADS)?;
        let tags = self.view.refs(TAGS)?;
        let scope: Vec<String> = if self.opts.all {
            branches
                .iter()
                .map(|(n, _)| short_name(n).to_string())
                .collect()
        } else if self.opts.branches.is_empty() {
            vec![self.store.current_branch()?]
        } else {
            self.opts.branches.clone()
        };
        Ok(Roots {
            branches,
            tags,
            scope,
        })
    }

    /// Phase 2: rule decisions per in-scope branch.
    fn decide_rules(&self, scope: &[String]) -> Result<Rules, GcError> {
        let retention = &self.opts.retention;
        let mut rules = Rules {
            candidates: BTreeMap::new(),
            reasons: HashMap::new(),
            slim_exempt: HashSet::new(),
        };
        for b in scope {
            let full = branch_ref(b)?;
            let head = match self.view.get_ref(&full)? {
                Some(h) => h,
                // The current branch with no commits yet has nothing to decide.
                None if self.opts.branches.is_empty() => continue,
                None => return Err(GcError::NoSuchBranch { name: full.clone() }),
            };
            let hist = first_parent_rows(self.store, head)?;
            if retention.prunes() {
                for (id, why) in apply_rules(retention, &hist, self.now) {
                    rules.reasons.entry(id).or_default().extend(why);
                }
            }
            let n = retention.slim_keep_last.unwrap_or(0);
            rules
                .slim_exempt
                .extend(hist.iter().take(n).map(|(id, _)| *id));
            for (id, row) in hist {
                rules.candidates.insert(id, row);
            }
        }
        Ok(rules)
    }

    /// Phase 3: branches out of scope protect their whole history: a commit they share with an
    /// in-scope branch is no candidate.
    fn protect_out_of_scope(
        &self,
        roots: &Roots,
        candidates: &mut BTreeMap<CommitId, CommitRow>,
    ) -> Result<(), GcError> {
        let mut protected: HashSet<CommitId> = HashSet::new();
        for (name, head) in &roots.branches {
            if roots.scope.iter().any(|b| short_name(name) == b) {
                continue;
            }
            let mut todo = vec![*head];
            while let Some(id) = todo.pop() {
                if protected.insert(id) {
                    let row = self.commit_row(id)?;
                    todo.extend(row.parents.iter().copied());
                }
            }
        }
        candidates.retain(|id, _| !protected.contains(id));
        Ok(())
    }

    /// Phase 5: everything reachable from any ref (all parents), so every commit's fate is
    /// known.
    fn reachable(&self, roots: &Roots) -> Result<BTreeMap<CommitId, CommitRow>, GcError> {
        let mut reachable: BTreeMap<CommitId, CommitRow> = BTreeMap::new();
        let mut todo: Vec<CommitId> = roots
            .branches
            .iter()
            .chain(roots.tags.iter())
            .map(|(_, id)| *id)
            .collect();
        while let Some(id) = todo.pop() {
            if reachable.contains_key(&id) {
                continue;
            }
            let row = self.commit_row(id)?;
            todo.extend(row.parents.iter().copied());
            reachable.insert(id, row);
        }
        Ok(reachable)
    }

    /// The index row of a commit a ref or parent link names; a missing one fails the plan.
    fn commit_row(&self, id: CommitId) -> Result<CommitRow, GcError> {
        self.view
            .commit_row(&id)?
            .ok_or(GcError::MissingCommit { id })
    }

    /// Phase 6: decide every reachable commit from its tree and state record.
    fn commit_fates(
        &self,
        reachable: &BTreeMap<CommitId, CommitRow>,
        inputs: &FateInputs<'_>,
    ) -> Result<Fates, GcError> {
        let mut fates = Fates::default();
        for (id, row) in reachable {
            let c = self.store.commit(*id)?;
            let tree = self.store.tree(c.tree)?;
            let state: CommitState = crate::storage::state::state(self.store, *id)?;
            let pc = inputs.decide(*id, row, &tree, &state, &mut fates);
            fates.commits.push(pc);
        }
        Ok(fates)
    }

    /// Phase 7: staged parts of uncommitted sharded commits are roots too, unless abandoned.
    /// Returns the file names of their packs and the abandoned transactions.
    fn pending_roots(
        &self,
        live: &mut HashSet<ChunkId>,
    ) -> Result<(HashSet<String>, BTreeSet<String>), GcError> {
        let pending = crate::storage::staging::pending(self.store, self.now)?;
        let mut pending_packs: HashSet<String> = HashSet::new();
        let mut abandoned_txns: BTreeSet<String> = BTreeSet::new();
        for p in &pending {
            if p.abandoned {
                abandoned_txns.insert(p.txn.clone());
            } else {
                live.extend(p.chunks.iter().copied());
                pending_packs.extend(p.packs.iter().map(|id| pack_file_name(*id)));
            }
        }
        Ok((pending_packs, abandoned_txns))
    }

    /// Phase 10: live bytes per pack decide delete / repack / keep.
    fn pack_fates(
        &self,
        locs: &HashMap<ChunkId, ChunkLoc>,
        dead: &HashSet<ChunkId>,
        reencoding: &HashSet<ChunkId>,
    ) -> Result<PackFates, GcError> {
        let threshold = self.opts.repack_threshold.unwrap_or(0.3);
        // Stored chunk bytes per pack, all and live, in one pass over the locations.
        let mut chunk_bytes: HashMap<PackId, u64> = HashMap::new();
        let mut live_bytes: HashMap<PackId, u64> = HashMap::new();
        for (id, loc) in locs {
            *chunk_bytes.entry(loc.pack).or_default() += loc.stored_len;
            // A re-encoded chunk's new copy goes to the new pack; its old copy is dead weight.
            if !dead.contains(id) && !reencoding.contains(id) {
                *live_bytes.entry(loc.pack).or_default() += loc.stored_len;
            }
        }
        let mut object_packs: HashSet<PackId> = HashSet::new();
        self.view.for_each(CF_OBJECTS, |_, v| {
            if let Ok(loc) = postcard::from_bytes::<ObjectLoc>(v) {
                object_packs.insert(loc.pack);
            }
            Ok(())
        })?;
        let packs = self.view.packs()?;
        let mut delete = Vec::new();
        let mut repack = Vec::new();
        for (pack, info) in &packs {
            let live_b = live_bytes.get(pack).copied().unwrap_or(0);
            if live_b == 0 && !object_packs.contains(pack) {
                delete.push(pack.to_hex());
            } else if let Some(all) = chunk_bytes.get(pack) {
                let dead_b = all - live_b;
                if info.size > 0 && dead_b as f64 > threshold * info.size as f64 {
                    repack.push(pack.to_hex());
                }
            }
        }
        delete.sort();
        repack.sort();
        let known = packs.iter().map(|(p, _)| pack_file_name(*p)).collect();
        Ok(PackFates {
            delete,
            repack,
            known,
        })
    }

    /// Phase 11: pack files the index does not know, staged parts do not hold and the doomed
    /// list does not name, and `.pack.tmp` files no writer holds locked.
    fn orphan_files(
        &self,
        known: &HashSet<String>,
        pending_packs: &HashSet<String>,
    ) -> Result<Vec<String>, GcError> {
        let doomed: HashSet<String> = doomed_packs(self.store)?
            .iter()
            .map(|p| pack_file_name(*p))
            .collect();
        let mut orphan_files = Vec::new();
        let d = self.store.packs_dir();
        for e in std::fs::read_dir(&d).map_err(io_at(&d))? {
            let e = e.map_err(io_at(&d))?;
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".pack.tmp") {
                // A live writer holds its tmp pack locked.
                if !lock::is_locked(&e.path()).unwrap_or(true) {
                    orphan_files.push(name);
                }
            } else if name.ends_with(".pack")
                && !known.contains(&name)
                && !pending_packs.contains(&name)
                && !doomed.contains(&name)
            {
                orphan_files.push(name);
            }
        }
        orphan_files.sort();
        Ok(orphan_files)
    }
}

/// The files of the packs directory that nothing owns now: orphans as the plan defines them
/// (`Planner::orphan_files`), against the packs the index knows now, the packs of staged parts
/// `pending_packs`, and `ours` (gc's own new pack, not indexed yet). Called with `writers.lock`
/// held, so no commit is between writing a pack and indexing it.
pub(super) fn orphan_files_now(
    store: &Store,
    pending_packs: &HashSet<String>,
    ours: &HashSet<String>,
) -> Result<Vec<String>, GcError> {
    let p = Planner {
        store,
        view: store.view(),
        opts: &GcOptions::default(),
        now: now_ns(),
    };
    let mut known: HashSet<String> = p
        .view
        .packs()?
        .into_iter()
        .map(|(id, _)| pack_file_name(id))
        .collect();
    known.extend(ours.iter().cloned());
    p.orphan_files(&known, pending_packs)
}

/// Phase 4: every ref's target is always kept, in or out of scope.
fn keep_ref_targets(roots: &Roots, reasons: &mut HashMap<CommitId, Vec<String>>) {
    for (name, id) in roots.branches.iter().chain(roots.tags.iter()) {
        let kind = if name.starts_with(HEADS) {
            "head of"
        } else {
            "tag"
        };
        reasons
            .entry(*id)
            .or_default()
            .push(format!("{kind} {}", short_name(name)));
    }
}

impl FateInputs<'_> {
    /// Phase 6, one commit: keep, prune, slim, or already pruned. Records in `fates` the
    /// chunks it keeps live and the ones it releases.
    fn decide(
        &self,
        id: CommitId,
        row: &CommitRow,
        tree: &Tree,
        state: &CommitState,
        fates: &mut Fates,
    ) -> PlanCommit {
        let mut pc = PlanCommit {
            id: id.to_hex(),
            step: row.step,
            time_ns: row.time_ns,
            decision: Decision::Keep,
            reasons: self.rules.reasons.get(&id).cloned().unwrap_or_default(),
            released: Vec::new(),
            frees_bytes: 0,
        };
        let already: BTreeSet<String> = match &state.pruned {
            Some(p) if p.released.is_empty() => tree.files.keys().cloned().collect(),
            Some(p) => p.released.iter().cloned().collect(),
            None => BTreeSet::new(),
        };
        let in_scope = self.rules.candidates.contains_key(&id);
        let kept = !pc.reasons.is_empty() || !in_scope || !self.retention.prunes();
        if state.pruned.as_ref().is_some_and(|p| p.released.is_empty()) {
            pc.decision = Decision::AlreadyPruned;
            pc.released = already.iter().cloned().collect();
        } else if !kept {
            pc.decision = Decision::Prune;
            pc.reasons.push("no rule keeps it".into());
            pc.released = tree.files.keys().cloned().collect();
            let all: HashSet<ChunkId> = tree.chunk_ids().collect();
            fates.releasing.push((fates.commits.len(), all));
        } else {
            self.keep_or_slim(id, tree, &already, in_scope, &mut pc, fates);
        }
        pc
    }

    /// A kept commit: release its files matching the `slim` globs if it may be slimmed, and
    /// keep the chunks of the rest live.
    fn keep_or_slim(
        &self,
        id: CommitId,
        tree: &Tree,
        already: &BTreeSet<String>,
        in_scope: bool,
        pc: &mut PlanCommit,
        fates: &mut Fates,
    ) {
        let is_ref_target = pc
            .reasons
            .iter()
            .any(|r| r.starts_with("head of") || r.starts_with("tag "));
        let slimmable = in_scope
            && !is_ref_target
            && !self.rules.slim_exempt.contains(&id)
            && !self.retention.slim.is_empty();
        let mut released = already.clone();
        if slimmable {
            for p in tree.files.keys() {
                let name = p.rsplit('/').next().unwrap_or(p);
                if self.slim.is_match(p) || self.slim.is_match(name) {
                    released.insert(p.clone());
                }
            }
        }
        if released.len() > already.len() {
            pc.decision = Decision::Slim;
            let newly: BTreeSet<String> = released.difference(already).cloned().collect();
            let freed: HashSet<ChunkId> = tree
                .files
                .iter()
                .filter(|(p, _)| newly.contains(*p))
                .flat_map(|(_, f)| f.chunks().map(|c| c.id))
                .collect();
            fates.releasing.push((fates.commits.len(), freed));
        }
        pc.released = released.iter().cloned().collect();
        fates.live.extend(tree.chunk_ids_except(&released));
        for (p, f) in &tree.files {
            if released.contains(p) {
                continue;
            }
            for seg in &f.segments {
                if let Some((_, dtype, _)) = seg.tensor() {
                    for c in &seg.chunks {
                        if self.locs.get(&c.id).is_some_and(|l| l.base.is_some()) {
                            fates.dtypes.insert(c.id, dtype);
                        }
                    }
                }
            }
        }
    }
}

/// Phase 8, delta bases. A live chunk whose base is live needs nothing more. One whose base
/// dies is re-encoded on its own, so the base (and its dead ancestors) can go; a deferred gc,
/// which cannot rewrite chunks, keeps those bases alive instead.
fn delta_bases(
    live: &HashSet<ChunkId>,
    locs: &HashMap<ChunkId, ChunkLoc>,
    dtypes: &HashMap<ChunkId, DType>,
) -> Bases {
    let mut reencode: Vec<(ChunkId, Option<DType>)> = live
        .iter()
        .filter(|id| {
            locs.get(id)
                .and_then(|l| l.base)
                .is_some_and(|b| !live.contains(&b))
        })
        .map(|id| (*id, dtypes.get(id).copied()))
        .collect();
    reencode.sort_by_key(|(id, _)| *id);
    let reencoding: HashSet<ChunkId> = reencode.iter().map(|(id, _)| *id).collect();
    let mut bases: HashSet<ChunkId> = HashSet::new();
    let mut todo: Vec<ChunkId> = reencode
        .iter()
        .filter_map(|(id, _)| locs.get(id).and_then(|l| l.base))
        .collect();
    while let Some(b) = todo.pop() {
        if !live.contains(&b) && bases.insert(b) {
            todo.extend(locs.get(&b).and_then(|l| l.base));
        }
    }
    let reencode_bytes = reencode
        .iter()
        .filter_map(|(id, _)| locs.get(id).map(|l| l.stored_len))
        .sum();
    Bases {
        reencode,
        reencoding,
        bases,
        reencode_bytes,
    }
}

/// Phase 9: every indexed chunk that is not live.
fn dead_chunks(live: &HashSet<ChunkId>, locs: &HashMap<ChunkId, ChunkLoc>) -> HashSet<ChunkId> {
    locs.keys()
        .filter(|id| !live.contains(id))
        .copied()
        .collect()
}

/// The first-parent history of `head`, newest first, from index rows.
fn first_parent_rows(store: &Store, head: CommitId) -> Result<Vec<(CommitId, CommitRow)>, GcError> {
    let view = store.view();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some(head);
    while let Some(id) = next {
        if !seen.insert(id) {
            break;
        }
        let row = view.commit_row(&id)?.ok_or(GcError::MissingCommit { id })?;
        next = row.parents.first().copied();
        out.push((id, row));
    }
    Ok(out)
}

fn glob_set(globs: &[String]) -> Result<globset::GlobSet, GcError> {
    let mut b = globset::GlobSetBuilder::new();
    for g in globs {
        b.add(globset::Glob::new(g).map_err(|error| GcError::BadSlimGlob {
            glob: g.clone(),
            error,
        })?);
    }
    b.build().map_err(|error| GcError::BadSlimGlobs { error })
}
