//! The per-commit state record: mutable facts about a commit that cannot live in the hashed
//! commit object — its verification, its load test, and whether gc released its data.
//!
//! Invariants: state records live in the index's `states` column family, keyed by commit id;
//! each update is first appended (fsynced) to the `statelog` journal, then written to the index
//! under the index lock, so `repair --rebuild-index` can restore them.

use crate::model::id::CommitId;
use crate::model::object::Tree;
use crate::storage::error::{Result, StoreError};
use crate::storage::store::Store;
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

/// The files of `commit` that gc released (all files for a pruned commit).
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

/// Refuse to check out a pruned commit, or a slimmed one unless `partial`, saying when, why and
/// what was released.
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
