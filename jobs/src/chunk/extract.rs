//! Text extraction: turns one document's bytes into the plain text that gets chunked.
//!
//! Text and Markdown pass through unchanged (so chunk byte ranges index the file itself),
//! HTML goes through lol_html's streaming rewriter (visible text only), PDF through
//! pdf-extract's text layer, run under `catch_unwind` because it can panic on corrupt input.
//! This file must not split text, walk directories or do any async work.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::rc::Rc;

use lol_html::html_content::{Element, TextChunk, TextType};
use lol_html::{HtmlRewriter, Settings, doc_text, element, end_tag};

use super::outline::{self, Heading, Outline};
use super::types::{ChunkError, Format};

/// Reads `path` and extracts its text, choosing the format from its extension.
///
/// # Errors
///
/// [`ChunkError::Unsupported`] for an unknown extension, [`ChunkError::Read`] when the file
/// cannot be read, and whatever [`extract_bytes`] returns for bad content.
pub fn extract(path: &Path) -> Result<(Format, String), ChunkError> {
    let format = Format::from_path(path).ok_or_else(|| ChunkError::unsupported(path))?;
    let bytes = read_document(path)?;
    let text = extract_bytes(path, format, &bytes)?;
    Ok((format, text))
}

/// Extracts the text of a document already in memory; `path_for_messages` only names it in errors.
///
/// # Errors
///
/// [`ChunkError::NotUtf8`] for text, Markdown or HTML that is not UTF-8,
/// [`ChunkError::Html`] if the HTML rewriter gives up, [`ChunkError::BadPdf`] for a PDF
/// pdf-extract cannot read (or panics on), [`ChunkError::NoTextLayer`] for a PDF without text.
pub fn extract_bytes(
    path_for_messages: &Path,
    format: Format,
    bytes: &[u8],
) -> Result<String, ChunkError> {
    match format {
        Format::Text | Format::Markdown => Ok(utf8(path_for_messages, bytes)?.to_owned()),
        Format::Html => {
            let source = utf8(path_for_messages, bytes)?;
            html_text(source).map_err(|reason| ChunkError::Html {
                path: path_for_messages.to_path_buf(),
                reason,
            })
        }
        Format::Pdf => pdf_text(path_for_messages, bytes),
    }
}

/// [`extract_bytes`] with the document's [`Outline`] (title and headings, positioned in the
/// text it returns).
///
/// # Errors
///
/// As [`extract_bytes`].
pub fn extract_with_outline(
    path_for_messages: &Path,
    format: Format,
    bytes: &[u8],
) -> Result<(String, Outline), ChunkError> {
    match format {
        Format::Markdown => {
            let text = utf8(path_for_messages, bytes)?.to_owned();
            let o = outline::markdown(&text);
            Ok((text, o))
        }
        Format::Html => {
            let source = utf8(path_for_messages, bytes)?;
            html_text_outline(source).map_err(|reason| ChunkError::Html {
                path: path_for_messages.to_path_buf(),
                reason,
            })
        }
        Format::Text | Format::Pdf => Ok((
            extract_bytes(path_for_messages, format, bytes)?,
            Outline::default(),
        )),
    }
}

fn utf8<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, ChunkError> {
    std::str::from_utf8(bytes).map_err(|e| ChunkError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.valid_up_to(),
    })
}

fn pdf_text(path: &Path, bytes: &[u8]) -> Result<String, ChunkError> {
    // pdf-extract panics on some malformed files. The default hook prints the panic once; we
    // only turn it into an error here (a temporary hook would be process-global).
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| pdf_extract_text(bytes)));
    let text = match outcome {
        Ok(Ok(text)) => text,
        Ok(Err(reason)) => {
            return Err(ChunkError::BadPdf {
                path: path.to_path_buf(),
                reason,
            });
        }
        Err(payload) => {
            let reason = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the PDF parser crashed".to_owned());
            return Err(ChunkError::BadPdf {
                path: path.to_path_buf(),
                reason: format!("parser panicked: {reason}"),
            });
        }
    };
    if text.trim().is_empty() {
        return Err(ChunkError::NoTextLayer {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// pdf-extract's `extract_text_from_mem`, with the page tree checked first: pdf-extract
/// follows a page's `/Parent` chain recursively, and a chain that loops (found by fuzzing:
/// fuzz/regressions/extract/) overflows the stack, which kills the whole process, not just
/// this job. A catch_unwind cannot stop that; refusing the file can.
fn pdf_extract_text(bytes: &[u8]) -> Result<String, String> {
    let mut doc = pdf_extract::Document::load_mem(bytes).map_err(|e| e.to_string())?;
    if doc.is_encrypted() {
        // As pdf-extract does: an empty user password opens most "protected" PDFs.
        doc.decrypt("")
            .map_err(|e| format!("it is encrypted and cannot be opened without a password: {e}"))?;
    }
    for (_, page) in doc.get_pages() {
        let mut seen = std::collections::HashSet::new();
        let mut at = page;
        while let Ok(parent) = doc
            .get_dictionary(at)
            .and_then(|d| d.get(b"Parent"))
            .and_then(pdf_extract::Object::as_reference)
        {
            if !seen.insert(parent) || seen.len() > MAX_PAGE_TREE_DEPTH {
                return Err(format!(
                    "its page tree loops (page object {} {} is its own ancestor)",
                    page.0, page.1
                ));
            }
            at = parent;
        }
    }
    let mut text = String::new();
    {
        let mut out = pdf_extract::PlainTextOutput::new(&mut text);
        pdf_extract::output_doc(&doc, &mut out).map_err(|e| e.to_string())?;
    }
    Ok(text)
}

/// Deeper page trees than this are refused (real ones are a few levels deep).
const MAX_PAGE_TREE_DEPTH: usize = 256;

/// Elements whose content is never visible text.
const HIDDEN: &[&str] = &[
    "script", "style", "noscript", "template", "head", "title", "iframe", "object", "svg", "math",
    "canvas", "select",
];

/// Page chrome, dropped with its content: navigation and sidebars everywhere, and a page's
/// own header and footer (one inside an `article` or `main` belongs to the text and stays).
const CHROME: &[&str] = &["nav", "aside"];
const PAGE_ONLY: &[&str] = &["header", "footer"];
/// Where [`PAGE_ONLY`] elements are part of the text.
const CONTENT: &[&str] = &["article", "main"];

/// ARIA roles of page chrome: an element with one is dropped like [`CHROME`].
const CHROME_ROLES: &[&str] = &[
    "navigation",
    "banner",
    "contentinfo",
    "complementary",
    "search",
    "menu",
    "menubar",
    "toolbar",
    "tablist",
];

/// Elements whose end tag may be left out: lol_html runs end handlers only for end tags that
/// are there, so hiding one by its attributes could hide the rest of the page.
const END_OPTIONAL: &[&str] = &[
    "p", "li", "dt", "dd", "option", "optgroup", "tr", "td", "th", "thead", "tbody", "tfoot",
    "colgroup", "caption", "rb", "rt", "rp", "html", "body", "head",
];

/// Whether `el` is chrome or hidden by its attributes (`hidden`, `aria-hidden="true"`, a
/// [`CHROME_ROLES`] role).
fn hidden_by_attributes(name: &str, el: &Element<'_, '_>) -> bool {
    if END_OPTIONAL.contains(&name) {
        return false;
    }
    if el.has_attribute("hidden") {
        return true;
    }
    if el
        .get_attribute("aria-hidden")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return true;
    }
    el.get_attribute("role").is_some_and(|roles| {
        roles
            .split_ascii_whitespace()
            .any(|r| CHROME_ROLES.iter().any(|c| r.eq_ignore_ascii_case(c)))
    })
}

/// Elements that start a new paragraph (two newlines).
const PARAGRAPH: &[&str] = &[
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "section",
    "blockquote",
    "pre",
    "hr",
    "table",
    "ul",
    "ol",
    "dl",
    "figure",
    "header",
    "footer",
    "form",
    "fieldset",
    "address",
    "details",
];

/// Elements that start a new line.
const LINE: &[&str] = &[
    "div",
    "li",
    "tr",
    "dt",
    "dd",
    "caption",
    "figcaption",
    "summary",
    "legend",
    "body",
    "html",
    "option",
    "textarea",
];

/// Elements separated from their neighbours by a space (table cells).
const CELL: &[&str] = &["td", "th"];

/// Accumulates visible text, collapsing whitespace and turning block boundaries into newlines.
#[derive(Debug, Default)]
struct TextSink {
    out: String,
    /// Depth of open hidden elements (script, style, chrome, ...): text is dropped while > 0.
    hidden: usize,
    /// Depth of open [`CONTENT`] elements (`article`, `main`).
    content: usize,
    /// Depth of open `<pre>` elements: whitespace is kept while > 0.
    pre: usize,
    /// Newlines owed before the next visible text (0, 1 or 2).
    newlines: usize,
    /// A space is owed before the next visible text.
    space: bool,
    /// Raw text of the current text node, decoded once the node ends (an entity may straddle
    /// two lol_html text chunks).
    raw: String,
    /// The open heading: its level, and where its text starts in `out` once it has some.
    heading: Option<(u8, Option<usize>)>,
    headings: Vec<Heading>,
    /// Inside the document's first `<title>`, whose raw text collects in `title`.
    in_title: bool,
    title: Option<String>,
}

impl TextSink {
    fn block(&mut self, newlines: usize) {
        self.newlines = self.newlines.max(newlines);
    }

    fn line_break(&mut self) {
        self.newlines = (self.newlines + 1).min(2);
    }

    fn flush_pending(&mut self) {
        if self.out.is_empty() {
            self.newlines = 0;
            self.space = false;
            return;
        }
        if self.newlines > 0 {
            // Drop trailing spaces on the line we are ending.
            let kept = self.out.trim_end_matches([' ', '\t']).len();
            self.out.truncate(kept);
            for _ in 0..self.newlines {
                self.out.push('\n');
            }
        } else if self.space {
            self.out.push(' ');
        }
        self.newlines = 0;
        self.space = false;
    }

    /// Marks where the open heading's text starts, at its first visible character.
    fn heading_starts(&mut self) {
        if let Some((_, start @ None)) = &mut self.heading {
            *start = Some(self.out.len());
        }
    }

    fn end_heading(&mut self) {
        if let Some((level, Some(start))) = self.heading.take() {
            let text = outline::clean(&self.out[start..]);
            if !text.is_empty() {
                self.headings.push(Heading { level, start, text });
            }
        }
    }

    fn push_visible(&mut self, text: &str) {
        if self.pre > 0 {
            if !text.is_empty() {
                self.flush_pending();
                self.heading_starts();
                self.out.push_str(text);
            }
            return;
        }
        for c in text.chars() {
            if c.is_whitespace() {
                self.space = true;
            } else {
                self.flush_pending();
                self.heading_starts();
                self.out.push(c);
            }
        }
    }

    fn text_chunk(&mut self, chunk: &TextChunk<'_>) {
        let decodes = match chunk.text_type() {
            TextType::Data | TextType::RCData => true,
            TextType::CDataSection | TextType::PlainText => false,
            // Script and raw text (style, iframe, noscript, ...) is never visible.
            TextType::ScriptData | TextType::RawText => {
                self.raw.clear();
                return;
            }
        };
        if self.in_title {
            let title = self.title.get_or_insert_with(String::new);
            title.push_str(chunk.as_str());
            return;
        }
        if self.hidden > 0 {
            self.raw.clear();
            return;
        }
        self.raw.push_str(chunk.as_str());
        if !chunk.last_in_text_node() {
            return;
        }
        let raw = std::mem::take(&mut self.raw);
        if decodes {
            let decoded = html_escape::decode_html_entities(&raw);
            self.push_visible(&decoded);
        } else {
            self.push_visible(&raw);
        }
    }

    fn finish(mut self) -> (String, Outline) {
        let raw = std::mem::take(&mut self.raw);
        if self.hidden == 0 && !raw.is_empty() {
            let decoded = html_escape::decode_html_entities(&raw);
            self.push_visible(&decoded);
        }
        self.end_heading();
        let kept = self.out.trim_end().len();
        self.out.truncate(kept);
        let title = self
            .title
            .map(|t| outline::clean(&html_escape::decode_html_entities(&t)));
        let outline = Outline {
            title,
            headings: self.headings,
        };
        (self.out, outline.with_title_fallback())
    }
}

/// What an element does to the text around it, decided by its (lowercase) tag name.
fn on_element(sink: &Rc<RefCell<TextSink>>, el: &mut Element<'_, '_>) -> lol_html::HandlerResult {
    let name = el.tag_name();
    let name = name.as_str();
    let mut on_end: Option<fn(&mut TextSink)> = None;
    {
        let mut s = sink.borrow_mut();
        if name == "body" {
            // `</head>` is often implicit and lol_html only runs end handlers for explicit
            // end tags: whatever head-level hiding is still open ends here.
            s.hidden = 0;
        }
        let level = match name.as_bytes() {
            [b'h', d @ b'1'..=b'6'] => Some(d - b'0'),
            _ => None,
        };
        let hide = HIDDEN.contains(&name)
            || CHROME.contains(&name)
            || (PAGE_ONLY.contains(&name) && s.content == 0)
            || hidden_by_attributes(name, el);
        if name == "title" && s.title.is_none() && el.can_have_content() {
            s.hidden += 1;
            s.in_title = true;
            s.title = Some(String::new());
            on_end = Some(|s| {
                s.hidden = s.hidden.saturating_sub(1);
                s.in_title = false;
            });
        } else if hide {
            // An element without content (void, self-closing) has no end to undo it.
            if el.can_have_content() {
                s.hidden += 1;
                on_end = Some(|s| s.hidden = s.hidden.saturating_sub(1));
            }
        } else if let Some(level) = level {
            s.block(2);
            s.end_heading();
            s.heading = Some((level, None));
            on_end = Some(|s| {
                s.end_heading();
                s.block(2);
            });
        } else if CONTENT.contains(&name) {
            s.block(2);
            s.content += 1;
            on_end = Some(|s| {
                s.content = s.content.saturating_sub(1);
                s.block(2);
            });
        } else if name == "br" {
            s.line_break();
        } else if name == "pre" {
            s.block(2);
            s.pre += 1;
            on_end = Some(|s| {
                s.pre = s.pre.saturating_sub(1);
                s.block(2);
            });
        } else if PARAGRAPH.contains(&name) {
            s.block(2);
            on_end = Some(|s| s.block(2));
        } else if LINE.contains(&name) {
            s.block(1);
            on_end = Some(|s| s.block(1));
        } else if CELL.contains(&name) {
            s.space = true;
            on_end = Some(|s| s.space = true);
        }
    }
    if let Some(action) = on_end
        && el.can_have_content()
    {
        let sink = Rc::clone(sink);
        el.on_end_tag(end_tag!(move |_end| {
            action(&mut sink.borrow_mut());
            Ok(())
        }))?;
    }
    Ok(())
}

/// The visible text of an HTML document (see the module docs of [`super`]).
pub(crate) fn html_text(source: &str) -> Result<String, String> {
    html_text_outline(source).map(|(text, _)| text)
}

/// [`html_text`] with the page's title and headings.
pub(crate) fn html_text_outline(source: &str) -> Result<(String, Outline), String> {
    let sink = Rc::new(RefCell::new(TextSink::default()));
    {
        let for_elements = Rc::clone(&sink);
        let for_text = Rc::clone(&sink);
        let settings = Settings::new()
            .with_strict(false)
            .append_element_content_handler(element!("*", move |el| {
                on_element(&for_elements, el)
            }))
            .append_document_content_handler(doc_text!(move |t| {
                for_text.borrow_mut().text_chunk(t);
                Ok(())
            }));
        let mut rewriter = HtmlRewriter::new(settings, |_: &[u8]| {});
        rewriter
            .write(source.as_bytes())
            .map_err(|e| e.to_string())?;
        rewriter.end().map_err(|e| e.to_string())?;
    }
    let sink = Rc::try_unwrap(sink)
        .map_err(|_| "HTML handlers outlived the rewriter".to_owned())?
        .into_inner();
    Ok(sink.finish())
}

/// A document's bytes: a regular file of at most [`crate::access::MAX_DOCUMENT_BYTES`]
/// (a device, a pipe or a bigger file is refused before it is read).
pub fn read_document(path: &Path) -> Result<Vec<u8>, ChunkError> {
    use crate::access::{MAX_DOCUMENT_BYTES, ReadError, read_regular};
    read_regular(path, MAX_DOCUMENT_BYTES).map_err(|e| match e {
        ReadError::Io { kind, .. } => ChunkError::Read {
            path: path.to_path_buf(),
            source: kind.into(),
        },
        ReadError::NotRegular { .. } => ChunkError::NotRegular {
            path: path.to_path_buf(),
        },
        ReadError::TooBig { bytes, limit, .. } => ChunkError::TooBig {
            path: path.to_path_buf(),
            bytes,
            limit,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn html(s: &str) -> String {
        html_text(s).unwrap()
    }

    #[test]
    fn records_the_title_and_headings_where_their_text_is() {
        let doc = "<html><head><title>Ch. 4 &amp; more - Book</title></head><body>\
            <nav><h2>Contents</h2></nav><h1>Ownership <code>rules</code></h1><p>text</p>\
            <h2>Moves</h2><p>more</p><svg><title>icon</title></svg><h3>Copy</h3></body></html>";
        let (text, o) = html_text_outline(doc).unwrap();
        assert_eq!(o.title.as_deref(), Some("Ch. 4 & more - Book"));
        let got: Vec<_> = o
            .headings
            .iter()
            .map(|h| (h.level, h.text.as_str()))
            .collect();
        assert_eq!(got, [(1, "Ownership rules"), (2, "Moves"), (3, "Copy")]);
        for h in &o.headings {
            assert!(text[h.start..].starts_with(&h.text), "{h:?} in {text:?}");
        }
        // Without a <title>, the first h1.
        let (_, o) = html_text_outline("<h2>x</h2><h1>Top</h1>").unwrap();
        assert_eq!(o.title.as_deref(), Some("Top"));
    }

    #[test]
    fn drops_script_style_head_and_friends() {
        let doc = r#"<!doctype html><html><head><title>Tab title</title>
            <style>body { color: red }</style><script>var x = "<p>nope</p>";</script></head>
            <body><noscript>enable js</noscript><template><p>tmpl</p></template>
            <p>Visible text.</p><script>alert(1)</script><p>More.</p></body></html>"#;
        let text = html(doc);
        assert_eq!(text, "Visible text.\n\nMore.");
    }

    #[test]
    fn drops_page_chrome_but_keeps_an_articles_own_header() {
        let doc = r#"<html><body>
            <header><a href="/">Home</a> Themes: Light Rust Coal</header>
            <nav class="sidebar"><ol><li>Intro<li>Setup</ol></nav>
            <div role="navigation">Prev Next</div>
            <div id="menu" aria-hidden="true">Press ? for shortcuts</div>
            <main><article><header><h1>Ownership</h1></header>
            <p>Each value has an owner.</p><aside>Tip: see also</aside>
            <div hidden>secret</div><img hidden src="x.png"><input hidden>
            <footer>Article footnote.</footer></article></main>
            <footer>Copyright 2026</footer></body></html>"#;
        assert_eq!(
            html(doc),
            "Ownership\n\nEach value has an owner.\n\nArticle footnote."
        );
    }

    #[test]
    fn attributes_do_not_hide_elements_whose_end_tag_may_be_missing() {
        // `<li hidden>` without `</li>`: hiding it would hide everything after it.
        assert_eq!(
            html("<ul><li hidden>a<li>b</ul><p>after</p>"),
            "a\nb\n\nafter"
        );
    }

    #[test]
    fn implicit_head_end_does_not_hide_body() {
        let text = html("<html><head><title>t</title><body><p>Shown</p>");
        assert_eq!(text, "Shown");
    }

    #[test]
    fn decodes_entities_even_across_chunks() {
        let text = html("<p>Fish &amp; chips &lt;3 &eacute;t&eacute; &#x263A; &nbsp;x</p>");
        assert_eq!(text, "Fish & chips <3 été ☺ x");
        // A literal ampersand without an entity stays as it is.
        assert_eq!(html("<p>AT&T rocks</p>"), "AT&T rocks");
    }

    #[test]
    fn blocks_become_newlines_and_inline_whitespace_collapses() {
        let text = html(
            "<h1>Title</h1>\n  <div>one   <b>bold</b>\n two</div><div>three<br>four</div>\
             <ul><li>a</li><li>b</li></ul><table><tr><td>c1</td><td>c2</td></tr></table>",
        );
        assert_eq!(text, "Title\n\none bold two\nthree\nfour\n\na\nb\n\nc1 c2");
    }

    #[test]
    fn pre_keeps_whitespace() {
        let text = html("<p>x</p><pre>  a\n    b</pre><p>y</p>");
        assert_eq!(text, "x\n\n  a\n    b\n\ny");
    }

    #[test]
    fn inline_elements_do_not_split_words() {
        assert_eq!(html("<p>un<em>believ</em>able</p>"), "unbelievable");
    }

    #[test]
    fn text_and_markdown_pass_through_and_bad_utf8_is_reported() {
        let p = Path::new("a.md");
        assert_eq!(
            extract_bytes(p, Format::Markdown, b"# x\n\ny ").unwrap(),
            "# x\n\ny "
        );
        let err = extract_bytes(p, Format::Text, b"ok\xff").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("a.md") && msg.contains("byte 2"), "{msg}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn garbage_pdf_is_an_error_not_a_panic() {
        let err = extract_bytes(Path::new("x.pdf"), Format::Pdf, b"%PDF-1.4 garbage").unwrap_err();
        assert!(matches!(err, ChunkError::BadPdf { .. }), "{err}");
        assert!(err.to_string().starts_with("x.pdf: not a readable PDF"));
    }
}
