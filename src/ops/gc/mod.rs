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
//!   publish. gc plans and copies (re-encoding, repacking) without it, beside running commits;
//!   it takes it exclusively only to reconcile (a dead chunk that a commit published since the
//!   plan needs is kept, with its pack) and publish its one index batch, so a commit waits at
//!   most that long. If the lock does not come within [`GcOptions::wait_for_writers`], gc
//!   only marks dead chunks (deferred), and a writer that reuses a marked chunk clears the mark
//!   in its publish batch; a later gc deletes chunks still marked and still dead.
//! - Readers: pack files are unlinked only while gc holds `locks/readers.lock` exclusively;
//!   otherwise they are listed as doomed and removed by a later run. Packs are never truncated,
//!   so even a reader that mapped a pack before it was unlinked reads correct bytes.
//! - Order: repacked data is written to a new pack and fsynced (with its directory) before the
//!   one index batch that drops dead chunks, re-points moved ones and records pruned commits;
//!   pack files are unlinked only after that batch is durable.
//!
//! The module is split the way a run goes: `policy` is the retention language (pure), `plan`
//! builds the printable [`Plan`] from the index, `execute` carries out exactly that plan, and
//! `stored` keeps the policy and doomed-pack files beside the index.
#![warn(missing_docs)]

mod execute;
mod plan;
mod policy;
mod status;
mod stored;

pub use plan::{Decision, Plan, PlanCommit, plan};
pub use policy::{
    Direction, Retention, apply_rules, parse_duration_ns, parse_keep_best, parse_keep_improving,
};
pub use status::{
    GcRun, GcStatus, PolicyClaim, RunState, claim_policy_run, run_policy, run_policy_claimed,
    status, wait_idle,
};
pub use stored::{doomed_packs, set_policy, stored_policy};

use crate::model::id::CommitId;
use crate::storage::error::StoreError;
use crate::storage::index::IndexError;
use crate::storage::lock;
use crate::storage::pack::PackError;
use crate::storage::refs::RefError;
use crate::storage::store::Store;
use serde::Serialize;
use std::path::PathBuf;
use stored::io_at;

/// Errors of retention policies, gc planning and gc execution.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    /// A `keep-best` rule is not `K:METRIC:min|max`.
    #[error("keep-best {spec:?}: expected K:METRIC:min|max")]
    BadKeepBest {
        /// The rule's value as given.
        spec: String,
    },
    /// The `K` of a `keep-best` rule is not a count.
    #[error("keep-best {spec}: {count:?} is not a count")]
    BadKeepBestCount {
        /// The rule's value as given.
        spec: String,
        /// Its first field.
        count: String,
    },
    /// A `keep-improving` rule is not `METRIC:min|max`.
    #[error("keep-improving {spec:?}: expected METRIC:min|max")]
    BadKeepImproving {
        /// The rule's value as given.
        spec: String,
    },
    /// The direction of a `keep-best` or `keep-improving` rule is neither `min` nor `max`.
    #[error("{rule} {spec}: direction {direction:?} must be min or max")]
    BadDirection {
        /// `keep-best` or `keep-improving`.
        rule: &'static str,
        /// The rule's value as given.
        spec: String,
        /// The direction as given.
        direction: String,
    },
    /// A `keep-within` duration does not parse.
    #[error("keep-within {spec:?}: {error}")]
    BadDuration {
        /// The duration as given.
        spec: String,
        /// The parser's complaint (part of the message, so not also a `source`).
        error: humantime::DurationError,
    },
    /// A `keep-within` duration does not fit in an `i64` of nanoseconds (about 292 years).
    #[error("keep-within {spec:?}: too long")]
    DurationTooLong {
        /// The duration as given.
        spec: String,
    },
    /// A stored policy's rule is not `NAME VALUE`.
    #[error("retention rule {rule:?}: expected NAME VALUE")]
    BadRule {
        /// The rule as given.
        rule: String,
    },
    /// The value of a counting rule (`keep-last`, `keep-every`, `slim-keep-last`) is not a
    /// count.
    #[error("retention rule {rule:?}: {value:?} is not a count")]
    BadRuleCount {
        /// The rule as given.
        rule: String,
        /// Its value.
        value: String,
    },
    /// `keep-every 0`, which would divide by zero.
    #[error("keep-every 0: must be at least 1")]
    KeepEveryZero,
    /// A stored policy names a rule this cairn does not know.
    #[error("unknown retention rule {name:?}")]
    UnknownRule {
        /// The rule's name.
        name: String,
    },
    /// A `slim` glob does not parse.
    #[error("slim {glob:?}: {error}")]
    BadSlimGlob {
        /// The glob as given.
        glob: String,
        /// The parser's complaint (part of the message, so not also a `source`).
        error: globset::Error,
    },
    /// The `slim` globs do not build into one matcher.
    #[error("slim globs: {error}")]
    BadSlimGlobs {
        /// The builder's complaint (part of the message, so not also a `source`).
        error: globset::Error,
    },
    /// A branch named in [`GcOptions::branches`] does not exist.
    #[error("{name} does not exist")]
    NoSuchBranch {
        /// The full ref name (`refs/heads/...`).
        name: String,
    },
    /// A ref or a parent link names a commit the index has no row for: gc stops before
    /// deleting anything.
    #[error("object {id} is missing from the store")]
    MissingCommit {
        /// The commit.
        id: CommitId,
    },
    /// A commit id in the plan does not parse (a plan is only ever built by [`plan()`], so
    /// this means it was altered).
    #[error("bad id {id}")]
    BadPlanCommit {
        /// The id as the plan holds it.
        id: String,
    },
    /// A file operation on the store's files (locks, packs directory, policy, doomed list)
    /// failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Reading commits, trees, chunks or state records, or the staging area, failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A pack failed to open, read, write or seal.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// A branch name in [`GcOptions::branches`] is not a valid ref name.
    #[error(transparent)]
    Ref(#[from] RefError),
}

/// Options of a gc run.
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    /// The rules deciding which commits keep their data.
    pub retention: Retention,
    /// Branches whose history the rules apply to; empty = the current branch.
    pub branches: Vec<String>,
    /// Apply the rules to every branch.
    pub all: bool,
    /// Repack a pack when more than this fraction of its bytes is dead (default 0.3).
    pub repack_threshold: Option<f64>,
    /// Evaluate `keep-within` against this time instead of now (tests, reproducible plans).
    pub now_ns: Option<i64>,
    /// How long gc waits, once it has copied, for running commits to publish before it
    /// publishes itself; past that it falls back to the deferred mode (default
    /// [`DEFAULT_WAIT_FOR_WRITERS`]; zero: do not wait).
    pub wait_for_writers: Option<std::time::Duration>,
    /// What started this run, recorded in the status file (`cairn gc --status`): `manual` when
    /// unset.
    pub trigger: Option<String>,
    /// A background run (the retention policy's, after a commit): its copy phase steps aside
    /// while a commit runs, so it never competes with a training loop's commits for the cores
    /// and the disk; it goes on between commits.
    pub background: bool,
    /// Tests only: called when gc starts its copy phase (planned, nothing written yet).
    #[doc(hidden)]
    pub copy_hook: Option<CopyHook>,
}

/// How long gc waits for running commits by default: longer than any commit should take.
pub const DEFAULT_WAIT_FOR_WRITERS: std::time::Duration = std::time::Duration::from_secs(600);

/// A callback gc makes when its copy phase starts (tests hold gc there).
#[doc(hidden)]
#[derive(Clone)]
pub struct CopyHook(pub std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for CopyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CopyHook")
    }
}

/// What a gc run did.
#[derive(Clone, Debug, Serialize)]
pub struct GcOutcome {
    /// The plan, as built (and, unless `dry_run`, executed).
    pub plan: Plan,
    /// Only the plan was built; nothing changed.
    pub dry_run: bool,
    /// `immediate`: data deleted now; `deferred`: writers held their lock past
    /// [`GcOptions::wait_for_writers`], so dead chunks were only marked for a later run;
    /// `dry-run`: nothing done.
    pub mode: String,
    /// Chunks dropped from the index.
    pub chunks_removed: u64,
    /// Pack files (and orphan files) unlinked.
    pub packs_deleted: u64,
    /// Packs whose live entries were copied to a new pack.
    pub packs_repacked: u64,
    /// Chunks re-encoded without their dying delta base.
    pub chunks_reencoded: u64,
    /// Pack files left for a later run because a reader held `readers.lock`.
    pub packs_doomed: u64,
    /// Bytes in the packs directory before the run.
    pub disk_bytes_before: u64,
    /// Bytes in the packs directory after the run.
    pub disk_bytes_after: u64,
    /// Scratch directories that killed commands left in `tmp/`, removed.
    pub stale_tmp_removed: u64,
    /// Chunks the plan found dead that a commit published while gc copied needs: kept.
    pub chunks_kept_alive: u64,
    /// How long gc held `writers.lock` exclusively (reconcile and publish), in milliseconds:
    /// the longest a commit started meanwhile waited.
    pub writers_excluded_ms: f64,
}

/// Bytes of every file in the packs directory (0 if it cannot be listed).
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

/// Plan, then (unless `dry_run`) execute exactly that plan (less what commits that land
/// meanwhile make live again). One gc runs at a time per store (`locks/gc.lock`, waited for);
/// commits run beside it. A run that executes is recorded for [`status`].
pub fn gc(store: &Store, opts: &GcOptions, dry_run: bool) -> Result<GcOutcome, GcError> {
    let gc_lock = status::gc_lock_path(store);
    let one_gc = lock::exclusive(&gc_lock).map_err(io_at(&gc_lock))?;
    if dry_run {
        return gc_locked(store, opts, true);
    }
    status::record_run(store, opts, one_gc, |opts| gc_locked(store, opts, false))
}

/// [`gc`] with `locks/gc.lock` held.
fn gc_locked(store: &Store, opts: &GcOptions, dry_run: bool) -> Result<GcOutcome, GcError> {
    store.refresh()?;
    let before = disk_bytes(store);
    let (plan, work) = plan::plan_with_dead(store, opts)?;
    let mut out = GcOutcome {
        plan: plan.clone(),
        dry_run,
        mode: if dry_run { "dry-run" } else { "immediate" }.into(),
        chunks_removed: 0,
        packs_deleted: 0,
        packs_repacked: 0,
        chunks_reencoded: 0,
        packs_doomed: 0,
        disk_bytes_before: before,
        disk_bytes_after: before,
        stale_tmp_removed: 0,
        chunks_kept_alive: 0,
        writers_excluded_ms: 0.0,
    };
    if dry_run {
        return Ok(out);
    }
    execute::execute(store, &plan, &work, opts, &mut out)?;
    out.stale_tmp_removed = store.clean_stale_tmp()?;
    out.disk_bytes_after = disk_bytes(store);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CLI prints these messages; they are what the crate's `Usage` error said before
    /// `GcError` replaced it.
    #[test]
    fn policy_errors_keep_their_messages() {
        let cases: [(Result<(), GcError>, &str); 9] = [
            (
                parse_keep_best("x:val_loss:min").map(drop),
                r#"keep-best x:val_loss:min: "x" is not a count"#,
            ),
            (
                parse_keep_best("3:val_loss").map(drop),
                r#"keep-best "3:val_loss": expected K:METRIC:min|max"#,
            ),
            (
                parse_keep_best("3:val_loss:up").map(drop),
                r#"keep-best 3:val_loss:up: direction "up" must be min or max"#,
            ),
            (
                parse_keep_improving("val_loss:up").map(drop),
                r#"keep-improving val_loss:up: direction "up" must be min or max"#,
            ),
            (
                parse_keep_improving("val_loss").map(drop),
                r#"keep-improving "val_loss": expected METRIC:min|max"#,
            ),
            (
                Retention::parse("keep-last").map(drop),
                r#"retention rule "keep-last": expected NAME VALUE"#,
            ),
            (
                Retention::parse("keep-last x").map(drop),
                r#"retention rule "keep-last x": "x" is not a count"#,
            ),
            (
                Retention::parse("keep-every 0").map(drop),
                "keep-every 0: must be at least 1",
            ),
            (
                Retention::parse("frobnicate 3").map(drop),
                r#"unknown retention rule "frobnicate""#,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.unwrap_err().to_string(), want);
        }
        let e = parse_duration_ns("soon").unwrap_err();
        assert!(matches!(e, GcError::BadDuration { .. }), "{e:?}");
        assert!(e.to_string().starts_with(r#"keep-within "soon": "#), "{e}");
    }
}
