//! The crate's error: one variant per module error, each wrapped whole, so `?` works across
//! the library and a caller can still match the module's own kinds.

use crate::storage::error::StoreError;
use std::path::PathBuf;

/// Errors of the store and of every operation on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store directory, its objects, chunks, refs and records.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Making a commit: its inputs, the write path, async and sharded commits.
    #[error(transparent)]
    Commit(#[from] crate::ops::commit::CommitError),
    /// Capturing provenance (git, datasets) and reading a trainer state.
    #[error(transparent)]
    Provenance(#[from] crate::ops::provenance::ProvenanceError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Index(#[from] crate::storage::index::IndexError),
    #[error(transparent)]
    Pack(#[from] crate::storage::pack::PackError),
    #[error(transparent)]
    Object(#[from] crate::model::object::ObjectError),
    #[error(transparent)]
    Ref(#[from] crate::storage::refs::RefError),
    #[error("unknown revision {rev:?}{hint}")]
    UnknownRevision { rev: String, hint: String },
    #[error("revision {rev:?} is ambiguous: it matches {matches}")]
    AmbiguousRevision { rev: String, matches: String },
    #[error("{rev}: {what}")]
    BadRevision { rev: String, what: String },
    #[error("branch {branch} has no commits yet")]
    UnbornBranch { branch: String },
    #[error("{name} already exists (at {at})")]
    RefExists { name: String, at: String },
    #[error("{path}: {what}")]
    BadInput { path: String, what: String },
    #[error("{path}: not a valid safetensors file: {source}")]
    Safetensors {
        path: String,
        #[source]
        source: crate::formats::safetensors::SafetensorsError,
    },
    #[error("{path}: content changed while cairn was reading it; commit again once it is stable")]
    ChangedWhileReading { path: String },
    #[error("{path}: {what}")]
    Verify { path: String, what: String },
    #[error("{what}")]
    Usage { what: String },
    /// A background commit (see [`crate::ops::commit::async_commit`]) stopped without an outcome of its own.
    #[error("background commit did not complete: {what}")]
    Background { what: String },
}

/// Results of the library's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::model::path::PathError> for Error {
    fn from(e: crate::model::path::PathError) -> Error {
        Error::BadInput {
            path: e.path,
            what: e.what.to_string(),
        }
    }
}

/// Wrap an I/O error with the path it happened at.
pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
