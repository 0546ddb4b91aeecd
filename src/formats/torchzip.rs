//! A static reader of torch.save and TorchScript (`torch.jit.save`) zip archives.
//!
//! It owns two small parsers, both of untrusted input, and the layout they yield:
//! - **the zip subset torch writes**: End Of Central Directory (with the ZIP64 locator and
//!   record), the central directory, and each entry's local header, which gives the offset of the
//!   entry's payload (torch pads the *local* extra field so payloads start at multiples of 64, so
//!   the local extra length differs from the central one);
//! - **a pickle interpreter that never calls anything**: it runs the opcodes of `<stem>/<p>.pkl`
//!   (`data.pkl`, and `constants.pkl` in TorchScript) over a small value tree, where a `REDUCE`
//!   only records "call of global X with these arguments". It collects every persistent id
//!   `('storage', torch.<T>Storage, key, location, numel)` and, from each
//!   `torch._utils._rebuild_tensor_v2` (or `_v3`, `_rebuild_tensor`) call, the shape of a
//!   row-major tensor that covers a whole storage.
//!
//! A storage is a zip entry `<stem>/<p>/<key>` next to a parsed `<stem>/<p>.pkl` (`data/<key>`
//! always counts, referenced or not). [`segments`] then cuts the file into raw ranges and one
//! range per storage, so chunks can be aligned to each storage's first byte.
//!
//! An archive is accepted only if:
//! - exactly one EOCD record ends the file (no trailing comment bytes), on one disk; when any of
//!   its fields is saturated, a ZIP64 locator and record are present and used;
//! - the central directory lies inside the file, before the EOCD, and holds exactly the declared
//!   number of entries (at most one per 46 bytes), each with a unique, non-empty UTF-8 name under
//!   one common `<stem>/` and no encryption flag;
//! - every local header matches its central entry (signature, name, method), and the entries,
//!   sorted by offset, do not overlap each other nor the central directory;
//! - `<stem>/data.pkl` exists; every pickle and every storage is STORED (method 0) with equal
//!   compressed and uncompressed sizes. Other entries may be compressed (TorchScript deflates its
//!   `code/` sources); they become raw bytes;
//! - each pickle runs to a `STOP` at its last byte with only known opcodes, within the stack and
//!   memo limits; every persistent id is a well-formed storage tuple whose key names an existing
//!   storage entry, and a key is never declared with two storage types or two element counts;
//! - when the dtype and element count of a storage are known, the entry's size is exactly
//!   `numel * width`.
//!
//! The interpreter has no loops or calls, so it runs at most one opcode per pickle byte; its
//! stack and memo are capped at [`MAX_STACK`] and [`MAX_MEMO`], and values shared through the memo
//! are reference-counted, so memory stays linear in the pickle's length.
//!
//! Anything else is a [`TorchZipError`]; the caller falls back to plain chunking and records it.
//! Nothing here panics on any input: all offsets use checked arithmetic, and every allocation is
//! bounded by the file length (the central directory and the pickles are read only after their
//! ranges are known to lie inside the file, and below [`MAX_CENTRAL_DIR`] and [`MAX_PICKLE_LEN`]).
//!
//! Byte order: when `<stem>/byteorder` says `big`, storages keep their layout but lose their
//! dtype (cairn's tensor records are little-endian).

use crate::model::dtype::DType;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// The largest central directory read, in bytes (about a million entries).
pub const MAX_CENTRAL_DIR: u64 = 64 << 20;
/// The largest pickle interpreted, in bytes.
pub const MAX_PICKLE_LEN: u64 = 256 << 20;
/// The deepest value stack a pickle may build.
pub const MAX_STACK: usize = 1 << 20;
/// The most memo slots a pickle may fill.
pub const MAX_MEMO: usize = 1 << 22;
/// The longest `byteorder` entry read.
const MAX_BYTEORDER_LEN: u64 = 16;

const SIG_LOCAL: u32 = 0x0403_4b50;
const SIG_CENTRAL: u32 = 0x0201_4b50;
const SIG_EOCD: u32 = 0x0605_4b50;
const SIG_ZIP64_LOCATOR: u32 = 0x0706_4b50;
const SIG_ZIP64_EOCD: u32 = 0x0606_4b50;
const EOCD_LEN: u64 = 22;
const LOCAL_LEN: u64 = 30;
const CENTRAL_LEN: u64 = 46;
const ZIP64_LOCATOR_LEN: u64 = 20;
const ZIP64_EOCD_LEN: u64 = 56;
/// EOCD may be followed by a comment of up to 65535 bytes; torch writes none, but the search
/// window is the standard one so a stray comment is reported as such.
const EOCD_SEARCH: u64 = EOCD_LEN + 0xffff;
const ZIP64_EXTRA_ID: u16 = 0x0001;
const FLAG_ENCRYPTED: u16 = 1;

/// One zip entry and where its payload lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZipEntry {
    pub name: String,
    /// Offset of the local file header.
    pub header_offset: u64,
    /// Offset of the first payload byte (after the local header, name and extra field).
    pub data_offset: u64,
    /// Payload length as stored (the compressed size).
    pub size: u64,
    /// Compression method: 0 is STORED.
    pub method: u16,
}

impl ZipEntry {
    /// End (exclusive) of the payload. Parsed entries never overflow.
    pub fn data_end(&self) -> u64 {
        self.data_offset.saturating_add(self.size)
    }
}

/// One tensor storage: the raw bytes of a zip entry that tensors view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Storage {
    /// Full zip entry name, `<stem>/data/<key>` or `<stem>/constants/<key>`.
    pub entry: String,
    /// The key persistent ids use (the last component of `entry`).
    pub key: String,
    /// From the storage type (`torch.FloatStorage` → F32), or for `UntypedStorage` from a
    /// rebuild call that names a dtype; `None` when unknown, unreferenced or big-endian.
    pub dtype: Option<DType>,
    /// Element count of `dtype` from the persistent id; for an `UntypedStorage` whose dtype no
    /// rebuild call names, the byte count. `None` when unreferenced.
    pub numel: Option<u64>,
    /// Shape of a row-major tensor with storage offset 0 whose element count is the storage's
    /// (the first such rebuild call); `None` when only partial or strided views (transposes),
    /// or none, refer to the storage.
    pub shape: Option<Vec<u64>>,
    pub data_offset: u64,
    pub size: u64,
}

/// A parsed archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorchZip {
    /// The common first component of every entry name.
    pub stem: String,
    /// By `data_offset`.
    pub entries: Vec<ZipEntry>,
    /// By `data_offset`.
    pub storages: Vec<Storage>,
    /// Start of the central directory; everything from here to the end is zip metadata.
    pub central_dir_offset: u64,
    /// False when `<stem>/byteorder` says `big`.
    pub little_endian: bool,
}

/// A run of the file, as [`segments`] cuts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentRange {
    /// Zip headers, pickles, padding, compressed sources, the central directory.
    Raw { start: u64, end: u64 },
    /// The payload of `TorchZip::storages[index]`.
    Storage { start: u64, end: u64, index: usize },
}

impl SegmentRange {
    pub fn start(&self) -> u64 {
        match *self {
            SegmentRange::Raw { start, .. } | SegmentRange::Storage { start, .. } => start,
        }
    }
    pub fn end(&self) -> u64 {
        match *self {
            SegmentRange::Raw { end, .. } | SegmentRange::Storage { end, .. } => end,
        }
    }
    pub fn len(&self) -> u64 {
        self.end().saturating_sub(self.start())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a file is not a torch zip archive cairn can align. Messages name the broken rule; the
/// caller prefixes the file name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TorchZipError {
    #[error("reading {len} bytes at offset {offset}: {source}")]
    Io {
        offset: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },

    #[error("file of {file_len} bytes has no zip End Of Central Directory record")]
    NoEocd { file_len: u64 },

    #[error(
        "{extra} bytes follow the End Of Central Directory record (a zip comment or appended data)"
    )]
    TrailingBytes { extra: u64 },

    #[error("multi-disk zip archives are not supported")]
    MultiDisk,

    #[error("bad ZIP64 End Of Central Directory {what}")]
    BadZip64 { what: &'static str },

    #[error(
        "central directory [{offset}, +{size}) does not lie inside the file before its end record at {limit}"
    )]
    CentralDirOutOfBounds { offset: u64, size: u64, limit: u64 },

    #[error("central directory of {size} bytes exceeds the limit of {MAX_CENTRAL_DIR} bytes")]
    CentralDirTooLarge { size: u64 },

    #[error(
        "{count} entries cannot fit in a central directory of {size} bytes (46 bytes per entry at least)"
    )]
    TooManyEntries { count: u64, size: u64 },

    #[error("central directory entry {index} at offset {offset}: {what}")]
    BadCentralEntry {
        index: u64,
        offset: u64,
        what: &'static str,
    },

    #[error("central directory holds {extra} bytes after its {count} declared entries")]
    CentralDirTrailing { count: u64, extra: u64 },

    #[error("entry name is not UTF-8 ({len} bytes at central offset {offset})")]
    NameNotUtf8 { offset: u64, len: u64 },

    #[error("entry name {name:?} is not `<stem>/...` under the archive's common stem {stem:?}")]
    BadName { name: String, stem: String },

    #[error("entry {name:?} appears twice")]
    DuplicateEntry { name: String },

    #[error("entry {name:?} is encrypted")]
    Encrypted { name: String },

    #[error("entry {name:?}: local header at {offset}: {what}")]
    BadLocalHeader {
        name: String,
        offset: u64,
        what: &'static str,
    },

    #[error(
        "entry {name:?}: [{start}, {end}) runs past the end of the file or of the zip data ({limit})"
    )]
    EntryPastEnd {
        name: String,
        start: u64,
        end: u64,
        limit: u64,
    },

    #[error("entry {name:?} at {start} overlaps entry {previous:?}, which ends at {previous_end}")]
    Overlap {
        name: String,
        start: u64,
        previous: String,
        previous_end: u64,
    },

    #[error(
        "entry {name:?} is compressed (method {method}); torch.save writes storages and pickles STORED, so this archive cannot be aligned"
    )]
    Compressed { name: String, method: u16 },

    #[error(
        "STORED entry {name:?} has compressed size {compressed} but uncompressed size {uncompressed}"
    )]
    StoredSizeMismatch {
        name: String,
        compressed: u64,
        uncompressed: u64,
    },

    #[error("archive has no `<stem>/data.pkl`; not a torch.save or TorchScript archive")]
    NoDataPickle,

    #[error("pickle {pickle:?} of {len} bytes exceeds the limit of {MAX_PICKLE_LEN} bytes")]
    PickleTooLarge { pickle: String, len: u64 },

    #[error("pickle {pickle:?} at byte {offset}: {what}")]
    Pickle {
        pickle: String,
        offset: u64,
        what: String,
    },

    #[error("pickle {pickle:?} at byte {offset}: unsupported opcode {opcode:#04x}")]
    UnsupportedOpcode {
        pickle: String,
        offset: u64,
        opcode: u8,
    },

    #[error(
        "pickle {pickle:?}: persistent id is not ('storage', torch.<T>Storage, key, location, numel): {what}"
    )]
    BadPersistentId { pickle: String, what: &'static str },

    #[error("pickle {pickle:?} refers to storage {key:?}, but the archive has no entry {entry:?}")]
    MissingStorage {
        pickle: String,
        key: String,
        entry: String,
    },

    #[error("storage {entry:?} is declared twice with different {what}")]
    ConflictingStorage { entry: String, what: &'static str },

    #[error(
        "storage {entry:?} holds {size} bytes, but {numel} elements of {dtype} need {expected}"
    )]
    StorageSizeMismatch {
        entry: String,
        dtype: DType,
        numel: u64,
        size: u64,
        expected: u64,
    },
}

type Result<T, E = TorchZipError> = std::result::Result<T, E>;

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Read `len` bytes at `offset`, after checking the range lies inside the file.
fn read_vec(
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    file_len: u64,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>> {
    let io_err = |source| TorchZipError::Io {
        offset,
        len,
        source,
    };
    match offset.checked_add(len) {
        Some(end) if end <= file_len => {}
        _ => {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "range past the end of the file",
            )));
        }
    }
    let n = usize::try_from(len).map_err(|_| {
        io_err(std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            "range larger than the address space",
        ))
    })?;
    let mut buf = vec![0u8; n];
    read_at(offset, &mut buf).map_err(io_err)?;
    Ok(buf)
}

/// Little-endian field reads from a byte slice; out-of-range reads give `None`.
struct Le<'a>(&'a [u8]);

impl Le<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        let end = at.checked_add(2)?;
        let b = self.0.get(at..end)?;
        Some(u16::from_le_bytes(b.try_into().ok()?))
    }
    fn u32(&self, at: usize) -> Option<u32> {
        let end = at.checked_add(4)?;
        let b = self.0.get(at..end)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }
    fn u64(&self, at: usize) -> Option<u64> {
        let end = at.checked_add(8)?;
        let b = self.0.get(at..end)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

/// Where the central directory is and how many entries it holds.
struct Directory {
    count: u64,
    offset: u64,
    size: u64,
    /// Start of the end records (the ZIP64 record when present, else the EOCD).
    end_records: u64,
}

fn find_directory(
    file_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<Directory> {
    if file_len < EOCD_LEN {
        return Err(TorchZipError::NoEocd { file_len });
    }
    let tail_len = file_len.min(EOCD_SEARCH);
    let tail_start = file_len - tail_len;
    let tail = read_vec(read_at, file_len, tail_start, tail_len)?;
    // The last signature whose record fits; a signature inside a comment is unlikely, and a
    // comment is rejected anyway.
    let sig = SIG_EOCD.to_le_bytes();
    let last = tail.len().saturating_sub(22);
    let pos = (0..=last)
        .rev()
        .find(|&i| tail.get(i..i.saturating_add(4)) == Some(&sig[..]))
        .ok_or(TorchZipError::NoEocd { file_len })?;
    let eocd = tail.get(pos..).unwrap_or_default();
    let le = Le(eocd);
    let field16 = |at| le.u16(at).ok_or(TorchZipError::NoEocd { file_len });
    let field32 = |at| le.u32(at).ok_or(TorchZipError::NoEocd { file_len });
    let eocd_offset = tail_start + to_u64(pos);
    let comment_len = u64::from(field16(20)?);
    let extra = to_u64(eocd.len()).saturating_sub(EOCD_LEN);
    if extra != 0 || comment_len != 0 {
        return Err(TorchZipError::TrailingBytes {
            extra: extra.max(comment_len),
        });
    }
    let disk = field16(4)?;
    let cd_disk = field16(6)?;
    let on_disk = field16(8)?;
    let total = field16(10)?;
    let cd_size = field32(12)?;
    let cd_offset = field32(16)?;
    let saturated = disk == 0xffff
        || cd_disk == 0xffff
        || on_disk == 0xffff
        || total == 0xffff
        || cd_size == 0xffff_ffff
        || cd_offset == 0xffff_ffff;
    let locator_at = eocd_offset.checked_sub(ZIP64_LOCATOR_LEN);
    let locator = match locator_at {
        Some(at) => {
            let buf = read_vec(read_at, file_len, at, ZIP64_LOCATOR_LEN)?;
            (Le(&buf).u32(0) == Some(SIG_ZIP64_LOCATOR)).then_some((at, buf))
        }
        None => None,
    };
    let Some((locator_offset, locator)) = locator else {
        if saturated {
            return Err(TorchZipError::BadZip64 {
                what: "locator: missing, but the end record has saturated fields",
            });
        }
        if disk != 0 || cd_disk != 0 || on_disk != total {
            return Err(TorchZipError::MultiDisk);
        }
        return Ok(Directory {
            count: u64::from(total),
            offset: u64::from(cd_offset),
            size: u64::from(cd_size),
            end_records: eocd_offset,
        });
    };
    let ll = Le(&locator);
    let bad = |what| TorchZipError::BadZip64 { what };
    let rec_disk = ll.u32(4).ok_or(bad("locator"))?;
    let rec_offset = ll.u64(8).ok_or(bad("locator"))?;
    let disks = ll.u32(16).ok_or(bad("locator"))?;
    if rec_disk != 0 || disks > 1 {
        return Err(TorchZipError::MultiDisk);
    }
    match rec_offset.checked_add(ZIP64_EOCD_LEN) {
        Some(end) if end <= locator_offset => {}
        _ => {
            return Err(bad(
                "record offset: the record does not fit before the locator",
            ));
        }
    }
    let rec = read_vec(read_at, file_len, rec_offset, ZIP64_EOCD_LEN)?;
    let rl = Le(&rec);
    if rl.u32(0) != Some(SIG_ZIP64_EOCD) {
        return Err(bad("record signature"));
    }
    let rec_size = rl.u64(4).ok_or(bad("record"))?;
    // The record's own size excludes its 12-byte lead; an extensible data sector may follow.
    match rec_offset
        .checked_add(12)
        .and_then(|x| x.checked_add(rec_size))
    {
        Some(end) if rec_size >= ZIP64_EOCD_LEN - 12 && end == locator_offset => {}
        _ => return Err(bad("record size: the record must end at the locator")),
    }
    let this_disk = rl.u32(16).ok_or(bad("record"))?;
    let cd_disk = rl.u32(20).ok_or(bad("record"))?;
    let on_disk = rl.u64(24).ok_or(bad("record"))?;
    let total = rl.u64(32).ok_or(bad("record"))?;
    let size = rl.u64(40).ok_or(bad("record"))?;
    let offset = rl.u64(48).ok_or(bad("record"))?;
    if this_disk != 0 || cd_disk != 0 || on_disk != total {
        return Err(TorchZipError::MultiDisk);
    }
    Ok(Directory {
        count: total,
        offset,
        size,
        end_records: rec_offset,
    })
}

/// A central directory entry, before its local header is read.
struct Central {
    name: String,
    method: u16,
    flags: u16,
    compressed: u64,
    uncompressed: u64,
    header_offset: u64,
}

fn read_central(dir: &Directory, cd: &[u8]) -> Result<Vec<Central>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for index in 0..dir.count {
        let offset = dir.offset.saturating_add(to_u64(at));
        let bad = |what| TorchZipError::BadCentralEntry {
            index,
            offset,
            what,
        };
        let rec = Le(cd.get(at..).unwrap_or_default());
        if rec.u32(0) != Some(SIG_CENTRAL) {
            return Err(bad("bad signature or truncated directory"));
        }
        let field16 = |i| rec.u16(i).ok_or(bad("truncated"));
        let field32 = |i| rec.u32(i).ok_or(bad("truncated"));
        let flags = field16(8)?;
        let method = field16(10)?;
        let mut compressed = u64::from(field32(20)?);
        let mut uncompressed = u64::from(field32(24)?);
        let name_len = usize::from(field16(28)?);
        let extra_len = usize::from(field16(30)?);
        let comment_len = usize::from(field16(32)?);
        let disk = field16(34)?;
        let mut header_offset = u64::from(field32(42)?);
        let name_start = 46usize;
        let name_end = name_start + name_len;
        let extra_end = name_end + extra_len;
        let rec_end = extra_end + comment_len;
        let name_bytes = rec
            .0
            .get(name_start..name_end)
            .ok_or(bad("truncated name"))?;
        let extra = rec
            .0
            .get(name_end..extra_end)
            .ok_or(bad("truncated extra field"))?;
        if rec.0.len() < rec_end {
            return Err(bad("truncated comment"));
        }
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| TorchZipError::NameNotUtf8 {
                offset,
                len: to_u64(name_len),
            })?
            .to_string();
        // ZIP64 extended information: 8-byte values, present in this order only for the
        // fields saturated in the fixed part.
        let need_u = uncompressed == 0xffff_ffff;
        let need_c = compressed == 0xffff_ffff;
        let need_o = header_offset == 0xffff_ffff;
        let mut disk32 = u32::from(disk);
        if need_u || need_c || need_o || disk == 0xffff {
            let z = zip64_extra(extra).ok_or(bad("saturated field without a ZIP64 extra field"))?;
            let zl = Le(z);
            let mut i = 0usize;
            let mut next = || {
                let v = zl.u64(i);
                i += 8;
                v.ok_or(bad("ZIP64 extra field too short"))
            };
            if need_u {
                uncompressed = next()?;
            }
            if need_c {
                compressed = next()?;
            }
            if need_o {
                header_offset = next()?;
            }
            if disk == 0xffff {
                disk32 = zl.u32(i).ok_or(bad("ZIP64 extra field too short"))?;
            }
        }
        if disk32 != 0 {
            return Err(TorchZipError::MultiDisk);
        }
        out.push(Central {
            name,
            method,
            flags,
            compressed,
            uncompressed,
            header_offset,
        });
        at = at.saturating_add(rec_end);
    }
    let extra = to_u64(cd.len().saturating_sub(at));
    if extra != 0 {
        return Err(TorchZipError::CentralDirTrailing {
            count: dir.count,
            extra,
        });
    }
    Ok(out)
}

/// The payload of the ZIP64 extra block in an extra field, if any.
fn zip64_extra(mut extra: &[u8]) -> Option<&[u8]> {
    while extra.len() >= 4 {
        let le = Le(extra);
        let id = le.u16(0)?;
        let len = usize::from(le.u16(2)?);
        let body = extra.get(4..4 + len)?;
        if id == ZIP64_EXTRA_ID {
            return Some(body);
        }
        extra = extra.get(4 + len..)?;
    }
    None
}

/// Parse an archive of `file_len` bytes through `read_at(offset, buf)`, which must fill `buf`
/// with the bytes at `offset` (the ranges asked for always lie inside the file).
pub fn parse(
    file_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<TorchZip> {
    let dir = find_directory(file_len, read_at)?;
    let cd_end = dir.offset.checked_add(dir.size);
    if cd_end.is_none_or(|end| end > dir.end_records) {
        return Err(TorchZipError::CentralDirOutOfBounds {
            offset: dir.offset,
            size: dir.size,
            limit: dir.end_records,
        });
    }
    if dir.size > MAX_CENTRAL_DIR {
        return Err(TorchZipError::CentralDirTooLarge { size: dir.size });
    }
    if dir.count > dir.size / CENTRAL_LEN {
        return Err(TorchZipError::TooManyEntries {
            count: dir.count,
            size: dir.size,
        });
    }
    let cd = read_vec(read_at, file_len, dir.offset, dir.size)?;
    let central = read_central(&dir, &cd)?;

    // Names: one common stem, no duplicates.
    let first = central.first().ok_or(TorchZipError::NoDataPickle)?;
    let stem = match first.name.split_once('/') {
        Some((s, _)) => s.to_string(),
        None => {
            return Err(TorchZipError::BadName {
                name: first.name.clone(),
                stem: String::new(),
            });
        }
    };
    let mut names = BTreeSet::new();
    for c in &central {
        match c.name.split_once('/') {
            Some((s, rest)) if s == stem && !s.is_empty() && !rest.is_empty() => {}
            _ => {
                return Err(TorchZipError::BadName {
                    name: c.name.clone(),
                    stem,
                });
            }
        }
        if !names.insert(c.name.as_str()) {
            return Err(TorchZipError::DuplicateEntry {
                name: c.name.clone(),
            });
        }
        if c.flags & FLAG_ENCRYPTED != 0 {
            return Err(TorchZipError::Encrypted {
                name: c.name.clone(),
            });
        }
        if c.method == 0 && c.compressed != c.uncompressed {
            return Err(TorchZipError::StoredSizeMismatch {
                name: c.name.clone(),
                compressed: c.compressed,
                uncompressed: c.uncompressed,
            });
        }
    }

    // Local headers give the payload offsets.
    let mut entries = Vec::with_capacity(central.len());
    for c in &central {
        let bad = |what| TorchZipError::BadLocalHeader {
            name: c.name.clone(),
            offset: c.header_offset,
            what,
        };
        let past_end = |end| TorchZipError::EntryPastEnd {
            name: c.name.clone(),
            start: c.header_offset,
            end,
            limit: dir.offset,
        };
        let fixed_end = c
            .header_offset
            .checked_add(LOCAL_LEN)
            .ok_or_else(|| past_end(u64::MAX))?;
        if fixed_end > dir.offset {
            return Err(past_end(fixed_end));
        }
        let h = read_vec(read_at, file_len, c.header_offset, LOCAL_LEN)?;
        let hl = Le(&h);
        if hl.u32(0) != Some(SIG_LOCAL) {
            return Err(bad("bad signature"));
        }
        if hl.u16(8) != Some(c.method) {
            return Err(bad("compression method differs from the central directory"));
        }
        let name_len = u64::from(hl.u16(26).ok_or(bad("truncated"))?);
        let extra_len = u64::from(hl.u16(28).ok_or(bad("truncated"))?);
        if name_len != to_u64(c.name.len()) {
            return Err(bad("name differs from the central directory"));
        }
        let data_offset = fixed_end
            .checked_add(name_len)
            .and_then(|x| x.checked_add(extra_len))
            .ok_or_else(|| past_end(u64::MAX))?;
        let data_end = data_offset
            .checked_add(c.compressed)
            .ok_or_else(|| past_end(u64::MAX))?;
        if data_end > dir.offset {
            return Err(past_end(data_end));
        }
        let name = read_vec(read_at, file_len, fixed_end, name_len)?;
        if name != c.name.as_bytes() {
            return Err(bad("name differs from the central directory"));
        }
        entries.push(ZipEntry {
            name: c.name.clone(),
            header_offset: c.header_offset,
            data_offset,
            size: c.compressed,
            method: c.method,
        });
    }
    entries.sort_by_key(|e| e.header_offset);
    for pair in entries.windows(2) {
        if let [a, b] = pair
            && a.data_end() > b.header_offset
        {
            return Err(TorchZipError::Overlap {
                name: b.name.clone(),
                start: b.header_offset,
                previous: a.name.clone(),
                previous_end: a.data_end(),
            });
        }
    }

    let by_name: BTreeMap<&str, &ZipEntry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let prefix = format!("{stem}/");
    let data_pkl = format!("{stem}/data.pkl");
    if !by_name.contains_key(data_pkl.as_str()) {
        return Err(TorchZipError::NoDataPickle);
    }
    // Pickles are the entries `<stem>/<p>.pkl`; each owns the storages `<stem>/<p>/<key>`.
    let pickles: Vec<&ZipEntry> = entries
        .iter()
        .filter(|e| {
            e.name
                .strip_prefix(&prefix)
                .is_some_and(|rest| !rest.contains('/') && rest.ends_with(".pkl"))
        })
        .collect();
    let storage_dirs: BTreeSet<&str> = pickles
        .iter()
        .filter_map(|e| e.name.strip_suffix(".pkl"))
        .collect();
    let is_storage = |name: &str| {
        name.rsplit_once('/')
            .is_some_and(|(dir, key)| !key.is_empty() && storage_dirs.contains(dir))
    };

    let little_endian = match by_name.get(format!("{stem}/byteorder").as_str()) {
        Some(e) if e.method == 0 && e.size <= MAX_BYTEORDER_LEN => {
            let b = read_vec(read_at, file_len, e.data_offset, e.size)?;
            b.as_slice() != b"big"
        }
        _ => true,
    };

    // Every storage starts unreferenced; pickles fill in what they declare.
    let mut storages: BTreeMap<String, Storage> = BTreeMap::new();
    for e in &entries {
        if !is_storage(&e.name) {
            continue;
        }
        if e.method != 0 {
            return Err(TorchZipError::Compressed {
                name: e.name.clone(),
                method: e.method,
            });
        }
        let key = e.name.rsplit('/').next().unwrap_or_default().to_string();
        storages.insert(
            e.name.clone(),
            Storage {
                entry: e.name.clone(),
                key,
                dtype: None,
                numel: None,
                shape: None,
                data_offset: e.data_offset,
                size: e.size,
            },
        );
    }

    for p in &pickles {
        if p.method != 0 {
            return Err(TorchZipError::Compressed {
                name: p.name.clone(),
                method: p.method,
            });
        }
        if p.size > MAX_PICKLE_LEN {
            return Err(TorchZipError::PickleTooLarge {
                pickle: p.name.clone(),
                len: p.size,
            });
        }
        let bytes = read_vec(read_at, file_len, p.data_offset, p.size)?;
        let refs = pickle::run(&bytes).map_err(|e| e.into_error(&p.name))?;
        let dir = p.name.strip_suffix(".pkl").unwrap_or_default();
        for r in refs {
            let entry = format!("{dir}/{}", r.key);
            let Some(s) = storages.get_mut(&entry) else {
                return Err(TorchZipError::MissingStorage {
                    pickle: p.name.clone(),
                    key: r.key,
                    entry,
                });
            };
            merge(s, r)?;
        }
    }

    let mut storages: Vec<Storage> = storages.into_values().collect();
    for s in &mut storages {
        if let (Some(dtype), Some(numel)) = (s.dtype, s.numel) {
            let expected = dtype.byte_len(&[numel]).ok();
            if expected != Some(s.size) {
                return Err(TorchZipError::StorageSizeMismatch {
                    entry: s.entry.clone(),
                    dtype,
                    numel,
                    size: s.size,
                    expected: expected.unwrap_or(u64::MAX),
                });
            }
        }
        if !little_endian {
            s.dtype = None;
        }
    }
    storages.sort_by_key(|s| s.data_offset);
    entries.sort_by_key(|e| e.data_offset);
    Ok(TorchZip {
        stem,
        entries,
        storages,
        central_dir_offset: dir.offset,
        little_endian,
    })
}

/// Fold what one pickle says about a storage into it; repeated declarations must agree.
fn merge(s: &mut Storage, r: pickle::StorageRef) -> Result<()> {
    let conflict = |what| TorchZipError::ConflictingStorage {
        entry: s.entry.clone(),
        what,
    };
    match (s.numel, r.numel) {
        (Some(a), b) if a != b => return Err(conflict("element counts")),
        _ => s.numel = Some(r.numel),
    }
    match (s.dtype, r.dtype) {
        (Some(a), Some(b)) if a != b => return Err(conflict("dtypes")),
        (None, Some(b)) => s.dtype = Some(b),
        _ => {}
    }
    if s.shape.is_none() {
        s.shape = r.shape;
    }
    Ok(())
}

/// Parse a whole in-memory archive.
pub fn parse_bytes(bytes: &[u8]) -> Result<TorchZip> {
    parse(to_u64(bytes.len()), &mut |offset, buf| {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| bytes.get(start..end))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    })
}

/// Cut a file of `file_len` bytes into consecutive ranges that cover it exactly: one
/// [`SegmentRange::Storage`] per non-empty storage, raw ranges in between (adjacent raw bytes
/// merged, empty ranges left out).
pub fn segments(z: &TorchZip, file_len: u64) -> Vec<SegmentRange> {
    let mut out = Vec::with_capacity(z.storages.len().saturating_mul(2).saturating_add(1));
    let mut cursor = 0u64;
    for (index, s) in z.storages.iter().enumerate() {
        let end = s.data_offset.saturating_add(s.size).min(file_len);
        // Parsed storages are sorted and disjoint; the guard keeps hand-built values sane.
        if s.size == 0 || s.data_offset < cursor || end <= s.data_offset {
            continue;
        }
        if s.data_offset > cursor {
            out.push(SegmentRange::Raw {
                start: cursor,
                end: s.data_offset,
            });
        }
        out.push(SegmentRange::Storage {
            start: s.data_offset,
            end,
            index,
        });
        cursor = end;
    }
    if cursor < file_len {
        out.push(SegmentRange::Raw {
            start: cursor,
            end: file_len,
        });
    }
    out
}

/// The dtype a `torch.<T>Storage` class holds; `None` for `UntypedStorage` and types cairn has
/// no dtype for.
pub fn storage_dtype(class: &str) -> Option<DType> {
    Some(match class {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        "ComplexFloatStorage" => DType::C64,
        _ => return None,
    })
}

/// The dtype a `torch.<name>` dtype global names.
pub fn torch_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "float32" | "float" => DType::F32,
        "float64" | "double" => DType::F64,
        "float16" | "half" => DType::F16,
        "bfloat16" => DType::BF16,
        "int64" | "long" => DType::I64,
        "int32" | "int" => DType::I32,
        "int16" | "short" => DType::I16,
        "int8" => DType::I8,
        "uint8" => DType::U8,
        "uint16" => DType::U16,
        "uint32" => DType::U32,
        "uint64" => DType::U64,
        "bool" => DType::Bool,
        "complex64" | "cfloat" => DType::C64,
        "float8_e5m2" => DType::F8E5M2,
        "float8_e4m3fn" => DType::F8E4M3,
        "float8_e5m2fnuz" => DType::F8E5M2FNUZ,
        "float8_e4m3fnuz" => DType::F8E4M3FNUZ,
        "float8_e8m0fnu" => DType::F8E8M0,
        _ => return None,
    })
}

/// The static pickle interpreter.
mod pickle {
    use super::{
        DType, MAX_MEMO, MAX_STACK, Rc, TorchZipError, storage_dtype, to_u64, torch_dtype,
    };
    use std::collections::BTreeMap;

    /// Whether `stride` is the row-major (C-contiguous) stride of `shape`. Dimensions of
    /// length 1 may carry any stride (torch leaves them arbitrary), and a tensor with no
    /// elements is laid out by any stride.
    fn is_row_major(shape: &[u64], stride: &[Value]) -> bool {
        if stride.len() != shape.len() {
            return false;
        }
        if shape.contains(&0) {
            return true;
        }
        let mut expected = 1u64;
        for (&d, s) in shape.iter().zip(stride).rev() {
            let Value::Int(s) = s else { return false };
            if d != 1 && u64::try_from(*s).ok() != Some(expected) {
                return false;
            }
            let Some(next) = expected.checked_mul(d) else {
                return false;
            };
            expected = next;
        }
        true
    }

    /// What a pickle says about one storage key.
    #[derive(Debug)]
    pub(super) struct StorageRef {
        pub key: String,
        /// The storage class name (`FloatStorage`, `UntypedStorage`, ...).
        class: String,
        /// The count the persistent id declares (bytes for `UntypedStorage`).
        declared: u64,
        pub dtype: Option<DType>,
        /// Elements of `dtype`; for an untyped storage whose dtype is unknown, bytes.
        pub numel: u64,
        pub shape: Option<Vec<u64>>,
    }

    /// A pickle failure, before the pickle's name is attached.
    #[derive(Debug)]
    pub(super) enum Fail {
        At { offset: u64, what: String },
        Opcode { offset: u64, opcode: u8 },
        PersistentId(&'static str),
        Conflict { key: String, what: &'static str },
    }

    impl Fail {
        pub(super) fn into_error(self, pickle: &str) -> TorchZipError {
            let pickle = pickle.to_string();
            match self {
                Fail::At { offset, what } => TorchZipError::Pickle {
                    pickle,
                    offset,
                    what,
                },
                Fail::Opcode { offset, opcode } => TorchZipError::UnsupportedOpcode {
                    pickle,
                    offset,
                    opcode,
                },
                Fail::PersistentId(what) => TorchZipError::BadPersistentId { pickle, what },
                Fail::Conflict { key, what } => TorchZipError::ConflictingStorage {
                    entry: format!("{pickle}: {key}"),
                    what,
                },
            }
        }
    }

    /// The values the interpreter keeps. Containers are opaque: their contents are never needed,
    /// because storages and rebuild calls are recorded when they are built.
    #[derive(Clone, Debug)]
    enum Value {
        None,
        Bool,
        Int(i64),
        /// An integer that does not fit in 64 bits.
        BigInt,
        Float,
        Str(Rc<str>),
        Bytes,
        Tuple(Rc<[Value]>),
        Global(Rc<(String, String)>),
        /// A persistent storage id: its index in the interpreter's refs.
        Storage(usize),
        /// A list, dict, set, or the result of a call or of NEWOBJ.
        Opaque,
    }

    enum Slot {
        Mark,
        Value(Value),
    }

    struct Machine<'a> {
        code: &'a [u8],
        pos: usize,
        /// Offset of the opcode being run, for messages.
        op_at: usize,
        stack: Vec<Slot>,
        memo: BTreeMap<u32, Value>,
        refs: Vec<StorageRef>,
        by_key: BTreeMap<String, usize>,
    }

    pub(super) fn run(code: &[u8]) -> Result<Vec<StorageRef>, Fail> {
        let mut m = Machine {
            code,
            pos: 0,
            op_at: 0,
            stack: Vec::new(),
            memo: BTreeMap::new(),
            refs: Vec::new(),
            by_key: BTreeMap::new(),
        };
        m.run()?;
        Ok(m.refs)
    }

    const TORCH_UTILS: &str = "torch._utils";

    impl<'a> Machine<'a> {
        fn fail(&self, what: impl Into<String>) -> Fail {
            Fail::At {
                offset: to_u64(self.op_at),
                what: what.into(),
            }
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], Fail> {
            let end = self
                .pos
                .checked_add(n)
                .filter(|&e| e <= self.code.len())
                .ok_or_else(|| self.fail("operand runs past the end of the pickle"))?;
            let code: &'a [u8] = self.code;
            let b = code.get(self.pos..end).unwrap_or_default();
            self.pos = end;
            Ok(b)
        }

        fn arr<const N: usize>(&mut self) -> Result<[u8; N], Fail> {
            let b = self.take(N)?;
            let mut out = [0u8; N];
            out.copy_from_slice(b);
            Ok(out)
        }

        fn u8(&mut self) -> Result<u8, Fail> {
            Ok(self.arr::<1>()?[0])
        }

        fn u32(&mut self) -> Result<u32, Fail> {
            Ok(u32::from_le_bytes(self.arr()?))
        }

        fn len_u32(&mut self) -> Result<usize, Fail> {
            let n = self.u32()?;
            usize::try_from(n).map_err(|_| self.fail("length does not fit"))
        }

        fn len_u64(&mut self) -> Result<usize, Fail> {
            let n = u64::from_le_bytes(self.arr()?);
            usize::try_from(n).map_err(|_| self.fail("length does not fit"))
        }

        /// A newline-terminated text operand (GLOBAL, PUT, GET, INT, PERSID).
        fn line(&mut self) -> Result<&'a str, Fail> {
            let rest = self.code.get(self.pos..).unwrap_or_default();
            let n = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| self.fail("text operand without a newline"))?;
            let b = self.take(n + 1)?;
            let b = b.get(..n).unwrap_or_default();
            std::str::from_utf8(b).map_err(|_| self.fail("text operand is not UTF-8"))
        }

        fn str_operand(&mut self, n: usize) -> Result<Value, Fail> {
            let b = self.take(n)?;
            match std::str::from_utf8(b) {
                Ok(s) => Ok(Value::Str(Rc::from(s))),
                Err(_) => Err(self.fail("string is not UTF-8")),
            }
        }

        fn push(&mut self, v: Value) -> Result<(), Fail> {
            if self.stack.len() >= MAX_STACK {
                return Err(self.fail(format!("stack deeper than {MAX_STACK}")));
            }
            self.stack.push(Slot::Value(v));
            Ok(())
        }

        fn pop(&mut self) -> Result<Value, Fail> {
            match self.stack.pop() {
                Some(Slot::Value(v)) => Ok(v),
                Some(Slot::Mark) => Err(self.fail("expected a value, found a mark")),
                None => Err(self.fail("stack underflow")),
            }
        }

        fn top(&self) -> Result<&Value, Fail> {
            match self.stack.last() {
                Some(Slot::Value(v)) => Ok(v),
                Some(Slot::Mark) => Err(self.fail("expected a value, found a mark")),
                None => Err(self.fail("stack underflow")),
            }
        }

        /// Pop everything down to the topmost mark, and the mark.
        fn pop_mark(&mut self) -> Result<Vec<Value>, Fail> {
            let at = self
                .stack
                .iter()
                .rposition(|s| matches!(s, Slot::Mark))
                .ok_or_else(|| self.fail("no mark on the stack"))?;
            let items = self.stack.split_off(at);
            Ok(items
                .into_iter()
                .filter_map(|s| match s {
                    Slot::Value(v) => Some(v),
                    Slot::Mark => None,
                })
                .collect())
        }

        fn pop_n(&mut self, n: usize) -> Result<Vec<Value>, Fail> {
            let at = self
                .stack
                .len()
                .checked_sub(n)
                .ok_or_else(|| self.fail("stack underflow"))?;
            let items = self.stack.split_off(at);
            items
                .into_iter()
                .map(|s| match s {
                    Slot::Value(v) => Ok(v),
                    Slot::Mark => Err(self.fail("expected a value, found a mark")),
                })
                .collect()
        }

        fn put(&mut self, idx: u32) -> Result<(), Fail> {
            let v = self.top()?.clone();
            if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
                return Err(self.fail(format!("more than {MAX_MEMO} memo slots")));
            }
            self.memo.insert(idx, v);
            Ok(())
        }

        fn get(&mut self, idx: u32) -> Result<(), Fail> {
            let v = self
                .memo
                .get(&idx)
                .cloned()
                .ok_or_else(|| self.fail(format!("memo slot {idx} is empty")))?;
            self.push(v)
        }

        fn int_from_le(&self, b: &[u8]) -> Value {
            if b.is_empty() {
                return Value::Int(0);
            }
            if b.len() > 8 {
                // Fits only if the extra bytes are pure sign extension.
                let (lo, hi) = b.split_at(8);
                let neg = lo.last().is_some_and(|&x| x & 0x80 != 0);
                let fill = if neg { 0xff } else { 0 };
                if hi.iter().any(|&x| x != fill) {
                    return Value::BigInt;
                }
                return self.int_from_le(lo);
            }
            let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
            let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
            if let Some(dst) = buf.get_mut(..b.len()) {
                dst.copy_from_slice(b);
            }
            Value::Int(i64::from_le_bytes(buf))
        }

        fn run(&mut self) -> Result<(), Fail> {
            loop {
                self.op_at = self.pos;
                let op = self.u8()?;
                match op {
                    // PROTO
                    0x80 => {
                        let v = self.u8()?;
                        if v > 5 {
                            return Err(self.fail(format!("unknown protocol {v}")));
                        }
                    }
                    // FRAME: framing is only a buffering hint.
                    0x95 => {
                        self.arr::<8>()?;
                    }
                    // STOP
                    b'.' => {
                        self.pop()?;
                        if self.pos != self.code.len() {
                            return Err(self.fail("bytes after STOP"));
                        }
                        return Ok(());
                    }
                    // GLOBAL
                    b'c' => {
                        let module = self.line()?.to_string();
                        let name = self.line()?.to_string();
                        self.push(Value::Global(Rc::new((module, name))))?;
                    }
                    // STACK_GLOBAL
                    0x93 => {
                        let name = self.pop()?;
                        let module = self.pop()?;
                        match (module, name) {
                            (Value::Str(m), Value::Str(n)) => {
                                self.push(Value::Global(Rc::new((m.to_string(), n.to_string()))))?
                            }
                            _ => return Err(self.fail("STACK_GLOBAL needs two strings")),
                        }
                    }
                    // BINPUT, LONG_BINPUT, PUT, MEMOIZE
                    b'q' => {
                        let i = self.u8()?;
                        self.put(u32::from(i))?;
                    }
                    b'r' => {
                        let i = self.u32()?;
                        self.put(i)?;
                    }
                    b'p' => {
                        let i = self.line()?.parse::<u32>();
                        let i = i.map_err(|_| self.fail("PUT index is not a number"))?;
                        self.put(i)?;
                    }
                    0x94 => {
                        let i = u32::try_from(self.memo.len())
                            .map_err(|_| self.fail("memo overflow"))?;
                        self.put(i)?;
                    }
                    // BINGET, LONG_BINGET, GET
                    b'h' => {
                        let i = self.u8()?;
                        self.get(u32::from(i))?;
                    }
                    b'j' => {
                        let i = self.u32()?;
                        self.get(i)?;
                    }
                    b'g' => {
                        let i = self.line()?.parse::<u32>();
                        let i = i.map_err(|_| self.fail("GET index is not a number"))?;
                        self.get(i)?;
                    }
                    // MARK, POP, POP_MARK, DUP
                    b'(' => {
                        if self.stack.len() >= MAX_STACK {
                            return Err(self.fail(format!("stack deeper than {MAX_STACK}")));
                        }
                        self.stack.push(Slot::Mark);
                    }
                    b'0' => match self.stack.pop() {
                        Some(_) => {}
                        None => return Err(self.fail("stack underflow")),
                    },
                    b'1' => {
                        self.pop_mark()?;
                    }
                    b'2' => {
                        let v = self.top()?.clone();
                        self.push(v)?;
                    }
                    // Tuples
                    b')' => self.push(Value::Tuple(Rc::from(Vec::new())))?,
                    b't' => {
                        let items = self.pop_mark()?;
                        self.push(Value::Tuple(Rc::from(items)))?;
                    }
                    0x85..=0x87 => {
                        let items = self.pop_n(usize::from(op - 0x84))?;
                        self.push(Value::Tuple(Rc::from(items)))?;
                    }
                    // Containers: built, their contents dropped.
                    b']' | b'}' | 0x8f => self.push(Value::Opaque)?,
                    b'l' | b'd' | 0x91 => {
                        self.pop_mark()?;
                        self.push(Value::Opaque)?;
                    }
                    // APPEND, SETITEM
                    b'a' => {
                        self.pop()?;
                        self.top()?;
                    }
                    b's' => {
                        self.pop_n(2)?;
                        self.top()?;
                    }
                    // APPENDS, SETITEMS, ADDITEMS
                    b'e' | b'u' | 0x90 => {
                        let items = self.pop_mark()?;
                        if op == b'u' && items.len() % 2 != 0 {
                            return Err(self.fail("SETITEMS with an odd number of values"));
                        }
                        self.top()?;
                    }
                    // Scalars
                    b'N' => self.push(Value::None)?,
                    0x88 | 0x89 => self.push(Value::Bool)?,
                    b'J' => {
                        let v = i32::from_le_bytes(self.arr()?);
                        self.push(Value::Int(i64::from(v)))?;
                    }
                    b'K' => {
                        let v = self.u8()?;
                        self.push(Value::Int(i64::from(v)))?;
                    }
                    b'M' => {
                        let v = u16::from_le_bytes(self.arr()?);
                        self.push(Value::Int(i64::from(v)))?;
                    }
                    // LONG1, LONG4
                    0x8a | 0x8b => {
                        let n = if op == 0x8a {
                            usize::from(self.u8()?)
                        } else {
                            self.len_u32()?
                        };
                        let b = self.take(n)?;
                        let v = self.int_from_le(b);
                        self.push(v)?;
                    }
                    // INT (protocol 0; "00"/"01" are booleans)
                    b'I' => {
                        let v = match self.line()? {
                            "00" | "01" => Value::Bool,
                            s => s.parse::<i64>().map(Value::Int).unwrap_or(Value::BigInt),
                        };
                        self.push(v)?;
                    }
                    b'G' => {
                        self.arr::<8>()?;
                        self.push(Value::Float)?;
                    }
                    // Strings
                    b'X' => {
                        let n = self.len_u32()?;
                        let v = self.str_operand(n)?;
                        self.push(v)?;
                    }
                    0x8c => {
                        let n = usize::from(self.u8()?);
                        let v = self.str_operand(n)?;
                        self.push(v)?;
                    }
                    0x8d => {
                        let n = self.len_u64()?;
                        let v = self.str_operand(n)?;
                        self.push(v)?;
                    }
                    // BINSTRING, SHORT_BINSTRING: protocol-2 byte strings, kept as text when
                    // they are (torch never relies on them).
                    b'T' | b'U' => {
                        let n = if op == b'T' {
                            self.len_u32()?
                        } else {
                            usize::from(self.u8()?)
                        };
                        let b = self.take(n)?;
                        let v = match std::str::from_utf8(b) {
                            Ok(s) => Value::Str(Rc::from(s)),
                            Err(_) => Value::Bytes,
                        };
                        self.push(v)?;
                    }
                    // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                    b'B' | b'C' | 0x8e | 0x96 => {
                        let n = match op {
                            b'B' => self.len_u32()?,
                            b'C' => usize::from(self.u8()?),
                            _ => self.len_u64()?,
                        };
                        self.take(n)?;
                        self.push(Value::Bytes)?;
                    }
                    // BINPERSID
                    b'Q' => {
                        let pid = self.pop()?;
                        let v = self.persistent(pid)?;
                        self.push(v)?;
                    }
                    // REDUCE
                    b'R' => {
                        let args = self.pop()?;
                        let func = self.pop()?;
                        self.reduce(&func, &args)?;
                        self.push(Value::Opaque)?;
                    }
                    // BUILD: the state is applied to the object; both stay opaque.
                    b'b' => {
                        self.pop()?;
                        self.top()?;
                    }
                    // NEWOBJ
                    0x81 => {
                        self.pop_n(2)?;
                        self.push(Value::Opaque)?;
                    }
                    // NEWOBJ_EX
                    0x92 => {
                        self.pop_n(3)?;
                        self.push(Value::Opaque)?;
                    }
                    _ => {
                        return Err(Fail::Opcode {
                            offset: to_u64(self.op_at),
                            opcode: op,
                        });
                    }
                }
            }
        }

        /// Check a persistent id and record the storage it names.
        fn persistent(&mut self, pid: Value) -> Result<Value, Fail> {
            let Value::Tuple(t) = pid else {
                return Err(Fail::PersistentId("not a tuple"));
            };
            let [tag, class, key, location, numel] = &t[..] else {
                return Err(Fail::PersistentId("not five fields"));
            };
            if !matches!(tag, Value::Str(s) if &**s == "storage") {
                return Err(Fail::PersistentId("first field is not 'storage'"));
            }
            let Value::Global(g) = class else {
                return Err(Fail::PersistentId("second field is not a global"));
            };
            let (module, name) = &**g;
            if module != "torch" || !name.ends_with("Storage") {
                return Err(Fail::PersistentId("storage type is not torch.<T>Storage"));
            }
            let Value::Str(key) = key else {
                return Err(Fail::PersistentId("key is not a string"));
            };
            if key.is_empty() || key.contains('/') {
                return Err(Fail::PersistentId("key is empty or contains '/'"));
            }
            if !matches!(location, Value::Str(_)) {
                return Err(Fail::PersistentId("location is not a string"));
            }
            let numel = match numel {
                Value::Int(n) => {
                    u64::try_from(*n).map_err(|_| Fail::PersistentId("numel is negative"))?
                }
                _ => return Err(Fail::PersistentId("numel is not an integer")),
            };
            let dtype = storage_dtype(name);
            if let Some(&i) = self.by_key.get(&**key) {
                let prev = self
                    .refs
                    .get(i)
                    .ok_or(Fail::PersistentId("internal index"))?;
                if prev.declared != numel {
                    return Err(Fail::Conflict {
                        key: key.to_string(),
                        what: "element counts",
                    });
                }
                if prev.class != *name {
                    return Err(Fail::Conflict {
                        key: key.to_string(),
                        what: "storage types",
                    });
                }
                return Ok(Value::Storage(i));
            }
            let i = self.refs.len();
            self.refs.push(StorageRef {
                key: key.to_string(),
                class: name.clone(),
                declared: numel,
                dtype,
                numel,
                shape: None,
            });
            self.by_key.insert(key.to_string(), i);
            Ok(Value::Storage(i))
        }

        /// Record what a tensor rebuild call says about its storage; other calls are opaque.
        fn reduce(&mut self, func: &Value, args: &Value) -> Result<(), Fail> {
            let Value::Global(g) = func else {
                return Ok(());
            };
            let (module, name) = &**g;
            let is_rebuild = module == TORCH_UTILS
                && matches!(
                    name.as_str(),
                    "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3"
                );
            let Value::Tuple(args) = args else {
                return if is_rebuild {
                    Err(self.fail("tensor rebuild arguments are not a tuple"))
                } else {
                    Ok(())
                };
            };
            if !is_rebuild {
                return Ok(());
            }
            let [Value::Storage(i), offset, size, ..] = &args[..] else {
                return Err(self.fail("tensor rebuild does not start with (storage, offset, size)"));
            };
            let offset = match offset {
                Value::Int(n) => u64::try_from(*n).ok(),
                _ => None,
            }
            .ok_or_else(|| self.fail("tensor storage offset is not a non-negative integer"))?;
            let Value::Tuple(size) = size else {
                return Err(self.fail("tensor size is not a tuple"));
            };
            let shape: Option<Vec<u64>> = size
                .iter()
                .map(|d| match d {
                    Value::Int(n) => u64::try_from(*n).ok(),
                    _ => None,
                })
                .collect();
            let shape = shape.ok_or_else(|| self.fail("tensor size is not non-negative ints"))?;
            // `_rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, ..)`
            // names the dtype of an untyped storage.
            let named = args.iter().find_map(|a| match a {
                Value::Global(g) if g.0 == "torch" => torch_dtype(&g.1),
                _ => None,
            });
            let r = self
                .refs
                .get(*i)
                .ok_or(Fail::PersistentId("internal index"))?;
            if r.class == "UntypedStorage"
                && let Some(d) = named
            {
                match r.dtype {
                    Some(prev) if prev != d => {
                        return Err(Fail::Conflict {
                            key: r.key.clone(),
                            what: "dtypes",
                        });
                    }
                    Some(_) => {}
                    None => {
                        // The untyped count is bytes: it must be whole elements of `d`.
                        let width = d.byte_width().and_then(|w| u64::try_from(w).ok());
                        let numel = width
                            .filter(|&w| w > 0 && r.declared % w == 0)
                            .map(|w| r.declared / w)
                            .ok_or_else(|| {
                                self.fail(format!(
                                    "untyped storage of {} bytes is not a whole number of {d} elements",
                                    r.declared
                                ))
                            })?;
                        let r = self
                            .refs
                            .get_mut(*i)
                            .ok_or(Fail::PersistentId("internal index"))?;
                        r.dtype = Some(d);
                        r.numel = numel;
                    }
                }
            }
            let r = self
                .refs
                .get_mut(*i)
                .ok_or(Fail::PersistentId("internal index"))?;
            let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            // A transposed or otherwise strided view covers its storage too, but the storage
            // is not laid out in the view's shape: only a row-major view says how it is.
            let row_major = match args.get(3) {
                Some(Value::Tuple(stride)) => is_row_major(&shape, stride),
                _ => false,
            };
            if r.shape.is_none() && offset == 0 && numel == Some(r.numel) && row_major {
                r.shape = Some(shape);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal STORED zip writer, torch-style (local FB padding to 64 bytes).
    pub(crate) fn zip(entries: &[(&str, &[u8], u16)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data, method) in entries {
            let offset = out.len() as u32;
            let fixed = 30 + name.len();
            let pad = (64 - (out.len() + fixed + 4) % 64) % 64;
            out.extend_from_slice(&SIG_LOCAL.to_le_bytes());
            out.extend_from_slice(&[20, 0, 0, 0]);
            out.extend_from_slice(&method.to_le_bytes());
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&((pad + 4) as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&0x4246u16.to_le_bytes());
            out.extend_from_slice(&(pad as u16).to_le_bytes());
            out.resize(out.len() + pad, b'Z');
            out.extend_from_slice(data);
            central.extend_from_slice(&SIG_CENTRAL.to_le_bytes());
            central.extend_from_slice(&[20, 0, 20, 0, 0, 0]);
            central.extend_from_slice(&method.to_le_bytes());
            central.extend_from_slice(&[0; 8]);
            central.extend_from_slice(&(data.len() as u32).to_le_bytes());
            central.extend_from_slice(&(data.len() as u32).to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 12]);
            central.extend_from_slice(&offset.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd_offset = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(&SIG_EOCD.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let n = entries.len() as u16;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&[0; 2]);
        out
    }

    /// `{'w': _rebuild_tensor_v2(('storage', torch.<class>, '0', 'cpu', numel), 0, shape, ...)}`
    fn state_pickle(class: &str, numel: u8, shape: &[u8]) -> Vec<u8> {
        let stride: Vec<u32> = (0..shape.len())
            .map(|i| shape[i + 1..].iter().map(|&d| u32::from(d)).product())
            .collect();
        strided_pickle(class, numel, shape, &stride)
    }

    /// [`state_pickle`] with the view's strides given.
    fn strided_pickle(class: &str, numel: u8, shape: &[u8], stride: &[u32]) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'(', 0x8c, 1, b'w'];
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend_from_slice(b"(X\x07\0\0\0storage");
        p.extend_from_slice(format!("ctorch\n{class}\n").as_bytes());
        p.extend_from_slice(b"X\x01\0\0\x000X\x03\0\0\0cpuK");
        p.push(numel);
        p.extend_from_slice(b"tQK\0(");
        for &d in shape {
            p.extend_from_slice(&[b'K', d]);
        }
        p.extend_from_slice(b"t(");
        for s in stride {
            p.push(b'J');
            p.extend_from_slice(&s.to_le_bytes());
        }
        p.extend_from_slice(b"t\x89}tRu.");
        p
    }

    fn archive(class: &str, numel: u8, shape: &[u8], data: &[u8]) -> Vec<u8> {
        let pkl = state_pickle(class, numel, shape);
        zip(&[
            ("a/data.pkl", &pkl, 0),
            ("a/data/0", data, 0),
            ("a/version", b"3\n", 0),
        ])
    }

    #[test]
    fn minimal_archive() {
        let bytes = archive("FloatStorage", 6, &[2, 3], &[0; 24]);
        let z = parse_bytes(&bytes).unwrap();
        assert_eq!(z.stem, "a");
        assert_eq!(z.entries.len(), 3);
        assert_eq!(z.storages.len(), 1);
        let s = &z.storages[0];
        assert_eq!(
            (s.key.as_str(), s.dtype, s.numel, s.shape.as_deref()),
            ("0", Some(DType::F32), Some(6), Some(&[2u64, 3][..]))
        );
        assert_eq!(s.data_offset % 64, 0);
        let segs = segments(&z, bytes.len() as u64);
        assert_eq!(
            segs.iter().map(SegmentRange::len).sum::<u64>(),
            bytes.len() as u64
        );
        assert!(matches!(segs[1], SegmentRange::Storage { index: 0, .. }));
    }

    #[test]
    fn only_row_major_views_give_the_storage_a_shape() {
        let shape_of = |shape: &[u8], stride: &[u32]| {
            let pkl = strided_pickle("FloatStorage", 6, shape, stride);
            let bytes = zip(&[("a/data.pkl", &pkl, 0), ("a/data/0", &[0; 24], 0)]);
            parse_bytes(&bytes).unwrap().storages[0].shape.clone()
        };
        assert_eq!(shape_of(&[2, 3], &[3, 1]), Some(vec![2, 3]));
        // A transpose covers the whole storage, which is laid out [2, 3], not [3, 2].
        assert_eq!(shape_of(&[3, 2], &[1, 3]), None);
        // Length-1 dimensions may carry any stride.
        assert_eq!(shape_of(&[1, 6], &[99, 1]), Some(vec![1, 6]));
        // A broadcast (stride 0) or a stride list of the wrong length says nothing.
        assert_eq!(shape_of(&[6], &[0]), None);
        assert_eq!(shape_of(&[6], &[1, 1]), None);
    }

    #[test]
    fn storage_types_map_to_dtypes() {
        for (class, width, dtype) in [
            ("DoubleStorage", 8, Some(DType::F64)),
            ("HalfStorage", 2, Some(DType::F16)),
            ("BFloat16Storage", 2, Some(DType::BF16)),
            ("LongStorage", 8, Some(DType::I64)),
            ("IntStorage", 4, Some(DType::I32)),
            ("ShortStorage", 2, Some(DType::I16)),
            ("CharStorage", 1, Some(DType::I8)),
            ("ByteStorage", 1, Some(DType::U8)),
            ("BoolStorage", 1, Some(DType::Bool)),
            ("UntypedStorage", 1, None),
        ] {
            let bytes = archive(class, 4, &[4], &vec![0; 4 * width]);
            let z = parse_bytes(&bytes).unwrap();
            assert_eq!(z.storages[0].dtype, dtype, "{class}");
        }
    }

    #[test]
    fn size_must_match_numel() {
        let bytes = archive("FloatStorage", 6, &[2, 3], &[0; 20]);
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::StorageSizeMismatch {
                expected: 24,
                size: 20,
                ..
            })
        ));
    }

    #[test]
    fn missing_storage_entry() {
        let pkl = state_pickle("FloatStorage", 1, &[1]);
        let bytes = zip(&[("a/data.pkl", &pkl, 0)]);
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::MissingStorage { .. })
        ));
    }

    #[test]
    fn compressed_storage_and_pickle_are_rejected() {
        let pkl = state_pickle("ByteStorage", 1, &[1]);
        let bytes = zip(&[("a/data.pkl", &pkl, 0), ("a/data/0", b"x", 8)]);
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::Compressed { method: 8, .. })
        ));
        let bytes = zip(&[("a/data.pkl", &pkl, 8), ("a/data/0", b"x", 0)]);
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::Compressed { .. })
        ));
        // Other entries may be compressed: TorchScript deflates its code.
        let bytes = zip(&[
            ("a/data.pkl", &pkl, 0),
            ("a/data/0", b"x", 0),
            ("a/code/m.py", b"zz", 8),
        ]);
        assert!(parse_bytes(&bytes).is_ok());
    }

    #[test]
    fn unreferenced_storages_have_no_dtype() {
        let pkl = state_pickle("ByteStorage", 1, &[1]);
        let bytes = zip(&[
            ("a/data.pkl", &pkl, 0),
            ("a/data/0", b"x", 0),
            ("a/data/extra", b"yyyy", 0),
            ("a/data/nested/no", b"z", 0),
        ]);
        let z = parse_bytes(&bytes).unwrap();
        let got: Vec<_> = z
            .storages
            .iter()
            .map(|s| (s.key.as_str(), s.dtype, s.numel))
            .collect();
        assert_eq!(
            got,
            [("0", Some(DType::U8), Some(1)), ("extra", None, None)]
        );
    }

    #[test]
    fn untyped_storage_takes_the_dtype_of_a_v3_rebuild() {
        let mut p = vec![0x80, 2];
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v3\n(");
        p.extend_from_slice(b"(X\x07\0\0\0storagectorch\nUntypedStorage\n");
        p.extend_from_slice(b"X\x01\0\0\x000X\x03\0\0\0cpuK\x04tQ");
        p.extend_from_slice(b"K\0K\x02\x85K\x01\x85\x89}ctorch\nbfloat16\ntR.");
        let bytes = zip(&[("a/data.pkl", &p, 0), ("a/data/0", b"xxxx", 0)]);
        let z = parse_bytes(&bytes).unwrap();
        let s = &z.storages[0];
        assert_eq!(s.dtype, Some(DType::BF16));
        // UntypedStorage counts bytes: 4 bytes are 2 bfloat16 elements, the tensor's shape.
        assert_eq!(s.numel, Some(2));
        assert_eq!(s.shape.as_deref(), Some(&[2u64][..]));
    }

    #[test]
    fn big_endian_storages_lose_their_dtype() {
        let pkl = state_pickle("FloatStorage", 1, &[1]);
        let bytes = zip(&[
            ("a/data.pkl", &pkl, 0),
            ("a/byteorder", b"big", 0),
            ("a/data/0", b"xxxx", 0),
        ]);
        let z = parse_bytes(&bytes).unwrap();
        assert!(!z.little_endian);
        assert_eq!(z.storages[0].dtype, None);
        assert_eq!(z.storages[0].numel, Some(1));
    }

    #[test]
    fn names_need_one_stem_and_no_duplicates() {
        let pkl = state_pickle("ByteStorage", 1, &[1]);
        let bytes = zip(&[("a/data.pkl", &pkl, 0), ("b/data/0", b"x", 0)]);
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::BadName { .. })
        ));
        let bytes = zip(&[
            ("a/data.pkl", &pkl, 0),
            ("a/data/0", b"x", 0),
            ("a/data/0", b"x", 0),
        ]);
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::DuplicateEntry { .. })
        ));
        let bytes = zip(&[("a/other.bin", b"x", 0)]);
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::NoDataPickle)
        ));
    }

    #[test]
    fn pickle_errors_are_typed() {
        for (pkl, what) in [
            (&b"\x80\x02"[..], "truncated"),
            (b"\x80\x02N.N", "trailing"),
            (b"\x80\x02.", "underflow"),
            (b"\x80\x02h\x05.", "empty memo"),
            (b"\x80\x02t.", "no mark"),
            (b"\x80\x02X\xff\xff\xff\xff.", "long string"),
        ] {
            let bytes = zip(&[("a/data.pkl", pkl, 0)]);
            assert!(
                matches!(parse_bytes(&bytes), Err(TorchZipError::Pickle { .. })),
                "{what}: {:?}",
                parse_bytes(&bytes)
            );
        }
        let bytes = zip(&[("a/data.pkl", b"\x80\x02i", 0)]);
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::UnsupportedOpcode { opcode: b'i', .. })
        ));
        let bytes = zip(&[("a/data.pkl", b"\x80\x02(X\x01\0\0\0xtQ.", 0)]);
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::BadPersistentId { .. })
        ));
    }

    #[test]
    fn long_integers() {
        let m = |b: &[u8]| {
            let mut p = vec![0x80, 2, 0x8a, b.len() as u8];
            p.extend_from_slice(b);
            p.push(b'.');
            pickle::run(&p).map(|r| r.len())
        };
        assert!(m(&[]).is_ok());
        assert!(m(&[0xff; 12]).is_ok());
        assert!(m(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_ok());
    }

    #[test]
    fn no_eocd() {
        assert!(matches!(
            parse_bytes(b""),
            Err(TorchZipError::NoEocd { .. })
        ));
        assert!(matches!(
            parse_bytes(&[0u8; 100]),
            Err(TorchZipError::NoEocd { .. })
        ));
        let mut bytes = archive("ByteStorage", 1, &[1], b"x");
        bytes.push(0);
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::TrailingBytes { extra: 1 })
        ));
    }
}
