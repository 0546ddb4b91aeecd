//! The zip subset torch writes: the End Of Central Directory record (with the ZIP64 locator and
//! record), the central directory, and each entry's local header, which gives the offset of the
//! entry's payload.
//!
//! torch pads the *local* extra field so payloads start at multiples of 64, so the local extra
//! length differs from the central one; the local header is therefore always read.
//!
//! Invariants: every offset is computed with checked arithmetic, and every read is of a range
//! already known to lie inside the file (the central directory below [`MAX_CENTRAL_DIR`]).
//! [`read_archive`] returns entries under one common stem, with unique names, no encryption, and
//! payloads that overlap neither each other nor the central directory.

#![warn(missing_docs)]

use super::{MAX_CENTRAL_DIR, Result, TorchZipError, read_vec, to_u64};
use std::collections::BTreeSet;

/// Record signatures (APPNOTE 4.3): local file header, central directory file header, End Of
/// Central Directory, ZIP64 locator, ZIP64 End Of Central Directory.
pub(super) const SIG_LOCAL: u32 = 0x0403_4b50;
pub(super) const SIG_CENTRAL: u32 = 0x0201_4b50;
pub(super) const SIG_EOCD: u32 = 0x0605_4b50;
const SIG_ZIP64_LOCATOR: u32 = 0x0706_4b50;
const SIG_ZIP64_EOCD: u32 = 0x0606_4b50;
/// Fixed lengths, in bytes, of the EOCD record, a local header, a central entry, the ZIP64
/// locator and the ZIP64 record (without their variable-length fields).
const EOCD_LEN: u64 = 22;
const LOCAL_LEN: u64 = 30;
const CENTRAL_LEN: u64 = 46;
const ZIP64_LOCATOR_LEN: u64 = 20;
const ZIP64_EOCD_LEN: u64 = 56;
/// EOCD may be followed by a comment of up to 65535 bytes; torch writes none, but the search
/// window is the standard one so a stray comment is reported as such.
const EOCD_SEARCH: u64 = EOCD_LEN + 0xffff;
/// The header id of the ZIP64 extended information block in an extra field.
const ZIP64_EXTRA_ID: u16 = 0x0001;
/// General purpose flag bit 0: the entry is encrypted.
const FLAG_ENCRYPTED: u16 = 1;

/// One zip entry and where its payload lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZipEntry {
    /// Full entry name, `<stem>/...`.
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

/// Find the end records at the end of the file and read from them where the central directory
/// lies (through the ZIP64 locator and record when present).
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
    read_zip64(file_len, read_at, locator_offset, &locator)
}

/// The central directory as the ZIP64 `locator` (read at `locator_offset`) and the ZIP64 End Of
/// Central Directory record it points to describe it.
fn read_zip64(
    file_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    locator_offset: u64,
    locator: &[u8],
) -> Result<Directory> {
    let ll = Le(locator);
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

/// A central directory entry, before its local header is read (sizes and offset already widened
/// from the ZIP64 extra field when saturated).
struct Central {
    name: String,
    method: u16,
    flags: u16,
    compressed: u64,
    uncompressed: u64,
    header_offset: u64,
}

/// The declared entries of the central directory `cd`, which must hold exactly them.
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
        let compressed = u64::from(field32(20)?);
        let uncompressed = u64::from(field32(24)?);
        let name_len = usize::from(field16(28)?);
        let extra_len = usize::from(field16(30)?);
        let comment_len = usize::from(field16(32)?);
        let disk = field16(34)?;
        let header_offset = u64::from(field32(42)?);
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
        let mut entry = Central {
            name,
            method,
            flags,
            compressed,
            uncompressed,
            header_offset,
        };
        if widen_zip64(&mut entry, disk, extra, bad)? != 0 {
            return Err(TorchZipError::MultiDisk);
        }
        out.push(entry);
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

/// Replace the fields saturated in a central entry's fixed part by their values from its ZIP64
/// extended information (8-byte values, present in this order only for the saturated fields,
/// then a 4-byte disk number when `disk` is saturated); returns the entry's disk number.
fn widen_zip64(
    c: &mut Central,
    disk: u16,
    extra: &[u8],
    bad: impl Fn(&'static str) -> TorchZipError,
) -> Result<u32> {
    let need_u = c.uncompressed == 0xffff_ffff;
    let need_c = c.compressed == 0xffff_ffff;
    let need_o = c.header_offset == 0xffff_ffff;
    if !(need_u || need_c || need_o || disk == 0xffff) {
        return Ok(u32::from(disk));
    }
    let z = zip64_extra(extra).ok_or_else(|| bad("saturated field without a ZIP64 extra field"))?;
    let zl = Le(z);
    let mut i = 0usize;
    let mut next = || {
        let v = zl.u64(i);
        i += 8;
        v.ok_or_else(|| bad("ZIP64 extra field too short"))
    };
    if need_u {
        c.uncompressed = next()?;
    }
    if need_c {
        c.compressed = next()?;
    }
    if need_o {
        c.header_offset = next()?;
    }
    if disk == 0xffff {
        return zl.u32(i).ok_or_else(|| bad("ZIP64 extra field too short"));
    }
    Ok(u32::from(disk))
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

/// The entries of an archive, checked against the zip rules in the module doc.
pub(super) struct Archive {
    /// The common first component of every entry name.
    pub(super) stem: String,
    /// Every entry, by `header_offset`.
    pub(super) entries: Vec<ZipEntry>,
    /// Start of the central directory; everything from here to the end is zip metadata.
    pub(super) central_dir_offset: u64,
}

/// Read the zip structure of a file of `file_len` bytes: its end records, its central directory
/// and each entry's local header.
pub(super) fn read_archive(
    file_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<Archive> {
    let dir = find_directory(file_len, read_at)?;
    check_directory(&dir)?;
    let cd = read_vec(read_at, file_len, dir.offset, dir.size)?;
    let central = read_central(&dir, &cd)?;
    let stem = check_names(&central)?;
    let mut entries = Vec::with_capacity(central.len());
    for c in &central {
        entries.push(read_local_header(c, dir.offset, file_len, read_at)?);
    }
    entries.sort_by_key(|e| e.header_offset);
    check_overlaps(&entries)?;
    Ok(Archive {
        stem,
        entries,
        central_dir_offset: dir.offset,
    })
}

/// The central directory must lie before the end records, below [`MAX_CENTRAL_DIR`] bytes, and
/// be large enough for its declared entry count.
fn check_directory(dir: &Directory) -> Result<()> {
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
    Ok(())
}

/// Names: one common stem, no duplicates; and no encryption, and STORED entries with equal
/// sizes. Returns the stem.
fn check_names(central: &[Central]) -> Result<String> {
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
    for c in central {
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
    Ok(stem)
}

/// Read the local header of central entry `c`, which must match it, and find where its payload
/// lies; header and payload must end before the central directory at `cd_offset`.
fn read_local_header(
    c: &Central,
    cd_offset: u64,
    file_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<ZipEntry> {
    let bad = |what| TorchZipError::BadLocalHeader {
        name: c.name.clone(),
        offset: c.header_offset,
        what,
    };
    let past_end = |end| TorchZipError::EntryPastEnd {
        name: c.name.clone(),
        start: c.header_offset,
        end,
        limit: cd_offset,
    };
    let fixed_end = c
        .header_offset
        .checked_add(LOCAL_LEN)
        .ok_or_else(|| past_end(u64::MAX))?;
    if fixed_end > cd_offset {
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
    let name_len = u64::from(hl.u16(26).ok_or_else(|| bad("truncated"))?);
    let extra_len = u64::from(hl.u16(28).ok_or_else(|| bad("truncated"))?);
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
    if data_end > cd_offset {
        return Err(past_end(data_end));
    }
    let name = read_vec(read_at, file_len, fixed_end, name_len)?;
    if name != c.name.as_bytes() {
        return Err(bad("name differs from the central directory"));
    }
    Ok(ZipEntry {
        name: c.name.clone(),
        header_offset: c.header_offset,
        data_offset,
        size: c.compressed,
        method: c.method,
    })
}

/// Entries sorted by `header_offset` must not overlap: each payload ends before the next header.
fn check_overlaps(entries: &[ZipEntry]) -> Result<()> {
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
    Ok(())
}
