//! Crash test with real processes: `myco node` is killed with SIGKILL at random moments while
//! 2,000 small jobs are being submitted and executed, and restarted each time. Every job whose
//! submission was acknowledged must end `done` exactly once with its result intact, and no
//! job may exist that nobody asked for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Http, NodeProc, eventually};

const JOBS: usize = 2_000;
const BATCH: usize = 10;
const KILLS: usize = 6;

fn spec(i: usize) -> serde_json::Value {
    serde_json::json!({
        "toml": format!(
            "version = 1\nkind = \"noop\"\nmax_attempts = 10\nidempotency_key = \"crash-{i}\"\n\
             [noop]\npayload = \"payload-{i}-{}\"\nsleep_ms = 2\n",
            i * 7919 % 1_000_003
        ),
        "base_dir": "/",
    })
}

fn expected_payload(i: usize) -> String {
    format!("payload-{i}-{}", i * 7919 % 1_000_003)
}

#[test]
fn sigkill_during_submit_and_execute_loses_nothing() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("config.toml"),
        "backoff_base = 0.05\nbackoff_max = 0.5\n",
    )
    .unwrap();
    let node = NodeProc::start(home.path(), &[]);
    let addr = Arc::new(Mutex::new(node.addr));
    let node = Arc::new(Mutex::new(node));
    let submitting = Arc::new(AtomicBool::new(true));

    // The submitter: batches with idempotency keys, retried until acknowledged, as a real
    // client of a flaky node would. `acked[i]` is the id the node acknowledged for job i.
    let submitter = {
        let addr = addr.clone();
        let submitting = submitting.clone();
        std::thread::spawn(move || {
            let http = Http::new();
            let mut acked: HashMap<usize, String> = HashMap::new();
            let mut retries = 0;
            for start in (0..JOBS).step_by(BATCH) {
                let jobs: Vec<_> = (start..start + BATCH).map(spec).collect();
                let body = serde_json::json!({ "jobs": jobs });
                loop {
                    let url = format!("http://{}/api/jobs", *addr.lock().unwrap());
                    match http.post(&url, &body) {
                        Ok((status, reply)) if status == 201 || status == 200 => {
                            for (k, j) in reply["jobs"].as_array().unwrap().iter().enumerate() {
                                acked.insert(start + k, j["id"].as_str().unwrap().to_owned());
                            }
                            break;
                        }
                        Ok((status, reply)) => panic!("submit refused: {status} {reply}"),
                        Err(_) => {
                            retries += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            }
            submitting.store(false, Ordering::SeqCst);
            (acked, retries)
        })
    };

    // The killer: SIGKILL at random moments, restart at once on the same home.
    let mut kills = 0;
    while kills < KILLS {
        std::thread::sleep(Duration::from_millis(fastrand::u64(150..600)));
        let mut n = node.lock().unwrap();
        n.kill9();
        kills += 1;
        let fresh = NodeProc::start(home.path(), &[]);
        *addr.lock().unwrap() = fresh.addr;
        *n = fresh;
    }
    let (acked, retries) = submitter.join().unwrap();
    assert_eq!(acked.len(), JOBS, "every batch was eventually acknowledged");
    eprintln!("{kills} kills, {retries} submit retries");

    let http = Http::new();
    let base = format!("http://{}", *addr.lock().unwrap());
    let jobs = eventually(Duration::from_secs(180), "all jobs done", || {
        let (_, v) = http
            .get(&format!("{base}/api/jobs?all=true&limit=100000"))
            .ok()?;
        let jobs = v["jobs"].as_array()?.clone();
        let done = jobs.iter().filter(|j| j["state"] == "done").count();
        (done == JOBS).then_some(jobs)
    });

    // Exactly the acknowledged jobs exist: none lost, none duplicated, none half-made.
    assert_eq!(jobs.len(), JOBS, "no job beyond the ones submitted");
    let by_id: HashMap<String, &serde_json::Value> = jobs
        .iter()
        .map(|j| (j["id"].as_str().unwrap().to_owned(), j))
        .collect();
    assert_eq!(by_id.len(), JOBS, "ids are unique");
    for (i, id) in &acked {
        let job = by_id
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged job {i} ({id}) is lost"));
        assert_eq!(job["idempotency_key"], format!("crash-{i}"));
        let dones = job["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "done")
            .count();
        assert_eq!(dones, 1, "job {i} was recorded done exactly once: {job}");
        let (status, text) = http
            .get_text(&format!("{base}/api/jobs/{id}/result"))
            .unwrap();
        assert_eq!(status, 200);
        let result: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(
            result["payload"],
            expected_payload(*i),
            "job {i}'s result is intact"
        );
    }
    let (_, health) = http.get(&format!("{base}/health")).unwrap();
    assert_eq!(
        health["jobs"]["done"], JOBS as u64,
        "the exact counts agree"
    );
    assert_eq!(health["jobs"]["queued"], 0);
    assert_eq!(health["jobs"]["leased"], 0);

    // And a clean stop after all that.
    let status = node.lock().unwrap().terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
}
