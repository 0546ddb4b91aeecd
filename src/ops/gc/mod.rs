//! Retention and garbage collection: which commits keep their data, and reclaiming the space of
//! the rest. gc is a printable plan, then the execution of exactly that plan.
//!
//! Safety argument (docs/architecture.md, "Garbage collection", says it at length):
//! - Fail closed: the plan starts from every ref in the index; if listing refs, reading a
//!   commit or reading a tree fails, gc stops before deleting anything.
//! - Lineage survives: a pruned commit keeps its commit and tree objects (log, show and diff
//!   still see metrics, config and provenance); only chunk data is released. The pruned record
//!   lives in the `states` column family and the `statelog`, never in the hashed commit.
//! - Live data: every chunk referenced by a commit that is not pruned (minus the released files
//!   of slimmed commits). Only chunks outside that set are removed. A live chunk delta-coded
//!   against a dead one is first re-encoded on its own (verified on the way), in a new pack that
//!   is durable before the index batch points at it, so no live chunk ever needs a removed one.
//!   A deferred gc, which rewrites nothing, leaves such bases alive and unmarked.
//! - Writers: a commit holds `locks/writers.lock` shared from before its dedup checks until its
//!   publish. gc deletes only while holding it exclusively (taken without waiting, so it never
//!   blocks training); when a writer is running, gc marks dead chunks instead, and a writer that
//!   reuses a marked chunk clears the mark in its publish batch. A later gc deletes chunks still
//!   marked and still dead.
//! - Readers: pack files are unlinked only while gc holds `locks/readers.lock` exclusively;
//!   otherwise they are listed as doomed and removed by a later run. Packs are never truncated,
//!   so even a reader that mapped a pack before it was unlinked reads correct bytes.
//! - Order: repacked data is written to a new pack and fsynced (with its directory) before the
//!   one index batch that drops dead chunks, re-points moved ones and records pruned commits;
//!   pack files are unlinked only after that batch is durable.

use crate::error::{Error, Result, io_at};
use crate::model::id::{ChunkId, CommitId, PackId};
use crate::storage::error::StoreError;
use crate::storage::index::{ChunkLoc, CommitRow, PackInfo};
use crate::storage::lock;
use crate::storage::pack::{PackReader, PackWriter, pack_file_name};
use crate::storage::state::{CommitState, PruneRecord};
use crate::storage::store::{Store, now_ns};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Which way a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Min,
    Max,
}

/// Retention rules; a commit kept by any rule is kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    pub keep_last: Option<usize>,
    pub keep_best: Vec<(usize, String, Direction)>,
    pub keep_improving: Vec<(String, Direction)>,
    pub keep_every: Option<u64>,
    /// Keep commits younger than this many nanoseconds.
    pub keep_within_ns: Option<i64>,
    /// Release files matching these globs from commits older than the last `slim_keep_last`.
    pub slim: Vec<String>,
    pub slim_keep_last: Option<usize>,
}

fn usage(what: String) -> Error {
    Error::Usage { what }
}

fn parse_dir(s: &str, ctx: &str) -> Result<Direction> {
    match s {
        "min" => Ok(Direction::Min),
        "max" => Ok(Direction::Max),
        _ => Err(usage(format!("{ctx}: direction {s:?} must be min or max"))),
    }
}

/// `K:METRIC:min|max`.
pub fn parse_keep_best(s: &str) -> Result<(usize, String, Direction)> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [k, m, d] if !m.is_empty() => Ok((
            k.parse()
                .map_err(|_| usage(format!("keep-best {s}: {k:?} is not a count")))?,
            m.to_string(),
            parse_dir(d, &format!("keep-best {s}"))?,
        )),
        _ => Err(usage(format!("keep-best {s:?}: expected K:METRIC:min|max"))),
    }
}

/// `METRIC:min|max`.
pub fn parse_keep_improving(s: &str) -> Result<(String, Direction)> {
    match s.split_once(':') {
        Some((m, d)) if !m.is_empty() => {
            Ok((m.to_string(), parse_dir(d, &format!("keep-improving {s}"))?))
        }
        _ => Err(usage(format!(
            "keep-improving {s:?}: expected METRIC:min|max"
        ))),
    }
}

/// A duration like `7d`, `12h`, `30m`, `90s`, `2w` (humantime syntax).
pub fn parse_duration_ns(s: &str) -> Result<i64> {
    let d = humantime::parse_duration(s).map_err(|e| usage(format!("keep-within {s:?}: {e}")))?;
    i64::try_from(d.as_nanos()).map_err(|_| usage(format!("keep-within {s:?}: too long")))
}

impl Retention {
    /// Parse a stored policy: comma-separated rules, each `NAME VALUE`, e.g.
    /// `keep-last 5, keep-best 3:val_loss:min, keep-every 1000, keep-within 7d,
    /// keep-improving val_loss:min, slim optimizer.pt, slim-keep-last 2`.
    pub fn parse(text: &str) -> Result<Retention> {
        let mut r = Retention::default();
        for rule in text.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (name, value) = rule
                .split_once(char::is_whitespace)
                .map(|(a, b)| (a.trim(), b.trim()))
                .ok_or_else(|| usage(format!("retention rule {rule:?}: expected NAME VALUE")))?;
            let count = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| usage(format!("retention rule {rule:?}: {v:?} is not a count")))
            };
            match name {
                "keep-last" => r.keep_last = Some(count(value)? as usize),
                "keep-best" => r.keep_best.push(parse_keep_best(value)?),
                "keep-improving" => r.keep_improving.push(parse_keep_improving(value)?),
                "keep-every" => {
                    let n = count(value)?;
                    if n == 0 {
                        return Err(usage("keep-every 0: must be at least 1".into()));
                    }
                    r.keep_every = Some(n);
                }
                "keep-within" => r.keep_within_ns = Some(parse_duration_ns(value)?),
                "slim" => r.slim.push(value.to_string()),
                "slim-keep-last" => r.slim_keep_last = Some(count(value)? as usize),
                _ => return Err(usage(format!("unknown retention rule {name:?}"))),
            }
        }
        Ok(r)
    }

    /// The canonical text of the policy (what `parse` reads back).
    pub fn to_text(&self) -> String {
        let d = |d: &Direction| if *d == Direction::Min { "min" } else { "max" };
        let mut v = Vec::new();
        if let Some(n) = self.keep_last {
            v.push(format!("keep-last {n}"));
        }
        for (k, m, dir) in &self.keep_best {
            v.push(format!("keep-best {k}:{m}:{}", d(dir)));
        }
        for (m, dir) in &self.keep_improving {
            v.push(format!("keep-improving {m}:{}", d(dir)));
        }
        if let Some(n) = self.keep_every {
            v.push(format!("keep-every {n}"));
        }
        if let Some(ns) = self.keep_within_ns {
            v.push(format!(
                "keep-within {}",
                humantime::format_duration(std::time::Duration::from_nanos(ns as u64))
            ));
        }
        for g in &self.slim {
            v.push(format!("slim {g}"));
        }
        if let Some(n) = self.slim_keep_last {
            v.push(format!("slim-keep-last {n}"));
        }
        v.join(", ")
    }

    pub fn prunes(&self) -> bool {
        self.keep_last.is_some()
            || !self.keep_best.is_empty()
            || !self.keep_improving.is_empty()
            || self.keep_every.is_some()
            || self.keep_within_ns.is_some()
    }
}

/// Options of a gc run.
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    pub retention: Retention,
    /// Branches whose history the rules apply to; empty = the current branch.
    pub branches: Vec<String>,
    /// Apply the rules to every branch.
    pub all: bool,
    /// Repack a pack when more than this fraction of its bytes is dead (default 0.3).
    pub repack_threshold: Option<f64>,
    /// Evaluate `keep-within` against this time instead of now (tests, reproducible plans).
    pub now_ns: Option<i64>,
}

/// What happens to one commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Keep,
    Prune,
    Slim,
    AlreadyPruned,
}

/// One commit in the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanCommit {
    pub id: String,
    pub step: Option<u64>,
    pub time_ns: i64,
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
    pub policy: String,
    pub branches: Vec<String>,
    pub commits: Vec<PlanCommit>,
    /// Chunks that become dead, with their stored bytes.
    pub dead_chunks: u64,
    pub dead_bytes: u64,
    /// Live chunks delta-coded against a chunk that dies: gc re-encodes each on its own (no
    /// base), so their bases and the bases' dead ancestors are freed too. `reencode_bytes` is
    /// what they store now; a full encoding is usually larger.
    pub reencode_chunks: u64,
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

/// What a gc run did.
#[derive(Clone, Debug, Serialize)]
pub struct GcOutcome {
    pub plan: Plan,
    pub dry_run: bool,
    /// `immediate`: data deleted now; `deferred`: writers were running, dead chunks marked for
    /// a later run.
    pub mode: String,
    pub chunks_removed: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    /// Chunks re-encoded without their dying delta base.
    pub chunks_reencoded: u64,
    /// Pack files left for a later run because a reader held `readers.lock`.
    pub packs_doomed: u64,
    pub disk_bytes_before: u64,
    pub disk_bytes_after: u64,
}

fn short_rule(r: &(usize, String, Direction)) -> String {
    format!(
        "keep-best {}:{}:{}",
        r.0,
        r.1,
        if r.2 == Direction::Min { "min" } else { "max" }
    )
}

fn better(a: f64, b: f64, d: Direction) -> bool {
    match d {
        Direction::Min => a < b,
        Direction::Max => a > b,
    }
}

/// Decide, for the first-parent history of one branch (newest first), which rules keep which
/// commit. Pure: the unit tests exercise every rule on rows.
pub fn apply_rules(
    r: &Retention,
    history: &[(CommitId, CommitRow)],
    now: i64,
) -> HashMap<CommitId, Vec<String>> {
    let mut keep: HashMap<CommitId, Vec<String>> = HashMap::new();
    let mut add = |id: CommitId, why: String| keep.entry(id).or_default().push(why);
    if let Some(n) = r.keep_last {
        for (id, _) in history.iter().take(n) {
            add(*id, format!("keep-last {n}"));
        }
    }
    for rule in &r.keep_best {
        let (k, m, d) = rule;
        let mut cands: Vec<(usize, f64)> = history
            .iter()
            .enumerate()
            .filter_map(|(i, (_, row))| row.metrics.get(m).filter(|v| !v.is_nan()).map(|v| (i, *v)))
            .collect();
        // Best first; ties go to the newer commit (smaller index: history is newest first).
        cands.sort_by(|(ia, a), (ib, b)| {
            let o = a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal);
            let o = if *d == Direction::Max { o.reverse() } else { o };
            o.then(ia.cmp(ib))
        });
        for (i, _) in cands.into_iter().take(*k) {
            add(history[i].0, short_rule(rule));
        }
    }
    for (m, d) in &r.keep_improving {
        let mut best: Option<f64> = None;
        for (id, row) in history.iter().rev() {
            if let Some(v) = row.metrics.get(m).filter(|v| !v.is_nan())
                && best.is_none_or(|b| better(*v, b, *d))
            {
                best = Some(*v);
                add(
                    *id,
                    format!(
                        "keep-improving {m}:{}",
                        if *d == Direction::Min { "min" } else { "max" }
                    ),
                );
            }
        }
    }
    if let Some(n) = r.keep_every {
        for (id, row) in history {
            if row.step.is_some_and(|s| s % n == 0) {
                add(*id, format!("keep-every {n}"));
            }
        }
    }
    if let Some(w) = r.keep_within_ns {
        for (id, row) in history {
            if now.saturating_sub(row.time_ns) <= w {
                add(
                    *id,
                    format!(
                        "keep-within {}",
                        humantime::format_duration(std::time::Duration::from_nanos(w as u64))
                    ),
                );
            }
        }
    }
    keep
}

/// The first-parent history of `head`, newest first, from index rows.
fn first_parent_rows(store: &Store, head: CommitId) -> Result<Vec<(CommitId, CommitRow)>> {
    let view = store.view();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some(head);
    while let Some(id) = next {
        if !seen.insert(id) {
            break;
        }
        let row = view
            .commit_row(&id)?
            .ok_or(StoreError::MissingObject { id: id.into() })?;
        next = row.parents.first().copied();
        out.push((id, row));
    }
    Ok(out)
}

fn glob_set(globs: &[String]) -> Result<globset::GlobSet> {
    let mut b = globset::GlobSetBuilder::new();
    for g in globs {
        b.add(globset::Glob::new(g).map_err(|e| usage(format!("slim {g:?}: {e}")))?);
    }
    b.build().map_err(|e| usage(format!("slim globs: {e}")))
}

/// Build the plan. Reads only the index and tree objects, never chunk data.
pub fn plan(store: &Store, opts: &GcOptions) -> Result<Plan> {
    Ok(plan_with_dead(store, opts)?.0)
}

/// The chunk sets a plan was computed from: execution acts on exactly these.
struct Work {
    /// Dead chunks (an immediate gc deletes them all).
    dead: HashSet<ChunkId>,
    /// Live chunks whose delta base dies, with their element type when a kept tree names it:
    /// re-encoded on their own by an immediate gc.
    reencode: Vec<(ChunkId, Option<crate::model::dtype::DType>)>,
    /// The dead bases (and their dead ancestors) those chunks need: a deferred gc, which cannot
    /// re-encode, leaves them alive.
    bases: HashSet<ChunkId>,
}

/// The plan and the chunk sets it was computed from.
fn plan_with_dead(store: &Store, opts: &GcOptions) -> Result<(Plan, Work)> {
    let view = store.view();
    // Roots: every ref. Any failure here is returned: gc that cannot list roots deletes nothing.
    let branches = view.refs(crate::storage::refs::HEADS)?;
    let tags = view.refs(crate::storage::refs::TAGS)?;
    let scope: Vec<String> = if opts.all {
        branches
            .iter()
            .map(|(n, _)| crate::storage::refs::short_name(n).to_string())
            .collect()
    } else if opts.branches.is_empty() {
        vec![store.current_branch()?]
    } else {
        opts.branches.clone()
    };
    let now = opts.now_ns.unwrap_or_else(now_ns);
    let slim = glob_set(&opts.retention.slim)?;

    // Rule decisions per in-scope branch.
    let mut candidates: BTreeMap<CommitId, CommitRow> = BTreeMap::new();
    let mut reasons: HashMap<CommitId, Vec<String>> = HashMap::new();
    let mut slim_exempt: HashSet<CommitId> = HashSet::new();
    for b in &scope {
        let full = crate::storage::refs::branch_ref(b)?;
        let head = match view.get_ref(&full)? {
            Some(h) => h,
            // The current branch with no commits yet has nothing to decide.
            None if opts.branches.is_empty() => continue,
            None => return Err(StoreError::NoSuchRef { name: full.clone() }.into()),
        };
        let hist = first_parent_rows(store, head)?;
        if opts.retention.prunes() {
            for (id, why) in apply_rules(&opts.retention, &hist, now) {
                reasons.entry(id).or_default().extend(why);
            }
        }
        let n = opts.retention.slim_keep_last.unwrap_or(0);
        slim_exempt.extend(hist.iter().take(n).map(|(id, _)| *id));
        for (id, row) in hist {
            candidates.insert(id, row);
        }
    }
    // Branches out of scope protect their whole history: a commit they share with an in-scope
    // branch is no candidate.
    let mut protected: HashSet<CommitId> = HashSet::new();
    for (name, head) in &branches {
        if scope
            .iter()
            .any(|b| crate::storage::refs::short_name(name) == b)
        {
            continue;
        }
        let mut todo = vec![*head];
        while let Some(id) = todo.pop() {
            if protected.insert(id) {
                let row = view
                    .commit_row(&id)?
                    .ok_or(StoreError::MissingObject { id: id.into() })?;
                todo.extend(row.parents.iter().copied());
            }
        }
    }
    candidates.retain(|id, _| !protected.contains(id));
    // Every ref's target is always kept, in or out of scope.
    for (name, id) in branches.iter().chain(tags.iter()) {
        let kind = if name.starts_with(crate::storage::refs::HEADS) {
            "head of"
        } else {
            "tag"
        };
        reasons
            .entry(*id)
            .or_default()
            .push(format!("{kind} {}", crate::storage::refs::short_name(name)));
    }

    // Walk everything reachable from any ref (all parents) to know every commit's fate.
    let mut reachable: BTreeMap<CommitId, CommitRow> = BTreeMap::new();
    let mut todo: Vec<CommitId> = branches
        .iter()
        .chain(tags.iter())
        .map(|(_, id)| *id)
        .collect();
    while let Some(id) = todo.pop() {
        if reachable.contains_key(&id) {
            continue;
        }
        let row = view
            .commit_row(&id)?
            .ok_or(StoreError::MissingObject { id: id.into() })?;
        todo.extend(row.parents.iter().copied());
        reachable.insert(id, row);
    }

    let mut commits = Vec::new();
    let mut live: HashSet<ChunkId> = HashSet::new();
    let mut locs: HashMap<ChunkId, ChunkLoc> = HashMap::new();
    view.chunks(|id, loc| {
        locs.insert(id, loc);
    })?;
    // Element types of live delta-coded chunks, for re-encoding one whose base dies.
    let mut dtypes: HashMap<ChunkId, crate::model::dtype::DType> = HashMap::new();
    let mut releasing: Vec<(usize, HashSet<ChunkId>)> = Vec::new();
    for (id, row) in &reachable {
        let c = store.commit(*id)?;
        let tree = store.tree(c.tree)?;
        let state: CommitState = crate::storage::state::state(store, *id)?;
        let mut pc = PlanCommit {
            id: id.to_hex(),
            step: row.step,
            time_ns: row.time_ns,
            decision: Decision::Keep,
            reasons: reasons.get(id).cloned().unwrap_or_default(),
            released: Vec::new(),
            frees_bytes: 0,
        };
        let already: BTreeSet<String> = match &state.pruned {
            Some(p) if p.released.is_empty() => tree.files.keys().cloned().collect(),
            Some(p) => p.released.iter().cloned().collect(),
            None => BTreeSet::new(),
        };
        let in_scope = candidates.contains_key(id);
        let kept = !pc.reasons.is_empty() || !in_scope || !opts.retention.prunes();
        if state.pruned.as_ref().is_some_and(|p| p.released.is_empty()) {
            pc.decision = Decision::AlreadyPruned;
            pc.released = already.iter().cloned().collect();
        } else if !kept {
            pc.decision = Decision::Prune;
            pc.reasons.push("no rule keeps it".into());
            pc.released = tree.files.keys().cloned().collect();
            let all: HashSet<ChunkId> = tree.chunk_ids().collect();
            releasing.push((commits.len(), all));
        } else {
            let is_ref_target = pc
                .reasons
                .iter()
                .any(|r| r.starts_with("head of") || r.starts_with("tag "));
            let slimmable = in_scope
                && !is_ref_target
                && !slim_exempt.contains(id)
                && !opts.retention.slim.is_empty();
            let mut released = already.clone();
            if slimmable {
                for p in tree.files.keys() {
                    let name = p.rsplit('/').next().unwrap_or(p);
                    if slim.is_match(p) || slim.is_match(name) {
                        released.insert(p.clone());
                    }
                }
            }
            if released.len() > already.len() {
                pc.decision = Decision::Slim;
                let newly: BTreeSet<String> = released.difference(&already).cloned().collect();
                let freed: HashSet<ChunkId> = tree
                    .files
                    .iter()
                    .filter(|(p, _)| newly.contains(*p))
                    .flat_map(|(_, f)| f.chunks().map(|c| c.id))
                    .collect();
                releasing.push((commits.len(), freed));
            }
            pc.released = released.iter().cloned().collect();
            live.extend(tree.chunk_ids_except(&released));
            for (p, f) in &tree.files {
                if released.contains(p) {
                    continue;
                }
                for seg in &f.segments {
                    if let Some((_, dtype, _)) = seg.tensor() {
                        for c in &seg.chunks {
                            if locs.get(&c.id).is_some_and(|l| l.base.is_some()) {
                                dtypes.insert(c.id, dtype);
                            }
                        }
                    }
                }
            }
        }
        commits.push(pc);
    }

    // Staged parts of uncommitted sharded commits are roots too, unless abandoned.
    let pending = crate::storage::staging::pending(store, now)?;
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

    // Delta bases. A live chunk whose base is live needs nothing more. One whose base dies is
    // re-encoded on its own, so the base (and its dead ancestors) can go; a deferred gc, which
    // cannot rewrite chunks, keeps those bases alive instead.
    let mut reencode: Vec<(ChunkId, Option<crate::model::dtype::DType>)> = live
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

    let dead: HashSet<ChunkId> = locs
        .keys()
        .filter(|id| !live.contains(id))
        .copied()
        .collect();
    for (i, chunks) in &releasing {
        commits[*i].frees_bytes = chunks
            .iter()
            .filter(|c| dead.contains(c))
            .filter_map(|c| locs.get(c).map(|l| l.stored_len))
            .sum();
    }
    let dead_bytes = dead
        .iter()
        .filter_map(|c| locs.get(c).map(|l| l.stored_len))
        .sum();
    let marked = view
        .ids(crate::storage::index::CF_MARKS)?
        .into_iter()
        .map(ChunkId)
        .filter(|c| dead.contains(c))
        .count() as u64;

    // Packs: live bytes per pack decide delete / repack / keep.
    let threshold = opts.repack_threshold.unwrap_or(0.3);
    // Stored chunk bytes per pack, all and live, in one pass over the locations.
    let mut chunk_bytes: HashMap<PackId, u64> = HashMap::new();
    let mut live_bytes: HashMap<PackId, u64> = HashMap::new();
    for (id, loc) in &locs {
        *chunk_bytes.entry(loc.pack).or_default() += loc.stored_len;
        // A re-encoded chunk's new copy goes to the new pack; its old copy is dead weight.
        if !dead.contains(id) && !reencoding.contains(id) {
            *live_bytes.entry(loc.pack).or_default() += loc.stored_len;
        }
    }
    let mut object_packs: HashSet<PackId> = HashSet::new();
    view.for_each(crate::storage::index::CF_OBJECTS, |_, v| {
        if let Ok(loc) = postcard::from_bytes::<crate::storage::index::ObjectLoc>(v) {
            object_packs.insert(loc.pack);
        }
        Ok(())
    })?;
    let packs = view.packs()?;
    let mut delete_packs = Vec::new();
    let mut repack_packs = Vec::new();
    for (pack, info) in &packs {
        let live_b = live_bytes.get(pack).copied().unwrap_or(0);
        if live_b == 0 && !object_packs.contains(pack) {
            delete_packs.push(pack.to_hex());
        } else if let Some(all) = chunk_bytes.get(pack) {
            let dead_b = all - live_b;
            if info.size > 0 && dead_b as f64 > threshold * info.size as f64 {
                repack_packs.push(pack.to_hex());
            }
        }
    }
    delete_packs.sort();
    repack_packs.sort();
    let known: HashSet<String> = packs.iter().map(|(p, _)| pack_file_name(*p)).collect();
    let doomed: HashSet<String> = doomed_packs(store)?
        .iter()
        .map(|p| pack_file_name(*p))
        .collect();
    let mut orphan_files = Vec::new();
    let d = store.packs_dir();
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
    commits.sort_by(|a, b| b.time_ns.cmp(&a.time_ns).then(a.id.cmp(&b.id)));
    let plan = Plan {
        policy: opts.retention.to_text(),
        branches: scope,
        commits,
        dead_chunks: dead.len() as u64,
        dead_bytes,
        reencode_chunks: reencode.len() as u64,
        reencode_bytes,
        kept_as_delta_base: bases.len() as u64,
        delete_packs,
        repack_packs,
        marked_chunks: marked,
        orphan_files,
        abandoned_txns: abandoned_txns.into_iter().collect(),
    };
    Ok((
        plan,
        Work {
            dead,
            reencode,
            bases,
        },
    ))
}

fn disk_bytes(store: &Store) -> u64 {
    std::fs::read_dir(store.packs_dir())
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Plan, then (unless `dry_run`) execute exactly that plan.
pub fn gc(store: &Store, opts: &GcOptions, dry_run: bool) -> Result<GcOutcome> {
    let gc_lock = store.root().join("locks/gc.lock");
    let _one_gc = lock::exclusive(&gc_lock).map_err(io_at(&gc_lock))?;
    store.refresh()?;
    let before = disk_bytes(store);
    // Held from planning to the end, when we get it: no commit can start or be mid-way.
    let writers = store.writers_lock_path();
    let quiet = if dry_run {
        None
    } else {
        lock::try_exclusive(&writers).map_err(io_at(&writers))?
    };
    let (plan, work) = plan_with_dead(store, opts)?;
    let mut out = GcOutcome {
        plan: plan.clone(),
        dry_run,
        mode: if quiet.is_some() {
            "immediate"
        } else {
            "deferred"
        }
        .into(),
        chunks_removed: 0,
        packs_deleted: 0,
        packs_repacked: 0,
        chunks_reencoded: 0,
        packs_doomed: 0,
        disk_bytes_before: before,
        disk_bytes_after: before,
    };
    if dry_run {
        out.mode = "dry-run".into();
        return Ok(out);
    }
    execute(store, &plan, &work, quiet.is_some(), &mut out)?;
    drop(quiet);
    out.disk_bytes_after = disk_bytes(store);
    Ok(out)
}

fn execute(
    store: &Store,
    plan: &Plan,
    work: &Work,
    immediate: bool,
    out: &mut GcOutcome,
) -> Result<()> {
    let view = store.view();
    let now = now_ns();
    // A deferred gc cannot re-encode: the bases re-encoding would free stay alive.
    let deferred_dead: HashSet<ChunkId>;
    let dead = if immediate {
        &work.dead
    } else {
        deferred_dead = work.dead.difference(&work.bases).copied().collect();
        &deferred_dead
    };
    let reencoding: HashSet<ChunkId> = if immediate {
        work.reencode.iter().map(|(id, _)| *id).collect()
    } else {
        HashSet::new()
    };

    // Repack first (immediate mode only): copy live entries of each repacked pack into a new
    // pack, durable before the index points at it.
    let mut moved: Vec<(ChunkId, ChunkLoc)> = Vec::new();
    let mut moved_objects: Vec<(crate::model::id::ObjectId, crate::storage::index::ObjectLoc)> =
        Vec::new();
    let mut new_packs: Vec<(PackId, PackInfo)> = Vec::new();
    let repack: Vec<PackId> = if immediate {
        plan.repack_packs
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect()
    } else {
        Vec::new()
    };
    if !repack.is_empty() || !reencoding.is_empty() {
        let mut w = PackWriter::create(&store.packs_dir())?;
        // Chunks whose base dies: decoded through their chain (verified), encoded on their own.
        for (id, dtype) in &work.reencode {
            if view.chunk(id)?.is_none() {
                continue;
            }
            let raw = store.read_chunk(*id)?;
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
            moved.push((
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
        for pid in &repack {
            let path = store.packs_dir().join(pack_file_name(*pid));
            let r = PackReader::open(&path, *pid)?;
            for e in r.entries()? {
                let h = e.header;
                if h.kind == crate::storage::pack::ENTRY_CHUNK {
                    let id = ChunkId(h.id);
                    let Some(loc) = view.chunk(&id)? else {
                        continue;
                    };
                    if loc.pack != *pid
                        || loc.offset != e.offset
                        || dead.contains(&id)
                        || reencoding.contains(&id)
                    {
                        continue;
                    }
                    let stored = r.payload(e.offset, h.stored_len).map_err(|what| {
                        crate::storage::pack::PackError::BadChunk {
                            chunk: id,
                            pack: *pid,
                            what: what.to_string(),
                        }
                    })?;
                    let ne = w.append_chunk(id, h.encoding, h.raw_len, stored, h.base, h.depth)?;
                    moved.push((
                        id,
                        ChunkLoc {
                            pack: w.id(),
                            offset: ne.offset,
                            ..loc
                        },
                    ));
                } else {
                    let oid = crate::model::id::ObjectId(h.id);
                    let Some(loc) = view.object(&oid)? else {
                        continue;
                    };
                    if loc.pack != *pid || loc.offset != e.offset {
                        continue;
                    }
                    let (kind, bytes) = r.read_object(oid, e.offset)?;
                    let ne = w.append_object(oid, kind, &bytes)?;
                    moved_objects.push((
                        oid,
                        crate::storage::index::ObjectLoc {
                            pack: w.id(),
                            offset: ne.offset,
                            stored_len: ne.header.stored_len,
                            raw_len: ne.header.raw_len,
                            kind,
                        },
                    ));
                }
            }
        }
        let sealed = w.seal()?;
        let d = store.packs_dir();
        // The copies must be durable before the index batch points at them.
        crate::storage::fsutil::sync_dir(&d).map_err(io_at(&d))?;
        new_packs.push((
            sealed.id,
            PackInfo {
                size: sealed.size,
                chunks: moved.len() as u64,
                objects: moved_objects.len() as u64,
            },
        ));
    }

    let mut unlink: Vec<PackId> = Vec::new();
    store.with_writer(|index| -> Result<_> {
        let mut b = index.batch()?;
        for pc in &plan.commits {
            if !matches!(pc.decision, Decision::Prune | Decision::Slim) {
                continue;
            }
            let id: CommitId = pc
                .id
                .parse()
                .map_err(|_| usage(format!("bad id {}", pc.id)))?;
            let mut st: CommitState = match index.state_raw(&id)? {
                Some(v) => postcard::from_bytes(&v).unwrap_or_default(),
                None => CommitState::default(),
            };
            st.pruned = Some(PruneRecord {
                time_ns: now,
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
            crate::storage::state::put_state(store, &mut b, id, &st)?;
        }
        if immediate {
            for id in dead {
                b.delete_chunk(id)?;
                b.delete_mark(id)?;
                out.chunks_removed += 1;
            }
            for (id, loc) in &moved {
                b.put_chunk(id, loc)?;
            }
            for (id, loc) in &moved_objects {
                b.put_object(id, loc)?;
            }
            for (pid, info) in &new_packs {
                b.put_pack(pid, info)?;
            }
            for p in plan.delete_packs.iter().chain(plan.repack_packs.iter()) {
                if let Ok(pid) = p.parse::<PackId>() {
                    b.delete_pack(&pid)?;
                    unlink.push(pid);
                }
            }
            out.packs_repacked = repack.len() as u64;
        } else {
            for id in dead {
                if index.mark(id)?.is_none() {
                    b.put_mark(id, now)?;
                }
            }
        }
        index.write(b)?;
        Ok(())
    })?;

    // The batch is durable: the packs are unreferenced. Unlink them now if no reader can be
    // between resolving a location and opening its pack; otherwise leave them for later.
    let readers = store.readers_lock_path();
    let no_readers = lock::try_exclusive(&readers).map_err(io_at(&readers))?;
    let mut doomed = doomed_packs(store)?;
    doomed.extend(unlink);
    let d = store.packs_dir();
    if immediate {
        for txn in &plan.abandoned_txns {
            crate::storage::staging::abandon(store, txn)?;
        }
        for name in &plan.orphan_files {
            let p = d.join(name);
            match crate::storage::fsutil::remove_file(&p) {
                Ok(()) => out.packs_deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(&p)(e)),
            }
        }
    }
    if no_readers.is_some() {
        for pid in &doomed {
            let p = d.join(pack_file_name(*pid));
            match crate::storage::fsutil::remove_file(&p) {
                Ok(()) => out.packs_deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(&p)(e)),
            }
        }
        doomed.clear();
        crate::storage::fsutil::sync_dir(&d).map_err(io_at(&d))?;
    } else {
        out.packs_doomed = doomed.len() as u64;
    }
    save_doomed(store, &doomed)?;
    Ok(())
}

fn doomed_path(store: &Store) -> std::path::PathBuf {
    store.root().join("doomed-packs")
}

/// Pack files unreferenced by the index but not yet unlinked (a reader was active).
pub fn doomed_packs(store: &Store) -> Result<BTreeSet<PackId>> {
    let p = doomed_path(store);
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(io_at(&p)(e)),
    }
}

fn save_doomed(store: &Store, doomed: &BTreeSet<PackId>) -> Result<()> {
    let p = doomed_path(store);
    if doomed.is_empty() {
        return match crate::storage::fsutil::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_at(&p)(e)),
        };
    }
    let text: String = doomed.iter().map(|p| format!("{p}\n")).collect();
    crate::storage::fsutil::write_atomic(&p, text.as_bytes()).map_err(io_at(&p))
}

/// The retention policy stored in the store, if any.
pub fn stored_policy(store: &Store) -> Result<Option<Retention>> {
    let p = store.root().join("retention");
    match std::fs::read_to_string(&p) {
        Ok(s) if s.trim().is_empty() => Ok(None),
        Ok(s) => Ok(Some(Retention::parse(s.trim())?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(&p)(e)),
    }
}

/// Store (or clear, with `None`) the policy applied after every commit.
pub fn set_policy(store: &Store, policy: Option<&Retention>) -> Result<()> {
    let p = store.root().join("retention");
    match policy {
        Some(r) => {
            crate::storage::fsutil::write_atomic(&p, format!("{}\n", r.to_text()).as_bytes())
                .map_err(io_at(&p))
        }
        None => match crate::storage::fsutil::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_at(&p)(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(rows: &[(u8, Option<u64>, Option<f64>, i64)]) -> Vec<(CommitId, CommitRow)> {
        // Newest first, as history is.
        rows.iter()
            .map(|(id, step, m, t)| {
                let mut r = CommitRow {
                    step: *step,
                    time_ns: *t,
                    ..Default::default()
                };
                if let Some(v) = m {
                    r.metrics.insert("val_loss".into(), *v);
                }
                (CommitId([*id; 32]), r)
            })
            .collect()
    }

    fn kept(r: &Retention, h: &[(CommitId, CommitRow)], now: i64) -> Vec<u8> {
        let k = apply_rules(r, h, now);
        let mut v: Vec<u8> = k.keys().map(|c| c.0[0]).collect();
        v.sort();
        v
    }

    #[test]
    fn each_rule_and_their_union() {
        // ids 6 (newest) .. 1 (oldest); loss improves, then worsens, NaN and missing mixed in.
        let h = hist(&[
            (6, Some(6000), Some(0.50), 60),
            (5, Some(5000), Some(f64::NAN), 50),
            (4, Some(4000), None, 40),
            (3, Some(3000), Some(0.30), 30),
            (2, None, Some(0.30), 20),
            (1, Some(1000), Some(0.90), 10),
        ]);
        let r = |s: &str| Retention::parse(s).unwrap();
        assert_eq!(kept(&r("keep-last 2"), &h, 0), vec![5, 6]);
        // Ties go to the newer commit; NaN and missing metrics are never chosen.
        assert_eq!(kept(&r("keep-best 1:val_loss:min"), &h, 0), vec![3]);
        assert_eq!(kept(&r("keep-best 2:val_loss:min"), &h, 0), vec![2, 3]);
        assert_eq!(kept(&r("keep-best 1:val_loss:max"), &h, 0), vec![1]);
        assert_eq!(
            kept(&r("keep-best 9:val_loss:min"), &h, 0),
            vec![1, 2, 3, 6]
        );
        // A new best along the branch, oldest to newest: 0.9, 0.3 (strictly better only).
        assert_eq!(kept(&r("keep-improving val_loss:min"), &h, 0), vec![1, 2]);
        assert_eq!(kept(&r("keep-every 2000"), &h, 0), vec![4, 6]);
        assert_eq!(kept(&r("keep-within 25ns"), &h, 60), vec![4, 5, 6]);
        assert_eq!(
            kept(
                &r("keep-last 1, keep-best 1:val_loss:min, keep-every 4000"),
                &h,
                0
            ),
            vec![3, 4, 6]
        );
        let reasons = apply_rules(&r("keep-last 1, keep-every 3000"), &h, 0);
        assert_eq!(
            reasons[&CommitId([6; 32])],
            vec!["keep-last 1".to_string(), "keep-every 3000".to_string()]
        );
    }

    #[test]
    fn policy_text_round_trips() {
        let t = "keep-last 5, keep-best 3:val_loss:min, keep-improving acc:max, keep-every 1000, keep-within 7days, slim optimizer.pt, slim-keep-last 2";
        let r = Retention::parse(t).unwrap();
        assert_eq!(r.keep_within_ns, Some(7 * 86_400 * 1_000_000_000));
        assert_eq!(Retention::parse(&r.to_text()).unwrap(), r);
        for bad in [
            "keep-last x",
            "keep-best 3:val_loss",
            "keep-best 3:val_loss:up",
            "keep-every 0",
            "keep-within soon",
            "frobnicate 3",
            "keep-last",
        ] {
            assert!(Retention::parse(bad).is_err(), "{bad}");
        }
    }
}
