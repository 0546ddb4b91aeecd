//! Checkpoints come back byte for byte: every dtype, empty and 0-rank tensors, nested and empty
//! directories, opaque files, in-memory tensors, one tensor read alone.

use crate::common::*;
use cairn::ops::read::{self, CheckoutOptions};
use cairn::{CommitBuilder, CommitOptions, DType, DeltaBase, Store, TensorInput};

/// Check `id` out into `dst` by default (BLAKE3 of every chunk, each file's size), and again
/// with `paranoid` (every file read back, SHA-256) into a sibling directory: the two must agree,
/// byte for byte or in failing. Returns the default's outcome.
fn checkout(
    store: &Store,
    id: cairn::CommitId,
    dst: &std::path::Path,
) -> Result<read::CheckoutOutcome, read::ReadError> {
    let progress = &cairn::ops::progress::NoProgress;
    let got = read::checkout(store, id, dst, &CheckoutOptions::default(), progress);
    let pdst = dst.with_extension("paranoid");
    let paranoid = CheckoutOptions {
        paranoid: true,
        ..Default::default()
    };
    let again = read::checkout(store, id, &pdst, &paranoid, progress);
    match (&got, &again) {
        (Ok(_), Ok(_)) => assert_eq!(snapshot(dst), snapshot(&pdst)),
        (Err(_), Err(_)) => {}
        _ => panic!("default and paranoid checkouts disagree: {got:?} / {again:?}"),
    }
    got
}

#[test]
fn directory_round_trips_byte_identically() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("ckpt");
    checkpoint(&src, 1);
    let store = Store::init(&t.path().join("store")).unwrap();
    let mut b = CommitBuilder::new(&store, CommitOptions::default());
    b.add_dir(&src).unwrap();
    let out = b.commit().unwrap();
    assert_eq!(out.parent, None);
    let dst = t.path().join("out");
    checkout(&store, out.commit, &dst).unwrap();
    assert_eq!(snapshot(&src), snapshot(&dst));
    assert!(dst.join("logs/empty_dir").is_dir());
    // The safetensors file was understood, tensor by tensor.
    let tree = store.tree(store.commit(out.commit).unwrap().tree).unwrap();
    let f = &tree.files["model.safetensors"];
    assert_eq!(f.format, cairn::model::object::FileFormat::Safetensors);
    assert_eq!(f.tensors().count(), DType::ALL.len() + 3);
    assert_eq!(
        tree.files["optimizer.pt"].format,
        cairn::model::object::FileFormat::Opaque
    );
}

#[test]
fn recorded_sha256_matches_sha256sum() {
    use sha2::Digest;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("ckpt");
    checkpoint(&src, 2);
    let store = Store::init(&t.path().join("store")).unwrap();
    let mut b = CommitBuilder::new(&store, CommitOptions::default());
    b.add_dir(&src).unwrap();
    let out = b.commit().unwrap();
    let tree = store.tree(store.commit(out.commit).unwrap().tree).unwrap();
    for (rel, bytes) in snapshot(&src) {
        let want: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        assert_eq!(tree.files[&rel].sha256, want, "{rel}");
    }
}

#[test]
fn tensors_from_memory_and_single_tensor_reads() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::init(&t.path().join("store")).unwrap();
    let w = weights(5, 3 << 20); // 12 MiB: 12 chunks
    let mut b = CommitBuilder::new(&store, CommitOptions::default());
    b.add_tensors(
        "model.safetensors",
        vec![
            TensorInput {
                name: "w".into(),
                dtype: DType::F32,
                shape: vec![3, 1 << 20],
                data: w.clone(),
            },
            TensorInput {
                name: "b".into(),
                dtype: DType::F32,
                shape: vec![2],
                data: vec![1; 8],
            },
        ],
        None,
    )
    .unwrap();
    let out = b.commit().unwrap();
    let tree = store.tree(store.commit(out.commit).unwrap().tree).unwrap();
    let tr = read::find_tensor(&tree, "w").unwrap();
    assert_eq!(tr.segment.chunks.len(), 12);
    assert_eq!(read::read_tensor(&store, &tr).unwrap(), w);
    let tr = read::find_tensor(&tree, "model.safetensors:b").unwrap();
    assert_eq!(read::read_tensor(&store, &tr).unwrap(), vec![1; 8]);
    assert!(read::find_tensor(&tree, "nope").is_err());
    // Wrong byte count for the shape is refused before anything is written.
    let mut b = CommitBuilder::new(&store, CommitOptions::default());
    let e = b
        .add_tensors(
            "x.safetensors",
            vec![TensorInput {
                name: "w".into(),
                dtype: DType::F32,
                shape: vec![3],
                data: vec![0; 11],
            }],
            None,
        )
        .unwrap_err();
    assert!(e.to_string().contains("take 12"), "{e}");
}

#[test]
fn corrupt_pack_byte_is_an_error_never_wrong_bytes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let store = Store::init(&root).unwrap();
    let data = noise(9, 5 << 20);
    let mut b = CommitBuilder::new(&store, CommitOptions::default());
    b.add_bytes("blob.bin", data.clone()).unwrap();
    let out = b.commit().unwrap();
    drop(store);
    // Flip one byte in the middle of the (only large) pack.
    let pack = std::fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();
    let store = Store::open(&root).unwrap();
    let dst = t.path().join("out");
    let e = checkout(&store, out.commit, &dst).unwrap_err().to_string();
    assert!(e.contains("chunk") && e.contains("corrupt"), "{e}");
    assert!(
        !dst.join("blob.bin").exists(),
        "no file appears with wrong bytes"
    );
}

/// Commit `data` as the one f32 tensor `w` of `model.safetensors`.
fn commit_w(store: &Store, opts: CommitOptions, data: &[u8]) -> cairn::CommitId {
    let mut b = CommitBuilder::new(store, opts);
    b.add_tensors(
        "model.safetensors",
        vec![TensorInput {
            name: "w".into(),
            dtype: DType::F32,
            shape: vec![data.len() as u64 / 4],
            data: data.to_vec(),
        }],
        None,
    )
    .unwrap();
    b.commit().unwrap().commit
}

/// With `--delta-base parent`, a tensor at the end of a delta chain reads back through one
/// buffer (root decoded, each delta applied over it, only the end result hashed); a damaged link
/// is still named.
#[test]
fn a_delta_chain_reads_back_and_a_damaged_base_is_named() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let store = Store::init(&root).unwrap();
    // 3 MiB of f32: several chunks, the last one short.
    let versions = moving_weights(5, 3 << 18, 4);
    let mut heads = Vec::new();
    for data in &versions {
        let opts = CommitOptions {
            delta_base: DeltaBase::Parent,
            ..Default::default()
        };
        heads.push(commit_w(&store, opts, data));
    }
    let tensor = tensor_w(&store, heads[3]);
    assert!(tensor.segment.chunks.len() > 1);
    // Every chunk of the last commit is three deltas deep, all byte planes.
    let first = tensor.segment.chunks[0].id;
    let mut chain = vec![first];
    while let Some(b) = store
        .chunk_loc(*chain.last().unwrap())
        .unwrap()
        .unwrap()
        .base
    {
        chain.push(b);
    }
    assert_eq!(chain.len(), 4, "{chain:?}");
    for c in &chain[..3] {
        let loc = store.chunk_loc(*c).unwrap().unwrap();
        assert_eq!(loc.encoding, cairn::codec::Encoding::DeltaPlanes, "{loc:?}");
    }

    for (head, want) in heads.iter().zip(&versions) {
        let tensor = tensor_w(&store, *head);
        assert!(read::read_tensor(&store, &tensor).unwrap() == *want);
        let mut buf = vec![0xEEu8; want.len()];
        read::read_tensor_into(&store, &tensor, &mut buf).unwrap();
        assert!(buf == *want);
    }
    let mut short = vec![0u8; versions[3].len() - 4];
    let err = read::read_tensor_into(&store, &tensor, &mut short).unwrap_err();
    assert!(err.to_string().contains("the buffer has"), "{err}");
    drop(store);

    // Damage the chain's root (the first commit's chunk): reading the newest commit fails and
    // names the root, not the chunk asked for.
    let victim = *chain.last().unwrap();
    damage_chunk(&root, victim);
    let store = Store::open(&root).unwrap();
    let err = read::read_tensor(&store, &tensor).unwrap_err().to_string();
    assert!(err.contains(&victim.to_string()), "{err}");
    assert!(!err.contains(&first.to_string()), "{err}");
    // Chunks whose chains do not run through the damaged one still read.
    let other = tensor.segment.chunks[1].id;
    assert_eq!(
        store.read_chunk(other).unwrap().len() as u64,
        tensor.segment.chunks[1].len
    );
}

/// The default delta base is the root of the parent chunk's chain: over K = 4 versions the
/// depth counts 0, 1, 2, 3 and restarts at 0, every delta's base is the group's standalone root
/// (so a read decodes at most two chunks), and every version reads back, through the library and
/// through `cairn checkout`. A damaged root is named when a delta of its group is read.
#[test]
fn deltas_are_coded_against_the_chains_root_by_default() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let store = Store::init(&root).unwrap();
    let versions = moving_weights(6, 3 << 18, 6);
    let mut heads = Vec::new();
    let mut roots = Vec::new();
    for (step, want_depth) in [0u32, 1, 2, 3, 0, 1].into_iter().enumerate() {
        let head = commit_w(&store, CommitOptions::default(), &versions[step]);
        let tensor = tensor_w(&store, head);
        assert!(tensor.segment.chunks.len() > 1);
        let ids: Vec<_> = tensor.segment.chunks.iter().map(|c| c.id).collect();
        if want_depth == 0 {
            roots = ids.clone();
        }
        for (c, r) in ids.iter().zip(&roots) {
            let loc = store.chunk_loc(*c).unwrap().unwrap();
            assert_eq!(loc.depth, want_depth, "step {step}: {loc:?}");
            if want_depth == 0 {
                assert_eq!(loc.base, None, "step {step}: {loc:?}");
            } else {
                assert_eq!(loc.encoding, cairn::codec::Encoding::DeltaPlanes, "{loc:?}");
                assert_eq!(loc.base, Some(*r), "step {step}: the base is the root");
                let base = store.chunk_loc(*r).unwrap().unwrap();
                assert_eq!((base.depth, base.base), (0, None), "{base:?}");
            }
        }
        heads.push(head);
    }
    for (head, want) in heads.iter().zip(&versions) {
        assert!(read::read_tensor(&store, &tensor_w(&store, *head)).unwrap() == *want);
    }
    let victim = tensor_w(&store, heads[0]).segment.chunks[0].id; // the first group's root
    // Checkout of the depth-3 commit through the binary, byte for byte.
    drop(store);
    let dst = t.path().join("out");
    cairn(&root)
        .args(["checkout", &heads[3].to_string()])
        .arg(&dst)
        .assert()
        .success();
    let file = std::fs::read(dst.join("model.safetensors")).unwrap();
    assert!(file.ends_with(&versions[3]));

    // Damage the first group's root chunk: the depth-2 version fails naming it; the second
    // group, standalone from step 4 on, still reads.
    damage_chunk(&root, victim);
    let store = Store::open(&root).unwrap();
    let err = read::read_tensor(&store, &tensor_w(&store, heads[2]))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&victim.to_string()), "{err}");
    assert!(read::read_tensor(&store, &tensor_w(&store, heads[5])).unwrap() == versions[5]);
}

/// Tensor `w` of commit `head`.
fn tensor_w(store: &Store, head: cairn::CommitId) -> read::TensorRef {
    let tree = store.tree(store.commit(head).unwrap().tree).unwrap();
    read::find_tensor(&tree, "w").unwrap()
}

/// `n` f32 weights, and their bytes after each of `steps` commits of a small, deterministic
/// move of every weight (about 1e-4, an optimizer step's size): the first version unmoved.
fn moving_weights(seed: u64, n: usize, steps: usize) -> Vec<Vec<u8>> {
    let mut w: Vec<f32> = weights(seed, n)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (0..steps)
        .map(|step| {
            if step > 0 {
                for (i, x) in w.iter_mut().enumerate() {
                    *x +=
                        1e-4 * (((i as u32).wrapping_mul(2654435761) >> 16) as f32 / 65536.0 - 0.5);
                }
            }
            w.iter().flat_map(|x| x.to_le_bytes()).collect()
        })
        .collect()
}

/// `delta_depth` bounds the chains a commit writes: K = 1 never delta-codes, K = 2 alternates
/// standalone and one-delta versions; every version reads back. The CLI refuses K = 0.
#[test]
fn delta_depth_bounds_the_chains_a_commit_writes() {
    let t = tempfile::tempdir().unwrap();
    let n = 1 << 18; // 1 MiB of f32
    for (k, want_depths) in [(1u32, [0u32, 0, 0, 0, 0]), (2, [0, 1, 0, 1, 0])] {
        let store = Store::init(&t.path().join(format!("k{k}"))).unwrap();
        let mut w: Vec<f32> = weights(9, n)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        for (step, want) in want_depths.iter().enumerate() {
            for (i, x) in w.iter_mut().enumerate() {
                *x += 1e-4 * ((i + step) % 5) as f32;
            }
            let data: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            let opts = CommitOptions {
                delta_depth: Some(k),
                ..Default::default()
            };
            let id = commit_w(&store, opts, &data);
            let tree = store.tree(store.commit(id).unwrap().tree).unwrap();
            let tensor = read::find_tensor(&tree, "w").unwrap();
            for c in &tensor.segment.chunks {
                let loc = store.chunk_loc(c.id).unwrap().unwrap();
                assert_eq!(loc.depth, *want, "K = {k}, step {step}: {loc:?}");
                assert_eq!(loc.base.is_some(), *want > 0, "K = {k}, step {step}");
            }
            assert!(read::read_tensor(&store, &tensor).unwrap() == data);
        }
    }
    let store = Store::init(&t.path().join("bad")).unwrap();
    for k in [0, 33] {
        let opts = CommitOptions {
            delta_depth: Some(k),
            ..Default::default()
        };
        let mut b = CommitBuilder::new(&store, opts);
        b.add_bytes("x.bin", b"x".to_vec()).unwrap();
        let err = b.commit().unwrap_err().to_string();
        assert!(
            err.contains("delta depth") && err.contains("out of range"),
            "{err}"
        );
    }
    assert_eq!(
        store.head().unwrap(),
        None,
        "a refused commit publishes nothing"
    );

    // The same through the binary: exit status 1, the reason on stderr, nothing committed.
    let src = t.path().join("ckpt");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), b"abc").unwrap();
    let root = t.path().join("cli");
    assert!(cairn(&root).arg("init").output().unwrap().status.success());
    let out = cairn(&root)
        .args(["commit", "--delta-depth", "0"])
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("delta depth 0 is out of range"), "{err}");
    let out = cairn(&root)
        .args(["commit", "--delta-base", "grandparent"])
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown delta base \"grandparent\""), "{err}");
    assert_eq!(Store::open(&root).unwrap().head().unwrap(), None);
    cairn(&root)
        .args(["commit", "--delta-base", "parent"])
        .arg(&src)
        .assert()
        .success();
}

/// Files lent from memory (`add_tensor_slices`, `add_borrowed_bytes`) are read piece by piece
/// and never copied whole: tensors whose chunks straddle pieces, an opaque file cut by
/// content-defined chunking, and a torch archive planned from memory all come back byte for
/// byte, and equal to the same files committed from disk.
#[test]
fn borrowed_memory_inputs_round_trip() {
    use cairn::TensorSlice;
    let t = tempfile::tempdir().unwrap();
    let store = Store::init(&t.path().join("store")).unwrap();
    let a = weights(1, 700_001);
    let b = noise(2, 5);
    let c = weights(3, 3 << 20);
    let opaque = noise(4, 9 << 20);
    let torch = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch/state_dict.pt"),
    )
    .unwrap();
    let (sa, sb, sc) = ([700_001u64], [5u64], [1u64 << 20, 3]);
    let slices = [
        TensorSlice {
            name: "a",
            dtype: DType::F32,
            shape: &sa,
            data: &a,
        },
        TensorSlice {
            name: "b",
            dtype: DType::U8,
            shape: &sb,
            data: &b,
        },
        TensorSlice {
            name: "c",
            dtype: DType::F32,
            shape: &sc,
            data: &c,
        },
    ];
    let mut builder = CommitBuilder::new(&store, CommitOptions::default());
    builder
        .add_tensor_slices("m.safetensors", &slices, None)
        .unwrap();
    builder.add_borrowed_bytes("blob.bin", &opaque).unwrap();
    builder.add_borrowed_bytes("opt.pt", &torch).unwrap();
    let out = builder.commit().unwrap();
    let tree = store.tree(store.commit(out.commit).unwrap().tree).unwrap();
    assert_eq!(
        tree.files["m.safetensors"].format,
        cairn::model::object::FileFormat::Safetensors
    );
    assert_eq!(
        tree.files["opt.pt"].format,
        cairn::model::object::FileFormat::TorchZip
    );
    let dst = t.path().join("out");
    checkout(&store, out.commit, &dst).unwrap();
    assert!(std::fs::read(dst.join("blob.bin")).unwrap() == opaque);
    assert!(std::fs::read(dst.join("opt.pt")).unwrap() == torch);
    let file = std::fs::read(dst.join("m.safetensors")).unwrap();
    assert!(file.ends_with(&[a.as_slice(), &b, &c].concat()));
    // The same files from disk give the same tree.
    let mut again = CommitBuilder::new(&store, CommitOptions::default());
    again.add_dir(&dst).unwrap();
    let out2 = again.commit().unwrap();
    assert_eq!(
        store.commit(out2.commit).unwrap().tree,
        store.commit(out.commit).unwrap().tree
    );
}

/// A long-lived handle sees another handle's (or process's) commits after
/// `refresh_if_changed`, and that call does not reopen the index when nothing changed.
#[test]
fn refresh_if_changed_sees_other_writers() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let reader = Store::init(&root).unwrap();
    for i in 0..3u8 {
        let writer = Store::open(&root).unwrap();
        let mut b = CommitBuilder::new(&writer, CommitOptions::default());
        b.add_bytes("f.bin", vec![i; 10]).unwrap();
        let out = b.commit().unwrap();
        reader.refresh_if_changed().unwrap();
        assert_eq!(reader.head().unwrap(), Some(out.commit));
    }
    // Unchanged: the same view is kept.
    let before = reader.view();
    reader.refresh_if_changed().unwrap();
    assert!(std::sync::Arc::ptr_eq(&before, &reader.view()));
}

/// What BLAKE3 of the decoded chunks cannot see is checkout's writer. Faults injected into it
/// (docs/architecture.md, "Why checkout verifies by BLAKE3 alone"): the default checkout
/// catches every fault that changes the file's length (a dropped write, a shifted offset) by
/// the byte count and `fstat`; a swap of two windows keeps the length and passes it, which is
/// what the argument (one producer, one FIFO channel, one appending writer) rules out rather
/// than detects; `--paranoid` reads the file back and catches all of them. A caught fault
/// leaves no file under the name and no temporary file.
#[test]
fn checkout_writer_faults_are_caught_by_size_or_by_paranoid() {
    use read::WriteFault;
    let t = tempfile::tempdir().unwrap();
    let store = Store::init(&t.path().join("store")).unwrap();
    // Three windows: 16 + 16 + 8 MiB.
    let data = noise(31, 40 << 20);
    let mut b = CommitBuilder::new(&store, CommitOptions::default());
    b.add_bytes("big.bin", data.clone()).unwrap();
    let id = b.commit().unwrap().commit;
    let faults = [
        (WriteFault::SwapWindows(0), false),
        (WriteFault::SwapWindows(1), false),
        (WriteFault::DropWrite(0), true),
        (WriteFault::DropWrite(2), true),
        (WriteFault::ShiftOffset(1, 4096), true),
        (WriteFault::ShiftOffset(2, -1), true),
    ];
    for (i, (fault, default_catches)) in faults.into_iter().enumerate() {
        for paranoid in [false, true] {
            let dst = t.path().join(format!("out-{i}-{paranoid}"));
            let opts = CheckoutOptions {
                paranoid,
                inject: Some(fault),
                ..Default::default()
            };
            let got = read::checkout(&store, id, &dst, &opts, &cairn::ops::progress::NoProgress);
            let what = format!("{fault:?}, paranoid {paranoid}");
            if paranoid || default_catches {
                let e = got.expect_err(&what).to_string();
                assert!(
                    e.starts_with("big.bin: ") && (e.contains("SHA-256") || e.contains("restored")),
                    "{what}: {e}"
                );
                let left: Vec<_> = std::fs::read_dir(&dst)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                assert!(left.is_empty(), "{what}: left {left:?}");
            } else {
                // Not caught by default, and a real fault: the bytes differ, the length not.
                got.expect(&what);
                let back = std::fs::read(dst.join("big.bin")).unwrap();
                assert_eq!(back.len(), data.len(), "{what}");
                assert!(back != data, "{what}: the fault changed nothing");
            }
        }
    }
    // Without a fault both ways restore the bytes.
    let dst = t.path().join("clean");
    checkout(&store, id, &dst).unwrap();
    assert!(std::fs::read(dst.join("big.bin")).unwrap() == data);
}
