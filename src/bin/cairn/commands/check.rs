//! Checking and repairing: `cairn verify` (re-read one commit and record the result),
//! `cairn fsck` (the whole store) and `cairn repair` (rebuild the index, or heal damaged
//! chunks from good copies of the files). Problems found fail the command.

use super::{open, store_path};
use crate::args::{FsckArgs, RepairArgs, VerifyArgs};
use crate::render::{human, out, print_json, progress};
use anyhow::{Result, anyhow, bail};
use cairn::ops::fsck::FsckReport;
use cairn::{Store, ops::rev};
use std::path::Path;

pub fn verify(cli_store: Option<&Path>, a: VerifyArgs) -> Result<()> {
    let store = open(cli_store)?;
    let id = rev::resolve(&store, &a.rev)?;
    let p = progress();
    let rec = cairn::ops::verify::verify_commit(&store, id, p.as_ref())?;
    cairn::ops::verify::update_state(&store, id, |st| st.verify = Some(rec.clone()))?;
    if a.json {
        print_json(&rec)?;
    } else if rec.ok {
        out!(
            "verified {}: {} files, {} intact",
            id.short(),
            rec.files,
            human(rec.bytes)
        );
    }
    if !rec.ok {
        for p in &rec.problems {
            eprintln!("  {p}");
        }
        bail!(
            "commit {} FAILED verification: {} problem(s)",
            id.short(),
            rec.problems.len()
        );
    }
    Ok(())
}

pub fn fsck(cli_store: Option<&Path>, a: FsckArgs) -> Result<()> {
    if let Some(name) = &a.remote {
        return super::remote::fsck_remote(cli_store, name, a.read_data, a.json);
    }
    let store = open(cli_store)?;
    let subset = a
        .read_data_subset
        .as_deref()
        .map(parse_subset)
        .transpose()?;
    let p = progress();
    let rep = cairn::ops::fsck::fsck(
        &store,
        &cairn::ops::fsck::FsckOptions {
            read_data: a.read_data || subset.is_some(),
            subset,
        },
        p.as_ref(),
    )?;
    if a.json {
        print_json(&rep)?;
    } else {
        print_fsck(&rep)?;
    }
    if !rep.ok() {
        bail!("fsck found {} problem(s)", rep.problems.len());
    }
    if !a.json {
        out!("no problems found");
    }
    Ok(())
}

/// `--read-data-subset I/N`, 1-based.
fn parse_subset(x: &str) -> Result<(u64, u64)> {
    x.split_once('/')
        .and_then(|(i, n)| Some((i.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
        .filter(|(i, n)| *n >= 1 && *i >= 1 && i <= n)
        .ok_or_else(|| anyhow!("--read-data-subset {x:?}: expected I/N with 1 <= I <= N"))
}

fn print_fsck(rep: &FsckReport) -> Result<()> {
    out!(
        "{} refs, {} commits, {} trees, {} chunks referenced, {} indexed, {} packs; {} chunks re-hashed ({})",
        rep.refs,
        rep.commits,
        rep.trees,
        rep.chunks_referenced,
        rep.chunks_indexed,
        rep.packs,
        rep.chunks_read,
        human(rep.bytes_read)
    );
    if rep.chunks_remote > 0 {
        out!(
            "{} referenced chunks are only on the remote (lazy clone; `cairn fsck --remote` checks them)",
            rep.chunks_remote
        );
    }
    for pr in &rep.problems {
        out!(
            "{}: {}{}: {}",
            pr.kind,
            pr.subject,
            pr.pack
                .as_deref()
                .map(|p| format!(" (pack {p})"))
                .unwrap_or_default(),
            pr.detail
        );
    }
    Ok(())
}

/// Finds the store without opening it: `--rebuild-index` must work when the index is what
/// is broken.
pub fn repair(cli_store: Option<&Path>, a: RepairArgs) -> Result<()> {
    if !a.rebuild_index && a.from.is_none() {
        bail!("repair needs --rebuild-index or --from PATH");
    }
    let root = store_path(cli_store)?;
    // With both, --json prints one document holding both outcomes.
    let both = a.rebuild_index && a.from.is_some();
    // How each prints: text, its own JSON document, or nothing (printed together below).
    let mode = match (a.json, both) {
        (false, _) => Some(false),
        (true, false) => Some(true),
        (true, true) => None,
    };
    let rebuilt = if a.rebuild_index {
        Some(rebuild_index(&root, mode)?)
    } else {
        None
    };
    let healed = match &a.from {
        Some(path) => Some(heal_from(&root, path, mode)?),
        None => None,
    };
    if a.json && both {
        print_json(&serde_json::json!({"rebuild": rebuilt, "heal": {"healed": healed}}))?;
    }
    Ok(())
}

/// `json`: `Some(true)` prints JSON, `Some(false)` text, `None` nothing.
fn rebuild_index(root: &Path, json: Option<bool>) -> Result<cairn::ops::repair::RebuildOutcome> {
    if !root.join(cairn::storage::store::MARKER).is_file() {
        return Err(cairn::StoreError::NotAStore {
            path: root.to_path_buf(),
        }
        .into());
    }
    let out = cairn::ops::repair::rebuild_index(root)?;
    if json == Some(true) {
        print_json(&out)?;
    } else if json == Some(false) {
        out!(
            "rebuilt the index: {} packs, {} chunks, {} objects, {} commits, {} refs, {} commit states{}",
            out.packs,
            out.chunks,
            out.objects,
            out.commits,
            out.refs,
            out.states,
            out.old_index
                .as_deref()
                .map(|o| format!("; previous index kept at {o}"))
                .unwrap_or_default()
        );
        for p in &out.skipped_packs {
            out!("skipped damaged pack {}: {}", p.id, p.error);
        }
        for c in &out.damaged_commits {
            out!("left out damaged commit {}: {}", c.id, c.error);
        }
    }
    Ok(out)
}

/// `json` as for [`rebuild_index`].
fn heal_from(root: &Path, path: &Path, json: Option<bool>) -> Result<u64> {
    let store = Store::open(root)?;
    let healed = cairn::ops::commit::heal_from(&store, path)?;
    if json == Some(true) {
        print_json(&serde_json::json!({"healed": healed}))?;
    } else if json == Some(false) {
        out!("healed {healed} damaged chunk(s) from {}", path.display());
    }
    Ok(healed as u64)
}
