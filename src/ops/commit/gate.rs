//! The [`Gate`] a commit running in the background steps aside at while the training loop
//! copies its next checkpoint (docs/architecture.md, "Async commit").
//!
//! Invariant: a closed gate only delays a commit's next chunk; it holds no lock of the store
//! and publishes nothing, so a commit paused at it is never half-visible.

#![warn(missing_docs)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Lets a commit running in the background step aside: while any [`GateClosed`] guard lives,
/// the commit's reader, encoders and pack writer wait before their next chunk. The async
/// committer closes it while the training loop copies its next checkpoint, so that copy gets
/// the cores and the memory bus to itself.
#[derive(Debug, Default)]
pub(super) struct Gate {
    /// How many [`GateClosed`] guards live.
    closed: Mutex<usize>,
    /// Signalled when the count drops to zero.
    opened: std::sync::Condvar,
    /// The same count, read without the lock on every chunk.
    any: AtomicUsize,
}

/// Keeps a [`Gate`] closed until dropped.
pub(super) struct GateClosed<'g>(&'g Gate);

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.closed
            .lock()
            .expect("the gate lock is never poisoned: no panics while held")
    }

    /// Close the gate until the returned guard drops.
    pub(super) fn close(&self) -> GateClosed<'_> {
        *self.lock() += 1;
        self.any.fetch_add(1, Ordering::SeqCst);
        GateClosed(self)
    }

    /// Wait while the gate is closed.
    pub(super) fn pass(&self) {
        if self.any.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut closed = self.lock();
        while *closed > 0 {
            closed = self
                .opened
                .wait(closed)
                .expect("the gate lock is never poisoned: no panics while held");
        }
    }
}

impl Drop for GateClosed<'_> {
    fn drop(&mut self) {
        let mut closed = self.0.lock();
        *closed -= 1;
        self.0.any.fetch_sub(1, Ordering::SeqCst);
        if *closed == 0 {
            self.0.opened.notify_all();
        }
    }
}

/// Wait at `gate`, when there is one.
pub(super) fn pass(gate: Option<&Gate>) {
    if let Some(g) = gate {
        g.pass();
    }
}
