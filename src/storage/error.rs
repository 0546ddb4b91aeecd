//! [`StoreError`]: what can go wrong opening a store and reading or moving what it holds.
//! Errors of the parts it is built from ([`IndexError`], [`PackError`], [`RefError`],
//! [`ObjectError`]) are wrapped, not flattened, so their messages and kinds survive.

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
        /// The directory that was opened.
        path: PathBuf,
    },
    /// Discovery walked up from `start` without finding a store.
    #[error(
        "no cairn store found in {start} or any parent directory (looked for {DEFAULT_DIR}); create one with `cairn init` or pass --store"
    )]
    NoStoreFound {
        /// Where the walk began.
        start: PathBuf,
    },
    /// `init` on a directory that already is a store.
    #[error("{path} is already a cairn store")]
    AlreadyAStore {
        /// The directory.
        path: PathBuf,
    },
    /// `init` on a directory that holds someone else's files.
    #[error("{path} exists and is not empty; cairn init wants a new or empty directory")]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// The store was written by another format version.
    #[error("store {path} has format version {found}; this cairn reads version {FORMAT_VERSION}")]
    FormatVersion {
        /// The store.
        path: PathBuf,
        /// The version its marker names.
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
        /// The file or directory.
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
    /// The index has no entry for a chunk a tree needs.
    #[error("chunk {id} is missing from the store")]
    MissingChunk {
        /// The chunk.
        id: ChunkId,
    },
    /// The index has no entry for an object.
    #[error("object {id} is missing from the store")]
    MissingObject {
        /// The object.
        id: ObjectId,
    },
    /// A chunk's delta chain is longer than any writer makes, or loops.
    #[error("chunk {id}: delta chain too deep or cyclic")]
    DeltaChain {
        /// The chunk whose chain was followed.
        id: ChunkId,
    },
    /// A chunk decoded to the wrong length.
    #[error("chunk {id}: {got} bytes where {want} are expected")]
    ChunkLength {
        /// The chunk.
        id: ChunkId,
        /// The length it decoded to.
        got: usize,
        /// The length asked for.
        want: usize,
    },
    /// A ref that was asked for does not exist.
    #[error("{name} does not exist")]
    NoSuchRef {
        /// The full ref name.
        name: String,
    },
    /// A compare-and-swap of a ref found it elsewhere than expected.
    #[error("{name} moved: expected {expected}, found {found}")]
    RefMoved {
        /// The full ref name.
        name: String,
        /// Where the caller last saw it.
        expected: String,
        /// Where it is.
        found: String,
    },
    /// A commit's state record does not decode.
    #[error("state of {commit}: {what}")]
    BadState {
        /// The commit.
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
    /// gc released all of a commit's data.
    #[error(
        "commit {} was pruned by gc at {when} ({reason}): its data is released; its metadata remains (cairn show {})",
        commit.short(),
        commit.short()
    )]
    Pruned {
        /// The commit.
        commit: CommitId,
        /// When gc released it (RFC 3339).
        when: String,
        /// Why no retention rule kept it.
        reason: String,
    },
    /// gc released some of a commit's files, and a whole checkout was asked for.
    #[error(
        "commit {} was slimmed by gc at {when} ({reason}): released {}; pass --partial to restore the other files",
        commit.short(),
        released.join(", ")
    )]
    Slimmed {
        /// The commit.
        commit: CommitId,
        /// When gc slimmed it (RFC 3339).
        when: String,
        /// Why.
        reason: String,
        /// The files released.
        released: Vec<String>,
    },
}

/// Results of the storage layer.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Wrap an I/O error with the path it happened at.
pub fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
