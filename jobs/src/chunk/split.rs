//! Splitting: cuts extracted text into byte ranges of at most `max_tokens` characters.
//!
//! Big texts are first cut into sections of about 64 KiB (at Markdown headings, form feeds,
//! blank lines, then newlines or spaces) because text-splitter slows down with the square of
//! one input's length; each section then goes through text-splitter (`MarkdownSplitter` for
//! Markdown, `TextSplitter` otherwise) and its ranges are offset back into the whole text.
//! This file must not read files or know about paths; it is pure and deterministic.

use std::ops::Range;

use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};

use super::types::{ChunkParams, Format};

/// The size (in bytes) a section is cut down to before text-splitter sees it.
pub const SECTION_BYTES: usize = 64 * 1024;

/// Cuts `text` into chunks of at most `params.max_tokens` characters with about
/// `params.overlap` characters of overlap (within a section), deterministically.
///
/// Returns byte ranges into `text`, in increasing order, none empty or whitespace-only.
#[must_use]
pub fn split(text: &str, format: Format, params: &ChunkParams) -> Vec<Range<usize>> {
    split_cancellable(text, format, params, &|| false).unwrap_or_default()
}

/// [`split`], polling `cancelled` before each section; `None` once it returns true.
#[must_use]
pub fn split_cancellable(
    text: &str,
    format: Format,
    params: &ChunkParams,
    cancelled: &dyn Fn() -> bool,
) -> Option<Vec<Range<usize>>> {
    // A chunk may hold up to 4 bytes per character: never make sections smaller than a chunk.
    let limit = SECTION_BYTES.max(params.max_tokens.saturating_mul(4));
    split_in_sections(text, format, params, limit, cancelled)
}

fn split_in_sections(
    text: &str,
    format: Format,
    params: &ChunkParams,
    limit: usize,
    cancelled: &dyn Fn() -> bool,
) -> Option<Vec<Range<usize>>> {
    let max = params.max_tokens.max(1);
    let config = || {
        let base = ChunkConfig::new(max);
        // Validation elsewhere rejects overlap >= max_tokens; fall back to no overlap anyway.
        ChunkConfig::new(max)
            .with_overlap(params.overlap)
            .unwrap_or(base)
    };
    let splitter = match format {
        Format::Markdown => Splitter::Markdown(MarkdownSplitter::new(config())),
        Format::Text | Format::Html | Format::Pdf => Splitter::Text(TextSplitter::new(config())),
    };
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for section in sections(text, format, limit) {
        if cancelled() {
            return None;
        }
        let base = section.start;
        let piece = &text[section];
        let mut push = |offset: usize, chunk: &str| {
            if chunk.trim().is_empty() {
                return;
            }
            let r = base + offset..base + offset + chunk.len();
            // With overlap, text-splitter can emit a chunk and then one that contains it
            // (same start, longer): keep only the larger, so starts strictly increase.
            match ranges.last_mut() {
                Some(last) if r.start <= last.start => {
                    if r.end > last.end {
                        *last = r;
                    }
                }
                Some(last) if r.end <= last.end => {}
                _ => ranges.push(r),
            }
        };
        match &splitter {
            Splitter::Markdown(s) => s.chunk_indices(piece).for_each(|(o, c)| push(o, c)),
            Splitter::Text(s) => s.chunk_indices(piece).for_each(|(o, c)| push(o, c)),
        }
    }
    Some(ranges)
}

enum Splitter {
    Markdown(MarkdownSplitter<text_splitter::Characters>),
    Text(TextSplitter<text_splitter::Characters>),
}

/// Cuts `text` into consecutive ranges of at most `limit` bytes (on char boundaries) that
/// together cover it, preferring structural boundaries. Exposed for tests and benches.
#[must_use]
pub fn sections(text: &str, format: Format, limit: usize) -> Vec<Range<usize>> {
    let limit = limit.max(4);
    if text.len() <= limit {
        return std::iter::once(0..text.len()).collect();
    }
    let headings = if format == Format::Markdown {
        heading_starts(text)
    } else {
        Vec::new()
    };
    let mut out = Vec::new();
    let mut start = 0;
    while text.len() - start > limit {
        let end = floor_char_boundary(text, start + limit);
        let cut = best_cut(text, &headings, format, start, end);
        out.push(start..cut);
        start = cut;
    }
    out.push(start..text.len());
    out
}

/// The best place in `(start, end]` to end a section: always > `start` and a char boundary.
fn best_cut(text: &str, headings: &[usize], format: Format, start: usize, end: usize) -> usize {
    // Last heading that starts strictly after `start` and no later than `end`.
    let upto = headings.partition_point(|&h| h <= end);
    if let Some(&h) = headings[..upto].last()
        && h > start
    {
        return h;
    }
    let window = &text[start..end];
    if format != Format::Markdown
        && let Some(i) = window.rfind('\x0c')
    {
        return start + i + 1;
    }
    if let Some(i) = window.rfind("\n\n") {
        return start + i + 2;
    }
    if let Some(i) = window.rfind('\n') {
        return start + i + 1;
    }
    if let Some((i, c)) = window.char_indices().rev().find(|(_, c)| c.is_whitespace()) {
        return start + i + c.len_utf8();
    }
    if end > start {
        end
    } else {
        // `limit` >= 4 bytes always holds a whole char, but stay safe.
        text[start..]
            .chars()
            .next()
            .map_or(text.len(), |c| start + c.len_utf8())
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    if i >= text.len() {
        return text.len();
    }
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Byte offsets of the lines that are ATX headings (`# ...`), outside fenced code blocks.
pub(super) fn heading_starts(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        let indent = line.len() - line.trim_start_matches(' ').len();
        if indent > 3 {
            continue;
        }
        let body = &line[indent..];
        let marker = body.chars().next();
        if let Some(m @ ('`' | '~')) = marker {
            let run = body.chars().take_while(|&c| c == m).count();
            if run >= 3 {
                match fence {
                    None => fence = Some((m, run)),
                    Some((open, len))
                        if open == m && run >= len && body[run..].trim().is_empty() =>
                    {
                        fence = None;
                    }
                    Some(_) => {}
                }
                continue;
            }
        }
        if fence.is_some() || marker != Some('#') {
            continue;
        }
        let hashes = body.chars().take_while(|&c| c == '#').count();
        let after = body[hashes..].chars().next();
        if hashes <= 6 && after.is_none_or(char::is_whitespace) {
            out.push(line_start);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn params(max_tokens: usize, overlap: usize) -> ChunkParams {
        ChunkParams {
            max_tokens,
            overlap,
        }
    }

    fn texts<'a>(text: &'a str, ranges: &[Range<usize>]) -> Vec<&'a str> {
        ranges.iter().map(|r| &text[r.clone()]).collect()
    }

    #[test]
    fn markdown_splits_at_headings_first() {
        let md = "# One\n\nAlpha beta gamma.\n\n# Two\n\nDelta epsilon zeta.\n";
        let ranges = split(md, Format::Markdown, &params(30, 0));
        assert_eq!(
            texts(md, &ranges),
            ["# One\n\nAlpha beta gamma.", "# Two\n\nDelta epsilon zeta."]
        );
    }

    #[test]
    fn headings_ignore_fenced_code() {
        let md = "# A\n```\n# not a heading\n```\n## B\n#nospace\n####### seven\n   # indented\n";
        let starts = heading_starts(md);
        let lines: Vec<&str> = starts
            .iter()
            .map(|&s| md[s..].lines().next().unwrap())
            .collect();
        assert_eq!(lines, ["# A", "## B", "   # indented"]);
    }

    #[test]
    fn big_markdown_is_sectioned_at_headings() {
        let mut md = String::new();
        for i in 0..400 {
            md.push_str(&format!("## Heading {i}\n\n"));
            md.push_str(&"Some words in a sentence. ".repeat(20));
            md.push_str("\n\n");
        }
        assert!(md.len() > 3 * SECTION_BYTES);
        let secs = sections(&md, Format::Markdown, SECTION_BYTES);
        assert!(secs.len() >= 3);
        for (i, s) in secs.iter().enumerate() {
            assert!(s.len() <= SECTION_BYTES);
            assert!(md[s.clone()].starts_with("## Heading") || i == 0);
        }
        assert_eq!(secs.first().unwrap().start, 0);
        assert_eq!(secs.last().unwrap().end, md.len());
        assert!(secs.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn text_sections_fall_back_to_paragraphs_then_anything() {
        let text = format!("{}\n\n{}", "a".repeat(50), "b".repeat(50));
        let secs = sections(&text, Format::Text, 60);
        assert_eq!(secs, [0..52, 52..102]);
        let solid = "é".repeat(40); // 80 bytes, no whitespace at all
        let secs = sections(&solid, Format::Text, 9);
        assert!(secs.iter().all(|s| s.len() <= 9 && !s.is_empty()));
        assert_eq!(secs.last().unwrap().end, solid.len());
    }

    #[test]
    fn overlap_too_big_falls_back_instead_of_panicking() {
        let text = "one two three four five six seven eight nine ten";
        let ranges = split(text, Format::Text, &params(10, 50));
        assert!(!ranges.is_empty());
        assert!(ranges.iter().all(|r| text[r.clone()].chars().count() <= 10));
    }

    #[test]
    fn blank_text_gives_no_chunks() {
        assert!(split("  \n\n\t ", Format::Text, &params(5, 0)).is_empty());
        assert!(split("", Format::Markdown, &params(5, 0)).is_empty());
    }

    #[test]
    fn cancellation_stops_between_sections() {
        let text = "word ".repeat(100_000);
        assert!(split_cancellable(&text, Format::Text, &params(100, 0), &|| true).is_none());
    }

    fn check_invariants(text: &str, format: Format, p: &ChunkParams) {
        check_ranges(text, &split(text, format, p), p);
        // Also with tiny sections, so the pre-splitting is exercised too.
        let small = split_in_sections(text, format, p, 16, &|| false).unwrap();
        check_ranges(text, &small, p);
    }

    fn check_ranges(text: &str, ranges: &[Range<usize>], p: &ChunkParams) {
        let mut covered = vec![false; text.len()];
        let mut last_start = None;
        for r in ranges {
            assert!(r.start < r.end && r.end <= text.len(), "{r:?}");
            assert!(text.is_char_boundary(r.start) && text.is_char_boundary(r.end));
            let chunk = &text[r.clone()];
            assert!(!chunk.trim().is_empty(), "whitespace-only chunk {r:?}");
            assert!(chunk.chars().count() <= p.max_tokens, "{chunk:?} > {p:?}");
            if let Some(prev) = last_start {
                assert!(r.start > prev, "ranges out of order");
            }
            last_start = Some(r.start);
            covered[r.clone()].iter_mut().for_each(|c| *c = true);
        }
        for (i, c) in text.char_indices() {
            assert!(
                c.is_whitespace() || covered[i],
                "char {c:?} at {i} not in any chunk"
            );
        }
    }

    /// Found by `ranges_are_sound`: text-splitter emitted 1..15 and then 1..35.
    #[test]
    fn a_chunk_contained_in_the_next_is_dropped() {
        let text = " éé☺☺ é.\na☺  ☺éaa☺ a.";
        check_invariants(text, Format::Markdown, &params(20, 7));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn ranges_are_sound(
            text in "(([#]{1,3} )?[a-zé☺ ]{0,20}[.!?]?(\n|\n\n| )?){0,30}",
            max_tokens in 1usize..40,
            overlap_frac in 0usize..100,
            markdown in any::<bool>(),
        ) {
            let overlap = (max_tokens - 1) * overlap_frac / 100;
            let format = if markdown { Format::Markdown } else { Format::Text };
            check_invariants(&text, format, &params(max_tokens, overlap));
        }

        #[test]
        fn ranges_are_sound_for_any_unicode(
            text in "\\PC{0,200}",
            max_tokens in 1usize..30,
        ) {
            check_invariants(&text, Format::Text, &params(max_tokens, max_tokens / 3));
            check_invariants(&text, Format::Markdown, &params(max_tokens, 0));
        }
    }
}
