//! Deduplication: an unchanged checkpoint adds no chunks; one changed tensor adds only itself
//! plus at most one chunk per file; `stats` reports both exactly.

use crate::common::*;
use cairn::ops::inspect::stats;
use cairn::{CommitBuilder, CommitOptions, DType, Store};

fn commit_dir(store: &Store, dir: &std::path::Path) -> cairn::CommitOutcome {
    let mut b = CommitBuilder::new(store, CommitOptions::default());
    b.add_dir(dir).unwrap();
    b.commit().unwrap()
}

#[test]
fn unchanged_recommit_adds_no_chunks() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("ckpt");
    checkpoint(&src, 3);
    let store = Store::init(&t.path().join("store")).unwrap();
    let first = commit_dir(&store, &src);
    let before = stats(&store).unwrap();
    let again = commit_dir(&store, &src);
    let after = stats(&store).unwrap();
    assert_eq!(again.new_chunks, 0);
    assert_eq!(again.parent, Some(first.commit));
    assert_eq!(again.tree, first.tree, "same files, same tree id");
    assert!(
        again.stored_bytes_added * 100 <= again.logical_bytes,
        "{} bytes added for {} logical",
        again.stored_bytes_added,
        again.logical_bytes
    );
    // stats agrees exactly with what the commit reported.
    assert_eq!(after.chunks, before.chunks);
    assert_eq!(
        after.pack_bytes - before.pack_bytes,
        again.stored_bytes_added
    );
    assert_eq!(
        after.logical_bytes - before.logical_bytes,
        again.logical_bytes
    );
    assert_eq!(after.commits, 2);
}

#[test]
fn one_changed_tensor_adds_only_itself() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("ckpt");
    let tensors = |changed_seed: u64| {
        vec![
            ("a", DType::F32, vec![1 << 20], weights(1, 1 << 20)), // 4 MiB
            (
                "b",
                DType::F32,
                vec![3, 1 << 19],
                weights(changed_seed, 3 << 19),
            ), // 6 MiB
            ("c", DType::BF16, vec![5000], noise(3, 10_000)),
        ]
    };
    write_st(&src.join("model.safetensors"), &tensors(2));
    std::fs::write(src.join("notes.txt"), b"hello").unwrap();
    let store = Store::init(&t.path().join("store")).unwrap();
    commit_dir(&store, &src);
    let before = stats(&store).unwrap();
    write_st(&src.join("model.safetensors"), &tensors(22));
    let out = commit_dir(&store, &src);
    let after = stats(&store).unwrap();
    let tensor_chunks = 6;
    let files = 2;
    assert!(out.new_chunks >= tensor_chunks, "{}", out.new_chunks);
    assert!(
        out.new_chunks <= tensor_chunks + files,
        "{}",
        out.new_chunks
    );
    assert!(out.new_chunk_bytes <= (6 << 20) + (1 << 20));
    assert_eq!(after.chunks - before.chunks, out.new_chunks);
    assert_eq!(
        after.unique_bytes - before.unique_bytes,
        out.new_chunk_bytes
    );
    assert_eq!(after.pack_bytes - before.pack_bytes, out.stored_bytes_added);
}

#[test]
fn a_tensor_dedups_wherever_it_sits() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::init(&t.path().join("store")).unwrap();
    let w = weights(8, 600_000);
    let d = t.path().join("one");
    write_st(
        &d.join("x.safetensors"),
        &[("w", DType::F32, vec![600_000], w.clone())],
    );
    commit_dir(&store, &d);
    // Same tensor, other file, other position, other neighbours.
    let d2 = t.path().join("two");
    write_st(
        &d2.join("y.safetensors"),
        &[
            ("pad", DType::U8, vec![1234], noise(1, 1234)),
            ("w2", DType::F32, vec![600_000], w),
        ],
    );
    let out = commit_dir(&store, &d2);
    // Only the new header chunk and the pad tensor are new.
    assert_eq!(out.new_chunks, 2, "{out:?}");
}

/// A file the same size as its parent's and not modified since the parent commit is read
/// without a SHA-256 (its chunks prove it unchanged, and the parent's digest is reused). When
/// such a file did change (its mtime was set back), the digest is computed in a checked second
/// pass: every recorded SHA-256 is the digest of exactly the stored bytes.
#[test]
fn digests_are_right_for_unchanged_files_and_for_changed_files_with_old_mtimes() {
    use sha2::{Digest, Sha256};
    let t = tempfile::tempdir().unwrap();
    let store = Store::init(&t.path().join("store")).unwrap();
    let src = t.path().join("ck");
    checkpoint(&src, 3);
    let sha_of = |p: &std::path::Path| hex::encode(Sha256::digest(std::fs::read(p).unwrap()));
    let digests = |c: cairn::CommitId| -> std::collections::BTreeMap<String, String> {
        cairn::ops::inspect::show(&store, c)
            .unwrap()
            .files
            .into_iter()
            .map(|f| (f.path, f.sha256))
            .collect()
    };
    let first = commit_dir(&store, &src);
    // Unchanged: the same digests, taken from the parent.
    let again = commit_dir(&store, &src);
    assert_eq!(again.new_chunks, 0);
    assert_eq!(digests(again.commit), digests(first.commit));
    // Same size, new content, mtime set back before the parent commit.
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    for rel in ["optimizer.pt", "model.safetensors"] {
        let p = src.join(rel);
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x5a;
        std::fs::write(&p, &bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let changed = commit_dir(&store, &src);
    let d = digests(changed.commit);
    for rel in ["optimizer.pt", "model.safetensors", "config.json"] {
        assert_eq!(d[rel], sha_of(&src.join(rel)), "{rel}");
    }
    assert_ne!(d["optimizer.pt"], digests(first.commit)["optimizer.pt"]);
    // Checkout verifies every file against its recorded digest.
    checks_out_as(&store, changed.commit, &t.path().join("out"), &src);
}

/// Check `commit` out into `out` (every file verified against its recorded size and SHA-256)
/// and compare the result with `src`, byte for byte.
fn checks_out_as(
    store: &Store,
    commit: cairn::CommitId,
    out: &std::path::Path,
    src: &std::path::Path,
) {
    cairn::ops::read::checkout(
        store,
        commit,
        out,
        &cairn::ops::read::CheckoutOptions::default(),
        &cairn::ops::progress::NoProgress,
    )
    .unwrap();
    assert_eq!(snapshot(out), snapshot(src));
}

/// A file saved again since the parent commit (newer mtime, same size, as a training loop
/// rewrites every file of each checkpoint) whose first, middle and last chunks still match the
/// parent's is read without a SHA-256, and the parent's digest is reused when all its chunks
/// match. When it differs only elsewhere, the checked second pass computes the right digest.
#[test]
fn rewritten_files_reuse_the_parent_digest_only_when_every_chunk_matches() {
    use sha2::{Digest, Sha256};
    let t = tempfile::tempdir().unwrap();
    let store = Store::init(&t.path().join("store")).unwrap();
    let src = t.path().join("ck");
    std::fs::create_dir_all(&src).unwrap();
    // Five 1 MiB chunks of f32 weights, and a small file.
    write_st(
        &src.join("model.safetensors"),
        &[("w", DType::F32, vec![5 << 18], weights(11, 5 << 18))],
    );
    std::fs::write(src.join("config.json"), b"{\"lr\": 0.001}").unwrap();
    let first = commit_dir(&store, &src);
    assert_eq!(first.sha256_from_parent, 0);

    // Rewritten with the same bytes: new mtimes, digests from the parent, nothing new.
    std::thread::sleep(std::time::Duration::from_millis(20));
    for rel in ["model.safetensors", "config.json"] {
        let p = src.join(rel);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, &bytes).unwrap();
    }
    let again = commit_dir(&store, &src);
    assert_eq!(again.sha256_from_parent, 2, "{again:?}");
    assert_eq!(again.new_chunks, 0);

    // Rewritten with one byte changed in the second chunk (not one the probe reads).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let p = src.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let at = bytes.len() - (5 << 20) + (1 << 20) + 12345;
    bytes[at] ^= 0x01;
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, &bytes).unwrap();
    let changed = commit_dir(&store, &src);
    assert_eq!(
        changed.sha256_from_parent, 1,
        "only config.json: {changed:?}"
    );
    assert!(changed.new_chunks >= 1);
    let shown = cairn::ops::inspect::show(&store, changed.commit).unwrap();
    let model = shown
        .files
        .iter()
        .find(|f| f.path == "model.safetensors")
        .unwrap();
    assert_eq!(model.sha256, hex::encode(Sha256::digest(&bytes)));
    checks_out_as(&store, changed.commit, &t.path().join("out"), &src);
}
