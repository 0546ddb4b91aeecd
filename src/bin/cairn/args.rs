//! The command line as clap sees it: every subcommand, flag, default and help text, parsed into
//! raw values. Nothing here checks a value against the store; the command modules turn these
//! into library options.
//!
//! The `*Args` structs carry no doc comments on purpose: clap would take one as the
//! subcommand's long help and change `--help`, which the variant's doc comment already sets.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Git for model checkpoints: a content-addressed, deduplicating checkpoint store"
)]
pub struct Cli {
    /// The store directory (else $CAIRN_STORE, else the nearest .cairn from here upward).
    #[arg(long, global = true, value_name = "PATH")]
    pub store: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a store (default ./.cairn).
    Init(InitArgs),
    /// Commit a checkpoint directory or file.
    Commit(Box<CommitArgs>),
    /// Show history from REV (default HEAD), newest first, following first parents.
    Log(LogArgs),
    /// One line per run id: commits, first and last time, best metric.
    Runs(RunsArgs),
    /// Re-read every file of a commit and check every hash; records the result.
    Verify(VerifyArgs),
    /// Show a commit: metadata, files and tensors, stored vs logical size.
    Show(ShowArgs),
    /// Compare two commits per file and per tensor.
    Diff(DiffArgs),
    /// Write a commit's files into DIR, byte for byte (HEAD does not move).
    Checkout(CheckoutArgs),
    /// Write one file of a commit to stdout: REV:PATH.
    Cat(CatArgs),
    /// Write one tensor to a .npy or .safetensors file, reading only its chunks.
    Tensor(TensorArgs),
    /// List branches, or create NAME at REV (default HEAD).
    Branch(BranchArgs),
    /// Make BRANCH the current branch.
    Switch(SwitchArgs),
    /// List tags, or create NAME at REV (default HEAD).
    Tag(TagArgs),
    /// Every ref move, oldest first (optionally of one ref: a branch, tag, or HEAD).
    Reflog(ReflogArgs),
    /// Logical vs stored bytes, dedup and compression ratios, chunks, packs.
    Stats(StatsArgs),
    /// Apply retention rules and reclaim space: print the plan with --dry-run, else run it.
    Gc(Box<GcArgs>),
    /// Show, set or clear the retention policy applied after every commit.
    Retention {
        #[command(subcommand)]
        cmd: RetentionCmd,
    },
    /// Check the store: structure always, chunk data with --read-data.
    Fsck(FsckArgs),
    /// Repair: rebuild the index from the packs and logs, or heal corrupt chunks from files.
    Repair(RepairArgs),
    /// Add, list or remove remotes (s3://BUCKET/PREFIX or file:///PATH).
    Remote {
        #[command(subcommand)]
        cmd: RemoteCmd,
    },
    /// Send branches and tags to a remote: [REMOTE] [BRANCH|TAG ...], only what it lacks.
    Push(PushArgs),
    /// Read a remote's refs, commits and trees (no tensor data) as REMOTE/BRANCH.
    Fetch(FetchArgs),
    /// Fetch, then fast-forward a local branch to the remote's, with its data.
    Pull(PullArgs),
    /// Make a new store at DIR holding everything a remote holds.
    Clone(CloneArgs),
}

#[derive(Subcommand)]
pub enum RemoteCmd {
    /// Add remote NAME at URL.
    Add {
        name: String,
        url: String,
        #[arg(long)]
        json: bool,
    },
    /// List remotes with their URLs and tracking refs.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove remote NAME and what this store kept about it.
    Remove { name: String },
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// The remote (default origin), then branches or tags (default: the current branch).
    pub args: Vec<String>,
    /// Push every branch and tag.
    #[arg(long)]
    pub all: bool,
    /// Replace the remote's ref even when the push is not a fast-forward.
    #[arg(long)]
    pub force: bool,
    /// Seal data packs at BYTES (tests of resumed pushes use small packs).
    #[arg(long, value_name = "BYTES", hide = true)]
    pub pack_size: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// The remote (default origin).
    pub remote: Option<String>,
    /// In a lazy clone, make these commits' data local (default: HEAD).
    #[arg(long, num_args = 0.., value_name = "REV")]
    pub data: Option<Vec<String>>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// The remote (default origin).
    pub remote: Option<String>,
    /// The branch (default: the current one).
    pub branch: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct CloneArgs {
    /// s3://BUCKET/PREFIX or file:///PATH.
    pub url: String,
    /// The new store's directory.
    pub dir: PathBuf,
    /// History now, tensor data on first read: refs, commits, trees and indexes only.
    #[arg(long)]
    pub lazy: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct InitArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct CommitArgs {
    /// Checkpoint directory (or a single file).
    pub path: PathBuf,
    #[arg(short = 'm', long, default_value = "")]
    pub message: String,
    #[arg(long)]
    pub step: Option<u64>,
    #[arg(long)]
    pub epoch: Option<f64>,
    /// NAME=VALUE, repeatable.
    #[arg(long = "metric", value_name = "NAME=VALUE")]
    pub metrics: Vec<String>,
    /// NAME=VALUE hyperparameter, repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// A JSON file of hyperparameters/config, stored canonically with the commit.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A dataset directory or file to fingerprint ([NAME=]PATH), repeatable.
    #[arg(long = "dataset", value_name = "[NAME=]PATH")]
    pub datasets: Vec<String>,
    /// A dataset fingerprint computed elsewhere ([NAME=]STR), repeatable.
    #[arg(long = "dataset-fingerprint", value_name = "[NAME=]STR")]
    pub dataset_fingerprints: Vec<String>,
    /// The training code's git commit: a SHA, or `auto` to read it from the repository around
    /// the current directory (or --git-repo).
    #[arg(long)]
    pub git: Option<String>,
    #[arg(long)]
    pub git_repo: Option<PathBuf>,
    #[arg(long)]
    pub run_id: Option<String>,
    /// KEY=VALUE environment fact, repeatable (machine facts are captured automatically).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Branch to commit to (default: the current branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// Store files matching GLOB as plain bytes, repeatable.
    #[arg(long = "opaque", value_name = "GLOB")]
    pub opaque: Vec<String>,
    /// Author (default $CAIRN_AUTHOR, else user@host).
    #[arg(long)]
    pub author: Option<String>,
    /// With --git auto on a dirty tree, store the diff as `_cairn/git.diff` in the commit.
    #[arg(long)]
    pub git_diff: bool,
    /// A requirements.txt, environment.yml, lock file or image digest file, stored as
    /// `_cairn/env/<name>` in the commit; repeatable.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// PART=GLOB: files matching GLOB provide resume PART (weights, optimizer, scheduler, rng,
    /// trainer_state, config), for layouts cairn does not recognise; repeatable.
    #[arg(long = "holds", value_name = "PART=GLOB")]
    pub holds: Vec<String>,
    /// Do not take step, epoch and metrics from trainer_state.json.
    #[arg(long)]
    pub no_trainer_state: bool,
    /// Follow symlinks that point outside DIR (default: refuse them).
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Stage this as one part of sharded commit ID (one process per rank); with --part.
    #[arg(long, value_name = "ID", requires = "part")]
    pub txn: Option<String>,
    /// I/N: this process's part of the sharded commit (1-based); the commit appears when all N
    /// parts are staged.
    #[arg(long, value_name = "I/N", requires = "txn")]
    pub part: Option<String>,
    /// K (1 to 32; default 4): a chunk is stored standalone at least every K versions, so a
    /// read decodes at most K chunks (2 with the default --delta-base root). 1 stores every
    /// chunk standalone: fastest reads, more disk.
    #[arg(long, value_name = "K")]
    pub delta_depth: Option<u32>,
    /// What a changed chunk is delta-coded against: "root" (default), the standalone root of
    /// the parent chunk's chain, so a read decodes at most one base; or "parent", the parent's
    /// chunk itself: about 2% smaller, but a read at depth d decodes d+1 chunks.
    #[arg(long, value_name = "root|parent", default_value = "root")]
    pub delta_base: cairn::ops::commit::DeltaBase,
    /// After publishing, re-read every file in a fresh process and record the result.
    #[arg(long)]
    pub verify: bool,
    /// After publishing, check the commit out to a temporary directory and run CMD there
    /// (sh -c); its exit status is recorded, and a failure fails this command.
    #[arg(long, value_name = "CMD")]
    pub verify_cmd: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct LogArgs {
    pub rev: Option<String>,
    #[arg(short = 'n', long)]
    pub limit: Option<usize>,
    /// KEY OP VALUE filter (docs/catalog.md), repeatable; conditions are ANDed.
    #[arg(long = "where", value_name = "COND")]
    pub conds: Vec<String>,
    /// Order by KEY (a metric, param or field); -KEY for descending.
    #[arg(long, allow_hyphen_values = true)]
    pub sort: Option<String>,
    /// Search every commit in the store, not just the history of REV.
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct RunsArgs {
    /// METRIC[:min|max] to rank by (default: eval_loss, val_loss or loss, minimized).
    #[arg(long)]
    pub metric: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[arg(default_value = "HEAD")]
    pub rev: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    #[arg(default_value = "HEAD")]
    pub rev: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct DiffArgs {
    pub a: String,
    pub b: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct CheckoutArgs {
    pub rev: String,
    pub dir: PathBuf,
    /// Write into a non-empty directory, replacing files of the same names.
    #[arg(long)]
    pub force: bool,
    /// Also write the commit's metadata as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub meta: Option<PathBuf>,
    /// For a slimmed commit, restore the remaining files (exit 0) instead of refusing.
    #[arg(long)]
    pub partial: bool,
    /// Also read every file back once written and check its recorded SHA-256 (by default each
    /// chunk is checked by its BLAKE3 id and each file by its size).
    #[arg(long)]
    pub paranoid: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct CatArgs {
    pub spec: String,
    /// Also check the SHA-256 of the bytes written against the recorded one (exit 1 at the end
    /// on a mismatch).
    #[arg(long)]
    pub paranoid: bool,
}

#[derive(clap::Args)]
pub struct TensorArgs {
    pub rev: String,
    /// NAME or FILE:NAME.
    pub name: String,
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct BranchArgs {
    pub name: Option<String>,
    pub rev: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct SwitchArgs {
    pub branch: String,
}

#[derive(clap::Args)]
pub struct TagArgs {
    pub name: Option<String>,
    pub rev: Option<String>,
    /// Move an existing tag (compare-and-swap against its current target).
    #[arg(long = "move")]
    pub move_: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ReflogArgs {
    pub name: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct StatsArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct GcArgs {
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// K:METRIC:min|max, repeatable.
    #[arg(long, value_name = "K:METRIC:DIR")]
    pub keep_best: Vec<String>,
    /// METRIC:min|max, repeatable.
    #[arg(long, value_name = "METRIC:DIR")]
    pub keep_improving: Vec<String>,
    #[arg(long, value_name = "N")]
    pub keep_every: Option<u64>,
    /// A duration: 7d, 12h, 30m.
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Release files matching GLOB from older commits (keeping the rest), repeatable.
    #[arg(long, value_name = "GLOB")]
    pub slim: Vec<String>,
    /// Commits of the branch exempt from --slim, newest first.
    #[arg(long, value_name = "N")]
    pub slim_keep_last: Option<usize>,
    /// Apply the rules to this branch (repeatable; default the current branch).
    #[arg(long)]
    pub branch: Vec<String>,
    /// Apply the rules to every branch.
    #[arg(long)]
    pub all: bool,
    /// Use the stored retention policy as the rules.
    #[arg(long)]
    pub policy: bool,
    /// Repack packs with more than this fraction of dead bytes.
    #[arg(long, default_value_t = 0.3)]
    pub repack_threshold: f64,
    /// Once copied, wait at most this long for running commits to publish before publishing
    /// (past it, only mark dead chunks for a later run: deferred).
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    pub wait: f64,
    #[arg(long)]
    pub dry_run: bool,
    /// Report the last gc run (the retention policy's run after a commit, or a manual one) and
    /// whether one is running; nothing is collected.
    #[arg(long, conflicts_with = "dry_run")]
    pub status: bool,
    /// With --status: first wait until no gc runs or waits to run.
    #[arg(long, requires = "status")]
    pub wait_idle: bool,
    /// The background run a commit starts: apply the stored policy to BRANCH, at most one run
    /// at a time (internal).
    #[arg(long, value_name = "BRANCH", hide = true)]
    pub run_policy: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum RetentionCmd {
    /// Print the stored policy.
    Show,
    /// Store a policy, e.g. 'keep-last 5, keep-best 3:val_loss:min'.
    Set { policy: String },
    /// Remove the stored policy.
    Clear,
}

#[derive(clap::Args)]
pub struct FsckArgs {
    /// Check the remote NAME (its bucket) instead of this store.
    #[arg(long, value_name = "NAME")]
    pub remote: Option<String>,
    /// Decode and re-hash every chunk.
    #[arg(long)]
    pub read_data: bool,
    /// Re-hash only slice I of N (e.g. 3/7); N runs cover everything.
    #[arg(long, value_name = "I/N")]
    pub read_data_subset: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct RepairArgs {
    /// Rebuild the RocksDB index from packs, reflog and statelog.
    #[arg(long)]
    pub rebuild_index: bool,
    /// Re-chunk the files under PATH and write a good copy of every damaged chunk they hold.
    #[arg(long, value_name = "PATH")]
    pub from: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}
