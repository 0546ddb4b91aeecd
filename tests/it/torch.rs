//! torch.save and TorchScript archives are chunked per tensor storage, with each storage's
//! dtype; anything unreadable falls back to content-defined chunks, and says why.

use crate::common::*;
use serde_json::Value;
use std::path::Path;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(name)
}

#[test]
fn torch_archives_are_storage_aligned_and_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::copy(fixture("silero_vad.jit"), ck.join("silero_vad.jit")).unwrap();
    std::fs::copy(fixture("state_dict.pt"), ck.join("optimizer.pt")).unwrap();
    // A file named like a checkpoint but truncated: not readable as an archive.
    let bytes = std::fs::read(fixture("state_dict.pt")).unwrap();
    std::fs::write(ck.join("broken.pt"), &bytes[..bytes.len() - 30]).unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let out = cairn(&store).args(["show", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = v["files"].as_array().unwrap();
    let file = |n: &str| files.iter().find(|f| f["path"] == n).unwrap().clone();
    for name in ["silero_vad.jit", "optimizer.pt"] {
        let f = file(name);
        assert_eq!(f["format"], "torch-zip", "{name}: {f}");
        assert!(f["fallback_reason"].is_null());
        let in_tensors: u64 = f["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["bytes"].as_u64().unwrap())
            .sum();
        let frac = in_tensors as f64 / f["size"].as_u64().unwrap() as f64;
        eprintln!(
            "{name}: {:.2}% of bytes in storage-aligned chunks",
            frac * 100.0
        );
        // silero_vad.jit keeps compressed TorchScript sources beside its storages (95.98%); the
        // hand-built state dict is a few dozen bytes of tensors in kilobytes of zip headers.
        if name == "silero_vad.jit" {
            assert!(frac >= 0.95, "{name}: {frac}");
        }
    }
    let sil = file("silero_vad.jit");
    assert!(
        sil["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["dtype"] == "F32")
    );
    let opt = file("optimizer.pt");
    let dtypes: Vec<&str> = opt["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["dtype"].as_str().unwrap())
        .collect();
    assert!(
        dtypes.contains(&"F32") && dtypes.contains(&"BF16") && dtypes.contains(&"I64"),
        "{dtypes:?}"
    );
    let broken = file("broken.pt");
    assert_eq!(broken["format"], "fallback");
    assert!(!broken["fallback_reason"].as_str().unwrap().is_empty());
    // Byte-identical checkout of all three.
    let dst = t.path().join("out");
    cairn(&store)
        .args(["checkout", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&ck));
    // One storage reads alone, as a tensor.
    let name = sil["tensors"][0]["name"].as_str().unwrap().to_string();
    let st = t.path().join("s.safetensors");
    cairn(&store)
        .args(["tensor", "HEAD", &format!("silero_vad.jit:{name}"), "-o"])
        .arg(&st)
        .assert()
        .success();
    let parsed = cairn::formats::safetensors::parse(&std::fs::read(&st).unwrap()).unwrap();
    assert_eq!(parsed.tensors[0].dtype, cairn::DType::F32);
    // Recommitting adds no chunks: every storage dedups.
    let out = cairn(&store)
        .args(["commit", "--json"])
        .arg(&ck)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["new_chunks"], 0);
}

/// Real torch.save output (PyTorch 2.15.0, `tests/fixtures/torch/make_real.py`), and the name
/// each is committed under in a checkpoint directory.
const REAL: [(&str, &str); 4] = [
    ("real_state_dict.pt", "pytorch_model.bin"),
    ("real_optimizer.pt", "optimizer.pt"),
    ("real_lightning.ckpt", "last.ckpt"),
    ("real_optimizer_step2.pt", "step2/optimizer.pt"),
];

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn show_json(store: &Path, rev: &str) -> Value {
    let out = cairn(store).args(["show", "--json", rev]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn real_torch_saves_are_99_percent_storage_aligned_without_fallback() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    for (fixture_name, rel) in REAL {
        let dst = ck.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(fixture(fixture_name), dst).unwrap();
    }
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let v = show_json(&store, "HEAD");
    let files = v["files"].as_array().unwrap();
    for (fixture_name, rel) in REAL {
        let f = files.iter().find(|f| f["path"] == rel).unwrap();
        assert_eq!(f["format"], "torch-zip", "{fixture_name} fell back: {f}");
        assert!(f["fallback_reason"].is_null(), "{fixture_name}: {f}");
        let bytes = std::fs::read(fixture(fixture_name)).unwrap();
        assert_eq!(f["sha256"], sha256_hex(&bytes));
        let tensors = f["tensors"].as_array().unwrap();
        let in_storages: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
        let frac = in_storages as f64 / bytes.len() as f64;
        eprintln!(
            "{fixture_name}: {in_storages} of {} bytes ({:.3}%) in storage-aligned chunks",
            bytes.len(),
            frac * 100.0
        );
        assert!(frac >= 0.99, "{fixture_name}: {frac}");
        // Every storage has the dtype its pickle declares: none is left as plain bytes except
        // the one real uint8 storage of the state dict.
        let u8s = tensors.iter().filter(|t| t["dtype"] == "U8").count();
        let want_u8 = usize::from(fixture_name == "real_state_dict.pt");
        assert_eq!(u8s, want_u8, "{fixture_name}: {tensors:?}");
    }
    let sd = files
        .iter()
        .find(|f| f["path"] == "pytorch_model.bin")
        .unwrap();
    let mut dtypes: Vec<&str> = sd["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["dtype"].as_str().unwrap())
        .collect();
    dtypes.sort_unstable();
    dtypes.dedup();
    assert_eq!(dtypes, ["BF16", "BOOL", "F16", "F32", "F64", "I64", "U8"]);
    // Checkout is byte-identical.
    let dst = t.path().join("out");
    cairn(&store)
        .args(["checkout", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    for (fixture_name, rel) in REAL {
        let want = sha256_hex(&std::fs::read(fixture(fixture_name)).unwrap());
        assert_eq!(
            sha256_hex(&std::fs::read(dst.join(rel)).unwrap()),
            want,
            "{rel}"
        );
    }
    assert_eq!(snapshot(&dst), snapshot(&ck));
}

/// Hugging Face's Trainer writes `checkpoint-N/optimizer.pt` every save: the next checkpoint's
/// storages delta-code against the storage of the same entry name in the parent's file.
#[test]
fn real_optimizer_deltas_against_the_parent_by_entry_name() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::copy(fixture("real_optimizer.pt"), ck.join("optimizer.pt")).unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    std::fs::copy(fixture("real_optimizer_step2.pt"), ck.join("optimizer.pt")).unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let v = show_json(&store, "HEAD");
    let f = &v["files"][0];
    assert_eq!(f["format"], "torch-zip", "{f}");
    let with_parent = v["stored_bytes_new_vs_parent"].as_u64().unwrap();

    // The same file committed with no parent: what it costs without delta bases.
    let alone = t.path().join("alone");
    cairn(&alone).arg("init").assert().success();
    cairn(&alone).arg("commit").arg(&ck).assert().success();
    let without_parent = show_json(&alone, "HEAD")["stored_bytes"].as_u64().unwrap();
    eprintln!(
        "optimizer.pt step 6 after step 3: {with_parent} new stored bytes, {without_parent} \
         without a parent ({} bytes raw)",
        f["size"]
    );
    assert!(
        with_parent < without_parent,
        "{with_parent} vs {without_parent}"
    );

    // Which chunks are delta-coded, and against what: the parent's chunk of the same entry.
    let s = cairn::Store::open(&store).unwrap();
    let head = s
        .commit(v["id"].as_str().unwrap().parse().unwrap())
        .unwrap();
    let parent = s.commit(head.parents[0]).unwrap();
    let tree = s.tree(head.tree).unwrap();
    let parent_tree = s.tree(parent.tree).unwrap();
    let parent_chunks: std::collections::BTreeMap<String, Vec<cairn::ChunkId>> = parent_tree.files
        ["optimizer.pt"]
        .tensors()
        .map(|(_, seg)| match &seg.kind {
            cairn::model::object::SegmentKind::Tensor { name, .. } => {
                (name.clone(), seg.chunks.iter().map(|c| c.id).collect())
            }
            cairn::model::object::SegmentKind::Raw => unreachable!(),
        })
        .collect();
    let mut delta = 0;
    let mut delta_bytes = 0;
    for (_, seg) in tree.files["optimizer.pt"].tensors() {
        let cairn::model::object::SegmentKind::Tensor { name, .. } = &seg.kind else {
            unreachable!()
        };
        for (i, c) in seg.chunks.iter().enumerate() {
            let loc = s.chunk_loc(c.id).unwrap().unwrap();
            if let Some(base) = loc.base {
                assert_eq!(
                    Some(&base),
                    parent_chunks[name].get(i),
                    "{name}: base is the parent's chunk of the same entry"
                );
                eprintln!(
                    "{name} chunk {i}: {} bytes stored as {} ({:?}) against the parent",
                    c.len, loc.stored_len, loc.encoding
                );
                delta += 1;
                delta_bytes += c.len;
            }
        }
    }
    eprintln!("{delta} delta-coded chunks, {delta_bytes} bytes");
    assert!(delta > 0, "some storage delta-codes against its parent");
    // Checkout of both commits is byte-identical.
    for (rev, name) in [
        ("HEAD~1", "real_optimizer.pt"),
        ("HEAD", "real_optimizer_step2.pt"),
    ] {
        let dst = t.path().join(format!("out-{name}"));
        cairn(&store)
            .args(["checkout", rev])
            .arg(&dst)
            .assert()
            .success();
        assert_eq!(
            std::fs::read(dst.join("optimizer.pt")).unwrap(),
            std::fs::read(fixture(name)).unwrap()
        );
    }
}
