//! The directory a checkout writes into, walked the way git walks a worktree: one directory
//! component at a time, relative to a directory handle already open, never following a
//! symbolic link, so no file of a commit lands outside that directory.
//!
//! Invariants:
//! - Every directory below the root is opened with `openat(parent, name, O_DIRECTORY |
//!   O_NOFOLLOW)` from its parent's handle, created with `mkdirat` when missing. A symlink at any
//!   component is refused ("beyond a symbolic link"), whatever it points at, and swapping a
//!   component for a link between two steps cannot redirect a write: each step starts from a
//!   handle, not a path. The root itself may be a link (the user named it).
//! - Files are created exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`) under an unpredictable
//!   temporary name in their directory, and reach their name by `renameat`, which replaces a
//!   link at that name rather than following it.
//! - Two tree paths that the filesystem maps to one entry (a case-insensitive or
//!   Unicode-normalizing filesystem: `Model.bin` and `model.bin`) are an error naming both,
//!   never a silent overwrite. Before a name is created, entered or renamed over, what is there
//!   is looked up: it collides when it is a file or directory this checkout already wrote or
//!   entered under another tree path, known by device and inode, or (for filesystems whose
//!   inode numbers are per name, as FUSE drivers' may be) when the directory proved
//!   case-insensitive and a name this checkout created there folds to the same (lowercase of
//!   the NFC form). A directory is proved case-insensitive by creating a random lowercase probe
//!   name in it and looking it up in uppercase.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// What can go wrong writing into the checkout directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutDirError {
    /// A path component of the checkout is a symbolic link.
    #[error("{}: refusing to write {path} beyond a symbolic link", link.display())]
    BeyondSymlink {
        /// The link, under the checkout directory.
        link: PathBuf,
        /// The tree path that would have been written through it.
        path: String,
    },
    /// Two tree paths name one entry on this filesystem (case folding or normalization).
    #[error(
        "{path} and {other} are the same name on this filesystem (case-insensitive or \
         normalizing); check out onto a case-sensitive filesystem"
    )]
    Collision {
        /// The tree path being written.
        path: String,
        /// The tree path written before it that the filesystem takes for the same name.
        other: String,
    },
    /// Creating, opening, renaming or syncing an entry failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The entry, under the checkout directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = OutDirError> = std::result::Result<T, E>;

/// A file's identity on this machine.
type Inode = (u64, u64);

/// A directory entered: its handle, what this checkout created in it, and whether its names are
/// case-insensitive (probed when first needed).
struct Dir {
    fd: OwnedFd,
    /// Names created here by this checkout, with their tree paths.
    created: Vec<(String, String)>,
    case_insensitive: Option<bool>,
}

impl Dir {
    fn new(fd: OwnedFd) -> Dir {
        Dir {
            fd,
            created: Vec::new(),
            case_insensitive: None,
        }
    }
}

/// The form two names share when a case-insensitive, normalizing filesystem takes them for one.
fn fold(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    name.nfc().flat_map(char::to_lowercase).collect()
}

/// An open checkout directory: the root's handle and those of the directories entered below it.
pub struct OutDir {
    root: PathBuf,
    /// Directories entered, by tree path ("" is the root).
    dirs: HashMap<String, Dir>,
    /// Every directory and file this checkout entered or wrote, by inode: its tree path.
    seen: HashMap<Inode, String>,
    /// Directories that gained or lost a name, to fsync at the end.
    touched: Vec<String>,
}

fn io(path: PathBuf) -> impl FnOnce(Errno) -> OutDirError {
    move |e| OutDirError::Io {
        path,
        source: e.into(),
    }
}

fn inode_of(st: &rustix::fs::Stat) -> Inode {
    (st.st_dev, st.st_ino)
}

impl OutDir {
    /// Create `root` (and its parents, following links: the user named it) when missing, and
    /// open it. Fails when it cannot be created or is not a directory.
    pub fn open(root: &Path) -> Result<OutDir> {
        std::fs::create_dir_all(root).map_err(|source| OutDirError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io(root.to_path_buf()))?;
        let st = rustix::fs::fstat(&fd).map_err(io(root.to_path_buf()))?;
        let mut seen = HashMap::new();
        seen.insert(inode_of(&st), String::new());
        Ok(OutDir {
            root: root.to_path_buf(),
            dirs: HashMap::from([(String::new(), Dir::new(fd))]),
            seen,
            touched: vec![String::new()],
        })
    }

    /// The on-disk path of tree path `rel`, for messages.
    pub fn path_of(&self, rel: &str) -> PathBuf {
        let mut p = self.root.clone();
        for c in rel.split('/').filter(|c| !c.is_empty()) {
            p.push(c);
        }
        p
    }

    /// Enter (creating when missing) the directory at tree path `rel` ("" is the root), one
    /// component at a time from the root's handle. `for_path` is the tree path being written,
    /// for messages. Fails with [`OutDirError::BeyondSymlink`] at a link,
    /// [`OutDirError::Collision`] when the filesystem takes the name for one this checkout
    /// already used, and [`OutDirError::Io`] otherwise (a file in the way, no permission).
    pub fn enter(&mut self, rel: &str, for_path: &str) -> Result<()> {
        if self.dirs.contains_key(rel) {
            return Ok(());
        }
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", rel),
        };
        self.enter(parent, for_path)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let parent_fd = &self.dirs[parent].fd;
        let mut made = false;
        let opened = match rustix::fs::openat(parent_fd, name, flags, Mode::empty()) {
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(parent_fd, name, Mode::from_bits_truncate(0o777)) {
                    Ok(()) => made = true,
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(io(self.path_of(rel))(e)),
                }
                rustix::fs::openat(parent_fd, name, flags, Mode::empty())
            }
            other => other,
        };
        let fd = match opened {
            Ok(fd) => fd,
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                self.check_free(parent, name, rel)?;
                return Err(self.explain_not_dir(parent, name, rel, for_path, e));
            }
            Err(e) => return Err(io(self.path_of(rel))(e)),
        };
        if made {
            self.note_created(parent, name, rel);
        } else {
            self.check_free(parent, name, rel)?;
        }
        let st = rustix::fs::fstat(&fd).map_err(io(self.path_of(rel)))?;
        self.seen.insert(inode_of(&st), rel.to_string());
        self.dirs.insert(rel.to_string(), Dir::new(fd));
        Ok(())
    }

    /// Record that `name` in directory `parent` was created for tree path `rel`.
    fn note_created(&mut self, parent: &str, name: &str, rel: &str) {
        let dir = self.dirs.get_mut(parent).expect("the parent was entered");
        dir.created.push((name.to_string(), rel.to_string()));
        if !self.touched.iter().any(|t| t == parent) {
            self.touched.push(parent.to_string());
        }
    }

    /// Fail with [`OutDirError::Collision`] when `name` in directory `parent`, about to be
    /// entered or replaced for tree path `rel`, is something this checkout wrote or entered for
    /// another tree path (see the module's invariants).
    fn check_free(&mut self, parent: &str, name: &str, rel: &str) -> Result<()> {
        let Ok(st) = rustix::fs::statat(&self.dirs[parent].fd, name, AtFlags::SYMLINK_NOFOLLOW)
        else {
            return Ok(()); // nothing there
        };
        if let Some(other) = self.seen.get(&inode_of(&st))
            && other != rel
        {
            return Err(OutDirError::Collision {
                path: rel.to_string(),
                other: other.clone(),
            });
        }
        if self.case_insensitive(parent)? {
            let f = fold(name);
            if let Some((_, other)) = self.dirs[parent]
                .created
                .iter()
                .find(|(n, _)| n != name && fold(n) == f)
            {
                return Err(OutDirError::Collision {
                    path: rel.to_string(),
                    other: other.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether directory `parent` takes names case-insensitively: a random lowercase name is
    /// created there and looked up in uppercase, once per directory.
    fn case_insensitive(&mut self, parent: &str) -> Result<bool> {
        let path = self.path_of(parent);
        let dir = self.dirs.get_mut(parent).expect("the parent was entered");
        if let Some(known) = dir.case_insensitive {
            return Ok(known);
        }
        let probe = format!(
            ".cairn-case-probe-{}",
            crate::model::id::PackId::random().to_hex()
        );
        rustix::fs::openat(
            &dir.fd,
            probe.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io(path))?;
        let folded = rustix::fs::statat(
            &dir.fd,
            probe.to_uppercase().as_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok();
        let _ = rustix::fs::unlinkat(&dir.fd, probe.as_str(), AtFlags::empty());
        dir.case_insensitive = Some(folded);
        Ok(folded)
    }

    /// Why `name` in directory `parent` could not be opened as a directory.
    fn explain_not_dir(
        &self,
        parent: &str,
        name: &str,
        rel: &str,
        for_path: &str,
        e: Errno,
    ) -> OutDirError {
        let st = rustix::fs::statat(&self.dirs[parent].fd, name, AtFlags::SYMLINK_NOFOLLOW);
        match st {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                OutDirError::BeyondSymlink {
                    link: self.path_of(rel),
                    path: for_path.to_string(),
                }
            }
            _ => io(self.path_of(rel))(e),
        }
    }

    /// Create a new, empty file under an unpredictable temporary name in the directory of tree
    /// path `rel` (entering it first), exclusively. Returns the file and its temporary name.
    pub fn create_temp(&mut self, rel: &str) -> Result<(File, String)> {
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
        self.enter(parent, rel)?;
        let tmp = format!(
            ".cairn-checkout-{}-{}.tmp",
            std::process::id(),
            crate::model::id::PackId::random()
        );
        let fd = rustix::fs::openat(
            &self.dirs[parent].fd,
            tmp.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_bits_truncate(0o666),
        )
        .map_err(io(self.path_of(&format!("{parent}/{tmp}"))))?;
        Ok((File::from(fd), tmp))
    }

    /// Give the temporary file `tmp` (of [`OutDir::create_temp`], written and synced) the name of
    /// tree path `rel`, replacing what is there unless it is something this checkout wrote under
    /// another tree path ([`OutDirError::Collision`]; the temporary file is then removed).
    pub fn publish(&mut self, rel: &str, tmp: &str, file: &File) -> Result<()> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let mine = rustix::fs::fstat(file.as_fd()).map_err(io(self.path_of(rel)))?;
        if let Err(e) = self.check_free(parent, name, rel) {
            self.discard(rel, tmp);
            return Err(e);
        }
        let dir = &self.dirs[parent].fd;
        rustix::fs::renameat(dir, tmp, dir, name).map_err(io(self.path_of(rel)))?;
        self.seen.insert(inode_of(&mine), rel.to_string());
        self.note_created(parent, name, rel);
        Ok(())
    }

    /// Remove the temporary file `tmp` made for tree path `rel`, ignoring errors (cleanup after
    /// a failure, whose error is the one to report).
    pub fn discard(&self, rel: &str, tmp: &str) {
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
        if let Some(dir) = self.dirs.get(parent) {
            let _ = rustix::fs::unlinkat(&dir.fd, tmp, AtFlags::empty());
        }
    }

    /// Fsync every directory that gained a name, so the names survive a crash once checkout
    /// reports success.
    pub fn sync(&self) -> Result<()> {
        for rel in &self.touched {
            if let Some(dir) = self.dirs.get(rel) {
                rustix::fs::fsync(&dir.fd).map_err(io(self.path_of(rel)))?;
            }
        }
        Ok(())
    }
}
