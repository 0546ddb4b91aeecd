//! cairn: a content-addressed versioning store for machine-learning checkpoints.
#![deny(unsafe_code)]

pub mod codec;
pub mod dtype;
pub mod safetensors;
