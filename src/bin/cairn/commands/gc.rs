//! Reclaiming space: `cairn gc` builds the plan from retention rules (flags, or the stored
//! policy with `--policy`), prints it with `--dry-run` or executes exactly that plan; and
//! `cairn retention` shows, sets or clears the policy applied after every commit.

use super::open;
use crate::args::{GcArgs, RetentionCmd};
use crate::render::{human, out, print_json, short_hex};
use anyhow::{Result, anyhow, bail};
use cairn::Store;
use cairn::ops::gc::{Decision, GcOutcome, Plan, Retention};
use std::path::Path;

pub fn gc(cli_store: Option<&Path>, a: GcArgs) -> Result<()> {
    let store = open(cli_store)?;
    let opts = cairn::ops::gc::GcOptions {
        retention: rules(&store, &a)?,
        branches: a.branch.clone(),
        all: a.all,
        repack_threshold: Some(repack_threshold(a.repack_threshold)?),
        now_ns: None,
    };
    let out = cairn::ops::gc::gc(&store, &opts, a.dry_run)?;
    if a.json {
        print_json(&out)?;
        return Ok(());
    }
    print_plan(&out.plan)?;
    print_done(&out)
}

/// The rules: the stored policy with `--policy`, else none; then the flags, which replace the
/// policy's single-valued rules and add to its lists.
fn rules(store: &Store, a: &GcArgs) -> Result<Retention> {
    let mut r = if a.policy {
        cairn::ops::gc::stored_policy(store)?.ok_or_else(|| {
            anyhow!("--policy: no retention policy is stored (cairn retention set ...)")
        })?
    } else {
        Retention::default()
    };
    if a.keep_last.is_some() {
        r.keep_last = a.keep_last;
    }
    for kb in &a.keep_best {
        r.keep_best.push(cairn::ops::gc::parse_keep_best(kb)?);
    }
    for ki in &a.keep_improving {
        r.keep_improving
            .push(cairn::ops::gc::parse_keep_improving(ki)?);
    }
    if let Some(n) = a.keep_every {
        if n == 0 {
            bail!("--keep-every 0: must be at least 1");
        }
        r.keep_every = Some(n);
    }
    if let Some(w) = &a.keep_within {
        r.keep_within_ns = Some(cairn::ops::gc::parse_duration_ns(w)?);
    }
    r.slim.extend(a.slim.iter().cloned());
    if a.slim_keep_last.is_some() {
        r.slim_keep_last = a.slim_keep_last;
    }
    Ok(r)
}

fn repack_threshold(t: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&t) {
        bail!("--repack-threshold {}: must be between 0 and 1", t);
    }
    Ok(t)
}

fn print_plan(p: &Plan) -> Result<()> {
    out!(
        "policy: {}   branches: {}",
        if p.policy.is_empty() {
            "(none: only unreferenced data)"
        } else {
            &p.policy
        },
        p.branches.join(", ")
    );
    for c in &p.commits {
        let what = match c.decision {
            Decision::Keep => "keep ",
            Decision::Prune => "PRUNE",
            Decision::Slim => "SLIM ",
            Decision::AlreadyPruned => "pruned",
        };
        out!(
            "{what} {} {:>10} {}{}",
            short_hex(&c.id),
            c.step.map(|s| format!("step {s}")).unwrap_or_default(),
            c.reasons.join("; "),
            if c.frees_bytes > 0 {
                format!("  frees {}", human(c.frees_bytes))
            } else {
                String::new()
            }
        );
    }
    out!(
        "{} dead chunks ({}), {} of them delta bases freed by re-encoding {} chunks ({}) on their own; {} packs to delete, {} to repack, {} leftover files",
        p.dead_chunks,
        human(p.dead_bytes),
        p.kept_as_delta_base,
        p.reencode_chunks,
        human(p.reencode_bytes),
        p.delete_packs.len(),
        p.repack_packs.len(),
        p.orphan_files.len()
    );
    Ok(())
}

fn print_done(out: &GcOutcome) -> Result<()> {
    if out.dry_run {
        out!("dry run: nothing changed");
        return Ok(());
    }
    out!(
        "{}: removed {} chunks, re-encoded {}, deleted {} files, repacked {} packs{}; packs {} -> {} (reclaimed {})",
        out.mode,
        out.chunks_removed,
        out.chunks_reencoded,
        out.packs_deleted,
        out.packs_repacked,
        if out.packs_doomed > 0 {
            format!(
                ", {} packs left for a later run (readers active)",
                out.packs_doomed
            )
        } else {
            String::new()
        },
        human(out.disk_bytes_before),
        human(out.disk_bytes_after),
        human(out.disk_bytes_before.saturating_sub(out.disk_bytes_after))
    );
    Ok(())
}

pub fn retention(cli_store: Option<&Path>, cmd: RetentionCmd) -> Result<()> {
    let store = open(cli_store)?;
    match cmd {
        RetentionCmd::Show => match cairn::ops::gc::stored_policy(&store)? {
            Some(r) => out!("{}", r.to_text()),
            None => out!("no retention policy"),
        },
        RetentionCmd::Set { policy } => {
            let r = Retention::parse(&policy)?;
            if !r.prunes() && r.slim.is_empty() {
                bail!("retention policy {policy:?} has no rule");
            }
            cairn::ops::gc::set_policy(&store, Some(&r))?;
            out!("retention policy: {}", r.to_text());
        }
        RetentionCmd::Clear => {
            cairn::ops::gc::set_policy(&store, None)?;
            out!("retention policy cleared");
        }
    }
    Ok(())
}
