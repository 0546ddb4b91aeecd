//! Where chunk boundaries fall.
//!
//! Invariants:
//! - Tensor bytes are cut into fixed [`TENSOR_CHUNK`]-byte chunks counted from the tensor's first
//!   byte (the last chunk may be shorter), so an unchanged tensor produces the same chunks
//!   wherever it sits in whatever file, and chunk `i` of a tensor lines up with chunk `i` of the
//!   same tensor in the parent commit (the delta codec relies on that).
//! - Raw segments of structured files (headers) are cut the same fixed way.
//! - Opaque files are cut content-defined (FastCDC, [`CDC_MIN`]/[`CDC_AVG`]/[`CDC_MAX`]), so an
//!   insertion moves only nearby boundaries.
//! - Boundaries depend only on content and these constants: the same bytes always chunk the
//!   same way. Changing a constant is a format-visible change (it breaks dedup, not reads).

#![warn(missing_docs)]

/// Size of tensor chunks: 1 MiB, a whole number of elements of every dtype.
pub const TENSOR_CHUNK: u64 = 1 << 20;
/// Smallest content-defined chunk of an opaque file, in bytes (the last one may be shorter).
pub const CDC_MIN: u32 = 64 * 1024;
/// Average content-defined chunk size FastCDC aims for, in bytes.
pub const CDC_AVG: u32 = 256 * 1024;
/// Largest content-defined chunk, in bytes.
pub const CDC_MAX: u32 = 1024 * 1024;

/// Fixed-size pieces `(offset, len)` of a run of `len` bytes starting at `start`.
pub fn fixed(start: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    let n = len.div_ceil(TENSOR_CHUNK);
    (0..n).map(move |i| {
        let off = i * TENSOR_CHUNK;
        (start + off, TENSOR_CHUNK.min(len - off))
    })
}

/// Content-defined chunks of a reader: yields `(offset, bytes)` in order.
pub fn cdc<R: std::io::Read>(
    reader: R,
) -> impl Iterator<Item = Result<(u64, Vec<u8>), std::io::Error>> {
    fastcdc::v2020::StreamCDC::new(reader, CDC_MIN as usize, CDC_AVG as usize, CDC_MAX as usize)
        .map(|r| match r {
            Ok(c) => Ok((c.offset, c.data)),
            Err(fastcdc::v2020::Error::IoError(e)) => Err(e),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_covers_exactly() {
        assert_eq!(fixed(10, 0).count(), 0);
        let v: Vec<_> = fixed(10, TENSOR_CHUNK * 2 + 3).collect();
        assert_eq!(
            v,
            vec![
                (10, TENSOR_CHUNK),
                (10 + TENSOR_CHUNK, TENSOR_CHUNK),
                (10 + 2 * TENSOR_CHUNK, 3)
            ]
        );
    }

    #[test]
    fn cdc_is_local() {
        let mut data = vec![0u8; 3 << 20];
        let mut x = 1u64;
        for b in data.iter_mut() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (x >> 56) as u8;
        }
        let a: Vec<_> = cdc(&data[..]).map(|r| r.unwrap()).collect();
        assert_eq!(a.iter().map(|(_, d)| d.len()).sum::<usize>(), data.len());
        let mut ins = data.clone();
        ins.splice(100..100, [1, 2, 3]);
        let b: Vec<_> = cdc(&ins[..]).map(|r| r.unwrap()).collect();
        let ids_a: std::collections::HashSet<_> = a.iter().map(|(_, d)| d.clone()).collect();
        let shared = b.iter().filter(|(_, d)| ids_a.contains(d)).count();
        assert!(
            shared + 2 >= a.len(),
            "{shared} of {} chunks survive",
            a.len()
        );
    }
}
