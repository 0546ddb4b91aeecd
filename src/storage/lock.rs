//! Advisory file locks (flock semantics, via std's `File::lock`): the kernel releases them when
//! the holder dies, so there is never a stale lock to remove by hand.
//!
//! Locks of a store, all under `locks/`:
//! - `index.lock`, exclusive: held by the one process that has the RocksDB index open
//!   read-write (publishing a commit, moving a ref, gc's index phase). Others wait for it.
//! - `writers.lock`, shared: held by every commit for its whole run. gc takes it exclusively
//!   (without waiting) to know that no writer is between its dedup check and its publish; when
//!   it cannot, gc only marks dead chunks and a later run deletes them.
//! - `readers.lock`, shared: held by reads that resolve many chunk locations (checkout, cat,
//!   tensor, verify, diff). gc deletes old pack files only when it can take it exclusively, and
//!   otherwise leaves them for a later run, so such a reader never finds a pack gone.
//! - `gc.lock`, exclusive: one gc at a time.
//! - each `packs/<id>.pack.tmp`, exclusive: held by the writer of that pack, so cleanup of crash
//!   leftovers never removes a live writer's pack.
//! - each `txn/<id>/lock`, exclusive: held while a part of sharded transaction `<id>` stages
//!   its manifest or finalizes the commit.
//!
//! Every function here opens (and, except [`is_locked`], creates) the lock file itself, so a
//! store on a read-only file system cannot be locked: callers decide what that means.
#![warn(missing_docs)]

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// A held lock on one file; dropping it closes the file, which releases the lock.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Take an exclusive lock on `path` (created if missing), waiting as long as any other holder
/// has it. Fails when the file cannot be opened or created, or the `flock` call fails.
pub fn exclusive(path: &Path) -> io::Result<LockGuard> {
    let file = open(path)?;
    file.lock()?;
    Ok(LockGuard { _file: file })
}

/// Take a shared lock on `path` (created if missing), waiting while someone holds it
/// exclusively. Fails when the file cannot be opened or created, or the `flock` call fails.
pub fn shared(path: &Path) -> io::Result<LockGuard> {
    let file = open(path)?;
    file.lock_shared()?;
    Ok(LockGuard { _file: file })
}

/// Take an exclusive lock on `path` (created if missing) without waiting: `Ok(None)` when
/// another holder has it, shared or exclusive. Fails when the file cannot be opened or
/// created, or the `flock` call fails for another reason.
pub fn try_exclusive(path: &Path) -> io::Result<Option<LockGuard>> {
    let file = open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(LockGuard { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Whether some process (or another open handle in this one) holds a lock, shared or
/// exclusive, on the existing file `path`. Takes and at once drops an exclusive lock to find
/// out. Fails, without creating anything, when `path` does not exist or cannot be opened.
pub fn is_locked(path: &Path) -> io::Result<bool> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}
