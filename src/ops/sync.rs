//! Push, fetch, pull, clone and remote fsck: moving commits between a store and a remote
//! ([`crate::remote`]). The protocol, step by step with the invariant each keeps, is in
//! docs/remote.md; the numbers below refer to it.
//!
//! Invariants:
//! - A push uploads packs, then its index object, then its record: its objects are durable
//!   before the record makes them visible, and a push killed before its record changes nothing
//!   anyone sees. Uploaded packs are journaled, so a resumed push does not send them again.
//! - A push sends only what the remote's trusted indexes (and its own journal) lack, and with
//!   every delta-coded chunk the chain of bases the remote lacks: the remote never holds a chunk
//!   it cannot decode. It refuses a non-fast-forward unless forced.
//! - Everything downloaded is checked before it is used: records and indexes against the hash
//!   that names them, packs against the size and BLAKE3 their index lists and their own footer,
//!   commits and trees by the same decoding checks as local objects (`Tree::check`); chunks are
//!   verified by BLAKE3 whenever they are read, like every local chunk.
//! - Fetch adds only commit and tree objects (meta packs) and moves only tracking refs; pull and
//!   clone add data packs, then catalog rows, then move local branches by compare-and-swap.

use crate::model::id::{ChunkId, CommitId, ObjectId, PackId};
use crate::model::object::{KIND_COMMIT, KIND_TREE};
use crate::ops::progress::{NoProgress, Progress};
use crate::remote::bucket::Bucket;
use crate::remote::error::{RemoteError, io_at};
use crate::remote::layout::{
    self, FORMAT_OBJECT, FormatObject, Hash, INDEXES, Index, PackKind, PackListing, RECORDS,
    Record, RefUpdate, Released,
};
use crate::remote::local::{self, Cache, JournalPack, Tracking};
use crate::storage::error::StoreError;
use crate::storage::index::CommitRow;
use crate::storage::pack::{Entry, PackReader, PackWriter, SealedPack};
use crate::storage::refs::{HEADS, TAGS};
use crate::storage::store::{ChunkSource, Store};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

type Result<T, E = RemoteError> = std::result::Result<T, E>;

/// A malformed record's name, and why it was ignored.
type Malformed = (String, String);

/// Data packs a push builds are sealed at about this size.
pub const REMOTE_PACK_SIZE: u64 = 256 << 20;

/// What the remote holds, as its records and trusted indexes say.
pub struct RemoteView {
    /// Each ref's heads (several when diverged).
    pub heads: BTreeMap<String, Vec<CommitId>>,
    /// Trusted index objects by hash.
    pub indexes: BTreeMap<Hash, Index>,
    /// Where each chunk is: its index and pack listing.
    pub chunks: HashMap<ChunkId, (Hash, PackId)>,
    /// Where each commit and tree object is.
    pub objects: HashMap<ObjectId, (Hash, PackId)>,
    /// Every listed pack.
    pub packs: HashMap<PackId, PackListing>,
    /// Files released before they were pushed, by commit.
    pub released: HashMap<CommitId, Vec<String>>,
    /// Records that were malformed, by name, with why (ignored).
    pub bad_records: Vec<(String, String)>,
    /// Records read.
    pub records: Vec<Record>,
}

/// Read the format object. `Ok(true)` for a cairn remote of this layout; `Ok(false)` for an
/// empty prefix (after writing the format object when `create`). Fails with
/// [`RemoteError::NotCairn`] for a prefix holding other objects, and
/// [`RemoteError::LayoutTooNew`] for a newer layout.
pub fn check_format(bucket: &Bucket, create: bool) -> Result<bool> {
    let not_cairn = |found: String| RemoteError::NotCairn {
        url: bucket.url().to_string(),
        found,
    };
    if let Some(b) = bucket.get(FORMAT_OBJECT)? {
        let f: FormatObject =
            serde_json::from_slice(&b).map_err(|_| not_cairn(FORMAT_OBJECT.into()))?;
        if f.format != FORMAT_OBJECT {
            return Err(not_cairn(FORMAT_OBJECT.into()));
        }
        if f.layout != layout::LAYOUT {
            return Err(RemoteError::LayoutTooNew {
                url: bucket.url().to_string(),
                layout: f.layout,
                supported: layout::LAYOUT,
            });
        }
        return Ok(true);
    }
    if let Some((name, _)) = bucket.list("")?.into_iter().next() {
        return Err(not_cairn(name));
    }
    if create {
        bucket.put_new(FORMAT_OBJECT, FormatObject::current())?;
        return check_format(bucket, false);
    }
    Ok(false)
}

/// (2) Every record under `records/`, from `cache` when there, checked against its name.
fn load_records(bucket: &Bucket, cache: &Cache) -> Result<(Vec<Record>, Vec<Malformed>)> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut missing = Vec::new();
    for (name, _) in bucket.list(RECORDS)? {
        let Some(h) = Hash::from_name(RECORDS, "rec", &name) else {
            bad.push((name, "not a record name".into()));
            continue;
        };
        match cache.get(&h) {
            Some(b) => match Record::decode(&h, &b) {
                Ok(r) => good.push(r),
                Err(why) => bad.push((name, why)),
            },
            None => missing.push((name, h)),
        }
    }
    let names: Vec<String> = missing.iter().map(|(n, _)| n.clone()).collect();
    for ((name, h), bytes) in missing.into_iter().zip(bucket.get_many(&names)?) {
        let Some(bytes) = bytes else { continue }; // deleted since the listing
        match Record::decode(&h, &bytes) {
            Ok(r) => {
                cache.put(&h, &bytes)?;
                good.push(r);
            }
            Err(why) => bad.push((name, why)),
        }
    }
    good.sort_by(|a, b| (a.time_ns, &a.nonce).cmp(&(b.time_ns, &b.nonce)));
    Ok((good, bad))
}

/// (3) The index objects `hashes`, from `cache` when there. Fails when one is missing or
/// damaged: a trusted index must be whole.
fn load_indexes(
    bucket: &Bucket,
    cache: &Cache,
    hashes: &BTreeSet<Hash>,
) -> Result<BTreeMap<Hash, Index>> {
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for h in hashes {
        match cache.get(h).map(|b| Index::decode(h, &b)) {
            Some(Ok(i)) => {
                out.insert(*h, i);
            }
            _ => missing.push(*h),
        }
    }
    let names: Vec<String> = missing.iter().map(layout::index_name).collect();
    for ((h, name), bytes) in missing.iter().zip(&names).zip(bucket.get_many(&names)?) {
        let bytes = bytes.ok_or_else(|| RemoteError::Missing {
            url: bucket.url().to_string(),
            object: name.clone(),
            by: "a ref record".into(),
        })?;
        let idx = Index::decode(h, &bytes).map_err(|what| RemoteError::BadObject {
            url: bucket.url().to_string(),
            object: name.clone(),
            what,
        })?;
        cache.put(h, &bytes)?;
        out.insert(*h, idx);
    }
    Ok(out)
}

/// Read the remote's records and trusted indexes (not its packs) into a view whose heads are
/// not resolved yet (that needs the commits: [`resolve_heads`]).
pub fn read_view(bucket: &Bucket, records: &Cache, indexes: &Cache) -> Result<RemoteView> {
    let (recs, bad_records) = load_records(bucket, records)?;
    let trusted: BTreeSet<Hash> = recs.iter().flat_map(|r| r.index_hashes()).collect();
    let idx = load_indexes(bucket, indexes, &trusted)?;
    let mut view = RemoteView {
        heads: BTreeMap::new(),
        indexes: BTreeMap::new(),
        chunks: HashMap::new(),
        objects: HashMap::new(),
        packs: HashMap::new(),
        released: HashMap::new(),
        bad_records,
        records: recs,
    };
    for (h, i) in &idx {
        add_index(&mut view, *h, i);
    }
    view.indexes = idx;
    Ok(view)
}

fn add_index(view: &mut RemoteView, h: Hash, i: &Index) {
    for p in &i.packs {
        for e in &p.entries {
            match p.kind {
                PackKind::Data => {
                    view.chunks.entry(ChunkId(e.header.id)).or_insert((h, p.id));
                }
                PackKind::Meta => {
                    view.objects
                        .entry(ObjectId(e.header.id))
                        .or_insert((h, p.id));
                }
            }
        }
        view.packs.insert(p.id, p.clone());
    }
    for r in &i.released {
        view.released.insert(r.commit, r.files.clone());
    }
}

/// Whether `a` is `b` or one of its ancestors, walking parents through `store`'s commits;
/// `false` when a commit on the way is missing (so unknown shows as divergence).
pub fn is_ancestor(store: &Store, a: CommitId, b: CommitId) -> bool {
    let mut todo = vec![b];
    let mut seen = HashSet::new();
    while let Some(c) = todo.pop() {
        if c == a {
            return true;
        }
        if !seen.insert(c) || seen.len() > 1_000_000 {
            continue;
        }
        if let Ok(commit) = store.commit(c) {
            todo.extend(commit.parents);
        }
    }
    false
}

/// Resolve the view's heads from its records, deciding ancestry through `store`.
pub fn resolve_heads(store: &Store, view: &mut RemoteView) {
    view.heads = layout::resolve(&view.records, |a, b| is_ancestor(store, a, b));
}

/// (4) Download the packs `listings` into `store` and index them: each is written to a temp
/// file while hashed, checked against its listing (size, BLAKE3) and its own footer, renamed
/// into `packs/` and synced, then all are indexed in one batch. Chunks and objects already
/// indexed keep their place. Returns the bytes downloaded.
pub fn adopt_packs(
    store: &Store,
    bucket: &Bucket,
    listings: &[&PackListing],
    progress: &dyn Progress,
) -> Result<u64> {
    if listings.is_empty() {
        return Ok(0);
    }
    let scratch = store.scratch_dir("fetch")?;
    progress.begin("download", listings.iter().map(|p| p.size).sum());
    let on_bytes = |n: u64| progress.advance(n);
    let mut sealed = Vec::new();
    let mut total = 0;
    for p in listings {
        let name = layout::pack_name(p.id);
        let final_path = store
            .packs_dir()
            .join(crate::storage::pack::pack_file_name(p.id));
        if final_path.exists() {
            continue;
        }
        let tmp = scratch.path().join(format!("{}.pack", p.id.to_hex()));
        let damaged = |what: String| RemoteError::BadObject {
            url: bucket.url().to_string(),
            object: name.clone(),
            what,
        };
        let (n, hash) =
            bucket
                .get_to_file(&name, &tmp, &on_bytes)?
                .ok_or_else(|| RemoteError::Missing {
                    url: bucket.url().to_string(),
                    object: name.clone(),
                    by: "a trusted index".into(),
                })?;
        total += n;
        if n != p.size || hash != p.blake3 {
            return Err(damaged(format!(
                "{n} bytes hashing to {}, where its index lists {} bytes hashing to {}",
                &hex::encode(hash)[..16],
                p.size,
                &hex::encode(p.blake3)[..16]
            )));
        }
        let r = PackReader::open(&tmp, p.id).map_err(|e| damaged(e.to_string()))?;
        let entries = r
            .entries_from_footer()
            .map_err(|e| damaged(e.to_string()))?;
        if entries != p.entries {
            return Err(damaged("its footer differs from its index listing".into()));
        }
        drop(r);
        crate::storage::fsutil::rename(&tmp, &final_path).map_err(io_at(&final_path))?;
        sealed.push(SealedPack {
            id: p.id,
            path: final_path,
            size: p.size,
            entries,
        });
    }
    progress.end();
    let packs_dir = store.packs_dir();
    crate::storage::fsutil::sync_dir(&packs_dir).map_err(io_at(&packs_dir))?;
    store.with_writer(|index| -> Result<(), StoreError> {
        let mut b = index.batch()?;
        for s in &sealed {
            crate::storage::index::index_pack(index, &mut b, s)?;
        }
        index.write(b)?;
        Ok(())
    })?;
    Ok(total)
}

/// The meta packs of `view` holding objects `store` lacks.
fn missing_meta<'v>(store: &Store, view: &'v RemoteView) -> Result<Vec<&'v PackListing>> {
    let idx = store.view();
    let mut out: Vec<&PackListing> = Vec::new();
    let mut want = BTreeSet::new();
    for p in view.packs.values().filter(|p| p.kind == PackKind::Meta) {
        for e in &p.entries {
            if idx.object(&ObjectId(e.header.id))?.is_none() && want.insert(p.id) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// What a fetch found.
#[derive(Clone, Debug, Serialize)]
pub struct FetchOutcome {
    /// The remote's refs: full name to heads (several when diverged).
    pub refs: BTreeMap<String, Vec<CommitId>>,
    /// Refs with more than one head.
    pub diverged: Vec<String>,
    /// Meta packs downloaded.
    pub packs: u64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Requests made.
    pub requests: u64,
    /// Malformed records ignored, by name.
    pub bad_records: Vec<String>,
}

fn caches(store: &Store, remote: &str) -> (Cache, Cache) {
    (
        Cache::new(store, remote, "records"),
        Cache::new(store, remote, "indexes"),
    )
}

/// Fetch from remote `remote` (configured in `store`) through `bucket`: records, indexes and
/// meta packs, then the tracking refs. Data packs are not read.
pub fn fetch(
    store: &Store,
    remote: &str,
    bucket: &Bucket,
    progress: &dyn Progress,
) -> Result<FetchOutcome> {
    let (view, packs, bytes) = fetch_view(store, remote, bucket, progress)?;
    let t = bucket.traffic();
    Ok(FetchOutcome {
        diverged: view
            .heads
            .iter()
            .filter(|(_, h)| h.len() > 1)
            .map(|(n, _)| n.clone())
            .collect(),
        refs: view.heads,
        packs,
        bytes,
        requests: t.requests,
        bad_records: view.bad_records.into_iter().map(|(n, _)| n).collect(),
    })
}

fn fetch_view(
    store: &Store,
    remote: &str,
    bucket: &Bucket,
    progress: &dyn Progress,
) -> Result<(RemoteView, u64, u64)> {
    let (rc, ic) = caches(store, remote);
    if !check_format(bucket, false)? {
        let view = read_view_empty();
        local::set_tracking(store, remote, &Tracking::default())?;
        return Ok((view, 0, 0));
    }
    let mut view = read_view(bucket, &rc, &ic)?;
    let meta = missing_meta(store, &view)?;
    let n = meta.len() as u64;
    let bytes = adopt_packs(store, bucket, &meta, progress)?;
    resolve_heads(store, &mut view);
    local::set_tracking(
        store,
        remote,
        &Tracking {
            refs: view.heads.clone(),
            time_ns: crate::model::time::now_ns(),
        },
    )?;
    Ok((view, n, bytes))
}

fn read_view_empty() -> RemoteView {
    RemoteView {
        heads: BTreeMap::new(),
        indexes: BTreeMap::new(),
        chunks: HashMap::new(),
        objects: HashMap::new(),
        packs: HashMap::new(),
        released: HashMap::new(),
        bad_records: Vec::new(),
        records: Vec::new(),
    }
}

/// What to push.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Branches and tags by short name; empty means the current branch (unless `all`).
    pub refs: Vec<String>,
    /// Every branch and tag.
    pub all: bool,
    /// Replace the remote's refs even when the push is not a fast-forward.
    pub force: bool,
    /// Seal data packs at this size instead of [`REMOTE_PACK_SIZE`] (tests use small packs).
    pub pack_size: Option<u64>,
}

/// One ref a push moved (or found up to date).
#[derive(Clone, Debug, Serialize)]
pub struct PushedRef {
    /// Full ref name.
    pub name: String,
    /// The remote's heads before.
    pub old: Vec<CommitId>,
    /// The commit pushed.
    pub new: CommitId,
    /// `updated`, `up-to-date` or `diverged` (the record landed but a concurrent push left
    /// another head beside it: both are kept).
    pub status: String,
}

/// What a push did.
#[derive(Clone, Debug, Serialize)]
pub struct PushOutcome {
    /// The refs.
    pub refs: Vec<PushedRef>,
    /// Packs uploaded by this run.
    pub packs: u64,
    /// Packs an interrupted push had uploaded, reused.
    pub resumed_packs: u64,
    /// Chunks sent.
    pub chunks: u64,
    /// Commit and tree objects sent.
    pub objects: u64,
    /// Raw bytes of the chunks sent.
    pub logical_bytes: u64,
    /// Bytes uploaded (packs, index, record, format object).
    pub bytes_sent: u64,
    /// Requests made.
    pub requests: u64,
    /// The record written (none when everything was up to date).
    pub record: Option<String>,
}

/// The full ref names and commits `opts` names.
fn refs_to_push(store: &Store, opts: &PushOptions) -> Result<Vec<(String, CommitId)>> {
    if opts.all {
        let mut v: Vec<(String, CommitId)> = store
            .branches()?
            .into_iter()
            .map(|(n, c)| (format!("{HEADS}{n}"), c))
            .collect();
        v.extend(
            store
                .tags()?
                .into_iter()
                .map(|(n, c)| (format!("{TAGS}{n}"), c)),
        );
        return Ok(v);
    }
    let names = if opts.refs.is_empty() {
        vec![store.current_branch()?]
    } else {
        opts.refs.clone()
    };
    let mut out = Vec::new();
    for n in names {
        let (b, t) = (format!("{HEADS}{n}"), format!("{TAGS}{n}"));
        if let Some(c) = store.get_ref(&b)? {
            out.push((b, c));
        } else if let Some(c) = store.get_ref(&t)? {
            out.push((t, c));
        } else {
            return Err(RemoteError::NoSuchRef {
                name: format!("branch or tag {n:?} in this store"),
            });
        }
    }
    Ok(out)
}

/// Everything the remote lacks for the commits pushed.
#[derive(Default)]
struct Outgoing {
    objects: Vec<(ObjectId, u8)>,
    chunks: Vec<ChunkId>,
    released: Vec<Released>,
    relied: BTreeSet<Hash>,
}

/// (5) Walk from each pushed commit back to what the remote has, collecting what it lacks.
fn outgoing(
    store: &Store,
    view: &RemoteView,
    sent: &HashSet<[u8; 32]>,
    tips: &[CommitId],
) -> Result<Outgoing> {
    let mut out = Outgoing::default();
    let mut seen_objects: HashSet<ObjectId> = HashSet::new();
    let mut seen_chunks: HashSet<ChunkId> = HashSet::new();
    let has_object = |o: &ObjectId| view.objects.contains_key(o) || sent.contains(&o.0);
    let has_chunk = |c: &ChunkId| view.chunks.contains_key(c) || sent.contains(&c.0);
    let mut todo: Vec<CommitId> = tips.to_vec();
    while let Some(c) = todo.pop() {
        let oid: ObjectId = c.into();
        if !seen_objects.insert(oid) {
            continue;
        }
        // A commit on the remote has all its history and data there (pushes send whole
        // closures); one only an interrupted push uploaded may not: walk it, send what is left.
        if let Some((h, _)) = view.objects.get(&oid) {
            out.relied.insert(*h);
            continue;
        }
        let commit = store.commit(c)?;
        if !has_object(&oid) {
            out.objects.push((oid, KIND_COMMIT));
        }
        todo.extend(commit.parents.iter().copied());
        let tid: ObjectId = commit.tree.into();
        if let Some((h, _)) = view.objects.get(&tid) {
            out.relied.insert(*h);
        } else if !sent.contains(&tid.0) && seen_objects.insert(tid) {
            out.objects.push((tid, KIND_TREE));
        }
        let tree = store.tree(commit.tree)?;
        let released = crate::storage::state::released_files(store, c)?;
        if !released.is_empty() {
            out.released.push(Released {
                commit: c,
                files: released.clone(),
            });
        }
        for (path, f) in &tree.files {
            if released.contains(path) {
                continue;
            }
            for r in f.chunks() {
                let mut cur = Some(r.id);
                while let Some(id) = cur {
                    if !seen_chunks.insert(id) {
                        break;
                    }
                    if has_chunk(&id) {
                        if let Some((h, _)) = view.chunks.get(&id) {
                            out.relied.insert(*h);
                        }
                        break;
                    }
                    let loc = store
                        .chunk_loc(id)?
                        .ok_or_else(|| RemoteError::MissingData {
                            commit: c,
                            path: path.clone(),
                            chunk: id,
                        })?;
                    out.chunks.push(id);
                    cur = loc.base.filter(|_| loc.encoding.needs_base());
                }
            }
        }
    }
    // Bases first, so a reader of the remote meets each base before its deltas.
    out.chunks.reverse();
    Ok(out)
}

/// Seal `w`, upload it and journal it; the local file is then removed. `payload_hashes` are
/// the BLAKE3 of each entry's stored bytes in order, when the caller hashed them as it
/// appended; otherwise (the meta pack, whose objects the writer encodes) they are read back.
/// The whole file's BLAKE3 is taken while it uploads.
#[allow(clippy::too_many_arguments)]
fn ship(
    store: &Store,
    remote: &str,
    bucket: &Bucket,
    w: PackWriter,
    kind: PackKind,
    payload_hashes: Option<Vec<[u8; 32]>>,
    journal: &mut Vec<JournalPack>,
    progress: &dyn Progress,
) -> Result<()> {
    let sealed = w.seal()?;
    let payload_hashes = match payload_hashes {
        Some(h) => h,
        None => {
            let reader = PackReader::open(&sealed.path, sealed.id)?;
            let mut out = Vec::with_capacity(sealed.entries.len());
            for e in &sealed.entries {
                let payload = reader.payload(e.offset, e.header.stored_len).map_err(|w| {
                    crate::storage::pack::PackError::Corrupt {
                        pack: sealed.id.to_hex(),
                        what: w.to_string(),
                    }
                })?;
                out.push(*blake3::hash(&payload).as_bytes());
            }
            out
        }
    };
    debug_assert_eq!(payload_hashes.len(), sealed.entries.len());
    let bytes_hash = bucket.put_file(&layout::pack_name(sealed.id), &sealed.path, &|n| {
        progress.advance(n)
    })?;
    journal.push(JournalPack::of(&PackListing {
        id: sealed.id,
        kind,
        size: sealed.size,
        blake3: bytes_hash,
        entries: sealed.entries.clone(),
        payload_hashes,
    }));
    local::set_journal(store, remote, journal)?;
    std::fs::remove_file(&sealed.path).map_err(io_at(&sealed.path))?;
    Ok(())
}

/// Push `opts`' refs from `store` to remote `remote` through `bucket` (steps 1-9 of
/// docs/remote.md).
pub fn push(
    store: &Store,
    remote: &str,
    bucket: &Bucket,
    opts: &PushOptions,
    progress: &dyn Progress,
) -> Result<PushOutcome> {
    let pushing = refs_to_push(store, opts)?;
    // (1) The format object, written by the first push to an empty prefix.
    check_format(bucket, true)?;
    // (2-4) What the remote has, with its commits, so ancestry can be decided.
    let (view, _, _) = fetch_view(store, remote, bucket, &NoProgress)?;
    let mut refs = Vec::new();
    let mut updates = Vec::new();
    for (name, local) in &pushing {
        let old = view.heads.get(name).cloned().unwrap_or_default();
        if old == [*local] {
            refs.push(PushedRef {
                name: name.clone(),
                old,
                new: *local,
                status: "up-to-date".into(),
            });
            continue;
        }
        if !opts.force {
            for h in &old {
                if store.view().object(&(*h).into())?.is_none() {
                    return Err(RemoteError::FetchFirst {
                        name: name.clone(),
                        remote: *h,
                    });
                }
                if !is_ancestor(store, *h, *local) {
                    return Err(RemoteError::NonFastForward {
                        name: name.clone(),
                        local: *local,
                        remote: old.clone(),
                    });
                }
            }
        }
        updates.push(RefUpdate {
            name: name.clone(),
            old: old.iter().map(|c| c.to_hex()).collect(),
            new: local.to_hex(),
            force: opts.force && !old.iter().all(|h| is_ancestor(store, *h, *local)),
        });
        refs.push(PushedRef {
            name: name.clone(),
            old,
            new: *local,
            status: "updated".into(),
        });
    }
    let before = bucket.traffic();
    let mut outcome = PushOutcome {
        refs,
        packs: 0,
        resumed_packs: 0,
        chunks: 0,
        objects: 0,
        logical_bytes: 0,
        bytes_sent: 0,
        requests: 0,
        record: None,
    };
    if updates.is_empty() {
        // A journal left by a push killed after its record (or overtaken by another's) names
        // packs nothing needs any more.
        local::clear_outgoing(store, remote)?;
        return Ok(outcome);
    }
    // (5) Packs an interrupted push uploaded count as sent, once checked to be there.
    let mut journal: Vec<JournalPack> = Vec::new();
    let mut sent: HashSet<[u8; 32]> = HashSet::new();
    for j in local::journal(store, remote)? {
        let Some(listing) = j.listing() else { continue };
        if bucket.head(&layout::pack_name(j.id))? == Some(j.size) {
            sent.extend(listing.entries.iter().map(|e| e.header.id));
            journal.push(j);
        }
    }
    outcome.resumed_packs = journal.len() as u64;
    let tips: Vec<CommitId> = pushing.iter().map(|(_, c)| *c).collect();
    let out = outgoing(store, &view, &sent, &tips)?;
    let mut total = 0;
    for id in &out.chunks {
        total += store.chunk_loc(*id)?.map_or(0, |l| l.stored_len);
    }
    progress.begin("push", total);
    // (6) Meta pack: commits and trees.
    let dir = local::outgoing_dir(store, remote);
    crate::storage::fsutil::create_dir_all(&dir).map_err(io_at(&dir))?;
    if !out.objects.is_empty() {
        let mut w = PackWriter::create(&dir)?;
        for (id, kind) in &out.objects {
            let (k, bytes) = store.read_object(*id)?;
            debug_assert_eq!(k, *kind);
            w.append_object(*id, k, &bytes)?;
            outcome.objects += 1;
        }
        ship(
            store,
            remote,
            bucket,
            w,
            PackKind::Meta,
            None,
            &mut journal,
            progress,
        )?;
        outcome.packs += 1;
    }
    // (7) Data packs: stored bytes copied as they are, bases before deltas.
    let mut w: Option<PackWriter> = None;
    let mut hashes: Vec<[u8; 32]> = Vec::new();
    for id in &out.chunks {
        let (loc, stored) = store.stored_chunk(*id)?;
        let writer = match &mut w {
            Some(w) => w,
            None => w.insert(PackWriter::create(&dir)?),
        };
        writer.append_chunk(*id, loc.encoding, loc.raw_len, &stored, loc.base, loc.depth)?;
        hashes.push(*blake3::hash(&stored).as_bytes());
        outcome.chunks += 1;
        outcome.logical_bytes += loc.raw_len;
        if writer.len() >= opts.pack_size.unwrap_or(REMOTE_PACK_SIZE) {
            let full = w.take().expect("just used");
            ship(
                store,
                remote,
                bucket,
                full,
                PackKind::Data,
                Some(std::mem::take(&mut hashes)),
                &mut journal,
                progress,
            )?;
            outcome.packs += 1;
        }
    }
    if let Some(last) = w.take() {
        ship(
            store,
            remote,
            bucket,
            last,
            PackKind::Data,
            Some(hashes),
            &mut journal,
            progress,
        )?;
        outcome.packs += 1;
    }
    progress.end();
    // (8) The index object: every pack this push (and the run it resumes) uploaded.
    let index = Index {
        packs: journal.iter().filter_map(|j| j.listing()).collect(),
        released: out.released,
    };
    let mut indexes: BTreeSet<Hash> = out.relied;
    if !index.packs.is_empty() || !index.released.is_empty() {
        let (h, bytes) = index.encode();
        bucket.put(&layout::index_name(&h), bytes.clone())?;
        Cache::new(store, remote, "indexes").put(&h, &bytes)?;
        indexes.insert(h);
    }
    // (9) The record: visible from here on.
    let record = Record {
        layout: layout::LAYOUT,
        writer: store.store_id().to_string(),
        time_ns: crate::model::time::now_ns(),
        nonce: crate::model::id::PackId::random().to_hex(),
        updates,
        indexes: indexes.iter().map(|h| h.to_hex()).collect(),
    };
    let (h, bytes) = record.encode();
    bucket.put(&layout::record_name(&h), bytes)?;
    outcome.record = Some(layout::record_name(&h));
    local::clear_outgoing(store, remote)?;
    // (10) Read the records again: a concurrent push to the same ref shows as divergence.
    let (after, _, _) = fetch_view(store, remote, bucket, &NoProgress)?;
    for r in outcome.refs.iter_mut().filter(|r| r.status == "updated") {
        if after.heads.get(&r.name).is_some_and(|h| h.len() > 1) {
            r.status = "diverged".into();
        }
    }
    let t = bucket.traffic();
    outcome.bytes_sent = t.bytes_up - before.bytes_up;
    outcome.requests = t.requests;
    Ok(outcome)
}

/// Make the data of `tips` and their history local: download the data packs holding chunks
/// `store` lacks (with their bases), then add catalog rows and released-file records for the
/// commits that had none. In a lazy clone (a chunk source attached) no data is downloaded: it
/// comes on first read. Returns the packs and bytes downloaded.
fn make_local(
    store: &Store,
    bucket: &Bucket,
    view: &RemoteView,
    tips: &[CommitId],
    progress: &dyn Progress,
) -> Result<(u64, u64)> {
    let idx = store.view();
    let mut commits = Vec::new();
    let mut todo = tips.to_vec();
    let mut seen = HashSet::new();
    let mut packs: BTreeSet<PackId> = BTreeSet::new();
    while let Some(c) = todo.pop() {
        if !seen.insert(c) || idx.commit_row(&c)?.is_some() {
            continue;
        }
        let commit = store.commit(c)?;
        todo.extend(commit.parents.iter().copied());
        let tree = store.tree(commit.tree)?;
        let released = view.released.get(&c).cloned().unwrap_or_default();
        for (path, f) in &tree.files {
            if released.contains(path) {
                continue;
            }
            for r in f.chunks() {
                if idx.chunk(&r.id)?.is_none() {
                    let (_, p) = view.chunks.get(&r.id).ok_or_else(|| RemoteError::Missing {
                        url: bucket.url().to_string(),
                        object: format!("chunk {}", r.id),
                        by: format!("commit {} ({path})", c.short()),
                    })?;
                    packs.insert(*p);
                }
            }
        }
        commits.push((c, commit, released));
    }
    // A lazy clone fetches data on first read: only the catalog rows are added here.
    if store.chunk_source().is_some() {
        packs.clear();
    }
    // Bases of the chunks in those packs, when neither local nor in the set.
    loop {
        let mut more = BTreeSet::new();
        for p in &packs {
            for e in &view.packs[p].entries {
                if let Some(b) = e.header.base
                    && e.header.encoding.needs_base()
                    && idx.chunk(&b)?.is_none()
                    && let Some((_, bp)) = view.chunks.get(&b)
                    && !packs.contains(bp)
                {
                    more.insert(*bp);
                }
            }
        }
        if more.is_empty() {
            break;
        }
        packs.extend(more);
    }
    let listings: Vec<&PackListing> = packs.iter().map(|p| &view.packs[p]).collect();
    let bytes = adopt_packs(store, bucket, &listings, progress)?;
    add_rows(store, &commits)?;
    Ok((packs.len() as u64, bytes))
}

/// The state record of a commit pushed without the data of `released` files: a clone knows
/// them as released by gc, as the pushing store did.
fn released_state(released: &[String]) -> crate::storage::state::CommitState {
    crate::storage::state::CommitState {
        pruned: Some(crate::storage::state::PruneRecord {
            time_ns: crate::model::time::now_ns(),
            reason: "released before it was pushed".into(),
            released: released.to_vec(),
        }),
        ..Default::default()
    }
}

/// Add catalog rows, and released-file records where files were released, for `commits` in one
/// batch.
fn add_rows(
    store: &Store,
    commits: &[(CommitId, crate::model::object::Commit, Vec<String>)],
) -> Result<()> {
    store.with_writer(|index| -> Result<(), StoreError> {
        let mut b = index.batch()?;
        for (c, commit, released) in commits {
            b.put_commit_row(c, &CommitRow::of(commit))?;
            if !released.is_empty() {
                crate::storage::state::put_state(store, &mut b, *c, &released_state(released))?;
            }
        }
        index.write(b)?;
        Ok(())
    })?;
    Ok(())
}

/// A new store at `dir` for a clone of `url`, `origin` configured. Fails when `dir` is not
/// empty, the remote is empty, or it is not a cairn remote of this layout.
fn new_clone_store(url: &str, bucket: &Bucket, dir: &Path) -> Result<Store> {
    if dir.exists() && std::fs::read_dir(dir).map_err(io_at(dir))?.next().is_some() {
        return Err(RemoteError::NotEmpty {
            path: dir.to_path_buf(),
        });
    }
    if !check_format(bucket, false)? {
        return Err(RemoteError::NoSuchRef {
            name: format!("commit at {url}: it is empty"),
        });
    }
    let store = Store::init(dir)?;
    local::add_remote(&store, "origin", url)?;
    Ok(store)
}

/// The remote's refs with one head, and the names of those that diverged.
fn single_heads(view: &RemoteView) -> (BTreeMap<String, CommitId>, Vec<String>) {
    let mut refs = BTreeMap::new();
    let mut diverged = Vec::new();
    for (name, heads) in &view.heads {
        match heads.as_slice() {
            [one] => {
                refs.insert(name.clone(), *one);
            }
            _ => diverged.push(name.clone()),
        }
    }
    (refs, diverged)
}

/// Set a new clone's refs, and HEAD on `main` or else the first branch.
fn set_clone_refs(store: &Store, refs: &BTreeMap<String, CommitId>, what: &str) -> Result<()> {
    for (name, c) in refs {
        store.update_ref(name, None, *c, "clone", "clone", what)?;
    }
    if !refs.contains_key(&format!("{HEADS}{}", crate::storage::refs::DEFAULT_BRANCH))
        && let Some(b) = refs.keys().find_map(|n| n.strip_prefix(HEADS))
    {
        store.switch(b, "clone")?;
    }
    Ok(())
}

/// What a pull did.
#[derive(Clone, Debug, Serialize)]
pub struct PullOutcome {
    /// The local branch.
    pub branch: String,
    /// Where it was.
    pub old: Option<CommitId>,
    /// Where it is.
    pub new: CommitId,
    /// `fast-forward` or `up-to-date`.
    pub status: String,
    /// Data packs downloaded.
    pub packs: u64,
    /// Bytes downloaded (meta and data).
    pub bytes: u64,
}

/// Fetch, then fast-forward local `branch` (default: the current one) to the remote's, with
/// its data. Fails when the remote has no such branch, it diverged, or the local branch has
/// commits the remote's does not contain.
pub fn pull(
    store: &Store,
    remote: &str,
    bucket: &Bucket,
    branch: Option<&str>,
    progress: &dyn Progress,
) -> Result<PullOutcome> {
    let branch = match branch {
        Some(b) => b.to_string(),
        None => store.current_branch()?,
    };
    let full = crate::storage::refs::branch_ref(&branch).map_err(StoreError::from)?;
    let (view, _, meta_bytes) = fetch_view(store, remote, bucket, progress)?;
    let heads = view.heads.get(&full).cloned().unwrap_or_default();
    let theirs = match heads.as_slice() {
        [] => {
            return Err(RemoteError::NoSuchRef {
                name: format!("branch {branch}"),
            });
        }
        [one] => *one,
        _ => {
            return Err(RemoteError::Diverged { name: full, heads });
        }
    };
    let ours = store.get_ref(&full)?;
    if ours == Some(theirs) {
        return Ok(PullOutcome {
            branch,
            old: ours,
            new: theirs,
            status: "up-to-date".into(),
            packs: 0,
            bytes: meta_bytes,
        });
    }
    if let Some(o) = ours
        && !is_ancestor(store, o, theirs)
    {
        return Err(RemoteError::NotFastForward {
            branch,
            local: o,
            remote: theirs,
        });
    }
    let (packs, bytes) = make_local(store, bucket, &view, &[theirs], progress)?;
    store.update_ref(
        &full,
        ours,
        theirs,
        store.store_id(),
        "pull",
        &format!("pull {remote} {branch}"),
    )?;
    Ok(PullOutcome {
        branch,
        old: ours,
        new: theirs,
        status: "fast-forward".into(),
        packs,
        bytes: meta_bytes + bytes,
    })
}

/// What a clone made.
#[derive(Clone, Debug, Serialize)]
pub struct CloneOutcome {
    /// The new store.
    pub store: std::path::PathBuf,
    /// Branches and tags set, by full name.
    pub refs: BTreeMap<String, CommitId>,
    /// Refs left out because the remote's diverged.
    pub diverged: Vec<String>,
    /// Packs downloaded.
    pub packs: u64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Requests made.
    pub requests: u64,
}

/// Clone the remote at `url` (reached through `bucket`) into a new store at `dir`, with every
/// branch and tag and all their data; the remote is configured as `origin`.
pub fn clone(
    url: &str,
    bucket: &Bucket,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<CloneOutcome> {
    let store = new_clone_store(url, bucket, dir)?;
    let (view, _, meta_bytes) = fetch_view(&store, "origin", bucket, progress)?;
    let (refs, diverged) = single_heads(&view);
    let tips: Vec<CommitId> = refs.values().copied().collect();
    let (packs, bytes) = make_local(&store, bucket, &view, &tips, progress)?;
    set_clone_refs(&store, &refs, &format!("clone {url}"))?;
    Ok(CloneOutcome {
        store: dir.to_path_buf(),
        refs,
        diverged,
        packs,
        bytes: meta_bytes + bytes,
        requests: bucket.traffic().requests,
    })
}

/// One thing wrong with a remote.
#[derive(Clone, Debug, Serialize)]
pub struct RemoteProblem {
    /// What kind: `bad-record`, `unknown-object`, `missing-pack`, `pack-size`, `corrupt-pack`,
    /// `diverged-ref`, `missing-object`, `corrupt-object`, `missing-chunk`, or a local fsck kind
    /// for `--read-data`.
    pub kind: String,
    /// The object, ref, commit or chunk.
    pub subject: String,
    /// Details.
    pub detail: String,
}

/// What `fsck --remote` found.
#[derive(Clone, Debug, Serialize, Default)]
pub struct RemoteFsckReport {
    /// Records read.
    pub records: u64,
    /// Trusted index objects.
    pub indexes: u64,
    /// Packs listed.
    pub packs: u64,
    /// Refs resolved.
    pub refs: u64,
    /// Commits reached.
    pub commits: u64,
    /// Chunks checked present (and read, with `read_data`).
    pub chunks: u64,
    /// Everything wrong.
    pub problems: Vec<RemoteProblem>,
}

/// Check the remote the way fsck checks a store: the format object, every record and trusted
/// index against its hash, every listed pack present at its size, objects nobody wrote, every
/// ref's history (commits and trees decoded and checked, every chunk listed with its bases);
/// with `read_data`, every pack downloaded and checked against its listed BLAKE3, and every
/// chunk decoded and verified (a full clone into `scratch` checked by the local fsck).
pub fn fsck_remote(
    bucket: &Bucket,
    scratch: &Path,
    read_data: bool,
    progress: &dyn Progress,
) -> Result<RemoteFsckReport> {
    let mut rep = RemoteFsckReport::default();
    let problem = |kind: &str, subject: String, detail: String| RemoteProblem {
        kind: kind.into(),
        subject,
        detail,
    };
    if !check_format(bucket, false)? {
        return Ok(rep);
    }
    let store = Store::init(&scratch.join("store"))?;
    let rc = Cache::at(&scratch.join("records"));
    let ic = Cache::at(&scratch.join("indexes"));
    let mut view = read_view(bucket, &rc, &ic)?;
    rep.records = view.records.len() as u64;
    rep.indexes = view.indexes.len() as u64;
    rep.packs = view.packs.len() as u64;
    for (name, why) in &view.bad_records {
        rep.problems
            .push(problem("bad-record", name.clone(), why.clone()));
    }
    let listed: HashMap<String, u64> = bucket.list("")?.into_iter().collect();
    for name in listed.keys() {
        let known = name == FORMAT_OBJECT
            || Hash::from_name(RECORDS, "rec", name).is_some()
            || Hash::from_name(INDEXES, "idx", name).is_some()
            || name
                .strip_prefix("packs/")
                .and_then(|n| n.strip_suffix(".pack"))
                .is_some_and(|n| n.parse::<PackId>().is_ok());
        if !known {
            rep.problems.push(problem(
                "unknown-object",
                name.clone(),
                "cairn does not write objects of this name".into(),
            ));
        }
    }
    let mut present = Vec::new();
    for p in view.packs.values() {
        let name = layout::pack_name(p.id);
        match listed.get(&name) {
            None => rep.problems.push(problem(
                "missing-pack",
                name,
                "listed by a trusted index, not in the bucket".into(),
            )),
            Some(n) if *n != p.size => rep.problems.push(problem(
                "pack-size",
                name,
                format!("{n} bytes, its index lists {}", p.size),
            )),
            Some(_) => present.push(p),
        }
    }
    let wanted: Vec<&PackListing> = present
        .iter()
        .copied()
        .filter(|p| read_data || p.kind == PackKind::Meta)
        .collect();
    for p in wanted {
        if let Err(e) = adopt_packs(&store, bucket, &[p], progress) {
            rep.problems.push(problem(
                "corrupt-pack",
                layout::pack_name(p.id),
                e.to_string(),
            ));
        }
    }
    resolve_heads(&store, &mut view);
    rep.refs = view.heads.len() as u64;
    let mut todo: Vec<(String, CommitId)> = Vec::new();
    for (name, heads) in &view.heads {
        if heads.len() > 1 {
            rep.problems.push(problem(
                "diverged-ref",
                name.clone(),
                format!(
                    "heads {}",
                    heads
                        .iter()
                        .map(|c| c.short())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        todo.extend(heads.iter().map(|h| (name.clone(), *h)));
    }
    let mut seen = HashSet::new();
    let mut chunks_seen = HashSet::new();
    let mut walked: Vec<(CommitId, Vec<String>)> = Vec::new();
    while let Some((via, c)) = todo.pop() {
        if !seen.insert(c) {
            continue;
        }
        let commit = match store.commit(c) {
            Ok(x) => x,
            Err(e) => {
                let kind = if matches!(e, StoreError::MissingObject { .. }) {
                    "missing-object"
                } else {
                    "corrupt-object"
                };
                rep.problems.push(problem(
                    kind,
                    c.to_hex(),
                    format!("commit reached from {via}: {e}"),
                ));
                continue;
            }
        };
        rep.commits += 1;
        todo.extend(
            commit
                .parents
                .iter()
                .map(|p| (format!("{}^", c.short()), *p)),
        );
        let tree = match store.tree(commit.tree) {
            Ok(t) => t,
            Err(e) => {
                rep.problems.push(problem(
                    "corrupt-object",
                    commit.tree.to_hex(),
                    format!("tree of {}: {e}", c.short()),
                ));
                continue;
            }
        };
        let released = view.released.get(&c).cloned().unwrap_or_default();
        for (path, f) in &tree.files {
            if released.contains(path) {
                continue;
            }
            for r in f.chunks() {
                let mut cur = Some(r.id);
                while let Some(id) = cur {
                    if !chunks_seen.insert(id) {
                        break;
                    }
                    rep.chunks += 1;
                    let Some((_, p)) = view.chunks.get(&id) else {
                        rep.problems.push(problem(
                            "missing-chunk",
                            id.to_string(),
                            format!("{path} of {}", c.short()),
                        ));
                        break;
                    };
                    cur = view.packs[p]
                        .entries
                        .iter()
                        .find(|e| e.header.id == id.0)
                        .and_then(|e| e.header.base.filter(|_| e.header.encoding.needs_base()));
                }
            }
        }
        if read_data {
            walked.push((c, released));
        }
    }
    if read_data {
        // The local fsck walks the scratch store's refs: one per commit reached (a ref per head
        // would do, but a diverged or damaged history could hide some), and the released
        // files' records, in one batch.
        store.with_writer(|index| -> Result<(), StoreError> {
            let mut b = index.batch()?;
            for (c, released) in &walked {
                b.put_ref(&format!("refs/heads/fsck-{}", c.to_hex()), c)?;
                if !released.is_empty() {
                    crate::storage::state::put_state(
                        &store,
                        &mut b,
                        *c,
                        &released_state(released),
                    )?;
                }
            }
            index.write(b)?;
            Ok(())
        })?;
        let local = crate::ops::fsck::fsck(
            &store,
            &crate::ops::fsck::FsckOptions {
                read_data: true,
                ..Default::default()
            },
            &crate::ops::progress::NoProgress,
        )
        .map_err(|e| RemoteError::BadLocal {
            path: scratch.to_path_buf(),
            what: e.to_string(),
        })?;
        for p in local.problems {
            rep.problems.push(problem(&p.kind, p.subject, p.detail));
        }
    }
    rep.problems
        .sort_by(|a, b| (&a.kind, &a.subject).cmp(&(&b.kind, &b.subject)));
    Ok(rep)
}

/// Where a lazy clone's chunks are on its remote, and the bucket to fetch them from: the
/// [`ChunkSource`] a lazy store reads through.
pub struct RemoteChunks {
    remote: String,
    bucket: Bucket,
    /// Each chunk's pack, entry and payload hash, from the cached trusted indexes.
    entries: HashMap<ChunkId, (PackId, Entry, [u8; 32])>,
}

/// A chunk a fetch wants: its id, its entry in the remote pack, its payload's BLAKE3.
type Wanted = (ChunkId, Entry, [u8; 32]);
/// One range request of a fetch: the pack object, the range, the chunks it covers.
type RangeJob = (String, std::ops::Range<u64>, Vec<Wanted>);

/// Neighbouring ranges closer than this are read in one request.
const COALESCE_GAP: u64 = 1 << 20;
/// A merged range is not grown past this, so a fetch holds at most
/// [`crate::remote::bucket::CONCURRENCY`] of them in memory.
const MAX_RANGE: u64 = 32 << 20;

impl RemoteChunks {
    /// The chunk map of remote `remote` from its cached index objects, fetching through
    /// `bucket`.
    pub fn new(store: &Store, remote: &str, bucket: Bucket) -> Result<RemoteChunks> {
        let mut entries = HashMap::new();
        for (_, idx) in local::cached_indexes(store, remote)? {
            for p in idx.packs.iter().filter(|p| p.kind == PackKind::Data) {
                for (e, h) in p.entries.iter().zip(&p.payload_hashes) {
                    entries
                        .entry(ChunkId(e.header.id))
                        .or_insert((p.id, *e, *h));
                }
            }
        }
        Ok(RemoteChunks {
            remote: remote.to_string(),
            bucket,
            entries,
        })
    }

    /// Chunks the remote holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the remote holds no chunk.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn fail(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError::Fetch {
            source_name: self.describe(),
            what: what.to_string(),
        }
    }
}

impl ChunkSource for RemoteChunks {
    fn has(&self, id: &ChunkId) -> bool {
        self.entries.contains_key(id)
    }

    fn describe(&self) -> String {
        format!("remote {} ({})", self.remote, self.bucket.url())
    }

    /// (a) Close `ids` over the delta bases the store lacks; (b) per remote pack, sort the
    /// entries and coalesce neighbours into ranges of at most 32 MiB; (c) read the ranges of
    /// all packs four at a time (one request each, in parallel) and check every payload against
    /// its hash in the trusted index; (d) append them to new local packs as they come, seal
    /// them (fsync, rename) and index them in one batch. Memory stays at four ranges.
    fn fetch(&self, store: &Store, ids: &[ChunkId]) -> Result<(), StoreError> {
        let view = store.view();
        let mut want: BTreeMap<ChunkId, (PackId, Entry, [u8; 32])> = BTreeMap::new();
        let mut todo: Vec<ChunkId> = ids.to_vec();
        while let Some(id) = todo.pop() {
            if want.contains_key(&id) || view.chunk(&id)?.is_some() {
                continue;
            }
            let Some(&(pack, e, h)) = self.entries.get(&id) else {
                continue;
            };
            if let Some(b) = e.header.base.filter(|_| e.header.encoding.needs_base()) {
                todo.push(b);
            }
            want.insert(id, (pack, e, h));
        }
        if want.is_empty() {
            return Ok(());
        }
        let mut by_pack: BTreeMap<PackId, Vec<(ChunkId, Entry, [u8; 32])>> = BTreeMap::new();
        for (id, (p, e, h)) in &want {
            by_pack.entry(*p).or_default().push((*id, *e, *h));
        }
        // Every range of every pack, each with the entries it covers.
        let mut jobs: Vec<RangeJob> = Vec::new();
        for (pack, mut list) in by_pack {
            list.sort_by_key(|(_, e, _)| e.offset);
            let name = layout::pack_name(pack);
            let mut cur: Option<(std::ops::Range<u64>, Vec<Wanted>)> = None;
            for item in list {
                let r = item.1.offset..item.1.offset + item.1.header.stored_len;
                match &mut cur {
                    Some((last, members))
                        if r.start <= last.end + COALESCE_GAP
                            && r.end.max(last.end) - last.start <= MAX_RANGE =>
                    {
                        last.end = last.end.max(r.end);
                        members.push(item);
                    }
                    _ => {
                        if let Some((range, members)) = cur.take() {
                            jobs.push((name.clone(), range, members));
                        }
                        cur = Some((r, vec![item]));
                    }
                }
            }
            if let Some((range, members)) = cur {
                jobs.push((name, range, members));
            }
        }
        // Read them CONCURRENCY at a time (bounded memory), check each payload, and append it to
        // local packs as it comes.
        let mut sealed_packs = Vec::new();
        let mut w = PackWriter::create(&store.packs_dir())?;
        for window in jobs.chunks(crate::remote::bucket::CONCURRENCY) {
            let asks: Vec<(String, std::ops::Range<u64>)> = window
                .iter()
                .map(|(n, r, _)| (n.clone(), r.clone()))
                .collect();
            let bodies = self.bucket.get_ranges(&asks).map_err(|e| self.fail(e))?;
            for ((name, range, members), body) in window.iter().zip(bodies) {
                for (id, e, h) in members {
                    let from = (e.offset - range.start) as usize;
                    let payload = &body[from..from + e.header.stored_len as usize];
                    if blake3::hash(payload).as_bytes() != h {
                        return Err(self.fail(format!(
                            "chunk {id} read from {name} does not match its index (damaged object)"
                        )));
                    }
                    let hd = &e.header;
                    w.append_chunk(*id, hd.encoding, hd.raw_len, payload, hd.base, hd.depth)?;
                }
            }
            if w.len() >= crate::storage::pack::TARGET_PACK_SIZE {
                let full = std::mem::replace(&mut w, PackWriter::create(&store.packs_dir())?);
                sealed_packs.push(full.seal()?);
            }
        }
        sealed_packs.push(w.seal()?);
        let dir = store.packs_dir();
        crate::storage::fsutil::sync_dir(&dir).map_err(crate::storage::error::io_at(&dir))?;
        store.with_writer(|index| -> Result<(), StoreError> {
            let mut b = index.batch()?;
            for sealed in &sealed_packs {
                crate::storage::index::index_pack(index, &mut b, sealed)?;
            }
            index.write(b)?;
            Ok(())
        })
    }
}

/// Make the data of `commits` (and nothing of their history) local in a lazy clone: every chunk
/// of every file not released, fetched in one batch. Returns the chunks that were missing.
pub fn fetch_data(store: &Store, commits: &[CommitId]) -> Result<u64> {
    let mut ids = Vec::new();
    for c in commits {
        let tree = store.tree(store.commit(*c)?.tree)?;
        let released = crate::storage::state::released_files(store, *c)?;
        for (p, f) in &tree.files {
            if !released.contains(p) {
                ids.extend(f.chunks().map(|r| r.id));
            }
        }
    }
    let view = store.view();
    let mut missing = 0u64;
    let mut seen = HashSet::new();
    for id in &ids {
        if seen.insert(*id) && view.chunk(id)?.is_none() {
            missing += 1;
        }
    }
    store.prefetch(ids)?;
    Ok(missing)
}

/// When `store` is a lazy clone, attach its remote as the store's chunk source (reached with
/// `opts`); otherwise do nothing. No request is made until a chunk is needed.
pub fn attach_lazy(store: &Store, opts: &crate::remote::RemoteOptions) -> Result<()> {
    for (name, e) in local::remotes(store)? {
        if e.lazy {
            let url = crate::remote::RemoteUrl::parse(&e.url)?;
            let src = RemoteChunks::new(store, &name, Bucket::open(&url, opts)?)?;
            let _ = store.set_chunk_source(std::sync::Arc::new(src));
            break;
        }
    }
    Ok(())
}

/// Clone the remote at `url` lazily into a new store at `dir`: refs, commits, trees and index
/// objects, no chunk data. Chunks come from the remote on first read once the store is opened
/// with [`attach_lazy`]; `origin` is configured and marked lazy.
pub fn clone_lazy(
    url: &str,
    bucket: &Bucket,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<CloneOutcome> {
    let store = new_clone_store(url, bucket, dir)?;
    local::set_lazy(&store, "origin")?;
    let (view, packs, bytes) = fetch_view(&store, "origin", bucket, progress)?;
    let (refs, diverged) = single_heads(&view);
    // Catalog rows and released-file records, as a full clone has; no data.
    let mut commits = Vec::new();
    let mut todo: Vec<CommitId> = refs.values().copied().collect();
    let mut seen = HashSet::new();
    while let Some(c) = todo.pop() {
        if !seen.insert(c) {
            continue;
        }
        let commit = store.commit(c)?;
        todo.extend(commit.parents.iter().copied());
        let released = view.released.get(&c).cloned().unwrap_or_default();
        commits.push((c, commit, released));
    }
    add_rows(&store, &commits)?;
    set_clone_refs(&store, &refs, &format!("clone --lazy {url}"))?;
    Ok(CloneOutcome {
        store: dir.to_path_buf(),
        refs,
        diverged,
        packs,
        bytes,
        requests: bucket.traffic().requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::commit::{CommitBuilder, CommitOptions};
    use crate::ops::progress::NoProgress;

    fn commit(store: &Store, name: &str, data: Vec<u8>) -> CommitId {
        let mut b = CommitBuilder::new(store, CommitOptions::default());
        b.add_bytes(name, data).unwrap();
        b.commit().unwrap().commit
    }

    /// The library's surface on object_store's in-memory store: push, clone, pull, and a
    /// refused non-fast-forward, all synchronous.
    #[test]
    fn push_clone_pull_through_an_in_memory_bucket() {
        let t = tempfile::tempdir().unwrap();
        let mem: std::sync::Arc<dyn object_store::ObjectStore> =
            std::sync::Arc::new(object_store::memory::InMemory::new());
        let bucket = Bucket::with_store(mem, "memory://test").unwrap();
        let a = Store::init(&t.path().join("a")).unwrap();
        local::add_remote(&a, "origin", "file:///unused").unwrap();
        let c1 = commit(&a, "w.bin", vec![7u8; 300_000]);
        let out = push(&a, "origin", &bucket, &PushOptions::default(), &NoProgress).unwrap();
        assert_eq!(out.refs[0].new, c1);
        assert_eq!(out.refs[0].status, "updated");
        let b_dir = t.path().join("b");
        let cl = clone("file:///unused", &bucket, &b_dir, &NoProgress).unwrap();
        assert_eq!(cl.refs["refs/heads/main"], c1);
        let b = Store::open(&b_dir).unwrap();
        let c2 = commit(&a, "w.bin", vec![8u8; 300_000]);
        push(&a, "origin", &bucket, &PushOptions::default(), &NoProgress).unwrap();
        let p = pull(&b, "origin", &bucket, None, &NoProgress).unwrap();
        assert_eq!((p.new, p.status.as_str()), (c2, "fast-forward"));
        let tree = b.tree(b.commit(c2).unwrap().tree).unwrap();
        let chunk = tree.files["w.bin"].chunks().next().unwrap().id;
        assert_eq!(b.read_chunk(chunk).unwrap()[0], 8);
        // b commits on top of c2, a on top of c2 too: whoever pushes second is refused.
        commit(&b, "x.bin", vec![1; 10]);
        commit(&a, "y.bin", vec![2; 10]);
        push(&a, "origin", &bucket, &PushOptions::default(), &NoProgress).unwrap();
        let err = push(&b, "origin", &bucket, &PushOptions::default(), &NoProgress).unwrap_err();
        assert!(matches!(err, RemoteError::NonFastForward { .. }), "{err}");
    }
}
