//! Chunk codec throughput and ratios on 1 MiB chunks (the tensor chunk size), one thread.
//!
//! Each case compares plain zstd -1 on the whole chunk (`zstd1`), cairn's standalone choice
//! (`cairn`, no base) and, for cases with a parent, cairn with the parent's chunk as base
//! (`delta`). Ratios are printed once per case before its timings.
//!
//! Run: `cargo bench --no-default-features --bench codec [-- FILTER]`.

use std::hint::black_box;
use std::time::Duration;

use cairn::codec::{self, Encoding, Hint};
use cairn::model::dtype::DType;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const CHUNK: usize = 1 << 20;

/// splitmix64 with Box–Muller normals: deterministic data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn normal(&mut self) -> f64 {
        let u = ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn to_bytes(dtype: DType, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK);
    for &v in values {
        match dtype {
            DType::F32 => out.extend((v as f32).to_le_bytes()),
            DType::F64 => out.extend(v.to_le_bytes()),
            DType::BF16 => out.extend(half::bf16::from_f64(v).to_le_bytes()),
            DType::F16 => out.extend(half::f16::from_f64(v).to_le_bytes()),
            DType::I64 => out.extend((v as i64).to_le_bytes()),
            _ => unreachable!("bench dtypes"),
        }
    }
    out
}

fn elems(dtype: DType) -> usize {
    CHUNK / dtype.byte_width().expect("whole-byte dtypes")
}

/// normal(0, 0.02), like freshly initialised or lightly trained weights.
fn weights(dtype: DType, seed: u64) -> Vec<f64> {
    let mut rng = Rng(seed);
    (0..elems(dtype)).map(|_| rng.normal() * 0.02).collect()
}

/// Adam's second moment: an EMA of squared gradients (small, positive), with the rows of 1024
/// elements that never saw a gradient (one in ten, like unseen embedding rows) exactly zero.
fn adam_v(dtype: DType, seed: u64) -> Vec<f64> {
    let mut rng = Rng(seed);
    (0..elems(dtype))
        .map(|i| {
            if (i / 1024) % 10 == 3 {
                return 0.0;
            }
            (0..4).map(|_| (rng.normal() * 1e-3).powi(2)).sum::<f64>() / 4.0
        })
        .collect()
}

/// Adam's first moment for a sparse fine-tune: nine rows in ten exactly zero.
fn mostly_zero(dtype: DType, seed: u64) -> Vec<f64> {
    let mut rng = Rng(seed);
    (0..elems(dtype))
        .map(|i| {
            if (i / 1024) % 10 == 3 {
                rng.normal() * 1e-4
            } else {
                0.0
            }
        })
        .collect()
}

/// One optimizer step: every weight moves by `lr` times a unit normal (SGD with lr 1e-2 on
/// gradients of 1e-3 moves by 1e-5; Adam with lr 1e-4 by about 1e-4).
fn stepped(w: &[f64], lr: f64, seed: u64) -> Vec<f64> {
    let mut rng = Rng(seed);
    w.iter().map(|x| x - lr * rng.normal()).collect()
}

struct Case {
    name: &'static str,
    dtype: Option<DType>,
    raw: Vec<u8>,
    base: Option<Vec<u8>>,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (name, dt) in [
        ("f32-weights", DType::F32),
        ("bf16-weights", DType::BF16),
        ("f16-weights", DType::F16),
        ("f64-weights", DType::F64),
    ] {
        out.push(Case {
            name,
            dtype: Some(dt),
            raw: to_bytes(dt, &weights(dt, 1)),
            base: None,
        });
    }
    for (name, dt) in [("f32-adam-v", DType::F32), ("bf16-adam-v", DType::BF16)] {
        out.push(Case {
            name,
            dtype: Some(dt),
            raw: to_bytes(dt, &adam_v(dt, 2)),
            base: None,
        });
    }
    out.push(Case {
        name: "f32-mostly-zero",
        dtype: Some(DType::F32),
        raw: to_bytes(DType::F32, &mostly_zero(DType::F32, 3)),
        base: None,
    });
    let mut rng = Rng(4);
    let ids: Vec<f64> = (0..elems(DType::I64))
        .map(|_| (rng.next() % 50_000) as f64)
        .collect();
    out.push(Case {
        name: "i64-token-ids",
        dtype: Some(DType::I64),
        raw: to_bytes(DType::I64, &ids),
        base: None,
    });
    let random: Vec<u8> = (0..CHUNK).map(|_| rng.next() as u8).collect();
    out.push(Case {
        name: "random-bytes",
        dtype: None,
        raw: random.clone(),
        base: None,
    });
    out.push(Case {
        name: "random-as-f32",
        dtype: Some(DType::F32),
        raw: random,
        base: None,
    });
    for (name, dt, lr) in [
        ("f32-sgd-step", DType::F32, 1e-5),
        ("f32-adam-step", DType::F32, 1e-4),
        ("bf16-sgd-step", DType::BF16, 1e-5),
        ("bf16-adam-step", DType::BF16, 1e-4),
    ] {
        let w = weights(dt, 5);
        out.push(Case {
            name,
            dtype: Some(dt),
            raw: to_bytes(dt, &stepped(&w, lr, 6)),
            base: Some(to_bytes(dt, &w)),
        });
    }
    out
}

fn stored<'a>(raw: &'a [u8], e: &'a codec::Encoded) -> &'a [u8] {
    if e.encoding == Encoding::Raw {
        raw
    } else {
        &e.bytes
    }
}

fn bench(c: &mut Criterion) {
    for case in cases() {
        let raw = &case.raw;
        let len = raw.len() as u64;
        let ratio = |n: usize| raw.len() as f64 / n as f64;
        let z1 = zstd::bulk::compress(raw, 1).expect("zstd");
        let z3 = zstd::bulk::compress(raw, 3).expect("zstd");
        let alone = codec::encode(
            raw,
            Hint {
                dtype: case.dtype,
                base: None,
            },
        );
        let mut line = format!(
            "RATIO {:16} zstd-1 {:.3}  zstd-3 {:.3}  cairn {:.3} ({:?})",
            case.name,
            ratio(z1.len()),
            ratio(z3.len()),
            ratio(stored(raw, &alone).len()),
            alone.encoding,
        );
        let delta = case.base.as_deref().map(|base| {
            let hint = Hint {
                dtype: case.dtype,
                base: Some(base),
            };
            let e = codec::encode(raw, hint);
            line += &format!(
                "  delta {:.3} ({:?})",
                ratio(stored(raw, &e).len()),
                e.encoding
            );
            (hint, e)
        });
        println!("{line}");

        let mut g = c.benchmark_group(case.name);
        g.throughput(Throughput::Bytes(len));
        let mut zc = zstd::bulk::Compressor::new(1).expect("zstd");
        g.bench_function("zstd1-encode", |b| {
            b.iter(|| zc.compress(black_box(raw)).expect("zstd"))
        });
        let mut zd = zstd::bulk::Decompressor::new().expect("zstd");
        g.bench_function("zstd1-decode", |b| {
            b.iter(|| zd.decompress(black_box(&z1), raw.len()).expect("zstd"))
        });
        let hint = Hint {
            dtype: case.dtype,
            base: None,
        };
        g.bench_function("cairn-encode", |b| {
            b.iter(|| codec::encode(black_box(raw), hint))
        });
        let s = stored(raw, &alone);
        g.bench_function("cairn-decode", |b| {
            b.iter(|| codec::decode(alone.encoding, black_box(s), len, None).expect("decodes"))
        });
        if let Some((hint, e)) = &delta {
            g.bench_function("delta-encode", |b| {
                b.iter(|| codec::encode(black_box(raw), *hint))
            });
            let s = stored(raw, e);
            g.bench_function("delta-decode", |b| {
                b.iter(|| codec::decode(e.encoding, black_box(s), len, hint.base).expect("decodes"))
            });
            // The work of a read at depth 3: three delta links over the base, in one buffer
            // (the same link three times; the bytes differ from a real chain, the work does not).
            if let (true, Some(base)) = (e.encoding.needs_base(), hint.base) {
                let links = [(e.encoding, s), (e.encoding, s), (e.encoding, s)];
                let mut out = base.to_vec();
                g.bench_function("delta-chain3-decode", |b| {
                    b.iter(|| {
                        out.copy_from_slice(base);
                        codec::apply_deltas_into(black_box(&links), &mut out).expect("decodes")
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
