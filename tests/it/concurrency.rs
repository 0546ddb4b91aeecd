//! Several processes on one store: concurrent commits to one branch and to several, readers
//! beside them, gc beside them. Nothing is lost, nobody fails with "busy".

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn spawn_commit(store: &Path, dir: &Path, branch: &str) -> Child {
    Command::new(bin())
        .env("CAIRN_AUTHOR", "t@t")
        .arg("--store")
        .arg(store)
        .args(["commit", "--json", "--branch", branch])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: Child) -> Value {
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "commit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn concurrent_commits_all_land() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let dirs: Vec<_> = (0..6)
        .map(|i| {
            let d = t.path().join(format!("ck{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("w.bin"), noise(i, 4 << 20)).unwrap();
            std::fs::write(d.join("shared.bin"), noise(99, 2 << 20)).unwrap();
            d
        })
        .collect();
    // Four writers on main, two on their own branches, all at once, with readers polling.
    let mut kids = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let branch = if i < 4 {
            "main".to_string()
        } else {
            format!("b{i}")
        };
        kids.push(spawn_commit(&store, d, &branch));
    }
    let mut reads = 0;
    while kids.iter_mut().any(|k| k.try_wait().unwrap().is_none()) {
        let out = cairn(&store)
            .args(["log", "--all", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "reader failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reads += 1;
    }
    assert!(reads > 0);
    let outs: Vec<Value> = kids.into_iter().map(finish).collect();
    // All four main commits are in main's history; the branches have theirs.
    let log = {
        let out = cairn(&store)
            .args(["log", "main", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let ids: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    for o in &outs[..4] {
        assert!(ids.contains(&o["commit"].as_str().unwrap()), "{o}");
    }
    assert!(outs[..4].iter().filter(|o| o["reparented"] == true).count() <= 3);
    for (i, o) in outs.iter().enumerate().skip(4) {
        let v: Value = serde_json::from_slice(
            &cairn(&store)
                .args(["show", &format!("b{i}"), "--json"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert_eq!(v["id"], o["commit"]);
    }
    // Every commit checks out byte for byte; the store is consistent.
    for (i, o) in outs.iter().enumerate() {
        let dst = t.path().join(format!("out{i}"));
        cairn(&store)
            .args(["checkout", o["commit"].as_str().unwrap()])
            .arg(&dst)
            .assert()
            .success();
        assert_eq!(snapshot(&dst), snapshot(&dirs[i]));
    }
    fsck_read_data_clean(&store);
}

#[test]
fn gc_beside_committers_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let mut acked = Vec::new();
    for round in 0..3u64 {
        let mut kids = Vec::new();
        let mut dirs = Vec::new();
        for w in 0..3u64 {
            let d = t.path().join(format!("r{round}w{w}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("w.bin"), noise(round * 10 + w, 3 << 20)).unwrap();
            std::fs::write(d.join("shared.bin"), noise(7, 1 << 20)).unwrap();
            kids.push(spawn_commit(&store, &d, &format!("w{w}")));
            dirs.push(d);
        }
        // gc runs while they write: keep only the head of each branch.
        let g = cairn(&store)
            .args(["gc", "--all", "--keep-last", "1", "--json"])
            .output()
            .unwrap();
        assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
        for (k, d) in kids.into_iter().zip(dirs) {
            let v = finish(k);
            acked.push((v["commit"].as_str().unwrap().to_string(), d));
        }
    }
    // A last quiet gc; then every branch head (the acknowledged last round) checks out intact.
    cairn(&store)
        .args(["gc", "--all", "--keep-last", "1"])
        .assert()
        .success();
    for (id, d) in acked.iter().rev().take(3) {
        let dst = t.path().join(format!("chk-{}", &id[..8]));
        cairn(&store)
            .args(["checkout", "--paranoid", id])
            .arg(&dst)
            .assert()
            .success();
        assert_eq!(snapshot(&dst), snapshot(d));
    }
    // Every acknowledged commit is still in the log, pruned or not.
    let all: Value = serde_json::from_slice(
        &cairn(&store)
            .args(["log", "--all", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    for (id, _) in &acked {
        assert!(ids.contains(&id.as_str()));
    }
    fsck_read_data_clean(&store);
}

/// Two commits overlap their expensive phase: both write a pack at the same moment, so neither
/// waits for the other until its short publish. Observed from outside (two `*.pack.tmp` files
/// exist at once, each held by its live writer), not timed: the wall-time ratio is a benchmark
/// (docs/benchmarks.md, `scripts/bench/bench_concurrent.sh`).
#[test]
fn two_commits_write_their_packs_at_the_same_time() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let dirs: Vec<_> = (0..2u64)
        .map(|i| {
            let d = t.path().join(format!("ck{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("w.bin"), noise(i + 40, 96 << 20)).unwrap();
            d
        })
        .collect();
    let packs = store.join("packs");
    let kids: Vec<Child> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| spawn_commit(&store, d, &format!("b{i}")))
        .collect();
    let mut most = 0;
    let mut kids: Vec<Option<Child>> = kids.into_iter().map(Some).collect();
    let mut outs = Vec::new();
    while kids.iter().any(Option::is_some) {
        let writing = std::fs::read_dir(&packs)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".pack.tmp"))
                    .count()
            })
            .unwrap_or(0);
        most = most.max(writing);
        for k in kids.iter_mut() {
            if k.as_mut().is_some_and(|c| c.try_wait().unwrap().is_some()) {
                outs.push(finish(k.take().unwrap()));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(outs.len(), 2);
    assert!(
        most >= 2,
        "the two commits never wrote packs at the same time (at most {most} at once)"
    );
    fsck_read_data_clean(&store);
}
