//! The read path: checking a commit out, streaming one file, reading one tensor.
//!
//! Invariants:
//! - Every chunk is verified against its id as it is read (in `pack`), and every file written by
//!   checkout is verified against its recorded size and SHA-256 before it gets its final name.
//! - Checkout writes each file under a temporary name, fsyncs it, then renames it; it refuses a
//!   non-empty target directory unless forced, and never truncates an existing file in place.
//! - A tensor read touches only that tensor's chunks (and their delta bases).
//! - Memory stays bounded: chunks are decoded in windows of about [`WINDOW_BYTES`].

#![warn(missing_docs)]

pub mod outdir;

pub use outdir::{OutDir, OutDirError};

use crate::model::id::{ChunkId, CommitId};
use crate::model::object::{ChunkRef, FileEntry, Segment, Tree};
use crate::model::path::PathError;
use crate::ops::progress::{NoProgress, Progress};
use crate::storage::error::StoreError;
use crate::storage::store::Store;
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What can go wrong reading a commit back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A window or tensor larger than this machine's address space.
    #[error("{what}: {bytes} bytes do not fit in memory")]
    TooLarge {
        /// The chunk or file.
        what: String,
        /// Its length.
        bytes: u64,
    },
    /// A chunk reference longer than the rest of its file.
    #[error("chunk {chunk}: {len} bytes run past the end of the file")]
    ChunkPastEnd {
        /// The chunk.
        chunk: ChunkId,
        /// Its recorded length.
        len: u64,
    },
    /// Writing, creating or syncing an output file or directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The thread writing a file stopped before the decoder.
    #[error("{path}: the writer stopped")]
    WriterStopped {
        /// The file in the commit.
        path: String,
    },
    /// A restored file's size differs from the recorded one.
    #[error("{path}: restored {got} bytes, expected {want}")]
    SizeMismatch {
        /// The file in the commit.
        path: String,
        /// Bytes restored.
        got: u64,
        /// Bytes recorded.
        want: u64,
    },
    /// A restored file's SHA-256 differs from the recorded one.
    #[error("{path}: SHA-256 {got} does not match the recorded {want}")]
    Sha256Mismatch {
        /// The file in the commit.
        path: String,
        /// Hex digest of the restored bytes.
        got: String,
        /// Hex digest recorded in the tree.
        want: String,
    },
    /// Checkout into a non-empty directory without `force`.
    #[error("{} is not empty; check out into a new directory (or pass --force)", dir.display())]
    NotEmpty {
        /// The target directory.
        dir: PathBuf,
    },
    /// `cat` of a path the commit does not hold.
    #[error("{path}: no such file in commit {}", commit.short())]
    NoSuchFile {
        /// The path asked for.
        path: String,
        /// The commit.
        commit: CommitId,
    },
    /// `FILE:NAME` where FILE holds no tensor NAME.
    #[error("{file} has no tensor named {name:?}")]
    NoSuchTensorInFile {
        /// The file.
        file: String,
        /// The tensor name.
        name: String,
    },
    /// No file of the commit holds a tensor of that name.
    #[error("no tensor named {spec:?} in this commit")]
    NoSuchTensor {
        /// The name asked for.
        spec: String,
    },
    /// Several files hold a tensor of that name.
    #[error("tensor {spec:?} is in several files ({}); name one as FILE:NAME", files.join(", "))]
    AmbiguousTensor {
        /// The name asked for.
        spec: String,
        /// The files that hold it.
        files: Vec<String>,
    },
    /// A caller's buffer of the wrong length for a tensor.
    #[error("tensor {tensor} of {file} has {want} bytes; the buffer has {got}")]
    BufferLength {
        /// The tensor's name.
        tensor: String,
        /// Its file.
        file: String,
        /// The tensor's length.
        want: u64,
        /// The buffer's length.
        got: usize,
    },
    /// Writing into the checkout directory failed or would leave it.
    #[error(transparent)]
    OutDir(#[from] OutDirError),
    /// A tree path that breaks the path rules.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The store failed: a missing or damaged chunk, object or record.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T, E = ReadError> = std::result::Result<T, E>;

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ReadError + '_ {
    move |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Raw bytes decoded per parallel window.
pub const WINDOW_BYTES: u64 = 16 << 20;

/// Decode `chunks` in order, in parallel windows of about [`WINDOW_BYTES`]. Each window's
/// chunks are decoded, back to back, into one buffer taken from `next_buf` (its bytes on entry do
/// not matter; reusing buffers saves faulting fresh memory in), which is then handed to `sink`.
pub fn stream_windows(
    store: &Store,
    chunks: &[ChunkRef],
    mut next_buf: impl FnMut() -> Vec<u8>,
    mut sink: impl FnMut(Vec<u8>) -> Result<()>,
) -> Result<()> {
    let mut i = 0;
    while i < chunks.len() {
        let mut j = i;
        let mut bytes = 0;
        while j < chunks.len() && (j == i || bytes + chunks[j].len <= WINDOW_BYTES) {
            bytes += chunks[j].len;
            j += 1;
        }
        let mut buf = next_buf();
        let len = usize::try_from(bytes).map_err(|_| ReadError::TooLarge {
            what: format!("chunk {}", chunks[i].id),
            bytes,
        })?;
        if buf.len() < len {
            buf.resize(len, 0);
        } else {
            buf.truncate(len);
        }
        read_chunks_into(store, &chunks[i..j], &mut buf)?;
        sink(buf)?;
        i = j;
    }
    Ok(())
}

/// Decode `chunks`, in parallel, into `out`, which is exactly their total length.
fn read_chunks_into(store: &Store, chunks: &[ChunkRef], out: &mut [u8]) -> Result<()> {
    let mut slices = Vec::with_capacity(chunks.len());
    let mut rest = out;
    for c in chunks {
        let len = usize::try_from(c.len)
            .ok()
            .filter(|&l| l <= rest.len())
            .ok_or(ReadError::ChunkPastEnd {
                chunk: c.id,
                len: c.len,
            })?;
        let (a, b) = rest.split_at_mut(len);
        slices.push((c.id, a));
        rest = b;
    }
    slices
        .into_par_iter()
        .try_for_each(|(id, dst)| store.read_chunk_into(id, dst))?;
    Ok(())
}

/// Decode `chunks` in order, handing each window of decoded bytes to `sink`.
pub fn stream_chunks(
    store: &Store,
    chunks: &[ChunkRef],
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let spare = std::cell::Cell::new(Vec::new());
    stream_windows(
        store,
        chunks,
        || spare.take(),
        |window| {
            sink(&window)?;
            spare.set(window);
            Ok(())
        },
    )
}

/// Write one file's bytes to `out`, verifying its size and SHA-256 at the end. Three stages
/// overlap, one window apart: decoding (all cores), the SHA-256 (a thread of its own: it is
/// sequential over the file and costs about as much as the write) and writing (another thread).
/// Written windows go back to the decoder, so at most four are alive.
pub fn write_file_to(
    store: &Store,
    path: &str,
    entry: &FileEntry,
    out: &mut (dyn Write + Send),
    progress: &dyn Progress,
) -> Result<()> {
    let chunks: Vec<ChunkRef> = entry.chunks().copied().collect();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    let (hashed_tx, hashed_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    // Written windows come back to be decoded into again.
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (produced, hashed, written) = std::thread::scope(|s| {
        let hasher = s.spawn(move || -> (u64, [u8; 32]) {
            let mut sha = Sha256::new();
            let mut n = 0u64;
            for window in rx {
                sha.update(&window);
                n += window.len() as u64;
                if hashed_tx.send(window).is_err() {
                    break; // the writer failed; its error is the one to report
                }
            }
            (n, sha.finalize().into())
        });
        let writer = s.spawn(move || -> Result<()> {
            for window in hashed_rx {
                out.write_all(&window).map_err(|e| ReadError::Io {
                    path: PathBuf::from(path),
                    source: e,
                })?;
                progress.advance(window.len() as u64);
                let _ = back_tx.send(window);
            }
            Ok(())
        });
        let produced = stream_windows(
            store,
            &chunks,
            || back_rx.try_recv().unwrap_or_default(),
            |w| {
                tx.send(w).map_err(|_| ReadError::WriterStopped {
                    path: path.to_string(),
                })
            },
        );
        drop(tx);
        let written = writer.join().expect("the writer thread does not panic");
        let hashed = hasher.join().expect("the hashing thread does not panic");
        (produced, hashed, written)
    });
    // A write error (full disk, closed pipe) explains a stopped writer better than the send.
    written?;
    produced?;
    let (n, got) = hashed;
    if n != entry.size {
        return Err(ReadError::SizeMismatch {
            path: path.to_string(),
            got: n,
            want: entry.size,
        });
    }
    if got != entry.sha256 {
        return Err(ReadError::Sha256Mismatch {
            path: path.to_string(),
            got: hex::encode(got),
            want: entry.sha256_hex(),
        });
    }
    Ok(())
}

/// Options of [`checkout`].
#[derive(Clone, Debug, Default)]
pub struct CheckoutOptions {
    /// Write into a non-empty directory, replacing files of the same names.
    pub force: bool,
    /// For a slimmed commit, restore the files that remain and skip the released ones.
    pub partial: bool,
}

/// What a checkout wrote.
#[derive(Clone, Debug, Serialize)]
pub struct CheckoutOutcome {
    /// The commit checked out.
    pub commit: CommitId,
    /// The directory written into.
    pub dir: PathBuf,
    /// Files written.
    pub files: u64,
    /// Bytes written (the files' sizes).
    pub bytes: u64,
    /// Files of a slimmed commit that gc released and `partial` skipped.
    pub released: Vec<String>,
}

/// Write every file of `commit` into `dir`, byte for byte.
pub fn checkout(
    store: &Store,
    commit: CommitId,
    dir: &Path,
    opts: &CheckoutOptions,
    progress: &dyn Progress,
) -> Result<CheckoutOutcome> {
    let _reading = store.read_guard();
    let c = store.commit(commit)?;
    let tree = store.tree(c.tree)?;
    crate::storage::state::check_not_released(store, commit, &tree, opts.partial)?;
    if dir.exists() {
        let mut it = std::fs::read_dir(dir).map_err(io_at(dir))?;
        if it.next().is_some() && !opts.force {
            return Err(ReadError::NotEmpty {
                dir: dir.to_path_buf(),
            });
        }
    }
    let mut out = OutDir::open(dir)?;
    let released = crate::storage::state::released_files(store, commit)?;
    // A lazy clone fetches every chunk the checkout needs at once, in few requests.
    store.prefetch(
        tree.files
            .iter()
            .filter(|(p, _)| !released.contains(p))
            .flat_map(|(_, f)| f.chunks().map(|c| c.id)),
    )?;
    progress.begin("checkout", tree.logical_size());
    let mut skipped = Vec::new();
    for (rel, entry) in &tree.files {
        if released.iter().any(|r| r == rel) {
            skipped.push(rel.clone());
            continue;
        }
        crate::model::path::check_rel_path(rel)?;
        let (f, tmp) = out.create_temp(rel)?;
        let tmp_path = out.path_of(&format!(
            "{}/{tmp}",
            rel.rsplit_once('/').map_or("", |p| p.0)
        ));
        let result = (|| -> Result<crate::storage::fsutil::WritebackFile> {
            // Written back early as it grows, so the fsync below does not wait for all of it.
            let mut buf = std::io::BufWriter::with_capacity(
                8 << 20,
                crate::storage::fsutil::WritebackFile::new(f),
            );
            write_file_to(store, rel, entry, &mut buf, progress)?;
            let wf = buf
                .into_inner()
                .map_err(|e| io_at(&tmp_path)(e.into_error()))?;
            let f = wf.file();
            if entry.executable {
                use std::os::unix::fs::PermissionsExt;
                let mut perm = f.metadata().map_err(io_at(&tmp_path))?.permissions();
                perm.set_mode(perm.mode() | 0o111);
                f.set_permissions(perm).map_err(io_at(&tmp_path))?;
            }
            // The bytes must be on disk before the file appears under its name.
            f.sync_all().map_err(io_at(&tmp_path))?;
            Ok(wf)
        })();
        match result {
            Ok(wf) => out.publish(rel, &tmp, wf.file())?,
            Err(e) => {
                out.discard(rel, &tmp);
                return Err(e);
            }
        }
    }
    for d in &tree.empty_dirs {
        out.enter(d, d)?;
    }
    // The new names must survive a crash once checkout reports success.
    out.sync()?;
    progress.end();
    Ok(CheckoutOutcome {
        commit,
        dir: dir.to_path_buf(),
        files: tree.files.len() as u64 - skipped.len() as u64,
        bytes: tree
            .files
            .iter()
            .filter(|(p, _)| !skipped.contains(p))
            .map(|(_, f)| f.size)
            .sum(),
        released: skipped,
    })
}

/// Stream file `path` of `commit` to `out`.
pub fn cat(
    store: &Store,
    commit: CommitId,
    path: &str,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let _reading = store.read_guard();
    let c = store.commit(commit)?;
    let tree = store.tree(c.tree)?;
    let entry = tree.files.get(path).ok_or_else(|| ReadError::NoSuchFile {
        path: path.to_string(),
        commit,
    })?;
    crate::storage::state::check_file_not_released(store, commit, path)?;
    store.prefetch(entry.chunks().map(|c| c.id))?;
    write_file_to(store, path, entry, out, &NoProgress)
}

/// A tensor found in a tree.
#[derive(Clone, Debug)]
pub struct TensorRef {
    /// The file that holds it.
    pub file: String,
    /// Its tensor record: name, dtype, shape and chunks.
    pub segment: Segment,
}

/// Find tensor `spec` (`NAME` or `FILE:NAME`) in a tree.
pub fn find_tensor(tree: &Tree, spec: &str) -> Result<TensorRef> {
    if let Some((file, name)) = spec.split_once(':')
        && let Some(entry) = tree.files.get(file)
    {
        return entry
            .segments
            .iter()
            .find(|s| s.tensor().is_some_and(|(n, _, _)| n == name))
            .map(|s| TensorRef {
                file: file.to_string(),
                segment: s.clone(),
            })
            .ok_or_else(|| ReadError::NoSuchTensorInFile {
                file: file.to_string(),
                name: name.to_string(),
            });
    }
    let mut found: Vec<TensorRef> = Vec::new();
    for (file, entry) in &tree.files {
        for s in &entry.segments {
            if s.tensor().is_some_and(|(n, _, _)| n == spec) {
                found.push(TensorRef {
                    file: file.clone(),
                    segment: s.clone(),
                });
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ReadError::NoSuchTensor {
            spec: spec.to_string(),
        }),
        _ => Err(ReadError::AmbiguousTensor {
            spec: spec.to_string(),
            files: found.into_iter().map(|t| t.file).collect(),
        }),
    }
}

/// Read one tensor's bytes, touching only its own chunks.
pub fn read_tensor(store: &Store, t: &TensorRef) -> Result<Vec<u8>> {
    let len = usize::try_from(t.segment.len()).map_err(|_| ReadError::TooLarge {
        what: t.file.clone(),
        bytes: t.segment.len(),
    })?;
    let mut out = vec![0u8; len];
    read_tensor_into(store, t, &mut out)?;
    Ok(out)
}

/// Read one tensor's bytes into `out`, which must be exactly its length: for a training loop
/// that loads into memory it already has (no fresh pages to fault in). All cores decode its
/// chunks straight into `out`; each is verified against its id.
pub fn read_tensor_into(store: &Store, t: &TensorRef, out: &mut [u8]) -> Result<()> {
    if out.len() as u64 != t.segment.len() {
        return Err(ReadError::BufferLength {
            tensor: t
                .segment
                .tensor()
                .map_or("?", |(name, _, _)| name)
                .to_string(),
            file: t.file.clone(),
            want: t.segment.len(),
            got: out.len(),
        });
    }
    let _reading = store.read_guard();
    store.prefetch(t.segment.chunks.iter().map(|c| c.id))?;
    read_chunks_into(store, &t.segment.chunks, out)
}
