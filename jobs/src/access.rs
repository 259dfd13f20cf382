//! What files a job may read, and how they are read: the data roots that bound the paths a
//! job submitted by someone other than the node's owner may name (checked after every
//! symlink is resolved), and [`read_regular`], the one way a job reads a file it was given
//! whole: a regular file (not a device, a fifo or a directory) of at most a bound.
//!
//! The rule (the README's trust model): whoever holds the token and calls from this machine
//! is the node's owner: a job may read any path the node can. Everyone else may name only
//! files below a data root (`--data-root`) or the node's models folder.

use std::io::Read;
use std::path::{Path, PathBuf};

/// What files a job may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Any path the node can read: the node's owner.
    Any,
    /// Only paths below these directories (canonical), after resolving symlinks.
    Below(Vec<PathBuf>),
}

/// Why a path is refused. It says the path as the job named it and no more (not the
/// roots: the caller is not the node's owner).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is outside the node's data roots{}", .path.display(), if .roots.is_empty() { " (it has none: its owner starts it with --data-root DIR)" } else { "" })]
pub struct Outside {
    pub path: PathBuf,
    pub roots: Vec<PathBuf>,
}

impl Access {
    /// Access below `roots` (made canonical; a root that does not exist is left out).
    pub fn below(roots: &[PathBuf]) -> Access {
        Access::Below(
            roots
                .iter()
                .filter_map(|r| std::fs::canonicalize(r).ok())
                .collect(),
        )
    }

    /// Whether a job may read `path`. The path is resolved (every symlink followed) and must
    /// then lie below a root; a path that does not exist is judged by its nearest existing
    /// ancestor (a glob pattern, a file yet to come), so `..` cannot climb out either.
    pub fn check(&self, path: &Path) -> Result<(), Outside> {
        let Access::Below(roots) = self else {
            return Ok(());
        };
        let outside = || Outside {
            path: path.to_path_buf(),
            roots: roots.clone(),
        };
        let resolved = resolve(path).ok_or_else(outside)?;
        if roots.iter().any(|r| resolved.starts_with(r)) {
            Ok(())
        } else {
            Err(outside())
        }
    }
}

/// `path` made canonical, or, if it does not exist, its nearest existing ancestor made
/// canonical with the rest appended (the rest may not hold `..`).
fn resolve(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Some(p);
    }
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        let name = at.file_name()?;
        rest.push(name.to_owned());
        at = at.parent()?;
        if let Ok(base) = std::fs::canonicalize(if at.as_os_str().is_empty() {
            Path::new(".")
        } else {
            at
        }) {
            if path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return None;
            }
            let mut p = base;
            p.extend(rest.iter().rev());
            return Some(p);
        }
    }
}

/// The largest document a job reads whole (to chunk or embed it): bigger ones are refused,
/// not read.
pub const MAX_DOCUMENT_BYTES: u64 = 128 << 20;

/// Why a file a job names could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {kind}")]
    Io {
        path: String,
        kind: std::io::ErrorKind,
    },
    #[error("{path} is not a regular file (a directory, a device or a pipe); name a file")]
    NotRegular { path: String },
    #[error("{path} is {bytes} bytes, more than the {limit} bytes this field takes")]
    TooBig {
        path: String,
        bytes: u64,
        limit: u64,
    },
}

/// Read `path` whole if it is a regular file of at most `limit` bytes: a device
/// (`/dev/zero`), a fifo or a directory is refused before anything is read, and a file
/// that grows past the bound while it is read is refused too. Opened without blocking, so
/// a fifo swapped in after the check cannot hang the reader.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display().to_string();
    let io = |e: std::io::Error| ReadError::Io {
        path: shown.clone(),
        kind: e.kind(),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular { path: shown });
    }
    if meta.len() > limit {
        return Err(ReadError::TooBig {
            path: shown,
            bytes: meta.len(),
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooBig {
            path: shown,
            bytes: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn paths_are_judged_after_their_symlinks_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let secret = dir.path().join("secret.txt");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(root.join("docs/a.md"), "a").unwrap();
        std::fs::write(&secret, "s").unwrap();
        std::os::unix::fs::symlink(&secret, root.join("docs/link.md")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
        let access = Access::below(std::slice::from_ref(&root));
        assert!(access.check(&root.join("docs/a.md")).is_ok());
        assert!(access.check(&root.join("docs")).is_ok());
        assert!(
            access.check(&root.join("docs/*.md")).is_ok(),
            "a glob below"
        );
        assert!(access.check(&secret).is_err());
        assert!(
            access.check(&root.join("docs/link.md")).is_err(),
            "a symlink out"
        );
        assert!(
            access.check(&root.join("up/secret.txt")).is_err(),
            "a symlinked dir out"
        );
        assert!(access.check(&root.join("docs/../../secret.txt")).is_err());
        assert!(
            access.check(&root.join("nothing/../../x/*")).is_err(),
            "`..` in a missing path"
        );
        assert!(Access::Any.check(&secret).is_ok());
        let none = Access::below(&[]);
        let e = none.check(&root.join("docs/a.md")).unwrap_err();
        assert!(e.to_string().contains("--data-root"), "{e}");
    }

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, "hello").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap(), b"hello");
        assert!(matches!(read_regular(&f, 4), Err(ReadError::TooBig { .. })));
        assert!(matches!(
            read_regular(Path::new("/dev/zero"), 1 << 20),
            Err(ReadError::NotRegular { .. })
        ));
        assert!(matches!(
            read_regular(dir.path(), 1 << 20),
            Err(ReadError::NotRegular { .. })
        ));
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(matches!(
            read_regular(&fifo, 1 << 20),
            Err(ReadError::NotRegular { .. })
        ));
        // A sparse file of 2 GB is refused by its size, not read.
        let sparse = dir.path().join("sparse");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(2 << 30)
            .unwrap();
        assert!(matches!(
            read_regular(&sparse, 64 << 20),
            Err(ReadError::TooBig { .. })
        ));
        assert!(matches!(
            read_regular(&dir.path().join("none"), 1),
            Err(ReadError::Io { .. })
        ));
    }
}
