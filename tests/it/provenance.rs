//! Provenance, validation on creation and the catalog: trainer_state.json, git auto-detection,
//! dataset fingerprints, environment capture, --verify, --verify-cmd, --where, runs, --meta,
//! reflog entries for every ref move.

use crate::common::*;
use cairn::DType;
use serde_json::Value;
use std::path::Path;
use std::process::Command as Sys;

fn hf_checkpoint(dir: &Path, step: u64, eval_loss: f64) {
    write_st(
        &dir.join("model.safetensors"),
        &[("w", DType::F32, vec![256], weights(step, 256))],
    );
    std::fs::write(dir.join("optimizer.pt"), noise(step, 5000)).unwrap();
    std::fs::write(dir.join("scheduler.pt"), b"sched").unwrap();
    std::fs::write(dir.join("rng_state.pth"), b"rng").unwrap();
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    std::fs::write(
        dir.join("trainer_state.json"),
        format!(
            r#"{{"global_step": {step}, "epoch": {}, "log_history": [
                {{"step": {step}, "loss": 1.25, "epoch": 1.0}},
                {{"step": {step}, "eval_loss": {eval_loss}, "eval_accuracy": 0.75, "epoch": 1.0}}]}}"#,
            step as f64 / 100.0
        ),
    )
    .unwrap();
}

#[test]
fn hugging_face_folder_with_no_flags() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("checkpoint-500");
    hf_checkpoint(&ck, 500, 0.5);
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let v = json(&store, &["show", "--json"]);
    assert_eq!(v["step"], 500);
    assert_eq!(v["epoch"], 5.0);
    assert_eq!(v["metrics"]["eval_loss"], 0.5);
    assert_eq!(v["metrics"]["loss"], 1.25);
    assert_eq!(v["resume"]["resumable"], true);
    // sha256 is recorded and shown for each file, as sha256sum prints it.
    let files = v["files"].as_array().unwrap();
    let sums = Sys::new("sha256sum")
        .arg(ck.join("optimizer.pt"))
        .output()
        .unwrap();
    let want = String::from_utf8_lossy(&sums.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let opt = files.iter().find(|f| f["path"] == "optimizer.pt").unwrap();
    assert_eq!(opt["sha256"], want);
    let text = cairn(&store).arg("show").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("resumable") && text.contains(&want), "{text}");

    // A contradicting --metric fails with both values shown, and commits nothing.
    let ck2 = t.path().join("checkpoint-600");
    hf_checkpoint(&ck2, 600, 0.4);
    let out = cairn(&store)
        .arg("commit")
        .arg(&ck2)
        .args(["--metric", "eval_loss=0.9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0.9") && err.contains("0.4"), "{err}");
    assert_eq!(
        json(&store, &["log", "--json"]).as_array().unwrap().len(),
        1
    );
    // An agreeing one is fine; a missing part is reported.
    std::fs::remove_file(ck2.join("rng_state.pth")).unwrap();
    cairn(&store)
        .arg("commit")
        .arg(&ck2)
        .args(["--metric", "eval_loss=0.4"])
        .assert()
        .success();
    let v = json(&store, &["show", "--json"]);
    assert_eq!(v["resume"]["resumable"], false);
    assert_eq!(v["resume"]["missing"], serde_json::json!(["rng"]));
    // --holds overrides recognition.
    std::fs::write(ck2.join("my_rng.bin"), b"r").unwrap();
    cairn(&store)
        .arg("commit")
        .arg(&ck2)
        .args(["--holds", "rng=my_rng.bin"])
        .assert()
        .success();
    assert_eq!(
        json(&store, &["show", "--json"])["resume"]["resumable"],
        true
    );
}

fn git(dir: &Path, args: &[&str]) {
    let st = Sys::new("git")
        .current_dir(dir)
        .args(["-c", "user.email=t@t", "-c", "user.name=t"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[test]
fn git_auto_clean_dirty_and_not_a_repository() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let repo = t.path().join("code");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "trunk"]);
    std::fs::write(repo.join("train.py"), b"print(1)\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "c"]);
    let head = String::from_utf8(
        Sys::new("git")
            .current_dir(&repo)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let ck = t.path().join("ck");
    hf_checkpoint(&ck, 1, 1.0);
    let run = |extra: &[&str]| {
        let mut c = cairn(&store);
        c.current_dir(&repo)
            .arg("commit")
            .arg(&ck)
            .args(extra)
            .arg("--json");
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(run(&["--git", "auto"]).0, Some(0));
    let g = &json(&store, &["show", "--json"])["git"];
    assert_eq!(g["commit"], head.trim());
    assert_eq!(g["branch"], "trunk");
    assert_eq!(g["dirty"], false);
    assert!(g["diff_hash"].is_null());
    // Dirty: flag, diff hash, and the diff itself with --git-diff.
    std::fs::write(repo.join("train.py"), b"print(2)\n").unwrap();
    assert_eq!(run(&["--git", "auto", "--git-diff"]).0, Some(0));
    let v = json(&store, &["show", "--json"]);
    assert_eq!(v["git"]["dirty"], true);
    assert_eq!(v["git"]["diff_hash"].as_str().unwrap().len(), 64);
    let diff = cairn(&store)
        .args(["cat", "HEAD:_cairn/git.diff"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&diff.stdout).contains("+print(2)"));
    // --git-repo from elsewhere; not a repository is a clear error.
    let mut c = cairn(&store);
    let out = c
        .current_dir(t.path())
        .arg("commit")
        .arg(&ck)
        .args(["--git", "auto"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not inside a git repository"));
    let mut c = cairn(&store);
    c.current_dir(t.path())
        .arg("commit")
        .arg(&ck)
        .args(["--git", "auto", "--git-repo"])
        .arg(&repo)
        .assert()
        .success();
    let (code, err) = run(&["--git", "not-hex!"]);
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn dataset_fingerprints_are_stable_and_sensitive() {
    use cairn::ops::provenance::dataset_fingerprint;
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("data");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::write(d.join("a.txt"), b"alpha").unwrap();
    std::fs::write(d.join("sub/b.bin"), noise(1, 3 << 20)).unwrap();
    let fp = |p: &Path| dataset_fingerprint("train", p).unwrap();
    let base = fp(&d);
    assert_eq!(base.files, Some(2));
    assert_eq!(base.bytes, Some(5 + (3 << 20)));
    assert_eq!(fp(&d), base, "stable across runs");
    // Same content created in another order elsewhere: same fingerprint.
    let d2 = t.path().join("data2");
    std::fs::create_dir_all(d2.join("sub")).unwrap();
    std::fs::write(d2.join("sub/b.bin"), noise(1, 3 << 20)).unwrap();
    std::fs::write(d2.join("a.txt"), b"alpha").unwrap();
    assert_eq!(fp(&d2).fingerprint, base.fingerprint);
    // Any byte, a rename, a new file: different.
    let mut bytes = noise(1, 3 << 20);
    bytes[123_456] ^= 1;
    std::fs::write(d2.join("sub/b.bin"), &bytes).unwrap();
    assert_ne!(fp(&d2).fingerprint, base.fingerprint);
    std::fs::write(d2.join("sub/b.bin"), noise(1, 3 << 20)).unwrap();
    std::fs::rename(d2.join("a.txt"), d2.join("c.txt")).unwrap();
    assert_ne!(fp(&d2).fingerprint, base.fingerprint);
    std::fs::rename(d2.join("c.txt"), d2.join("a.txt")).unwrap();
    assert_eq!(fp(&d2).fingerprint, base.fingerprint);
    std::fs::write(d2.join("new"), b"").unwrap();
    assert_ne!(fp(&d2).fingerprint, base.fingerprint);
}

#[test]
fn environment_is_captured_with_additions() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    hf_checkpoint(&ck, 1, 1.0);
    let req = t.path().join("requirements.txt");
    std::fs::write(&req, b"torch==2.5.0\n").unwrap();
    cairn(&store)
        .arg("commit")
        .arg(&ck)
        .args(["--env", "image=sha256:abc", "--env-file"])
        .arg(&req)
        .assert()
        .success();
    let env = &json(&store, &["show", "--json"])["env"];
    for k in [
        "cairn", "os", "arch", "host", "kernel", "cpu", "cpus", "memory",
    ] {
        assert!(
            env[k].as_str().is_some_and(|v| !v.is_empty()),
            "{k} missing: {env}"
        );
    }
    assert_eq!(env["image"], "sha256:abc");
    assert_eq!(env["file.requirements.txt"].as_str().unwrap().len(), 64);
    let out = cairn(&store)
        .args(["cat", "HEAD:_cairn/env/requirements.txt"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"torch==2.5.0\n");
}

#[test]
fn verify_catches_a_corrupted_chunk() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    hf_checkpoint(&ck, 1, 1.0);
    std::fs::write(ck.join("blob.bin"), noise(3, 2 << 20)).unwrap();
    cairn(&store)
        .arg("commit")
        .arg(&ck)
        .arg("--verify")
        .assert()
        .success();
    assert_eq!(
        json(&store, &["show", "--json"])["state"]["verify"]["ok"],
        true
    );
    // Corrupt the stored copy of blob.bin's data, then commit the same content again: dedup
    // reuses the bad copy, and --verify must say so loudly.
    let pack = std::fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xFF;
    std::fs::write(&pack, bytes).unwrap();
    std::fs::write(ck.join("note.txt"), b"second").unwrap();
    let out = cairn(&store)
        .arg("commit")
        .arg(&ck)
        .arg("--verify")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("VERIFY FAILED") && err.contains("blob.bin"),
        "{err}"
    );
    let v = json(&store, &["show", "--json"]);
    assert_eq!(v["state"]["verify"]["ok"], false);
    assert_eq!(v["message"], "");
}

#[test]
fn verify_cmd_pass_and_fail() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    hf_checkpoint(&ck, 1, 1.0);
    cairn(&store)
        .arg("commit")
        .arg(&ck)
        .args([
            "--verify-cmd",
            "test -f model.safetensors && test -f \"$CAIRN_CHECKOUT/config.json\"",
        ])
        .assert()
        .success();
    let v = json(&store, &["show", "--json"]);
    assert_eq!(v["state"]["check"]["ok"], true);
    assert_eq!(v["state"]["check"]["exit_code"], 0);
    let out = cairn(&store)
        .arg("commit")
        .arg(&ck)
        .args(["--verify-cmd", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("load test failed"));
    let v = json(&store, &["show", "--json"]);
    assert_eq!(v["state"]["check"]["ok"], false);
    assert_eq!(v["state"]["check"]["exit_code"], 3);
    let text = String::from_utf8(cairn(&store).arg("show").output().unwrap().stdout).unwrap();
    assert!(text.contains("check  FAILED"), "{text}");
}

#[test]
fn catalog_queries_runs_meta_and_reflog() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    let mut ids = Vec::new();
    for (i, (run, loss)) in [
        ("r1", 0.9),
        ("r1", 0.6),
        ("r2", 0.7),
        ("r2", 0.3),
        ("r1", 0.5),
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(ck.join("w.bin"), noise(i as u64, 1000)).unwrap();
        let v = json(
            &store,
            &[
                "commit",
                ck.to_str().unwrap(),
                "--json",
                "--run-id",
                run,
                "--step",
                &((i + 1) * 100).to_string(),
                "--metric",
                &format!("val_loss={loss}"),
                "--param",
                &format!("lr={}", if i < 3 { "1e-3" } else { "1e-4" }),
                "--git",
                if i % 2 == 0 { "aaaa1111" } else { "bbbb2222" },
                "--dataset-fingerprint",
                &format!("fp{}", i % 2),
                "--branch",
                if *run == "r1" { "main" } else { "other" },
            ],
        );
        ids.push(v["commit"].as_str().unwrap().to_string());
    }
    let q = |args: &[&str]| -> Vec<u64> {
        let mut a = vec!["log", "--json"];
        a.extend_from_slice(args);
        json(&store, &a)
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["step"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        q(&["--all", "--where", "val_loss < 0.65", "--sort", "val_loss"]),
        vec![400, 500, 200]
    );
    assert_eq!(q(&["--all", "--where", "run = r2"]), vec![400, 300]);
    assert_eq!(q(&["--all", "--where", "dataset = fp1"]), vec![400, 200]);
    assert_eq!(q(&["--all", "--where", "git = bbbb"]), vec![400, 200]);
    assert_eq!(q(&["--all", "--where", "lr <= 1e-4"]), vec![500, 400]);
    assert_eq!(
        q(&["--all", "--where", "step >= 300", "--where", "step != 500"]),
        vec![400, 300]
    );
    assert_eq!(
        q(&[
            "--all",
            "--where",
            "val_loss > 0.6",
            "--where",
            "val_loss <= 0.9"
        ]),
        vec![300, 100]
    );
    assert_eq!(
        q(&["--all", "--sort", "-val_loss", "--limit", "2"]),
        vec![100, 300]
    );
    assert_eq!(q(&["--all", "--where", "run ~ 2"]), vec![400, 300]);
    // Without --all: the history of HEAD (main) only.
    assert_eq!(q(&["--where", "val_loss < 1"]), vec![500, 200, 100]);
    let out = cairn(&store)
        .args(["log", "--where", "val_loss"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // runs.
    let runs = json(&store, &["runs", "--json"]);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let r2 = runs.iter().find(|r| r["run_id"] == "r2").unwrap();
    assert_eq!(r2["commits"], 2);
    assert_eq!(r2["best"], 0.3);
    assert_eq!(r2["best_commit"], ids[3]);
    // checkout --meta.
    let meta = t.path().join("checkpoint_00123.meta.json");
    cairn(&store)
        .args(["checkout", "HEAD"])
        .arg(t.path().join("out"))
        .arg("--meta")
        .arg(&meta)
        .assert()
        .success();
    let m: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["id"], ids[4]);
    assert!(m["uri"].as_str().unwrap().starts_with("cairn://"));
    // Every ref move is in the reflog: 5 commits (two creating branches), a tag, a move.
    cairn(&store)
        .args(["tag", "production", &ids[1]])
        .assert()
        .success();
    cairn(&store)
        .args(["tag", "--move", "production", &ids[4]])
        .assert()
        .success();
    let rl = json(&store, &["reflog", "--json"]);
    let rl = rl.as_array().unwrap();
    assert_eq!(rl.len(), 7);
    assert!(
        rl.iter()
            .all(|e| e["who"] == "test@cairn" && e["time_ns"].as_i64().unwrap() > 0)
    );
    assert_eq!(rl[6]["ref"], "refs/tags/production");
    assert_eq!(rl[6]["old"], ids[1]);
    assert_eq!(rl[6]["new"], ids[4]);
    assert_eq!(rl[2]["ref"], "refs/heads/other");
    assert!(rl[2]["old"].is_null());
}

/// Regression: `nvidia-smi` (every commit) and `git` (`--git auto`) ran with no time limit, so
/// a hung GPU driver or git hung the commit. Both are now killed after
/// `provenance::CHILD_TIMEOUT` (5 s): the commit goes on and records that they timed out. The
/// fakes below sleep for 300 s; the bound of 120 s only tells a hang from a commit.
#[test]
fn hung_nvidia_smi_and_git_time_out_and_the_commit_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let bin_dir = t.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    for name in ["nvidia-smi", "git"] {
        let p = bin_dir.join(name);
        std::fs::write(&p, "#!/bin/sh\nexec sleep 300\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    hf_checkpoint(&ck, 10, 0.5);
    let started = std::time::Instant::now();
    let out = cairn(&store)
        .env("PATH", &path)
        .args([
            "commit",
            ck.to_str().unwrap(),
            "-m",
            "hung tools",
            "--git",
            "auto",
        ])
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "commit failed or hung ({:?}): {}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
    let v = json(&store, &["show", "HEAD", "--json"]);
    let env = &v["env"];
    assert!(env["gpus"].as_str().unwrap().contains("timed out"), "{env}");
    assert!(env["git"].as_str().unwrap().contains("timed out"), "{env}");
    assert!(v["git"].is_null(), "{}", v["git"]);
}

/// Regression: a `--verify-cmd` killed mid-run left its whole checkout in `<store>/tmp/`
/// forever. The next `--verify-cmd` and gc remove such leftovers (a killed run's, and the
/// `check-*` directories older versions left), and never a running check's directory.
#[test]
fn an_interrupted_verify_cmd_leaves_nothing_behind_for_long() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let tmp = store.join("tmp");
    // What a killed run leaves: its directory and its lock file, the lock no longer held.
    let killed = tmp.join("check-0123456789ab-00000000000000000000000000000001");
    std::fs::create_dir_all(killed.join("sub")).unwrap();
    std::fs::write(killed.join("sub/model.safetensors"), vec![7u8; 4096]).unwrap();
    std::fs::write(
        tmp.join("check-0123456789ab-00000000000000000000000000000001.lock"),
        b"",
    )
    .unwrap();
    // What the version before lock files left: a bare `check-<id>-<pid>` directory.
    let old = tmp.join("check-0123456789ab-4242");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("f"), b"x").unwrap();
    // A check that is running now: its lock file is held.
    let live = tmp.join("check-live");
    std::fs::create_dir_all(&live).unwrap();
    let live_lock = cairn::storage::lock::exclusive(&tmp.join("check-live.lock")).unwrap();

    let ck = t.path().join("ck");
    hf_checkpoint(&ck, 10, 0.5);
    cairn(&store)
        .args([
            "commit",
            ck.to_str().unwrap(),
            "-m",
            "checked",
            "--verify-cmd",
            "test -f config.json",
        ])
        .assert()
        .success();
    assert!(
        !killed.exists() && !old.exists(),
        "leftovers stay: {:?}",
        std::fs::read_dir(&tmp).unwrap().collect::<Vec<_>>()
    );
    assert!(live.exists(), "a running check's directory was removed");
    let left: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}"); // check-live and its lock; this run's are gone

    // Once the live check ends without cleaning up (killed), gc removes what it left.
    drop(live_lock);
    let v = json(&store, &["gc", "--keep-last", "5", "--json"]);
    assert_eq!(v["stale_tmp_removed"], 1, "{v}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}
