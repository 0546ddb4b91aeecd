//! Small file-system helpers that carry the store's durability rules.
//!
//! Invariants: a file published with [`write_atomic`] is either absent or complete after any
//! crash: it is written under a temporary name, fsynced, renamed into place, and its directory is
//! fsynced. Nothing here truncates or rewrites a file in place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// fsync a directory so the names created, renamed or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Rename `from` to `to` (same directory). The caller fsyncs the directory.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)
}

/// Write `bytes` to `path` so that after a crash it holds either its old content or `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        crate::id::PackId::random()
    ));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        // The content must be on disk before the name points at it.
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The new name must be on disk before the caller reports success.
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Append `line` to `path` and fsync it (the reflog).
pub fn append_synced(path: &Path, line: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(line)?;
    // An appended reflog entry must be durable before the index records the ref move.
    f.sync_data()
}
