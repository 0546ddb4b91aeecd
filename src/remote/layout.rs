//! The bucket layout, version [`LAYOUT`]: object names, the format object, index objects and
//! ref records, their encodings and checks, and how refs are resolved from records. Byte by byte
//! in docs/remote.md.
//!
//! Invariants:
//! - Index objects and records are named by the BLAKE3 of their bytes; [`Index::decode`] and
//!   [`Record::decode`] refuse bytes that do not hash to the name they were fetched by.
//! - Everything decoded here is untrusted until checked: pack listings must describe entries
//!   inside their pack, ref names follow the branch and tag rules, ids parse.
//! - [`resolve`] never drops a head silently: a ref's value is every commit pushed to it that no
//!   other pushed commit descends from and no forced push replaced; two or more is divergence.
#![warn(missing_docs)]

use crate::model::id::{CommitId, PackId};
use crate::storage::pack::Entry;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The layout version this build writes and reads.
pub const LAYOUT: u32 = 1;
/// The format object's name.
pub const FORMAT_OBJECT: &str = "cairn-remote";
/// Directory of packs.
pub const PACKS: &str = "packs";
/// Directory of index objects.
pub const INDEXES: &str = "indexes";
/// Directory of ref records.
pub const RECORDS: &str = "records";

/// First 8 bytes of an index object.
const INDEX_MAGIC: &[u8; 8] = b"CAIRNIX\0";

/// The name of pack `id`: `packs/<32 hex>.pack`.
pub fn pack_name(id: PackId) -> String {
    format!("{PACKS}/{}.pack", id.to_hex())
}

/// The name of the index object hashing to `h`: `indexes/<64 hex>.idx`.
pub fn index_name(h: &Hash) -> String {
    format!("{INDEXES}/{}.idx", h.to_hex())
}

/// The name of the record hashing to `h`: `records/<64 hex>.rec`.
pub fn record_name(h: &Hash) -> String {
    format!("{RECORDS}/{}.rec", h.to_hex())
}

/// A BLAKE3 hash naming an index object or a record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }
    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parse 64 hex digits.
    pub fn parse(s: &str) -> Option<Hash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Hash(out))
    }
    /// The hash in a name made by [`index_name`] or [`record_name`] under `dir`, if it is one.
    pub fn from_name(dir: &str, ext: &str, name: &str) -> Option<Hash> {
        let stem = name
            .strip_prefix(dir)?
            .strip_prefix('/')?
            .strip_suffix(ext)?;
        Hash::parse(stem.strip_suffix('.')?)
    }
}

/// The format object: JSON naming the layout.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FormatObject {
    /// Always `"cairn-remote"`.
    pub format: String,
    /// The layout version.
    pub layout: u32,
}

impl FormatObject {
    /// This build's format object, as bytes.
    pub fn current() -> Vec<u8> {
        serde_json::to_vec_pretty(&FormatObject {
            format: FORMAT_OBJECT.into(),
            layout: LAYOUT,
        })
        .expect("a format object serializes")
    }
}

/// What a pack holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackKind {
    /// Commit and tree objects only.
    Meta = 1,
    /// Chunks only.
    Data = 2,
}

/// One pack an index object lists.
#[derive(Clone, Debug, PartialEq)]
pub struct PackListing {
    /// The pack's id (its object is [`pack_name`] of it).
    pub id: PackId,
    /// Meta or data.
    pub kind: PackKind,
    /// The pack file's length.
    pub size: u64,
    /// The BLAKE3 of the whole pack file.
    pub blake3: [u8; 32],
    /// Its entries, as its footer lists them.
    pub entries: Vec<Entry>,
    /// The BLAKE3 of each entry's stored payload, in the same order: a range read of one entry
    /// is checked against it before it is kept.
    pub payload_hashes: Vec<[u8; 32]>,
}

/// Files of a commit that gc released before it was pushed (all of them for a pruned commit):
/// the remote holds its commit and tree but not their chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    /// The commit.
    pub commit: CommitId,
    /// The released files' paths.
    pub files: Vec<String>,
}

/// An index object: the packs one push added, and the commits whose data it left out because
/// it was released.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Index {
    /// The packs.
    pub packs: Vec<PackListing>,
    /// Commits pushed without some of their data.
    pub released: Vec<Released>,
}

/// Reads little-endian fields off a byte slice, failing with a message when it runs out.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err("truncated".into());
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

impl Index {
    /// The object's bytes and the hash that names it.
    pub fn encode(&self) -> (Hash, Vec<u8>) {
        let mut out = Vec::new();
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&LAYOUT.to_le_bytes());
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            out.push(p.kind as u8);
            out.extend_from_slice(&p.size.to_le_bytes());
            out.extend_from_slice(&p.blake3);
            let table = crate::storage::pack::table_bytes(&p.entries);
            out.extend_from_slice(&(p.entries.len() as u64).to_le_bytes());
            out.extend_from_slice(&table);
            for h in &p.payload_hashes {
                out.extend_from_slice(h);
            }
        }
        out.extend_from_slice(&(self.released.len() as u32).to_le_bytes());
        for r in &self.released {
            out.extend_from_slice(r.commit.as_bytes());
            out.extend_from_slice(&(r.files.len() as u32).to_le_bytes());
            for f in &r.files {
                out.extend_from_slice(&(f.len() as u32).to_le_bytes());
                out.extend_from_slice(f.as_bytes());
            }
        }
        (Hash::of(&out), out)
    }

    /// Decode and check an index object fetched as `name`, whose hash is `h`. Fails, saying
    /// why, when the bytes do not hash to `h`, the magic or layout is wrong, a count runs past
    /// the end, a pack listing's entries do not parse or lie outside the pack, a pack holds
    /// both kinds of entry or the kind it says it does not, a released path breaks the path
    /// rules, or bytes are left over.
    pub fn decode(h: &Hash, bytes: &[u8]) -> Result<Index, String> {
        if Hash::of(bytes) != *h {
            return Err("its bytes do not hash to its name".into());
        }
        let mut r = Reader { b: bytes };
        if r.take(8)? != INDEX_MAGIC {
            return Err("not a cairn index object (bad magic)".into());
        }
        let layout = r.u32()?;
        if layout != LAYOUT {
            return Err(format!("layout {layout}, this build reads {LAYOUT}"));
        }
        let n = r.u32()?;
        let mut packs = Vec::new();
        for _ in 0..n {
            let id = PackId(r.take(16)?.try_into().expect("16"));
            let kind = match r.take(1)?[0] {
                1 => PackKind::Meta,
                2 => PackKind::Data,
                k => return Err(format!("pack {id}: unknown kind {k}")),
            };
            let size = r.u64()?;
            let blake3: [u8; 32] = r.take(32)?.try_into().expect("32");
            let count = r.u64()?;
            let len = count
                .checked_mul(104)
                .filter(|l| *l <= r.b.len() as u64)
                .ok_or_else(|| format!("pack {id}: entry count runs past the end"))?;
            let table = r.take(len as usize)?;
            // Entries end before the footer: header (32) ... table ... trailer (56).
            let entries_end = size.saturating_sub(56 + len);
            let entries = crate::storage::pack::parse_table(table, entries_end)
                .map_err(|e| format!("pack {id}: {e}"))?;
            let mut payload_hashes = Vec::with_capacity(entries.len());
            for _ in 0..count {
                payload_hashes.push(r.take(32)?.try_into().expect("32"));
            }
            let want = match kind {
                PackKind::Meta => crate::storage::pack::ENTRY_OBJECT,
                PackKind::Data => crate::storage::pack::ENTRY_CHUNK,
            };
            if entries.iter().any(|e| e.header.kind != want) {
                return Err(format!("pack {id}: holds entries of the other kind"));
            }
            packs.push(PackListing {
                id,
                kind,
                size,
                blake3,
                entries,
                payload_hashes,
            });
        }
        let n = r.u32()?;
        let mut released = Vec::new();
        for _ in 0..n {
            let commit = CommitId(r.take(32)?.try_into().expect("32"));
            let k = r.u32()?;
            let mut files = Vec::new();
            for _ in 0..k {
                let len = r.u32()? as usize;
                let p = std::str::from_utf8(r.take(len)?)
                    .map_err(|_| "a released path is not UTF-8".to_string())?;
                crate::model::path::check_rel_path(p).map_err(|e| e.to_string())?;
                files.push(p.to_string());
            }
            released.push(Released { commit, files });
        }
        if !r.b.is_empty() {
            return Err("bytes left over after the last field".into());
        }
        Ok(Index { packs, released })
    }
}

/// One ref move a record makes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefUpdate {
    /// The full ref name: `refs/heads/NAME` or `refs/tags/NAME`.
    #[serde(rename = "ref")]
    pub name: String,
    /// The heads the pusher saw on the remote before (empty: the ref was new to it).
    pub old: Vec<String>,
    /// The commit pushed, 64 hex digits.
    pub new: String,
    /// A forced push: `old` is replaced even though `new` does not descend from it.
    #[serde(default)]
    pub force: bool,
}

/// A ref record: the moves one push made and the index objects they rely on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The layout it was written for.
    pub layout: u32,
    /// The pushing store's id.
    pub writer: String,
    /// When it was written, nanoseconds since the Unix epoch (informational: clocks differ).
    pub time_ns: i64,
    /// 32 random hex digits, so two identical pushes make two records.
    pub nonce: String,
    /// The ref moves.
    pub updates: Vec<RefUpdate>,
    /// Hashes of the index objects the pushed commits' data is listed in: the push's own and
    /// those it found there before.
    pub indexes: Vec<String>,
}

impl Record {
    /// The record's bytes (JSON) and the hash that names it.
    pub fn encode(&self) -> (Hash, Vec<u8>) {
        let bytes = serde_json::to_vec_pretty(self).expect("a record serializes");
        (Hash::of(&bytes), bytes)
    }

    /// Decode and check a record fetched by hash `h`. Fails, saying why, when the bytes do not
    /// hash to `h` or do not parse, the layout is another, a ref name breaks the rules, or an
    /// id or index hash is malformed.
    pub fn decode(h: &Hash, bytes: &[u8]) -> Result<Record, String> {
        if Hash::of(bytes) != *h {
            return Err("its bytes do not hash to its name".into());
        }
        let r: Record = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.layout != LAYOUT {
            return Err(format!("layout {}, this build reads {LAYOUT}", r.layout));
        }
        for u in &r.updates {
            check_ref_name(&u.name)?;
            for id in u.old.iter().chain(std::iter::once(&u.new)) {
                id.parse::<CommitId>()
                    .map_err(|_| format!("{}: {id:?} is not a commit id", u.name))?;
            }
        }
        for i in &r.indexes {
            Hash::parse(i).ok_or_else(|| format!("{i:?} is not an index hash"))?;
        }
        Ok(r)
    }

    /// The index hashes this record names.
    pub fn index_hashes(&self) -> Vec<Hash> {
        self.indexes.iter().filter_map(|i| Hash::parse(i)).collect()
    }
}

/// Check a full ref name: a branch or a tag whose short name follows the ref rules.
pub fn check_ref_name(name: &str) -> Result<(), String> {
    use crate::storage::refs::{HEADS, TAGS, check_name};
    let checked = if let Some(b) = name.strip_prefix(HEADS) {
        check_name("branch", b)
    } else if let Some(t) = name.strip_prefix(TAGS) {
        check_name("tag", t)
    } else {
        return Err(format!("{name:?} is neither a branch nor a tag"));
    };
    checked.map_err(|e| e.to_string())
}

/// Each ref's heads from `records`: the commits pushed to it that are not replaced by a forced
/// push that saw them and that no other commit pushed to it descends from.
/// `is_ancestor(a, b)` says whether `a` is an ancestor of `b` (or equal); it must answer `false`
/// when it cannot tell (so an unknown relation shows as divergence, never as a dropped head).
pub fn resolve(
    records: &[Record],
    is_ancestor: impl Fn(CommitId, CommitId) -> bool,
) -> BTreeMap<String, Vec<CommitId>> {
    let mut pushed: BTreeMap<String, BTreeSet<CommitId>> = BTreeMap::new();
    let mut replaced: BTreeMap<String, BTreeSet<CommitId>> = BTreeMap::new();
    for r in records {
        for u in &r.updates {
            let Ok(new) = u.new.parse::<CommitId>() else {
                continue;
            };
            pushed.entry(u.name.clone()).or_default().insert(new);
            if u.force {
                let set = replaced.entry(u.name.clone()).or_default();
                set.extend(
                    u.old
                        .iter()
                        .filter_map(|o| o.parse::<CommitId>().ok())
                        .filter(|o| *o != new),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    for (name, commits) in pushed {
        let gone = replaced.get(&name);
        let alive: Vec<CommitId> = commits
            .iter()
            .copied()
            .filter(|c| gone.is_none_or(|g| !g.contains(c)))
            .collect();
        // A forced push may have replaced every head but its own: keep what it pushed.
        let alive = if alive.is_empty() {
            commits.iter().copied().collect()
        } else {
            alive
        };
        let heads: Vec<CommitId> = alive
            .iter()
            .copied()
            .filter(|c| !alive.iter().any(|d| d != c && is_ancestor(*c, *d)))
            .collect();
        out.insert(name, heads);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(updates: Vec<(&str, Vec<u8>, u8, bool)>) -> Record {
        let id = |b: u8| CommitId([b; 32]).to_hex();
        Record {
            layout: LAYOUT,
            writer: "w".into(),
            time_ns: 0,
            nonce: "n".into(),
            updates: updates
                .into_iter()
                .map(|(n, old, new, force)| RefUpdate {
                    name: n.into(),
                    old: old.into_iter().map(id).collect(),
                    new: id(new),
                    force,
                })
                .collect(),
            indexes: vec![],
        }
    }

    #[test]
    fn heads_are_the_commits_nothing_else_descends_from() {
        // History 1 <- 2 <- 3, and 4 off 1 (diverged from 2).
        let parent = |c: u8| match c {
            2 | 4 => Some(1),
            3 => Some(2),
            _ => None,
        };
        let anc = |a: CommitId, b: CommitId| {
            let mut cur = Some(b.0[0]);
            while let Some(c) = cur {
                if c == a.0[0] {
                    return true;
                }
                cur = parent(c);
            }
            false
        };
        let main = "refs/heads/main";
        let ff = [
            rec(vec![(main, vec![], 1, false)]),
            rec(vec![(main, vec![1], 3, false)]),
        ];
        assert_eq!(resolve(&ff, anc)[main], vec![CommitId([3; 32])]);
        // Two pushers from 1: 3 and 4 both stay, reported as divergence.
        let div = [
            ff[0].clone(),
            ff[1].clone(),
            rec(vec![(main, vec![1], 4, false)]),
        ];
        assert_eq!(
            resolve(&div, anc)[main],
            vec![CommitId([3; 32]), CommitId([4; 32])]
        );
        // A forced push that saw 3 replaces it.
        let mut forced = div.to_vec();
        forced.push(rec(vec![(main, vec![3], 4, true)]));
        assert_eq!(resolve(&forced, anc)[main], vec![CommitId([4; 32])]);
        // Unknown ancestry never drops a head.
        assert_eq!(resolve(&ff, |a, b| a == b)[main].len(), 2);
    }

    #[test]
    fn objects_are_checked_against_their_names() {
        let r = rec(vec![("refs/heads/main", vec![], 1, false)]);
        let (h, b) = r.encode();
        assert_eq!(Record::decode(&h, &b).unwrap(), r);
        let mut flipped = b.clone();
        flipped[10] ^= 1;
        assert!(Record::decode(&h, &flipped).is_err());
        let bad = rec(vec![("refs/heads/../x", vec![], 1, false)]);
        let (h, b) = bad.encode();
        assert!(Record::decode(&h, &b).is_err());
        let idx = Index {
            packs: vec![],
            released: vec![Released {
                commit: CommitId([1; 32]),
                files: vec!["a/b.bin".into()],
            }],
        };
        let (h, b) = idx.encode();
        assert_eq!(Index::decode(&h, &b).unwrap(), idx);
        for cut in 0..b.len() {
            assert!(Index::decode(&Hash::of(&b[..cut]), &b[..cut]).is_err());
        }
        let evil = Index {
            packs: vec![],
            released: vec![Released {
                commit: CommitId([1; 32]),
                files: vec!["../x".into()],
            }],
        };
        let (h, b) = evil.encode();
        assert!(Index::decode(&h, &b).is_err());
    }
}
