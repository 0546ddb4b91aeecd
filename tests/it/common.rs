//! Helpers shared by the integration tests: temp dirs, the built binary, data generators.

use assert_cmd::Command;
use cairn::DType;
use std::path::{Path, PathBuf};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// The CLI against `store`, with a fixed author and no inherited store variable.
pub fn cairn(store: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_remove("CAIRN_STORE")
        .env("CAIRN_AUTHOR", "test@cairn")
        .arg("--store")
        .arg(store);
    c
}

/// Deterministic non-repeating bytes (xorshift64*).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Realistic f32 weights: small normal-ish values.
pub fn weights(seed: u64, n: usize) -> Vec<u8> {
    noise(seed, n * 4)
        .chunks_exact(4)
        .flat_map(|c| {
            let u = u32::from_le_bytes(c.try_into().unwrap());
            let v = ((u >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.04;
            v.to_le_bytes()
        })
        .collect()
}

/// Write a safetensors file of `(name, dtype, shape, data)` in the order given.
pub fn write_st(path: &Path, tensors: &[(&str, DType, Vec<u64>, Vec<u8>)]) {
    let specs: Vec<(String, DType, Vec<u64>)> = tensors
        .iter()
        .map(|(n, d, s, _)| (n.to_string(), *d, s.clone()))
        .collect();
    let mut out = cairn::formats::safetensors::serialize_header(&specs, None).unwrap();
    for (_, _, _, d) in tensors {
        out.extend_from_slice(d);
    }
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, out).unwrap();
}

/// Every file under `dir` with its bytes, by relative path.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    fn walk(root: &Path, d: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Names and sizes of every file under a store, to show a failed command changed nothing: all
/// but the index, the locks and gc's status report.
pub fn store_listing(store: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, u64)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                walk(root, &p, out);
            } else if !rel.starts_with("index/")
                && !rel.starts_with("locks/")
                && rel != "gc-status.json"
            {
                out.push((rel, std::fs::metadata(&p).unwrap().len()));
            }
        }
    }
    walk(store, store, &mut out);
    out.sort();
    out
}

/// A small Hugging Face-style checkpoint folder: every safetensors dtype, an empty and a
/// 0-rank tensor, nested directories, an empty directory, JSON and binary files.
pub fn checkpoint(dir: &Path, seed: u64) {
    let mut tensors: Vec<(String, DType, Vec<u64>, Vec<u8>)> = Vec::new();
    for (i, d) in DType::ALL.iter().enumerate() {
        let shape = if d.bits() < 8 { vec![4, 8] } else { vec![3, 5] };
        let len = d.byte_len(&shape).unwrap() as usize;
        tensors.push((format!("t.{d}"), *d, shape, noise(seed + i as u64, len)));
    }
    tensors.push(("empty".into(), DType::F32, vec![0, 7], vec![]));
    tensors.push((
        "scalar".into(),
        DType::F64,
        vec![],
        1.5f64.to_le_bytes().to_vec(),
    ));
    tensors.push((
        "big.weight".into(),
        DType::F32,
        vec![700, 1000],
        weights(seed, 700_000),
    ));
    let refs: Vec<(&str, DType, Vec<u64>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write_st(&dir.join("model.safetensors"), &refs);
    write_st(
        &dir.join("shards/model-00001-of-00002.safetensors"),
        &[(
            "a",
            DType::BF16,
            vec![1024, 600],
            noise(seed ^ 77, 1024 * 600 * 2),
        )],
    );
    write_st(
        &dir.join("shards/model-00002-of-00002.safetensors"),
        &[("b", DType::F16, vec![10], noise(seed ^ 78, 20))],
    );
    std::fs::write(
        dir.join("shards/model.safetensors.index.json"),
        r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("optimizer.pt"), noise(seed ^ 99, 3_000_000)).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"hidden": 64}"#).unwrap();
    std::fs::write(dir.join("empty_file"), b"").unwrap();
    std::fs::create_dir_all(dir.join("logs/empty_dir")).unwrap();
}

/// Run the CLI with `args`, assert success, and parse its stdout as JSON.
pub fn json(store: &Path, args: &[&str]) -> serde_json::Value {
    let out = cairn(store).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `cairn fsck --read-data` on `store` succeeds: every structure checks and every chunk decodes
/// to its id.
pub fn fsck_read_data_clean(store: &Path) {
    cairn(store)
        .args(["fsck", "--read-data"])
        .assert()
        .success();
}

/// Flip one bit in the middle of chunk `id`'s stored payload, in its pack file.
pub fn damage_chunk(root: &Path, id: cairn::ChunkId) {
    let store = cairn::Store::open(root).unwrap();
    let loc = store.chunk_loc(id).unwrap().unwrap();
    let pack = store
        .packs_dir()
        .join(cairn::storage::pack::pack_file_name(loc.pack));
    drop(store);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(loc.offset + loc.stored_len / 2) as usize] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();
}
