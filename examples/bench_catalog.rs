//! Catalog benchmark: a store with N commits (default 100 000), then the time of catalog
//! queries through the real `cairn` binary, median of 7 runs each.
//!
//! The commits are real commit objects (varied run ids, steps, metrics, params, git and dataset
//! fingerprints) sharing one tree, written to one pack and published in one index batch: what N
//! `cairn commit` calls would leave in the index, without waiting for N commits.
//!
//! Usage: `bench_catalog [N] [CAIRN_BINARY]`

use cairn::index::{CommitRow, Index, ObjectLoc, PackInfo};
use cairn::object::{Commit, KIND_COMMIT, Metadata};
use cairn::pack::PackWriter;
use cairn::{CommitBuilder, CommitOptions, Store};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let bin = args.get(2).cloned().unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("exe path");
        exe.parent()
            .and_then(|p| p.parent())
            .expect("target dir")
            .join("cairn")
            .display()
            .to_string()
    });
    let dir = std::env::temp_dir().join(format!("cairn-bench-catalog-{}", std::process::id()));
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
            git: Some(cairn::object::GitInfo {
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
        meta.datasets.push(cairn::object::DatasetRef {
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
    cairn::fsutil::sync_dir(&store.packs_dir())?;
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

    let queries: Vec<(&str, Vec<&str>)> = vec![
        (
            "where val_loss<0.01 and run=r7, sort, limit 10",
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
            "where dataset and git prefix, limit 10",
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
            "sort by -acc over all, limit 10",
            vec!["log", "--all", "--sort=-acc", "--limit", "10", "--json"],
        ),
        (
            "history of HEAD, where step >= 990000",
            vec!["log", "--where", "step >= 990000", "--json"],
        ),
        ("runs", vec!["runs", "--json"]),
    ];
    println!(
        "| query over {} commits | median of 7 (ms) | min (ms) |",
        n + 1
    );
    println!("|---|---|---|");
    for (name, q) in queries {
        let mut times = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            let out = std::process::Command::new(&bin)
                .arg("--store")
                .arg(&root)
                .args(&q)
                .output()?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if !out.status.success() {
                return Err(format!("{name}: {}", String::from_utf8_lossy(&out.stderr)).into());
            }
        }
        times.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        println!("| {name} | {:.0} | {:.0} |", times[3], times[0]);
    }
    if std::env::var_os("KEEP").is_none() {
        std::fs::remove_dir_all(&dir)?;
    } else {
        eprintln!("kept {}", root.display());
    }
    Ok(())
}
