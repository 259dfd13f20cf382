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

/// A map job (`examples/summarize.toml`, with the test's tiny model) over a copy of the
/// example archive: `myco run` prints one answer per file, keyed by its path.
#[test]
fn a_map_job_over_the_example_archive_answers_every_file() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(home.join("models")).unwrap();
    TinyLlama {
        n_ctx: 2048,
        ..TinyLlama::default()
    }
    .write(&home.join("models/tiny.gguf"), true)
    .unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let work = root.path().join("work");
    let mut files = Vec::new();
    for e in walk(&examples.join("archive")) {
        let rel = e.strip_prefix(&examples).unwrap().to_path_buf();
        std::fs::create_dir_all(work.join(&rel).parent().unwrap()).unwrap();
        std::fs::copy(&e, work.join(&rel)).unwrap();
        files.push(rel.display().to_string());
    }
    files.sort();
    let toml = std::fs::read_to_string(examples.join("summarize.toml"))
        .unwrap()
        .replace("qwen2.5-0.5b-instruct-q4_k_m.gguf", "tiny.gguf")
        .replace("max_tokens = 128", "max_tokens = 8\nn_ctx = 1024");
    assert!(toml.contains("tiny.gguf"), "the example names its model");
    std::fs::write(work.join("summarize.toml"), toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_myco"))
        .arg("--home")
        .arg(&home)
        .args(["run", "summarize.toml"])
        .current_dir(&work)
        .env("MYCO_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "myco run failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut keys: Vec<String> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    assert_eq!(
        keys, files,
        "one answer per file, keyed by its path:\n{stdout}"
    );
    for l in &lines {
        assert_eq!(l["response"]["status_code"], 200, "{l}");
        assert!(
            l["response"]["body"]["choices"][0]["message"]["content"].is_string(),
            "{l}"
        );
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
