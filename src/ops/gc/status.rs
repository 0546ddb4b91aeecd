//! gc runs on record, and the retention policy's run after a commit, off the commit's path.
//!
//! Every gc that executes writes `gc-status.json` in the store root (beside the index) when it
//! starts and when it ends, so `cairn gc --status` can say what the last run did, or that it is
//! running, or that its process died mid-way (the file says running, and nobody holds
//! `locks/gc.lock`). A commit with a stored policy no longer runs gc itself: its caller starts
//! [`run_policy`] afterwards, in the background (the CLI in a detached process, the
//! `AsyncCommitter` and the Python package on a thread of their own).
//!
//! Invariants:
//! - The status file is replaced atomically (`fsutil::write_atomic`): a crash leaves the old or
//!   the new record, never a torn one. It is a report, never an input to gc's decisions.
//! - At most one gc runs per store (`locks/gc.lock`), and at most one policy run waits for it
//!   (`locks/gc-queue.lock`). A policy run that finds another already waiting leaves the work to
//!   it: that run plans only once it holds `gc.lock`, so it sees every commit published before,
//!   this one's included.
//! - A gc killed at any point is harmless (the protocol in [`super::execute`]); the next run
//!   finishes its work.
#![warn(missing_docs)]

use super::stored::io_at;
use super::{Decision, GcError, GcOptions, GcOutcome, stored_policy};
use crate::storage::fsutil;
use crate::storage::lock::{self, LockGuard};
use crate::storage::store::{Store, now_ns};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Started and not ended.
    Running,
    /// Ended with its outcome.
    Finished,
    /// Ended with an error (nothing half done: see the protocol).
    Failed,
    /// The record says running, but no process holds `locks/gc.lock`: it was killed.
    Interrupted,
}

/// One gc run, as `gc-status.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcRun {
    /// Where it stands.
    pub state: RunState,
    /// What started it: `manual`, or `policy after commit on BRANCH`.
    pub trigger: String,
    /// The process that ran it.
    pub pid: u32,
    /// The rules, as text (empty: none).
    pub policy: String,
    /// Branches the rules applied to.
    pub branches: Vec<String>,
    /// When it started (nanoseconds since the epoch).
    pub started_ns: i64,
    /// When it ended.
    pub finished_ns: Option<i64>,
    /// `immediate` or `deferred` (see [`GcOutcome::mode`]), once finished.
    pub mode: Option<String>,
    /// Commits pruned.
    pub pruned: u64,
    /// Chunks dropped from the index.
    pub chunks_removed: u64,
    /// Dead chunks kept because a commit that landed during the run needs them.
    pub chunks_kept_alive: u64,
    /// Bytes the packs directory shrank by.
    pub bytes_freed: u64,
    /// How long commits were excluded (milliseconds).
    pub writers_excluded_ms: f64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// What `cairn gc --status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct GcStatus {
    /// A gc holds `locks/gc.lock` now.
    pub running: bool,
    /// The last run on record (none: no gc has run since this record was introduced).
    pub last: Option<GcRun>,
}

fn status_path(store: &Store) -> PathBuf {
    store.root().join("gc-status.json")
}

/// `locks/gc.lock`: held by the one gc that runs.
pub(super) fn gc_lock_path(store: &Store) -> PathBuf {
    store.root().join("locks/gc.lock")
}

/// `locks/gc-queue.lock` of the store at `root`: held by the one policy run that waits.
fn queue_lock_path(root: &std::path::Path) -> PathBuf {
    root.join("locks/gc-queue.lock")
}

fn write(store: &Store, run: &GcRun) -> Result<(), GcError> {
    let p = status_path(store);
    let mut bytes = serde_json::to_vec_pretty(run).expect("a run serializes");
    bytes.push(b'\n');
    fsutil::write_atomic(&p, &bytes).map_err(io_at(&p))
}

/// Run `f` (one gc, with `gc.lock` held as `guard`), recording it as running, then as finished
/// or failed; the lock is released after the last record.
pub(super) fn record_run(
    store: &Store,
    opts: &GcOptions,
    guard: LockGuard,
    f: impl FnOnce(&GcOptions) -> Result<GcOutcome, GcError>,
) -> Result<GcOutcome, GcError> {
    let mut run = GcRun {
        state: RunState::Running,
        trigger: opts.trigger.clone().unwrap_or_else(|| "manual".into()),
        pid: std::process::id(),
        policy: opts.retention.to_text(),
        branches: opts.branches.clone(),
        started_ns: now_ns(),
        finished_ns: None,
        mode: None,
        pruned: 0,
        chunks_removed: 0,
        chunks_kept_alive: 0,
        bytes_freed: 0,
        writers_excluded_ms: 0.0,
        error: None,
    };
    write(store, &run)?;
    let result = f(opts);
    run.finished_ns = Some(now_ns());
    match &result {
        Ok(o) => {
            run.state = RunState::Finished;
            run.mode = Some(o.mode.clone());
            run.branches = o.plan.branches.clone();
            run.pruned = o
                .plan
                .commits
                .iter()
                .filter(|c| c.decision == Decision::Prune)
                .count() as u64;
            run.chunks_removed = o.chunks_removed;
            run.chunks_kept_alive = o.chunks_kept_alive;
            run.bytes_freed = o.disk_bytes_before.saturating_sub(o.disk_bytes_after);
            run.writers_excluded_ms = o.writers_excluded_ms;
        }
        Err(e) => {
            run.state = RunState::Failed;
            run.error = Some(e.to_string());
        }
    }
    // The outcome counts more than its record: a failure to write it is not the run's error.
    let recorded = write(store, &run);
    drop(guard);
    let out = result?;
    recorded?;
    Ok(out)
}

/// The last run on record, and whether a gc runs now.
pub fn status(store: &Store) -> Result<GcStatus, GcError> {
    let p = status_path(store);
    let mut last: Option<GcRun> = match std::fs::read(&p) {
        // A record this cairn cannot read is reported as none rather than failing the command.
        Ok(b) => serde_json::from_slice(&b).ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_at(&p)(e)),
    };
    let l = gc_lock_path(store);
    let running = l.exists() && lock::is_locked(&l).map_err(io_at(&l))?;
    if let Some(r) = &mut last
        && r.state == RunState::Running
        && !running
    {
        r.state = RunState::Interrupted;
    }
    Ok(GcStatus { running, last })
}

/// Wait until no gc runs or waits to run (polling every 20 ms), at most `timeout`; true when
/// idle. For scripts and tests that need the background run of the last commit done.
pub fn wait_idle(store: &Store, timeout: Duration) -> Result<bool, GcError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut busy = false;
        for p in [queue_lock_path(store.root()), gc_lock_path(store)] {
            busy |= p.exists() && lock::is_locked(&p).map_err(io_at(&p))?;
        }
        if !busy {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A place in line for a policy run: `locks/gc-queue.lock`, held from the commit that asks for
/// the run until the run holds `gc.lock`. Taking it before the commit's call returns (and only
/// then handing the run to a thread or a process) means [`wait_idle`] never misses a run that
/// is about to start.
pub struct PolicyClaim {
    _queued: LockGuard,
}

/// Claim the next policy run of the store at `root` (no need to open it first). `Ok(None)` when
/// another run already waits for the running gc: it plans only once it runs, so it covers the
/// commit that asks now.
pub fn claim_policy_run(root: &std::path::Path) -> Result<Option<PolicyClaim>, GcError> {
    let q = queue_lock_path(root);
    Ok(lock::try_exclusive(&q)
        .map_err(io_at(&q))?
        .map(|g| PolicyClaim { _queued: g }))
}

/// Run the claimed policy run: wait for a running gc to end, then apply the stored retention
/// policy (if there still is one: `Ok(None)` otherwise) to `branch`, recorded with `trigger`.
pub fn run_policy_claimed(
    store: &Store,
    claim: PolicyClaim,
    branch: &str,
    trigger: &str,
) -> Result<Option<GcOutcome>, GcError> {
    let l = gc_lock_path(store);
    let one_gc = lock::exclusive(&l).map_err(io_at(&l))?;
    drop(claim);
    let Some(policy) = stored_policy(store)? else {
        return Ok(None);
    };
    let opts = GcOptions {
        retention: policy,
        branches: vec![branch.to_string()],
        trigger: Some(trigger.to_string()),
        background: true,
        ..Default::default()
    };
    // Planned now, with gc.lock held: every commit published before is in the plan.
    record_run(store, &opts, one_gc, |o| super::gc_locked(store, o, false)).map(Some)
}

/// Apply the stored retention policy to `branch` after a commit, in this thread:
/// [`claim_policy_run`], then [`run_policy_claimed`]. `Ok(None)` when there is no policy or
/// another run is already waiting.
pub fn run_policy(
    store: &Store,
    branch: &str,
    trigger: &str,
) -> Result<Option<GcOutcome>, GcError> {
    if stored_policy(store)?.is_none() {
        return Ok(None);
    }
    match claim_policy_run(store.root())? {
        Some(c) => run_policy_claimed(store, c, branch, trigger),
        None => Ok(None),
    }
}
