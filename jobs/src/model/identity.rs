//! A model known by its content: the SHA-256 of its bytes. Two files of one name and size
//! but different bytes are two models; one file under two names is one. A hash is computed
//! once per file and remembered in the home's cache (`cache/ids/`, one small record per
//! file, keyed by its canonical path and checked against its size and modification time), so
//! a 40 GB file is not read again at every start: only when it changed.
//!
//! Reads model files and writes only under the cache directory it is given.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

/// The hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file's size and modification time (ns since the epoch): what a remembered hash is
/// checked against.
fn stamp(path: &Path) -> std::io::Result<(u64, u128)> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok((meta.len(), mtime))
}

/// Where the record of `path` lives in `cache/ids`.
fn record_path(ids: &Path, path: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let key = sha256_hex(canonical.to_string_lossy().as_bytes());
    ids.join(format!("{}.id", &key[..32]))
}

/// The remembered hash of the file at `path`, if the record in `cache` (the home's
/// `cache/`) matches the file's size and modification time now. Never reads the file.
pub fn known(path: &Path, cache: &Path) -> Option<String> {
    let (size, mtime) = stamp(path).ok()?;
    let text = std::fs::read_to_string(record_path(&cache.join("ids"), path)).ok()?;
    let mut parts = text.split_whitespace();
    let (s, m, h) = (parts.next()?, parts.next()?, parts.next()?);
    (s.parse::<u64>().ok()? == size && m.parse::<u128>().ok()? == mtime && h.len() == 64)
        .then(|| h.to_owned())
}

/// The hash of the file at `path`: remembered, or read now (in 8 MiB blocks, `stop`
/// polled between them) and remembered in `cache`.
pub fn identify(path: &Path, cache: &Path, stop: &dyn Fn() -> bool) -> std::io::Result<String> {
    if let Some(h) = known(path, cache) {
        return Ok(h);
    }
    let before = stamp(path)?;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        if stop() {
            return Err(std::io::Error::other("stopped"));
        }
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hash = hex(&hasher.finalize());
    // A file that changed while it was read is not remembered (the next call reads it again).
    if stamp(path)? == before {
        write_record(path, cache, before, &hash)?;
    }
    Ok(hash)
}

/// The SHA-256 of the file at `path`, read now (nothing remembered).
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Remember that the file at `path`, as it is now, hashes to `sha256` (it was checked as it
/// was written: a fetched model).
pub fn remember(path: &Path, cache: &Path, sha256: &str) -> std::io::Result<()> {
    write_record(path, cache, stamp(path)?, sha256)
}

fn write_record(path: &Path, cache: &Path, stamp: (u64, u128), hash: &str) -> std::io::Result<()> {
    let ids = cache.join("ids");
    std::fs::create_dir_all(&ids)?;
    let record = record_path(&ids, path);
    let tmp = record.with_extension("tmp");
    std::fs::write(&tmp, format!("{} {} {hash}\n", stamp.0, stamp.1))?;
    std::fs::rename(&tmp, &record)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_hash_is_read_once_and_again_only_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let a = dir.path().join("a.gguf");
        std::fs::write(&a, b"weights one").unwrap();
        assert_eq!(known(&a, &cache), None);
        let h = identify(&a, &cache, &|| false).unwrap();
        assert_eq!(h, sha256_hex(b"weights one"));
        assert_eq!(known(&a, &cache), Some(h.clone()));
        // Same name and size, other bytes: another model.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&a, b"weights two").unwrap();
        assert_eq!(known(&a, &cache), None, "the record no longer matches");
        let h2 = identify(&a, &cache, &|| false).unwrap();
        assert_ne!(h, h2);
        assert_eq!(h2, sha256_hex(b"weights two"));
        // A stop request ends a hash without remembering anything.
        let b = dir.path().join("b.gguf");
        std::fs::write(&b, b"more").unwrap();
        assert!(identify(&b, &cache, &|| true).is_err());
        assert_eq!(known(&b, &cache), None);
    }
}
