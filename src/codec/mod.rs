//! Chunk encodings: how a chunk's raw bytes are stored in a pack.
//!
//! Floats are stored as byte planes (byte `k` of every element together), so the plane that holds
//! the exponent, which takes few values, compresses well on its own while the mantissa planes,
//! which are close to noise, are stored as they are. A chunk whose parent has a corresponding chunk
//! of the same length may instead be stored as its difference from that base.
//!
//! Invariants:
//! - Encoding never changes identity: a chunk's id is the hash of its raw bytes, whatever the
//!   encoding, and every decode is followed by a hash check in the reader.
//! - The encoding is recorded per chunk ([`Encoding`], one byte on disk) and decoding never guesses:
//!   every encoding's stored bytes describe their own layout, and decoding checks it exactly.
//! - No chunk is stored larger than its raw bytes: every encoding other than [`Encoding::Raw`] is
//!   chosen only when its stored bytes are strictly fewer than the raw bytes.
//! - Decoding untrusted (possibly corrupt) bytes never panics and never allocates more than the
//!   recorded raw length for the output (plus at most as much again for decompressed planes, each
//!   bounded by its expected size), and refuses raw lengths above [`MAX_RAW_LEN`].
//!
//! Choosing an encoding is cheap: per plane, a byte histogram of at most [`SAMPLE_ELEMS`] sampled
//! elements estimates what zstd will save (order-0 entropy); non-float chunks compress a sample of
//! [`SAMPLE_BYTES`] bytes. Only the estimated best encoding runs in full. (Also running the
//! runner-up when the estimates were within 10% saved 0.003-0.02% of stored bytes on the
//! benchmark series for 10-19% more commit CPU, measured 2026-11-28.)
//!
//! This file holds the encodings, [`encode`] and [`decode`]; the parts live beside it: `choose`
//! (the estimates and candidates), `planes` (the byte-plane layout, written and checked),
//! `kernels` (the split and merge loops), `delta` ([`apply_deltas_into`], the fused delta
//! chain) and `frames` (zstd contexts, scratch buffers and whole-chunk frames).

#![warn(missing_docs)]

use crate::model::dtype::DType;

mod choose;
mod delta;
mod frames;
mod kernels;
mod planes;
#[cfg(test)]
mod tests;

pub use delta::apply_deltas_into;

use choose::{Candidate, MIN_PLANE_ELEMS, encode_small, estimate_zstd, plan_planes, run_candidate};
use frames::{DECODE_SCRATCH, decompress_exact, with_scratch};
use planes::{decode_planes, plane_layout};

/// K, the default bound on delta depth: a chunk is delta-coded only when its parent chunk's depth
/// (versions since a standalone encoding) is below K-1, so every K-th version of a chunk at most
/// is stored standalone, and a read decodes a chunk plus at most K-1 bases (one, with
/// `DeltaBase::Root`). A commit's `delta_depth` option overrides it per commit.
pub const MAX_DELTA_DEPTH: u32 = 4;

/// The largest K a commit accepts (reads refuse chains longer than 64).
pub const DELTA_DEPTH_LIMIT: u32 = 32;

/// How a chunk is stored. The discriminants are on-disk values (docs/format.md); they never change.
///
/// In the plane layouts below, `W` is the element width in bytes, `n = raw_len / W` the number of
/// whole elements, and an element is the little-endian `W`-byte word it is stored as. Plane `k`
/// (`k = 0` least significant) holds byte `k` of every (transformed) element, in element order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum Encoding {
    /// The raw bytes.
    Raw = 0,
    /// One zstd frame of the raw bytes.
    Zstd = 1,
    /// Byte planes of the elements, each plane stored raw or as one zstd frame.
    ///
    /// ```text
    /// offset 0   u8   W: 2, 4 or 8
    /// offset 1   u8   transform: 0 = elements as they are;
    ///                 1 = each element rotated left by one bit (the sign moves to bit 0, so
    ///                     for bf16 and f32 the top byte is exactly the 8-bit exponent)
    /// offset 2   u8   zstd mask: bit k set = plane k is a zstd frame, clear = stored raw;
    ///                 bits k >= W are zero
    /// offset 3   u32 LE per set bit of the mask, ascending k: that plane's frame length
    /// then            the raw planes, ascending k, n bytes each
    /// then            the zstd frames, ascending k, each decompressing to exactly n bytes
    /// then            the tail: the last raw_len % W bytes of the chunk, as they are
    /// ```
    /// The stored bytes end exactly there.
    Planes = 2,
    /// Byte planes of the difference from a base chunk of exactly `raw_len` bytes; same layout as
    /// [`Encoding::Planes`] except for the transform byte:
    ///
    /// ```text
    /// offset 1   u8   transform: 0 = ordered difference. With B = 8W, s = 1 << (B-1),
    ///                 ord(x) = x ^ s if the top bit of x is clear, !x if it is set (the IEEE
    ///                 bit pattern mapped to an integer in the float's order), the element is
    ///                 d = ord(x) - ord(b) mod 2^B for chunk element x and base element b,
    ///                 zigzagged: z = (d << 1) ^ (d >> (B-1), arithmetic), and the planes hold z
    /// ```
    /// The tail is the chunk's own last `raw_len % W` bytes (not a difference).
    DeltaPlanes = 3,
    /// One zstd frame of the raw bytes XOR a base chunk of exactly `raw_len` bytes, byte by byte.
    XorZstd = 4,
}

impl Encoding {
    /// Every encoding, in discriminant order.
    pub const ALL: [Encoding; 5] = [
        Encoding::Raw,
        Encoding::Zstd,
        Encoding::Planes,
        Encoding::DeltaPlanes,
        Encoding::XorZstd,
    ];

    /// The on-disk byte of this encoding.
    pub fn code(self) -> u8 {
        self as u8
    }
    /// The encoding whose on-disk byte is `code`; `None` for bytes no encoding uses.
    pub fn from_code(code: u8) -> Option<Encoding> {
        Encoding::ALL.get(usize::from(code)).copied()
    }
    /// Whether decoding needs the raw bytes of a base chunk.
    pub fn needs_base(self) -> bool {
        matches!(self, Encoding::DeltaPlanes | Encoding::XorZstd)
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
    /// How [`Encoded::bytes`] encode the chunk.
    pub encoding: Encoding,
    /// The stored bytes; empty for [`Encoding::Raw`] (the caller stores the raw bytes itself).
    pub bytes: Vec<u8>,
    /// Whether `base` from the hint was used (then the reader needs it to decode).
    pub used_base: bool,
}

/// Why stored bytes do not decode into the chunk the index describes. Every decode of bytes
/// read from disk can fail this way (they may be corrupt); the reader names the chunk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The encoding byte (from the index or a pack entry) names no [`Encoding`].
    #[error("unknown chunk encoding {0}")]
    UnknownEncoding(u8),
    /// A zstd frame is corrupt, or a zstd context could not be created.
    #[error("zstd frame does not decode: {0}")]
    Zstd(#[source] std::io::Error),
    /// The stored bytes decode to a length other than the recorded one.
    #[error("decoded {got} bytes where the index records {want}")]
    Length {
        /// Bytes the stored bytes (or one zstd frame) decode to.
        got: u64,
        /// Bytes expected: the chunk's recorded raw length (or the plane's length).
        want: u64,
    },
    /// A delta encoding was to be decoded without its base chunk.
    #[error("encoding {0:?} needs its base chunk")]
    MissingBase(Encoding),
    /// The base chunk's length differs from the chunk's.
    #[error("base chunk has {got} bytes where the chunk has {want}")]
    BaseLength {
        /// The base chunk's length in bytes.
        got: u64,
        /// The chunk's recorded raw length in bytes.
        want: u64,
    },
    /// The recorded raw length exceeds [`MAX_RAW_LEN`], so decoding refuses to allocate it.
    #[error("raw length {0} exceeds the largest encoded chunk")]
    TooLarge(u64),
    /// The stored bytes break their encoding's layout (the rule is named).
    #[error("malformed encoded chunk: {0}")]
    Malformed(&'static str),
}

/// zstd level for whole chunks (non-float data); fast, since commit must keep up with the disk.
/// Level 3 measured no better on our non-float cases and about 1.5x slower.
pub const ZSTD_LEVEL: i32 = 1;

/// Chunks longer than this are always stored raw, and decoding refuses to allocate for more.
pub const MAX_RAW_LEN: usize = crate::model::object::MAX_CHUNK_LEN as usize;

/// Elements sampled per chunk to estimate each plane's entropy.
pub const SAMPLE_ELEMS: usize = 4096;

/// Bytes of a non-float chunk compressed to decide whether zstd pays.
pub const SAMPLE_BYTES: usize = 16 << 10;

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Encode `raw`, choosing the smallest encoding that pays.
pub fn encode(raw: &[u8], hint: Hint<'_>) -> Encoded {
    encode_into(raw, hint, Vec::new())
}

/// [`encode`], writing the stored bytes into `buf`'s memory (its contents do not matter) when
/// its capacity suffices: a caller that hands spent buffers back saves a fresh allocation, and
/// its page faults, per chunk. The buffer comes back as [`Encoded::bytes`], empty for
/// [`Encoding::Raw`].
pub fn encode_into(raw: &[u8], hint: Hint<'_>, buf: Vec<u8>) -> Encoded {
    let mut spare = Some(buf);
    let raw_with = |spare: &mut Option<Vec<u8>>| {
        let mut e = raw_encoded();
        if let Some(mut b) = spare.take() {
            b.clear();
            e.bytes = b;
        }
        e
    };
    if raw.is_empty() || raw.len() > MAX_RAW_LEN {
        return raw_with(&mut spare);
    }
    let base = hint.base.filter(|b| b.len() == raw.len());
    let mut candidates: Vec<(f64, Candidate)> = Vec::with_capacity(3);
    let layout = hint
        .dtype
        .and_then(plane_layout)
        .filter(|l| raw.len() / l.width >= MIN_PLANE_ELEMS);

    if let Some(layout) = layout {
        let (mask, est) = plan_planes(raw, None, layout);
        if mask != 0 {
            candidates.push((est, Candidate::Planes { layout, mask }));
        }
        if let Some(base) = base {
            let (mask, est) = plan_planes(raw, Some(base), layout);
            if mask != 0 {
                let width = layout.width;
                candidates.push((est, Candidate::DeltaPlanes { width, mask }));
            }
        }
    }
    if layout.is_none()
        || !candidates
            .iter()
            .any(|c| matches!(c.1, Candidate::Planes { .. }))
    {
        // Noise-like floats land here too: the sample then shows whether zstd finds matches.
        if raw.len() <= SAMPLE_BYTES {
            return encode_small(raw, base, candidates);
        }
        if let Some(est) = estimate_zstd(raw, None) {
            candidates.push((est, Candidate::Zstd));
        }
        if layout.is_none()
            && let Some(base) = base
            && let Some(est) = estimate_zstd(raw, Some(base))
        {
            candidates.push((est, Candidate::XorZstd));
        }
    }

    let best = candidates
        .iter()
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .and_then(|&(_, cand)| run_candidate(raw, base, cand, spare.take().unwrap_or_default()));
    match best {
        Some(e) if e.bytes.len() < raw.len() => e,
        Some(e) => raw_with(&mut Some(e.bytes)),
        None => raw_with(&mut spare),
    }
}

fn raw_encoded() -> Encoded {
    Encoded {
        encoding: Encoding::Raw,
        bytes: Vec::new(),
        used_base: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decode `stored` into exactly `raw_len` bytes.
pub fn decode(
    encoding: Encoding,
    stored: &[u8],
    raw_len: u64,
    base: Option<&[u8]>,
) -> Result<Vec<u8>, CodecError> {
    if encoding == Encoding::Raw {
        if stored.len() as u64 != raw_len {
            return Err(CodecError::Length {
                got: stored.len() as u64,
                want: raw_len,
            });
        }
        return Ok(stored.to_vec());
    }
    let len = usize::try_from(raw_len)
        .ok()
        .filter(|&l| l <= MAX_RAW_LEN)
        .ok_or(CodecError::TooLarge(raw_len))?;
    let mut out = if encoding.needs_base() {
        let base = base.ok_or(CodecError::MissingBase(encoding))?;
        if base.len() != len {
            return Err(CodecError::BaseLength {
                got: base.len() as u64,
                want: raw_len,
            });
        }
        base.to_vec()
    } else {
        vec![0u8; len]
    };
    decode_into(encoding, stored, &mut out)?;
    Ok(out)
}

/// Decode `stored` into `out`, whose length is the chunk's raw length.
///
/// For an encoding that [needs a base](Encoding::needs_base), `out` must hold the base chunk's
/// raw bytes on entry, and the difference is applied in place: a delta chain decodes into one
/// buffer, its root first, then each delta over it. For the other encodings `out`'s bytes on
/// entry do not matter. On error `out` holds unspecified bytes.
pub fn decode_into(encoding: Encoding, stored: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let len = out.len();
    if encoding == Encoding::Raw {
        if stored.len() != len {
            return Err(CodecError::Length {
                got: stored.len() as u64,
                want: len as u64,
            });
        }
        out.copy_from_slice(stored);
        return Ok(());
    }
    if len > MAX_RAW_LEN {
        return Err(CodecError::TooLarge(len as u64));
    }
    match encoding {
        Encoding::Planes => decode_planes(stored, out, false),
        Encoding::DeltaPlanes => decode_planes(stored, out, true),
        Encoding::Zstd => decompress_exact(stored, out),
        Encoding::XorZstd => with_scratch(&DECODE_SCRATCH, len, |scratch| {
            decompress_exact(stored, scratch)?;
            for (o, d) in out.iter_mut().zip(scratch.iter()) {
                *o ^= d;
            }
            Ok(())
        }),
        Encoding::Raw => unreachable!("handled above"),
    }
}
