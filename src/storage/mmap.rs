//! The only module with `unsafe`: read-only memory maps of sealed pack files.
//!
//! SAFETY argument, relied on by every map made here: cairn maps only *sealed* packs, and a
//! sealed pack is never modified, truncated or rewritten in place by any cairn process: writers
//! create a new file under a temporary name, fsync it and rename it into place; gc only ever
//! unlinks whole packs. On Linux an unlinked file stays readable through existing maps, so a map
//! never observes changed bytes and never touches a page past the end of its file (no SIGBUS).
//! A user or another program editing a pack in place breaks this; every read is still verified by
//! its blake3 hash, so such tampering shows up as a hash error rather than wrong bytes.
#![allow(unsafe_code)]
#![warn(missing_docs)]

use memmap2::{Mmap, UncheckedAdvice};
use std::fs::File;
use std::io;

/// A read-only map of a whole sealed pack. Only [`crate::storage::pack::PackReader`] makes them.
pub(crate) struct PackMap {
    /// `None` for an empty file, which cannot be mapped.
    map: Option<Mmap>,
}

impl PackMap {
    /// Map `file`, which must be a sealed pack (see the module's SAFETY argument). An empty
    /// file gives an empty map. Fails when the file's metadata cannot be read or `mmap` fails.
    pub(crate) fn new(file: &File) -> io::Result<PackMap> {
        let len = file.metadata()?.len();
        if len == 0 {
            // A zero-length map is an error on Linux; an empty pack is caught by header checks.
            return Ok(PackMap { map: None });
        }
        // SAFETY: the caller passes a sealed pack, and the store never writes, truncates or
        // renames over a sealed pack (PackWriter::seal renames a complete, fsynced temp file
        // into place under a fresh random id; gc only unlinks whole packs, and an unlinked file
        // stays mapped). So the bytes behind this read-only map never change and no page of it
        // lies past the end of the file.
        let map = unsafe { Mmap::map(file)? };
        Ok(PackMap { map: Some(map) })
    }

    /// The whole pack, header to trailer; empty for an empty file.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Tell the kernel this process is done with the `len` bytes from offset `start` for now:
    /// the whole 4 KiB pages inside that range leave this process's resident set (they stay in
    /// the page cache), so streaming a large pack keeps RSS flat. A range past the end of the
    /// map, or one covering no whole page, is ignored; the kernel's answer is ignored too (a
    /// failed release only costs memory).
    pub(crate) fn release(&self, start: usize, len: usize) {
        let Some(map) = &self.map else { return };
        let page = 4096;
        let begin = start.div_ceil(page) * page;
        let end = (start.saturating_add(len) / page) * page;
        if end <= begin || end > map.len() {
            return;
        }
        // SAFETY: DONTNEED on a read-only, file-backed map only drops this process's page
        // table entries; any later access (by this thread or another still reading the range)
        // faults the same bytes back in from the file. That relies on the store's guarantee
        // that a sealed pack is never modified or truncated (module doc), so what comes back is
        // what was dropped; the range was checked to lie inside the map.
        let _ =
            unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, begin, end - begin) };
    }
}
