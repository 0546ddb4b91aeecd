//! Objects: commits and trees, and their canonical encoding.
//!
//! Invariants:
//! - An object's bytes are `postcard` of a versioned enum (`CommitObject::V1`, `TreeObject::V1`),
//!   and its id is `blake3(OBJECT_CONTEXT, kind byte || bytes)`. Maps are `BTreeMap`s, so equal
//!   values have equal bytes and equal ids.
//! - Objects are immutable. State that changes after a commit is made (pruned, verified, ...)
//!   lives in separate index records, never here.
//! - A tree describes every file byte for byte: a file's segments, concatenated in order, are the
//!   file. A segment is raw bytes (headers, padding, opaque content) or a *tensor record* (name,
//!   dtype, shape) whose chunks are aligned to the tensor's first byte.
//! - Decoding checks that the whole input was consumed; ids are checked by the reader before
//!   decoding, so a decode error means a bug or a format this build does not know.

#![warn(missing_docs)]

use crate::model::dtype::DType;
use crate::model::id::{ChunkId, CommitId, ObjectId, TreeId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Kind byte of a commit object.
pub const KIND_COMMIT: u8 = 1;
/// Kind byte of a tree object.
pub const KIND_TREE: u8 = 2;

/// Why an object's bytes do not give the object asked for. Ids are checked before decoding, so
/// these mean a bug or a format this build does not know, not disk corruption.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    /// The bytes are not postcard of the object's versioned enum.
    #[error("object {id} does not decode as a {kind}: {source}")]
    Decode {
        /// The object's id.
        id: ObjectId,
        /// What it was decoded as: `commit` or `tree`.
        kind: &'static str,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// The object decoded, but bytes are left after it.
    #[error("object {id} has {extra} trailing bytes after its {kind}")]
    Trailing {
        /// The object's id.
        id: ObjectId,
        /// What it was decoded as: `commit` or `tree`.
        kind: &'static str,
        /// Bytes left over.
        extra: usize,
    },
    /// A tree decoded, but breaks a rule every tree cairn writes keeps (a store can come from
    /// a stranger: every object read is checked before it is used).
    #[error("tree {id} is malformed: {what}")]
    BadTree {
        /// The tree's id.
        id: ObjectId,
        /// The rule it breaks, naming the path.
        what: String,
    },
    /// The object's kind byte names another kind than the one asked for.
    #[error("object {id} is a {found}, expected a {expected}")]
    WrongKind {
        /// The object's id.
        id: ObjectId,
        /// The kind it is ([`kind_name`] of its kind byte).
        found: &'static str,
        /// The kind asked for.
        expected: &'static str,
    },
}

/// The longest chunk a tree may reference, in bytes. The writer cuts at most 1 MiB
/// ([`crate::model::chunker::TENSOR_CHUNK`], [`crate::model::chunker::CDC_MAX`]); decoding
/// refuses to allocate for more than this (the codec's `MAX_RAW_LEN` is this bound).
pub const MAX_CHUNK_LEN: u64 = 64 << 20;

/// A piece of a file's content, by id and raw length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk's id: the hash of its raw bytes.
    pub id: ChunkId,
    /// The chunk's raw length in bytes.
    pub len: u64,
}

/// What a segment holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SegmentKind {
    /// Bytes with no tensor structure (a header, padding, an opaque file).
    Raw,
    /// A tensor record: the bytes of one tensor, little-endian, as the file holds them.
    Tensor {
        /// The tensor's name in its file (safetensors key, or torch storage entry name).
        name: String,
        /// Its element type.
        dtype: DType,
        /// Its dimensions, outermost first.
        shape: Vec<u64>,
    },
}

/// A contiguous run of a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// What the bytes are.
    pub kind: SegmentKind,
    /// The segment's bytes, in order; for a tensor, chunk `i` starts at byte `i * TENSOR_CHUNK`
    /// of the tensor.
    pub chunks: Vec<ChunkRef>,
}

impl Segment {
    /// Byte length of the segment.
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len).sum()
    }
    /// Whether the segment holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Name, dtype and shape, when the segment is a tensor record.
    pub fn tensor(&self) -> Option<(&str, DType, &[u64])> {
        match &self.kind {
            SegmentKind::Tensor { name, dtype, shape } => Some((name, *dtype, shape)),
            SegmentKind::Raw => None,
        }
    }
}

/// How a file was understood when it was committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileFormat {
    /// Stored as plain bytes, content-defined chunks.
    Opaque,
    /// A strictly parsed safetensors file: one raw segment (8-byte length + header), then one
    /// tensor record per tensor in offset order.
    Safetensors,
    /// A torch.save zip archive with storage-aligned chunks.
    TorchZip,
    /// A file of a known kind that could not be parsed and was stored opaque; the reason.
    Fallback(String),
}

/// One file of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file's length in bytes (the sum of its segments' lengths).
    pub size: u64,
    /// SHA-256 of the whole file, as `sha256sum` prints it (hex of these bytes).
    pub sha256: [u8; 32],
    /// Whether the file had an execute permission bit set; checkout restores it.
    pub executable: bool,
    /// How the file was understood.
    pub format: FileFormat,
    /// The file's content, in order.
    pub segments: Vec<Segment>,
}

impl FileEntry {
    /// [`FileEntry::sha256`] as 64 lowercase hex digits.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
    /// Iterate the tensor records with their byte offset in the file.
    pub fn tensors(&self) -> impl Iterator<Item = (u64, &Segment)> {
        let mut off = 0u64;
        self.segments.iter().filter_map(move |s| {
            let here = off;
            off += s.len();
            s.tensor().map(|_| (here, s))
        })
    }
    /// Every chunk ref of the file in order.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        self.segments.iter().flat_map(|s| s.chunks.iter())
    }
}

/// A checkpoint's files. Paths are relative, `/`-separated, normalized (no `.`, `..` or empty
/// components) and sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Every file, by path.
    pub files: BTreeMap<String, FileEntry>,
    /// Directories that hold no file, so they come back on checkout.
    pub empty_dirs: BTreeSet<String>,
}

impl Tree {
    /// The sum of the files' sizes: what a checkout writes.
    pub fn logical_size(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    /// The chunks of every file (a chunk shared by two places appears twice).
    pub fn chunk_ids(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.files.values().flat_map(|f| f.chunks().map(|c| c.id))
    }

    /// The chunks of every file except those whose path is in `except`.
    pub fn chunk_ids_except<'a>(
        &'a self,
        except: &'a BTreeSet<String>,
    ) -> impl Iterator<Item = ChunkId> + 'a {
        self.files
            .iter()
            .filter(|(p, _)| !except.contains(*p))
            .flat_map(|(_, f)| f.chunks().map(|c| c.id))
    }
}

/// The code that produced a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GitInfo {
    /// The `HEAD` commit, as 40 hex digits.
    pub commit: String,
    /// The checked-out branch; `None` on a detached `HEAD`.
    pub branch: Option<String>,
    /// Whether the work tree had uncommitted changes.
    pub dirty: bool,
    /// blake3 hex of `git diff HEAD` when the tree was dirty.
    pub diff_hash: Option<String>,
}

/// A dataset that produced a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetRef {
    /// Role of the data set ("train", "validation", or the path's name).
    pub name: String,
    /// blake3 hex over the sorted relative file names, their sizes and their bytes.
    pub fingerprint: String,
    /// Number of files fingerprinted, when known.
    pub files: Option<u64>,
    /// Their total size in bytes, when known.
    pub bytes: Option<u64>,
}

/// What is known about a checkpoint besides its files. Every field is optional; `extra` takes
/// new keys without a format change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The training run the checkpoint belongs to.
    pub run_id: Option<String>,
    /// The training epoch (fractional epochs allowed).
    pub epoch: Option<f64>,
    /// The training step.
    pub step: Option<u64>,
    /// Named numbers (loss, accuracy, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Named hyperparameters, as text.
    pub params: BTreeMap<String, String>,
    /// Hyperparameters / config as canonical JSON text (keys sorted, no whitespace).
    pub config: Option<String>,
    /// The code's git state.
    pub git: Option<GitInfo>,
    /// The data sets that produced the checkpoint.
    pub datasets: Vec<DatasetRef>,
    /// Facts about the machine (cairn version, host, OS, kernel, CPU, memory, GPUs).
    pub env: BTreeMap<String, String>,
    /// Any other key, for fields added later.
    pub extra: BTreeMap<String, String>,
}

/// An immutable checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// The commits this one follows (none for a first commit).
    pub parents: Vec<CommitId>,
    /// The checkpoint's files.
    pub tree: TreeId,
    /// Nanoseconds since the Unix epoch, UTC.
    pub time_ns: i64,
    /// Who made the commit.
    pub author: String,
    /// The commit message.
    pub message: String,
    /// What is known about the checkpoint besides its files.
    pub meta: Metadata,
    /// Logical size of the tree (sum of file sizes), kept here so `log` and `stats` need not read
    /// trees.
    pub logical_size: u64,
    /// Number of files in the tree.
    pub file_count: u64,
}

/// A commit's on-disk form; new versions are new variants.
#[derive(Serialize, Deserialize)]
enum CommitObject {
    V1(Commit),
}

/// A tree's on-disk form; new versions are new variants.
#[derive(Serialize, Deserialize)]
enum TreeObject {
    V1(Tree),
}

/// Canonical postcard bytes of `v`.
fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("postcard encodes plain data into a Vec without failing")
}

/// Decode `bytes` of object `id` as a `kind`, which must take all of them.
fn decode<'a, T: Deserialize<'a>>(
    id: ObjectId,
    kind: &'static str,
    bytes: &'a [u8],
) -> Result<T, ObjectError> {
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(|source| ObjectError::Decode {
        id,
        kind,
        source,
    })?;
    if !rest.is_empty() {
        return Err(ObjectError::Trailing {
            id,
            kind,
            extra: rest.len(),
        });
    }
    Ok(v)
}

/// The name of an object kind byte, for messages: `commit`, `tree` or `unknown object`.
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_COMMIT => "commit",
        KIND_TREE => "tree",
        _ => "unknown object",
    }
}

impl Commit {
    /// Canonical bytes and id.
    pub fn encode(&self) -> (CommitId, Vec<u8>) {
        let bytes = encode(&CommitObject::V1(self.clone()));
        (CommitId(ObjectId::of(KIND_COMMIT, &bytes).0), bytes)
    }
    /// Decode the bytes of commit object `id` (already checked against its id).
    pub fn decode(id: ObjectId, bytes: &[u8]) -> Result<Commit, ObjectError> {
        let CommitObject::V1(c) = decode(id, "commit", bytes)?;
        Ok(c)
    }
}

impl Tree {
    /// Canonical bytes and id.
    pub fn encode(&self) -> (TreeId, Vec<u8>) {
        let bytes = encode(&TreeObject::V1(self.clone()));
        (TreeId(ObjectId::of(KIND_TREE, &bytes).0), bytes)
    }
    /// Decode the bytes of tree object `id` (already checked against its id), and check it
    /// ([`Tree::check`]): a tree that breaks a rule is [`ObjectError::BadTree`].
    pub fn decode(id: ObjectId, bytes: &[u8]) -> Result<Tree, ObjectError> {
        let TreeObject::V1(t) = decode(id, "tree", bytes)?;
        t.check()
            .map_err(|what| ObjectError::BadTree { id, what })?;
        Ok(t)
    }

    /// The rules every tree keeps, checked on every decode, so a forged tree is refused before
    /// anything uses it:
    /// - every file path and every empty directory passes the path rules
    ///   ([`crate::model::path::check_rel_path`]: relative, no `..`, no empty or `.` component);
    /// - no path is both a file and a directory, nor a path-component prefix of a file or of an
    ///   empty directory (`a` beside `a/b`; `model` beside `model.bin` is fine);
    /// - every chunk is at most [`MAX_CHUNK_LEN`] bytes, a tensor record's chunks add up to
    ///   exactly what its dtype and shape take, and a file's segments to exactly its size,
    ///   without overflow.
    ///
    /// Returns the first rule broken, naming the path.
    pub fn check(&self) -> Result<(), String> {
        use crate::model::path::check_rel_path;
        for p in self.files.keys() {
            check_rel_path(p).map_err(|e| format!("file path {p:?}: {e}"))?;
        }
        for d in &self.empty_dirs {
            check_rel_path(d).map_err(|e| format!("empty directory {d:?}: {e}"))?;
            if self.files.contains_key(d) {
                return Err(format!("{d:?} is both a file and an empty directory"));
            }
        }
        // No parent directory of any path may be a file or an empty directory.
        let all = self
            .files
            .keys()
            .map(|p| (p, "file"))
            .chain(self.empty_dirs.iter().map(|d| (d, "empty directory")));
        for (p, what) in all {
            let mut parent = p.as_str();
            while let Some((up, _)) = parent.rsplit_once('/') {
                if self.files.contains_key(up) {
                    return Err(format!("{up:?} is a file, but {what} {p:?} lies inside it"));
                }
                if self.empty_dirs.contains(up) {
                    return Err(format!(
                        "{up:?} is an empty directory, but {what} {p:?} lies inside it"
                    ));
                }
                parent = up;
            }
        }
        for (p, f) in &self.files {
            let mut size = 0u64;
            for seg in &f.segments {
                let mut len = 0u64;
                for c in &seg.chunks {
                    if c.len > MAX_CHUNK_LEN {
                        return Err(format!(
                            "file {p:?}: a chunk of {} bytes exceeds the limit of {MAX_CHUNK_LEN}",
                            c.len
                        ));
                    }
                    len = len
                        .checked_add(c.len)
                        .ok_or_else(|| format!("file {p:?}: chunk lengths overflow"))?;
                }
                if let Some((name, dtype, shape)) = seg.tensor() {
                    match dtype.byte_len(shape) {
                        Ok(want) if want == len => {}
                        Ok(want) => {
                            return Err(format!(
                                "file {p:?}: tensor {name:?} ({dtype} {shape:?}) takes {want} bytes, its chunks hold {len}"
                            ));
                        }
                        Err(e) => return Err(format!("file {p:?}: tensor {name:?}: {e}")),
                    }
                }
                size = size
                    .checked_add(len)
                    .ok_or_else(|| format!("file {p:?}: segment lengths overflow"))?;
            }
            if size != f.size {
                return Err(format!(
                    "file {p:?}: its segments hold {size} bytes, its size says {}",
                    f.size
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forged tree (as a stranger's store may hold) is refused on decode, naming the rule.
    fn refused(t: &Tree, rule: &str) {
        let (id, bytes) = t.encode();
        match Tree::decode(id.into(), &bytes) {
            Err(ObjectError::BadTree { what, .. }) => assert!(what.contains(rule), "{what}"),
            other => panic!("expected BadTree ({rule}), got {other:?}"),
        }
    }

    #[test]
    fn forged_trees_are_refused_on_decode() {
        let good = sample_tree();
        let (id, bytes) = good.encode();
        assert_eq!(Tree::decode(id.into(), &bytes).unwrap(), good);

        let mut t = good.clone();
        t.empty_dirs.insert("../X".into());
        refused(&t, "empty directory \"../X\"");
        let mut t = good.clone();
        t.empty_dirs.insert("/etc/x".into());
        refused(&t, "empty directory");
        let mut t = good.clone();
        let f = t.files["model.safetensors"].clone();
        t.files.insert("../escape".into(), f.clone());
        refused(&t, "file path \"../escape\"");

        // A file inside a file, an empty directory inside a file, a file inside an empty
        // directory, a path both a file and an empty directory.
        let mut t = good.clone();
        t.files.insert("model.safetensors/inner".into(), f.clone());
        refused(&t, "is a file, but file \"model.safetensors/inner\"");
        let mut t = good.clone();
        t.empty_dirs.insert("model.safetensors/d".into());
        refused(&t, "is a file, but empty directory");
        let mut t = good.clone();
        t.empty_dirs.insert("logs".into());
        t.files.insert("logs/a".into(), f.clone());
        refused(&t, "is an empty directory, but file");
        let mut t = good.clone();
        t.empty_dirs.insert("model.safetensors".into());
        refused(&t, "both a file and an empty directory");
        // `model` beside `model.safetensors` is fine.
        let mut t = good.clone();
        t.files.insert("model".into(), f.clone());
        let (id, bytes) = t.encode();
        assert!(Tree::decode(id.into(), &bytes).is_ok());

        // Lengths: a 2^44-byte chunk (checkout would allocate 16 TiB; with every chunk bounded,
        // no sum can overflow), a tensor whose chunks do not hold what its dtype and shape
        // take, a size that is not the segments' sum.
        let mut t = good.clone();
        let e = t.files.get_mut("model.safetensors").unwrap();
        e.segments[0].chunks[0].len = 1 << 44;
        refused(&t, "exceeds the limit");
        let mut t = good.clone();
        let e = t.files.get_mut("model.safetensors").unwrap();
        let ti = e
            .segments
            .iter()
            .position(|s| s.tensor().is_some())
            .unwrap();
        e.segments[ti].chunks[0].len += 1;
        e.size += 1;
        refused(&t, "its chunks hold");
        let mut t = good.clone();
        t.files.get_mut("model.safetensors").unwrap().size += 1;
        refused(&t, "its size says");
    }

    fn sample_tree() -> Tree {
        let mut t = Tree::default();
        t.files.insert(
            "model.safetensors".into(),
            FileEntry {
                size: 12,
                sha256: [1; 32],
                executable: false,
                format: FileFormat::Safetensors,
                segments: vec![
                    Segment {
                        kind: SegmentKind::Raw,
                        chunks: vec![ChunkRef {
                            id: ChunkId::of(b"head"),
                            len: 8,
                        }],
                    },
                    Segment {
                        kind: SegmentKind::Tensor {
                            name: "w".into(),
                            dtype: DType::F32,
                            shape: vec![1],
                        },
                        chunks: vec![ChunkRef {
                            id: ChunkId::of(b"body"),
                            len: 4,
                        }],
                    },
                ],
            },
        );
        t
    }

    #[test]
    fn encoding_is_canonical_and_round_trips() {
        let t = sample_tree();
        let (id1, b1) = t.encode();
        let (id2, b2) = t.clone().encode();
        assert_eq!((id1, &b1), (id2, &b2));
        assert_eq!(Tree::decode(id1.into(), &b1).unwrap(), t);
        let c = Commit {
            parents: vec![],
            tree: id1,
            time_ns: 5,
            author: "a".into(),
            message: "m".into(),
            meta: Metadata::default(),
            logical_size: 12,
            file_count: 1,
        };
        let (cid, cb) = c.encode();
        assert_ne!(cid.0, id1.0);
        assert_eq!(Commit::decode(cid.into(), &cb).unwrap(), c);
        let mut long = cb.clone();
        long.push(0);
        assert!(matches!(
            Commit::decode(cid.into(), &long),
            Err(ObjectError::Trailing { .. })
        ));
        assert!(Commit::decode(cid.into(), &cb[..cb.len() - 1]).is_err());
    }

    #[test]
    fn tensor_offsets() {
        let t = sample_tree();
        let f = &t.files["model.safetensors"];
        let v: Vec<u64> = f.tensors().map(|(o, _)| o).collect();
        assert_eq!(v, vec![8]);
        assert_eq!(f.chunks().count(), 2);
    }
}
