//! `cairn commit`: the flags become `CommitOptions` (see `provenance`), the checkpoint is
//! committed, the outcome is printed, and then the published commit is optionally checked
//! (`--verify`, `--verify-cmd`). A check that fails leaves the commit published and fails
//! the command, so a training script notices.

mod provenance;

use super::open;
use crate::args::CommitArgs;
use crate::render::{human, out, print_json, progress};
use anyhow::{Context, Result, anyhow, bail};
use cairn::ops::commit::sharded::TxnStatus;
use cairn::ops::progress::Progress;
use cairn::{CommitBuilder, CommitId, CommitOptions, CommitOutcome, Store};
use provenance::ExtraFiles;
use std::path::Path;

pub fn run(cli_store: Option<&Path>, a: CommitArgs) -> Result<()> {
    let store = open(cli_store)?;
    let (opts, extra_files) = provenance::options(&a)?;
    let is_dir = std::fs::metadata(&a.path)
        .with_context(|| format!("reading {}", a.path.display()))?
        .is_dir();
    let p = progress();
    let out = commit(&store, opts, &a.path, is_dir, extra_files, p.as_ref())?;
    if let Some(t) = out.txn.as_ref().filter(|t| t.commit.is_none()) {
        return print_staged(&out, t, a.json);
    }
    let result = if a.json {
        // One document, written once the checks are done, so it can say how they went.
        let checks = check_published(&store, &a, out.commit, p.as_ref())?;
        print_published(&store, &out, true, Some(&checks))?;
        checks.result()
    } else {
        print_published(&store, &out, false, None)?;
        check_published(&store, &a, out.commit, p.as_ref())?.result()
    };
    if let Some(due) = &out.auto_gc {
        start_policy_gc(&store, &due.branch);
    }
    result
}

/// The store's retention policy runs after the commit in a detached process (`cairn gc
/// --run-policy BRANCH`, its own process group, no terminal), so this command exits as soon as
/// the commit is durable and that process has claimed its run (one line on its stdout, a few
/// milliseconds); `cairn gc --status` reports the run. Failing to start it is only a warning:
/// the commit stands, and the next commit's run covers this one.
fn start_policy_gc(store: &Store, branch: &str) {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let started = std::env::current_exe().and_then(|exe| {
        let mut child = Command::new(exe)
            .arg("--store")
            .arg(store.root())
            .args(["gc", "--run-policy", branch])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        if let Some(out) = child.stdout.take() {
            // "claimed" or "covered"; EOF if it died first.
            let _ = std::io::BufReader::new(out).read_line(&mut String::new());
        }
        Ok(())
    });
    if let Err(e) = started {
        eprintln!("warning: could not start the retention policy's gc: {e}");
    }
}

/// What `--verify` and `--verify-cmd` found.
#[derive(Default)]
struct Checks {
    /// The failure messages.
    failed: Vec<String>,
    /// `--verify`: whether the commit read back intact.
    verify: Option<bool>,
    /// `--verify-cmd`: the load test's record.
    load_test: Option<serde_json::Value>,
}

impl Checks {
    /// Every failure, in one error.
    fn result(self) -> Result<()> {
        if !self.failed.is_empty() {
            bail!(self.failed.join("\n"));
        }
        Ok(())
    }
}

/// A directory commits its contents; a single file commits under its own name.
fn commit(
    store: &Store,
    opts: CommitOptions,
    path: &Path,
    is_dir: bool,
    extra_files: ExtraFiles,
    p: &dyn Progress,
) -> Result<CommitOutcome> {
    let mut b = CommitBuilder::new(store, opts).progress(p);
    if is_dir {
        b.add_dir(path)?;
    } else {
        let name = path
            .file_name()
            .ok_or_else(|| anyhow!("{}: not a file name", path.display()))?
            .to_string_lossy()
            .to_string();
        b.add_path(path, &name)?;
    }
    for (rel, bytes) in extra_files {
        b.add_bytes(&rel, bytes)?;
    }
    Ok(b.commit()?)
}

/// One part of a sharded commit is staged and nothing is visible yet; the outcome's commit id
/// is all zeros until then, so `--json` says null rather than a fake id.
fn print_staged(out: &CommitOutcome, t: &TxnStatus, json: bool) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(out)?;
        v["commit"] = serde_json::Value::Null;
        print_json(&v)?;
    } else {
        out!(
            "staged part {}/{} of transaction {} ({} of {} parts staged; the commit appears when all are)",
            t.part,
            t.total,
            t.id,
            t.staged,
            t.total
        );
    }
    Ok(())
}

fn print_published(
    store: &Store,
    out: &CommitOutcome,
    json: bool,
    checks: Option<&Checks>,
) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(out)?;
        v["uri"] = format!("cairn://{}/{}", store.store_id(), out.commit).into();
        if let Some(c) = checks {
            if let Some(ok) = c.verify {
                v["verify"] = serde_json::json!({ "ok": ok });
            }
            if let Some(rec) = &c.load_test {
                v["load_test"] = rec.clone();
            }
        }
        print_json(&v)?;
    } else {
        out!(
            "[{} {}] {} files, {} logical; {} new chunks ({}), {} reused; +{} on disk{}",
            out.branch,
            out.commit.short(),
            out.files,
            human(out.logical_bytes),
            out.new_chunks,
            human(out.new_chunk_bytes),
            out.reused_chunks,
            human(out.stored_bytes_added),
            if out.reparented {
                " (branch had moved: committed on its new head)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `--verify`, then `--verify-cmd`: both run even if the first fails; every failure is
/// collected for the one error [`Checks::result`] gives.
fn check_published(
    store: &Store,
    a: &CommitArgs,
    id: CommitId,
    p: &dyn Progress,
) -> Result<Checks> {
    let mut checks = Checks::default();
    if a.verify {
        let failed = verify_in_fresh_process(store, id, a.json)?;
        checks.verify = Some(failed.is_none());
        checks.failed.extend(failed);
    }
    if let Some(cmd) = &a.verify_cmd {
        let (failed, rec) = load_test(store, id, cmd, a.json, p)?;
        checks.load_test = Some(serde_json::to_value(&rec)?);
        checks.failed.extend(failed);
    }
    Ok(checks)
}

/// Runs `cairn verify` on the commit; the failure message if it did not read back intact.
fn verify_in_fresh_process(store: &Store, id: CommitId, json: bool) -> Result<Option<String>> {
    // A fresh process, so nothing cached in this one can vouch for the data.
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--store")
        .arg(store.root())
        .args(["verify", &id.to_hex()])
        .stdout(if json {
            std::process::Stdio::null()
        } else {
            std::process::Stdio::inherit()
        })
        .status()
        .context("running cairn verify")?;
    Ok((!status.success()).then(|| {
        format!(
            "VERIFY FAILED: commit {} was published but does not read back intact; it is marked unverified (cairn show {})",
            id.short(),
            id.short()
        )
    }))
}

/// Runs `--verify-cmd` on a checkout of the commit and records its result with the commit;
/// the failure message if it failed.
fn load_test(
    store: &Store,
    id: CommitId,
    cmd: &str,
    json: bool,
    p: &dyn Progress,
) -> Result<(Option<String>, cairn::storage::state::CheckRecord)> {
    let rec = cairn::ops::verify::run_check(store, id, cmd, p)?;
    cairn::ops::verify::update_state(store, id, |s| s.check = Some(rec.clone()))?;
    if !json {
        out!(
            "load test {}: `{cmd}` exited {} after {:.1}s",
            if rec.ok { "passed" } else { "FAILED" },
            rec.exit_code.map_or("by signal".into(), |c| c.to_string()),
            rec.seconds
        );
    }
    let failed = (!rec.ok).then(|| {
        format!(
            "load test failed for commit {}: `{cmd}` exited {}",
            id.short(),
            rec.exit_code.map_or("by signal".into(), |c| c.to_string())
        )
    });
    Ok((failed, rec))
}
