//! Naming commits: `cairn branch`, `cairn switch`, `cairn tag` and `cairn reflog`. Every ref
//! move is a compare-and-swap against the value read just before, so two writers cannot both
//! create or move the same ref.

use super::{author, open};
use crate::args::{BranchArgs, ReflogArgs, SwitchArgs, TagArgs};
use crate::render::{out, print_json, short_hex};
use anyhow::{Result, anyhow, bail};
use cairn::storage::refs::ReflogEntry;
use cairn::{Store, ops::inspect, ops::rev, storage::refs};
use std::path::Path;

pub fn branch(cli_store: Option<&Path>, a: BranchArgs) -> Result<()> {
    let store = open(cli_store)?;
    match a.name {
        None => list_branches(&store, a.json),
        Some(n) => create_branch(&store, n, a.rev.as_deref(), a.json),
    }
}

fn list_branches(store: &Store, json: bool) -> Result<()> {
    let cur = store.current_branch()?;
    let list = store.branches()?;
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|(n, id)| serde_json::json!({"name": n, "commit": id.to_hex(), "current": *n == cur}))
            .collect();
        print_json(&v)?;
    } else {
        // A new store's current branch has no commit, so it is not among the refs yet.
        if !list.iter().any(|(n, _)| *n == cur) {
            out!("* {cur} (no commits yet)");
        }
        for (n, id) in list {
            out!("{} {n} {}", if n == cur { "*" } else { " " }, id.short());
        }
    }
    Ok(())
}

fn create_branch(store: &Store, n: String, rev: Option<&str>, json: bool) -> Result<()> {
    let full = refs::branch_ref(&n)?;
    let target = rev::resolve(store, rev.unwrap_or("HEAD"))?;
    if let Some(at) = store.get_ref(&full)? {
        return Err(cairn::StoreError::RefExists {
            name: n,
            at: at.short(),
        }
        .into());
    }
    store.update_ref(&full, None, target, &author(None), "branch", "")?;
    if json {
        print_json(&serde_json::json!({"name": n, "commit": target.to_hex()}))?;
    } else {
        out!("branch {n} at {}", target.short());
    }
    Ok(())
}

pub fn switch(cli_store: Option<&Path>, a: SwitchArgs) -> Result<()> {
    let store = open(cli_store)?;
    store.switch(&a.branch, &author(None))?;
    out!("switched to branch {}", a.branch);
    Ok(())
}

pub fn tag(cli_store: Option<&Path>, a: TagArgs) -> Result<()> {
    let store = open(cli_store)?;
    match a.name {
        None => list_tags(&store, a.json),
        Some(n) => set_tag(&store, &n, a.rev.as_deref(), a.move_, a.json),
    }
}

fn list_tags(store: &Store, json: bool) -> Result<()> {
    let list = store.tags()?;
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|(n, id)| serde_json::json!({"name": n, "commit": id.to_hex()}))
            .collect();
        print_json(&v)?;
    } else {
        for (n, id) in list {
            out!("{n} {}", id.short());
        }
    }
    Ok(())
}

/// Creates tag `n`, or with `move_` moves it; either way the swap expects the target read here.
fn set_tag(store: &Store, n: &str, rev: Option<&str>, move_: bool, json: bool) -> Result<()> {
    let full = refs::tag_ref(n)?;
    let target = rev::resolve(store, rev.unwrap_or("HEAD"))?;
    let current = store.get_ref(&full)?;
    match (current, move_) {
        (Some(at), false) => {
            return Err(anyhow!(
                "tag {n} already exists (at {}); use --move to move it",
                at.short()
            ));
        }
        (None, true) => bail!("tag {n} does not exist; create it without --move"),
        _ => {}
    }
    store.update_ref(
        &full,
        current,
        target,
        &author(None),
        if move_ { "tag-move" } else { "tag" },
        "",
    )?;
    if json {
        print_json(
            &serde_json::json!({"name": n, "commit": target.to_hex(), "previous": current.map(|c| c.to_hex())}),
        )?;
    } else {
        out!("tag {n} at {}", target.short());
    }
    Ok(())
}

pub fn reflog(cli_store: Option<&Path>, a: ReflogArgs) -> Result<()> {
    let store = open(cli_store)?;
    let full = match a.name.as_deref() {
        None => None,
        Some(n) => Some(full_ref_name(&store, n)?),
    };
    let entries = store.reflog(full.as_deref())?;
    if a.json {
        print_json(&entries)?;
    } else {
        for e in &entries {
            print_reflog_line(e)?;
        }
    }
    Ok(())
}

/// `HEAD` and `refs/...` as given; a bare name is the branch, unless only a tag has it (a name
/// that is neither is looked up as a branch).
fn full_ref_name(store: &Store, n: &str) -> Result<String> {
    if n == "HEAD" || n.starts_with("refs/") {
        return Ok(n.to_string());
    }
    let b = format!("{}{n}", refs::HEADS);
    let t = format!("{}{n}", refs::TAGS);
    Ok(
        if store.get_ref(&b)?.is_some() || store.get_ref(&t)?.is_none() {
            b
        } else {
            t
        },
    )
}

fn print_reflog_line(e: &ReflogEntry) -> Result<()> {
    out!(
        "{}  {:<24} {} -> {}  {} by {}{}",
        inspect::format_time(e.time_ns),
        e.name,
        e.old.as_deref().map_or_else(|| "-".to_string(), short_hex),
        e.new.as_deref().map_or_else(|| "-".to_string(), short_hex),
        e.action,
        e.who,
        if e.message.is_empty() {
            String::new()
        } else {
            format!(": {}", e.message)
        }
    );
    Ok(())
}
