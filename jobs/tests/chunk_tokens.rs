//! Chunk sizes in the embedding model's own tokens (issue 15, acceptance 1): every chunk of a
//! test archive (Markdown, HTML, text and PDF, with code blocks, long lines, a long word and
//! non-Latin text) is at most `max_tokens` tokens as the model's tokenizer counts them, read
//! independently from its tokenizer.json, and each chunk's byte range still matches the
//! extracted text. Needs ./setup.sh (the model's files under MYCO_HOME, default ~/.myco).
#![cfg(feature = "embed")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use myco_jobs::chunk::{self, ChunkParams, Tokens};
use myco_jobs::embed::ChunkTokenizer;

fn model_dir() -> PathBuf {
    let home = std::env::var_os("MYCO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".myco"));
    let dir = home.join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("tokenizer.json").is_file(),
        "{} is missing: run ./setup.sh first",
        dir.display()
    );
    dir
}

/// The model's tokenizer as the model reads text: special tokens added, nothing truncated
/// (its tokenizer.json asks for truncation at 128, which would hide a chunk that is too long).
fn reference(dir: &Path) -> tokenizers::Tokenizer {
    let mut t = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    t.with_truncation(None).unwrap();
    t.with_padding(None);
    t
}

fn long_line(seed: usize) -> String {
    (0..400)
        .map(|i| format!("field_{}={} ", (i * 7 + seed) % 97, i * 31 % 1000))
        .collect()
}

fn archive(dir: &Path) -> Vec<PathBuf> {
    let prose = "The lighthouse keeper repairs a rusty lantern every Tuesday, and the harbor \
                 still talks about it. Visitors say the meadow smells of candles. ";
    let mut md = String::from("# Guide\n\nIntro paragraph. ");
    md.push_str(&prose.repeat(12));
    md.push_str("\n\n## Code\n\n```rust\n");
    for i in 0..120 {
        md.push_str(&format!(
            "fn handler_{i}(ctx: &mut Context<'_>) -> Result<(), Error> {{ ctx.send({i}).await?; Ok(()) }}\n"
        ));
    }
    md.push_str("```\n\n## Long line\n\n");
    md.push_str(&long_line(1));
    md.push_str("\n\n## A word longer than a chunk\n\n");
    md.push_str(&"x9Qz".repeat(600));
    md.push_str("\n\n## 日本語\n\n");
    md.push_str(&"東京の灯台守は毎週火曜日に錆びたランタンを修理する。".repeat(40));
    md.push('\n');

    let mut html = String::from(
        "<!doctype html><html><head><title>Page</title></head><body><h1>API</h1><pre><code>",
    );
    for i in 0..150 {
        html.push_str(&format!(
            "let value_{i} = client.request(&amp;url_{i}).header(\"x-id\", {i}).send()?;\n"
        ));
    }
    html.push_str("</code></pre><p>");
    html.push_str(&prose.repeat(20));
    html.push_str("</p><p>");
    html.push_str(&long_line(2));
    html.push_str("</p></body></html>");

    let mut txt = prose.repeat(30);
    txt.push_str("\n\n");
    txt.push_str(&long_line(3));
    txt.push_str("\n\n");
    txt.push_str(&"https://example.invalid/a/very/long/path?with=query&and=more#frag ".repeat(60));

    let files = [
        ("guide.md", md.into_bytes()),
        ("api.html", html.into_bytes()),
        ("notes.txt", txt.into_bytes()),
    ];
    let mut out = Vec::new();
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        out.push(p);
    }
    let pdf = dir.join("report.pdf");
    let pdf_text = format!("{}\n{}", prose.repeat(25), long_line(4));
    myco_jobs::pdf::write_pdf(&pdf, &pdf_text).unwrap();
    out.push(pdf);
    out
}

#[test]
fn every_chunk_fits_the_model_and_ranges_match_the_source() {
    let dir = model_dir();
    let tokens = ChunkTokenizer::load(&dir).unwrap();
    // all-MiniLM-L6-v2 reads 256 tokens ([CLS] and [SEP] among them).
    assert_eq!(tokens.max_tokens(), 254);
    let reference = reference(&dir);
    let tmp = tempfile::tempdir().unwrap();
    for max_tokens in [0, 100, 17] {
        let params = ChunkParams {
            max_tokens,
            overlap: 8,
        };
        let limit = params.fitted(&tokens).max_tokens;
        for path in archive(tmp.path()) {
            let bytes = std::fs::read(&path).unwrap();
            let chunks = chunk::chunk_bytes_in(&path, &bytes, &params, Some(&tokens), &|| false)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let (_, text) = chunk::extract(&path).unwrap();
            assert!(
                chunks.len() > 2,
                "{}: {} chunks",
                path.display(),
                chunks.len()
            );
            let mut biggest = 0;
            for c in &chunks {
                assert_eq!(
                    &text[c.start..c.end],
                    c.text,
                    "{} #{}",
                    path.display(),
                    c.index
                );
                let n = reference.encode(c.text.as_str(), true).unwrap().len();
                assert!(
                    n <= limit + 2,
                    "{} chunk {} is {n} tokens with specials (limit {limit} + 2): {:?}",
                    path.display(),
                    c.index,
                    c.text
                );
                biggest = biggest.max(n);
            }
            // Not trivially small: the chunks fill the model's window.
            assert!(
                biggest * 2 > limit,
                "{}: largest chunk {biggest} of {limit}",
                path.display()
            );
            // Every word of the text is in some chunk.
            let mut covered = vec![false; text.len()];
            for c in &chunks {
                covered[c.start..c.end].iter_mut().for_each(|b| *b = true);
            }
            for (i, ch) in text.char_indices() {
                assert!(
                    covered[i] || ch.is_whitespace(),
                    "{}: byte {i} ({ch:?}) is in no chunk",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn word_by_word_spans_equal_one_pass_over_the_whole_text() {
    let dir = model_dir();
    let tokens = ChunkTokenizer::load(&dir).unwrap();
    let reference = reference(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let mut texts: Vec<String> = archive(tmp.path())
        .iter()
        .map(|p| chunk::extract(p).unwrap().1)
        .collect();
    texts.push(
        "Tabs\tand\u{a0}no-break spaces, CJK 東京の灯台 mixed, e\u{301}\u{301} accents, \
                [CLS] tokens, control\u{7}chars, emoji 🦀🦀, ﬁ ligatures and \r\n line ends."
            .into(),
    );
    for text in &texts {
        let want: Vec<_> = reference
            .encode(text.as_str(), false)
            .unwrap()
            .get_offsets()
            .iter()
            .filter(|(a, b)| a < b)
            .map(|&(a, b)| a..b)
            .collect();
        assert_eq!(tokens.spans(text).unwrap(), want, "{text:?}");
    }
}

/// A big document cut in parts (for several children) gives exactly the chunks of the whole:
/// no chunk crosses a section, and each part is a run of whole sections.
#[test]
fn the_parts_of_a_big_document_chunk_exactly_as_the_whole() {
    let tokens = ChunkTokenizer::load(&model_dir()).unwrap();
    let mut md = String::new();
    for i in 0..700 {
        md.push_str(&format!("## Part {i}\n\n"));
        md.push_str(&format!("Paragraph {i} about the lantern and the harbor. ").repeat(20));
        md.push_str("\n\n");
    }
    assert!(md.len() > 8 * chunk::SECTION_BYTES);
    let params = ChunkParams {
        max_tokens: 0,
        overlap: 32,
    };
    let whole = chunk::split_in_tokens(
        &md,
        chunk::Format::Markdown,
        &params,
        &tokens,
        None,
        &|| false,
    )
    .unwrap()
    .unwrap();
    for of in [2u32, 3, 7] {
        let mut joined = Vec::new();
        for index in 0..of {
            let part = chunk::split_in_tokens(
                &md,
                chunk::Format::Markdown,
                &params,
                &tokens,
                Some((index, of)),
                &|| false,
            )
            .unwrap()
            .unwrap();
            assert!(!part.is_empty(), "part {index} of {of}");
            joined.extend(part);
        }
        assert_eq!(joined, whole, "{of} parts");
    }
}
