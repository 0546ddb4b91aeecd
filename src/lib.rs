//! cairn: a content-addressed versioning store for machine-learning checkpoints.
//!
//! A checkpoint directory (safetensors, torch.save files, JSON, anything) becomes an immutable
//! commit: tensors are cut into chunks aligned to each tensor, chunks are deduplicated by blake3
//! id and stored encoded in append-only pack files, and an index in RocksDB points at them.
//! Checkout gives every file back byte for byte, verified.
//!
//! ```no_run
//! use cairn::{CommitBuilder, CommitOptions, Store, TensorInput, DType};
//! # fn main() -> Result<(), cairn::Error> {
//! let store = Store::init(std::path::Path::new("/tmp/demo-store"))?;
//! let mut opts = CommitOptions::default();
//! opts.message = "step 100".into();
//! opts.meta.step = Some(100);
//! opts.meta.metrics.insert("val_loss".into(), 0.41);
//! let mut c = CommitBuilder::new(&store, opts);
//! c.add_tensors(
//!     "model.safetensors",
//!     vec![TensorInput { name: "w".into(), dtype: DType::F32, shape: vec![2], data: vec![0; 8] }],
//!     None,
//! )?;
//! let outcome = c.commit()?;
//! let head = cairn::ops::rev::resolve(&store, "HEAD")?;
//! assert_eq!(head, outcome.commit);
//! # Ok(()) }
//! ```
//!
//! A training loop that cannot wait for a whole commit uses [`AsyncCommitter`]: the call
//! returns once the tensors are copied, and the commit runs in the background
//! ([`ops::commit::async_commit`]).
//!
//! Modules follow the data, each layer importing only those before it: [`model`] (ids,
//! dtypes, objects, path rules, the chunker) → [`codec`] and [`formats`] → [`storage`] (packs,
//! the index, refs, the [`Store`]) → [`remote`] → [`ops`] (commit, read, gc, fsck, ...).
//! `tests/layering.rs` checks it; docs/architecture.md explains the design, docs/format.md the
//! bytes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
#[cfg(feature = "store")]
pub mod error;
pub mod formats;
pub mod model;
pub mod ops;
pub mod remote;
pub mod storage;

#[cfg(feature = "store")]
pub use error::{Error, ErrorKind, Result};
pub use model::dtype::DType;
pub use model::id::{ChunkId, CommitId, ObjectId, PackId, TreeId};
#[cfg(feature = "store")]
pub use ops::commit::async_commit::{AsyncCommitter, CommitHandle, TensorSlice};
#[cfg(feature = "store")]
pub use ops::commit::{CommitBuilder, CommitOptions, CommitOutcome, DeltaBase, TensorInput};
#[cfg(feature = "store")]
pub use storage::error::StoreError;
#[cfg(feature = "store")]
pub use storage::store::Store;
