//! Shared helpers for the benches: a deterministic Markdown corpus generator, a running
//! total of what a bench measured (so each goal can be compared with its baseline in the
//! same run), and number formatting for the summary table.
//!
//! Std only, no timing assertions, no myco types: the benches themselves live in `queue.rs`.

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
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}x", a / b),
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
        assert_eq!(fmt_ratio(Some(45_000.0), Some(900.0)), "50.0x");
        assert_eq!(fmt_ratio(None, Some(1.0)), "n/a");
    }
}
