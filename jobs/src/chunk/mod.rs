//! The chunking core: the entry points [`expand_input`] (an input path, directory or glob to a
//! sorted file list), [`chunk_file`] and [`chunk_bytes`] (extract + split one document). The
//! vocabulary ([`Format`], [`ChunkParams`], [`Chunk`], [`ChunkError`]) is in `types`,
//! extraction in [`extract`] (with each document's title and headings: `outline`), splitting in
//! [`split`](mod@split).
//!
//! Everything here is pure and synchronous: no async, no queues, no threads, no panics on
//! input. The children never import this file (their shared types are in `types.rs`).

pub mod boilerplate;
mod extract;
mod outline;
mod split;
mod tokens;
mod types;

use std::io;
use std::path::{Path, PathBuf};

pub use extract::{extract, extract_bytes, extract_with_outline, read_document};
pub use outline::{Heading, Outline};
pub use split::{SECTION_BYTES, sections, split, split_cancellable};
pub use tokens::split_tokens;
pub use types::{Chunk, ChunkError, ChunkParams, Format, Tokens};

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
    let bytes = read_document(path)?;
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
    chunk_bytes_in(path, bytes, params, None, cancelled)
}

/// [`chunk_bytes`] with sizes in `tokens` when given (see [`split_in_tokens`]), else in
/// characters.
pub fn chunk_bytes_in(
    path: &Path,
    bytes: &[u8],
    params: &ChunkParams,
    tokens: Option<&dyn Tokens>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<Chunk>, ChunkError> {
    chunk_bytes_dropping(path, bytes, params, tokens, cancelled, &[], None)
        .map(|(chunks, _)| chunks)
}

/// [`chunk_bytes_in`], with the lines whose [`boilerplate::key`] is in `boilerplate` (sorted)
/// blanked out of the extracted text first; also returns how many bytes that blanked. With
/// `part = Some((index, of))` (and `tokens`), only that share of the text's sections is
/// chunked (see [`split_in_tokens`]), its chunks numbered from 0.
pub fn chunk_bytes_dropping(
    path: &Path,
    bytes: &[u8],
    params: &ChunkParams,
    tokens: Option<&dyn Tokens>,
    cancelled: &dyn Fn() -> bool,
    boilerplate: &[u64],
    part: Option<(u32, u32)>,
) -> Result<(Vec<Chunk>, usize), ChunkError> {
    let format = Format::from_path(path).ok_or_else(|| ChunkError::unsupported(path))?;
    let (mut text, outline) = extract_with_outline(path, format, bytes)?;
    let blanked = boilerplate::blank(&mut text, boilerplate);
    let ranges =
        match tokens {
            Some(tokens) => split_in_tokens(&text, format, params, tokens, part, cancelled)
                .map_err(|reason| ChunkError::Tokenize {
                    path: path.to_path_buf(),
                    reason,
                })?,
            None => split_cancellable(&text, format, params, cancelled),
        }
        .ok_or(ChunkError::Cancelled)?;
    let source = path.display().to_string();
    let chunks = ranges
        .into_iter()
        .enumerate()
        .map(|(i, r)| Chunk {
            source: source.clone(),
            index: u32::try_from(i).unwrap_or(u32::MAX),
            start: r.start,
            end: r.end,
            title: outline.title.clone(),
            headings: outline.path(r.start, r.end),
            text: text[r].to_owned(),
        })
        .collect();
    Ok((chunks, blanked))
}

/// Cuts `text` into chunks of at most `params.fitted(tokens).max_tokens` of the model's
/// tokens. Big texts are cut into sections first (as for characters: at headings, then
/// paragraphs; no chunk crosses one), each tokenized once and split at token boundaries by
/// [`split_tokens`]. `Ok(None)` once cancelled.
///
/// `part = Some((index, of))` chunks only sections `n*index/of .. n*(index+1)/of` of the `n`
/// sections: since no chunk crosses a section, the parts' chunks together are exactly the
/// whole text's, so one big document can be shared among several workers.
///
/// # Errors
///
/// The tokenizer's, as text.
pub fn split_in_tokens(
    text: &str,
    format: Format,
    params: &ChunkParams,
    tokens: &dyn Tokens,
    part: Option<(u32, u32)>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<Vec<std::ops::Range<usize>>>, String> {
    let params = params.fitted(tokens);
    let mut out = Vec::new();
    let mut all = sections(text, format, SECTION_BYTES);
    if let Some((index, of)) = part {
        let (n, of) = (all.len(), of.max(1) as usize);
        let index = (index as usize).min(of - 1);
        all = all[n * index / of..n * (index + 1) / of].to_vec();
    }
    for section in all {
        if cancelled() {
            return Ok(None);
        }
        let base = section.start;
        let piece = &text[section];
        let spans = tokens.spans(piece)?;
        let count = |t: &str| tokens.count(t);
        let Some(ranges) = split_tokens(piece, format, &params, &spans, &count, cancelled) else {
            return Ok(None);
        };
        out.extend(ranges.into_iter().map(|r| base + r.start..base + r.end));
    }
    Ok(Some(out))
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
