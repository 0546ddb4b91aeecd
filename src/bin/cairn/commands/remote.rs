//! `remote`, `push`, `fetch`, `pull`, `clone` and `fsck --remote`. The S3 settings are read here,
//! from the standard `AWS_*` variables and the `~/.aws` files, and handed to the library, which
//! reads no environment.

use super::{open, store_path};
use crate::args::{CloneArgs, FetchArgs, PullArgs, PushArgs, RemoteCmd};
use crate::render::{human, out, print_json, progress};
use anyhow::{Result, bail};
use cairn::Store;
use cairn::remote::{Bucket, RemoteOptions, RemoteUrl, local};
use std::path::Path;

/// S3 options: `~/.aws/credentials` and `~/.aws/config` (or `$AWS_SHARED_CREDENTIALS_FILE`,
/// `$AWS_CONFIG_FILE`) for `$AWS_PROFILE`, then the `AWS_*` variables over them.
pub fn options() -> RemoteOptions {
    RemoteOptions::discover(
        |k| std::env::var(k).ok(),
        |p| std::fs::read_to_string(p).ok(),
    )
}

fn bucket_for(url: &RemoteUrl) -> Result<Bucket> {
    Ok(Bucket::open(url, &options())?)
}

fn connect(store: &Store, name: &str) -> Result<Bucket> {
    bucket_for(&local::remote_url(store, name)?)
}

pub fn remote(cli_store: Option<&Path>, cmd: RemoteCmd) -> Result<()> {
    let store = open(cli_store)?;
    match cmd {
        RemoteCmd::Add { name, url, json } => {
            let parsed = local::add_remote(&store, &name, &url)?;
            if json {
                print_json(&serde_json::json!({"name": name, "url": parsed.to_string()}))?;
            } else {
                out!("added remote {name}: {parsed}");
            }
        }
        RemoteCmd::List { json } => {
            let all = local::remotes(&store)?;
            if json {
                let mut v = serde_json::Map::new();
                for (n, e) in &all {
                    let t = local::tracking(&store, n)?;
                    v.insert(n.clone(), serde_json::json!({"url": e.url, "refs": t.refs}));
                }
                print_json(&v)?;
            } else {
                for (n, e) in &all {
                    out!("{n}\t{}", e.url);
                }
            }
        }
        RemoteCmd::Remove { name } => {
            local::remove_remote(&store, &name)?;
            out!("removed remote {name}");
        }
    }
    Ok(())
}

pub fn push(cli_store: Option<&Path>, a: PushArgs) -> Result<()> {
    let store = open(cli_store)?;
    let remotes = local::remotes(&store)?;
    let mut args = a.args;
    let name = if args.first().is_some_and(|f| remotes.contains_key(f)) {
        args.remove(0)
    } else {
        "origin".to_string()
    };
    let bucket = connect(&store, &name)?;
    let p = progress();
    let out = cairn::ops::sync::push(
        &store,
        &name,
        &bucket,
        &cairn::ops::sync::PushOptions {
            refs: args,
            all: a.all,
            force: a.force,
            pack_size: a.pack_size,
        },
        p.as_ref(),
    )?;
    if a.json {
        print_json(&out)?;
    } else {
        for r in &out.refs {
            let old = match r.old.as_slice() {
                [] => "(new)".to_string(),
                o => o.iter().map(|c| c.short()).collect::<Vec<_>>().join(","),
            };
            out!(
                "{}\t{old} -> {}\t{}",
                cairn::storage::refs::short_name(&r.name),
                r.new.short(),
                r.status
            );
        }
        if out.record.is_some() {
            out!(
                "sent {} in {} packs ({} chunks of {} logical, {} objects; {} resumed packs), {} requests",
                human(out.bytes_sent),
                out.packs,
                out.chunks,
                human(out.logical_bytes),
                out.objects,
                out.resumed_packs,
                out.requests
            );
        }
    }
    for r in out.refs.iter().filter(|r| r.status == "diverged") {
        eprintln!(
            "warning: {} on {name} has diverged: a concurrent push left another head beside {}; both are kept (cairn fetch shows them)",
            r.name,
            r.new.short()
        );
    }
    Ok(())
}

fn remote_name(store: &Store, given: Option<String>) -> Result<String> {
    let name = given.unwrap_or_else(|| "origin".into());
    local::remote_url(store, &name)?;
    Ok(name)
}

pub fn fetch(cli_store: Option<&Path>, a: FetchArgs) -> Result<()> {
    let store = open(cli_store)?;
    if let Some(revs) = a.data {
        let revs = if revs.is_empty() {
            vec!["HEAD".to_string()]
        } else {
            revs
        };
        let mut ids = Vec::new();
        for r in &revs {
            ids.push(cairn::ops::rev::resolve(&store, r)?);
        }
        let n = cairn::ops::sync::fetch_data(&store, &ids)?;
        if a.json {
            print_json(&serde_json::json!({"commits": revs, "chunks": n}))?;
        } else {
            out!("{n} chunks made local for {}", revs.join(", "));
        }
        return Ok(());
    }
    let name = remote_name(&store, a.remote)?;
    let bucket = connect(&store, &name)?;
    let p = progress();
    let out = cairn::ops::sync::fetch(&store, &name, &bucket, p.as_ref())?;
    if a.json {
        print_json(&out)?;
        return Ok(());
    }
    for (r, heads) in &out.refs {
        let short = cairn::storage::refs::short_name(r);
        let shown: Vec<String> = heads.iter().map(|c| c.short()).collect();
        if heads.len() > 1 {
            out!("{name}/{short}\t{}\tdiverged", shown.join(" "));
        } else {
            out!("{name}/{short}\t{}", shown.join(" "));
        }
    }
    out!(
        "fetched {} meta packs ({}), {} requests",
        out.packs,
        human(out.bytes),
        out.requests
    );
    for b in &out.bad_records {
        eprintln!("warning: ignored malformed record {b}");
    }
    Ok(())
}

pub fn pull(cli_store: Option<&Path>, a: PullArgs) -> Result<()> {
    let store = open(cli_store)?;
    let name = remote_name(&store, a.remote)?;
    let bucket = connect(&store, &name)?;
    let p = progress();
    let out = cairn::ops::sync::pull(&store, &name, &bucket, a.branch.as_deref(), p.as_ref())?;
    if a.json {
        print_json(&out)?;
    } else {
        let old = out.old.map_or("(none)".into(), |c| c.short());
        out!(
            "{}\t{old} -> {}\t{} ({} data packs, {})",
            out.branch,
            out.new.short(),
            out.status,
            out.packs,
            human(out.bytes)
        );
    }
    Ok(())
}

pub fn clone(a: CloneArgs) -> Result<()> {
    let url = RemoteUrl::parse(&a.url)?;
    let bucket = bucket_for(&url)?;
    let p = progress();
    let out = if a.lazy {
        cairn::ops::sync::clone_lazy(&url.to_string(), &bucket, &a.dir, p.as_ref())?
    } else {
        cairn::ops::sync::clone(&url.to_string(), &bucket, &a.dir, p.as_ref())?
    };
    if a.json {
        print_json(&out)?;
    } else {
        out!(
            "cloned {url} into {}: {} refs, {} packs ({}), {} requests",
            a.dir.display(),
            out.refs.len(),
            out.packs,
            human(out.bytes),
            out.requests
        );
    }
    for d in &out.diverged {
        eprintln!("warning: {d} has diverged on the remote and was not set; fetch shows its heads");
    }
    Ok(())
}

pub fn fsck_remote(
    cli_store: Option<&Path>,
    name: &str,
    read_data: bool,
    json: bool,
) -> Result<()> {
    let store = Store::open(&store_path(cli_store)?)?;
    let bucket = connect(&store, name)?;
    let scratch = store.scratch_dir("fsck-remote")?;
    let p = progress();
    let rep = cairn::ops::sync::fsck_remote(&bucket, scratch.path(), read_data, p.as_ref())?;
    if json {
        print_json(&rep)?;
    } else {
        out!(
            "{} records, {} indexes, {} packs, {} refs, {} commits, {} chunks{}",
            rep.records,
            rep.indexes,
            rep.packs,
            rep.refs,
            rep.commits,
            rep.chunks,
            if read_data { " (data read)" } else { "" }
        );
        for pr in &rep.problems {
            out!("{}\t{}\t{}", pr.kind, pr.subject, pr.detail);
        }
    }
    if !rep.problems.is_empty() {
        bail!(
            "fsck --remote {name} found {} problem(s)",
            rep.problems.len()
        );
    }
    if !json {
        out!("no problems found");
    }
    Ok(())
}
