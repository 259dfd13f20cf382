//! Upgrades with real node processes: a node's queue and a thief's outbox written by the
//! build before format versions (the committed fixtures of `runtime/tests/fixtures/`) run
//! on this build; nodes of adjacent protocols work together, and nodes that share no
//! protocol each say why not, with no job lost (`MYCO_TEST_PROTOCOL` makes a node speak
//! other protocols).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Http, NodeProc, copy_secret, eventually, noop_spec};
use myco_jobs::Task;
use myco_runtime::queue::{ListFilter, Queue, QueueOptions};
use serde_json::Value;

const FAST: &str = "lease = 3\ntick = 0.2\nbackoff_base = 0.05\nbackoff_max = 1\n\
                    heartbeat = 0.25\npeer_timeout = 2\n";
const LONG: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runtime/tests/fixtures/queue-v0")
        .join(name)
}

/// A home with `config.toml` and, if given, a fixture as its queue.
fn home(root: &Path, name: &str, queue: Option<&str>) -> PathBuf {
    let home = root.join(name);
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("config.toml"), FAST).unwrap();
    if let Some(q) = queue {
        std::fs::copy(fixture(q), home.join("queue.redb")).unwrap();
    }
    home
}

/// The fixture's jobs by what they are: a no-op's payload, or the kind of anything else.
fn fixture_ids(root: &Path) -> HashMap<String, String> {
    let copy = root.join("peek.redb");
    std::fs::copy(fixture("owner.redb"), &copy).unwrap();
    let q = Queue::open(&copy, QueueOptions::default()).unwrap();
    let jobs = q
        .list(&ListFilter {
            top_level: false,
            limit: 1000,
            ..ListFilter::default()
        })
        .unwrap();
    let mut out = HashMap::new();
    for r in jobs {
        let key = match &r.task {
            Task::Noop(n) => n.payload.clone(),
            t if r.parent.is_none() => format!("{}:{:?}", t.kind().as_str(), r.state.name()),
            _ => continue,
        };
        out.insert(key, r.id.to_string());
    }
    out
}

fn job(http: &Http, node: &NodeProc, id: &str) -> Value {
    let (status, v) = http.get(&node.url(&format!("/api/jobs/{id}"))).unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

fn state_of(http: &Http, node: &NodeProc, id: &str) -> String {
    job(http, node, id)["state"].as_str().unwrap().to_owned()
}

fn result(http: &Http, node: &NodeProc, id: &str) -> String {
    let (status, text) = http
        .get_text(&node.url(&format!("/api/jobs/{id}/result")))
        .unwrap();
    assert_eq!(status, 200, "{text}");
    text
}

fn done(http: &Http, node: &NodeProc, id: &str, what: &str) {
    eventually(LONG, what, || {
        (state_of(http, node, id) == "done").then_some(())
    });
}

#[test]
fn a_queue_and_an_outbox_from_before_format_versions_run_on_this_build() {
    let root = tempfile::tempdir().unwrap();
    let ids = fixture_ids(root.path());
    let owner_home = home(root.path(), "owner", Some("owner.redb"));
    let thief_home = home(root.path(), "thief", Some("thief.redb"));
    let owner = NodeProc::start_logged(
        &owner_home,
        &["--name", "owner", "--no-discovery"],
        &root.path().join("owner.log"),
    );
    let http = Http::owner(&owner);

    // Jobs queued before the upgrade run; so do the one the last run held and the failed
    // one, due again.
    for payload in [
        "queued before the upgrade",
        "leased before the upgrade",
        "failed before the upgrade",
    ] {
        let id = &ids[payload];
        done(&http, &owner, id, payload);
        assert!(result(&http, &owner, id).contains(payload));
    }
    // A chunk job queued before (a parent, waiting on its child, which carries its bytes):
    // it runs.
    let chunk = &ids["chunk:Leased"];
    done(&http, &owner, chunk, "the queued chunk job");
    assert!(result(&http, &owner, chunk).contains("Gamma document"));
    // Results written before are readable, as they were.
    assert_eq!(
        result(&http, &owner, &ids["done before the upgrade"]),
        "{\"payload\":\"done before the upgrade\"}\n"
    );
    // A dead job can be retried, and runs.
    let dead = &ids["dead before the upgrade"];
    assert_eq!(state_of(&http, &owner, dead), "dead");
    let (status, v) = http
        .post(
            &owner.url(&format!("/api/jobs/{dead}/retry")),
            &serde_json::json!({}),
        )
        .unwrap();
    assert_eq!(status, 200, "{v}");
    done(&http, &owner, dead, "the retried job");
    // Idempotency keys still name their jobs.
    let (status, v) = http
        .post(
            &owner.url("/api/jobs"),
            &noop_spec(
                "queued before the upgrade",
                "idempotency_key = \"fixture-queued\"",
            ),
        )
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["jobs"][0]["id"].as_str(),
        Some(ids["queued before the upgrade"].as_str())
    );

    // The thief's outbox, written before the upgrade, delivers the infer job it ran for the
    // owner (leased to its last run for a year).
    let infer = &ids["infer:Leased"];
    assert_eq!(state_of(&http, &owner, infer), "leased");
    copy_secret(&owner_home, &thief_home);
    let cluster = owner.cluster.clone().unwrap();
    let thief = NodeProc::start_logged(
        &thief_home,
        &["--name", "thief", "--no-discovery", "--join", &cluster],
        &root.path().join("thief.log"),
    );
    done(&http, &owner, infer, "the outbox's delivery");
    assert_eq!(
        result(&http, &owner, infer),
        "{\"text\":\"delivered from the outbox\"}\n"
    );
    let thief_http = Http::owner(&thief);
    eventually(LONG, "the thief's outbox to empty", || {
        let (_, v) = thief_http.get(&thief.url("/api/stats")).ok()?;
        (v["outbox"].as_u64() == Some(0)).then_some(())
    });
}

/// name → (status, why not) as `node` sees the swarm.
fn view(http: &Http, node: &NodeProc) -> HashMap<String, (String, Option<String>)> {
    let Ok((200, v)) = http.get(&node.url("/api/swarm")) else {
        return HashMap::new();
    };
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                (
                    n["status"].as_str().unwrap().to_owned(),
                    n["why_not"].as_str().map(str::to_owned),
                ),
            )
        })
        .collect()
}

/// Waits for `who`'s log to say it came down to its peer's protocol. A peer counts as up
/// once its session opens, before its first heartbeat says which protocols it speaks, so
/// the line may come a moment after both are up in each other's view.
fn lowers_its_protocol(root: &Path, who: &str) {
    let path = root.join(format!("{who}.log"));
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.contains("speaking another protocol") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{who} never lowered its protocol:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two nodes joined: `a` of this build, `b` speaking `b_protocols` (`OLDEST..NEWEST`).
fn pair(root: &Path, b_protocols: &str) -> (NodeProc, NodeProc) {
    let a_home = home(root, "a", None);
    let a = NodeProc::start_logged(
        &a_home,
        &["--name", "a", "--no-discovery", "--workers", "1"],
        &root.join("a.log"),
    );
    let b_home = home(root, "b", None);
    copy_secret(&a_home, &b_home);
    let cluster = a.cluster.clone().unwrap();
    let b = NodeProc::start_logged_env(
        &b_home,
        &[
            "--name",
            "b",
            "--no-discovery",
            "--workers",
            "1",
            "--join",
            &cluster,
        ],
        &root.join("b.log"),
        &[("MYCO_TEST_PROTOCOL", std::ffi::OsStr::new(b_protocols))],
    );
    (a, b)
}

/// Submit `n` no-ops that each take `ms` to `node`; their ids.
fn noops(http: &Http, node: &NodeProc, tag: &str, n: usize, ms: u64) -> Vec<String> {
    let jobs: Vec<Value> = (0..n)
        .map(|i| {
            let mut s = noop_spec(&format!("{tag} {i}"), "");
            // The spec ends in its `[noop]` section.
            s["toml"] = Value::String(format!("{}sleep_ms = {ms}\n", s["toml"].as_str().unwrap()));
            s
        })
        .collect();
    let (status, v) = http
        .post(&node.url("/api/jobs"), &serde_json::json!({ "jobs": jobs }))
        .unwrap();
    assert_eq!(status, 201, "{v}");
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The node name of the holder that last leased job `id` before it was done.
fn ran_on(http: &Http, node: &NodeProc, id: &str) -> Option<String> {
    let v = job(http, node, id);
    let mut last = None;
    for t in v["history"].as_array().unwrap() {
        match t["state"].as_str() {
            Some("leased") => last = t["note"].as_str().map(str::to_owned),
            Some("done") => break,
            _ => {}
        }
    }
    last.map(|h| h.split('#').next().unwrap().to_owned())
}

/// A GGUF model in `root/name/models/tiny.gguf`, before the node of that home starts; its
/// SHA-256.
fn with_model(root: &Path, name: &str) -> String {
    let models = root.join(name).join("models");
    std::fs::create_dir_all(&models).unwrap();
    let path = models.join("tiny.gguf");
    myco_jobs::llm::gguf::TinyLlama::default()
        .write(&path, true)
        .unwrap();
    myco_jobs::model::identity::sha256_hex(&std::fs::read(&path).unwrap())
}

/// The content hash of `holder`'s model `tiny` as `node`'s view of the swarm has it.
fn hash_in_view(http: &Http, node: &NodeProc, holder: &str) -> Option<Value> {
    let (_, v) = http.get(&node.url("/api/swarm")).ok()?;
    let n = v["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == holder)?;
    let m = n["info"]["models"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == "tiny")?;
    Some(m["sha256"].clone())
}

#[test]
fn a_node_of_the_protocol_before_works_with_this_one() {
    let root = tempfile::tempdir().unwrap();
    with_model(root.path(), "b");
    // b is the release before: it speaks protocol 5 only (heartbeats without models'
    // hashes), so a comes down to it.
    let (a, b) = pair(root.path(), "5..5");
    let (ha, hb) = (Http::owner(&a), Http::owner(&b));
    eventually(LONG, "a and b up in each other's view", || {
        let (va, vb) = (view(&ha, &a), view(&hb, &b));
        (va.get("b").is_some_and(|s| s.0 == "up") && vb.get("a").is_some_and(|s| s.0 == "up"))
            .then_some(())
    });
    lowers_its_protocol(root.path(), "a");
    // b's model arrives in the old shape: no hash.
    let hash = eventually(LONG, "b's model in a's view", || hash_in_view(&ha, &a, "b"));
    assert!(hash.is_null(), "{hash}");
    stolen(&ha, &a, "a", "b");
    stolen(&hb, &b, "b", "a");
}

#[test]
fn nodes_of_adjacent_protocols_work_together() {
    let root = tempfile::tempdir().unwrap();
    let sha = with_model(root.path(), "b");
    // b is the next release: it speaks this build's protocol and the one after.
    let next = format!(
        "{}..{}",
        myco_runtime::cluster::wire::PROTOCOL,
        myco_runtime::cluster::wire::PROTOCOL + 1
    );
    let (a, b) = pair(root.path(), &next);
    let (ha, hb) = (Http::owner(&a), Http::owner(&b));
    eventually(LONG, "a and b up in each other's view", || {
        let (va, vb) = (view(&ha, &a), view(&hb, &b));
        (va.get("b").is_some_and(|s| s.0 == "up") && vb.get("a").is_some_and(|s| s.0 == "up"))
            .then_some(())
    });
    // b came down to a's protocol, and a read it.
    lowers_its_protocol(root.path(), "b");
    // At protocol 6 on, a model travels with its content hash.
    eventually(LONG, "b's model's hash in a's view", || {
        (hash_in_view(&ha, &a, "b")? == sha.as_str()).then_some(())
    });
    // Work flows both ways: idle b steals from a, then idle a from b (a few rounds, as a
    // busy machine may let the owner run a whole round itself).
    stolen(&ha, &a, "a", "b");
    stolen(&hb, &b, "b", "a");
}

/// Submit rounds of no-ops to `owner` until `thief` has run one of them (every job done).
fn stolen(http: &Http, owner: &NodeProc, tag: &str, thief: &str) {
    let mut seen = Vec::new();
    for round in 0..5 {
        // More than the owner leases ahead for its one worker (32), so some stay queued
        // for the thief to take.
        let ids = noops(http, owner, &format!("{tag}{round}"), 48, 100);
        for id in &ids {
            done(http, owner, id, "the jobs");
        }
        let ran: Vec<Option<String>> = ids.iter().map(|id| ran_on(http, owner, id)).collect();
        if ran.iter().any(|n| n.as_deref() == Some(thief)) {
            return;
        }
        seen.push(ran);
    }
    panic!("{thief} ran none of {tag}'s jobs: {seen:?}");
}

#[test]
fn nodes_that_share_no_protocol_each_say_why_and_lose_no_job() {
    let root = tempfile::tempdir().unwrap();
    let newer = myco_runtime::cluster::wire::PROTOCOL + 1;
    let (a, b) = pair(root.path(), &format!("{newer}..{newer}"));
    let (ha, hb) = (Http::owner(&a), Http::owner(&b));
    let (why_a, why_b) = eventually(LONG, "each to call the other incompatible", || {
        let (va, vb) = (view(&ha, &a), view(&hb, &b));
        let a_says = va.get("b").filter(|s| s.0 == "incompatible")?.1.clone()?;
        let b_says = vb.get("a").filter(|s| s.0 == "incompatible")?.1.clone()?;
        Some((a_says, b_says))
    });
    assert!(
        why_a.contains("upgrade this node") && why_a.contains(&newer.to_string()),
        "{why_a}"
    );
    assert!(why_b.contains("upgrade `a`"), "{why_b}");
    let out = a.cli().args(["swarm"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("incompatible") && text.contains("upgrade this node"),
        "{text}"
    );
    // Each keeps running its own jobs.
    let from_a = noops(&ha, &a, "a", 3, 0);
    let from_b = noops(&hb, &b, "b", 3, 0);
    for id in &from_a {
        done(&ha, &a, id, "a's jobs");
        assert_eq!(ran_on(&ha, &a, id).as_deref(), Some("a"));
    }
    for id in &from_b {
        done(&hb, &b, id, "b's jobs");
        assert_eq!(ran_on(&hb, &b, id).as_deref(), Some("b"));
    }
}
