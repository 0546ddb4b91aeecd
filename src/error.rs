//! The crate's error: one variant per module error, each wrapped whole, so `?` works across
//! the library and a caller can still match the module's own kinds.

use crate::storage::error::StoreError;

/// Errors of the store and of every operation on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store directory, its objects, chunks, refs and records.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Resolving a revision name.
    #[error(transparent)]
    Rev(#[from] crate::ops::rev::RevError),
    /// Querying the catalog of commits.
    #[error(transparent)]
    Catalog(#[from] crate::ops::catalog::CatalogError),
    /// Reading a commit back: checkout, cat, tensor reads.
    #[error(transparent)]
    Read(#[from] crate::ops::read::ReadError),
    /// Verifying a commit or running its load test.
    #[error(transparent)]
    Verification(#[from] crate::ops::verify::VerifyError),
    /// Writing a tensor out as .npy or .safetensors.
    #[error(transparent)]
    Export(#[from] crate::ops::export::ExportError),
    /// Retention policies, gc planning and gc execution.
    #[error(transparent)]
    Gc(#[from] crate::ops::gc::GcError),
    /// Checking a store (problems found are a report, not an error).
    #[error(transparent)]
    Fsck(#[from] crate::ops::fsck::FsckError),
    /// Rebuilding the index.
    #[error(transparent)]
    Repair(#[from] crate::ops::repair::RepairError),
    /// Making a commit: its inputs, the write path, async and sharded commits.
    #[error(transparent)]
    Commit(#[from] crate::ops::commit::CommitError),
    /// Capturing provenance (git, datasets) and reading a trainer state.
    #[error(transparent)]
    Provenance(#[from] crate::ops::provenance::ProvenanceError),
    /// A lower-level index error met outside the store.
    #[error(transparent)]
    Index(#[from] crate::storage::index::IndexError),
    /// A pack that failed to open or held a damaged entry.
    #[error(transparent)]
    Pack(#[from] crate::storage::pack::PackError),
    /// An object that did not decode.
    #[error(transparent)]
    Object(#[from] crate::model::object::ObjectError),
    /// A ref name refused by the ref rules.
    #[error(transparent)]
    Ref(#[from] crate::storage::refs::RefError),
    /// A path refused by the path rules.
    #[error(transparent)]
    Path(#[from] crate::model::path::PathError),
    /// A chunk encoding that failed.
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    /// A safetensors file that breaks the format.
    #[error(transparent)]
    Safetensors(#[from] crate::formats::safetensors::SafetensorsError),
    /// A torch.save archive that cannot be read statically.
    #[error(transparent)]
    TorchZip(#[from] crate::formats::torchzip::TorchZipError),
}

/// Results of the library's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
