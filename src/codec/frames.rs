//! zstd frames: per-thread compression and decompression contexts, per-thread scratch buffers,
//! and the whole-chunk frame helpers.
//!
//! Contexts and scratch buffers are reused per thread: setting up a context per chunk costs more
//! than compressing a small plane.
//!
//! Invariants: a frame is decompressed only into a buffer of exactly the expected length, and a
//! frame that decodes to any other length is an error ([`decompress_exact`]); scratch buffers
//! above 8 MiB are released after use, so an unusually large chunk does not pin its memory.

#![warn(missing_docs)]

use std::cell::RefCell;

use super::{CodecError, ZSTD_LEVEL};

/// zstd parameters for planes: level 1, but with the longest minimum match and the smallest hash
/// table, which leaves nearly everything to zstd's Huffman literals. On an exponent plane of
/// normal(0, 0.02) weights this takes 2.60 bits per byte (entropy 2.54) where plain level 1 takes
/// 2.87 to 3.05, and compresses 3x faster.
const PLANE_MIN_MATCH: u32 = 7;
const PLANE_HASH_LOG: u32 = 6;
/// And the fast match finder's acceleration (zstd's `targetLength` for its fast strategy: it
/// skips ahead faster where no match turns up), with Huffman literals kept on, which zstd
/// otherwise turns off for any acceleration. Planes are mostly literals: on the codec bench,
/// encoding ran 13-45% faster (f32 weights 2.28 to 2.57 GiB/s, Adam second moments 0.79 to
/// 1.15 GiB/s) with every ratio within 0.5% (docs/benchmarks.md); decoding is unchanged. Higher
/// settings cost delta ratio: bf16 after an Adam step fell 1.5% at 16, 6% at 64, 16% at 1024.
const PLANE_ACCELERATION: u32 = 4;

/// Which compression context: the one for whole chunks, or the one tuned for planes.
#[derive(Clone, Copy)]
pub(super) enum Ctx {
    /// Level [`ZSTD_LEVEL`], for whole chunks (`Encoding::Zstd`, `Encoding::XorZstd`).
    Whole,
    /// Level 1 with the plane parameters below.
    Plane,
}

thread_local! {
    static WHOLE_CCTX: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static PLANE_CCTX: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    /// Scratch for encoding: planes to compress, or a chunk XOR its base.
    pub(super) static ENCODE_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Scratch for decoding: decompressed planes, or a decompressed XOR difference.
    pub(super) static DECODE_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A fresh compression context of kind `ctx`.
fn new_compressor(ctx: Ctx) -> std::io::Result<zstd::bulk::Compressor<'static>> {
    use zstd::zstd_safe::CParameter;
    match ctx {
        Ctx::Whole => zstd::bulk::Compressor::new(ZSTD_LEVEL),
        Ctx::Plane => {
            let mut c = zstd::bulk::Compressor::new(1)?;
            c.set_parameter(CParameter::MinMatch(PLANE_MIN_MATCH))?;
            c.set_parameter(CParameter::HashLog(PLANE_HASH_LOG))?;
            c.set_parameter(CParameter::TargetLength(PLANE_ACCELERATION))?;
            c.set_parameter(CParameter::LiteralCompressionMode(
                zstd::zstd_safe::ParamSwitch::Enable,
            ))?;
            Ok(c)
        }
    }
}

/// Run `f` with this thread's compressor; `None` if a context cannot be created.
pub(super) fn with_compressor<R>(
    ctx: Ctx,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> Option<R>,
) -> Option<R> {
    let key = match ctx {
        Ctx::Whole => &WHOLE_CCTX,
        Ctx::Plane => &PLANE_CCTX,
    };
    key.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = new_compressor(ctx).ok();
        }
        f(slot.as_mut()?)
    })
}

/// Run `f` with this thread's decompressor.
fn with_decompressor<R>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<R>,
) -> Result<R, CodecError> {
    DCTX.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(CodecError::Zstd)?);
        }
        f(slot.as_mut().expect("set just above")).map_err(CodecError::Zstd)
    })
}

/// Scratch space of `len` bytes (contents unspecified), kept per thread between chunks.
pub(super) fn with_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<u8>>>,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> R {
    key.with_borrow_mut(|v| {
        if v.len() < len {
            v.resize(len, 0);
        }
        let r = f(&mut v[..len]);
        // Keep what a usual chunk needs, not what an unusually large one did.
        if v.len() > 8 << 20 {
            *v = Vec::new();
        }
        r
    })
}

/// One zstd frame of `raw` (or of `raw ^ base`), if it is smaller than `raw`.
pub(super) fn compress_whole(raw: &[u8], base: Option<&[u8]>, mut out: Vec<u8>) -> Option<Vec<u8>> {
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
    let n = match base {
        None => with_compressor(Ctx::Whole, |c| c.compress_to_buffer(raw, &mut out).ok())?,
        Some(base) => with_scratch(&ENCODE_SCRATCH, raw.len(), |x| {
            for ((d, a), b) in x.iter_mut().zip(raw).zip(base) {
                *d = a ^ b;
            }
            with_compressor(Ctx::Whole, |c| c.compress_to_buffer(&*x, &mut out).ok())
        })?,
    };
    (n < raw.len()).then_some(out)
}

/// Decompress one zstd frame into exactly `out.len()` bytes.
pub(super) fn decompress_exact(frame: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let got = with_decompressor(|d| d.decompress_to_buffer(frame, out))?;
    if got != out.len() {
        return Err(CodecError::Length {
            got: got as u64,
            want: out.len() as u64,
        });
    }
    Ok(())
}
