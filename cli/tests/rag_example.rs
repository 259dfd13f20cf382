//! `examples/rag.py` end to end: a real node (the default embedding model and the tiny GGUF),
//! a collection built by an archive job through the CLI, and the example asking a question
//! whose answer a page holds. The tiny model's words are random, so what is checked is the
//! retrieval and the plumbing: the right page's passage is in the prompt as [1], an answer
//! streams, the sources are listed, and bad input exits non-zero with what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{NodeProc, linked_home, myco};
use myco_benches::write_archive;
use myco_jobs::llm::gguf::TinyLlama;

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rag.py")
}

#[test]
fn the_rag_example_retrieves_the_page_and_streams_an_answer_citing_it() {
    let root = tempfile::tempdir().unwrap();
    let home = linked_home(root.path(), "home", true);
    // Trained (so it says) for the default context of 4096: the retrieved pages are long.
    TinyLlama {
        n_ctx: 4096,
        ..TinyLlama::default()
    }
    .write(&home.join("models/tiny.gguf"), true)
    .unwrap();
    let archive = root.path().join("archive");
    let files = write_archive(&archive, 30, 8).unwrap();
    let job = root.path().join("archive.toml");
    std::fs::write(
        &job,
        format!(
            "version = 1\nkind = \"archive\"\n[archive]\ninput = {:?}\ncollection = \"docs\"\n",
            archive.display().to_string()
        ),
    )
    .unwrap();
    let node = NodeProc::start(&home, &["--workers", "1"]);
    let out = myco(&home)
        .args(["submit", "--wait"])
        .arg(&job)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let page = &files[11];
    let rag = |args: &[&str]| {
        Command::new("python3")
            .arg(example())
            .args(args)
            .arg("--home")
            .arg(&home)
            .env_remove("MYCO_API")
            .env_remove("MYCO_API_TOKEN")
            .output()
            .unwrap()
    };
    let out = rag(&[
        &page.sentences[0],
        "-c",
        "docs",
        "-m",
        "tiny",
        "--max-tokens",
        "16",
        // The tiny model's vocabulary is nearly bytes: four passages overflow its context.
        "-k",
        "2",
        "--show-prompt",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let first = format!("[1] {}", page.rel);
    assert!(
        stderr.contains(&first),
        "the page is not passage [1]:\n{stderr}"
    );
    assert!(stderr.contains(&page.sentences[0]), "{stderr}");
    let sources = stdout
        .split("Sources:")
        .nth(1)
        .expect("the sources are listed");
    assert!(sources.contains(&first), "{stdout}");
    let answer = stdout.split("Sources:").next().unwrap();
    assert!(!answer.trim().is_empty(), "no answer streamed: {stdout}");

    // A model no node holds, a collection that is not there: exit 2 naming it.
    let out = rag(&["what?", "-c", "docs", "-m", "nonexistent"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent"));
    let out = rag(&["what?", "-c", "missing", "-m", "tiny"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    drop(node);

    // No node on the home: exit 3 with the fix.
    let out = rag(&["what?", "-c", "docs", "-m", "tiny"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("myco node"));
}
