//! [`Bucket`]: one remote's objects, reached through `object_store` (S3 or a local directory)
//! with a private async runtime behind a blocking surface, so callers (the CLI, the Python
//! package) never see async.
//!
//! Invariants:
//! - Every name passed in is relative to the remote's prefix and made by [`crate::remote::layout`]
//!   (lowercase hex, `/`, `.`), so no name can leave the prefix.
//! - Requests that fail transiently (5xx, timeouts, resets) are retried by `object_store` with
//!   exponential backoff, a bounded number of times within a bounded time, then reported as
//!   [`RemoteError::Backend`] naming the URL, the operation and the object, never a credential.
//! - Large objects go up in parts (multipart upload above [`MULTIPART_THRESHOLD`]); an
//!   interrupted multipart upload is aborted when possible and never becomes visible.
#![warn(missing_docs)]

use crate::remote::config::{RemoteOptions, RemoteUrl};
use crate::remote::error::{RemoteError, io_at};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::io::{Read, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Objects larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 32 << 20;
/// The size of each part of a multipart upload.
pub const PART_SIZE: usize = 16 << 20;
/// Parts or downloads in flight at once.
pub const CONCURRENCY: usize = 4;

/// Requests made and bytes moved, counted on this side.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Requests sent (each part of a multipart upload counts, and its start and completion).
    pub requests: AtomicU64,
    /// Bytes uploaded (object bodies).
    pub bytes_up: AtomicU64,
    /// Bytes downloaded (object bodies).
    pub bytes_down: AtomicU64,
}

/// A snapshot of [`Traffic`].
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TrafficCount {
    /// Requests sent.
    pub requests: u64,
    /// Bytes uploaded.
    pub bytes_up: u64,
    /// Bytes downloaded.
    pub bytes_down: u64,
}

/// One remote's objects.
pub struct Bucket {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    /// For `file://` remotes, the directory: objects written there are fsynced with their
    /// directories before a put returns (`object_store`'s local store renames but never syncs).
    local_root: Option<std::path::PathBuf>,
    prefix: String,
    url: String,
    traffic: Traffic,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({})", self.url)
    }
}

impl Bucket {
    /// Connect to `url` with `opts` (S3 only). No request is made yet. Fails with
    /// [`RemoteError::Backend`] when the client cannot be built (a malformed endpoint), and
    /// [`RemoteError::Io`] when a `file://` directory cannot be created.
    pub fn open(url: &RemoteUrl, opts: &RemoteOptions) -> Result<Bucket, RemoteError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-remote")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Io {
                path: "tokio runtime".into(),
                source: e,
            })?;
        let shown = url.to_string();
        let backend = |message: String| RemoteError::Backend {
            url: shown.clone(),
            op: "connect",
            object: String::new(),
            message,
        };
        let local_root = match url {
            RemoteUrl::File { path } => Some(path.clone()),
            RemoteUrl::S3 { .. } => None,
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match url {
            RemoteUrl::File { path } => {
                std::fs::create_dir_all(path).map_err(io_at(path))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| backend(e.to_string()))?;
                (Arc::new(fs), String::new())
            }
            RemoteUrl::S3 { bucket, prefix } => {
                let retry = object_store::RetryConfig {
                    backoff: object_store::BackoffConfig {
                        init_backoff: Duration::from_millis(100),
                        max_backoff: Duration::from_secs(5),
                        base: 2.0,
                    },
                    max_retries: 5,
                    retry_timeout: Duration::from_secs(60),
                };
                let client = object_store::ClientOptions::new()
                    .with_allow_http(opts.allow_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120));
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(opts.region.as_deref().unwrap_or("us-east-1"))
                    .with_allow_http(opts.allow_http)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(e) = &opts.endpoint {
                    b = b.with_endpoint(e);
                }
                match &opts.credentials {
                    Some(c) => {
                        b = b
                            .with_access_key_id(&c.access_key_id)
                            .with_secret_access_key(&c.secret_access_key);
                        if let Some(t) = &c.session_token {
                            b = b.with_token(t);
                        }
                    }
                    None => b = b.with_skip_signature(true),
                }
                let s3 = b.build().map_err(|e| backend(e.to_string()))?;
                (Arc::new(s3), prefix.clone())
            }
        };
        Ok(Bucket {
            rt,
            store,
            local_root,
            prefix,
            url: shown,
            traffic: Traffic::default(),
        })
    }

    /// A bucket over any `object_store` (the in-memory store in unit tests), shown as `url`.
    pub fn with_store(store: Arc<dyn ObjectStore>, url: &str) -> Result<Bucket, RemoteError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Io {
                path: "tokio runtime".into(),
                source: e,
            })?;
        Ok(Bucket {
            rt,
            store,
            local_root: None,
            prefix: String::new(),
            url: url.to_string(),
            traffic: Traffic::default(),
        })
    }

    /// The remote's URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Requests and bytes so far.
    pub fn traffic(&self) -> TrafficCount {
        TrafficCount {
            requests: self.traffic.requests.load(Ordering::Relaxed),
            bytes_up: self.traffic.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.traffic.bytes_down.load(Ordering::Relaxed),
        }
    }

    fn path(&self, name: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(name)
        } else {
            ObjPath::from(format!("{}/{name}", self.prefix))
        }
    }

    fn err(&self, op: &'static str, object: &str, e: impl std::fmt::Display) -> RemoteError {
        RemoteError::Backend {
            url: self.url.clone(),
            op,
            object: object.to_string(),
            message: e.to_string(),
        }
    }

    /// For a `file://` remote, fsync object `name` and the directories down to it, so a put
    /// that returned survives a crash.
    fn sync_local(&self, name: &str) -> Result<(), RemoteError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let path = root.join(name);
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&path))?;
        let mut dir = path.parent();
        while let Some(d) = dir {
            crate::storage::fsutil::sync_dir(d).map_err(io_at(d))?;
            if d == root.as_path() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    fn count(&self, requests: u64, up: u64, down: u64) {
        self.traffic.requests.fetch_add(requests, Ordering::Relaxed);
        self.traffic.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.traffic.bytes_down.fetch_add(down, Ordering::Relaxed);
    }

    /// Write `bytes` as object `name`, replacing any object of that name (names are content
    /// hashes or fresh random ids, so a replacement holds the same bytes).
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        let n = bytes.len() as u64;
        self.count(1, n, 0);
        self.rt
            .block_on(self.store.put(&self.path(name), PutPayload::from(bytes)))
            .map_err(|e| self.err("put", name, e))?;
        self.sync_local(name)
    }

    /// Create object `name` with `bytes` unless it exists (`If-None-Match: *` where the server
    /// honours it). `Ok(true)` when this call wrote it, `Ok(false)` when it was there. A failed
    /// or timed-out request is settled by reading the object back: correctness never rests on
    /// the server enforcing the condition.
    pub fn put_new(&self, name: &str, bytes: Vec<u8>) -> Result<bool, RemoteError> {
        self.count(1, bytes.len() as u64, 0);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let res = self.rt.block_on(self.store.put_opts(
            &self.path(name),
            PutPayload::from(bytes.clone()),
            opts,
        ));
        match res {
            Ok(_) => {
                self.sync_local(name)?;
                Ok(true)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => {
                // A store without conditional writes: check, then write.
                if self.get(name)?.is_some() {
                    return Ok(false);
                }
                self.put(name, bytes)?;
                Ok(true)
            }
            Err(e) => match self.get(name)? {
                Some(found) if found == bytes => Ok(true),
                Some(_) => Ok(false),
                None => Err(self.err("put", name, e)),
            },
        }
    }

    /// Upload the file at `path` as object `name`, in parts above [`MULTIPART_THRESHOLD`],
    /// reporting bytes to `on_bytes`. Returns the BLAKE3 of the bytes uploaded, hashed as they
    /// are read (the file is read once).
    pub fn put_file(
        &self,
        name: &str,
        path: &Path,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<[u8; 32], RemoteError> {
        let mut f = std::fs::File::open(path).map_err(io_at(path))?;
        let len = f.metadata().map_err(io_at(path))?.len();
        let mut hasher = blake3::Hasher::new();
        if len <= MULTIPART_THRESHOLD {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).map_err(io_at(path))?;
            hasher.update(&buf);
            self.put(name, buf)?;
            on_bytes(len);
            return Ok(*hasher.finalize().as_bytes());
        }
        let location = self.path(name);
        self.rt.block_on(async {
            self.count(1, 0, 0);
            let upload = self
                .store
                .put_multipart(&location)
                .await
                .map_err(|e| self.err("put", name, e))?;
            let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; PART_SIZE];
            loop {
                let n = read_full(&mut f, &mut buf).map_err(io_at(path))?;
                if n == 0 {
                    break;
                }
                if let Err(e) = w.wait_for_capacity(CONCURRENCY).await {
                    return Err(self.err("put", name, e));
                }
                hasher.update(&buf[..n]);
                w.write(&buf[..n]);
                self.count(1, n as u64, 0);
                on_bytes(n as u64);
            }
            self.count(1, 0, 0);
            w.finish().await.map_err(|e| self.err("put", name, e))?;
            Ok::<(), RemoteError>(())
        })?;
        self.sync_local(name)?;
        Ok(*hasher.finalize().as_bytes())
    }

    /// The bytes of object `name`, or `None` when there is none.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        self.count(1, 0, 0);
        let res = self.rt.block_on(async {
            let r = self.store.get(&self.path(name)).await?;
            r.bytes().await
        });
        match res {
            Ok(b) => {
                self.count(0, 0, b.len() as u64);
                Ok(Some(b.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("get", name, e)),
        }
    }

    /// Many objects at once, [`CONCURRENCY`] in flight: each name with its bytes (`None` when
    /// missing), in the order given.
    pub fn get_many(&self, names: &[String]) -> Result<Vec<Option<Vec<u8>>>, RemoteError> {
        self.rt.block_on(async {
            futures::stream::iter(names.iter().map(|n| async move {
                self.count(1, 0, 0);
                let res = async {
                    let r = self.store.get(&self.path(n)).await?;
                    r.bytes().await
                }
                .await;
                match res {
                    Ok(b) => {
                        self.count(0, 0, b.len() as u64);
                        Ok(Some(b.to_vec()))
                    }
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(self.err("get", n, e)),
                }
            }))
            .buffered(CONCURRENCY)
            .try_collect()
            .await
        })
    }

    /// Download object `name` into the new file `path`, hashing it on the way: its length and
    /// BLAKE3. `Ok(None)` when there is no such object.
    pub fn get_to_file(
        &self,
        name: &str,
        path: &Path,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<Option<(u64, [u8; 32])>, RemoteError> {
        self.count(1, 0, 0);
        self.rt.block_on(async {
            let r = match self.store.get(&self.path(name)).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.err("get", name, e)),
            };
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(io_at(path))?;
            let mut hasher = blake3::Hasher::new();
            let mut n = 0u64;
            let mut stream = r.into_stream();
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(|e| self.err("get", name, e))?;
                hasher.update(&piece);
                f.write_all(&piece).map_err(io_at(path))?;
                n += piece.len() as u64;
                self.count(0, 0, piece.len() as u64);
                on_bytes(piece.len() as u64);
            }
            f.sync_all().map_err(io_at(path))?;
            Ok(Some((n, *hasher.finalize().as_bytes())))
        })
    }

    /// The bytes of `range` of object `name`.
    pub fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>, RemoteError> {
        self.count(1, 0, 0);
        let b = self
            .rt
            .block_on(self.store.get_range(&self.path(name), range))
            .map_err(|e| self.err("get", name, e))?;
        self.count(0, 0, b.len() as u64);
        Ok(b.to_vec())
    }

    /// Ranges of objects, one request each, [`CONCURRENCY`] in flight: the bytes of each
    /// `(name, range)`, in the order given.
    pub fn get_ranges(&self, items: &[(String, Range<u64>)]) -> Result<Vec<Vec<u8>>, RemoteError> {
        self.rt.block_on(async {
            futures::stream::iter(items.iter().map(|(name, r)| async move {
                self.count(1, 0, 0);
                let b = self
                    .store
                    .get_range(&self.path(name), r.clone())
                    .await
                    .map_err(|e| self.err("get", name, e))?;
                self.count(0, 0, b.len() as u64);
                if b.len() as u64 != r.end - r.start {
                    return Err(self.err(
                        "get",
                        name,
                        format!("asked for {} bytes, got {}", r.end - r.start, b.len()),
                    ));
                }
                Ok(b.to_vec())
            }))
            .buffered(CONCURRENCY)
            .try_collect()
            .await
        })
    }

    /// The size of object `name`, or `None` when there is none.
    pub fn head(&self, name: &str) -> Result<Option<u64>, RemoteError> {
        self.count(1, 0, 0);
        match self.rt.block_on(self.store.head(&self.path(name))) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("head", name, e)),
        }
    }

    /// Every object under directory `dir` (`"records"`, `"packs"`, ...; `""` for all): its name
    /// relative to the prefix, and its size.
    pub fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, RemoteError> {
        self.count(1, 0, 0);
        let base = if dir.is_empty() {
            self.prefix.clone()
        } else if self.prefix.is_empty() {
            dir.to_string()
        } else {
            format!("{}/{dir}", self.prefix)
        };
        let loc = (!base.is_empty()).then(|| ObjPath::from(base));
        let metas: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.store.list(loc.as_ref()).try_collect())
            .map_err(|e| self.err("list", dir, e))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        Ok(metas
            .into_iter()
            .map(|m| {
                let full: String = m.location.into();
                let rel = full.strip_prefix(&strip).unwrap_or(&full).to_string();
                (rel, m.size)
            })
            .collect())
    }

    /// Delete object `name` (tests, and remote gc later); a missing object is not an error.
    pub fn delete(&self, name: &str) -> Result<(), RemoteError> {
        self.count(1, 0, 0);
        match self.rt.block_on(self.store.delete(&self.path(name))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", name, e)),
        }
    }
}

/// Read until `buf` is full or the file ends; the number of bytes read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
