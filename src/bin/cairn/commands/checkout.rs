//! Getting data out of a commit: `cairn checkout` (all files into a directory), `cairn cat`
//! (one file to stdout) and `cairn tensor` (one tensor to a .npy or .safetensors file).
//! None of them moves HEAD.

use super::open;
use crate::args::{CatArgs, CheckoutArgs, TensorArgs};
use crate::render::{human, out, print_json, progress};
use anyhow::{Result, anyhow};
use cairn::ops::inspect::CommitInfo;
use cairn::ops::read::{self, CheckoutOptions};
use cairn::ops::rev;
use std::io::Write;
use std::path::Path;

pub fn checkout(cli_store: Option<&Path>, a: CheckoutArgs) -> Result<()> {
    let store = open(cli_store)?;
    let id = rev::resolve(&store, &a.rev)?;
    let p = progress();
    let out = read::checkout(
        &store,
        id,
        &a.dir,
        &CheckoutOptions {
            force: a.force,
            partial: a.partial,
            paranoid: a.paranoid,
            ..Default::default()
        },
        p.as_ref(),
    )?;
    if !out.released.is_empty() && !a.json {
        eprintln!("released by gc, not restored: {}", out.released.join(", "));
    }
    if let Some(m) = &a.meta {
        let info = CommitInfo::new(&store, id, &store.commit(id)?);
        let bytes = serde_json::to_vec_pretty(&info)?;
        cairn::ops::export::write_file_atomic(m, &[&bytes, b"\n"])?;
    }
    if a.json {
        print_json(&out)?;
    } else {
        out!(
            "checked out {} into {}: {} files, {} (verified{})",
            id.short(),
            a.dir.display(),
            out.files,
            human(out.bytes),
            if a.paranoid {
                ", read back: SHA-256"
            } else {
                ""
            }
        );
    }
    Ok(())
}

pub fn cat(cli_store: Option<&Path>, a: CatArgs) -> Result<()> {
    let store = open(cli_store)?;
    let spec = &a.spec;
    let (r, path) = spec
        .split_once(':')
        .ok_or_else(|| anyhow!("{spec:?}: expected REV:PATH"))?;
    let id = rev::resolve(&store, r)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, crate::render::stdout());
    read::cat(&store, id, path, &mut out, a.paranoid)?;
    out.flush()?;
    Ok(())
}

pub fn tensor(cli_store: Option<&Path>, a: TensorArgs) -> Result<()> {
    let store = open(cli_store)?;
    let id = rev::resolve(&store, &a.rev)?;
    let format = cairn::ops::export::TensorFormat::from_path(&a.output)?;
    let tree = store.tree(store.commit(id)?.tree)?;
    let t = read::find_tensor(&tree, &a.name)?;
    cairn::storage::state::check_file_not_released(&store, id, &t.file)?;
    let (tname, dtype, shape) = t.segment.tensor().expect("find_tensor returns tensors");
    let prefix = cairn::ops::export::tensor_prefix(format, tname, dtype, shape)?;
    let data = read::read_tensor(&store, &t)?;
    cairn::ops::export::write_file_atomic(&a.output, &[&prefix, &data])?;
    if a.json {
        print_json(&serde_json::json!({
            "file": t.file, "name": tname, "dtype": dtype.to_string(), "shape": shape,
            "bytes": data.len(), "output": a.output,
        }))?;
    } else {
        out!(
            "{}:{} {} {:?} -> {} ({})",
            t.file,
            tname,
            dtype,
            shape,
            a.output.display(),
            human(data.len() as u64)
        );
    }
    Ok(())
}
