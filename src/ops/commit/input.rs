//! A commit's inputs: files on disk or in memory (owned, or assembled from pieces the caller
//! lends for the commit, never copied whole), read at offsets into recycled buffers.
//!
//! Invariant: a read of a file on disk that comes up short reports the file as changed while
//! being read ([`CommitError::ChangedWhileReading`]), never as a damaged input: its size was
//! taken when it was planned.

#![warn(missing_docs)]

use super::error::{CommitError, Result, io_at};
use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Where an input's bytes are.
pub(super) enum Data<'a> {
    /// A file on disk, read with `pread`.
    Disk(PathBuf),
    /// Bytes handed over from memory.
    Memory(Arc<Vec<u8>>),
    /// A file in memory made of these pieces, in order (a safetensors header, then each
    /// tensor's bytes, borrowed from the caller for the commit): read piece by piece, so the
    /// whole file is never copied.
    Pieces(Vec<Cow<'a, [u8]>>),
}

impl Data<'_> {
    /// The length of bytes held in memory; `None` for a file on disk.
    pub(super) fn memory_len(&self) -> Option<u64> {
        match self {
            Data::Disk(_) => None,
            Data::Memory(m) => Some(m.len() as u64),
            Data::Pieces(p) => Some(p.iter().map(|b| b.len() as u64).sum()),
        }
    }

    /// Fill `buf` with the in-memory bytes at `offset`; false when they do not reach that far
    /// (or the file is on disk).
    pub(super) fn read_memory(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Ok(start) = usize::try_from(offset) else {
            return false;
        };
        match self {
            Data::Disk(_) => false,
            Data::Memory(m) => match m.get(start..start.saturating_add(buf.len())) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            },
            Data::Pieces(pieces) => {
                // Copy from each piece the part of [start, start + len) it holds.
                let (mut at, mut filled) = (0usize, 0usize);
                for piece in pieces {
                    if filled == buf.len() {
                        break;
                    }
                    let end = at + piece.len();
                    let want = start + filled;
                    if want < end {
                        let from = want - at;
                        let n = (piece.len() - from).min(buf.len() - filled);
                        if let (Some(dst), Some(src)) =
                            (buf.get_mut(filled..filled + n), piece.get(from..from + n))
                        {
                            dst.copy_from_slice(src);
                        }
                        filled += n;
                    }
                    at = end;
                }
                filled == buf.len()
            }
        }
    }

    /// A reader over the in-memory bytes from the start; `None` for a file on disk.
    pub(super) fn memory_reader(&self) -> Option<MemoryReader<'_>> {
        match self {
            Data::Disk(_) => None,
            _ => Some(MemoryReader {
                data: self,
                offset: 0,
                len: self.memory_len().unwrap_or(0),
            }),
        }
    }
}

/// Reads the in-memory bytes of a [`Data`] in order.
pub(super) struct MemoryReader<'d> {
    data: &'d Data<'d>,
    offset: u64,
    len: u64,
}

impl std::io::Read for MemoryReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.offset);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let Some(dst) = buf.get_mut(..n) else {
            return Ok(0);
        };
        if !self.data.read_memory(self.offset, dst) {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// One file of the commit.
pub(super) struct Input<'a> {
    /// Its path inside the commit (checked by [`crate::model::path::check_rel_path`]).
    pub(super) rel: String,
    /// Its bytes.
    pub(super) data: Data<'a>,
    /// Whether it is recorded as executable.
    pub(super) executable: bool,
}

impl Input<'_> {
    /// The file opened for reading, when it is on disk.
    pub(super) fn open(&self) -> Result<Option<File>> {
        match &self.data {
            Data::Disk(p) => Ok(Some(File::open(p).map_err(io_at(p))?)),
            Data::Memory(_) | Data::Pieces(_) => Ok(None),
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
            (Data::Memory(_) | Data::Pieces(_), _) => {
                let mut buf = new_buf(n);
                if !self.data.read_memory(offset, &mut buf) {
                    return Err(CommitError::ReadPastEnd { path: rel.clone() });
                }
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

    /// An empty buffer, keeping the capacity of a spent one: for the encoder's output. Takes the
    /// idle buffer with the fewest initialized bytes, so the long ones stay for [`BufPool::take`].
    pub(super) fn take_empty(&self) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let at = (0..free.len()).min_by_key(|&i| free[i].len());
        let mut v = at.map(|i| free.swap_remove(i)).unwrap_or_default();
        v.clear();
        v
    }

    /// A buffer of exactly `n` bytes (contents unspecified: the caller overwrites them all).
    /// An idle buffer already holding `n` initialized bytes is shortened, not zeroed: chunk
    /// buffers mostly have one size, so a steady stream of reads zeroes nothing.
    pub(super) fn take(&self, n: usize) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let got = match free.iter().rposition(|v| v.len() >= n) {
            Some(i) => Some(free.swap_remove(i)),
            None => free.pop(),
        };
        drop(free);
        match got {
            Some(mut v) => {
                if v.len() >= n {
                    v.truncate(n);
                } else {
                    v.resize(n, 0);
                }
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
