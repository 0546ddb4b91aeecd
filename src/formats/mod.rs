//! Readers of the checkpoint file formats cairn understands: safetensors and torch.save zip
//! archives.
//!
//! Invariants: input is untrusted; a parser never panics, bounds every allocation by the
//! input's size and reports a malformed file with the rule it breaks. Parsers need no store
//! (the `store` feature is off for the fuzz targets), and import only [`crate::model`].

#![warn(missing_docs)]

pub mod safetensors;
pub mod torchzip;
