//! The model cache (`~/.myco/cache/slices/`): the layer-range slices a node fetched from a
//! holder to run a stage of a model it does not hold, and those it wrote to serve to others.
//! One folder per source model (its SHA-256), one file per range:
//!
//! ```text
//! cache/slices/<source sha256>/<first>-<end>.gguf     the slice (a GGUF a stage loads as is)
//! cache/slices/<source sha256>/<first>-<end>.sha256   its own SHA-256; its mtime is its last use
//! ```
//!
//! A slice is whole or absent (fetched into `.part`, written into a temporary name, then
//! renamed), so a second run of the same plan finds it and transfers nothing. The cache is
//! held under a size cap, least recently used first, never a slice a loaded stage uses.
//! Model files pulled whole go to the models folder, not here.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where the slices of one model's range live.
pub fn slice_path(cache: &Path, source: &str, first: u32, end: u32) -> PathBuf {
    cache
        .join("slices")
        .join(source)
        .join(format!("{first}-{end}.gguf"))
}

/// The record of a slice's own hash beside it.
fn sha_path(slice: &Path) -> PathBuf {
    slice.with_extension("sha256")
}

/// A slice in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub path: PathBuf,
    /// The model it was cut from.
    pub source: String,
    pub first: u32,
    pub end: u32,
    /// Its own SHA-256.
    pub sha256: String,
    pub bytes: u64,
    /// When a stage last loaded it (or it arrived).
    pub used: SystemTime,
}

/// Remember a slice's own hash (and mark it used now).
pub fn remember(slice: &Path, sha256: &str) -> std::io::Result<()> {
    std::fs::write(sha_path(slice), format!("{sha256}\n"))
}

/// Mark a slice used now (a stage loads it).
pub fn touch(slice: &Path) {
    let _ = std::fs::File::options()
        .write(true)
        .open(sha_path(slice))
        .and_then(|f| f.set_modified(SystemTime::now()));
}

/// The slice at `path`, if it is whole and its hash remembered.
pub fn cached(path: &Path) -> Option<Cached> {
    let dir = path.parent()?;
    let source = dir.file_name()?.to_str()?.to_owned();
    let stem = path.file_stem()?.to_str()?;
    let (first, end) = stem.split_once('-')?;
    let (first, end) = (first.parse().ok()?, end.parse().ok()?);
    let bytes = std::fs::metadata(path).ok()?.len();
    let sha = sha_path(path);
    let sha256 = std::fs::read_to_string(&sha).ok()?.trim().to_owned();
    let used = std::fs::metadata(&sha).and_then(|m| m.modified()).ok()?;
    (sha256.len() == 64).then_some(Cached {
        path: path.to_path_buf(),
        source,
        first,
        end,
        sha256,
        bytes,
        used,
    })
}

/// Every whole slice in the cache.
pub fn slices(cache: &Path) -> Vec<Cached> {
    let Ok(models) = std::fs::read_dir(cache.join("slices")) else {
        return Vec::new();
    };
    let mut out: Vec<Cached> = models
        .flatten()
        .filter_map(|m| std::fs::read_dir(m.path()).ok())
        .flat_map(|files| files.flatten())
        .map(|f| f.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .filter_map(|p| cached(&p))
        .collect();
    out.sort_by(|a, b| (&a.source, a.first, a.end).cmp(&(&b.source, b.first, b.end)));
    out
}

/// Remove a slice and its records (here and its identity's).
pub fn remove(slice: &Path) {
    // `<cache>/slices/<source>/<range>.gguf`.
    if let Some(cache) = slice.ancestors().nth(3) {
        super::identity::forget(slice, cache);
    }
    let _ = std::fs::remove_file(slice);
    let _ = std::fs::remove_file(sha_path(slice));
    if let Some(dir) = slice.parent() {
        // Gone when empty.
        let _ = std::fs::remove_dir(dir);
    }
}

/// Bring the cache under `cap` bytes (with `room` more to come): remove the least recently
/// used slices that `in_use` does not hold. Returns what it removed. What is in use stays
/// even over the cap.
pub fn trim(cache: &Path, cap: u64, room: u64, in_use: &dyn Fn(&Path) -> bool) -> Vec<Cached> {
    let mut all = slices(cache);
    let mut total: u64 = all.iter().map(|c| c.bytes).sum::<u64>() + room;
    all.sort_by_key(|c| c.used);
    let mut removed = Vec::new();
    for c in all {
        if total <= cap {
            break;
        }
        if in_use(&c.path) {
            continue;
        }
        remove(&c.path);
        total = total.saturating_sub(c.bytes);
        removed.push(c);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &Path, source: &str, first: u32, bytes: usize, age_s: u64) -> PathBuf {
        let p = slice_path(cache, source, first, first + 1);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![7u8; bytes]).unwrap();
        remember(&p, &"a".repeat(64)).unwrap();
        let when = SystemTime::now() - std::time::Duration::from_secs(age_s);
        std::fs::File::options()
            .write(true)
            .open(sha_path(&p))
            .unwrap()
            .set_modified(when)
            .unwrap();
        p
    }

    #[test]
    fn the_cache_keeps_the_recently_used_and_what_stages_use_under_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        let old = put(cache, "s1", 0, 1000, 300);
        let loaded = put(cache, "s1", 1, 1000, 200);
        let recent = put(cache, "s2", 0, 1000, 100);
        // Not whole (no record): not listed, never counted.
        std::fs::write(slice_path(cache, "s2", 5, 6), b"x").unwrap();
        assert_eq!(slices(cache).len(), 3);
        touch(&old);
        // Now `loaded` is the least recently used, but a stage holds it: `recent` goes.
        let removed = trim(cache, 2500, 500, &|p| p == loaded);
        let gone: Vec<&Path> = removed.iter().map(|c| c.path.as_path()).collect();
        assert_eq!(gone, vec![recent.as_path()]);
        assert!(old.exists() && loaded.exists() && !recent.exists());
        assert!(
            !recent.with_extension("sha256").exists(),
            "its record went too"
        );
        // Under the cap, nothing moves.
        assert!(trim(cache, 10_000, 0, &|_| false).is_empty());
        let c = cached(&old).unwrap();
        assert_eq!(
            (c.source.as_str(), c.first, c.end, c.bytes),
            ("s1", 0, 1, 1000)
        );
    }
}
