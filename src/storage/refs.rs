//! Refs (branches and tags) and the reflog.
//!
//! Invariants:
//! - Ref names are `refs/heads/<name>` or `refs/tags/<name>`, where `<name>` follows git's rules
//!   closely enough to be safe as a path and unambiguous as a revision (see [`check_name`]).
//! - Refs live in the index and move only by compare-and-swap under the index lock.
//! - Every ref move is first appended (and fsynced) to the `reflog` file as one JSON line; the
//!   index is written after. So the reflog is a superset of the moves the index shows, and refs
//!   can be rebuilt from it.

use crate::model::id::CommitId;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::path::Path;

pub const HEADS: &str = "refs/heads/";
pub const TAGS: &str = "refs/tags/";
/// The branch `init` creates.
pub const DEFAULT_BRANCH: &str = "main";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefError {
    #[error("invalid {what} name {name:?}: {why}")]
    BadName {
        what: &'static str,
        name: String,
        why: &'static str,
    },
}

/// Check a branch or tag name (the part after `refs/heads/` or `refs/tags/`).
pub fn check_name(what: &'static str, name: &str) -> Result<(), RefError> {
    let bad = |why| {
        Err(RefError::BadName {
            what,
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 200 {
        return bad("it is longer than 200 bytes");
    }
    if name == "HEAD" {
        return bad("HEAD is reserved");
    }
    if name.starts_with('-') {
        return bad("it starts with '-'");
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return bad("it has an empty path component");
    }
    if name
        .split('/')
        .any(|c| c.starts_with('.') || c.ends_with(".lock"))
    {
        return bad("a component starts with '.' or ends with '.lock'");
    }
    if name.ends_with('.') || name.contains("..") || name.contains("@{") {
        return bad("it contains '..' or '@{' or ends with '.'");
    }
    if name
        .chars()
        .any(|c| c.is_control() || " ~^:?*[\\".contains(c))
    {
        return bad("it contains a space, a control character or one of ~^:?*[\\");
    }
    if name.len() >= 4 && name.chars().all(|c| c.is_ascii_hexdigit()) {
        return bad("it looks like a commit id");
    }
    Ok(())
}

pub fn branch_ref(name: &str) -> Result<String, RefError> {
    check_name("branch", name)?;
    Ok(format!("{HEADS}{name}"))
}

pub fn tag_ref(name: &str) -> Result<String, RefError> {
    check_name("tag", name)?;
    Ok(format!("{TAGS}{name}"))
}

/// The short name of a full ref name.
pub fn short_name(full: &str) -> &str {
    full.strip_prefix(HEADS)
        .or_else(|| full.strip_prefix(TAGS))
        .unwrap_or(full)
}

/// One line of the reflog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReflogEntry {
    /// Full ref name, or `HEAD` for a switch of the current branch.
    #[serde(rename = "ref")]
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
    pub time_ns: i64,
    pub who: String,
    /// What moved it: commit, branch, tag, switch, ...
    pub action: String,
    #[serde(default)]
    pub message: String,
}

impl ReflogEntry {
    pub fn old_id(&self) -> Option<CommitId> {
        self.old.as_deref().and_then(|s| s.parse().ok())
    }
    pub fn new_id(&self) -> Option<CommitId> {
        self.new.as_deref().and_then(|s| s.parse().ok())
    }
}

/// Read the reflog. A torn last line (a crash mid-append) is skipped; any other bad line is
/// reported by number.
pub fn read_reflog(path: &Path) -> std::io::Result<Vec<ReflogEntry>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let lines: Vec<String> = BufReader::new(file).lines().collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(lines.len());
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ReflogEntry>(&line) {
            Ok(e) => out.push(e),
            Err(_) if i + 1 == n => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("reflog line {}: {e}", i + 1),
                ));
            }
        }
    }
    Ok(out)
}

pub fn append_reflog(path: &Path, entry: &ReflogEntry) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    crate::storage::fsutil::append_synced(path, &line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["main", "exp/lr-3e-4", "run_42", "v1.0", "production"] {
            assert_eq!(check_name("branch", ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "HEAD", "-x", "a//b", "a/", ".hidden", "a..b", "a b", "a~1", "x^", "a:b", "abc123",
            "deadbeef", "x.lock", "a\0b",
        ] {
            assert!(check_name("branch", bad).is_err(), "{bad:?}");
        }
        assert_eq!(short_name("refs/heads/main"), "main");
        assert_eq!(short_name("refs/tags/v1"), "v1");
    }

    #[test]
    fn reflog_round_trip_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("reflog");
        let e = ReflogEntry {
            name: "refs/heads/main".into(),
            old: None,
            new: Some("ab".repeat(32)),
            time_ns: 1,
            who: "me".into(),
            action: "commit".into(),
            message: "m".into(),
        };
        append_reflog(&p, &e).unwrap();
        append_reflog(&p, &e).unwrap();
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"ref\":\"ref")
            .unwrap();
        assert_eq!(read_reflog(&p).unwrap(), vec![e.clone(), e]);
    }
}
