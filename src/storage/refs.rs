//! Refs (branches and tags) and the reflog.
//!
//! Invariants:
//! - Ref names are `refs/heads/<name>` or `refs/tags/<name>`, where `<name>` follows git's rules
//!   closely enough to be safe as a path and unambiguous as a revision (see [`check_name`]).
//! - Refs live in the index and move only by compare-and-swap under the index lock.
//! - Every ref move is first appended (and fsynced) to the `reflog` file as one JSON line; the
//!   index is written after. So the reflog is a superset of the moves the index shows, and refs
//!   can be rebuilt from it.
#![warn(missing_docs)]

use crate::model::id::CommitId;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Prefix of every branch's full ref name.
pub const HEADS: &str = "refs/heads/";
/// Prefix of every tag's full ref name.
pub const TAGS: &str = "refs/tags/";
/// Short name of the branch HEAD names in a new store (it has no commit until the first one).
pub const DEFAULT_BRANCH: &str = "main";

/// A ref name that is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefError {
    /// A branch or tag name breaks the rules of [`check_name`].
    #[error("invalid {what} name {name:?}: {why}")]
    BadName {
        /// What the name was for: `branch` or `tag`.
        what: &'static str,
        /// The name as given.
        name: String,
        /// The rule it breaks.
        why: &'static str,
    },
}

/// Check a branch or tag name (the part after `refs/heads/` or `refs/tags/`); `what` says
/// which, for the message. Refused: an empty name, one longer than 200 bytes, `HEAD`, a leading
/// `-`, a path component that is empty, starts with `.` or ends with `.lock`, `..`, `@{`, a
/// trailing `.`, a space, a control character, any of `~^:?*[` or a backslash, and a name of 4
/// or more hex digits only (it would read as a commit id prefix).
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

/// The full ref name (`refs/heads/<name>`) of branch `name`, after [`check_name`].
pub fn branch_ref(name: &str) -> Result<String, RefError> {
    check_name("branch", name)?;
    Ok(format!("{HEADS}{name}"))
}

/// The full ref name (`refs/tags/<name>`) of tag `name`, after [`check_name`].
pub fn tag_ref(name: &str) -> Result<String, RefError> {
    check_name("tag", name)?;
    Ok(format!("{TAGS}{name}"))
}

/// The short name of a full ref name: without `refs/heads/` or `refs/tags/`; any other name
/// comes back unchanged.
pub fn short_name(full: &str) -> &str {
    full.strip_prefix(HEADS)
        .or_else(|| full.strip_prefix(TAGS))
        .unwrap_or(full)
}

/// One line of the reflog (a JSON object; the field names are in docs/format.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReflogEntry {
    /// Full ref name, or `HEAD` for a switch of the current branch.
    #[serde(rename = "ref")]
    pub name: String,
    /// Where the ref was: a commit id in hex, or for `HEAD` a full branch ref name; `None` when
    /// the ref did not exist.
    pub old: Option<String>,
    /// Where the ref moved to, in the same form as `old`; `None` when it was removed.
    pub new: Option<String>,
    /// When it moved, nanoseconds since the Unix epoch (UTC).
    pub time_ns: i64,
    /// The author of the move.
    pub who: String,
    /// What moved it: commit, branch, tag, switch, ...
    pub action: String,
    /// The commit message or other note of the move; empty when there is none.
    #[serde(default)]
    pub message: String,
}

impl ReflogEntry {
    /// `new` as a commit id; `None` when absent or not a commit id (a `HEAD` entry).
    pub fn new_id(&self) -> Option<CommitId> {
        self.new.as_deref().and_then(|s| s.parse().ok())
    }
}

/// Read the reflog at `path`, oldest first; a missing file is an empty reflog. A torn last
/// line (a crash mid-append) is skipped; any other bad line fails with `InvalidData` naming
/// its number, and a failed read fails with its I/O error.
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

/// Append `entry` to the reflog at `path` as one JSON line and fsync it (see
/// [`crate::storage::fsutil`]'s `append_synced`); durable when this returns. Fails when the
/// append or the fsync fails.
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
