//! Remotes, through the built CLI, against real servers on loopback: SeaweedFS (`weed mini`, a
//! production distributed store that enforces conditional writes), s3rver (which accepts
//! conditional headers and overwrites anyway), and `file://` directories. Each test starts its
//! own server on free ports and stops it by its PID. The servers are installed by
//! scripts/setup.sh under ~/.cache/cairn-s3 ($CAIRN_WEED and $CAIRN_S3RVER override); a machine
//! without them fails these tests, which are never skipped.

use crate::common::*;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tool(var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap())
            .join(".cache/cairn-s3")
            .join(default)
    });
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (it installs the S3 servers the remote tests use)",
        p.display()
    );
    p
}

/// An S3 server on loopback, killed when dropped.
pub struct Server {
    child: Child,
    pub endpoint: String,
    key: &'static str,
    /// SeaweedFS's Prometheus port (request and byte counters, counted by the server).
    metrics: Option<u16>,
}

/// Wait until `port` answers HTTP with a status in `ok`; `Err` with the exit status when the
/// server exits first (another process took one of its ports: the caller retries).
fn wait_http(
    port: u16,
    path: &str,
    ok: &[&str],
    child: &mut Child,
    what: &str,
) -> Result<(), String> {
    use std::io::{Read, Write};
    let start = Instant::now();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut buf = [0u8; 32];
            if let Ok(n) = s.read(&mut buf) {
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                if ok.iter().any(|c| head.contains(c)) {
                    return Ok(());
                }
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("{what} exited early: {st}"));
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not come up on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Server {
    /// SeaweedFS `weed mini` with bucket `cairn`, every port chosen free.
    pub fn seaweed(dir: &Path) -> Server {
        let weed = tool("CAIRN_WEED", "venv/bin/weed");
        let mut last = String::new();
        // Free ports are picked, then bound by the server: another test may take one between
        // the two, and the server exits. Then try again with new ports.
        for attempt in 0..5 {
            let data = dir.join(format!("weed{attempt}"));
            std::fs::create_dir_all(&data).unwrap();
            let s3 = free_port();
            let mut c = Command::new(&weed);
            c.arg("mini")
                .arg(format!("-dir={}", data.display()))
                .args([
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    "-bucket=cairn",
                    "-admin.ui=false",
                    "-webdav=false",
                ])
                .arg(format!("-s3.port={s3}"));
            for flag in [
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
                "s3.port.iceberg",
                "admin.port",
                "admin.port.grpc",
            ] {
                c.arg(format!("-{flag}={}", free_port()));
            }
            let metrics = free_port();
            c.arg(format!("-metricsPort={metrics}"));
            let log = std::fs::File::create(dir.join(format!("weed{attempt}.log"))).unwrap();
            let mut child = c
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            match wait_http(s3, "/cairn/", &[" 200 "], &mut child, "weed mini") {
                Ok(()) => {
                    return Server {
                        child,
                        endpoint: format!("http://127.0.0.1:{s3}"),
                        key: "cairn-test",
                        metrics: Some(metrics),
                    };
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = e;
                }
            }
        }
        panic!("{last} (5 attempts)");
    }

    /// s3rver with bucket `cairn` (its fixed keys are S3RVER/S3RVER).
    pub fn s3rver(dir: &Path) -> Server {
        let bin = tool("CAIRN_S3RVER", "node/node_modules/.bin/s3rver");
        let data = dir.join("s3rver");
        std::fs::create_dir_all(&data).unwrap();
        let port = free_port();
        let mut child = Command::new(bin)
            .arg("-d")
            .arg(&data)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["--configure-bucket", "cairn", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_http(port, "/cairn/", &["HTTP/1."], &mut child, "s3rver").unwrap();
        Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            key: "S3RVER",
            metrics: None,
        }
    }

    /// GET requests served and bytes sent so far, by the server's own counters.
    pub fn gets_and_bytes_sent(&self) -> (u64, u64) {
        use std::io::{Read, Write};
        let port = self.metrics.expect("only SeaweedFS counts");
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let sum = |prefix: &str, filter: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(prefix) && l.contains(filter))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        (
            sum("SeaweedFS_s3_request_total{", "type=\"GET\""),
            sum("SeaweedFS_s3_bucket_traffic_sent_bytes_total{", ""),
        )
    }

    /// Point `c` at this server (credentials, endpoint; no `~/.aws` files).
    fn env<'c>(&self, c: &'c mut Command) -> &'c mut Command {
        c.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", self.key)
            .env("AWS_SECRET_ACCESS_KEY", self.key)
            .env("AWS_REGION", "us-east-1")
            .env("HOME", "/nonexistent")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A remote under test: a server (none for file://) and the URL.
struct Remote {
    server: Option<Server>,
    url: String,
}

impl Remote {
    fn file(dir: &Path) -> Remote {
        Remote {
            server: None,
            url: format!("file://{}", dir.join("bucket").display()),
        }
    }
    fn s3(server: Server, prefix: &str) -> Remote {
        Remote {
            server: Some(server),
            url: format!("s3://cairn/{prefix}"),
        }
    }
    /// The CLI against `store`, reaching this remote.
    fn cairn(&self, store: &Path) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.std_cairn(store))
    }
    fn std_cairn(&self, store: &Path) -> Command {
        let mut c = self.cli();
        c.arg("--store").arg(store);
        c
    }
    /// The CLI with no store, reaching this remote.
    fn cli(&self) -> Command {
        let mut c = Command::new(bin());
        c.env_remove("CAIRN_STORE")
            .env("CAIRN_AUTHOR", "test@cairn");
        if let Some(s) = &self.server {
            s.env(&mut c);
        }
        c
    }
    /// `cairn clone [FLAGS] URL DIR`, which must succeed.
    fn clone_to_with(&self, dir: &Path, flags: &[&str]) {
        let mut c = self.cli();
        c.arg("clone").args(flags).arg(&self.url).arg(dir);
        assert_cmd::Command::from_std(c).assert().success();
    }
    fn clone_to(&self, dir: &Path) {
        self.clone_to_with(dir, &[]);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for (rel, bytes) in snapshot(from) {
        let p = to.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn head(store: &Path) -> String {
    let out = cairn(store).args(["log", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["id"].as_str().unwrap().to_string()
}

fn log_ids(store: &Path, rev: &str) -> Vec<String> {
    let out = cairn(store).args(["log", rev, "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

/// The remote's heads of `name` as a fetch into `store` sees them.
fn remote_heads(r: &Remote, store: &Path, name: &str) -> Vec<String> {
    let out = r.cairn(store).args(["fetch", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["refs"][name]
        .as_array()
        .map(|a| a.iter().map(|c| c.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// A store with `n` commits of a changing checkpoint (safetensors + config), pushed to `r`.
fn pushed_store(t: &Path, r: &Remote, n: u64) -> (PathBuf, Vec<PathBuf>) {
    let store = t.join("origin-store");
    cairn(&store).arg("init").assert().success();
    let mut cks = Vec::new();
    for i in 0..n {
        let ck = t.join(format!("ck{i}"));
        checkpoint(&ck, i);
        cairn(&store)
            .args(["commit", "-m", &format!("step {i}")])
            .arg(&ck)
            .assert()
            .success();
        cks.push(ck);
    }
    r.cairn(&store)
        .args(["remote", "add", "origin", &r.url])
        .assert()
        .success();
    r.cairn(&store).arg("push").assert().success();
    (store, cks)
}

/// Push, clone, checkout of every commit byte for byte with its history; then a second
/// commit goes up by a fast-forward push and comes down by pull; a diverged push is refused.
fn roundtrip(t: &Path, r: &Remote) {
    let (store, cks) = pushed_store(t, r, 3);
    let copy = t.join("copy");
    r.clone_to(&copy);
    assert_eq!(log_ids(&copy, "HEAD"), log_ids(&store, "HEAD"));
    for (i, ck) in cks.iter().enumerate() {
        let dst = t.join(format!("out{i}"));
        cairn(&copy)
            .args(["checkout", &format!("HEAD~{}", cks.len() - 1 - i)])
            .arg(&dst)
            .assert()
            .success();
        assert_eq!(snapshot(&dst), snapshot(ck), "commit {i}");
    }
    fsck_read_data_clean(&copy);
    // A new commit upstream: fetch shows it as origin/main, pull brings it with its data.
    let ck = t.join("ck-next");
    copy_dir(cks.last().unwrap(), &ck);
    std::fs::write(ck.join("optimizer.pt"), noise(999, 3_000_000)).unwrap();
    let before = dir_size(&store.join("packs"));
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let grown = dir_size(&store.join("packs")) - before;
    let pushed = r.cairn(&store).args(["push", "--json"]).output().unwrap();
    assert!(pushed.status.success());
    let v: serde_json::Value = serde_json::from_slice(&pushed.stdout).unwrap();
    // Only what the remote lacks travels: about what the commit added to the local store.
    let sent = v["bytes_sent"].as_u64().unwrap();
    let logical: u64 = snapshot(&ck).values().map(|b| b.len() as u64).sum();
    assert!(
        sent <= grown + (64 << 10) && sent < logical / 2,
        "sent {sent}, the commit stored {grown}, logical {logical}"
    );
    r.cairn(&copy).arg("fetch").assert().success();
    assert_eq!(log_ids(&copy, "origin/main")[0], head(&store));
    r.cairn(&copy).arg("pull").assert().success();
    assert_eq!(head(&copy), head(&store));
    let dst = t.join("out-next");
    cairn(&copy)
        .args(["checkout", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&ck));
    // Diverge: each side commits; the second push is refused, and so is pulling into it.
    let a = t.join("ck-a");
    checkpoint(&a, 21);
    cairn(&store).arg("commit").arg(&a).assert().success();
    r.cairn(&store).arg("push").assert().success();
    let b = t.join("ck-b");
    checkpoint(&b, 22);
    cairn(&copy).arg("commit").arg(&b).assert().success();
    let out = r.cairn(&copy).arg("push").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("non-fast-forward"), "{err}");
    let out = r.cairn(&copy).arg("pull").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot fast-forward"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --force replaces it; nothing else changed on the remote.
    r.cairn(&copy).args(["push", "--force"]).assert().success();
    assert_eq!(
        remote_heads(r, &store, "refs/heads/main"),
        vec![head(&copy)]
    );
    let out = r
        .cairn(&store)
        .args(["fsck", "--remote", "origin", "--read-data"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn file_remote_roundtrip_fast_forward_and_refused_divergence() {
    let t = tempfile::tempdir().unwrap();
    roundtrip(t.path(), &Remote::file(t.path()));
}

#[test]
fn seaweedfs_roundtrip_fast_forward_and_refused_divergence() {
    let t = tempfile::tempdir().unwrap();
    let r = Remote::s3(Server::seaweed(t.path()), "runs/roundtrip");
    roundtrip(t.path(), &r);
}

/// `cairn push` from every store in `stores`, all started before any is waited for.
fn push_at_once(r: &Remote, stores: &[PathBuf]) -> Vec<std::process::Output> {
    let children: Vec<_> = stores
        .iter()
        .map(|c| {
            r.std_cairn(c)
                .arg("push")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

/// `n` stores cloned from the remote each commit on one branch and push at once, three rounds
/// (a branch per round): every push that exits 0 is a head of the remote's branch afterwards
/// (none silently lost; more than one head is divergence, which fetch and fsck report), every
/// other is refused as non-fast-forward. Then each pushes a branch of its own: all succeed.
fn concurrent_pushes(t: &Path, r: &Remote, n: usize) {
    let (store, _) = pushed_store(t, r, 1);
    let mut acked_total = 0;
    for round in 0..3u64 {
        let branch = format!("race{round}");
        cairn(&store).args(["branch", &branch]).assert().success();
        r.cairn(&store)
            .args(["push", "origin", &branch])
            .assert()
            .success();
        let mut clones = Vec::new();
        let mut commits = Vec::new();
        for i in 0..n {
            let c = t.join(format!("pusher{round}-{i}"));
            r.clone_to(&c);
            cairn(&c).args(["switch", &branch]).assert().success();
            let ck = t.join(format!("p{round}-{i}"));
            std::fs::create_dir_all(&ck).unwrap();
            std::fs::write(ck.join("w.bin"), noise(100 * round + i as u64, 64 << 10)).unwrap();
            cairn(&c).arg("commit").arg(&ck).assert().success();
            commits.push(head(&c));
            clones.push(c);
        }
        let outs = push_at_once(r, &clones);
        let heads = remote_heads(r, &store, &format!("refs/heads/{branch}"));
        let mut acked = 0;
        for (i, o) in outs.iter().enumerate() {
            let err = String::from_utf8_lossy(&o.stderr);
            if o.status.success() {
                acked += 1;
                assert!(
                    heads.contains(&commits[i]),
                    "round {round}: acknowledged push {i} lost: {heads:?}"
                );
            } else {
                assert_eq!(o.status.code(), Some(1), "pusher {i}: {err}");
                assert!(
                    err.contains("non-fast-forward") || err.contains("run `cairn fetch` first"),
                    "pusher {i}: {err}"
                );
                assert!(!heads.contains(&commits[i]));
            }
        }
        assert!(acked >= 1, "round {round}: no push succeeded");
        // Heads are exactly the acknowledged pushes.
        assert_eq!(heads.len(), acked, "round {round}: {heads:?}");
        acked_total += acked;
    }
    assert!(acked_total >= 3);
    // On branches of their own, all succeed.
    let mut clones = Vec::new();
    for i in 0..n {
        let c = t.join(format!("own{i}"));
        r.clone_to(&c);
        let ck = t.join(format!("own-ck{i}"));
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join("w.bin"), noise(5000 + i as u64, 64 << 10)).unwrap();
        cairn(&c)
            .args(["branch", &format!("b{i}")])
            .assert()
            .success();
        cairn(&c)
            .args(["switch", &format!("b{i}")])
            .assert()
            .success();
        cairn(&c).arg("commit").arg(&ck).assert().success();
        clones.push(c);
    }
    for (i, o) in push_at_once(r, &clones).into_iter().enumerate() {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            remote_heads(r, &store, &format!("refs/heads/b{i}")),
            vec![head(&clones[i])]
        );
    }
    let out = r
        .cairn(&store)
        .args(["fsck", "--remote", "origin", "--read-data"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Divergence the races left is reported; nothing else is wrong.
    for line in text.lines().filter(|l| l.contains('\t')) {
        assert!(line.starts_with("diverged-ref"), "{text}");
    }
}

#[test]
fn concurrent_pushes_on_seaweedfs_lose_nothing() {
    let t = tempfile::tempdir().unwrap();
    let r = Remote::s3(Server::seaweed(t.path()), "runs/concurrent");
    concurrent_pushes(t.path(), &r, 4);
}

#[test]
fn concurrent_pushes_on_s3rver_without_compare_and_swap_lose_nothing() {
    let t = tempfile::tempdir().unwrap();
    let r = Remote::s3(Server::s3rver(t.path()), "runs/concurrent");
    concurrent_pushes(t.path(), &r, 4);
    let t2 = tempfile::tempdir().unwrap();
    let r2 = Remote::s3(Server::s3rver(t2.path()), "runs/two");
    concurrent_pushes(t2.path(), &r2, 2);
}

/// kill -9 of a push at several moments, each resumed by the next push: nothing is visible
/// until a push completes, finished packs are not sent again, and the remote checks clean.
#[test]
fn a_killed_push_resumes_and_the_remote_checks_clean() {
    let t = tempfile::tempdir().unwrap();
    let r = Remote::s3(Server::seaweed(t.path()), "runs/killed");
    let store = t.path().join("s");
    cairn(&store).arg("init").assert().success();
    let mut cks = Vec::new();
    for i in 0..3u64 {
        let ck = t.path().join(format!("big{i}"));
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join("w.bin"), noise(50 + i, 12 << 20)).unwrap();
        cairn(&store).arg("commit").arg(&ck).assert().success();
        cks.push(ck);
    }
    r.cairn(&store)
        .args(["remote", "add", "origin", &r.url])
        .assert()
        .success();
    let watcher = t.path().join("watcher");
    cairn(&watcher).arg("init").assert().success();
    r.cairn(&watcher)
        .args(["remote", "add", "origin", &r.url])
        .assert()
        .success();
    let journal = store.join("remotes/origin/outgoing/journal.json");
    let mut resumed = 0;
    let mut killed_with_journal = 0;
    for round in 0..10u64 {
        let mut child = r
            .std_cairn(&store)
            .args(["push", "--json", "--pack-size", "2000000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + round * 137 % 400));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let heads = remote_heads(&r, &watcher, "refs/heads/main");
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            resumed += v["resumed_packs"].as_u64().unwrap();
            assert_eq!(heads, vec![head(&store)]);
            break;
        }
        if !heads.is_empty() {
            // Killed after its record landed: the push is complete, and whole.
            assert_eq!(heads, vec![head(&store)]);
            break;
        }
        // Killed before its record: nothing visible; what it uploaded is journaled.
        if journal.exists() {
            killed_with_journal += 1;
        }
    }
    // Whatever state the rounds left, a last push completes (or finds it done).
    let out = r.cairn(&store).args(["push", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    resumed += v["resumed_packs"].as_u64().unwrap_or(0);
    assert!(
        killed_with_journal >= 1,
        "no push was killed after uploading a pack: the test did not exercise resumption"
    );
    assert!(resumed >= 1, "journaled packs were not reused");
    assert_eq!(
        remote_heads(&r, &watcher, "refs/heads/main"),
        vec![head(&store)]
    );
    let out = r
        .cairn(&store)
        .args(["fsck", "--remote", "origin", "--read-data"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let copy = t.path().join("copy");
    r.clone_to(&copy);
    let dst = t.path().join("out");
    cairn(&copy)
        .args(["checkout", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&cks[2]));
}

/// A flipped byte in a remote pack is an error naming it, never wrong bytes; fsck --remote
/// --read-data reports it.
#[test]
fn a_flipped_byte_in_a_remote_pack_is_caught() {
    let t = tempfile::tempdir().unwrap();
    let r = Remote::file(t.path());
    let (store, _) = pushed_store(t.path(), &r, 2);
    let packs = t.path().join("bucket/packs");
    let biggest = std::fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut b = std::fs::read(&biggest).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x10;
    std::fs::write(&biggest, b).unwrap();
    let name = biggest.file_name().unwrap().to_str().unwrap().to_string();
    let out = Command::new(bin())
        .args(["clone", &r.url])
        .arg(t.path().join("copy"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&name) && err.contains("damaged"), "{err}");
    let out = cairn(&store)
        .args(["fsck", "--remote", "origin", "--read-data"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("corrupt-pack") && text.contains(&name),
        "{text}"
    );
}

/// An index object no record names is ignored: it cannot make a pusher skip a chunk.
#[test]
fn a_forged_index_is_ignored() {
    use cairn::remote::layout::{Index, PackKind, PackListing, index_name};
    let t = tempfile::tempdir().unwrap();
    let r = Remote::file(t.path());
    let (store, _) = pushed_store(t.path(), &r, 1);
    // The chunk a new file will have, claimed by a forged index in a pack that does not exist.
    let content = noise(77, 100_000);
    let dir = t.path().join("forge");
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = cairn::storage::pack::PackWriter::create(&dir).unwrap();
    let id = cairn::ChunkId::of(&content);
    w.append_chunk(
        id,
        cairn::codec::Encoding::Raw,
        content.len() as u64,
        &content,
        None,
        0,
    )
    .unwrap();
    let sealed = w.seal().unwrap();
    let idx = Index {
        packs: vec![PackListing {
            id: sealed.id,
            kind: PackKind::Data,
            size: sealed.size,
            blake3: [0; 32],
            entries: sealed.entries.clone(),
            payload_hashes: vec![[0; 32]; sealed.entries.len()],
        }],
        released: vec![],
    };
    let (h, bytes) = idx.encode();
    let path = t.path().join("bucket").join(index_name(&h));
    std::fs::write(&path, bytes).unwrap();
    let ck = t.path().join("ck-new");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("new.bin"), &content).unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let out = cairn(&store).args(["push", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["chunks"].as_u64().unwrap() >= 1, "{v}");
    let copy = t.path().join("copy");
    r.clone_to(&copy);
    let dst = t.path().join("out");
    cairn(&copy)
        .args(["checkout", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(std::fs::read(dst.join("new.bin")).unwrap(), content);
}

/// A prefix holding objects cairn did not write, and a layout from a newer cairn, are refused;
/// a bad URL and an unknown remote are clear errors; credentials never reach a message.
#[test]
fn foreign_buckets_newer_layouts_and_bad_remotes_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("s");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    checkpoint(&ck, 1);
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let foreign = t.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("holiday.jpg"), b"not ours").unwrap();
    cairn(&store)
        .args([
            "remote",
            "add",
            "f",
            &format!("file://{}", foreign.display()),
        ])
        .assert()
        .success();
    let out = cairn(&store).args(["push", "f"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a cairn remote") && err.contains("holiday.jpg"),
        "{err}"
    );
    let newer = t.path().join("newer");
    std::fs::create_dir_all(&newer).unwrap();
    std::fs::write(
        newer.join("cairn-remote"),
        br#"{"format":"cairn-remote","layout":99}"#,
    )
    .unwrap();
    cairn(&store)
        .args(["remote", "add", "n", &format!("file://{}", newer.display())])
        .assert()
        .success();
    for cmd in [vec!["push", "n"], vec!["fetch", "n"]] {
        let out = cairn(&store).args(&cmd).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("layout 99") && err.contains("upgrade cairn"),
            "{err}"
        );
    }
    for (args, want) in [
        (
            vec!["remote", "add", "x", "http://bucket"],
            "bad remote URL",
        ),
        (
            vec!["remote", "add", "../x", "s3://bucket/p"],
            "bad remote name",
        ),
        (vec!["push", "nosuch"], "no remote named"),
        (vec!["fetch", "nosuch"], "no remote named"),
    ] {
        let out = cairn(&store).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // An endpoint nobody listens on: a clear error, bounded in time, without the secret.
    cairn(&store)
        .args(["remote", "add", "dead", "s3://cairn/p"])
        .assert()
        .success();
    let start = Instant::now();
    let out = cairn(&store)
        .args(["push", "dead"])
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID")
        .env("AWS_SECRET_ACCESS_KEY", "SuperSecretValue123")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s3://cairn/p"), "{err}");
    assert!(
        !err.contains("SuperSecretValue123") && !err.contains("AKIAEXAMPLEKEYID"),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(90));
    // Nothing of the credentials is stored.
    let remotes = std::fs::read_to_string(store.join("remotes.json")).unwrap();
    assert!(!remotes.contains("Secret"));
}

/// History whose older commits retention pruned travels without their data: the clone knows
/// them as pruned (log and show work, checkout says so), the newest checks out byte for byte,
/// and both fsck runs are clean.
#[test]
fn pruned_history_is_pushed_without_its_data() {
    let t = tempfile::tempdir().unwrap();
    let r = Remote::file(t.path());
    let store = t.path().join("s");
    cairn(&store).arg("init").assert().success();
    cairn(&store)
        .args(["retention", "set", "keep-last 1"])
        .assert()
        .success();
    let mut last = PathBuf::new();
    for i in 0..3u64 {
        let ck = t.path().join(format!("ck{i}"));
        checkpoint(&ck, i);
        cairn(&store).arg("commit").arg(&ck).assert().success();
        last = ck;
    }
    // The policy runs after each commit in the background.
    cairn(&store)
        .args(["gc", "--status", "--wait-idle"])
        .assert()
        .success();
    cairn(&store)
        .args(["remote", "add", "origin", &r.url])
        .assert()
        .success();
    cairn(&store).arg("push").assert().success();
    cairn(&store)
        .args(["fsck", "--remote", "origin", "--read-data"])
        .assert()
        .success();
    let copy = t.path().join("copy");
    r.clone_to(&copy);
    assert_eq!(log_ids(&copy, "HEAD"), log_ids(&store, "HEAD"));
    let out = cairn(&copy)
        .args(["checkout", "HEAD~2"])
        .arg(t.path().join("old"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pruned"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dst = t.path().join("new");
    cairn(&copy)
        .args(["checkout", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&last));
    fsck_read_data_clean(&copy);
}

/// Three commits of a checkpoint whose 64 MiB f32 `lm_head` changes a little each time (a delta
/// chain), plus an embedding that never changes; pushed to `r` from a new store.
fn lazy_series(t: &Path, r: &Remote) -> (PathBuf, Vec<PathBuf>) {
    use cairn::DType;
    let store = t.join("origin-store");
    cairn(&store).arg("init").assert().success();
    let n = 16 << 20; // f32 elements: 64 MiB
    let mut head = weights(3, n);
    let emb = weights(4, 1 << 20);
    let mut cks = Vec::new();
    for step in 0..3u64 {
        // Nudge 1% of the elements.
        for i in (0..n).step_by(100) {
            let b = &mut head[i * 4..i * 4 + 4];
            let v = f32::from_le_bytes(b.try_into().unwrap()) * 1.001 + step as f32 * 1e-6;
            b.copy_from_slice(&v.to_le_bytes());
        }
        let ck = t.join(format!("ck{step}"));
        write_st(
            &ck.join("model.safetensors"),
            &[
                ("lm_head.weight", DType::F32, vec![4096, 4096], head.clone()),
                ("embed.weight", DType::F32, vec![1024, 1024], emb.clone()),
            ],
        );
        std::fs::write(ck.join("config.json"), format!("{{\"step\": {step}}}")).unwrap();
        cairn(&store).arg("commit").arg(&ck).assert().success();
        cks.push(ck);
    }
    r.cairn(&store)
        .args(["remote", "add", "origin", &r.url])
        .assert()
        .success();
    r.cairn(&store).arg("push").assert().success();
    (store, cks)
}

/// Stored bytes of the chunks of `file:tensor` at HEAD of `store`, with their delta bases.
fn stored_bytes_of_tensor(store: &Path, spec: &str) -> u64 {
    let s = cairn::Store::open(store).unwrap();
    let tree = s
        .tree(s.commit(s.head().unwrap().unwrap()).unwrap().tree)
        .unwrap();
    let t = cairn::ops::read::find_tensor(&tree, spec).unwrap();
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    for c in &t.segment.chunks {
        let mut cur = Some(c.id);
        while let Some(id) = cur {
            if !seen.insert(id) {
                break;
            }
            let loc = s.chunk_loc(id).unwrap().unwrap();
            total += loc.stored_len;
            cur = loc.base.filter(|_| loc.encoding.needs_base());
        }
    }
    total
}

/// A lazy clone: history at once with no data; one tensor in at most 8 GETs and 1.25x its
/// stored bytes (counted by SeaweedFS); checkout byte for byte; fsck clean with the rest
/// reported as remote-only; a second read local.
#[test]
fn a_lazy_clone_reads_history_at_once_and_tensors_on_demand() {
    let t = tempfile::tempdir().unwrap();
    let server = Server::seaweed(t.path());
    let r = Remote::s3(server, "runs/lazy");
    let (store, cks) = lazy_series(t.path(), &r);
    let lazy = t.path().join("lazy");
    r.clone_to_with(&lazy, &["--lazy"]);
    let local_bytes: u64 = dir_size(&lazy.join("packs"));
    assert!(
        local_bytes < 1 << 20,
        "a lazy clone holds {local_bytes} bytes of packs"
    );
    assert_eq!(log_ids(&lazy, "HEAD"), log_ids(&store, "HEAD"));
    let server = r.server.as_ref().unwrap();
    let before = server.gets_and_bytes_sent();
    r.cairn(&lazy).args(["show", "HEAD"]).assert().success();
    r.cairn(&lazy).args(["log", "--all"]).assert().success();
    let out = r
        .cairn(&lazy)
        .args(["diff", "HEAD~1", "HEAD", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let head = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .unwrap()["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "lm_head.weight")
        .unwrap()
        .clone();
    assert_eq!(head["status"], "changed");
    assert!(head["chunks_changed"].as_u64().unwrap() > 0, "{head}");
    assert_eq!(
        server.gets_and_bytes_sent(),
        before,
        "log, show or diff fetched data"
    );

    let spec = "model.safetensors:lm_head.weight";
    let want = stored_bytes_of_tensor(&store, spec);
    let (g0, b0) = server.gets_and_bytes_sent();
    let out = t.path().join("head.safetensors");
    r.cairn(&lazy)
        .args(["tensor", "HEAD", spec, "-o"])
        .arg(&out)
        .assert()
        .success();
    let (g1, b1) = server.gets_and_bytes_sent();
    eprintln!(
        "lazy read of {spec}: {} GETs, {} bytes moved for {want} stored (chunks and bases)",
        g1 - g0,
        b1 - b0
    );
    assert!(g1 - g0 <= 8, "{} GETs for one tensor", g1 - g0);
    assert!(
        (b1 - b0) as f64 <= 1.25 * want as f64,
        "moved {} bytes for {want} stored",
        b1 - b0
    );
    let full = t.path().join("full.safetensors");
    cairn(&store)
        .args(["tensor", "HEAD", spec, "-o"])
        .arg(&full)
        .assert()
        .success();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&full).unwrap());
    // Read again: local now.
    r.cairn(&lazy)
        .args(["tensor", "HEAD", spec, "-o"])
        .arg(t.path().join("again.safetensors"))
        .assert()
        .success();
    assert_eq!(server.gets_and_bytes_sent().0, g1);
    // fsck: no problem; the chunks not fetched are reported as only on the remote.
    let out = r.cairn(&lazy).args(["fsck", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["chunks_remote"].as_u64().unwrap() > 0, "{v}");
    // Local gc and an index rebuild leave remote-only chunks alone, and reads still fetch.
    r.cairn(&lazy).arg("gc").assert().success();
    r.cairn(&lazy)
        .args(["repair", "--rebuild-index"])
        .assert()
        .success();
    let out = r.cairn(&lazy).args(["fsck", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Checkout of an older commit, byte for byte.
    let dst = t.path().join("old");
    r.cairn(&lazy)
        .args(["checkout", "HEAD~1"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&cks[1]));
    r.cairn(&lazy)
        .args(["fsck", "--read-data"])
        .assert()
        .success();
    // A pull into a lazy clone moves the branch and downloads no data.
    let ck = t.path().join("ck-next");
    copy_dir(&cks[2], &ck);
    std::fs::write(ck.join("config.json"), b"{\"step\": 3}").unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    r.cairn(&store).arg("push").assert().success();
    let out = r.cairn(&lazy).args(["pull", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["packs"].as_u64()),
        (Some("fast-forward"), Some(0))
    );
    let dst = t.path().join("next");
    r.cairn(&lazy)
        .args(["checkout", "HEAD"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&ck));
}

/// kill -9 of a lazy checkout mid-fetch, then again to the end: byte for byte, fsck clean. Then
/// `fetch --data` makes HEAD local, the server stops, and HEAD still checks out while a commit
/// whose data stayed remote fails with an error naming the remote, in bounded time, writing no
/// output file.
#[test]
fn a_lazy_clone_survives_kill_and_offline_reads_fail_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let mut r = Remote::s3(Server::seaweed(t.path()), "runs/lazy2");
    let (store, cks) = lazy_series(t.path(), &r);
    let lazy = t.path().join("lazy");
    r.clone_to_with(&lazy, &["--lazy"]);
    for (i, ms) in [60u64, 150, 300].iter().enumerate() {
        let dst = t.path().join(format!("killed{i}"));
        let mut child = r
            .std_cairn(&lazy)
            .args(["checkout", "HEAD~2"])
            .arg(&dst)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    let dst = t.path().join("whole");
    r.cairn(&lazy)
        .args(["checkout", "HEAD~2"])
        .arg(&dst)
        .assert()
        .success();
    assert_eq!(snapshot(&dst), snapshot(&cks[0]));
    r.cairn(&lazy)
        .args(["fsck", "--read-data"])
        .assert()
        .success();
    r.cairn(&lazy)
        .args(["fetch", "--data", "HEAD"])
        .assert()
        .success();
    // A new commit of 96 MiB of fresh data, pulled (no data moves).
    let big = t.path().join("ck-big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::write(big.join("fresh.bin"), noise(77, 96 << 20)).unwrap();
    cairn(&store).arg("commit").arg(&big).assert().success();
    r.cairn(&store).arg("push").assert().success();
    r.cairn(&lazy).arg("pull").assert().success();
    // The server dies 40 ms into the checkout of that commit: it completes byte for byte or
    // fails naming the remote, in bounded time, leaving no temp file.
    let endpoint = r.server.as_ref().unwrap().endpoint.clone();
    let mid = t.path().join("mid");
    let child = r
        .std_cairn(&lazy)
        .args(["checkout", "HEAD"])
        .arg(&mid)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(40));
    let start = Instant::now();
    drop(r.server.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    eprintln!(
        "checkout with its server killed under it: {}",
        if out.status.success() {
            "completed"
        } else {
            "failed cleanly"
        }
    );
    if out.status.success() {
        assert_eq!(snapshot(&mid), snapshot(&big));
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("fetching chunks from remote origin"), "{err}");
        if mid.exists() {
            for f in std::fs::read_dir(&mid).unwrap() {
                let name = f.unwrap().file_name().to_string_lossy().to_string();
                assert!(!name.contains("cairn-checkout"), "temp file left: {name}");
            }
        }
    }
    // Offline: what fetch --data made local checks out; remote-only data fails cleanly.
    let offline = |c: &mut assert_cmd::Command| {
        c.env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "cairn-test")
            .env("AWS_SECRET_ACCESS_KEY", "cairn-test")
            .env("HOME", "/nonexistent");
    };
    let mut c = cairn(&lazy);
    offline(&mut c);
    c.args(["checkout", "HEAD~1"])
        .arg(t.path().join("offline-head"))
        .assert()
        .success();
    assert_eq!(snapshot(&t.path().join("offline-head")), snapshot(&cks[2]));
    let start = Instant::now();
    let out_file = t.path().join("w.safetensors");
    let mut c = cairn(&lazy);
    offline(&mut c);
    let out = c
        .args(["tensor", "HEAD~2", "model.safetensors:lm_head.weight", "-o"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fetching chunks from remote origin"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    assert!(!out_file.exists());
}

/// On a terminal, push and clone draw a progress bar (bytes, rate, ETA); piped, they draw
/// nothing on stderr.
#[test]
fn transfers_show_progress_on_a_terminal_only() {
    let t = tempfile::tempdir().unwrap();
    let r = Remote::file(t.path());
    let store = t.path().join("s");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("w.bin"), noise(5, 24 << 20)).unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    cairn(&store)
        .args(["remote", "add", "origin", &r.url])
        .assert()
        .success();
    let on_terminal = |cmd: String| {
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("CAIRN_AUTHOR", "t@t")
            .output()
            .expect("script (util-linux) runs the command on a terminal");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let screen = on_terminal(format!(
        "{} --store {} push",
        bin().display(),
        store.display()
    ));
    assert!(
        screen.contains("push [") && screen.contains("MiB"),
        "{screen}"
    );
    let copy = t.path().join("copy");
    let screen = on_terminal(format!(
        "{} clone {} {}",
        bin().display(),
        r.url,
        copy.display()
    ));
    assert!(
        screen.contains("download [") && screen.contains("MiB"),
        "{screen}"
    );
    // Piped: nothing on stderr.
    std::fs::write(ck.join("more.bin"), noise(6, 1 << 20)).unwrap();
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let out = cairn(&store).arg("push").output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With no `AWS_*` variables, the endpoint, region and keys come from the `~/.aws` files (here
/// named by `AWS_CONFIG_FILE` and `AWS_SHARED_CREDENTIALS_FILE`, for profile `$AWS_PROFILE`):
/// without them the push would go to AWS itself and fail.
#[test]
fn s3_settings_come_from_the_aws_files() {
    let t = tempfile::tempdir().unwrap();
    let server = Server::seaweed(t.path());
    let aws = t.path().join("aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\
         [lab]\naws_access_key_id = cairn-test\naws_secret_access_key = cairn-test\n",
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[profile lab]\nregion = us-east-1\nendpoint_url = {}\n",
            server.endpoint
        ),
    )
    .unwrap();
    let store = t.path().join("s");
    cairn(&store).arg("init").assert().success();
    let ck = t.path().join("ck");
    checkpoint(&ck, 3);
    cairn(&store).arg("commit").arg(&ck).assert().success();
    let with_files = |c: &mut assert_cmd::Command| {
        for v in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
        ] {
            c.env_remove(v);
        }
        c.env("AWS_CONFIG_FILE", aws.join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", aws.join("credentials"))
            .env("AWS_PROFILE", "lab")
            .env("AWS_ALLOW_HTTP", "true");
    };
    cairn(&store)
        .args(["remote", "add", "origin", "s3://cairn/from-files"])
        .assert()
        .success();
    let mut c = cairn(&store);
    with_files(&mut c);
    c.arg("push").assert().success();
    let mut c = cairn(&store);
    with_files(&mut c);
    let out = c.args(["fetch", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["refs"]["refs/heads/main"][0].as_str().unwrap(),
        head(&store)
    );
}
