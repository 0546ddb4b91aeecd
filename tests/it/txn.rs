//! Sharded commits: one process per rank stages its part; the commit appears atomically when
//! the last part lands; abandoned transactions are cleaned up without touching anything
//! published; each rank's tensors delta-code against the same rank's part of the parent.

use crate::common::*;
use cairn::DType;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn rank_dir(root: &Path, step: u64, rank: u64, seed: u64) -> PathBuf {
    let d = root.join(format!("s{step}-r{rank}"));
    write_st(
        &d.join(format!("model-rank{rank}.safetensors")),
        &[(
            "w",
            DType::F32,
            vec![1 << 18],
            weights(seed * 10 + rank, 1 << 18),
        )],
    );
    if rank == 1 {
        std::fs::write(d.join("config.json"), b"{}").unwrap();
    }
    d
}

fn head(store: &Path) -> Option<String> {
    let out = cairn(store).args(["log", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .first()
        .map(|c| c["id"].as_str().unwrap().to_string())
}

#[test]
fn parts_become_one_commit_atomically() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let dirs: Vec<PathBuf> = (1..=4).map(|r| rank_dir(t.path(), 100, r, 1)).collect();
    for (i, d) in dirs.iter().enumerate().take(3) {
        let out = cairn(&store)
            .args([
                "commit",
                "--txn",
                "step100",
                "--part",
                &format!("{}/4", i + 1),
                "-m",
                "step 100",
                "--step",
                "100",
            ])
            .arg(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("{} of 4 parts staged", i + 1))
        );
        assert_eq!(head(&store), None, "nothing visible before the last part");
    }
    // A part staged twice, or with another count, is refused.
    let out = cairn(&store)
        .args(["commit", "--txn", "step100", "--part", "2/4"])
        .arg(&dirs[1])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already staged"));
    let out = cairn(&store)
        .args(["commit", "--txn", "step100", "--part", "4/5"])
        .arg(&dirs[3])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // gc between parts keeps staged data.
    cairn(&store).args(["gc"]).assert().success();
    let out = cairn(&store)
        .args(["commit", "--json", "--txn", "step100", "--part", "4/4"])
        .arg(&dirs[3])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["commit"].as_str().unwrap().to_string();
    assert_eq!(head(&store), Some(id.clone()));
    let show: Value = serde_json::from_slice(
        &cairn(&store)
            .args(["show", &id, "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(show["message"], "step 100");
    assert_eq!(show["step"], 100);
    assert_eq!(show["files"].as_array().unwrap().len(), 5);
    // The checkout is the union of the ranks' files, byte for byte.
    let dst = t.path().join("out");
    cairn(&store)
        .args(["checkout", &id])
        .arg(&dst)
        .assert()
        .success();
    let mut want = std::collections::BTreeMap::new();
    for d in &dirs {
        want.extend(snapshot(d));
    }
    assert_eq!(snapshot(&dst), want);
    // Committed once: staging again is refused.
    let out = cairn(&store)
        .args(["commit", "--txn", "step100", "--part", "1/4"])
        .arg(&dirs[0])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already committed"));
    fsck_read_data_clean(&store);
}

#[test]
fn concurrent_ranks_and_per_rank_delta() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let run_step = |step: u64, seed: u64| -> Vec<Value> {
        let kids: Vec<_> = (1..=4u64)
            .map(|r| {
                let d = rank_dir(t.path(), step, r, seed);
                std::process::Command::new(bin())
                    .env("CAIRN_AUTHOR", "t@t")
                    .arg("--store")
                    .arg(&store)
                    .args([
                        "commit",
                        "--json",
                        "--txn",
                        &format!("s{step}"),
                        "--part",
                        &format!("{r}/4"),
                    ])
                    .arg(&d)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        kids.into_iter()
            .map(|k| {
                let o = k.wait_with_output().unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                serde_json::from_slice(&o.stdout).unwrap()
            })
            .collect()
    };
    let first = run_step(100, 1);
    assert_eq!(
        first.iter().filter(|v| v["commit"].is_string()).count(),
        1,
        "exactly one part commits"
    );
    // Next step: each rank's weights move a little; each rank's chunks delta against its own.
    let t2 = t.path().join("next");
    for r in 1..=4u64 {
        let d = t.path().join(format!("s200-r{r}"));
        let mut w: Vec<f32> = weights(10 + r, 1 << 18)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        for x in w.iter_mut().step_by(5) {
            *x += 1e-5;
        }
        write_st(
            &d.join(format!("model-rank{r}.safetensors")),
            &[(
                "w",
                DType::F32,
                vec![1 << 18],
                w.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )],
        );
        if r == 1 {
            std::fs::write(d.join("config.json"), b"{}").unwrap();
        }
    }
    let _ = t2;
    let second: Vec<Value> = (1..=4u64)
        .map(|r| {
            let out = cairn(&store)
                .args([
                    "commit",
                    "--json",
                    "--txn",
                    "s200",
                    "--part",
                    &format!("{r}/4"),
                ])
                .arg(t.path().join(format!("s200-r{r}")))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    let id = second[3]["commit"].as_str().unwrap().to_string();
    let s = cairn::Store::open(&store).unwrap();
    let c = s.commit(id.parse().unwrap()).unwrap();
    assert_eq!(c.parents.len(), 1);
    let tree = s.tree(c.tree).unwrap();
    for r in 1..=4 {
        let f = &tree.files[&format!("model-rank{r}.safetensors")];
        let (_, seg) = f.tensors().next().unwrap();
        let loc = s.chunk_loc(seg.chunks[0].id).unwrap().unwrap();
        let base = loc.base.expect("delta-coded against the parent");
        let parent_tree = s.tree(s.commit(c.parents[0]).unwrap().tree).unwrap();
        let pf = &parent_tree.files[&format!("model-rank{r}.safetensors")];
        assert_eq!(
            pf.tensors().next().unwrap().1.chunks[0].id,
            base,
            "rank {r} matched its own part"
        );
    }
    fsck_read_data_clean(&store);
}

#[test]
fn conflicting_parts_fail_and_abandoned_transactions_are_cleaned_up() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    cairn(&root).arg("init").assert().success();
    // A published commit that must survive the cleanup.
    let keep = rank_dir(t.path(), 1, 1, 5);
    cairn(&root).arg("commit").arg(&keep).assert().success();
    // Two parts holding the same path: the last one fails, naming the file.
    let a = rank_dir(t.path(), 7, 2, 7);
    cairn(&root)
        .args(["commit", "--txn", "bad", "--part", "1/2"])
        .arg(&a)
        .assert()
        .success();
    let out = cairn(&root)
        .args(["commit", "--txn", "bad", "--part", "2/2"])
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("both hold this file"));
    // The failed part is unstaged: fixed, it can be staged again.
    let a2 = rank_dir(t.path(), 8, 3, 8);
    cairn(&root)
        .args(["commit", "--txn", "bad", "--part", "2/2"])
        .arg(&a2)
        .assert()
        .success();
    let bad_commit = head(&root).unwrap();
    let out = cairn(&root)
        .args(["show", &bad_commit, "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), 2);
    // An abandoned transaction: one part of three staged.
    let b = rank_dir(t.path(), 9, 3, 9);
    cairn(&root)
        .args(["commit", "--txn", "lost", "--part", "1/3"])
        .arg(&b)
        .assert()
        .success();
    let store = cairn::Store::open(&root).unwrap();
    let before = cairn::ops::gc::plan(&store, &cairn::ops::gc::GcOptions::default()).unwrap();
    assert!(before.abandoned_txns.is_empty());
    // Staged packs are not leftovers (the unstaged failed part's pack is).
    let staged =
        cairn::ops::commit::sharded::pending(&store, cairn::storage::store::now_ns()).unwrap();
    assert_eq!(staged.len(), 1);
    for p in &staged[0].packs {
        assert!(
            !before.orphan_files.contains(&format!("{p}.pack")),
            "{:?}",
            before.orphan_files
        );
    }
    assert_eq!(before.orphan_files.len(), 1, "{:?}", before.orphan_files);
    let later = cairn::ops::gc::GcOptions {
        now_ns: Some(
            cairn::storage::store::now_ns() + cairn::ops::commit::sharded::ABANDON_AFTER_NS + 1,
        ),
        ..Default::default()
    };
    let out = cairn::ops::gc::gc(&store, &later, false).unwrap();
    assert_eq!(out.plan.abandoned_txns, vec!["lost".to_string()]);
    assert!(out.packs_deleted >= 1);
    assert!(!root.join("txn/lost").exists());
    drop(store);
    let dst = t.path().join("out");
    cairn(&root)
        .args(["checkout", "HEAD~1"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&keep));
    fsck_read_data_clean(&root);
}

/// Regression: parts whose files clash without sharing a path (`a` in one part, `a/b` in
/// another) published a commit that checked out halfway with "File exists". The last part is now
/// refused, naming both paths, and nothing is published.
#[test]
fn parts_whose_files_clash_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    cairn(&root).arg("init").assert().success();
    let p1 = t.path().join("p1");
    std::fs::create_dir_all(&p1).unwrap();
    std::fs::write(p1.join("a"), b"file").unwrap();
    let p2 = t.path().join("p2");
    std::fs::create_dir_all(p2.join("a")).unwrap();
    std::fs::write(p2.join("a").join("b"), b"inside").unwrap();
    cairn(&root)
        .args(["commit", "--txn", "clash", "--part", "1/2"])
        .arg(&p1)
        .assert()
        .success();
    let out = cairn(&root)
        .args(["commit", "--txn", "clash", "--part", "2/2"])
        .arg(&p2)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("clash") && err.contains("\"a/b\""), "{err}");
    assert_eq!(head(&root), None);
}
