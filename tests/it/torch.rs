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
    let parsed = cairn::safetensors::parse(&std::fs::read(&st).unwrap()).unwrap();
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
