//! OpenAI's Batch API on a real node, driven by the official `openai` Python package
//! (installed by ./setup.sh): chat and embedding batches from uploaded files, their output
//! against the same requests one by one, a cancel mid-run, and a file with bad lines
//! (`clients/batches.py` says what each check asks).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{NodeProc, linked_home};
use myco_jobs::llm::gguf::TinyLlama;

#[test]
fn the_openai_package_runs_batches_on_a_node() {
    let clients = common::pyclients_dir();
    assert!(
        clients.join("openai").is_dir(),
        "the Python clients are not in {}: run ./setup.sh",
        clients.display()
    );
    let root = tempfile::tempdir().unwrap();
    let home = linked_home(root.path(), "home", true);
    TinyLlama::default()
        .write(&home.join("models/tiny.gguf"), true)
        .unwrap();
    let node = NodeProc::start(&home, &["--workers", "1"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/batches.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(node.url("/v1"))
        .arg("tiny")
        .arg(common::MODEL)
        .env("PYTHONPATH", &clients)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the batch checks failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("all batch checks ok"), "{stdout}");
}
