//! The plane kernels: splitting whole elements into byte planes and merging them back, with the
//! standalone transforms (none, rotate) and the ordered difference from a base.
//!
//! Invariants: kernels only read and write inside the slices they are given (every plane holds
//! `n` bytes for `n` whole elements); they are branch-free per element so the compiler vectorizes
//! them, and each transform has its exact inverse ([`Word::rotl`]/[`Word::rotr`],
//! [`Word::diff`]/[`Word::undiff`]). Which instruction set runs them ([`simd`]) changes their
//! speed, never their bytes: the loops are the same integer code, compiled twice.

#![warn(missing_docs)]

/// The element words planes are made of, one implementation per width.
pub(super) trait Word: Copy {
    /// Width in bytes.
    const W: usize;
    /// The little-endian word in `b`, which holds exactly `W` bytes.
    fn load(b: &[u8]) -> Self;
    /// Byte `k`, `0` least significant.
    fn byte(self, k: usize) -> u8;
    /// Rotate left by one bit (the sign moves to bit 0).
    fn rotl(self) -> Self;
    /// Rotate right by one bit: the inverse of [`Word::rotl`].
    fn rotr(self) -> Self;
    /// The IEEE bit pattern as an integer in the float's order, then differences zigzagged.
    fn diff(self, base: Self) -> Self;
    /// The element whose [`Word::diff`] from `base` is `self`.
    fn undiff(self, base: Self) -> Self;
    /// The bit pattern as an integer in the float's order, and back.
    fn ord(self) -> Self;
    /// The inverse of [`Word::ord`].
    fn unord(self) -> Self;
    /// A zigzagged difference back to the difference (mod 2^B).
    fn unzigzag(self) -> Self;
}

macro_rules! word {
    ($u:ty, $i:ty) => {
        impl Word for $u {
            const W: usize = std::mem::size_of::<$u>();
            #[inline(always)]
            fn load(b: &[u8]) -> Self {
                <$u>::from_le_bytes(b.try_into().expect("one element"))
            }
            #[inline(always)]
            fn byte(self, k: usize) -> u8 {
                (self >> (8 * k)) as u8
            }
            #[inline(always)]
            fn rotl(self) -> Self {
                self.rotate_left(1)
            }
            #[inline(always)]
            fn rotr(self) -> Self {
                self.rotate_right(1)
            }
            #[inline(always)]
            fn diff(self, base: Self) -> Self {
                const SIGN: $u = 1 << (<$u>::BITS - 1);
                let ord = |x: $u| x ^ (((x as $i) >> (<$u>::BITS - 1)) as $u | SIGN);
                let d = ord(self).wrapping_sub(ord(base));
                (d << 1) ^ (((d as $i) >> (<$u>::BITS - 1)) as $u)
            }
            #[inline(always)]
            fn ord(self) -> Self {
                const SIGN: $u = 1 << (<$u>::BITS - 1);
                self ^ (((self as $i) >> (<$u>::BITS - 1)) as $u | SIGN)
            }
            #[inline(always)]
            fn unord(self) -> Self {
                const SIGN: $u = 1 << (<$u>::BITS - 1);
                self ^ ((!((self as $i) >> (<$u>::BITS - 1))) as $u | SIGN)
            }
            #[inline(always)]
            fn unzigzag(self) -> Self {
                (self >> 1) ^ (self & 1).wrapping_neg()
            }
            #[inline(always)]
            fn undiff(self, base: Self) -> Self {
                const SIGN: $u = 1 << (<$u>::BITS - 1);
                let ord = |x: $u| x ^ (((x as $i) >> (<$u>::BITS - 1)) as $u | SIGN);
                let d = (self >> 1) ^ (self & 1).wrapping_neg();
                let y = ord(base).wrapping_add(d);
                y ^ ((!((y as $i) >> (<$u>::BITS - 1))) as $u | SIGN)
            }
        }
    };
}
word!(u16, i16);
word!(u32, i32);
word!(u64, i64);

/// Split whole elements into planes: byte `k` of each (transformed) element goes to `planes[k]`.
pub(super) fn split(raw: &[u8], width: usize, rotate: bool, planes: &mut [&mut [u8]]) {
    simd(
        #[inline(always)]
        || match (width, rotate) {
            (2, false) => split_u16(raw, None, planes, |x, _| x),
            (2, true) => split_u16(raw, None, planes, |x, _| x.rotl()),
            (4, false) => split_u32(raw, None, planes, |x, _| x),
            (4, true) => split_u32(raw, None, planes, |x, _| x.rotl()),
            (8, false) => split_u64(raw, None, planes, |x, _| x),
            (8, true) => split_u64(raw, None, planes, |x, _| x.rotl()),
            _ => unreachable!("plane widths are 2, 4 or 8"),
        },
    )
}

/// Split the ordered differences of whole elements from `base`'s into planes.
pub(super) fn split_delta(raw: &[u8], base: &[u8], width: usize, planes: &mut [&mut [u8]]) {
    simd(
        #[inline(always)]
        || match width {
            2 => split_u16(raw, Some(base), planes, Word::diff),
            4 => split_u32(raw, Some(base), planes, Word::diff),
            8 => split_u64(raw, Some(base), planes, Word::diff),
            _ => unreachable!("plane widths are 2, 4 or 8"),
        },
    )
}

/// Interleave planes back into whole elements.
pub(super) fn merge(planes: &[&[u8]], width: usize, rotate: bool, out: &mut [u8]) {
    simd(
        #[inline(always)]
        || match (width, rotate) {
            (2, false) => merge_u16(planes, out, |x, _| x),
            (2, true) => merge_u16(planes, out, |x, _| x.rotr()),
            (4, false) => merge_u32(planes, out, |x, _| x),
            (4, true) => merge_u32(planes, out, |x, _| x.rotr()),
            (8, false) => merge_u64(planes, out, |x, _| x),
            (8, true) => merge_u64(planes, out, |x, _| x.rotr()),
            _ => unreachable!("plane widths are 2, 4 or 8"),
        },
    )
}

/// Apply difference planes to the base elements in `out`, in place.
pub(super) fn merge_delta(planes: &[&[u8]], width: usize, out: &mut [u8]) {
    simd(
        #[inline(always)]
        || match width {
            2 => merge_u16(planes, out, Word::undiff),
            4 => merge_u32(planes, out, Word::undiff),
            8 => merge_u64(planes, out, Word::undiff),
            _ => unreachable!("plane widths are 2, 4 or 8"),
        },
    )
}

/// Run `f` compiled for the widest vector instructions this CPU has (AVX2 on x86-64 when
/// present, detected once at run time; the baseline otherwise). The kernels are
/// `#[inline(always)]`, so they are compiled into each version, and a build for the baseline
/// still uses the wider instructions where the CPU has them.
#[inline(always)]
pub(super) fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

// Which loop shape is fastest was measured kernel by kernel at opt-level 3 (what every build of
// cairn uses, Cargo.toml), one thread, 1 MiB chunks (benches/codec.rs, docs/benchmarks.md):
// element-by-element zips of the planes, which the compiler vectorizes, for the split of 2- and
// 4-byte elements and every merge; fixed-size blocks of BLOCK elements for the split of 8-byte
// elements and for the one-pass delta chain, where a zip does not vectorize. Each entry point
// runs its loop through [`simd`], so the same loops are also compiled for AVX2 and chosen at run
// time where the CPU has it (x86-64's baseline has only SSE2): measured 2026-12-05, decode of a
// 1 MiB f32 chunk 0.71x the time, of an f32 delta 0.74-0.86x (docs/benchmarks.md).

/// Split 2-byte elements: `planes[k]` gets byte `k` of `f(x, b)` for each element `x` of `raw`
/// and `b` of `base` (`raw` itself when there is none).
#[inline(always)]
fn split_u16(
    raw: &[u8],
    base: Option<&[u8]>,
    planes: &mut [&mut [u8]],
    f: impl Fn(u16, u16) -> u16,
) {
    let n = raw.len() / 2;
    let base = base.unwrap_or(raw);
    let (r, _) = raw[..2 * n].as_chunks::<2>();
    let (s, _) = base[..2 * n].as_chunks::<2>();
    let [p0, p1, ..] = planes else {
        unreachable!("two planes")
    };
    let dsts = p0[..n].iter_mut().zip(p1[..n].iter_mut());
    for ((a, c), (d0, d1)) in r.iter().zip(s).zip(dsts) {
        let x = f(u16::from_le_bytes(*a), u16::from_le_bytes(*c));
        *d0 = x as u8;
        *d1 = (x >> 8) as u8;
    }
}

/// [`split_u16`] for 4-byte elements.
#[inline(always)]
fn split_u32(
    raw: &[u8],
    base: Option<&[u8]>,
    planes: &mut [&mut [u8]],
    f: impl Fn(u32, u32) -> u32,
) {
    let n = raw.len() / 4;
    let base = base.unwrap_or(raw);
    let (r, _) = raw[..4 * n].as_chunks::<4>();
    let (s, _) = base[..4 * n].as_chunks::<4>();
    let [p0, p1, p2, p3, ..] = planes else {
        unreachable!("four planes")
    };
    let dsts = p0[..n]
        .iter_mut()
        .zip(p1[..n].iter_mut())
        .zip(p2[..n].iter_mut().zip(p3[..n].iter_mut()));
    for ((a, c), ((d0, d1), (d2, d3))) in r.iter().zip(s).zip(dsts) {
        let x = f(u32::from_le_bytes(*a), u32::from_le_bytes(*c));
        *d0 = x as u8;
        *d1 = (x >> 8) as u8;
        *d2 = (x >> 16) as u8;
        *d3 = (x >> 24) as u8;
    }
}

/// Merge 2-byte elements: each element `o` of `out` becomes `f(x, o)`, `x` the element whose
/// byte `k` is in `planes[k]`.
#[inline(always)]
fn merge_u16(planes: &[&[u8]], out: &mut [u8], f: impl Fn(u16, u16) -> u16) {
    let n = out.len() / 2;
    let (o, _) = out.as_chunks_mut::<2>();
    let srcs = planes[0][..n].iter().zip(&planes[1][..n]);
    for (o, (&b0, &b1)) in o.iter_mut().zip(srcs) {
        *o = f(u16::from_le_bytes([b0, b1]), u16::from_le_bytes(*o)).to_le_bytes();
    }
}

/// [`merge_u16`] for 4-byte elements.
#[inline(always)]
fn merge_u32(planes: &[&[u8]], out: &mut [u8], f: impl Fn(u32, u32) -> u32) {
    let n = out.len() / 4;
    let (o, _) = out.as_chunks_mut::<4>();
    let p: [&[u8]; 4] = std::array::from_fn(|k| &planes[k][..n]);
    let srcs = p[0].iter().zip(p[1]).zip(p[2].iter().zip(p[3]));
    for (o, ((&b0, &b1), (&b2, &b3))) in o.iter_mut().zip(srcs) {
        *o = f(u32::from_le_bytes([b0, b1, b2, b3]), u32::from_le_bytes(*o)).to_le_bytes();
    }
}

/// [`merge_u16`] for 8-byte elements.
#[inline(always)]
fn merge_u64(planes: &[&[u8]], out: &mut [u8], f: impl Fn(u64, u64) -> u64) {
    let n = out.len() / 8;
    let (o, _) = out.as_chunks_mut::<8>();
    let p: [&[u8]; 8] = std::array::from_fn(|k| &planes[k][..n]);
    for (i, o) in o.iter_mut().enumerate() {
        let bytes: [u8; 8] = std::array::from_fn(|k| p[k][i]);
        *o = f(u64::from_le_bytes(bytes), u64::from_le_bytes(*o)).to_le_bytes();
    }
}

/// Elements per block in the blocked kernels. Whole blocks are fixed-size arrays, and the loops
/// over them are plain index loops, which the compiler turns into vector code; the last partial
/// block runs element by element.
pub(super) const BLOCK: usize = 64;

/// The blocked split for 8-byte elements, where it beats the element-by-element loop.
macro_rules! blocked_split {
    ($split:ident, $u:ty) => {
        /// Plane `k` (`planes[k]`, `n` bytes) gets byte `k` of `f(x, b)` for each element `x`
        /// of `raw` and `b` of `base` (`raw` itself when there is none).
        #[inline(always)]
        #[allow(clippy::needless_range_loop)] // index loops over arrays are what vectorize
        fn $split(
            raw: &[u8],
            base: Option<&[u8]>,
            planes: &mut [&mut [u8]],
            f: impl Fn($u, $u) -> $u,
        ) {
            const W: usize = std::mem::size_of::<$u>();
            let n = raw.len() / W;
            let base = base.unwrap_or(raw);
            let p = &mut planes[..W];
            let blocks = n / BLOCK;
            for b in 0..blocks {
                let at = b * BLOCK;
                let r: &[u8; BLOCK * W] = raw[at * W..(at + BLOCK) * W]
                    .try_into()
                    .expect("a whole block");
                let s: &[u8; BLOCK * W] = base[at * W..(at + BLOCK) * W]
                    .try_into()
                    .expect("a whole block");
                let mut x = [0 as $u; BLOCK];
                let (r, _) = r.as_chunks::<W>();
                let (s, _) = s.as_chunks::<W>();
                for (x, (a, c)) in x.iter_mut().zip(r.iter().zip(s)) {
                    *x = f(<$u>::from_le_bytes(*a), <$u>::from_le_bytes(*c));
                }
                for k in 0..W {
                    let dst: &mut [u8; BLOCK] = (&mut p[k][at..at + BLOCK])
                        .try_into()
                        .expect("a whole block");
                    for i in 0..BLOCK {
                        dst[i] = (x[i] >> (8 * k)) as u8;
                    }
                }
            }
            for i in blocks * BLOCK..n {
                let a = <$u>::from_le_bytes(raw[i * W..(i + 1) * W].try_into().expect("W"));
                let c = <$u>::from_le_bytes(base[i * W..(i + 1) * W].try_into().expect("W"));
                let x = f(a, c);
                for k in 0..W {
                    p[k][i] = (x >> (8 * k)) as u8;
                }
            }
        }
    };
}
blocked_split!(split_u64, u64);
