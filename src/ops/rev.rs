//! Revisions: how a user names a commit.
//!
//! Grammar: `BASE SUFFIX*` where BASE is `HEAD`, a branch, a tag, or a unique hex prefix of a
//! commit id (at least 4 digits), and each SUFFIX is `~N` (N first parents back, `~` alone = 1)
//! or `^` (the first parent; `^N` the N-th parent). Branches win over tags, tags over prefixes;
//! branch and tag names that look like hex are refused when created, so the order never hides a
//! commit.

#![warn(missing_docs)]

use crate::model::id::{CommitId, MIN_PREFIX};
use crate::storage::error::StoreError;
use crate::storage::index::IndexError;
use crate::storage::refs;
use crate::storage::store::Store;

/// A revision that names no commit, or names one ambiguously.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevError {
    /// Nothing is called `rev`.
    #[error("unknown revision {rev:?}{hint}")]
    UnknownRevision {
        /// The revision as given.
        rev: String,
        /// Why nothing matched, starting with ": ".
        hint: String,
    },
    /// A commit id prefix that matches more than one commit.
    #[error("revision {rev:?} is ambiguous: it matches {matches}")]
    AmbiguousRevision {
        /// The revision as given.
        rev: String,
        /// Short ids of (up to three of) the matches.
        matches: String,
    },
    /// A revision that breaks the grammar, or walks past the first commit.
    #[error("{rev}: {what}")]
    BadRevision {
        /// The revision as given.
        rev: String,
        /// What is wrong with it.
        what: String,
    },
    /// `HEAD` on a branch with no commit yet.
    #[error("branch {branch} has no commits yet")]
    UnbornBranch {
        /// The current branch.
        branch: String,
    },
    /// The store failed while resolving.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<IndexError> for RevError {
    fn from(e: IndexError) -> RevError {
        RevError::Store(e.into())
    }
}

type Result<T, E = RevError> = std::result::Result<T, E>;

/// One `~N` or `^N` suffix.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Ancestor(u32),
    Parent(u32),
}

fn split(rev: &str) -> Result<(&str, Vec<Step>)> {
    let bad = |what: &str| RevError::BadRevision {
        rev: rev.to_string(),
        what: what.to_string(),
    };
    let cut = rev.find(['~', '^']).unwrap_or(rev.len());
    let (base, mut rest) = rev.split_at(cut);
    if base.is_empty() {
        return Err(bad("nothing before ~ or ^"));
    }
    let mut steps = Vec::new();
    while let Some(op) = rest.chars().next() {
        rest = &rest[1..];
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        let n = if digits == 0 {
            1
        } else {
            rest[..digits]
                .parse::<u32>()
                .map_err(|_| bad("the number after ~ or ^ is too large"))?
        };
        rest = &rest[digits..];
        steps.push(if op == '~' {
            Step::Ancestor(n)
        } else {
            Step::Parent(n)
        });
        if !rest.is_empty() && !rest.starts_with(['~', '^']) {
            return Err(bad("expected ~N or ^N after the base"));
        }
    }
    Ok((base, steps))
}

fn resolve_base(store: &Store, base: &str, rev: &str) -> Result<CommitId> {
    if base == "HEAD" {
        return store.head()?.ok_or_else(|| RevError::UnbornBranch {
            branch: store.current_branch().unwrap_or_default(),
        });
    }
    let view = store.view();
    if refs::check_name("branch", base).is_ok() {
        if let Some(id) = view.get_ref(&format!("{}{base}", refs::HEADS))? {
            return Ok(id);
        }
        if let Some(id) = view.get_ref(&format!("{}{base}", refs::TAGS))? {
            return Ok(id);
        }
    }
    if let Some(id) = remote_tracking(store, base, rev)? {
        return Ok(id);
    }
    if base.len() >= MIN_PREFIX && base.len() <= 64 && base.chars().all(|c| c.is_ascii_hexdigit()) {
        let lower = base.to_ascii_lowercase();
        let bytes = hex::decode(&lower[..lower.len() / 2 * 2]).expect("even-length hex decodes");
        let found: Vec<CommitId> = view
            .commits_with_prefix(&bytes, 1 << 16)?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&lower))
            .take(3)
            .collect();
        return match found.len() {
            1 => Ok(found[0]),
            0 => Err(RevError::UnknownRevision {
                rev: rev.to_string(),
                hint: ": no commit id starts with it".into(),
            }),
            _ => Err(RevError::AmbiguousRevision {
                rev: rev.to_string(),
                matches: found
                    .iter()
                    .map(|c| c.short())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        };
    }
    Err(RevError::UnknownRevision {
        rev: rev.to_string(),
        hint: ": not HEAD, a branch, a tag or a commit id prefix of 4+ hex digits".into(),
    })
}

/// `REMOTE/NAME`, a branch or tag of a configured remote as its last fetch or push saw it;
/// `None` when `base` names no remote's ref. Fails when that ref diverged (several heads).
fn remote_tracking(store: &Store, base: &str, rev: &str) -> Result<Option<CommitId>> {
    let Some((remote, name)) = base.split_once('/') else {
        return Ok(None);
    };
    if !crate::remote::local::remotes(store)
        .unwrap_or_default()
        .contains_key(remote)
    {
        return Ok(None);
    }
    let t = crate::remote::local::tracking(store, remote).map_err(|e| RevError::BadRevision {
        rev: rev.to_string(),
        what: e.to_string(),
    })?;
    for full in [
        format!("{}{name}", refs::HEADS),
        format!("{}{name}", refs::TAGS),
    ] {
        match t.refs.get(&full).map(Vec::as_slice) {
            Some([one]) => return Ok(Some(*one)),
            Some(heads) if heads.len() > 1 => {
                return Err(RevError::BadRevision {
                    rev: rev.to_string(),
                    what: format!(
                        "{base} has diverged on the remote: {}",
                        heads
                            .iter()
                            .map(|c| c.short())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Resolve a revision to a commit id.
pub fn resolve(store: &Store, rev: &str) -> Result<CommitId> {
    let (base, steps) = split(rev)?;
    let mut id = resolve_base(store, base, rev)?;
    for step in steps {
        let (times, nth) = match step {
            Step::Ancestor(n) => (n, 1),
            Step::Parent(n) => (1, n),
        };
        if nth == 0 {
            continue;
        }
        for _ in 0..times {
            let c = store.commit(id)?;
            id = *c
                .parents
                .get(nth as usize - 1)
                .ok_or_else(|| RevError::BadRevision {
                    rev: rev.to_string(),
                    what: format!("commit {} has no parent number {nth}", id.short()),
                })?;
        }
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert_eq!(split("HEAD").unwrap(), ("HEAD", vec![]));
        assert_eq!(
            split("main~2^").unwrap(),
            ("main", vec![Step::Ancestor(2), Step::Parent(1)])
        );
        assert_eq!(split("abc1~").unwrap(), ("abc1", vec![Step::Ancestor(1)]));
        assert_eq!(split("x^2").unwrap(), ("x", vec![Step::Parent(2)]));
        assert!(split("~1").is_err());
        assert!(split("a~1x").is_err());
        assert!(split("a~99999999999").is_err());
    }
}
