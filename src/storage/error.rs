//! [`StoreError`]: what can go wrong opening a store and reading or moving what it holds.
//! Errors of the parts it is built from ([`IndexError`], [`PackError`], [`RefError`],
//! [`ObjectError`]) are wrapped, not flattened, so their messages and kinds survive.
#![warn(missing_docs)]

use crate::model::id::{ChunkId, CommitId, ObjectId};
use crate::model::object::ObjectError;
use crate::storage::index::IndexError;
use crate::storage::pack::PackError;
use crate::storage::refs::RefError;
use crate::storage::{DEFAULT_DIR, FORMAT_VERSION, MARKER};
use std::path::{Path, PathBuf};

/// Errors of the store directory: opening and creating it, reading objects and chunks,
/// moving refs, its per-commit state records and its staging area.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `path` has no `CAIRN` marker.
    #[error("{path} is not a cairn store (no {MARKER} file); create one with `cairn init`")]
    NotAStore {
        /// The directory that was opened as a store.
        path: PathBuf,
    },
    /// Discovery walked up from `start` without finding a store.
    #[error(
        "no cairn store found in {start} or any parent directory (looked for {DEFAULT_DIR}); create one with `cairn init` or pass --store"
    )]
    NoStoreFound {
        /// The directory the walk began in (the working directory).
        start: PathBuf,
    },
    /// The walk up from the working directory found a store another user owns, which is not
    /// listed as safe: its objects and hooks (`--verify-cmd`) would be someone else's.
    #[error(
        "the store {path} found above the working directory is owned by uid {owner}, not by you (uid {you}); name it with --store or $CAIRN_STORE to use it, or list it in \"safe_stores\" of the cairn config file ({config})"
    )]
    UnsafeStore {
        /// The store found.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// The uid cairn runs as.
        you: u32,
        /// Where the config file is looked for, as the caller reported it.
        config: String,
    },
    /// The config file does not parse.
    #[error("config file {path}: {what}")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// `init` on a directory that already is a store.
    #[error("{path} is already a cairn store")]
    AlreadyAStore {
        /// The directory `init` was asked to create a store in.
        path: PathBuf,
    },
    /// `init` on a directory that holds someone else's files.
    #[error("{path} exists and is not empty; cairn init wants a new or empty directory")]
    NotEmpty {
        /// The directory `init` was asked to create a store in.
        path: PathBuf,
    },
    /// The store was written by another format version.
    #[error("store {path} has format version {found}; this cairn reads version {FORMAT_VERSION}")]
    FormatVersion {
        /// The store's root directory.
        path: PathBuf,
        /// The format version its marker names.
        found: u32,
    },
    /// The marker or the index directory is damaged or missing.
    #[error("store marker {path} is damaged: {what}")]
    BadMarker {
        /// The damaged file or directory.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the failed operation was on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A pack failed to open or held a damaged entry.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// An object did not decode or was of the wrong kind.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// A ref name or the reflog was refused.
    #[error(transparent)]
    Ref(#[from] RefError),
    /// A lazy clone's chunk source could not supply chunks: the remote is unreachable, or what
    /// it sent did not check.
    #[error("fetching chunks from {source_name}: {what}")]
    Fetch {
        /// The source (a remote's name and URL).
        source_name: String,
        /// What went wrong.
        what: String,
    },
    /// The index has no entry for a chunk a tree needs.
    #[error("chunk {id} is missing from the store")]
    MissingChunk {
        /// The chunk the index has no location for.
        id: ChunkId,
    },
    /// The index has no entry for an object.
    #[error("object {id} is missing from the store")]
    MissingObject {
        /// The commit or tree the index has no location for.
        id: ObjectId,
    },
    /// A chunk's delta chain is longer than any writer makes (more than 64 links), or loops;
    /// also a chunk whose raw length does not fit in memory's address range.
    #[error("chunk {id}: delta chain too deep or cyclic")]
    DeltaChain {
        /// The chunk whose chain was followed.
        id: ChunkId,
    },
    /// A chunk decoded to the wrong length.
    #[error("chunk {id}: {got} bytes where {want} are expected")]
    ChunkLength {
        /// The chunk that was read.
        id: ChunkId,
        /// Bytes it decoded to.
        got: usize,
        /// Bytes asked for: the length of the caller's buffer.
        want: usize,
    },
    /// A ref that was asked for does not exist.
    #[error("{name} does not exist")]
    NoSuchRef {
        /// The full ref name that was looked up (`refs/heads/...`).
        name: String,
    },
    /// A ref that is to be created exists already.
    #[error("{name} already exists (at {at})")]
    RefExists {
        /// The short ref name, as the user gave it.
        name: String,
        /// The short id of the commit it points at.
        at: String,
    },
    /// A compare-and-swap of a ref found it elsewhere than expected.
    #[error("{name} moved: expected {expected}, found {found}")]
    RefMoved {
        /// The full ref name that was to move.
        name: String,
        /// Hex id the caller expected it at, or `nothing` when it expected no ref.
        expected: String,
        /// Hex id it is at now, or `nothing` when it does not exist.
        found: String,
    },
    /// A commit's state record does not decode.
    #[error("state of {commit}: {what}")]
    BadState {
        /// The commit whose state record is damaged.
        commit: CommitId,
        /// The decoder's message.
        what: String,
    },
    /// A sharded commit's staged manifest does not decode.
    #[error("{path}: transaction manifest does not decode: {what}")]
    BadManifest {
        /// The manifest file.
        path: PathBuf,
        /// The decoder's message.
        what: String,
    },
    /// A checkout was asked of a commit whose data gc released entirely.
    #[error(
        "commit {} was pruned by gc at {when} ({reason}): its data is released; its metadata remains (cairn show {})",
        commit.short(),
        commit.short()
    )]
    Pruned {
        /// The pruned commit (its commit and tree objects remain).
        commit: CommitId,
        /// When gc released it (RFC 3339).
        when: String,
        /// The retention plan's description of why no rule kept it.
        reason: String,
    },
    /// gc released some of a commit's files, and a whole checkout was asked for.
    #[error(
        "commit {} was slimmed by gc at {when} ({reason}): released {}; pass --partial to restore the other files",
        commit.short(),
        released.join(", ")
    )]
    Slimmed {
        /// The slimmed commit.
        commit: CommitId,
        /// When gc slimmed it (RFC 3339).
        when: String,
        /// The retention plan's description of why those files were released.
        reason: String,
        /// Paths, within the commit's tree, of the files whose data was released.
        released: Vec<String>,
    },
}

/// Results of the storage layer; the error defaults to [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A closure for `map_err` that turns an I/O error at `path` into [`StoreError::Io`].
pub fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
