//! Async commit for training loops: the caller's tensors are copied into buffers the committer
//! owns, control returns, and hashing, encoding, writing and publishing go on in the background.
//!
//! An [`AsyncCommitter`] owns an `Arc<Store>` and one worker thread. [`AsyncCommitter::begin`]
//! hands out an [`AsyncCommit`] to fill ([`AsyncCommit::add_tensors`], [`AsyncCommit::add_bytes`]);
//! [`AsyncCommit::submit`] queues it and returns a [`CommitHandle`] that reports the
//! [`CommitOutcome`] or the error.
//!
//! Invariants:
//! - When `add_tensors` or `add_bytes` returns, every byte it was given has been copied into a
//!   buffer of the committer: the caller may overwrite or free its own memory at once.
//! - The worker runs submitted commits one at a time, in submission order, through the ordinary
//!   write path ([`crate::CommitBuilder::commit`]): the same dedup, delta coding, fsyncs and
//!   publish protocol as a synchronous commit. So commits submitted to one branch chain their
//!   parents in submission order (a failed one is simply absent from the chain).
//! - A failed background commit is never visible: a commit becomes visible only through the
//!   publish step's single synced index batch, which is its last step (docs/architecture.md,
//!   "The write path"). Its error is what [`CommitHandle::wait`] returns.
//! - At most [`AsyncOptions::max_in_flight`] commits hold buffers at once, counted from `begin`
//!   until their background work ends; `begin` waits for a free slot (the backpressure).
//! - Every submitted commit runs to the end even if its handle is dropped; dropping the
//!   committer waits for all of them.
//! - Buffers are reused: a slot keeps the buffers of its last commit, and the next commit
//!   through that slot copies its i-th file into the i-th buffer, so a steady-state training
//!   loop copies into memory that is already mapped (no page faults of a fresh allocation).
//! - With [`AsyncOptions::pause_for_copies`] (the default), a commit running in the background
//!   waits before its next chunk while `add_tensors` or `add_bytes` copies, so the copy is not
//!   slowed by it; the pause holds no lock and publishes nothing.

#![warn(missing_docs)]

use crate::model::dtype::DType;
use crate::ops::commit::error::Result;
use crate::ops::commit::{
    CommitBuilder, CommitError, CommitOptions, CommitOutcome, Gate, tensor_file_header,
};
use crate::ops::gc::PolicyClaim;
use crate::storage::store::Store;
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Settings of an [`AsyncCommitter`].
#[derive(Clone, Debug)]
pub struct AsyncOptions {
    /// Commits that may hold buffers at once (being filled, queued or running); at least 1.
    /// Each holds a full copy of its files, so memory grows with this number. With the
    /// default, 1, `begin` waits until the previous commit has finished.
    pub max_in_flight: usize,
    /// Keep each slot's buffers for the next commit (memory stays allocated between commits;
    /// the copy then costs no page faults). Off: buffers are freed after each commit.
    pub keep_buffers: bool,
    /// Threads that hash and encode in the background. `None` shares rayon's global pool (all
    /// cores: the fastest commit, but it competes with the training step); `Some(n)` gives the
    /// worker a pool of its own with `n` threads, leaving the other cores to training. (The
    /// write path's reader thread and the pack writes run alongside; on the 2-core development
    /// machine this did not shorten a copy made beside a running commit, docs/benchmarks.md.)
    pub threads: Option<usize>,
    /// While the caller copies a checkpoint in (`add_tensors`, `add_bytes`), a commit running in
    /// the background pauses before its next chunk, so the copy (the training loop's stall)
    /// gets the cores and the memory bus; the background commit takes that much longer. Only
    /// matters with `max_in_flight` above 1. Off: both run at once.
    pub pause_for_copies: bool,
}

impl Default for AsyncOptions {
    fn default() -> AsyncOptions {
        AsyncOptions {
            max_in_flight: 1,
            keep_buffers: true,
            threads: None,
            pause_for_copies: true,
        }
    }
}

/// A tensor lent by the caller for the duration of one [`AsyncCommit::add_tensors`] call.
/// `data` is the tensor's bytes in safetensors order: little-endian, row-major.
#[derive(Clone, Copy, Debug)]
pub struct TensorSlice<'a> {
    /// The tensor's name in the safetensors header.
    pub name: &'a str,
    /// Its element type.
    pub dtype: DType,
    /// Its dimensions, outermost first.
    pub shape: &'a [u64],
    /// Its bytes; exactly what `dtype` and `shape` take.
    pub data: &'a [u8],
}

/// A slot's reusable buffers, one per file of the commit that last used it.
type Buffers = Vec<Vec<u8>>;

struct SlotState {
    free: Vec<Buffers>,
    /// Submitted commits whose handle is not completed yet.
    pending: usize,
    /// Set when the worker thread has ended; no slot will come back after that.
    worker_gone: bool,
}

struct Slots {
    state: Mutex<SlotState>,
    changed: Condvar,
}

impl Slots {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state
            .lock()
            .expect("the slot lock is never poisoned: nothing panics while holding it")
    }

    fn release(&self, buffers: Buffers) {
        self.lock().free.push(buffers);
        self.changed.notify_all();
    }

    fn finished_one(&self) {
        self.lock().pending -= 1;
        self.changed.notify_all();
    }
}

/// Where a background commit leaves its result for its [`CommitHandle`].
struct Done {
    result: Mutex<Option<Result<CommitOutcome>>>,
    ready: Condvar,
}

impl Done {
    fn lock(&self) -> MutexGuard<'_, Option<Result<CommitOutcome>>> {
        self.result
            .lock()
            .expect("the result lock is never poisoned: nothing panics while holding it")
    }
}

/// The worker's side of a [`CommitHandle`]. If it is dropped without a result (the worker ended
/// before running the commit), the handle gets an error instead of waiting forever.
struct Completer {
    done: Arc<Done>,
    completed: bool,
}

impl Completer {
    fn complete(mut self, r: Result<CommitOutcome>) {
        self.set(r);
    }

    fn set(&mut self, r: Result<CommitOutcome>) {
        *self.done.lock() = Some(r);
        self.completed = true;
        self.done.ready.notify_all();
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if !self.completed {
            self.set(Err(CommitError::NotRun));
        }
    }
}

struct Job {
    opts: CommitOptions,
    files: Vec<(String, Arc<Vec<u8>>)>,
    spare: Buffers,
    done: Completer,
}

/// Runs commits in the background, one at a time, in the order they are submitted.
///
/// ```
/// use cairn::ops::commit::async_commit::{AsyncCommitter, TensorSlice};
/// use cairn::{CommitOptions, DType, Store};
/// use std::sync::Arc;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let store = Arc::new(Store::init(&dir.path().join("store"))?);
/// let committer = AsyncCommitter::new(store.clone())?;
/// let mut weights = vec![0f32; 1024];
/// let mut pending = None;
/// for step in 1..=3u64 {
///     weights.iter_mut().for_each(|w| *w += 0.01); // a training step
///     let mut opts = CommitOptions::default();
///     opts.message = format!("step {step}");
///     opts.meta.step = Some(step);
///     // Waits for the previous commit's slot (one in flight by default), copies, returns.
///     let mut c = committer.begin(opts)?;
///     c.add_tensors(
///         "model.safetensors",
///         &[TensorSlice {
///             name: "w",
///             dtype: DType::F32,
///             shape: &[1024],
///             data: bytemuck::cast_slice(&weights),
///         }],
///         None,
///     )?;
///     c.add_bytes("trainer_state.json", format!("{{\"global_step\": {step}}}").as_bytes())?;
///     // `weights` may change from here on; the commit has its own copy.
///     if let Some(previous) = pending.replace(c.submit()) {
///         let outcome = previous.wait()?;
///         println!("committed {}", outcome.commit.short());
///     }
/// }
/// let last = pending.expect("three commits submitted").wait()?;
/// assert_eq!(store.head()?, Some(last.commit));
/// # Ok(()) }
/// ```
pub struct AsyncCommitter {
    store: Arc<Store>,
    slots: Arc<Slots>,
    keep_buffers: bool,
    /// Closed while the caller copies, when [`AsyncOptions::pause_for_copies`] is on.
    gate: Option<Arc<Gate>>,
    queue: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    /// Runs the store's retention policy after commits, off the worker's path.
    policy_gc: Option<JoinHandle<()>>,
}

impl AsyncCommitter {
    /// A committer with the default [`AsyncOptions`] (one commit in flight, buffers kept).
    pub fn new(store: Arc<Store>) -> Result<AsyncCommitter> {
        AsyncCommitter::with_options(store, AsyncOptions::default())
    }

    /// A committer with `opts`: its worker thread (and, with [`AsyncOptions::threads`], its
    /// encoding pool) starts now. Refuses `max_in_flight` 0.
    pub fn with_options(store: Arc<Store>, opts: AsyncOptions) -> Result<AsyncCommitter> {
        if opts.max_in_flight == 0 {
            return Err(CommitError::ZeroInFlight);
        }
        let slots = Arc::new(Slots {
            state: Mutex::new(SlotState {
                free: vec![Vec::new(); opts.max_in_flight],
                pending: 0,
                worker_gone: false,
            }),
            changed: Condvar::new(),
        });
        let pool = match opts.threads {
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n.max(1))
                    .thread_name(|i| format!("cairn-async-encode-{i}"))
                    .build()
                    .map_err(|e| CommitError::Worker {
                        store: store.root().to_path_buf(),
                        source: std::io::Error::other(e),
                    })?,
            ),
            None => None,
        };
        let gate = opts.pause_for_copies.then(|| Arc::new(Gate::default()));
        let (queue, jobs) = mpsc::channel::<Job>();
        let (due, due_rx) = mpsc::channel::<(String, PolicyClaim)>();
        let policy_gc = {
            let s = store.clone();
            std::thread::Builder::new()
                .name("cairn-policy-gc".into())
                .spawn(move || policy_runs(&s, due_rx))
                .map_err(|source| CommitError::Worker {
                    store: store.root().to_path_buf(),
                    source,
                })?
        };
        let worker = {
            let (s, slots, g) = (store.clone(), slots.clone(), gate.clone());
            let keep = opts.keep_buffers;
            std::thread::Builder::new()
                .name("cairn-async-commit".into())
                .spawn(move || match pool {
                    // The write path's parallel steps run in whichever pool they are called from.
                    Some(p) => p.install(|| work(&s, &slots, keep, g, jobs, due)),
                    None => work(&s, &slots, keep, g, jobs, due),
                })
                .map_err(|source| CommitError::Worker {
                    store: store.root().to_path_buf(),
                    source,
                })?
        };
        Ok(AsyncCommitter {
            store,
            slots,
            keep_buffers: opts.keep_buffers,
            gate,
            queue: Some(queue),
            worker: Some(worker),
            policy_gc: Some(policy_gc),
        })
    }

    /// The store commits go to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Start a commit: waits until fewer than `max_in_flight` commits hold buffers, then takes
    /// a slot. Dropping the returned [`AsyncCommit`] without submitting it frees the slot (a
    /// thread that calls `begin` while holding an unsubmitted commit of its own, with no slot
    /// free, waits forever).
    ///
    /// `time_ns` defaults to the submit time (when the state was captured), not to the time
    /// the background commit writes it. `branch: None` means the current branch when the
    /// commit runs; set it to pin the branch.
    pub fn begin(&self, opts: CommitOptions) -> Result<AsyncCommit<'_>> {
        let mut state = self.slots.lock();
        let mut spare = loop {
            if let Some(b) = state.free.pop() {
                break b;
            }
            if state.worker_gone {
                return Err(CommitError::WorkerGone);
            }
            state = self
                .slots
                .changed
                .wait(state)
                .expect("the slot lock is never poisoned: nothing panics while holding it");
        };
        drop(state);
        // Popped from the back, so the i-th file gets the buffer the i-th file had last time.
        spare.reverse();
        Ok(AsyncCommit {
            committer: self,
            opts: Some(opts),
            files: Vec::new(),
            spare,
        })
    }

    /// Commit one safetensors file of `tensors` at `rel`: [`AsyncCommitter::begin`],
    /// [`AsyncCommit::add_tensors`] and [`AsyncCommit::submit`] in one call.
    pub fn commit_tensors(
        &self,
        opts: CommitOptions,
        rel: &str,
        tensors: &[TensorSlice<'_>],
        metadata: Option<&BTreeMap<String, String>>,
    ) -> Result<CommitHandle> {
        let mut c = self.begin(opts)?;
        c.add_tensors(rel, tensors, metadata)?;
        Ok(c.submit())
    }

    /// Wait until every submitted commit has finished (its handle holds its result).
    pub fn flush(&self) {
        let mut state = self.slots.lock();
        while state.pending > 0 && !state.worker_gone {
            state = self
                .slots
                .changed
                .wait(state)
                .expect("the slot lock is never poisoned: nothing panics while holding it");
        }
    }
}

impl Drop for AsyncCommitter {
    /// Waits for every submitted commit to finish: none is abandoned half-way.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(w) = self.worker.take() {
            // A panic of the worker itself (outside a commit) already failed the handles of
            // the commits it did not run; there is nothing more to report here.
            let _ = w.join();
        }
        // The worker dropped its sender: the policy thread ends after the run it is in.
        if let Some(g) = self.policy_gc.take() {
            let _ = g.join();
        }
    }
}

/// The policy thread: after each commit whose store has a retention policy, run it on that
/// commit's branch with the claim the worker took (`gc::run_policy_claimed`, recorded for
/// `cairn gc --status`).
fn policy_runs(store: &Store, due: mpsc::Receiver<(String, PolicyClaim)>) {
    for (b, claim) in due {
        // The outcome, or the error, is in the status record; the commits stand either way.
        let trigger = format!("policy after commit on {b}");
        let _ = crate::ops::gc::run_policy_claimed(store, claim, &b, &trigger);
    }
}

/// The worker thread: run each job, give its buffers back to a slot, then complete its handle;
/// a commit whose store has a retention policy is handed on to the policy thread (`due`).
fn work(
    store: &Store,
    slots: &Slots,
    keep_buffers: bool,
    gate: Option<Arc<Gate>>,
    jobs: mpsc::Receiver<Job>,
    due: mpsc::Sender<(String, PolicyClaim)>,
) {
    struct Gone<'a>(&'a Slots);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            self.0.lock().worker_gone = true;
            self.0.changed.notify_all();
        }
    }
    let _gone = Gone(slots);
    for job in jobs {
        let Job {
            opts,
            files,
            spare,
            done,
        } = job;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut b = CommitBuilder::new(store, opts);
            if let Some(g) = &gate {
                b = b.gate(g.clone());
            }
            for (rel, bytes) in &files {
                b.add_shared(rel, bytes.clone())?;
            }
            b.commit()
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panicked".into());
            Err(CommitError::Panicked { what })
        });
        // The builder is gone, so each Arc is the last one and its buffer comes back.
        let mut buffers: Buffers = if keep_buffers {
            files
                .into_iter()
                .filter_map(|(_, b)| Arc::try_unwrap(b).ok())
                .collect()
        } else {
            Vec::new()
        };
        if keep_buffers {
            buffers.extend(spare.into_iter().rev());
        }
        slots.release(buffers);
        // Claimed before the handle completes, so a caller that waits for the commit and then
        // for gc (`gc::wait_idle`) sees the run. No claim: a run already waiting covers it.
        let policy = result
            .as_ref()
            .ok()
            .and_then(|o| o.auto_gc.as_ref().map(|a| a.branch.clone()))
            .and_then(|b| {
                crate::ops::gc::claim_policy_run(store.root())
                    .ok()
                    .flatten()
                    .map(|c| (b, c))
            });
        done.complete(result);
        slots.finished_one();
        if let Some(run) = policy {
            let _ = due.send(run);
        }
    }
}

/// A commit being filled; it holds one of the committer's slots until submitted or dropped.
pub struct AsyncCommit<'c> {
    committer: &'c AsyncCommitter,
    /// Taken by `submit`.
    opts: Option<CommitOptions>,
    files: Vec<(String, Arc<Vec<u8>>)>,
    /// Buffers of the slot not used yet, in reverse file order.
    spare: Buffers,
}

impl AsyncCommit<'_> {
    /// The commit's options, to change before [`AsyncCommit::submit`].
    pub fn options_mut(&mut self) -> &mut CommitOptions {
        self.opts
            .as_mut()
            .expect("options are taken only by submit, which consumes self")
    }

    /// Copy `tensors` into a buffer of the committer, laid out as one safetensors file at `rel`
    /// (tensors in the order given). The names, dtypes, shapes and lengths are checked before
    /// anything is copied. When this returns, the caller's slices are no longer needed.
    pub fn add_tensors(
        &mut self,
        rel: &str,
        tensors: &[TensorSlice<'_>],
        metadata: Option<&BTreeMap<String, String>>,
    ) -> Result<()> {
        crate::model::path::check_rel_path(rel)?;
        let header = tensor_file_header(rel, tensors, metadata)?;
        let len = header.len() + tensors.iter().map(|t| t.data.len()).sum::<usize>();
        let _paused = self.committer.gate.as_deref().map(Gate::close);
        let mut buf = self.buffer(len);
        buf.extend_from_slice(&header);
        for t in tensors {
            buf.extend_from_slice(t.data);
        }
        self.files.push((rel.to_string(), Arc::new(buf)));
        Ok(())
    }

    /// Copy `bytes` into a buffer of the committer as the file at `rel`.
    pub fn add_bytes(&mut self, rel: &str, bytes: &[u8]) -> Result<()> {
        crate::model::path::check_rel_path(rel)?;
        let _paused = self.committer.gate.as_deref().map(Gate::close);
        let mut buf = self.buffer(bytes.len());
        buf.extend_from_slice(bytes);
        self.files.push((rel.to_string(), Arc::new(buf)));
        Ok(())
    }

    /// The slot's next buffer, emptied, with room for `len` bytes.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.reserve_exact(len);
        buf
    }

    /// Queue the commit for the worker; the handle reports its outcome.
    pub fn submit(mut self) -> CommitHandle {
        let done = Arc::new(Done {
            result: Mutex::new(None),
            ready: Condvar::new(),
        });
        let mut opts = self
            .opts
            .take()
            .expect("options are taken only here, and submit consumes self");
        opts.time_ns
            .get_or_insert_with(crate::storage::store::now_ns);
        let job = Job {
            opts,
            files: std::mem::take(&mut self.files),
            spare: std::mem::take(&mut self.spare),
            done: Completer {
                done: done.clone(),
                completed: false,
            },
        };
        let slots = &self.committer.slots;
        slots.lock().pending += 1;
        let sent = self
            .committer
            .queue
            .as_ref()
            .expect("the queue is taken only when the committer is dropped")
            .send(job);
        if let Err(mpsc::SendError(job)) = sent {
            // The worker is gone: the job's completer fails the handle as it drops.
            drop(job);
            slots.finished_one();
        }
        CommitHandle { done }
    }
}

impl Drop for AsyncCommit<'_> {
    /// An unsubmitted commit gives its slot back (submit leaves `opts` empty).
    fn drop(&mut self) {
        if self.opts.is_some() {
            let mut buffers: Buffers = Vec::new();
            if self.committer.keep_buffers {
                buffers = std::mem::take(&mut self.files)
                    .into_iter()
                    .filter_map(|(_, b)| Arc::try_unwrap(b).ok())
                    .collect();
                buffers.extend(std::mem::take(&mut self.spare).into_iter().rev());
            }
            self.committer.slots.release(buffers);
        }
    }
}

/// The outcome of a submitted commit, once the background work is done. Dropping the handle
/// does not cancel the commit; its outcome (or error) is then discarded.
pub struct CommitHandle {
    done: Arc<Done>,
}

impl CommitHandle {
    /// Whether the commit has finished (published, or failed with nothing published).
    pub fn is_finished(&self) -> bool {
        self.done.lock().is_some()
    }

    /// Wait for the commit to finish: its outcome, or the error that stopped it (in which case
    /// nothing of it is visible in the store).
    pub fn wait(self) -> Result<CommitOutcome> {
        let mut r = self.done.lock();
        loop {
            if let Some(out) = r.take() {
                return out;
            }
            r = self
                .done
                .ready
                .wait(r)
                .expect("the result lock is never poisoned: nothing panics while holding it");
        }
    }
}

#[cfg(test)]
mod tests;
