//! Progress reporting hooks. The library never prints; a caller that wants a progress bar passes
//! an implementation (the CLI uses indicatif on a terminal).
#![warn(missing_docs)]

/// Receives progress of a long operation, in bytes.
pub trait Progress: Sync {
    /// A phase begins; `total` bytes are expected.
    fn begin(&self, what: &str, total: u64);
    /// `n` more bytes are done.
    fn advance(&self, n: u64);
    /// The phase is over.
    fn end(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}
