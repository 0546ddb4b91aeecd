//! Async commit (`cairn::ops::commit::async_commit`): the copy is the caller's only cost, the background
//! commit is the ordinary write path (same bytes, same tree as a synchronous commit), commits in
//! flight chain their parents in submission order, and a failed one publishes nothing.

use crate::common::*;
use cairn::ops::commit::CommitError;
use cairn::ops::commit::async_commit::{AsyncCommitter, AsyncOptions, TensorSlice};
use cairn::ops::fsck::{FsckOptions, fsck};
use cairn::ops::progress::NoProgress;
use cairn::ops::provenance::ProvenanceError;
use cairn::ops::read::{self, CheckoutOptions};
use cairn::{CommitBuilder, CommitOptions, DType, Store, TensorInput};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

fn new_store(dir: &Path) -> Arc<Store> {
    Arc::new(Store::init(&dir.join("store")).unwrap())
}

fn opts(step: u64) -> CommitOptions {
    let mut o = CommitOptions {
        message: format!("step {step}"),
        author: "test@cairn".into(),
        ..Default::default()
    };
    o.meta.step = Some(step);
    o
}

/// A committer with `slots` commits in flight.
fn with_slots(store: &Arc<Store>, slots: usize) -> AsyncCommitter {
    AsyncCommitter::with_options(
        store.clone(),
        AsyncOptions {
            max_in_flight: slots,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The one tensor `w` these tests commit.
fn w_slice<'a>(dtype: DType, shape: &'a [u64], data: &'a [u8]) -> TensorSlice<'a> {
    TensorSlice {
        name: "w",
        dtype,
        shape,
        data,
    }
}

fn fsck_ok(store: &Store) {
    let r = fsck(
        store,
        &FsckOptions {
            read_data: true,
            subset: None,
        },
        &NoProgress,
    )
    .unwrap();
    assert!(r.ok(), "{:?}", r.problems);
}

fn stored_tensor(store: &Store, commit: cairn::CommitId, spec: &str) -> Vec<u8> {
    let tree = store.tree(store.commit(commit).unwrap().tree).unwrap();
    read::read_tensor(store, &read::find_tensor(&tree, spec).unwrap()).unwrap()
}

#[test]
fn async_commit_checks_out_bit_for_bit_and_equals_a_sync_commit() {
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let w = weights(1, 64 * 1000);
    let h = noise(2, 2 * 3000);
    let ids = noise(3, 8 * 15);
    let config = br#"{"dim": 64}"#.to_vec();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let committer = AsyncCommitter::new(store.clone()).unwrap();
    let mut c = committer.begin(opts(1)).unwrap();
    c.add_tensors(
        "model.safetensors",
        &[
            TensorSlice {
                name: "w",
                dtype: DType::F32,
                shape: &[64, 1000],
                data: &w,
            },
            TensorSlice {
                name: "h",
                dtype: DType::BF16,
                shape: &[3000],
                data: &h,
            },
            TensorSlice {
                name: "ids",
                dtype: DType::I64,
                shape: &[3, 5],
                data: &ids,
            },
        ],
        Some(&meta),
    )
    .unwrap();
    c.add_bytes("config.json", &config).unwrap();
    let out = c.submit().wait().unwrap();
    assert_eq!(store.head().unwrap(), Some(out.commit));
    assert_eq!(out.parent, None);
    assert_eq!(out.files, 2);

    // The same content through the synchronous builder gives the same tree.
    let mut b = CommitBuilder::new(&store, opts(1));
    b.options_mut().branch = Some("sync".into());
    b.add_tensors(
        "model.safetensors",
        vec![
            TensorInput {
                name: "w".into(),
                dtype: DType::F32,
                shape: vec![64, 1000],
                data: w.clone(),
            },
            TensorInput {
                name: "h".into(),
                dtype: DType::BF16,
                shape: vec![3000],
                data: h.clone(),
            },
            TensorInput {
                name: "ids".into(),
                dtype: DType::I64,
                shape: vec![3, 5],
                data: ids.clone(),
            },
        ],
        Some(&meta),
    )
    .unwrap();
    b.add_bytes("config.json", config.clone()).unwrap();
    let sync = b.commit().unwrap();
    assert_eq!(sync.tree, out.tree);

    // Checkout gives the safetensors file and the bytes back exactly.
    let dst = t.path().join("out");
    read::checkout(
        &store,
        out.commit,
        &dst,
        &CheckoutOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let files = snapshot(&dst);
    assert_eq!(files["config.json"], config);
    let specs = vec![
        ("w".to_string(), DType::F32, vec![64, 1000]),
        ("h".to_string(), DType::BF16, vec![3000]),
        ("ids".to_string(), DType::I64, vec![3, 5]),
    ];
    let mut want = cairn::formats::safetensors::serialize_header(&specs, Some(&meta)).unwrap();
    for d in [&w, &h, &ids] {
        want.extend_from_slice(d);
    }
    assert_eq!(files["model.safetensors"], want);
    assert_eq!(stored_tensor(&store, out.commit, "w"), w);
    fsck_ok(&store);
}

#[test]
fn the_caller_may_overwrite_its_buffer_as_soon_as_the_call_returns() {
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let committer = AsyncCommitter::new(store.clone()).unwrap();
    let original = weights(7, 4 << 20); // 16 MiB: the background work outlasts the overwrite
    let mut live = original.clone();
    let mut c = committer.begin(opts(1)).unwrap();
    c.add_tensors(
        "model.safetensors",
        &[w_slice(DType::F32, &[4 << 20], &live)],
        None,
    )
    .unwrap();
    // The training loop moves on at once: before the submit and while the commit runs.
    live.fill(0xAB);
    let before = cairn::storage::store::now_ns();
    let handle = c.submit();
    let after = cairn::storage::store::now_ns();
    live.fill(0xCD);
    drop(live);
    let out = handle.wait().unwrap();
    assert_eq!(stored_tensor(&store, out.commit, "w"), original);
    // The commit is stamped when its state was captured, not when the worker wrote it.
    let time = store.commit(out.commit).unwrap().time_ns;
    assert!(before <= time && time <= after, "{before} {time} {after}");
}

#[test]
fn commits_in_flight_publish_in_submission_order_and_chain_parents() {
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let committer = with_slots(&store, 3);
    let mut w = weights(11, 256 << 10);
    let mut handles = Vec::new();
    let mut inputs = Vec::new();
    for step in 1..=5u64 {
        w[step as usize * 4] ^= 0x55; // a training step changes a few weights
        handles.push(
            committer
                .commit_tensors(
                    opts(step),
                    "model.safetensors",
                    &[w_slice(DType::F32, &[256 << 10], &w)],
                    None,
                )
                .unwrap(),
        );
        inputs.push(w.clone());
    }
    // Waiting out of order changes nothing: the worker runs them in submission order.
    let mut outs: Vec<_> = handles
        .into_iter()
        .rev()
        .map(|h| h.wait().unwrap())
        .collect();
    outs.reverse();
    let mut parent = None;
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(out.parent, parent, "commit {i}");
        assert!(!out.reparented, "commit {i}");
        assert_eq!(
            store.commit(out.commit).unwrap().meta.step,
            Some(i as u64 + 1)
        );
        assert_eq!(stored_tensor(&store, out.commit, "w"), inputs[i]);
        parent = Some(out.commit);
    }
    assert_eq!(store.head().unwrap(), parent);
    // The later commits were delta-coded or deduplicated against their parents as usual.
    assert!(outs[4].reused_chunks > 0 || outs[4].stored_bytes_added < (1 << 20));
    fsck_ok(&store);
}

#[test]
fn a_new_commit_waits_for_a_free_slot() {
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let committer = AsyncCommitter::new(store.clone()).unwrap();
    let held = committer.begin(opts(1)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let committer = &committer;
        s.spawn(move || {
            let c = committer.begin(opts(2)).unwrap();
            tx.send(()).unwrap();
            drop(c);
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the only slot is taken, begin must wait"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("the slot came back");
    });
    assert_eq!(store.head().unwrap(), None, "nothing was submitted");
}

#[test]
fn a_failed_background_commit_leaves_the_branch_and_the_store_as_they_were() {
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let committer = AsyncCommitter::new(store.clone()).unwrap();
    let w = weights(5, 1 << 16);
    let tensors = [w_slice(DType::F32, &[1 << 16], &w)];
    let first = committer
        .commit_tensors(opts(1), "model.safetensors", &tensors, None)
        .unwrap()
        .wait()
        .unwrap();

    // A trainer_state.json that is not JSON: copied fine, refused by the background commit.
    let mut c = committer.begin(opts(2)).unwrap();
    c.add_tensors("model.safetensors", &tensors, None).unwrap();
    c.add_bytes("trainer_state.json", b"{ not json").unwrap();
    let e = c.submit().wait().unwrap_err();
    assert!(
        matches!(&e, CommitError::Provenance(ProvenanceError::BadTrainerState { path, .. }) if path == "trainer_state.json"),
        "{e}"
    );
    assert_eq!(store.head().unwrap(), Some(first.commit));

    // A branch name the ref rules refuse: also found only in the background.
    let mut bad = opts(3);
    bad.branch = Some("bad..name".into());
    let e = committer
        .commit_tensors(bad, "model.safetensors", &tensors, None)
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(e, CommitError::Ref(_)), "{e}");
    assert_eq!(store.head().unwrap(), Some(first.commit));
    assert_eq!(store.branches().unwrap().len(), 1);
    let moves = store.reflog(None).unwrap();
    assert_eq!(moves.len(), 1, "only the first commit moved a ref");
    fsck_ok(&store);

    // The committer carries on; the next commit's parent is the last published one.
    let next = committer
        .commit_tensors(opts(4), "model.safetensors", &tensors, None)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(next.parent, Some(first.commit));
}

#[test]
fn bad_tensors_are_refused_before_the_copy_and_free_the_slot() {
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let committer = AsyncCommitter::new(store.clone()).unwrap();
    let mut c = committer.begin(opts(1)).unwrap();
    let e = c
        .add_tensors(
            "model.safetensors",
            &[w_slice(DType::F32, &[10], &[0u8; 39])],
            None,
        )
        .unwrap_err();
    assert!(matches!(&e, CommitError::TensorLength { path, .. } if path == "model.safetensors:w"));
    let e = c.add_bytes("../escape", b"x").unwrap_err();
    assert!(matches!(e, CommitError::Path(_)));
    drop(c);
    // With one slot, this would wait forever had the dropped commit kept it.
    let out = committer
        .commit_tensors(
            opts(2),
            "model.safetensors",
            &[w_slice(DType::F32, &[10], &[0u8; 40])],
            None,
        )
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(store.head().unwrap(), Some(out.commit));
}

#[test]
fn a_dropped_handle_still_commits_and_dropping_the_committer_waits() {
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let committer = with_slots(&store, 2);
    let w = weights(9, 1 << 20);
    for step in 1..=2 {
        let h = committer
            .commit_tensors(
                opts(step),
                "model.safetensors",
                &[w_slice(DType::F32, &[1 << 20], &w)],
                None,
            )
            .unwrap();
        drop(h);
    }
    drop(committer);
    let head = store.head().unwrap().expect("both commits published");
    let c = store.commit(head).unwrap();
    assert_eq!(c.meta.step, Some(2));
    assert_eq!(store.commit(c.parents[0]).unwrap().meta.step, Some(1));
}

#[test]
fn flush_waits_for_every_submitted_commit() {
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let committer = with_slots(&store, 2);
    let w = weights(10, 1 << 20);
    let handles: Vec<_> = (1..=2)
        .map(|step| {
            committer
                .commit_tensors(
                    opts(step),
                    "m.safetensors",
                    &[w_slice(DType::F32, &[1 << 20], &w)],
                    None,
                )
                .unwrap()
        })
        .collect();
    committer.flush();
    assert!(handles.iter().all(|h| h.is_finished()));
    let last = handles.into_iter().map(|h| h.wait().unwrap()).last();
    assert_eq!(store.head().unwrap(), last.map(|o| o.commit));
}

/// A write that fails late (ENOSPC while writing or fsyncing packs, after the copy and the
/// plan) fails the handle with the I/O error and publishes nothing.
#[test]
fn a_full_disk_fails_the_handle_and_publishes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let fs = crate::disk_full::LoopFs::new(t.path(), 48);
    let store = Arc::new(Store::init(&fs.mnt.join("store")).unwrap());
    let committer = AsyncCommitter::new(store.clone()).unwrap();
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..20u64 {
        let data = noise(100 + i, 6 << 20);
        let h = committer
            .commit_tensors(
                opts(i),
                "model.safetensors",
                &[w_slice(DType::U8, &[6 << 20], &data)],
                None,
            )
            .unwrap();
        match h.wait() {
            Ok(out) => acked.push((out.commit, data)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let e = failure.expect("the disk never filled");
    assert!(e.to_string().contains("No space left on device"), "{e}");
    assert!(acked.len() >= 2, "only {} commits fit", acked.len());
    let (last, data) = acked.last().unwrap();
    assert_eq!(store.head().unwrap(), Some(*last));
    fsck_ok(&store);
    assert_eq!(stored_tensor(&store, *last, "w"), *data);
}
