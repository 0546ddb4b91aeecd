//! What a caller asks of a commit ([`CommitOptions`], [`TensorInput`]) and what it gets back
//! ([`CommitOutcome`]).

#![warn(missing_docs)]

use super::error::{CommitError, Result};
use crate::model::dtype::DType;
use crate::model::id::{CommitId, PackId, TreeId};
use crate::model::object::Metadata;
use serde::Serialize;

/// A tensor handed over from memory.
#[derive(Clone, Debug)]
pub struct TensorInput {
    /// The tensor's name in the safetensors header.
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Its bytes, little-endian, row-major; exactly what `dtype` and `shape` take.
    pub data: Vec<u8>,
}

/// Settings of a commit besides its files.
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    /// The commit message; its first line is the reflog's.
    pub message: String,
    /// Who commits (also the reflog's `who`).
    pub author: String,
    /// The commit time, ns since the Unix epoch. Defaults to now.
    pub time_ns: Option<i64>,
    /// Step, epoch, metrics, provenance and free-form fields recorded with the commit.
    pub meta: Metadata,
    /// Branch to commit to; defaults to the current branch.
    pub branch: Option<String>,
    /// Globs of paths (or file names) to store as plain bytes even if they look structured.
    pub opaque: Vec<String>,
    /// Do not read step, epoch and metrics from a top-level `trainer_state.json`.
    pub ignore_trainer_state: bool,
    /// In [`super::CommitBuilder::add_dir`], follow symlinks whose target lies outside the
    /// directory (a Hugging Face hub snapshot links every file into `../../blobs/`). Off by
    /// default: a stranger's folder holding `config.json -> ~/.ssh/id_rsa` must not sweep the
    /// secret into the store; such a link is refused, naming it and its target.
    pub follow_symlinks: bool,
    /// Stage this commit as part `part` of `total` of sharded transaction `id`: the commit
    /// becomes visible, atomically, when all parts are staged (see [`super::sharded`]).
    pub txn: Option<TxnPart>,
    /// K for this commit's chunks, 1 to [`crate::codec::DELTA_DEPTH_LIMIT`]: a chunk is delta-coded only
    /// while it is fewer than K versions from its last standalone encoding, so every K-th
    /// version at most is stored standalone and a read decodes at most K chunks (2 with
    /// [`DeltaBase::Root`]). 1 stores every chunk standalone (fastest reads); larger K stores
    /// less. `None` is [`crate::codec::MAX_DELTA_DEPTH`].
    pub delta_depth: Option<u32>,
    /// What a new version of a chunk is delta-coded against (see [`DeltaBase`]).
    pub delta_base: DeltaBase,
}

/// What a chunk's new version is delta-coded against. Either way a chunk's recorded depth counts
/// the versions since its last standalone encoding, and reaches at most K-1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaBase {
    /// The standalone root of the parent chunk's chain (the default): every delta of a group of
    /// K versions shares one base, so a read decodes at most one base whatever the depth, and a
    /// commit decodes only that root to encode against it. Stores 1.3-2.4% more than `Parent`
    /// on the benchmark series (docs/benchmarks.md).
    #[default]
    Root,
    /// The parent's chunk itself: each version against the one before, the smallest deltas, but
    /// a read at depth d decodes a chain of d+1 chunks.
    Parent,
}

impl std::str::FromStr for DeltaBase {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "root" => Ok(Self::Root),
            "parent" => Ok(Self::Parent),
            other => Err(format!(
                "unknown delta base {other:?}: expected \"root\" or \"parent\""
            )),
        }
    }
}

/// What a commit did.
#[derive(Clone, Debug, Serialize)]
pub struct CommitOutcome {
    /// The commit made (all zeros for a part of a sharded commit until the last part lands).
    pub commit: CommitId,
    /// Its tree (for a part of a sharded commit, the part's own tree).
    pub tree: TreeId,
    /// Its parent: the branch head it was published on, if the branch had one.
    pub parent: Option<CommitId>,
    /// The branch it was committed to.
    pub branch: String,
    /// Files in the tree.
    pub files: u64,
    /// Sum of the files' sizes in bytes.
    pub logical_bytes: u64,
    /// Chunks this commit added to the store.
    pub new_chunks: u64,
    /// Raw bytes of those chunks.
    pub new_chunk_bytes: u64,
    /// Chunk references satisfied by chunks already stored (or repeated within the commit).
    pub reused_chunks: u64,
    /// Files read without computing their SHA-256: the parent's digest was reused, because
    /// the file's chunks are exactly the parent file's.
    pub sha256_from_parent: u64,
    /// Bytes added on disk (all pack files written).
    pub stored_bytes_added: u64,
    /// The packs written.
    pub packs: Vec<PackId>,
    /// The branch moved while this commit was being written, so it was re-made on the new head.
    pub reparented: bool,
    /// What the store's retention policy did after this commit, when one is set.
    pub auto_gc: Option<AutoGc>,
    /// For a part of a sharded commit: how many parts are staged. Until the last part lands,
    /// `commit` is all zeros and nothing is visible.
    pub txn: Option<TxnStatus>,
}

/// The retention policy's run due after a commit: not run by the commit itself (see
/// [`super::CommitBuilder::commit`]); `cairn gc --status` reports how it went.
#[derive(Clone, Debug, Serialize)]
pub struct AutoGc {
    /// The stored policy, as text.
    pub policy: String,
    /// The branch it applies to.
    pub branch: String,
}

/// Which part of which transaction a commit stages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnPart {
    /// The transaction id shared by every part: 1-100 letters, digits, '.', '_' or '-', not
    /// starting with '.'.
    pub id: String,
    /// This part's number, 1-based.
    pub part: u32,
    /// How many parts the transaction has (at most 65536).
    pub total: u32,
}

impl TxnPart {
    /// From `--txn ID --part I/N`.
    pub fn parse(id: &str, part: &str) -> Result<TxnPart> {
        if id.is_empty()
            || id.len() > 100
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            || id.starts_with('.')
        {
            return Err(CommitError::BadTxnId { id: id.to_string() });
        }
        let (i, n) = part
            .split_once('/')
            .and_then(|(i, n)| Some((i.parse::<u32>().ok()?, n.parse::<u32>().ok()?)))
            .filter(|(i, n)| *i >= 1 && i <= n && *n <= 65_536)
            .ok_or_else(|| CommitError::BadTxnPart {
                part: part.to_string(),
            })?;
        Ok(TxnPart {
            id: id.to_string(),
            part: i,
            total: n,
        })
    }
}

/// Where a transaction stands after staging a part.
#[derive(Clone, Debug, Serialize)]
pub struct TxnStatus {
    /// The transaction id.
    pub id: String,
    /// The part just staged, 1-based.
    pub part: u32,
    /// How many parts the transaction has.
    pub total: u32,
    /// How many parts are staged, this one included.
    pub staged: u32,
    /// The commit, once the last part is staged.
    pub commit: Option<CommitId>,
    /// The commit's parent, once it is made.
    pub parent: Option<CommitId>,
}
