//! A strict reader and writer of safetensors headers.
//!
//! The format: an 8-byte little-endian header length `N`, then `N` bytes of UTF-8 JSON (the
//! header), then the data buffer. The header is one JSON object mapping each tensor name to
//! `{"dtype", "shape", "data_offsets"}`, plus an optional `__metadata__` string-to-string map.
//! `data_offsets` are `[begin, end)` relative to the start of the data buffer.
//!
//! Every file comes from outside, so [`parse`] trusts nothing in it. A header is accepted only if:
//! - `8 <= file length`, `0 < N <= MAX_HEADER_LEN` and `8 + N <= file length`;
//! - the header is UTF-8, starts with `{`, and only spaces follow the closing `}`;
//! - no JSON object in it repeats a key (at the top level, in `__metadata__`, in an entry): a
//!   repeated tensor name could otherwise smuggle a second definition past a reader that keeps the
//!   first one while another keeps the last;
//! - `__metadata__`, when present, is an object whose values are all strings;
//! - each entry has exactly the fields `dtype`, `shape`, `data_offsets`: a known dtype, a shape of
//!   non-negative integers that fit in 64 bits, and two offsets with `begin <= end` whose distance
//!   is exactly the tensor's byte length (computed with checked arithmetic);
//! - the ranges, sorted by offset, tile the data buffer exactly: they start at 0, leave no gap, do
//!   not overlap (so no two tensors alias the same bytes), and the last one ends at the end of
//!   the file, so nothing is appended after the tensors and nothing is cut off;
//! - no tensor name is empty or contains NUL.
//!
//! Tensor names are opaque keys. cairn never turns a name into a file-system path, so names such
//! as `../../etc/passwd` or `/abs` are stored and returned verbatim and are harmless here; NUL is
//! rejected only because C-string based tools truncate at it, so two distinct names could print
//! and compare as one.
//!
//! Allocation is bounded by the input: the header must fit inside the file before any of it is
//! read, it is at most [`MAX_HEADER_LEN`] bytes, and every vector built while parsing grows one
//! element per element present in the JSON (no length read from the input is trusted as a
//! capacity).
//!
//! Where the reference `safetensors` package (0.8) is more lenient, cairn rejects: the package
//! accepts whitespace before `{` and tabs or newlines after `}`, unknown fields in an entry,
//! `"__metadata__": null`, a tensor name repeated at the top level and a key repeated inside
//! `__metadata__` (the last definition silently wins), and empty names or names with NUL. It
//! rejects every other case above, as cairn does. Both know the same dtypes, including
//! `F8_E4M3FNUZ` and `F8_E5M2FNUZ`.
//!
//! [`serialize_header`] writes a header exactly as that package does for the same tensors laid out
//! in the same order: `__metadata__` first, then the tensors in data order, each as
//! `{"dtype":..,"shape":[..],"data_offsets":[b,e]}`, compact JSON with serde_json's escaping, the
//! whole padded with spaces to a multiple of 8 bytes. The package orders tensors by decreasing
//! dtype (see [`sort_like_upstream`]) and then by name; its `__metadata__` keys come in hash-map
//! order, which varies from run to run, while cairn writes them sorted, one of the orders the
//! package can produce.
//!
//! The JSON is read in `json` (serde visitors that see every repeated key) and written in `write`.

#![warn(missing_docs)]

use crate::model::dtype::DType;
use std::collections::BTreeMap;

mod json;
#[cfg(test)]
mod tests;
mod write;

pub use write::{serialize_header, sort_like_upstream};

/// The largest header accepted, in bytes; the reference implementation uses the same limit.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Width of the little-endian header length that opens every file.
const PREFIX_LEN: u64 = 8;

/// The key under which the header keeps its free-form string metadata.
pub const METADATA_KEY: &str = "__metadata__";

/// One tensor as the header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name: the key of its header entry (non-empty, no NUL).
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its dimensions, outermost first (empty for a scalar).
    pub shape: Vec<u64>,
    /// Start of the tensor's bytes, relative to the start of the data buffer.
    pub begin: u64,
    /// End (exclusive) of the tensor's bytes, relative to the start of the data buffer.
    pub end: u64,
}

impl TensorInfo {
    /// The byte length of the tensor, `end - begin` (0 if the fields were set inconsistently).
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.begin)
    }

    /// Whether the tensor has no bytes (a shape with a 0 in it).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A validated header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// `N`: the length of the JSON, padding included.
    pub header_len: u64,
    /// Sorted by `(begin, end)`; zero-length tensors that share an offset keep the order in which
    /// the JSON lists them, so a file written by the reference package can be rewritten exactly.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` map, when the header has one.
    pub metadata: Option<BTreeMap<String, String>>,
}

impl Header {
    /// Offset in the file of the first data byte: `8 + N`.
    pub fn data_start(&self) -> u64 {
        // A parsed header has N <= MAX_HEADER_LEN; saturating only matters for hand-built values.
        self.header_len.saturating_add(PREFIX_LEN)
    }

    /// Length of the data buffer: the end of the last tensor (0 when there are none).
    pub fn data_len(&self) -> u64 {
        self.tensors.last().map_or(0, |t| t.end)
    }
}

/// Why a safetensors file or a header to write was rejected. Messages name the broken rule; the
/// caller prefixes the file name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SafetensorsError {
    /// The file is shorter than the 8-byte header length.
    #[error("file is {len} bytes long, shorter than the 8-byte header length that must open it")]
    FileTooShort {
        /// The file's length in bytes.
        len: u64,
    },

    /// The header length `N` is 0.
    #[error("header length is 0; the header must be a JSON object of at least 2 bytes (`{{}}`)")]
    HeaderLenZero,

    /// `N` exceeds [`MAX_HEADER_LEN`].
    #[error("header length {len} exceeds the limit of {MAX_HEADER_LEN} bytes")]
    HeaderTooLarge {
        /// `N`, in bytes.
        len: u64,
    },

    /// The header runs past the end of the file.
    #[error(
        "header length {header_len} runs past the end of the file: 8 + {header_len} > {file_len} bytes"
    )]
    HeaderPastEnd {
        /// `N`, in bytes.
        header_len: u64,
        /// The file's length in bytes.
        file_len: u64,
    },

    /// The header is not UTF-8.
    #[error("header is not valid UTF-8: invalid byte sequence at header offset {valid_up_to}")]
    HeaderNotUtf8 {
        /// Length of the valid UTF-8 prefix, in bytes.
        valid_up_to: u64,
    },

    /// The header does not start with `{`.
    #[error("header must start with `{{`, but its first byte is {found:#04x}")]
    HeaderStart {
        /// Its first byte.
        found: u8,
    },

    /// A byte other than a space follows the closing `}`.
    #[error(
        "header padding byte at header offset {offset} is {found:#04x}; only spaces (0x20) may follow the closing `}}`"
    )]
    BadPadding {
        /// Offset of that byte in the header.
        offset: u64,
        /// The byte.
        found: u8,
    },

    /// A second JSON value follows the header object.
    #[error(
        "header has non-space bytes after its top-level JSON object; only spaces may follow the closing `}}`"
    )]
    TrailingData,

    /// The header is not valid JSON (or, when writing, serde_json failed).
    #[error("header is not valid JSON: {message}")]
    Json {
        /// serde_json's message.
        message: String,
    },

    /// `__metadata__` is not an object of strings.
    #[error("`__metadata__` must be an object mapping strings to strings: {reason}")]
    BadMetadata {
        /// What serde_json found instead.
        reason: String,
    },

    /// A top-level key (tensor name or `__metadata__`) appears twice; when writing, a tensor
    /// name is given twice.
    #[error("key {name:?} appears more than once at the top level of the header")]
    DuplicateName {
        /// The repeated key.
        name: String,
    },

    /// A key appears twice in `__metadata__`.
    #[error("key {key:?} appears more than once in `__metadata__`")]
    DuplicateMetadataKey {
        /// The repeated key.
        key: String,
    },

    /// A field appears twice in a tensor entry.
    #[error("tensor {tensor:?}: field `{field}` appears more than once")]
    DuplicateField {
        /// The tensor's name.
        tensor: String,
        /// The repeated field.
        field: String,
    },

    /// A tensor entry has a field other than `dtype`, `shape`, `data_offsets`.
    #[error(
        "tensor {tensor:?}: unknown field {field:?}; an entry has exactly `dtype`, `shape` and `data_offsets`"
    )]
    UnknownField {
        /// The tensor's name.
        tensor: String,
        /// The unknown field.
        field: String,
    },

    /// A tensor entry lacks a field.
    #[error("tensor {tensor:?}: missing field `{field}`")]
    MissingField {
        /// The tensor's name.
        tensor: String,
        /// The missing field.
        field: &'static str,
    },

    /// A tensor entry is not a JSON object.
    #[error(
        "tensor {tensor:?}: entry must be an object with `dtype`, `shape` and `data_offsets`: {reason}"
    )]
    EntryNotObject {
        /// The tensor's name.
        tensor: String,
        /// What serde_json found instead.
        reason: String,
    },

    /// A tensor's dtype is not one cairn knows.
    #[error("tensor {tensor:?}: unknown dtype {found}")]
    UnknownDType {
        /// The tensor's name.
        tensor: String,
        /// The dtype as written (quoted), or serde_json's message in parentheses.
        found: String,
    },

    /// A tensor's shape is not an array of non-negative 64-bit integers.
    #[error(
        "tensor {tensor:?}: `shape` must be an array of non-negative integers that fit in 64 bits: {reason}"
    )]
    BadShape {
        /// The tensor's name.
        tensor: String,
        /// serde_json's message.
        reason: String,
    },

    /// A tensor's `data_offsets` are not two non-negative 64-bit integers.
    #[error(
        "tensor {tensor:?}: `data_offsets` must be exactly two non-negative integers that fit in 64 bits: {reason}"
    )]
    BadOffsets {
        /// The tensor's name.
        tensor: String,
        /// serde_json's message.
        reason: String,
    },

    /// A tensor's `data_offsets` begin after they end.
    #[error("tensor {tensor:?}: `data_offsets` [{begin}, {end}] are inverted (begin > end)")]
    InvertedOffsets {
        /// The tensor's name.
        tensor: String,
        /// The first offset.
        begin: u64,
        /// The second offset.
        end: u64,
    },

    /// A tensor's byte length overflows 64 bits.
    #[error(
        "tensor {tensor:?}: shape {shape:?} of dtype {dtype} has a byte length that overflows 64 bits"
    )]
    ShapeOverflow {
        /// The tensor's name.
        tensor: String,
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<u64>,
    },

    /// A tensor of a sub-byte dtype does not fill a whole number of bytes.
    #[error(
        "tensor {tensor:?}: shape {shape:?} of dtype {dtype} does not fill a whole number of bytes"
    )]
    PartialByte {
        /// The tensor's name.
        tensor: String,
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<u64>,
    },

    /// A tensor's `data_offsets` do not span its dtype and shape's byte length.
    #[error(
        "tensor {tensor:?}: `data_offsets` span {actual} bytes, but dtype {dtype} and shape {shape:?} need {expected}"
    )]
    SizeMismatch {
        /// The tensor's name.
        tensor: String,
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<u64>,
        /// Bytes its dtype and shape need.
        expected: u64,
        /// Bytes its offsets span.
        actual: u64,
    },

    /// Bytes of the data buffer before a tensor belong to no tensor.
    #[error(
        "tensor {tensor:?}: data starts at {begin}, leaving bytes {expected}..{begin} of the data buffer unused (a gap)"
    )]
    Gap {
        /// The tensor after the gap.
        tensor: String,
        /// Where the gap starts (the previous tensor's end), relative to the data buffer.
        expected: u64,
        /// Where the tensor starts.
        begin: u64,
    },

    /// Two tensors share bytes.
    #[error(
        "tensor {tensor:?}: data [{begin}, {end}) overlaps tensor {previous:?}, which ends at {previous_end} (aliased bytes)"
    )]
    Overlap {
        /// The later tensor's name.
        tensor: String,
        /// Its first offset.
        begin: u64,
        /// Its second offset.
        end: u64,
        /// The earlier tensor's name.
        previous: String,
        /// Where the earlier tensor ends.
        previous_end: u64,
    },

    /// The data buffer holds bytes after the last tensor.
    #[error(
        "the data buffer holds {actual} bytes but the tensors end at {declared}: {extra} bytes are appended after the last tensor"
    )]
    TrailingBytes {
        /// Where the tensors end, relative to the data buffer.
        declared: u64,
        /// The data buffer's length.
        actual: u64,
        /// `actual - declared`.
        extra: u64,
    },

    /// The file ends before the last tensor does.
    #[error(
        "file is truncated: the tensors end at {declared} but the data buffer holds only {actual} bytes"
    )]
    Truncated {
        /// Where the tensors end, relative to the data buffer.
        declared: u64,
        /// The data buffer's length.
        actual: u64,
    },

    /// A tensor name is empty.
    #[error("a tensor name is empty; names must be non-empty")]
    EmptyName,

    /// A tensor name contains NUL.
    #[error(
        "tensor name {name:?} contains a NUL character; it is rejected because C-string based tools would cut the name there"
    )]
    NulInName {
        /// The name.
        name: String,
    },

    /// When writing: a tensor is named `__metadata__`.
    #[error("`__metadata__` is reserved for the header's metadata and cannot name a tensor")]
    ReservedName,

    /// When writing: the tensors' total byte length overflows 64 bits.
    #[error("the tensors' total byte length overflows 64 bits")]
    DataTooLarge,
}

/// This module's result type.
type Result<T, E = SafetensorsError> = std::result::Result<T, E>;

/// Validate the 8-byte prefix of a file of `file_len` bytes and return `N`, the header length.
pub fn header_len(prefix: &[u8], file_len: u64) -> Result<u64> {
    let Some(bytes) = prefix.first_chunk::<8>() else {
        let len = u64::try_from(prefix.len())
            .unwrap_or(u64::MAX)
            .min(file_len);
        return Err(SafetensorsError::FileTooShort { len });
    };
    if file_len < PREFIX_LEN {
        return Err(SafetensorsError::FileTooShort { len: file_len });
    }
    let n = u64::from_le_bytes(*bytes);
    check_header_len(n, file_len)?;
    Ok(n)
}

/// `N` must be positive, at most [`MAX_HEADER_LEN`], and the header must fit in the file.
fn check_header_len(n: u64, file_len: u64) -> Result<()> {
    if n == 0 {
        return Err(SafetensorsError::HeaderLenZero);
    }
    if n > MAX_HEADER_LEN {
        return Err(SafetensorsError::HeaderTooLarge { len: n });
    }
    // n <= MAX_HEADER_LEN, so this cannot overflow; checked all the same.
    match n.checked_add(PREFIX_LEN) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(SafetensorsError::HeaderPastEnd {
            header_len: n,
            file_len,
        }),
    }
}

/// Parse a whole in-memory file.
pub fn parse(bytes: &[u8]) -> Result<Header> {
    let file_len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    let n = header_len(bytes, file_len)?;
    let json = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .and_then(|end| bytes.get(8..end))
        .ok_or(SafetensorsError::HeaderPastEnd {
            header_len: n,
            file_len,
        })?;
    parse_header(json, file_len)
}

/// Parse and validate the `N` header bytes (`json`, padding included) of a file of `file_len`
/// bytes.
pub fn parse_header(json: &[u8], file_len: u64) -> Result<Header> {
    let n = u64::try_from(json.len()).unwrap_or(u64::MAX);
    check_header_len(n, file_len)?;
    if let Err(e) = std::str::from_utf8(json) {
        return Err(SafetensorsError::HeaderNotUtf8 {
            valid_up_to: u64::try_from(e.valid_up_to()).unwrap_or(u64::MAX),
        });
    }
    match json.first() {
        Some(b'{') => {}
        Some(&found) => return Err(SafetensorsError::HeaderStart { found }),
        None => return Err(SafetensorsError::HeaderLenZero),
    }
    // JSON itself would allow tabs and newlines after the object; padding may only be spaces.
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let ws_start = json.iter().rposition(|b| !is_ws(b)).map_or(0, |i| i + 1);
    let tail = json.get(ws_start..).unwrap_or_default();
    if let Some(i) = tail.iter().position(|&b| b != b' ') {
        return Err(SafetensorsError::BadPadding {
            offset: u64::try_from(ws_start.saturating_add(i)).unwrap_or(u64::MAX),
            found: tail.get(i).copied().unwrap_or_default(),
        });
    }
    let body = json.get(..ws_start).unwrap_or_default();

    let raw = json::parse_json(body)?;

    // `check_header_len` made 8 + n <= file_len.
    let data_len = file_len
        .checked_sub(PREFIX_LEN)
        .and_then(|x| x.checked_sub(n))
        .ok_or(SafetensorsError::HeaderPastEnd {
            header_len: n,
            file_len,
        })?;

    let mut tensors = Vec::with_capacity(raw.entries.len());
    for (name, entry) in raw.entries {
        tensors.push(check_entry(name, entry)?);
    }
    // Stable, so zero-length tensors sharing an offset keep their JSON order.
    tensors.sort_by_key(|t| (t.begin, t.end));
    check_layout(&tensors, data_len)?;

    Ok(Header {
        header_len: n,
        tensors,
        metadata: raw.metadata,
    })
}

/// A tensor name must be non-empty and free of NUL.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(SafetensorsError::EmptyName);
    }
    if name.contains('\0') {
        return Err(SafetensorsError::NulInName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The byte length of `shape` in `dtype`, telling overflow apart from a partial byte.
fn tensor_bytes(tensor: &str, dtype: DType, shape: &[u64]) -> Result<u64> {
    dtype.byte_len(shape).map_err(|_| {
        let fits = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|numel| numel.checked_mul(dtype.bits()))
            .is_some();
        if fits {
            SafetensorsError::PartialByte {
                tensor: tensor.to_string(),
                dtype,
                shape: shape.to_vec(),
            }
        } else {
            SafetensorsError::ShapeOverflow {
                tensor: tensor.to_string(),
                dtype,
                shape: shape.to_vec(),
            }
        }
    })
}

/// Check one entry's offsets against its dtype and shape.
fn check_entry(name: String, entry: json::RawEntry) -> Result<TensorInfo> {
    let json::RawEntry {
        dtype,
        shape,
        offsets: [begin, end],
    } = entry;
    if begin > end {
        return Err(SafetensorsError::InvertedOffsets {
            tensor: name,
            begin,
            end,
        });
    }
    let expected = tensor_bytes(&name, dtype, &shape)?;
    let actual = end - begin;
    if actual != expected {
        return Err(SafetensorsError::SizeMismatch {
            tensor: name,
            dtype,
            shape,
            expected,
            actual,
        });
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        begin,
        end,
    })
}

/// `tensors` sorted by `(begin, end)` must tile `[0, data_len)` exactly.
fn check_layout(tensors: &[TensorInfo], data_len: u64) -> Result<()> {
    let mut cursor = 0u64;
    let mut previous: Option<&TensorInfo> = None;
    for t in tensors {
        if t.begin > cursor {
            return Err(SafetensorsError::Gap {
                tensor: t.name.clone(),
                expected: cursor,
                begin: t.begin,
            });
        }
        if t.begin < cursor {
            let (prev_name, prev_end) =
                previous.map_or((String::new(), cursor), |p| (p.name.clone(), p.end));
            return Err(SafetensorsError::Overlap {
                tensor: t.name.clone(),
                begin: t.begin,
                end: t.end,
                previous: prev_name,
                previous_end: prev_end,
            });
        }
        cursor = t.end;
        previous = Some(t);
    }
    if cursor < data_len {
        return Err(SafetensorsError::TrailingBytes {
            declared: cursor,
            actual: data_len,
            extra: data_len - cursor,
        });
    }
    if cursor > data_len {
        return Err(SafetensorsError::Truncated {
            declared: cursor,
            actual: data_len,
        });
    }
    Ok(())
}
