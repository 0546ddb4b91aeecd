//! Choosing an encoding: estimates of what each encoding would store, from a sample.
//!
//! Per plane, a byte histogram of at most [`SAMPLE_ELEMS`] sampled elements estimates what zstd
//! will save (order-0 entropy); non-float chunks compress a sample of [`SAMPLE_BYTES`] bytes.
//! Only the estimated best candidate then runs in full ([`run_candidate`]).
//!
//! Invariant: estimates only choose; they never decide what is stored. A candidate that does
//! not come out smaller than the raw bytes is dropped by the caller.

#![warn(missing_docs)]

use std::ops::Range;

use super::frames::{Ctx, compress_whole, with_compressor};
use super::kernels::Word;
use super::planes::{
    Layout, PLANES_HEADER, TRANSFORM_ORDERED_DIFF, TRANSFORM_ROTATE, encode_planes,
};
use super::{Encoded, Encoding, SAMPLE_BYTES, SAMPLE_ELEMS, raw_encoded};

/// A plane, or a whole chunk, is compressed only when the estimate saves at least this fraction.
const MIN_SAVING: f64 = 0.05;

/// Chunks with fewer elements are not split into planes.
pub(super) const MIN_PLANE_ELEMS: usize = 16;

/// Sampled segments and their length, when a chunk has more than [`SAMPLE_ELEMS`] elements.
const SAMPLE_SEGMENTS: usize = 8;

/// An encoding worth trying, with its estimated stored size in bytes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Candidate {
    /// [`Encoding::Planes`] with this layout, compressing the planes set in `mask`.
    Planes { layout: Layout, mask: u8 },
    /// [`Encoding::DeltaPlanes`] of this element width, compressing the planes set in `mask`.
    DeltaPlanes { width: usize, mask: u8 },
    /// [`Encoding::Zstd`].
    Zstd,
    /// [`Encoding::XorZstd`].
    XorZstd,
}

/// Small chunks: every applicable encoding runs in full, since a sample would be the whole chunk.
pub(super) fn encode_small(
    raw: &[u8],
    base: Option<&[u8]>,
    planes: Vec<(f64, Candidate)>,
) -> Encoded {
    let mut all: Vec<Candidate> = planes.into_iter().map(|c| c.1).collect();
    all.push(Candidate::Zstd);
    if base.is_some()
        && !all
            .iter()
            .any(|c| matches!(c, Candidate::DeltaPlanes { .. }))
    {
        all.push(Candidate::XorZstd);
    }
    all.into_iter()
        .filter_map(|c| run_candidate(raw, base, c, Vec::new()))
        .filter(|e| e.bytes.len() < raw.len())
        .min_by_key(|e| e.bytes.len())
        .unwrap_or_else(raw_encoded)
}

/// Run one candidate in full, its stored bytes written into `out`'s memory.
pub(super) fn run_candidate(
    raw: &[u8],
    base: Option<&[u8]>,
    cand: Candidate,
    out: Vec<u8>,
) -> Option<Encoded> {
    let (encoding, bytes, used_base) = match cand {
        Candidate::Planes { layout, mask } => (
            Encoding::Planes,
            encode_planes(raw, None, layout.width, layout.transform, mask, out),
            false,
        ),
        Candidate::DeltaPlanes { width, mask } => (
            Encoding::DeltaPlanes,
            encode_planes(raw, base, width, TRANSFORM_ORDERED_DIFF, mask, out),
            true,
        ),
        Candidate::Zstd => (Encoding::Zstd, compress_whole(raw, None, out)?, false),
        Candidate::XorZstd => (Encoding::XorZstd, compress_whole(raw, base, out)?, true),
    };
    Some(Encoded {
        encoding,
        bytes,
        used_base,
    })
}

/// Decide which planes to compress from a sample, and estimate the stored size.
/// With `base`, the planes are those of the ordered difference from it.
pub(super) fn plan_planes(raw: &[u8], base: Option<&[u8]>, layout: Layout) -> (u8, f64) {
    let w = layout.width;
    let n = raw.len() / w;
    let mut hist = [[0u32; 256]; 8];
    let mut total = 0u32;
    for r in sample_ranges(n) {
        total += r.len() as u32;
        let bytes = w * r.start..w * r.end;
        let base = base.map(|b| &b[bytes.clone()]);
        histogram(&raw[bytes], base, layout, &mut hist[..w]);
    }
    let mut mask = 0u8;
    let mut est = (PLANES_HEADER + raw.len() % w) as f64;
    for (k, h) in hist[..w].iter().enumerate() {
        let bits = entropy_bits(h, total);
        // A zstd frame's own overhead: frame header, block headers and the Huffman table.
        let z = n as f64 * bits / 8.0 + 48.0 + n as f64 / 16384.0;
        if z < n as f64 * (1.0 - MIN_SAVING) {
            mask |= 1 << k;
            est += z + 4.0;
        } else {
            est += n as f64;
        }
    }
    (mask, est)
}

/// Element ranges to sample: everything for small chunks, else evenly spread segments.
fn sample_ranges(n: usize) -> impl Iterator<Item = Range<usize>> {
    let seg = SAMPLE_ELEMS / SAMPLE_SEGMENTS;
    let (count, seg) = if n <= SAMPLE_ELEMS {
        (1, n)
    } else {
        (SAMPLE_SEGMENTS, seg)
    };
    (0..count).map(move |i| {
        let start = if count == 1 {
            0
        } else {
            i * (n - seg) / (count - 1)
        };
        start..start + seg
    })
}

/// Bits per byte of order-0 entropy, Miller–Madow corrected so a sample of noise reads as 8.
fn entropy_bits(hist: &[u32; 256], total: u32) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let t = f64::from(total);
    let mut sum = 0.0;
    let mut used = 0u32;
    for &c in hist.iter().filter(|&&c| c > 0) {
        let c = f64::from(c);
        sum += c * c.log2();
        used += 1;
    }
    let h = t.log2() - sum / t + f64::from(used - 1) / (2.0 * t * std::f64::consts::LN_2);
    h.clamp(0.0, 8.0)
}

/// Estimated stored size of a whole-chunk zstd frame (of `raw`, or of `raw ^ base`) from a
/// compressed sample, or `None` when the sample shows it will not pay.
pub(super) fn estimate_zstd(raw: &[u8], base: Option<&[u8]>) -> Option<f64> {
    let seg = SAMPLE_BYTES / 4;
    let mut sample = Vec::with_capacity(SAMPLE_BYTES);
    for r in (0..4).map(|i| {
        let start = i * (raw.len() - seg) / 3;
        start..start + seg
    }) {
        match base {
            None => sample.extend_from_slice(&raw[r]),
            Some(b) => sample.extend(raw[r.clone()].iter().zip(&b[r]).map(|(x, y)| x ^ y)),
        }
    }
    let z = with_compressor(Ctx::Whole, |c| {
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(sample.len()));
        c.compress_to_buffer(&sample, &mut out)
            .ok()
            .map(|_| out.len())
    })?;
    let ratio = z as f64 / sample.len() as f64;
    (ratio < 1.0 - MIN_SAVING).then_some(ratio * raw.len() as f64)
}

/// Add the sampled elements' plane bytes to `hist` (one histogram per plane).
fn histogram(raw: &[u8], base: Option<&[u8]>, layout: Layout, hist: &mut [[u32; 256]]) {
    fn go<T: Word>(raw: &[u8], base: Option<&[u8]>, rotate: bool, hist: &mut [[u32; 256]]) {
        let elems = raw.chunks_exact(T::W);
        let mut base_elems = base.map(|b| b.chunks_exact(T::W)).into_iter().flatten();
        for a in elems {
            let x = T::load(a);
            let x = match base_elems.next() {
                Some(b) => x.diff(T::load(b)),
                None if rotate => x.rotl(),
                None => x,
            };
            for (k, h) in hist.iter_mut().enumerate() {
                h[usize::from(x.byte(k))] += 1;
            }
        }
    }
    let rotate = layout.transform == TRANSFORM_ROTATE;
    match layout.width {
        2 => go::<u16>(raw, base, rotate, hist),
        4 => go::<u32>(raw, base, rotate, hist),
        8 => go::<u64>(raw, base, rotate, hist),
        _ => unreachable!("plane widths are 2, 4 or 8"),
    }
}
