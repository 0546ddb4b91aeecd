//! Element types of tensors, as safetensors names them.
//!
//! Invariants: the string form of every variant is exactly the safetensors spelling, and
//! [`DType::bits`] is the storage width of one element. A tensor's byte length is
//! `numel * bits / 8`, which must be a whole number of bytes (checked with [`DType::byte_len`]).

#![warn(missing_docs)]

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An element type. The discriminants are part of the on-disk format (docs/format.md) and never
/// change; new types are appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum DType {
    /// Boolean, one byte per element.
    Bool = 0,
    /// Unsigned 8-bit integer.
    U8 = 1,
    /// Signed 8-bit integer.
    I8 = 2,
    /// 8-bit float, 5 exponent and 2 mantissa bits.
    F8E5M2 = 3,
    /// 8-bit float, 4 exponent and 3 mantissa bits (`float8_e4m3fn`).
    F8E4M3 = 4,
    /// Signed 16-bit integer.
    I16 = 5,
    /// Unsigned 16-bit integer.
    U16 = 6,
    /// IEEE 754 half precision.
    F16 = 7,
    /// bfloat16: the top half of an f32.
    BF16 = 8,
    /// Signed 32-bit integer.
    I32 = 9,
    /// Unsigned 32-bit integer.
    U32 = 10,
    /// IEEE 754 single precision.
    F32 = 11,
    /// IEEE 754 double precision.
    F64 = 12,
    /// Signed 64-bit integer.
    I64 = 13,
    /// Unsigned 64-bit integer.
    U64 = 14,
    /// 8-bit exponent-only scale (`float8_e8m0fnu`).
    F8E8M0 = 15,
    /// 4-bit float (E2M1), two elements per byte.
    F4 = 16,
    /// 6-bit float, 2 exponent and 3 mantissa bits.
    F6E2M3 = 17,
    /// 6-bit float, 3 exponent and 2 mantissa bits.
    F6E3M2 = 18,
    /// Complex number of two f32s (real, imaginary).
    C64 = 19,
    /// 8-bit float E4M3, finite, no negative zero (`float8_e4m3fnuz`).
    F8E4M3FNUZ = 20,
    /// 8-bit float E5M2, finite, no negative zero (`float8_e5m2fnuz`).
    F8E5M2FNUZ = 21,
}

/// The string did not name a known dtype.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown dtype {0:?}")]
#[non_exhaustive]
pub struct UnknownDType(pub String);

/// The element count times the element width does not fit, or is not a whole number of bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "shape {shape:?} of dtype {dtype} does not describe a whole number of bytes that fits in 64 bits"
)]
#[non_exhaustive]
pub struct BadShape {
    /// The dtype.
    pub dtype: DType,
    /// The shape, outermost dimension first.
    pub shape: Vec<u64>,
}

impl DType {
    /// Every dtype, in discriminant order.
    pub const ALL: [DType; 22] = [
        DType::Bool,
        DType::U8,
        DType::I8,
        DType::F8E5M2,
        DType::F8E4M3,
        DType::I16,
        DType::U16,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U32,
        DType::F32,
        DType::F64,
        DType::I64,
        DType::U64,
        DType::F8E8M0,
        DType::F4,
        DType::F6E2M3,
        DType::F6E3M2,
        DType::C64,
        DType::F8E4M3FNUZ,
        DType::F8E5M2FNUZ,
    ];

    /// The safetensors spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E4M3 => "F8_E4M3",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::U64 => "U64",
            DType::F8E8M0 => "F8_E8M0",
            DType::F4 => "F4",
            DType::F6E2M3 => "F6_E2M3",
            DType::F6E3M2 => "F6_E3M2",
            DType::C64 => "C64",
            DType::F8E4M3FNUZ => "F8_E4M3FNUZ",
            DType::F8E5M2FNUZ => "F8_E5M2FNUZ",
        }
    }

    /// Storage width of one element in bits.
    pub fn bits(self) -> u64 {
        match self {
            DType::F4 => 4,
            DType::F6E2M3 | DType::F6E3M2 => 6,
            DType::Bool
            | DType::U8
            | DType::I8
            | DType::F8E5M2
            | DType::F8E4M3
            | DType::F8E8M0
            | DType::F8E4M3FNUZ
            | DType::F8E5M2FNUZ => 8,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 16,
            DType::I32 | DType::U32 | DType::F32 => 32,
            DType::F64 | DType::I64 | DType::U64 | DType::C64 => 64,
        }
    }

    /// Width in whole bytes of one element, or `None` for sub-byte types.
    pub fn byte_width(self) -> Option<usize> {
        let bits = self.bits();
        bits.is_multiple_of(8).then_some((bits / 8) as usize)
    }

    /// IEEE-like floats whose bytes the float-aware codec may split into planes.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// The byte length of a tensor of this dtype and shape, with every multiplication checked.
    pub fn byte_len(self, shape: &[u64]) -> Result<u64, BadShape> {
        let bad = || BadShape {
            dtype: self,
            shape: shape.to_vec(),
        };
        let numel = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(bad)?;
        let bits = numel.checked_mul(self.bits()).ok_or_else(bad)?;
        if !bits.is_multiple_of(8) {
            return Err(bad());
        }
        Ok(bits / 8)
    }

    /// The on-disk discriminant.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The dtype of an on-disk discriminant.
    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.get(code as usize).copied()
    }

    /// numpy's `descr` for `.npy` output, or `None` where numpy has no such type.
    pub fn npy_descr(self) -> Option<&'static str> {
        Some(match self {
            DType::Bool => "|b1",
            DType::U8 => "|u1",
            DType::I8 => "|i1",
            DType::I16 => "<i2",
            DType::U16 => "<u2",
            DType::F16 => "<f2",
            DType::I32 => "<i4",
            DType::U32 => "<u4",
            DType::F32 => "<f4",
            DType::F64 => "<f8",
            DType::I64 => "<i8",
            DType::U64 => "<u8",
            DType::C64 => "<c8",
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DType {
    type Err = UnknownDType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL
            .iter()
            .copied()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDType(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for (i, d) in DType::ALL.iter().enumerate() {
            assert_eq!(d.code() as usize, i);
            assert_eq!(DType::from_code(d.code()), Some(*d));
            assert_eq!(d.as_str().parse::<DType>(), Ok(*d));
        }
        assert!(DType::from_code(200).is_none());
        assert!("F33".parse::<DType>().is_err());
    }

    #[test]
    fn byte_len_is_checked() {
        assert_eq!(DType::F32.byte_len(&[2, 3]), Ok(24));
        assert_eq!(DType::F32.byte_len(&[]), Ok(4));
        assert_eq!(DType::F32.byte_len(&[0, 7]), Ok(0));
        assert_eq!(DType::F4.byte_len(&[4]), Ok(2));
        assert!(DType::F4.byte_len(&[3]).is_err());
        assert!(DType::F64.byte_len(&[u64::MAX, 2]).is_err());
        assert!(DType::F64.byte_len(&[1 << 62]).is_err());
    }
}
