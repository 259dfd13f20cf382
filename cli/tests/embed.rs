//! Embed jobs end to end through `myco run` (embedded node, real ONNX Runtime and model
//! from ./setup.sh), checked against the independent reference vectors; a missing model is
//! refused at submit with the field and the fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{linked_home, myco, real_home};

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt()
        * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

#[test]
fn myco_run_embeds_texts_like_the_reference() {
    let model = real_home().join("models/all-MiniLM-L6-v2");
    assert!(model.join("model.onnx").is_file(), "run ./setup.sh first");
    let reference: serde_json::Value = serde_json::from_str(include_str!(
        "../../jobs/tests/fixtures/minilm_reference.json"
    ))
    .unwrap();
    let items = reference["items"].as_array().unwrap();
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    let dir = tempfile::tempdir().unwrap();
    // The node's home gets the runtime library; the job names the model by its path.
    let home = linked_home(dir.path(), "home", false);
    let job = dir.path().join("embed.toml");
    std::fs::write(
        &job,
        format!(
            "version = 1\nkind = \"embed\"\n[embed]\nmodel = {:?}\ntexts = {}\nbatch_tokens = 40\n",
            model.display().to_string(),
            serde_json::to_string(&texts).unwrap()
        ),
    )
    .unwrap();
    let out = myco(&home).args(["run"]).arg(&job).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), texts.len());
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i);
        let c = cosine(&floats(&line["vector"]), &floats(&items[i]["vector"]));
        assert!(c >= 0.9999, "text {i}: cosine {c}");
    }
}

/// An embed job over a chunk job's result: one vector per chunk, each linked to its chunk.
#[test]
fn chunk_results_feed_an_embed_job() {
    let model = real_home().join("models/all-MiniLM-L6-v2");
    let dir = tempfile::tempdir().unwrap();
    let home = linked_home(dir.path(), "home", false);
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("a.md"),
        "# A\n\nThe otter repairs a kettle.\n\n## B\n\nThe falcon guards a ladder on Mondays.\n",
    )
    .unwrap();
    std::fs::write(docs.join("b.txt"), "Plain notes about a lighthouse.\n").unwrap();
    std::fs::write(
        dir.path().join("chunk.toml"),
        "version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"docs\"\nmax_tokens = 40\noverlap = 0\n",
    )
    .unwrap();
    let chunks = dir.path().join("chunks.jsonl");
    let out = myco(&home)
        .args(["run", "--out"])
        .arg(&chunks)
        .arg(dir.path().join("chunk.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chunk_lines: Vec<serde_json::Value> = std::fs::read_to_string(&chunks)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(chunk_lines.len() >= 3, "{chunk_lines:?}");
    std::fs::write(
        dir.path().join("embed.toml"),
        format!(
            "version = 1\nkind = \"embed\"\n[embed]\nmodel = {:?}\nchunks = \"chunks.jsonl\"\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let out = myco(&home)
        .arg("run")
        .arg(dir.path().join("embed.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), chunk_lines.len());
    for (v, c) in lines.iter().zip(&chunk_lines) {
        assert_eq!(v["source"], c["source"]);
        assert_eq!(v["chunk"], c["index"]);
        assert_eq!(v["start"], c["start"]);
        assert_eq!(v["end"], c["end"]);
        assert_eq!(v["text"], c["text"]);
        assert_eq!(v["vector"].as_array().unwrap().len(), 384);
    }
}

#[test]
fn a_missing_model_is_refused_at_submit() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("embed.toml");
    std::fs::write(
        &job,
        "version = 1\nkind = \"embed\"\n[embed]\nmodel = \"no-such-model\"\ntexts = [\"hello\"]\n",
    )
    .unwrap();
    let out = myco(&dir.path().join("home"))
        .args(["run"])
        .arg(&job)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("embed.model") && err.contains("setup.sh"),
        "{err}"
    );
}

/// OpenAI-compatible `POST /v1/embeddings` on a running node, with a real HTTP client: the
/// vectors match the reference, and an unknown model gets OpenAI's error shape.
#[test]
fn openai_embeddings_endpoint() {
    let reference: serde_json::Value = serde_json::from_str(include_str!(
        "../../jobs/tests/fixtures/minilm_reference.json"
    ))
    .unwrap();
    let items = reference["items"].as_array().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let home = linked_home(dir.path(), "home", true);
    let node = common::NodeProc::start(&home, &[]);
    let http = common::Http::new();
    let texts: Vec<&str> = items
        .iter()
        .take(3)
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    let (status, v) = http
        .post(
            &node.url("/v1/embeddings"),
            &serde_json::json!({ "model": "all-MiniLM-L6-v2", "input": texts }),
        )
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert!(cosine(&floats(&d["embedding"]), &floats(&items[i]["vector"])) >= 0.9999);
    }
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // A single string works too.
    let (status, v) = http
        .post(
            &node.url("/v1/embeddings"),
            &serde_json::json!({ "model": "all-MiniLM-L6-v2", "input": "short" }),
        )
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    // JSON writes each f32 in its shortest form, which reads back to the same f32.
    let float: Vec<f32> = floats(&v["data"][0]["embedding"])
        .into_iter()
        .map(|x| x as f32)
        .collect();

    // What the official client sends by default: base64 of the little-endian f32 bytes.
    let (status, b) = http
        .post(
            &node.url("/v1/embeddings"),
            &serde_json::json!({
                "model": "all-MiniLM-L6-v2", "input": "short", "encoding_format": "base64",
                "dimensions": float.len(),
            }),
        )
        .unwrap();
    assert_eq!(status, 200, "{b}");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, float, "base64 carries the same vector");

    // Token ids (what LangChain's OpenAIEmbeddings sends by default) are OpenAI's
    // cl100k_base: [9906, 1917] is "Hello world", and embeds as that text does.
    let vector = |input: serde_json::Value| {
        let (status, v) = http
            .post(
                &node.url("/v1/embeddings"),
                &serde_json::json!({ "model": "all-MiniLM-L6-v2", "input": input }),
            )
            .unwrap();
        assert_eq!(status, 200, "{v}");
        floats(&v["data"][0]["embedding"])
    };
    let text = vector(serde_json::json!("Hello world"));
    assert_eq!(vector(serde_json::json!([[9906, 1917]])), text);
    assert_eq!(vector(serde_json::json!([9906, 1917])), text);

    // Refused by name: a size the model cannot make, ids no tokenizer of OpenAI's has, an
    // unknown encoding.
    for (body, param) in [
        (
            serde_json::json!({ "model": "all-MiniLM-L6-v2", "input": "x", "dimensions": 64 }),
            "dimensions",
        ),
        (
            serde_json::json!({ "model": "all-MiniLM-L6-v2", "input": [[9906, 4000000000u32]] }),
            "input",
        ),
        (
            serde_json::json!({ "model": "all-MiniLM-L6-v2", "input": "x", "encoding_format": "int8" }),
            "encoding_format",
        ),
    ] {
        let (status, v) = http.post(&node.url("/v1/embeddings"), &body).unwrap();
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    }

    // The embedding model is listed, and retrievable by id.
    let (_, models) = http.get(&node.url("/v1/models")).unwrap();
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "all-MiniLM-L6-v2" && m["kind"] == "embedding"),
        "{models}"
    );
    let (status, m) = http.get(&node.url("/v1/models/all-MiniLM-L6-v2")).unwrap();
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["object"], "model");

    // OpenAI's error shape.
    let (status, v) = http
        .post(
            &node.url("/v1/embeddings"),
            &serde_json::json!({ "model": "nope", "input": "x" }),
        )
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    assert!(v["error"]["message"].as_str().unwrap().contains("setup.sh"));
}
