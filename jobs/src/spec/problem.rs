//! What is wrong with a job file: one [`Problem`] (field path, message, hint), every problem
//! of a file as a [`SpecError`], and [`Problems`], the list validation fills.
//!
//! A leaf: nothing here parses, validates or knows a job kind.

use serde::{Deserialize, Serialize};

/// One thing wrong with a job file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Dotted field path (`chunk.max_tokens`), or empty for the file as a whole.
    pub field: String,
    pub message: String,
    pub hint: String,
}

impl Problem {
    pub fn new(field: &str, message: impl Into<String>, hint: impl Into<String>) -> Problem {
        Problem {
            field: field.to_owned(),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// Every problem found in a job file. Display prints one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{}", render(.problems))]
pub struct SpecError {
    pub problems: Vec<Problem>,
}

fn render(problems: &[Problem]) -> String {
    let mut out = String::from("invalid job spec:");
    for p in problems {
        let field = if p.field.is_empty() {
            "(file)"
        } else {
            &p.field
        };
        out.push_str(&format!("\n  - {field}: {}", p.message));
        if !p.hint.is_empty() {
            out.push_str(&format!("\n    hint: {}", p.hint));
        }
    }
    out
}

impl SpecError {
    /// A spec error of one problem.
    pub fn one(field: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        SpecError {
            problems: vec![Problem::new(field, message, hint)],
        }
    }
}

/// The problems found so far while a file is checked, in the order they were found.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Record a problem with `field`.
    pub fn bad(&mut self, field: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.0.push(Problem::new(field, message, hint));
    }

    /// Record problems found elsewhere.
    pub fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.0.extend(problems);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

/// `prefix.name`, or `name` alone for an empty prefix: a field path.
pub fn field(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}
