//! Retention and gc: every rule and their union through the CLI, the stored policy, dry run =
//! execution, prune and slim semantics, repack, fail-closed roots, fsck on damage, index
//! rebuild, healing.

use crate::common::*;
use cairn::DType;
use serde_json::Value;
use std::path::Path;

/// A run of `n` checkpoints: each has a unique 2 MiB optimizer file and a shared embedding.
fn run(store: &Path, dir: &Path, n: u64, losses: &[f64]) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let ck = dir.join(format!("ck{i}"));
        write_st(
            &ck.join("model.safetensors"),
            &[
                ("embed", DType::F32, vec![1 << 18], weights(7, 1 << 18)),
                ("head", DType::F32, vec![1 << 18], weights(100 + i, 1 << 18)),
            ],
        );
        std::fs::write(ck.join("optimizer.pt"), noise(1000 + i, 2 << 20)).unwrap();
        let v = json(
            store,
            &[
                "commit",
                ck.to_str().unwrap(),
                "--json",
                "--step",
                &((i + 1) * 100).to_string(),
                "--metric",
                &format!("val_loss={}", losses[i as usize]),
            ],
        );
        ids.push(v["commit"].as_str().unwrap().to_string());
    }
    ids
}

fn decisions(plan: &Value) -> Vec<(u64, String)> {
    let mut v: Vec<(u64, String)> = plan["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["step"].as_u64().unwrap_or(0),
                c["decision"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn rules_union_dry_run_equals_execution_and_lineage_survives() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ids = run(
        &store,
        t.path(),
        8,
        &[0.9, 0.5, 0.7, 0.4, 0.8, 0.6, 0.45, 0.95],
    );
    let args = [
        "gc",
        "--keep-last",
        "2",
        "--keep-best",
        "1:val_loss:min",
        "--keep-every",
        "300",
        "--json",
    ];
    let mut dry_args = args.to_vec();
    dry_args.push("--dry-run");
    let dry = json(&store, &dry_args);
    assert_eq!(
        decisions(&dry["plan"]),
        [
            (100, "prune"),
            (200, "prune"),
            (300, "keep"),
            (400, "keep"),
            (500, "prune"),
            (600, "keep"),
            (700, "keep"),
            (800, "keep")
        ]
        .iter()
        .map(|(s, d)| (*s, d.to_string()))
        .collect::<Vec<_>>()
    );
    let plan = &dry["plan"];
    let c400 = plan["commits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["step"] == 400)
        .unwrap();
    assert!(
        c400["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "keep-best 1:val_loss:min")
    );
    let c800 = plan["commits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["step"] == 800)
        .unwrap();
    assert!(
        c800["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "head of main")
    );
    // Each pruned commit frees its own optimizer file and head tensor (~3 MiB stored, noise).
    let freed: u64 = plan["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["frees_bytes"].as_u64().unwrap())
        .sum();
    assert!(freed >= 3 * (2 << 20), "{freed}");
    assert_eq!(
        plan["dead_bytes"].as_u64().unwrap(),
        freed,
        "no chunk shared among pruned ones"
    );
    let stats_before = json(&store, &["stats", "--json"]);
    // Dry run changed nothing.
    assert_eq!(json(&store, &["stats", "--json"]), stats_before);
    let done = json(&store, &args);
    assert_eq!(
        done["plan"], dry["plan"],
        "execution ran exactly the dry run's plan"
    );
    assert_eq!(done["mode"], "immediate");
    assert!(
        done["disk_bytes_before"].as_u64().unwrap() - done["disk_bytes_after"].as_u64().unwrap()
            >= freed
    );
    // Pruned commits stay in log, marked, with their metrics.
    let log = json(&store, &["log", "--json"]);
    assert_eq!(log.as_array().unwrap().len(), 8);
    let show = json(&store, &["show", &ids[0], "--json"]);
    assert_eq!(show["metrics"]["val_loss"], 0.9);
    assert!(show["state"]["pruned"]["time_ns"].as_i64().unwrap() > 0);
    let out = cairn(&store)
        .args(["checkout", &ids[0]])
        .arg(t.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pruned by gc") && err.contains("released"),
        "{err}"
    );
    // Kept commits still check out byte for byte, and fsck is clean.
    cairn(&store)
        .args(["checkout", &ids[3]])
        .arg(t.path().join("k3"))
        .assert()
        .success();
    assert_eq!(
        snapshot(&t.path().join("k3")),
        snapshot(&t.path().join("ck3"))
    );
    fsck_read_data_clean(&store);
    // A second run finds nothing new to prune.
    let again = json(&store, &args);
    assert_eq!(again["plan"]["dead_chunks"], 0);
}

#[test]
fn keep_improving_and_within_and_all_branches() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    run(&store, t.path(), 5, &[0.9, 0.5, 0.7, 0.4, 0.8]);
    let dry = json(
        &store,
        &[
            "gc",
            "--keep-improving",
            "val_loss:min",
            "--dry-run",
            "--json",
        ],
    );
    let d = decisions(&dry["plan"]);
    let kept: Vec<u64> = d
        .iter()
        .filter(|(_, x)| x == "keep")
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(kept, vec![100, 200, 400, 500]);
    let dry = json(
        &store,
        &["gc", "--keep-within", "1h", "--dry-run", "--json"],
    );
    assert!(decisions(&dry["plan"]).iter().all(|(_, x)| x == "keep"));
    // Another branch is untouched unless --all.
    cairn(&store)
        .args(["branch", "side", "HEAD~3"])
        .assert()
        .success();
    let dry = json(&store, &["gc", "--keep-last", "1", "--dry-run", "--json"]);
    let d = decisions(&dry["plan"]);
    assert_eq!(d.iter().filter(|(_, x)| x == "prune").count(), 2, "{d:?}");
    let dry = json(
        &store,
        &["gc", "--keep-last", "1", "--all", "--dry-run", "--json"],
    );
    let d = decisions(&dry["plan"]);
    assert_eq!(d.iter().filter(|(_, x)| x == "prune").count(), 3, "{d:?}");
    // Bad rules are clear errors.
    for bad in [
        vec!["gc", "--keep-best", "x:val_loss:min"],
        vec!["gc", "--keep-improving", "val_loss:up"],
        vec!["gc", "--keep-within", "soon"],
    ] {
        let out = cairn(&store).args(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
    }
}

#[test]
fn stored_policy_runs_after_every_commit() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    cairn(&store)
        .args(["retention", "set", "keep-last 2"])
        .assert()
        .success();
    let out = cairn(&store).args(["retention", "show"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "keep-last 2");
    run(&store, t.path(), 5, &[0.9, 0.5, 0.7, 0.4, 0.8]);
    // Each commit started the policy's gc in the background: wait for the last of them.
    let st = json(&store, &["gc", "--status", "--wait-idle", "--json"]);
    assert_eq!(st["running"], false, "{st}");
    assert_eq!(st["last"]["state"], "finished", "{st}");
    assert_eq!(st["last"]["policy"], "keep-last 2", "{st}");
    assert!(
        st["last"]["trigger"]
            .as_str()
            .unwrap()
            .starts_with("policy after commit on "),
        "{st}"
    );
    let log = json(&store, &["log", "--json"]);
    let pruned = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            json(&store, &["show", c["id"].as_str().unwrap(), "--json"])["state"]["pruned"]
                .is_object()
        })
        .count();
    assert_eq!(pruned, 3);
    let s = json(&store, &["stats", "--json"]);
    // Only two commits' optimizer files remain (plus shared data).
    assert!(s["pack_bytes"].as_u64().unwrap() < 4 * (3 << 20), "{s}");
    cairn(&store)
        .args(["retention", "clear"])
        .assert()
        .success();
    assert!(
        cairn(&store)
            .args(["retention", "set", "keep-lots 2"])
            .output()
            .unwrap()
            .status
            .code()
            == Some(1)
    );
}

#[test]
fn slim_releases_part_of_older_commits() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ids = run(&store, t.path(), 4, &[0.9, 0.5, 0.7, 0.4]);
    let out = json(
        &store,
        &[
            "gc",
            "--slim",
            "optimizer.pt",
            "--slim-keep-last",
            "2",
            "--json",
        ],
    );
    let d = decisions(&out["plan"]);
    assert_eq!(d.iter().filter(|(_, x)| x == "slim").count(), 2, "{d:?}");
    let dst = t.path().join("s0");
    let o = cairn(&store)
        .args(["checkout", &ids[0]])
        .arg(&dst)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--partial"));
    let o = cairn(&store)
        .args(["checkout", &ids[0], "--partial"])
        .arg(&dst)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("optimizer.pt"));
    assert!(dst.join("model.safetensors").exists() && !dst.join("optimizer.pt").exists());
    assert_eq!(
        std::fs::read(dst.join("model.safetensors")).unwrap(),
        std::fs::read(t.path().join("ck0/model.safetensors")).unwrap()
    );
    // diff treats the released file as unknown.
    let dj = json(&store, &["diff", &ids[0], &ids[3], "--json"]);
    let f = dj["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "optimizer.pt")
        .unwrap();
    assert_eq!(f["status"], "unknown");
    fsck_read_data_clean(&store);
}

#[test]
fn repack_moves_live_data_and_readers_stay_correct() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    cairn(&root).arg("init").assert().success();
    // One commit with two big files in one pack; then drop one file from history.
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("keep.bin"), noise(1, 3 << 20)).unwrap();
    std::fs::write(ck.join("drop.bin"), noise(2, 3 << 20)).unwrap();
    let first = json(&root, &["commit", ck.to_str().unwrap(), "--json"]);
    std::fs::remove_file(ck.join("drop.bin")).unwrap();
    json(&root, &["commit", ck.to_str().unwrap(), "--json"]);
    // A reader that opened the store (and resolved locations) before gc.
    let store = cairn::Store::open(&root).unwrap();
    let out = json(&root, &["gc", "--keep-last", "1", "--json"]);
    assert_eq!(
        out["plan"]["repack_packs"].as_array().unwrap().len(),
        1,
        "{out}"
    );
    assert_eq!(out["packs_repacked"], 1);
    assert!(
        out["disk_bytes_after"].as_u64().unwrap()
            < out["disk_bytes_before"].as_u64().unwrap() - (2 << 20)
    );
    // The old handle still reads the kept file correctly (it retries through a fresh view).
    let mut buf = Vec::new();
    let head = cairn::ops::rev::resolve(&store, "HEAD").unwrap();
    cairn::ops::read::cat(&store, head, "keep.bin", &mut buf, false).unwrap();
    assert_eq!(buf, noise(1, 3 << 20));
    fsck_read_data_clean(&root);
    let _ = first;
}

#[test]
fn fsck_finds_every_kind_of_damage_and_repair_heals() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    cairn(&root).arg("init").assert().success();
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("a.bin"), noise(1, 1 << 20)).unwrap();
    cairn(&root).arg("commit").arg(&ck).assert().success();
    fsck_read_data_clean(&root);
    // Subsets cover everything.
    for i in 1..=3 {
        cairn(&root)
            .args(["fsck", "--read-data-subset", &format!("{i}/3")])
            .assert()
            .success();
    }
    assert_eq!(
        cairn(&root)
            .args(["fsck", "--read-data-subset", "4/3"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(1)
    );
    // A flipped data byte: found by --read-data (not by the structural check), named.
    let pack = std::fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let clean = std::fs::read(&pack).unwrap();
    let mut bad = clean.clone();
    bad[clean.len() / 2] ^= 1;
    std::fs::write(&pack, &bad).unwrap();
    cairn(&root).arg("fsck").assert().success();
    let out = cairn(&root)
        .args(["fsck", "--read-data", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &rep["problems"][0];
    assert_eq!(p["kind"], "corrupt-chunk");
    assert_eq!(
        p["pack"].as_str().unwrap(),
        pack.file_stem().unwrap().to_str().unwrap()
    );
    // Healing: committing the same content again writes a good copy (no dedup poisoning).
    std::fs::write(ck.join("b.txt"), b"more").unwrap();
    cairn(&root).arg("commit").arg(&ck).assert().success();
    fsck_read_data_clean(&root);
    // repair --from heals too.
    std::fs::write(&pack, &clean).unwrap();
    let idx_pack = std::fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| *p != pack)
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let clean2 = std::fs::read(&idx_pack).unwrap();
    let mut bad2 = clean2.clone();
    bad2[clean2.len() / 2] ^= 1;
    std::fs::write(&idx_pack, &bad2).unwrap();
    assert_eq!(
        cairn(&root)
            .args(["fsck", "--read-data"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(1)
    );
    let out = cairn(&root)
        .args(["repair", "--from"])
        .arg(&ck)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("healed 1"));
    fsck_read_data_clean(&root);
    // A missing pack is structural damage.
    std::fs::remove_file(&pack).unwrap();
    let out = cairn(&root).args(["fsck", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rep["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "missing-pack"),
        "{rep}"
    );
}

#[test]
fn rebuilt_index_equals_the_original() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    cairn(&root).arg("init").assert().success();
    let ids = run(&root, t.path(), 3, &[0.9, 0.5, 0.7]);
    cairn(&root)
        .args(["branch", "exp", &ids[0]])
        .assert()
        .success();
    cairn(&root)
        .args(["tag", "best", &ids[1]])
        .assert()
        .success();
    cairn(&root).args(["switch", "exp"]).assert().success();
    cairn(&root).args(["verify", "HEAD"]).assert().success();
    let dump = |root: &Path| {
        let s = cairn::Store::open(root).unwrap();
        let v = s.view();
        let mut out = Vec::new();
        for cf in cairn::storage::index::ALL_CFS {
            v.for_each(cf, |k, val| {
                out.push((cf.to_string(), k.to_vec(), val.to_vec()));
                Ok(())
            })
            .unwrap();
        }
        out
    };
    let before = dump(&root);
    std::fs::remove_dir_all(root.join("index")).unwrap();
    let out = cairn(&root).arg("log").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("index is missing"));
    cairn(&root)
        .args(["repair", "--rebuild-index"])
        .assert()
        .success();
    assert_eq!(dump(&root), before);
    fsck_read_data_clean(&root);
}

#[test]
fn gc_that_cannot_list_roots_deletes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    cairn(&root).arg("init").assert().success();
    run(&root, t.path(), 3, &[0.9, 0.5, 0.7]);
    let listing = store_listing(&root);
    // A ref pointing at a commit that does not exist: the walk from the roots fails.
    {
        let s = cairn::Store::open(&root).unwrap();
        s.with_writer(|index| -> Result<(), cairn::StoreError> {
            let mut b = index.batch()?;
            b.put_ref("refs/heads/ghost", &cairn::CommitId([7; 32]))?;
            index.write(b)?;
            Ok(())
        })
        .unwrap();
    }
    let out = cairn(&root)
        .args(["gc", "--keep-last", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    assert_eq!(store_listing(&root), listing);
}

/// A store of three commits of one slowly moving tensor: each later commit's chunks are
/// delta-coded against the one before. Returns the commit ids and each version's bytes.
fn delta_series(root: &std::path::Path) -> (Vec<cairn::CommitId>, Vec<Vec<u8>>) {
    let store = cairn::Store::init(root).unwrap();
    let mut w: Vec<f32> = weights(1, 1 << 18)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut ids = Vec::new();
    let mut versions: Vec<Vec<u8>> = Vec::new();
    for step in 1..=3u64 {
        versions.push(w.iter().flat_map(|x| x.to_le_bytes()).collect());
        let mut opts = cairn::CommitOptions::default();
        opts.meta.step = Some(step);
        let mut b = cairn::CommitBuilder::new(&store, opts);
        b.add_tensors(
            "model.safetensors",
            vec![cairn::TensorInput {
                name: "w".into(),
                dtype: DType::F32,
                shape: vec![1 << 18],
                data: w.iter().flat_map(|x| x.to_le_bytes()).collect(),
            }],
            None,
        )
        .unwrap();
        ids.push(b.commit().unwrap().commit);
        for (i, x) in w.iter_mut().enumerate() {
            if i % 7 == 0 {
                *x += 1e-4;
            }
        }
    }
    // The newest commit's chunks have delta bases in older commits.
    let tree = store.tree(store.commit(ids[2]).unwrap().tree).unwrap();
    let chunk = tree.files["model.safetensors"].segments[1].chunks[0].id;
    let loc = store.chunk_loc(chunk).unwrap().unwrap();
    assert!(loc.base.is_some(), "expected a delta-coded chunk: {loc:?}");
    (ids, versions)
}

/// The tensor bytes of `rev` through the CLI (`cat`, verified).
fn tensor_bytes(root: &std::path::Path, rev: &str) -> Vec<u8> {
    let out = cairn(root)
        .args(["cat", &format!("{rev}:model.safetensors")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = cairn::formats::safetensors::parse(&out.stdout).unwrap();
    out.stdout[parsed.data_start() as usize..].to_vec()
}

#[test]
fn delta_bases_of_pruned_commits_are_freed_by_reencoding_the_kept_chunks() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (ids, versions) = delta_series(&root);
    let plan = json(&root, &["gc", "--keep-last", "1", "--dry-run", "--json"])["plan"].clone();
    assert_eq!(
        decisions(&plan)
            .iter()
            .filter(|(_, d)| d == "prune")
            .count(),
        2
    );
    let reencode = plan["reencode_chunks"].as_u64().unwrap();
    assert!(reencode >= 1, "{plan}");
    assert!(plan["kept_as_delta_base"].as_u64().unwrap() >= 1, "{plan}");
    let out = json(&root, &["gc", "--keep-last", "1", "--json"]);
    assert_eq!(out["mode"], "immediate", "{out}");
    assert_eq!(out["chunks_reencoded"].as_u64().unwrap(), reencode, "{out}");
    // Every chunk of the pruned commits is gone; the kept commit's chunks need no base.
    let store = cairn::Store::open(&root).unwrap();
    let kept = store.tree(store.commit(ids[2]).unwrap().tree).unwrap();
    let kept_chunks: std::collections::HashSet<_> = kept
        .files
        .values()
        .flat_map(|f| f.chunks().map(|c| c.id))
        .collect();
    for c in &kept_chunks {
        let loc = store.chunk_loc(*c).unwrap().unwrap();
        assert!(
            loc.base.is_none_or(|b| kept_chunks.contains(&b)),
            "{c} still needs a chunk of a pruned commit: {loc:?}"
        );
    }
    for old in &ids[..2] {
        let tree = store.tree(store.commit(*old).unwrap().tree).unwrap();
        for c in tree.files.values().flat_map(|f| f.chunks()) {
            if !kept_chunks.contains(&c.id) {
                assert!(store.chunk_loc(c.id).unwrap().is_none(), "{c:?} survived");
            }
        }
    }
    drop(store);
    // The kept commit reads back exactly, and everything verifies.
    assert_eq!(tensor_bytes(&root, "HEAD"), versions[2]);
    fsck_read_data_clean(&root);
    assert!(
        out["disk_bytes_after"].as_u64().unwrap() < out["disk_bytes_before"].as_u64().unwrap(),
        "{out}"
    );
}

/// Records what each phase of a check expects to read.
#[derive(Default)]
struct Phases(std::sync::Mutex<Vec<(String, u64)>>);

impl cairn::ops::progress::Progress for Phases {
    fn begin(&self, what: &str, total: u64) {
        self.0.lock().unwrap().push((what.to_string(), total));
    }
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}

/// `fsck --read-data` decodes each chunk once: the file pass verifies every chunk of the files
/// it decodes whole (each against its id, on the way to the file's SHA-256), so the chunk pass
/// then reads nothing of a store whose chunks all belong to files. A damaged delta base is
/// still found and named, as are the deltas over it, without a file-digest-mismatch beside
/// them, and the slices of `--read-data-subset` still find it.
#[test]
fn fsck_read_data_decodes_each_chunk_once_and_names_a_damaged_base() {
    use cairn::ops::fsck::{FsckOptions, fsck};
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (ids, _) = delta_series(&root);
    let store = cairn::Store::open(&root).unwrap();
    let opts = FsckOptions {
        read_data: true,
        subset: None,
    };
    let phases = Phases::default();
    let rep = fsck(&store, &opts, &phases).unwrap();
    assert!(rep.ok(), "{:?}", rep.problems);
    assert_eq!(rep.files_verified, 3);
    assert_eq!(rep.chunks_read, rep.chunks_indexed);
    let logical: u64 = ids
        .iter()
        .map(|id| store.tree(store.commit(*id).unwrap().tree).unwrap())
        .map(|t| t.files["model.safetensors"].size)
        .sum();
    assert_eq!(
        *phases.0.lock().unwrap(),
        [("fsck files".to_string(), logical), ("fsck".to_string(), 0)]
    );
    // Damage the base of the newest commit's first delta-coded chunk.
    let tree = store.tree(store.commit(ids[2]).unwrap().tree).unwrap();
    let chunk = tree.files["model.safetensors"].segments[1].chunks[0].id;
    let base = store.chunk_loc(chunk).unwrap().unwrap().base.unwrap();
    drop(store);
    damage_chunk(&root, base);
    let corrupt = |args: &[&str]| -> Vec<String> {
        let out = cairn(&root).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
        let problems = rep["problems"].as_array().unwrap();
        assert!(
            problems.iter().all(|p| p["kind"] == "corrupt-chunk"),
            "{rep}"
        );
        problems
            .iter()
            .map(|p| p["subject"].as_str().unwrap().to_string())
            .collect()
    };
    let all = corrupt(&["fsck", "--read-data", "--json"]);
    assert!(all.contains(&base.to_hex()), "{all:?}");
    assert!(all.contains(&chunk.to_hex()), "{all:?}");
    let mut found = std::collections::HashSet::new();
    for i in 1..=2 {
        let slice = format!("{i}/2");
        let out = cairn(&root)
            .args(["fsck", "--read-data-subset", &slice, "--json"])
            .output()
            .unwrap();
        let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
        for p in rep["problems"].as_array().unwrap() {
            assert_eq!(p["kind"], "corrupt-chunk", "{rep}");
            found.insert(p["subject"].as_str().unwrap().to_string());
        }
    }
    assert!(found.contains(&base.to_hex()), "{found:?}");
}

#[test]
fn an_index_rebuilt_after_reencoding_picks_the_copy_that_needs_no_dead_base() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (_, versions) = delta_series(&root);
    // No repack: the old delta copies stay in their packs beside the re-encoded ones.
    let out = json(
        &root,
        &[
            "gc",
            "--keep-last",
            "1",
            "--repack-threshold",
            "1.0",
            "--json",
        ],
    );
    assert!(out["chunks_reencoded"].as_u64().unwrap() >= 1, "{out}");
    assert_eq!(out["packs_repacked"], 0, "{out}");
    cairn(&root)
        .args(["repair", "--rebuild-index"])
        .assert()
        .success();
    let store = cairn::Store::open(&root).unwrap();
    let head = cairn::ops::rev::resolve(&store, "HEAD").unwrap();
    let tree = store.tree(store.commit(head).unwrap().tree).unwrap();
    for c in tree.files.values().flat_map(|f| f.chunks()) {
        let loc = store.chunk_loc(c.id).unwrap().unwrap();
        assert_eq!(loc.depth, 0, "{c:?}: {loc:?}");
    }
    drop(store);
    assert_eq!(tensor_bytes(&root, "HEAD"), versions[2]);
    fsck_read_data_clean(&root);
}

#[test]
fn a_deferred_gc_keeps_the_delta_bases_a_later_gc_reencodes_away() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (_, versions) = delta_series(&root);
    // A commit is running: gc can only mark, and must not mark a base a live chunk needs.
    let store = cairn::Store::open(&root).unwrap();
    let writing = cairn::storage::lock::shared(&store.writers_lock_path()).unwrap();
    let out = json(&root, &["gc", "--keep-last", "1", "--wait", "0", "--json"]);
    assert_eq!(out["mode"], "deferred", "{out}");
    assert_eq!(out["chunks_reencoded"], 0, "{out}");
    drop(writing);
    drop(store);
    assert_eq!(tensor_bytes(&root, "HEAD"), versions[2]);
    fsck_read_data_clean(&root);
    // The next gc, with no writer, re-encodes and frees the bases.
    let out = json(&root, &["gc", "--keep-last", "1", "--json"]);
    assert_eq!(out["mode"], "immediate", "{out}");
    assert!(out["chunks_reencoded"].as_u64().unwrap() >= 1, "{out}");
    assert_eq!(tensor_bytes(&root, "HEAD"), versions[2]);
    fsck_read_data_clean(&root);
}

#[test]
fn gc_beside_a_running_writer_marks_then_a_later_run_deletes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    cairn(&root).arg("init").assert().success();
    run(&root, t.path(), 3, &[0.9, 0.5, 0.7]);
    let before = json(&root, &["stats", "--json"]);
    // A writer in progress holds writers.lock shared.
    let writer = cairn::storage::lock::shared(&root.join("locks/writers.lock")).unwrap();
    let out = json(&root, &["gc", "--keep-last", "1", "--wait", "0", "--json"]);
    assert_eq!(out["mode"], "deferred");
    assert_eq!(out["chunks_removed"], 0);
    let mid = json(&root, &["stats", "--json"]);
    assert_eq!(
        mid["chunks"], before["chunks"],
        "nothing deleted while a writer runs"
    );
    assert_eq!(mid["pack_bytes"], before["pack_bytes"]);
    drop(writer);
    let out = json(&root, &["gc", "--keep-last", "1", "--json"]);
    assert_eq!(out["mode"], "immediate");
    assert!(out["plan"]["marked_chunks"].as_u64().unwrap() > 0);
    assert!(out["chunks_removed"].as_u64().unwrap() > 0);
    let after = json(&root, &["stats", "--json"]);
    assert!(after["pack_bytes"].as_u64().unwrap() < before["pack_bytes"].as_u64().unwrap());
    fsck_read_data_clean(&root);
}

#[test]
fn a_marked_chunk_reused_by_a_commit_comes_back_to_life() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    cairn(&root).arg("init").assert().success();
    let ids = run(&root, t.path(), 2, &[0.9, 0.5]);
    let writer = cairn::storage::lock::shared(&root.join("locks/writers.lock")).unwrap();
    // ck0's optimizer file becomes dead and marked...
    assert_eq!(
        json(&root, &["gc", "--keep-last", "1", "--wait", "0", "--json"])["mode"],
        "deferred"
    );
    drop(writer);
    // ...then a new commit reuses it (same content as ck0), clearing the mark.
    let v = json(
        &root,
        &["commit", t.path().join("ck0").to_str().unwrap(), "--json"],
    );
    assert!(v["reused_chunks"].as_u64().unwrap() > 0);
    let out = json(&root, &["gc", "--keep-last", "1", "--json"]);
    assert_eq!(out["mode"], "immediate");
    let dst = t.path().join("again");
    cairn(&root)
        .args(["checkout", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&t.path().join("ck0")));
    fsck_read_data_clean(&root);
    let _ = ids;
}

#[test]
fn fsck_structural_damage_kinds() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    cairn(&root).arg("init").assert().success();
    run(&root, t.path(), 2, &[0.9, 0.5]);
    let kinds = |root: &Path| -> Vec<String> {
        let out = cairn(root).args(["fsck", "--json"]).output().unwrap();
        let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            out.status.code(),
            Some(if rep["problems"].as_array().unwrap().is_empty() {
                0
            } else {
                1
            })
        );
        rep["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["kind"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(kinds(&root).is_empty());
    // A chunk entry dropped from the index: missing-chunk, naming the file that needs it.
    let store = cairn::Store::open(&root).unwrap();
    let head = cairn::ops::rev::resolve(&store, "HEAD").unwrap();
    let tree = store.tree(store.commit(head).unwrap().tree).unwrap();
    let victim = tree.files["optimizer.pt"].chunks().next().unwrap().id;
    let loc = store.chunk_loc(victim).unwrap().unwrap();
    store
        .with_writer(|i| -> Result<_, cairn::StoreError> {
            let mut b = i.batch()?;
            b.delete_chunk(&victim)?;
            i.write(b)?;
            Ok(())
        })
        .unwrap();
    assert_eq!(kinds(&root), vec!["missing-chunk"]);
    // An index entry pointing past its pack's entries: bad-index-entry.
    store
        .with_writer(|i| -> Result<_, cairn::StoreError> {
            let mut b = i.batch()?;
            b.put_chunk(
                &victim,
                &cairn::storage::index::ChunkLoc {
                    offset: loc.offset + (1 << 40),
                    ..loc
                },
            )?;
            i.write(b)?;
            Ok(())
        })
        .unwrap();
    assert_eq!(kinds(&root), vec!["bad-index-entry"]);
    store
        .with_writer(|i| -> Result<_, cairn::StoreError> {
            let mut b = i.batch()?;
            b.put_chunk(&victim, &loc)?;
            i.write(b)?;
            Ok(())
        })
        .unwrap();
    assert!(kinds(&root).is_empty());
    // A truncated pack: bad-pack (and never a panic).
    let pack = root.join("packs").join(format!("{}.pack", loc.pack));
    let bytes = std::fs::read(&pack).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 100, 10] {
        std::fs::write(&pack, &bytes[..cut]).unwrap();
        let k = kinds(&root);
        assert!(k.contains(&"bad-pack".to_string()), "cut at {cut}: {k:?}");
        let dst = t.path().join(format!("c{cut}"));
        let out = cairn(&root)
            .args(["checkout", "HEAD"])
            .arg(&dst)
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
        if out.status.success() {
            // Only the footer was cut: every chunk still reads and verifies.
            assert_eq!(
                snapshot(&dst),
                snapshot(&t.path().join("ck1")),
                "cut at {cut}"
            );
        } else {
            assert_eq!(out.status.code(), Some(1));
        }
    }
    std::fs::write(&pack, &bytes).unwrap();
    assert!(kinds(&root).is_empty());
    // A commit object gone (its pack's index entry removed): missing-object.
    store
        .with_writer(|i| -> Result<_, cairn::StoreError> {
            let mut b = i.batch()?;
            b.delete_object(&head.into())?;
            i.write(b)?;
            Ok(())
        })
        .unwrap();
    assert!(kinds(&root).contains(&"missing-object".to_string()));
}

#[test]
fn packs_wait_while_a_reader_is_active() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    cairn(&root).arg("init").assert().success();
    run(&root, t.path(), 3, &[0.9, 0.5, 0.7]);
    let reader = cairn::storage::lock::shared(&root.join("locks/readers.lock")).unwrap();
    let out = json(&root, &["gc", "--keep-last", "1", "--json"]);
    assert!(out["packs_doomed"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(out["packs_deleted"], 0);
    let doomed = std::fs::read_to_string(root.join("doomed-packs")).unwrap();
    for line in doomed.lines() {
        assert!(root.join("packs").join(format!("{line}.pack")).exists());
    }
    fsck_read_data_clean(&root);
    drop(reader);
    let out = json(&root, &["gc", "--json"]);
    assert!(out["packs_deleted"].as_u64().unwrap() > 0, "{out}");
    assert!(!root.join("doomed-packs").exists());
    fsck_read_data_clean(&root);
}

/// Regression: a commit whose view of the index predates a gc that ran meanwhile reused
/// chunks the gc had deleted, and failed with "chunk … is missing from the store". The view
/// is now refreshed once the commit holds the writers' lock, so the commit writes them again.
#[test]
fn a_commit_whose_view_predates_a_gc_still_commits() {
    use cairn::{CommitBuilder, CommitOptions, Store, TensorInput};
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let b = Store::init(&root).unwrap();
    let tensor = |seed: u64| TensorInput {
        name: "w".into(),
        dtype: DType::F32,
        shape: vec![65_536],
        data: weights(seed, 65_536),
    };
    let commit = |s: &Store, seed: u64| {
        let mut c = CommitBuilder::new(s, CommitOptions::default());
        c.add_tensors("model.safetensors", vec![tensor(seed)], None)?;
        c.commit()
    };
    commit(&b, 1).unwrap();
    commit(&b, 2).unwrap();
    // `a` opens now: its view lists the chunks of seed 1's tensor.
    let a = Store::open(&root).unwrap();
    let opts = cairn::ops::gc::GcOptions {
        retention: cairn::ops::gc::Retention::parse("keep-last 1").unwrap(),
        ..Default::default()
    };
    let out = cairn::ops::gc::gc(&b, &opts, false).unwrap();
    assert_eq!(out.mode, "immediate");
    assert!(out.chunks_removed > 0, "{out:?}");
    // The same tensor again, through the handle whose view is older than the gc.
    let again = commit(&a, 1).unwrap();
    assert_eq!(a.head().unwrap(), Some(again.commit));
    drop((a, b));
    fsck_read_data_clean(&root);
    let dst = t.path().join("out");
    cairn(&root)
        .args(["checkout", "HEAD", dst.to_str().unwrap()])
        .assert()
        .success();
}

/// Regression: `repair --rebuild-index --from PATH --json` printed two JSON documents one after
/// the other, which no JSON parser reads as one. It prints one: `{"rebuild": ..., "heal":
/// {"healed": N}}`; each alone keeps its own document.
#[test]
fn repair_with_both_modes_prints_one_json_document() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    checkpoint(&ck, 3);
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let v = json(
        &store,
        &[
            "repair",
            "--rebuild-index",
            "--from",
            ck.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(v["rebuild"]["commits"], 1, "{v}");
    assert_eq!(v["heal"]["healed"], 0, "{v}");
    let v = json(&store, &["repair", "--rebuild-index", "--json"]);
    assert_eq!(v["commits"], 1, "{v}");
    let v = json(
        &store,
        &["repair", "--from", ck.to_str().unwrap(), "--json"],
    );
    assert_eq!(v["healed"], 0, "{v}");
}

/// gc no longer excludes commits while it copies: held inside its copy phase (planned, nothing
/// published), it lets a commit run to the end; that commit reuses chunks the plan found dead
/// (the pruned first checkpoint, committed again), and gc keeps them, with their pack, when it
/// publishes. With the writers' lock held from planning to the end, as before, the commit
/// waited for gc, and this test fails at its deadline.
#[test]
fn a_commit_completes_while_gc_copies_and_keeps_the_dead_chunks_it_reuses() {
    use cairn::ops::gc::{CopyHook, GcOptions, Retention};
    use std::sync::mpsc;
    use std::time::Duration;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    cairn(&root).arg("init").assert().success();
    let ids = run(&root, t.path(), 3, &[0.9, 0.5, 0.7]);
    let store = cairn::Store::open(&root).unwrap();
    let (in_copy, in_copy_rx) = mpsc::channel::<()>();
    let (go, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let opts = GcOptions {
        retention: Retention {
            keep_last: Some(1),
            ..Default::default()
        },
        copy_hook: Some(CopyHook(std::sync::Arc::new(move || {
            in_copy.send(()).unwrap();
            let _ = go_rx.lock().unwrap().recv();
        }))),
        ..Default::default()
    };
    let (g, out) = std::thread::scope(|s| {
        let gc = s.spawn(|| cairn::ops::gc::gc(&store, &opts, false));
        in_copy_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("gc reaches its copy phase");
        let (done, done_rx) = mpsc::channel();
        let (store, ck0) = (&store, t.path().join("ck0"));
        s.spawn(move || {
            let mut b = cairn::CommitBuilder::new(store, cairn::CommitOptions::default());
            b.add_dir(&ck0).unwrap();
            done.send(b.commit()).unwrap();
        });
        let committed = done_rx.recv_timeout(Duration::from_secs(30));
        go.send(()).unwrap();
        let out = committed
            .expect("the commit completed while gc was held in its copy phase")
            .unwrap();
        (gc.join().unwrap().unwrap(), out)
    });
    assert_eq!(g.mode, "immediate");
    let pruned: Vec<&str> = g
        .plan
        .commits
        .iter()
        .filter(|c| c.decision == cairn::ops::gc::Decision::Prune)
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(pruned.len(), 2, "{pruned:?}");
    assert!(pruned.contains(&ids[0].as_str()));
    assert!(
        g.chunks_kept_alive >= 2,
        "the reused optimizer file's chunks: {}",
        g.chunks_kept_alive
    );
    assert!(out.reused_chunks > 0);
    assert_eq!(store.head().unwrap(), Some(out.commit));
    drop(store);
    fsck_read_data_clean(&root);
    let dst = t.path().join("out");
    cairn(&root)
        .args(["checkout", "--paranoid", &out.commit.to_string()])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&t.path().join("ck0")));
    // The next gc, with nothing landing meanwhile, frees what is dead now.
    let again = json(&root, &["gc", "--keep-last", "1", "--json"]);
    assert_eq!(again["mode"], "immediate", "{again}");
    assert_eq!(again["chunks_kept_alive"], 0, "{again}");
    fsck_read_data_clean(&root);
}

/// The retention policy's background run steps aside while a commit runs: with a commit in
/// flight (`writers.lock` held shared) it copies nothing (no new pack is sealed), and once the
/// commit is done it re-encodes, repacks and publishes. A manual gc would have copied meanwhile
/// and only then waited to publish.
#[test]
fn the_policy_run_copies_only_between_commits() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (_, versions) = delta_series(&root);
    cairn(&root)
        .args(["retention", "set", "keep-last 1"])
        .assert()
        .success();
    let packs = |root: &Path| -> std::collections::BTreeSet<String> {
        std::fs::read_dir(root.join("packs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".pack"))
            .collect()
    };
    let before = packs(&root);
    let store = cairn::Store::open(&root).unwrap();
    let writing = cairn::storage::lock::shared(&store.writers_lock_path()).unwrap();
    let out = std::thread::scope(|s| {
        let run = s.spawn(|| cairn::ops::gc::run_policy(&store, "main", "test"));
        std::thread::sleep(std::time::Duration::from_millis(1500));
        assert!(!run.is_finished());
        assert_eq!(
            packs(&root),
            before,
            "the policy run copied while a commit ran"
        );
        drop(writing);
        run.join().unwrap().unwrap().expect("a policy is stored")
    });
    assert_eq!(out.mode, "immediate");
    assert!(out.chunks_reencoded >= 1, "{out:?}");
    assert_ne!(packs(&root), before);
    drop(store);
    assert_eq!(tensor_bytes(&root, "HEAD"), versions[2]);
    fsck_read_data_clean(&root);
}

/// A background run's step aside is bounded: with a writer that never lets go of
/// `writers.lock`, each wait ends after `wait_for_writers`, the copy goes on, and the run ends
/// in the deferred mode (it could not publish) instead of waiting for ever. The store loses
/// nothing and checks clean; a later gc, with no writer, frees the data.
#[test]
fn a_stuck_writer_does_not_hold_the_background_run_for_ever() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (_, versions) = delta_series(&root);
    let store = cairn::Store::open(&root).unwrap();
    let stuck = cairn::storage::lock::shared(&store.writers_lock_path()).unwrap();
    let opts = cairn::ops::gc::GcOptions {
        retention: cairn::ops::gc::Retention::parse("keep-last 1").unwrap(),
        wait_for_writers: Some(std::time::Duration::from_millis(100)),
        background: true,
        ..Default::default()
    };
    // A detached thread, so a run that never ends fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cairn::ops::gc::gc(&store, &opts, false).map(|o| o.mode));
    });
    let mode = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the background run ended while the writer held its lock")
        .unwrap();
    assert_eq!(mode, "deferred");
    drop(stuck);
    assert_eq!(tensor_bytes(&root, "HEAD"), versions[2]);
    fsck_read_data_clean(&root);
    let again = json(&root, &["gc", "--keep-last", "1", "--json"]);
    assert_eq!(again["mode"], "immediate", "{again}");
    fsck_read_data_clean(&root);
}
