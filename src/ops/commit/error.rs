//! [`CommitError`]: what can stop a commit, an async commit or a sharded transaction part.
//! Errors of the layers below (the store, its index, packs and refs, path rules, provenance)
//! are wrapped whole, so their messages and kinds survive.
//!
//! Invariant: a commit that returns an error has published nothing (the write path's last
//! step, the index batch, is the only one that makes a commit visible).

#![warn(missing_docs)]

use crate::codec::DELTA_DEPTH_LIMIT;
use crate::formats::safetensors::SafetensorsError;
use crate::model::dtype::{BadShape, DType};
use crate::model::path::PathError;
use crate::ops::provenance::ProvenanceError;
use crate::storage::error::StoreError;
use crate::storage::index::IndexError;
use crate::storage::pack::PackError;
use crate::storage::refs::RefError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Errors of building, writing and publishing a commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The store failed: reading the parent, a ref, the reflog, a state record or the
    /// staging area.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The index failed (dedup lookups, the publish batch).
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A pack failed to be written or sealed.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// The branch name is refused by the ref rules.
    #[error(transparent)]
    Ref(#[from] RefError),
    /// A path given for a file inside the commit breaks the path rules.
    #[error(transparent)]
    Path(#[from] PathError),
    /// `trainer_state.json` does not parse, or disagrees with the metadata given.
    #[error(transparent)]
    Provenance(#[from] ProvenanceError),
    /// Reading the store's retention policy for the auto-gc after the commit failed.
    #[error(transparent)]
    Gc(#[from] crate::ops::gc::GcError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The background worker or its encoding thread pool could not be started.
    #[error("{store}: {source}")]
    Worker {
        /// The store the committer writes to.
        store: PathBuf,
        /// Why the thread or pool could not be made.
        #[source]
        source: std::io::Error,
    },
    /// A `*.safetensors` file (or tensors to lay out as one) is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {source}")]
    Safetensors {
        /// The file's path inside the commit.
        path: String,
        /// The rule it breaks.
        #[source]
        source: SafetensorsError,
    },
    /// A file changed size, modification time or content while the commit read it.
    #[error("{path}: content changed while cairn was reading it; commit again once it is stable")]
    ChangedWhileReading {
        /// The file's path inside the commit.
        path: String,
    },
    /// `add_dir` was given something that is not a directory.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// `add_path` was given something that is not a regular file.
    #[error("{path}: not a regular file")]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// A directory walk met a file name that is not UTF-8 (paths in a commit are UTF-8).
    #[error("{path}: file name {name:?} is not UTF-8")]
    NonUtf8Name {
        /// The entry's path on disk.
        path: PathBuf,
        /// Its name.
        name: OsString,
    },
    /// A directory walk met a symlink to something other than a file.
    #[error("{path}: symlink to a directory or special file; cairn follows only symlinks to files")]
    SymlinkNotToFile {
        /// The symlink.
        path: PathBuf,
    },
    /// A directory walk met a symlink whose target lies outside the directory being committed,
    /// without [`super::CommitOptions::follow_symlinks`].
    #[error(
        "{}: a symlink to {}, outside {}; cairn does not follow it (it could sweep a secret into the store); pass --follow-symlinks to follow every link",
        path.display(),
        target.display(),
        dir.display()
    )]
    SymlinkLeavesDir {
        /// The symlink.
        path: PathBuf,
        /// Where it resolves to.
        target: PathBuf,
        /// The directory being committed.
        dir: PathBuf,
    },
    /// A directory walk met a socket, FIFO or device.
    #[error("{path}: not a regular file or directory")]
    SpecialFile {
        /// The entry.
        path: PathBuf,
    },
    /// Two inputs were added at the same path.
    #[error("{path}: added twice")]
    AddedTwice {
        /// The path inside the commit.
        path: String,
    },
    /// A path is both a file and, as the prefix of another file's path, a directory.
    #[error("{path}: {parent} is both a file and a directory")]
    FileAndDirectory {
        /// The file whose path has `parent` as a directory.
        path: String,
        /// The path that was also added as a file.
        parent: String,
    },
    /// A tensor's shape overflows, or its bits do not make whole bytes.
    #[error("{path}: {source}")]
    TensorShape {
        /// The tensor, as `file:name`.
        path: String,
        /// The dtype and shape refused.
        #[source]
        source: BadShape,
    },
    /// A tensor was given another number of bytes than its dtype and shape take.
    #[error("{path}: {len} bytes given for dtype {dtype} and shape {shape:?}, which take {want}")]
    TensorLength {
        /// The tensor, as `file:name`.
        path: String,
        /// Bytes given.
        len: usize,
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<u64>,
        /// Bytes that dtype and shape take.
        want: u64,
    },
    /// A piece of a file is larger than this machine can address.
    #[error("{path}: piece too large")]
    PieceTooLarge {
        /// The file's path inside the commit.
        path: String,
    },
    /// A read of a file held in memory ran past its end (a header points beyond it).
    #[error("{path}: read past the end")]
    ReadPastEnd {
        /// The file's path inside the commit.
        path: String,
    },
    /// `delta_depth` (K) is outside 1 to [`DELTA_DEPTH_LIMIT`].
    #[error("delta depth {depth} is out of range: K is 1 (no delta coding) to {DELTA_DEPTH_LIMIT}")]
    DeltaDepth {
        /// The K asked for.
        depth: u32,
    },
    /// An `--opaque` glob does not parse.
    #[error("bad --opaque glob {glob:?}: {source}")]
    BadGlob {
        /// The glob.
        glob: String,
        /// The parser's error.
        #[source]
        source: globset::Error,
    },
    /// The `--opaque` globs do not build into one matcher.
    #[error("bad --opaque globs: {source}")]
    BadGlobs {
        /// The builder's error.
        #[source]
        source: globset::Error,
    },
    /// A sharded transaction id (`--txn`) uses characters outside the allowed set.
    #[error("--txn {id:?}: use 1-100 letters, digits, '.', '_' or '-'")]
    BadTxnId {
        /// The id given.
        id: String,
    },
    /// A part (`--part`) is not `I/N` with 1 <= I <= N <= 65536.
    #[error("--part {part:?}: expected I/N with 1 <= I <= N")]
    BadTxnPart {
        /// The part given.
        part: String,
    },
    /// The transaction already committed; its parts cannot be staged again.
    #[error("transaction {id} is already committed (as {commit})")]
    TxnCommitted {
        /// The transaction id.
        id: String,
        /// The commit it made, as recorded in its `done` file.
        commit: String,
    },
    /// Two parts of one transaction disagree on how many parts there are.
    #[error("transaction {id}: part {part} said there are {said} parts, this one says {says}")]
    TxnPartCount {
        /// The transaction id.
        id: String,
        /// The part staged earlier.
        part: u32,
        /// The total that part gave.
        said: u32,
        /// The total this part gives.
        says: u32,
    },
    /// This part of the transaction is already staged.
    #[error("transaction {id}: part {part} is already staged")]
    TxnPartStaged {
        /// The transaction id.
        id: String,
        /// The part.
        part: u32,
    },
    /// Two parts of a transaction hold the same file.
    #[error("{path}: transaction {id}: parts {first} and {second} both hold this file")]
    TxnOverlap {
        /// The file's path inside the commit.
        path: String,
        /// The transaction id.
        id: String,
        /// The part that holds it first (in part order).
        first: u32,
        /// The other part that holds it.
        second: u32,
    },
    /// The parts of a transaction, merged, make a tree that breaks the tree rules (one part
    /// holds a file `a`, another `a/b`).
    #[error("transaction {id}: its parts clash: {what}")]
    TxnClash {
        /// The transaction id.
        id: String,
        /// The rule the merged tree breaks, naming the paths.
        what: String,
    },
    /// An async committer was asked for no slots.
    #[error("max_in_flight must be at least 1")]
    ZeroInFlight,
    /// The async committer's worker thread has ended: no commit can be begun.
    #[error("background commit did not complete: the background worker has stopped")]
    WorkerGone,
    /// The async committer's worker ended before it ran this commit.
    #[error(
        "background commit did not complete: the background worker stopped before running this commit"
    )]
    NotRun,
    /// A background commit panicked; nothing of it was published.
    #[error("background commit did not complete: panicked: {what}")]
    Panicked {
        /// The panic's message.
        what: String,
    },
}

/// Results of the commit operations.
pub type Result<T, E = CommitError> = std::result::Result<T, E>;

/// Wrap an I/O error with the path it happened at.
pub(super) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CommitError + '_ {
    move |source| CommitError::Io {
        path: path.to_path_buf(),
        source,
    }
}
