//! The chunk extractors on any bytes: the first byte picks HTML or PDF. Text comes out, or a
//! `ChunkError` naming the file; never a panic or a hang.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use myco_jobs::chunk::{Format, extract_bytes};

/// pdf-extract panics on some malformed files, and myco's extractor catches that and
/// reports the PDF as unreadable (`ChunkError::BadPdf`): a handled error, not a crash. So
/// the process-wide hook (libFuzzer's aborts at any panic, even a caught one) is replaced by
/// a quiet one; a panic that escapes the extractor still ends the run, as libfuzzer-sys
/// aborts when the target itself unwinds.
static QUIET_PANICS: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    QUIET_PANICS.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let format = if pick % 2 == 0 {
        Format::Html
    } else {
        Format::Pdf
    };
    let _ = extract_bytes(Path::new("fuzz"), format, bytes);
});
