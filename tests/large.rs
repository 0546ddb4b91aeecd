//! A checkpoint over 4 GiB: offsets pass 2^32, the round trip is byte-identical by hash, and
//! peak RSS of both commit and checkout stays under 512 MiB. Its own test binary, so the wait4
//! accounting sees only the child it measures.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

const LIMIT_KIB: i64 = 512 * 1024;

/// Run `cmd` and return its exit status and peak resident set (KiB), from wait4's rusage.
/// The child is reaped by the wait4 call, which clippy cannot see.
#[allow(unsafe_code, clippy::zombie_processes)]
fn run_measured(cmd: &mut Command) -> (i32, i64, String) {
    let child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = String::new();
    child.stderr.unwrap().read_to_string(&mut stderr).unwrap();
    let mut status = 0;
    // SAFETY: `rusage` is a plain C struct for which all-zero bytes are valid, and wait4 writes
    // only into the two out-pointers we pass, which live for the whole call. The child is ours
    // and not waited for elsewhere (its `Child` handle was consumed above without waiting).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    (libc::WEXITSTATUS(status), usage.ru_maxrss, stderr)
}

fn sha256_file(p: &Path) -> [u8; 32] {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

#[test]
fn four_gib_checkpoint_round_trips_in_bounded_memory() {
    let t = tempfile::tempdir().unwrap();
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    // One U8 tensor of 4 GiB + 16 MiB of non-repeating bytes, then a small F32 tensor whose
    // offset is past 2^32.
    let big: u64 = (4u64 << 30) + (16 << 20);
    let specs = vec![
        ("huge".to_string(), cairn::DType::U8, vec![big]),
        ("tail".to_string(), cairn::DType::F32, vec![1000]),
    ];
    let header = cairn::formats::safetensors::serialize_header(&specs, None).unwrap();
    let path = ck.join("model.safetensors");
    {
        let mut f =
            std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&path).unwrap());
        f.write_all(&header).unwrap();
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut block = vec![0u8; 1 << 20];
        let mut left = big + 4000;
        while left > 0 {
            for w in block.chunks_exact_mut(8) {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                w.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
            }
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
    }
    std::fs::write(ck.join("config.json"), b"{}").unwrap();
    let want = sha256_file(&path);
    let store = t.path().join("store");
    let bin = env!("CARGO_BIN_EXE_cairn");
    assert!(
        Command::new(bin)
            .arg("--store")
            .arg(&store)
            .arg("init")
            .status()
            .unwrap()
            .success()
    );

    let (code, rss, err) = run_measured(
        Command::new(bin)
            .arg("--store")
            .arg(&store)
            .arg("commit")
            .arg(&ck),
    );
    assert_eq!(code, 0, "commit failed: {err}");
    assert!(rss <= LIMIT_KIB, "commit peak RSS {rss} KiB > 512 MiB");
    eprintln!(
        "commit of {} bytes: peak RSS {} MiB",
        big + 4000,
        rss / 1024
    );

    let out = t.path().join("out");
    let (code, rss, err) = run_measured(
        Command::new(bin)
            .arg("--store")
            .arg(&store)
            .args(["checkout", "HEAD"])
            .arg(&out),
    );
    assert_eq!(code, 0, "checkout failed: {err}");
    assert!(rss <= LIMIT_KIB, "checkout peak RSS {rss} KiB > 512 MiB");
    eprintln!("checkout: peak RSS {} MiB", rss / 1024);
    assert_eq!(sha256_file(&out.join("model.safetensors")), want);
    assert_eq!(std::fs::read(out.join("config.json")).unwrap(), b"{}");

    // The tensor past 2^32 reads alone.
    let npy = t.path().join("tail.npy");
    let o = Command::new(bin)
        .arg("--store")
        .arg(&store)
        .args(["tensor", "HEAD", "tail", "-o"])
        .arg(&npy)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = std::fs::read(&npy).unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(header.len() as u64 + big)).unwrap();
    let mut tail = vec![0u8; 4000];
    f.read_exact(&mut tail).unwrap();
    assert!(header.len() as u64 + big > 1 << 32);
    assert!(got.ends_with(&tail));
}
