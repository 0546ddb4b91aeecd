//! Time to read one 64 MiB tensor through the library, warm page cache, at each delta depth.
//!
//! Builds a store holding a series of checkpoints of one 64 MiB float32 tensor (N(0, 0.02)
//! weights; each checkpoint moves every weight by an Adam-sized step of about 1e-4), so that
//! commit i is delta-coded at depth i mod K, then reads the tensor of each commit with
//! `read::read_tensor` (chunks decoded in parallel, each verified against its id; a fresh
//! buffer each time) and with `read::read_tensor_into` (a reused buffer), and reports the median
//! of `RUNS` warm reads of each.
//!
//! Run: `cargo run --example bench_read [-- MIB [RUNS [DEPTH]]]`; `CAIRN_DELTA_BASE=parent`
//! commits with `DeltaBase::Parent` (chains as deep as the depth) instead of the default root.
//!
//! Or on an existing store: `bench_read --store DIR REV [FILE:]TENSOR [RUNS]` reads that tensor
//! of that commit the same two ways and prints one JSON line (`fresh_ms`, `reused_ms`: medians;
//! `depth`: the largest delta depth among its chunks; `chain`: the most chunks one of them
//! decodes), for `scripts/bench_sidebyside.py`.

use cairn::{CommitBuilder, CommitOptions, DType, DeltaBase, Store, TensorInput, read};
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

/// Median and minimum of `runs` timings of `f`, in ms.
fn time_ms(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[0])
}

/// The largest delta depth among a tensor's chunks, and the longest chain one of them decodes.
fn depth_and_chain(store: &Store, t: &read::TensorRef) -> Result<(u32, u32), cairn::Error> {
    let (mut depth, mut chain) = (0, 0);
    for c in &t.segment.chunks {
        let mut links = 0;
        let mut next = Some(c.id);
        while let Some(loc) = next.map(|id| store.chunk_loc(id)).transpose()?.flatten() {
            if links == 0 {
                depth = depth.max(loc.depth);
            }
            links += 1;
            next = loc.base.filter(|_| loc.encoding.needs_base());
        }
        chain = chain.max(links);
    }
    Ok((depth, chain))
}

/// `--store DIR REV TENSOR [RUNS]`: one tensor of an existing store.
fn existing(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [dir, rev, spec, rest @ ..] = args else {
        return Err("usage: bench_read --store DIR REV [FILE:]TENSOR [RUNS]".into());
    };
    let runs: usize = rest.first().and_then(|a| a.parse().ok()).unwrap_or(7);
    let store = Store::open(std::path::Path::new(dir))?;
    let id = cairn::rev::resolve(&store, rev)?;
    let tree = store.tree(store.commit(id)?.tree)?;
    let t = read::find_tensor(&tree, spec)?;
    let (depth, chain) = depth_and_chain(&store, &t)?;
    let len = read::read_tensor(&store, &t)?.len(); // warm the page cache
    let (fresh, fresh_min) = time_ms(runs, || {
        read::read_tensor(&store, &t).expect("read");
    });
    let mut buf = vec![0u8; len];
    let (reused, reused_min) = time_ms(runs, || {
        read::read_tensor_into(&store, &t, &mut buf).expect("read");
    });
    println!(
        "{{\"tensor\": {spec:?}, \"bytes\": {len}, \"depth\": {depth}, \"chain\": {chain}, \
         \"runs\": {runs}, \
         \"fresh_ms\": {fresh:.2}, \"fresh_min_ms\": {fresh_min:.2}, \"reused_ms\": {reused:.2}, \
         \"reused_min_ms\": {reused_min:.2}}}"
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "--store") {
        return existing(&args[2..]);
    }
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
    let delta_base = match std::env::var("CAIRN_DELTA_BASE") {
        Ok(v) => v.parse::<DeltaBase>()?,
        Err(_) => DeltaBase::default(),
    };
    let mut commits = Vec::new();
    for step in 0..4u64 {
        if step > 0 {
            for x in w.iter_mut() {
                *x += normalish(&mut next, 1e-4);
            }
        }
        let opts = CommitOptions {
            delta_base,
            ..Default::default()
        };
        let mut c = CommitBuilder::new(&store, opts);
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
        "{mib} MiB float32 tensor, delta base {delta_base:?}, {runs} warm reads per commit \
         (median, min), {}",
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
        let (_, chain) = depth_and_chain(&store, &t)?;
        let _ = read::read_tensor(&store, &t)?; // warm the page cache
        let (fresh, fresh_min) = time_ms(runs, || {
            let b = read::read_tensor(&store, &t).expect("read");
            assert_eq!(b.len(), n * 4);
        });
        let mut buf = vec![0u8; n * 4];
        let (reused, reused_min) = time_ms(runs, || {
            read::read_tensor_into(&store, &t, &mut buf).expect("read");
        });
        println!(
            "commit {depth} (delta depth {depth}, chains of {chain}): read_tensor median {fresh:.1} ms (min \
             {fresh_min:.1}); read_tensor_into a reused buffer median {reused:.1} ms (min \
             {reused_min:.1})"
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
