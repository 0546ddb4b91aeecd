//! Unit tests of the async committer: the gate, slot buffer reuse, the encoding pool.

use super::*;

fn store() -> (tempfile::TempDir, Arc<Store>) {
    let t = tempfile::tempdir().expect("temp dir");
    let s = Store::init(&t.path().join("s")).expect("init");
    (t, Arc::new(s))
}

fn slice<'a>(name: &'a str, shape: &'a [u64], data: &'a [u8]) -> TensorSlice<'a> {
    TensorSlice {
        name,
        dtype: DType::U8,
        shape,
        data,
    }
}

/// A background commit waits at the gate while a copy holds it closed, and finishes once
/// the copy is done; with `pause_for_copies` off there is no gate.
#[test]
fn a_background_commit_pauses_while_a_copy_runs() {
    let (_t, store) = store();
    let opts = AsyncOptions {
        max_in_flight: 2,
        ..Default::default()
    };
    let c = AsyncCommitter::with_options(store.clone(), opts).expect("committer");
    let gate = c.gate.clone().expect("pausing is the default");
    let data = vec![7u8; 3 << 20];
    let mut ac = c.begin(CommitOptions::default()).expect("begin");
    ac.add_tensors("a.safetensors", &[slice("a", &[3 << 20], &data)], None)
        .expect("add");
    // As `add_tensors` of the next commit would, while this one runs.
    let copying = gate.close();
    let handle = ac.submit();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !handle.is_finished(),
        "the commit went on while the gate was closed"
    );
    assert_eq!(store.head().expect("head"), None);
    drop(copying);
    let out = handle
        .wait()
        .expect("the commit finishes once the gate opens");
    assert_eq!(store.head().expect("head"), Some(out.commit));

    let off = AsyncOptions {
        pause_for_copies: false,
        ..Default::default()
    };
    let c = AsyncCommitter::with_options(store, off).expect("committer");
    assert!(c.gate.is_none());
}

#[test]
fn a_slot_reuses_its_buffers_in_file_order() {
    let (_t, store) = store();
    let c = AsyncCommitter::new(store).expect("committer");
    let a = vec![1u8; 4096];
    let b = vec![2u8; 100];
    let mut ac = c.begin(CommitOptions::default()).expect("begin");
    ac.add_tensors("a.safetensors", &[slice("a", &[4096], &a)], None)
        .expect("add a");
    ac.add_bytes("b.bin", &b).expect("add b");
    let ptrs: Vec<*const u8> = ac.files.iter().map(|(_, f)| f.as_ptr()).collect();
    ac.submit().wait().expect("commit");
    let mut ac = c.begin(CommitOptions::default()).expect("begin again");
    ac.add_tensors("a.safetensors", &[slice("a", &[4096], &a)], None)
        .expect("add a");
    ac.add_bytes("b.bin", &b).expect("add b");
    let again: Vec<*const u8> = ac.files.iter().map(|(_, f)| f.as_ptr()).collect();
    assert_eq!(ptrs, again);
    ac.submit().wait().expect("commit again");
}

#[test]
fn without_keep_buffers_each_commit_allocates() {
    let (_t, store) = store();
    let c = AsyncCommitter::with_options(
        store,
        AsyncOptions {
            keep_buffers: false,
            ..Default::default()
        },
    )
    .expect("committer");
    c.commit_tensors(
        CommitOptions::default(),
        "a.safetensors",
        &[slice("a", &[3], b"abc")],
        None,
    )
    .expect("submit")
    .wait()
    .expect("commit");
    let ac = c.begin(CommitOptions::default()).expect("begin");
    assert!(ac.spare.is_empty());
}

#[test]
fn a_pool_of_its_own_commits_the_same_tree() {
    let (_t, store) = store();
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut trees = Vec::new();
    for threads in [None, Some(1)] {
        let c = AsyncCommitter::with_options(
            store.clone(),
            AsyncOptions {
                threads,
                ..Default::default()
            },
        )
        .expect("committer");
        let out = c
            .commit_tensors(
                CommitOptions::default(),
                "a.safetensors",
                &[slice("a", &[3 << 20], &data)],
                None,
            )
            .expect("submit")
            .wait()
            .expect("commit");
        trees.push(out.tree);
    }
    assert_eq!(trees[0], trees[1]);
}

#[test]
fn zero_slots_is_refused() {
    let (_t, store) = store();
    let r = AsyncCommitter::with_options(
        store,
        AsyncOptions {
            max_in_flight: 0,
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(CommitError::ZeroInFlight)));
}
