//! Token-aware splitting: cuts extracted text into chunks of at most `max_tokens` tokens of
//! the embedding model's own tokenizer.
//!
//! The caller tokenizes the whole document once and hands over each token's byte range
//! (the tokenizer's offsets, special tokens left out). Chunk ends are then chosen among the
//! token boundaries, by how good a place each is: a Markdown heading, a blank line, a line
//! end, a sentence end, a word boundary, and only for a word longer than a chunk, inside a
//! word. The best kind of place that still fills a quarter of a chunk wins, and among those
//! the furthest. Nothing is tokenized again, except a chunk cut inside a word, which is
//! counted once more and shortened until it fits (word pieces tokenize differently alone).
//!
//! This file must not read files or know about tokenizers; it is pure and deterministic.

use std::ops::Range;

use super::split::heading_starts;
use super::types::{ChunkParams, Format};

/// How good a place to end a chunk is: lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Heading,
    Paragraph,
    Line,
    Sentence,
    Word,
    /// Inside a word (between word pieces).
    Piece,
}

const PLACES: usize = 6;

/// Cuts `text` into chunks of at most `params.max_tokens` of the tokens `spans` (byte
/// ranges into `text`, in order), neighbours sharing about `params.overlap` tokens.
/// `count` is the tokenizer's count for a piece of text (without special tokens); it is
/// asked only about chunks that end inside a word. `cancelled` is polled every chunk.
///
/// Returns byte ranges into `text`, in increasing order, none empty; `None` once cancelled.
#[must_use]
pub fn split_tokens(
    text: &str,
    format: Format,
    params: &ChunkParams,
    spans: &[Range<usize>],
    count: &dyn Fn(&str) -> usize,
    cancelled: &dyn Fn() -> bool,
) -> Option<Vec<Range<usize>>> {
    let n = spans.len();
    let max = params.max_tokens.max(1);
    let overlap = params.overlap.min(max - 1);
    let places = places(text, format, spans);
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut start = 0;
    while start < n {
        if cancelled() {
            return None;
        }
        let limit = start + max;
        let mut end = if limit >= n {
            n
        } else {
            best_end(&places, start, limit, max)
        };
        let range = |end: usize| spans[start].start..spans[end - 1].end;
        // A chunk that begins or ends inside a word holds word pieces that may tokenize
        // differently alone: count it again, and shorten it until it fits.
        if places[start] == Place::Piece || (end < n && places[end] == Place::Piece) {
            while end > start + 1 && text.get(range(end)).is_none_or(|t| count(t) > max) {
                end -= 1;
            }
        }
        let r = range(end);
        match out.last() {
            // Tokens that share bytes (one character, several tokens) can make a range
            // that does not move on: merge it into the last.
            Some(last) if r.start <= last.start => {
                if let Some(last) = out.last_mut() {
                    last.end = last.end.max(r.end);
                }
            }
            _ if r.start < r.end
                && text.is_char_boundary(r.start)
                && text.is_char_boundary(r.end) =>
            {
                out.push(r);
            }
            _ => {}
        }
        if end >= n {
            break;
        }
        // The next chunk starts up to `overlap` tokens back, at a word boundary.
        let back = end.saturating_sub(overlap).max(start + 1);
        start = (back..end)
            .find(|&k| places[k] <= Place::Word)
            .unwrap_or(end);
    }
    Some(out)
}

/// The furthest end in `(start, limit]` of the best kind of place that fills at least a
/// quarter of a chunk.
fn best_end(places: &[Place], start: usize, limit: usize, max: usize) -> usize {
    let mut furthest = [None::<usize>; PLACES];
    for (j, place) in places.iter().enumerate().take(limit + 1).skip(start + 1) {
        furthest[*place as usize] = Some(j);
    }
    let floor = start + (max / 4).max(1);
    let mut best: Option<usize> = None;
    for f in furthest.iter().take(Place::Word as usize + 1) {
        best = best.max(*f);
        if let Some(b) = best
            && b >= floor
        {
            return b;
        }
    }
    best.unwrap_or(limit)
}

/// The kind of place the boundary before each token is (index `j`: between tokens `j - 1`
/// and `j`; index 0 and `spans.len()` are the text's ends).
fn places(text: &str, format: Format, spans: &[Range<usize>]) -> Vec<Place> {
    let headings = if format == Format::Markdown {
        heading_starts(text)
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(spans.len() + 1);
    out.push(Place::Heading);
    for w in spans.windows(2) {
        out.push(place(text, &headings, &w[0], &w[1]));
    }
    if !spans.is_empty() {
        out.push(Place::Heading);
    }
    out
}

fn place(text: &str, headings: &[usize], prev: &Range<usize>, next: &Range<usize>) -> Place {
    if next.start < prev.end {
        return Place::Piece;
    }
    let Some(gap) = text.get(prev.end..next.start) else {
        return Place::Piece;
    };
    if gap.is_empty() {
        let a = text.get(prev.clone()).and_then(|t| t.chars().next_back());
        let b = text.get(next.clone()).and_then(|t| t.chars().next());
        return match (a, b) {
            (Some(a), Some(b)) if a.is_alphanumeric() && b.is_alphanumeric() => Place::Piece,
            _ => Place::Word,
        };
    }
    if !gap.chars().all(char::is_whitespace) {
        // Characters the tokenizer dropped (controls, unknown marks): at least a word.
        return Place::Word;
    }
    if let Some(nl) = gap.rfind('\n') {
        let line = prev.end + nl + 1;
        if headings.binary_search(&line).is_ok() {
            return Place::Heading;
        }
        if gap.matches('\n').count() >= 2 || gap.contains('\x0c') {
            return Place::Paragraph;
        }
        return Place::Line;
    }
    if gap.contains('\x0c') {
        return Place::Paragraph;
    }
    let ends_sentence = text
        .get(prev.clone())
        .and_then(|t| t.chars().next_back())
        .is_some_and(|c| matches!(c, '.' | '!' | '?' | '。' | '！' | '？'));
    if ends_sentence {
        Place::Sentence
    } else {
        Place::Word
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    /// A stand-in tokenizer for the pure logic: words and single punctuation marks, and
    /// words longer than 4 characters in pieces of 4 (as word pieces).
    fn toy_spans(text: &str) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut word: Option<usize> = None;
        let flush = |out: &mut Vec<Range<usize>>, s: usize, e: usize| {
            let w = &text[s..e];
            let mut at = s;
            for (n, (i, _)) in w.char_indices().enumerate() {
                if n > 0 && n % 4 == 0 {
                    out.push(at..s + i);
                    at = s + i;
                }
            }
            out.push(at..e);
        };
        for (i, c) in text.char_indices() {
            if c.is_alphanumeric() {
                word.get_or_insert(i);
                continue;
            }
            if let Some(s) = word.take() {
                flush(&mut out, s, i);
            }
            if !c.is_whitespace() {
                out.push(i..i + c.len_utf8());
            }
        }
        if let Some(s) = word {
            flush(&mut out, s, text.len());
        }
        out
    }

    fn toy_count(text: &str) -> usize {
        toy_spans(text).len()
    }

    fn params(max_tokens: usize, overlap: usize) -> ChunkParams {
        ChunkParams {
            max_tokens,
            overlap,
        }
    }

    fn chunks<'a>(text: &'a str, format: Format, p: &ChunkParams) -> Vec<&'a str> {
        let spans = toy_spans(text);
        split_tokens(text, format, p, &spans, &toy_count, &|| false)
            .unwrap()
            .into_iter()
            .map(|r| &text[r])
            .collect()
    }

    #[test]
    fn markdown_ends_chunks_at_headings_then_paragraphs() {
        let md = "# One\n\nAlpha beta gamma delta.\n\n# Two\n\nEpsilon zeta eta theta.\n";
        assert_eq!(
            chunks(md, Format::Markdown, &params(10, 0)),
            [
                "# One\n\nAlpha beta gamma delta.",
                "# Two\n\nEpsilon zeta eta theta."
            ]
        );
        let text = "One two three. Four five six.\n\nSeven eight nine. Ten eleven.";
        assert_eq!(
            chunks(text, Format::Text, &params(12, 0)),
            [
                "One two three. Four five six.",
                "Seven eight nine. Ten eleven."
            ]
        );
    }

    #[test]
    fn sentences_before_words_and_words_before_pieces() {
        let text = "Aa bb cc. Dd ee ff gg hh";
        assert_eq!(
            chunks(text, Format::Text, &params(6, 0)),
            ["Aa bb cc.", "Dd ee ff gg hh"]
        );
        // One word of 20 pieces: cut inside it, each chunk at most 3 tokens.
        let long = "x".repeat(80);
        let got = chunks(&long, Format::Text, &params(3, 0));
        assert!(got.iter().all(|c| toy_count(c) <= 3), "{got:?}");
        assert_eq!(got.concat(), long);
    }

    #[test]
    fn overlap_starts_at_a_word() {
        let text = "aa bb cc dd ee ff gg hh ii jj";
        let got = chunks(text, Format::Text, &params(4, 2));
        assert_eq!(got[0], "aa bb cc dd");
        assert!(got[1].starts_with("cc"), "{got:?}");
        assert!(got.iter().all(|c| toy_count(c) <= 4));
    }

    #[test]
    fn nothing_to_cut_gives_nothing() {
        assert!(chunks("", Format::Text, &params(5, 0)).is_empty());
        assert!(chunks(" \n\n ", Format::Markdown, &params(5, 0)).is_empty());
        let spans = toy_spans("word ".repeat(100).as_str());
        let text = "word ".repeat(100);
        assert!(
            split_tokens(
                &text,
                Format::Text,
                &params(5, 0),
                &spans,
                &toy_count,
                &|| true
            )
            .is_none()
        );
    }

    fn check(text: &str, format: Format, p: &ChunkParams) {
        let spans = toy_spans(text);
        let ranges = split_tokens(text, format, p, &spans, &toy_count, &|| false).unwrap();
        let mut last: Option<&Range<usize>> = None;
        for r in &ranges {
            let chunk = &text[r.clone()];
            assert!(!chunk.trim().is_empty(), "{r:?}");
            assert!(toy_count(chunk) <= p.max_tokens, "{chunk:?} > {p:?}");
            if let Some(l) = last {
                assert!(r.start > l.start, "{l:?} then {r:?}");
            }
            last = Some(r);
        }
        // Every token is in some chunk.
        for s in &spans {
            assert!(
                ranges.iter().any(|r| r.start <= s.start && s.end <= r.end),
                "{s:?} ({:?}) in no chunk",
                &text[s.clone()]
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn every_chunk_fits_and_every_token_is_kept(
            text in "(([#]{1,3} )?[a-zé☺ ,]{0,30}[.!?]?(\n|\n\n| )?){0,30}",
            max_tokens in 1usize..30,
            overlap_frac in 0usize..100,
            markdown in any::<bool>(),
        ) {
            let overlap = max_tokens.saturating_sub(1) * overlap_frac / 100;
            let format = if markdown { Format::Markdown } else { Format::Text };
            check(&text, format, &params(max_tokens, overlap));
        }

        #[test]
        fn any_unicode(text in "\\PC{0,300}", max_tokens in 1usize..20) {
            check(&text, Format::Text, &params(max_tokens, max_tokens / 3));
            check(&text, Format::Markdown, &params(max_tokens, 0));
        }
    }
}
