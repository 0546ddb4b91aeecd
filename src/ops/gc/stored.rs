//! The two files gc keeps in the store root, beside the index: `retention` (the stored policy,
//! applied after every commit) and `doomed-packs` (pack files the index no longer references
//! but a reader might still be opening, unlinked by a later run).
//!
//! Invariants: both are replaced atomically (`fsutil::write_atomic`) and removed when empty, so
//! a crash leaves the old or the new list, never a torn one; a missing file means "none".
#![warn(missing_docs)]

use super::GcError;
use super::policy::Retention;
use crate::model::id::PackId;
use crate::storage::fsutil;
use crate::storage::store::Store;
use std::collections::BTreeSet;
use std::path::Path;

/// Wrap an I/O error with the path it happened at.
pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> GcError + '_ {
    move |source| GcError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Remove `p`; a file that is already gone is no error.
fn remove_if_present(p: &Path) -> Result<(), GcError> {
    match fsutil::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(p)(e)),
    }
}

fn doomed_path(store: &Store) -> std::path::PathBuf {
    store.root().join("doomed-packs")
}

/// Pack files unreferenced by the index but not yet unlinked (a reader was active).
pub fn doomed_packs(store: &Store) -> Result<BTreeSet<PackId>, GcError> {
    let p = doomed_path(store);
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(io_at(&p)(e)),
    }
}

/// Replace the doomed list with `doomed` (removing the file when it is empty).
pub(super) fn save_doomed(store: &Store, doomed: &BTreeSet<PackId>) -> Result<(), GcError> {
    let p = doomed_path(store);
    if doomed.is_empty() {
        return remove_if_present(&p);
    }
    let text: String = doomed.iter().map(|p| format!("{p}\n")).collect();
    fsutil::write_atomic(&p, text.as_bytes()).map_err(io_at(&p))
}

/// The retention policy stored in the store, if any.
pub fn stored_policy(store: &Store) -> Result<Option<Retention>, GcError> {
    let p = store.root().join("retention");
    match std::fs::read_to_string(&p) {
        Ok(s) if s.trim().is_empty() => Ok(None),
        Ok(s) => Ok(Some(Retention::parse(s.trim())?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(&p)(e)),
    }
}

/// Store (or clear, with `None`) the policy applied after every commit.
pub fn set_policy(store: &Store, policy: Option<&Retention>) -> Result<(), GcError> {
    let p = store.root().join("retention");
    match policy {
        Some(r) => {
            fsutil::write_atomic(&p, format!("{}\n", r.to_text()).as_bytes()).map_err(io_at(&p))
        }
        None => remove_if_present(&p),
    }
}
