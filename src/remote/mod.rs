//! Remotes on object storage (empty for now): the place for pushing to and fetching from an
//! S3-compatible bucket or a shared filesystem.
//!
//! Invariants, for when it lands: [`crate::ops`] may import the remote; [`crate::storage`]
//! never does, so a store works the same with no remote configured.
