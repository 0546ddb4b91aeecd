//! `cairn log` (a branch's history, or a catalog query with `--where`, `--sort` or `--all`)
//! and `cairn runs` (commits grouped by run id).

use super::open;
use crate::args::{LogArgs, RunsArgs};
use crate::render::{out, print_json, short_hex};
use anyhow::{Result, bail};
use cairn::model::object::Commit;
use cairn::ops::inspect::{self, CommitInfo};
use cairn::{CommitId, Store, ops::rev};
use std::path::Path;

pub fn log(cli_store: Option<&Path>, a: LogArgs) -> Result<()> {
    if !a.conds.is_empty() || a.sort.is_some() || a.all {
        query(cli_store, a)
    } else {
        history(cli_store, a)
    }
}

/// The catalog's path: any commit in the store can match, not only first parents.
fn query(cli_store: Option<&Path>, a: LogArgs) -> Result<()> {
    let store = open(cli_store)?;
    let query = cairn::ops::catalog::Query {
        conds: a
            .conds
            .iter()
            .map(|c| cairn::ops::catalog::parse_cond(c))
            .collect::<Result<_, _>>()?,
        sort: a.sort.as_deref().map(cairn::ops::catalog::SortKey::parse),
        limit: a.limit,
        branches: Default::default(),
    };
    let mut query = query;
    if query.uses("branch") {
        query.branches = cairn::ops::catalog::branch_membership(&store)?;
    }
    let rows = if a.all {
        store.view().commit_rows()?
    } else {
        let start = match a.rev {
            Some(r) => Some(rev::resolve(&store, &r)?),
            None => store.head()?,
        };
        match start {
            Some(st) => cairn::ops::catalog::history_rows(&store, st)?,
            None => Vec::new(),
        }
    };
    let hits = cairn::ops::catalog::run(&query, rows);
    if a.json {
        let mut v = Vec::new();
        for (id, _) in &hits {
            v.push(CommitInfo::new(&store, *id, &store.commit(*id)?));
        }
        print_json(&v)?;
    } else {
        for (id, _) in &hits {
            print_log_line(id, &store.commit(*id)?)?;
        }
    }
    Ok(())
}

/// First-parent history from REV or HEAD. An empty branch is not an error: `--json` prints
/// an empty list, text mode says so on stderr.
fn history(cli_store: Option<&Path>, a: LogArgs) -> Result<()> {
    let store = open(cli_store)?;
    let start = match a.rev {
        Some(r) => rev::resolve(&store, &r)?,
        None => match store.head()? {
            Some(h) => h,
            None => return print_empty_branch(&store, a.json),
        },
    };
    // A damaged or missing commit ends the history: what came before it is still shown, then
    // the error names it.
    let (entries, broken) = inspect::log_partial(&store, start, a.limit);
    if a.json {
        let v: Vec<CommitInfo> = entries
            .iter()
            .map(|(id, c)| CommitInfo::new(&store, *id, c))
            .collect();
        print_json(&v)?;
    } else {
        for (id, c) in &entries {
            print_log_line(id, c)?;
        }
    }
    if let Some((id, e)) = broken {
        return Err(anyhow::Error::new(e).context(format!(
            "commit {id} cannot be read; the history above ends at it (`cairn fsck` checks the store, `cairn repair` heals what it can)"
        )));
    }
    Ok(())
}

fn print_empty_branch(store: &Store, json: bool) -> Result<()> {
    if json {
        out!("[]");
    } else {
        eprintln!("branch {} has no commits yet", store.current_branch()?);
    }
    Ok(())
}

fn print_log_line(id: &CommitId, c: &Commit) -> Result<()> {
    let mut facts = Vec::new();
    if let Some(s) = c.meta.step {
        facts.push(format!("step {s}"));
    }
    if let Some(e) = c.meta.epoch {
        facts.push(format!("epoch {e}"));
    }
    for (k, v) in &c.meta.metrics {
        facts.push(format!("{k}={v}"));
    }
    out!(
        "{}  {}  {}{}",
        id.short(),
        inspect::format_time(c.time_ns),
        c.message.lines().next().unwrap_or(""),
        if facts.is_empty() {
            String::new()
        } else {
            format!("  [{}]", facts.join(", "))
        }
    );
    Ok(())
}

pub fn runs(cli_store: Option<&Path>, a: RunsArgs) -> Result<()> {
    let store = open(cli_store)?;
    let (metric, maximize) = metric_direction(a.metric.as_deref())?;
    let runs = cairn::ops::catalog::runs(&store.view().commit_rows()?, metric.as_deref(), maximize);
    if a.json {
        print_json(&runs)?;
    } else {
        for r in runs {
            out!(
                "{:<20} {:>5} commits  {} .. {}  {}",
                r.run_id,
                r.commits,
                inspect::format_time(r.first_ns),
                inspect::format_time(r.last_ns),
                match (&r.metric, r.best, &r.best_commit) {
                    (Some(m), Some(b), Some(c)) => format!("best {m}={b} at {}", short_hex(c)),
                    _ => "no metric".into(),
                }
            );
        }
    }
    Ok(())
}

/// `--metric METRIC[:min|max]` as (metric, maximize). Not `cairn::ops::gc::parse_keep_improving`:
/// that one requires the direction, refuses an empty metric, and words its errors for
/// `--keep-improving`.
fn metric_direction(metric: Option<&str>) -> Result<(Option<String>, bool)> {
    Ok(
        match metric.map(|x| x.split_once(':').unwrap_or((x, "min"))) {
            Some((m, d)) if d == "min" || d == "max" => (Some(m.to_string()), d == "max"),
            Some((_, d)) => bail!("--metric: direction {d:?} must be min or max"),
            None => (None, false),
        },
    )
}
