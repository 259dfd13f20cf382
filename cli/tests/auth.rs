//! The locked API (issue 14, acceptance 2), against real node processes: the token a node
//! makes on first start, required when the API listens beyond loopback (every route:
//! `/api`, `/v1` with OpenAI's error shape, `/metrics` unless public), the `myco` commands and
//! the official `openai` client with it; the data roots that bound what jobs submitted over
//! HTTP may read (symlinks resolved, directories' files too); and the per-client rate limit
//! on `/v1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Http, NodeProc, myco};
use serde_json::{Value, json};

fn chunk_job(input: &Path) -> Value {
    json!({
        "toml": format!("version = 1\nkind = \"chunk\"\n[chunk]\ninput = {:?}\n", input.display().to_string()),
        "base_dir": "/",
    })
}

#[test]
fn beyond_loopback_every_route_needs_the_token_and_clients_send_it() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let node = NodeProc::start(&home, &["--api", "0.0.0.0:0"]);
    let token = common::api_token(&home);
    assert!(token.starts_with("myco-") && token.len() > 40, "{token}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.join("api.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the token is its owner's only");

    let out = myco(&home).arg("token").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), token);

    let anonymous = Http::new();
    let wrong = Http::with_token("myco-not-the-token");
    let right = Http::with_token(&token);
    for path in [
        "/health",
        "/api/jobs",
        "/api/swarm",
        "/metrics",
        "/v1/models",
    ] {
        let (status, body) = anonymous.get(&node.url(path)).unwrap();
        assert_eq!(status, 401, "{path} without the token: {body}");
        let (status, body) = wrong.get(&node.url(path)).unwrap();
        assert_eq!(status, 401, "{path} with a wrong token: {body}");
        let (status, body) = right.get(&node.url(path)).unwrap();
        assert_eq!(status, 200, "{path} with the token: {body}");
    }
    let (_, body) = anonymous.get(&node.url("/v1/models")).unwrap();
    assert_eq!(
        body["error"]["code"], "invalid_api_key",
        "OpenAI's shape: {body}"
    );
    let (_, body) = anonymous.get(&node.url("/api/jobs")).unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert!(
        body["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("myco token"),
        "{body}"
    );
    let (status, body) = anonymous
        .post(&node.url("/api/jobs"), &common::noop_spec("x", ""))
        .unwrap();
    assert_eq!(status, 401, "no job without the token: {body}");

    // `myco` commands read the token from the home.
    let job = root.path().join("noop.toml");
    std::fs::write(
        &job,
        "version = 1\nkind = \"noop\"\n[noop]\npayload = \"with the token\"\n",
    )
    .unwrap();
    node.submit(&job);
    // Another home's commands have no token: refused, saying how to get one.
    let other = root.path().join("other");
    let out = myco(&other)
        .args(["--api", &node.addr.to_string(), "jobs"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");
    // ... unless MYCO_API_TOKEN names it.
    let out = myco(&other)
        .env("MYCO_API_TOKEN", &token)
        .args(["--api", &node.addr.to_string(), "jobs"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The official OpenAI client, with the token as its api_key.
    let clients = common::pyclients_dir();
    if clients.join("openai").is_dir() {
        let script = r#"
import sys, openai
base, token = sys.argv[1], sys.argv[2]
ok = openai.OpenAI(base_url=base, api_key=token, max_retries=0)
print("models", [m.id for m in ok.models.list().data])
try:
    openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    sys.exit("a wrong key was let in")
except openai.AuthenticationError as e:
    print("refused", e.status_code)
"#;
        let out = Command::new("python3")
            .args(["-c", script, &node.url("/v1"), &token])
            .env("PYTHONPATH", &clients)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("refused 401"), "{stdout}");
    } else {
        panic!(
            "the Python clients are not in {}: run ./setup.sh",
            clients.display()
        );
    }

    // With --public-metrics, /metrics is open and nothing else is.
    let home2 = root.path().join("public");
    std::fs::create_dir_all(&home2).unwrap();
    let open = NodeProc::start(&home2, &["--api", "0.0.0.0:0", "--public-metrics"]);
    assert_eq!(anonymous.get_text(&open.url("/metrics")).unwrap().0, 200);
    assert_eq!(anonymous.get(&open.url("/health")).unwrap().0, 401);
}

/// On a loopback API, a client without the token (or with any other key, as OpenAI clients
/// must send one) may use the API, but its jobs read only below the data roots; the owner
/// (the token, from this machine) may name any path.
#[test]
fn jobs_over_http_read_only_below_the_data_roots() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("config.toml"), "rate_limit = 5\n").unwrap();
    let data = root.path().join("data");
    let docs = data.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("a.md"), "# A\n\nInside the root.\n").unwrap();
    let secret = root.path().join("secret.md");
    std::fs::write(&secret, "# Secret\n\nOutside every root.\n").unwrap();
    let node = NodeProc::start(&home, &["--data-root", data.to_str().unwrap()]);
    let guest = Http::new();
    let owner = Http::with_token(&common::api_token(&home));

    let (status, body) = guest
        .post(&node.url("/api/jobs"), &chunk_job(&docs.join("a.md")))
        .unwrap();
    assert_eq!(status, 201, "a file below the root: {body}");
    let (status, body) = guest
        .post(&node.url("/api/jobs"), &chunk_job(&docs))
        .unwrap();
    assert_eq!(status, 201, "a directory below the root: {body}");

    let refused = |input: &Path, what: &str| {
        let (status, body) = guest
            .post(&node.url("/api/jobs"), &chunk_job(input))
            .unwrap();
        assert_eq!(status, 403, "{what}: {body}");
        assert_eq!(body["error"]["code"], "outside_data_roots", "{body}");
        let hint = body["error"]["hint"].as_str().unwrap();
        assert!(
            hint.contains("--data-root") && hint.contains("symlinks"),
            "{body}"
        );
        // The client learns nothing of the server's paths (not even its roots): the path
        // as it named it (or a file in the directory it named), no more.
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("job 0: {}", input.display()))
                && message.ends_with(" is outside the node's data roots"),
            "{body}"
        );
    };
    refused(&secret, "a file outside");
    refused(&docs.join("../../secret.md"), "`..` out of the root");
    let link = docs.join("link.md");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    refused(&link, "a symlink out of the root");
    // A directory whose files include that symlink: refused as a whole.
    refused(&docs, "a directory holding a symlink out");
    std::fs::remove_file(&link).unwrap();
    let up = data.join("up");
    std::os::unix::fs::symlink(root.path(), &up).unwrap();
    refused(
        &up.join("secret.md"),
        "a symlinked directory out of the root",
    );

    // The owner may.
    let (status, body) = owner
        .post(&node.url("/api/jobs"), &chunk_job(&secret))
        .unwrap();
    assert_eq!(status, 201, "the owner names any path: {body}");
    let counts = owner.get(&node.url("/health")).unwrap().1;
    assert_eq!(
        counts["jobs"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>(),
        3 + 1,
        "only the accepted jobs were enqueued (a directory job and its child count): {counts}"
    );

    // /v1: 5 requests a second, bursts of 10, per client; then 429 with Retry-After.
    let mut limited = None;
    for i in 0..40 {
        let (status, retry, body) = guest.get_retry(&node.url("/v1/models")).unwrap();
        if status == 429 {
            limited = Some((i, retry, body));
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    let (i, retry, body) = limited.expect("the guest was rate limited");
    assert!(i >= 10, "not before its burst: {i}");
    let wait: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!(wait >= 1, "{wait}");
    assert!(body.contains("rate_limit_exceeded"), "{body}");
    // The owner is not limited.
    for _ in 0..20 {
        assert_eq!(owner.get(&node.url("/v1/models")).unwrap().0, 200);
    }
}
