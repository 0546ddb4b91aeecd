//! What a store keeps about its remotes, under its own directory:
//! - `remotes.json`: each remote's name and URL (never credentials);
//! - `remotes/<name>/tracking.json`: the remote's refs as the last fetch or push saw them
//!   (`origin/main`), with every head of a diverged ref;
//! - `remotes/<name>/records/` and `remotes/<name>/indexes/`: downloaded records and index
//!   objects, kept by the hash that names them (immutable, so never downloaded twice);
//! - `remotes/<name>/outgoing/`: a push in progress: the pack being built and `journal.json`,
//!   the packs already uploaded, so a killed push resumes without sending them again.
//!
//! Invariants: every file here is written atomically (temp, fsync, rename, directory fsync);
//! none of it is needed to read the store's own commits, so deleting `remotes/` loses nothing
//! but cached downloads and the tracking refs (the next fetch rebuilds them).
#![warn(missing_docs)]

use crate::model::id::CommitId;
use crate::remote::config::RemoteUrl;
use crate::remote::error::{RemoteError, io_at};
use crate::remote::layout::{Hash, PackKind, PackListing};
use crate::storage::fsutil;
use crate::storage::pack::Entry;
use crate::storage::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A configured remote.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteEntry {
    /// Its URL.
    pub url: String,
    /// This store is a lazy clone of it: chunks it lacks are fetched from it on first read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lazy: bool,
}

fn remotes_file(store: &Store) -> PathBuf {
    store.root().join("remotes.json")
}

/// Check a remote name: 1-64 characters of letters, digits, `-`, `_` and `.`, not starting
/// with `.` or `-`.
pub fn check_remote_name(name: &str) -> Result<(), RemoteError> {
    let bad = |why| {
        Err(RemoteError::BadName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() || name.len() > 64 {
        return bad("it must be 1-64 characters long");
    }
    if name.starts_with(['.', '-']) {
        return bad("it must not start with '.' or '-'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("use letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Every configured remote, by name.
pub fn remotes(store: &Store) -> Result<BTreeMap<String, RemoteEntry>, RemoteError> {
    let path = remotes_file(store);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| RemoteError::BadLocal {
            path,
            what: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(io_at(&path)(e)),
    }
}

fn write_remotes(store: &Store, r: &BTreeMap<String, RemoteEntry>) -> Result<(), RemoteError> {
    let path = remotes_file(store);
    let bytes = serde_json::to_vec_pretty(r).expect("remotes serialize");
    fsutil::write_atomic(&path, &bytes).map_err(io_at(&path))
}

/// Add remote `name` at `url` (checked). Fails when the name or URL is malformed or the name
/// is taken.
pub fn add_remote(store: &Store, name: &str, url: &str) -> Result<RemoteUrl, RemoteError> {
    check_remote_name(name)?;
    let parsed = RemoteUrl::parse(url)?;
    let mut all = remotes(store)?;
    if let Some(e) = all.get(name) {
        return Err(RemoteError::RemoteExists {
            name: name.to_string(),
            url: e.url.clone(),
        });
    }
    all.insert(
        name.to_string(),
        RemoteEntry {
            url: parsed.to_string(),
            lazy: false,
        },
    );
    write_remotes(store, &all)?;
    Ok(parsed)
}

/// Mark remote `name` as the one this store lazily clones.
pub fn set_lazy(store: &Store, name: &str) -> Result<(), RemoteError> {
    let mut all = remotes(store)?;
    let e = all.get_mut(name).ok_or_else(|| RemoteError::NoSuchRemote {
        name: name.to_string(),
    })?;
    e.lazy = true;
    write_remotes(store, &all)
}

/// Every index object cached for remote `name` (each checked against its name); a lazy
/// clone's map of where its chunks are.
pub fn cached_indexes(
    store: &Store,
    name: &str,
) -> Result<Vec<(Hash, crate::remote::layout::Index)>, RemoteError> {
    let dir = remote_dir(store, name).join("indexes");
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_at(&dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io_at(&dir))?;
        let Some(h) = e.file_name().to_str().and_then(Hash::parse) else {
            continue;
        };
        let bytes = std::fs::read(e.path()).map_err(io_at(&e.path()))?;
        let idx = crate::remote::layout::Index::decode(&h, &bytes).map_err(|what| {
            RemoteError::BadLocal {
                path: e.path(),
                what,
            }
        })?;
        out.push((h, idx));
    }
    Ok(out)
}

/// Remove remote `name` and everything kept about it. Fails when there is none.
pub fn remove_remote(store: &Store, name: &str) -> Result<(), RemoteError> {
    let mut all = remotes(store)?;
    if all.remove(name).is_none() {
        return Err(RemoteError::NoSuchRemote {
            name: name.to_string(),
        });
    }
    write_remotes(store, &all)?;
    let dir = remote_dir(store, name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
    }
    Ok(())
}

/// The URL of remote `name`. Fails with [`RemoteError::NoSuchRemote`].
pub fn remote_url(store: &Store, name: &str) -> Result<RemoteUrl, RemoteError> {
    let all = remotes(store)?;
    let e = all.get(name).ok_or_else(|| RemoteError::NoSuchRemote {
        name: name.to_string(),
    })?;
    RemoteUrl::parse(&e.url)
}

/// `remotes/<name>/` in the store.
pub fn remote_dir(store: &Store, name: &str) -> PathBuf {
    store.root().join("remotes").join(name)
}

/// The remote's refs as last seen: full ref name to its heads (one, or several when diverged).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tracking {
    /// Heads by full ref name.
    pub refs: BTreeMap<String, Vec<CommitId>>,
    /// When they were seen, nanoseconds since the Unix epoch.
    pub time_ns: i64,
}

/// The tracking refs of remote `name` (empty before the first fetch or push).
pub fn tracking(store: &Store, name: &str) -> Result<Tracking, RemoteError> {
    let path = remote_dir(store, name).join("tracking.json");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| RemoteError::BadLocal {
            path,
            what: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tracking::default()),
        Err(e) => Err(io_at(&path)(e)),
    }
}

/// Replace the tracking refs of remote `name`.
pub fn set_tracking(store: &Store, name: &str, t: &Tracking) -> Result<(), RemoteError> {
    let dir = remote_dir(store, name);
    fsutil::create_dir_all(&dir).map_err(io_at(&dir))?;
    let path = dir.join("tracking.json");
    let bytes = serde_json::to_vec_pretty(t).expect("tracking serializes");
    fsutil::write_atomic(&path, &bytes).map_err(io_at(&path))
}

/// A cache of immutable downloaded objects (records or indexes) of one remote, by hash.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache of `kind` (`"records"` or `"indexes"`) for remote `name`.
    pub fn new(store: &Store, name: &str, kind: &str) -> Cache {
        Cache {
            dir: remote_dir(store, name).join(kind),
        }
    }

    /// A cache in any directory (clone uses one beside the new store).
    pub fn at(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    /// The cached bytes of `h`, when present and still hashing to `h`.
    pub fn get(&self, h: &Hash) -> Option<Vec<u8>> {
        let b = std::fs::read(self.dir.join(h.to_hex())).ok()?;
        (Hash::of(&b) == *h).then_some(b)
    }

    /// Keep `bytes` as `h`.
    pub fn put(&self, h: &Hash, bytes: &[u8]) -> Result<(), RemoteError> {
        fsutil::create_dir_all(&self.dir).map_err(io_at(&self.dir))?;
        let path = self.dir.join(h.to_hex());
        fsutil::write_atomic(&path, bytes).map_err(io_at(&path))
    }
}

/// One pack a push already uploaded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JournalPack {
    /// The pack's id.
    pub id: crate::model::id::PackId,
    /// Meta (true) or data.
    pub meta: bool,
    /// Its length.
    pub size: u64,
    /// The BLAKE3 of the whole file, hex.
    pub blake3: String,
    /// Its footer table rows, hex ([`crate::storage::pack::table_bytes`]).
    pub table: String,
    /// The BLAKE3 of each entry's payload, hex, concatenated.
    pub payloads: String,
}

impl JournalPack {
    /// The listing an index object gives this pack; `None` when the journal entry is damaged.
    pub fn listing(&self) -> Option<PackListing> {
        let table = hex::decode(&self.table).ok()?;
        let entries_end = self.size.checked_sub(56 + table.len() as u64)?;
        let entries: Vec<Entry> = crate::storage::pack::parse_table(&table, entries_end).ok()?;
        let mut blake3 = [0u8; 32];
        hex::decode_to_slice(&self.blake3, &mut blake3).ok()?;
        let payloads = hex::decode(&self.payloads).ok()?;
        if payloads.len() != entries.len() * 32 {
            return None;
        }
        let payload_hashes = payloads
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32"))
            .collect();
        Some(PackListing {
            id: self.id,
            kind: if self.meta {
                PackKind::Meta
            } else {
                PackKind::Data
            },
            size: self.size,
            blake3,
            entries,
            payload_hashes,
        })
    }

    /// The journal entry for `p`.
    pub fn of(p: &PackListing) -> JournalPack {
        JournalPack {
            id: p.id,
            meta: p.kind == PackKind::Meta,
            size: p.size,
            blake3: hex::encode(p.blake3),
            table: hex::encode(crate::storage::pack::table_bytes(&p.entries)),
            payloads: hex::encode(p.payload_hashes.concat()),
        }
    }
}

/// The outgoing directory of a push to remote `name`.
pub fn outgoing_dir(store: &Store, name: &str) -> PathBuf {
    remote_dir(store, name).join("outgoing")
}

/// The packs an interrupted push to `name` uploaded (empty when none).
pub fn journal(store: &Store, name: &str) -> Result<Vec<JournalPack>, RemoteError> {
    let path = outgoing_dir(store, name).join("journal.json");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| RemoteError::BadLocal {
            path,
            what: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_at(&path)(e)),
    }
}

/// Replace the journal of pushes to `name`.
pub fn set_journal(store: &Store, name: &str, j: &[JournalPack]) -> Result<(), RemoteError> {
    let dir = outgoing_dir(store, name);
    fsutil::create_dir_all(&dir).map_err(io_at(&dir))?;
    let path = dir.join("journal.json");
    let bytes = serde_json::to_vec(j).expect("journal serializes");
    fsutil::write_atomic(&path, &bytes).map_err(io_at(&path))
}

/// Forget the journal and anything left in the outgoing directory (after a push completes).
pub fn clear_outgoing(store: &Store, name: &str) -> Result<(), RemoteError> {
    let dir = outgoing_dir(store, name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
    }
    Ok(())
}
