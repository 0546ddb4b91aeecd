//! The read path: checking a commit out, streaming one file, reading one tensor.
//!
//! Invariants:
//! - Every chunk is verified against its id as it is read (in `pack`), and every file written by
//!   checkout against its recorded size (bytes sent and length on disk) before it gets its final
//!   name; with `paranoid`, also against its recorded SHA-256, read back from the file. Why the
//!   default is enough: docs/architecture.md, "Why checkout verifies by BLAKE3 alone".
//! - Windows reach the file in tree order: one decoder, one FIFO channel, one appending writer.
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

/// Windows alive at once per file being restored: one being decoded into, one queued, one
/// being written (and, with the SHA-256 stage, one being hashed).
const WINDOWS: usize = 4;

/// One decoded window: the first `len` bytes of `buf` are the file's next bytes.
pub struct Window {
    buf: Vec<u8>,
    len: usize,
}

impl Window {
    /// The decoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Reusable window buffers. Each is allocated once, zeroed by the allocator (`calloc`: fresh
/// pages, no `memset`), and never zeroed again: every byte of a window is decoded into before
/// it is read, so a recycled window's old bytes do not matter.
#[derive(Default)]
pub struct Windows {
    spare: Vec<Vec<u8>>,
}

impl Windows {
    fn take(&mut self, len: usize) -> Vec<u8> {
        match self.spare.pop() {
            Some(mut b) => {
                if b.len() < len {
                    // Only a single chunk larger than a window gets here.
                    b = vec![0; len];
                }
                b
            }
            None => vec![0; len.max(WINDOW_BYTES as usize)],
        }
    }
}

/// The chunk ranges of `chunks` that make up each window: whole chunks, about
/// [`WINDOW_BYTES`] each (a single larger chunk is a window of its own).
fn window_ranges(chunks: &[ChunkRef]) -> Vec<(std::ops::Range<usize>, u64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < chunks.len() {
        let mut j = i;
        let mut bytes = 0;
        while j < chunks.len() && (j == i || bytes + chunks[j].len <= WINDOW_BYTES) {
            bytes += chunks[j].len;
            j += 1;
        }
        out.push((i..j, bytes));
        i = j;
    }
    out
}

/// Decode `chunks`, in parallel, into `out`, which is exactly their total length: each chunk
/// into the slice at the offset the sum of the lengths before it gives, verified against its id.
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

/// Decode one file's chunks, window by window in tree order, and hand each window to `write`
/// (on a thread of its own) with its index; with `sha256`, a third thread hashes the windows
/// between the two. Returns the bytes produced and, with `sha256`, their digest. Written
/// windows come back to `windows`.
fn restore_stream(
    store: &Store,
    path: &str,
    entry: &FileEntry,
    windows: &mut Windows,
    sha256: bool,
    write: &mut (dyn FnMut(usize, &[u8]) -> std::io::Result<()> + Send),
) -> Result<(u64, Option<[u8; 32]>)> {
    let chunks: Vec<ChunkRef> = entry.chunks().copied().collect();
    let ranges = window_ranges(&chunks);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Window>(1);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut alive = 0;
    let (produced, hashed, written) = std::thread::scope(|s| {
        // The windows as the writer sees them: straight from the decoder, or through the hasher.
        let (to_writer, hasher) = if sha256 {
            let (htx, hrx) = std::sync::mpsc::sync_channel::<Window>(1);
            let h = s.spawn(move || -> [u8; 32] {
                let mut sha = Sha256::new();
                for w in rx {
                    sha.update(w.bytes());
                    if htx.send(w).is_err() {
                        break; // the writer failed; its error is the one to report
                    }
                }
                sha.finalize().into()
            });
            (hrx, Some(h))
        } else {
            (rx, None)
        };
        let writer = s.spawn(move || -> Result<u64> {
            let mut n = 0u64;
            for (i, w) in to_writer.into_iter().enumerate() {
                write(i, w.bytes()).map_err(|e| ReadError::Io {
                    path: PathBuf::from(path),
                    source: e,
                })?;
                n += w.len as u64;
                let _ = back_tx.send(w.buf);
            }
            Ok(n)
        });
        let produced = (|| -> Result<()> {
            for (range, bytes) in &ranges {
                let len = usize::try_from(*bytes).map_err(|_| ReadError::TooLarge {
                    what: format!("chunk {}", chunks[range.start].id),
                    bytes: *bytes,
                })?;
                // At most `WINDOWS` buffers per file: past that, wait for the writer's.
                let mut buf = match back_rx.try_recv() {
                    Ok(b) => b,
                    Err(_) if alive < WINDOWS => {
                        alive += 1;
                        windows.take(len)
                    }
                    Err(_) => back_rx.recv().map_err(|_| ReadError::WriterStopped {
                        path: path.to_string(),
                    })?,
                };
                if buf.len() < len {
                    buf = vec![0; len];
                }
                read_chunks_into(store, &chunks[range.clone()], &mut buf[..len])?;
                tx.send(Window { buf, len })
                    .map_err(|_| ReadError::WriterStopped {
                        path: path.to_string(),
                    })?;
            }
            Ok(())
        })();
        drop(tx);
        let written = writer.join().expect("the writer thread does not panic");
        let hashed = hasher.map(|h| h.join().expect("the hashing thread does not panic"));
        (produced, hashed, written)
    });
    windows.spare.extend(back_rx.try_iter());
    // A write error (full disk, closed pipe) explains a stopped writer better than the send.
    let n = written?;
    produced?;
    Ok((n, hashed))
}

/// Write one file's bytes to `out`. Every chunk is verified against its id as it is decoded,
/// and the byte count against the recorded size; with `sha256` also the recorded SHA-256 of
/// the whole stream (`cairn verify`, `cat --paranoid`), on a thread of its own that overlaps
/// the decoding and the writing.
pub fn write_file_to(
    store: &Store,
    path: &str,
    entry: &FileEntry,
    out: &mut (dyn Write + Send),
    sha256: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let mut write = |_: usize, bytes: &[u8]| {
        crate::storage::fsutil::write_in_pieces(out, bytes)?;
        progress.advance(bytes.len() as u64);
        Ok(())
    };
    let (n, digest) = restore_stream(
        store,
        path,
        entry,
        &mut Windows::default(),
        sha256,
        &mut write,
    )?;
    check_size(path, entry, n)?;
    match digest {
        Some(got) => check_sha256(path, entry, got),
        None => Ok(()),
    }
}

fn check_size(path: &str, entry: &FileEntry, got: u64) -> Result<()> {
    if got != entry.size {
        return Err(ReadError::SizeMismatch {
            path: path.to_string(),
            got,
            want: entry.size,
        });
    }
    Ok(())
}

fn check_sha256(path: &str, entry: &FileEntry, got: [u8; 32]) -> Result<()> {
    if got != entry.sha256 {
        return Err(ReadError::Sha256Mismatch {
            path: path.to_string(),
            got: hex::encode(got),
            want: entry.sha256_hex(),
        });
    }
    Ok(())
}

/// A fault injected into checkout's writer, to test what the verification catches (tests
/// only; see docs/architecture.md, "Why checkout verifies by BLAKE3 alone").
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFault {
    /// Write window `i` after window `i + 1`.
    SwapWindows(usize),
    /// Skip window `i`'s write.
    DropWrite(usize),
    /// Move the file position by this many bytes before window `i`'s write.
    ShiftOffset(usize, i64),
}

/// Options of [`checkout`].
#[derive(Clone, Debug, Default)]
pub struct CheckoutOptions {
    /// Write into a non-empty directory, replacing files of the same names.
    pub force: bool,
    /// For a slimmed commit, restore the files that remain and skip the released ones.
    pub partial: bool,
    /// Read every file back once it is written and synced, and check its SHA-256 against the
    /// recorded one before it gets its name (the default relies on each chunk's BLAKE3 and the
    /// file's size; see docs/architecture.md).
    pub paranoid: bool,
    /// Tests only: a fault for the writer to commit.
    #[doc(hidden)]
    pub inject: Option<WriteFault>,
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
    let mut windows = Windows::default();
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
        let mut wf = crate::storage::fsutil::WritebackFile::new(f);
        let result = restore_file(store, rel, entry, &mut wf, &mut windows, opts, progress)
            .map_err(|e| match e {
                ReadError::Io { source, .. } => io_at(&tmp_path)(source),
                e => e,
            });
        match result {
            Ok(()) => out.publish(rel, &tmp, wf.file())?,
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

/// Restore one file into `wf` (a new, empty file): the write path whose correctness the
/// default checkout argues rather than re-checks (docs/architecture.md, "Why checkout verifies
/// by BLAKE3 alone"). Windows arrive in tree order through one FIFO channel and are appended
/// with `write_all` by one thread; then the bytes sent and the file's length (`fstat`) must
/// both equal the recorded size. The file is synced; with `paranoid` it is then read back
/// whole and its SHA-256 compared with the recorded one.
fn restore_file(
    store: &Store,
    rel: &str,
    entry: &FileEntry,
    wf: &mut crate::storage::fsutil::WritebackFile,
    windows: &mut Windows,
    opts: &CheckoutOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let fault = opts.inject;
    let mut held: Option<Vec<u8>> = None;
    let mut write = |i: usize, bytes: &[u8]| -> std::io::Result<()> {
        match fault {
            Some(WriteFault::DropWrite(k)) if k == i => {}
            Some(WriteFault::SwapWindows(k)) if k == i => held = Some(bytes.to_vec()),
            Some(WriteFault::ShiftOffset(k, by)) if k == i => {
                use std::io::Seek;
                let mut f = wf.file();
                f.seek(std::io::SeekFrom::Current(by))?;
                wf.write_all(bytes)?;
            }
            _ => {
                wf.write_all(bytes)?;
                if let Some(h) = held.take() {
                    wf.write_all(&h)?;
                }
            }
        }
        progress.advance(bytes.len() as u64);
        Ok(())
    };
    let (sent, _) = restore_stream(store, rel, entry, windows, false, &mut write)?;
    check_size(rel, entry, sent)?;
    let f = wf.file();
    let on_disk = f.metadata().map_err(io_at(Path::new(rel)))?.len();
    check_size(rel, entry, on_disk)?;
    if entry.executable {
        use std::os::unix::fs::PermissionsExt;
        let mut perm = f.metadata().map_err(io_at(Path::new(rel)))?.permissions();
        perm.set_mode(perm.mode() | 0o111);
        f.set_permissions(perm).map_err(io_at(Path::new(rel)))?;
    }
    // The bytes must be on disk before the file appears under its name.
    f.sync_all().map_err(io_at(Path::new(rel)))?;
    if opts.paranoid {
        let (n, got) = sha256_of_file(f).map_err(io_at(Path::new(rel)))?;
        check_size(rel, entry, n)?;
        check_sha256(rel, entry, got)?;
    }
    Ok(())
}

/// The length and SHA-256 of everything in `f`, read from its start.
fn sha256_of_file(f: &std::fs::File) -> std::io::Result<(u64, [u8; 32])> {
    use std::os::unix::fs::FileExt;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0u64;
    loop {
        let n = f.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok((at, sha.finalize().into()));
        }
        sha.update(&buf[..n]);
        at += n as u64;
    }
}

/// Stream file `path` of `commit` to `out`. Every chunk is verified by its BLAKE3 id and the
/// byte count by the recorded size; with `paranoid` also the stream's SHA-256.
pub fn cat(
    store: &Store,
    commit: CommitId,
    path: &str,
    out: &mut (dyn Write + Send),
    paranoid: bool,
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
    write_file_to(store, path, entry, out, paranoid, &NoProgress)
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
