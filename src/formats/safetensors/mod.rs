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

use crate::model::dtype::DType;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The largest header accepted, in bytes; the reference implementation uses the same limit.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Width of the little-endian header length that opens every file.
const PREFIX_LEN: u64 = 8;

/// The key under which the header keeps its free-form string metadata.
pub const METADATA_KEY: &str = "__metadata__";

/// One tensor as the header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
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
    #[error("file is {len} bytes long, shorter than the 8-byte header length that must open it")]
    FileTooShort { len: u64 },

    #[error("header length is 0; the header must be a JSON object of at least 2 bytes (`{{}}`)")]
    HeaderLenZero,

    #[error("header length {len} exceeds the limit of {MAX_HEADER_LEN} bytes")]
    HeaderTooLarge { len: u64 },

    #[error(
        "header length {header_len} runs past the end of the file: 8 + {header_len} > {file_len} bytes"
    )]
    HeaderPastEnd { header_len: u64, file_len: u64 },

    #[error("header is not valid UTF-8: invalid byte sequence at header offset {valid_up_to}")]
    HeaderNotUtf8 { valid_up_to: u64 },

    #[error("header must start with `{{`, but its first byte is {found:#04x}")]
    HeaderStart { found: u8 },

    #[error(
        "header padding byte at header offset {offset} is {found:#04x}; only spaces (0x20) may follow the closing `}}`"
    )]
    BadPadding { offset: u64, found: u8 },

    #[error(
        "header has non-space bytes after its top-level JSON object; only spaces may follow the closing `}}`"
    )]
    TrailingData,

    #[error("header is not valid JSON: {message}")]
    Json { message: String },

    #[error("`__metadata__` must be an object mapping strings to strings: {reason}")]
    BadMetadata { reason: String },

    #[error("key {name:?} appears more than once at the top level of the header")]
    DuplicateName { name: String },

    #[error("key {key:?} appears more than once in `__metadata__`")]
    DuplicateMetadataKey { key: String },

    #[error("tensor {tensor:?}: field `{field}` appears more than once")]
    DuplicateField { tensor: String, field: String },

    #[error(
        "tensor {tensor:?}: unknown field {field:?}; an entry has exactly `dtype`, `shape` and `data_offsets`"
    )]
    UnknownField { tensor: String, field: String },

    #[error("tensor {tensor:?}: missing field `{field}`")]
    MissingField { tensor: String, field: &'static str },

    #[error(
        "tensor {tensor:?}: entry must be an object with `dtype`, `shape` and `data_offsets`: {reason}"
    )]
    EntryNotObject { tensor: String, reason: String },

    #[error("tensor {tensor:?}: unknown dtype {found}")]
    UnknownDType { tensor: String, found: String },

    #[error(
        "tensor {tensor:?}: `shape` must be an array of non-negative integers that fit in 64 bits: {reason}"
    )]
    BadShape { tensor: String, reason: String },

    #[error(
        "tensor {tensor:?}: `data_offsets` must be exactly two non-negative integers that fit in 64 bits: {reason}"
    )]
    BadOffsets { tensor: String, reason: String },

    #[error("tensor {tensor:?}: `data_offsets` [{begin}, {end}] are inverted (begin > end)")]
    InvertedOffsets {
        tensor: String,
        begin: u64,
        end: u64,
    },

    #[error(
        "tensor {tensor:?}: shape {shape:?} of dtype {dtype} has a byte length that overflows 64 bits"
    )]
    ShapeOverflow {
        tensor: String,
        dtype: DType,
        shape: Vec<u64>,
    },

    #[error(
        "tensor {tensor:?}: shape {shape:?} of dtype {dtype} does not fill a whole number of bytes"
    )]
    PartialByte {
        tensor: String,
        dtype: DType,
        shape: Vec<u64>,
    },

    #[error(
        "tensor {tensor:?}: `data_offsets` span {actual} bytes, but dtype {dtype} and shape {shape:?} need {expected}"
    )]
    SizeMismatch {
        tensor: String,
        dtype: DType,
        shape: Vec<u64>,
        expected: u64,
        actual: u64,
    },

    #[error(
        "tensor {tensor:?}: data starts at {begin}, leaving bytes {expected}..{begin} of the data buffer unused (a gap)"
    )]
    Gap {
        tensor: String,
        expected: u64,
        begin: u64,
    },

    #[error(
        "tensor {tensor:?}: data [{begin}, {end}) overlaps tensor {previous:?}, which ends at {previous_end} (aliased bytes)"
    )]
    Overlap {
        tensor: String,
        begin: u64,
        end: u64,
        previous: String,
        previous_end: u64,
    },

    #[error(
        "the data buffer holds {actual} bytes but the tensors end at {declared}: {extra} bytes are appended after the last tensor"
    )]
    TrailingBytes {
        declared: u64,
        actual: u64,
        extra: u64,
    },

    #[error(
        "file is truncated: the tensors end at {declared} but the data buffer holds only {actual} bytes"
    )]
    Truncated { declared: u64, actual: u64 },

    #[error("a tensor name is empty; names must be non-empty")]
    EmptyName,

    #[error(
        "tensor name {name:?} contains a NUL character; it is rejected because C-string based tools would cut the name there"
    )]
    NulInName { name: String },

    #[error("`__metadata__` is reserved for the header's metadata and cannot name a tensor")]
    ReservedName,

    #[error("the tensors' total byte length overflows 64 bits")]
    DataTooLarge,
}

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

    let raw = parse_json(body)?;

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

fn check_entry(name: String, entry: RawEntry) -> Result<TensorInfo> {
    let RawEntry {
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

// ---------------------------------------------------------------------------------------------
// JSON reading.
//
// serde_json's own maps keep the last of repeated keys, so the header is read with visitors that
// see every key. A visitor can only return serde_json's untyped error; the typed reason travels
// beside it in `Cx`. The innermost recorder wins: it knows the most precise context.
// ---------------------------------------------------------------------------------------------

type Cx = Cell<Option<SafetensorsError>>;

/// Remember `err` unless a more precise error was already recorded.
fn note(cx: &Cx, err: SafetensorsError) {
    let prev = cx.take();
    cx.set(Some(prev.unwrap_or(err)));
}

/// Record `err` and return a serde error to abort parsing with.
fn fail<E: de::Error>(cx: &Cx, err: SafetensorsError) -> E {
    let msg = err.to_string();
    note(cx, err);
    E::custom(msg)
}

struct RawEntry {
    dtype: DType,
    shape: Vec<u64>,
    offsets: [u64; 2],
}

struct RawHeader {
    entries: Vec<(String, RawEntry)>,
    metadata: Option<BTreeMap<String, String>>,
}

fn parse_json(body: &[u8]) -> Result<RawHeader> {
    let cx: Cx = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = HeaderSeed { cx: &cx }.deserialize(&mut de);
    let raw = match parsed {
        Ok(raw) => raw,
        Err(e) => {
            let typed = cx.take();
            return Err(match (e.classify(), typed) {
                (serde_json::error::Category::Data, Some(typed)) => typed,
                _ => SafetensorsError::Json {
                    message: e.to_string(),
                },
            });
        }
    };
    // Only spaces were stripped after the body, and it ends in `}`; anything serde_json finds
    // after the object is a second value or garbage.
    de.end().map_err(|_| SafetensorsError::TrailingData)?;
    Ok(raw)
}

struct HeaderSeed<'a> {
    cx: &'a Cx,
}

impl<'de> DeserializeSeed<'de> for HeaderSeed<'_> {
    type Value = RawHeader;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawHeader, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeaderSeed<'_> {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let cx = self.cx;
        let mut seen = BTreeSet::new();
        let mut entries = Vec::new();
        let mut metadata = None;
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(fail(cx, SafetensorsError::DuplicateName { name: key }));
            }
            if key == METADATA_KEY {
                metadata = Some(map.next_value_seed(MetadataSeed { cx })?);
                continue;
            }
            if let Err(e) = check_name(&key) {
                return Err(fail(cx, e));
            }
            let entry = map.next_value_seed(EntrySeed { cx, name: &key })?;
            entries.push((key, entry));
        }
        Ok(RawHeader { entries, metadata })
    }
}

struct MetadataSeed<'a> {
    cx: &'a Cx,
}

impl<'de> DeserializeSeed<'de> for MetadataSeed<'_> {
    type Value = BTreeMap<String, String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let cx = self.cx;
        d.deserialize_map(self).inspect_err(|e| {
            note(
                cx,
                SafetensorsError::BadMetadata {
                    reason: e.to_string(),
                },
            );
        })
    }
}

impl<'de> Visitor<'de> for MetadataSeed<'_> {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of string values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(fail(
                    self.cx,
                    SafetensorsError::DuplicateMetadataKey { key },
                ));
            }
            let value = map.next_value::<String>().inspect_err(|e| {
                note(
                    self.cx,
                    SafetensorsError::BadMetadata {
                        reason: format!("value of {key:?}: {e}"),
                    },
                );
            })?;
            out.insert(key, value);
        }
        Ok(out)
    }
}

struct EntrySeed<'a> {
    cx: &'a Cx,
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = RawEntry;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawEntry, D::Error> {
        let (cx, name) = (self.cx, self.name);
        d.deserialize_map(self).inspect_err(|e| {
            note(
                cx,
                SafetensorsError::EntryNotObject {
                    tensor: name.to_string(),
                    reason: e.to_string(),
                },
            );
        })
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = RawEntry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with `dtype`, `shape` and `data_offsets`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntry, A::Error> {
        let (cx, name) = (self.cx, self.name);
        let tensor = || name.to_string();
        let mut dtype = None;
        let mut shape = None;
        let mut offsets = None;
        while let Some(field) = map.next_key::<String>()? {
            let duplicate = match field.as_str() {
                "dtype" => dtype
                    .replace(map.next_value_seed(DTypeSeed { cx, name })?)
                    .is_some(),
                "shape" => shape
                    .replace(map.next_value_seed(ShapeSeed { cx, name })?)
                    .is_some(),
                "data_offsets" => offsets
                    .replace(map.next_value_seed(OffsetsSeed { cx, name })?)
                    .is_some(),
                _ => {
                    return Err(fail(
                        cx,
                        SafetensorsError::UnknownField {
                            tensor: tensor(),
                            field,
                        },
                    ));
                }
            };
            if duplicate {
                return Err(fail(
                    cx,
                    SafetensorsError::DuplicateField {
                        tensor: tensor(),
                        field,
                    },
                ));
            }
        }
        let missing = |field| {
            fail(
                cx,
                SafetensorsError::MissingField {
                    tensor: tensor(),
                    field,
                },
            )
        };
        Ok(RawEntry {
            dtype: dtype.ok_or_else(|| missing("dtype"))?,
            shape: shape.ok_or_else(|| missing("shape"))?,
            offsets: offsets.ok_or_else(|| missing("data_offsets"))?,
        })
    }
}

struct DTypeSeed<'a> {
    cx: &'a Cx,
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for DTypeSeed<'_> {
    type Value = DType;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<DType, D::Error> {
        let (cx, name) = (self.cx, self.name);
        let unknown = |found| SafetensorsError::UnknownDType {
            tensor: name.to_string(),
            found,
        };
        let s = String::deserialize(d).inspect_err(|e| {
            note(cx, unknown(format!("({e})")));
        })?;
        s.parse::<DType>()
            .map_err(|_| fail(cx, unknown(format!("{s:?}"))))
    }
}

struct ShapeSeed<'a> {
    cx: &'a Cx,
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for ShapeSeed<'_> {
    type Value = Vec<u64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u64>, D::Error> {
        // serde's Vec grows one pushed element at a time (no trusted size hint), and u64 rejects
        // negative numbers and floats, including integers too large for u64 (which serde_json
        // reads as floats).
        Vec::<u64>::deserialize(d).inspect_err(|e| {
            note(
                self.cx,
                SafetensorsError::BadShape {
                    tensor: self.name.to_string(),
                    reason: e.to_string(),
                },
            );
        })
    }
}

struct OffsetsSeed<'a> {
    cx: &'a Cx,
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for OffsetsSeed<'_> {
    type Value = [u64; 2];
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<[u64; 2], D::Error> {
        let (cx, name) = (self.cx, self.name);
        d.deserialize_seq(self).inspect_err(|e| {
            note(
                cx,
                SafetensorsError::BadOffsets {
                    tensor: name.to_string(),
                    reason: e.to_string(),
                },
            );
        })
    }
}

impl<'de> Visitor<'de> for OffsetsSeed<'_> {
    type Value = [u64; 2];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of two integers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u64; 2], A::Error> {
        let begin = seq.next_element::<u64>()?;
        let end = seq.next_element::<u64>()?;
        match (begin, end) {
            (Some(begin), Some(end)) => {
                // Drain the rest ourselves: serde_json reports leftover elements as a syntax
                // error, which would hide which rule was broken.
                let mut count = 2usize;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count = count.saturating_add(1);
                }
                if count != 2 {
                    return Err(de::Error::invalid_length(count, &self));
                }
                Ok([begin, end])
            }
            (Some(_), None) => Err(de::Error::invalid_length(1, &self)),
            _ => Err(de::Error::invalid_length(0, &self)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing.
// ---------------------------------------------------------------------------------------------

/// Where the reference package ranks a dtype; it writes tensors by decreasing rank, then by name.
/// This is the declaration order of its `Dtype` enum, which it keeps in increasing alignment.
fn upstream_rank(dtype: DType) -> u8 {
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

struct JsonHeader<'a> {
    metadata: Option<&'a BTreeMap<String, String>>,
    tensors: &'a [TensorInfo],
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A file from a header JSON and a data buffer of `data_len` zero bytes.
    fn file(json: &str, data_len: usize) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.resize(out.len() + data_len, 0);
        out
    }

    fn entry(dtype: &str, shape: &str, begin: u64, end: u64) -> String {
        format!(r#"{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{begin},{end}]}}"#)
    }

    fn one(name: &str, dtype: &str, shape: &str, begin: u64, end: u64) -> String {
        format!(r#"{{"{name}":{}}}"#, entry(dtype, shape, begin, end))
    }

    fn ok(json: &str, data_len: usize) -> Header {
        match parse(&file(json, data_len)) {
            Ok(h) => h,
            Err(e) => panic!("rejected {json}: {e}"),
        }
    }

    fn err(json: &str, data_len: usize) -> SafetensorsError {
        match parse(&file(json, data_len)) {
            Ok(h) => panic!("accepted {json}: {h:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn minimal_valid_file() {
        let h = ok(&one("w", "F32", "[2,3]", 0, 24), 24);
        assert_eq!(h.tensors.len(), 1);
        let t = &h.tensors[0];
        assert_eq!(
            (t.name.as_str(), t.dtype, t.shape.as_slice(), t.begin, t.end),
            ("w", DType::F32, &[2u64, 3][..], 0, 24)
        );
        assert_eq!(h.header_len as usize, one("w", "F32", "[2,3]", 0, 24).len());
        assert_eq!(h.data_start(), 8 + h.header_len);
        assert_eq!(h.data_len(), 24);
        assert!(h.metadata.is_none());
    }

    #[test]
    fn empty_object_is_a_valid_file() {
        let h = ok("{}", 0);
        assert!(h.tensors.is_empty());
        assert_eq!(h.header_len, 2);
        assert_eq!(h.data_len(), 0);
        let h = ok("{}      ", 0);
        assert_eq!(h.header_len, 8);
    }

    #[test]
    fn zero_rank_and_empty_tensors() {
        let h = ok(&one("s", "F64", "[]", 0, 8), 8);
        assert!(h.tensors[0].shape.is_empty());
        let h = ok(&one("e", "F32", "[0,7]", 0, 0), 0);
        assert!(h.tensors[0].is_empty());
        // Zero-length tensors may share the offset of their neighbour.
        let json = format!(
            r#"{{"a":{},"b":{},"c":{},"d":{}}}"#,
            entry("U8", "[0]", 0, 0),
            entry("F32", "[1]", 0, 4),
            entry("I8", "[0,3]", 4, 4),
            entry("I8", "[0]", 4, 4)
        );
        let h = ok(&json, 4);
        let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
    }

    #[test]
    fn tensors_come_back_sorted_by_offset() {
        let json = format!(
            r#"{{"z":{},"a":{},"m":{}}}"#,
            entry("U8", "[2]", 0, 2),
            entry("U8", "[3]", 5, 8),
            entry("U8", "[3]", 2, 5)
        );
        let h = ok(&json, 8);
        let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["z", "m", "a"]);
    }

    #[test]
    fn every_dtype_parses() {
        for dtype in DType::ALL {
            let len = dtype.byte_len(&[8]).unwrap();
            let h = ok(&one("t", dtype.as_str(), "[8]", 0, len), len as usize);
            assert_eq!(h.tensors[0].dtype, dtype);
            assert_eq!(h.tensors[0].len(), len);
        }
    }

    #[test]
    fn sub_byte_dtypes_must_fill_whole_bytes() {
        assert!(ok(&one("t", "F4", "[4]", 0, 2), 2).tensors[0].len() == 2);
        assert!(ok(&one("t", "F6_E2M3", "[4]", 0, 3), 3).tensors[0].len() == 3);
        assert!(matches!(
            err(&one("t", "F4", "[3]", 0, 2), 2),
            SafetensorsError::PartialByte {
                dtype: DType::F4,
                ..
            }
        ));
        assert!(matches!(
            err(&one("t", "F6_E3M2", "[1,3]", 0, 3), 3),
            SafetensorsError::PartialByte { .. }
        ));
    }

    #[test]
    fn metadata_is_read() {
        let json = format!(
            r#"{{"__metadata__":{{"format":"pt","b":"x"}},"w":{}}}"#,
            entry("U8", "[1]", 0, 1)
        );
        let h = ok(&json, 1);
        let m = h.metadata.unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["format"], "pt");
        assert_eq!(
            ok(r#"{"__metadata__":{}}"#, 0).metadata,
            Some(BTreeMap::new())
        );
    }

    // --- the 8-byte prefix ---

    #[test]
    fn file_shorter_than_prefix() {
        assert_eq!(
            parse(&[1, 0, 0]),
            Err(SafetensorsError::FileTooShort { len: 3 })
        );
        assert_eq!(parse(&[]), Err(SafetensorsError::FileTooShort { len: 0 }));
        assert_eq!(
            header_len(&[8, 0, 0, 0, 0, 0, 0, 0], 5),
            Err(SafetensorsError::FileTooShort { len: 5 })
        );
    }

    #[test]
    fn zero_header_len() {
        assert_eq!(parse(&[0; 8]), Err(SafetensorsError::HeaderLenZero));
        assert_eq!(parse_header(b"", 8), Err(SafetensorsError::HeaderLenZero));
    }

    #[test]
    fn huge_header_len_is_rejected_before_reading() {
        for n in [MAX_HEADER_LEN + 1, 1 << 40, u64::MAX - 7, u64::MAX] {
            let mut bytes = n.to_le_bytes().to_vec();
            bytes.extend_from_slice(b"{}");
            assert_eq!(
                parse(&bytes),
                Err(SafetensorsError::HeaderTooLarge { len: n })
            );
            // Even when the caller claims an enormous file.
            assert_eq!(
                header_len(&bytes, u64::MAX),
                Err(SafetensorsError::HeaderTooLarge { len: n })
            );
        }
        assert_eq!(
            header_len(&MAX_HEADER_LEN.to_le_bytes(), u64::MAX),
            Ok(MAX_HEADER_LEN)
        );
    }

    #[test]
    fn header_len_past_end_of_file() {
        let mut bytes = 100u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert_eq!(
            parse(&bytes),
            Err(SafetensorsError::HeaderPastEnd {
                header_len: 100,
                file_len: 10
            })
        );
        assert_eq!(header_len(&bytes, 108), Ok(100));
        assert!(matches!(
            header_len(&bytes, 107),
            Err(SafetensorsError::HeaderPastEnd { .. })
        ));
        assert!(matches!(
            parse_header(b"{}", 9),
            Err(SafetensorsError::HeaderPastEnd { .. })
        ));
    }

    // --- the JSON text ---

    #[test]
    fn header_must_be_utf8() {
        let mut bytes = file(r#"{"a":1}"#, 0);
        bytes[10] = 0xff;
        assert_eq!(
            parse(&bytes),
            Err(SafetensorsError::HeaderNotUtf8 { valid_up_to: 2 })
        );
    }

    #[test]
    fn header_must_start_with_brace() {
        for (json, found) in [
            (" {}", b' '),
            ("\n{}", b'\n'),
            ("[]", b'['),
            ("\u{feff}{}", 0xef),
        ] {
            assert_eq!(err(json, 0), SafetensorsError::HeaderStart { found });
        }
    }

    #[test]
    fn padding_must_be_spaces() {
        ok("{}   ", 0);
        assert_eq!(
            err("{}\n", 0),
            SafetensorsError::BadPadding {
                offset: 2,
                found: b'\n'
            }
        );
        assert_eq!(
            err("{}\t  ", 0),
            SafetensorsError::BadPadding {
                offset: 2,
                found: b'\t'
            }
        );
        assert!(matches!(
            err("{} \r ", 0),
            SafetensorsError::BadPadding { found: b'\r', .. }
        ));
        assert_eq!(err("{}\0", 0), SafetensorsError::TrailingData);
        assert_eq!(err("{}\0   ", 0), SafetensorsError::TrailingData);
        assert_eq!(err("{} {}", 0), SafetensorsError::TrailingData);
        assert_eq!(err("{}\n}", 0), SafetensorsError::TrailingData);
    }

    #[test]
    fn malformed_json() {
        for json in [r#"{"a":"#, "{", r#"{"a" 1}"#, "{,}", r#"{"a\ud800":1}"#] {
            assert!(
                matches!(err(json, 0), SafetensorsError::Json { .. }),
                "{json}"
            );
        }
    }

    // --- __metadata__ ---

    #[test]
    fn metadata_must_be_a_string_map() {
        for json in [
            r#"{"__metadata__":{"a":1}}"#,
            r#"{"__metadata__":{"a":null}}"#,
            r#"{"__metadata__":{"a":{"b":"c"}}}"#,
            r#"{"__metadata__":{"a":["b"]}}"#,
            r#"{"__metadata__":["a"]}"#,
            r#"{"__metadata__":"a"}"#,
            r#"{"__metadata__":null}"#,
        ] {
            assert!(
                matches!(err(json, 0), SafetensorsError::BadMetadata { .. }),
                "{json}: {:?}",
                err(json, 0)
            );
        }
    }

    // --- repeated keys ---

    #[test]
    fn duplicate_tensor_names() {
        let json = format!(
            r#"{{"a":{},"a":{}}}"#,
            entry("U8", "[4]", 0, 4),
            entry("U8", "[4]", 0, 4)
        );
        assert_eq!(
            err(&json, 4),
            SafetensorsError::DuplicateName { name: "a".into() }
        );
        // An escaped spelling of the same name is the same key.
        let json = format!(
            r#"{{"a":{},"\u0061":{}}}"#,
            entry("U8", "[2]", 0, 2),
            entry("U8", "[2]", 2, 4)
        );
        assert_eq!(
            err(&json, 4),
            SafetensorsError::DuplicateName { name: "a".into() }
        );
    }

    #[test]
    fn duplicate_metadata() {
        assert_eq!(
            err(r#"{"__metadata__":{},"__metadata__":{}}"#, 0),
            SafetensorsError::DuplicateName {
                name: "__metadata__".into()
            }
        );
        assert_eq!(
            err(r#"{"__metadata__":{"k":"1","k":"2"}}"#, 0),
            SafetensorsError::DuplicateMetadataKey { key: "k".into() }
        );
    }

    #[test]
    fn duplicate_fields_inside_an_entry() {
        for (json, field) in [
            (
                r#"{"a":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}}"#,
                "dtype",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"shape":[1],"data_offsets":[0,1]}}"#,
                "shape",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"data_offsets":[0,1]}}"#,
                "data_offsets",
            ),
        ] {
            assert_eq!(
                err(json, 1),
                SafetensorsError::DuplicateField {
                    tensor: "a".into(),
                    field: field.into()
                }
            );
        }
    }

    // --- entries ---

    #[test]
    fn unknown_and_missing_fields() {
        assert_eq!(
            err(
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":0}}"#,
                1
            ),
            SafetensorsError::UnknownField {
                tensor: "a".into(),
                field: "extra".into()
            }
        );
        for (json, field) in [
            (r#"{"a":{"shape":[1],"data_offsets":[0,1]}}"#, "dtype"),
            (r#"{"a":{"dtype":"U8","data_offsets":[0,1]}}"#, "shape"),
            (r#"{"a":{"dtype":"U8","shape":[1]}}"#, "data_offsets"),
        ] {
            assert_eq!(
                err(json, 1),
                SafetensorsError::MissingField {
                    tensor: "a".into(),
                    field
                }
            );
        }
    }

    #[test]
    fn entry_must_be_an_object() {
        for json in [
            r#"{"a":[1,2]}"#,
            r#"{"a":null}"#,
            r#"{"a":"F32"}"#,
            r#"{"a":3}"#,
        ] {
            assert!(
                matches!(err(json, 0), SafetensorsError::EntryNotObject { .. }),
                "{json}"
            );
        }
    }

    #[test]
    fn unknown_dtype() {
        for dtype in [r#""F33""#, r#""f32""#, r#""""#, "32", "null", r#"["F32"]"#] {
            let json = format!(r#"{{"a":{{"dtype":{dtype},"shape":[1],"data_offsets":[0,4]}}}}"#);
            assert!(
                matches!(err(&json, 4), SafetensorsError::UnknownDType { .. }),
                "{json}"
            );
        }
    }

    #[test]
    fn shape_must_be_non_negative_u64s() {
        for shape in [
            "[-1]",
            "[1.0]",
            "[1e0]",
            "[-0]",
            "[18446744073709551616]",
            r#"["1"]"#,
            "[null]",
            "[[1]]",
            "null",
            "3",
        ] {
            let json = format!(r#"{{"a":{{"dtype":"U8","shape":{shape},"data_offsets":[0,1]}}}}"#);
            assert!(
                matches!(err(&json, 1), SafetensorsError::BadShape { .. }),
                "{json}: {:?}",
                err(&json, 1)
            );
        }
        // The largest u64 is a fine dimension as long as the product fits.
        let max = u64::MAX;
        ok(&one("a", "U8", &format!("[{max},0]"), 0, 0), 0);
    }

    #[test]
    fn offsets_must_be_two_u64s() {
        for offsets in [
            "[0]",
            "[]",
            "[0,1,1]",
            "[0,1,2,3]",
            "[-1,1]",
            "[0,1.5]",
            "[0,18446744073709551616]",
            r#"[0,"1"]"#,
            "null",
            r#"{"0":1}"#,
        ] {
            let json = format!(r#"{{"a":{{"dtype":"U8","shape":[1],"data_offsets":{offsets}}}}}"#);
            assert!(
                matches!(err(&json, 1), SafetensorsError::BadOffsets { .. }),
                "{json}: {:?}",
                err(&json, 1)
            );
        }
    }

    #[test]
    fn inverted_offsets() {
        assert_eq!(
            err(&one("a", "U8", "[0]", 4, 0), 4),
            SafetensorsError::InvertedOffsets {
                tensor: "a".into(),
                begin: 4,
                end: 0
            }
        );
    }

    #[test]
    fn overflowing_shapes() {
        let p = 1u64 << 62;
        for shape in [
            format!("[{p},{p}]"),
            format!("[{},2]", u64::MAX),
            format!("[{p}]"),
        ] {
            assert!(
                matches!(
                    err(&one("a", "F64", &shape, 0, 8), 8),
                    SafetensorsError::ShapeOverflow { .. }
                ),
                "{shape}"
            );
        }
    }

    #[test]
    fn size_must_match_shape_and_dtype() {
        assert_eq!(
            err(&one("a", "F32", "[2]", 0, 4), 4),
            SafetensorsError::SizeMismatch {
                tensor: "a".into(),
                dtype: DType::F32,
                shape: vec![2],
                expected: 8,
                actual: 4
            }
        );
        assert!(matches!(
            err(&one("a", "F32", "[2]", 0, 12), 12),
            SafetensorsError::SizeMismatch { .. }
        ));
    }

    // --- layout of the data buffer ---

    #[test]
    fn first_tensor_must_start_at_zero() {
        assert_eq!(
            err(&one("a", "U8", "[4]", 4, 8), 8),
            SafetensorsError::Gap {
                tensor: "a".into(),
                expected: 0,
                begin: 4
            }
        );
    }

    #[test]
    fn gap_between_tensors() {
        let json = format!(
            r#"{{"a":{},"b":{}}}"#,
            entry("U8", "[4]", 0, 4),
            entry("U8", "[4]", 6, 10)
        );
        assert_eq!(
            err(&json, 10),
            SafetensorsError::Gap {
                tensor: "b".into(),
                expected: 4,
                begin: 6
            }
        );
    }

    #[test]
    fn overlapping_and_aliased_tensors() {
        let overlap = format!(
            r#"{{"a":{},"b":{}}}"#,
            entry("U8", "[4]", 0, 4),
            entry("U8", "[4]", 2, 6)
        );
        assert!(matches!(
            err(&overlap, 6),
            SafetensorsError::Overlap { previous, previous_end: 4, .. } if previous == "a"
        ));
        let alias = format!(
            r#"{{"a":{},"b":{}}}"#,
            entry("U8", "[4]", 0, 4),
            entry("I8", "[4]", 0, 4)
        );
        assert!(matches!(err(&alias, 4), SafetensorsError::Overlap { .. }));
        // A zero-length tensor pointing inside another one is not allowed either.
        let inside = format!(
            r#"{{"a":{},"b":{}}}"#,
            entry("U8", "[4]", 0, 4),
            entry("U8", "[0]", 2, 2)
        );
        assert!(matches!(err(&inside, 4), SafetensorsError::Overlap { .. }));
    }

    #[test]
    fn trailing_bytes_after_last_tensor() {
        assert_eq!(
            err(&one("a", "U8", "[4]", 0, 4), 5),
            SafetensorsError::TrailingBytes {
                declared: 4,
                actual: 5,
                extra: 1
            }
        );
        assert!(matches!(
            err("{}", 1),
            SafetensorsError::TrailingBytes { .. }
        ));
    }

    #[test]
    fn truncated_data() {
        assert_eq!(
            err(&one("a", "U8", "[4]", 0, 4), 3),
            SafetensorsError::Truncated {
                declared: 4,
                actual: 3
            }
        );
    }

    // --- names ---

    #[test]
    fn names_are_opaque_keys() {
        for name in ["../../etc/passwd", "/abs/path", "a\\\\b", "ünï cødé", "."] {
            let h = ok(&one(name, "U8", "[1]", 0, 1), 1);
            assert_eq!(
                h.tensors[0].name,
                name.replace("\\\\", "\\"),
                "names are kept verbatim"
            );
        }
    }

    #[test]
    fn empty_names_are_rejected() {
        assert_eq!(
            err(&one("", "U8", "[1]", 0, 1), 1),
            SafetensorsError::EmptyName
        );
    }

    #[test]
    fn nul_in_names_is_rejected() {
        assert_eq!(
            err(&one("a\\u0000b", "U8", "[1]", 0, 1), 1),
            SafetensorsError::NulInName {
                name: "a\0b".into()
            }
        );
    }

    #[test]
    fn error_messages_name_the_rule() {
        let e = err(&one("w", "F32", "[2]", 0, 4), 4);
        assert_eq!(
            e.to_string(),
            r#"tensor "w": `data_offsets` span 4 bytes, but dtype F32 and shape [2] need 8"#
        );
        assert!(
            SafetensorsError::NulInName { name: "a\0".into() }
                .to_string()
                .contains("NUL")
        );
    }

    // --- writing ---

    #[test]
    fn serialize_matches_reference_bytes() {
        // The two vectors below are the reference package's own unit-test expectations.
        let out = serialize_header(&[("attn.0".into(), DType::F32, vec![1, 2, 3])], None).unwrap();
        let mut expected = 64u64.to_le_bytes().to_vec();
        expected.extend_from_slice(
            br#"{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}"#,
        );
        assert_eq!(out, expected);

        let out = serialize_header(&[], None).unwrap();
        assert_eq!(out, b"\x08\0\0\0\0\0\0\0{}      ");

        let meta = BTreeMap::from([("framework".to_string(), "pt".to_string())]);
        let out = serialize_header(&[], Some(&meta)).unwrap();
        let mut expected = 40u64.to_le_bytes().to_vec();
        expected.extend_from_slice(br#"{"__metadata__":{"framework":"pt"}}     "#);
        assert_eq!(out, expected);
    }

    #[test]
    fn serialize_pads_to_multiple_of_eight() {
        for len in 1..20 {
            let name = "x".repeat(len);
            let out = serialize_header(&[(name, DType::U8, vec![1])], None).unwrap();
            assert_eq!(out.len() % 8, 0);
            let n = u64::from_le_bytes(out[..8].try_into().unwrap());
            assert_eq!(n as usize, out.len() - 8);
            assert!(out.ends_with(b"}") || out.ends_with(b" "));
        }
    }

    #[test]
    fn serialize_rejects_what_parse_rejects() {
        let t = |name: &str, dtype, shape: Vec<u64>| (name.to_string(), dtype, shape);
        assert_eq!(
            serialize_header(
                &[t("a", DType::U8, vec![1]), t("a", DType::U8, vec![1])],
                None
            ),
            Err(SafetensorsError::DuplicateName { name: "a".into() })
        );
        assert_eq!(
            serialize_header(&[t("", DType::U8, vec![1])], None),
            Err(SafetensorsError::EmptyName)
        );
        assert!(matches!(
            serialize_header(&[t("a\0", DType::U8, vec![1])], None),
            Err(SafetensorsError::NulInName { .. })
        ));
        assert_eq!(
            serialize_header(&[t("__metadata__", DType::U8, vec![1])], None),
            Err(SafetensorsError::ReservedName)
        );
        assert!(matches!(
            serialize_header(&[t("a", DType::F4, vec![3])], None),
            Err(SafetensorsError::PartialByte { .. })
        ));
        assert!(matches!(
            serialize_header(&[t("a", DType::F64, vec![1 << 62, 1 << 62])], None),
            Err(SafetensorsError::ShapeOverflow { .. })
        ));
        // Each tensor's length fits (byte_len bounds it below 2^61), but nine of them do not.
        let big: Vec<_> = (0..9)
            .map(|i| t(&i.to_string(), DType::U8, vec![(1 << 61) - 1]))
            .collect();
        assert_eq!(
            serialize_header(&big, None),
            Err(SafetensorsError::DataTooLarge)
        );
    }

    #[test]
    fn upstream_order() {
        let mut ts: Vec<(String, DType, Vec<u64>)> = [
            ("c", DType::U8),
            ("b", DType::F32),
            ("a", DType::F32),
            ("z", DType::F64),
            ("y", DType::Bool),
            ("x", DType::C64),
            ("w", DType::U64),
        ]
        .into_iter()
        .map(|(n, d)| (n.to_string(), d, vec![]))
        .collect();
        sort_like_upstream(&mut ts);
        let names: Vec<_> = ts.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(names, ["w", "z", "x", "a", "b", "c", "y"]);
        // Every dtype has its own rank.
        let ranks: BTreeSet<_> = DType::ALL.iter().map(|&d| upstream_rank(d)).collect();
        assert_eq!(ranks.len(), DType::ALL.len());
    }

    // --- properties ---

    fn arb_dtype() -> impl Strategy<Value = DType> {
        prop::sample::select(DType::ALL.to_vec())
    }

    fn arb_tensors() -> impl Strategy<Value = Vec<(String, DType, Vec<u64>)>> {
        prop::collection::btree_map(
            "[^\\x00]{1,12}".prop_filter("reserved", |n| n != METADATA_KEY),
            (arb_dtype(), prop::collection::vec(0u64..6, 0..4)),
            0..8,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(name, (dtype, mut shape))| {
                    // Sub-byte dtypes need an element count that fills whole bytes.
                    if dtype.bits() % 8 != 0 {
                        shape.push(8);
                    }
                    (name, dtype, shape)
                })
                .collect()
        })
    }

    fn arb_metadata() -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
        prop::option::of(prop::collection::btree_map(".{0,8}", ".{0,8}", 0..4))
    }

    fn assert_invariants(h: &Header, file_len: usize) {
        let mut cursor = 0;
        for t in &h.tensors {
            assert_eq!(t.begin, cursor, "contiguous and sorted");
            assert!(t.begin <= t.end);
            assert_eq!(t.dtype.byte_len(&t.shape), Ok(t.end - t.begin));
            assert!(!t.name.is_empty() && !t.name.contains('\0'));
            cursor = t.end;
        }
        assert_eq!(
            h.data_start() + cursor,
            file_len as u64,
            "ends at the file end"
        );
    }

    proptest! {
        #[test]
        fn serialize_then_parse_round_trips(
            tensors in arb_tensors(),
            metadata in arb_metadata(),
        ) {
            let prefix = serialize_header(&tensors, metadata.as_ref()).unwrap();
            prop_assert_eq!(prefix.len() % 8, 0);
            let data_len: u64 = tensors
                .iter()
                .map(|(_, d, s)| d.byte_len(s).unwrap())
                .sum();
            let mut bytes = prefix.clone();
            bytes.resize(prefix.len() + data_len as usize, 0);
            let h = parse(&bytes).unwrap();
            assert_invariants(&h, bytes.len());
            prop_assert_eq!(h.data_start() as usize, prefix.len());
            prop_assert_eq!(&h.metadata, &metadata);
            // Zero-length tensors keep their given order, so the whole list comes back as given.
            let back: Vec<_> = h
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
                .collect();
            prop_assert_eq!(&back, &tensors);
            let mut offset = 0;
            for t in &h.tensors {
                prop_assert_eq!(t.begin, offset);
                offset = t.end;
            }
            // Writing the parsed header again gives the same bytes.
            let again = serialize_header(&back, h.metadata.as_ref()).unwrap();
            prop_assert_eq!(again, prefix);
        }

        #[test]
        fn mutated_files_never_panic(
            tensors in arb_tensors(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
        ) {
            let prefix = serialize_header(&tensors, None).unwrap();
            let data_len: u64 = tensors.iter().map(|(_, d, s)| d.byte_len(s).unwrap()).sum();
            let mut bytes = prefix;
            bytes.resize(bytes.len() + data_len as usize, 0);
            for (at, byte, op) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match op {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    2 => { bytes.remove(i); }
                    _ => bytes.truncate(i),
                }
            }
            if let Ok(h) = parse(&bytes) {
                assert_invariants(&h, bytes.len());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(h) = parse(&bytes) {
                assert_invariants(&h, bytes.len());
            }
        }

        #[test]
        fn arbitrary_headers_never_panic(json in r#"\{[\[\]{}",:0-9a-zA-Z_ -]{0,80}"#, pad in 0usize..64) {
            let bytes = file(&json, pad);
            if let Ok(h) = parse(&bytes) {
                assert_invariants(&h, bytes.len());
            }
        }
    }
}
