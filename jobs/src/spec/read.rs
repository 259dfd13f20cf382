//! Reading `job.toml` text into a [`JobFile`], and TOML and serde errors into a
//! [`SpecError`] naming the field and the line.
//!
//! It must not validate anything beyond types (that is [`JobFile::validate_in`]).

use super::file::JobFile;
use super::problem::SpecError;

/// Parse `text` as a job file (types only).
pub fn parse_file(text: &str) -> Result<JobFile, SpecError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_problem(text, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        toml_problem(text, &path, e.inner())
    })
}

fn toml_problem(text: &str, field: &str, e: &toml::de::Error) -> SpecError {
    let message = e.message().trim().to_owned();
    let at = e
        .span()
        .map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        })
        .unwrap_or_default();
    let hint = if message.contains("unknown field") {
        "remove the field or fix its spelling; see examples/*.toml for every field"
    } else if message.contains("missing field") {
        "add the field; `version = 1` and `kind` are required"
    } else if message.contains("invalid type") {
        "give the field a value of the expected type"
    } else if message.contains("unknown variant") {
        "use one of the listed values"
    } else {
        "fix the TOML syntax at the place shown"
    };
    SpecError::one(field, format!("{message}{at}"), hint)
}
