//! Writing a header exactly as the reference `safetensors` package does.
//!
//! Invariants: [`serialize_header`] accepts only what [`super::parse`] accepts back (valid,
//! unique names, whole-byte tensors, a header of at most [`MAX_HEADER_LEN`] bytes), and lays the
//! tensors out contiguously in the order given, so its output followed by the tensors' bytes is
//! a valid file.

#![warn(missing_docs)]

use super::{
    MAX_HEADER_LEN, METADATA_KEY, Result, SafetensorsError, TensorInfo, check_name, tensor_bytes,
};
use crate::model::dtype::DType;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};

/// Where the reference package ranks a dtype; it writes tensors by decreasing rank, then by name.
/// This is the declaration order of its `Dtype` enum, which it keeps in increasing alignment.
pub(super) fn upstream_rank(dtype: DType) -> u8 {
    match dtype {
        DType::Bool => 0,
        DType::F4 => 1,
        DType::F6E2M3 => 2,
        DType::F6E3M2 => 3,
        DType::U8 => 4,
        DType::I8 => 5,
        DType::F8E5M2 => 6,
        DType::F8E4M3 => 7,
        DType::F8E8M0 => 8,
        DType::F8E4M3FNUZ => 9,
        DType::F8E5M2FNUZ => 10,
        DType::I16 => 11,
        DType::U16 => 12,
        DType::F16 => 13,
        DType::BF16 => 14,
        DType::I32 => 15,
        DType::U32 => 16,
        DType::F32 => 17,
        DType::C64 => 18,
        DType::F64 => 19,
        DType::I64 => 20,
        DType::U64 => 21,
    }
}

/// Sort tensors into the order in which the reference package lays them out: by decreasing dtype
/// alignment (its enum order, which keeps every tensor aligned to its element size), then by name.
pub fn sort_like_upstream(tensors: &mut [(String, DType, Vec<u64>)]) {
    tensors.sort_by(|(ln, ld, _), (rn, rd, _)| {
        upstream_rank(*rd)
            .cmp(&upstream_rank(*ld))
            .then_with(|| ln.cmp(rn))
    });
}

/// The header as serde writes it: `__metadata__` first, then the tensors in order.
struct JsonHeader<'a> {
    metadata: Option<&'a BTreeMap<String, String>>,
    tensors: &'a [TensorInfo],
}

/// One tensor entry as serde writes it.
struct JsonEntry<'a>(&'a TensorInfo);

impl Serialize for JsonHeader<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(metadata) = self.metadata {
            map.serialize_entry(METADATA_KEY, metadata)?;
        }
        for t in self.tensors {
            map.serialize_entry(&t.name, &JsonEntry(t))?;
        }
        map.end()
    }
}

impl Serialize for JsonEntry<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("TensorInfo", 3)?;
        st.serialize_field("dtype", self.0.dtype.as_str())?;
        st.serialize_field("shape", &self.0.shape)?;
        st.serialize_field("data_offsets", &[self.0.begin, self.0.end])?;
        st.end()
    }
}

/// Lay out `tensors` contiguously in the order given and return the file prefix: the 8-byte
/// little-endian header length followed by the padded JSON header. Followed by the tensors' bytes
/// in the same order, it makes the file the reference package writes for the same tensors, when
/// they are given in [`sort_like_upstream`] order.
pub fn serialize_header(
    tensors: &[(String, DType, Vec<u64>)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut seen = BTreeSet::new();
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for (name, dtype, shape) in tensors {
        if name == METADATA_KEY {
            return Err(SafetensorsError::ReservedName);
        }
        check_name(name)?;
        if !seen.insert(name.as_str()) {
            return Err(SafetensorsError::DuplicateName { name: name.clone() });
        }
        let len = tensor_bytes(name, *dtype, shape)?;
        let end = offset
            .checked_add(len)
            .ok_or(SafetensorsError::DataTooLarge)?;
        infos.push(TensorInfo {
            name: name.clone(),
            dtype: *dtype,
            shape: shape.clone(),
            begin: offset,
            end,
        });
        offset = end;
    }
    let json = serde_json::to_vec(&JsonHeader {
        metadata,
        tensors: &infos,
    })
    .map_err(|e| SafetensorsError::Json {
        message: e.to_string(),
    })?;
    let padded = json.len().next_multiple_of(8);
    let n = u64::try_from(padded).unwrap_or(u64::MAX);
    if n > MAX_HEADER_LEN {
        return Err(SafetensorsError::HeaderTooLarge { len: n });
    }
    let mut out = Vec::with_capacity(padded.saturating_add(8));
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&json);
    out.resize(padded.saturating_add(8), b' ');
    Ok(out)
}
