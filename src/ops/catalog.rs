//! The experiment catalog: querying commits by metrics, params, run, dataset, code and time.
//!
//! Query syntax (docs/catalog.md): each `--where` is `KEY OP VALUE` with OP one of
//! `<`, `<=`, `>`, `>=`, `=`, `!=`, `~` (contains). Conditions are ANDed. KEY is a field
//! (`run`, `step`, `epoch`, `time`, `git`, `dataset`, `author`, `message`, `branch`, `id`), or
//! `metric.NAME`, `param.NAME`, `env.NAME`; a bare NAME means the metric NAME if any commit
//! records it, else the param NAME. Numbers compare as numbers, `time` as RFC 3339 or
//! `YYYY-MM-DD` (UTC); `git` and `id` match by prefix, `dataset` matches any of a commit's
//! fingerprints by prefix.
//!
//! Invariant: queries read only the index's commit rows (one RocksDB scan), never pack data.

#![warn(missing_docs)]

use crate::model::id::CommitId;
use crate::storage::error::StoreError;
use crate::storage::index::{CommitRow, IndexError};
use std::cmp::Ordering;
use std::collections::HashMap;

/// A query the catalog cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// A `--where` condition that does not parse.
    #[error("--where {expr:?}: {what}")]
    BadCondition {
        /// The condition as given.
        expr: String,
        /// What is wrong with it.
        what: String,
    },
    /// The store failed while reading commit rows.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<IndexError> for CatalogError {
    fn from(e: IndexError) -> CatalogError {
        CatalogError::Store(e.into())
    }
}

type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// A comparison operator of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `=` (numbers numerically, times as times, `git`/`id`/`dataset` by prefix, else exact)
    Eq,
    /// `!=`
    Ne,
    /// `~`: the value contains the text
    Contains,
}

/// One `KEY OP VALUE` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Cond {
    /// The field, `metric.NAME`, `param.NAME`, `env.NAME`, or a bare name.
    pub key: String,
    /// How the field compares with the value.
    pub op: Op,
    /// The value, as typed.
    pub value: String,
}

fn bad(expr: &str, what: &str) -> CatalogError {
    CatalogError::BadCondition {
        expr: expr.to_string(),
        what: what.to_string(),
    }
}

/// Parse `KEY OP VALUE` (spaces around OP optional).
pub fn parse_cond(expr: &str) -> Result<Cond> {
    let ops = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("!=", Op::Ne),
        ("<", Op::Lt),
        (">", Op::Gt),
        ("=", Op::Eq),
        ("~", Op::Contains),
    ];
    let (pos, tok, op) = ops
        .iter()
        .filter_map(|(t, o)| expr.find(t).map(|p| (p, *t, *o)))
        .min_by_key(|(p, t, _)| (*p, std::cmp::Reverse(t.len())))
        .ok_or_else(|| {
            bad(
                expr,
                "expected KEY OP VALUE with OP one of < <= > >= = != ~",
            )
        })?;
    let key = expr[..pos].trim();
    let value = expr[pos + tok.len()..].trim();
    if key.is_empty() || value.is_empty() {
        return Err(bad(expr, "missing key or value"));
    }
    Ok(Cond {
        key: key.to_string(),
        op,
        value: value.trim_matches(|c| c == '\'' || c == '"').to_string(),
    })
}

/// A value of a commit field.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A number (step, epoch, metric, numeric param).
    Num(f64),
    /// Text (run, author, message, git, id, env, other params).
    Text(String),
    /// Several texts (dataset fingerprints): the condition holds if it holds for one.
    Many(Vec<String>),
}

/// Parse a time bound: RFC 3339 or a plain date (UTC midnight).
pub fn parse_time(s: &str) -> Option<i64> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    humantime::parse_rfc3339_weak(&full)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
}

/// What a row says for `key` (None: the commit lacks it, and the condition fails).
pub fn lookup(id: &CommitId, row: &CommitRow, key: &str, bare_is_metric: bool) -> Option<Value> {
    let num = |x: Option<f64>| x.map(Value::Num);
    match key {
        "run" | "run_id" => row.run_id.clone().map(Value::Text),
        "step" => num(row.step.map(|s| s as f64)),
        "epoch" => num(row.epoch),
        "time" => Some(Value::Num(row.time_ns as f64)),
        "git" => row.git.clone().map(Value::Text),
        "dataset" => Some(Value::Many(row.datasets.clone())),
        "author" => Some(Value::Text(row.author.clone())),
        "message" => Some(Value::Text(row.message.clone())),
        "id" => Some(Value::Text(id.to_hex())),
        _ => {
            if let Some(m) = key.strip_prefix("metric.") {
                return num(row.metrics.get(m).copied());
            }
            if let Some(p) = key.strip_prefix("param.") {
                return row.params.get(p).map(|v| text_or_num(v));
            }
            if let Some(e) = key.strip_prefix("env.") {
                return row.env.get(e).map(|v| Value::Text(v.clone()));
            }
            if bare_is_metric {
                num(row.metrics.get(key).copied())
            } else {
                row.params.get(key).map(|v| text_or_num(v))
            }
        }
    }
}

fn text_or_num(v: &str) -> Value {
    v.parse::<f64>()
        .map(Value::Num)
        .unwrap_or_else(|_| Value::Text(v.to_string()))
}

fn cmp_ok(ord: Ordering, op: Op) -> bool {
    match op {
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Contains => false,
    }
}

/// Whether `v` satisfies `c`.
pub fn matches(c: &Cond, v: &Value) -> bool {
    let prefix_key = matches!(c.key.as_str(), "git" | "id" | "dataset");
    match v {
        Value::Many(items) => items.iter().any(|i| matches(c, &Value::Text(i.clone()))),
        Value::Num(x) => {
            let bound = if c.key == "time" {
                parse_time(&c.value).map(|t| t as f64)
            } else {
                c.value.parse::<f64>().ok()
            };
            match (c.op, bound) {
                (Op::Contains, _) => x.to_string().contains(&c.value),
                (_, Some(b)) => x.partial_cmp(&b).is_some_and(|o| cmp_ok(o, c.op)),
                (_, None) => false,
            }
        }
        Value::Text(s) => match c.op {
            Op::Contains => s.contains(&c.value),
            Op::Eq if prefix_key => {
                s.starts_with(&c.value.to_ascii_lowercase()) || s.starts_with(&c.value)
            }
            Op::Ne if prefix_key => !s.starts_with(&c.value),
            op => cmp_ok(s.as_str().cmp(c.value.as_str()), op),
        },
    }
}

/// Sort key: `KEY` ascending, or `-KEY` descending; commits lacking the key go last.
#[derive(Clone, Debug)]
pub struct SortKey {
    /// The key, spelled as in a condition.
    pub key: String,
    /// Largest first.
    pub descending: bool,
}

impl SortKey {
    /// `KEY` (ascending) or `-KEY` (descending).
    pub fn parse(s: &str) -> SortKey {
        match s.strip_prefix('-') {
            Some(k) => SortKey {
                key: k.to_string(),
                descending: true,
            },
            None => SortKey {
                key: s.to_string(),
                descending: false,
            },
        }
    }
}

/// A catalog query.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Conditions, all of which must hold.
    pub conds: Vec<Cond>,
    /// Order of the result; history order when absent.
    pub sort: Option<SortKey>,
    /// At most this many rows.
    pub limit: Option<usize>,
    /// For the `branch` key: the branches (short names) whose history holds each commit, from
    /// [`branch_membership`]. Left empty, `branch` conditions match nothing.
    pub branches: HashMap<CommitId, Vec<String>>,
}

impl Query {
    /// Whether a condition or the sort uses `key`.
    pub fn uses(&self, key: &str) -> bool {
        self.conds.iter().any(|c| c.key == key) || self.sort.as_ref().is_some_and(|s| s.key == key)
    }
}

/// Which branches' histories (through every parent) hold each commit, by short branch name.
pub fn branch_membership(
    store: &crate::storage::store::Store,
) -> Result<HashMap<CommitId, Vec<String>>> {
    let parents: HashMap<CommitId, Vec<CommitId>> = store
        .view()
        .commit_rows()?
        .into_iter()
        .map(|(id, r)| (id, r.parents))
        .collect();
    let mut out: HashMap<CommitId, Vec<String>> = HashMap::new();
    for (name, head) in store.branches()? {
        let mut todo = vec![head];
        let mut seen = std::collections::HashSet::new();
        while let Some(c) = todo.pop() {
            if !seen.insert(c) {
                continue;
            }
            out.entry(c).or_default().push(name.clone());
            if let Some(ps) = parents.get(&c) {
                todo.extend(ps.iter().copied());
            }
        }
    }
    Ok(out)
}

/// Filter and order rows. A bare key is a metric when any row records a metric of that name.
pub fn run(query: &Query, rows: Vec<(CommitId, CommitRow)>) -> Vec<(CommitId, CommitRow)> {
    let bare_metric = |k: &str| rows.iter().any(|(_, r)| r.metrics.contains_key(k));
    let cond_modes: Vec<bool> = query.conds.iter().map(|c| bare_metric(&c.key)).collect();
    let sort_mode = query
        .sort
        .as_ref()
        .map(|s| bare_metric(&s.key))
        .unwrap_or(true);
    let mut out: Vec<(CommitId, CommitRow)> = rows
        .into_iter()
        .filter(|(id, row)| {
            query.conds.iter().zip(&cond_modes).all(|(c, &m)| {
                if c.key == "branch" {
                    let names = query.branches.get(id).cloned().unwrap_or_default();
                    // Exact names: `branch = ma` is not `main`.
                    return match c.op {
                        Op::Eq => names.contains(&c.value),
                        Op::Ne => !names.contains(&c.value),
                        _ => matches(c, &Value::Many(names)),
                    };
                }
                lookup(id, row, &c.key, m).is_some_and(|v| matches(c, &v))
            })
        })
        .collect();
    match &query.sort {
        Some(s) => {
            // Decorate once: the key of each row, then sort on it.
            let mut keyed: Vec<(Option<f64>, (CommitId, CommitRow))> = out
                .into_iter()
                .map(|(id, r)| {
                    let k = match lookup(&id, &r, &s.key, sort_mode) {
                        Some(Value::Num(x)) if !x.is_nan() => Some(x),
                        _ => None,
                    };
                    (k, (id, r))
                })
                .collect();
            keyed.sort_by(|(ka, (_, a)), (kb, (_, b))| match (ka, kb) {
                (Some(x), Some(y)) => {
                    let o = x.partial_cmp(y).unwrap_or(Ordering::Equal);
                    let o = if s.descending { o.reverse() } else { o };
                    o.then(b.time_ns.cmp(&a.time_ns))
                }
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => b.time_ns.cmp(&a.time_ns),
            });
            out = keyed.into_iter().map(|(_, row)| row).collect();
        }
        None => out.sort_by_key(|(_, r)| std::cmp::Reverse(r.time_ns)),
    }
    if let Some(l) = query.limit {
        out.truncate(l);
    }
    out
}

/// The rows of `start` and all its ancestors (every parent, not only the first), read from the
/// index alone.
pub fn history_rows(
    store: &crate::storage::store::Store,
    start: CommitId,
) -> Result<Vec<(CommitId, CommitRow)>> {
    // One sequential scan beats a point lookup per ancestor on long histories.
    let mut all: std::collections::HashMap<CommitId, CommitRow> =
        store.view().commit_rows()?.into_iter().collect();
    let mut todo = vec![start];
    let mut out = Vec::new();
    while let Some(id) = todo.pop() {
        let Some(row) = all.remove(&id) else {
            if out.iter().any(|(seen, _)| *seen == id) {
                continue;
            }
            return Err(StoreError::MissingObject { id: id.into() }.into());
        };
        todo.extend(row.parents.iter().copied());
        out.push((id, row));
    }
    Ok(out)
}

/// One line of `cairn runs`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunSummary {
    /// The run id.
    pub run_id: String,
    /// Commits recorded for it.
    pub commits: u64,
    /// Time of its first commit, nanoseconds since the Unix epoch.
    pub first_ns: i64,
    /// Time of its last commit, nanoseconds since the Unix epoch.
    pub last_ns: i64,
    /// The metric its best commit is judged by, if any.
    pub metric: Option<String>,
    /// The best value of that metric.
    pub best: Option<f64>,
    /// Hex id of the commit that reached it.
    pub best_commit: Option<String>,
}

/// Group rows by run id (commits without one are grouped as `-`), with the best value of
/// `metric` (default: the first of eval_loss, val_loss, loss that any commit records; minimized
/// unless `maximize`). Runs are listed by their last commit, newest first.
pub fn runs(
    rows: &[(CommitId, CommitRow)],
    metric: Option<&str>,
    maximize: bool,
) -> Vec<RunSummary> {
    let metric = metric.map(str::to_string).or_else(|| {
        ["eval_loss", "val_loss", "loss"]
            .iter()
            .find(|m| rows.iter().any(|(_, r)| r.metrics.contains_key(**m)))
            .map(|m| m.to_string())
    });
    let mut by_run: std::collections::BTreeMap<String, RunSummary> = Default::default();
    for (id, r) in rows {
        let key = r.run_id.clone().unwrap_or_else(|| "-".into());
        let e = by_run.entry(key.clone()).or_insert(RunSummary {
            run_id: key,
            commits: 0,
            first_ns: i64::MAX,
            last_ns: i64::MIN,
            metric: metric.clone(),
            best: None,
            best_commit: None,
        });
        e.commits += 1;
        e.first_ns = e.first_ns.min(r.time_ns);
        e.last_ns = e.last_ns.max(r.time_ns);
        if let Some(v) = metric
            .as_ref()
            .and_then(|m| r.metrics.get(m))
            .filter(|v| !v.is_nan())
        {
            let better = match e.best {
                None => true,
                Some(b) => {
                    if maximize {
                        *v > b
                    } else {
                        *v < b
                    }
                }
            };
            if better {
                e.best = Some(*v);
                e.best_commit = Some(id.to_hex());
            }
        }
    }
    let mut out: Vec<RunSummary> = by_run.into_values().collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.last_ns));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64, loss: f64, run: &str) -> CommitRow {
        let mut r = CommitRow {
            time_ns: step as i64 * 1_000_000_000,
            step: Some(step),
            run_id: Some(run.into()),
            git: Some("abc123ff".into()),
            datasets: vec!["fp1".into(), "fp2".into()],
            ..Default::default()
        };
        r.metrics.insert("val_loss".into(), loss);
        r.params.insert("lr".into(), "3e-4".into());
        r.params.insert("opt".into(), "adam".into());
        r
    }

    #[test]
    fn parses_conditions() {
        assert_eq!(
            parse_cond("val_loss < 0.5").unwrap(),
            Cond {
                key: "val_loss".into(),
                op: Op::Lt,
                value: "0.5".into()
            }
        );
        assert_eq!(parse_cond("step>=10").unwrap().op, Op::Ge);
        assert_eq!(parse_cond("run != r1").unwrap().op, Op::Ne);
        assert_eq!(parse_cond("message ~ 'warm'").unwrap().value, "warm");
        assert!(parse_cond("val_loss").is_err());
        assert!(parse_cond("< 3").is_err());
    }

    #[test]
    fn every_operator() {
        let id = CommitId([1; 32]);
        let r = row(100, 0.4, "r42");
        let t = |e: &str| {
            let c = parse_cond(e).unwrap();
            let bare = r.metrics.contains_key(&c.key);
            lookup(&id, &r, &c.key, bare).is_some_and(|v| matches(&c, &v))
        };
        assert!(t("val_loss < 0.5") && !t("val_loss < 0.4") && t("val_loss <= 0.4"));
        assert!(t("val_loss > 0.3") && !t("val_loss > 0.4") && t("val_loss >= 0.4"));
        assert!(t("val_loss = 0.4") && t("val_loss != 0.5") && !t("val_loss != 0.4"));
        assert!(t("run = r42") && !t("run = r4") && t("run ~ r4") && t("run != r1"));
        assert!(t("git = abc12") && !t("git = abd"));
        assert!(t("dataset = fp2") && !t("dataset = zz"));
        assert!(t("lr < 1e-3") && t("param.lr = 3e-4") && t("opt = adam"));
        assert!(t("metric.val_loss < 1") && !t("metric.nope < 1"));
        assert!(t("step >= 100") && t("time > 1970-01-01") && !t("time > 2030-01-01T00:00:00Z"));
        assert!(t(&format!("id = {}", &id.to_hex()[..6])));
    }

    #[test]
    fn sorts_filters_limits() {
        let rows: Vec<_> = (1..=5u64)
            .map(|i| {
                (
                    CommitId([i as u8; 32]),
                    row(i, 1.0 / i as f64, if i % 2 == 0 { "a" } else { "b" }),
                )
            })
            .collect();
        let q = Query {
            conds: vec![parse_cond("run = b").unwrap()],
            sort: Some(SortKey::parse("val_loss")),
            limit: Some(2),
            ..Default::default()
        };
        let out = run(&q, rows.clone());
        assert_eq!(
            out.iter().map(|(_, r)| r.step.unwrap()).collect::<Vec<_>>(),
            vec![5, 3]
        );
        let q = Query {
            sort: Some(SortKey::parse("-step")),
            ..Default::default()
        };
        assert_eq!(run(&q, rows)[0].1.step, Some(5));
    }
}
