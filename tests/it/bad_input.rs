//! Bad input gets a clear error and a non-zero exit, never a panic, and leaves the store as it
//! was: malformed safetensors, unknown revisions, missing or damaged stores, unwritable places.

use crate::common::*;
use cairn::DType;
use std::path::Path;

fn init(store: &Path) {
    cairn(store).arg("init").assert().success();
}

fn no_panic(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
}

#[test]
fn every_malformed_safetensors_aborts_the_commit_naming_file_and_rule() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init(&store);
    // One good commit first, so "unchanged" means something.
    let good = t.path().join("good");
    checkpoint(&good, 4);
    cairn(&store).arg("commit").arg(&good).assert().success();
    let listing = store_listing(&store);
    let log_before = cairn(&store)
        .args(["log", "--json"])
        .output()
        .unwrap()
        .stdout;
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/malformed_safetensors");
    let mut n = 0;
    for e in std::fs::read_dir(&corpus).unwrap() {
        let bad = e.unwrap().path();
        if bad.extension().and_then(|x| x.to_str()) != Some("safetensors") {
            continue;
        }
        n += 1;
        let ck = t.path().join(format!("ck{n}"));
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join("config.json"), b"{}").unwrap();
        std::fs::copy(&bad, ck.join("model.safetensors")).unwrap();
        let out = cairn(&store).arg("commit").arg(&ck).output().unwrap();
        no_panic(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("model.safetensors") && err.contains("not a valid safetensors file"),
            "{}: {err}",
            bad.display()
        );
        assert_eq!(
            store_listing(&store),
            listing,
            "{} changed the store",
            bad.display()
        );
    }
    assert!(n >= 10, "corpus has only {n} files");
    let log_after = cairn(&store)
        .args(["log", "--json", "main"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(log_before, log_after);
}

#[test]
fn opaque_flag_stores_a_malformed_file_as_bytes() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init(&store);
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(
        ck.join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\xffnot json",
    )
    .unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().code(1);
    cairn(&store)
        .args(["commit", "--opaque", "model.safetensors"])
        .arg(&ck)
        .assert()
        .success();
    let out = cairn(&store)
        .args(["cat", "HEAD:model.safetensors"])
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        std::fs::read(ck.join("model.safetensors")).unwrap()
    );
}

#[test]
fn unknown_revisions_and_paths() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init(&store);
    // Nothing committed yet.
    let out = cairn(&store).args(["show", "HEAD"]).output().unwrap();
    no_panic(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no commits yet"));
    let ck = t.path().join("ck");
    checkpoint(&ck, 5);
    cairn(&store).arg("commit").arg(&ck).assert().success();
    for (args, needle) in [
        (vec!["show", "nosuchbranch"], "unknown revision"),
        (vec!["show", "HEAD~5"], "has no parent"),
        (vec!["show", "ffff"], "no commit id starts with it"),
        (vec!["show", "HEAD~x"], "expected ~N or ^N"),
        (vec!["cat", "HEAD:missing.bin"], "no such file"),
        (vec!["cat", "HEAD"], "expected REV:PATH"),
        (
            vec!["tensor", "HEAD", "nope", "-o", "/tmp/x.npy"],
            "no tensor named",
        ),
        (
            vec!["tensor", "HEAD", "t.BF16", "-o", "/tmp/x.npy"],
            ".safetensors",
        ),
        (
            vec!["tensor", "HEAD", "t.F32", "-o", "/tmp/x.txt"],
            ".npy or .safetensors",
        ),
        (vec!["switch", "nope"], "does not exist"),
        (vec!["branch", "HEAD"], "reserved"),
        (vec!["branch", "a..b"], "invalid branch name"),
        (vec!["commit", "/nonexistent/dir"], "/nonexistent/dir"),
    ] {
        let out = cairn(&store).args(&args).output().unwrap();
        no_panic(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn missing_and_damaged_stores() {
    let t = tempfile::tempdir().unwrap();
    let nowhere = t.path().join("nowhere");
    let out = cairn(&nowhere).arg("log").output().unwrap();
    no_panic(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a cairn store"));
    // No --store and no .cairn above: the search is explained.
    let out = std::process::Command::new(bin())
        .env_remove("CAIRN_STORE")
        .current_dir(t.path())
        .arg("log")
        .output()
        .unwrap();
    no_panic(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cairn store found"));
    // A damaged marker.
    let store = t.path().join("store");
    init(&store);
    std::fs::write(store.join("CAIRN"), b"{garbage").unwrap();
    let out = cairn(&store).arg("log").output().unwrap();
    no_panic(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"));
    // A future format.
    std::fs::write(
        store.join("CAIRN"),
        br#"{"format": 99, "store_id": "x", "created_ns": 0}"#,
    )
    .unwrap();
    let out = cairn(&store).arg("log").output().unwrap();
    no_panic(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("format version 99"));
    // init over an existing store or a non-empty directory is refused.
    let s2 = t.path().join("s2");
    init(&s2);
    let out = cairn(&s2).arg("init").output().unwrap();
    no_panic(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already a cairn store"));
    let full = t.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("mine.txt"), b"x").unwrap();
    let out = cairn(&full).arg("init").output().unwrap();
    no_panic(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

/// Runs `f` with `dir` made read-only: a read-only bind mount when we are root (CI), else a
/// chmod (root ignores permission bits, so that alone would prove nothing).
fn with_read_only(dir: &Path, f: impl FnOnce()) {
    let root = unsafe_free_is_root();
    if root {
        let ok = std::process::Command::new("mount")
            .args(["--bind"])
            .arg(dir)
            .arg(dir)
            .status()
            .unwrap()
            .success()
            && std::process::Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(dir)
                .status()
                .unwrap()
                .success();
        assert!(
            ok,
            "could not set up a read-only bind mount of {}",
            dir.display()
        );
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = std::process::Command::new("umount").arg(dir).status();
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    } else {
        use std::os::unix::fs::PermissionsExt;
        let set = |mode| {
            for e in walk_dirs(dir) {
                std::fs::set_permissions(&e, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        };
        set(0o555);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        set(0o755);
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }
}

fn walk_dirs(d: &Path) -> Vec<std::path::PathBuf> {
    let mut v = vec![d.to_path_buf()];
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk_dirs(&p));
        }
    }
    v
}

fn unsafe_free_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn read_only_store_refuses_writes_cleanly_and_still_serves_reads() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init(&store);
    let ck = t.path().join("ck");
    checkpoint(&ck, 6);
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let listing = store_listing(&store);
    let ck2 = t.path().join("ck2");
    checkpoint(&ck2, 7);
    with_read_only(&store, || {
        let out = cairn(&store).arg("commit").arg(&ck2).output().unwrap();
        no_panic(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Read-only file system") || err.contains("ermission denied"),
            "{err}"
        );
        let out = cairn(&store).args(["branch", "x"]).output().unwrap();
        no_panic(&out);
        // Reads work on a read-only store.
        cairn(&store).args(["log"]).assert().success();
        cairn(&store).args(["show", "HEAD"]).assert().success();
        let dst = t.path().join("out");
        cairn(&store)
            .args(["checkout", "HEAD"])
            .arg(&dst)
            .assert()
            .success();
        assert_eq!(snapshot(&ck), snapshot(&dst));
    });
    assert_eq!(store_listing(&store), listing);
    // And the store is fine for writing afterwards.
    cairn(&store).arg("commit").arg(&ck2).assert().success();
}

#[test]
fn checkout_into_an_unwritable_or_nonempty_directory() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init(&store);
    let ck = t.path().join("ck");
    checkpoint(&ck, 8);
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let busy = t.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), b"mine").unwrap();
    let out = cairn(&store)
        .args(["checkout", "HEAD"])
        .arg(&busy)
        .output()
        .unwrap();
    no_panic(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(std::fs::read(busy.join("keep.txt")).unwrap(), b"mine");
    let ro = t.path().join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    with_read_only(&ro, || {
        let out = cairn(&store)
            .args(["checkout", "HEAD"])
            .arg(ro.join("sub"))
            .output()
            .unwrap();
        no_panic(&out);
        assert!(String::from_utf8_lossy(&out.stderr).contains("ro/sub"));
    });
}

/// Write `tree` and a commit of it (child of `head`, otherwise `good`) into a new pack by hand,
/// index them with `repair --rebuild-index`, and return the commit's id.
fn forge_tree(
    store: &Path,
    s: &cairn::Store,
    head: cairn::CommitId,
    good: &cairn::model::object::Commit,
    tree: &cairn::model::object::Tree,
) -> String {
    use cairn::model::object::{Commit, KIND_COMMIT, KIND_TREE};
    let (tid, tbytes) = tree.encode();
    let c = Commit {
        parents: vec![head],
        tree: tid,
        ..good.clone()
    };
    let (cid, cbytes) = c.encode();
    let mut w = cairn::storage::pack::PackWriter::create(&s.packs_dir()).unwrap();
    w.append_object(tid.into(), KIND_TREE, &tbytes).unwrap();
    w.append_object(cid.into(), KIND_COMMIT, &cbytes).unwrap();
    w.seal().unwrap();
    cairn(store)
        .args(["repair", "--rebuild-index"])
        .assert()
        .success();
    cid.to_string()
}

/// A tree whose recorded SHA-256 is not its bytes' (a stranger's store): the chunks are what the
/// tree lists, so the default checkout restores them (it checks each chunk's BLAKE3 and the
/// size); `checkout --paranoid`, `cat --paranoid`, `verify` and `fsck --read-data` read the
/// bytes whole and name the mismatch, and the paranoid checkout leaves no file under the name.
#[test]
fn a_recorded_sha256_that_lies_is_caught_by_the_paranoid_checks() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init(&store);
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("a.bin"), noise(3, 3 << 20)).unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let s = cairn::Store::open(&store).unwrap();
    let head = s.head().unwrap().unwrap();
    let good = s.commit(head).unwrap();
    let mut tree = s.tree(good.tree).unwrap();
    tree.files.get_mut("a.bin").unwrap().sha256[0] ^= 1;
    let id = forge_tree(&store, &s, head, &good, &tree);
    drop(s);
    cairn(&store)
        .args(["checkout", &id])
        .arg(t.path().join("fast"))
        .assert()
        .success();
    assert!(std::fs::read(t.path().join("fast/a.bin")).unwrap() == noise(3, 3 << 20));
    let dst = t.path().join("paranoid");
    let out = cairn(&store)
        .args(["checkout", "--paranoid", &id])
        .arg(&dst)
        .output()
        .unwrap();
    no_panic(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a.bin: SHA-256") && err.contains("does not match"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);
    let out = cairn(&store)
        .args(["cat", "--paranoid", &format!("{id}:a.bin")])
        .output()
        .unwrap();
    no_panic(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));
    let out = cairn(&store).args(["verify", &id]).output().unwrap();
    no_panic_any(&out);
    assert!(!out.status.success());
    cairn(&store)
        .args(["tag", "forged", &id])
        .assert()
        .success();
    let out = cairn(&store)
        .args(["fsck", "--read-data", "--json"])
        .output()
        .unwrap();
    no_panic_any(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["file-digest-mismatch"], "{v}");
    assert_eq!(v["files_verified"], 1, "{v}");
}

/// A stranger's store can hold any object: here a tree forged with the crate's own writers (an
/// empty directory `../escaped`, and a file whose one chunk claims 2^44 bytes), in a pack
/// written by hand and indexed by `repair --rebuild-index`. Checkout, show and cat refuse the
/// tree, naming the rule it breaks, and create nothing outside the checkout directory (before,
/// checkout made `../escaped`; the 2^44-byte chunk asked for a 16 TiB buffer).
#[test]
fn a_forged_tree_is_refused_and_checkout_writes_nothing_outside() {
    use cairn::model::object::{ChunkRef, Tree};
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init(&store);
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("a.bin"), b"hello").unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let s = cairn::Store::open(&store).unwrap();
    let head = s.head().unwrap().unwrap();
    let good = s.commit(head).unwrap();
    let tree = s.tree(good.tree).unwrap();

    let forge = |tree: &Tree| forge_tree(&store, &s, head, &good, tree);
    let mut escape = tree.clone();
    escape.empty_dirs.insert("../escaped".into());
    let id = forge(&escape);
    let dst = t.path().join("work").join("out");
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    let out = cairn(&store)
        .args(["checkout", &id])
        .arg(&dst)
        .output()
        .unwrap();
    no_panic(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("malformed") && err.contains("../escaped"),
        "{err}"
    );
    assert!(!t.path().join("work").join("escaped").exists());
    for cmd in [
        vec!["show", id.as_str()],
        vec!["cat", &format!("{id}:a.bin")],
    ] {
        let out = cairn(&store).args(&cmd).output().unwrap();
        no_panic(&out);
    }

    let mut huge = tree.clone();
    let f = huge.files.get_mut("a.bin").unwrap();
    f.segments[0].chunks = vec![ChunkRef {
        len: 1 << 44,
        ..f.segments[0].chunks[0]
    }];
    f.size = 1 << 44;
    let id = forge(&huge);
    let out = cairn(&store)
        .args(["checkout", &id])
        .arg(t.path().join("out2"))
        .output()
        .unwrap();
    no_panic(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exceeds the limit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The good commit still checks out.
    cairn(&store)
        .args(["checkout", &head.to_string()])
        .arg(t.path().join("good"))
        .assert()
        .success();

    // fsck names each kind: the malformed trees (reached through a tag), and a reference
    // whose length disagrees with the chunk (a well-formed tree: 6 bytes said, 5 held).
    let mut long = tree.clone();
    let f = long.files.get_mut("a.bin").unwrap();
    f.segments[0].chunks[0].len += 1;
    f.size += 1;
    let long_id = forge(&long);
    let mut kinds = Vec::new();
    for (name, id) in [("escape", &id), ("long", &long_id)] {
        cairn(&store).args(["tag", name, id]).assert().success();
    }
    let out = cairn(&store).args(["fsck", "--json"]).output().unwrap();
    no_panic_any(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in v["problems"].as_array().unwrap() {
        kinds.push(p["kind"].as_str().unwrap().to_string());
    }
    assert!(kinds.contains(&"malformed-tree".to_string()), "{kinds:?}");
    assert!(
        kinds.contains(&"chunk-length-mismatch".to_string()),
        "{kinds:?}"
    );
}

fn no_panic_any(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// Regression: one flipped byte in an old commit object made `repair --rebuild-index` give up,
/// and `log` fail without showing anything. Now the rebuild leaves that commit out, says so and
/// indexes the rest, and `log` shows the history down to the damaged commit, then names it.
#[test]
fn a_damaged_commit_object_is_left_out_of_a_rebuild_and_log_shows_what_it_can() {
    use cairn::ObjectId;
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init(&store);
    let mut ids = Vec::new();
    for i in 0..3u64 {
        let ck = t.path().join(format!("ck{i}"));
        checkpoint(&ck, i + 10);
        cairn(&store)
            .arg("commit")
            .arg(&ck)
            .args(["-m", &format!("c{i}")])
            .assert()
            .success();
        let s = cairn::Store::open(&store).unwrap();
        ids.push(s.head().unwrap().unwrap());
    }
    // Flip the last payload byte of the middle commit's object in its pack.
    let s = cairn::Store::open(&store).unwrap();
    let loc = s.view().object(&ObjectId(ids[1].0)).unwrap().unwrap();
    let pack = s
        .packs_dir()
        .join(cairn::storage::pack::pack_file_name(loc.pack));
    drop(s);
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = (loc.offset + loc.stored_len - 1) as usize;
    bytes[at] ^= 0x55;
    std::fs::write(&pack, &bytes).unwrap();
    std::fs::remove_dir_all(store.join("index")).unwrap();
    let text = rebuild_index(&store);
    assert!(
        text.contains(&format!("left out damaged commit {}", ids[1])),
        "{text}"
    );
    // log: the newest commit, then an error naming the damaged one.
    let out = cairn(&store).arg("log").output().unwrap();
    no_panic(&out);
    let shown = String::from_utf8_lossy(&out.stdout);
    // By message (a commit id's hex may contain "c0" too).
    let message = |m: &str| shown.lines().any(|l| l.ends_with(&format!("  {m}")));
    assert!(message("c2") && !message("c0"), "{shown}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&ids[1].to_string()[..12]) || err.contains(&ids[1].to_string()),
        "{err}"
    );
    // The other commits still check out.
    for id in [ids[0], ids[2]] {
        cairn(&store)
            .args(["checkout", &id.to_string()])
            .arg(t.path().join(format!("out-{}", id.short())))
            .assert()
            .success();
    }
    // A pack whose header is damaged is skipped, named, and the rest rebuilt.
    let s = cairn::Store::open(&store).unwrap();
    let first = s.view().object(&ObjectId(ids[0].0)).unwrap().unwrap().pack;
    let first_pack = s
        .packs_dir()
        .join(cairn::storage::pack::pack_file_name(first));
    drop(s);
    let mut bytes = std::fs::read(&first_pack).unwrap();
    bytes[..8].copy_from_slice(b"garbage!");
    std::fs::write(&first_pack, &bytes).unwrap();
    let text = rebuild_index(&store);
    assert!(
        text.contains(&format!("skipped damaged pack {}", first.to_hex())),
        "{text}"
    );
    // The commits in other packs are indexed (their data may share chunks with the lost
    // pack: fsck and checkout then name what is missing).
    let out = cairn(&store).arg("log").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("c2"));
}

/// `repair --rebuild-index`, which must succeed; its text output.
fn rebuild_index(store: &Path) -> String {
    let out = cairn(store)
        .args(["repair", "--rebuild-index"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pack truncated by another program while cairn reads it: every reader ends with exit 0
/// (it finished first) or 1 with an error naming the pack, never a signal, and checkout leaves
/// no temp file. With packs read through a memory map, these died of SIGBUS.
#[test]
fn a_pack_truncated_under_running_readers_is_an_error_not_a_signal() {
    use std::io::{Seek, Write};
    use std::os::unix::process::ExitStatusExt;
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init(&store);
    let ck = t.path().join("ck");
    // Incompressible, so the chunks are stored raw and the pack is as large as the data.
    write_st(
        &ck.join("model.safetensors"),
        &[("w", DType::U8, vec![96 << 20], noise(7, 96 << 20))],
    );
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let pack = std::fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let pack_id = pack.file_stem().unwrap().to_str().unwrap().to_string();
    let original = std::fs::read(&pack).unwrap();
    let commands: [&[&str]; 4] = [
        &["checkout", "HEAD"],
        &["cat", "HEAD:model.safetensors"],
        &["tensor", "HEAD", "model.safetensors:w", "-o"],
        &["fsck", "--read-data"],
    ];
    let mut failed = 0;
    for round in 0..16u64 {
        let cmd = commands[round as usize % commands.len()];
        let dst = t.path().join(format!("out{round}"));
        let mut c = std::process::Command::new(bin());
        c.env_remove("CAIRN_STORE")
            .arg("--store")
            .arg(&store)
            .args(cmd)
            .stdout(if cmd[0] == "fsck" {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stderr(std::process::Stdio::piped());
        if cmd[0] == "checkout" {
            c.arg(&dst);
        }
        if cmd[0] == "tensor" {
            c.arg(t.path().join(format!("w{round}.npy")));
        }
        let child = c.spawn().unwrap();
        // Let it get going, then cut the pack to a twentieth.
        std::thread::sleep(std::time::Duration::from_millis(20 + round * 9 % 80));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&pack)
            .unwrap()
            .set_len(original.len() as u64 / 20)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        // fsck lists its problems on stdout, the summary on stderr.
        let err = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.signal(),
            None,
            "{cmd:?} died of a signal; stderr: {err}"
        );
        assert!(!err.contains("panicked"), "{cmd:?}: {err}");
        match out.status.code() {
            Some(0) => {}
            Some(1) => {
                failed += 1;
                assert!(
                    err.contains(&pack_id),
                    "{cmd:?} does not name the pack: {err}"
                );
            }
            other => panic!("{cmd:?} exited {other:?}: {err}"),
        }
        if dst.exists() {
            for e in walkdir(&dst) {
                let name = e.file_name().unwrap().to_string_lossy().to_string();
                assert!(!name.contains("cairn-checkout"), "temp file left: {e:?}");
            }
        }
        // Put the pack back, in place (same inode), for the next round.
        let mut f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&original).unwrap();
    }
    assert!(
        failed >= 4,
        "only {failed} of 16 readers met the truncation"
    );
    fsck_read_data_clean(&store);
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `checkout --force` into a directory whose path components are symbolic links writes nothing
/// through them (git: "beyond a symbolic link"); a link at a file's own name is replaced, and its
/// target left alone.
#[test]
fn checkout_never_writes_beyond_a_symlink() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init(&store);
    let ck = t.path().join("ck");
    std::fs::create_dir_all(ck.join("sub")).unwrap();
    std::fs::create_dir_all(ck.join("a/b")).unwrap();
    std::fs::write(ck.join("sub/f.bin"), b"through sub").unwrap();
    std::fs::write(ck.join("a/b/g.bin"), b"through a/b").unwrap();
    std::fs::write(ck.join("top.bin"), b"top").unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let elsewhere = t.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("victim"), b"keep me").unwrap();

    // A link as the first component, then as a deeper one.
    for link in ["sub", "a/b"] {
        let dst = t.path().join(format!("out-{}", link.replace('/', "-")));
        std::fs::create_dir_all(dst.join(link).parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dst.join(link)).unwrap();
        let out = cairn(&store)
            .args(["checkout", "--force", "HEAD"])
            .arg(&dst)
            .output()
            .unwrap();
        no_panic(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("beyond a symbolic link") && err.contains(link),
            "{link}: {err}"
        );
        let names: Vec<_> = std::fs::read_dir(&elsewhere)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["victim"],
            "{link}: something was written through the link"
        );
    }

    // A link at a file's own name: replaced by the file, its target untouched.
    let dst = t.path().join("out-file");
    std::fs::create_dir_all(&dst).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("victim"), dst.join("top.bin")).unwrap();
    cairn(&store)
        .args(["checkout", "--force", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    assert!(!dst.join("top.bin").is_symlink());
    assert_eq!(std::fs::read(dst.join("top.bin")).unwrap(), b"top");
    assert_eq!(std::fs::read(elsewhere.join("victim")).unwrap(), b"keep me");
    assert_eq!(snapshot(&dst), snapshot(&ck));

    // The checkout directory itself may be a link: the user named it.
    let real = t.path().join("real");
    std::fs::create_dir_all(&real).unwrap();
    let named = t.path().join("named");
    std::os::unix::fs::symlink(&real, &named).unwrap();
    cairn(&store)
        .args(["checkout", "HEAD"])
        .arg(&named)
        .assert()
        .success();
    assert_eq!(snapshot(&real), snapshot(&ck));
}

/// A FAT32 image mounted by `fusefat`: a real case-insensitive filesystem (FAT's long names),
/// through the kernel's FUSE. Needs root and `fusefat` (scripts/setup.sh installs it); a machine
/// where it cannot be mounted fails the test, which is never skipped.
struct FatFs {
    mnt: std::path::PathBuf,
}

impl FatFs {
    fn new(dir: &Path) -> FatFs {
        use std::process::Command;
        let img = dir.join("fat.img");
        let mnt = dir.join("fat");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        assert!(
            ok(Command::new("mkfs.vfat").args(["-F", "32"]).arg(&img))
                && ok(Command::new("fusefat")
                    .args(["-o", "rw+"])
                    .arg(&img)
                    .arg(&mnt)),
            "could not make and mount a FAT32 image with fusefat (needs root, /dev/fuse, \
             dosfstools and fusefat: scripts/setup.sh)"
        );
        FatFs { mnt }
    }
}

impl Drop for FatFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
    }
}

/// On a case-insensitive filesystem, two tree paths that name one entry are an error naming
/// both, and what was written first is not overwritten; a tree without such pairs checks out
/// byte for byte on the same filesystem.
#[test]
fn case_folding_collisions_are_errors_on_a_case_insensitive_filesystem() {
    let t = tempfile::tempdir().unwrap();
    let fat = FatFs::new(t.path());
    let store = t.path().join("store");
    init(&store);
    let plain = t.path().join("plain");
    std::fs::create_dir_all(plain.join("Sub/deeper")).unwrap();
    std::fs::write(plain.join("Sub/deeper/w.bin"), noise(1, 3 << 20)).unwrap();
    std::fs::write(plain.join("config.json"), b"{}").unwrap();
    cairn(&store).arg("commit").arg(&plain).assert().success();
    let dst = fat.mnt.join("plain");
    cairn(&store)
        .args(["checkout", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&plain));

    // (first written, second, what the second is)
    let cases = [
        ("Model.bin", "model.bin", "file"),
        ("Dir/x.bin", "dir/y.bin", "directory"),
        ("Weights", "weights/z.bin", "file then directory"),
    ];
    for (i, (first, second, what)) in cases.iter().enumerate() {
        let ck = t.path().join(format!("ck{i}"));
        for (n, p) in [first, second].iter().enumerate() {
            let f = ck.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, format!("{p} {n}")).unwrap();
        }
        cairn(&store).arg("commit").arg(&ck).assert().success();
        let dst = fat.mnt.join(format!("out{i}"));
        let out = cairn(&store)
            .args(["checkout", "HEAD"])
            .arg(&dst)
            .output()
            .unwrap();
        no_panic(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("same name on this filesystem"),
            "{what}: {err}"
        );
        let (a, b) = (
            first.split('/').next().unwrap(),
            second.split('/').next().unwrap(),
        );
        assert!(err.contains(a) && err.contains(b), "{what}: {err}");
        assert_eq!(
            std::fs::read(dst.join(first)).unwrap(),
            format!("{first} 0").as_bytes(),
            "{what}: the first file was overwritten"
        );
    }
}
