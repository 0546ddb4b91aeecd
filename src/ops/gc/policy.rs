//! The retention language: the rules that decide which commits keep their data, their text
//! form (what `cairn retention set` stores and `cairn gc` flags build), and [`apply_rules`],
//! which applies them to the history of one branch. Pure: no store access.
//!
//! Invariants:
//! - A commit kept by any rule is kept: rules only add reasons, never take one away.
//! - A NaN or missing metric never makes a commit the best, nor a new best.
//! - [`Retention::to_text`] writes what [`Retention::parse`] reads back as the same rules.
#![warn(missing_docs)]

use super::GcError;
use crate::model::id::CommitId;
use crate::storage::index::CommitRow;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Which way a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Smaller is better (a loss).
    Min,
    /// Larger is better (an accuracy).
    Max,
}

impl Direction {
    /// `min` or `max`, as the rules spell it.
    fn word(self) -> &'static str {
        match self {
            Direction::Min => "min",
            Direction::Max => "max",
        }
    }
}

/// Retention rules; a commit kept by any rule is kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    /// `keep-last N`: keep the newest N commits of each branch's first-parent history.
    pub keep_last: Option<usize>,
    /// `keep-best K:METRIC:min|max`: keep the K commits with the best value of METRIC; ties go
    /// to the newer commit.
    pub keep_best: Vec<(usize, String, Direction)>,
    /// `keep-improving METRIC:min|max`: keep each commit that sets a new best of METRIC, from
    /// the oldest commit to the newest (strictly better only).
    pub keep_improving: Vec<(String, Direction)>,
    /// `keep-every N`: keep commits whose step is a multiple of N (at least 1).
    pub keep_every: Option<u64>,
    /// Keep commits younger than this many nanoseconds.
    pub keep_within_ns: Option<i64>,
    /// Release files matching these globs from commits older than the last `slim_keep_last`.
    pub slim: Vec<String>,
    /// `slim-keep-last N`: the newest N commits of each branch are never slimmed.
    pub slim_keep_last: Option<usize>,
}

fn parse_dir(s: &str, rule: &'static str, spec: &str) -> Result<Direction, GcError> {
    match s {
        "min" => Ok(Direction::Min),
        "max" => Ok(Direction::Max),
        _ => Err(GcError::BadDirection {
            rule,
            spec: spec.to_string(),
            direction: s.to_string(),
        }),
    }
}

/// `K:METRIC:min|max`.
pub fn parse_keep_best(s: &str) -> Result<(usize, String, Direction), GcError> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [k, m, d] if !m.is_empty() => Ok((
            k.parse().map_err(|_| GcError::BadKeepBestCount {
                spec: s.to_string(),
                count: k.to_string(),
            })?,
            m.to_string(),
            parse_dir(d, "keep-best", s)?,
        )),
        _ => Err(GcError::BadKeepBest {
            spec: s.to_string(),
        }),
    }
}

/// `METRIC:min|max`.
pub fn parse_keep_improving(s: &str) -> Result<(String, Direction), GcError> {
    match s.split_once(':') {
        Some((m, d)) if !m.is_empty() => Ok((m.to_string(), parse_dir(d, "keep-improving", s)?)),
        _ => Err(GcError::BadKeepImproving {
            spec: s.to_string(),
        }),
    }
}

/// A duration like `7d`, `12h`, `30m`, `90s`, `2w` (humantime syntax), in nanoseconds.
pub fn parse_duration_ns(s: &str) -> Result<i64, GcError> {
    let d = humantime::parse_duration(s).map_err(|error| GcError::BadDuration {
        spec: s.to_string(),
        error,
    })?;
    i64::try_from(d.as_nanos()).map_err(|_| GcError::DurationTooLong {
        spec: s.to_string(),
    })
}

impl Retention {
    /// Parse a stored policy: comma-separated rules, each `NAME VALUE`, e.g.
    /// `keep-last 5, keep-best 3:val_loss:min, keep-every 1000, keep-within 7d,
    /// keep-improving val_loss:min, slim optimizer.pt, slim-keep-last 2`.
    pub fn parse(text: &str) -> Result<Retention, GcError> {
        let mut r = Retention::default();
        for rule in text.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (name, value) = rule
                .split_once(char::is_whitespace)
                .map(|(a, b)| (a.trim(), b.trim()))
                .ok_or_else(|| GcError::BadRule {
                    rule: rule.to_string(),
                })?;
            let count = |v: &str| {
                v.parse::<u64>().map_err(|_| GcError::BadRuleCount {
                    rule: rule.to_string(),
                    value: v.to_string(),
                })
            };
            match name {
                "keep-last" => r.keep_last = Some(count(value)? as usize),
                "keep-best" => r.keep_best.push(parse_keep_best(value)?),
                "keep-improving" => r.keep_improving.push(parse_keep_improving(value)?),
                "keep-every" => {
                    let n = count(value)?;
                    if n == 0 {
                        return Err(GcError::KeepEveryZero);
                    }
                    r.keep_every = Some(n);
                }
                "keep-within" => r.keep_within_ns = Some(parse_duration_ns(value)?),
                "slim" => r.slim.push(value.to_string()),
                "slim-keep-last" => r.slim_keep_last = Some(count(value)? as usize),
                _ => {
                    return Err(GcError::UnknownRule {
                        name: name.to_string(),
                    });
                }
            }
        }
        Ok(r)
    }

    /// The canonical text of the policy (what `parse` reads back).
    pub fn to_text(&self) -> String {
        let mut v = Vec::new();
        if let Some(n) = self.keep_last {
            v.push(format!("keep-last {n}"));
        }
        for (k, m, dir) in &self.keep_best {
            v.push(format!("keep-best {k}:{m}:{}", dir.word()));
        }
        for (m, dir) in &self.keep_improving {
            v.push(format!("keep-improving {m}:{}", dir.word()));
        }
        if let Some(n) = self.keep_every {
            v.push(format!("keep-every {n}"));
        }
        if let Some(ns) = self.keep_within_ns {
            v.push(format!("keep-within {}", format_within(ns)));
        }
        for g in &self.slim {
            v.push(format!("slim {g}"));
        }
        if let Some(n) = self.slim_keep_last {
            v.push(format!("slim-keep-last {n}"));
        }
        v.join(", ")
    }

    /// Whether any keep rule is set: only then are commits no rule keeps pruned (`slim` alone
    /// prunes nothing).
    pub fn prunes(&self) -> bool {
        self.keep_last.is_some()
            || !self.keep_best.is_empty()
            || !self.keep_improving.is_empty()
            || self.keep_every.is_some()
            || self.keep_within_ns.is_some()
    }
}

/// A `keep-within` duration as the rules write it (`7days`).
fn format_within(ns: i64) -> humantime::FormattedDuration {
    humantime::format_duration(std::time::Duration::from_nanos(ns as u64))
}

fn short_rule(r: &(usize, String, Direction)) -> String {
    format!("keep-best {}:{}:{}", r.0, r.1, r.2.word())
}

fn better(a: f64, b: f64, d: Direction) -> bool {
    match d {
        Direction::Min => a < b,
        Direction::Max => a > b,
    }
}

/// Decide, for the first-parent history of one branch (newest first), which rules keep which
/// commit; `now` (nanoseconds since the epoch) is what `keep-within` counts back from. Pure: the
/// unit tests exercise every rule on rows.
pub fn apply_rules(
    r: &Retention,
    history: &[(CommitId, CommitRow)],
    now: i64,
) -> HashMap<CommitId, Vec<String>> {
    let mut keep: HashMap<CommitId, Vec<String>> = HashMap::new();
    let mut add = |id: CommitId, why: String| keep.entry(id).or_default().push(why);
    if let Some(n) = r.keep_last {
        for (id, _) in history.iter().take(n) {
            add(*id, format!("keep-last {n}"));
        }
    }
    for rule in &r.keep_best {
        let (k, m, d) = rule;
        let mut cands: Vec<(usize, f64)> = history
            .iter()
            .enumerate()
            .filter_map(|(i, (_, row))| row.metrics.get(m).filter(|v| !v.is_nan()).map(|v| (i, *v)))
            .collect();
        // Best first; ties go to the newer commit (smaller index: history is newest first).
        cands.sort_by(|(ia, a), (ib, b)| {
            let o = a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal);
            let o = if *d == Direction::Max { o.reverse() } else { o };
            o.then(ia.cmp(ib))
        });
        for (i, _) in cands.into_iter().take(*k) {
            add(history[i].0, short_rule(rule));
        }
    }
    for (m, d) in &r.keep_improving {
        let mut best: Option<f64> = None;
        for (id, row) in history.iter().rev() {
            if let Some(v) = row.metrics.get(m).filter(|v| !v.is_nan())
                && best.is_none_or(|b| better(*v, b, *d))
            {
                best = Some(*v);
                add(*id, format!("keep-improving {m}:{}", d.word()));
            }
        }
    }
    if let Some(n) = r.keep_every {
        for (id, row) in history {
            if row.step.is_some_and(|s| s % n == 0) {
                add(*id, format!("keep-every {n}"));
            }
        }
    }
    if let Some(w) = r.keep_within_ns {
        for (id, row) in history {
            if now.saturating_sub(row.time_ns) <= w {
                add(*id, format!("keep-within {}", format_within(w)));
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(rows: &[(u8, Option<u64>, Option<f64>, i64)]) -> Vec<(CommitId, CommitRow)> {
        // Newest first, as history is.
        rows.iter()
            .map(|(id, step, m, t)| {
                let mut r = CommitRow {
                    step: *step,
                    time_ns: *t,
                    ..Default::default()
                };
                if let Some(v) = m {
                    r.metrics.insert("val_loss".into(), *v);
                }
                (CommitId([*id; 32]), r)
            })
            .collect()
    }

    fn kept(r: &Retention, h: &[(CommitId, CommitRow)], now: i64) -> Vec<u8> {
        let k = apply_rules(r, h, now);
        let mut v: Vec<u8> = k.keys().map(|c| c.0[0]).collect();
        v.sort();
        v
    }

    #[test]
    fn each_rule_and_their_union() {
        // ids 6 (newest) .. 1 (oldest); loss improves, then worsens, NaN and missing mixed in.
        let h = hist(&[
            (6, Some(6000), Some(0.50), 60),
            (5, Some(5000), Some(f64::NAN), 50),
            (4, Some(4000), None, 40),
            (3, Some(3000), Some(0.30), 30),
            (2, None, Some(0.30), 20),
            (1, Some(1000), Some(0.90), 10),
        ]);
        let r = |s: &str| Retention::parse(s).unwrap();
        assert_eq!(kept(&r("keep-last 2"), &h, 0), vec![5, 6]);
        // Ties go to the newer commit; NaN and missing metrics are never chosen.
        assert_eq!(kept(&r("keep-best 1:val_loss:min"), &h, 0), vec![3]);
        assert_eq!(kept(&r("keep-best 2:val_loss:min"), &h, 0), vec![2, 3]);
        assert_eq!(kept(&r("keep-best 1:val_loss:max"), &h, 0), vec![1]);
        assert_eq!(
            kept(&r("keep-best 9:val_loss:min"), &h, 0),
            vec![1, 2, 3, 6]
        );
        // A new best along the branch, oldest to newest: 0.9, 0.3 (strictly better only).
        assert_eq!(kept(&r("keep-improving val_loss:min"), &h, 0), vec![1, 2]);
        assert_eq!(kept(&r("keep-every 2000"), &h, 0), vec![4, 6]);
        assert_eq!(kept(&r("keep-within 25ns"), &h, 60), vec![4, 5, 6]);
        assert_eq!(
            kept(
                &r("keep-last 1, keep-best 1:val_loss:min, keep-every 4000"),
                &h,
                0
            ),
            vec![3, 4, 6]
        );
        let reasons = apply_rules(&r("keep-last 1, keep-every 3000"), &h, 0);
        assert_eq!(
            reasons[&CommitId([6; 32])],
            vec!["keep-last 1".to_string(), "keep-every 3000".to_string()]
        );
    }

    #[test]
    fn policy_text_round_trips() {
        let t = "keep-last 5, keep-best 3:val_loss:min, keep-improving acc:max, keep-every 1000, keep-within 7days, slim optimizer.pt, slim-keep-last 2";
        let r = Retention::parse(t).unwrap();
        assert_eq!(r.keep_within_ns, Some(7 * 86_400 * 1_000_000_000));
        assert_eq!(Retention::parse(&r.to_text()).unwrap(), r);
        for bad in [
            "keep-last x",
            "keep-best 3:val_loss",
            "keep-best 3:val_loss:up",
            "keep-every 0",
            "keep-within soon",
            "frobnicate 3",
            "keep-last",
        ] {
            assert!(Retention::parse(bad).is_err(), "{bad}");
        }
    }
}
