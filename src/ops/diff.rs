//! Comparing two commits file by file and tensor by tensor.
//!
//! Invariants: chunks with equal ids are never decoded twice to compare them (they are equal by
//! construction); numeric statistics are computed streaming, one window of chunks at a time, so
//! memory stays bounded whatever the tensor size.
#![warn(missing_docs)]

use crate::model::dtype::DType;
use crate::model::id::CommitId;
use crate::model::object::{FileEntry, Segment, Tree};
use crate::storage::error::Result;
use crate::storage::store::Store;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// How a file or tensor of B compares with A.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Only in B.
    Added,
    /// Only in A.
    Removed,
    /// In both, with different bytes.
    Changed,
    /// In both, byte-identical.
    Unchanged,
    /// gc released the file's data in one of the commits: nothing can be said.
    Unknown,
}

/// How one tensor differs.
#[derive(Clone, Debug, Serialize)]
pub struct TensorDiff {
    /// Tensor name.
    pub name: String,
    /// How it differs.
    pub status: Status,
    /// Element type in B (in A when removed).
    pub dtype: Option<String>,
    /// Shape in B (in A when removed).
    pub shape: Option<Vec<u64>>,
    /// Set when dtype or shape differ: `"F32 [2, 3] -> BF16 [2, 3]"`.
    pub layout_change: Option<String>,
    /// max |b - a| over elements.
    pub max_abs_delta: Option<f64>,
    /// ||b - a||_2 / ||a||_2 (0 when both are zero; infinite when only a is zero).
    pub rel_l2: Option<f64>,
    /// Fraction of elements whose bits differ.
    pub frac_changed: Option<f64>,
    /// Chunks of B not among A's chunks of the same tensor.
    pub chunks_changed: u64,
}

/// How one file differs.
#[derive(Clone, Debug, Serialize)]
pub struct FileDiff {
    /// Path in the commits.
    pub path: String,
    /// How it differs.
    pub status: Status,
    /// Size in A, bytes.
    pub size_a: Option<u64>,
    /// Size in B, bytes.
    pub size_b: Option<u64>,
    /// Per-tensor differences, for files with tensors.
    pub tensors: Vec<TensorDiff>,
}

/// `diff A B`.
#[derive(Clone, Debug, Serialize)]
pub struct DiffOutcome {
    /// Hex id of A.
    pub a: String,
    /// Hex id of B.
    pub b: String,
    /// Every path of either commit.
    pub files: Vec<FileDiff>,
}

fn tensors(f: &FileEntry) -> BTreeMap<&str, &Segment> {
    f.segments
        .iter()
        .filter_map(|s| s.tensor().map(|(n, _, _)| (n, s)))
        .collect()
}

/// Element values as f64, or None for dtypes without a numeric reading here.
fn to_f64(dtype: DType, b: &[u8]) -> Option<Vec<f64>> {
    let w = dtype.byte_width()?;
    let it = b.chunks_exact(w);
    Some(match dtype {
        DType::F32 => it
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")) as f64)
            .collect(),
        DType::F64 => it
            .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
            .collect(),
        DType::F16 => it
            .map(|c| half::f16::from_le_bytes(c.try_into().expect("2")).to_f64())
            .collect(),
        DType::BF16 => it
            .map(|c| half::bf16::from_le_bytes(c.try_into().expect("2")).to_f64())
            .collect(),
        DType::I8 => it.map(|c| c[0] as i8 as f64).collect(),
        DType::U8 | DType::Bool => it.map(|c| c[0] as f64).collect(),
        DType::I16 => it
            .map(|c| i16::from_le_bytes(c.try_into().expect("2")) as f64)
            .collect(),
        DType::U16 => it
            .map(|c| u16::from_le_bytes(c.try_into().expect("2")) as f64)
            .collect(),
        DType::I32 => it
            .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as f64)
            .collect(),
        DType::U32 => it
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")) as f64)
            .collect(),
        DType::I64 => it
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")) as f64)
            .collect(),
        DType::U64 => it
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")) as f64)
            .collect(),
        _ => return None,
    })
}

fn compare(store: &Store, name: &str, a: &Segment, b: &Segment) -> Result<TensorDiff> {
    let (_, da, sa) = a.tensor().expect("a tensor segment");
    let (_, db, sb) = b.tensor().expect("a tensor segment");
    let mut d = TensorDiff {
        name: name.to_string(),
        status: Status::Unchanged,
        dtype: Some(db.to_string()),
        shape: Some(sb.to_vec()),
        layout_change: None,
        max_abs_delta: None,
        rel_l2: None,
        frac_changed: None,
        chunks_changed: 0,
    };
    if da != db || sa != sb {
        d.status = Status::Changed;
        d.layout_change = Some(format!("{da} {sa:?} -> {db} {sb:?}"));
        return Ok(d);
    }
    if a.chunks == b.chunks {
        d.max_abs_delta = Some(0.0);
        d.rel_l2 = Some(0.0);
        d.frac_changed = Some(0.0);
        return Ok(d);
    }
    d.status = Status::Changed;
    // In a lazy clone, tensors whose data is still on the remote are compared by chunk ids
    // only: which chunks changed, without the value statistics (which would fetch them).
    if store.chunk_source().is_some() {
        let mut remote_only = false;
        for c in a.chunks.iter().chain(&b.chunks) {
            if store.chunk_loc(c.id)?.is_none() {
                remote_only = true;
                break;
            }
        }
        if remote_only {
            d.chunks_changed = a
                .chunks
                .iter()
                .zip(&b.chunks)
                .filter(|(x, y)| x.id != y.id)
                .count() as u64;
            return Ok(d);
        }
    }
    let width = da.byte_width();
    let mut max_abs = 0f64;
    let mut sum_d2 = 0f64;
    let mut sum_a2 = 0f64;
    let mut changed = 0u64;
    let mut elements = 0u64;
    let mut numeric = width.is_some();
    for (ca, cb) in a.chunks.iter().zip(&b.chunks) {
        let ra = store.read_chunk(ca.id)?;
        if ca.id == cb.id {
            if let Some(v) = to_f64(da, &ra) {
                sum_a2 += v.iter().map(|x| x * x).sum::<f64>();
            }
            if let Some(w) = width {
                elements += (ra.len() / w) as u64;
            }
            continue;
        }
        d.chunks_changed += 1;
        let rb = store.read_chunk(cb.id)?;
        if let Some(w) = width {
            for (ea, eb) in ra.chunks_exact(w).zip(rb.chunks_exact(w)) {
                elements += 1;
                if ea != eb {
                    changed += 1;
                }
            }
        }
        match (to_f64(da, &ra), to_f64(da, &rb)) {
            (Some(va), Some(vb)) => {
                for (x, y) in va.iter().zip(&vb) {
                    let delta = (y - x).abs();
                    if delta > max_abs || delta.is_nan() {
                        max_abs = if delta.is_nan() {
                            f64::NAN
                        } else {
                            delta.max(max_abs)
                        };
                    }
                    sum_d2 += (y - x) * (y - x);
                    sum_a2 += x * x;
                }
            }
            _ => numeric = false,
        }
    }
    if numeric {
        d.max_abs_delta = Some(max_abs);
        d.rel_l2 = Some(if sum_a2 == 0.0 {
            if sum_d2 == 0.0 { 0.0 } else { f64::INFINITY }
        } else {
            (sum_d2 / sum_a2).sqrt()
        });
    }
    if width.is_some() && elements > 0 {
        d.frac_changed = Some(changed as f64 / elements as f64);
    }
    Ok(d)
}

fn file_diff(
    store: &Store,
    path: &str,
    a: Option<&FileEntry>,
    b: Option<&FileEntry>,
) -> Result<FileDiff> {
    let status = match (a, b) {
        (None, Some(_)) => Status::Added,
        (Some(_), None) => Status::Removed,
        (Some(x), Some(y)) if x.sha256 == y.sha256 && x.size == y.size => Status::Unchanged,
        _ => Status::Changed,
    };
    let mut out = FileDiff {
        path: path.to_string(),
        status,
        size_a: a.map(|f| f.size),
        size_b: b.map(|f| f.size),
        tensors: Vec::new(),
    };
    if status == Status::Unchanged {
        return Ok(out);
    }
    let ta = a.map(tensors).unwrap_or_default();
    let tb = b.map(tensors).unwrap_or_default();
    let names: BTreeSet<&str> = ta.keys().chain(tb.keys()).copied().collect();
    for name in names {
        let td = match (ta.get(name), tb.get(name)) {
            (Some(x), Some(y)) => compare(store, name, x, y)?,
            (x, y) => {
                let s = x.or(y).expect("name came from one side");
                let (_, dt, sh) = s.tensor().expect("a tensor segment");
                TensorDiff {
                    name: name.to_string(),
                    status: if x.is_some() {
                        Status::Removed
                    } else {
                        Status::Added
                    },
                    dtype: Some(dt.to_string()),
                    shape: Some(sh.to_vec()),
                    layout_change: None,
                    max_abs_delta: None,
                    rel_l2: None,
                    frac_changed: None,
                    chunks_changed: 0,
                }
            }
        };
        out.tensors.push(td);
    }
    Ok(out)
}

/// Compare two trees; paths in `released` (data released by gc in either commit) are
/// reported as unknown.
pub fn diff_trees(
    store: &Store,
    a: &Tree,
    b: &Tree,
    released: &BTreeSet<String>,
) -> Result<Vec<FileDiff>> {
    let paths: BTreeSet<&String> = a.files.keys().chain(b.files.keys()).collect();
    paths
        .into_iter()
        .map(|p| {
            if released.contains(p) {
                return Ok(FileDiff {
                    path: p.clone(),
                    status: Status::Unknown,
                    size_a: a.files.get(p).map(|f| f.size),
                    size_b: b.files.get(p).map(|f| f.size),
                    tensors: Vec::new(),
                });
            }
            file_diff(store, p, a.files.get(p), b.files.get(p))
        })
        .collect()
}

/// Compare two commits.
pub fn diff(store: &Store, a: CommitId, b: CommitId) -> Result<DiffOutcome> {
    let _reading = store.read_guard();
    let ta = store.tree(store.commit(a)?.tree)?;
    let tb = store.tree(store.commit(b)?.tree)?;
    let released: BTreeSet<String> = crate::storage::state::released_files(store, a)?
        .into_iter()
        .chain(crate::storage::state::released_files(store, b)?)
        .collect();
    Ok(DiffOutcome {
        a: a.to_hex(),
        b: b.to_hex(),
        files: diff_trees(store, &ta, &tb, &released)?,
    })
}
