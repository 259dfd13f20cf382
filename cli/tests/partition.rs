//! A network partition with real node processes: node C runs in a network namespace this
//! test creates, linked to the host by a veth pair on a private /30 that exists only on this
//! machine. A and B listen on the host end. Mid-run the link goes down (C is cut off), then
//! comes back. Nothing may be lost or duplicated: every job ends done exactly once at its
//! owner, including those C was running when the link went down.
//!
//! Needs root (`ip netns`): ignored by plain `cargo test`; test.sh runs it (`--ignored`)
//! where it runs as root, as CI does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::netns::{Netns, is_root};
use common::{Http, NodeProc, eventually};

const JOBS: usize = 400;

#[test]
#[ignore = "needs root for `ip netns`; test.sh runs it with --ignored as root"]
fn a_partitioned_node_loses_nothing_and_duplicates_nothing() {
    assert!(is_root(), "the partition test needs root for `ip netns`");
    let tag = std::process::id() % 100_000;
    let Some(ns) = Netns::create("part", tag, 77) else {
        panic!("cannot create network namespace myco-part-{tag} (ip netns)");
    };
    let root = tempfile::tempdir().unwrap();
    let home = |n: &str| root.path().join(n);
    let config = "lease = 3\ntick = 0.2\nheartbeat = 0.25\npeer_timeout = 2\nbackoff_base = 0.05\n";
    for n in ["a", "b", "c"] {
        std::fs::create_dir_all(home(n)).unwrap();
        std::fs::write(home(n).join("config.toml"), config).unwrap();
    }
    let a = NodeProc::start_with(
        &home("a"),
        &[
            "--name",
            "a",
            "--no-discovery",
            "--cluster",
            "10.213.77.1:0",
        ],
    );
    let a_cluster = a.cluster.clone().unwrap();
    for n in ["b", "c"] {
        std::fs::copy(home("a").join("swarm.key"), home(n).join("swarm.key")).unwrap();
    }
    let b = NodeProc::start_with(
        &home("b"),
        &[
            "--name",
            "b",
            "--no-discovery",
            "--cluster",
            "10.213.77.1:0",
            "--join",
            &a_cluster,
        ],
    );
    // C lives in the namespace: `ip netns exec` runs the same binary there.
    let c = {
        let mut cmd = common::myco_in(Some(&ns.name), &home("c"));
        cmd.args(["--api", "10.213.77.2:0", "--json", "node", "--name", "c"])
            .args([
                "--no-discovery",
                "--cluster",
                "10.213.77.2:0",
                "--join",
                &a_cluster,
            ]);
        NodeProc::from_command(cmd, &home("c"))
    };
    let http = Http::new();
    // c's API listens beyond loopback (in its namespace): it needs c's token.
    let http_c = Http::owner(&c);
    let client = |node: &NodeProc| {
        if std::ptr::eq(node, &c) {
            &http_c
        } else {
            &http
        }
    };
    let up = |node: &NodeProc, names: &[&str]| {
        let Ok((200, v)) = client(node).get(&node.url("/api/swarm")) else {
            return false;
        };
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        names.iter().all(|want| {
            nodes
                .iter()
                .any(|n| n["name"] == *want && (n["status"] == "up" || n["status"] == "self"))
        })
    };
    eventually(
        Duration::from_secs(20),
        "the three-node swarm forms",
        || (up(&a, &["a", "b", "c"]) && up(&c, &["a", "b", "c"])).then_some(()),
    );

    let jobs: Vec<_> = (0..JOBS)
        .map(|i| {
            serde_json::json!({
                "toml": format!("version = 1\nkind = \"noop\"\nmax_attempts = 10\n[noop]\npayload = \"part-{i}\"\nsleep_ms = 25\n"),
                "base_dir": "/",
            })
        })
        .collect();
    let (status, reply) = http
        .post(&a.url("/api/jobs"), &serde_json::json!({ "jobs": jobs }))
        .unwrap();
    assert_eq!(status, 201, "{reply}");
    let ids: Vec<String> = reply["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();

    // Cut C off once it is running stolen jobs.
    eventually(Duration::from_secs(30), "c runs stolen jobs", || {
        let (_, m) = http_c.get_text(&c.url("/metrics")).ok()?;
        m.lines()
            .find_map(|l| {
                l.strip_prefix("myco_stolen_jobs_total ")?
                    .parse::<f64>()
                    .ok()
            })
            .filter(|n| *n >= 6.0)
    });
    ns.link(false);
    eventually(Duration::from_secs(20), "a notices the partition", || {
        (!up(&a, &["c"])).then_some(())
    });
    // The leases C held expire at A (lease = 3 s) and the work goes on without it.
    eventually(
        Duration::from_secs(20),
        "a takes back the jobs leased to c",
        || {
            let (_, v) = http
                .get(&a.url("/api/jobs?all=true&state=leased&limit=100000"))
                .ok()?;
            let held_by_c = v["jobs"]
                .as_array()?
                .iter()
                .any(|j| j["holder"].as_str().is_some_and(|h| h.starts_with("c#")));
            (!held_by_c).then_some(())
        },
    );
    ns.link(true);
    eventually(
        Duration::from_secs(30),
        "c rejoins after the partition heals",
        || up(&a, &["a", "b", "c"]).then_some(()),
    );

    let done = eventually(Duration::from_secs(120), "every job done", || {
        let (_, v) = http.get(&a.url("/api/jobs?all=true&limit=100000")).ok()?;
        let jobs = v["jobs"].as_array()?.clone();
        (jobs.iter().filter(|j| j["state"] == "done").count() == JOBS).then_some(jobs)
    });
    assert_eq!(done.len(), JOBS, "nothing beyond what was submitted");
    let mut by_holder = std::collections::BTreeMap::<String, usize>::new();
    for j in &done {
        let history = j["history"].as_array().unwrap();
        let dones = history.iter().filter(|t| t["state"] == "done").count();
        assert_eq!(dones, 1, "recorded once: {j}");
        let holder = history
            .iter()
            .rev()
            .find(|t| t["state"] == "leased")
            .and_then(|t| t["note"].as_str())
            .unwrap_or("?")
            .split('#')
            .next()
            .unwrap()
            .to_owned();
        *by_holder.entry(holder).or_default() += 1;
    }
    for (i, id) in ids.iter().enumerate() {
        let (status, text) = http
            .get_text(&a.url(&format!("/api/jobs/{id}/result")))
            .unwrap();
        assert_eq!(status, 200);
        assert!(text.contains(&format!("\"part-{i}\"")), "job {i}: {text}");
    }
    eprintln!("partition: jobs by last holder {by_holder:?}");
    // C's outbox drains once it is back: nothing left undelivered.
    eventually(Duration::from_secs(30), "c's outbox is delivered", || {
        let (_, h) = http_c.get(&c.url("/health")).ok()?;
        (h["outbox"].as_u64() == Some(0)).then_some(())
    });
    drop(b);
}
