//! From `cairn commit`'s flags to `CommitOptions`: metrics, params, config, datasets, git,
//! environment facts and resume hints, plus the files the commit stores under `_cairn/`
//! (`--git-diff`, `--env-file`). Flags are checked in a fixed order, so with several bad
//! flags the same one is always named first.

use crate::args::CommitArgs;
use crate::commands::author;
use anyhow::{Context, Result, anyhow, bail};
use cairn::CommitOptions;
use cairn::model::object::{DatasetRef, GitInfo, Metadata};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files added to the commit besides the checkpoint: (path in the commit, bytes).
pub type ExtraFiles = Vec<(String, Vec<u8>)>;

pub fn options(a: &CommitArgs) -> Result<(CommitOptions, ExtraFiles)> {
    let mut opts = CommitOptions {
        message: a.message.clone(),
        author: author(a.author.clone()),
        branch: a.branch.clone(),
        opaque: a.opaque.clone(),
        ignore_trainer_state: a.no_trainer_state,
        follow_symlinks: a.follow_symlinks,
        delta_depth: a.delta_depth,
        delta_base: a.delta_base,
        txn: match (&a.txn, &a.part) {
            (Some(id), Some(p)) => Some(cairn::ops::commit::sharded::TxnPart::parse(id, p)?),
            _ => None,
        },
        ..Default::default()
    };
    let mut extra_files = ExtraFiles::new();
    let m = &mut opts.meta;
    m.step = a.step;
    if let Some(e) = a.epoch.filter(|e| !e.is_finite()) {
        bail!("--epoch {e}: the epoch must be a finite number");
    }
    m.epoch = a.epoch;
    m.run_id = a.run_id.clone();
    metrics_and_params(a, m)?;
    m.config = config(a.config.as_deref())?;
    m.datasets = datasets(a)?;
    m.env = cairn::ops::provenance::environment();
    m.git = match git(a) {
        // A hung git (a dead network mount, a lock) must not hang the training loop's commit:
        // the commit goes on without git facts and records why.
        Err(e) if is_timeout(&e) => {
            eprintln!("warning: {e}; committing without git facts");
            m.env.insert("git".into(), e.to_string());
            None
        }
        other => other?,
    };
    if a.git_diff {
        extra_files.extend(git_diff(a, m.git.as_ref())?);
    }
    env_facts(a, &mut m.env, &mut extra_files)?;
    holds(a, &mut m.extra)?;
    Ok((opts, extra_files))
}

fn split_kv<'a>(flag: &str, s: &'a str) -> Result<(&'a str, &'a str)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => bail!("{flag} {s:?}: expected NAME=VALUE"),
    }
}

fn metrics_and_params(a: &CommitArgs, m: &mut Metadata) -> Result<()> {
    for kv in &a.metrics {
        let (k, v) = split_kv("--metric", kv)?;
        let x: f64 = v
            .parse()
            .map_err(|_| anyhow!("--metric {kv}: {v:?} is not a number"))?;
        // NaN and infinities cannot be compared or sorted by the catalog and gc's keep-best.
        if !x.is_finite() {
            bail!("--metric {kv}: {x} is not a finite number; metrics must be finite");
        }
        m.metrics.insert(k.to_string(), x);
    }
    for kv in &a.params {
        let (k, v) = split_kv("--param", kv)?;
        m.params.insert(k.to_string(), v.to_string());
    }
    Ok(())
}

/// Re-serialized, so the commit stores canonical JSON whatever the file's spacing.
fn config(path: Option<&Path>) -> Result<Option<String>> {
    let Some(p) = path else { return Ok(None) };
    let text = std::fs::read(p).with_context(|| format!("reading --config {}", p.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("--config {}: not valid JSON", p.display()))?;
    Ok(Some(serde_json::to_string(&v)?))
}

/// `--dataset` paths are fingerprinted here; `--dataset-fingerprint` values are taken as given.
fn datasets(a: &CommitArgs) -> Result<Vec<DatasetRef>> {
    let mut out = Vec::new();
    for d in &a.datasets {
        // A path that exists wins over a NAME=PATH reading, since paths may contain '='.
        let (name, path) = match d.split_once('=') {
            Some((n, p)) if !n.is_empty() && !Path::new(d).exists() => {
                (n.to_string(), PathBuf::from(p))
            }
            _ => {
                let p = PathBuf::from(d);
                let n = p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_else(|| d.clone());
                (n, p)
            }
        };
        out.push(cairn::ops::provenance::dataset_fingerprint(&name, &path)?);
    }
    for d in &a.dataset_fingerprints {
        let (name, fp) = match d.split_once('=') {
            Some((n, f)) if !n.is_empty() => (n.to_string(), f.to_string()),
            _ => ("dataset".to_string(), d.clone()),
        };
        out.push(DatasetRef {
            name,
            fingerprint: fp,
            files: None,
            bytes: None,
        });
    }
    Ok(out)
}

fn is_timeout(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<cairn::ops::provenance::ProvenanceError>(),
        Some(cairn::ops::provenance::ProvenanceError::GitTimedOut { .. })
    )
}

fn git_repo(a: &CommitArgs) -> Result<PathBuf> {
    Ok(match &a.git_repo {
        Some(r) => r.clone(),
        None => std::env::current_dir()?,
    })
}

fn git(a: &CommitArgs) -> Result<Option<GitInfo>> {
    match a.git.as_deref() {
        None => Ok(None),
        Some("auto") => Ok(Some(cairn::ops::provenance::git_info(&git_repo(a)?)?)),
        Some(sha) => {
            if sha.len() < 4 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("--git {sha:?}: expected a commit SHA (hex) or `auto`");
            }
            Ok(Some(GitInfo {
                commit: sha.to_ascii_lowercase(),
                ..Default::default()
            }))
        }
    }
}

/// `_cairn/git.diff` for a dirty tree; nothing for a clean one.
fn git_diff(a: &CommitArgs, git: Option<&GitInfo>) -> Result<Option<(String, Vec<u8>)>> {
    match git {
        Some(g) if g.dirty => Ok(Some((
            "_cairn/git.diff".into(),
            cairn::ops::provenance::git_diff(&git_repo(a)?)?,
        ))),
        Some(_) => Ok(None),
        None => bail!("--git-diff needs --git auto"),
    }
}

/// `--env` facts, then each `--env-file` (docs/metadata.md: the file under `_cairn/env/`, its
/// BLAKE3 as the fact `file.<name>`).
fn env_facts(
    a: &CommitArgs,
    env: &mut BTreeMap<String, String>,
    extra_files: &mut ExtraFiles,
) -> Result<()> {
    for kv in &a.env {
        let (k, v) = split_kv("--env", kv)?;
        env.insert(k.to_string(), v.to_string());
    }
    for f in &a.env_files {
        let bytes =
            std::fs::read(f).with_context(|| format!("reading --env-file {}", f.display()))?;
        let name = f
            .file_name()
            .ok_or_else(|| anyhow!("--env-file {}: not a file name", f.display()))?
            .to_string_lossy()
            .to_string();
        env.insert(
            format!("file.{name}"),
            blake3::hash(&bytes).to_hex().to_string(),
        );
        extra_files.push((format!("_cairn/env/{name}"), bytes));
    }
    Ok(())
}

/// `--holds PART=GLOB`, kept as `holds.PART` in the commit's extra metadata, where the resume
/// report looks for it.
fn holds(a: &CommitArgs, extra: &mut BTreeMap<String, String>) -> Result<()> {
    for kv in &a.holds {
        let (part, glob) = split_kv("--holds", kv)?;
        if !cairn::ops::provenance::RESUME_PARTS.contains(&part) {
            bail!(
                "--holds {kv}: unknown part {part:?}; expected one of {}",
                cairn::ops::provenance::RESUME_PARTS.join(", ")
            );
        }
        extra.insert(format!("holds.{part}"), glob.to_string());
    }
    Ok(())
}
