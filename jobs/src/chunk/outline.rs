//! A document's outline: its title and headings, positioned in its extracted text, so that
//! each chunk can carry the page title and the path of headings it falls under (what a
//! reader sees above the text, and what a RAG prompt wants to cite).
//!
//! Markdown's outline is read from its ATX headings (`#` to `######`, outside code fences)
//! and `===`/`---` underlined ones; HTML's is recorded by the extractor (`h1`–`h6`, and
//! `<title>`); text and PDF have none. This file must not split text or read files.

use serde::{Deserialize, Serialize};

/// One heading: its level (1–6), where its text starts in the extracted text, and the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heading {
    pub level: u8,
    pub start: usize,
    pub text: String,
}

/// A document's title and headings, in document order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outline {
    /// HTML's `<title>`, else the first level-1 heading.
    pub title: Option<String>,
    pub headings: Vec<Heading>,
}

impl Outline {
    /// The headings a chunk of `start..end` falls under, outermost first: those in effect at
    /// its start, or, when a heading begins in its first third (the start is only the
    /// overlap with the text before), at that heading.
    pub fn path(&self, start: usize, end: usize) -> Vec<String> {
        let early = start + (end.saturating_sub(start)) / 3;
        let at = self
            .headings
            .iter()
            .find(|h| h.start >= start && h.start < early.max(start + 1))
            .map_or(start, |h| h.start);
        let mut stack: Vec<&Heading> = Vec::new();
        for h in self.headings.iter().take_while(|h| h.start <= at) {
            while stack.last().is_some_and(|top| top.level >= h.level) {
                stack.pop();
            }
            stack.push(h);
        }
        stack.into_iter().map(|h| h.text.clone()).collect()
    }

    /// The title: as recorded, else the first level-1 heading's text.
    pub fn with_title_fallback(mut self) -> Outline {
        if self.title.as_deref().is_none_or(str::is_empty) {
            self.title = self
                .headings
                .iter()
                .find(|h| h.level == 1)
                .map(|h| h.text.clone());
        }
        self
    }
}

/// Heading text as shown: inline whitespace collapsed, Markdown's `*` and `` ` `` marks
/// dropped.
pub fn clean(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c == '*' || c == '`')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The outline of a Markdown text.
pub fn markdown(text: &str) -> Outline {
    let mut headings = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    let mut prev: Option<(usize, &str)> = None;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let body = line.trim_end_matches(['\n', '\r']);
        let trimmed = body.trim_start_matches(' ');
        let indent = body.len() - trimmed.len();
        // Code fences: ``` or ~~~ (three or more), closed by at least as many.
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        if let Some(c) = marker
            && indent < 4
        {
            let run = trimmed.chars().take_while(|x| *x == c).count();
            if run >= 3 {
                match fence {
                    None => fence = Some((c, run)),
                    Some((f, n)) if f == c && run >= n && trimmed[run..].trim().is_empty() => {
                        fence = None;
                    }
                    Some(_) => {}
                }
                prev = None;
                continue;
            }
        }
        if fence.is_some() {
            continue;
        }
        if indent < 4 && trimmed.starts_with('#') {
            let level = trimmed.chars().take_while(|c| *c == '#').count();
            let rest = &trimmed[level..];
            if level <= 6 && (rest.is_empty() || rest.starts_with([' ', '\t'])) {
                let content = rest.trim().trim_end_matches('#').trim_end();
                let lead = rest.len() - rest.trim_start().len();
                headings.push(Heading {
                    level: level as u8,
                    start: start + indent + level + lead,
                    text: clean(content),
                });
                prev = None;
                continue;
            }
        }
        // A setext underline makes the line before it a heading.
        let underline = trimmed.trim_end();
        if indent < 4
            && !underline.is_empty()
            && (underline.chars().all(|c| c == '=') || underline.chars().all(|c| c == '-'))
            && let Some((p_start, p_text)) = prev
        {
            headings.push(Heading {
                level: if underline.starts_with('=') { 1 } else { 2 },
                start: p_start,
                text: clean(p_text),
            });
            prev = None;
            continue;
        }
        prev = if trimmed.trim().is_empty() || indent >= 4 {
            None
        } else {
            Some((start + indent, trimmed.trim_end()))
        };
    }
    Outline {
        title: None,
        headings,
    }
    .with_title_fallback()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn markdown_headings_outside_fences_with_their_offsets() {
        let text = "# Guide\n\nintro\n\n## Install *fast*\n\n```sh\n# not a heading\n```\n\n\
                    ### On Debian ##\n\ntext\n\nUsage\n-----\n\nmore\n";
        let o = markdown(text);
        let got: Vec<_> = o
            .headings
            .iter()
            .map(|h| (h.level, h.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, "Guide"),
                (2, "Install fast"),
                (3, "On Debian"),
                (2, "Usage")
            ]
        );
        for h in &o.headings {
            assert!(text[h.start..].starts_with(&h.text[..3]), "{h:?}");
        }
        assert_eq!(o.title.as_deref(), Some("Guide"));
    }

    #[test]
    fn a_chunks_path_is_the_headings_over_its_start() {
        let text =
            "# A\n\none\n\n## B\n\ntwo\n\n### C\n\nthree\n\n## D\n\nfour four four four four\n";
        let o = markdown(text);
        let at = |s: &str| text.find(s).unwrap();
        assert_eq!(o.path(at("one"), at("one") + 3), ["A"]);
        assert_eq!(o.path(at("three"), at("three") + 5), ["A", "B", "C"]);
        // D ends C and B's run: siblings replace, parents stay.
        assert_eq!(o.path(at("four"), at("four") + 4), ["A", "D"]);
        // A chunk starting in the overlap just before `## D` is D's.
        assert_eq!(o.path(at("three") + 3, text.len()), ["A", "D"]);
        assert!(markdown("no headings").path(0, 5).is_empty());
    }
}
