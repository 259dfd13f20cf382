//! Issue 27: the holes a hostile test found, each against real node processes (the node on
//! loopback, with a data root; and beyond loopback with its token). Requests are written by
//! hand on raw sockets where the point is a header a normal client would not send.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Http, NodeProc, api_token, eventually};
use serde_json::{Value, json};

/// A connection to `to`, from the loopback address `from` (127.0.0.0/8 is all this
/// machine's: another address there is another client to the node).
fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect(&to.into()).unwrap();
    sock.into()
}

/// Send `request` (with `Connection: close` added) and read the status and body.
fn raw(to: SocketAddr, request: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(to).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (head, body) = request.split_once("\r\n\r\n").unwrap();
    write!(tcp, "{head}\r\nConnection: close\r\n\r\n{body}").unwrap();
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

fn post(path: &str, host: &str, extra: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn browsers_cannot_use_the_node_dns_rebinding_simple_posts_and_other_origins() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let node = NodeProc::start(
        &home,
        &[
            "--allow-origin",
            "https://app.example",
            "--allow-host",
            "box.lan",
        ],
    );
    let to = node.addr;
    let token = api_token(&home);

    // DNS rebinding: a page's own name pointed at the node.
    for (req, what) in [
        (
            "GET /api/jobs HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_owned(),
            "a read",
        ),
        (
            format!(
                "GET /api/jobs HTTP/1.1\r\nHost: evil.example:{}\r\n\r\n",
                to.port()
            ),
            "a read, with the port",
        ),
        (
            post(
                "/api/jobs",
                "evil.example",
                "Content-Type: application/json\r\n",
                r#"{"toml":"version = 1\nkind = \"noop\"\n[noop]\n","base_dir":"/"}"#,
            ),
            "a submit",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {token}\r\n\r\n"
            ),
            "the dashboard, even with the token",
        ),
    ] {
        let (status, body) = raw(to, &req);
        assert_eq!(status, 403, "{what}: {body}");
        assert!(
            body.contains("host_not_allowed") && body.contains("--allow-host"),
            "{body}"
        );
    }
    // Its own names pass: the address, localhost, a configured name.
    for host in [
        to.to_string(),
        format!("localhost:{}", to.port()),
        "box.lan".into(),
    ] {
        let (status, body) = raw(to, &format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert_eq!(status, 200, "{host}: {body}");
    }

    // Simple requests (no preflight): text/plain and forms are refused on /v1 and /api.
    for (path, body) in [
        ("/v1/chat/completions", CHAT),
        ("/v1/embeddings", r#"{"input":"x","model":"m"}"#),
        ("/api/query", r#"{"collection":"c","query":"q"}"#),
        ("/api/jobs", r#"{"toml":"","base_dir":"/"}"#),
    ] {
        for kind in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let (status, text) = raw(
                to,
                &post(
                    path,
                    "127.0.0.1",
                    &format!("Content-Type: {kind}\r\n"),
                    body,
                ),
            );
            assert_eq!(status, 415, "{path} as {kind}: {text}");
            assert!(text.contains("json_required"), "{text}");
        }
    }
    // JSON from another origin is refused too; from an allowed one it is answered, and says
    // so to the browser.
    let (status, text) = raw(
        to,
        &post(
            "/api/jobs",
            "127.0.0.1",
            "Content-Type: application/json\r\nOrigin: https://evil.example\r\n",
            r#"{"toml":"version = 1\nkind = \"noop\"\n[noop]\n","base_dir":"/"}"#,
        ),
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("origin_not_allowed"), "{text}");

    // Preflights: answered for the allowed origin, refused for others.
    let preflight = |origin: &str| {
        let mut tcp = TcpStream::connect(to).unwrap();
        write!(
            tcp,
            "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\
             Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = tcp.read_to_string(&mut out);
        out
    };
    let ok = preflight("https://app.example");
    assert!(ok.starts_with("HTTP/1.1 204"), "{ok}");
    assert!(
        ok.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example"),
        "{ok}"
    );
    let no = preflight("https://evil.example");
    assert!(no.starts_with("HTTP/1.1 403"), "{no}");
    assert!(
        !no.to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{no}"
    );
    let mut tcp = TcpStream::connect(to).unwrap();
    write!(
        tcp,
        "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://app.example\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example"),
        "{out}"
    );

    // Beyond loopback, with the token: the Host rule holds as well.
    let wide_home = root.path().join("wide");
    let wide = NodeProc::start(&wide_home, &["--api", "0.0.0.0:0"]);
    let wide_token = api_token(&wide_home);
    let port = wide.addr.port();
    let wide_to = SocketAddr::from(([127, 0, 0, 1], port));
    let (status, body) = raw(
        wide_to,
        &format!(
            "GET /api/jobs HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {wide_token}\r\n\r\n"
        ),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = raw(
        wide_to,
        &format!(
            "GET /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {wide_token}\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn idle_and_half_sent_connections_cannot_take_the_node_offline() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("config.toml"), "header_timeout = 2\n").unwrap();
    let node = NodeProc::start(&home, &[]);
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    // 300 connections that send nothing and 300 that send half a request, all held open.
    let mut held = Vec::new();
    for i in 0..600 {
        let mut c = connect_from(attacker, node.addr);
        if i % 2 == 1 {
            let _ = c.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
        }
        held.push(c);
    }
    let http = Http::owner(&node);
    let asked = Instant::now();
    let (status, body) = http.get(&node.url("/health")).unwrap();
    let took = asked.elapsed();
    assert_eq!(status, 200, "{body}");
    eprintln!("/health answered in {took:?} with 600 connections held by another client");
    assert!(
        took < Duration::from_secs(1),
        "a request with the token answers within 1 s: took {took:?}"
    );
    // The node closed what it would not hold (64 per client) and, once the header timeout
    // passed, the rest.
    eventually(
        Duration::from_secs(30),
        "every held connection closed",
        || {
            held.retain_mut(|c| !closed(c));
            held.is_empty().then_some(())
        },
    );
}

/// Whether the other end has closed `c` (what it sent before is read and dropped).
fn closed(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let mut b = [0u8; 256];
    loop {
        match c.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn the_home_and_queue_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // A new home.
    let home = root.path().join("new");
    let node = NodeProc::start(&home, &[]);
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("queue.redb")), 0o600);
    drop(node);
    // A home an older myco made readable to all: made private at start.
    let old = root.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("config.toml"), "").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = NodeProc::start(&old, &[]);
    std::fs::set_permissions(
        old.join("queue.redb"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    drop(node);
    let node = NodeProc::start(&old, &[]);
    assert_eq!(mode(&old), 0o700);
    assert_eq!(mode(&old.join("queue.redb")), 0o600);
    drop(node);
}

fn chunk_job(input: &Path) -> Value {
    json!({
        "toml": format!("version = 1\nkind = \"chunk\"\n[chunk]\ninput = {:?}\n", input.display().to_string()),
        "base_dir": "/",
    })
}

#[test]
fn a_client_cannot_rerun_the_owners_job_on_a_file_outside_the_roots() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let secret = root.path().join("secret.md");
    std::fs::write(&secret, "# Secret\n\nThe owner's words.\n").unwrap();
    let node = NodeProc::start(&home, &["--data-root", data.to_str().unwrap()]);
    let owner = Http::owner(&node);
    let client = Http::new();
    let (status, v) = owner
        .post(&node.url("/api/jobs"), &chunk_job(&secret))
        .unwrap();
    assert_eq!(status, 201, "{v}");
    let id = v["jobs"][0]["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), "the owner's job done", || {
        let (_, j) = owner.get(&node.url(&format!("/api/jobs/{id}"))).ok()?;
        (j["state"] == "done").then_some(())
    });
    for what in ["resubmit", "retry"] {
        let (status, v) = client
            .post(&node.url(&format!("/api/jobs/{id}/{what}")), &json!({}))
            .unwrap();
        assert_eq!(status, 403, "{what} as a client: {v}");
        assert_eq!(v["error"]["code"], "outside_data_roots", "{v}");
        assert!(!v.to_string().contains("owner's words"), "{v}");
    }
    // The owner may.
    let (status, v) = owner
        .post(&node.url(&format!("/api/jobs/{id}/resubmit")), &json!({}))
        .unwrap();
    assert_eq!(status, 201, "{v}");
}

/// The most memory the node process has held (VmHWM), in bytes.
fn peak_rss(node: &NodeProc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!("node peak RSS (VmHWM): {} MiB", kb / 1024);
    kb * 1024
}

#[test]
fn a_context_beyond_the_model_is_refused_with_the_limit_before_anything_is_allocated() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(home.join("models")).unwrap();
    // Trained for 512 positions.
    myco_jobs::llm::gguf::TinyLlama::default()
        .write(&home.join("models/tiny.gguf"), true)
        .unwrap();
    let node = NodeProc::start(&home, &["--workers", "1"]);
    let client = Http::new();

    // On the OpenAI route.
    for n_ctx in [131_072_u32, 1_000_000_000] {
        let (status, v) = client
            .post(
                &node.url("/v1/chat/completions"),
                &json!({
                    "model": "tiny", "max_tokens": 4, "n_ctx": n_ctx,
                    "messages": [{ "role": "user", "content": "hi" }],
                }),
            )
            .unwrap();
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["param"], "n_ctx", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("at most 512"), "{message}");
    }

    // In a job file.
    let job = root.path().join("job.toml");
    std::fs::write(
        &job,
        "version = 1\nkind = \"infer\"\n[infer]\nmodel = \"tiny\"\nprompt = \"hi\"\nn_ctx = 1000000000\n",
    )
    .unwrap();
    let out = node.cli().arg("submit").arg(&job).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("infer.n_ctx") && err.contains("hint: use n_ctx = 512 or less"),
        "{err}"
    );

    // Left out, the context is the model's (not the 4096 default beyond it), and it runs.
    let (status, v) = client
        .post(
            &node.url("/v1/chat/completions"),
            &json!({
                "model": "tiny", "max_tokens": 2, "temperature": 0.0,
                "messages": [{ "role": "user", "content": "hi" }],
            }),
        )
        .unwrap();
    assert_eq!(status, 200, "{v}");

    let (_, jobs) = Http::owner(&node).get(&node.url("/api/jobs")).unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
    let peak = peak_rss(&node);
    assert!(peak < 1 << 30, "the node held {peak} bytes");
}

fn job(toml: &str) -> Value {
    json!({ "toml": toml, "base_dir": "/" })
}

#[test]
fn every_field_that_names_a_file_is_gated_and_only_bounded_regular_files_are_read() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let data = root.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    let secret = root.path().join("secret.jsonl");
    std::fs::write(
        &secret,
        "{\"source\":\"s\",\"index\":0,\"start\":0,\"end\":5,\"text\":\"the owner's words\"}\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&secret, data.join("link.jsonl")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", data.join("zero.jsonl")).unwrap();
    // A 2 GB sparse file inside the root.
    let sparse = data.join("big.jsonl");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    std::fs::copy(&sparse, data.join("big.md")).ok();
    std::fs::File::create(data.join("big.md"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let node = NodeProc::start(&home, &["--data-root", data.to_str().unwrap()]);
    let client = Http::new();
    let owner = Http::owner(&node);
    let url = node.url("/api/jobs");
    let d = data.display();
    let s = secret.display();

    // Outside the roots, for every field that names a file: 403, the file unread.
    for toml in [
        format!("version = 1\nkind = \"embed\"\n[embed]\nchunks = \"{s}\"\n"),
        format!(
            "version = 1\nkind = \"embed\"\n[embed]\nchunks = \"{d}/sub/../../secret.jsonl\"\n"
        ),
        format!("version = 1\nkind = \"embed\"\n[embed]\nchunks = \"{d}/link.jsonl\"\n"),
        format!("version = 1\nkind = \"embed\"\n[embed]\nchunks = \"{d}/zero.jsonl\"\n"),
        format!(
            "version = 1\nkind = \"embed\"\n[embed]\ntexts = [\"a\"]\nmodel = \"{}\"\n",
            root.path().display()
        ),
        format!("version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"{s}\"\n"),
        format!(
            "version = 1\nkind = \"archive\"\n[archive]\ninput = \"{}\"\ncollection = \"c\"\n",
            root.path().display()
        ),
        format!("version = 1\nkind = \"infer\"\n[infer]\nprompt = \"hi\"\nmodel = \"{s}\"\n"),
        format!("version = 1\nkind = \"pipeline\"\n[pipeline]\nprompt = \"hi\"\nmodel = \"{s}\"\n"),
    ] {
        let (status, v) = client.post(&url, &job(&toml)).unwrap();
        assert_eq!(status, 403, "{toml}: {v}");
        assert_eq!(v["error"]["code"], "outside_data_roots", "{v}");
        let text = v.to_string();
        assert!(!text.contains("owner's words"), "{text}");
        assert!(!text.contains(&home.display().to_string()), "{text}");
    }

    // A model named by its path on the OpenAI routes: the same gate.
    for (route, body) in [
        (
            "/v1/chat/completions",
            json!({ "model": s.to_string(), "messages": [{ "role": "user", "content": "hi" }] }),
        ),
        (
            "/v1/completions",
            json!({ "model": s.to_string(), "prompt": "hi" }),
        ),
        (
            "/v1/embeddings",
            json!({ "model": root.path().display().to_string(), "input": "hi" }),
        ),
    ] {
        let (status, v) = client.post(&node.url(route), &body).unwrap();
        assert_eq!(status, 403, "{route}: {v}");
        assert_eq!(v["error"]["code"], "outside_data_roots", "{v}");
    }

    // Inside the roots, a device, a pipe or a file beyond the bound is refused before it is
    // read (the owner may name /dev/zero itself), fast and without memory.
    let started = Instant::now();
    for (who, toml) in [
        (
            &client,
            format!("version = 1\nkind = \"embed\"\n[embed]\nchunks = \"{d}/big.jsonl\"\n"),
        ),
        (
            &owner,
            "version = 1\nkind = \"embed\"\n[embed]\nchunks = \"/dev/zero\"\n".to_owned(),
        ),
    ] {
        let (status, v) = who.post(&url, &job(&toml)).unwrap();
        assert_eq!(status, 422, "{toml}: {v}");
        let text = v.to_string();
        if std::ptr::eq(who, &client) {
            assert!(!text.contains(&home.display().to_string()), "{text}");
        }
        assert!(
            text.contains("more than the") || text.contains("not a regular file"),
            "{text}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));

    // A 2 GB document inside the roots: accepted (it is a file there), and its job fails
    // saying the file is too big, without reading it.
    let (status, v) = client
        .post(
            &url,
            &job(&format!(
                "version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"{d}/big.md\"\n"
            )),
        )
        .unwrap();
    assert_eq!(status, 201, "{v}");
    let id = v["jobs"][0]["id"].as_str().unwrap().to_owned();
    let failed = eventually(
        Duration::from_secs(60),
        "the big document's job fails",
        || {
            let (_, j) = owner.get(&node.url(&format!("/api/jobs/{id}"))).ok()?;
            (j["state"] == "dead").then_some(j)
        },
    );
    assert!(failed.to_string().contains("split it"), "{failed}");

    let peak = peak_rss(&node);
    assert!(peak < 1 << 30, "the node held {peak} bytes");
}

#[test]
fn a_clients_file_is_checked_again_when_its_job_runs() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let secret = root.path().join("secret.md");
    std::fs::write(&secret, "# Secret\n\nThe owner's words.\n").unwrap();
    let doc = data.join("doc.md");
    std::fs::write(&doc, "# Doc\n\nA client's words.\n").unwrap();
    let node = NodeProc::start(
        &home,
        &["--workers", "1", "--data-root", data.to_str().unwrap()],
    );
    let owner = Http::owner(&node);
    let client = Http::new();
    // The one worker is busy for a while: the client's job waits behind it.
    let (status, v) = owner
        .post(
            &node.url("/api/jobs"),
            &json!({
                "toml": "version = 1\nkind = \"noop\"\npriority = 10\n[noop]\npayload = \"x\"\nsleep_ms = 3000\n",
                "base_dir": "/",
            }),
        )
        .unwrap();
    assert_eq!(status, 201, "{v}");
    let (status, v) = client
        .post(&node.url("/api/jobs"), &chunk_job(&doc))
        .unwrap();
    assert_eq!(status, 201, "{v}");
    let id = v["jobs"][0]["id"].as_str().unwrap().to_owned();
    // Before it runs, its file becomes a link out of the roots.
    std::fs::remove_file(&doc).unwrap();
    std::os::unix::fs::symlink(&secret, &doc).unwrap();
    let job = eventually(Duration::from_secs(60), "the job ends", || {
        let (_, j) = owner.get(&node.url(&format!("/api/jobs/{id}"))).ok()?;
        (j["state"] == "dead" || j["state"] == "done").then_some(j)
    });
    assert_eq!(job["state"], "dead", "{job}");
    assert!(
        job.to_string().contains("outside the node's data roots"),
        "{job}"
    );
    let (_, result) = owner
        .get_text(&node.url(&format!("/api/jobs/{id}/result")))
        .unwrap();
    assert!(!result.contains("owner's words"), "{result}");
}

#[test]
fn bad_data_gives_4xx_or_503_with_a_hint_never_500() {
    let root = tempfile::tempdir().unwrap();
    let home = common::linked_home(root.path(), "home", true);
    // A model directory with a garbled tokenizer.
    let broken = home.join("models/broken");
    std::fs::create_dir_all(&broken).unwrap();
    let real = common::real_home().join("models").join(common::MODEL);
    for f in [
        "model.onnx",
        "config.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ] {
        std::os::unix::fs::symlink(real.join(f), broken.join(f)).unwrap();
    }
    std::fs::write(broken.join("tokenizer.json"), "{\"garbled\": ").unwrap();
    // Two collections of the same documents, to damage two ways.
    let docs = root.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for i in 0..3 {
        std::fs::write(
            docs.join(format!("d{i}.md")),
            format!("# Doc {i}\n\nThe river bends at mile {i} near the old mill.\n"),
        )
        .unwrap();
    }
    let node = NodeProc::start(&home, &[]);
    let owner = Http::owner(&node);
    for c in ["vectors", "chunks"] {
        let job = root.path().join(format!("{c}.toml"));
        std::fs::write(
            &job,
            format!(
                "version = 1\nkind = \"archive\"\n[archive]\ninput = {:?}\ncollection = {c:?}\n",
                docs.display().to_string()
            ),
        )
        .unwrap();
        let id = node.submit(&job);
        eventually(Duration::from_secs(120), "the collection is built", || {
            let (_, j) = owner.get(&node.url(&format!("/api/jobs/{id}"))).ok()?;
            (j["state"] == "done").then_some(())
        });
    }
    let collections = home.join("collections");
    let npy = collections.join("vectors/vectors.npy");
    let len = std::fs::metadata(&npy).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&npy)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let chunks = collections.join("chunks/chunks.jsonl");
    let garbled: String = std::fs::read_to_string(&chunks)
        .unwrap()
        .lines()
        .map(|l| format!("{}\n", "#".repeat(l.len())))
        .collect();
    std::fs::write(&chunks, garbled).unwrap();

    // The listing says which is damaged.
    let (status, list) = owner.get(&node.url("/api/collections")).unwrap();
    assert_eq!(status, 200, "{list}");
    let by_name = |n: &str| {
        list["collections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .cloned()
            .unwrap()
    };
    let v = by_name("vectors");
    assert!(
        v["error"].as_str().unwrap_or("").contains("truncated"),
        "{list}"
    );

    // Queries on them: 503 with a hint, not 500.
    for (c, code) in [
        ("vectors", "collection_damaged"),
        ("chunks", "collection_damaged"),
    ] {
        let (status, v) = owner
            .post(
                &node.url("/api/query"),
                &json!({ "collection": c, "text": "river mill", "k": 2 }),
            )
            .unwrap();
        assert_eq!(status, 503, "{c}: {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["hint"].as_str().unwrap().contains("archive"),
            "{v}"
        );
    }

    // Embeddings with the broken model: 503 with a hint; an input beyond the bound: 400.
    let (status, v) = owner
        .post(
            &node.url("/v1/embeddings"),
            &json!({ "model": "broken", "input": "hello" }),
        )
        .unwrap();
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokenizer"),
        "{v}"
    );
    let (status, v) = owner
        .post(
            &node.url("/v1/embeddings"),
            &json!({ "model": common::MODEL, "input": "word ".repeat(1 << 20) }),
        )
        .unwrap();
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "input", "{v}");
    // The node is fine, and small.
    let (status, v) = owner
        .post(
            &node.url("/v1/embeddings"),
            &json!({ "model": common::MODEL, "input": "hello" }),
        )
        .unwrap();
    assert_eq!(status, 200, "{v}");

    // A big request whose client goes away: its job is cancelled, not run to the end.
    let texts: Vec<String> = (0..2048)
        .map(|i| {
            format!(
                "text {i}: {}",
                "the river bends near the old mill ".repeat(50)
            )
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gone = rt.block_on(async {
        reqwest::Client::new()
            .post(node.url("/v1/embeddings"))
            .timeout(Duration::from_millis(1500))
            .json(&json!({ "model": common::MODEL, "input": texts }))
            .send()
            .await
    });
    assert!(gone.is_err(), "it was meant to take longer: {gone:?}");
    drop(rt);
    eventually(
        Duration::from_secs(30),
        "the embedding job is cancelled",
        || {
            let (_, list) = owner
                .get(&node.url("/api/jobs?all=true&kind=embed&limit=100"))
                .ok()?;
            list["jobs"]
                .as_array()?
                .iter()
                .any(|j| j["state"] == "cancelled")
                .then_some(())
        },
    );
    let peak = peak_rss(&node);
    assert!(peak < 1 << 30, "the node held {peak} bytes");
}

#[test]
fn a_job_running_when_its_node_was_killed_for_memory_twice_goes_dead_and_others_do_not() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    // The kernel's count of OOM kills, as the node reads it (a test cannot make the kernel
    // kill a node for memory safely): bumped here before a kill -9 to make it one.
    let kills = root.path().join("oom_kills");
    std::fs::write(&kills, "0").unwrap();
    let start = || {
        NodeProc::start_logged_env(
            &home,
            &["--name", "test", "--no-discovery", "--workers", "1"],
            &root.path().join("node.log"),
            &[("MYCO_FAULT_OOM_KILLS", kills.as_os_str())],
        )
    };
    // The second job waits behind the first (lower priority, one worker).
    let noop = |payload: &str, priority: i32| {
        json!({
            "toml": format!("version = 1\nkind = \"noop\"\nmax_attempts = 10\npriority = {priority}\n[noop]\npayload = {payload:?}\nsleep_ms = 60000\n"),
            "base_dir": "/",
        })
    };
    let mut node = start();
    let (status, v) = Http::owner(&node)
        .post(
            &node.url("/api/jobs"),
            &json!({ "jobs": [noop("first", 0), noop("second", -1)] }),
        )
        .unwrap();
    assert_eq!(status, 201, "{v}");
    let ids: Vec<String> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    let state = |node: &NodeProc, id: &str| {
        let (_, j) = Http::owner(node)
            .get(&node.url(&format!("/api/jobs/{id}")))
            .unwrap();
        j
    };
    // A plain kill -9, then two kills for memory, each while the first job runs.
    for (death, oom_kills) in [(1, 0), (2, 1), (3, 2)] {
        eventually(Duration::from_secs(30), "the first job runs", || {
            let running = std::fs::read_to_string(home.join("running")).ok()?;
            running.contains(&ids[0]).then_some(())
        });
        std::fs::write(&kills, oom_kills.to_string()).unwrap();
        node.kill9();
        node = start();
        let j = state(&node, &ids[0]);
        if death < 3 {
            assert_ne!(j["state"], "dead", "death {death}: {j}");
        } else {
            assert_eq!(j["state"], "dead", "{j}");
            let message = j["error"]["message"].as_str().unwrap();
            assert!(message.contains("killed for memory 2 times"), "{j}");
        }
    }
    // The waiting job was leased by every run, but never running at a death: it lives.
    let j = state(&node, &ids[1]);
    assert_ne!(j["state"], "dead", "{j}");
}
