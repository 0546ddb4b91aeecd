//! Remotes on object storage: an S3-compatible bucket (`s3://bucket/prefix`) or a directory
//! (`file:///path`, a shared filesystem) that stores push to and fetch, pull and clone from.
//!
//! The bucket layout and the ref protocol are in docs/remote.md, byte by byte and step by step.
//! In short, every object under the prefix is written once and never changed:
//! - `cairn-remote`, the format object naming the layout version;
//! - `packs/<id>.pack`, cairn packs (docs/format.md) holding either only chunks (data packs) or
//!   only commit and tree objects (meta packs), so history survives data gc and fetch never
//!   reads a data pack;
//! - `indexes/<blake3>.idx`, one per push, listing the packs it added and their entries, so fetch
//!   and clone read indexes, never pack bodies to find things;
//! - `records/<blake3>.rec`, one per push: the ref moves it makes and the index objects they
//!   rely on. Refs are the union of all records, resolved on read ([`layout::resolve`]).
//!
//! Invariants:
//! - Every object is named by the BLAKE3 of its bytes or by a fresh random id, so every put is
//!   idempotent and can be retried after a timeout whose outcome is unknown; no correctness
//!   rests on a conditional write.
//! - An index object is trusted only when a record names its hash, and every downloaded record,
//!   index and pack is checked against the hash it is named or listed by before it is used.
//! - [`crate::ops`] imports this module; [`crate::storage`] never does, so a store works the same
//!   with no remote configured. The library reads no environment: credentials, region and
//!   endpoint come in a [`config::RemoteOptions`] the caller fills (the CLI from the standard
//!   `AWS_*` variables and `~/.aws` files), and never appear in errors or in the store.
#![warn(missing_docs)]

#[cfg(feature = "store")]
pub mod bucket;
#[cfg(feature = "store")]
pub mod config;
#[cfg(feature = "store")]
pub mod error;
#[cfg(feature = "store")]
pub mod layout;
#[cfg(feature = "store")]
pub mod local;

#[cfg(feature = "store")]
pub use bucket::Bucket;
#[cfg(feature = "store")]
pub use config::{RemoteOptions, RemoteUrl, S3Credentials};
#[cfg(feature = "store")]
pub use error::RemoteError;
