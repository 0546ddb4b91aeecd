//! The `cairn` command: flags → options → one library call → outcome → text or `--json`.

mod args;
mod commands;
mod render;

use anyhow::{Result, anyhow, bail};
use args::*;
use cairn::inspect::{self, CommitInfo};
use cairn::read::{self, CheckoutOptions};
use cairn::{Store, refs, rev};
use clap::Parser;
use commands::{author, open, store_path};
use render::{human, out, print_json, progress};
use std::io::Write;
use std::path::PathBuf;

fn print_log_line(id: &cairn::CommitId, c: &cairn::object::Commit) -> Result<()> {
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

fn run(cli: Cli) -> Result<()> {
    let s = &cli.store;
    match cli.cmd {
        Cmd::Init(InitArgs { json }) => {
            let path = match s
                .clone()
                .or_else(|| std::env::var_os("CAIRN_STORE").map(PathBuf::from))
            {
                Some(p) => p,
                None => std::env::current_dir()?.join(cairn::store::DEFAULT_DIR),
            };
            let store = Store::init(&path)?;
            if json {
                print_json(&serde_json::json!({
                    "store": path, "store_id": store.store_id(), "branch": store.current_branch()?
                }))?;
            } else {
                out!("Initialized empty cairn store in {}", path.display());
            }
        }
        Cmd::Commit(a) => commands::commit::run(s.as_deref(), *a)?,
        Cmd::Log(LogArgs {
            rev,
            limit,
            conds,
            sort,
            all,
            json,
        }) if !conds.is_empty() || sort.is_some() || all => {
            let store = open(s.as_deref())?;
            let query = cairn::catalog::Query {
                conds: conds
                    .iter()
                    .map(|c| cairn::catalog::parse_cond(c))
                    .collect::<Result<_, _>>()?,
                sort: sort.as_deref().map(cairn::catalog::SortKey::parse),
                limit,
            };
            let rows = if all {
                store.view().commit_rows()?
            } else {
                let start = match rev {
                    Some(r) => Some(rev::resolve(&store, &r)?),
                    None => store.head()?,
                };
                match start {
                    Some(st) => cairn::catalog::history_rows(&store, st)?,
                    None => Vec::new(),
                }
            };
            let hits = cairn::catalog::run(&query, rows);
            if json {
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
        }
        Cmd::Log(LogArgs {
            rev, limit, json, ..
        }) => {
            let store = open(s.as_deref())?;
            let start = match rev {
                Some(r) => rev::resolve(&store, &r)?,
                None => match store.head()? {
                    Some(h) => h,
                    None => {
                        if json {
                            out!("[]");
                        } else {
                            eprintln!("branch {} has no commits yet", store.current_branch()?);
                        }
                        return Ok(());
                    }
                },
            };
            let entries = inspect::log(&store, start, limit)?;
            if json {
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
        }
        Cmd::Show(ShowArgs { rev, json }) => {
            let store = open(s.as_deref())?;
            let id = rev::resolve(&store, &rev)?;
            let info = inspect::show(&store, id)?;
            if json {
                print_json(&info)?;
            } else {
                print_show(&info)?;
            }
        }
        Cmd::Diff(DiffArgs { a, b, json }) => {
            let store = open(s.as_deref())?;
            let ia = rev::resolve(&store, &a)?;
            let ib = rev::resolve(&store, &b)?;
            let d = cairn::diff::diff(&store, ia, ib)?;
            if json {
                print_json(&d)?;
            } else {
                print_diff(&d)?;
            }
        }
        Cmd::Checkout(CheckoutArgs {
            rev,
            dir,
            force,
            meta,
            partial,
            json,
        }) => {
            let store = open(s.as_deref())?;
            let id = rev::resolve(&store, &rev)?;
            let p = progress();
            let out = read::checkout(
                &store,
                id,
                &dir,
                &CheckoutOptions { force, partial },
                p.as_ref(),
            )?;
            if !out.released.is_empty() && !json {
                eprintln!("released by gc, not restored: {}", out.released.join(", "));
            }
            if let Some(m) = &meta {
                let info = CommitInfo::new(&store, id, &store.commit(id)?);
                let bytes = serde_json::to_vec_pretty(&info)?;
                cairn::export::write_file_atomic(m, &[&bytes, b"\n"])?;
            }
            if json {
                print_json(&out)?;
            } else {
                out!(
                    "checked out {} into {}: {} files, {} (verified)",
                    id.short(),
                    dir.display(),
                    out.files,
                    human(out.bytes)
                );
            }
        }
        Cmd::Cat(CatArgs { spec }) => {
            let store = open(s.as_deref())?;
            let (r, path) = spec
                .split_once(':')
                .ok_or_else(|| anyhow!("{spec:?}: expected REV:PATH"))?;
            let id = rev::resolve(&store, r)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
            read::cat(&store, id, path, &mut out)?;
            out.flush()?;
        }
        Cmd::Tensor(TensorArgs {
            rev,
            name,
            output,
            json,
        }) => {
            let store = open(s.as_deref())?;
            let id = rev::resolve(&store, &rev)?;
            let format = cairn::export::TensorFormat::from_path(&output)?;
            let tree = store.tree(store.commit(id)?.tree)?;
            let t = read::find_tensor(&tree, &name)?;
            let (tname, dtype, shape) = t.segment.tensor().expect("find_tensor returns tensors");
            let prefix = cairn::export::tensor_prefix(format, tname, dtype, shape)?;
            let data = read::read_tensor(&store, &t)?;
            cairn::export::write_file_atomic(&output, &[&prefix, &data])?;
            if json {
                print_json(&serde_json::json!({
                    "file": t.file, "name": tname, "dtype": dtype.to_string(), "shape": shape,
                    "bytes": data.len(), "output": output,
                }))?;
            } else {
                out!(
                    "{}:{} {} {:?} -> {} ({})",
                    t.file,
                    tname,
                    dtype,
                    shape,
                    output.display(),
                    human(data.len() as u64)
                );
            }
        }
        Cmd::Branch(BranchArgs { name, rev, json }) => {
            let store = open(s.as_deref())?;
            match name {
                None => {
                    let cur = store.current_branch()?;
                    let list = store.branches()?;
                    if json {
                        let v: Vec<_> = list
                            .iter()
                            .map(|(n, id)| serde_json::json!({"name": n, "commit": id.to_hex(), "current": *n == cur}))
                            .collect();
                        print_json(&v)?;
                    } else {
                        if !list.iter().any(|(n, _)| *n == cur) {
                            out!("* {cur} (no commits yet)");
                        }
                        for (n, id) in list {
                            out!("{} {n} {}", if n == cur { "*" } else { " " }, id.short());
                        }
                    }
                }
                Some(n) => {
                    let full = refs::branch_ref(&n)?;
                    let target = rev::resolve(&store, rev.as_deref().unwrap_or("HEAD"))?;
                    if let Some(at) = store.get_ref(&full)? {
                        return Err(cairn::Error::RefExists {
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
                }
            }
        }
        Cmd::Switch(SwitchArgs { branch }) => {
            let store = open(s.as_deref())?;
            store.switch(&branch, &author(None))?;
            out!("switched to branch {branch}");
        }
        Cmd::Tag(TagArgs {
            name,
            rev,
            move_,
            json,
        }) => {
            let store = open(s.as_deref())?;
            match name {
                None => {
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
                }
                Some(n) => {
                    let full = refs::tag_ref(&n)?;
                    let target = rev::resolve(&store, rev.as_deref().unwrap_or("HEAD"))?;
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
                }
            }
        }
        Cmd::Reflog(ReflogArgs { name, json }) => {
            let store = open(s.as_deref())?;
            let full = match name.as_deref() {
                None => None,
                Some("HEAD") => Some("HEAD".to_string()),
                Some(n) if n.starts_with("refs/") => Some(n.to_string()),
                Some(n) => {
                    let b = format!("{}{n}", refs::HEADS);
                    let t = format!("{}{n}", refs::TAGS);
                    if store.get_ref(&b)?.is_some() || store.get_ref(&t)?.is_none() {
                        Some(b)
                    } else {
                        Some(t)
                    }
                }
            };
            let entries = store.reflog(full.as_deref())?;
            if json {
                print_json(&entries)?;
            } else {
                for e in entries {
                    let short = |x: &Option<String>| {
                        x.as_deref()
                            .map(|v| {
                                if v.len() == 64 {
                                    v[..12].to_string()
                                } else {
                                    v.to_string()
                                }
                            })
                            .unwrap_or_else(|| "-".into())
                    };
                    out!(
                        "{}  {:<24} {} -> {}  {} by {}{}",
                        inspect::format_time(e.time_ns),
                        e.name,
                        short(&e.old),
                        short(&e.new),
                        e.action,
                        e.who,
                        if e.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", e.message)
                        }
                    );
                }
            }
        }
        Cmd::Runs(RunsArgs { metric, json }) => {
            let store = open(s.as_deref())?;
            let (m, dir) = match metric
                .as_deref()
                .map(|x| x.split_once(':').unwrap_or((x, "min")))
            {
                Some((m, d)) if d == "min" || d == "max" => (Some(m.to_string()), d == "max"),
                Some((_, d)) => bail!("--metric: direction {d:?} must be min or max"),
                None => (None, false),
            };
            let runs = cairn::catalog::runs(&store.view().commit_rows()?, m.as_deref(), dir);
            if json {
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
                            (Some(m), Some(b), Some(c)) => format!("best {m}={b} at {}", &c[..12]),
                            _ => "no metric".into(),
                        }
                    );
                }
            }
        }
        Cmd::Verify(VerifyArgs { rev, json }) => {
            let store = open(s.as_deref())?;
            let id = rev::resolve(&store, &rev)?;
            let p = progress();
            let rec = cairn::verify::verify_commit(&store, id, p.as_ref())?;
            cairn::verify::update_state(&store, id, |st| st.verify = Some(rec.clone()))?;
            if json {
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
        }
        Cmd::Gc(a) => cmd_gc(s, *a)?,
        Cmd::Retention { cmd } => {
            let store = open(s.as_deref())?;
            match cmd {
                RetentionCmd::Show => match cairn::gc::stored_policy(&store)? {
                    Some(r) => out!("{}", r.to_text()),
                    None => out!("no retention policy"),
                },
                RetentionCmd::Set { policy } => {
                    let r = cairn::gc::Retention::parse(&policy)?;
                    if !r.prunes() && r.slim.is_empty() {
                        bail!("retention policy {policy:?} has no rule");
                    }
                    cairn::gc::set_policy(&store, Some(&r))?;
                    out!("retention policy: {}", r.to_text());
                }
                RetentionCmd::Clear => {
                    cairn::gc::set_policy(&store, None)?;
                    out!("retention policy cleared");
                }
            }
        }
        Cmd::Fsck(FsckArgs {
            read_data,
            read_data_subset,
            json,
        }) => {
            let store = open(s.as_deref())?;
            let subset = match read_data_subset.as_deref() {
                None => None,
                Some(x) => {
                    let (i, n) = x
                        .split_once('/')
                        .and_then(|(i, n)| Some((i.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
                        .filter(|(i, n)| *n >= 1 && *i >= 1 && i <= n)
                        .ok_or_else(|| {
                            anyhow!("--read-data-subset {x:?}: expected I/N with 1 <= I <= N")
                        })?;
                    Some((i, n))
                }
            };
            let p = progress();
            let rep = cairn::fsck::fsck(
                &store,
                &cairn::fsck::FsckOptions {
                    read_data: read_data || subset.is_some(),
                    subset,
                },
                p.as_ref(),
            )?;
            if json {
                print_json(&rep)?;
            } else {
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
            }
            if !rep.ok() {
                bail!("fsck found {} problem(s)", rep.problems.len());
            }
            if !json {
                out!("no problems found");
            }
        }
        Cmd::Repair(RepairArgs {
            rebuild_index,
            from,
            json,
        }) => {
            if !rebuild_index && from.is_none() {
                bail!("repair needs --rebuild-index or --from PATH");
            }
            let root = store_path(s.as_deref())?;
            if rebuild_index {
                if !root.join(cairn::store::MARKER).is_file() {
                    return Err(cairn::Error::NotAStore { path: root }.into());
                }
                let out = cairn::fsck::rebuild_index(&root)?;
                if json {
                    print_json(&out)?;
                } else {
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
                }
            }
            if let Some(path) = from {
                let store = Store::open(&root)?;
                let healed = cairn::commit::heal_from(&store, &path)?;
                if json {
                    print_json(&serde_json::json!({"healed": healed}))?;
                } else {
                    out!("healed {healed} damaged chunk(s) from {}", path.display());
                }
            }
        }
        Cmd::Stats(StatsArgs { json }) => {
            let store = open(s.as_deref())?;
            let st = inspect::stats(&store)?;
            if json {
                print_json(&st)?;
            } else {
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
            }
        }
    }
    Ok(())
}

fn cmd_gc(s: &Option<PathBuf>, a: GcArgs) -> Result<()> {
    let store = open(s.as_deref())?;
    let mut r = if a.policy {
        cairn::gc::stored_policy(&store)?.ok_or_else(|| {
            anyhow!("--policy: no retention policy is stored (cairn retention set ...)")
        })?
    } else {
        cairn::gc::Retention::default()
    };
    if a.keep_last.is_some() {
        r.keep_last = a.keep_last;
    }
    for kb in &a.keep_best {
        r.keep_best.push(cairn::gc::parse_keep_best(kb)?);
    }
    for ki in &a.keep_improving {
        r.keep_improving.push(cairn::gc::parse_keep_improving(ki)?);
    }
    if let Some(n) = a.keep_every {
        if n == 0 {
            bail!("--keep-every 0: must be at least 1");
        }
        r.keep_every = Some(n);
    }
    if let Some(w) = &a.keep_within {
        r.keep_within_ns = Some(cairn::gc::parse_duration_ns(w)?);
    }
    r.slim.extend(a.slim.iter().cloned());
    if a.slim_keep_last.is_some() {
        r.slim_keep_last = a.slim_keep_last;
    }
    if !(0.0..=1.0).contains(&a.repack_threshold) {
        bail!(
            "--repack-threshold {}: must be between 0 and 1",
            a.repack_threshold
        );
    }
    let opts = cairn::gc::GcOptions {
        retention: r,
        branches: a.branch.clone(),
        all: a.all,
        repack_threshold: Some(a.repack_threshold),
        now_ns: None,
    };
    let out = cairn::gc::gc(&store, &opts, a.dry_run)?;
    if a.json {
        print_json(&out)?;
        return Ok(());
    }
    let p = &out.plan;
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
            cairn::gc::Decision::Keep => "keep ",
            cairn::gc::Decision::Prune => "PRUNE",
            cairn::gc::Decision::Slim => "SLIM ",
            cairn::gc::Decision::AlreadyPruned => "pruned",
        };
        out!(
            "{what} {} {:>10} {}{}",
            &c.id[..12],
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
    if out.dry_run {
        out!("dry run: nothing changed");
    } else {
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
    }
    Ok(())
}

fn print_show(info: &inspect::ShowInfo) -> Result<()> {
    let c = &info.commit;
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
        out!("\n    {}\n", c.message.replace('\n', "\n    "));
    }
    if let Some(v) = &info.state.verify {
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
    if let Some(c) = &info.state.check {
        out!(
            "check  {} `{}` exited {} at {}",
            if c.ok { "passed" } else { "FAILED" },
            c.command,
            c.exit_code.map_or("by signal".into(), |x| x.to_string()),
            inspect::format_time(c.time_ns)
        );
    }
    if let Some(p) = &info.state.pruned {
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
    let r = &info.resume;
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

fn print_diff(d: &cairn::diff::DiffOutcome) -> Result<()> {
    use cairn::diff::Status;
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

fn main() {
    let cli = Cli::parse();
    let result = run(cli);
    cairn::crashsim::finish();
    if let Err(e) = result {
        // Scripts piping into `head` close stdout early; that is not an error worth a message.
        if e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            std::process::exit(0);
        }
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
