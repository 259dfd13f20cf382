//! Infer jobs through `myco run` on the tiny llama GGUF (real llama.cpp): greedy runs give
//! the same tokens every time, and a job llama.cpp cannot run fails once, fatally, with the
//! reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::myco;
use myco_jobs::llm::gguf::TinyLlama;

fn job(dir: &Path, name: &str, model: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "version = 1\nkind = \"infer\"\nmax_attempts = 3\n[infer]\nmodel = {:?}\ntemperature = 0.0\nrepeat_penalty = 1.0\nthreads = 1\nn_ctx = 256\nmax_tokens = 16\n{body}",
            model.display().to_string()
        ),
    )
    .unwrap();
    path
}

fn run(home: &Path, job: &Path) -> (Option<i32>, String, String) {
    let out = myco(home)
        .args(["run", "--no-discovery"])
        .arg(job)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn greedy_infer_jobs_repeat_their_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    TinyLlama::default().write(&model, true).unwrap();
    let job = job(dir.path(), "ask.toml", &model, "prompt = \"hello swarm\"\n");
    let mut seen = Vec::new();
    for i in 0..2 {
        let (code, stdout, stderr) = run(&dir.path().join(format!("home{i}")), &job);
        assert_eq!(code, Some(0), "{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let tokens = v["tokens"].as_array().unwrap().clone();
        assert!(!tokens.is_empty(), "{v}");
        assert_eq!(v["completion_tokens"], tokens.len());
        assert!(v["prompt_tokens"].as_u64().unwrap() >= 3);
        seen.push(tokens);
    }
    assert_eq!(seen[0], seen[1], "the same tokens on every run");
}

#[test]
fn a_model_without_a_chat_template_chats_through_a_built_in_one_and_a_bad_name_fails_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("plain.gguf");
    TinyLlama::default().write(&model, false).unwrap();
    let chat = "messages = [{ role = \"user\", content = \"hello\" }]\n";
    let home = dir.path().join("home");
    let (code, stdout, stderr) = run(&home, &job(dir.path(), "chat.toml", &model, chat));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"tokens\""), "{stdout}");

    let named = format!("{chat}chat_template = \"no-such-template\"\n");
    let (code, _, stderr) = run(&home, &job(dir.path(), "named.toml", &model, &named));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no-such-template"), "{stderr}");
    assert!(stderr.contains("plain.gguf"), "{stderr}");

    // A missing model is refused at submit, naming the field.
    let job = job_missing(dir.path());
    let (code, _, stderr) = run(&home, &job);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("infer.model"), "{stderr}");
}

fn job_missing(dir: &Path) -> std::path::PathBuf {
    job(
        dir,
        "missing.toml",
        &dir.join("no-such.gguf"),
        "prompt = \"hi\"\n",
    )
}
