//! Pack files: append-only files of encoded chunks and objects, sealed and never modified.
//!
//! Invariants:
//! - A pack is written under `packs/<id>.pack.tmp` while its writer holds an exclusive lock on
//!   it, and becomes `packs/<id>.pack` by rename only after its footer is written and the file is
//!   fsynced. So every `*.pack` is sealed; a `*.pack.tmp` nobody holds locked is a crash leftover.
//! - A pack is self-describing: each entry carries its own header (kind, encoding, id, lengths,
//!   delta base, header checksum), and the footer repeats every header in a table whose blake3 is
//!   in the trailer. The index can be rebuilt from packs alone.
//! - [`PackReader::read_chunk`] and [`PackReader::read_object`] return bytes only after they
//!   hashed to their id; a mismatch names chunk (or object) and pack.
//!   [`PackReader::chunk_payload`] and [`PackReader::payload`] hand out stored bytes unverified,
//!   for callers that verify the decoded result themselves (the store's delta-chain read).
//!
//! The byte layout is in docs/format.md ("Pack files"); all integers are little-endian.
#![warn(missing_docs)]

use crate::codec::{self, Encoding};
use crate::model::id::{ChunkId, ObjectId, PackId};
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

/// First 8 bytes of every pack file.
const PACK_MAGIC: &[u8; 8] = b"CAIRNPK\0";
/// The pack format version at bytes 8..12; readers refuse any other.
const PACK_VERSION: u32 = 1;
/// Bytes of the pack header (magic, version, reserved, pack id); the first entry starts here.
const HEADER_LEN: u64 = 32;
/// First 4 bytes of every entry header.
const ENTRY_MAGIC: &[u8; 4] = b"CENT";
/// Bytes of an entry header, which precedes each payload and is repeated in the footer table.
const ENTRY_HEADER_LEN: u64 = 96;
/// Last 8 bytes of a sealed pack.
const TRAILER_MAGIC: &[u8; 8] = b"CAIRNEND";
/// Bytes of the trailer: table offset, entry count, table hash, magic.
const TRAILER_LEN: u64 = 56;
/// A table row: the entry's payload offset, then a copy of its header. The offset comes first so
/// that a scan of entries (used when the footer is damaged) stops at the table: its first bytes
/// are not an entry magic.
const TABLE_ROW_LEN: u64 = ENTRY_HEADER_LEN + 8;
/// Bytes (1 GiB) past which writers seal the current pack and start a new one; a pack can end
/// a little larger, by its last entry and its footer.
pub const TARGET_PACK_SIZE: u64 = 1 << 30;

/// [`EntryHeader::kind`] of an entry holding a chunk.
pub const ENTRY_CHUNK: u8 = 1;
/// [`EntryHeader::kind`] of an entry holding an object (a commit or a tree).
pub const ENTRY_OBJECT: u8 = 2;

/// What can go wrong writing or reading a pack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// A file operation on a pack failed; a pack that is gone shows up here as `NotFound`.
    #[error("pack {path}: {source}")]
    Io {
        /// The pack file (`*.pack`, or `*.pack.tmp` while it is written).
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The pack as a whole is damaged: bad magic, version or id in its header, or a damaged
    /// footer.
    #[error("pack {pack}: {what}")]
    Corrupt {
        /// The pack id, in hex.
        pack: String,
        /// What check failed.
        what: String,
    },
    /// A chunk's entry is damaged: bad header, not where the index says, runs past the end,
    /// does not decode, or does not hash to its id.
    #[error("chunk {chunk} in pack {pack} is corrupt: {what}")]
    BadChunk {
        /// The chunk that was asked for.
        chunk: ChunkId,
        /// The pack it was read from.
        pack: PackId,
        /// What check failed.
        what: String,
    },
    /// An object's entry is damaged, in the same ways as [`PackError::BadChunk`].
    #[error("object {object} in pack {pack} is corrupt: {what}")]
    BadObject {
        /// The object that was asked for.
        object: ObjectId,
        /// The pack it was read from.
        pack: PackId,
        /// What check failed.
        what: String,
    },
}

/// Why an entry header, or an entry's payload, cannot be read at an offset of a pack. The
/// reader folds it, as text, into the [`PackError`] of the chunk or object it was reading.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// Fewer bytes are left than an entry header takes (96, docs/format.md).
    #[error("entry header is truncated")]
    Truncated,
    /// The header does not start with the entry magic `CENT`.
    #[error("entry header magic is wrong")]
    BadMagic,
    /// The header's blake3 checksum does not match its bytes.
    #[error("entry header checksum does not match")]
    BadChecksum,
    /// The header's encoding byte names no [`Encoding`].
    #[error("unknown encoding {0}")]
    UnknownEncoding(u8),
    /// The header's kind byte is neither [`ENTRY_CHUNK`] nor [`ENTRY_OBJECT`].
    #[error("unknown entry kind {0}")]
    UnknownKind(u8),
    /// A payload offset that leaves no room for an entry header before it.
    #[error("offset points into the pack header")]
    OffsetInPackHeader,
    /// A payload offset that does not fit in memory addresses.
    #[error("offset out of range")]
    OffsetOutOfRange,
    /// A payload offset whose entry header would end past the end of the pack.
    #[error("offset is past the end of the pack")]
    OffsetPastEnd,
    /// Offset plus length overflows 64 bits.
    #[error("length overflows")]
    LengthOverflow,
    /// The payload runs past the end of the pack.
    #[error("entry [{offset}, {end}) runs past the end of the pack ({pack_len} bytes)")]
    PastEnd {
        /// Offset of the payload's first byte.
        offset: u64,
        /// Offset one past its last byte.
        end: u64,
        /// The pack's length in bytes.
        pack_len: u64,
    },
    /// The file ended before the range: it shrank after it was opened (truncated by another
    /// program while being read).
    #[error("pack ended before bytes [{offset}, {end}): truncated while being read")]
    ShortRead {
        /// Offset of the range's first byte.
        offset: u64,
        /// Offset one past its last byte.
        end: u64,
    },
    /// Reading the range failed.
    #[error("reading the pack failed: {0}")]
    Read(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One entry's header, as stored before its payload and in the footer table (96 bytes on disk,
/// the last 4 a checksum of the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    /// [`ENTRY_CHUNK`] or [`ENTRY_OBJECT`]; a header with any other kind does not parse.
    pub kind: u8,
    /// How the payload encodes the raw bytes; objects use no delta encodings.
    pub encoding: Encoding,
    /// For objects, the object kind byte (1 = commit, 2 = tree); 0 for chunks.
    pub object_kind: u8,
    /// Chunk id or object id bytes.
    pub id: [u8; 32],
    /// Bytes of the decoded (raw) chunk or object.
    pub raw_len: u64,
    /// Bytes of the payload that follows the header in the pack.
    pub stored_len: u64,
    /// Delta base chunk, for encodings that need one.
    pub base: Option<ChunkId>,
    /// Length of the delta chain below this chunk (0 for a standalone encoding).
    pub depth: u32,
}

impl EntryHeader {
    /// The 96 bytes of this header as stored, checksum included.
    fn to_bytes(self) -> [u8; ENTRY_HEADER_LEN as usize] {
        let mut b = [0u8; ENTRY_HEADER_LEN as usize];
        b[0..4].copy_from_slice(ENTRY_MAGIC);
        b[4] = self.kind;
        b[5] = self.encoding.code();
        b[6] = self.object_kind;
        b[7] = u8::from(self.base.is_some());
        b[8..40].copy_from_slice(&self.id);
        b[40..48].copy_from_slice(&self.raw_len.to_le_bytes());
        b[48..56].copy_from_slice(&self.stored_len.to_le_bytes());
        if let Some(base) = self.base {
            b[56..88].copy_from_slice(base.as_bytes());
        }
        b[88..92].copy_from_slice(&self.depth.to_le_bytes());
        let sum = blake3::hash(&b[0..92]);
        b[92..96].copy_from_slice(&sum.as_bytes()[0..4]);
        b
    }

    /// Parse the header at the start of `b` (extra bytes are ignored). Fails when `b` is
    /// shorter than 96 bytes, or the magic, checksum, encoding or entry kind is wrong.
    pub fn from_bytes(b: &[u8]) -> Result<EntryHeader, EntryError> {
        if b.len() < ENTRY_HEADER_LEN as usize {
            return Err(EntryError::Truncated);
        }
        if &b[0..4] != ENTRY_MAGIC {
            return Err(EntryError::BadMagic);
        }
        let sum = blake3::hash(&b[0..92]);
        if b[92..96] != sum.as_bytes()[0..4] {
            return Err(EntryError::BadChecksum);
        }
        let encoding = Encoding::from_code(b[5]).ok_or(EntryError::UnknownEncoding(b[5]))?;
        if b[4] != ENTRY_CHUNK && b[4] != ENTRY_OBJECT {
            return Err(EntryError::UnknownKind(b[4]));
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let base = (b[7] & 1 == 1).then(|| ChunkId::from_slice(&b[56..88]).expect("32 bytes"));
        Ok(EntryHeader {
            kind: b[4],
            encoding,
            object_kind: b[6],
            id: b[8..40].try_into().expect("32 bytes"),
            raw_len: u64_at(40),
            stored_len: u64_at(48),
            base,
            depth: u32::from_le_bytes(b[88..92].try_into().expect("4 bytes")),
        })
    }
}

/// Where an entry's payload lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The entry's header, as stored in the pack.
    pub header: EntryHeader,
    /// Byte offset of the payload in the pack file (just past the entry header); the index
    /// records this offset.
    pub offset: u64,
}

/// A pack being written. Dropping it without [`PackWriter::seal`] removes the temporary file.
pub struct PackWriter {
    id: PackId,
    tmp_path: PathBuf,
    final_path: PathBuf,
    out: BufWriter<crate::storage::fsutil::WritebackFile>,
    len: u64,
    entries: Vec<Entry>,
    sealed: bool,
}

/// A sealed pack and its entries, as [`PackWriter::seal`] returns it (renamed to its final name
/// and fsynced; its directory not yet fsynced) or as read back from disk.
#[derive(Clone, Debug)]
pub struct SealedPack {
    /// The pack's id, also in its header and file name.
    pub id: PackId,
    /// Its final path, `<dir>/<id>.pack`.
    pub path: PathBuf,
    /// Bytes the pack file takes on disk, footer and trailer included.
    pub size: u64,
    /// Every entry, in the order written.
    pub entries: Vec<Entry>,
}

/// The file name of sealed pack `id` in `packs/`: `<32 hex digits>.pack`.
pub fn pack_file_name(id: PackId) -> String {
    format!("{id}.pack")
}

impl PackWriter {
    /// Start a pack under a fresh random id in `dir`, as `<id>.pack.tmp`, holding an exclusive
    /// lock on it until sealed or dropped, and write its header. Fails when the file cannot be
    /// created, locked or written.
    pub fn create(dir: &Path) -> Result<PackWriter, PackError> {
        let id = PackId::random();
        let final_path = dir.join(pack_file_name(id));
        let tmp_path = dir.join(format!("{id}.pack.tmp"));
        let file = crate::storage::fsutil::create_new(&tmp_path).map_err(io_err(&tmp_path))?;
        // Held until this writer is done: cleanup of crash leftovers skips locked tmp packs.
        file.try_lock().map_err(|e| PackError::Io {
            path: tmp_path.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        let mut out =
            BufWriter::with_capacity(1 << 20, crate::storage::fsutil::WritebackFile::new(file));
        let mut header = [0u8; HEADER_LEN as usize];
        header[0..8].copy_from_slice(PACK_MAGIC);
        header[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
        header[16..32].copy_from_slice(&id.0);
        crate::storage::fsutil::write_all(&mut out, &tmp_path, &header)
            .map_err(io_err(&tmp_path))?;
        Ok(PackWriter {
            id,
            tmp_path,
            final_path,
            out,
            len: HEADER_LEN,
            entries: Vec::new(),
            sealed: false,
        })
    }

    /// The pack's id, chosen at random by [`PackWriter::create`].
    pub fn id(&self) -> PackId {
        self.id
    }
    /// Bytes written so far (header and entries; the footer comes at sealing), buffered ones
    /// included.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether no entry was appended yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn append(&mut self, header: EntryHeader, payload: &[u8]) -> Result<Entry, PackError> {
        debug_assert_eq!(header.stored_len, payload.len() as u64);
        let hb = header.to_bytes();
        crate::storage::fsutil::write_all(&mut self.out, &self.tmp_path, &hb)
            .map_err(io_err(&self.tmp_path))?;
        crate::storage::fsutil::write_all(&mut self.out, &self.tmp_path, payload)
            .map_err(io_err(&self.tmp_path))?;
        let entry = Entry {
            header,
            offset: self.len + ENTRY_HEADER_LEN,
        };
        self.len += ENTRY_HEADER_LEN + payload.len() as u64;
        self.entries.push(entry);
        Ok(entry)
    }

    /// Append chunk `id`: `stored` is its payload in `encoding`, `raw_len` the length of its
    /// decoded bytes, `base` its delta base when the encoding needs one and `depth` the
    /// number of delta links below it. Nothing is verified here. Returns where the payload
    /// lies; fails when the write fails.
    #[allow(clippy::too_many_arguments)]
    pub fn append_chunk(
        &mut self,
        id: ChunkId,
        encoding: Encoding,
        raw_len: u64,
        stored: &[u8],
        base: Option<ChunkId>,
        depth: u32,
    ) -> Result<Entry, PackError> {
        self.append(
            EntryHeader {
                kind: ENTRY_CHUNK,
                encoding,
                object_kind: 0,
                id: id.0,
                raw_len,
                stored_len: stored.len() as u64,
                base,
                depth,
            },
            stored,
        )
    }

    /// Append object `id` of kind `kind` (1 = commit, 2 = tree) from its canonical bytes,
    /// compressed when that pays. Returns where the payload lies; fails when the write fails.
    pub fn append_object(
        &mut self,
        id: ObjectId,
        kind: u8,
        bytes: &[u8],
    ) -> Result<Entry, PackError> {
        let enc = codec::encode(bytes, codec::Hint::default());
        let (encoding, payload) = match enc.encoding {
            Encoding::Raw => (Encoding::Raw, bytes),
            other => (other, enc.bytes.as_slice()),
        };
        let payload = payload.to_vec();
        self.append(
            EntryHeader {
                kind: ENTRY_OBJECT,
                encoding,
                object_kind: kind,
                id: id.0,
                raw_len: bytes.len() as u64,
                stored_len: payload.len() as u64,
                base: None,
                depth: 0,
            },
            &payload,
        )
    }

    /// Write the footer, fsync, and rename into place. The caller fsyncs the directory (once
    /// for all packs of a commit) before publishing anything that points into this pack. Fails
    /// when a write, the fsync or the rename fails; the temporary file is then removed.
    pub fn seal(mut self) -> Result<SealedPack, PackError> {
        let table_offset = self.len;
        let table = table_bytes(&self.entries);
        let mut trailer = [0u8; TRAILER_LEN as usize];
        trailer[0..8].copy_from_slice(&table_offset.to_le_bytes());
        trailer[8..16].copy_from_slice(&(self.entries.len() as u64).to_le_bytes());
        trailer[16..48].copy_from_slice(blake3::hash(&table).as_bytes());
        trailer[48..56].copy_from_slice(TRAILER_MAGIC);
        let path = self.tmp_path.clone();
        crate::storage::fsutil::write_all(&mut self.out, &path, &table).map_err(io_err(&path))?;
        crate::storage::fsutil::write_all(&mut self.out, &path, &trailer).map_err(io_err(&path))?;
        crate::storage::fsutil::flush(&mut self.out, &path).map_err(io_err(&path))?;
        // fsync the pack before it gets its final name: a crash must never leave a `*.pack`
        // whose bytes are not on disk (torn or zero-filled after power loss).
        crate::storage::fsutil::sync_file(self.out.get_ref().file(), &path)
            .map_err(io_err(&path))?;
        crate::storage::fsutil::rename(&self.tmp_path, &self.final_path).map_err(io_err(&path))?;
        self.sealed = true;
        let size = self.len + table.len() as u64 + TRAILER_LEN;
        Ok(SealedPack {
            id: self.id,
            path: self.final_path.clone(),
            size,
            entries: std::mem::take(&mut self.entries),
        })
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        if !self.sealed {
            let _ = crate::storage::fsutil::remove_file(&self.tmp_path);
        }
    }
}

/// The footer table of `entries`: per entry, its payload offset (u64 LE) then its 96-byte
/// header (docs/format.md, "Pack files"). Remote index objects list a pack's entries in the same
/// rows.
pub fn table_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut table = Vec::with_capacity(entries.len() * TABLE_ROW_LEN as usize);
    for e in entries {
        table.extend_from_slice(&e.offset.to_le_bytes());
        table.extend_from_slice(&e.header.to_bytes());
    }
    table
}

/// Parse table rows written by [`table_bytes`] for a pack whose entries end at `entries_end`
/// (where its footer table starts). Fails, saying why, when the length is not a whole number of
/// rows, a header does not parse (magic, checksum, kind, encoding), or an entry lies outside
/// `[header, entries_end)`.
pub fn parse_table(table: &[u8], entries_end: u64) -> Result<Vec<Entry>, String> {
    if !(table.len() as u64).is_multiple_of(TABLE_ROW_LEN) {
        return Err("the table is not a whole number of rows".into());
    }
    let mut out = Vec::with_capacity(table.len() / TABLE_ROW_LEN as usize);
    for row in table.chunks_exact(TABLE_ROW_LEN as usize) {
        let offset = u64::from_le_bytes(row[..8].try_into().expect("8 bytes"));
        let header = EntryHeader::from_bytes(&row[8..]).map_err(|e| e.to_string())?;
        let end = offset.checked_add(header.stored_len);
        if offset < HEADER_LEN + ENTRY_HEADER_LEN || end.is_none_or(|e| e > entries_end) {
            return Err("a table row points outside the entries".into());
        }
        out.push(Entry { header, offset });
    }
    Ok(out)
}

/// A sealed pack opened for reading through positional reads (`pread`) of the exact ranges
/// asked for. No map: a pack truncated by another program while it is being read gives a short
/// read, reported as an error naming the pack, never a `SIGBUS` (docs/reliability.md).
pub struct PackReader {
    /// The pack's id, checked against its header on open.
    pub id: PackId,
    file: File,
    /// The file's length when it was opened; reads past it are refused without a syscall.
    len: u64,
}

impl PackReader {
    /// Open the sealed pack `id` at `path`. Fails with [`PackError::Io`] when the file cannot be
    /// opened or read, and with [`PackError::Corrupt`] when it is shorter than a header and
    /// trailer, or its magic, version or id is wrong. The footer is not checked here.
    pub fn open(path: &Path, id: PackId) -> Result<PackReader, PackError> {
        let file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let r = PackReader { id, file, len };
        let mut b = [0u8; HEADER_LEN as usize];
        if len < HEADER_LEN + TRAILER_LEN || r.read_at(0, &mut b).is_err() || &b[0..8] != PACK_MAGIC
        {
            return Err(PackError::Corrupt {
                pack: id.to_hex(),
                what: "not a cairn pack (bad magic or too short)".into(),
            });
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if version != PACK_VERSION {
            return Err(PackError::Corrupt {
                pack: id.to_hex(),
                what: format!("pack format version {version}, this build reads {PACK_VERSION}"),
            });
        }
        if b[16..32] != id.0 {
            return Err(PackError::Corrupt {
                pack: id.to_hex(),
                what: "the pack id in the header does not match the file name".into(),
            });
        }
        Ok(r)
    }

    /// Bytes of the pack file, footer and trailer included, when it was opened.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// Fill `buf` with the bytes from `offset`. Fails with [`EntryError::PastEnd`] when the
    /// range runs past the length the pack had when opened, [`EntryError::ShortRead`] when the
    /// file has shrunk since, and [`EntryError::Read`] when the read itself fails.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), EntryError> {
        use std::os::unix::fs::FileExt;
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or(EntryError::LengthOverflow)?;
        if end > self.len {
            return Err(EntryError::PastEnd {
                offset,
                end,
                pack_len: self.len,
            });
        }
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                EntryError::ShortRead { offset, end }
            } else {
                EntryError::Read(e.to_string())
            }
        })
    }

    /// The entry header stored just before `offset`, checked.
    fn header_at(&self, offset: u64) -> Result<EntryHeader, EntryError> {
        let start = offset
            .checked_sub(ENTRY_HEADER_LEN)
            .ok_or(EntryError::OffsetInPackHeader)?;
        if offset > self.len {
            return Err(EntryError::OffsetPastEnd);
        }
        let mut b = [0u8; ENTRY_HEADER_LEN as usize];
        self.read_at(start, &mut b)?;
        EntryHeader::from_bytes(&b)
    }

    /// The stored payload at `offset` of `len` bytes, bounds-checked; not decoded, not
    /// verified. Fails when the range runs past the end of the pack or cannot be read.
    pub fn payload(&self, offset: u64, len: u64) -> Result<Vec<u8>, EntryError> {
        let end = offset.checked_add(len).ok_or(EntryError::LengthOverflow)?;
        if end > self.len {
            return Err(EntryError::PastEnd {
                offset,
                end,
                pack_len: self.len,
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.read_at(offset, &mut buf)?;
        Ok(buf)
    }

    fn bad_chunk(&self, id: ChunkId, what: String) -> PackError {
        PackError::BadChunk {
            chunk: id,
            pack: self.id,
            what,
        }
    }

    /// The checked entry header of chunk `id` at `offset`.
    fn chunk_header(&self, id: ChunkId, offset: u64) -> Result<EntryHeader, PackError> {
        let h = self
            .header_at(offset)
            .map_err(|w| self.bad_chunk(id, w.to_string()))?;
        if h.kind != ENTRY_CHUNK || h.id != id.0 {
            return Err(self.bad_chunk(
                id,
                "the entry at the indexed offset is a different chunk".into(),
            ));
        }
        Ok(h)
    }

    /// The checked entry header of chunk `id` at `offset`, and its stored bytes.
    fn chunk_entry(&self, id: ChunkId, offset: u64) -> Result<(EntryHeader, Vec<u8>), PackError> {
        let h = self.chunk_header(id, offset)?;
        let stored = self
            .payload(offset, h.stored_len)
            .map_err(|w| self.bad_chunk(id, w.to_string()))?;
        Ok((h, stored))
    }

    /// Decode and verify chunk `id` whose payload is at `offset`. `base` is the raw bytes of its
    /// delta base, when its encoding needs one; `expect`, when given, is the header the caller
    /// expects, whose lengths must match. Fails with [`PackError::BadChunk`] when the entry
    /// header is damaged or names another entry, the lengths differ, the payload cannot be read
    /// or does not decode, or the result does not hash to `id`.
    pub fn read_chunk(
        &self,
        id: ChunkId,
        offset: u64,
        expect: Option<&EntryHeader>,
        base: Option<&[u8]>,
    ) -> Result<Vec<u8>, PackError> {
        let (h, stored) = self.chunk_entry(id, offset)?;
        if let Some(e) = expect
            && (e.raw_len != h.raw_len || e.stored_len != h.stored_len)
        {
            return Err(self.bad_chunk(id, "entry lengths differ from the index".into()));
        }
        let raw = codec::decode(h.encoding, &stored, h.raw_len, base)
            .map_err(|e| self.bad_chunk(id, format!("does not decode: {e}")))?;
        if ChunkId::of(&raw) != id {
            return Err(self.bad_chunk(id, "its bytes do not hash to its id".into()));
        }
        Ok(raw)
    }

    /// The entry header of the chunk at `offset` after checking it names chunk `id` and records
    /// `raw_len` raw bytes. Fails with [`PackError::BadChunk`] when the header is damaged, names
    /// another entry or records another raw length.
    fn chunk_header_of_len(
        &self,
        id: ChunkId,
        offset: u64,
        raw_len: usize,
    ) -> Result<EntryHeader, PackError> {
        let h = self.chunk_header(id, offset)?;
        if h.raw_len != raw_len as u64 {
            return Err(self.bad_chunk(
                id,
                format!(
                    "entry records {} raw bytes where {raw_len} are expected",
                    h.raw_len
                ),
            ));
        }
        Ok(h)
    }

    /// The encoding and stored bytes of the chunk at `offset`, whose raw length must be
    /// `raw_len`, after checking its entry header. Not decoded, not verified. Fails with
    /// [`PackError::BadChunk`] when the header is damaged, names another entry or records
    /// another raw length, or the payload runs past the end or cannot be read.
    pub fn chunk_payload(
        &self,
        id: ChunkId,
        offset: u64,
        raw_len: usize,
    ) -> Result<(Encoding, Vec<u8>), PackError> {
        let h = self.chunk_header_of_len(id, offset, raw_len)?;
        let stored = self
            .payload(offset, h.stored_len)
            .map_err(|w| self.bad_chunk(id, w.to_string()))?;
        Ok((h.encoding, stored))
    }

    /// [`PackReader::chunk_payload`] into `buf`, which is grown when shorter than the payload
    /// and otherwise left as long as it is (only the first bytes are read into: a buffer kept
    /// for the next chunk is never zeroed again). Returns the encoding and the payload's length,
    /// the prefix of `buf` that holds it.
    pub fn chunk_payload_into(
        &self,
        id: ChunkId,
        offset: u64,
        raw_len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(Encoding, usize), PackError> {
        let h = self.chunk_header_of_len(id, offset, raw_len)?;
        let len = offset
            .checked_add(h.stored_len)
            .filter(|&end| end <= self.len)
            .and_then(|_| usize::try_from(h.stored_len).ok())
            .ok_or_else(|| {
                self.bad_chunk(
                    id,
                    format!("payload of {} bytes runs past the end", h.stored_len),
                )
            })?;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        self.read_at(offset, &mut buf[..len])
            .map_err(|w| self.bad_chunk(id, w.to_string()))?;
        Ok((h.encoding, len))
    }

    /// Read the chunk at `offset` straight into `out` when it is stored raw (its stored bytes
    /// are its raw bytes): `Ok(true)`. `Ok(false)`, with `out` untouched, when it is encoded.
    /// Not verified. Fails as [`PackReader::chunk_payload`] does.
    pub fn raw_chunk_into(
        &self,
        id: ChunkId,
        offset: u64,
        out: &mut [u8],
    ) -> Result<bool, PackError> {
        let h = self.chunk_header_of_len(id, offset, out.len())?;
        if h.encoding != Encoding::Raw || h.stored_len != h.raw_len {
            return Ok(false);
        }
        self.read_at(offset, out)
            .map_err(|w| self.bad_chunk(id, w.to_string()))?;
        Ok(true)
    }

    /// Decode and verify object `id` whose payload is at `offset`: its kind byte and raw bytes.
    /// Fails with [`PackError::BadObject`] when the entry header is damaged or names another
    /// entry, the payload cannot be read or does not decode, or kind and bytes do not hash to
    /// `id`.
    pub fn read_object(&self, id: ObjectId, offset: u64) -> Result<(u8, Vec<u8>), PackError> {
        let bad = |what: String| PackError::BadObject {
            object: id,
            pack: self.id,
            what,
        };
        let h = self.header_at(offset).map_err(|e| bad(e.to_string()))?;
        if h.kind != ENTRY_OBJECT || h.id != id.0 {
            return Err(bad(
                "the entry at the indexed offset is a different object".into()
            ));
        }
        let stored = self
            .payload(offset, h.stored_len)
            .map_err(|e| bad(e.to_string()))?;
        let raw = codec::decode(h.encoding, &stored, h.raw_len, None)
            .map_err(|e| bad(format!("does not decode: {e}")))?;
        if ObjectId::of(h.object_kind, &raw) != id {
            return Err(bad("its bytes do not hash to its id".into()));
        }
        Ok((h.object_kind, raw))
    }

    /// Every entry, from the footer table (checked against its hash); when the footer is
    /// damaged, by scanning entry headers from the start, stopping at the first that does not
    /// parse (so a damaged pack gives the entries before the damage). The scan never fails.
    pub fn entries(&self) -> Result<Vec<Entry>, PackError> {
        match self.entries_from_footer() {
            Ok(v) => Ok(v),
            Err(_) => self.entries_by_scan(),
        }
    }

    /// Every entry, from the footer table only. Fails with [`PackError::Corrupt`] when the
    /// trailer magic is wrong, the table does not end at the trailer or does not match its hash,
    /// a row does not parse or points outside the entries, or the footer cannot be read.
    pub fn entries_from_footer(&self) -> Result<Vec<Entry>, PackError> {
        let corrupt = |what: &str| PackError::Corrupt {
            pack: self.id.to_hex(),
            what: what.to_string(),
        };
        let mut t = [0u8; TRAILER_LEN as usize];
        self.read_at(self.len - TRAILER_LEN, &mut t)
            .map_err(|e| corrupt(&format!("trailer unreadable: {e}")))?;
        if &t[48..56] != TRAILER_MAGIC {
            return Err(corrupt(
                "trailer magic is wrong (pack not sealed or truncated)",
            ));
        }
        let table_offset = u64::from_le_bytes(t[0..8].try_into().expect("8 bytes"));
        let count = u64::from_le_bytes(t[8..16].try_into().expect("8 bytes"));
        let table_len = count
            .checked_mul(TABLE_ROW_LEN)
            .ok_or_else(|| corrupt("entry count overflows"))?;
        let table_end = table_offset
            .checked_add(table_len)
            .ok_or_else(|| corrupt("table overflows"))?;
        if table_offset < HEADER_LEN || table_end != self.len - TRAILER_LEN {
            return Err(corrupt("footer table does not end at the trailer"));
        }
        let table = self
            .payload(table_offset, table_len)
            .map_err(|e| corrupt(&format!("footer table unreadable: {e}")))?;
        if blake3::hash(&table).as_bytes() != &t[16..48] {
            return Err(corrupt("footer table hash does not match"));
        }
        parse_table(&table, table_offset).map_err(|e| corrupt(&e))
    }

    fn entries_by_scan(&self) -> Result<Vec<Entry>, PackError> {
        let mut pos = HEADER_LEN;
        let mut out = Vec::new();
        let mut hb = [0u8; ENTRY_HEADER_LEN as usize];
        while pos + ENTRY_HEADER_LEN <= self.len {
            if self.read_at(pos, &mut hb).is_err() {
                break;
            }
            let Ok(header) = EntryHeader::from_bytes(&hb) else {
                break;
            };
            let offset = pos + ENTRY_HEADER_LEN;
            match offset.checked_add(header.stored_len) {
                Some(end) if end <= self.len => {
                    out.push(Entry { header, offset });
                    pos = end;
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_seal_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path()).unwrap();
        let data = vec![5u8; 100_000];
        let id = ChunkId::of(&data);
        let enc = codec::encode(&data, codec::Hint::default());
        let e = w
            .append_chunk(id, enc.encoding, data.len() as u64, &enc.bytes, None, 0)
            .unwrap();
        let oid = ObjectId::of(1, b"obj");
        let oe = w.append_object(oid, 1, b"obj").unwrap();
        let sealed = w.seal().unwrap();
        assert!(sealed.path.exists());
        assert_eq!(std::fs::metadata(&sealed.path).unwrap().len(), sealed.size);
        let r = PackReader::open(&sealed.path, sealed.id).unwrap();
        assert_eq!(r.read_chunk(id, e.offset, None, None).unwrap(), data);
        assert_eq!(r.read_object(oid, oe.offset).unwrap().1, b"obj");
        assert_eq!(r.entries_from_footer().unwrap(), sealed.entries);
        assert_eq!(r.entries_by_scan().unwrap(), sealed.entries);
        // Wrong id at a valid offset is refused.
        assert!(
            r.read_chunk(ChunkId::of(b"x"), e.offset, None, None)
                .is_err()
        );
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let w = PackWriter::create(dir.path()).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path()).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let id = ChunkId::of(&data);
        let enc = codec::encode(&data, codec::Hint::default());
        let e = w
            .append_chunk(id, enc.encoding, data.len() as u64, &enc.bytes, None, 0)
            .unwrap();
        let sealed = w.seal().unwrap();
        let clean = std::fs::read(&sealed.path).unwrap();
        let end = e.offset + e.header.stored_len;
        for i in (e.offset - ENTRY_HEADER_LEN)..end {
            let mut bad = clean.clone();
            bad[i as usize] ^= 0x5A;
            std::fs::write(&sealed.path, &bad).unwrap();
            let r = PackReader::open(&sealed.path, sealed.id).unwrap();
            match r.read_chunk(id, e.offset, None, None) {
                Ok(got) => panic!("flip at {i} returned {} bytes", got.len()),
                Err(PackError::BadChunk { chunk, .. }) => assert_eq!(chunk, id),
                Err(other) => panic!("unexpected {other}"),
            }
        }
    }
}
