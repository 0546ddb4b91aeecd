//! Writing one tensor as a `.npy` or `.safetensors` file.
//!
//! Invariants: output goes to a temporary file in the target's directory, is fsynced and renamed
//! over the target, then the directory is fsynced: an existing file (possibly mapped by another
//! program) is never truncated in place, and a crash leaves the old file or the new one.

#![warn(missing_docs)]

use crate::formats::safetensors::{self, SafetensorsError};
use crate::model::dtype::DType;
use std::path::PathBuf;

/// Why a tensor cannot be written out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// numpy has no equivalent of the tensor's dtype.
    #[error(
        "numpy has no dtype {dtype}; write the tensor as .safetensors instead (-o out.safetensors)"
    )]
    NoNpyDtype {
        /// The tensor's dtype.
        dtype: DType,
    },
    /// The shape does not fit the 64 KiB `.npy` header.
    #[error("tensor shape too long for an .npy header")]
    ShapeTooLong,
    /// An output path that ends in neither `.npy` nor `.safetensors`.
    #[error("{}: output must end in .npy or .safetensors", path.display())]
    UnknownFormat {
        /// The path given.
        path: PathBuf,
    },
    /// An output path with no file name.
    #[error("{}: not a file path", path.display())]
    NotAFilePath {
        /// The path given.
        path: PathBuf,
    },
    /// The safetensors header could not be written for this tensor.
    #[error("{name}: not a valid safetensors file: {source}")]
    Safetensors {
        /// The tensor's name.
        name: String,
        /// What the header writer refused.
        #[source]
        source: SafetensorsError,
    },
    /// Writing the output failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The output file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = ExportError> = std::result::Result<T, E>;

use std::path::Path;

/// The `.npy` (format 1.0) header for a C-order array.
pub fn npy_header(dtype: DType, shape: &[u64]) -> Result<Vec<u8>> {
    let descr = dtype.npy_descr().ok_or(ExportError::NoNpyDtype { dtype })?;
    let shape_txt = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // magic(6) + version(2) + len(2) + dict + padding + '\n', a multiple of 64 bytes.
    let unpadded = 10 + dict.len() + 1;
    let total = unpadded.div_ceil(64) * 64;
    let header_len = u16::try_from(total - 10).map_err(|_| ExportError::ShapeTooLong)?;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    Ok(out)
}

/// Which format a path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorFormat {
    /// numpy's `.npy`, format 1.0.
    Npy,
    /// A one-tensor safetensors file.
    Safetensors,
}

impl TensorFormat {
    /// The format a path's extension names.
    pub fn from_path(p: &Path) -> Result<TensorFormat> {
        match p.extension().and_then(|e| e.to_str()) {
            Some("npy") => Ok(TensorFormat::Npy),
            Some("safetensors") => Ok(TensorFormat::Safetensors),
            _ => Err(ExportError::UnknownFormat {
                path: p.to_path_buf(),
            }),
        }
    }
}

/// The bytes that precede a tensor's data in the chosen format.
pub fn tensor_prefix(
    format: TensorFormat,
    name: &str,
    dtype: DType,
    shape: &[u64],
) -> Result<Vec<u8>> {
    match format {
        TensorFormat::Npy => npy_header(dtype, shape),
        TensorFormat::Safetensors => {
            safetensors::serialize_header(&[(name.to_string(), dtype, shape.to_vec())], None)
                .map_err(|source| ExportError::Safetensors {
                    name: name.to_string(),
                    source,
                })
        }
    }
}

/// Write `parts` to `path` atomically (temp file, fsync, rename, directory fsync). The temp
/// file's name is unpredictable and created exclusively (`O_EXCL`), so nothing planted in the
/// directory is followed or overwritten.
pub fn write_file_atomic(path: &Path, parts: &[&[u8]]) -> Result<()> {
    if path.file_name().is_none() {
        return Err(ExportError::NotAFilePath {
            path: path.to_path_buf(),
        });
    }
    crate::storage::fsutil::write_atomic_parts(path, parts).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers() {
        let h = npy_header(DType::F32, &[2, 3]).unwrap();
        assert_eq!(h.len() % 64, 0);
        let text = String::from_utf8_lossy(&h[10..]);
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(text.ends_with('\n'));
        assert!(String::from_utf8_lossy(&npy_header(DType::I64, &[]).unwrap()).contains("()"));
        assert!(String::from_utf8_lossy(&npy_header(DType::U8, &[5]).unwrap()).contains("(5,)"));
        let e = npy_header(DType::BF16, &[1]).unwrap_err().to_string();
        assert!(e.contains("safetensors"), "{e}");
    }

    /// Regression: the temp file's name was `.NAME.cairn-tmp-PID` and opened with
    /// truncation, so a symlink planted at that name made `tensor -o` and `checkout --meta`
    /// overwrite the link's target. Now the name is unpredictable and created exclusively.
    #[test]
    fn a_symlink_at_the_old_temp_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let out = dir.path().join("w.npy");
        let planted = dir
            .path()
            .join(format!(".w.npy.cairn-tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_file_atomic(&out, &[b"new", b" bytes"]).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&out).unwrap(), b"new bytes");
        // No temp file is left behind; the planted link is untouched.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
    }
}
