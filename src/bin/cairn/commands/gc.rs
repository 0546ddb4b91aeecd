//! Reclaiming space: `cairn gc` builds the plan from retention rules (flags, or the stored
//! policy with `--policy`), prints it with `--dry-run` or executes exactly that plan; and
//! `cairn retention` shows, sets or clears the policy applied after every commit.

use super::open;
use crate::args::{GcArgs, RetentionCmd};
use crate::render::{human, out, print_json, short_hex};
use anyhow::{Result, anyhow, bail};
use cairn::Store;
use cairn::ops::gc::{Decision, GcOutcome, Plan, Retention, RunState};
use std::path::Path;

pub fn gc(cli_store: Option<&Path>, a: GcArgs) -> Result<()> {
    if let Some(branch) = &a.run_policy {
        return run_policy(cli_store, branch);
    }
    let store = open(cli_store)?;
    if a.status {
        return status(&store, &a);
    }
    if !(a.wait.is_finite() && a.wait >= 0.0) {
        bail!("--wait {}: must be a number of seconds, 0 or more", a.wait);
    }
    let opts = cairn::ops::gc::GcOptions {
        retention: rules(&store, &a)?,
        branches: a.branch.clone(),
        all: a.all,
        repack_threshold: Some(repack_threshold(a.repack_threshold)?),
        wait_for_writers: Some(std::time::Duration::from_secs_f64(a.wait.min(1e9))),
        copy_hook: commit_during_copy(&store),
        ..Default::default()
    };
    let out = cairn::ops::gc::gc(&store, &opts, a.dry_run)?;
    if a.json {
        print_json(&out)?;
        return Ok(());
    }
    print_plan(&out.plan)?;
    print_done(&out)
}

/// Tests only (the crash simulation of gc beside a commit): with `CAIRN_TEST_GC_COMMIT_DURING_COPY`
/// set to a directory, gc commits it, in this process, when its copy phase starts, and notes
/// in the crash log when that commit is published.
fn commit_during_copy(store: &Store) -> Option<cairn::ops::gc::CopyHook> {
    let dir = std::env::var_os("CAIRN_TEST_GC_COMMIT_DURING_COPY")?;
    let root = store.root().to_path_buf();
    Some(cairn::ops::gc::CopyHook(std::sync::Arc::new(move || {
        let store = Store::open(&root).expect("the store opens again");
        let mut b = cairn::CommitBuilder::new(&store, cairn::CommitOptions::default());
        b.add_dir(std::path::Path::new(&dir))
            .expect("the test's directory reads");
        b.commit().expect("the commit during gc's copy succeeds");
        cairn::storage::crashsim::note("commit-published");
    })))
}

/// The detached run a commit started (`--run-policy BRANCH`, with `--store ROOT`): claim the
/// run first, then say so on stdout, where the commit waits for one line before it exits (so a
/// `gc --status --wait-idle` right after the commit sees this run); then run, with the outcome
/// going to the status record only.
fn run_policy(cli_store: Option<&Path>, branch: &str) -> Result<()> {
    use std::io::Write;
    let root = cli_store.ok_or_else(|| anyhow!("--run-policy needs --store"))?;
    let claim = cairn::ops::gc::claim_policy_run(root)?;
    {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(
            o,
            "{}",
            if claim.is_some() {
                "claimed"
            } else {
                "covered"
            }
        );
        let _ = o.flush();
    }
    let Some(claim) = claim else {
        return Ok(());
    };
    let store = open(Some(root))?;
    let trigger = format!("policy after commit on {branch}");
    cairn::ops::gc::run_policy_claimed(&store, claim, branch, &trigger)?;
    Ok(())
}

/// `cairn gc --status`: the last run on record and whether one runs now.
fn status(store: &Store, a: &GcArgs) -> Result<()> {
    if a.wait_idle && !cairn::ops::gc::wait_idle(store, std::time::Duration::from_secs(3600))? {
        bail!("a gc was still running or waiting after an hour");
    }
    let st = cairn::ops::gc::status(store)?;
    if a.json {
        return print_json(&st);
    }
    let Some(r) = &st.last else {
        out!(
            "no gc has run{}",
            if st.running {
                " to the end yet (one is running)"
            } else {
                ""
            }
        );
        return Ok(());
    };
    let state = match r.state {
        RunState::Running => "running",
        RunState::Finished => "finished",
        RunState::Failed => "FAILED",
        RunState::Interrupted => "interrupted (its process is gone; the next gc finishes its work)",
    };
    out!(
        "last gc: {state}; {} (pid {}), branches {}, policy {}",
        r.trigger,
        r.pid,
        r.branches.join(", "),
        if r.policy.is_empty() {
            "(none)"
        } else {
            &r.policy
        }
    );
    let secs = |a: i64, b: i64| (b - a) as f64 / 1e9;
    if let Some(end) = r.finished_ns {
        out!(
            "took {:.2} s, ended {}; {}: pruned {} commits, removed {} chunks, kept {} alive for commits made meanwhile, freed {}; commits waited at most {:.0} ms",
            secs(r.started_ns, end),
            cairn::model::time::format_time(end),
            r.mode.as_deref().unwrap_or("-"),
            r.pruned,
            r.chunks_removed,
            r.chunks_kept_alive,
            human(r.bytes_freed),
            r.writers_excluded_ms
        );
    }
    if let Some(e) = &r.error {
        out!("error: {e}");
    }
    if st.running && r.state != RunState::Running {
        out!("a gc is running now");
    }
    Ok(())
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
    if out.chunks_kept_alive > 0 {
        out!(
            "{} chunks kept: commits made while gc ran reuse them",
            out.chunks_kept_alive
        );
    }
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
