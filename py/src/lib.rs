//! `cairn._cairn`: the Python binding of the `cairn` crate. It is thin on purpose: every
//! operation is the library's, called with the GIL released; this module only converts Python
//! values to the library's inputs and the library's outputs to Python values. The pure-Python
//! package `cairn` (py/python/cairn) builds the user-facing API on top: tensors of torch, numpy
//! and JAX, nested state dicts, typed commit records.
//!
//! Invariants:
//! - no panic crosses into Python: every library error becomes a `cairn.Error` subclass carrying
//!   the library's message (its whole source chain), chosen by [`cairn::ErrorKind`];
//! - tensor bytes go in as borrowed uint8 numpy arrays (a zero-copy view of the caller's tensor)
//!   and are copied once, into the file the commit stores; they come out as numpy arrays that
//!   own the buffer the library filled (no second copy);
//! - the GIL is released while the library hashes, encodes, writes or reads; it is held while
//!   `commit_async` copies the caller's tensors, so the copy sees the values at the call.
//!
//! Records (commits, trees, diffs, gc plans) cross as JSON text, the same documents the CLI's
//! `--json` prints, which the Python side decodes.

use cairn::model::object::{DatasetRef, GitInfo};
use cairn::ops::commit::async_commit::AsyncOptions;
use cairn::ops::gc::{Direction, Retention};
use cairn::ops::progress::NoProgress;
use cairn::ops::read::{self, CheckoutOptions};
use cairn::ops::{catalog, diff, gc, inspect, provenance, rev};
use cairn::{
    AsyncCommitter, CommitBuilder, CommitHandle, CommitId, CommitOptions, DType, ErrorKind, Store,
    TensorSlice,
};
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

create_exception!(
    _cairn,
    Error,
    PyException,
    "An error from cairn; the message is the library's."
);
create_exception!(
    _cairn,
    NotFoundError,
    Error,
    "A revision, branch, tag, file, tensor or store that does not exist."
);
create_exception!(
    _cairn,
    PrunedError,
    Error,
    "Data that gc deleted: a pruned commit, or a file released from a slimmed commit."
);
create_exception!(
    _cairn,
    CorruptError,
    Error,
    "The store holds damaged or missing data."
);
create_exception!(
    _cairn,
    BadInputError,
    Error,
    "Input that breaks a rule: a malformed file, path, name, revision, query, policy or tensor."
);

/// The library's error as a Python exception of its kind, with the whole source chain.
fn py_err(e: cairn::Error) -> PyErr {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        src = s.source();
    }
    match e.kind() {
        ErrorKind::NotFound => NotFoundError::new_err(msg),
        ErrorKind::Pruned => PrunedError::new_err(msg),
        ErrorKind::Corrupt => CorruptError::new_err(msg),
        ErrorKind::BadInput => BadInputError::new_err(msg),
        _ => Error::new_err(msg),
    }
}

fn lib<T, E: Into<cairn::Error>>(r: Result<T, E>) -> PyResult<T> {
    r.map_err(|e| py_err(e.into()))
}

fn bad(msg: impl Into<String>) -> PyErr {
    BadInputError::new_err(msg.into())
}

fn json<T: serde::Serialize>(v: &T) -> PyResult<String> {
    serde_json::to_string(v).map_err(|e| Error::new_err(format!("encoding a record: {e}")))
}

/// A dtype by its safetensors name (`F32`, `BF16`, `F8_E4M3`, ...).
fn dtype(name: &str) -> PyResult<DType> {
    DType::ALL
        .iter()
        .copied()
        .find(|d| d.to_string() == name)
        .ok_or_else(|| {
            bad(format!(
                "unknown dtype {name:?}; expected one of {}",
                DType::ALL
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// A tensor borrowed for the commit: name, dtype, shape, bytes.
type Borrowed<'a> = (&'a str, DType, &'a [u64], &'a [u8]);
/// A tensor read back: name, dtype, shape, bytes.
type ReadBack = (String, DType, Vec<u64>, Vec<u8>);
/// A tensor handed to Python: name, dtype name, shape, uint8 array.
type PyTensor<'py> = (String, String, Vec<u64>, Bound<'py, PyArray1<u8>>);

/// One input file, as the Python side describes it.
enum FileIn<'py> {
    /// `("bytes", rel, data)`.
    Bytes(String, Vec<u8>),
    /// `("path", rel, path)`: a file on disk.
    Path(String, PathBuf),
    /// `("dir", "", path)`: a whole directory, as `cairn commit DIR`.
    Dir(PathBuf),
    /// `("tensors", rel, [(name, dtype, shape, uint8 array)], metadata)`.
    Tensors(String, Vec<TensorIn<'py>>, Option<BTreeMap<String, String>>),
}

struct TensorIn<'py> {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    data: PyReadonlyArray1<'py, u8>,
}

fn files_in<'py>(files: &Bound<'py, PyList>) -> PyResult<Vec<FileIn<'py>>> {
    let mut out = Vec::with_capacity(files.len());
    for item in files.iter() {
        let kind: String = item.get_item(0)?.extract()?;
        let rel: String = item.get_item(1)?.extract()?;
        let value = item.get_item(2)?;
        out.push(match kind.as_str() {
            "bytes" => FileIn::Bytes(rel, value.extract::<Vec<u8>>()?),
            "path" => FileIn::Path(rel, value.extract::<PathBuf>()?),
            "dir" => FileIn::Dir(value.extract::<PathBuf>()?),
            "tensors" => {
                let list = value.cast::<PyList>()?;
                let mut tensors = Vec::with_capacity(list.len());
                for t in list.iter() {
                    let name: String = t.get_item(0)?.extract()?;
                    let d: String = t.get_item(1)?.extract()?;
                    let shape: Vec<u64> = t.get_item(2)?.extract()?;
                    let data: PyReadonlyArray1<'py, u8> = t.get_item(3)?.extract()?;
                    if data.as_slice().is_err() {
                        return Err(bad(format!(
                            "{rel}:{name}: tensor bytes are not contiguous"
                        )));
                    }
                    tensors.push(TensorIn {
                        name,
                        dtype: dtype(&d)?,
                        shape,
                        data,
                    });
                }
                let meta = item.get_item(3)?;
                let meta = if meta.is_none() {
                    None
                } else {
                    Some(meta.extract::<BTreeMap<String, String>>()?)
                };
                FileIn::Tensors(rel, tensors, meta)
            }
            other => return Err(bad(format!("unknown input kind {other:?}"))),
        });
    }
    Ok(out)
}

/// Option `key` of `d`: absent and `None` are both `None`; a value of the wrong type is a
/// `BadInputError` naming the key.
fn opt<'py, T>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<T>>
where
    T: for<'a> FromPyObject<'a, 'py>,
    for<'a> <T as FromPyObject<'a, 'py>>::Error: Into<PyErr>,
{
    match d.get_item(key)? {
        Some(v) if !v.is_none() => match v.extract::<T>() {
            Ok(t) => Ok(Some(t)),
            Err(e) => Err(bad(format!("{key}: {}", Into::<PyErr>::into(e)))),
        },
        _ => Ok(None),
    }
}

/// The commit's options from the Python side's dict (every key optional).
fn commit_options(d: &Bound<'_, PyDict>) -> PyResult<CommitOptions> {
    let mut o = CommitOptions {
        message: opt::<String>(d, "message")?.unwrap_or_default(),
        author: opt::<String>(d, "author")?.unwrap_or_else(default_author),
        branch: opt(d, "branch")?,
        opaque: opt(d, "opaque")?.unwrap_or_default(),
        follow_symlinks: opt(d, "follow_symlinks")?.unwrap_or(false),
        ..Default::default()
    };
    let m = &mut o.meta;
    m.step = opt(d, "step")?;
    m.epoch = opt(d, "epoch")?;
    m.run_id = opt(d, "run_id")?;
    m.config = opt(d, "config")?;
    let metrics: BTreeMap<String, f64> = opt(d, "metrics")?.unwrap_or_default();
    for (k, v) in &metrics {
        if !v.is_finite() {
            return Err(bad(format!("metric {k:?} is {v}; metrics must be finite")));
        }
    }
    m.metrics = metrics;
    m.params = opt(d, "params")?.unwrap_or_default();
    if let Some(e) = m.epoch
        && !e.is_finite()
    {
        return Err(bad(format!("epoch is {e}; it must be finite")));
    }
    m.env = provenance::environment();
    let datasets: Vec<(String, PathBuf)> = opt(d, "datasets")?.unwrap_or_default();
    for (name, path) in datasets {
        m.datasets
            .push(lib(provenance::dataset_fingerprint(&name, &path))?);
    }
    let fingerprints: Vec<(String, String)> = opt(d, "dataset_fingerprints")?.unwrap_or_default();
    for (name, fingerprint) in fingerprints {
        m.datasets.push(DatasetRef {
            name,
            fingerprint,
            files: None,
            bytes: None,
        });
    }
    m.git = match opt::<String>(d, "git")?.as_deref() {
        None => None,
        Some("auto") => {
            let repo = match opt::<PathBuf>(d, "git_repo")? {
                Some(r) => r,
                None => std::env::current_dir()
                    .map_err(|e| Error::new_err(format!("current directory: {e}")))?,
            };
            match provenance::git_info(&repo) {
                Ok(g) => Some(g),
                // A hung git must not hang the training loop's commit (as in the CLI).
                Err(e @ provenance::ProvenanceError::GitTimedOut { .. }) => {
                    m.env.insert("git".into(), e.to_string());
                    None
                }
                Err(e) => return Err(py_err(e.into())),
            }
        }
        Some(sha) => {
            if sha.len() < 4 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "git={sha:?}: expected a commit SHA (hex) or \"auto\""
                )));
            }
            Some(GitInfo {
                commit: sha.to_ascii_lowercase(),
                ..Default::default()
            })
        }
    };
    Ok(o)
}

fn default_author() -> String {
    std::env::var("CAIRN_AUTHOR")
        .ok()
        .filter(|a| !a.is_empty())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The outcome of a commit as the Python side reads it.
fn outcome_json(o: &cairn::CommitOutcome) -> PyResult<String> {
    json(o)
}

/// A cairn store, opened.
#[pyclass(module = "cairn._cairn", frozen)]
struct RawStore {
    store: Arc<Store>,
    committer: OnceLock<AsyncCommitter>,
}

impl RawStore {
    fn wrap(store: Store) -> RawStore {
        RawStore {
            store: Arc::new(store),
            committer: OnceLock::new(),
        }
    }

    /// Resolve `rev` against a fresh view of the index, so commits other processes (the CLI,
    /// another training job) made since the store was opened are seen.
    fn resolve_rev(&self, rev: &str) -> PyResult<CommitId> {
        lib(self.store.refresh_if_changed())?;
        lib(rev::resolve(&self.store, rev))
    }
}

#[pymethods]
impl RawStore {
    /// Create a store at `path` (a new or empty directory).
    #[staticmethod]
    fn init(py: Python<'_>, path: PathBuf) -> PyResult<RawStore> {
        let s = py
            .detach(|| Store::init(&path))
            .map_err(|e| py_err(e.into()))?;
        Ok(RawStore::wrap(s))
    }

    /// Open the store at `path`.
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<RawStore> {
        let s = py
            .detach(|| Store::open(&path))
            .map_err(|e| py_err(e.into()))?;
        // A lazy clone reads chunks it lacks from its remote.
        lib(cairn::ops::sync::attach_lazy(&s, &remote_options()))?;
        Ok(RawStore::wrap(s))
    }

    /// Find the store as the CLI does: `explicit`, else `$CAIRN_STORE`, else `.cairn` in
    /// `start` (default: the current directory) or the nearest parent holding one.
    #[staticmethod]
    #[pyo3(signature = (start=None, explicit=None))]
    fn discover(
        py: Python<'_>,
        start: Option<PathBuf>,
        explicit: Option<PathBuf>,
    ) -> PyResult<RawStore> {
        let env = std::env::var_os("CAIRN_STORE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let start = match start {
            Some(s) => s,
            None => std::env::current_dir()
                .map_err(|e| Error::new_err(format!("current directory: {e}")))?,
        };
        // The CLI's config file ($CAIRN_CONFIG, else $XDG_CONFIG_HOME or ~/.config
        // /cairn/config.json): its safe_stores trust stores other users own.
        let config_path = cairn::storage::store::config_path(
            std::env::var_os("CAIRN_CONFIG").as_deref(),
            std::env::var_os("XDG_CONFIG_HOME").as_deref(),
            std::env::var_os("HOME").as_deref(),
        );
        let config = if explicit.is_none() && env.is_none() {
            lib(cairn::storage::store::Config::load(&config_path))?
        } else {
            Default::default()
        };
        let root = lib(cairn::storage::store::discover(
            &cairn::storage::store::Discovery {
                explicit: explicit.as_deref(),
                env: env.as_deref(),
                cwd: &start,
                safe_stores: &config.safe_stores,
                config_path: &config_path.display().to_string(),
            },
        ))?;
        RawStore::open(py, root)
    }

    /// The store's directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.store.root().to_path_buf()
    }

    /// Commit `files` with `opts`; returns the outcome as JSON.
    fn commit(
        &self,
        py: Python<'_>,
        files: &Bound<'_, PyList>,
        opts: &Bound<'_, PyDict>,
    ) -> PyResult<String> {
        let files = files_in(files)?;
        let opts = commit_options(opts)?;
        // Borrow every tensor's bytes before the GIL is released.
        let slices: Vec<Vec<Borrowed<'_>>> = files
            .iter()
            .map(|f| match f {
                FileIn::Tensors(_, ts, _) => ts
                    .iter()
                    .map(|t| {
                        (
                            t.name.as_str(),
                            t.dtype,
                            t.shape.as_slice(),
                            t.data.as_slice().unwrap_or_default(),
                        )
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        let plain: Vec<PlainIn<'_>> = files
            .iter()
            .zip(&slices)
            .map(|(f, s)| PlainIn::of(f, s))
            .collect();
        let store = &*self.store;
        let out = py.detach(move || -> cairn::Result<cairn::CommitOutcome> {
            let mut b = CommitBuilder::new(store, opts);
            for f in plain {
                f.add_to(&mut b)?;
            }
            Ok(b.commit()?)
        });
        let out = lib(out)?;
        if let Some(due) = &out.auto_gc
            && let Ok(Some(claim)) = gc::claim_policy_run(self.store.root())
        {
            // The retention policy runs off the training loop's path, on a thread of its own,
            // claimed before this call returns (so `gc_status(wait=True)` sees it); no claim: a
            // run already waiting covers this commit. A process that exits mid-run leaves
            // nothing half done.
            let (store, branch) = (self.store.clone(), due.branch.clone());
            let _ = std::thread::Builder::new()
                .name("cairn-policy-gc".into())
                .spawn(move || {
                    let trigger = format!("policy after commit on {branch}");
                    let _ = gc::run_policy_claimed(&store, claim, &branch, &trigger);
                });
        }
        outcome_json(&out)
    }

    /// Copy `files` into the async committer's buffers and return a handle to the commit that
    /// runs in the background. The tensors may be changed as soon as this returns.
    fn commit_async(
        &self,
        py: Python<'_>,
        files: &Bound<'_, PyList>,
        opts: &Bound<'_, PyDict>,
    ) -> PyResult<RawHandle> {
        let files = files_in(files)?;
        let opts = commit_options(opts)?;
        let committer = match self.committer.get() {
            Some(c) => c,
            None => {
                let c = lib(AsyncCommitter::with_options(
                    Arc::clone(&self.store),
                    AsyncOptions::default(),
                ))?;
                let _ = self.committer.set(c);
                self.committer
                    .get()
                    .ok_or_else(|| Error::new_err("the async committer did not start"))?
            }
        };
        // Waiting for a free slot (the previous commit) must not hold the GIL.
        let mut c = py
            .detach(|| committer.begin(opts))
            .map_err(|e| py_err(e.into()))?;
        for f in &files {
            match f {
                FileIn::Tensors(rel, ts, meta) => {
                    let slices: Vec<TensorSlice<'_>> = ts
                        .iter()
                        .map(|t| TensorSlice {
                            name: &t.name,
                            dtype: t.dtype,
                            shape: &t.shape,
                            data: t.data.as_slice().unwrap_or_default(),
                        })
                        .collect();
                    lib(c.add_tensors(rel, &slices, meta.as_ref()))?;
                }
                FileIn::Bytes(rel, bytes) => lib(c.add_bytes(rel, bytes))?,
                FileIn::Path(rel, path) => {
                    let bytes = std::fs::read(path)
                        .map_err(|e| Error::new_err(format!("reading {}: {e}", path.display())))?;
                    lib(c.add_bytes(rel, &bytes))?;
                }
                FileIn::Dir(_) => {
                    return Err(bad(
                        "commit_async takes files and tensors, not a directory; use commit",
                    ));
                }
            }
        }
        Ok(RawHandle {
            handle: Mutex::new(Some(c.submit())),
        })
    }

    /// The commit id `rev` names, as hex.
    fn resolve(&self, rev: &str) -> PyResult<String> {
        Ok(self.resolve_rev(rev)?.to_string())
    }

    /// Commits as JSON records (`cairn log --json`): first-parent history from `rev` (default
    /// HEAD), or a catalog query when `where`, `sort` or `all` is given.
    #[pyo3(signature = (rev=None, conds=Vec::new(), sort=None, limit=None, all=false))]
    fn log(
        &self,
        py: Python<'_>,
        rev: Option<String>,
        conds: Vec<String>,
        sort: Option<String>,
        limit: Option<usize>,
        all: bool,
    ) -> PyResult<String> {
        lib(self.store.refresh_if_changed())?;
        let store = &*self.store;
        let out = py.detach(move || -> cairn::Result<Vec<inspect::CommitInfo>> {
            let start = match rev {
                Some(r) => Some(rev::resolve(store, &r)?),
                None => store.head()?,
            };
            let ids: Vec<CommitId> = if conds.is_empty() && sort.is_none() && !all {
                match start {
                    Some(s) => inspect::log(store, s, limit)?
                        .into_iter()
                        .map(|(id, _)| id)
                        .collect(),
                    None => Vec::new(),
                }
            } else {
                let mut query = catalog::Query {
                    conds: conds
                        .iter()
                        .map(|c| catalog::parse_cond(c))
                        .collect::<Result<_, _>>()?,
                    sort: sort.as_deref().map(catalog::SortKey::parse),
                    limit,
                    branches: Default::default(),
                };
                if query.uses("branch") {
                    query.branches = catalog::branch_membership(store)?;
                }
                let rows = if all {
                    store.view().commit_rows()?
                } else {
                    match start {
                        Some(s) => catalog::history_rows(store, s)?,
                        None => Vec::new(),
                    }
                };
                catalog::run(&query, rows)
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect()
            };
            ids.into_iter()
                .map(|id| Ok(inspect::CommitInfo::new(store, id, &store.commit(id)?)))
                .collect()
        });
        json(&lib(out)?)
    }

    /// One commit with its files and tensors, as JSON (`cairn show --json`).
    fn show(&self, py: Python<'_>, rev: &str) -> PyResult<String> {
        let id = self.resolve_rev(rev)?;
        let store = &*self.store;
        json(&lib(py.detach(move || inspect::show(store, id)))?)
    }

    /// The bytes of file `path` in `rev`.
    fn read_file<'py>(
        &self,
        py: Python<'py>,
        rev: &str,
        path: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let id = self.resolve_rev(rev)?;
        let store = &*self.store;
        let bytes = py.detach(move || -> cairn::Result<Vec<u8>> {
            let mut out = Vec::new();
            read::cat(store, id, path, &mut out, false)?;
            Ok(out)
        });
        Ok(PyBytes::new(py, &lib(bytes)?))
    }

    /// The tensors of safetensors file `path` in `rev` (all, or those named), in file order:
    /// `[(name, dtype, shape, uint8 array)]`. Only their chunks are read.
    #[pyo3(signature = (rev, path, names=None))]
    fn read_tensors<'py>(
        &self,
        py: Python<'py>,
        rev: &str,
        path: &str,
        names: Option<Vec<String>>,
    ) -> PyResult<Vec<PyTensor<'py>>> {
        let id = self.resolve_rev(rev)?;
        let store = &*self.store;
        let read = py.detach(move || -> cairn::Result<Vec<ReadBack>> {
            let tree = store.tree(store.commit(id)?.tree)?;
            let file = tree.files.get(path).ok_or_else(|| {
                cairn::Error::from(read::ReadError::NoSuchFile {
                    path: path.to_string(),
                    commit: id,
                })
            })?;
            cairn::storage::state::check_file_not_released(store, id, path)?;
            let mut out = Vec::new();
            let wanted: Vec<String> = match names {
                Some(n) => n,
                None => file
                    .tensors()
                    .filter_map(|(_, s)| s.tensor().map(|(n, _, _)| n.to_string()))
                    .collect(),
            };
            for name in wanted {
                let t = read::find_tensor(&tree, &format!("{path}:{name}"))?;
                let (n, d, shape) = t.segment.tensor().ok_or_else(|| {
                    cairn::Error::from(read::ReadError::NoSuchTensor { spec: name.clone() })
                })?;
                let (n, shape) = (n.to_string(), shape.to_vec());
                let bytes = read::read_tensor(store, &t)?;
                out.push((n, d, shape, bytes));
            }
            Ok(out)
        });
        Ok(lib(read)?
            .into_iter()
            .map(|(n, d, shape, bytes)| (n, d.to_string(), shape, PyArray1::from_vec(py, bytes)))
            .collect())
    }

    /// Tensor `spec` (`NAME` or `FILE:NAME`) of `rev`: `(file, name, dtype, shape, uint8
    /// array)`. Only its chunks are read.
    fn read_tensor<'py>(
        &self,
        py: Python<'py>,
        rev: &str,
        spec: &str,
    ) -> PyResult<(String, PyTensor<'py>)> {
        let id = self.resolve_rev(rev)?;
        let store = &*self.store;
        let read = py.detach(move || -> cairn::Result<(String, ReadBack)> {
            let tree = store.tree(store.commit(id)?.tree)?;
            let t = read::find_tensor(&tree, spec)?;
            cairn::storage::state::check_file_not_released(store, id, &t.file)?;
            let (n, d, shape) = t.segment.tensor().ok_or_else(|| {
                cairn::Error::from(read::ReadError::NoSuchTensor {
                    spec: spec.to_string(),
                })
            })?;
            let (n, shape) = (n.to_string(), shape.to_vec());
            let bytes = read::read_tensor(store, &t)?;
            Ok((t.file.clone(), (n, d, shape, bytes)))
        });
        let (file, (n, d, shape, bytes)) = lib(read)?;
        Ok((
            file,
            (n, d.to_string(), shape, PyArray1::from_vec(py, bytes)),
        ))
    }

    /// Write every file of `rev` into `dir`, byte for byte; the outcome as JSON. `paranoid`
    /// reads every file back and checks its SHA-256.
    #[pyo3(signature = (rev, dir, force=false, paranoid=false))]
    fn checkout(
        &self,
        py: Python<'_>,
        rev: &str,
        dir: PathBuf,
        force: bool,
        paranoid: bool,
    ) -> PyResult<String> {
        let id = self.resolve_rev(rev)?;
        let store = &*self.store;
        let opts = CheckoutOptions {
            force,
            paranoid,
            ..Default::default()
        };
        let out = py.detach(move || {
            read::checkout(store, id, &dir, &opts, &cairn::ops::progress::NoProgress)
        });
        json(&lib(out)?)
    }

    /// Add remote `name` at `url` (`s3://BUCKET/PREFIX` or `file:///PATH`).
    fn add_remote(&self, name: &str, url: &str) -> PyResult<String> {
        let u = lib(cairn::remote::local::add_remote(&self.store, name, url))?;
        Ok(u.to_string())
    }

    /// Every remote with its URL and tracking refs, as JSON (`cairn remote list --json`).
    fn remotes(&self) -> PyResult<String> {
        let all = lib(cairn::remote::local::remotes(&self.store))?;
        let mut v = serde_json::Map::new();
        for (n, e) in &all {
            let t = lib(cairn::remote::local::tracking(&self.store, n))?;
            v.insert(n.clone(), serde_json::json!({"url": e.url, "refs": t.refs}));
        }
        json(&v)
    }

    /// Push `refs` (default: the current branch) to `remote`; the outcome as JSON.
    #[pyo3(signature = (remote, refs, all=false, force=false))]
    fn push(
        &self,
        py: Python<'_>,
        remote: &str,
        refs: Vec<String>,
        all: bool,
        force: bool,
    ) -> PyResult<String> {
        let store = &*self.store;
        let out = py.detach(move || -> cairn::Result<_> {
            let b = bucket(store, remote)?;
            let opts = cairn::ops::sync::PushOptions {
                refs,
                all,
                force,
                pack_size: None,
            };
            Ok(cairn::ops::sync::push(
                store,
                remote,
                &b,
                &opts,
                &NoProgress,
            )?)
        });
        json(&lib(out)?)
    }

    /// Fetch `remote`'s refs, commits and trees; the outcome as JSON.
    fn fetch(&self, py: Python<'_>, remote: &str) -> PyResult<String> {
        let store = &*self.store;
        let out = py.detach(move || -> cairn::Result<_> {
            let b = bucket(store, remote)?;
            Ok(cairn::ops::sync::fetch(store, remote, &b, &NoProgress)?)
        });
        json(&lib(out)?)
    }

    /// Fetch, then fast-forward `branch` (default: the current one); the outcome as JSON.
    #[pyo3(signature = (remote, branch=None))]
    fn pull(&self, py: Python<'_>, remote: &str, branch: Option<String>) -> PyResult<String> {
        let store = &*self.store;
        let out = py.detach(move || -> cairn::Result<_> {
            let b = bucket(store, remote)?;
            Ok(cairn::ops::sync::pull(
                store,
                remote,
                &b,
                branch.as_deref(),
                &NoProgress,
            )?)
        });
        json(&lib(out)?)
    }

    /// What changed from `a` to `b`, as JSON (`cairn diff --json`).
    fn diff(&self, py: Python<'_>, a: &str, b: &str) -> PyResult<String> {
        let (a, b) = (self.resolve_rev(a)?, self.resolve_rev(b)?);
        let store = &*self.store;
        json(&lib(py.detach(move || diff::diff(store, a, b)))?)
    }

    /// Plan (and unless `dry_run`, run) a gc with the given retention rules; the outcome, plan
    /// included, as JSON (`cairn gc --json`).
    #[pyo3(signature = (keep_last=None, keep_best=Vec::new(), keep_every=None, keep_within=None, branches=Vec::new(), all=false, dry_run=false))]
    #[allow(clippy::too_many_arguments)]
    fn gc(
        &self,
        py: Python<'_>,
        keep_last: Option<usize>,
        keep_best: Vec<(usize, String, String)>,
        keep_every: Option<u64>,
        keep_within: Option<String>,
        branches: Vec<String>,
        all: bool,
        dry_run: bool,
    ) -> PyResult<String> {
        let mut retention = Retention {
            keep_last,
            keep_every,
            ..Default::default()
        };
        for (k, metric, dir) in keep_best {
            let d = match dir.as_str() {
                "min" => Direction::Min,
                "max" => Direction::Max,
                other => {
                    return Err(bad(format!(
                        "keep_best direction {other:?}: expected \"min\" or \"max\""
                    )));
                }
            };
            retention.keep_best.push((k, metric, d));
        }
        if let Some(w) = keep_within {
            retention.keep_within_ns = Some(lib(gc::parse_duration_ns(&w))?);
        }
        let opts = gc::GcOptions {
            retention,
            branches,
            all,
            ..Default::default()
        };
        let store = &*self.store;
        json(&lib(py.detach(move || gc::gc(store, &opts, dry_run)))?)
    }

    /// The last gc run on record and whether one runs now, as JSON; with `wait`, first wait
    /// (at most `timeout` seconds) until no gc runs or waits to run.
    #[pyo3(signature = (wait=false, timeout=3600.0))]
    fn gc_status(&self, py: Python<'_>, wait: bool, timeout: f64) -> PyResult<String> {
        if !(timeout.is_finite() && timeout >= 0.0) {
            return Err(bad(format!("timeout {timeout}: must be 0 or more seconds")));
        }
        let store = &*self.store;
        let st = py.detach(move || -> Result<gc::GcStatus, gc::GcError> {
            if wait {
                gc::wait_idle(store, std::time::Duration::from_secs_f64(timeout.min(1e9)))?;
            }
            gc::status(store)
        });
        json(&lib(st)?)
    }

    /// Point tag `name` at `rev`; an existing tag moves only with `move_`.
    #[pyo3(signature = (name, rev, move_=false))]
    fn tag(&self, py: Python<'_>, name: &str, rev: &str, move_: bool) -> PyResult<String> {
        let id = self.resolve_rev(rev)?;
        let full = lib(cairn::storage::refs::tag_ref(name))?;
        let store = &*self.store;
        let who = default_author();
        py.detach(move || -> cairn::Result<()> {
            let current = store.get_ref(&full)?;
            if let (Some(at), false) = (current, move_) {
                return Err(cairn::StoreError::RefExists {
                    name: name.to_string(),
                    at: at.short(),
                }
                .into());
            }
            store.update_ref(&full, current, id, &who, "tag", "")?;
            Ok(())
        })
        .map_err(py_err)?;
        Ok(id.to_string())
    }

    /// Branches and tags as JSON: `{"head": BRANCH, "branches": {..}, "tags": {..}}`.
    fn refs(&self) -> PyResult<String> {
        lib(self.store.refresh_if_changed())?;
        let s = &*self.store;
        let map = |v: Vec<(String, CommitId)>| -> BTreeMap<String, String> {
            v.into_iter().map(|(n, id)| (n, id.to_string())).collect()
        };
        let v = serde_json::json!({
            "head": lib(s.current_branch())?,
            "branches": map(lib(s.branches())?),
            "tags": map(lib(s.tags())?),
        });
        json(&v)
    }
}

/// A commit's input with every Python object already turned into plain Rust data, so it can
/// cross into the GIL-free closure.
enum PlainIn<'a> {
    Bytes(&'a str, &'a [u8]),
    Path(&'a str, &'a std::path::Path),
    Dir(&'a std::path::Path),
    Tensors(
        &'a str,
        &'a [Borrowed<'a>],
        Option<&'a BTreeMap<String, String>>,
    ),
}

impl<'a> PlainIn<'a> {
    fn of(f: &'a FileIn<'_>, slices: &'a [Borrowed<'a>]) -> PlainIn<'a> {
        match f {
            FileIn::Bytes(rel, b) => PlainIn::Bytes(rel, b),
            FileIn::Path(rel, p) => PlainIn::Path(rel, p),
            FileIn::Dir(p) => PlainIn::Dir(p),
            FileIn::Tensors(rel, _, meta) => PlainIn::Tensors(rel, slices, meta.as_ref()),
        }
    }

    fn add_to(self, b: &mut CommitBuilder<'a>) -> cairn::Result<()> {
        match self {
            PlainIn::Bytes(rel, bytes) => Ok(b.add_borrowed_bytes(rel, bytes)?),
            PlainIn::Path(rel, p) => Ok(b.add_path(p, rel)?),
            PlainIn::Dir(p) => Ok(b.add_dir(p)?),
            PlainIn::Tensors(rel, ts, meta) => {
                let slices: Vec<TensorSlice<'_>> = ts
                    .iter()
                    .map(|&(name, dtype, shape, data)| TensorSlice {
                        name,
                        dtype,
                        shape,
                        data,
                    })
                    .collect();
                Ok(b.add_tensor_slices(rel, &slices, meta)?)
            }
        }
    }
}

/// A commit running in the background.
#[pyclass(module = "cairn._cairn", frozen)]
struct RawHandle {
    handle: Mutex<Option<CommitHandle>>,
}

#[pymethods]
impl RawHandle {
    /// Whether the commit has finished (successfully or not).
    fn done(&self) -> bool {
        self.handle
            .lock()
            .map(|h| h.as_ref().is_none_or(CommitHandle::is_finished))
            .unwrap_or(true)
    }

    /// Wait for the commit; its outcome as JSON. A second call is an error.
    fn wait(&self, py: Python<'_>) -> PyResult<String> {
        let h = self
            .handle
            .lock()
            .map_err(|_| Error::new_err("handle poisoned"))?
            .take()
            .ok_or_else(|| Error::new_err("this commit's result was already taken"))?;
        let out = py.detach(move || h.wait());
        outcome_json(&lib(out)?)
    }
}

/// S3 options as the CLI finds them: `~/.aws` files and the `AWS_*` variables.
fn remote_options() -> cairn::remote::RemoteOptions {
    cairn::remote::RemoteOptions::discover(
        |k| std::env::var(k).ok(),
        |p| std::fs::read_to_string(p).ok(),
    )
}

/// The bucket of `store`'s remote `name`.
fn bucket(store: &Store, name: &str) -> cairn::Result<cairn::remote::Bucket> {
    let url = cairn::remote::local::remote_url(store, name)?;
    Ok(cairn::remote::Bucket::open(&url, &remote_options())?)
}

/// Clone the remote at `url` into a new store at `path` (history only, data on first read,
/// when `lazy`); the outcome as JSON.
#[pyfunction]
#[pyo3(signature = (url, path, lazy=false))]
fn clone(py: Python<'_>, url: &str, path: PathBuf, lazy: bool) -> PyResult<String> {
    let out = py.detach(move || -> cairn::Result<_> {
        let u = cairn::remote::RemoteUrl::parse(url)?;
        let b = cairn::remote::Bucket::open(&u, &remote_options())?;
        if lazy {
            return Ok(cairn::ops::sync::clone_lazy(
                &u.to_string(),
                &b,
                &path,
                &NoProgress,
            )?);
        }
        Ok(cairn::ops::sync::clone(
            &u.to_string(),
            &b,
            &path,
            &NoProgress,
        )?)
    });
    json(&lib(out)?)
}

#[pymodule]
fn _cairn(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<RawStore>()?;
    m.add_class::<RawHandle>()?;
    m.add_function(wrap_pyfunction!(clone, m)?)?;
    m.add("Error", py.get_type::<Error>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("PrunedError", py.get_type::<PrunedError>())?;
    m.add("CorruptError", py.get_type::<CorruptError>())?;
    m.add("BadInputError", py.get_type::<BadInputError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "DTYPES",
        DType::ALL.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
    )?;
    Ok(())
}
