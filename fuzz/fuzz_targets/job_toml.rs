//! A job file as `myco submit` and `POST /api/jobs` read it: any text gives a spec or a
//! list of problems, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use myco_jobs::JobSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = JobSpec::parse(text, Path::new("/nonexistent-fuzz-base"));
});
