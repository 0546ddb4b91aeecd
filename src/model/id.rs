//! Typed ids and the hashing that makes them.
//!
//! Invariants:
//! - Every id is a 32-byte blake3 hash taken under a derive-key context of its own
//!   ([`CHUNK_CONTEXT`], [`OBJECT_CONTEXT`]), so a chunk can never alias an object even when their
//!   bytes are equal.
//! - A [`ChunkId`] is the hash of a chunk's raw (decoded) bytes, whatever its stored encoding.
//! - An [`ObjectId`] is the hash of an object's canonical encoding (kind byte + postcard bytes).
//!   [`CommitId`] and [`TreeId`] are object ids known to name a commit or a tree.
//! - Ids print as 64 lowercase hex digits; a unique prefix of at least [`MIN_PREFIX`] digits may
//!   stand for one (see `rev`).

#![warn(missing_docs)]

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// blake3 derive-key context for chunk ids.
pub const CHUNK_CONTEXT: &str = "cairn 2026-11-27 chunk id v1";
/// blake3 derive-key context for object ids.
pub const OBJECT_CONTEXT: &str = "cairn 2026-11-27 object id v1";
/// Shortest hex prefix accepted as a revision.
pub const MIN_PREFIX: usize = 4;
/// Length of the abbreviated id shown to people.
pub const SHORT_LEN: usize = 12;

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a 64-digit hex id")]
pub struct BadId(pub String);

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        // Hex in human-readable formats (JSON output), the 32 raw bytes in postcard (objects,
        // index records): the binary encoding is exactly the derived one.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; 32]>::deserialize(d).map(Self)
                }
            }
        }

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// From exactly 32 bytes.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                <[u8; 32]>::try_from(b).ok().map(Self)
            }
            /// 64 lowercase hex digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first [`SHORT_LEN`] hex digits.
            pub fn short(&self) -> String {
                let mut s = self.to_hex();
                s.truncate(SHORT_LEN);
                s
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, BadId> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| BadId(s.to_string()))?;
                Ok(Self(out))
            }
        }
    };
}

typed_id!(
    /// The id of a chunk: blake3 under [`CHUNK_CONTEXT`] of its raw bytes.
    ChunkId
);
typed_id!(
    /// The id of an object (commit or tree): blake3 under [`OBJECT_CONTEXT`] of kind + bytes.
    ObjectId
);
typed_id!(
    /// An object id that names a commit.
    CommitId
);
typed_id!(
    /// An object id that names a tree.
    TreeId
);

impl ChunkId {
    /// Hash raw chunk bytes.
    pub fn of(raw: &[u8]) -> ChunkId {
        let mut h = blake3::Hasher::new_derive_key(CHUNK_CONTEXT);
        // Large chunks hash on both cores; small ones are not worth the rayon hop.
        if raw.len() >= 256 * 1024 {
            h.update_rayon(raw);
        } else {
            h.update(raw);
        }
        ChunkId(*h.finalize().as_bytes())
    }
}

impl ObjectId {
    /// Hash an object's kind byte and canonical bytes.
    pub fn of(kind: u8, bytes: &[u8]) -> ObjectId {
        let mut h = blake3::Hasher::new_derive_key(OBJECT_CONTEXT);
        h.update(&[kind]);
        h.update(bytes);
        ObjectId(*h.finalize().as_bytes())
    }
}

impl From<CommitId> for ObjectId {
    fn from(c: CommitId) -> ObjectId {
        ObjectId(c.0)
    }
}
impl From<TreeId> for ObjectId {
    fn from(t: TreeId) -> ObjectId {
        ObjectId(t.0)
    }
}

/// The id of a pack file: 16 random bytes, printed as 32 hex digits in the file name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 16]);

impl Serialize for PackId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PackId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 16]>::deserialize(d).map(PackId)
        }
    }
}

impl PackId {
    /// A fresh random id (from the OS via blake3 of time, pid and a counter: uniqueness, not
    /// secrecy, is what matters).
    pub fn random() -> PackId {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut h = blake3::Hasher::new_derive_key("cairn 2026-11-27 pack id v1");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        h.update(&now.as_nanos().to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        let mut urandom = [0u8; 16];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read;
            let _ = f.read_exact(&mut urandom);
        }
        h.update(&urandom);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        PackId(out)
    }
    /// The id as 32 lowercase hex digits (the pack's file name stem).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({})", self.to_hex())
    }
}
impl FromStr for PackId {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Self, BadId> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadId(s.to_string()))?;
        Ok(PackId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_separated() {
        let bytes = b"same bytes";
        assert_ne!(ChunkId::of(bytes).0, ObjectId::of(1, bytes).0);
        assert_ne!(ObjectId::of(1, bytes), ObjectId::of(2, bytes));
        let big = vec![3u8; 1 << 20];
        let mut h = blake3::Hasher::new_derive_key(CHUNK_CONTEXT);
        h.update(&big);
        assert_eq!(ChunkId::of(&big).0, *h.finalize().as_bytes());
    }

    #[test]
    fn json_is_hex_postcard_is_raw() {
        let id = ChunkId::of(b"x");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            format!("\"{}\"", id.to_hex())
        );
        assert_eq!(
            serde_json::from_str::<ChunkId>(&format!("\"{id}\"")).unwrap(),
            id
        );
        let bin = postcard::to_stdvec(&id).unwrap();
        assert_eq!(bin, id.0.to_vec());
        assert_eq!(postcard::from_bytes::<ChunkId>(&bin).unwrap(), id);
        let p = PackId::random();
        assert_eq!(postcard::to_stdvec(&p).unwrap(), p.0.to_vec());
    }

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"x");
        assert_eq!(id.to_hex().parse::<ChunkId>(), Ok(id));
        assert_eq!(id.short().len(), SHORT_LEN);
        assert!("abc".parse::<ChunkId>().is_err());
        let p = PackId::random();
        assert_ne!(p, PackId::random());
        assert_eq!(p.to_hex().parse::<PackId>(), Ok(p));
    }
}
