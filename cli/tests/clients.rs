//! The real OpenAI clients against a real node: the `openai` Python package and LangChain's
//! `OpenAIEmbeddings` and `ChatOpenAI`, pinned and installed by ./setup.sh from PyPI, drive
//! `/v1` on the tiny GGUF and the default embedding model (`clients/openai_clients.py` says
//! what each check asks).
//!
//! LangChain's embeddings count and send OpenAI's `cl100k_base` token ids, and its tokenizer
//! (tiktoken) downloads that vocabulary on first use. There is no download here: the test
//! writes the file tiktoken would fetch from the copy bundled in the tiktoken-rs crate,
//! byte for byte (tiktoken checks its SHA-256).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{NodeProc, linked_home};
use myco_jobs::llm::gguf::TinyLlama;

/// tiktoken's `cl100k_base.tiktoken` (a base64 token and its rank per line), rebuilt from
/// tiktoken-rs's ranks, under the cache name tiktoken looks for (the SHA-1 of its URL).
fn write_cl100k(cache: &Path) {
    let bpe = tiktoken_rs::cl100k_base_singleton();
    let mut file = String::new();
    use base64::Engine as _;
    for rank in 0..100_256u32 {
        let bytes = bpe.decode_bytes(&[rank]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        file.push_str(&format!("{b64} {rank}\n"));
    }
    std::fs::create_dir_all(cache).unwrap();
    // sha1("https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken")
    let name = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4";
    std::fs::write(cache.join(name), file).unwrap();
}

#[test]
fn the_openai_and_langchain_clients_work_against_a_node() {
    let clients = common::pyclients_dir();
    assert!(
        clients.join("openai").is_dir() && clients.join("langchain_openai").is_dir(),
        "the Python clients are not in {}: run ./setup.sh",
        clients.display()
    );
    let root = tempfile::tempdir().unwrap();
    let home = linked_home(root.path(), "home", true);
    // Trained (so it says) for 2048 positions: the prompt cache check sends a long prompt.
    TinyLlama {
        n_ctx: 2048,
        ..TinyLlama::default()
    }
    .write(&home.join("models/tiny.gguf"), true)
    .unwrap();
    let tiktoken = root.path().join("tiktoken");
    write_cl100k(&tiktoken);
    let node = NodeProc::start(&home, &["--workers", "1"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/openai_clients.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(node.url("/v1"))
        .arg("tiny")
        .arg(common::MODEL)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../jobs/tests/chat_templates/Qwen-Qwen2.5-7B-Instruct.jinja"),
        )
        .env("PYTHONPATH", &clients)
        .env("TIKTOKEN_CACHE_DIR", &tiktoken)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the clients failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("all clients ok"), "{stdout}");
}
