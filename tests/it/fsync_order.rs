//! The documented durability order, checked on the system calls of the real binary (strace):
//! a pack is fsynced before its rename, the directory after it, the reflog before the index's
//! log, and gc unlinks old packs only after the index batch that stops naming them is synced.

use crate::common::*;
use std::path::Path;
use std::process::Command;

/// The traced calls, one per line: `fsync <path>`, `fdatasync <path>`, `rename <from> <to>`,
/// `unlink <path>`, in order.
fn trace(store: &Path, args: &[&str]) -> Vec<String> {
    let out_file = store
        .parent()
        .unwrap()
        .join(format!("trace-{}.txt", args[0]));
    let st = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat",
            "-o",
        ])
        .arg(&out_file)
        .arg(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .env("CAIRN_AUTHOR", "t@t")
        .output()
        .expect("strace must be installed (scripts/setup.sh installs it)");
    assert!(
        st.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    let mut calls = Vec::new();
    for line in text.lines() {
        if line.contains("unfinished") || line.contains("resumed") && !line.contains(") = 0") {
            continue;
        }
        let body = line
            .split_once(' ')
            .map(|(_, b)| b)
            .unwrap_or(line)
            .trim_start();
        let Some((name, rest)) = body.split_once('(') else {
            continue;
        };
        let paths: Vec<&str> = rest
            .split(['<', '"'])
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, p)| p.split(['>', '"']).next().unwrap_or(""))
            .filter(|p| p.starts_with('/'))
            .collect();
        let name = match name {
            "renameat" | "renameat2" => "rename",
            "unlinkat" => "unlink",
            n => n,
        };
        calls.push(format!("{name} {}", paths.join(" ")));
    }
    calls
}

fn pos(calls: &[String], what: &str, pred: impl Fn(&str) -> bool) -> usize {
    calls
        .iter()
        .position(|c| pred(c))
        .unwrap_or_else(|| panic!("no {what} in the trace:\n{}", calls.join("\n")))
}

#[test]
fn commit_and_gc_follow_the_documented_fsync_order() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("keep.bin"), noise(1, 3 << 20)).unwrap();
    std::fs::write(ck.join("drop.bin"), noise(2, 3 << 20)).unwrap();

    let c = trace(&store, &["commit", ck.to_str().unwrap()]);
    let pack_sync = pos(&c, "pack fsync", |s| {
        s.starts_with("fsync ") && s.ends_with(".pack.tmp")
    });
    let rename = pos(&c, "pack rename", |s| {
        s.starts_with("rename ") && s.contains(".pack.tmp") && s.ends_with(".pack")
    });
    let dir_sync = pos(&c, "packs dir fsync", |s| {
        s.starts_with("fsync ") && s.ends_with("/packs")
    });
    let reflog = pos(&c, "reflog sync", |s| {
        s.starts_with("fdatasync ") && s.ends_with("/reflog")
    });
    let wal = c
        .iter()
        .enumerate()
        .skip(reflog)
        .position(|(_, s)| {
            (s.starts_with("fdatasync ") || s.starts_with("fsync "))
                && s.contains("/index/")
                && s.ends_with(".log")
        })
        .map(|p| p + reflog)
        .unwrap_or_else(|| panic!("no index log sync after the reflog:\n{}", c.join("\n")));
    assert!(
        pack_sync < rename && rename < dir_sync && dir_sync < reflog && reflog < wal,
        "{c:#?}"
    );

    // gc that repacks: new pack durable, then the index batch, then the old pack unlinked.
    std::fs::remove_file(ck.join("drop.bin")).unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let g = trace(&store, &["gc", "--keep-last", "1"]);
    let new_sync = pos(&g, "new pack fsync", |s| {
        s.starts_with("fsync ") && s.ends_with(".pack.tmp")
    });
    let new_rename = pos(&g, "new pack rename", |s| {
        s.starts_with("rename ") && s.contains(".pack.tmp")
    });
    let dir1 = pos(&g, "packs dir fsync", |s| {
        s.starts_with("fsync ") && s.ends_with("/packs")
    });
    let state = pos(&g, "statelog sync", |s| {
        s.starts_with("fdatasync ") && s.ends_with("/statelog")
    });
    let wal = g
        .iter()
        .enumerate()
        .skip(state)
        .position(|(_, s)| {
            (s.starts_with("fdatasync ") || s.starts_with("fsync "))
                && s.contains("/index/")
                && s.ends_with(".log")
        })
        .map(|p| p + state)
        .unwrap_or_else(|| panic!("no index log sync:\n{}", g.join("\n")));
    let unlink = pos(&g, "old pack unlink", |s| {
        s.starts_with("unlink ") && s.ends_with(".pack")
    });
    let dir2 = g
        .iter()
        .enumerate()
        .skip(unlink)
        .position(|(_, s)| s.starts_with("fsync ") && s.ends_with("/packs"))
        .map(|p| p + unlink)
        .unwrap_or_else(|| panic!("no packs dir fsync after the unlink:\n{}", g.join("\n")));
    assert!(
        new_sync < new_rename
            && new_rename < dir1
            && dir1 < state
            && state < wal
            && wal < unlink
            && unlink < dir2,
        "{g:#?}"
    );
    fsck_read_data_clean(&store);
}
