//! The files a node keeps for OpenAI's `/v1/files`: batch inputs clients upload, and the
//! output and error files batches write. Each lives under `home/files/` as its content
//! (`ID`) and its description (`ID.json`, written after the content, so a file without one
//! is an upload that never finished and is swept). Ids are `file-` and 24 hex digits (or,
//! for a batch's outputs, `file-` and the batch's id and a suffix): nothing a client sends
//! ever becomes a path.
//!
//! Plain synchronous file work: the API streams uploads into [`FileStore::upload_path`] and
//! calls [`FileStore::commit`]; a batch's join calls [`FileStore::put`].

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The largest file the store takes (OpenAI's limit for a batch's input).
pub const MAX_FILE_BYTES: u64 = 200 << 20;

/// How long an uploaded file is kept unless its upload says otherwise (OpenAI keeps batch
/// files 30 days).
pub const DEFAULT_EXPIRY_SECS: u64 = 30 * 24 * 3600;

/// A file as OpenAI's `File` object describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub id: String,
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
    pub filename: String,
    /// `batch` (an upload) or `batch_output` (what a batch wrote).
    pub purpose: String,
    /// Unix seconds; `None`: kept until deleted.
    pub expires_at: Option<u64>,
}

impl FileMeta {
    /// OpenAI's `File` object.
    pub fn object(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "object": "file", "bytes": self.bytes,
            "created_at": self.created_at, "filename": self.filename,
            "purpose": self.purpose, "status": "processed",
            "expires_at": self.expires_at, "status_details": null,
        })
    }
}

/// The purposes a client may upload with (a batch's input; the others are OpenAI's
/// fine-tuning and assistants, which myco has no use for).
pub const UPLOAD_PURPOSES: [&str; 1] = ["batch"];

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `id` is a file id this store could have made (checked before it names a path).
pub fn valid_id(id: &str) -> bool {
    id.strip_prefix("file-").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 96
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// A fresh id: `file-` and 24 random hex digits.
pub fn new_id() -> std::io::Result<String> {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(format!(
        "file-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// The files under one home.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// The store of the node whose home is `home` (`home/files`).
    pub fn of_home(home: &Path) -> FileStore {
        FileStore {
            dir: crate::home::files_dir(home),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn content(&self, id: &str) -> Option<PathBuf> {
        valid_id(id).then(|| self.dir.join(id))
    }

    fn meta_path(&self, id: &str) -> Option<PathBuf> {
        valid_id(id).then(|| self.dir.join(format!("{id}.json")))
    }

    /// Where an upload with the fresh id `id` streams its bytes before [`Self::commit`]
    /// (creating the store's directory).
    pub fn upload_path(&self, id: &str) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        self.content(id)
            .ok_or_else(|| std::io::Error::other(format!("`{id}` is not a file id")))
    }

    /// Describe the upload whose bytes are at [`Self::upload_path`]: from now on it is a
    /// file. Its size is what is on disk.
    pub fn commit(
        &self,
        id: &str,
        filename: &str,
        purpose: &str,
        expires_at: Option<u64>,
    ) -> std::io::Result<FileMeta> {
        let content = self
            .content(id)
            .ok_or_else(|| std::io::Error::other(format!("`{id}` is not a file id")))?;
        let meta = FileMeta {
            id: id.to_owned(),
            bytes: std::fs::metadata(&content)?.len(),
            created_at: unix_now(),
            filename: clean_name(filename),
            purpose: purpose.to_owned(),
            expires_at,
        };
        self.write_meta(&meta)?;
        Ok(meta)
    }

    /// Write a whole file as `id` (a batch's output), replacing any file of that id: the
    /// content first, then its description, each through a temporary file and a rename, so
    /// a kill at any point leaves the old file, or the new one, or none.
    pub fn put(
        &self,
        id: &str,
        filename: &str,
        purpose: &str,
        bytes: &[u8],
    ) -> std::io::Result<FileMeta> {
        let content = self
            .content(id)
            .ok_or_else(|| std::io::Error::other(format!("`{id}` is not a file id")))?;
        std::fs::create_dir_all(&self.dir)?;
        // An older description must not describe the new content while it is written.
        if let Some(m) = self.meta_path(id) {
            let _ = std::fs::remove_file(m);
        }
        let tmp = self.dir.join(format!(".{id}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &content)?;
        let meta = FileMeta {
            id: id.to_owned(),
            bytes: bytes.len() as u64,
            created_at: unix_now(),
            filename: clean_name(filename),
            purpose: purpose.to_owned(),
            expires_at: None,
        };
        self.write_meta(&meta)?;
        Ok(meta)
    }

    fn write_meta(&self, meta: &FileMeta) -> std::io::Result<()> {
        let path = self
            .meta_path(&meta.id)
            .ok_or_else(|| std::io::Error::other("not a file id"))?;
        let tmp = self.dir.join(format!(".{}.json.tmp", meta.id));
        let json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
        }
        std::fs::rename(tmp, path)
    }

    /// The file `id`, if it exists and has not expired.
    pub fn get(&self, id: &str) -> std::io::Result<Option<FileMeta>> {
        let Some(path) = self.meta_path(id) else {
            return Ok(None);
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta: FileMeta = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
        if meta.expires_at.is_some_and(|at| at <= unix_now()) {
            let _ = self.delete(id);
            return Ok(None);
        }
        Ok(Some(meta))
    }

    /// The path of file `id`'s content, if the file exists.
    pub fn path(&self, id: &str) -> std::io::Result<Option<PathBuf>> {
        Ok(self.get(id)?.and_then(|_| self.content(id)))
    }

    /// Every file, newest first (expired ones are deleted on the way).
    pub fn list(&self) -> std::io::Result<Vec<FileMeta>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json")
                && valid_id(id)
                && let Some(meta) = self.get(id)?
            {
                out.push(meta);
            }
        }
        out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(out)
    }

    /// Delete file `id`; false if there was none.
    pub fn delete(&self, id: &str) -> std::io::Result<bool> {
        let (Some(meta), Some(content)) = (self.meta_path(id), self.content(id)) else {
            return Ok(false);
        };
        let had = meta.exists();
        for p in [meta, content] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(had)
    }

    /// Remove uploads that never finished (content without a description, older than an
    /// hour) and temporary files a kill left.
    pub fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let old = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600)
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let orphan = if name.starts_with('.') {
                name.ends_with(".tmp")
            } else {
                valid_id(&name) && !self.dir.join(format!("{name}.json")).exists()
            };
            if orphan && old(&e.path()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A client's file name as a description keeps it: its last path component, without
/// control characters, at most 255 bytes; `upload` when nothing is left.
fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut out: String = base.chars().filter(|c| !c.is_control()).collect();
    while out.len() > 255 {
        out.pop();
    }
    if out.is_empty() { "upload".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_name_a_path_outside_the_store() {
        assert!(valid_id("file-0123abcd"));
        assert!(valid_id("file-batch_01ABC-output"));
        for bad in [
            "file-",
            "file-../x",
            "file-a/b",
            "../file-a",
            "filex",
            "file-a.json",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert!(valid_id(&new_id().unwrap()));
    }

    #[test]
    fn files_are_written_listed_read_and_deleted() {
        let home = tempfile::tempdir().unwrap();
        let store = FileStore::of_home(home.path());
        assert!(store.list().unwrap().is_empty());
        let id = new_id().unwrap();
        std::fs::write(store.upload_path(&id).unwrap(), b"{\"a\":1}\n").unwrap();
        // Not a file until described.
        assert!(store.get(&id).unwrap().is_none());
        let meta = store
            .commit(&id, "../../x/in.jsonl", "batch", None)
            .unwrap();
        assert_eq!(meta.bytes, 8);
        assert_eq!(meta.filename, "in.jsonl");
        let out = store
            .put("file-b1-output", "b1_output.jsonl", "batch_output", b"x\n")
            .unwrap();
        let again = store
            .put("file-b1-output", "b1_output.jsonl", "batch_output", b"yz\n")
            .unwrap();
        assert_eq!((out.bytes, again.bytes), (2, 3));
        let ids: Vec<String> = store.list().unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert_eq!(
            std::fs::read(store.path("file-b1-output").unwrap().unwrap()).unwrap(),
            b"yz\n"
        );
        assert!(store.delete(&id).unwrap());
        assert!(!store.delete(&id).unwrap());
        assert!(store.get(&id).unwrap().is_none());
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn an_expired_file_is_gone() {
        let home = tempfile::tempdir().unwrap();
        let store = FileStore::of_home(home.path());
        let id = new_id().unwrap();
        std::fs::write(store.upload_path(&id).unwrap(), b"x").unwrap();
        store.commit(&id, "a.jsonl", "batch", Some(1)).unwrap();
        assert!(store.get(&id).unwrap().is_none());
        assert!(!store.upload_path(&id).unwrap().exists());
    }
}
