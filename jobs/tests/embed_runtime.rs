//! A wrong ONNX Runtime library is a clear error naming the file and the fix, not a panic.
//! (A test binary of its own: the runtime is loaded once per process.)
#![cfg(feature = "embed")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myco_jobs::embed::{EmbedError, EmbedModel, init_runtime_at};

#[test]
fn a_wrong_runtime_library_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"this is not a shared library").unwrap();
    let e = init_runtime_at(&fake).unwrap_err();
    assert!(matches!(e, EmbedError::RuntimeBroken { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("libonnxruntime.so") && text.contains("setup.sh"),
        "{text}"
    );

    // Loading a model then fails the same way, and names the library again.
    let again = EmbedModel::load(dir.path(), dir.path()).unwrap_err();
    assert_eq!(again, e);

    // A missing library names where it looked.
    let missing = myco_jobs::embed::init_runtime(&dir.path().join("nowhere"));
    match missing {
        Err(EmbedError::RuntimeMissing { looked }) => {
            assert!(looked.contains("nowhere"), "{looked}")
        }
        // MYCO_ORT_LIB / ORT_DYLIB_PATH set in the environment: the cached error stands.
        other => assert!(other.is_err(), "{other:?}"),
    }
}
