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

use memmap2::{Mmap, UncheckedAdvice};
use std::fs::File;
use std::io;

/// A read-only map of a whole sealed pack.
pub struct PackMap {
    map: Option<Mmap>,
}

impl PackMap {
    /// Map `file`, which must be a sealed pack (see the module's SAFETY argument).
    pub fn new(file: &File) -> io::Result<PackMap> {
        let len = file.metadata()?.len();
        if len == 0 {
            // A zero-length map is an error on Linux; an empty pack is caught by header checks.
            return Ok(PackMap { map: None });
        }
        // SAFETY: the file is a sealed pack, never modified or truncated while it exists (module
        // doc); the map is read-only and private to this handle.
        let map = unsafe { Mmap::map(file)? };
        Ok(PackMap { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Tell the kernel this process is done with `range` for now: its pages leave this
    /// process's resident set (they stay in the page cache), so streaming a large pack keeps RSS
    /// flat.
    pub fn release(&self, start: usize, len: usize) {
        let Some(map) = &self.map else { return };
        let page = 4096;
        let begin = start.div_ceil(page) * page;
        let end = (start.saturating_add(len) / page) * page;
        if end <= begin || end > map.len() {
            return;
        }
        // SAFETY: DONTNEED on a read-only, file-backed map only drops this process's page
        // table entries; any later access (by this thread or another still reading the range)
        // faults the same bytes back in from the file, which is never modified (module doc).
        let _ =
            unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, begin, end - begin) };
    }
}
