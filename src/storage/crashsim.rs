//! Simulated power loss for the crash tests: a failpoint at every write, fsync, rename, create
//! and delete cairn makes in a store, and a model of what a crash at that point leaves on disk.
//!
//! Off unless the environment variable `CAIRN_TEST_CRASH_AT` (or `CAIRN_TEST_CRASH_LOG`) is set;
//! then every file operation of [`crate::storage::fsutil`] and the pack writer goes through [`op`], which
//! numbers it. With `CAIRN_TEST_CRASH_AT=N`, operation `N` (counting from 1) does not happen:
//! instead everything not yet durable is undone, as a power loss would, and the process dies
//! at once by SIGABRT (no destructors, no RocksDB shutdown).
//!
//! The model (the pessimistic end of what POSIX allows, as ext4 `data=ordered` can show it):
//! - bytes written to a file are durable once that file is fsynced; until then a crash cuts
//!   the file back to its length at its last fsync (0 for a file created since);
//! - a name created, renamed or removed is durable once its directory is fsynced; until then a
//!   crash undoes it (a removed or replaced file comes back from a hard link taken before);
//! - RocksDB manages its own files: every batch cairn writes is a synced write, durable when
//!   [`crate::storage::index`]'s `write` returns, so a batch is a failpoint before and after, with
//!   nothing to undo.
//!
//! `CAIRN_TEST_CRASH_LOG=FILE` appends one line per operation (`N kind path`) and, at a clean
//! exit ([`finish`]), one `pending ...` line per effect that was never made durable: a command
//! that exits 0 with a pending effect acknowledged something a power loss could still take.
//! `CAIRN_TEST_CRASH_BACKUP=DIR` (same filesystem as the store) holds the hard links that let a
//! simulated crash restore removed files; it defaults to the system temp dir.
//!
//! Invariant: when disabled, [`op`] is one atomic load (the check that the environment was
//! read) and a call; nothing is recorded.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

/// One kind of file-system operation, with the paths it touches.
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    /// Create a new file (the name is pending until its directory is fsynced).
    Create(&'a Path),
    /// Create a directory.
    CreateDir(&'a Path),
    /// Write (or append) bytes to a file.
    Write(&'a Path),
    /// fsync a file's data.
    SyncFile(&'a Path),
    /// Rename within one directory, replacing any file at the destination.
    Rename(&'a Path, &'a Path),
    /// Remove a file.
    Remove(&'a Path),
    /// Remove a directory and everything in it.
    RemoveDir(&'a Path),
    /// fsync a directory, making its pending names durable.
    SyncDir(&'a Path),
    /// A synced RocksDB batch is about to be written (a failpoint only).
    DbWrite(&'a Path),
    /// A synced RocksDB batch was written and is durable (a failpoint only).
    DbWritten(&'a Path),
}

impl Op<'_> {
    fn describe(&self) -> String {
        match self {
            Op::Create(p) => format!("create {}", p.display()),
            Op::CreateDir(p) => format!("mkdir {}", p.display()),
            Op::Write(p) => format!("write {}", p.display()),
            Op::SyncFile(p) => format!("fsync {}", p.display()),
            Op::Rename(a, b) => format!("rename {} {}", a.display(), b.display()),
            Op::Remove(p) => format!("unlink {}", p.display()),
            Op::RemoveDir(p) => format!("rmdir {}", p.display()),
            Op::SyncDir(p) => format!("fsync-dir {}", p.display()),
            Op::DbWrite(p) => format!("db-write {}", p.display()),
            Op::DbWritten(p) => format!("db-written {}", p.display()),
        }
    }
}

/// A name change not yet made durable by an fsync of `dir`.
#[derive(Debug)]
enum Undo {
    /// Remove this new file or directory.
    Created { dir: PathBuf, path: PathBuf },
    /// Move `to` back to `from`, and put the replaced file (if any) back at `to`.
    Renamed {
        dir: PathBuf,
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
    },
    /// Put the removed file or directory back from its backup.
    Removed {
        dir: PathBuf,
        path: PathBuf,
        backup: PathBuf,
    },
}

impl Undo {
    fn dir(&self) -> &Path {
        match self {
            Undo::Created { dir, .. } | Undo::Renamed { dir, .. } | Undo::Removed { dir, .. } => {
                dir
            }
        }
    }
}

#[derive(Default)]
struct Journal {
    /// Files with unsynced bytes: their durable length.
    data: HashMap<PathBuf, u64>,
    /// Pending name changes, oldest first.
    names: Vec<Undo>,
    backups: u64,
}

struct Sim {
    crash_at: Option<u64>,
    log: Option<Mutex<fs::File>>,
    backup_dir: PathBuf,
    /// Held shared by every operation in flight, exclusively by the crash: a crash waits for
    /// operations other threads have started, and no operation starts after it.
    gate: RwLock<()>,
    journal: Mutex<Journal>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn sim() -> Option<&'static Sim> {
    static SIM: OnceLock<Option<Sim>> = OnceLock::new();
    SIM.get_or_init(|| {
        let crash_at = std::env::var("CAIRN_TEST_CRASH_AT")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let log_path = std::env::var_os("CAIRN_TEST_CRASH_LOG");
        if crash_at.is_none() && log_path.is_none() {
            return None;
        }
        let log = log_path.and_then(|p| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
                .map(Mutex::new)
        });
        let backup_dir = std::env::var_os("CAIRN_TEST_CRASH_BACKUP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        Some(Sim {
            crash_at,
            log,
            backup_dir,
            gate: RwLock::new(()),
            journal: Mutex::new(Journal::default()),
        })
    })
    .as_ref()
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Number the operation; crash here if it is the chosen one.
fn point(sim: &Sim, what: &Op<'_>) {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(log) = &sim.log {
        let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(l, "{n} {}", what.describe());
    }
    if sim.crash_at == Some(n) {
        crash(sim, n, what);
    }
}

/// Write `note LABEL after N` to the operation log (N: operations so far), for a test that
/// needs to know which operations came after an event (say, a commit's publish). Not an
/// operation: nothing is numbered. Does nothing without `CAIRN_TEST_CRASH_LOG`.
pub fn note(label: &str) {
    if let Some(sim) = sim()
        && let Some(log) = &sim.log
    {
        let n = COUNTER.load(Ordering::SeqCst);
        let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(l, "note {label} after {n}");
    }
}

/// A failpoint with nothing to journal: numbers `what` (in practice [`Op::DbWrite`] or
/// [`Op::DbWritten`], around a synced RocksDB batch) and crashes there if it is the chosen
/// operation. Does nothing when simulation is off.
pub fn failpoint(what: Op<'_>) {
    if let Some(sim) = sim() {
        point(sim, &what);
    }
}

/// Run the file operation `f`, which does `what` (anything but a removal; use [`remove`]): a
/// failpoint when simulation is on, and its effect is journalled until it is durable. Returns
/// what `f` returns; under simulation it also fails when the backup hard link of a file a
/// rename replaces cannot be made (the rename then does not run). When off, it only calls `f`.
pub fn op<T>(what: Op<'_>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let Some(sim) = sim() else {
        return f();
    };
    debug_assert!(!matches!(what, Op::Remove(_) | Op::RemoveDir(_)));
    point(sim, &what);
    let _in_flight = sim.gate.read().unwrap_or_else(|e| e.into_inner());
    // What undoing this operation needs, taken before it runs.
    let before_len = match what {
        Op::Write(p) => fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        _ => 0,
    };
    let replaced = match what {
        Op::Rename(_, to) if to.exists() => {
            let b = sim.backup_name()?;
            fs::hard_link(to, &b)?;
            Some(b)
        }
        _ => None,
    };
    let v = match f() {
        Ok(v) => v,
        Err(e) => {
            if let Some(b) = replaced {
                let _ = fs::remove_file(b);
            }
            return Err(e);
        }
    };
    let mut j = sim.journal.lock().unwrap_or_else(|e| e.into_inner());
    match what {
        Op::Create(p) | Op::CreateDir(p) => {
            if matches!(what, Op::Create(_)) {
                // A new file holds no durable byte until it is fsynced.
                j.data.insert(p.to_path_buf(), 0);
            }
            j.names.push(Undo::Created {
                dir: parent(p),
                path: p.to_path_buf(),
            });
        }
        Op::Write(p) => {
            j.data.entry(p.to_path_buf()).or_insert(before_len);
        }
        Op::SyncFile(p) => {
            j.data.remove(p);
        }
        Op::Rename(from, to) => {
            if let Some(len) = j.data.remove(from) {
                j.data.insert(to.to_path_buf(), len);
            }
            j.names.push(Undo::Renamed {
                dir: parent(to),
                from: from.to_path_buf(),
                to: to.to_path_buf(),
                replaced,
            });
        }
        Op::SyncDir(d) => {
            let (done, pending): (Vec<Undo>, Vec<Undo>) =
                j.names.drain(..).partition(|u| u.dir() == d);
            j.names = pending;
            for u in done {
                match u {
                    Undo::Renamed {
                        replaced: Some(b), ..
                    } => {
                        let _ = fs::remove_file(b);
                    }
                    Undo::Removed { backup, .. } => {
                        let _ = remove_any(&backup);
                    }
                    _ => {}
                }
            }
        }
        Op::Remove(_) | Op::RemoveDir(_) | Op::DbWrite(_) | Op::DbWritten(_) => {}
    }
    Ok(v)
}

/// Remove a file or directory tree (`what` is [`Op::Remove`] or [`Op::RemoveDir`]) with `f`.
/// Under simulation the removal is a move into the backup directory, which a crash before the
/// directory's fsync moves back; it fails if that move fails (the backup directory must be on
/// the store's file system), or if `what` is not a removal. When off, it only calls `f`.
pub fn remove(what: Op<'_>, f: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    let Some(sim) = sim() else {
        return f();
    };
    let (Op::Remove(p) | Op::RemoveDir(p)) = what else {
        return Err(io::Error::other("crashsim::remove takes a removal"));
    };
    point(sim, &what);
    let _in_flight = sim.gate.read().unwrap_or_else(|e| e.into_inner());
    if fs::symlink_metadata(p).is_err() {
        // Let the real call report the missing path the way callers expect.
        return f();
    }
    let backup = sim.backup_name()?;
    fs::rename(p, &backup)?;
    let mut j = sim.journal.lock().unwrap_or_else(|e| e.into_inner());
    j.data.retain(|k, _| !k.starts_with(p));
    j.names.push(Undo::Removed {
        dir: parent(p),
        path: p.to_path_buf(),
        backup,
    });
    Ok(())
}

fn remove_any(p: &Path) -> io::Result<()> {
    if p.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    }
}

impl Sim {
    /// A fresh name in the backup directory (which must be on the store's filesystem).
    fn backup_name(&self) -> io::Result<PathBuf> {
        let n = {
            let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
            j.backups += 1;
            j.backups
        };
        fs::create_dir_all(&self.backup_dir)?;
        Ok(self
            .backup_dir
            .join(format!("cairn-crashsim-{}-{n}", std::process::id())))
    }
}

fn crash(sim: &Sim, n: u64, what: &Op<'_>) -> ! {
    let _all = sim.gate.write().unwrap_or_else(|e| e.into_inner());
    let j = sim.journal.lock().unwrap_or_else(|e| e.into_inner());
    // Unsynced bytes first (by current name), then names, newest first.
    for (p, len) in &j.data {
        if let Ok(f) = fs::OpenOptions::new().write(true).open(p) {
            let _ = f.set_len(*len);
        }
    }
    for u in j.names.iter().rev() {
        match u {
            Undo::Created { path, .. } => {
                let _ = remove_any(path);
            }
            Undo::Renamed {
                from, to, replaced, ..
            } => {
                let _ = fs::rename(to, from);
                if let Some(b) = replaced {
                    let _ = fs::rename(b, to);
                }
            }
            Undo::Removed { path, backup, .. } => {
                let _ = fs::rename(backup, path);
            }
        }
    }
    eprintln!(
        "cairn: simulated crash at operation {n} ({})",
        what.describe()
    );
    let _ = io::stderr().flush();
    // Die without destructors or RocksDB's shutdown, as a crash would (SIGABRT).
    std::process::abort()
}

/// Call at a clean exit: writes one `pending ...` line to the `CAIRN_TEST_CRASH_LOG` file for
/// every effect that was never made durable. Does nothing when that log is not set.
pub fn finish() {
    let Some(sim) = sim() else { return };
    let Some(log) = &sim.log else { return };
    let j = sim.journal.lock().unwrap_or_else(|e| e.into_inner());
    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
    for (p, len) in &j.data {
        let _ = writeln!(l, "pending data {} (durable length {len})", p.display());
    }
    for u in &j.names {
        let _ = writeln!(l, "pending name {u:?}");
    }
}
