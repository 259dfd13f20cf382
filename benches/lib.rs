//! Shared helpers for the benches: a deterministic Markdown corpus generator, a running
//! total of what a bench measured (so each goal can be compared with its baseline in the
//! same run), and number formatting for the summary table.
//!
//! Std (and lopdf, for the archive generator), no timing assertions, no myco types.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A small deterministic PRNG (SplitMix64), so the corpus is the same on every run and
/// machine without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        let span = (hi - lo + 1) as u64;
        lo + (self.next_u64() % span) as usize
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.range(0, items.len() - 1)]
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.range(0, 99) < percent
    }
}

const WORDS: &[&str] = &[
    "queue",
    "lease",
    "worker",
    "commit",
    "durable",
    "node",
    "swarm",
    "chunk",
    "token",
    "document",
    "retry",
    "backoff",
    "priority",
    "actor",
    "message",
    "supervisor",
    "redb",
    "transaction",
    "fsync",
    "batch",
    "throughput",
    "latency",
    "result",
    "parent",
    "child",
    "embedding",
    "model",
    "vector",
    "index",
    "search",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "with",
    "as",
    "on",
    "be",
    "at",
    "by",
    "this",
    "from",
    "or",
    "which",
    "when",
    "each",
    "every",
    "before",
    "after",
    "until",
    "because",
    "so",
    "then",
    "runs",
    "stores",
    "waits",
    "splits",
    "reads",
    "writes",
    "fails",
    "succeeds",
    "returns",
    "quickly",
    "safely",
    "once",
    "again",
    "never",
    "always",
    "only",
    "also",
    "small",
    "large",
    "local",
    "remote",
    "shared",
    "stable",
    "careful",
    "simple",
    "whole",
    "partial",
    "first",
    "last",
    "next",
    "earlier",
    "later",
    "café",
    "naïve",
    "résumé",
    "Zürich",
    "straße",
];

const LANGS: &[&str] = &["rust", "toml", "sh", "json", "python", ""];

fn words(rng: &mut Rng, n: usize, out: &mut String) {
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        let w = rng.pick(WORDS);
        match rng.range(0, 39) {
            0 => {
                let _ = write!(out, "**{w}**");
            }
            1 => {
                let _ = write!(out, "`{w}()`");
            }
            2 => {
                let _ = write!(out, "[{w}](https://example.org/{w}/{})", rng.range(1, 999));
            }
            3 => {
                let _ = write!(out, "_{w}_");
            }
            _ => out.push_str(w),
        }
    }
}

fn sentence(rng: &mut Rng, out: &mut String) {
    let start = out.len();
    let n = rng.range(6, 18);
    words(rng, n, out);
    // Capitalise the first letter when it is ASCII (keeps the generator simple).
    if let Some(first) = out[start..].chars().next()
        && first.is_ascii_lowercase()
    {
        out.replace_range(start..start + 1, &first.to_ascii_uppercase().to_string());
    }
    out.push_str(rng.pick(&[".", ".", ".", "?", "!", ";"]));
}

fn paragraph(rng: &mut Rng, out: &mut String) {
    let n = rng.range(2, 7);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        sentence(rng, out);
    }
    out.push_str("\n\n");
}

fn list(rng: &mut Rng, out: &mut String) {
    let ordered = rng.chance(40);
    let n = rng.range(3, 8);
    for i in 0..n {
        if ordered {
            let _ = write!(out, "{}. ", i + 1);
        } else {
            out.push_str("- ");
        }
        let w = rng.range(3, 14);
        words(rng, w, out);
        out.push('\n');
        if rng.chance(20) {
            for _ in 0..rng.range(1, 3) {
                out.push_str("  - ");
                let w = rng.range(2, 8);
                words(rng, w, out);
                out.push('\n');
            }
        }
    }
    out.push('\n');
}

fn code_fence(rng: &mut Rng, out: &mut String) {
    let lang = rng.pick(LANGS);
    let _ = writeln!(out, "```{lang}");
    for _ in 0..rng.range(3, 20) {
        let indent = rng.range(0, 3) * 4;
        let a = rng.pick(WORDS);
        let b = rng.pick(WORDS);
        let _ = writeln!(
            out,
            "{:indent$}let {a}_{} = {b}({}, \"{}\");",
            "",
            rng.range(0, 99),
            rng.range(0, 9_999),
            rng.pick(WORDS)
        );
    }
    out.push_str("```\n\n");
}

fn quote(rng: &mut Rng, out: &mut String) {
    out.push_str("> ");
    sentence(rng, out);
    out.push_str("\n> ");
    sentence(rng, out);
    out.push_str("\n\n");
}

fn table(rng: &mut Rng, out: &mut String) {
    out.push_str("| name | state | attempts |\n|------|-------|----------|\n");
    for _ in 0..rng.range(2, 6) {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            rng.pick(WORDS),
            rng.pick(&["queued", "leased", "done", "dead"]),
            rng.range(0, 5)
        );
    }
    out.push('\n');
}

/// One Markdown document of about `target_bytes` (it stops at the first block boundary past
/// it): a title, then `##`/`###` sections of paragraphs, lists, code fences, block quotes and
/// tables. The same `seed` always gives the same text.
pub fn markdown_doc(seed: u64, target_bytes: usize) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(target_bytes + 4096);
    out.push_str("# ");
    let n = rng.range(3, 7);
    words(&mut rng, n, &mut out);
    out.push_str("\n\n");
    paragraph(&mut rng, &mut out);
    while out.len() < target_bytes {
        let level = if rng.chance(35) { "###" } else { "##" };
        let _ = write!(out, "{level} ");
        let n = rng.range(2, 6);
        words(&mut rng, n, &mut out);
        out.push_str("\n\n");
        for _ in 0..rng.range(2, 6) {
            match rng.range(0, 9) {
                0..=4 => paragraph(&mut rng, &mut out),
                5 | 6 => list(&mut rng, &mut out),
                7 => code_fence(&mut rng, &mut out),
                8 => quote(&mut rng, &mut out),
                _ => table(&mut rng, &mut out),
            }
        }
    }
    out
}

/// Writes `files` documents of about `bytes_each` bytes as `doc-NNNN.md` into `dir`.
/// Returns their paths (sorted) and their total size in bytes.
pub fn write_corpus(
    dir: &Path,
    files: usize,
    bytes_each: usize,
) -> io::Result<(Vec<PathBuf>, u64)> {
    let mut paths = Vec::with_capacity(files);
    let mut total = 0u64;
    for i in 0..files {
        let text = markdown_doc(0x6D79_636F ^ i as u64, bytes_each);
        let path = dir.join(format!("doc-{i:04}.md"));
        std::fs::write(&path, &text)?;
        total += text.len() as u64;
        paths.push(path);
    }
    Ok((paths, total))
}

/// What one bench measured over all its `iter_custom` calls (warm-up included): how many
/// units (jobs or bytes) in how much time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub units: u64,
    pub elapsed: Duration,
}

impl Totals {
    pub fn add(&mut self, units: u64, elapsed: Duration) {
        self.units += units;
        self.elapsed += elapsed;
    }

    /// Units per second, or `None` if nothing was measured (the bench was filtered out).
    pub fn rate(&self) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64();
        (self.units > 0 && secs > 0.0).then(|| self.units as f64 / secs)
    }
}

/// The median of per-round figures (the upper one of an even count).
///
/// # Panics
///
/// If `v` is empty.
#[must_use]
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `12345.6` → `"12,346"`; below 100 keeps one decimal (`"81.3"`).
pub fn group_digits(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    if x.abs() < 100.0 {
        return format!("{x:.1}");
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if x < 0.0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate for the summary, or `"n/a"` when the bench did not run.
pub fn fmt_rate(rate: Option<f64>) -> String {
    rate.map_or_else(|| "n/a".to_owned(), group_digits)
}

/// `a / b` formatted as `"56.3x"`, or `"n/a"`.
pub fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_deterministic_and_sized() {
        let a = markdown_doc(7, 20_000);
        assert_eq!(a, markdown_doc(7, 20_000));
        assert_ne!(a, markdown_doc(8, 20_000));
        assert!(a.len() >= 20_000 && a.len() < 26_000, "{}", a.len());
        assert!(a.contains("\n## ") && a.contains("```"));
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(45_000.4), "45,000");
        assert_eq!(group_digits(1_234_567.0), "1,234,567");
        assert_eq!(group_digits(800.0), "800");
        assert_eq!(group_digits(81.25), "81.2");
        assert_eq!(fmt_ratio(Some(45_000.0), Some(900.0)), "50.00x");
        assert_eq!(fmt_ratio(Some(96.1), Some(102.0)), "0.94x");
        assert_eq!(fmt_ratio(None, Some(1.0)), "n/a");
    }
}

/// A generated document archive (see [`write_archive`]): each file's relative path and the
/// sentences it holds, so a test can query for one and know where it must be found.
#[derive(Debug, Clone)]
pub struct ArchiveFile {
    pub rel: String,
    pub sentences: Vec<String>,
}

const NOUNS: &[&str] = &[
    "otter",
    "lighthouse",
    "violin",
    "glacier",
    "bakery",
    "tractor",
    "orchid",
    "volcano",
    "submarine",
    "falcon",
    "library",
    "vineyard",
    "telescope",
    "harbor",
    "beekeeper",
    "canyon",
    "locomotive",
    "cathedral",
    "mushroom",
    "satellite",
    "blacksmith",
    "waterfall",
    "tortoise",
    "accordion",
    "windmill",
    "lagoon",
    "astronaut",
    "pottery",
    "avalanche",
    "chessboard",
    "hedgehog",
    "monastery",
    "saxophone",
    "cactus",
    "ferry",
    "quarry",
    "parrot",
    "sawmill",
    "compass",
    "iceberg",
    "pharmacy",
    "kangaroo",
    "carousel",
    "lantern",
    "meadow",
    "typewriter",
    "dolphin",
    "observatory",
    "marathon",
    "bicycle",
];
/// Things in sentences, never subjects (so a sentence points at its own file's subject).
const OBJECTS: &[&str] = &[
    "kettle", "umbrella", "scarf", "ladder", "bucket", "basket", "mirror", "anchor", "candle",
    "blanket", "hammer", "spoon", "ribbon", "helmet", "wagon", "kite", "barrel", "feather",
    "trumpet", "rope",
];
const ADJECTIVES: &[&str] = &[
    "ancient",
    "rusty",
    "silent",
    "golden",
    "frozen",
    "noisy",
    "gentle",
    "crooked",
    "bright",
    "hollow",
    "stubborn",
    "tiny",
    "enormous",
    "curious",
    "patient",
    "damp",
    "elegant",
    "broken",
    "restless",
    "forgotten",
];
const VERBS: &[&str] = &[
    "repairs",
    "paints",
    "guards",
    "measures",
    "follows",
    "feeds",
    "carries",
    "photographs",
    "studies",
    "cleans",
    "sells",
    "borrows",
    "hides",
    "counts",
    "sketches",
    "tunes",
    "polishes",
    "rescues",
    "weighs",
    "visits",
];
const PLACES: &[&str] = &[
    "Lisbon",
    "Oslo",
    "Nairobi",
    "Kyoto",
    "Lima",
    "Tbilisi",
    "Reykjavik",
    "Hanoi",
    "Cusco",
    "Tromsø",
    "Marrakesh",
    "Valparaíso",
    "Tallinn",
    "Hobart",
    "Quebec",
    "Bergen",
    "Zanzibar",
    "Ushuaia",
    "Kraków",
    "Mandalay",
];

/// A sentence about `subject` (each file has its own), in one of several shapes.
fn archive_sentence(rng: &mut Rng, subject: &str) -> String {
    let (adj, noun, verb) = (rng.pick(ADJECTIVES), rng.pick(OBJECTS), rng.pick(VERBS));
    let day = rng.pick(&[
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ]);
    match rng.range(0, 6) {
        0 => format!("Every {day}, {subject} {verb} a {adj} {noun}."),
        1 => format!("Nobody expected {subject} to be so {adj} after the {noun} arrived."),
        2 => format!("In the old records, {subject} {verb} the {noun} twice a year."),
        3 => format!("Visitors say {subject} smells of {noun} and looks {adj} on {day}s."),
        4 => format!("A {adj} {noun} once {verb} {subject}, and the town still talks about it."),
        _ => format!("Since {day}, {subject} has had a {adj} {noun} beside it."),
    }
}

/// Write `files` documents under `dir` in nested folders, cycling through Markdown, text,
/// HTML and PDF, each of 4 to 16 sentences (about 0.3 to 1.3 KB) about a subject of its
/// own (unique for up to 500 files), deterministically from `seed`.
///
/// # Errors
///
/// Any I/O error writing the files.
pub fn write_archive(dir: &Path, files: usize, seed: u64) -> io::Result<Vec<ArchiveFile>> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(files);
    for i in 0..files {
        let folder = format!("shelf-{:02}/box-{}", i % 17, i % 3);
        // Each file is about its own subject: two nouns no other file pairs (for the first
        // 500 files; then subjects repeat).
        let a = i % NOUNS.len();
        let b = (a + 1 + (i / NOUNS.len()) % 10) % NOUNS.len();
        let place = rng.pick(PLACES);
        let subject = format!("the {} and the {} of {place}", NOUNS[a], NOUNS[b]);
        let n = rng.range(4, 17);
        let sentences: Vec<String> = (0..n)
            .map(|_| archive_sentence(&mut rng, &subject))
            .collect();
        let title = format!("Notes {i} on {subject}");
        let (ext, bytes) = match i % 4 {
            0 => {
                let mut s = format!("# {title}\n\n");
                for (j, p) in sentences.chunks(4).enumerate() {
                    let _ = write!(s, "## Part {}\n\n{}\n\n", j + 1, p.join(" "));
                }
                ("md", s.into_bytes())
            }
            1 => (
                "txt",
                format!("{title}\n\n{}\n", sentences.join("\n")).into_bytes(),
            ),
            2 => {
                let mut s = format!(
                    "<!doctype html><html><head><title>{title}</title><style>p {{ margin: 0 }}</style></head><body><h1>{title}</h1>"
                );
                for p in sentences.chunks(3) {
                    let _ = write!(s, "<p>{}</p>", p.join(" "));
                }
                s.push_str("</body></html>\n");
                ("html", s.into_bytes())
            }
            _ => ("pdf", pdf(&title, &sentences)?),
        };
        let rel = format!("{folder}/doc-{i:04}.{ext}");
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
        out.push(ArchiveFile { rel, sentences });
    }
    Ok(out)
}

/// A one-page PDF (Helvetica, one line per sentence).
fn pdf(title: &str, lines: &[String]) -> io::Result<Vec<u8>> {
    use lopdf::content::{Content, Operation};
    use lopdf::{Document, Object, Stream, dictionary};
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
    });
    let resources_id = doc.add_object(dictionary! {
        "Font" => dictionary! { "F1" => font_id },
    });
    let mut ops = vec![
        Operation::new("BT", vec![]),
        Operation::new("Tf", vec!["F1".into(), 9.into()]),
        Operation::new("TL", vec![12.into()]),
        Operation::new("Td", vec![40.into(), 800.into()]),
        Operation::new("Tj", vec![Object::string_literal(ascii(title))]),
    ];
    for l in lines {
        ops.push(Operation::new("T*", vec![]));
        ops.push(Operation::new("Tj", vec![Object::string_literal(ascii(l))]));
    }
    ops.push(Operation::new("ET", vec![]));
    let content = Content { operations: ops };
    let encoded = content.encode().map_err(io::Error::other)?;
    let content_id = doc.add_object(Stream::new(dictionary! {}, encoded));
    let page_id = doc.add_object(dictionary! {
        "Type" => "Page",
        "Parent" => pages_id,
        "Contents" => content_id,
    });
    let pages = dictionary! {
        "Type" => "Pages",
        "Kids" => vec![page_id.into()],
        "Count" => 1,
        "Resources" => resources_id,
        "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
    };
    doc.objects.insert(pages_id, Object::Dictionary(pages));
    let catalog_id = doc.add_object(dictionary! {
        "Type" => "Catalog",
        "Pages" => pages_id,
    });
    doc.trailer.set("Root", catalog_id);
    doc.compress();
    let mut out = Vec::new();
    doc.save_to(&mut out).map_err(io::Error::other)?;
    Ok(out)
}

/// Standard Type1 fonts in a plain PDF string are Latin-1 at best: keep to ASCII.
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'ø' => 'o',
            'í' => 'i',
            'ó' => 'o',
            c if c.is_ascii() => c,
            _ => '?',
        })
        .collect()
}

/// The home ./setup.sh filled (`MYCO_HOME`, else `~/.myco`): ONNX Runtime and the default
/// embedding model.
pub fn real_home() -> PathBuf {
    std::env::var_os("MYCO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".myco")
        })
}

/// A fresh node home `root/name` linking the real home's ONNX Runtime and embedding model
/// `model`, as ./setup.sh leaves a home.
pub fn linked_home(root: &Path, name: &str, model: &str) -> io::Result<PathBuf> {
    let home = root.join(name);
    let real = real_home();
    if !real.join("models").join(model).join("model.onnx").is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no {model} under {}: run ./setup.sh first", real.display()),
        ));
    }
    std::fs::create_dir_all(home.join("models"))?;
    std::fs::create_dir_all(home.join("lib"))?;
    std::os::unix::fs::symlink(
        real.join("lib/libonnxruntime.so"),
        home.join("lib/libonnxruntime.so"),
    )?;
    std::os::unix::fs::symlink(
        real.join("models").join(model),
        home.join("models").join(model),
    )?;
    Ok(home)
}

/// Write `pages` HTML pages of a generated documentation site under `dir` (`part-NN/page-NNNN.html`),
/// deterministically from `seed`. Each page is about a subject of its own (unique for up to
/// 500 pages) and holds 12 to 30 sentences: about its subject, or technical word salad of the
/// kind a manual repeats across pages. Around the text, the chrome every page of a real site
/// shares: a header with the site's name and theme picker, a sidebar listing every part, a
/// notice box, previous/next links and a footer. Returns each page with its sentences.
///
/// # Errors
///
/// Any I/O error writing the files.
pub fn write_site(dir: &Path, pages: usize, seed: u64) -> io::Result<Vec<ArchiveFile>> {
    let mut rng = Rng::new(seed);
    let parts = pages.div_ceil(10);
    let mut sidebar = String::from("<nav class=\"sidebar\"><ol class=\"chapter\">");
    for p in 0..parts {
        let _ = write!(
            sidebar,
            "<li><a href=\"../part-{p:02}/index.html\">Part {p}: {} {}</a></li>",
            NOUNS[p % NOUNS.len()],
            PLACES[p % PLACES.len()]
        );
    }
    sidebar.push_str("</ol></nav>");
    let header = "<header id=\"menu-bar\"><h1 class=\"menu-title\">The Swarm Handbook</h1>\
        <ul id=\"theme-list\"><li>Light</li><li>Rust</li><li>Coal</li><li>Navy</li><li>Ayu</li></ul>\
        <div id=\"search-wrapper\">Search the handbook</div></header>";
    let notice = "<div class=\"notice\"><p>This handbook describes release 2 of the swarm. \
        Press ? to show the keyboard shortcuts, S to search, and the arrow keys to turn pages.</p></div>";
    let footer = "<footer><p>Copyright 2026 the swarm authors. Licensed under the Apache \
        License 2.0. Built with a static site generator.</p></footer>";
    let mut out = Vec::with_capacity(pages);
    for i in 0..pages {
        let a = i % NOUNS.len();
        let b = (a + 1 + (i / NOUNS.len()) % 10) % NOUNS.len();
        let place = rng.pick(PLACES);
        let subject = format!("the {} and the {} of {place}", NOUNS[a], NOUNS[b]);
        let n = rng.range(12, 31);
        let sentences: Vec<String> = (0..n)
            .map(|_| {
                if rng.chance(60) {
                    archive_sentence(&mut rng, &subject)
                } else {
                    let mut s = String::new();
                    sentence(&mut rng, &mut s);
                    s
                }
            })
            .collect();
        let title = format!("Notes {i} on {subject}");
        let mut s = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} - The Swarm Handbook</title>\
             <link rel=\"stylesheet\" href=\"../book.css\"></head><body>{header}{sidebar}\
             <main><article>{notice}<h1>{title}</h1>"
        );
        for (j, p) in sentences.chunks(4).enumerate() {
            let _ = write!(s, "<h2>Section {}</h2><p>{}</p>", j + 1, p.join(" "));
        }
        let _ = writeln!(
            s,
            "</article></main><div class=\"nav-wrapper\" role=\"navigation\">\
             <a href=\"page-{:04}.html\">Previous</a> <a href=\"page-{:04}.html\">Next</a></div>\
             {footer}<script src=\"../book.js\"></script></body></html>",
            i.saturating_sub(1),
            i + 1
        );
        let rel = format!("part-{:02}/page-{i:04}.html", i / 10);
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, s)?;
        out.push(ArchiveFile { rel, sentences });
    }
    Ok(out)
}

/// The `myco` binary of the bench's profile, built first (`cargo build --release -p myco`):
/// the benches that run node processes run this one.
///
/// # Panics
///
/// If the build fails.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub fn myco_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", "myco", "--bin", "myco"])
        .status()
        .unwrap();
    assert!(status.success(), "building the myco binary failed");
    dir.join("myco")
}

/// A `myco --json node` process a bench started, killed when dropped.
#[derive(Debug)]
pub struct NodeProc {
    pub child: std::process::Child,
    pub api: String,
    pub cluster: String,
}

impl NodeProc {
    /// Start `cmd` (a `myco --json ... node` command, its stdout piped) and read the
    /// addresses it prints first.
    ///
    /// # Panics
    ///
    /// If it does not start or print them.
    #[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    pub fn spawn(cmd: &mut std::process::Command) -> NodeProc {
        use std::io::BufRead;
        let mut child = cmd.spawn().expect("start a node process");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        NodeProc {
            child,
            api: v["api"].as_str().unwrap().to_owned(),
            cluster: v["cluster"].as_str().unwrap().to_owned(),
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
