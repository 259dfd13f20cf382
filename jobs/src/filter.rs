//! Query filters: which chunks a query may return, by their file's source path (a glob),
//! type (extension) and modification time, as Chroma's `where`, Qdrant's payload filters or
//! LanceDB's `where` let one narrow a search. A filter is turned into the set of rows it
//! allows before anything is ranked, and every ranking (the vector scan, the HNSW graph and
//! BM25) only ever considers those rows: a filter never leaves fewer than `k` hits where
//! enough chunks match.
//!
//! This file must not know about the queue, HTTP or any async runtime.

use std::sync::Arc;

use glob::{MatchOptions, Pattern};
use serde::{Deserialize, Serialize};

/// The rows of a collection a query may return (`allowed[row]`).
pub type Allowed = Arc<Vec<bool>>;

/// What a query's hits must come from. Empty: everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// A glob on the file's path relative to the archive root: `*` and `?` stay within one
    /// directory, `**` crosses any number (`guide/**/*.md`, `**/api-*.html`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// File types, by extension without the dot (`md`, `html`, `pdf`, `txt`): any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Only files last modified at or after this (Unix time, ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_after_ms: Option<u64>,
    /// Only files last modified before this (Unix time, ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_before_ms: Option<u64>,
}

/// A filter ready to test files with ([`Filter::compile`]).
#[derive(Debug)]
pub struct Compiled {
    source: Option<Pattern>,
    types: Vec<String>,
    after: Option<u64>,
    before: Option<u64>,
}

const GLOB: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Filter {
    /// Whether it lets every chunk through.
    pub fn is_empty(&self) -> bool {
        self.source.is_none()
            && self.types.is_empty()
            && self.modified_after_ms.is_none()
            && self.modified_before_ms.is_none()
    }

    /// The filter, checked: a malformed glob, an empty type or a time range that holds
    /// nothing is the caller's mistake, and says so.
    ///
    /// # Errors
    ///
    /// What is wrong, with how to write it instead.
    pub fn compile(&self) -> Result<Compiled, String> {
        let source = match &self.source {
            None => None,
            Some(g) => Some(Pattern::new(g).map_err(|e| {
                format!(
                    "the source filter `{g}` is not a glob ({e}); write it like `guide/**/*.md`"
                )
            })?),
        };
        let mut types = Vec::with_capacity(self.types.len());
        for t in &self.types {
            let t = t.trim().trim_start_matches('.').to_ascii_lowercase();
            if t.is_empty() {
                return Err(
                    "an empty file type in the filter; name extensions like `md` or `pdf`".into(),
                );
            }
            types.push(t);
        }
        if let (Some(a), Some(b)) = (self.modified_after_ms, self.modified_before_ms)
            && a >= b
        {
            return Err(
                "modified_after is not before modified_before: no file can match; swap them?"
                    .into(),
            );
        }
        Ok(Compiled {
            source,
            types,
            after: self.modified_after_ms,
            before: self.modified_before_ms,
        })
    }
}

impl Compiled {
    /// Whether the chunks of the file at `path` (relative to the archive root), last
    /// modified at `modified_ms`, pass. A file whose modification time the collection does
    /// not record (written before myco recorded it) never passes a time condition.
    pub fn matches(&self, path: &str, modified_ms: Option<u64>) -> bool {
        if let Some(p) = &self.source
            && !p.matches_with(path, GLOB)
        {
            return false;
        }
        if !self.types.is_empty() {
            let ext = std::path::Path::new(path)
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            if !self.types.contains(&ext) {
                return false;
            }
        }
        if self.after.is_some() || self.before.is_some() {
            let Some(t) = modified_ms else {
                return false;
            };
            if self.after.is_some_and(|a| t < a) || self.before.is_some_and(|b| t >= b) {
                return false;
            }
        }
        true
    }
}

/// A time as the CLI takes it, in Unix ms: an RFC 3339 date (`2026-11-01`, midnight UTC) or
/// date and time (`2026-11-01T08:30:00Z`), or an age before `now_ms` (`7d`, `36h`, `90min`).
///
/// # Errors
///
/// What it expected, when `s` is neither.
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    let date_time = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(&date_time) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .map_err(|_| format!("`{s}` is before 1970"));
    }
    if let Ok(age) = humantime::parse_duration(s) {
        return Ok(now_ms.saturating_sub(age.as_millis() as u64));
    }
    Err(format!(
        "`{s}` is neither a date (2026-11-01, 2026-11-01T08:30:00Z) nor an age (7d, 36h)"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn passing(f: Filter) -> Vec<&'static str> {
        let files: [(&str, Option<u64>); 4] = [
            ("README.md", Some(1_000)),
            ("guide/intro.md", Some(2_000)),
            ("guide/deep/api.HTML", Some(3_000)),
            ("notes.txt", None),
        ];
        let f = f.compile().unwrap();
        files
            .into_iter()
            .filter(|(p, t)| f.matches(p, *t))
            .map(|(p, _)| p)
            .collect()
    }

    #[test]
    fn globs_types_and_times_select_their_files() {
        assert_eq!(passing(Filter::default()).len(), 4);
        let glob = |g: &str| Filter {
            source: Some(g.into()),
            ..Filter::default()
        };
        assert_eq!(passing(glob("guide/*")), ["guide/intro.md"]);
        assert_eq!(
            passing(glob("guide/**")),
            ["guide/intro.md", "guide/deep/api.HTML"]
        );
        assert_eq!(passing(glob("**/*.md")), ["README.md", "guide/intro.md"]);
        assert_eq!(passing(glob("*.md")), ["README.md"]);
        let types = Filter {
            types: vec!["html".into(), ".TXT".into()],
            ..Filter::default()
        };
        assert_eq!(passing(types), ["guide/deep/api.HTML", "notes.txt"]);
        // After is inclusive, before exclusive; a file of unknown time never passes.
        let time = Filter {
            modified_after_ms: Some(2_000),
            modified_before_ms: Some(3_000),
            ..Filter::default()
        };
        assert_eq!(passing(time), ["guide/intro.md"]);
        let both = Filter {
            source: Some("guide/**".into()),
            modified_after_ms: Some(2_500),
            ..Filter::default()
        };
        assert_eq!(passing(both), ["guide/deep/api.HTML"]);
    }

    #[test]
    fn a_filter_that_cannot_hold_anything_says_why() {
        let bad = |f: Filter| f.compile().unwrap_err();
        assert!(
            bad(Filter {
                source: Some("guide/[".into()),
                ..Filter::default()
            })
            .contains("not a glob")
        );
        assert!(
            bad(Filter {
                types: vec![" ".into()],
                ..Filter::default()
            })
            .contains("empty file type")
        );
        assert!(
            bad(Filter {
                modified_after_ms: Some(5),
                modified_before_ms: Some(5),
                ..Filter::default()
            })
            .contains("swap")
        );
    }

    #[test]
    fn times_are_dates_date_times_or_ages() {
        assert_eq!(parse_time("1970-01-02", 0).unwrap(), 86_400_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z", 0).unwrap(), 1_000);
        assert_eq!(parse_time("7d", 10 * 86_400_000).unwrap(), 3 * 86_400_000);
        assert!(
            parse_time("last tuesday", 0)
                .unwrap_err()
                .contains("neither")
        );
    }
}
