//! The decoders of what a node stores, fed what a damaged or newer file could hold: the
//! first byte picks a job record, an outbox entry or a result, the rest is the stored value
//! (format tag and version, then bincode). Nothing may panic; a value of a newer format or
//! one that does not decode is an `Err` naming what to do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use myco_runtime::queue::{decode, decode_entry, result_body};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, value)) = data.split_first() else {
        return;
    };
    match pick % 3 {
        0 => {
            let _ = decode(value);
        }
        1 => {
            let _ = decode_entry(value);
        }
        _ => {
            let _ = result_body(value);
        }
    }
});
