//! Delta chains: applying a run of deltas over a base chunk, fused into one pass when they are
//! all difference planes of one element width.
//!
//! Invariants: the fused pass gives exactly the bytes of applying each delta in turn with
//! [`decode_into`]; every link is checked ([`PlanesView::parse`]) before any
//! byte of `out` changes in the fused pass.

#![warn(missing_docs)]

use super::frames::{DECODE_SCRATCH, with_scratch};
use super::kernels::{BLOCK, Word, simd};
use super::planes::PlanesView;
use super::{CodecError, Encoding, MAX_RAW_LEN, decode_into};

/// Apply a run of deltas to the base in `out`: `deltas[0]` (an encoding that needs a base, and
/// its stored bytes) over `out`, then `deltas[1]` over that result, and so on; the same as
/// [`decode_into`] for each in turn. When they are all [`Encoding::DeltaPlanes`] of one element
/// width, which is what delta chains of float tensors are, they are applied in one pass over
/// `out`, element by element through every level.
pub fn apply_deltas_into(deltas: &[(Encoding, &[u8])], out: &mut [u8]) -> Result<(), CodecError> {
    if deltas.iter().any(|(e, _)| !e.needs_base()) {
        return Err(CodecError::Malformed(
            "a delta chain link that is not a delta",
        ));
    }
    let fused = deltas.len() > 1
        && deltas.iter().all(|(e, _)| *e == Encoding::DeltaPlanes)
        && out.len() <= MAX_RAW_LEN;
    let views = if fused {
        deltas
            .iter()
            .map(|(_, stored)| PlanesView::parse(stored, out.len(), true))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    if !fused || views.iter().any(|v| v.width != views[0].width) {
        for (e, stored) in deltas {
            decode_into(*e, stored, out)?;
        }
        return Ok(());
    }
    let (width, n) = (views[0].width, views[0].n);
    let body = width * n;
    let ztotal: usize = views.iter().map(|v| v.zcount() * n).sum();
    with_scratch(&DECODE_SCRATCH, ztotal, |mut scratch| {
        let mut levels = Vec::with_capacity(views.len());
        for (v, (_, stored)) in views.iter().zip(deltas) {
            let (mine, rest) = std::mem::take(&mut scratch).split_at_mut(v.zcount() * n);
            scratch = rest;
            levels.push(v.planes(stored, mine)?);
        }
        simd(
            #[inline(always)]
            || match width {
                2 => chain_u16(&levels, &mut out[..body]),
                4 => chain_u32(&levels, &mut out[..body]),
                8 => chain_u64(&levels, &mut out[..body]),
                _ => unreachable!("plane widths are 2, 4 or 8"),
            },
        );
        Ok(())
    })?;
    let (last, (_, stored)) = (views.last(), deltas.last().expect("more than one delta"));
    out[body..].copy_from_slice(&stored[last.expect("one view per delta").tail.clone()]);
    Ok(())
}

/// The one-pass delta chain kernel for one element width.
macro_rules! chain_kernel {
    ($chain:ident, $u:ty) => {
        /// [`Word::undiff`] of each level's difference planes over `out`, in order, in one
        /// pass: element `i` goes through every level while it is in registers.
        #[inline(always)]
        #[allow(clippy::needless_range_loop)] // index loops over arrays are what vectorize
        fn $chain(levels: &[[&[u8]; 8]], out: &mut [u8]) {
            const W: usize = std::mem::size_of::<$u>();
            let n = out.len() / W;
            let levels: Vec<[&[u8]; W]> = levels
                .iter()
                .map(|l| std::array::from_fn(|k| &l[k][..n]))
                .collect();
            let blocks = n / BLOCK;
            for b in 0..blocks {
                let at = b * BLOCK;
                let o: &mut [u8; BLOCK * W] = (&mut out[at * W..(at + BLOCK) * W])
                    .try_into()
                    .expect("a whole block");
                let mut x = [0 as $u; BLOCK];
                let (was, _) = o.as_chunks::<W>();
                // In the float's integer order every level's difference is a plain addition.
                for (x, e) in x.iter_mut().zip(was) {
                    *x = <$u>::from_le_bytes(*e).ord();
                }
                for p in &levels {
                    let mut z = [0 as $u; BLOCK];
                    for k in 0..W {
                        let src: &[u8; BLOCK] =
                            p[k][at..at + BLOCK].try_into().expect("a whole block");
                        for i in 0..BLOCK {
                            z[i] |= (src[i] as $u) << (8 * k);
                        }
                    }
                    for i in 0..BLOCK {
                        x[i] = x[i].wrapping_add(z[i].unzigzag());
                    }
                }
                o.copy_from_slice(x.map(|x| x.unord().to_le_bytes()).as_flattened());
            }
            for i in blocks * BLOCK..n {
                let o = &mut out[i * W..(i + 1) * W];
                let mut x = <$u>::from_le_bytes((&*o).try_into().expect("W"));
                for p in &levels {
                    let mut z: $u = 0;
                    for k in 0..W {
                        z |= (p[k][i] as $u) << (8 * k);
                    }
                    x = z.undiff(x);
                }
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
    };
}
chain_kernel!(chain_u16, u16);
chain_kernel!(chain_u32, u32);
chain_kernel!(chain_u64, u64);
