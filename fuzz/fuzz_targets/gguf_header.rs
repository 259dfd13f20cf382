//! The GGUF header reader (what `/v1/models`, job validation and planning read of a model
//! file) on any bytes: a header or an error; every length is bounded, so no huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = myco_jobs::model::parse_gguf_header(data, "fuzz.gguf");
});
