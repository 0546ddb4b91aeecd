//! Catalog queries (docs/catalog.md) over a store of N commits (default 100 000), each timed
//! through the real `cairn` binary: process start, the read-only open of the index, the scan of
//! the commit rows, and the JSON output.
//!
//! The commits are real commit objects (50 run ids, per-commit step, epoch, two metrics, a
//! param, a git sha and a dataset fingerprint) sharing one tree, written to one pack and
//! published in one index batch: what N `cairn commit` calls would leave in the index, without
//! waiting for N commits. The store is built once, on the first query that the filter selects.
//! Throughput is in commits: every query reads every commit row.
//!
//! Run: `cargo bench --profile dev --bench catalog [-- FILTER]` (`--profile dev`: the shared
//! build, see docs/benchmarks.md). Environment: `CAIRN_BENCH_COMMITS` (N; 1 000 under
//! `cargo test`, which runs each query once), `CAIRN_BIN` (the binary to time; default the
//! `cairn` cargo built beside this bench), `KEEP` (keep the store and print its path).

use cairn::model::object::{Commit, KIND_COMMIT, Metadata};
use cairn::storage::index::{CommitRow, Index, ObjectLoc, PackInfo};
use cairn::storage::pack::PackWriter;
use cairn::{CommitBuilder, CommitOptions, Store};
use criterion::{Criterion, SamplingMode, Throughput};
use std::cell::OnceCell;
use std::path::PathBuf;
use std::time::Instant;

/// Writes a store of `n` + 1 commits (the first one carries the tree) under `dir`.
fn build(dir: &std::path::Path, n: u64) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let root = dir.join("store");
    let store = Store::init(&root)?;
    let mut b = CommitBuilder::new(&store, CommitOptions::default());
    b.add_bytes("config.json", b"{}".to_vec())?;
    let first = b.commit()?;
    let tree = first.tree;
    let started = Instant::now();
    let mut w = PackWriter::create(&store.packs_dir())?;
    let mut entries = Vec::with_capacity(n as usize);
    let mut parent = first.commit;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut meta = Metadata {
            run_id: Some(format!("r{}", i % 50)),
            step: Some(i * 10),
            epoch: Some(i as f64 / 1000.0),
            git: Some(cairn::model::object::GitInfo {
                commit: format!("{:040x}", x as u128 * 7),
                ..Default::default()
            }),
            ..Default::default()
        };
        meta.metrics
            .insert("val_loss".into(), (x % 10_000) as f64 / 10_000.0);
        meta.metrics.insert("acc".into(), (x % 997) as f64 / 997.0);
        meta.params.insert(
            "lr".into(),
            if i % 3 == 0 {
                "1e-3".into()
            } else {
                "3e-4".into()
            },
        );
        meta.datasets.push(cairn::model::object::DatasetRef {
            name: "train".into(),
            fingerprint: format!("{:016x}", i % 20),
            files: None,
            bytes: None,
        });
        let c = Commit {
            parents: vec![parent],
            tree,
            time_ns: 1_700_000_000_000_000_000 + i as i64 * 1_000_000_000,
            author: "bench@cairn".into(),
            message: format!("step {}", i * 10),
            meta,
            logical_size: 2,
            file_count: 1,
        };
        let (id, bytes) = c.encode();
        let e = w.append_object(id.into(), KIND_COMMIT, &bytes)?;
        entries.push((id, e, CommitRow::of(&c)));
        parent = id;
    }
    let sealed = w.seal()?;
    cairn::storage::fsutil::sync_dir(&store.packs_dir())?;
    store.with_writer(|index: &Index| -> Result<(), cairn::StoreError> {
        let mut b = index.batch()?;
        for (id, e, row) in &entries {
            b.put_object(
                &(*id).into(),
                &ObjectLoc {
                    pack: sealed.id,
                    offset: e.offset,
                    stored_len: e.header.stored_len,
                    raw_len: e.header.raw_len,
                    kind: KIND_COMMIT,
                },
            )?;
            b.put_commit_row(id, row)?;
        }
        b.put_pack(
            &sealed.id,
            &PackInfo {
                size: sealed.size,
                chunks: 0,
                objects: n,
            },
        )?;
        b.put_ref("refs/heads/main", &parent)?;
        index.write(b)?;
        Ok(())
    })?;
    drop(store);
    eprintln!(
        "built a store with {} commits in {:.1}s",
        n + 1,
        started.elapsed().as_secs_f64()
    );
    Ok(root)
}

fn catalog(c: &mut Criterion) {
    // `cargo bench` passes `--bench`; without it (`cargo test`) criterion runs each query once.
    let test_mode = !std::env::args().any(|a| a == "--bench");
    let n: u64 = match std::env::var("CAIRN_BENCH_COMMITS") {
        Ok(v) => v
            .parse()
            .expect("CAIRN_BENCH_COMMITS is a number of commits"),
        Err(_) if test_mode => 1_000,
        Err(_) => 100_000,
    };
    let bin = std::env::var_os("CAIRN_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cairn")), PathBuf::from);
    let dir = tempfile::Builder::new()
        .prefix("cairn-bench-catalog-")
        .tempdir()
        .expect("a temp dir");
    let store: OnceCell<PathBuf> = OnceCell::new();

    let queries: Vec<(&str, Vec<&str>)> = vec![
        (
            "where-val_loss-run-sort-limit10",
            vec![
                "log",
                "--all",
                "--where",
                "val_loss < 0.01",
                "--where",
                "run = r7",
                "--sort",
                "val_loss",
                "--limit",
                "10",
                "--json",
            ],
        ),
        (
            "where-dataset-git-prefix-limit10",
            vec![
                "log",
                "--all",
                "--where",
                "dataset = 0000000000000003",
                "--where",
                "git = 0",
                "--limit",
                "10",
                "--json",
            ],
        ),
        (
            "sort-desc-acc-limit10",
            vec!["log", "--all", "--sort=-acc", "--limit", "10", "--json"],
        ),
        (
            "history-of-head-where-step",
            vec!["log", "--where", "step >= 990000", "--json"],
        ),
        ("runs", vec!["runs", "--json"]),
    ];
    let mut g = c.benchmark_group(format!("catalog-{}-commits", n + 1));
    // Each query is a process that takes a good fraction of a second at 100 000 commits.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.throughput(Throughput::Elements(n + 1));
    for (name, q) in &queries {
        g.bench_function(*name, |b| {
            let root = store.get_or_init(|| build(dir.path(), n).expect("build the store"));
            b.iter(|| {
                let out = std::process::Command::new(&bin)
                    .arg("--store")
                    .arg(root)
                    .args(q)
                    .output()
                    .expect("run cairn");
                assert!(
                    out.status.success(),
                    "{name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            })
        });
    }
    g.finish();
    if std::env::var_os("KEEP").is_some() {
        let kept = dir.keep();
        eprintln!("kept {}", kept.join("store").display());
    }
}

criterion::criterion_group!(benches, catalog);
criterion::criterion_main!(benches);
