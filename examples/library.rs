//! Using cairn as a library: commit tensors from memory (also in the background, as a training
//! loop would), walk the log, read one tensor lazily, diff, and check out.
//!
//! Run: `cargo run --example library`

use cairn::ops::read::{self, CheckoutOptions};
use cairn::{
    AsyncCommitter, CommitBuilder, CommitOptions, DType, Store, TensorInput, TensorSlice,
    ops::inspect, ops::rev,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile_dir()?;
    let store = Store::init(&dir.join("store"))?;

    // Two checkpoints of a tiny model, straight from memory.
    let mut w: Vec<f32> = (0..4096).map(|i| (i as f32).sin() * 0.02).collect();
    for step in [100u64, 200] {
        let mut opts = CommitOptions {
            message: format!("step {step}"),
            author: "example@cairn".into(),
            ..Default::default()
        };
        opts.meta.step = Some(step);
        opts.meta
            .metrics
            .insert("val_loss".into(), 1.0 / step as f64);
        let mut c = CommitBuilder::new(&store, opts);
        c.add_tensors(
            "model.safetensors",
            vec![TensorInput {
                name: "w".into(),
                dtype: DType::F32,
                shape: vec![64, 64],
                data: w.iter().flat_map(|x| x.to_le_bytes()).collect(),
            }],
            None,
        )?;
        c.add_bytes(
            "trainer_state.json",
            format!("{{\"global_step\": {step}}}").into_bytes(),
        )?;
        let out = c.commit()?;
        println!(
            "committed {} ({} new chunks)",
            out.commit.short(),
            out.new_chunks
        );
        w.iter_mut().take(64).for_each(|x| *x += 0.001);
    }

    // A training loop commits in the background: the call returns once the tensors are
    // copied, and the handle reports the outcome later.
    let store = std::sync::Arc::new(store);
    let committer = AsyncCommitter::new(store.clone())?;
    let mut c = committer.begin(CommitOptions {
        message: "step 300".into(),
        ..Default::default()
    })?;
    c.add_tensors(
        "model.safetensors",
        &[TensorSlice {
            name: "w",
            dtype: DType::F32,
            shape: &[64, 64],
            data: bytemuck::cast_slice(&w),
        }],
        None,
    )?;
    c.add_bytes("trainer_state.json", b"{\"global_step\": 300}")?;
    let handle = c.submit();
    w.iter_mut().for_each(|x| *x *= 0.5); // training goes on; the commit has its own copy
    println!(
        "committed {} in the background",
        handle.wait()?.commit.short()
    );

    // Walk history.
    let head = rev::resolve(&store, "HEAD")?;
    for (id, c) in inspect::log(&store, head, None)? {
        println!(
            "{} {} val_loss={:?}",
            id.short(),
            c.message,
            c.meta.metrics.get("val_loss")
        );
    }

    // Read one tensor without touching anything else.
    let tree = store.tree(store.commit(head)?.tree)?;
    let t = read::find_tensor(&tree, "w")?;
    let bytes = read::read_tensor(&store, &t)?;
    println!(
        "w: {} bytes, first value {}",
        bytes.len(),
        f32::from_le_bytes(bytes[..4].try_into()?)
    );
    // Or into memory the program already has (a model's parameter buffer): no fresh pages.
    let mut param = vec![0u8; bytes.len()];
    read::read_tensor_into(&store, &t, &mut param)?;
    assert_eq!(param, bytes);

    // Diff the two checkpoints.
    let parent = rev::resolve(&store, "HEAD~2")?;
    for f in cairn::ops::diff::diff(&store, parent, head)?.files {
        for t in f.tensors {
            println!(
                "{}:{} {:?} max|d|={:?}",
                f.path, t.name, t.status, t.max_abs_delta
            );
        }
    }

    // Check out the first checkpoint, verified byte for byte.
    let out = read::checkout(
        &store,
        parent,
        &dir.join("restored"),
        &CheckoutOptions::default(),
        &cairn::ops::progress::NoProgress,
    )?;
    println!("checked out {} files into {}", out.files, out.dir.display());
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("cairn-example-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
