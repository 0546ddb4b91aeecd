//! kill -9 of the real CLI at random points of commit and gc (alone, and gc beside several
//! committers): the store always passes fsck and no acknowledged commit (the command exited 0)
//! is ever lost. CI runs a few dozen rounds; `CAIRN_CRASH_ROUNDS=1000` runs the full battery.

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rounds() -> u64 {
    std::env::var("CAIRN_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

#[test]
fn kill_9_during_commit_and_gc_never_loses_an_acknowledged_commit() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut acked: Vec<(String, std::path::PathBuf)> = Vec::new();
    let (mut killed, mut finished) = (0, 0);
    for round in 0..rounds() {
        let ck = t.path().join(format!("ck{round}"));
        std::fs::create_dir_all(&ck).unwrap();
        write_st(
            &ck.join("model.safetensors"),
            &[
                ("a", cairn::DType::F32, vec![1 << 19], weights(1, 1 << 19)),
                (
                    "b",
                    cairn::DType::F32,
                    vec![1 << 19],
                    weights(round + 100, 1 << 19),
                ),
            ],
        );
        std::fs::write(ck.join("opt.bin"), noise(round, 3 << 20)).unwrap();
        let gc = round % 4 == 3;
        let mut cmd = Command::new(bin());
        cmd.env("CAIRN_AUTHOR", "t@t").arg("--store").arg(&store);
        if gc {
            cmd.args(["gc", "--keep-last", "3", "--json"]);
        } else {
            cmd.args(["commit", "--json"]).arg(&ck);
        }
        // gc's plan grows with history and can outgrow a pipe's buffer before the deadline.
        let stdout = if gc { Stdio::null() } else { Stdio::piped() };
        let mut child = cmd.stdout(stdout).stderr(Stdio::piped()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_millis(next() % 250);
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            finished += 1;
            if !gc {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                acked.push((v["commit"].as_str().unwrap().to_string(), ck.clone()));
            }
        } else {
            killed += 1;
        }
        let f = cairn(&store).arg("fsck").output().unwrap();
        assert!(
            f.status.success(),
            "round {round}: fsck failed after {}: {}{}",
            if out.status.success() {
                "a clean exit"
            } else {
                "kill -9"
            },
            String::from_utf8_lossy(&f.stdout),
            String::from_utf8_lossy(&f.stderr)
        );
    }
    eprintln!(
        "{} rounds: {killed} killed, {finished} finished, {} commits acknowledged",
        rounds(),
        acked.len()
    );
    // Every acknowledged commit is still there; each one gc did not prune reads back exactly
    // (a commit killed after its publish is not acknowledged, yet counts for keep-last).
    let restored = restore_unpruned(&store, &acked, &t.path().join("last"));
    eprintln!("{restored} of them not pruned, each restored exactly");
    cairn(&store)
        .args(["checkout", "--paranoid", "HEAD"])
        .arg(t.path().join("head"))
        .assert()
        .success();
    // A quiet gc clears crash leftovers; everything re-hashes.
    cairn(&store).args(["gc"]).assert().success();
    let leftovers: Vec<_> = std::fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    fsck_read_data_clean(&store);
}

/// gc in a loop beside several committers, with random kill -9s of any of them: after every
/// round fsck passes; at the end every acknowledged commit is there, every one gc did not prune
/// checks out byte for byte, and `fsck --read-data` finds no missing chunk.
#[test]
fn kill_9_among_concurrent_committers_and_gc_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ std::process::id() as u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let rounds = (rounds() / 3).max(4);
    let mut acked: Vec<(String, std::path::PathBuf)> = Vec::new();
    let (mut killed, mut finished) = (0, 0);
    for round in 0..rounds {
        let mut kids = Vec::new();
        for w in 0..3u64 {
            let ck = t.path().join(format!("ck{round}-{w}"));
            std::fs::create_dir_all(&ck).unwrap();
            write_st(
                &ck.join("model.safetensors"),
                &[
                    (
                        "shared",
                        cairn::DType::F32,
                        vec![1 << 18],
                        weights(5, 1 << 18),
                    ),
                    (
                        "own",
                        cairn::DType::F32,
                        vec![1 << 18],
                        weights(round * 10 + w + 1000, 1 << 18),
                    ),
                ],
            );
            std::fs::write(ck.join("opt.bin"), noise(round * 10 + w, 2 << 20)).unwrap();
            let mut cmd = Command::new(bin());
            cmd.env("CAIRN_AUTHOR", "t@t")
                .arg("--store")
                .arg(&store)
                .args(["commit", "--json", "--branch", &format!("w{w}")])
                .arg(&ck);
            kids.push((Some(ck), cmd));
        }
        let mut gc = Command::new(bin());
        gc.env("CAIRN_AUTHOR", "t@t")
            .arg("--store")
            .arg(&store)
            .args(["gc", "--all", "--keep-last", "2", "--json"]);
        kids.push((None, gc));
        let mut running: Vec<_> = kids
            .into_iter()
            .map(|(ck, mut c)| {
                // gc's plan can outgrow a pipe's buffer, and nobody reads it before exit.
                let stdout = if ck.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                };
                let child = c.stdout(stdout).stderr(Stdio::piped()).spawn().unwrap();
                // Half of the processes get a kill -9 at a random moment.
                let kill_at =
                    (next() % 2 == 0).then(|| Instant::now() + Duration::from_millis(next() % 300));
                (ck, child, kill_at)
            })
            .collect();
        loop {
            let mut still = Vec::new();
            for (ck, mut child, kill_at) in running {
                if kill_at.is_some_and(|k| Instant::now() >= k) {
                    let _ = child.kill();
                }
                match child.try_wait().unwrap() {
                    None => still.push((ck, child, kill_at)),
                    Some(_) => {
                        let out = child.wait_with_output().unwrap();
                        if out.status.success() {
                            finished += 1;
                            if let Some(ck) = ck {
                                let v: serde_json::Value =
                                    serde_json::from_slice(&out.stdout).unwrap();
                                acked.push((v["commit"].as_str().unwrap().to_string(), ck));
                            }
                        } else {
                            assert!(
                                out.status.code().is_none(),
                                "round {round}: a process failed on its own: {}",
                                String::from_utf8_lossy(&out.stderr)
                            );
                            killed += 1;
                        }
                    }
                }
            }
            if still.is_empty() {
                break;
            }
            running = still;
            std::thread::sleep(Duration::from_millis(1));
        }
        let f = cairn(&store).arg("fsck").output().unwrap();
        assert!(
            f.status.success(),
            "round {round}: fsck failed: {}{}",
            String::from_utf8_lossy(&f.stdout),
            String::from_utf8_lossy(&f.stderr)
        );
    }
    eprintln!(
        "{rounds} rounds of 3 committers + gc: {killed} killed, {finished} finished, {} commits acknowledged",
        acked.len()
    );
    let restored = restore_unpruned(&store, &acked, &t.path().join("out"));
    eprintln!("{restored} of them not pruned, each restored exactly");
    fsck_read_data_clean(&store);
}

/// Every acknowledged commit exists; each one gc did not prune checks out byte for byte into
/// `dst`. Returns how many were restored.
fn restore_unpruned(
    store: &std::path::Path,
    acked: &[(String, std::path::PathBuf)],
    dst: &std::path::Path,
) -> usize {
    let mut restored = 0;
    for (id, ck) in acked {
        let show = json(store, &["show", id, "--json"]);
        if show["state"]["pruned"].is_null() {
            let _ = std::fs::remove_dir_all(dst);
            cairn(store)
                .args(["checkout", "--paranoid", id])
                .arg(dst)
                .assert()
                .success();
            assert_eq!(snapshot(dst), snapshot(ck), "commit {id}");
            restored += 1;
        }
    }
    restored
}
