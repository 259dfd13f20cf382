//! The chunking core: document [`Format`]s, [`ChunkParams`], the [`Chunk`]s a file becomes, the
//! [`ChunkError`]s it can fail with, and the two entry points [`expand_input`] (an input path,
//! directory or glob to a sorted file list) and [`chunk_file`] (extract + split one file).
//!
//! Everything here is pure and synchronous: no async, no queues, no threads, no panics on
//! input. Extraction lives in [`extract`], splitting in [`split`](mod@split).

mod extract;
mod split;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use extract::{extract, extract_bytes};
pub use split::{SECTION_BYTES, sections, split, split_cancellable};

/// The document formats myco extracts text from, decided by file extension (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `.txt`, `.text`
    Text,
    /// `.md`, `.markdown`
    Markdown,
    /// `.html`, `.htm`
    Html,
    /// `.pdf`
    Pdf,
}

impl Format {
    /// The extensions myco chunks, for messages.
    pub const SUPPORTED: &'static str = ".txt .md .markdown .html .htm .pdf";

    /// The format of `path`, from its extension; `None` if myco does not chunk it.
    #[must_use]
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "txt" | "text" => Some(Format::Text),
            "md" | "markdown" => Some(Format::Markdown),
            "html" | "htm" => Some(Format::Html),
            "pdf" => Some(Format::Pdf),
            _ => None,
        }
    }
}

/// How to cut text: chunks of at most `max_tokens` tokens sharing about `overlap` tokens with
/// their neighbour. Tokens are characters (Unicode scalar values) for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParams {
    pub max_tokens: usize,
    pub overlap: usize,
}

/// One piece of one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// The file path as given.
    pub source: String,
    /// 0-based, in document order.
    pub index: u32,
    /// Byte offset into the extracted text (inclusive).
    pub start: usize,
    /// Byte offset into the extracted text (exclusive): `extracted[start..end] == text`.
    pub end: usize,
    pub text: String,
}

/// Why a file (or an input) could not be chunked. Every message names the file and says what
/// to do; [`ChunkError::is_retryable`] separates passing trouble from bad content.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error(
        "{}: unsupported file type {} (myco chunks {}); remove it from the input or convert it",
        path.display(), ext_label(path), Format::SUPPORTED
    )]
    Unsupported { path: PathBuf },

    #[error("{}: cannot read: {source}; check that it exists and is readable", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("{}: not valid UTF-8 text at byte {offset}; convert it to UTF-8", path.display())]
    NotUtf8 { path: PathBuf, offset: usize },

    #[error(
        "{}: not a readable PDF: {reason}; check that the file is a complete PDF, or re-export it",
        path.display()
    )]
    BadPdf { path: PathBuf, reason: String },

    #[error("{}: PDF has no text layer (scanned pages?); run OCR first", path.display())]
    NoTextLayer { path: PathBuf },

    #[error("{}: cannot extract HTML text: {reason}; check the file is HTML", path.display())]
    Html { path: PathBuf, reason: String },

    #[error("{}: no such file or directory; check the path", input.display())]
    NotFound { input: PathBuf },

    #[error("{}: not a regular file or directory; point at documents instead", path.display())]
    NotRegular { path: PathBuf },

    #[error("{pattern}: glob pattern matches no files; check the pattern")]
    NoMatch { pattern: String },

    #[error("{pattern}: invalid glob pattern: {reason}; fix the pattern")]
    BadPattern { pattern: String, reason: String },

    #[error("{}: cannot list: {source}; check permissions", path.display())]
    Walk { path: PathBuf, source: io::Error },

    #[error("chunking cancelled")]
    Cancelled,
}

fn ext_label(path: &Path) -> String {
    match path.extension() {
        Some(ext) => format!("`.{}`", ext.to_string_lossy()),
        None => "(no extension)".to_owned(),
    }
}

impl ChunkError {
    pub(crate) fn unsupported(path: &Path) -> Self {
        ChunkError::Unsupported {
            path: path.to_path_buf(),
        }
    }

    /// True for passing trouble (interrupted or timed-out reads, cancellation, which also
    /// covers timeouts); false for bad content or bad input, which fails the same way again.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            ChunkError::Read { source, .. } | ChunkError::Walk { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::ResourceBusy
                    | io::ErrorKind::StaleNetworkFileHandle
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::OutOfMemory
            ),
            ChunkError::Cancelled => true,
            ChunkError::Unsupported { .. }
            | ChunkError::NotUtf8 { .. }
            | ChunkError::BadPdf { .. }
            | ChunkError::NoTextLayer { .. }
            | ChunkError::Html { .. }
            | ChunkError::NotFound { .. }
            | ChunkError::NotRegular { .. }
            | ChunkError::NoMatch { .. }
            | ChunkError::BadPattern { .. } => false,
        }
    }
}

/// Extracts, splits and numbers the chunks of one file. `cancelled` is polled before
/// extraction and between sections.
///
/// # Errors
///
/// Any [`extract`] error, or [`ChunkError::Cancelled`] once `cancelled` returns true.
pub fn chunk_file(
    path: &Path,
    params: &ChunkParams,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<Chunk>, ChunkError> {
    if cancelled() {
        return Err(ChunkError::Cancelled);
    }
    Format::from_path(path).ok_or_else(|| ChunkError::unsupported(path))?;
    let bytes = std::fs::read(path).map_err(|source| ChunkError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    chunk_bytes(path, &bytes, params, cancelled)
}

/// Like [`chunk_file`], for a document already in memory (one that travelled from another
/// node); `path` names it and decides its format.
pub fn chunk_bytes(
    path: &Path,
    bytes: &[u8],
    params: &ChunkParams,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<Chunk>, ChunkError> {
    let format = Format::from_path(path).ok_or_else(|| ChunkError::unsupported(path))?;
    let text = extract_bytes(path, format, bytes)?;
    let ranges =
        split_cancellable(&text, format, params, cancelled).ok_or(ChunkError::Cancelled)?;
    let source = path.display().to_string();
    Ok(ranges
        .into_iter()
        .enumerate()
        .map(|(i, r)| Chunk {
            source: source.clone(),
            index: u32::try_from(i).unwrap_or(u32::MAX),
            start: r.start,
            end: r.end,
            text: text[r].to_owned(),
        })
        .collect())
}

/// Expands an input into the sorted list of regular files it names: a file is itself, a
/// directory is walked recursively (skipping hidden files and directories), anything else
/// that looks like a glob pattern is matched (hidden names only match a literal dot).
/// Unsupported files are kept: [`chunk_file`] reports them one by one.
///
/// # Errors
///
/// [`ChunkError::NotFound`] for a missing path, [`ChunkError::NoMatch`] for a glob matching
/// nothing, [`ChunkError::BadPattern`], [`ChunkError::Walk`] for an unreadable directory.
pub fn expand_input(input: &Path) -> Result<Vec<PathBuf>, ChunkError> {
    let mut files = Vec::new();
    match std::fs::metadata(input) {
        Ok(meta) if meta.is_file() => files.push(input.to_path_buf()),
        Ok(meta) if meta.is_dir() => walk_dir(input, &mut files)?,
        Ok(_) => {
            return Err(ChunkError::NotRegular {
                path: input.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let pattern = input.to_string_lossy();
            if !pattern.contains(['*', '?', '[']) {
                return Err(ChunkError::NotFound {
                    input: input.to_path_buf(),
                });
            }
            expand_glob(&pattern, &mut files)?;
        }
        Err(source) => {
            return Err(ChunkError::Read {
                path: input.to_path_buf(),
                source,
            });
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

fn walk_dir(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), ChunkError> {
    let walker = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !is_hidden(e.file_name()));
    for entry in walker {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            let source = e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("symlink loop"));
            ChunkError::Walk { path, source }
        })?;
        let ft = entry.file_type();
        // Symlinks to files count; symlinked directories are not followed.
        if ft.is_file() || (ft.is_symlink() && entry.path().is_file()) {
            files.push(entry.into_path());
        }
    }
    Ok(())
}

fn expand_glob(pattern: &str, files: &mut Vec<PathBuf>) -> Result<(), ChunkError> {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let paths = glob::glob_with(pattern, options).map_err(|e| ChunkError::BadPattern {
        pattern: pattern.to_owned(),
        reason: e.to_string(),
    })?;
    let mut matched = false;
    for path in paths {
        let path = path.map_err(|e| ChunkError::Walk {
            path: e.path().to_path_buf(),
            source: io::Error::new(e.error().kind(), e.error().to_string()),
        })?;
        matched = true;
        if path.is_dir() {
            walk_dir(&path, files)?;
        } else if path.is_file() {
            files.push(path);
        }
    }
    if !matched {
        return Err(ChunkError::NoMatch {
            pattern: pattern.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn formats_from_extensions() {
        assert_eq!(
            Format::from_path(Path::new("a/B.MD")),
            Some(Format::Markdown)
        );
        assert_eq!(Format::from_path(Path::new("x.htm")), Some(Format::Html));
        assert_eq!(Format::from_path(Path::new("x.Text")), Some(Format::Text));
        assert_eq!(Format::from_path(Path::new("x.pdf")), Some(Format::Pdf));
        assert_eq!(Format::from_path(Path::new("x.png")), None);
        assert_eq!(Format::from_path(Path::new("README")), None);
    }

    #[test]
    fn unsupported_message_names_file_and_fix() {
        let msg = ChunkError::unsupported(Path::new("img/cat.png")).to_string();
        assert_eq!(
            msg,
            "img/cat.png: unsupported file type `.png` (myco chunks .txt .md .markdown .html \
             .htm .pdf); remove it from the input or convert it"
        );
        let msg = ChunkError::unsupported(Path::new("Makefile")).to_string();
        assert!(msg.contains("(no extension)"), "{msg}");
    }

    #[test]
    fn retryable_only_for_passing_trouble() {
        let read = |kind| ChunkError::Read {
            path: "a".into(),
            source: io::Error::from(kind),
        };
        assert!(read(io::ErrorKind::Interrupted).is_retryable());
        assert!(read(io::ErrorKind::TimedOut).is_retryable());
        assert!(!read(io::ErrorKind::PermissionDenied).is_retryable());
        assert!(!read(io::ErrorKind::NotFound).is_retryable());
        assert!(
            !ChunkError::NoTextLayer {
                path: "a.pdf".into()
            }
            .is_retryable()
        );
    }

    #[test]
    fn missing_input_and_empty_glob_are_named() {
        let err = expand_input(Path::new("/definitely/not/here")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/definitely/not/here: no such file")
        );
        let err = expand_input(Path::new("/definitely/not/here/*.md")).unwrap_err();
        assert!(matches!(err, ChunkError::NoMatch { .. }), "{err}");
        assert!(err.to_string().contains("/definitely/not/here/*.md"));
    }

    #[test]
    fn cancelled_before_start() {
        let err = chunk_file(
            Path::new("whatever.md"),
            &ChunkParams {
                max_tokens: 10,
                overlap: 0,
            },
            &|| true,
        )
        .unwrap_err();
        assert!(matches!(err, ChunkError::Cancelled));
    }
}
