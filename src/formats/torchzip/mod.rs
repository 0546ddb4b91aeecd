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
//! stack and memo are capped at [`MAX_STACK`] and [`MAX_MEMO`], values shared through the memo
//! are reference-counted, and every allocation it makes is charged to a budget of
//! [`PICKLE_MEMORY_BASE`] + [`PICKLE_MEMORY_PER_BYTE`] x the pickle's length, so however a pickle
//! tries to amplify itself the reader's memory stays within that bound.
//!
//! Anything else is a [`TorchZipError`]; the caller falls back to plain chunking and records it.
//! Nothing here panics on any input: all offsets use checked arithmetic, and every allocation is
//! bounded by the file length (the central directory and the pickles are read only after their
//! ranges are known to lie inside the file, and below [`MAX_CENTRAL_DIR`] and [`MAX_PICKLE_LEN`]).
//!
//! Byte order: when `<stem>/byteorder` says `big`, storages keep their layout but lose their
//! dtype (cairn's tensor records are little-endian).
//!
//! In short: reading is static (nothing in the archive is executed or imported), nothing panics,
//! and an archive that cannot be read is reported with the reason. The zip structure is read in
//! `zip`, the pickles are run in `pickle`, and [`parse`] puts the two together in named steps.

#![warn(missing_docs)]

use crate::model::dtype::DType;
use std::collections::{BTreeMap, BTreeSet};

/// The largest central directory read, in bytes (about a million entries).
pub const MAX_CENTRAL_DIR: u64 = 64 << 20;
/// The largest pickle interpreted, in bytes.
pub const MAX_PICKLE_LEN: u64 = 256 << 20;
/// The deepest value stack a pickle may build.
pub const MAX_STACK: usize = 1 << 20;
/// The deepest a pickle may nest tuples (torch's own pickles nest a few levels).
pub const MAX_NESTING: u32 = 512;
/// The most memo slots a pickle may fill.
pub const MAX_MEMO: usize = 1 << 22;
/// What interpreting one pickle may allocate, beyond the pickle's own bytes: this many bytes...
pub const PICKLE_MEMORY_BASE: u64 = 32 << 20;
/// ...plus this many times the pickle's length. With the pickle itself held in memory, the
/// reader's heap for one pickle stays below `PICKLE_MEMORY_BASE + (1 + PICKLE_MEMORY_PER_BYTE) *
/// len`. Real torch.save pickles are charged 9 to 18 bytes per byte (the memo keeps every tuple
/// and string they build), so a pickle of up to 2 MiB (some 13,000 tensors) always fits; a
/// larger one may not, and its file is then stored as plain bytes.
pub const PICKLE_MEMORY_PER_BYTE: u64 = 2;
/// The longest `byteorder` entry read.
const MAX_BYTEORDER_LEN: u64 = 16;

mod pickle;
#[cfg(test)]
mod tests;
mod zip;

pub use zip::ZipEntry;

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
    /// Offset in the file of the storage's first byte (its entry's payload).
    pub data_offset: u64,
    /// The storage's length in bytes.
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
    /// Zip headers, pickles, padding, compressed sources, the central directory: the bytes
    /// `[start, end)` of the file.
    Raw {
        /// First byte's offset in the file.
        start: u64,
        /// Offset one past the last byte.
        end: u64,
    },
    /// The payload of `TorchZip::storages[index]`, the bytes `[start, end)` of the file.
    Storage {
        /// First byte's offset in the file (the storage's `data_offset`).
        start: u64,
        /// Offset one past the last byte.
        end: u64,
        /// Index into [`TorchZip::storages`].
        index: usize,
    },
}

impl SegmentRange {
    /// Offset in the file of the range's first byte.
    pub fn start(&self) -> u64 {
        match *self {
            SegmentRange::Raw { start, .. } | SegmentRange::Storage { start, .. } => start,
        }
    }
    /// Offset in the file one past the range's last byte.
    pub fn end(&self) -> u64 {
        match *self {
            SegmentRange::Raw { end, .. } | SegmentRange::Storage { end, .. } => end,
        }
    }
    /// Length of the range in bytes.
    pub fn len(&self) -> u64 {
        self.end().saturating_sub(self.start())
    }
    /// Whether the range holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a file is not a torch zip archive cairn can align. Messages name the broken rule; the
/// caller prefixes the file name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TorchZipError {
    /// Reading the file failed, or the range asked for does not lie inside it.
    #[error("reading {len} bytes at offset {offset}: {source}")]
    Io {
        /// Offset of the range read, in bytes.
        offset: u64,
        /// Length of the range read, in bytes.
        len: u64,
        /// What the reader (or the range check) reported.
        #[source]
        source: std::io::Error,
    },

    /// No End Of Central Directory signature with room for its record in the file's last
    /// 64 KiB + 22 bytes: not a zip archive.
    #[error("file of {file_len} bytes has no zip End Of Central Directory record")]
    NoEocd {
        /// The file's length in bytes.
        file_len: u64,
    },

    /// The End Of Central Directory record does not end the file.
    #[error(
        "{extra} bytes follow the End Of Central Directory record (a zip comment or appended data)"
    )]
    TrailingBytes {
        /// Bytes after the record (or its declared comment length, if larger).
        extra: u64,
    },

    /// The end records or an entry name a disk other than the first.
    #[error("multi-disk zip archives are not supported")]
    MultiDisk,

    /// The ZIP64 locator or record is missing where needed, or malformed.
    #[error("bad ZIP64 End Of Central Directory {what}")]
    BadZip64 {
        /// Which part is wrong, and how.
        what: &'static str,
    },

    /// The central directory does not lie inside the file before its end records.
    #[error(
        "central directory [{offset}, +{size}) does not lie inside the file before its end record at {limit}"
    )]
    CentralDirOutOfBounds {
        /// Declared offset of the central directory.
        offset: u64,
        /// Declared size of the central directory, in bytes.
        size: u64,
        /// Offset of the first end record, where the directory must end at the latest.
        limit: u64,
    },

    /// The central directory is larger than [`MAX_CENTRAL_DIR`].
    #[error("central directory of {size} bytes exceeds the limit of {MAX_CENTRAL_DIR} bytes")]
    CentralDirTooLarge {
        /// Declared size of the central directory, in bytes.
        size: u64,
    },

    /// The declared entry count cannot fit in the declared directory size.
    #[error(
        "{count} entries cannot fit in a central directory of {size} bytes (46 bytes per entry at least)"
    )]
    TooManyEntries {
        /// Declared number of entries.
        count: u64,
        /// Declared size of the central directory, in bytes.
        size: u64,
    },

    /// A central directory entry is truncated or malformed.
    #[error("central directory entry {index} at offset {offset}: {what}")]
    BadCentralEntry {
        /// The entry's position in the directory, from 0.
        index: u64,
        /// Offset of the entry in the file.
        offset: u64,
        /// What is wrong with it.
        what: &'static str,
    },

    /// The central directory holds bytes after its declared entries.
    #[error("central directory holds {extra} bytes after its {count} declared entries")]
    CentralDirTrailing {
        /// Declared number of entries.
        count: u64,
        /// Bytes left over after them.
        extra: u64,
    },

    /// An entry name is not UTF-8.
    #[error("entry name is not UTF-8 ({len} bytes at central offset {offset})")]
    NameNotUtf8 {
        /// Offset of the central directory entry in the file.
        offset: u64,
        /// Length of the name in bytes.
        len: u64,
    },

    /// An entry name is not `<stem>/<something>` under the common stem.
    #[error("entry name {name:?} is not `<stem>/...` under the archive's common stem {stem:?}")]
    BadName {
        /// The entry name.
        name: String,
        /// The common stem (the first entry's first component; empty if it has none).
        stem: String,
    },

    /// Two central directory entries have the same name.
    #[error("entry {name:?} appears twice")]
    DuplicateEntry {
        /// The repeated name.
        name: String,
    },

    /// An entry has the encryption flag set.
    #[error("entry {name:?} is encrypted")]
    Encrypted {
        /// The entry name.
        name: String,
    },

    /// An entry's local header is malformed or disagrees with its central entry.
    #[error("entry {name:?}: local header at {offset}: {what}")]
    BadLocalHeader {
        /// The entry name.
        name: String,
        /// Offset of the local header in the file.
        offset: u64,
        /// What is wrong with it.
        what: &'static str,
    },

    /// An entry's local header or payload runs into the central directory or past the file.
    #[error(
        "entry {name:?}: [{start}, {end}) runs past the end of the file or of the zip data ({limit})"
    )]
    EntryPastEnd {
        /// The entry name.
        name: String,
        /// Offset of its local header.
        start: u64,
        /// Where its header or payload ends (`u64::MAX` when that overflows).
        end: u64,
        /// Start of the central directory, where entries must end.
        limit: u64,
    },

    /// Two entries overlap.
    #[error("entry {name:?} at {start} overlaps entry {previous:?}, which ends at {previous_end}")]
    Overlap {
        /// The later entry's name.
        name: String,
        /// Offset of its local header.
        start: u64,
        /// The earlier entry's name.
        previous: String,
        /// Where the earlier entry's payload ends.
        previous_end: u64,
    },

    /// A storage or a pickle is compressed.
    #[error(
        "entry {name:?} is compressed (method {method}); torch.save writes storages and pickles STORED, so this archive cannot be aligned"
    )]
    Compressed {
        /// The entry name.
        name: String,
        /// Its zip compression method.
        method: u16,
    },

    /// A STORED entry declares different compressed and uncompressed sizes.
    #[error(
        "STORED entry {name:?} has compressed size {compressed} but uncompressed size {uncompressed}"
    )]
    StoredSizeMismatch {
        /// The entry name.
        name: String,
        /// Its compressed size, in bytes.
        compressed: u64,
        /// Its uncompressed size, in bytes.
        uncompressed: u64,
    },

    /// The archive has no `<stem>/data.pkl` (or no entries at all).
    #[error("archive has no `<stem>/data.pkl`; not a torch.save or TorchScript archive")]
    NoDataPickle,

    /// A pickle is larger than [`MAX_PICKLE_LEN`].
    #[error("pickle {pickle:?} of {len} bytes exceeds the limit of {MAX_PICKLE_LEN} bytes")]
    PickleTooLarge {
        /// The pickle's entry name.
        pickle: String,
        /// Its length in bytes.
        len: u64,
    },

    /// A pickle is malformed, or breaks the interpreter's limits.
    #[error("pickle {pickle:?} at byte {offset}: {what}")]
    Pickle {
        /// The pickle's entry name.
        pickle: String,
        /// Offset in the pickle of the opcode that failed.
        offset: u64,
        /// What is wrong.
        what: String,
    },

    /// Reading a pickle would allocate more than its bound ([`PICKLE_MEMORY_BASE`] plus
    /// [`PICKLE_MEMORY_PER_BYTE`] times its length): a pickle can ask for far more memory than
    /// it is long (memo slots, stack slots and tuples of shared values cost tens of bytes for
    /// one or two pickle bytes).
    #[error(
        "pickle {pickle:?} at byte {offset}: reading it needs more than its memory bound of {limit} bytes ({PICKLE_MEMORY_BASE} + {PICKLE_MEMORY_PER_BYTE} x its length)"
    )]
    PickleMemory {
        /// The pickle's entry name.
        pickle: String,
        /// Offset in the pickle of the opcode that went over the bound.
        offset: u64,
        /// The bound, in bytes.
        limit: u64,
    },

    /// A pickle uses an opcode the interpreter does not run.
    #[error("pickle {pickle:?} at byte {offset}: unsupported opcode {opcode:#04x}")]
    UnsupportedOpcode {
        /// The pickle's entry name.
        pickle: String,
        /// Offset of the opcode in the pickle.
        offset: u64,
        /// The opcode byte.
        opcode: u8,
    },

    /// A persistent id is not a torch storage tuple.
    #[error(
        "pickle {pickle:?}: persistent id is not ('storage', torch.<T>Storage, key, location, numel): {what}"
    )]
    BadPersistentId {
        /// The pickle's entry name.
        pickle: String,
        /// Which field is wrong.
        what: &'static str,
    },

    /// A pickle refers to a storage the archive does not hold.
    #[error("pickle {pickle:?} refers to storage {key:?}, but the archive has no entry {entry:?}")]
    MissingStorage {
        /// The pickle's entry name.
        pickle: String,
        /// The storage key in the persistent id.
        key: String,
        /// The entry name the key stands for.
        entry: String,
    },

    /// A storage is declared twice, with different types, dtypes or element counts.
    #[error("storage {entry:?} is declared twice with different {what}")]
    ConflictingStorage {
        /// The storage's entry name (or `<pickle>: <key>` when one pickle disagrees with itself).
        entry: String,
        /// What differs: `element counts`, `storage types` or `dtypes`.
        what: &'static str,
    },

    /// A storage's size is not its element count times its dtype's width.
    #[error(
        "storage {entry:?} holds {size} bytes, but {numel} elements of {dtype} need {expected}"
    )]
    StorageSizeMismatch {
        /// The storage's entry name.
        entry: String,
        /// Its dtype.
        dtype: DType,
        /// Its declared element count.
        numel: u64,
        /// Its size in bytes.
        size: u64,
        /// `numel * width` (`u64::MAX` when that overflows).
        expected: u64,
    },
}

/// This module's result type.
type Result<T, E = TorchZipError> = std::result::Result<T, E>;

/// A length as `u64` (saturating; lengths in memory always fit).
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

/// Parse an archive of `file_len` bytes through `read_at(offset, buf)`, which must fill `buf`
/// with the bytes at `offset` (the ranges asked for always lie inside the file).
pub fn parse(
    file_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<TorchZip> {
    let zip::Archive {
        stem,
        mut entries,
        central_dir_offset,
    } = zip::read_archive(file_len, read_at)?;
    let layout = Layout::of(&stem, &entries)?;
    let little_endian = read_byteorder(&layout, file_len, read_at)?;
    let mut storages = unreferenced_storages(&entries, &layout)?;
    for p in &layout.pickles {
        run_pickle(p, &mut storages, file_len, read_at)?;
    }
    let mut storages: Vec<Storage> = storages.into_values().collect();
    check_storage_sizes(&mut storages, little_endian)?;
    storages.sort_by_key(|s| s.data_offset);
    entries.sort_by_key(|e| e.data_offset);
    Ok(TorchZip {
        stem,
        entries,
        storages,
        central_dir_offset,
        little_endian,
    })
}

/// Which entries are what: the pickles `<stem>/<p>.pkl`, each owning the storages
/// `<stem>/<p>/<key>`.
struct Layout<'a> {
    /// The pickles, `<stem>/data.pkl` among them.
    pickles: Vec<&'a ZipEntry>,
    /// `<stem>/<p>` for each pickle: the folders storages lie in.
    storage_dirs: BTreeSet<&'a str>,
    /// `<stem>/byteorder`, if present.
    byteorder: Option<&'a ZipEntry>,
}

impl<'a> Layout<'a> {
    /// Sort the entries of an archive under `stem`; it must hold `<stem>/data.pkl`.
    fn of(stem: &str, entries: &'a [ZipEntry]) -> Result<Layout<'a>> {
        let by_name: BTreeMap<&str, &ZipEntry> =
            entries.iter().map(|e| (e.name.as_str(), e)).collect();
        let prefix = format!("{stem}/");
        let data_pkl = format!("{stem}/data.pkl");
        if !by_name.contains_key(data_pkl.as_str()) {
            return Err(TorchZipError::NoDataPickle);
        }
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
        let byteorder = by_name.get(format!("{stem}/byteorder").as_str()).copied();
        Ok(Layout {
            pickles,
            storage_dirs,
            byteorder,
        })
    }

    /// Whether entry `name` is a storage: `<stem>/<p>/<key>` next to a pickle `<stem>/<p>.pkl`.
    fn is_storage(&self, name: &str) -> bool {
        name.rsplit_once('/')
            .is_some_and(|(dir, key)| !key.is_empty() && self.storage_dirs.contains(dir))
    }
}

/// False when a small STORED `<stem>/byteorder` says `big`.
fn read_byteorder(
    layout: &Layout<'_>,
    file_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<bool> {
    Ok(match layout.byteorder {
        Some(e) if e.method == 0 && e.size <= MAX_BYTEORDER_LEN => {
            let b = read_vec(read_at, file_len, e.data_offset, e.size)?;
            b.as_slice() != b"big"
        }
        _ => true,
    })
}

/// Every storage entry (which must be STORED), by entry name, as yet unreferenced: pickles fill
/// in what they declare.
fn unreferenced_storages(
    entries: &[ZipEntry],
    layout: &Layout<'_>,
) -> Result<BTreeMap<String, Storage>> {
    let mut storages = BTreeMap::new();
    for e in entries {
        if !layout.is_storage(&e.name) {
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
    Ok(storages)
}

/// Interpret pickle `p` (STORED, at most [`MAX_PICKLE_LEN`] bytes) and fold what it says into
/// the storages it names, which must exist.
fn run_pickle(
    p: &ZipEntry,
    storages: &mut BTreeMap<String, Storage>,
    file_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<()> {
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
    Ok(())
}

/// A storage of known dtype and element count must hold exactly `numel * width` bytes; in a
/// big-endian archive, storages then lose their dtype.
fn check_storage_sizes(storages: &mut [Storage], little_endian: bool) -> Result<()> {
    for s in storages {
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
    Ok(())
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
