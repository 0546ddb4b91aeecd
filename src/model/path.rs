//! The rules every path inside a commit obeys, checked when a path enters a commit and when a
//! tree is read back.
//!
//! Invariant: a path that passes [`check_rel_path`] is relative, `/`-separated, and has no
//! empty, `.` or `..` component and no NUL, so joining it under a directory never leaves it.

#![warn(missing_docs)]

/// A path that breaks the rules, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {what}")]
#[non_exhaustive]
pub struct PathError {
    /// The path as given.
    pub path: String,
    /// The rule it breaks.
    pub what: &'static str,
}

/// Check a path inside a commit: relative, `/`-separated, no empty, `.` or `..` components.
pub fn check_rel_path(rel: &str) -> Result<(), PathError> {
    let bad = |what: &'static str| {
        Err(PathError {
            path: rel.to_string(),
            what,
        })
    };
    if rel.is_empty() {
        return bad("empty path");
    }
    if rel.contains('\0') {
        return bad("path contains NUL");
    }
    if rel.starts_with('/') {
        return bad("path must be relative");
    }
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("path has an empty, '.' or '..' component");
    }
    Ok(())
}
