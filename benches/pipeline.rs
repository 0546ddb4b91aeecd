//! Micro-benchmarks of the commit and read pipeline's stages other than the codec
//! (`benches/codec.rs`), in bytes/s, one thread unless said:
//!
//! - `hash`: a chunk id (keyed BLAKE3 of a 1 MiB chunk, what every chunk costs on commit and on
//!   every read; `ChunkId::of` hashes chunks of 256 KiB and more on all cores), BLAKE3 of the
//!   same chunk on one thread, and SHA-256 of 16 MiB (what every file costs on commit and on
//!   checkout; it is sequential over a file);
//! - `chunking`: content-defined chunking (FastCDC, 64/256/1024 KiB) of 64 MiB of opaque bytes,
//!   and the fixed 1 MiB split of a tensor;
//! - `pack`: appending 64 chunks of 1 MiB to a pack and sealing it (footer, fsync, rename: the
//!   fsync makes this one disk-bound and noisy), and reading them back through the memory map
//!   with every chunk verified against its id.
//!
//! Run: `cargo bench --no-default-features --bench pipeline` (no RocksDB build needed).
//! docs/benchmarks.md has the figures, and what they mean for the commit and checkout targets.

use cairn::ChunkId;
use cairn::codec::Encoding;
use cairn::model::chunker;
use cairn::storage::pack::{PackReader, PackWriter, pack_file_name};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use std::hint::black_box;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn hash(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash");
    let chunk = noise(1 << 20, 1);
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("chunk-id-blake3-1MiB-all-cores", |b| {
        b.iter(|| ChunkId::of(black_box(&chunk)))
    });
    g.bench_function("blake3-1MiB-one-thread", |b| {
        b.iter(|| blake3::hash(black_box(&chunk)))
    });
    let file = noise(16 << 20, 2);
    g.throughput(Throughput::Bytes(file.len() as u64));
    g.bench_function("sha256-16MiB", |b| {
        b.iter(|| Sha256::digest(black_box(&file)))
    });
    g.finish();
}

fn chunking(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunking");
    g.sample_size(20);
    let data = noise(64 << 20, 3);
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("cdc-64MiB", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for c in chunker::cdc(std::io::Cursor::new(black_box(&data[..]))) {
                n += c.expect("in memory").1.len() as u64;
            }
            assert_eq!(n, data.len() as u64);
        })
    });
    g.bench_function("fixed-64MiB", |b| {
        b.iter(|| chunker::fixed(0, black_box(data.len() as u64)).count())
    });
    g.finish();
}

fn pack(c: &mut Criterion) {
    let mut g = c.benchmark_group("pack");
    g.sample_size(20);
    let chunks: Vec<(ChunkId, Vec<u8>)> = (0..64)
        .map(|i| {
            let d = noise(1 << 20, 100 + i);
            (ChunkId::of(&d), d)
        })
        .collect();
    let total: u64 = chunks.iter().map(|(_, d)| d.len() as u64).sum();
    g.throughput(Throughput::Bytes(total));
    let dir = tempfile::tempdir().expect("a temp dir");
    let write = |dir: &std::path::Path| {
        let mut w = PackWriter::create(dir).expect("create");
        for (id, d) in &chunks {
            w.append_chunk(*id, Encoding::Raw, d.len() as u64, d, None, 0)
                .expect("append");
        }
        w.seal().expect("seal")
    };
    g.bench_function("write-seal-64MiB", |b| {
        b.iter_batched(
            || {
                for e in std::fs::read_dir(dir.path()).expect("the temp dir") {
                    std::fs::remove_file(e.expect("an entry").path()).expect("remove");
                }
            },
            |()| write(dir.path()),
            criterion::BatchSize::PerIteration,
        )
    });
    let read_dir = tempfile::tempdir().expect("a temp dir");
    let sealed = write(read_dir.path());
    let path = read_dir.path().join(pack_file_name(sealed.id));
    let reader = PackReader::open(&path, sealed.id).expect("open");
    let entries = reader.entries().expect("entries");
    g.bench_function("read-verify-64MiB", |b| {
        b.iter(|| {
            for e in &entries {
                let raw = reader
                    .read_chunk(ChunkId(e.header.id), e.offset, None, None)
                    .expect("read");
                black_box(raw);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, hash, chunking, pack);
criterion_main!(benches);
