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
    /// A remote: its URL, its bucket's objects, the ref protocol.
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
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

/// What kind of failure an [`Error`] is, for callers that react by kind rather than by module
/// (the Python package maps each to an exception class).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A revision, branch, tag, file or tensor that does not exist, or no store where one was
    /// looked for.
    NotFound,
    /// The data asked for was deleted by gc (a pruned commit, or a slimmed commit's released
    /// file).
    Pruned,
    /// The store holds damaged or missing data: a checksum, length or decode failure.
    Corrupt,
    /// The caller's input breaks a rule: a malformed file, path, name, revision, query or
    /// policy, or a tensor whose bytes do not match its dtype and shape.
    BadInput,
    /// Anything else: I/O errors, a ref moved by another writer, a store busy or too new.
    Other,
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        use crate::ops::read::ReadError;
        use crate::ops::rev::RevError;
        match self {
            Error::Store(s) => store_kind(s),
            Error::Rev(RevError::Store(s)) => store_kind(s),
            Error::Rev(RevError::UnknownRevision { .. } | RevError::UnbornBranch { .. }) => {
                ErrorKind::NotFound
            }
            Error::Rev(_) => ErrorKind::BadInput,
            Error::Read(r) => match r {
                ReadError::Store(s) => store_kind(s),
                ReadError::NoSuchFile { .. }
                | ReadError::NoSuchTensor { .. }
                | ReadError::NoSuchTensorInFile { .. } => ErrorKind::NotFound,
                ReadError::ChunkPastEnd { .. }
                | ReadError::SizeMismatch { .. }
                | ReadError::Sha256Mismatch { .. } => ErrorKind::Corrupt,
                ReadError::Io { .. }
                | ReadError::WriterStopped { .. }
                | ReadError::OutDir(crate::ops::read::OutDirError::Io { .. }) => ErrorKind::Other,
                _ => ErrorKind::BadInput,
            },
            Error::Remote(r) => {
                use crate::remote::RemoteError as R;
                match r {
                    R::Store(s) => store_kind(s),
                    R::NoSuchRemote { .. } | R::NoSuchRef { .. } => ErrorKind::NotFound,
                    R::BadObject { .. } | R::Missing { .. } | R::Pack(_) => ErrorKind::Corrupt,
                    R::BadUrl { .. }
                    | R::BadName { .. }
                    | R::RemoteExists { .. }
                    | R::NotCairn { .. }
                    | R::NotEmpty { .. } => ErrorKind::BadInput,
                    _ => ErrorKind::Other,
                }
            }
            Error::Verification(_) | Error::Index(_) | Error::Pack(_) | Error::Object(_) => {
                ErrorKind::Corrupt
            }
            Error::Commit(crate::ops::commit::CommitError::Store(s)) => store_kind(s),
            Error::Commit(crate::ops::commit::CommitError::Io { .. }) => ErrorKind::Other,
            Error::Commit(_)
            | Error::Catalog(_)
            | Error::Gc(_)
            | Error::Ref(_)
            | Error::Path(_)
            | Error::Safetensors(_)
            | Error::TorchZip(_) => ErrorKind::BadInput,
            _ => ErrorKind::Other,
        }
    }
}

fn store_kind(e: &StoreError) -> ErrorKind {
    match e {
        StoreError::NotAStore { .. } | StoreError::NoStoreFound { .. } => ErrorKind::NotFound,
        StoreError::NoSuchRef { .. } => ErrorKind::NotFound,
        StoreError::Pruned { .. } | StoreError::Slimmed { .. } => ErrorKind::Pruned,
        StoreError::Index(_)
        | StoreError::Pack(_)
        | StoreError::Object(_)
        | StoreError::MissingChunk { .. }
        | StoreError::MissingObject { .. }
        | StoreError::DeltaChain { .. }
        | StoreError::ChunkLength { .. }
        | StoreError::BadState { .. }
        | StoreError::BadManifest { .. }
        | StoreError::BadMarker { .. } => ErrorKind::Corrupt,
        StoreError::Ref(_) | StoreError::AlreadyAStore { .. } | StoreError::NotEmpty { .. } => {
            ErrorKind::BadInput
        }
        _ => ErrorKind::Other,
    }
}
