//! A full disk: a small loop-mounted ext4 filesystem (where ENOSPC often surfaces only at
//! fsync) filled during commit and gc. Every failure is a clean error, fsck stays clean, and
//! once space is freed the store works again with no manual repair. A machine where the
//! filesystem cannot be set up fails this test; it is never skipped.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) struct LoopFs {
    pub(crate) mnt: PathBuf,
}

impl LoopFs {
    pub(crate) fn new(dir: &Path, mib: u64) -> LoopFs {
        let img = dir.join("fs.img");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(mib << 20).unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        assert!(
            ok,
            "could not create and loop-mount a {mib} MiB ext4 filesystem (needs root and mkfs.ext4)"
        );
        LoopFs { mnt }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

fn err(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_full_disk_is_a_clean_error_and_the_store_recovers() {
    let t = tempfile::tempdir().unwrap();
    let fs = LoopFs::new(t.path(), 48);
    let store = fs.mnt.join("store");
    cairn(&store).arg("init").assert().success();
    // Commit checkpoints of 6 MiB of noise until the disk refuses.
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..20u64 {
        let ck = t.path().join(format!("ck{i}"));
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join("w.bin"), noise(i, 6 << 20)).unwrap();
        let out = cairn(&store)
            .args(["commit", "--json"])
            .arg(&ck)
            .output()
            .unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            acked.push((v["commit"].as_str().unwrap().to_string(), ck));
        } else {
            failure = Some(out);
            break;
        }
    }
    let out = failure.expect("the disk never filled");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err(&out).contains("No space left on device"),
        "{}",
        err(&out)
    );
    assert!(!err(&out).contains("panicked"));
    assert!(acked.len() >= 2, "only {} commits fit", acked.len());
    // Still consistent, still readable.
    cairn(&store).arg("fsck").assert().success();
    let dst = t.path().join("r0");
    cairn(&store)
        .args(["checkout", &acked[0].0])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&acked[0].1));
    // gc on the full disk reclaims space (or fails cleanly), never damages the store.
    let g = cairn(&store)
        .args(["gc", "--keep-last", "1"])
        .output()
        .unwrap();
    assert!(!err(&g).contains("panicked"), "{}", err(&g));
    if !g.status.success() {
        assert!(err(&g).contains("No space left on device"), "{}", err(&g));
        // Free space by hand, then gc again.
        std::fs::remove_dir_all(store.join("tmp")).ok();
        cairn(&store)
            .args(["gc", "--keep-last", "1"])
            .assert()
            .success();
    }
    fsck_read_data_clean(&store);
    // Space is back: committing works again without any repair.
    let ck = t.path().join("after");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("w.bin"), noise(99, 6 << 20)).unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let dst = t.path().join("r-after");
    cairn(&store)
        .args(["checkout", "--paranoid", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&ck));
    // A filler file fills the disk again; a commit fails cleanly mid-write and leaves nothing
    // behind once the filler is gone and gc has run.
    let filler = fs.mnt.join("filler");
    let _ = Command::new("fallocate")
        .args(["-l", "200M"])
        .arg(&filler)
        .stderr(std::process::Stdio::null())
        .status();
    if !filler.exists() || std::fs::metadata(&filler).unwrap().len() == 0 {
        let _ = std::fs::write(&filler, vec![1u8; 40 << 20]);
    }
    let ck2 = t.path().join("after2");
    std::fs::create_dir_all(&ck2).unwrap();
    std::fs::write(ck2.join("w.bin"), noise(100, 6 << 20)).unwrap();
    // This time through a long-lived library handle, which must recover by itself.
    let handle = cairn::Store::open(&store).unwrap();
    let commit_with = |h: &cairn::Store| {
        let mut b = cairn::CommitBuilder::new(h, cairn::CommitOptions::default());
        b.add_dir(&ck2).unwrap();
        b.commit()
    };
    let e = commit_with(&handle).expect_err("the disk is full");
    assert!(e.to_string().contains("No space left on device"), "{e}");
    std::fs::remove_file(&filler).unwrap();
    cairn(&store).arg("fsck").assert().success();
    cairn(&store).arg("gc").assert().success();
    let ok = commit_with(&handle).expect("the same handle commits once space is back");
    assert_eq!(
        cairn::ops::rev::resolve(&handle, "HEAD").unwrap(),
        ok.commit
    );
    fsck_read_data_clean(&store);
}

/// Free bytes on the filesystem holding `p`, as df reports them.
fn avail(p: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

#[test]
fn a_disk_that_fills_during_repack_is_a_clean_error_and_gc_finishes_later() {
    let t = tempfile::tempdir().unwrap();
    let fs = LoopFs::new(t.path(), 64);
    let store = fs.mnt.join("store");
    cairn(&store).arg("init").assert().success();
    // One pack with 8 MiB that stays live and 8 MiB that dies: gc repacks it.
    let (ck1, ck2) = (t.path().join("ck1"), t.path().join("ck2"));
    for d in [&ck1, &ck2] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("keep.bin"), noise(1, 8 << 20)).unwrap();
    }
    std::fs::write(ck1.join("drop.bin"), noise(2, 8 << 20)).unwrap();
    let c1 = json(&store, &["commit", "--json", ck1.to_str().unwrap()])["commit"]
        .as_str()
        .unwrap()
        .to_string();
    json(&store, &["commit", "--json", ck2.to_str().unwrap()]);
    let plan = json(&store, &["gc", "--keep-last", "1", "--dry-run", "--json"]);
    assert!(
        !plan["plan"]["repack_packs"].as_array().unwrap().is_empty(),
        "{plan}"
    );
    // Leave less free space than the live 8 MiB the repack must copy.
    let filler = fs.mnt.join("filler");
    let free = avail(&fs.mnt);
    let fill = free.saturating_sub(3 << 20);
    let st = Command::new("fallocate")
        .args(["-l", &fill.to_string()])
        .arg(&filler)
        .status()
        .unwrap();
    assert!(st.success(), "fallocate {fill} bytes");
    assert!(
        avail(&fs.mnt) < 5 << 20,
        "{} bytes still free",
        avail(&fs.mnt)
    );
    let before = store_listing(&store);
    let out = cairn(&store)
        .args(["gc", "--keep-last", "1", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "gc should fail: {}", err(&out));
    assert!(
        err(&out).contains("No space left on device"),
        "{}",
        err(&out)
    );
    assert!(!err(&out).contains("panicked"), "{}", err(&out));
    // No half-written pack is left, every pack gc did not finish with is intact, and both
    // commits read back unless gc recorded the prune.
    let after = store_listing(&store);
    assert!(
        after.iter().all(|(n, _)| !n.contains(".tmp")),
        "leftovers: {after:?}"
    );
    let packs = |l: &[(String, u64)]| -> Vec<(String, u64)> {
        l.iter()
            .filter(|(n, _)| n.starts_with("packs/"))
            .cloned()
            .collect()
    };
    assert_eq!(packs(&before), packs(&after), "the packs changed");
    fsck_read_data_clean(&store);
    let show = json(&store, &["show", &c1, "--json"]);
    if show["state"]["pruned"].is_null() {
        let dst = t.path().join("r1");
        cairn(&store)
            .args(["checkout", "--paranoid", &c1])
            .arg(&dst)
            .assert()
            .success();
        assert_eq!(snapshot(&dst), snapshot(&ck1));
    }
    let dst = t.path().join("r2");
    cairn(&store)
        .args(["checkout", "--paranoid", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&ck2));
    // Space is back: the same gc finishes, with no repair.
    std::fs::remove_file(&filler).unwrap();
    let done = json(&store, &["gc", "--keep-last", "1", "--json"]);
    assert!(done["packs_repacked"].as_u64().unwrap() >= 1, "{done}");
    assert!(
        done["disk_bytes_after"].as_u64().unwrap() + (7 << 20)
            < done["disk_bytes_before"].as_u64().unwrap(),
        "{done}"
    );
    fsck_read_data_clean(&store);
    let dst = t.path().join("r3");
    cairn(&store)
        .args(["checkout", "--paranoid", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&ck2));
}
