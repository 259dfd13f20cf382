//! The chunking vocabulary shared by extraction, splitting and the entry points: document
//! [`Format`]s, [`ChunkParams`], the [`Chunk`]s a file becomes and the [`ChunkError`]s it can
//! fail with.
//!
//! Types only: nothing here reads files or splits text.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
/// their neighbour. Tokens are the embedding model's own when a [`Tokens`] is given (archive
/// jobs; there `max_tokens` 0 means the model's maximum), else characters (Unicode scalar
/// values: chunk jobs, which have no model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParams {
    pub max_tokens: usize,
    pub overlap: usize,
}

impl ChunkParams {
    /// The params in `tokens`' units: `max_tokens` 0 or over the model's maximum becomes
    /// the maximum (a chunk never holds more than the model reads), and the overlap at most
    /// half a chunk.
    #[must_use]
    pub fn fitted(&self, tokens: &dyn Tokens) -> ChunkParams {
        let most = tokens.max_tokens().max(1);
        let max_tokens = match self.max_tokens {
            0 => most,
            n => n.min(most),
        };
        ChunkParams {
            max_tokens,
            overlap: self.overlap.min(max_tokens / 2),
        }
    }
}

/// A tokenizer chunk sizes are counted in: the embedding model's own.
pub trait Tokens {
    /// The byte ranges of `text`'s tokens, in order, special tokens left out.
    ///
    /// # Errors
    ///
    /// The tokenizer's own, as text.
    fn spans(&self, text: &str) -> Result<Vec<std::ops::Range<usize>>, String>;
    /// How many tokens `text` is, special tokens left out.
    fn count(&self, text: &str) -> usize;
    /// The most tokens a chunk may hold: the model's maximum less its special tokens.
    fn max_tokens(&self) -> usize;
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
    /// The document's title (HTML's `<title>`, else its first level-1 heading), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The headings the chunk falls under, outermost first (see [`super::Outline::path`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headings: Vec<String>,
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

    #[error("{}: {bytes} bytes, more than the {limit} bytes a document may have; split it", path.display())]
    TooBig {
        path: PathBuf,
        bytes: u64,
        limit: u64,
    },

    #[error("{pattern}: glob pattern matches no files; check the pattern")]
    NoMatch { pattern: String },

    #[error("{pattern}: invalid glob pattern: {reason}; fix the pattern")]
    BadPattern { pattern: String, reason: String },

    #[error("{}: cannot list: {source}; check permissions", path.display())]
    Walk { path: PathBuf, source: io::Error },

    #[error("{}: the model's tokenizer failed: {reason}", path.display())]
    Tokenize { path: PathBuf, reason: String },

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
            | ChunkError::Tokenize { .. }
            | ChunkError::NotFound { .. }
            | ChunkError::NotRegular { .. }
            | ChunkError::TooBig { .. }
            | ChunkError::NoMatch { .. }
            | ChunkError::BadPattern { .. } => false,
        }
    }
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
}
