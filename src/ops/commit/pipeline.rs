//! Step 2 of the write path, streaming: a reader thread reads the files in order in bounded
//! batches, each batch is hashed, checked against the index and encoded on all cores (delta
//! coded against the parent's chunk where it can be), and a writer thread appends the new
//! chunks to packs in input order.
//!
//! Invariants: memory stays bounded (the reader runs at most a couple of [`BATCH_BYTES`]
//! batches ahead of the encoders, which run one batch ahead of the writer); chunks reach the
//! packs, and each file's chunk list, in input order; a file on disk whose size or
//! modification time changed while it was read fails the commit.

#![warn(missing_docs)]

use super::error::{CommitError, Result, io_at};
use super::gate::{Gate, pass};
use super::input::{BufPool, Data, not_open};
use super::options::DeltaBase;
use super::parent::{ParentTensors, fill_digests, parent_tensors, parent_tree, probably_unchanged};
use super::plan::{Plan, PlannedFile};
use super::writer::Writer;
use crate::codec::{self, DELTA_DEPTH_LIMIT, Encoding};
use crate::model::chunker;
use crate::model::dtype::DType;
use crate::model::id::{ChunkId, CommitId};
use crate::model::object::{ChunkRef, FileEntry, SegmentKind};
use crate::ops::progress::Progress;
use crate::storage::index::{ChunkLoc, Index};
use crate::storage::store::Store;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Bytes read ahead per batch: bounds commit memory to a few batches.
const BATCH_BYTES: u64 = 16 << 20;

/// What the reader hands the encoders.
pub(super) enum Item {
    /// One chunk's bytes.
    Piece {
        /// Index of the file in the plan.
        file: usize,
        /// Index of the segment in the file.
        seg: usize,
        /// The chunk's raw bytes.
        data: Vec<u8>,
        /// The tensor's dtype, for the codec (`None` for raw segments).
        dtype: Option<DType>,
        /// The parent's corresponding chunk, the delta candidate.
        base: Option<ChunkId>,
    },
    /// A file read to its end.
    FileDone {
        /// Index of the file in the plan.
        file: usize,
        /// The file's SHA-256, filled in by the SHA-256 stage; None from the reader, and for a
        /// file read without a digest (see [`probably_unchanged`]).
        sha256: Option<[u8; 32]>,
    },
}

/// What the encoders hand the pack writer.
enum Processed {
    Chunk {
        file: usize,
        seg: usize,
        id: ChunkId,
        len: u64,
        /// Raw bytes, kept only for a new chunk stored raw.
        raw: Option<Vec<u8>>,
        /// Set for a chunk the index does not have yet.
        encoded: Option<codec::Encoded>,
        /// The delta base the encoding used, and the resulting chain depth.
        base: Option<(ChunkId, u32)>,
    },
    FileDone {
        file: usize,
        sha256: Option<[u8; 32]>,
    },
}

/// The result of streaming every file of a commit.
pub(super) struct Streamed<'s> {
    /// The pack writer, holding the new chunks (packs not sealed yet).
    pub(super) w: Writer<'s>,
    /// Every planned file's tree entry, chunks and SHA-256 filled in, in plan order.
    pub(super) files: Vec<FileEntry>,
    /// The index view the dedup checks used.
    pub(super) view: Arc<Index>,
    /// Files whose SHA-256 was taken from the parent.
    pub(super) sha256_from_parent: u64,
}

/// Stream every planned file into packs (step 2), with `parent` (the branch head seen at
/// step 1) as the source of delta bases and unchanged files' digests. `delta` is K and the
/// delta base mode.
pub(super) fn stream<'s>(
    store: &'s Store,
    planned: &[PlannedFile],
    parent: Option<CommitId>,
    progress: &dyn Progress,
    gate: Option<&Gate>,
    delta: (u32, DeltaBase),
) -> Result<Streamed<'s>> {
    let total: u64 = planned.iter().map(|p| p.size).sum();
    progress.begin("commit", total);
    let mut w = Writer::new(store);
    let mut files: Vec<FileEntry> = planned.iter().map(PlannedFile::empty_entry).collect();
    let view = store.view();
    let ptree = parent_tree(store, parent)?;
    let tensors = parent_tensors(ptree.as_ref().map(|(_, t)| t));
    let speculative: Vec<bool> = planned
        .iter()
        .map(|pf| probably_unchanged(pf, ptree.as_ref()))
        .collect();
    let mut shas: Vec<Option<[u8; 32]>> = vec![None; planned.len()];
    let stages = Stages {
        store,
        view: &view,
        pool: BufPool::default(),
        gate,
        progress,
        delta,
    };
    let pipeline = stages.run(
        planned,
        &tensors,
        &speculative,
        &mut w,
        &mut files,
        &mut shas,
    );
    progress.end();
    pipeline?;
    let sha256_from_parent = fill_digests(planned, &mut files, &shas, ptree.as_ref())?;
    Ok(Streamed {
        w,
        files,
        view,
        sha256_from_parent,
    })
}

/// What the pipeline's stages share.
struct Stages<'a> {
    store: &'a Store,
    view: &'a Index,
    pool: BufPool,
    gate: Option<&'a Gate>,
    progress: &'a dyn Progress,
    delta: (u32, DeltaBase),
}

impl Stages<'_> {
    /// Run the reader, the SHA-256 stage, the encoders and the pack writer: chunk hashing and
    /// encoding (rayon) overlap the pack writes (a thread of their own), the files' SHA-256 (a
    /// thread of its own, from each file's first byte) and the reading (another); each stage
    /// hands the next one batch at a time.
    fn run(
        &self,
        planned: &[PlannedFile],
        parent: &ParentTensors,
        speculative: &[bool],
        w: &mut Writer<'_>,
        files: &mut [FileEntry],
        shas: &mut [Option<[u8; 32]>],
    ) -> Result<()> {
        let (tx, rx) = sync_channel::<Result<Vec<Item>>>(1);
        let (htx, hrx) = sync_channel::<Result<Vec<Item>>>(1);
        let (wtx, wrx) = sync_channel::<Vec<Processed>>(1);
        std::thread::scope(|s| -> Result<()> {
            let (pool, gate) = (&self.pool, self.gate);
            s.spawn(move || read_all(planned, parent, Some(pool), gate, &tx));
            s.spawn(move || hash_files(rx, &htx, speculative));
            let writer = s.spawn(move || self.write_batches(wrx, w, files, shas));
            let result = self.encode_batches(hrx, wtx);
            let written = writer
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            result.and(written)
        })
    }

    /// The encoders: hash, dedup and encode each batch on all cores, then hand it on. Drops
    /// `wtx` when done, so the writer ends.
    fn encode_batches(
        &self,
        rx: Receiver<Result<Vec<Item>>>,
        wtx: SyncSender<Vec<Processed>>,
    ) -> Result<()> {
        for batch in rx {
            let processed = batch.and_then(|batch| {
                batch
                    .into_par_iter()
                    .map(|item| {
                        pass(self.gate);
                        process(item, self.store, self.view, Some(&self.pool), self.delta)
                    })
                    .collect::<Result<Vec<_>>>()
            });
            // A closed channel means the writer failed: its error is the one to report.
            if wtx.send(processed?).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// The pack writer: append each new chunk, record every chunk in its file's segment, and
    /// collect the reader's digests.
    fn write_batches(
        &self,
        wrx: Receiver<Vec<Processed>>,
        w: &mut Writer<'_>,
        files: &mut [FileEntry],
        shas: &mut [Option<[u8; 32]>],
    ) -> Result<()> {
        for batch in wrx {
            for p in batch {
                pass(self.gate);
                match p {
                    Processed::Chunk {
                        file,
                        seg,
                        id,
                        raw,
                        encoded,
                        len,
                        base,
                    } => {
                        files[file].segments[seg].chunks.push(ChunkRef { id, len });
                        let spent = w.add_chunk(id, len, raw.as_deref(), encoded, base)?;
                        for b in raw.into_iter().chain(spent) {
                            self.pool.give(b);
                        }
                        self.progress.advance(len);
                    }
                    Processed::FileDone { file, sha256 } => shas[file] = sha256,
                }
            }
        }
        Ok(())
    }
}

/// Hash one item, and encode it when the index does not hold it (or holds only a damaged copy).
fn process(
    item: Item,
    store: &Store,
    view: &Index,
    pool: Option<&BufPool>,
    delta: (u32, DeltaBase),
) -> Result<Processed> {
    let (file, seg, data, dtype, base) = match item {
        Item::FileDone { file, sha256 } => return Ok(Processed::FileDone { file, sha256 }),
        Item::Piece {
            file,
            seg,
            data,
            dtype,
            base,
        } => (file, seg, data, dtype, base),
    };
    let id = ChunkId::of(&data);
    let len = data.len() as u64;
    // A stored copy fsck found corrupt is not reused: this good copy replaces it.
    if view.chunk(&id)?.is_some() && !view.is_damaged(&id)? {
        recycle(pool, data);
        return Ok(Processed::Chunk {
            file,
            seg,
            id,
            len,
            raw: None,
            encoded: None,
            base: None,
        });
    }
    let base_raw = match base {
        Some(b) if b != id => read_base(store, view, pool, b, data.len(), delta)?,
        _ => None,
    };
    let encoded = codec::encode_into(
        &data,
        codec::Hint {
            dtype,
            base: base_raw.as_ref().map(|(_, _, r)| r.as_slice()),
        },
        pool.map_or_else(Vec::new, BufPool::take_empty),
    );
    let base = match (&base_raw, encoded.used_base) {
        (Some((b, depth, _)), true) => Some((*b, *depth)),
        _ => None,
    };
    if let Some((_, _, raw)) = base_raw {
        recycle(pool, raw);
    }
    let raw = if encoded.encoding == Encoding::Raw {
        Some(data)
    } else {
        recycle(pool, data);
        None
    };
    Ok(Processed::Chunk {
        file,
        seg,
        id,
        len,
        raw,
        encoded: Some(encoded),
        base,
    })
}

/// Give a spent buffer back to `pool`, when there is one.
fn recycle(pool: Option<&BufPool>, data: Vec<u8>) {
    if let Some(p) = pool {
        p.give(data);
    }
}

/// The delta base for a new version of the parent's chunk `parent` (`len` raw bytes), its
/// depth and its raw bytes: against the parent's chunk (or its chain's root), when the depth
/// leaves room and the base reads back.
fn read_base(
    store: &Store,
    view: &Index,
    pool: Option<&BufPool>,
    parent: ChunkId,
    len: usize,
    delta: (u32, DeltaBase),
) -> Result<Option<(ChunkId, u32, Vec<u8>)>> {
    let Some((b, depth)) = pick_base(view, parent, len as u64, delta)? else {
        return Ok(None);
    };
    // Decoded into a recycled buffer: no fresh pages, no zeroing.
    let mut raw = pool.map_or_else(|| vec![0u8; len], |p| p.take(len));
    match store.read_chunk_into(b, &mut raw) {
        Ok(()) => Ok(Some((b, depth, raw))),
        Err(_) => {
            recycle(pool, raw);
            Ok(None)
        }
    }
}

/// The base to delta-code a new version of the parent's chunk `parent` (of `len` raw bytes)
/// against, and the new chunk's depth; `None` when it is to be stored standalone: the parent
/// chunk is unknown, damaged, of another length, or already K-1 versions from its root.
fn pick_base(
    view: &Index,
    parent: ChunkId,
    len: u64,
    (k, mode): (u32, DeltaBase),
) -> Result<Option<(ChunkId, u32)>> {
    let usable = |id: &ChunkId, loc: &ChunkLoc| -> Result<bool> {
        Ok(loc.raw_len == len && !view.is_damaged(id)?)
    };
    let Some(loc) = view.chunk(&parent)? else {
        return Ok(None);
    };
    if loc.depth.saturating_add(1) >= k || !usable(&parent, &loc)? {
        return Ok(None);
    }
    let depth = loc.depth + 1;
    if mode == DeltaBase::Parent {
        return Ok(Some((parent, depth)));
    }
    // Down the parent's chain to its standalone root (one link for chunks this mode wrote).
    let (mut cur, mut cur_loc) = (parent, loc);
    for _ in 0..=DELTA_DEPTH_LIMIT {
        let next = match cur_loc.base {
            Some(b) if cur_loc.encoding.needs_base() => b,
            _ => return Ok(Some((cur, depth))),
        };
        match view.chunk(&next)? {
            Some(l) if usable(&next, &l)? => (cur, cur_loc) = (next, l),
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// The reader's outgoing batch: items are sent once about [`BATCH_BYTES`] of pieces gathered.
struct Batcher<'a> {
    batch: Vec<Item>,
    bytes: u64,
    tx: &'a SyncSender<Result<Vec<Item>>>,
}

impl Batcher<'_> {
    /// Add an item, sending the batch when full; false when the receiver is gone (the commit
    /// failed downstream, so reading stops).
    fn push(&mut self, item: Item) -> bool {
        if let Item::Piece { data, .. } = &item {
            self.bytes += data.len() as u64;
        }
        self.batch.push(item);
        if self.bytes >= BATCH_BYTES {
            self.bytes = 0;
            return self.tx.send(Ok(std::mem::take(&mut self.batch))).is_ok();
        }
        true
    }
}

/// The SHA-256 stage: a thread between the reader and the encoders that hashes every piece of
/// every file in order (the reader sends each file's pieces, then its `FileDone`, in file
/// order) and fills in each `FileDone`'s digest, except for files marked `speculative` (see
/// [`probably_unchanged`]). It only reads the pieces, so it costs no copy; it ends when the
/// reader does, or when the encoders stop listening.
fn hash_files(
    rx: Receiver<Result<Vec<Item>>>,
    tx: &SyncSender<Result<Vec<Item>>>,
    speculative: &[bool],
) {
    let wanted = |file: usize| !speculative.get(file).copied().unwrap_or(false);
    let mut current: Option<(usize, Sha256)> = None;
    for mut batch in rx {
        // One pass in order: a batch can end one file and start the next.
        for item in batch.iter_mut().flatten() {
            match item {
                Item::Piece { file, data, .. } if wanted(*file) => match &mut current {
                    Some((f, sha)) if f == file => sha.update(data),
                    _ => current = Some((*file, Sha256::new_with_prefix(data))),
                },
                Item::FileDone { file, sha256 } if wanted(*file) => {
                    *sha256 = Some(match current.take() {
                        Some((f, sha)) if f == *file => sha.finalize().into(),
                        // No piece: an empty file.
                        _ => Sha256::digest([]).into(),
                    });
                }
                _ => {}
            }
        }
        if tx.send(batch).is_err() {
            return;
        }
    }
}

/// The reader thread: every file in order, in batches of about [`BATCH_BYTES`] (each file's
/// pieces, then its `FileDone`, whose digest the SHA-256 stage fills in). An error is sent down
/// the channel and ends the reading.
pub(super) fn read_all(
    planned: &[PlannedFile],
    parent: &ParentTensors,
    pool: Option<&BufPool>,
    gate: Option<&Gate>,
    tx: &SyncSender<Result<Vec<Item>>>,
) {
    let mut reader = Reader {
        parent,
        pool,
        gate,
        out: Batcher {
            batch: Vec::new(),
            bytes: 0,
            tx,
        },
    };
    for (fi, pf) in planned.iter().enumerate() {
        match reader.read_file(fi, pf) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
    if !reader.out.batch.is_empty() {
        let _ = tx.send(Ok(reader.out.batch));
    }
}

/// The reader thread's state.
struct Reader<'a> {
    parent: &'a ParentTensors,
    pool: Option<&'a BufPool>,
    gate: Option<&'a Gate>,
    out: Batcher<'a>,
}

impl Reader<'_> {
    /// Read file `fi` to its end, then check it did not change; false when the receiver is
    /// gone.
    fn read_file(&mut self, fi: usize, pf: &PlannedFile) -> Result<bool> {
        let file = pf.input.open()?;
        let read = match &pf.plan {
            Plan::Structured(_, segs) => self.read_segments(fi, pf, segs, file.as_ref())?,
            Plan::Opaque | Plan::Fallback(_) => self.read_opaque(fi, pf, file.as_ref())?,
        };
        let Some(read) = read else { return Ok(false) };
        if let Data::Disk(p) = &pf.input.data {
            let m = std::fs::metadata(p).map_err(io_at(p))?;
            if read != pf.size || m.len() != pf.size || m.modified().ok() != pf.mtime {
                return Err(CommitError::ChangedWhileReading {
                    path: pf.input.rel.clone(),
                });
            }
        }
        let item = Item::FileDone {
            file: fi,
            sha256: None,
        };
        Ok(self.out.push(item))
    }

    /// A structured file: fixed-size chunks within each segment, each tensor chunk paired with
    /// the parent's chunk at the same place as its delta candidate. Returns the bytes read, or
    /// `None` when the receiver is gone.
    fn read_segments(
        &mut self,
        fi: usize,
        pf: &PlannedFile,
        segs: &[(SegmentKind, u64, u64)],
        file: Option<&File>,
    ) -> Result<Option<u64>> {
        let mut read = 0u64;
        for (si, (kind, start, end)) in segs.iter().enumerate() {
            let (dtype, bases) = match kind {
                SegmentKind::Tensor { dtype, shape, name } => {
                    let bases = self
                        .parent
                        .get(&(pf.input.rel.clone(), name.clone()))
                        .filter(|(d, s, _)| d == dtype && s == shape)
                        .map(|(_, _, c)| c.as_slice());
                    (Some(*dtype), bases)
                }
                SegmentKind::Raw => (None, None),
            };
            for (ci, (off, len)) in chunker::fixed(*start, end - start).enumerate() {
                pass(self.gate);
                let data = pf.input.read_at_pooled(file, off, len, self.pool)?;
                read += len;
                let base = bases
                    .and_then(|b| b.get(ci))
                    .filter(|c| c.len == len)
                    .map(|c| c.id);
                let item = Item::Piece {
                    file: fi,
                    seg: si,
                    data,
                    dtype,
                    base,
                };
                if !self.out.push(item) {
                    return Ok(None);
                }
            }
        }
        Ok(Some(read))
    }

    /// An opaque file: content-defined chunks, one raw segment. Returns the bytes read, or
    /// `None` when the receiver is gone.
    fn read_opaque(
        &mut self,
        fi: usize,
        pf: &PlannedFile,
        file: Option<&File>,
    ) -> Result<Option<u64>> {
        let iter: Box<dyn Iterator<Item = std::io::Result<(u64, Vec<u8>)>>> =
            match (&pf.input.data, file) {
                (Data::Memory(m), _) => Box::new(chunker::cdc(std::io::Cursor::new(m.as_slice()))),
                (Data::Pieces(_), _) => match pf.input.data.memory_reader() {
                    Some(r) => Box::new(chunker::cdc(r)),
                    None => {
                        return Err(CommitError::ReadPastEnd {
                            path: pf.input.rel.clone(),
                        });
                    }
                },
                (Data::Disk(_), Some(f)) => {
                    Box::new(chunker::cdc(std::io::BufReader::with_capacity(1 << 20, f)))
                }
                (Data::Disk(p), None) => return Err(not_open(p)),
            };
        let mut read = 0u64;
        for r in iter {
            pass(self.gate);
            let (_, data) = r.map_err(|e| CommitError::Io {
                path: PathBuf::from(&pf.input.rel),
                source: e,
            })?;
            read += data.len() as u64;
            let item = Item::Piece {
                file: fi,
                seg: 0,
                data,
                dtype: None,
                base: None,
            };
            if !self.out.push(item) {
                return Ok(None);
            }
        }
        Ok(Some(read))
    }
}
