//! A commit's inputs: files on disk or in memory, read at offsets into recycled buffers.
//!
//! Invariant: a read of a file on disk that comes up short reports the file as changed while
//! being read ([`CommitError::ChangedWhileReading`]), never as a damaged input: its size was
//! taken when it was planned.

#![warn(missing_docs)]

use super::error::{CommitError, Result, io_at};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Where an input's bytes are.
pub(super) enum Data {
    /// A file on disk, read with `pread`.
    Disk(PathBuf),
    /// Bytes handed over from memory.
    Memory(Arc<Vec<u8>>),
}

/// One file of the commit.
pub(super) struct Input {
    /// Its path inside the commit (checked by [`crate::model::path::check_rel_path`]).
    pub(super) rel: String,
    /// Its bytes.
    pub(super) data: Data,
    /// Whether it is recorded as executable.
    pub(super) executable: bool,
}

impl Input {
    /// The file opened for reading, when it is on disk.
    pub(super) fn open(&self) -> Result<Option<File>> {
        match &self.data {
            Data::Disk(p) => Ok(Some(File::open(p).map_err(io_at(p))?)),
            Data::Memory(_) => Ok(None),
        }
    }

    /// `len` bytes at `offset` (`file` is [`Input::open`]'s).
    pub(super) fn read_at(&self, file: Option<&File>, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.read_at_pooled(file, offset, len, None)
    }

    /// [`Input::read_at`] into a buffer from `pool` when there is one.
    pub(super) fn read_at_pooled(
        &self,
        file: Option<&File>,
        offset: u64,
        len: u64,
        pool: Option<&BufPool>,
    ) -> Result<Vec<u8>> {
        let rel = &self.rel;
        let n =
            usize::try_from(len).map_err(|_| CommitError::PieceTooLarge { path: rel.clone() })?;
        let new_buf = |n: usize| pool.map_or_else(|| vec![0u8; n], |p| p.take(n));
        match (&self.data, file) {
            (Data::Memory(m), _) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let src = m
                    .get(start..start.saturating_add(n))
                    .ok_or_else(|| CommitError::ReadPastEnd { path: rel.clone() })?;
                let mut buf = new_buf(n);
                buf.copy_from_slice(src);
                Ok(buf)
            }
            (Data::Disk(path), Some(f)) => {
                let mut buf = new_buf(n);
                f.read_exact_at(&mut buf, offset).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        CommitError::ChangedWhileReading { path: rel.clone() }
                    } else {
                        io_at(path)(e)
                    }
                })?;
                Ok(buf)
            }
            (Data::Disk(path), None) => Err(not_open(path)),
        }
    }
}

/// The error of reading a file on disk that was not opened first.
pub(super) fn not_open(path: &std::path::Path) -> CommitError {
    CommitError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("file not open"),
    }
}

/// Chunk buffers handed back by the encoders and the pack writer for the reader to fill again:
/// a steady stream of reads then costs neither fresh pages (faults, zeroing) nor allocator
/// round trips. Bounded: at most [`BufPool::KEEP`] idle buffers.
#[derive(Default)]
pub(super) struct BufPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl BufPool {
    /// Free buffers kept: raw chunk buffers and encoded-chunk buffers share the pool.
    const KEEP: usize = 128;

    /// An empty buffer, keeping the capacity of a spent one: for the encoder's output.
    pub(super) fn take_empty(&self) -> Vec<u8> {
        let got = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut v = got.unwrap_or_default();
        v.clear();
        v
    }

    /// A buffer of exactly `n` bytes (contents unspecified: the caller overwrites them all).
    pub(super) fn take(&self, n: usize) -> Vec<u8> {
        let got = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match got {
            Some(mut v) => {
                v.resize(n, 0);
                v
            }
            None => vec![0; n],
        }
    }

    /// Keep a spent buffer for reuse (dropped when [`BufPool::KEEP`] are already idle).
    pub(super) fn give(&self, v: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < Self::KEEP && v.capacity() > 0 {
            free.push(v);
        }
    }
}
