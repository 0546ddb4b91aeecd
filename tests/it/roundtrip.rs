//! Checkpoints come back byte for byte: every dtype, empty and 0-rank tensors, nested and empty
//! directories, opaque files, in-memory tensors, one tensor read alone.

use crate::common::*;
use cairn::read::{self, CheckoutOptions};
use cairn::{CommitBuilder, CommitOptions, DType, Store, TensorInput};

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
    read::checkout(
        &store,
        out.commit,
        &dst,
        &CheckoutOptions::default(),
        &cairn::progress::NoProgress,
    )
    .unwrap();
    assert_eq!(snapshot(&src), snapshot(&dst));
    assert!(dst.join("logs/empty_dir").is_dir());
    // The safetensors file was understood, tensor by tensor.
    let tree = store.tree(store.commit(out.commit).unwrap().tree).unwrap();
    let f = &tree.files["model.safetensors"];
    assert_eq!(f.format, cairn::object::FileFormat::Safetensors);
    assert_eq!(f.tensors().count(), DType::ALL.len() + 3);
    assert_eq!(
        tree.files["optimizer.pt"].format,
        cairn::object::FileFormat::Opaque
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
    let e = read::checkout(
        &store,
        out.commit,
        &dst,
        &CheckoutOptions::default(),
        &cairn::progress::NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("chunk") && e.contains("corrupt"), "{e}");
    assert!(
        !dst.join("blob.bin").exists(),
        "no file appears with wrong bytes"
    );
}
