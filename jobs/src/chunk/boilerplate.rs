//! Boilerplate that repeats across an archive: the lines of extracted text (a menu entry, a
//! cookie notice, "Copyright 2024 Acme", a sidebar the HTML marks as nothing special) that
//! most files of the archive share. They say nothing about any one page, yet embedded with
//! each chunk they pull every chunk's vector towards the same point and put the same words
//! in every chunk's BM25 entry.
//!
//! An archive job learns them when it is planned, from an even sample of its files
//! ([`learn`]): a line (whitespace collapsed) found in at least [`SHARE`] of them, and in at
//! least [`MIN_FILES`], is boilerplate. Its children blank those lines out of each document's
//! extracted text before chunking ([`blank`]), keeping every other byte where it was, so
//! chunk byte ranges still point into the extracted text. Lines are known by a 64-bit key
//! (the first 8 bytes of the SHA-256 of the collapsed line), the same on every node.
//!
//! This file must not know about the queue, models or collections.

use sha2::{Digest, Sha256};

/// The fewest files a line must be in to be boilerplate (and the smallest sample to learn
/// from: in fewer files, nothing is).
pub const MIN_FILES: usize = 5;
/// The share of the sampled files a line must be in.
pub const SHARE: f64 = 0.6;
/// The most files sampled.
pub const SAMPLE: usize = 64;

/// A line's key, or `None` for a blank line.
pub fn key(line: &str) -> Option<u64> {
    let mut h = Sha256::new();
    let mut any = false;
    for word in line.split_whitespace() {
        if any {
            h.update(b" ");
        }
        h.update(word.as_bytes());
        any = true;
    }
    if !any {
        return None;
    }
    let d = h.finalize();
    Some(u64::from_le_bytes([
        d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7],
    ]))
}

/// The boilerplate of a sample of extracted texts (one per file): sorted keys of the lines
/// found in at least [`SHARE`] of them and at least [`MIN_FILES`].
pub fn learn<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<u64> {
    let mut counts: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut files = 0;
    for text in texts {
        files += 1;
        let mut seen: Vec<u64> = text.lines().filter_map(key).collect();
        seen.sort_unstable();
        seen.dedup();
        for k in seen {
            *counts.entry(k).or_default() += 1;
        }
    }
    if files < MIN_FILES {
        return Vec::new();
    }
    let need = ((files as f64 * SHARE).ceil() as usize).max(MIN_FILES);
    let mut out: Vec<u64> = counts
        .into_iter()
        .filter(|(_, n)| *n >= need)
        .map(|(k, _)| k)
        .collect();
    out.sort_unstable();
    out
}

/// Which of `n` sorted items to sample: at most [`SAMPLE`], evenly spread.
pub fn sample(n: usize) -> Vec<usize> {
    if n <= SAMPLE {
        return (0..n).collect();
    }
    (0..SAMPLE).map(|i| i * n / SAMPLE).collect()
}

/// Blanks out the lines of `text` whose key is in `drop` (sorted): each of their bytes but
/// the line end becomes a space, so nothing else moves. Returns the bytes blanked.
pub fn blank(text: &mut String, drop: &[u64]) -> usize {
    if drop.is_empty() {
        return 0;
    }
    let mut spans = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        if key(body).is_some_and(|k| drop.binary_search(&k).is_ok()) {
            spans.push(at..at + body.len());
        }
        at += line.len();
    }
    if spans.is_empty() {
        return 0;
    }
    let mut bytes = std::mem::take(text).into_bytes();
    let mut blanked = 0;
    for span in spans {
        blanked += span.len();
        bytes[span].iter_mut().for_each(|b| *b = b' ');
    }
    // Whole lines of valid UTF-8 became ASCII spaces: still valid.
    *text = String::from_utf8(bytes).unwrap_or_default();
    blanked
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn page(i: usize) -> String {
        format!(
            "Home  Docs   Blog\nA page about topic {i}, with words of its own.\nSee also page {}.\n© 2026 Acme — all rights reserved\n",
            i + 1
        )
    }

    #[test]
    fn lines_most_files_share_are_learned_and_blanked_in_place() {
        let pages: Vec<String> = (0..10).map(page).collect();
        let drop = learn(pages.iter().map(String::as_str));
        assert_eq!(drop.len(), 2, "the menu and the footer");
        let mut text = pages[3].clone();
        let before = text.clone();
        let blanked = blank(&mut text, &drop);
        assert_eq!(text.len(), before.len(), "nothing moves");
        assert_eq!(
            blanked,
            "Home  Docs   Blog".len() + "© 2026 Acme — all rights reserved".len()
        );
        assert!(!text.contains("Home") && !text.contains("Acme"), "{text}");
        assert!(text.contains("A page about topic 3"));
        // Byte offsets of what is kept are unchanged.
        let at = before.find("See also").unwrap();
        assert_eq!(&text[at..at + 8], "See also");
        // Whitespace does not make a line different.
        assert_eq!(key("Home Docs Blog"), key("  Home\tDocs  Blog "));
        assert_eq!(key("   "), None);
    }

    #[test]
    fn too_few_files_or_too_rare_lines_are_not_boilerplate() {
        let pages: Vec<String> = (0..4).map(page).collect();
        assert!(learn(pages.iter().map(String::as_str)).is_empty());
        // In 5 of 10 files: under 60 %.
        let mut pages: Vec<String> = (0..10).map(|i| format!("unique {i}\n")).collect();
        for p in pages.iter_mut().take(5) {
            p.push_str("shared line\n");
        }
        assert!(learn(pages.iter().map(String::as_str)).is_empty());
        assert_eq!(sample(3), vec![0, 1, 2]);
        let s = sample(1000);
        assert_eq!((s.len(), s[0], s[63]), (64, 0, 984));
    }
}
