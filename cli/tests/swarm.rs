//! The swarm with real node processes on 127.0.0.1: discovery on the loopback interface only,
//! the secret and invite tokens, and failure detection (SIGKILL, SIGSTOP/SIGCONT).
//!
//! Timings (how fast discovery converges, how fast a dead peer is noticed) are measured and
//! printed, not asserted: these machines are shared and noisy. The assertions are about
//! what must happen, with generous deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Http, NodeProc, copy_secret, eventually, myco};

/// A discovery port of this test's own, so parallel tests do not hear each other.
fn discovery_port(salt: u16) -> String {
    (40_000 + (std::process::id() % 5_000) as u16 * 4 + salt).to_string()
}

fn discovering(port: &str, name: &str) -> Vec<String> {
    [
        "--name",
        name,
        "--discovery-iface",
        "127.0.0.1",
        "--discovery-port",
        port,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// name → status ("self", "up", "down") as `node` sees the swarm.
fn view(http: &Http, node: &NodeProc) -> Vec<(String, String)> {
    let Ok((200, v)) = http.get(&node.url("/api/swarm")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn sees_up(http: &Http, node: &NodeProc, names: &[&str]) -> bool {
    let v = view(http, node);
    names.iter().all(|want| {
        v.iter()
            .any(|(n, s)| n == want && (s == "up" || s == "self"))
    })
}

/// The head of a GGUF file: magic, version 3, no tensors, two metadata entries.
fn tiny_gguf_header() -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    let mut s = |v: &str| {
        b.extend((v.len() as u64).to_le_bytes());
        b.extend(v.as_bytes());
    };
    s("general.architecture");
    let mut out = b;
    out.extend(8u32.to_le_bytes());
    out.extend(5u64.to_le_bytes());
    out.extend(b"llama");
    out.extend(17u64.to_le_bytes());
    out.extend(b"llama.block_count");
    out.extend(4u32.to_le_bytes());
    out.extend(2u32.to_le_bytes());
    out
}

#[test]
fn three_nodes_discover_each_other_and_notice_failures() {
    let root = tempfile::tempdir().unwrap();
    let home = |n: &str| root.path().join(n);
    let port = discovery_port(0);
    let a = NodeProc::start_with(&home("a"), &args(&discovering(&port, "a")));
    copy_secret(&home("a"), &home("b"));
    copy_secret(&home("a"), &home("c"));
    // C holds a model file: its header is advertised.
    std::fs::create_dir_all(home("c").join("models")).unwrap();
    std::fs::write(home("c").join("models/tiny.gguf"), tiny_gguf_header()).unwrap();
    let b = NodeProc::start_with(&home("b"), &args(&discovering(&port, "b")));
    let mut c = NodeProc::start_with(&home("c"), &args(&discovering(&port, "c")));
    let last_start = Instant::now();
    let http = Http::new();
    let all = ["a", "b", "c"];
    eventually(Duration::from_secs(20), "all three see all three", || {
        [&a, &b, &c]
            .iter()
            .all(|n| sees_up(&http, n, &all))
            .then_some(())
    });
    eprintln!(
        "discovery: all three nodes list all three {:?} after the last start",
        last_start.elapsed()
    );
    // `myco swarm --json` agrees, and carries capabilities.
    let out = myco(&home("b"))
        .args(["--api", &b.addr.to_string(), "swarm", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        assert!(n["info"]["caps"]["cores"].as_u64().unwrap() >= 1, "{n}");
        assert!(!n["info"]["roles"].as_array().unwrap().is_empty());
    }
    let model = eventually(Duration::from_secs(20), "b sees c's model", || {
        let (_, v) = http.get(&b.url("/api/swarm")).ok()?;
        v["nodes"].as_array()?.iter().find(|n| n["name"] == "c")?["info"]["models"]
            .as_array()?
            .first()
            .cloned()
    });
    assert_eq!(model["name"], "tiny");
    assert_eq!(model["architecture"], "llama");
    assert_eq!(model["layers"], 2);

    // A hung node (SIGSTOP) is dropped, and rejoins after SIGCONT.
    b.signal("-STOP");
    let stopped = Instant::now();
    eventually(Duration::from_secs(20), "a drops the hung b", || {
        view(&http, &a)
            .contains(&("b".into(), "down".into()))
            .then_some(())
    });
    eprintln!(
        "failure detection: SIGSTOP noticed after {:?}",
        stopped.elapsed()
    );
    b.signal("-CONT");
    let resumed = Instant::now();
    eventually(Duration::from_secs(30), "b rejoins after SIGCONT", || {
        (sees_up(&http, &a, &all) && sees_up(&http, &b, &all)).then_some(())
    });
    eprintln!(
        "rejoin: b back in the swarm {:?} after SIGCONT",
        resumed.elapsed()
    );

    // A dead node (SIGKILL) is dropped by both others.
    c.kill9();
    let killed = Instant::now();
    eventually(Duration::from_secs(20), "a and b drop the dead c", || {
        [&a, &b]
            .iter()
            .all(|n| view(&http, n).contains(&("c".into(), "down".into())))
            .then_some(())
    });
    eprintln!(
        "failure detection: SIGKILL noticed after {:?}",
        killed.elapsed()
    );
    // ...and it comes back when restarted.
    let _c = NodeProc::start_with(&home("c"), &args(&discovering(&port, "c")));
    eventually(Duration::from_secs(20), "c rejoins after a restart", || {
        sees_up(&http, &a, &all).then_some(())
    });
}

#[test]
fn a_wrong_secret_is_refused_and_an_invite_token_joins() {
    let root = tempfile::tempdir().unwrap();
    let home = |n: &str| root.path().join(n);
    let log = |n: &str| root.path().join(format!("{n}.log"));
    let a = NodeProc::start_logged(&home("a"), &["--name", "a", "--no-discovery"], &log("a"));
    let a_cluster = a.cluster.clone().unwrap();

    // A stranger with its own (fresh) secret dials A directly.
    let stranger = NodeProc::start_logged(
        &home("x"),
        &["--name", "x", "--no-discovery", "--join", &a_cluster],
        &log("x"),
    );
    let http = Http::new();
    eventually(
        Duration::from_secs(20),
        "both sides log the refusal",
        || {
            let a_log = std::fs::read_to_string(log("a")).unwrap_or_default();
            let x_log = std::fs::read_to_string(log("x")).unwrap_or_default();
            (a_log.contains("refused a cluster connection") && x_log.contains("cannot join"))
                .then_some(())
        },
    );
    let a_log = std::fs::read_to_string(log("a")).unwrap();
    let x_log = std::fs::read_to_string(log("x")).unwrap();
    assert!(a_log.contains("swarm secret"), "A says why: {a_log}");
    assert!(x_log.contains("swarm secret"), "X says why: {x_log}");
    // And it got nothing: neither lists the other.
    assert_eq!(view(&http, &a), [("a".to_owned(), "self".to_owned())]);
    assert_eq!(
        view(&http, &stranger),
        [("x".to_owned(), "self".to_owned())]
    );

    // A plaintext client is dropped too.
    {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(&a_cluster).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = tcp.write_all(b"GET / HTTP/1.0\r\n\r\nhello in plaintext");
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf);
        assert!(
            !String::from_utf8_lossy(&buf).contains("HTTP"),
            "no plaintext answer"
        );
    }
    eventually(
        Duration::from_secs(10),
        "A logs the plaintext client",
        || {
            std::fs::read_to_string(log("a"))
                .unwrap_or_default()
                .contains("does not speak TLS")
                .then_some(())
        },
    );

    // The invite token carries the secret and the address: a new machine joins with it.
    let out = myco(&home("a"))
        .args(["--api", &a.addr.to_string(), "invite"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("myco1:"), "{token}");
    let e = NodeProc::start_with(
        &home("e"),
        &["--name", "e", "--no-discovery", "--join-token", &token],
    );
    eventually(Duration::from_secs(20), "the invited node joins", || {
        (sees_up(&http, &a, &["a", "e"]) && sees_up(&http, &e, &["a", "e"])).then_some(())
    });
    // A token for another swarm is refused on a home that already has a secret.
    let out = myco(&home("x"))
        .args(["node", "--join-token", &token, "--no-discovery"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds the secret"));
}

/// A chunk job's files travel with the tasks a thief steals: the swarm's result is the
/// same as one node's, and the thief did part of it.
#[test]
fn stolen_chunk_jobs_carry_their_documents_and_give_the_same_chunks() {
    let root = tempfile::tempdir().unwrap();
    let home = |n: &str| root.path().join(n);
    let docs = root.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for i in 0..120 {
        let mut text = format!("# Document {i}\n\n");
        for p in 0..200 {
            text.push_str(&format!(
                "Paragraph {p} of document {i} says something about swarms and queues.\n\n"
            ));
        }
        std::fs::write(docs.join(format!("doc{i:03}.md")), text).unwrap();
    }
    let job = root.path().join("job.toml");
    std::fs::write(
        &job,
        "version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"docs\"\nmax_tokens = 200\noverlap = 0\n",
    )
    .unwrap();
    // The reference: one embedded node.
    let alone = myco(&home("alone")).arg("run").arg(&job).output().unwrap();
    assert!(alone.status.success());

    let a = NodeProc::start_with(
        &home("a"),
        &["--name", "a", "--no-discovery", "--workers", "1"],
    );
    copy_secret(&home("a"), &home("b"));
    let b = NodeProc::start_with(
        &home("b"),
        &[
            "--name",
            "b",
            "--no-discovery",
            "--join",
            a.cluster.as_deref().unwrap(),
        ],
    );
    let http = Http::new();
    eventually(Duration::from_secs(20), "a and b meet", || {
        (sees_up(&http, &a, &["a", "b"]) && sees_up(&http, &b, &["a", "b"])).then_some(())
    });
    let out = myco(&home("a"))
        .args(["--api", &a.addr.to_string(), "submit", "--wait", "--json"])
        .arg(&job)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["jobs"][0]["id"].as_str().unwrap().to_owned();
    let (_, children) = http
        .get(&a.url(&format!("/api/jobs?parent={id}&limit=1000")))
        .unwrap();
    let by_b = children["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["history"]
                .as_array()
                .unwrap()
                .iter()
                .rev()
                .find(|t| t["state"] == "leased")
                .and_then(|t| t["note"].as_str())
                .is_some_and(|h| h.starts_with("b#"))
        })
        .count();
    eprintln!("b chunked {by_b} of 120 files");
    assert!(by_b > 0, "the thief did part of the work");
    let (status, swarm_result) = http
        .get_text(&a.url(&format!("/api/jobs/{id}/result")))
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        swarm_result,
        String::from_utf8(alone.stdout).unwrap(),
        "the swarm gives the same chunks as one node"
    );
}
