//! [`RemoteError`]: what can go wrong talking to a remote and keeping its local records.
#![warn(missing_docs)]

use crate::model::id::CommitId;
use crate::storage::error::StoreError;
use crate::storage::pack::PackError;
use std::path::PathBuf;

/// Errors of remotes: their URLs and names, the bucket's objects, and the ref protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// A remote URL that is not `s3://BUCKET[/PREFIX]` or `file:///ABSOLUTE/PATH`.
    #[error("bad remote URL {url:?}: {why}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A remote name that breaks the naming rules.
    #[error("bad remote name {name:?}: {why}")]
    BadName {
        /// The name as given.
        name: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// No remote of that name is configured.
    #[error("no remote named {name:?}; add one with `cairn remote add {name} URL`")]
    NoSuchRemote {
        /// The name asked for.
        name: String,
    },
    /// `remote add` of a name already configured.
    #[error("a remote named {name:?} already exists ({url})")]
    RemoteExists {
        /// The name.
        name: String,
        /// Its URL.
        url: String,
    },
    /// A request to the object store failed (after its retries).
    #[error("{url}: {op} {object}: {message}")]
    Backend {
        /// The remote's URL (never with credentials: they are not part of it).
        url: String,
        /// What was being done: put, get, list, head.
        op: &'static str,
        /// The object's name under the prefix.
        object: String,
        /// The object store's error.
        message: String,
    },
    /// The prefix holds objects cairn did not write, or no format object beside others.
    #[error(
        "{url} is not a cairn remote: it holds {found:?}, which cairn did not write; use an empty prefix"
    )]
    NotCairn {
        /// The remote's URL.
        url: String,
        /// One object found there.
        found: String,
    },
    /// The format object names a layout this build does not read.
    #[error(
        "{url} uses remote layout {layout}; this cairn reads layout {supported}: upgrade cairn"
    )]
    LayoutTooNew {
        /// The remote's URL.
        url: String,
        /// The layout found.
        layout: u32,
        /// The layout this build reads.
        supported: u32,
    },
    /// A downloaded object that does not match its name's hash or does not parse.
    #[error("{url}: object {object} is damaged: {what}")]
    BadObject {
        /// The remote's URL.
        url: String,
        /// The object's name.
        object: String,
        /// What is wrong.
        what: String,
    },
    /// An object a trusted index or record names is not in the bucket.
    #[error("{url}: object {object} is missing (named by {by})")]
    Missing {
        /// The remote's URL.
        url: String,
        /// The missing object.
        object: String,
        /// Who names it.
        by: String,
    },
    /// A push whose commit does not descend from the remote's.
    #[error(
        "push of {name} rejected: the remote's {name} is at {}, which {} does not contain (non-fast-forward); fetch and pull first, or push --force to replace it",
        remote.iter().map(|c| c.short()).collect::<Vec<_>>().join(", "), local.short()
    )]
    NonFastForward {
        /// The full ref name.
        name: String,
        /// The commit pushed.
        local: CommitId,
        /// The remote's heads for that ref.
        remote: Vec<CommitId>,
    },
    /// A remote ref whose head this store does not have, so ancestry cannot be decided.
    #[error(
        "push of {name} rejected: the remote's {name} is at {}, which this store does not have; run `cairn fetch` first",
        remote.short()
    )]
    FetchFirst {
        /// The full ref name.
        name: String,
        /// The remote head missing locally.
        remote: CommitId,
    },
    /// A remote ref that concurrent pushes left with more than one head.
    #[error(
        "the remote's {name} has diverged: concurrent pushes left it at {}; pick one with `cairn push --force` (nothing was lost: every head is kept)",
        heads.iter().map(|c| c.short()).collect::<Vec<_>>().join(" and ")
    )]
    Diverged {
        /// The full ref name.
        name: String,
        /// Its heads.
        heads: Vec<CommitId>,
    },
    /// A local branch that cannot be fast-forwarded to the remote's.
    #[error(
        "cannot fast-forward {branch}: it is at {}, which is not an ancestor of the remote's {}; the histories diverged",
        local.short(), remote.short()
    )]
    NotFastForward {
        /// The local branch.
        branch: String,
        /// Its commit.
        local: CommitId,
        /// The remote's commit.
        remote: CommitId,
    },
    /// Nothing on the remote by that name.
    #[error("the remote has no {name}")]
    NoSuchRef {
        /// The ref asked for.
        name: String,
    },
    /// A chunk a pushed commit needs is neither in this store nor on the remote.
    #[error("cannot push {commit}: chunk {chunk} of {path} is not in this store")]
    MissingData {
        /// The commit.
        commit: CommitId,
        /// The file.
        path: String,
        /// The chunk.
        chunk: crate::model::id::ChunkId,
    },
    /// `clone` into a directory that is not empty.
    #[error("{} exists and is not empty; clone into a new directory", path.display())]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// A local file of the remote's records could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A local record file that does not parse.
    #[error("{}: {what}", path.display())]
    BadLocal {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A pack failed to be written or read.
    #[error(transparent)]
    Pack(#[from] PackError),
}

impl From<crate::storage::index::IndexError> for RemoteError {
    fn from(e: crate::storage::index::IndexError) -> RemoteError {
        RemoteError::Store(e.into())
    }
}

impl From<crate::model::object::ObjectError> for RemoteError {
    fn from(e: crate::model::object::ObjectError) -> RemoteError {
        RemoteError::Store(e.into())
    }
}

/// `map_err` for a local file operation on `path`.
pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RemoteError + '_ {
    move |source| RemoteError::Io {
        path: path.to_path_buf(),
        source,
    }
}
