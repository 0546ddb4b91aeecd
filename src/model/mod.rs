//! The vocabulary every other layer speaks: typed ids, dtypes, the objects a store holds
//! (commit, tree, file entries and their segments) and the chunker.
//!
//! Invariants: nothing here touches the disk or imports another part of the crate; every
//! hashed structure has one canonical byte form, so equal values have equal ids.

#![warn(missing_docs)]

pub mod chunker;
pub mod dtype;
pub mod id;
pub mod object;
pub mod path;
pub mod time;
