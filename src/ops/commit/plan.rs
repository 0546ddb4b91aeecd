//! Step 1 of the write path, planning: which files the commit holds, and how each is cut into
//! segments (a safetensors header and its tensors, a torch zip archive's storages, or one
//! opaque run of bytes).
//!
//! Invariant: every `*.safetensors` header is parsed strictly here, before any byte is written;
//! a header that does not parse fails the commit. A torch archive that does not parse is stored
//! opaque instead, with the reason recorded ([`Plan::Fallback`]).

#![warn(missing_docs)]

use super::error::{CommitError, Result, io_at};
use super::input::{Data, Input};
use crate::formats::safetensors;
use crate::formats::torchzip::{self, SegmentRange, TorchZip};
use crate::model::dtype::DType;
use crate::model::object::{FileEntry, FileFormat, Segment, SegmentKind};
use std::collections::HashSet;
use std::os::unix::fs::FileExt;

/// How a file is cut.
pub(super) enum Plan {
    /// Segment kinds and their `[start, end)` ranges, covering the file.
    Structured(FileFormat, Vec<(SegmentKind, u64, u64)>),
    /// One raw segment, content-defined chunks.
    Opaque,
    /// A file that looked like a torch.save archive but could not be read as one: stored
    /// opaque, with the reason recorded (`show --json` reports it).
    Fallback(String),
}

/// An input with its size, modification time and plan.
pub(super) struct PlannedFile<'a> {
    /// The input.
    pub(super) input: Input<'a>,
    /// Its size in bytes when planned; reading checks it did not change.
    pub(super) size: u64,
    /// Its modification time when planned (files on disk).
    pub(super) mtime: Option<std::time::SystemTime>,
    /// How it is cut.
    pub(super) plan: Plan,
}

impl PlannedFile<'_> {
    /// The file's tree entry before any chunk is read: its segments with no chunks yet, and no
    /// SHA-256.
    pub(super) fn empty_entry(&self) -> FileEntry {
        FileEntry {
            size: self.size,
            sha256: [0; 32],
            executable: self.input.executable,
            format: match &self.plan {
                Plan::Structured(f, _) => f.clone(),
                Plan::Opaque => FileFormat::Opaque,
                Plan::Fallback(reason) => FileFormat::Fallback(reason.clone()),
            },
            segments: match &self.plan {
                Plan::Structured(_, segs) => segs
                    .iter()
                    .map(|(k, _, _)| Segment {
                        kind: k.clone(),
                        chunks: Vec::new(),
                    })
                    .collect(),
                Plan::Opaque | Plan::Fallback(_) => vec![Segment {
                    kind: SegmentKind::Raw,
                    chunks: Vec::new(),
                }],
            },
        }
    }
}

/// Sort the inputs by path and refuse a path added twice, or one that is both a file and a
/// directory.
pub(super) fn check_paths(inputs: &mut [Input]) -> Result<()> {
    inputs.sort_by(|a, b| a.rel.cmp(&b.rel));
    for w in inputs.windows(2) {
        if w[0].rel == w[1].rel {
            return Err(CommitError::AddedTwice {
                path: w[0].rel.clone(),
            });
        }
    }
    let file_names: HashSet<&str> = inputs.iter().map(|i| i.rel.as_str()).collect();
    for i in inputs.iter() {
        let mut p = i.rel.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if file_names.contains(parent) {
                return Err(CommitError::FileAndDirectory {
                    path: i.rel.clone(),
                    parent: parent.to_string(),
                });
            }
            p = parent;
        }
    }
    Ok(())
}

/// The `--opaque` globs as one matcher.
pub(super) fn build_globs(globs: &[String]) -> Result<globset::GlobSet> {
    let mut b = globset::GlobSetBuilder::new();
    for g in globs {
        b.add(
            globset::Glob::new(g).map_err(|source| CommitError::BadGlob {
                glob: g.clone(),
                source,
            })?,
        );
    }
    b.build().map_err(|source| CommitError::BadGlobs { source })
}

/// Plan one input: safetensors by name (unless `opaque` matches), torch zip by name and
/// signature, anything else opaque.
pub(super) fn plan_file<'a>(
    input: Input<'a>,
    opaque: &globset::GlobSet,
) -> Result<PlannedFile<'a>> {
    let (size, mtime) = match &input.data {
        Data::Disk(p) => {
            let m = std::fs::metadata(p).map_err(io_at(p))?;
            (m.len(), m.modified().ok())
        }
        Data::Memory(_) | Data::Pieces(_) => (input.data.memory_len().unwrap_or(0), None),
    };
    let name = input.rel.rsplit('/').next().unwrap_or(&input.rel);
    let is_opaque = opaque.is_match(&input.rel) || opaque.is_match(name);
    let plan = if !is_opaque && input.rel.ends_with(".safetensors") {
        Plan::Structured(FileFormat::Safetensors, plan_safetensors(&input, size)?)
    } else if !is_opaque && looks_like_torch(&input, size)? {
        match plan_torch_zip(&input, size) {
            Ok(segs) => Plan::Structured(FileFormat::TorchZip, segs),
            Err(reason) => Plan::Fallback(reason),
        }
    } else {
        Plan::Opaque
    };
    Ok(PlannedFile {
        input,
        size,
        mtime,
        plan,
    })
}

/// The header segment and one segment per tensor of a safetensors file, its header parsed
/// strictly.
fn plan_safetensors(input: &Input, size: u64) -> Result<Vec<(SegmentKind, u64, u64)>> {
    let file = input.open()?;
    let st_err = |source| CommitError::Safetensors {
        path: input.rel.clone(),
        source,
    };
    let prefix = input.read_at(file.as_ref(), 0, size.min(8))?;
    let n = safetensors::header_len(&prefix, size).map_err(st_err)?;
    let json = input.read_at(file.as_ref(), 8, n)?;
    let header = safetensors::parse_header(&json, size).map_err(st_err)?;
    let start = header.data_start();
    let mut segs = vec![(SegmentKind::Raw, 0, start)];
    for t in header.tensors {
        segs.push((
            SegmentKind::Tensor {
                name: t.name,
                dtype: t.dtype,
                shape: t.shape,
            },
            start + t.begin,
            start + t.end,
        ));
    }
    Ok(segs)
}

/// Torch checkpoints by name (`.pt`, `.pth`, `.bin`, `.ckpt`, `.jit`, `.tar`) that start
/// with a zip local-file signature.
fn looks_like_torch(input: &Input, size: u64) -> Result<bool> {
    let name = input.rel.rsplit('/').next().unwrap_or(&input.rel);
    let ext_ok = [".pt", ".pth", ".bin", ".ckpt", ".jit", ".tar"]
        .iter()
        .any(|e| name.ends_with(e));
    if !ext_ok || size < 4 {
        return Ok(false);
    }
    let file = input.open()?;
    Ok(input.read_at(file.as_ref(), 0, 4)? == b"PK\x03\x04")
}

/// Storage-aligned segments of a torch zip archive, or why it cannot be read as one.
fn plan_torch_zip(
    input: &Input,
    size: u64,
) -> std::result::Result<Vec<(SegmentKind, u64, u64)>, String> {
    let file = match &input.data {
        Data::Disk(p) => Some(std::fs::File::open(p).map_err(|e| e.to_string())?),
        Data::Memory(_) | Data::Pieces(_) => None,
    };
    let mut reader = |off: u64, buf: &mut [u8]| -> std::io::Result<()> {
        match (&input.data, &file) {
            (Data::Disk(_), Some(f)) => f.read_exact_at(buf, off),
            (Data::Memory(_) | Data::Pieces(_), _) => {
                if input.data.read_memory(off, buf) {
                    Ok(())
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                }
            }
            (Data::Disk(_), None) => Err(std::io::Error::other("file not open")),
        }
    };
    let z = torchzip::parse(size, &mut reader).map_err(|e| e.to_string())?;
    let segs: Vec<_> = torchzip::segments(&z, size)
        .into_iter()
        .map(|r| match r {
            SegmentRange::Raw { start, end } => (SegmentKind::Raw, start, end),
            SegmentRange::Storage { start, end, index } => storage_segment(&z, index, start, end),
        })
        .collect();
    let covered: u64 = segs.iter().map(|(_, a, b)| b - a).sum();
    if covered != size {
        return Err(format!("segments cover {covered} of {size} bytes"));
    }
    Ok(segs)
}

/// The segment of storage `index` of archive `z`, at `[start, end)`.
fn storage_segment(z: &TorchZip, index: usize, start: u64, end: u64) -> (SegmentKind, u64, u64) {
    let st = &z.storages[index];
    let len = end - start;
    // A storage is a flat run of elements; its dtype drives the codec. Unknown
    // dtypes (untyped or unreferenced storages) are recorded as bytes.
    let (dtype, shape) = match st.dtype {
        Some(d) if d.byte_width().is_some_and(|w| len.is_multiple_of(w as u64)) => {
            (d, vec![len / d.byte_width().expect("checked") as u64])
        }
        _ => (DType::U8, vec![len]),
    };
    (
        SegmentKind::Tensor {
            name: st.entry.clone(),
            dtype,
            shape,
        },
        start,
        end,
    )
}
