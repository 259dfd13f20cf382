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

/// The bytes of a chunk of a file's manifest (the last chunk may be shorter).
pub const CHUNK: u64 = 1 << 20;

/// A file's manifest: the BLAKE3 digest of each of its [`CHUNK`]s, computed in the same
/// read as its SHA-256, so it stands for the same bytes. A transfer checks each chunk that
/// arrives against it (the holder's copy may have rotted since; the network may damage a
/// chunk), and then need not hash the whole file again.
pub type Manifest = Vec<[u8; 32]>;

/// The hash of the file at `path`: remembered (with its manifest), or read now (in 8 MiB
/// blocks, `stop` polled between them) and remembered in `cache`.
pub fn identify(path: &Path, cache: &Path, stop: &dyn Fn() -> bool) -> std::io::Result<String> {
    if let (Some(h), Some(_)) = (known(path, cache), manifest(path, cache)) {
        return Ok(h);
    }
    let before = stamp(path)?;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut chunks: Manifest = Vec::new();
    let mut chunk = blake3::Hasher::new();
    let mut in_chunk = 0u64;
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
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let take = rest.len().min((CHUNK - in_chunk) as usize);
            chunk.update(&rest[..take]);
            in_chunk += take as u64;
            rest = &rest[take..];
            if in_chunk == CHUNK {
                chunks.push(*chunk.finalize().as_bytes());
                chunk.reset();
                in_chunk = 0;
            }
        }
    }
    if in_chunk > 0 {
        chunks.push(*chunk.finalize().as_bytes());
    }
    let hash = hex(&hasher.finalize());
    // A file that changed while it was read is not remembered (the next call reads it again).
    if stamp(path)? == before {
        write_record(path, cache, before, &hash)?;
        write_manifest(path, cache, &chunks)?;
    }
    Ok(hash)
}

/// The remembered manifest of the file at `path`, if its record matches the file now.
pub fn manifest(path: &Path, cache: &Path) -> Option<Manifest> {
    let (size, _) = stamp(path).ok()?;
    known(path, cache)?;
    let bytes =
        std::fs::read(record_path(&cache.join("ids"), path).with_extension("chunks")).ok()?;
    let want = size.div_ceil(CHUNK) as usize;
    if bytes.len() != want * 32 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(32)
            .map(|c| <[u8; 32]>::try_from(c).unwrap_or_default())
            .collect(),
    )
}

fn write_manifest(path: &Path, cache: &Path, chunks: &[[u8; 32]]) -> std::io::Result<()> {
    let record = record_path(&cache.join("ids"), path).with_extension("chunks");
    let tmp = record.with_extension("chunks-tmp");
    std::fs::write(&tmp, chunks.concat())?;
    std::fs::rename(&tmp, &record)
}

/// Remember that the file at `path`, as it is now, hashes to `sha256`, with its manifest
/// (a fetched file, each chunk checked against the manifest as it arrived).
pub fn remember_with(
    path: &Path,
    cache: &Path,
    sha256: &str,
    chunks: &[[u8; 32]],
) -> std::io::Result<()> {
    write_record(path, cache, stamp(path)?, sha256)?;
    write_manifest(path, cache, chunks)
}

/// Forget what is remembered of the file at `path` (it was removed).
pub fn forget(path: &Path, cache: &Path) {
    let record = record_path(&cache.join("ids"), path);
    let _ = std::fs::remove_file(record.with_extension("chunks"));
    let _ = std::fs::remove_file(record);
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
        // The manifest: a digest per MiB, of the bytes hashed.
        assert_eq!(
            manifest(&a, &cache),
            Some(vec![*blake3::hash(b"weights two").as_bytes()])
        );
        let big = dir.path().join("big.gguf");
        let bytes: Vec<u8> = (0..(CHUNK as usize * 2 + 5))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&big, &bytes).unwrap();
        identify(&big, &cache, &|| false).unwrap();
        let m = manifest(&big, &cache).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[2], *blake3::hash(&bytes[2 * CHUNK as usize..]).as_bytes());
        // A stop request ends a hash without remembering anything.
        let b = dir.path().join("b.gguf");
        std::fs::write(&b, b"more").unwrap();
        assert!(identify(&b, &cache, &|| true).is_err());
        assert_eq!(known(&b, &cache), None);
    }
}
