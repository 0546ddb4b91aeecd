//! kill -9 of the real CLI at random points of commit and gc: the store always passes fsck and
//! no acknowledged commit (the command exited 0) is ever lost. CI runs a few dozen rounds;
//! `CAIRN_CRASH_ROUNDS=1000` runs the full battery.

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
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
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
    // Every acknowledged commit is still there (pruned by gc or not); the newest reads back.
    for (id, _) in &acked {
        cairn(&store).args(["show", id]).assert().success();
    }
    if let Some((id, ck)) = acked.last() {
        let dst = t.path().join("last");
        cairn(&store)
            .args(["checkout", id])
            .arg(&dst)
            .assert()
            .success();
        assert_eq!(snapshot(&dst), snapshot(ck));
    }
    // A quiet gc clears crash leftovers; everything re-hashes.
    cairn(&store).args(["gc"]).assert().success();
    let leftovers: Vec<_> = std::fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    cairn(&store)
        .args(["fsck", "--read-data"])
        .assert()
        .success();
}
