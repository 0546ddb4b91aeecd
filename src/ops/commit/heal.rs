//! Healing damaged chunks from a good copy of the files: `cairn repair --from PATH`.
//!
//! Invariant: only chunks fsck recorded as damaged are written, each exactly as a commit would
//! chunk and encode it (standalone, never delta-coded); the index re-points each one at its
//! good copy in one synced batch, after the packs holding the copies are sealed and their
//! directory fsynced. No commit, tree or ref changes.

#![warn(missing_docs)]

use super::builder::CommitBuilder;
use super::error::{CommitError, Result, io_at};
use super::options::CommitOptions;
use super::parent::ParentTensors;
use super::pipeline::{Item, read_all};
use super::plan::{PlannedFile, build_globs, plan_file};
use super::writer::Writer;
use crate::codec::{self, Encoding};
use crate::model::id::ChunkId;
use crate::storage::store::Store;
use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc::sync_channel;

/// Re-chunk the files under `path` (a directory or one file) exactly as a commit would, and
/// write a good copy of every chunk fsck recorded as damaged; the index then points at the new
/// copy. Returns how many damaged chunks were healed.
pub fn heal_from(store: &Store, path: &Path) -> Result<u64> {
    let damaged: HashSet<ChunkId> = store
        .view()
        .ids(crate::storage::index::CF_DAMAGED)?
        .into_iter()
        .map(ChunkId)
        .collect();
    if damaged.is_empty() {
        return Ok(0);
    }
    let planned = plan_inputs(store, path)?;
    let mut w = Writer::new(store);
    rewrite_damaged(&planned, &damaged, &mut w)?;
    if w.written.is_empty() {
        return Ok(0);
    }
    let sealed = w.seal_all()?;
    // Every entry of these packs is a damaged chunk: indexing them re-points each one at
    // its good copy and clears its damaged record.
    store.with_writer(|index| -> Result<_> {
        let mut b = index.batch()?;
        for p in &sealed {
            crate::storage::index::index_pack(index, &mut b, p)?;
        }
        index.write(b)?;
        Ok(sealed.iter().map(|p| p.entries.len() as u64).sum())
    })
}

/// The files under `path` (a directory, or one file at its own name), planned as a commit
/// with default options would plan them.
fn plan_inputs<'s>(store: &'s Store, path: &Path) -> Result<Vec<PlannedFile<'s>>> {
    let mut b = CommitBuilder::new(store, CommitOptions::default());
    if std::fs::metadata(path).map_err(io_at(path))?.is_dir() {
        b.add_dir(path)?;
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "file".into());
        b.add_path(path, &name)?;
    }
    let opaque = build_globs(&[])?;
    b.inputs
        .into_iter()
        .map(|i| plan_file(i, &opaque))
        .collect()
}

/// Read every planned file and append each chunk in `damaged` (once) to `w`.
fn rewrite_damaged(
    planned: &[PlannedFile],
    damaged: &HashSet<ChunkId>,
    w: &mut Writer<'_>,
) -> Result<()> {
    let (tx, rx) = sync_channel::<std::result::Result<Vec<Item>, CommitError>>(1);
    let none = ParentTensors::new();
    std::thread::scope(|s| -> Result<()> {
        let none = &none;
        s.spawn(move || read_all(planned, none, None, None, &tx));
        for batch in rx {
            for item in batch? {
                if let Item::Piece { data, dtype, .. } = item {
                    let id = ChunkId::of(&data);
                    if damaged.contains(&id) && !w.written.contains(&id) {
                        let len = data.len() as u64;
                        let enc = codec::encode(&data, codec::Hint { dtype, base: None });
                        let raw = (enc.encoding == Encoding::Raw).then_some(data.as_slice());
                        w.add_chunk(id, len, raw, Some(enc), None)?;
                    }
                }
            }
        }
        Ok(())
    })
}
