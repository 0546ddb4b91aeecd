//! Simulated power loss at every file operation (src/crashsim.rs): for commit, gc (prune,
//! re-encoding of delta chunks whose base dies, repack and pack deletion) and the last part of
//! a sharded commit, a run crashes at operation 1, 2, ..., K in turn; everything not yet
//! durable at that point is undone (unsynced bytes cut off, unsynced names created, renamed or
//! removed rolled back). Each crashed store must pass `fsck --read-data`, hold exactly the
//! state before or after the command, and accept the same command again. A clean run must
//! leave nothing pending: what a command acknowledges is on disk.

use crate::common::*;
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

/// Copy a directory tree (a store between runs).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

thread_local! {
    /// More environment for every simulated command of this test (its own thread).
    static EXTRA_ENV: std::cell::RefCell<Vec<(String, String)>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

/// The CLI under simulation: `CAIRN_TEST_CRASH_*` set from `env`, plus [`EXTRA_ENV`].
fn sim_cmd(store: &Path, args: &[String], env: &[(&str, String)]) -> std::process::Output {
    let mut c = std::process::Command::new(bin());
    c.env_remove("CAIRN_STORE")
        .env("CAIRN_AUTHOR", "test@cairn")
        .arg("--store")
        .arg(store)
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    EXTRA_ENV.with(|e| {
        for (k, v) in e.borrow().iter() {
            c.env(k, v);
        }
    });
    c.output().unwrap()
}

struct Run {
    /// Operations of a clean run, one line each (`N kind path`).
    ops: Vec<String>,
    /// `crashsim::note`s: each label with the number of operations before it.
    notes: Vec<(String, usize)>,
}

/// Run `args` cleanly on a copy of `base` with the operation log on; nothing may be pending.
fn clean_run(t: &Path, base: &Path, args: &[String]) -> Run {
    let store = t.join("clean");
    let _ = std::fs::remove_dir_all(&store);
    copy_tree(base, &store);
    let log = t.join("clean.log");
    let _ = std::fs::remove_file(&log);
    let out = sim_cmd(
        &store,
        args,
        &[
            ("CAIRN_TEST_CRASH_LOG", log.display().to_string()),
            (
                "CAIRN_TEST_CRASH_BACKUP",
                t.join("bk").display().to_string(),
            ),
        ],
    );
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let pending: Vec<&str> = text.lines().filter(|l| l.starts_with("pending")).collect();
    assert!(
        pending.is_empty(),
        "{args:?} exited 0 with effects a power loss could still undo:\n{}",
        pending.join("\n")
    );
    let notes: Vec<(String, usize)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("note ")?;
            let (label, n) = rest.rsplit_once(" after ")?;
            Some((label.to_string(), n.parse().ok()?))
        })
        .collect();
    let ops: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("note "))
        .map(str::to_string)
        .collect();
    for kind in ["write", "fsync", "rename", "fsync-dir"] {
        assert!(
            ops.iter().any(|l| l.split(' ').nth(1) == Some(kind)),
            "{args:?} logged no {kind}: {ops:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(&store);
    Run { ops, notes }
}

/// Crash `args` at operation `n` on a copy of `base`; returns the crashed store, or None when
/// the run had fewer operations and finished.
fn crash_at(t: &Path, base: &Path, args: &[String], n: usize) -> Option<PathBuf> {
    let store = t.join(format!("crash{n}"));
    let _ = std::fs::remove_dir_all(&store);
    copy_tree(base, &store);
    let bk = t.join(format!("bk{n}"));
    let out = sim_cmd(
        &store,
        args,
        &[
            ("CAIRN_TEST_CRASH_AT", n.to_string()),
            ("CAIRN_TEST_CRASH_BACKUP", bk.display().to_string()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return None;
    }
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "crash at {n} of {args:?}: {:?}: {stderr}",
        out.status
    );
    assert!(stderr.contains("simulated crash"), "{stderr}");
    let _ = std::fs::remove_dir_all(&bk);
    Some(store)
}

/// Which state a crashed store was left in.
enum Left {
    Before,
    After,
}

/// Crash `cmd` (whose clean run was `run`) on a copy of `base` at every operation in turn; each
/// crashed store must pass `fsck --read-data` and then `check(store, what)`, which says which
/// state it found (and runs the command again). Both states must occur.
fn crash_everywhere(
    t: &Path,
    base: &Path,
    cmd: &[String],
    run: &Run,
    name: &str,
    mut check: impl FnMut(&Path, &str) -> Left,
) {
    let (mut before, mut after) = (0, 0);
    for n in 1..=run.ops.len() {
        let Some(store) = crash_at(t, base, cmd, n) else {
            continue;
        };
        let what = format!("crash at {n} ({})", run.ops[n - 1]);
        fsck_clean(&store, &what);
        match check(&store, &what) {
            Left::Before => before += 1,
            Left::After => after += 1,
        }
        std::fs::remove_dir_all(&store).unwrap();
    }
    eprintln!(
        "{name}: {} operations, {before} crashes left the state before, {after} after",
        run.ops.len()
    );
    assert!(before > 0 && after > 0, "before {before}, after {after}");
}

fn fsck_clean(store: &Path, what: &str) {
    let out = cairn(store).args(["fsck", "--read-data"]).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: fsck failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `id` carries a prune record.
fn pruned(store: &Path, id: &str) -> bool {
    !json(store, &["show", id, "--json"])["state"]["pruned"].is_null()
}

/// After a finished gc, `packs/` holds only sealed packs (no `.pack.tmp` of a crashed copy).
fn no_pack_leftovers(store: &Path, what: &str) {
    let files: Vec<String> = std::fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        files.iter().all(|n| n.ends_with(".pack")),
        "{what}: leftovers after gc again: {files:?}"
    );
}

fn head(store: &Path) -> Option<String> {
    let v = json(store, &["log", "--json"]);
    v.as_array()
        .unwrap()
        .first()
        .map(|c| c["id"].as_str().unwrap().to_string())
}

fn checkout(store: &Path, rev: &str, dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let _ = std::fs::remove_dir_all(dir);
    let out = cairn(store)
        .args(["checkout", "--paranoid", rev])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "checkout {rev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    snapshot(dir)
}

fn ckpt(dir: &Path, seed: u64, moved: u64) {
    write_st(
        &dir.join("model.safetensors"),
        &[
            (
                "frozen",
                cairn::DType::F32,
                vec![1 << 18],
                weights(7, 1 << 18),
            ),
            (
                "moving",
                cairn::DType::F32,
                vec![1 << 18],
                weights(seed * 100 + moved, 1 << 18),
            ),
        ],
    );
    std::fs::write(dir.join("opt.bin"), noise(seed, 1 << 20)).unwrap();
    std::fs::write(
        dir.join("trainer_state.json"),
        format!("{{\"seed\": {seed}}}"),
    )
    .unwrap();
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn power_loss_at_every_operation_of_a_commit() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let base = t.join("base");
    cairn(&base).arg("init").assert().success();
    let (a, b) = (t.join("a"), t.join("b"));
    ckpt(&a, 1, 0);
    ckpt(&b, 2, 1);
    let c1 = json(&base, &["commit", "--json", a.to_str().unwrap()])["commit"]
        .as_str()
        .unwrap()
        .to_string();
    let cmd = args(&["commit", "--json", b.to_str().unwrap()]);
    let run = clean_run(t, &base, &cmd);
    let (want_a, want_b) = (snapshot(&a), snapshot(&b));
    crash_everywhere(t, &base, &cmd, &run, "commit", |store, what| {
        let h = head(store).unwrap();
        let left = if h == c1 {
            assert_eq!(checkout(store, "HEAD", &t.join("out")), want_a, "{what}");
            Left::Before
        } else {
            let show = json(store, &["show", &h, "--json"]);
            assert_eq!(
                show["parents"][0].as_str(),
                Some(c1.as_str()),
                "{what}: {show}"
            );
            assert_eq!(checkout(store, "HEAD", &t.join("out")), want_b, "{what}");
            Left::After
        };
        // The same command again just works, with no manual repair.
        let again = json(store, &cmd.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(again["commit"].is_string(), "{what}: {again}");
        assert_eq!(checkout(store, "HEAD", &t.join("out")), want_b, "{what}");
        fsck_clean(store, &format!("{what}, then again"));
        left
    });
}

/// The store the gc scenarios start from: three commits; pruning the first two (`keep-last 1`)
/// leaves their packs mostly dead (repacked, old ones unlinked) and the kept commit's tensor
/// chunks delta-coded against pruned ones (re-encoded). Returns the store, the checkpoint
/// directories, the commit ids and each checkpoint's files.
type Files = std::collections::BTreeMap<String, Vec<u8>>;
fn gc_base(t: &Path) -> (PathBuf, Vec<PathBuf>, Vec<String>, Vec<Files>) {
    let base = t.join("base");
    cairn(&base).arg("init").assert().success();
    // Pruning c0 and c1 leaves their packs mostly dead: gc repacks them and unlinks the old ones.
    let dirs: Vec<PathBuf> = (0..3).map(|i| t.join(format!("ck{i}"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(dirs[0].join("old.bin"), noise(10, 2 << 20)).unwrap();
    std::fs::write(dirs[1].join("keep.bin"), noise(11, 3 << 20)).unwrap();
    std::fs::write(dirs[1].join("drop.bin"), noise(12, 3 << 20)).unwrap();
    std::fs::write(dirs[2].join("keep.bin"), noise(11, 3 << 20)).unwrap();
    // A tensor that moves a little per commit: the kept commit's chunks are delta-coded
    // against pruned ones, so gc re-encodes them.
    let mut w: Vec<f32> = weights(3, 1 << 18)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for d in &dirs {
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        write_st(
            &d.join("model.safetensors"),
            &[("w", cairn::DType::F32, vec![1 << 18], bytes)],
        );
        for (i, x) in w.iter_mut().enumerate() {
            if i % 7 == 0 {
                *x += 1e-4;
            }
        }
    }
    let ids: Vec<String> = dirs
        .iter()
        .map(|d| {
            json(&base, &["commit", "--json", d.to_str().unwrap()])["commit"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want: Vec<_> = dirs.iter().map(|d| snapshot(d)).collect();
    (base, dirs, ids, want)
}

#[test]
fn power_loss_at_every_operation_of_gc_with_repack_and_pack_deletion() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let (base, _, ids, want) = gc_base(t);
    let cmd = args(&["gc", "--keep-last", "1", "--json"]);
    let plan = json(&base, &["gc", "--keep-last", "1", "--dry-run", "--json"]);
    assert!(
        !plan["plan"]["repack_packs"].as_array().unwrap().is_empty(),
        "{plan}"
    );
    assert!(
        plan["plan"]["reencode_chunks"].as_u64().unwrap() >= 1,
        "{plan}"
    );
    let run = clean_run(t, &base, &cmd);
    assert!(
        run.ops
            .iter()
            .any(|l| l.split(' ').nth(1) == Some("unlink")),
        "gc deleted no pack: {:#?}",
        run.ops
    );
    crash_everywhere(t, &base, &cmd, &run, "gc", |store, what| {
        // Exactly before or after: both old commits pruned, or neither.
        let p: Vec<bool> = ids[..2].iter().map(|id| pruned(store, id)).collect();
        assert_eq!(p[0], p[1], "{what}: half a gc is visible");
        let left = if p[0] {
            Left::After
        } else {
            for (id, w) in ids[..2].iter().zip(&want) {
                assert_eq!(&checkout(store, id, &t.join("out")), w, "{what}");
            }
            Left::Before
        };
        assert_eq!(checkout(store, &ids[2], &t.join("out")), want[2], "{what}");
        // gc again finishes the job.
        json(store, &cmd.iter().map(String::as_str).collect::<Vec<_>>());
        fsck_clean(store, &format!("{what}, then gc again"));
        assert!(pruned(store, &ids[0]) && pruned(store, &ids[1]), "{what}");
        assert_eq!(checkout(store, &ids[2], &t.join("out")), want[2], "{what}");
        no_pack_leftovers(store, what);
        left
    });
}

/// gc and a commit interleaved, under power loss: the gc of the scenario above, with a commit
/// landing in its copy phase (`CAIRN_TEST_GC_COMMIT_DURING_COPY`: the first checkpoint again,
/// whose chunks the plan found dead, in the same process, so the simulation numbers the
/// operations of both). A crash anywhere leaves `fsck --read-data` clean, the old head or the
/// new commit (never a lost one: a crash after the commit's publish keeps it), the new commit
/// and the kept one restoring exactly, both pruned commits pruned or neither; gc again
/// finishes the job.
#[test]
fn power_loss_at_every_operation_of_gc_with_a_commit_landing_while_it_copies() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let (base, dirs, ids, want) = gc_base(t);
    EXTRA_ENV.with(|e| {
        e.borrow_mut().push((
            "CAIRN_TEST_GC_COMMIT_DURING_COPY".into(),
            dirs[0].display().to_string(),
        ))
    });
    let cmd = args(&["gc", "--keep-last", "1", "--json"]);
    let run = clean_run(t, &base, &cmd);
    let published = run
        .notes
        .iter()
        .find(|(l, _)| l == "commit-published")
        .map(|(_, n)| *n)
        .expect("the clean run noted the commit");
    assert!(published < run.ops.len(), "gc went on after the commit");
    let mut landed = 0;
    let mut n = 0;
    crash_everywhere(t, &base, &cmd, &run, "gc beside a commit", |store, what| {
        n += 1;
        let h = head(store).unwrap();
        if h != ids[2] {
            landed += 1;
            let show: Value = json(store, &["show", &h, "--json"]);
            assert_eq!(show["parents"][0].as_str(), Some(ids[2].as_str()), "{what}");
            assert_eq!(checkout(store, &h, &t.join("out")), want[0], "{what}");
        }
        let crashed_at: usize = what
            .strip_prefix("crash at ")
            .and_then(|r| r.split(' ').next())
            .and_then(|x| x.parse().ok())
            .unwrap();
        assert!(
            crashed_at <= published || h != ids[2],
            "{what}: the commit published at operation {published} is gone"
        );
        let p: Vec<bool> = ids[..2].iter().map(|id| pruned(store, id)).collect();
        assert_eq!(p[0], p[1], "{what}: half a gc is visible");
        if !p[0] {
            for (id, w) in ids[..2].iter().zip(&want) {
                assert_eq!(&checkout(store, id, &t.join("out")), w, "{what}");
            }
        }
        assert_eq!(checkout(store, &ids[2], &t.join("out")), want[2], "{what}");
        // gc again (no commit beside it) finishes the job.
        json(store, &cmd.iter().map(String::as_str).collect::<Vec<_>>());
        fsck_clean(store, &format!("{what}, then gc again"));
        let head_now = head(store).unwrap();
        let expect = if h == ids[2] { &want[2] } else { &want[0] };
        assert_eq!(
            &checkout(store, &head_now, &t.join("out")),
            expect,
            "{what}"
        );
        no_pack_leftovers(store, what);
        if p[0] { Left::After } else { Left::Before }
    });
    eprintln!("the commit had landed in {landed} of {n} crashed stores");
    assert!(landed > 0);
}

#[test]
fn power_loss_at_every_operation_of_the_last_part_of_a_sharded_commit() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let base = t.join("base");
    cairn(&base).arg("init").assert().success();
    let (p1, p2, first) = (t.join("p1"), t.join("p2"), t.join("first"));
    ckpt(&first, 3, 0);
    ckpt(&p1, 4, 0);
    std::fs::create_dir_all(&p2).unwrap();
    std::fs::write(p2.join("rank2.bin"), noise(5, 1 << 20)).unwrap();
    let c1 = json(&base, &["commit", "--json", first.to_str().unwrap()])["commit"]
        .as_str()
        .unwrap()
        .to_string();
    json(
        &base,
        &[
            "commit",
            "--json",
            "--txn",
            "s1",
            "--part",
            "1/2",
            p1.to_str().unwrap(),
        ],
    );
    let cmd = args(&[
        "commit",
        "--json",
        "--txn",
        "s1",
        "--part",
        "2/2",
        p2.to_str().unwrap(),
    ]);
    let run = clean_run(t, &base, &cmd);
    let mut want = snapshot(&p1);
    want.extend(snapshot(&p2));
    crash_everywhere(t, &base, &cmd, &run, "txn", |store, what| {
        let h = head(store).unwrap();
        let left = if h == c1 {
            // Staging part 2 again completes the transaction.
            let out = sim_cmd(store, &cmd, &[]);
            assert!(
                out.status.success(),
                "{what}: part 2 again: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Left::Before
        } else {
            let show: Value = json(store, &["show", &h, "--json"]);
            assert_eq!(show["parents"][0].as_str(), Some(c1.as_str()), "{what}");
            // Staging part 2 again never publishes the transaction twice.
            let out = sim_cmd(store, &cmd, &[]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || err.contains("already committed"),
                "{what}: part 2 again: {err}"
            );
            assert_eq!(head(store).unwrap(), h, "{what}: published twice");
            Left::After
        };
        assert_ne!(head(store).unwrap(), c1, "{what}");
        assert_eq!(checkout(store, "HEAD", &t.join("out")), want, "{what}");
        fsck_clean(store, &format!("{what}, then again"));
        left
    });
}

/// The first commit of a new store creates its reflog: the new name is fsynced with its
/// directory before the commit is acknowledged.
#[test]
fn a_first_commit_leaves_nothing_pending() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let base = t.join("base");
    cairn(&base).arg("init").assert().success();
    assert!(!base.join("reflog").exists(), "init already wrote a reflog");
    let a = t.join("a");
    ckpt(&a, 1, 0);
    let run = clean_run(t, &base, &args(&["commit", "--json", a.to_str().unwrap()]));
    assert!(
        run.ops
            .iter()
            .any(|l| l.split(' ').nth(1) == Some("create") && l.ends_with("/reflog")),
        "the commit did not create the reflog: {:#?}",
        run.ops
    );
}
