//! Read-only reports on commits and the store: `cairn show` (one commit), `cairn diff` (two
//! commits, per file and per tensor) and `cairn stats` (the whole store).

use super::open;
use crate::args::{DiffArgs, ShowArgs, StatsArgs};
use crate::render::{human, out, print_json};
use anyhow::Result;
use cairn::ops::diff::{DiffOutcome, Status};
use cairn::ops::inspect::{self, CommitInfo, ShowInfo};
use cairn::ops::provenance::Resume;
use cairn::ops::rev;
use cairn::ops::verify::CommitState;
use std::path::Path;

pub fn show(cli_store: Option<&Path>, a: ShowArgs) -> Result<()> {
    let store = open(cli_store)?;
    let id = rev::resolve(&store, &a.rev)?;
    let info = inspect::show(&store, id)?;
    if a.json {
        print_json(&info)?;
    } else {
        print_show(&info)?;
    }
    Ok(())
}

pub fn diff(cli_store: Option<&Path>, a: DiffArgs) -> Result<()> {
    let store = open(cli_store)?;
    let ia = rev::resolve(&store, &a.a)?;
    let ib = rev::resolve(&store, &a.b)?;
    let d = cairn::ops::diff::diff(&store, ia, ib)?;
    if a.json {
        print_json(&d)?;
    } else {
        print_diff(&d)?;
    }
    Ok(())
}

pub fn stats(cli_store: Option<&Path>, a: StatsArgs) -> Result<()> {
    let store = open(cli_store)?;
    let st = inspect::stats(&store)?;
    if a.json {
        print_json(&st)?;
        return Ok(());
    }
    out!("commits        {}", st.commits);
    out!("branches/tags  {}/{}", st.branches, st.tags);
    out!(
        "logical        {} ({} bytes)",
        human(st.logical_bytes),
        st.logical_bytes
    );
    out!("unique chunks  {} ({})", st.chunks, human(st.unique_bytes));
    out!("chunks stored  {}", human(st.chunk_stored_bytes));
    out!(
        "packs          {} ({} on disk)",
        st.packs,
        human(st.pack_bytes)
    );
    out!("dedup          {:.2}x", st.dedup_ratio);
    out!("compression    {:.2}x", st.compression_ratio);
    out!(
        "overall        {:.2}x smaller than plain copies",
        st.total_ratio
    );
    Ok(())
}

fn print_show(info: &ShowInfo) -> Result<()> {
    print_commit(&info.commit)?;
    print_state(&info.state)?;
    print_resume(&info.resume)?;
    print_files(info)
}

fn print_commit(c: &CommitInfo) -> Result<()> {
    out!("commit {}", c.id);
    out!("uri    {}", c.uri);
    for p in &c.parents {
        out!("parent {p}");
    }
    out!("date   {}", c.time);
    out!("author {}", c.author);
    if let Some(r) = &c.run_id {
        out!("run    {r}");
    }
    if let Some(s) = c.step {
        out!("step   {s}");
    }
    if let Some(e) = c.epoch {
        out!("epoch  {e}");
    }
    for (k, v) in &c.metrics {
        out!("metric {k} = {v}");
    }
    for (k, v) in &c.params {
        out!("param  {k} = {v}");
    }
    if let Some(cfg) = &c.config {
        out!("config {cfg}");
    }
    if let Some(g) = &c.git {
        out!(
            "git    {}{}{}",
            g.commit,
            g.branch
                .as_deref()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default(),
            if g.dirty { " dirty" } else { "" }
        );
    }
    for d in &c.datasets {
        out!("data   {} {}", d.name, d.fingerprint);
    }
    if !c.message.is_empty() {
        out!();
        for line in c.message.lines() {
            out!("    {line}");
        }
        out!();
    }
    Ok(())
}

/// What happened to the commit after it was made: verification, load test, gc.
fn print_state(state: &CommitState) -> Result<()> {
    if let Some(v) = &state.verify {
        out!(
            "verify {} at {}{}",
            if v.ok { "ok" } else { "FAILED (unverified)" },
            inspect::format_time(v.time_ns),
            if v.problems.is_empty() {
                String::new()
            } else {
                format!(": {}", v.problems.join("; "))
            }
        );
    }
    if let Some(c) = &state.check {
        out!(
            "check  {} `{}` exited {} at {}",
            if c.ok { "passed" } else { "FAILED" },
            c.command,
            c.exit_code.map_or("by signal".into(), |x| x.to_string()),
            inspect::format_time(c.time_ns)
        );
    }
    if let Some(p) = &state.pruned {
        out!(
            "{} by gc at {} ({}){}",
            if p.released.is_empty() {
                "PRUNED"
            } else {
                "SLIMMED"
            },
            inspect::format_time(p.time_ns),
            p.reason,
            if p.released.is_empty() {
                String::new()
            } else {
                format!(": released {}", p.released.join(", "))
            }
        );
    }
    Ok(())
}

fn print_resume(r: &Resume) -> Result<()> {
    let parts: Vec<String> = r
        .parts
        .iter()
        .map(|(k, v)| format!("{k} {}", if v.is_empty() { "missing" } else { "present" }))
        .collect();
    out!(
        "resume {}: {}",
        if r.resumable {
            "resumable".to_string()
        } else {
            format!("not resumable (missing {})", r.missing.join(", "))
        },
        parts.join(", ")
    );
    Ok(())
}

fn print_files(info: &ShowInfo) -> Result<()> {
    out!(
        "{} files, {} logical, {} stored ({} new vs parent), {} unique chunks",
        info.files.len(),
        human(info.logical_bytes),
        human(info.stored_bytes),
        human(info.stored_bytes_new_vs_parent),
        info.unique_chunks
    );
    for f in &info.files {
        out!(
            "  {}  {}  {}  {}",
            f.path,
            human(f.size),
            f.format,
            &f.sha256
        );
        for t in &f.tensors {
            out!(
                "      {} {} {:?} {}",
                t.name,
                t.dtype,
                t.shape,
                human(t.bytes)
            );
        }
    }
    Ok(())
}

fn print_diff(d: &DiffOutcome) -> Result<()> {
    for f in &d.files {
        let tag = match f.status {
            Status::Added => "A",
            Status::Removed => "D",
            Status::Changed => "M",
            Status::Unchanged => "=",
            Status::Unknown => "?",
        };
        out!("{tag} {}", f.path);
        for t in &f.tensors {
            match t.status {
                Status::Unchanged | Status::Unknown => {}
                Status::Added => out!("    + {}", t.name),
                Status::Removed => out!("    - {}", t.name),
                Status::Changed => {
                    if let Some(l) = &t.layout_change {
                        out!("    ~ {}  {l}", t.name);
                    } else {
                        out!(
                            "    ~ {}  max|Δ|={}  relL2={}  changed={}",
                            t.name,
                            t.max_abs_delta.map_or("-".into(), |v| format!("{v:.3e}")),
                            t.rel_l2.map_or("-".into(), |v| format!("{v:.3e}")),
                            t.frac_changed
                                .map_or("-".into(), |v| format!("{:.2}%", v * 100.0)),
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
