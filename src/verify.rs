//! Validation after creation: re-reading a commit and checking every file, running the user's
//! load test on a checkout, and the per-commit state records that remember the outcomes.
//!
//! Invariants: state records live in the index's `states` column family, keyed by commit id,
//! never in the hashed commit; they are written under the index lock like every index update.

use crate::id::CommitId;
use crate::progress::Progress;
use crate::store::{Error, Result, Store, now_ns};
use serde::{Deserialize, Serialize};

/// The outcome of re-reading a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRecord {
    pub ok: bool,
    pub time_ns: i64,
    pub files: u64,
    pub bytes: u64,
    /// One line per problem found.
    pub problems: Vec<String>,
}

/// The outcome of a `--verify-cmd` load test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub command: String,
    pub exit_code: Option<i32>,
    pub ok: bool,
    pub time_ns: i64,
    pub seconds: f64,
}

/// Why a commit's data was released by gc.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneRecord {
    pub time_ns: i64,
    /// The retention plan's description of why (no rule kept it).
    pub reason: String,
    /// Files released; empty means all (a pruned commit), else a slimmed commit.
    pub released: Vec<String>,
}

/// Mutable facts about a commit, kept beside it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitState {
    pub verify: Option<VerifyRecord>,
    pub check: Option<CheckRecord>,
    pub pruned: Option<PruneRecord>,
}

/// Read a commit's state (default when none was recorded).
pub fn state(store: &Store, id: CommitId) -> Result<CommitState> {
    match store.view().state_raw(&id)? {
        Some(b) => postcard::from_bytes(&b).map_err(|e| Error::BadInput {
            path: format!("state of {}", id.short()),
            what: e.to_string(),
        }),
        None => Ok(CommitState::default()),
    }
}

/// One line of the `statelog` file: a commit's whole state after an update. Appended and
/// fsynced before the index records it, so `repair --rebuild-index` can restore states.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateLogEntry {
    pub commit: String,
    pub state: CommitState,
}

/// Update a commit's state under the index lock.
pub fn update_state(store: &Store, id: CommitId, f: impl FnOnce(&mut CommitState)) -> Result<()> {
    store.with_writer(|index| {
        let mut s: CommitState = match index.state_raw(&id)? {
            Some(b) => postcard::from_bytes(&b).unwrap_or_default(),
            None => CommitState::default(),
        };
        f(&mut s);
        let mut b = index.batch()?;
        put_state(store, &mut b, id, &s)?;
        index.write(b)?;
        Ok(())
    })
}

/// Journal `s` to the statelog (fsynced) and add it to `batch`.
pub fn put_state(
    store: &Store,
    batch: &mut crate::index::Batch<'_>,
    id: CommitId,
    s: &CommitState,
) -> Result<()> {
    let mut line = serde_json::to_vec(&StateLogEntry {
        commit: id.to_hex(),
        state: s.clone(),
    })
    .expect("state serializes");
    line.push(b'\n');
    let p = store.root().join("statelog");
    crate::fsutil::append_synced(&p, &line).map_err(crate::store::io_at(&p))?;
    batch.put_state_raw(&id, &postcard::to_stdvec(s).expect("state encodes"))?;
    Ok(())
}

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
        match crate::read::write_file_to(store, path, entry, &mut std::io::sink(), progress) {
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
    let dir = store
        .tmp_dir()
        .join(format!("check-{}-{}", id.short(), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let started = std::time::Instant::now();
    let result = (|| {
        crate::read::checkout(store, id, &dir, &Default::default(), progress)?;
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&dir)
            .env("CAIRN_CHECKOUT", &dir)
            .env("CAIRN_COMMIT", id.to_hex())
            .status()
            .map_err(|e| Error::Usage {
                what: format!("--verify-cmd: cannot run sh: {e}"),
            })?;
        Ok(CheckRecord {
            command: command.to_string(),
            exit_code: status.code(),
            ok: status.success(),
            time_ns: now_ns(),
            seconds: started.elapsed().as_secs_f64(),
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
