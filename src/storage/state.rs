//! The per-commit state record: mutable facts about a commit that cannot live in the hashed
//! commit object — its verification, its load test, and whether gc released its data.
//!
//! Invariants: state records live in the index's `states` column family, keyed by commit id;
//! each update is first appended (fsynced) to the `statelog` journal, then written to the index
//! under the index lock, so `repair --rebuild-index` can restore them.
#![warn(missing_docs)]

use crate::model::id::CommitId;
use crate::model::object::Tree;
use crate::storage::error::{Result, StoreError};
use crate::storage::store::Store;
use serde::{Deserialize, Serialize};

/// The outcome of re-reading a commit (`cairn verify`): every file decoded and checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRecord {
    /// Whether every file read back intact (`problems` is empty).
    pub ok: bool,
    /// When the verification ran, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// Files checked.
    pub files: u64,
    /// Bytes of the files that read back intact.
    pub bytes: u64,
    /// One line per problem found (`path: error`).
    pub problems: Vec<String>,
}

/// The outcome of a `--verify-cmd` load test: the commit checked out into a temporary
/// directory and a command run there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// The command, as given to `sh -c`.
    pub command: String,
    /// Its exit code; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// Whether it exited 0.
    pub ok: bool,
    /// When it finished, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// Wall-clock seconds of checkout and command together.
    pub seconds: f64,
}

/// Why a commit's data was released by gc.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneRecord {
    /// When gc released it, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// The retention plan's description of why (no rule kept it).
    pub reason: String,
    /// Files released; empty means all (a pruned commit), else a slimmed commit.
    pub released: Vec<String>,
}

/// Mutable facts about a commit, kept beside it; the default (all `None`) is a commit nothing
/// was recorded about.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitState {
    /// The latest verification, if one ran.
    pub verify: Option<VerifyRecord>,
    /// The latest load test, if one ran.
    pub check: Option<CheckRecord>,
    /// Set once gc pruned or slimmed the commit.
    pub pruned: Option<PruneRecord>,
}

/// Read commit `id`'s state from the store's current view (default when none was recorded).
/// Fails when the index fails or the record does not decode ([`StoreError::BadState`]).
pub fn state(store: &Store, id: CommitId) -> Result<CommitState> {
    match store.view().state_raw(&id)? {
        Some(b) => postcard::from_bytes(&b).map_err(|e| StoreError::BadState {
            commit: id,
            what: e.to_string(),
        }),
        None => Ok(CommitState::default()),
    }
}

/// One line of the `statelog` file: a commit's whole state after an update. Appended and
/// fsynced before the index records it, so `repair --rebuild-index` can restore states.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateLogEntry {
    /// The commit id, in hex.
    pub commit: String,
    /// The commit's whole state after the update.
    pub state: CommitState,
}

/// Update commit `id`'s state under the index lock: read it (a record that does not decode
/// counts as the default), apply `f`, journal the result and write it. Fails when the lock,
/// the index or the journal append fails.
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

/// Journal `s` as commit `id`'s state to the statelog (appended, fsynced) and add it to
/// `batch`; the caller writes the batch under the index lock. Fails when the append fails.
pub fn put_state(
    store: &Store,
    batch: &mut crate::storage::index::Batch<'_>,
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
    crate::storage::fsutil::append_synced(&p, &line).map_err(crate::storage::error::io_at(&p))?;
    batch.put_state_raw(&id, &postcard::to_stdvec(s).expect("state encodes"))?;
    Ok(())
}

/// The paths of `commit`'s files that gc released (all files for a pruned commit; none when it
/// was neither pruned nor slimmed). Fails when the state or, for a pruned commit, its commit
/// or tree object cannot be read.
pub fn released_files(store: &Store, commit: CommitId) -> Result<Vec<String>> {
    let st = state(store, commit)?;
    Ok(match st.pruned {
        None => Vec::new(),
        Some(p) if p.released.is_empty() => {
            let tree = store.tree(store.commit(commit)?.tree)?;
            tree.files.keys().cloned().collect()
        }
        Some(p) => p.released,
    })
}

/// Refuse to check out a pruned commit ([`StoreError::Pruned`]), or a slimmed one unless
/// `partial` ([`StoreError::Slimmed`]), saying when, why and what was released. `tree` is the
/// commit's tree: a slimmed commit that released every file counts as pruned. Also fails when
/// the state cannot be read.
pub fn check_not_released(
    store: &Store,
    commit: CommitId,
    tree: &Tree,
    partial: bool,
) -> Result<()> {
    let st = state(store, commit)?;
    let Some(p) = st.pruned else { return Ok(()) };
    let when = crate::model::time::format_time(p.time_ns);
    if p.released.is_empty() || p.released.len() == tree.files.len() {
        return Err(StoreError::Pruned {
            commit,
            when,
            reason: p.reason,
        });
    }
    if !partial {
        return Err(StoreError::Slimmed {
            commit,
            when,
            reason: p.reason,
            released: p.released,
        });
    }
    Ok(())
}

/// Refuse to read file `path` of `commit` when gc released it: the commit was pruned
/// ([`StoreError::Pruned`]), or slimmed and `path` is among the released files
/// ([`StoreError::Slimmed`]). Without this a read would fail on the first deleted chunk as if the
/// store were damaged. Also fails when the state cannot be read.
pub fn check_file_not_released(store: &Store, commit: CommitId, path: &str) -> Result<()> {
    let st = state(store, commit)?;
    let Some(p) = st.pruned else { return Ok(()) };
    let when = crate::model::time::format_time(p.time_ns);
    if p.released.is_empty() {
        return Err(StoreError::Pruned {
            commit,
            when,
            reason: p.reason,
        });
    }
    if p.released.iter().any(|r| r == path) {
        return Err(StoreError::Slimmed {
            commit,
            when,
            reason: p.reason,
            released: vec![path.to_string()],
        });
    }
    Ok(())
}
