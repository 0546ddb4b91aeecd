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

#[cfg(feature = "store")]
pub mod catalog;
pub mod chunker;
pub mod codec;
pub mod crashsim;
pub mod dtype;
pub mod fsutil;
pub mod id;
pub mod mmap;
pub mod object;
pub mod pack;
pub mod safetensors;
pub mod torchzip;

#[cfg(feature = "store")]
pub mod async_commit;
#[cfg(feature = "store")]
pub mod commit;
#[cfg(feature = "store")]
pub mod diff;
#[cfg(feature = "store")]
pub mod export;
#[cfg(feature = "store")]
pub mod fsck;
#[cfg(feature = "store")]
pub mod gc;
#[cfg(feature = "store")]
pub mod index;
#[cfg(feature = "store")]
pub mod inspect;
pub mod lock;
pub mod progress;
#[cfg(feature = "store")]
pub mod provenance;
#[cfg(feature = "store")]
pub mod read;
pub mod refs;
#[cfg(feature = "store")]
pub mod rev;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "store")]
pub mod txn;
#[cfg(feature = "store")]
pub mod verify;

#[cfg(feature = "store")]
pub use async_commit::{AsyncCommitter, CommitHandle, TensorSlice};
#[cfg(feature = "store")]
pub use commit::{CommitBuilder, CommitOptions, CommitOutcome, DeltaBase, TensorInput};
pub use dtype::DType;
pub use id::{ChunkId, CommitId, ObjectId, PackId, TreeId};
#[cfg(feature = "store")]
pub use store::{Error, Result, Store};
