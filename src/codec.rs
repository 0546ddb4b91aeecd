//! Chunk encodings: how a chunk's raw bytes are stored in a pack.
//!
//! Invariants:
//! - Encoding never changes identity: a chunk's id is the hash of its raw bytes, whatever the
//!   encoding, and every decode is followed by a hash check in the reader.
//! - The encoding is recorded per chunk ([`Encoding`], one byte on disk) and decoding never guesses.
//! - No chunk is stored larger than its raw bytes: when an encoding does not pay, the chunk is
//!   stored [`Encoding::Raw`].
//! - Decoding untrusted (possibly corrupt) bytes never panics and never allocates more than the
//!   recorded raw length.

use crate::dtype::DType;

/// How a chunk is stored. The discriminants are on-disk values (docs/format.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum Encoding {
    /// The raw bytes.
    Raw = 0,
    /// One zstd frame of the raw bytes.
    Zstd = 1,
}

impl Encoding {
    pub fn code(self) -> u8 {
        self as u8
    }
    pub fn from_code(code: u8) -> Option<Encoding> {
        match code {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Zstd),
            _ => None,
        }
    }
    /// Whether decoding needs the raw bytes of a base chunk.
    pub fn needs_base(self) -> bool {
        false
    }
}

/// What the encoder may know about a chunk besides its bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hint<'a> {
    /// Element type, when the chunk is (part of) a tensor whose start is element-aligned.
    pub dtype: Option<DType>,
    /// Raw bytes of the corresponding chunk of the parent's tensor, for delta coding.
    pub base: Option<&'a [u8]>,
}

/// The result of encoding a chunk.
#[derive(Debug)]
pub struct Encoded {
    pub encoding: Encoding,
    /// The stored bytes; empty for [`Encoding::Raw`] (the caller stores the raw bytes itself).
    pub bytes: Vec<u8>,
    /// Whether `base` from the hint was used (then the reader needs it to decode).
    pub used_base: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("unknown chunk encoding {0}")]
    UnknownEncoding(u8),
    #[error("zstd frame does not decode: {0}")]
    Zstd(#[source] std::io::Error),
    #[error("decoded {got} bytes where the index records {want}")]
    Length { got: u64, want: u64 },
    #[error("encoding {0:?} needs its base chunk")]
    MissingBase(Encoding),
    #[error("malformed encoded chunk: {0}")]
    Malformed(&'static str),
}

/// zstd level used for chunks; fast, since commit must keep up with the disk.
pub const ZSTD_LEVEL: i32 = 1;

/// Encode `raw`, choosing the smallest encoding that pays.
pub fn encode(raw: &[u8], _hint: Hint<'_>) -> Encoded {
    if !raw.is_empty()
        && let Ok(z) = zstd::bulk::compress(raw, ZSTD_LEVEL)
        && z.len() < raw.len()
    {
        return Encoded {
            encoding: Encoding::Zstd,
            bytes: z,
            used_base: false,
        };
    }
    Encoded {
        encoding: Encoding::Raw,
        bytes: Vec::new(),
        used_base: false,
    }
}

/// Decode `stored` into exactly `raw_len` bytes.
pub fn decode(
    encoding: Encoding,
    stored: &[u8],
    raw_len: u64,
    _base: Option<&[u8]>,
) -> Result<Vec<u8>, CodecError> {
    let out = match encoding {
        Encoding::Raw => stored.to_vec(),
        Encoding::Zstd => {
            let cap = usize::try_from(raw_len).map_err(|_| CodecError::Malformed("raw length"))?;
            zstd::bulk::decompress(stored, cap).map_err(CodecError::Zstd)?
        }
    };
    if out.len() as u64 != raw_len {
        return Err(CodecError::Length {
            got: out.len() as u64,
            want: raw_len,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_and_raw_round_trip() {
        let zeros = vec![0u8; 1 << 20];
        let e = encode(&zeros, Hint::default());
        assert_eq!(e.encoding, Encoding::Zstd);
        assert_eq!(decode(e.encoding, &e.bytes, zeros.len() as u64, None).unwrap(), zeros);

        let mut noise = vec![0u8; 4096];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let e = encode(&noise, Hint::default());
        assert_eq!(e.encoding, Encoding::Raw);
    }

    #[test]
    fn corrupt_frames_are_errors() {
        let e = encode(&vec![7u8; 10_000], Hint::default());
        let mut bad = e.bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xFF;
        let r = decode(Encoding::Zstd, &bad, 10_000, None);
        assert!(r.is_err() || r.unwrap() != vec![7u8; 10_000]);
        assert!(decode(Encoding::Zstd, &e.bytes, 9_999, None).is_err());
    }
}
