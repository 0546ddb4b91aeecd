//! The operations on a store, one module per command family.
//!
//! Operations import each other only downwards, in this order (a module may use those listed
//! before it, never those after; `tests/layering.rs` checks it):
//!
//! 1. [`progress`]: the callback operations report progress through
//! 2. [`provenance`]: environment, git and dataset facts recorded with a commit
//! 3. [`rev`]: revision names (`HEAD~2`, `best`, prefixes) to commit ids
//! 4. [`catalog`]: the `--where`/`--sort` query language over commit rows
//! 5. [`read`]: checkout, cat and single-tensor reads
//! 6. [`verify`]: re-reading a commit and recording the check
//! 7. [`inspect`]: log, show, stats
//! 8. [`diff`]: per-file and per-tensor differences between two commits
//! 9. [`export`]: writing tensors out as safetensors or npy
//! 10. [`fsck`]: checking a whole store
//! 11. [`repair`]: rebuilding the index from the packs, reflog and statelog
//! 12. [`gc`]: retention policies, the gc plan and its execution
//! 13. [`commit`]: building a commit, async and sharded commits (may run gc for auto-retention)
//! 14. [`sync`]: push, fetch, pull, clone and fsck of remotes ([`crate::remote`])

#[cfg(feature = "store")]
pub mod catalog;
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
pub mod inspect;
pub mod progress;
#[cfg(feature = "store")]
pub mod provenance;
#[cfg(feature = "store")]
pub mod read;
#[cfg(feature = "store")]
pub mod repair;
#[cfg(feature = "store")]
pub mod rev;
#[cfg(feature = "store")]
pub mod sync;
#[cfg(feature = "store")]
pub mod verify;
