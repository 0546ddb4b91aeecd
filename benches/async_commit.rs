//! The stall of an async commit against a plain memcpy of the same bytes.
//!
//! A training loop's checkpoint: f32 tensors of 4096 x 4096 (64 MiB each), `MIB` MiB in all.
//! Each run, in turn: copy the tensors into a fresh `Vec` (allocation and page faults
//! included), copy them into a reused `Vec` (memory already mapped), and hand them to
//! [`AsyncCommitter`] (time until `submit` returns: waiting for a slot, checks, header, copy,
//! queueing). The background commit is then waited for and timed apart. A few weights change
//! between runs, as after a training step. Medians over the runs after the first are the
//! steady state; the first async commit (fresh buffers) is reported on its own. Then two
//! committers with two commits in flight time the copy made while the previous commit is
//! still running: with that commit paused during the copy (`pause_for_copies`, the default),
//! and with both running at once.
//! Figures and their reading: docs/benchmarks.md.
//!
//! Not a criterion benchmark (`harness = false`, it prints its own table): what it reports is
//! the ratio of a stall to a memcpy timed a few hundred ms apart in the same run, the first
//! commit through a slot apart from the later ones, and stalls that depend on what the previous
//! commit is doing when the next one starts. Criterion times one routine repeated back to
//! back, which here would only measure commits queueing behind each other.
//!
//! Run: `cargo bench --profile dev --bench async_commit -- [MIB (512)] [RUNS (7)] [DIR (temp)]`
//! (`--profile dev`: the shared build, see docs/benchmarks.md). Without the `--bench` flag that
//! `cargo bench` passes, as under `cargo test --all-targets`, it makes one quick run (64 MiB,
//! 3 runs) to check that it still works, like criterion's test mode. Arguments meant for the
//! criterion targets when `cargo bench -- ARGS` runs every target are honoured the way
//! criterion would: a filter that does not match `async_commit` skips it, options skip it.

use cairn::ops::commit::async_commit::{AsyncCommitter, AsyncOptions, TensorSlice};
use cairn::{CommitOptions, DType, Store};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIDE: u64 = 4096;

fn weights(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let u = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            (u - 0.5) * 0.04
        })
        .collect()
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn copy_into(dst: &mut Vec<u8>, tensors: &[Vec<f32>]) {
    dst.clear();
    for t in tensors {
        dst.extend_from_slice(bytemuck::cast_slice(t));
    }
}

fn slices<'a>(
    tensors: &'a [Vec<f32>],
    names: &'a [String],
    shape: &'a [u64],
) -> Vec<TensorSlice<'a>> {
    tensors
        .iter()
        .zip(names)
        .map(|(t, n)| TensorSlice {
            name: n,
            dtype: DType::F32,
            shape,
            data: bytemuck::cast_slice(t),
        })
        .collect()
}

/// What the arguments ask for: a run with these sizes, or nothing.
enum Plan {
    Run {
        mib: u64,
        runs: usize,
        dir: Option<std::path::PathBuf>,
    },
    Skip(String),
}

fn plan(args: &[String]) -> Result<Plan, Box<dyn std::error::Error>> {
    let flag = |f: &str| args.iter().any(|a| a == f);
    if flag("--list") {
        println!("async_commit: benchmark");
        return Ok(Plan::Skip(String::new()));
    }
    // `cargo bench` passes `--bench`; `cargo test` does not (criterion's test mode, the same).
    let test_mode = !flag("--bench") || flag("--test");
    let others: Vec<&String> = args
        .iter()
        .filter(|a| a.starts_with('-') && !matches!(a.as_str(), "--bench" | "--test"))
        .collect();
    if !others.is_empty() {
        return Ok(Plan::Skip(format!(
            "async_commit: skipped: options {others:?} are for criterion targets; this one takes \
             [MIB] [RUNS] [DIR]"
        )));
    }
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let mut pos = pos.into_iter().peekable();
    // A first argument that is not a number is a criterion-style filter (a substring of the
    // benchmark name), as `cargo bench -- FILTER` passes to every target.
    if let Some(f) = pos.next_if(|a| a.parse::<u64>().is_err())
        && !"async_commit".contains(f.as_str())
    {
        return Ok(Plan::Skip(format!("async_commit: skipped: filter {f:?}")));
    }
    let (mib, runs) = if test_mode { (64, 3) } else { (512, 7) };
    let mib = pos.next().map_or(Ok(mib), |a| a.parse())?;
    let runs: usize = pos.next().map_or(Ok(runs), |a| a.parse())?;
    let dir = pos.next().map(std::path::PathBuf::from);
    Ok(Plan::Run { mib, runs, dir })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mib, runs, given_dir) = match plan(&args)? {
        Plan::Run { mib, runs, dir } => (mib, runs, dir),
        Plan::Skip(why) => {
            if !why.is_empty() {
                eprintln!("{why}");
            }
            return Ok(());
        }
    };
    let dir = given_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("cairn-bench-async-{}", std::process::id()))
    });
    let count = (mib / 64).max(1) as usize;
    let total = count << 26;
    let mut tensors: Vec<Vec<f32>> = (0..count)
        .map(|i| weights(i as u64 + 1, (SIDE * SIDE) as usize))
        .collect();
    let names: Vec<String> = (0..count).map(|i| format!("layer{i}.weight")).collect();
    let shape = [SIDE, SIDE];

    let store = Arc::new(Store::init(&dir.join("store"))?);
    let committer = AsyncCommitter::new(store.clone())?;
    // The same, with two commits in flight: the copy then overlaps the previous commit.
    let overlapped = AsyncCommitter::with_options(
        store.clone(),
        AsyncOptions {
            max_in_flight: 2,
            ..Default::default()
        },
    )?;
    // The same without pausing the running commit during the copy.
    let overlapped_1 = AsyncCommitter::with_options(
        store.clone(),
        AsyncOptions {
            max_in_flight: 2,
            pause_for_copies: false,
            ..Default::default()
        },
    )?;
    let mut reused: Vec<u8> = Vec::new();
    copy_into(&mut reused, &tensors);

    let (mut fresh_t, mut reused_t, mut stall_t, mut bg_t, mut overlap_t) =
        (vec![], vec![], vec![], vec![], vec![]);
    println!(
        "{count} f32 tensors {SIDE}x{SIDE}, {} MiB, {runs} runs",
        total >> 20
    );
    let opts = |run: usize, branch: &str| CommitOptions {
        message: format!("run {run}"),
        branch: Some(branch.into()),
        ..Default::default()
    };
    // Phase 1: nothing else runs while each copy is timed.
    for run in 0..runs {
        for (i, t) in tensors.iter_mut().enumerate() {
            t[run * 7 + i] += 1e-3; // a training step
        }
        let t0 = Instant::now();
        let mut fresh = Vec::<u8>::with_capacity(total);
        copy_into(&mut fresh, &tensors);
        black_box(&fresh);
        fresh_t.push(t0.elapsed());
        drop(fresh);

        let t0 = Instant::now();
        copy_into(&mut reused, &tensors);
        black_box(&reused);
        reused_t.push(t0.elapsed());

        let s = slices(&tensors, &names, &shape);
        let t0 = Instant::now();
        let h = committer.commit_tensors(opts(run, "main"), "model.safetensors", &s, None)?;
        stall_t.push(t0.elapsed());
        h.wait()?;
        bg_t.push(t0.elapsed());
        println!(
            "run {run}: memcpy fresh {:.1} ms, memcpy reused {:.1} ms, async stall {:.1} ms \
             (background commit {:.0} ms)",
            ms(fresh_t[run]),
            ms(reused_t[run]),
            ms(stall_t[run]),
            ms(bg_t[run]),
        );
    }
    // Phase 2: two in flight; each copy is made while the previous commit is running: first
    // with that commit paused during the copy (the default), then with both running at once.
    let mut overlap1_t = vec![];
    for (committer, times, branch) in [
        (&overlapped, &mut overlap_t, "overlap"),
        (&overlapped_1, &mut overlap1_t, "overlap-nopause"),
    ] {
        let mut pending = None;
        for run in 0..runs {
            for (i, t) in tensors.iter_mut().enumerate() {
                t[run * 11 + i] -= 1e-3;
            }
            let s = slices(&tensors, &names, &shape);
            let t0 = Instant::now();
            let h = committer.commit_tensors(opts(run, branch), "model.safetensors", &s, None)?;
            times.push(t0.elapsed());
            println!(
                "{branch} run {run}: async stall {:.1} ms{}",
                ms(times[run]),
                if pending.is_some() {
                    " beside the previous commit"
                } else {
                    ""
                }
            );
            if let Some(prev) = pending.replace(h) {
                cairn::CommitHandle::wait(prev)?;
            }
        }
        if let Some(prev) = pending {
            prev.wait()?;
        }
    }
    let steady = |v: &[Duration]| median(if v.len() > 1 { &v[1..] } else { v });
    let (f, r, s, o) = (
        steady(&fresh_t),
        steady(&reused_t),
        steady(&stall_t),
        // Runs 0 and 1 each filled a fresh slot.
        median(if overlap_t.len() > 2 {
            &overlap_t[2..]
        } else {
            &overlap_t
        }),
    );
    let o1 = median(if overlap1_t.len() > 2 {
        &overlap1_t[2..]
    } else {
        &overlap1_t
    });
    let gib_s = |d: Duration| total as f64 / d.as_secs_f64() / (1u64 << 30) as f64;
    println!("\nmedians of runs 2..{runs} (run 1 = first async commit, fresh buffers):");
    println!("| what | ms | GiB/s |\n|---|---|---|");
    println!(
        "| memcpy into a fresh Vec | {:.1} | {:.2} |",
        ms(f),
        gib_s(f)
    );
    println!(
        "| memcpy into a reused Vec | {:.1} | {:.2} |",
        ms(r),
        gib_s(r)
    );
    println!(
        "| async stall, first commit (fresh buffers) | {:.1} | {:.2} |",
        ms(stall_t[0]),
        gib_s(stall_t[0])
    );
    println!(
        "| async stall, steady state | {:.1} | {:.2} |",
        ms(s),
        gib_s(s)
    );
    println!(
        "| async stall beside a running commit, paused during the copy (2 in flight, runs 3..) | {:.1} | {:.2} |",
        ms(o),
        gib_s(o)
    );
    println!(
        "| async stall beside a running commit, not paused (pause_for_copies: false) | {:.1} | {:.2} |",
        ms(o1),
        gib_s(o1)
    );
    println!(
        "| background commit (submit to wait) | {:.0} | {:.2} |",
        ms(steady(&bg_t)),
        gib_s(steady(&bg_t))
    );
    println!(
        "\nstall / memcpy reused = {:.2}; stall / memcpy fresh = {:.2}; \
         beside a running commit / memcpy reused = {:.2} (not paused: {:.2})",
        s.as_secs_f64() / r.as_secs_f64(),
        s.as_secs_f64() / f.as_secs_f64(),
        o.as_secs_f64() / r.as_secs_f64(),
        o1.as_secs_f64() / r.as_secs_f64()
    );
    drop(committer);
    drop(overlapped);
    drop(overlapped_1);
    drop(store);
    if given_dir.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
