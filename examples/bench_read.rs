//! Time to read one 64 MiB tensor through the library, warm page cache, at each delta depth.
//!
//! Builds a store holding a series of checkpoints of one 64 MiB float32 tensor (N(0, 0.02)
//! weights; each checkpoint moves every weight by an Adam-sized step of about 1e-4), so that
//! commit i is delta-coded at depth i mod K, then reads the tensor of each commit with
//! `read::read_tensor` (chunks decoded in parallel, each verified against its id; a fresh
//! buffer each time) and with `read::read_tensor_into` (a reused buffer), and reports the median
//! of `RUNS` warm reads of each.
//!
//! Run: `cargo run --example bench_read [-- MIB [RUNS [DEPTH]]]`

use cairn::{CommitBuilder, CommitOptions, DType, Store, TensorInput, read};
use std::time::Instant;

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Roughly normal values: the sum of four uniforms, scaled.
fn normalish(next: &mut impl FnMut() -> u64, sd: f32) -> f32 {
    let mut s = 0.0f32;
    for _ in 0..4 {
        s += (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    }
    s * sd * 1.73
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(7);
    // Only this delta depth, for profiling one of them.
    let only: Option<usize> = args.get(3).and_then(|a| a.parse().ok());
    let n = mib << 18;
    let dir = std::env::temp_dir().join(format!("cairn-bench-read-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::init(&dir)?;
    let mut next = xorshift(7);
    let mut w: Vec<f32> = (0..n).map(|_| normalish(&mut next, 0.02)).collect();
    let mut commits = Vec::new();
    for step in 0..4u64 {
        if step > 0 {
            for x in w.iter_mut() {
                *x += normalish(&mut next, 1e-4);
            }
        }
        let mut c = CommitBuilder::new(&store, CommitOptions::default());
        c.add_tensors(
            "model.safetensors",
            vec![TensorInput {
                name: "embed.weight".into(),
                dtype: DType::F32,
                shape: vec![n as u64],
                data: w.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }],
            None,
        )?;
        commits.push(c.commit()?.commit);
    }
    println!(
        "{mib} MiB float32 tensor, {runs} warm reads per commit (median, min), {}",
        {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            format!("{cpus} threads")
        }
    );
    for (depth, id) in commits.iter().enumerate() {
        if only.is_some_and(|d| d != depth) {
            continue;
        }
        let tree = store.tree(store.commit(*id)?.tree)?;
        let t = read::find_tensor(&tree, "embed.weight")?;
        let _ = read::read_tensor(&store, &t)?; // warm the page cache
        let median = |mut ms: Vec<f64>| {
            ms.sort_by(f64::total_cmp);
            (ms[ms.len() / 2], ms[0])
        };
        let (fresh, fresh_min) = median(
            (0..runs)
                .map(|_| {
                    let s = Instant::now();
                    let b = read::read_tensor(&store, &t).expect("read");
                    assert_eq!(b.len(), n * 4);
                    s.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        );
        let mut buf = vec![0u8; n * 4];
        let (reused, reused_min) = median(
            (0..runs)
                .map(|_| {
                    let s = Instant::now();
                    read::read_tensor_into(&store, &t, &mut buf).expect("read");
                    s.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        );
        println!(
            "commit {depth} (delta depth {depth}): read_tensor median {fresh:.1} ms (min \
             {fresh_min:.1}); read_tensor_into a reused buffer median {reused:.1} ms (min \
             {reused_min:.1})"
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
