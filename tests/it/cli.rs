//! The CLI as a user drives it: init, commit with metadata, log, show, diff, checkout, cat,
//! tensor, branch, switch, tag, reflog, stats; text and --json.

use crate::common::*;
use cairn::DType;
use serde_json::Value;
use std::path::Path;

fn ckpt(dir: &Path, seed: u64) {
    write_st(
        &dir.join("model.safetensors"),
        &[
            ("embed", DType::F32, vec![1000, 64], weights(1, 64_000)),
            ("head", DType::F32, vec![64, 10], weights(seed, 640)),
            ("bf", DType::BF16, vec![8], noise(2, 16)),
        ],
    );
    std::fs::write(
        dir.join("trainer_state.json"),
        format!("{{\"step\": {seed}}}"),
    )
    .unwrap();
}

#[test]
fn a_session_with_every_command() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let v = json(&store, &["init", "--json"]);
    assert_eq!(v["branch"], "main");
    let hp = t.path().join("hparams.json");
    std::fs::write(&hp, br#"{"lr": 0.0003, "layers": [1, 2]}"#).unwrap();
    let data = t.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("train.txt"), b"some data").unwrap();

    let mut ids = Vec::new();
    for step in 1..=3u64 {
        let ck = t.path().join(format!("checkpoint-{step}"));
        ckpt(&ck, step);
        let v = json(
            &store,
            &[
                "commit",
                ck.to_str().unwrap(),
                "-m",
                &format!("step {step}"),
                "--step",
                &step.to_string(),
                "--epoch",
                "0.5",
                "--metric",
                &format!("val_loss={}", 1.0 / step as f64),
                "--metric",
                "acc=0.9",
                "--param",
                "lr=3e-4",
                "--config",
                hp.to_str().unwrap(),
                "--dataset",
                data.to_str().unwrap(),
                "--dataset-fingerprint",
                "val=dvc:abc",
                "--git",
                "0123abcd",
                "--run-id",
                "r42",
                "--env",
                "torch=2.5",
                "--json",
            ],
        );
        assert_eq!(v["branch"], "main");
        assert!(v["uri"].as_str().unwrap().starts_with("cairn://"));
        ids.push(v["commit"].as_str().unwrap().to_string());
    }

    // log: newest first, all metadata in JSON.
    let log = json(&store, &["log", "--json"]);
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0]["id"], ids[2]);
    assert_eq!(log[0]["parents"][0], ids[1]);
    assert_eq!(log[0]["step"], 3);
    assert_eq!(log[0]["metrics"]["val_loss"], 1.0 / 3.0);
    assert_eq!(log[0]["params"]["lr"], "3e-4");
    assert_eq!(log[0]["config"]["layers"][1], 2);
    assert_eq!(log[0]["git"]["commit"], "0123abcd");
    assert_eq!(log[0]["run_id"], "r42");
    assert_eq!(log[0]["env"]["torch"], "2.5");
    assert_eq!(log[0]["datasets"][0]["name"], "data");
    assert_eq!(log[0]["datasets"][0]["files"], 1);
    assert_eq!(log[0]["datasets"][1]["fingerprint"], "dvc:abc");
    assert_eq!(
        json(&store, &["log", "-n", "1", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let text = cairn(&store).arg("log").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.lines().count(), 3);
    assert!(text.contains("step 3") && text.contains(&ids[2][..12]));

    // Revisions: prefix, ~N, ^, branch.
    for (rev, want) in [
        (&ids[0][..8], 0),
        ("HEAD~2", 0),
        ("HEAD^", 1),
        ("main~1", 1),
        ("HEAD^^", 0),
        ("HEAD", 2),
    ] {
        let v = json(&store, &["show", rev, "--json"]);
        assert_eq!(v["id"], ids[want], "{rev}");
    }

    // show: files and tensors, stored vs logical.
    let show = json(&store, &["show", "HEAD", "--json"]);
    let files = show["files"].as_array().unwrap();
    let model = files
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .unwrap();
    assert_eq!(model["format"], "safetensors");
    assert_eq!(model["tensors"].as_array().unwrap().len(), 3);
    let embed = model["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "embed")
        .unwrap();
    assert_eq!(embed["dtype"], "F32");
    assert_eq!(embed["shape"], serde_json::json!([1000, 64]));
    assert!(show["stored_bytes"].as_u64().unwrap() > 0);
    assert!(
        show["stored_bytes_new_vs_parent"].as_u64().unwrap()
            < show["stored_bytes"].as_u64().unwrap()
    );
    assert_eq!(model["sha256"].as_str().unwrap().len(), 64);

    // diff: only `head` changed, with statistics.
    let d = json(&store, &["diff", "HEAD~1", "HEAD", "--json"]);
    let files = d["files"].as_array().unwrap();
    let m = files
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .unwrap();
    assert_eq!(m["status"], "changed");
    let tensors = m["tensors"].as_array().unwrap();
    let head = tensors.iter().find(|x| x["name"] == "head").unwrap();
    assert_eq!(head["status"], "changed");
    assert!(head["max_abs_delta"].as_f64().unwrap() > 0.0);
    assert!(head["rel_l2"].as_f64().unwrap() > 0.0);
    assert!(head["frac_changed"].as_f64().unwrap() > 0.5);
    let embed = tensors.iter().find(|x| x["name"] == "embed").unwrap();
    assert_eq!(embed["status"], "unchanged");
    let ts = files
        .iter()
        .find(|f| f["path"] == "trainer_state.json")
        .unwrap();
    assert_eq!(ts["status"], "changed");
    let text = cairn(&store)
        .args(["diff", "HEAD~1", "HEAD"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("~ head"));

    // checkout is byte-identical and HEAD does not move.
    let dst = t.path().join("restored");
    cairn(&store)
        .args(["checkout", "HEAD~1"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&t.path().join("checkpoint-2")));
    assert_eq!(json(&store, &["show", "--json"])["id"], ids[2]);

    // cat streams one file.
    let out = cairn(&store)
        .args(["cat", "HEAD:trainer_state.json"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"{\"step\": 3}");

    // tensor: .npy and .safetensors.
    let npy = t.path().join("head.npy");
    cairn(&store)
        .args(["tensor", "HEAD", "head", "-o"])
        .arg(&npy)
        .assert()
        .success();
    let bytes = std::fs::read(&npy).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY"));
    assert!(bytes.ends_with(&weights(3, 640)));
    let st = t.path().join("bf.safetensors");
    cairn(&store)
        .args(["tensor", "HEAD", "model.safetensors:bf", "-o"])
        .arg(&st)
        .assert()
        .success();
    let parsed = cairn::formats::safetensors::parse(&std::fs::read(&st).unwrap()).unwrap();
    assert_eq!(parsed.tensors[0].name, "bf");
    assert_eq!(parsed.tensors[0].dtype, DType::BF16);

    // branch, switch, commit on the branch, tag, reflog.
    cairn(&store)
        .args(["branch", "exp", "HEAD~1"])
        .assert()
        .success();
    let b = json(&store, &["branch", "--json"]);
    assert_eq!(b.as_array().unwrap().len(), 2);
    cairn(&store).args(["switch", "exp"]).assert().success();
    let ck = t.path().join("checkpoint-x");
    ckpt(&ck, 99);
    let v = json(
        &store,
        &["commit", ck.to_str().unwrap(), "-m", "exp", "--json"],
    );
    assert_eq!(v["branch"], "exp");
    assert_eq!(v["parent"], ids[1]);
    assert_eq!(json(&store, &["show", "main", "--json"])["id"], ids[2]);
    cairn(&store)
        .args(["tag", "best", &ids[0]])
        .assert()
        .success();
    assert_eq!(json(&store, &["show", "best", "--json"])["id"], ids[0]);
    let out = cairn(&store)
        .args(["tag", "best", "HEAD"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--move"));
    cairn(&store)
        .args(["tag", "--move", "best", "main"])
        .assert()
        .success();
    assert_eq!(json(&store, &["show", "best", "--json"])["id"], ids[2]);
    let rl = json(&store, &["reflog", "--json"]);
    let actions: Vec<&str> = rl
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "commit", "commit", "commit", "branch", "switch", "commit", "tag", "tag-move"
        ]
    );
    let rl = json(&store, &["reflog", "best", "--json"]);
    assert_eq!(rl.as_array().unwrap().len(), 2);
    assert_eq!(rl[1]["old"], ids[0]);

    // stats.
    let s = json(&store, &["stats", "--json"]);
    assert_eq!(s["commits"], 4);
    assert_eq!(s["branches"], 2);
    assert_eq!(s["tags"], 1);
    assert!(s["dedup_ratio"].as_f64().unwrap() > 2.0, "{s}");
    let text = cairn(&store).arg("stats").output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("dedup"));
}

#[test]
fn store_found_from_env_and_upward_search() {
    let t = tempfile::tempdir().unwrap();
    let project = t.path().join("project");
    let deep = project.join("a/b");
    std::fs::create_dir_all(&deep).unwrap();
    let mut c = assert_cmd::Command::new(bin());
    c.env_remove("CAIRN_STORE")
        .current_dir(&project)
        .arg("init")
        .assert()
        .success();
    assert!(project.join(".cairn/CAIRN").is_file());
    let ck = t.path().join("ck");
    ckpt(&ck, 1);
    let mut c = assert_cmd::Command::new(bin());
    c.env_remove("CAIRN_STORE")
        .current_dir(&deep)
        .arg("commit")
        .arg(&ck)
        .assert()
        .success();
    let mut c = assert_cmd::Command::new(bin());
    let out = c
        .env("CAIRN_STORE", project.join(".cairn"))
        .current_dir(t.path())
        .args(["log", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn piped_output_has_no_progress_bar() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    ckpt(&ck, 1);
    let out = cairn(&store).arg("commit").arg(&ck).output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    ckpt(&ck, 1);
    std::fs::write(ck.join("big.bin"), noise(1, 4 << 20)).unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    for args in [
        vec!["show", "HEAD"],
        vec!["cat", "HEAD:big.bin"],
        vec!["log"],
    ] {
        let mut child = std::process::Command::new(bin())
            .arg("--store")
            .arg(&store)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // like `| head -0`
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

#[test]
fn progress_bar_on_a_terminal_only() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("big.bin"), noise(3, 96 << 20)).unwrap();
    // `script` (util-linux) runs the command on a pseudo-terminal.
    let cmd = format!(
        "{} --store {} commit {}",
        bin().display(),
        store.display(),
        ck.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("CAIRN_AUTHOR", "t@t")
        .output()
        .expect("script (util-linux) runs the command on a terminal");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("commit [") && screen.contains("MiB"),
        "{screen}"
    );
    // The same command piped draws nothing.
    std::fs::write(ck.join("more.bin"), noise(4, 1 << 20)).unwrap();
    let out = cairn(&store).arg("commit").arg(&ck).output().unwrap();
    assert!(out.status.success());
    assert!(out.stderr.is_empty());
}

/// Regression: `cairn reflog` sliced `v[..12]` of any 64-byte value, and HEAD's switch entries
/// hold ref names: a legal branch name with a multi-byte character at byte 12 panicked (exit
/// 101), on every later `reflog` of that store.
#[test]
fn reflog_prints_a_non_ascii_branch_name_whole() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let ck = t.path().join("ck");
    ckpt(&ck, 1);
    cairn(&store).arg("init").assert().success();
    cairn(&store)
        .args(["commit", ck.to_str().unwrap(), "-m", "one"])
        .assert()
        .success();
    // refs/heads/ (11 bytes) + "é" (2 bytes) + 51 letters = 64 bytes, byte 12 inside "é".
    let name = format!("é{}", "x".repeat(51));
    cairn(&store).args(["branch", &name]).assert().success();
    cairn(&store).args(["switch", &name]).assert().success();
    let out = cairn(&store).arg("reflog").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("refs/heads/{name}")), "{text}");
}

/// Names and messages come from strangers: a file named with ESC and BEL sequences and a
/// newline, and such a commit message, must not reach the terminal raw from `show`, `log`,
/// `diff` or an error message, nor start a forged line of output.
#[test]
fn text_output_escapes_control_characters() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let evil = "a\u{1b}]0;pwned\u{7}\nFORGED line\u{9b}31m";
    for (i, content) in [&b"one"[..], &b"two"[..]].iter().enumerate() {
        let ck = t.path().join(format!("ck{i}"));
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join(evil), content).unwrap();
        cairn(&store)
            .args([
                "commit",
                ck.to_str().unwrap(),
                "-m",
                &format!("msg {i}\u{1b}[2J{evil}"),
            ])
            .assert()
            .success();
    }
    for args in [
        &["show", "HEAD"][..],
        &["log"][..],
        &["diff", "HEAD~1", "HEAD"][..],
        &["cat", "HEAD:nonexistent\u{1b}[2J"][..],
    ] {
        let out = cairn(&store).args(args).output().unwrap();
        for (what, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let text = String::from_utf8_lossy(bytes);
            assert!(
                !text
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t'),
                "{args:?} {what} holds a raw control character: {text:?}"
            );
            assert!(
                !text.lines().any(|l| l.starts_with("FORGED")),
                "{args:?} {what} has a forged line: {text:?}"
            );
        }
    }
    let show = cairn(&store).args(["show", "HEAD"]).output().unwrap();
    assert!(String::from_utf8_lossy(&show.stdout).contains("a\\x1b]0;pwned\\x07\\nFORGED"));
}

/// Regression: symlinks that leave the committed directory were followed silently, so a folder
/// holding `config.json -> ~/.ssh/id_rsa` put the key in the store. Such a link is now refused,
/// naming it, its target and `--follow-symlinks`, and nothing is committed; links inside the
/// directory are still followed.
#[test]
fn symlinks_out_of_the_directory_are_refused_unless_asked_for() {
    use std::os::unix::fs::symlink;
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let secret = t.path().join("id_rsa");
    std::fs::write(&secret, b"-----BEGIN OPENSSH PRIVATE KEY-----").unwrap();
    let ck = t.path().join("ck");
    ckpt(&ck, 1);
    symlink(&secret, ck.join("config.json")).unwrap();
    let out = cairn(&store)
        .args(["commit", ck.to_str().unwrap(), "-m", "leaky"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains(secret.to_str().unwrap()), "{err}");
    assert!(err.contains("--follow-symlinks"), "{err}");
    assert!(
        json(&store, &["log", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    fsck_read_data_clean(&store);

    // A link that stays inside the directory needs no flag.
    std::fs::remove_file(ck.join("config.json")).unwrap();
    symlink("model.safetensors", ck.join("latest.safetensors")).unwrap();
    cairn(&store)
        .args(["commit", ck.to_str().unwrap(), "-m", "inside"])
        .assert()
        .success();
}

/// A Hugging Face hub snapshot: every file of `snapshots/<rev>/` is a link into
/// `../../blobs/`. It commits with `--follow-symlinks`, and checks out as plain files,
/// byte-identical.
#[test]
fn a_hub_snapshot_commits_with_follow_symlinks() {
    use std::os::unix::fs::symlink;
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let hub = t.path().join("models--org--tiny");
    let src = t.path().join("src");
    ckpt(&src, 3);
    std::fs::create_dir_all(hub.join("blobs")).unwrap();
    let snap = hub.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    for name in ["model.safetensors", "trainer_state.json"] {
        let bytes = std::fs::read(src.join(name)).unwrap();
        let blob = blake3::hash(&bytes).to_hex().to_string();
        std::fs::write(hub.join("blobs").join(&blob), &bytes).unwrap();
        symlink(format!("../../blobs/{blob}"), snap.join(name)).unwrap();
    }
    let out = cairn(&store)
        .args(["commit", snap.to_str().unwrap(), "-m", "hub"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--follow-symlinks"));
    cairn(&store)
        .args([
            "commit",
            snap.to_str().unwrap(),
            "-m",
            "hub",
            "--follow-symlinks",
        ])
        .assert()
        .success();
    let dst = t.path().join("out");
    cairn(&store)
        .args(["checkout", "HEAD", dst.to_str().unwrap()])
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&src));
    assert!(
        !std::fs::symlink_metadata(dst.join("model.safetensors"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// A `.cairn` found by walking up from the working directory must be owned by the user cairn
/// runs as (as git refuses a repository another user owns): another user's store is refused
/// with a message naming it, its owner, `--store` and the config file, unless it is named with
/// `--store`/`$CAIRN_STORE` or listed in the config file's `safe_stores`. Needs root (chown).
#[test]
fn a_store_another_user_owns_is_not_discovered_unless_trusted() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let project = t.path().join("project");
    let store = project.join(".cairn");
    let work = project.join("src").join("deep");
    std::fs::create_dir_all(&work).unwrap();
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("a.bin"), b"x").unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let config = t.path().join("config.json");
    let found = |config: &std::path::Path| {
        std::process::Command::new(bin())
            .env_remove("CAIRN_STORE")
            .env("CAIRN_CONFIG", config)
            .current_dir(&work)
            .arg("log")
            .output()
            .unwrap()
    };
    // Ours: found.
    assert!(found(&config).status.success());
    // Another user's: refused, nothing read.
    let nobody = 65534;
    let chown = |uid: u32| {
        let status = std::process::Command::new("chown")
            .arg("-R")
            .arg(uid.to_string())
            .arg(&store)
            .status()
            .unwrap();
        assert!(status.success());
    };
    chown(nobody);
    assert_eq!(std::fs::metadata(&store).unwrap().uid(), nobody);
    let out = found(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("owned by uid 65534")
            && err.contains("--store")
            && err.contains("safe_stores")
            && err.contains(&config.display().to_string()),
        "{err}"
    );
    // Named explicitly: used.
    let out = std::process::Command::new(bin())
        .env("CAIRN_CONFIG", &config)
        .current_dir(&work)
        .arg("--store")
        .arg(&store)
        .arg("log")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Listed as safe: found again; a malformed config file is an error naming it.
    std::fs::write(
        &config,
        format!("{{\"safe_stores\": [{:?}]}}", store.display().to_string()),
    )
    .unwrap();
    assert!(found(&config).status.success());
    std::fs::write(&config, b"{\"safe_store\": []}").unwrap();
    let out = found(&config);
    assert!(String::from_utf8_lossy(&out.stderr).contains("config file"));
    chown(0);
}

/// Regression: `--metric loss=nan` was accepted and stored a metric the catalog cannot compare
/// or sort. Non-finite metrics are refused, naming the flag; nothing is committed.
#[test]
fn non_finite_metrics_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("a.bin"), b"x").unwrap();
    for bad in ["loss=nan", "loss=inf", "loss=-inf", "loss=NaN"] {
        let out = cairn(&store)
            .args(["commit", "--metric", bad])
            .arg(&ck)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(err.contains("must be finite") && err.contains(bad), "{err}");
    }
    let out = cairn(&store)
        .args(["commit", "--epoch", "nan"])
        .arg(&ck)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("finite"));
    let out = cairn(&store).args(["log", "--json"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    cairn(&store)
        .args(["commit", "--metric", "loss=0.5"])
        .arg(&ck)
        .assert()
        .success();
}

/// Regression: `commit --verify --json` printed the commit's JSON before the checks ran, so the
/// document could not say how they went. It is now printed once they are done, with `verify`
/// and `load_test`; a failed check still exits 1 (the commit stays published).
#[test]
fn commit_json_reports_its_checks() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    checkpoint(&ck, 5);
    let out = cairn(&store)
        .args(["commit", "--verify", "--verify-cmd", "true", "--json"])
        .arg(&ck)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verify"]["ok"], true, "{v}");
    assert_eq!(v["load_test"]["ok"], true, "{v}");
    let out = cairn(&store)
        .args(["commit", "--verify-cmd", "exit 3", "--json"])
        .arg(&ck)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["load_test"]["ok"], false, "{v}");
    assert_eq!(v["load_test"]["exit_code"], 3, "{v}");
    assert!(v["verify"].is_null());
}

/// A reader that stops reading stdout early (`cairn cat ... | head -c 1`) is not a failure:
/// exit 0 and no message. (A broken pipe anywhere else is an error: the binary's unit test
/// `render::tests::only_a_closed_stdout_is_benign`.)
#[test]
fn a_closed_stdout_is_not_an_error() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("big.bin"), noise(9, 8 << 20)).unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let mut child = std::process::Command::new(bin())
        .env_remove("CAIRN_STORE")
        .arg("--store")
        .arg(&store)
        .args(["cat", "HEAD:big.bin"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--where 'branch = NAME'` selects the commits in that branch's history (every parent),
/// by exact name.
#[test]
fn log_where_branch_selects_a_branchs_history() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("s");
    cairn(&store).arg("init").assert().success();
    for (i, branch) in [(0u64, None), (1, Some("exp")), (2, Some("exp"))] {
        if let Some(b) = branch
            && i == 1
        {
            cairn(&store).args(["branch", b]).assert().success();
            cairn(&store).args(["switch", b]).assert().success();
        }
        let ck = t.path().join(format!("ck{i}"));
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join("f.bin"), noise(i, 1000)).unwrap();
        cairn(&store).arg("commit").arg(&ck).assert().success();
    }
    let count = |cond: &str| {
        let v = json(&store, &["log", "--all", "--where", cond, "--json"]);
        v.as_array().unwrap().len()
    };
    assert_eq!(count("branch = exp"), 3);
    assert_eq!(count("branch = main"), 1);
    assert_eq!(count("branch = ma"), 0);
    assert_eq!(count("branch != main"), 2);
}
