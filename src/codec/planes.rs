//! The byte-plane layout (`Encoding::Planes`, `Encoding::DeltaPlanes`): writing it, and
//! checking and reading it back.
//!
//! Invariants: [`PlanesView::parse`] checks stored bytes against the layout documented on
//! `Encoding::Planes` exactly (header, mask, frame lengths adding up to the stored length)
//! before any plane is read, so decoding corrupt bytes is an error, never a panic or an
//! allocation beyond the expected plane sizes.

#![warn(missing_docs)]

use std::io::Cursor;
use std::ops::Range;

use super::CodecError;
use super::frames::{
    Ctx, DECODE_SCRATCH, ENCODE_SCRATCH, decompress_exact, with_compressor, with_scratch,
};
use super::kernels::{merge, merge_delta, split, split_delta};
use crate::model::dtype::DType;

/// Transform byte of `Encoding::Planes`: elements as they are.
pub(super) const TRANSFORM_NONE: u8 = 0;
/// Transform byte of `Encoding::Planes`: each element rotated left by one bit.
pub(super) const TRANSFORM_ROTATE: u8 = 1;
/// Transform byte of `Encoding::DeltaPlanes`: the zigzagged ordered difference.
pub(super) const TRANSFORM_ORDERED_DIFF: u8 = 0;
/// Bytes before the frame lengths: width, transform, zstd mask.
pub(super) const PLANES_HEADER: usize = 3;

/// How a float dtype is split into planes: its width and the standalone transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Layout {
    /// Element width in bytes: 2, 4 or 8.
    pub(super) width: usize,
    /// [`TRANSFORM_NONE`] or [`TRANSFORM_ROTATE`].
    pub(super) transform: u8,
}

/// Measured per dtype on normal(0, 0.02) weights: rotating the sign out of the top byte makes it
/// the exponent for bf16 and f32 (1.52x vs 1.50x, 1.207x vs 1.201x by entropy); for f16 the
/// exponent is 5 bits, both choices give the same ratio and no rotation is cheaper; for f64 the
/// sign next to the top 7 exponent bits compresses better than rotated (1.140x vs 1.123x).
/// A complex64 element is two f32s, so it is split like f32.
pub(super) fn plane_layout(dtype: DType) -> Option<Layout> {
    let (width, transform) = match dtype {
        DType::BF16 => (2, TRANSFORM_ROTATE),
        DType::F16 => (2, TRANSFORM_NONE),
        DType::F32 | DType::C64 => (4, TRANSFORM_ROTATE),
        DType::F64 => (8, TRANSFORM_NONE),
        _ => return None,
    };
    Some(Layout { width, transform })
}

/// The `Encoding::Planes` (no base) or `Encoding::DeltaPlanes` bytes of `raw`, compressing
/// the planes in `mask`; a plane whose frame does not come out smaller is stored raw instead.
pub(super) fn encode_planes(
    raw: &[u8],
    base: Option<&[u8]>,
    width: usize,
    transform: u8,
    mask: u8,
    mut out: Vec<u8>,
) -> Vec<u8> {
    let n = raw.len() / width;
    let body = width * n;
    let zcount = mask.count_ones() as usize;
    let bound = zstd::zstd_safe::compress_bound(n);
    out.clear();
    out.reserve(PLANES_HEADER + 4 * zcount + body + zcount * (bound - n) + 8);
    out.extend_from_slice(&[width as u8, transform, mask]);
    let lens_end = PLANES_HEADER + 4 * zcount;
    // Raw planes are split straight into their place in `out`; the others into scratch, to be
    // compressed after them.
    out.resize(lens_end + (width - zcount) * n, 0);
    let demoted = with_scratch(&ENCODE_SCRATCH, zcount * n, |zplanes| {
        {
            let mut raw_dst = out[lens_end..].chunks_exact_mut(n.max(1));
            let mut z_dst = zplanes.chunks_exact_mut(n.max(1));
            let mut dst: [&mut [u8]; 8] = Default::default();
            for (k, d) in dst.iter_mut().enumerate().take(width) {
                let next = if mask & (1 << k) == 0 {
                    raw_dst.next()
                } else {
                    z_dst.next()
                };
                *d = next.map_or(&mut [][..], |q| &mut q[..n]);
            }
            match base {
                None => split(&raw[..body], width, transform == TRANSFORM_ROTATE, &mut dst),
                Some(base) => split_delta(&raw[..body], &base[..body], width, &mut dst),
            }
        }
        let mut slot = PLANES_HEADER;
        let mut demoted = 0u8;
        let zs = (0..width).filter(|k| mask & (1 << k) != 0);
        for (z, k) in zs.enumerate() {
            let plane = &zplanes[z * n..(z + 1) * n];
            let start = out.len();
            let frame = with_compressor(Ctx::Plane, |c| {
                let mut cur = Cursor::new(&mut out);
                cur.set_position(start as u64);
                c.compress_to_buffer(plane, &mut cur).ok()
            });
            match frame {
                Some(len) if len < n => {
                    let len = u32::try_from(len).expect("planes are at most MAX_RAW_LEN bytes");
                    out[slot..slot + 4].copy_from_slice(&len.to_le_bytes());
                    slot += 4;
                }
                _ => {
                    out.truncate(start);
                    demoted |= 1 << k;
                }
            }
        }
        demoted
    });
    if demoted != 0 {
        // Rare (the sample misjudged a plane): lay the chunk out again with that plane raw.
        return encode_planes(raw, base, width, transform, mask & !demoted, out);
    }
    out.extend_from_slice(&raw[body..]);
    out
}

/// Where the parts of a plane-encoded chunk are in its stored bytes (checked against them).
pub(super) struct PlanesView {
    /// Element width in bytes: 2, 4 or 8.
    pub(super) width: usize,
    /// Whether the elements were rotated left by one bit ([`TRANSFORM_ROTATE`]).
    rotate: bool,
    /// Bit `k` set: plane `k` is a zstd frame.
    mask: u8,
    /// Elements: the raw length divided by the width.
    pub(super) n: usize,
    /// Where the raw planes start (each `n` bytes, ascending plane number).
    raw_at: usize,
    /// The zstd frames, ascending plane number.
    frames: [Range<usize>; 8],
    /// The chunk's last `raw_len % width` bytes.
    pub(super) tail: Range<usize>,
}

impl PlanesView {
    /// Check the layout of `Encoding::Planes` (or, with `delta`, `Encoding::DeltaPlanes`)
    /// stored bytes against a raw length of `len`.
    pub(super) fn parse(stored: &[u8], len: usize, delta: bool) -> Result<PlanesView, CodecError> {
        let bad = CodecError::Malformed;
        let [width, transform, mask] = *stored.first_chunk::<3>().ok_or(bad("short header"))?;
        let width = usize::from(width);
        if !matches!(width, 2 | 4 | 8) {
            return Err(bad("plane width"));
        }
        let rotate = match (delta, transform) {
            (false, TRANSFORM_NONE) => false,
            (false, TRANSFORM_ROTATE) => true,
            (true, TRANSFORM_ORDERED_DIFF) => false,
            _ => return Err(bad("plane transform")),
        };
        if u32::from(mask) >> width != 0 {
            return Err(bad("plane mask"));
        }
        let n = len / width;
        let zcount = mask.count_ones() as usize;
        let lens_end = PLANES_HEADER + 4 * zcount;
        let lens = stored
            .get(PLANES_HEADER..lens_end)
            .ok_or(bad("short header"))?;
        let raw_planes_end = (width - zcount)
            .checked_mul(n)
            .and_then(|b| b.checked_add(lens_end))
            .ok_or(bad("plane lengths"))?;
        let mut pos = raw_planes_end;
        let mut frames: [Range<usize>; 8] = Default::default();
        for (i, l) in lens.chunks_exact(4).enumerate() {
            let l = u32::from_le_bytes(l.try_into().expect("chunks of 4"));
            let l = usize::try_from(l).map_err(|_| bad("plane lengths"))?;
            let end = pos.checked_add(l).ok_or(bad("plane lengths"))?;
            frames[i] = pos..end;
            pos = end;
        }
        let tail_end = pos
            .checked_add(len - width * n)
            .ok_or(bad("plane lengths"))?;
        if tail_end != stored.len() {
            return Err(bad("plane lengths do not add up to the stored length"));
        }
        Ok(PlanesView {
            width,
            rotate,
            mask,
            n,
            raw_at: lens_end,
            frames,
            tail: pos..tail_end,
        })
    }

    /// How many planes are zstd frames.
    pub(super) fn zcount(&self) -> usize {
        self.mask.count_ones() as usize
    }

    /// Decompress the zstd planes into `scratch` (`zcount * n` bytes) and return every plane.
    pub(super) fn planes<'a>(
        &self,
        stored: &'a [u8],
        scratch: &'a mut [u8],
    ) -> Result<[&'a [u8]; 8], CodecError> {
        let n = self.n;
        for (z, frame) in self.frames[..self.zcount()].iter().enumerate() {
            decompress_exact(&stored[frame.clone()], &mut scratch[z * n..(z + 1) * n])?;
        }
        let scratch = &*scratch;
        let mut planes: [&[u8]; 8] = [&[]; 8];
        let (mut raw_at, mut z) = (self.raw_at, 0);
        for (k, plane) in planes.iter_mut().enumerate().take(self.width) {
            if self.mask & (1 << k) == 0 {
                *plane = &stored[raw_at..raw_at + n];
                raw_at += n;
            } else {
                *plane = &scratch[z * n..(z + 1) * n];
                z += 1;
            }
        }
        Ok(planes)
    }
}

/// Decode `Encoding::Planes`, or with `delta` `Encoding::DeltaPlanes` over the base in `out`.
pub(super) fn decode_planes(stored: &[u8], out: &mut [u8], delta: bool) -> Result<(), CodecError> {
    let v = PlanesView::parse(stored, out.len(), delta)?;
    let body = v.width * v.n;
    with_scratch(&DECODE_SCRATCH, v.zcount() * v.n, |scratch| {
        let planes = v.planes(stored, scratch)?;
        let planes = &planes[..v.width];
        if delta {
            merge_delta(planes, v.width, &mut out[..body]);
        } else {
            merge(planes, v.width, v.rotate, &mut out[..body]);
        }
        Ok(())
    })?;
    out[body..].copy_from_slice(&stored[v.tail]);
    Ok(())
}
