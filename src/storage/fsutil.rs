//! Small file-system helpers that carry the store's durability rules.
//!
//! Invariants: a file published with [`write_atomic`] is either absent or complete after any
//! crash: it is written under a temporary name, fsynced, renamed into place, and its directory is
//! fsynced. Nothing here truncates or rewrites a file in place. Every operation on a store file
//! goes through [`crate::storage::crashsim`], so the crash tests can fail at each one.
//!
//! A function fails with the `io::Error` of the step that failed, without the path: callers add
//! it.
#![warn(missing_docs)]

use crate::storage::crashsim::{self, Op};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// fsync the directory `dir` so the names created, renamed or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    crashsim::op(Op::SyncDir(dir), || File::open(dir)?.sync_all())
}

/// Rename `from` to `to` (same directory), replacing any file at `to`. The caller fsyncs the
/// directory before it relies on the new name.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    crashsim::op(Op::Rename(from, to), || fs::rename(from, to))
}

/// Create a new file at `path`, open for writing; fails if `path` exists. The caller fsyncs it
/// and its directory.
pub fn create_new(path: &Path) -> io::Result<File> {
    crashsim::op(Op::Create(path), || {
        OpenOptions::new().write(true).create_new(true).open(path)
    })
}

/// The most one `write` system call hands the kernel. Measured on the development machine
/// (a Firecracker VM, Linux 6.18, 2026-12-05; docs/benchmarks.md, "Writes in 1 MiB pieces"): a
/// checkout writing each 16 MiB window in one call spent 0.5-1.45 s of system time on 0.5 GiB,
/// nearly all in the kernel's copy into the page cache, where pieces of 2 MiB or less spent
/// 0.3 s; `dd bs=16M` took 1.0 s of system time for what `dd bs=1M` wrote in 0.14 s. The
/// likely cause: a large write gets large page-cache folios, and this VM's balloon reports
/// free 2 MiB blocks to the host, so the blocks such folios come from fault on the host page by
/// page as the copy touches them. Pieces of 1 MiB cost nothing measurable where that does not
/// happen.
pub const WRITE_PIECE: usize = 1 << 20;

/// Write all of `bytes` to `w` in pieces of at most [`WRITE_PIECE`] bytes.
pub fn write_in_pieces(w: &mut (impl Write + ?Sized), bytes: &[u8]) -> io::Result<()> {
    for piece in bytes.chunks(WRITE_PIECE) {
        w.write_all(piece)?;
    }
    Ok(())
}

/// Write all of `bytes` through `w`, which writes to the file at `path`, in pieces of at most
/// [`WRITE_PIECE`] bytes.
pub fn write_all(w: &mut impl Write, path: &Path, bytes: &[u8]) -> io::Result<()> {
    crashsim::op(Op::Write(path), || write_in_pieces(w, bytes))
}

/// Flush `w`'s buffer to the file at `path`.
pub fn flush(w: &mut impl Write, path: &Path) -> io::Result<()> {
    crashsim::op(Op::Write(path), || w.flush())
}

/// fsync the file `f`, open at `path` (data and metadata): after it, a crash leaves all of
/// its bytes.
pub(crate) fn sync_file(f: &File, path: &Path) -> io::Result<()> {
    crashsim::op(Op::SyncFile(path), || f.sync_all())
}

/// Remove the file `path`; fails if it does not exist. The caller fsyncs the directory when
/// the removal must be durable.
pub fn remove_file(path: &Path) -> io::Result<()> {
    crashsim::remove(Op::Remove(path), || fs::remove_file(path))
}

/// Remove the directory `path` and everything under it. The caller fsyncs its parent when the
/// removal must be durable.
pub fn remove_dir_all(path: &Path) -> io::Result<()> {
    crashsim::remove(Op::RemoveDir(path), || fs::remove_dir_all(path))
}

/// Create the directory `path` and any missing parents; nothing to do when it exists. The
/// directories are not fsynced: callers that need them to survive a crash fsync their parents.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    let mut first_missing = None;
    for a in path.ancestors() {
        if a.as_os_str().is_empty() || a.exists() {
            break;
        }
        first_missing = Some(a);
    }
    match first_missing {
        None => Ok(()),
        Some(top) => crashsim::op(Op::CreateDir(top), || fs::create_dir_all(path)),
    }
}

/// Write `bytes` to `path` so that after a crash it holds either its old content (or is absent)
/// or `bytes`: temporary file beside it, fsync, rename over `path`, fsync of the directory.
/// Fails when `path` has no parent directory or file name, or any step fails; the temporary
/// file is then removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_parts(path, &[bytes])
}

/// [`write_atomic`] of `parts`, one after the other. The temporary file's name is
/// unpredictable and created exclusively (`O_EXCL`), so nothing planted in the directory (a
/// symlink at a name cairn would use) is followed or overwritten. A path with no directory
/// part is in the working directory.
pub fn write_atomic_parts(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        Some(_) => Path::new("."),
        None => return Err(io::Error::other("path has no parent directory")),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        crate::model::id::PackId::random()
    ));
    let mut created = false;
    let result = (|| {
        let mut f = create_new(&tmp)?;
        created = true;
        for bytes in parts {
            write_all(&mut f, &tmp, bytes)?;
        }
        // The content must be on disk before the name points at it.
        sync_file(&f, &tmp)?;
        rename(&tmp, path)?;
        // The new name must be on disk before the caller reports success.
        sync_dir(dir)
    })();
    if result.is_err() && created && tmp.exists() {
        let _ = remove_file(&tmp);
    }
    result
}

/// Append `line` to `path` (created if missing) and fsync its data: the journals (`reflog`,
/// `statelog`) are written this way. A new file's directory is fsynced too, so its name
/// survives a crash. A crash mid-append can leave a torn last line, which readers skip.
pub(crate) fn append_synced(path: &Path, line: &[u8]) -> io::Result<()> {
    let is_new = !path.exists();
    let open = || OpenOptions::new().create(true).append(true).open(path);
    let mut f = if is_new {
        crashsim::op(Op::Create(path), open)?
    } else {
        open()?
    };
    write_all(&mut f, path, line)?;
    // An appended reflog entry must be durable before the index records the ref move.
    crashsim::op(Op::SyncFile(path), || f.sync_data())?;
    if is_new && let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Bytes written between two early writeback requests of a [`WritebackFile`].
const WRITEBACK_EVERY: u64 = 64 << 20;

/// A file being written that asks the kernel to write its bytes back early, from a thread of
/// its own (`fdatasync` every 64 MiB written), while the writer goes on: the final
/// fsync then finds little left, so writing overlaps the disk instead of waiting for it at the
/// end. Purely a speed-up: durability still rests on the caller's final fsync, and the crash
/// simulation ignores these early syncs (it assumes none happened).
pub struct WritebackFile {
    file: File,
    pending: u64,
    worker: Option<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<()>)>,
}

impl WritebackFile {
    /// Wrap `file`, open for writing. The helper thread starts only once 64 MiB were written.
    pub fn new(file: File) -> WritebackFile {
        WritebackFile {
            file,
            pending: 0,
            worker: None,
        }
    }

    /// The file, for its final fsync (flush the writer in front of it first).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn wrote(&mut self, n: usize) {
        self.pending += n as u64;
        if self.pending < WRITEBACK_EVERY {
            return;
        }
        self.pending = 0;
        if self.worker.is_none() {
            // The thread starts only for a file that grows past the first threshold.
            let Ok(f) = self.file.try_clone() else { return };
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
            let Ok(h) = std::thread::Builder::new()
                .name("cairn-writeback".into())
                .spawn(move || {
                    for () in rx {
                        let _ = f.sync_data();
                    }
                })
            else {
                return;
            };
            self.worker = Some((tx, h));
        }
        if let Some((tx, _)) = &self.worker {
            // A request already queued covers this one too.
            let _ = tx.try_send(());
        }
    }
}

impl Write for WritebackFile {
    /// At most [`WRITE_PIECE`] bytes per call (`write_all` loops over the rest).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(&buf[..buf.len().min(WRITE_PIECE)])?;
        self.wrote(n);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for WritebackFile {
    fn drop(&mut self) {
        if let Some((tx, h)) = self.worker.take() {
            drop(tx);
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the length of every `write` call it gets, taking at most `take` bytes of each.
    struct Calls {
        lens: Vec<usize>,
        bytes: Vec<u8>,
        take: usize,
    }

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.take);
            self.lens.push(buf.len());
            self.bytes.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_reach_the_writer_in_pieces_of_at_most_write_piece() {
        let data: Vec<u8> = (0..5 * WRITE_PIECE + 3).map(|i| i as u8).collect();
        let mut w = Calls {
            lens: Vec::new(),
            bytes: Vec::new(),
            take: usize::MAX,
        };
        write_in_pieces(&mut w, &data).unwrap();
        assert_eq!(w.bytes, data);
        assert_eq!(w.lens.len(), 6, "{:?}", w.lens);
        assert!(w.lens.iter().all(|&n| n <= WRITE_PIECE), "{:?}", w.lens);
        // A writer that takes less than it is offered still gets every byte, in order.
        let mut short = Calls {
            lens: Vec::new(),
            bytes: Vec::new(),
            take: 1000,
        };
        write_all(&mut short, Path::new("x"), &data).unwrap();
        assert_eq!(short.bytes, data);
        assert!(short.lens.iter().all(|&n| n <= WRITE_PIECE));
    }

    #[test]
    fn a_writeback_file_hands_the_kernel_at_most_write_piece_per_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut wf = WritebackFile::new(create_new(&path).unwrap());
        let data: Vec<u8> = (0..3 * WRITE_PIECE + 7).map(|i| (i * 7) as u8).collect();
        assert_eq!(wf.write(&data).unwrap(), WRITE_PIECE);
        wf.write_all(&data[WRITE_PIECE..]).unwrap();
        drop(wf);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
