//! Validation after creation: re-reading a commit and checking every file, and running the
//! user's load test on a checkout. The outcomes are kept in the commit's state record
//! ([`crate::storage::state`]).

#![warn(missing_docs)]

use crate::model::id::CommitId;
use crate::ops::progress::Progress;
use crate::ops::read::ReadError;
use crate::storage::error::StoreError;
use crate::storage::store::{Store, now_ns};

/// What stops a verification or a load test from running (problems it finds are recorded in
/// its outcome instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// `sh` could not be started for `--verify-cmd`.
    #[error("--verify-cmd: cannot run sh: {source}")]
    Shell {
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The checkout for the load test failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The commit or its tree could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T, E = VerifyError> = std::result::Result<T, E>;

pub use crate::storage::state::{
    CheckRecord, CommitState, PruneRecord, StateLogEntry, VerifyRecord, put_state, state,
    update_state,
};

/// Re-read every file of a commit (every chunk hash, every file size and SHA-256) without
/// writing anything. Problems are collected, not returned as the first error.
pub fn verify_commit(store: &Store, id: CommitId, progress: &dyn Progress) -> Result<VerifyRecord> {
    let c = store.commit(id)?;
    let tree = store.tree(c.tree)?;
    let mut rec = VerifyRecord {
        ok: true,
        time_ns: now_ns(),
        files: 0,
        bytes: 0,
        problems: Vec::new(),
    };
    progress.begin("verify", tree.logical_size());
    for (path, entry) in &tree.files {
        rec.files += 1;
        match crate::ops::read::write_file_to(
            store,
            path,
            entry,
            &mut std::io::sink(),
            true,
            progress,
        ) {
            Ok(()) => rec.bytes += entry.size,
            Err(e) => rec.problems.push(format!("{path}: {e}")),
        }
    }
    progress.end();
    rec.ok = rec.problems.is_empty();
    Ok(rec)
}

/// Check `id` out into a temporary directory under the store and run `command` there with
/// `sh -c`; `$CAIRN_CHECKOUT` names the directory and `$CAIRN_COMMIT` the commit id.
pub fn run_check(
    store: &Store,
    id: CommitId,
    command: &str,
    progress: &dyn Progress,
) -> Result<CheckRecord> {
    // What an interrupted earlier check left behind goes first.
    store.clean_stale_tmp()?;
    let scratch = store.scratch_dir(&format!("check-{}", id.short()))?;
    let dir = scratch.path().to_path_buf();
    let started = std::time::Instant::now();
    let result = (|| {
        crate::ops::read::checkout(store, id, &dir, &Default::default(), progress)?;
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&dir)
            .env("CAIRN_CHECKOUT", &dir)
            .env("CAIRN_COMMIT", id.to_hex())
            .status()
            .map_err(|source| VerifyError::Shell { source })?;
        Ok(CheckRecord {
            command: command.to_string(),
            exit_code: status.code(),
            ok: status.success(),
            time_ns: now_ns(),
            seconds: started.elapsed().as_secs_f64(),
        })
    })();
    drop(scratch);
    result
}
