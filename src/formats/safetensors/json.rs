//! Reading the header JSON with serde visitors that see every key.
//!
//! serde_json's own maps keep the last of repeated keys, so the header is read with visitors that
//! see every key. A visitor can only return serde_json's untyped error; the typed reason travels
//! beside it in `Cx`. The innermost recorder wins: it knows the most precise context.
//!
//! Invariants: no repeated key in any object is accepted, every vector grows one element per
//! element present in the JSON (no length from the input is trusted as a capacity), and an error
//! is reported as the typed [`SafetensorsError`] of the rule it breaks whenever one applies.

#![warn(missing_docs)]

use super::{METADATA_KEY, Result, SafetensorsError, check_name};
use crate::model::dtype::DType;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Where the typed reason of a failure waits while serde unwinds with its untyped error.
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

/// One header entry as written, before its offsets are checked.
pub(super) struct RawEntry {
    /// The `dtype` field.
    pub(super) dtype: DType,
    /// The `shape` field.
    pub(super) shape: Vec<u64>,
    /// The `data_offsets` field: `[begin, end]`.
    pub(super) offsets: [u64; 2],
}

/// The header as written: its entries in JSON order, and its metadata.
pub(super) struct RawHeader {
    /// Tensor name and entry, in the order the JSON lists them.
    pub(super) entries: Vec<(String, RawEntry)>,
    /// The `__metadata__` object.
    pub(super) metadata: Option<BTreeMap<String, String>>,
}

/// Read the header JSON `body` (padding stripped): one object, nothing after it.
pub(super) fn parse_json(body: &[u8]) -> Result<RawHeader> {
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

/// Reads the top-level object: tensor entries and `__metadata__`.
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

/// Reads `__metadata__`: strings to strings, no repeated key.
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

/// Reads one tensor entry: exactly `dtype`, `shape` and `data_offsets`.
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

/// Reads a `dtype` field: a dtype name cairn knows.
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

/// Reads a `shape` field: non-negative integers that fit in 64 bits.
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

/// Reads a `data_offsets` field: exactly two non-negative 64-bit integers.
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
