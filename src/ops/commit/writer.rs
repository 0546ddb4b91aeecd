//! The pack side of a commit: new chunks and objects appended to packs in input order, each
//! written once per commit, the packs sealed and their directory fsynced.
//!
//! Invariant: every pack [`Writer::seal_all`] returns is sealed (footer written, fsynced,
//! renamed from `.pack.tmp`) and its directory entry is durable, so an index batch may name
//! it. Every chunk this commit relies on without writing it (a reused chunk, a delta base) is
//! in [`Writer::reused_ids`], for the publish step to check.

#![warn(missing_docs)]

use super::error::{Result, io_at};
use crate::codec::{self, Encoding};
use crate::model::id::{ChunkId, ObjectId};
use crate::storage::pack::{PackWriter, SealedPack, TARGET_PACK_SIZE};
use crate::storage::store::Store;
use std::collections::HashSet;

/// Appends new chunks and objects to packs, rolling to a new pack past the target size.
pub(super) struct Writer<'s> {
    store: &'s Store,
    /// The pack being written.
    current: Option<PackWriter>,
    /// Packs full and sealed, not yet handed out.
    sealed: Vec<SealedPack>,
    /// Chunks written by this commit.
    pub(super) written: HashSet<ChunkId>,
    /// Chunks this commit references but did not write: reused ones and delta bases.
    pub(super) reused_ids: HashSet<ChunkId>,
    /// Chunk references satisfied without writing.
    pub(super) reused: u64,
    /// Chunks written.
    pub(super) new_chunks: u64,
    /// Raw bytes of the chunks written.
    pub(super) new_chunk_bytes: u64,
}

impl<'s> Writer<'s> {
    /// A writer that has written nothing yet (its first pack is created on the first append).
    pub(super) fn new(store: &'s Store) -> Writer<'s> {
        Writer {
            store,
            current: None,
            sealed: Vec::new(),
            written: HashSet::new(),
            reused_ids: HashSet::new(),
            reused: 0,
            new_chunks: 0,
            new_chunk_bytes: 0,
        }
    }

    fn pack(&mut self) -> Result<&mut PackWriter> {
        if self
            .current
            .as_ref()
            .is_some_and(|p| p.len() >= TARGET_PACK_SIZE)
        {
            let full = self.current.take().expect("checked above");
            self.sealed.push(full.seal()?);
        }
        if self.current.is_none() {
            self.current = Some(PackWriter::create(&self.store.packs_dir())?);
        }
        Ok(self.current.as_mut().expect("set above"))
    }

    /// Append a chunk (or count a reused one: `encoded` is `None`). Returns the encoded bytes'
    /// buffer, spent, for reuse.
    pub(super) fn add_chunk(
        &mut self,
        id: ChunkId,
        len: u64,
        raw: Option<&[u8]>,
        encoded: Option<codec::Encoded>,
        base: Option<(ChunkId, u32)>,
    ) -> Result<Option<Vec<u8>>> {
        let Some(enc) = encoded else {
            self.reused += 1;
            if !self.written.contains(&id) {
                self.reused_ids.insert(id);
            }
            return Ok(None);
        };
        if self.written.contains(&id) {
            self.reused += 1;
            return Ok(Some(enc.bytes));
        }
        let stored: &[u8] = match (enc.encoding, raw) {
            (Encoding::Raw, Some(r)) => r,
            _ => &enc.bytes,
        };
        let (base_id, depth) = match base {
            Some((b, d)) => {
                // The base must still be there at publish: check it like a reused chunk.
                self.reused_ids.insert(b);
                (Some(b), d)
            }
            None => (None, 0),
        };
        self.pack()?
            .append_chunk(id, enc.encoding, len, stored, base_id, depth)?;
        self.written.insert(id);
        self.new_chunks += 1;
        self.new_chunk_bytes += len;
        Ok(Some(enc.bytes))
    }

    /// Append an object (a tree or a commit).
    pub(super) fn add_object(&mut self, id: ObjectId, kind: u8, bytes: &[u8]) -> Result<()> {
        self.pack()?.append_object(id, kind, bytes)?;
        Ok(())
    }

    /// Seal every pack and fsync the packs directory.
    pub(super) fn seal_all(&mut self) -> Result<Vec<SealedPack>> {
        if let Some(p) = self.current.take() {
            self.sealed.push(p.seal()?);
        }
        let d = self.store.packs_dir();
        // Renamed packs must be durable before the index batch that names them.
        crate::storage::fsutil::sync_dir(&d).map_err(io_at(&d))?;
        Ok(std::mem::take(&mut self.sealed))
    }
}
