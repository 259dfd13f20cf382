//! Acceptance test for the chunking core: a real directory tree with Markdown, text, HTML, a
//! generated PDF and a corrupt PDF, expanded and chunked through the public API.
//!
//! Holds only black-box checks on `myco_jobs::chunk`; no queues, actors or timing assertions.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use myco_jobs::chunk::{self, Chunk, ChunkError, ChunkParams, Format};

const MARKDOWN: &str = "# Getting started\n\n\
Myco runs jobs on every machine you own. Install it with one command.\n\n\
## Configuration\n\n\
Write a job.toml file. The chunk section says where documents live and how big chunks are.\n\n\
```toml\n# not a heading\nkind = \"chunk\"\n```\n\n\
## Joining a second machine\n\n\
Start a node with the address of the first one. Leases move work between nodes.\n";

const TEXT: &str = "Plain text notes.\n\nThe quick brown fox jumps over the lazy dog. \
Pack my box with five dozen liquor jugs.\n\n\u{c}Second page of the notes, after a form feed.\n";

const HTML: &str = r#"<!DOCTYPE html>
<html><head><title>Page title</title>
<style>.secret { display: none } /* STYLE_MARKER */</style>
<script>var SCRIPT_MARKER = "<p>not text</p>";</script>
</head>
<body>
  <h1>Caf&eacute; menu</h1>
  <p>Fish &amp; chips cost &pound;5 &mdash; a bargain.</p>
  <div>Opening hours: <b>9</b>&ndash;<i>17</i></div>
  <script>document.write("SCRIPT_MARKER_2")</script>
  <ul><li>Tea</li><li>Coffee &lt;hot&gt;</li></ul>
</body></html>
"#;

const PDF_SENTENCE: &str = "Hello from a generated PDF page.";

fn params() -> ChunkParams {
    ChunkParams {
        max_tokens: 60,
        overlap: 10,
    }
}

/// A one-page PDF with a Helvetica Type1 font and one line of text (lopdf's README example).
fn write_pdf(path: &Path) {
    write_pdf_with(path, true);
}

/// Without a MediaBox the PDF is broken in a way that makes pdf-extract 0.12 panic.
fn write_pdf_with(path: &Path, media_box: bool) {
    myco_jobs::pdf::write_pdf_with(path, PDF_SENTENCE, media_box).unwrap();
}

/// Builds the tree and returns the files expected from `expand_input`, sorted.
fn build_tree(root: &Path) -> Vec<PathBuf> {
    let write = |rel: &str, bytes: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let md = write("docs/guide/intro.md", MARKDOWN.as_bytes());
    let txt = write("docs/notes.txt", TEXT.as_bytes());
    let html = write("web/menu.HTML", HTML.as_bytes());
    let broken = write(
        "reports/broken.pdf",
        b"%PDF-1.7\n\x00\x01garbage, not a PDF at all\n",
    );
    let pdf = root.join("reports/hello.pdf");
    write_pdf(&pdf);
    // Hidden files and directories are skipped.
    write(".hidden/secret.md", b"# secret\n");
    write("docs/.draft.md", b"# draft\n");
    let mut expected = vec![md, txt, html, broken, pdf];
    expected.sort();
    expected
}

#[test]
fn chunks_a_mixed_directory() {
    let dir = tempfile::tempdir().unwrap();
    let expected = build_tree(dir.path());

    let files = chunk::expand_input(dir.path()).unwrap();
    assert_eq!(files, expected);

    let never = || false;
    let mut chunked = 0;
    for file in &files {
        let result = chunk::chunk_file(file, &params(), &never);
        if file.ends_with("broken.pdf") {
            let err = result.unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("broken.pdf"), "{msg}");
            assert!(matches!(err, ChunkError::BadPdf { .. }), "{msg}");
            assert!(!err.is_retryable());
            continue;
        }
        let chunks = result.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!chunks.is_empty(), "{}", file.display());
        check_chunks(file, &chunks);

        // Deterministic.
        assert_eq!(chunk::chunk_file(file, &params(), &never).unwrap(), chunks);
        chunked += 1;
    }
    assert_eq!(chunked, 4);
}

fn check_chunks(file: &Path, chunks: &[Chunk]) {
    let format = Format::from_path(file).unwrap();
    let (extracted_format, extracted) = chunk::extract(file).unwrap();
    assert_eq!(format, extracted_format);
    let reference = match format {
        Format::Text | Format::Markdown => std::fs::read_to_string(file).unwrap(),
        Format::Html | Format::Pdf => extracted.clone(),
    };
    assert_eq!(reference, extracted, "md/txt extraction is the file itself");
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.index as usize, i);
        assert_eq!(c.source, file.display().to_string());
        assert_eq!(reference[c.start..c.end], c.text, "{}#{i}", file.display());
        assert!(c.text.chars().count() <= params().max_tokens);
        assert!(!c.text.trim().is_empty());
    }
    assert!(chunks.windows(2).all(|w| w[0].start < w[1].start));

    match format {
        Format::Markdown => {
            assert!(chunks[0].text.starts_with("# Getting started"));
            assert!(
                chunks
                    .iter()
                    .any(|c| c.text.starts_with("## Configuration"))
            );
        }
        Format::Html => {
            for visible in [
                "Café menu",
                "Fish & chips cost £5 — a bargain.",
                "Opening hours: 9–17",
                "Coffee <hot>",
            ] {
                assert!(extracted.contains(visible), "{visible:?} in {extracted:?}");
            }
            for hidden in [
                "STYLE_MARKER",
                "SCRIPT_MARKER",
                "not text",
                "Page title",
                "{",
            ] {
                assert!(!extracted.contains(hidden), "{hidden:?} in {extracted:?}");
            }
        }
        Format::Pdf => {
            let flat = extracted.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(flat.contains(PDF_SENTENCE), "{extracted:?}");
        }
        Format::Text => {
            assert!(extracted.contains("Second page of the notes"));
        }
    }
}

#[test]
fn globs_and_single_files_expand() {
    let dir = tempfile::tempdir().unwrap();
    let expected = build_tree(dir.path());

    let pattern = dir.path().join("docs/**/*.md");
    let files = chunk::expand_input(&pattern).unwrap();
    let mds: Vec<_> = expected
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .cloned()
        .collect();
    assert_eq!(files, mds);

    let one = &expected[0];
    assert_eq!(chunk::expand_input(one).unwrap(), vec![one.clone()]);

    let err = chunk::expand_input(&dir.path().join("nothing/*.txt")).unwrap_err();
    assert!(err.to_string().contains("nothing/*.txt"), "{err}");
}

#[test]
fn unsupported_and_cancelled_files_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("cat.png");
    std::fs::write(&png, b"\x89PNG").unwrap();
    let err = chunk::chunk_file(&png, &params(), &|| false).unwrap_err();
    assert!(
        err.to_string()
            .contains("cat.png: unsupported file type `.png`"),
        "{err}"
    );

    let big = dir.path().join("big.txt");
    std::fs::write(&big, "lorem ipsum dolor sit amet\n\n".repeat(20_000)).unwrap();
    let polls = std::cell::Cell::new(0);
    let cancel_after_two = || {
        polls.set(polls.get() + 1);
        polls.get() > 2
    };
    let err = chunk::chunk_file(&big, &params(), &cancel_after_two).unwrap_err();
    assert!(matches!(err, ChunkError::Cancelled), "{err}");
}

#[test]
fn a_pdf_that_crashes_the_parser_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("no-media-box.pdf");
    write_pdf_with(&pdf, false);
    // pdf-extract panics on this file (the default hook prints that once to stderr); the
    // panic must come back as an ordinary error naming the file.
    let err = chunk::chunk_file(&pdf, &params(), &|| false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ChunkError::BadPdf { .. }), "{msg}");
    assert!(
        msg.starts_with(&format!("{}: not a readable PDF", pdf.display())),
        "{msg}"
    );
    assert!(!err.is_retryable());
}

/// A chunk task lent to another node carries its document: chunking the inline bytes gives
/// exactly what chunking the file gives, and a file over the budget is not lent.
#[test]
fn portable_chunk_tasks_carry_their_document() {
    use myco_jobs::Task;
    use myco_jobs::chunk::ChunkParams;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doc.md");
    std::fs::write(
        &path,
        "# Title\n\nSome text that is long enough to chunk.\n\n## Next\n\nMore.\n",
    )
    .unwrap();
    let params = ChunkParams {
        max_tokens: 24,
        overlap: 0,
    };
    let task = Task::ChunkFile {
        path: path.clone(),
        params,
    };
    let Some(Task::ChunkInline { bytes, .. }) = task.portable(1 << 20) else {
        panic!("a small file travels inline");
    };
    let inline = myco_jobs::chunk::chunk_bytes(&path, &bytes, &params, &|| false).unwrap();
    let from_file = myco_jobs::chunk::chunk_file(&path, &params, &|| false).unwrap();
    assert_eq!(inline, from_file);
    assert!(task.portable(4).is_none(), "too big to lend");
}

/// Found by fuzzing (fuzz/regressions/extract/): a page whose `/Parent` chain loops sent
/// pdf-extract into unbounded recursion, and the stack overflow killed the process (no
/// catch_unwind can stop that). It is refused as a bad PDF now.
#[test]
fn a_pdf_whose_page_tree_loops_is_an_error_not_a_crash() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/page-tree-loop.pdf");
    let bytes = std::fs::read(&path).unwrap();
    match chunk::extract_bytes(&path, Format::Pdf, &bytes) {
        Err(ChunkError::BadPdf { reason, .. }) => {
            assert!(reason.contains("page tree loops"), "{reason}")
        }
        other => panic!("expected BadPdf, got {other:?}"),
    }
}
