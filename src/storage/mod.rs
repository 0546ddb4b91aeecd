//! Where bytes live: pack files (written once, sealed, read by positional reads), the RocksDB index
//! over them, refs and the reflog, locks, the durable file operations and their crash
//! simulation, and [`store::Store`], which ties them into one directory.
//!
//! Invariants: storage never imports [`crate::ops`]; every chunk and object [`store::Store`]
//! hands out was verified against its BLAKE3 id (the pack reader's unverified accessors,
//! [`pack::PackReader::chunk_payload`] and [`pack::PackReader::payload`], serve callers that
//! hash the decoded result themselves); every file operation of a commit or gc goes through
//! [`fsutil`], so the crash simulation can stop at each one.
#![warn(missing_docs)]

// Test machinery (failpoints, simulated power loss), public for the CLI and the crash tests only.
#[doc(hidden)]
pub mod crashsim;
#[cfg(feature = "store")]
pub mod error;
pub mod fsutil;
#[cfg(feature = "store")]
pub mod index;
pub mod lock;
pub mod pack;
pub mod refs;
#[cfg(feature = "store")]
pub mod staging;
#[cfg(feature = "store")]
pub mod state;
#[cfg(feature = "store")]
pub mod store;

/// The on-disk format version this build reads and writes, recorded in the `CAIRN` marker; a
/// store with any other version is refused on open.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the format marker file at a store's root. Its presence is what makes a directory a
/// store, and `init` writes it last.
pub const MARKER: &str = "CAIRN";
/// The directory `cairn init` creates, and discovery looks for from the working directory
/// upward, when no store path is given.
pub const DEFAULT_DIR: &str = ".cairn";
