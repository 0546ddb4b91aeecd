//! Time to read one tensor through the library, warm page cache, at each delta depth.
//!
//! Builds a store holding a series of checkpoints of one float32 tensor (N(0, 0.02) weights;
//! each checkpoint moves every weight by an Adam-sized step of about 1e-4), so that commit d is
//! delta-coded at depth d (d = 0..3; the default K is 4), then times reading the tensor of
//! each commit with `read::read_tensor` (chunks decoded in parallel, each verified against its
//! id; a fresh buffer each time: `fresh-depthD`) and with `read::read_tensor_into` (a reused buffer:
//! `reused-depthD`). The chunks' longest delta chain at each depth is printed once.
//!
//! Run: `cargo bench --profile dev --bench read [-- FILTER]` (`--profile dev`: the shared
//! build, see docs/benchmarks.md; a filter such as `depth0` times one depth, for profiling).
//! Environment: `CAIRN_BENCH_MIB` (the tensor's size, default 64; 4 under `cargo test`, which
//! reads each once), `CAIRN_DELTA_BASE=parent` (commit with `DeltaBase::Parent`, chains as deep
//! as the depth, instead of the default root).
//!
//! Or on an existing store, outside criterion: `cargo bench --profile dev --bench read --
//! --store DIR REV [FILE:]TENSOR [RUNS]` (or the built bench binary with those arguments) reads
//! that tensor of that commit the same two ways and prints one JSON line (`fresh_ms`,
//! `reused_ms`: medians of RUNS, default 7; `depth`: the largest delta depth among its chunks;
//! `chain`: the most chunks one of them decodes). `scripts/bench/bench_sidebyside.py` runs it
//! on the last commit of each series and reads that line: a figure handed to another program,
//! which criterion's report cannot be.

use cairn::{CommitBuilder, CommitOptions, DType, DeltaBase, Store, TensorInput, ops::read};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group};
use std::cell::OnceCell;
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
        return Err("usage: read --store DIR REV [FILE:]TENSOR [RUNS]".into());
    };
    let runs: usize = rest.first().and_then(|a| a.parse().ok()).unwrap_or(7);
    let store = Store::open(std::path::Path::new(dir))?;
    let id = cairn::ops::rev::resolve(&store, rev)?;
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

/// The series: one commit per delta depth, and the tensor of each.
struct Series {
    // Fields drop in order: the store closes before its directory goes.
    store: Store,
    /// The tensor of each commit, depth 0 first.
    tensors: Vec<read::TensorRef>,
    _dir: tempfile::TempDir,
}

fn series(mib: usize) -> Result<Series, Box<dyn std::error::Error>> {
    let n = mib << 18;
    let dir = tempfile::Builder::new()
        .prefix("cairn-bench-read-")
        .tempdir()?;
    let store = Store::init(&dir.path().join("store"))?;
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
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{mib} MiB float32 tensor, delta base {delta_base:?}, {cpus} threads");
    let mut tensors = Vec::new();
    for (depth, id) in commits.iter().enumerate() {
        let tree = store.tree(store.commit(*id)?.tree)?;
        let t = read::find_tensor(&tree, "embed.weight")?;
        let (_, chain) = depth_and_chain(&store, &t)?;
        println!("commit {depth}: delta depth {depth}, chains of {chain}");
        let _ = read::read_tensor(&store, &t)?; // warm the page cache
        tensors.push(t);
    }
    Ok(Series {
        store,
        tensors,
        _dir: dir,
    })
}

fn reads(c: &mut Criterion) {
    // `cargo bench` passes `--bench`; without it (`cargo test`) criterion reads each once.
    let test_mode = !std::env::args().any(|a| a == "--bench");
    let mib: usize = match std::env::var("CAIRN_BENCH_MIB") {
        Ok(v) => v.parse().expect("CAIRN_BENCH_MIB is a size in MiB"),
        Err(_) if test_mode => 4,
        Err(_) => 64,
    };
    let len = mib << 20;
    let fixture: OnceCell<Series> = OnceCell::new();
    let mut g = c.benchmark_group(format!("read-{mib}MiB-f32"));
    // Each read takes tens of ms at 64 MiB, over 100 ms at depth 3 into a fresh buffer on two
    // cores: ten samples of equal iteration counts fit criterion's default 5 s.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.throughput(Throughput::Bytes(len as u64));
    // One buffer for every reused-buffer read: the first read into it (criterion's warm-up)
    // maps its pages.
    let mut buf = vec![0u8; len];
    for depth in 0..4 {
        g.bench_function(format!("fresh-depth{depth}"), |b| {
            let s = fixture.get_or_init(|| series(mib).expect("build the series"));
            let t = &s.tensors[depth];
            b.iter(|| {
                let out = read::read_tensor(&s.store, t).expect("read");
                assert_eq!(out.len(), len);
                out
            })
        });
        g.bench_function(format!("reused-depth{depth}"), |b| {
            let s = fixture.get_or_init(|| series(mib).expect("build the series"));
            let t = &s.tensors[depth];
            b.iter(|| read::read_tensor_into(&s.store, t, &mut buf).expect("read"))
        });
    }
    g.finish();
}

criterion_group!(benches, reads);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` appends `--bench` to the arguments; the store mode has no use for it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().is_some_and(|a| a == "--store") {
        return existing(&args[1..]);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    Ok(())
}
