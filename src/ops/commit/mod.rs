//! Making a commit: reading files, chunking, hashing, deduplicating, encoding, writing packs, and
//! publishing.
//!
//! The write path, in order (docs/architecture.md, "The write path", numbers the same steps):
//! 1. Plan: walk the inputs, parse every `*.safetensors` header
//!    strictly (any error aborts the commit before anything is written), and note the branch
//!    head as the expected parent.
//! 2. Stream (the pipeline): a reader thread reads files in order in bounded batches
//!    (computing each file's SHA-256 as it goes); the batch is hashed, checked against the
//!    index and encoded on all cores; new chunks are appended to a pack in input order.
//! 3. Seal: the tree and commit objects are appended, each pack gets its footer and is
//!    fsynced, renamed from `.pack.tmp` to `.pack`, and the packs directory is fsynced.
//! 4. Publish, under `locks/index.lock` with the index open read-write: check that every chunk
//!    the commit reuses is still indexed; compare-and-swap the branch (if it moved, the commit
//!    is re-made with the new head as parent, in a small extra pack, fsynced the same way);
//!    append the ref move to the reflog (fsync); write one index batch with every new chunk,
//!    object, pack and the ref (sync).
//!
//! A crash before step 4's batch leaves only unreferenced sealed packs (dead bytes gc reclaims)
//! or `.pack.tmp` files (removed by cleanup once no writer holds them); the commit is not
//! acknowledged. After the batch, it is complete and durable.
//!
//! The files, in the order data flows through them: `builder` (the inputs, and the steps run
//! in order), `input` (reading an input), `plan` (step 1), `parent` and `pipeline` (step 2),
//! `writer` (packs), `publish` (steps 3 and 4), `heal` (re-writing damaged chunks from a good
//! copy), [`async_commit`] and [`sharded`] on top; `error` holds [`CommitError`].

#![warn(missing_docs)]

pub mod async_commit;
mod builder;
mod error;
mod gate;
mod heal;
mod input;
mod options;
mod parent;
mod pipeline;
mod plan;
mod publish;
pub mod sharded;
mod writer;

pub use builder::CommitBuilder;
use builder::tensor_file_header;
pub use error::CommitError;
use gate::Gate;
pub use heal::heal_from;
pub use options::{AutoGc, CommitOptions, CommitOutcome, DeltaBase, TensorInput};
