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

/// A STORED zip holding `a/data.pkl` = `pickle`, torch's layout with no storages.
fn pickle_archive(pickle: &[u8]) -> Vec<u8> {
    let name = b"a/data.pkl";
    let mut out = Vec::new();
    out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    out.extend_from_slice(&[20, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&(pickle.len() as u32).to_le_bytes());
    out.extend_from_slice(&(pickle.len() as u32).to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(pickle);
    let cd = out.len() as u32;
    out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    out.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&(pickle.len() as u32).to_le_bytes());
    out.extend_from_slice(&(pickle.len() as u32).to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(name);
    let cd_len = out.len() as u32 - cd;
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd.to_le_bytes());
    out.extend_from_slice(&[0; 2]);
    out
}

/// Run the CLI with `args` to its end and return its exit code and peak RSS in bytes. A python3
/// parent (the set-up script's) runs it alone and reads `ru_maxrss` of its only child, so no
/// other test's process is counted.
fn exit_and_peak_rss(store: &Path, args: &[&std::ffi::OsStr]) -> (i32, u64) {
    const WRAP: &str = "import resource, subprocess, sys\n\
        r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
        print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)";
    let out = std::process::Command::new("python3")
        .args(["-c", WRAP])
        .arg(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("CAIRN_STORE")
        .env("CAIRN_AUTHOR", "test@cairn")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace();
    let code = it.next().unwrap().parse().unwrap();
    let kib: u64 = it.next().unwrap().parse().unwrap();
    (code, kib * 1024)
}

/// Regression: a pickle can ask the reader for far more memory than it is long (one memoized
/// string fed to STACK_GLOBAL 1000 times drove a commit to ~2 GB; memo slots, stack slots and
/// tuples of references each cost tens of bytes for one or two pickle bytes). Whatever a 10 MB
/// pickle does, the commit's peak RSS stays within 64 MiB + 4x its size, and the file is stored
/// opaque, byte for byte, with the reader's reason.
#[test]
fn amplifying_pickles_stay_within_the_memory_bound() {
    const SIZE: usize = 10 << 20;
    let big_str = |p: &mut Vec<u8>| {
        p.push(b'X');
        p.extend_from_slice(&(1u32 << 20).to_le_bytes());
        p.resize(p.len() + (1 << 20), b'm');
    };
    let mut attacks: Vec<(&str, Vec<u8>)> = Vec::new();
    // One 1 MB string, memoized again and again (one byte per memo slot).
    let mut p = vec![0x80, 4];
    big_str(&mut p);
    p.resize(SIZE - 1, 0x94);
    attacks.push(("memoize", p));
    // Tuples of 900,000 references to that string (two bytes per stack slot and item), each
    // memoized and popped, again and again.
    let mut p = vec![0x80, 4];
    big_str(&mut p);
    p.push(0x94);
    while p.len() < SIZE - 1_800_010 {
        p.push(b'(');
        for _ in 0..900_000 {
            p.extend_from_slice(&[b'h', 0]);
        }
        p.extend_from_slice(&[b't', 0x94, b'0']);
    }
    p.extend_from_slice(&[b'h', 0]);
    attacks.push(("tuple", p));
    // Small strings, each memoized, and globals built from them, memoized too.
    let mut p = vec![0x80, 4];
    while p.len() < SIZE - 8 {
        p.extend_from_slice(&[0x8c, 0, 0x94, 0x8c, 0, 0x94, 0x93, 0x94]);
    }
    attacks.push(("globals", p));
    // Tuples of three references, each memoized, then dropped.
    let mut p = vec![0x80, 4, b'N', 0x94];
    while p.len() < SIZE - 6 {
        p.extend_from_slice(&[b'2', b'2', 0x87, 0x94, b'0', b'N']);
    }
    attacks.push(("tuple3", p));

    for (name, mut pickle) in attacks {
        pickle.push(b'.');
        let t = tempfile::tempdir().unwrap();
        let store = t.path().join("store");
        cairn(&store).arg("init").assert().success();
        let ck = t.path().join("ck");
        std::fs::create_dir_all(&ck).unwrap();
        let archive = pickle_archive(&pickle);
        std::fs::write(ck.join("model.pt"), &archive).unwrap();
        let (code, peak) = exit_and_peak_rss(&store, &["commit".as_ref(), ck.as_os_str()]);
        assert_eq!(code, 0, "{name}: commit failed");
        let bound = (64 << 20) + 4 * pickle.len() as u64;
        assert!(
            peak <= bound,
            "{name}: peak RSS {} MiB exceeds {} MiB",
            peak >> 20,
            bound >> 20
        );
        let v = show_json(&store, "HEAD");
        let f = &v["files"][0];
        assert_eq!(f["format"], "fallback", "{name}: {f}");
        let reason = f["fallback_reason"].as_str().unwrap();
        eprintln!("{name}: peak RSS {} MiB: {reason}", peak >> 20);
        assert!(reason.contains("memory"), "{name}: {reason}");
        let dst = t.path().join("out");
        cairn(&store)
            .args(["checkout", "HEAD"])
            .arg(&dst)
            .assert()
            .success();
        assert!(
            std::fs::read(dst.join("model.pt")).unwrap() == archive,
            "{name}"
        );
    }
}

mod fallback_property {
    use cairn::model::object::FileFormat;
    use cairn::ops::read;
    use cairn::{CommitBuilder, CommitOptions, Store};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever a `.pt` file holds (a real archive with bytes overwritten or its tail cut
        /// off), a commit stores it as a torch archive or falls back to plain bytes with a
        /// reason, and either way the file reads back byte for byte.
        #[test]
        fn a_fallback_never_changes_the_bytes(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            keep in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let mut bytes = std::fs::read(dir.join("fuzz/seeds/torchzip_parse/lightning.ckpt")).unwrap();
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if let Some(k) = keep {
                bytes.truncate(k.index(bytes.len() + 1));
            }
            let t = tempfile::tempdir().unwrap();
            let file = t.path().join("model.pt");
            std::fs::write(&file, &bytes).unwrap();
            let store = Store::init(&t.path().join("store")).unwrap();
            let mut b = CommitBuilder::new(&store, CommitOptions::default());
            b.add_path(&file, "model.pt").unwrap();
            let out = b.commit().unwrap();
            let tree = store.tree(store.commit(out.commit).unwrap().tree).unwrap();
            match &tree.files["model.pt"].format {
                FileFormat::TorchZip => {}
                FileFormat::Fallback(reason) => prop_assert!(!reason.is_empty()),
                // An edit of the zip signature makes it no archive at all: plain bytes.
                FileFormat::Opaque => prop_assert!(!bytes.starts_with(b"PK\x03\x04")),
                other => prop_assert!(false, "format {:?}", other),
            }
            let mut back = Vec::new();
            read::cat(&store, out.commit, "model.pt", &mut back, false).unwrap();
            prop_assert!(back == bytes);
        }
    }
}
