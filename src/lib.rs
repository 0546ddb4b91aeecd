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
//! let head = cairn::rev::resolve(&store, "HEAD")?;
//! assert_eq!(head, outcome.commit);
//! # Ok(()) }
//! ```
//!
//! A training loop that cannot wait for a whole commit uses [`AsyncCommitter`]: the call
//! returns once the tensors are copied, and the commit runs in the background
//! ([`async_commit`]).
//!
//! Module order follows the data: ids and dtypes → objects → chunking and codecs → packs →
//! index and refs → the store → operations (commit, read, inspect, diff). docs/architecture.md
//! explains the design; docs/format.md the bytes.
#![deny(unsafe_code)]

pub mod codec;
#[cfg(feature = "store")]
pub mod error;
pub mod formats;
pub mod model;
pub mod ops;
pub mod remote;
pub mod storage;

// Temporary shims while the modules move (removed at the end of the restructuring).
pub use formats::{safetensors, torchzip};
pub use model::{chunker, dtype, id, object};
#[cfg(feature = "store")]
pub use ops::commit::async_commit;
#[cfg(feature = "store")]
pub use ops::commit::sharded as txn;
pub use ops::progress;
#[cfg(feature = "store")]
pub use ops::{catalog, commit, diff, export, gc, inspect, provenance, read, rev, verify};
/// Temporary shim: `cairn::fsck` as it was, including `rebuild_index`, which moved to
/// [`ops::repair`] (fsck may not re-export it: repair comes after fsck in the ops order).
#[cfg(feature = "store")]
pub mod fsck {
    pub use crate::ops::fsck::*;
    pub use crate::ops::repair::{RebuildOutcome, rebuild_index};
}
pub use storage::{crashsim, fsutil, lock, mmap, pack, refs};
#[cfg(feature = "store")]
pub use storage::{index, store};

#[cfg(feature = "store")]
pub use async_commit::{AsyncCommitter, CommitHandle, TensorSlice};
#[cfg(feature = "store")]
pub use commit::{CommitBuilder, CommitOptions, CommitOutcome, DeltaBase, TensorInput};
pub use dtype::DType;
#[cfg(feature = "store")]
pub use error::{Error, Result};
pub use id::{ChunkId, CommitId, ObjectId, PackId, TreeId};
#[cfg(feature = "store")]
pub use storage::error::StoreError;
#[cfg(feature = "store")]
pub use store::Store;
