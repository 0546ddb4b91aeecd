//! Capturing where a checkpoint came from: the code's git state, dataset fingerprints and the
//! environment.
//!
//! Invariants: a dataset fingerprint depends only on the sorted relative file names, their sizes
//! and their bytes (not on mtimes, walk order or thread count); capture never fails a commit for
//! a missing optional fact (no GPU, no nvidia-smi), but a requested fact that cannot be had
//! (`--git auto` outside a repository) is an error naming why.

#![warn(missing_docs)]

use crate::model::object::{DatasetRef, GitInfo};

use rayon::prelude::*;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors of capturing provenance and of reading a trainer state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvenanceError {
    /// `git` could not be run.
    #[error("--git auto: cannot run git: {source}")]
    RunGit {
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },
    /// `git` ran longer than [`CHILD_TIMEOUT`] and was killed.
    #[error("--git auto: `git {args}` timed out after {seconds} s")]
    GitTimedOut {
        /// The git arguments (after `-C REPO`).
        args: String,
        /// The limit it ran into.
        seconds: u64,
    },
    /// `--git auto` in a directory that is not inside a git repository with a commit.
    #[error("--git auto: {repo} is not inside a git repository with a commit ({stderr})")]
    NotAGitRepo {
        /// The directory given.
        repo: PathBuf,
        /// What `git rev-parse HEAD` said, trimmed.
        stderr: String,
    },
    /// A dataset file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A `trainer_state.json` is not valid JSON.
    #[error("{path}: not valid JSON: {source}")]
    BadTrainerState {
        /// The file's path inside the commit.
        path: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A metric given for the commit disagrees with the one `trainer_state.json` records.
    #[error(
        "trainer_state.json: metric {name}: --metric gives {given} but trainer_state.json records {recorded}"
    )]
    MetricDisagrees {
        /// The metric.
        name: String,
        /// The value given.
        given: f64,
        /// The value recorded.
        recorded: f64,
    },
    /// The step given for the commit disagrees with `trainer_state.json`'s `global_step`.
    #[error(
        "trainer_state.json: step: --step gives {given} but trainer_state.json records global_step {recorded}"
    )]
    StepDisagrees {
        /// The step given.
        given: u64,
        /// The `global_step` recorded.
        recorded: u64,
    },
}

/// Results of provenance capture.
pub type Result<T, E = ProvenanceError> = std::result::Result<T, E>;

/// Wrap an I/O error with the path it happened at.
fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ProvenanceError + '_ {
    move |source| ProvenanceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How long a child process that provenance capture runs (`git`, `nvidia-smi`) may take. A
/// hung GPU driver or a git on a dead network mount must not hang a commit: past this, the
/// child is killed and the fact recorded as timed out.
pub const CHILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Run `cmd` to completion, capturing its output, or kill it once it has run for `timeout`
/// (`Ok(None)`). Output is drained on threads of their own, so a chatty child cannot block on
/// a full pipe.
pub fn output_within(
    cmd: &mut Command,
    timeout: std::time::Duration,
) -> std::io::Result<Option<std::process::Output>> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // A killed child's grandchildren may keep the pipes open: do not wait for them then.
    let Some(status) = status else {
        return Ok(None);
    };
    Ok(Some(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }))
}

fn git(repo: &Path, args: &[&str]) -> Result<std::process::Output> {
    output_within(
        Command::new("git").arg("-C").arg(repo).args(args),
        CHILD_TIMEOUT,
    )
    .map_err(|source| ProvenanceError::RunGit { source })?
    .ok_or_else(|| ProvenanceError::GitTimedOut {
        args: args.join(" "),
        seconds: CHILD_TIMEOUT.as_secs(),
    })
}

/// The git state of the repository containing `repo`.
pub fn git_info(repo: &Path) -> Result<GitInfo> {
    let head = git(repo, &["rev-parse", "HEAD"])?;
    if !head.status.success() {
        return Err(ProvenanceError::NotAGitRepo {
            repo: repo.to_path_buf(),
            stderr: String::from_utf8_lossy(&head.stderr).trim().to_string(),
        });
    }
    let commit = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let branch = git(repo, &["symbolic-ref", "--short", "-q", "HEAD"])
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    let status = git(repo, &["status", "--porcelain", "--untracked-files=no"])?;
    let dirty = !status.stdout.is_empty();
    let diff_hash = if dirty {
        let d = git(repo, &["diff", "HEAD", "--binary"])?;
        Some(blake3::hash(&d.stdout).to_hex().to_string())
    } else {
        None
    };
    Ok(GitInfo {
        commit,
        branch,
        dirty,
        diff_hash,
    })
}

/// The working-tree diff against HEAD (for `--git-diff`).
pub fn git_diff(repo: &Path) -> Result<Vec<u8>> {
    Ok(git(repo, &["diff", "HEAD", "--binary"])?.stdout)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_at(dir))?
        .collect::<std::result::Result<_, _>>()
        .map_err(io_at(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let m = std::fs::metadata(&p).map_err(io_at(&p))?;
        if m.is_dir() {
            walk(root, &p, out)?;
        } else if m.is_file() {
            let rel = p
                .strip_prefix(root)
                .expect("walked paths are under root")
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, p));
        }
    }
    Ok(())
}

/// Fingerprint a dataset file or directory: blake3 over each file's relative name, size and
/// content hash, in name order. Files are hashed in parallel, each streamed.
pub fn dataset_fingerprint(name: &str, path: &Path) -> Result<DatasetRef> {
    let meta = std::fs::metadata(path).map_err(io_at(path))?;
    let mut files = Vec::new();
    if meta.is_dir() {
        walk(path, path, &mut files)?;
    } else {
        let rel = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        files.push((rel, path.to_path_buf()));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let hashes: Vec<(u64, blake3::Hash)> = files
        .par_iter()
        .map(|(_, p)| {
            let mut f = std::fs::File::open(p).map_err(io_at(p))?;
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = f.read(&mut buf).map_err(io_at(p))?;
                if k == 0 {
                    break;
                }
                n += k as u64;
                h.update(&buf[..k]);
            }
            Ok((n, h.finalize()))
        })
        .collect::<Result<_>>()?;
    let mut h = blake3::Hasher::new_derive_key("cairn 2026-11-27 dataset fingerprint v1");
    let mut total = 0u64;
    for ((rel, _), (size, fh)) in files.iter().zip(&hashes) {
        h.update(&(rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update(&size.to_le_bytes());
        h.update(fh.as_bytes());
        total += size;
    }
    Ok(DatasetRef {
        name: name.to_string(),
        fingerprint: h.finalize().to_hex().to_string(),
        files: Some(files.len() as u64),
        bytes: Some(total),
    })
}

fn read_trim(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Facts about this machine: cairn version, host, OS, kernel, CPU, memory, GPUs when
/// `nvidia-smi` answers.
pub fn environment() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("cairn".into(), env!("CARGO_PKG_VERSION").into());
    env.insert("os".into(), std::env::consts::OS.into());
    env.insert("arch".into(), std::env::consts::ARCH.into());
    if let Some(h) = read_trim("/proc/sys/kernel/hostname") {
        env.insert("host".into(), h);
    }
    if let Some(k) = read_trim("/proc/sys/kernel/osrelease") {
        env.insert("kernel".into(), k);
    }
    if let Some(cpu) = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    }) {
        env.insert("cpu".into(), cpu);
    }
    env.insert(
        "cpus".into(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .to_string(),
    );
    if let Some(mem) = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .map(|l| l.trim_start_matches("MemTotal:").trim().to_string())
    }) {
        env.insert("memory".into(), mem);
    }
    match output_within(
        Command::new("nvidia-smi").args([
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
        ]),
        CHILD_TIMEOUT,
    ) {
        Ok(Some(o)) if o.status.success() => {
            env.insert(
                "gpus".into(),
                String::from_utf8_lossy(&o.stdout).trim().to_string(),
            );
        }
        Ok(None) => {
            env.insert(
                "gpus".into(),
                format!("nvidia-smi timed out after {} s", CHILD_TIMEOUT.as_secs()),
            );
        }
        _ => {}
    }
    env
}

/// What a Hugging Face Trainer `trainer_state.json` says about its checkpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainerState {
    /// `global_step`: optimizer steps taken.
    pub global_step: Option<u64>,
    /// `epoch`: epochs done, fractional.
    pub epoch: Option<f64>,
    /// The latest value of every numeric key in `log_history` (later entries win), except
    /// `step` and `epoch`.
    pub metrics: BTreeMap<String, f64>,
}

/// Parse a `trainer_state.json`.
pub fn parse_trainer_state(path: &str, bytes: &[u8]) -> Result<TrainerState> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|source| ProvenanceError::BadTrainerState {
            path: path.to_string(),
            source,
        })?;
    let mut ts = TrainerState {
        global_step: v.get("global_step").and_then(|x| x.as_u64()),
        epoch: v.get("epoch").and_then(|x| x.as_f64()),
        ..Default::default()
    };
    if let Some(hist) = v.get("log_history").and_then(|h| h.as_array()) {
        for entry in hist {
            if let Some(obj) = entry.as_object() {
                for (k, x) in obj {
                    if k == "step" || k == "epoch" {
                        continue;
                    }
                    if let Some(f) = x.as_f64() {
                        ts.metrics.insert(k.clone(), f);
                    }
                }
            }
        }
    }
    Ok(ts)
}

/// Whether two reported values of a metric agree: equal up to a relative 1e-6, which covers
/// printing and re-parsing a float, not a different measurement.
pub fn metric_agrees(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()) + 1e-12
}

/// Fill step, epoch and metrics from a trainer state where the caller gave none; a metric the
/// caller gave that the state also records must agree (metric verification).
pub fn apply_trainer_state(
    meta: &mut crate::model::object::Metadata,
    ts: &TrainerState,
) -> Result<()> {
    for (k, given) in &meta.metrics {
        if let Some(recorded) = ts.metrics.get(k)
            && !metric_agrees(*given, *recorded)
        {
            return Err(ProvenanceError::MetricDisagrees {
                name: k.clone(),
                given: *given,
                recorded: *recorded,
            });
        }
    }
    if let (Some(given), Some(recorded)) = (meta.step, ts.global_step)
        && given != recorded
    {
        return Err(ProvenanceError::StepDisagrees { given, recorded });
    }
    meta.step = meta.step.or(ts.global_step);
    meta.epoch = meta.epoch.or(ts.epoch);
    for (k, v) in &ts.metrics {
        meta.metrics.entry(k.clone()).or_insert(*v);
    }
    Ok(())
}

/// The parts of a training state a resumable checkpoint needs.
pub const RESUME_PARTS: [&str; 6] = [
    "weights",
    "optimizer",
    "scheduler",
    "rng",
    "trainer_state",
    "config",
];

/// Parts without which training cannot resume exactly (config is reported but not required).
pub const RESUME_REQUIRED: [&str; 5] =
    ["weights", "optimizer", "scheduler", "rng", "trainer_state"];

/// Which resume parts a file provides, by the usual names of Hugging Face Trainer, PyTorch
/// Lightning, DeepSpeed and plain torch.save checkpoints.
pub fn resume_parts_of(path: &str) -> Vec<&'static str> {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let g = |pat: &str| {
        globset::Glob::new(pat)
            .map(|g| g.compile_matcher().is_match(&name))
            .unwrap_or(false)
    };
    // A Lightning .ckpt holds weights, optimizer and scheduler states, loop state and RNG.
    if g("*.ckpt") {
        return vec!["weights", "optimizer", "scheduler", "rng", "trainer_state"];
    }
    // A plain torch.save dict (the classic `{"state_dict", "optimizer", "epoch"}` checkpoint)
    // holds weights, optimizer state and the loop position in one file.
    if g("checkpoint*.pt")
        || g("checkpoint*.pth")
        || g("ckpt*.pt")
        || g("ckpt*.pth")
        || g("*.pth.tar")
    {
        return vec!["weights", "optimizer", "trainer_state"];
    }
    let mut parts = Vec::new();
    if g("model*.safetensors")
        || g("pytorch_model*.bin")
        || g("model*.safetensors.index.json")
        || g("pytorch_model.bin.index.json")
        || g("adapter_model.*")
        || g("consolidated*.pth")
        || g("model.pt")
        || g("model.pth")
        || g("*model_states.pt")
        || g("tf_model.h5")
        || g("flax_model.msgpack")
    {
        parts.push("weights");
    }
    if g("optimizer*.pt")
        || g("optimizer*.bin")
        || g("optimizer*.safetensors")
        || g("*optim_states.pt")
        || g("optim*.pt")
    {
        parts.push("optimizer");
    }
    if g("scheduler*.pt") || g("scheduler*.json") || g("lr_scheduler*") {
        parts.push("scheduler");
    }
    if g("rng_state*") || g("random_states*") {
        parts.push("rng");
    }
    if g("trainer_state.json") || g("training_state*") {
        parts.push("trainer_state");
    }
    if g("config.json")
        || g("training_args.bin")
        || g("hparams.yaml")
        || g("generation_config.json")
        || g("*.yaml")
    {
        parts.push("config");
    }
    parts
}

/// A checkpoint's resumability report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Resume {
    /// part → files that provide it (empty: missing).
    pub parts: BTreeMap<String, Vec<String>>,
    /// Whether every part in [`RESUME_REQUIRED`] is provided.
    pub resumable: bool,
    /// The required parts no file provides, in [`RESUME_REQUIRED`] order.
    pub missing: Vec<String>,
}

/// Report which parts the files provide. `overrides` (from `--holds PART=GLOB`, kept in the
/// commit's `extra` as `holds.PART`) add files by glob.
pub fn resume_report<'a>(
    paths: impl Iterator<Item = &'a str> + Clone,
    overrides: &BTreeMap<String, String>,
) -> Resume {
    let mut parts: BTreeMap<String, Vec<String>> = RESUME_PARTS
        .iter()
        .map(|p| (p.to_string(), Vec::new()))
        .collect();
    for p in paths.clone() {
        for part in resume_parts_of(p) {
            parts
                .entry(part.to_string())
                .or_default()
                .push(p.to_string());
        }
    }
    for (k, glob) in overrides {
        if let Some(part) = k.strip_prefix("holds.")
            && let Ok(g) = globset::Glob::new(glob)
        {
            let m = g.compile_matcher();
            for p in paths.clone() {
                let name = p.rsplit('/').next().unwrap_or(p);
                if m.is_match(p) || m.is_match(name) {
                    let v = parts.entry(part.to_string()).or_default();
                    if !v.iter().any(|x| x == p) {
                        v.push(p.to_string());
                    }
                }
            }
        }
    }
    let missing: Vec<String> = RESUME_REQUIRED
        .iter()
        .filter(|p| parts.get(**p).is_none_or(|v| v.is_empty()))
        .map(|p| p.to_string())
        .collect();
    Resume {
        resumable: missing.is_empty(),
        parts,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainer_state_latest_metrics() {
        let ts = parse_trainer_state(
            "trainer_state.json",
            br#"{"global_step": 500, "epoch": 2.5, "log_history": [
                {"step": 100, "loss": 2.0, "epoch": 0.5},
                {"step": 200, "eval_loss": 1.5, "epoch": 1.0},
                {"step": 500, "loss": 1.1, "learning_rate": 0.0001, "epoch": 2.5}]}"#,
        )
        .unwrap();
        assert_eq!(ts.global_step, Some(500));
        assert_eq!(ts.epoch, Some(2.5));
        assert_eq!(ts.metrics["loss"], 1.1);
        assert_eq!(ts.metrics["eval_loss"], 1.5);
        assert!(!ts.metrics.contains_key("step"));
        let mut meta = crate::model::object::Metadata::default();
        meta.metrics.insert("loss".into(), 1.1000000001);
        apply_trainer_state(&mut meta, &ts).unwrap();
        assert_eq!(meta.step, Some(500));
        let mut meta = crate::model::object::Metadata::default();
        meta.metrics.insert("eval_loss".into(), 0.9);
        let e = apply_trainer_state(&mut meta, &ts).unwrap_err().to_string();
        assert!(e.contains("0.9") && e.contains("1.5"), "{e}");
        assert!(parse_trainer_state("t", b"{").is_err());
    }

    #[test]
    fn resume_parts() {
        let files = [
            "model.safetensors",
            "optimizer.pt",
            "scheduler.pt",
            "rng_state.pth",
            "trainer_state.json",
            "config.json",
        ];
        let r = resume_report(files.iter().copied(), &BTreeMap::new());
        assert!(r.resumable, "{r:?}");
        let r = resume_report(files[..2].iter().copied(), &BTreeMap::new());
        assert!(!r.resumable);
        assert_eq!(r.missing, vec!["scheduler", "rng", "trainer_state"]);
        let r = resume_report(["last.ckpt"].into_iter(), &BTreeMap::new());
        assert!(r.resumable);
        let r = resume_report(
            ["model_best.pth.tar", "rng.pt"].into_iter(),
            &BTreeMap::new(),
        );
        assert_eq!(r.missing, vec!["scheduler", "rng"]);
        let mut o = BTreeMap::new();
        o.insert("holds.optimizer".to_string(), "*.opt".to_string());
        let r = resume_report(["w.bin", "x.opt"].into_iter(), &o);
        assert_eq!(r.parts["optimizer"], vec!["x.opt".to_string()]);
    }
}
