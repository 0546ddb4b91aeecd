//! The crate's architecture, checked: the import graph of `src/` has no cycle and no upward
//! edge (docs/architecture.md, "Layers"), and the library never prints, exits or reads the
//! environment.
//!
//! Layers, lowest first: `model` imports nothing of the crate; `codec` and `formats` import
//! only `model`; `storage` imports those, never `ops` or `remote`; `remote` may be imported by
//! `ops` only; `ops` modules import each other only downwards, in the order listed in
//! `src/ops/mod.rs`. The binary (`src/bin/`) is a separate crate and reaches only the public API.
//!
//! The parser is deliberately small: it strips comments, string and char literals and
//! `#[cfg(test)]` modules, then collects every `crate::` and `super::` path (including `use`
//! groups). Test code may reach across layers to set up a store; shipped code may not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file, as (module path, file). `src/lib.rs` is the empty path.
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() != "bin" {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "rs") && p != src().join("main.rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src()).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(
            parts.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            parts.pop();
        }
        out.insert(parts.join("::"), f);
    }
    out
}

/// The source with comments, literals and `#[cfg(test)]` items blanked out.
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // raw string r"..." or r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&b'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' {
            // a char literal ('x', '\n', '\u{..}'), not a lifetime ('a)
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                // multi-byte UTF-8 char literal
                let s = &text[i + 1..];
                let ch = s.chars().next().map(char::len_utf8).unwrap_or(1);
                (s.as_bytes().get(ch) == Some(&b'\'')).then_some(i + 1 + ch)
            };
            match end {
                Some(e) => {
                    out.push_str("' '");
                    i = e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    remove_cfg_test(&out)
}

/// Blank out `#[cfg(test)]` followed by a braced item (a `mod tests { .. }`).
fn remove_cfg_test(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(p) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..p]);
        let after = &rest[p..];
        let semi = after.find(';').unwrap_or(usize::MAX);
        let brace = after.find('{').unwrap_or(usize::MAX);
        if semi < brace {
            rest = &after[semi + 1..];
            continue;
        }
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, ch) in after.char_indices().skip(brace) {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Paths (as segment lists, starting with `crate` or `super`) named in stripped source,
/// `use` groups expanded one level deep per brace.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let start_ok = i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':');
        let word: String = chars[i..].iter().take_while(|c| is_ident(**c)).collect();
        if start_ok && (word == "crate" || word == "super") {
            let (mut ps, next) = parse_path(&chars, i, vec![]);
            out.append(&mut ps);
            i = next.max(i + 1);
        } else {
            i += word.len().max(1);
        }
    }
    out
}

/// Parse a path starting at `i` (with `prefix` already read); returns the paths and the end.
fn parse_path(chars: &[char], mut i: usize, mut prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i < chars.len() && chars[i] == '{' {
            // a group: a, b::c, d::{e, f}
            let mut out = Vec::new();
            i += 1;
            loop {
                while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                    i += 1;
                }
                if i >= chars.len() || chars[i] == '}' {
                    return (out, i + 1);
                }
                let (mut ps, next) = parse_path(chars, i, prefix.clone());
                out.append(&mut ps);
                if next <= i {
                    return (out, i + 1);
                }
                i = next;
            }
        }
        let seg: String = chars[i..].iter().take_while(|c| is_ident(**c)).collect();
        if seg.is_empty() {
            return (vec![prefix], i);
        }
        i += seg.len();
        prefix.push(seg);
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// The module a path refers to: the longest known module prefix of it.
fn resolve(from: &str, path: &[String], known: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut base: Vec<String> = if from.is_empty() {
        vec![]
    } else {
        from.split("::").map(String::from).collect()
    };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut best = None;
    let mut cur = base.clone();
    if known.contains_key(&cur.join("::")) {
        best = Some(cur.join("::"));
    }
    for seg in rest {
        cur.push(seg.clone());
        if known.contains_key(&cur.join("::")) {
            best = Some(cur.join("::"));
        }
    }
    best
}

fn layer(module: &str) -> (&'static str, u32) {
    match module.split("::").next().unwrap_or("") {
        "model" => ("model", 0),
        "codec" => ("codec", 1),
        "formats" => ("formats", 1),
        "storage" => ("storage", 2),
        "remote" => ("remote", 3),
        "ops" => ("ops", 4),
        _ => ("root", 5),
    }
}

/// The order of `ops` modules, from the numbered list in `src/ops/mod.rs`'s doc.
fn ops_order() -> Vec<String> {
    let text = std::fs::read_to_string(src().join("ops/mod.rs")).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let l = line.trim_start_matches("//!").trim();
        if let Some((n, rest)) = l.split_once(". [`")
            && n.chars().all(|c| c.is_ascii_digit())
        {
            out.push(rest.split('`').next().unwrap().to_string());
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let known = modules();
    let mut g = BTreeMap::new();
    for (m, file) in &known {
        let code = strip(&std::fs::read_to_string(file).unwrap());
        let mut deps = BTreeSet::new();
        for p in paths(&code) {
            if let Some(t) = resolve(m, &p, &known)
                && &t != m
                && !m.starts_with(&format!("{t}::"))
                && !t.is_empty()
            {
                deps.insert(t);
            }
        }
        g.insert(m.clone(), deps);
    }
    g
}

#[test]
fn no_upward_import() {
    let order = ops_order();
    assert!(
        order.len() >= 10,
        "ops/mod.rs lists the ops order: {order:?}"
    );
    let rank = |m: &str| -> Option<usize> {
        let name = m.strip_prefix("ops::")?.split("::").next()?;
        order.iter().position(|o| o == name)
    };
    let mut bad = Vec::new();
    for (from, deps) in graph() {
        if from.is_empty() {
            continue; // lib.rs re-exports the API
        }
        let (fl, fr) = layer(&from);
        for to in deps {
            let (tl, tr) = layer(&to);
            let ok = if fl == tl {
                match (rank(&from), rank(&to)) {
                    (Some(a), Some(b)) => b <= a,
                    _ => fl != "ops" || to == "ops",
                }
            } else {
                tr < fr && !(fl == "formats" && tl == "codec") && tl != "root"
            };
            if !ok {
                bad.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the layering (docs/architecture.md, src/ops/mod.rs):\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_import_cycle() {
    let g = graph();
    // Depth-first search with colours; report the first cycle found, as a path.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == d).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys().filter(|k| !k.is_empty()) {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, &g, &mut state, &mut stack) {
                panic!("import cycle: {}", c.join(" -> "));
            }
        }
    }
}

#[test]
fn library_never_prints_exits_or_reads_the_environment() {
    let forbidden = [
        "println!",
        "eprintln!",
        "print!",
        "eprint!",
        "process::exit",
        "env::var",
        "env::vars",
        "env::args",
        "dbg!",
    ];
    let mut bad = Vec::new();
    for (m, file) in modules() {
        // crashsim's CAIRN_TEST_CRASH_* failpoints are the one documented exception.
        if m == "storage::crashsim" {
            continue;
        }
        let code = strip(&std::fs::read_to_string(&file).unwrap());
        for (n, line) in code.lines().enumerate() {
            for f in forbidden {
                let hit = line.match_indices(f).any(|(p, _)| {
                    p == 0 || !is_ident(line[..p].chars().next_back().unwrap_or(' '))
                });
                if hit {
                    bad.push(format!("{}:{}: {f}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "library code that prints, exits or reads the environment:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_parser_sees_what_it_must() {
    let code = strip(
        "use crate::{model::id::ChunkId, storage::{pack, index::Index}};\n\
         // crate::ops::gc in a comment\n\
         let s = \"crate::ops::commit\"; let c = '\"'; fn f<'a>(x: &'a str) {}\n\
         #[cfg(test)]\nmod tests { use crate::ops::commit; }\n\
         super::options::X;",
    );
    let got: Vec<String> = paths(&code).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        got,
        [
            "crate::model::id::ChunkId",
            "crate::storage::pack",
            "crate::storage::index::Index",
            "super::options::X"
        ]
    );
}
