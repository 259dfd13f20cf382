//! Fuzzing the job-file parser, the edge where outside input enters: arbitrary text and
//! mutations of valid files must never panic, and every refusal must name at least one
//! problem with a message. (A stable-toolchain stand-in for a cargo-fuzz target: proptest
//! drives the same entry point with random and structured inputs.)
#![allow(clippy::unwrap_used)]

use std::path::Path;

use myco_jobs::JobSpec;
use proptest::prelude::*;

const VALID: &str = "version = 1\nkind = \"chunk\"\npriority = 5\nmax_attempts = 3\n\
timeout = \"10m\"\nidempotency_key = \"k\"\n[chunk]\ninput = \"src\"\nmax_tokens = 64\noverlap = 8\n";

fn check(text: &str) {
    match JobSpec::parse(text, Path::new(env!("CARGO_MANIFEST_DIR"))) {
        Ok(spec) => {
            assert!(spec.max_attempts >= 1);
            assert!(!spec.timeout.is_zero());
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "a refusal names its problems");
            for p in &e.problems {
                assert!(!p.message.is_empty(), "{e}");
            }
            assert!(e.to_string().starts_with("invalid job spec"));
        }
    }
}

#[test]
fn the_valid_spec_parses() {
    JobSpec::parse(VALID, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        check(&text);
    }

    #[test]
    fn mutated_specs_never_panic(
        cut in 0..VALID.len(),
        insert in "[a-z_=\\[\\]\"0-9. \n-]{0,12}",
        drop in 0usize..8,
    ) {
        let mut text = VALID.to_owned();
        let at = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let end = (at + drop).min(text.len());
        text.replace_range(at..end, &insert);
        check(&text);
    }

    #[test]
    fn field_values_of_any_type_are_refused_cleanly(
        field in prop::sample::select(vec!["version", "kind", "priority", "max_attempts", "timeout", "idempotency_key"]),
        value in prop::sample::select(vec!["-1", "0", "99999999999", "\"x\"", "true", "[]", "{}", "1.5", "\"\"", "\"1s\""]),
    ) {
        let text = VALID
            .lines()
            .map(|l| if l.starts_with(&format!("{field} =")) { format!("{field} = {value}") } else { l.to_owned() })
            .collect::<Vec<_>>()
            .join("\n");
        check(&text);
    }
}
