//! Work stealing with real node processes on 127.0.0.1: jobs submitted to one node (the
//! owner) run on every node of the swarm, and each ends done exactly once whatever happens to
//! the thieves (SIGKILL, SIGSTOP) or to the owner (kill -9 and restart).
//!
//! "Done exactly once" is checked in the owner's records: every submitted job is done, its
//! history has one `done` entry, its result is the payload it was given, the owner's counts
//! add up to the number submitted, and its `myco_jobs_finished_total` counter did not count a
//! job twice. Who ran a job is the holder of its last `leased` entry before `done`.
//!
//! Timings (wall time, failure detection, rejoin) are measured and printed, never asserted.
//! The tests take turns (one lock): each starts two or three nodes, and on a 2-core machine
//! several swarms at once would make the failure-detection measurements meaningless.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{Http, NodeProc, eventually, noop_spec};
use myco_runtime::queue::{Queue, QueueOptions};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time (a failed test poisons the lock; the next one goes on).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Short leases and a fast clock, so that lost leases come back in seconds.
const FAST: &str = "lease = 3\ntick = 0.2\nbackoff_base = 0.05\nbackoff_max = 1\n\
                    heartbeat = 0.25\npeer_timeout = 2\n";

/// A discovery port of this test's own (a range apart from `swarm.rs`'s), so that parallel
/// test processes do not hear each other.
fn discovery_port(salt: u16) -> String {
    (20_000 + (std::process::id() % 2_000) as u16 * 4 + salt).to_string()
}

/// Nodes `a`, `b`, `c`... in one temporary directory, sharing `a`'s secret and a discovery
/// port on the loopback interface. On a failed test, prints the tail of every node's log.
struct Swarm {
    root: tempfile::TempDir,
    port: String,
    config: String,
    logs: Mutex<Vec<PathBuf>>,
}

impl Swarm {
    fn new(salt: u16, config: &str) -> Swarm {
        Swarm {
            root: tempfile::tempdir().unwrap(),
            port: discovery_port(salt),
            config: config.to_owned(),
            logs: Mutex::new(Vec::new()),
        }
    }

    fn home(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Start (or restart) node `name`; every node but `a` gets `a`'s secret.
    fn start(&self, name: &str, extra: &[&str]) -> NodeProc {
        self.start_env(name, extra, &[])
    }

    /// [`Swarm::start`] with variables set in the node's environment.
    fn start_env(&self, name: &str, extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> NodeProc {
        let home = self.home(name);
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("config.toml"), &self.config).unwrap();
        if name != "a" && !home.join("swarm.key").exists() {
            std::fs::copy(self.home("a").join("swarm.key"), home.join("swarm.key")).unwrap();
        }
        let log = {
            let mut logs = self.logs.lock().unwrap();
            let path = self
                .root
                .path()
                .join(format!("{name}-{}.log", logs.len() + 1));
            logs.push(path.clone());
            path
        };
        let mut args = vec![
            "--name",
            name,
            "--discovery-iface",
            "127.0.0.1",
            "--discovery-port",
            &self.port,
        ];
        args.extend_from_slice(extra);
        NodeProc::start_logged_env(&home, &args, &log, env)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for path in self.logs.lock().map(|l| l.clone()).unwrap_or_default() {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("---- {} (last {} lines)", path.display(), tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// name → status ("self", "up", "down") as `node` sees the swarm.
fn view(http: &Http, node: &NodeProc) -> BTreeMap<String, String> {
    let Ok((200, v)) = http.get(&node.url("/api/swarm")) else {
        return BTreeMap::new();
    };
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn status_of(http: &Http, node: &NodeProc, name: &str) -> Option<String> {
    view(http, node).remove(name)
}

fn sees_up(http: &Http, node: &NodeProc, names: &[&str]) -> bool {
    let v = view(http, node);
    names
        .iter()
        .all(|n| matches!(v.get(*n).map(String::as_str), Some("up" | "self")))
}

/// Wait until every node lists every node as up; returns how long that took.
fn converge(http: &Http, nodes: &[&NodeProc], names: &[&str]) -> Duration {
    let start = Instant::now();
    eventually(Duration::from_secs(20), "the swarm forms", || {
        nodes.iter().all(|n| sees_up(http, n, names)).then_some(())
    });
    start.elapsed()
}

/// A noop job that sleeps `sleep_ms` and returns `payload`.
fn job(payload: &str, sleep_ms: u64) -> Value {
    let mut spec = noop_spec(payload, "max_attempts = 10");
    let toml = format!("{}sleep_ms = {sleep_ms}\n", spec["toml"].as_str().unwrap());
    spec["toml"] = Value::String(toml);
    spec
}

/// Submit `(payload, sleep_ms)` jobs in one request; returns `(id, payload)` in order.
fn submit(http: &Http, node: &NodeProc, jobs: &[(String, u64)]) -> Vec<(String, String)> {
    let body = serde_json::json!({
        "jobs": jobs.iter().map(|(p, ms)| job(p, *ms)).collect::<Vec<_>>(),
    });
    let (status, reply) = http.post(&node.url("/api/jobs"), &body).unwrap();
    assert_eq!(status, 201, "{reply}");
    let ids = reply["jobs"].as_array().unwrap();
    assert_eq!(ids.len(), jobs.len());
    ids.iter()
        .zip(jobs)
        .map(|(j, (p, _))| (j["id"].as_str().unwrap().to_owned(), p.clone()))
        .collect()
}

/// Every job the node owns, with its history.
fn all_jobs(http: &Http, node: &NodeProc) -> Vec<Value> {
    let (status, v) = http
        .get(&node.url("/api/jobs?all=true&limit=100000"))
        .unwrap();
    assert_eq!(status, 200, "{v}");
    v["jobs"].as_array().unwrap().clone()
}

/// Ids of the jobs the node has leased to a holder of `node_name` (`name#N`) right now.
fn leased_to(http: &Http, owner: &NodeProc, node_name: &str) -> HashSet<String> {
    let Ok((200, v)) = http.get(&owner.url("/api/jobs?all=true&state=leased&limit=100000")) else {
        return HashSet::new();
    };
    let prefix = format!("{node_name}#");
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["holder"].as_str().is_some_and(|h| h.starts_with(&prefix)))
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `/health` job counts by state.
fn counts(http: &Http, node: &NodeProc) -> Option<BTreeMap<String, u64>> {
    let Ok((200, v)) = http.get(&node.url("/health")) else {
        return None;
    };
    Some(
        v["jobs"]
            .as_object()?
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
            .collect(),
    )
}

fn wait_all_done(http: &Http, owner: &NodeProc, n: u64, limit: Duration) {
    eventually(limit, &format!("all {n} jobs done at the owner"), || {
        let c = counts(http, owner)?;
        (c.get("done") == Some(&n)).then_some(())
    });
}

/// One value of the node's Prometheus text (`name{labels} value`, labels included).
fn metric(http: &Http, node: &NodeProc, series: &str) -> Option<f64> {
    let (status, text) = http.get_text(&node.url("/metrics")).ok()?;
    if status != 200 {
        return None;
    }
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// True when the node's workers are all idle and it holds nothing: every stolen job it had
/// is finished (and its outcome is in its outbox, or delivered).
fn idle(http: &Http, node: &NodeProc, workers: f64) -> bool {
    metric(http, node, "myco_jobs_running") == Some(0.0)
        && metric(http, node, "myco_workers_idle") == Some(workers)
}

/// Wait until `node` has run `n` more clock ticks (each commits its queue) while it sees
/// `peer` up: each tick with something in its outbox starts a delivery round.
fn ticks_with_peer(http: &Http, node: &NodeProc, peer: &str, n: f64) {
    let commits = || metric(http, node, "myco_queue_commits_total");
    let mut since = None;
    eventually(
        Duration::from_secs(20),
        &format!("{n} ticks with {peer} up"),
        || {
            if !sees_up(http, node, &[peer]) {
                since = None;
                return None;
            }
            let now = commits()?;
            let start = *since.get_or_insert(now);
            (now >= start + n).then_some(())
        },
    );
}

/// The node name (before `#`) of the holder of the last `leased` entry before `done`.
fn ran_on(history: &[Value]) -> Option<String> {
    let mut last = None;
    for t in history {
        match t["state"].as_str() {
            Some("leased") => last = t["note"].as_str(),
            Some("done") => break,
            _ => {}
        }
    }
    last.map(|h| h.split('#').next().unwrap().to_owned())
}

fn notes(history: &[Value]) -> Vec<&str> {
    history.iter().filter_map(|t| t["note"].as_str()).collect()
}

/// The owner's view after the run: `id → record`.
struct Ledger {
    jobs: BTreeMap<String, Value>,
}

impl Ledger {
    fn history(&self, id: &str) -> &[Value] {
        self.jobs[id]["history"].as_array().unwrap()
    }

    /// How many jobs have a history note containing `needle`.
    fn with_note(&self, needle: &str) -> usize {
        self.jobs
            .values()
            .filter(|j| {
                notes(j["history"].as_array().unwrap())
                    .iter()
                    .any(|n| n.contains(needle))
            })
            .count()
    }
}

/// Assert that every submitted job ended done exactly once at the owner, with its payload,
/// and that the owner holds exactly these jobs. Returns the owner's records and how many
/// jobs each node ran.
fn assert_done_exactly_once(
    http: &Http,
    owner: &NodeProc,
    submitted: &[(String, String)],
) -> (Ledger, BTreeMap<String, usize>) {
    let n = submitted.len() as u64;
    let c = counts(http, owner).unwrap();
    assert_eq!(
        c.values().sum::<u64>(),
        n,
        "the owner holds every job: {c:?}"
    );
    assert_eq!(c.get("done"), Some(&n), "all done: {c:?}");
    let done_total = metric(
        http,
        owner,
        "myco_jobs_finished_total{kind=\"noop\",state=\"done\"}",
    );
    let jobs: BTreeMap<String, Value> = all_jobs(http, owner)
        .into_iter()
        .map(|j| (j["id"].as_str().unwrap().to_owned(), j))
        .collect();
    assert_eq!(jobs.len(), submitted.len());
    let ledger = Ledger { jobs };
    let mut shares: BTreeMap<String, usize> = BTreeMap::new();
    for (id, payload) in submitted {
        let rec = ledger
            .jobs
            .get(id)
            .unwrap_or_else(|| panic!("{id} is missing"));
        assert_eq!(rec["state"], "done", "{rec:#}");
        let history = ledger.history(id);
        let dones = history.iter().filter(|t| t["state"] == "done").count();
        assert_eq!(dones, 1, "{id} done exactly once: {rec:#}");
        let who = ran_on(history).unwrap_or_else(|| panic!("{id} was never leased: {rec:#}"));
        *shares.entry(who).or_default() += 1;
        let (status, text) = http
            .get_text(&owner.url(&format!("/api/jobs/{id}/result")))
            .unwrap();
        assert_eq!(status, 200, "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "one result line for {id}: {text:?}");
        let v: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["payload"], payload.as_str(), "{id}'s result");
    }
    // Only meaningful for an owner that ran since the jobs were submitted (no restart).
    if let Some(total) = done_total {
        assert!(
            total <= n as f64,
            "the owner counted {total} jobs done, of {n}"
        );
    }
    (ledger, shares)
}

/// Stop `node` (SIGTERM) and count what is left in its outbox: results of stolen jobs that
/// their owner has not acknowledged.
fn outbox_after_stop(node: &mut NodeProc, name: &str) -> u64 {
    let status = node.terminate();
    assert!(status.success(), "{name} stopped cleanly: {status}");
    let queue = Queue::open(
        &node.home.join("queue.redb"),
        QueueOptions {
            node: name.to_owned(),
            ..QueueOptions::default()
        },
    )
    .unwrap();
    queue.outbox_len().unwrap()
}

fn jobs_named(tag: &str, n: usize, sleep_ms: impl Fn(usize) -> u64) -> Vec<(String, u64)> {
    (0..n)
        .map(|i| (format!("{tag}-{i:05}-{}", fastrand::u64(..)), sleep_ms(i)))
        .collect()
}

/// Acceptance 3: 2,000 jobs submitted to A alone run on A, B and C, each exactly once.
#[test]
fn jobs_submitted_to_one_node_run_on_all_three_exactly_once() {
    let _serial = serial();
    let swarm = Swarm::new(0, FAST);
    let a = swarm.start("a", &[]);
    let b = swarm.start("b", &[]);
    let c = swarm.start("c", &[]);
    let http = Http::new();
    let formed = converge(&http, &[&a, &b, &c], &["a", "b", "c"]);
    eprintln!("swarm of three formed in {formed:?}");

    let jobs = jobs_named("many", 2_000, |i| 5 + (i % 6) as u64);
    let start = Instant::now();
    let submitted = submit(&http, &a, &jobs);
    eprintln!("submitted 2000 jobs in {:?}", start.elapsed());
    wait_all_done(&http, &a, 2_000, Duration::from_secs(120));
    let wall = start.elapsed();

    let (_, shares) = assert_done_exactly_once(&http, &a, &submitted);
    eprintln!("2000 jobs (5-10 ms each) done in {wall:?}; ran on: {shares:?}");
    for name in ["a", "b", "c"] {
        assert!(
            shares.get(name).copied().unwrap_or(0) > 0,
            "{name} ran a share: {shares:?}"
        );
    }
    assert_eq!(shares.values().sum::<usize>(), 2_000);
    // The thieves own nothing: everything they ran was recorded at A.
    for thief in [&b, &c] {
        let c = counts(&http, thief).unwrap();
        assert_eq!(c.values().sum::<u64>(), 0, "{c:?}");
    }
}

/// Acceptance 4: mid-run, one thief dies (SIGKILL) and one hangs for 10 s (SIGSTOP): both
/// are noticed, their leases expire back to A, the hung one rejoins, and every job is still
/// done exactly once.
#[test]
fn a_killed_thief_and_a_hung_thief_lose_no_job_and_duplicate_none() {
    let _serial = serial();
    let swarm = Swarm::new(1, FAST);
    let a = swarm.start("a", &[]);
    let mut b = swarm.start("b", &[]);
    let c = swarm.start("c", &[]);
    let http = Http::new();
    let formed = converge(&http, &[&a, &b, &c], &["a", "b", "c"]);
    eprintln!("swarm of three formed in {formed:?}");

    let jobs = jobs_named("faults", 600, |_| 40);
    let start = Instant::now();
    let submitted = submit(&http, &a, &jobs);
    // Mid-run: a sixth of the jobs are done, and both thieves hold jobs of A's.
    eventually(Duration::from_secs(30), "b and c hold stolen jobs", || {
        (counts(&http, &a)?["done"] >= 100
            && !leased_to(&http, &a, "b").is_empty()
            && !leased_to(&http, &a, "c").is_empty())
        .then_some(())
    });
    let done_before = counts(&http, &a).unwrap()["done"];
    b.kill9();
    c.signal("-STOP");
    let faulted = Instant::now();
    let held_by_b = leased_to(&http, &a, "b");
    let held_by_c = leased_to(&http, &a, "c");
    eprintln!(
        "at the faults ({:?} into the run, {done_before} of 600 done): b held {}, c held {} \
         jobs of A's",
        faulted - start,
        held_by_b.len(),
        held_by_c.len()
    );

    // A notices both.
    let (mut b_down, mut c_down) = (None, None);
    eventually(Duration::from_secs(20), "A marks b and c down", || {
        let v = view(&http, &a);
        if b_down.is_none() && v.get("b").map(String::as_str) == Some("down") {
            b_down = Some(faulted.elapsed());
        }
        if c_down.is_none() && v.get("c").map(String::as_str) == Some("down") {
            c_down = Some(faulted.elapsed());
        }
        (b_down.is_some() && c_down.is_some()).then_some(())
    });
    eprintln!(
        "failure detection at A: SIGKILLed b down after {:?}, SIGSTOPped c down after {:?} \
         (goal < 5 s)",
        b_down.unwrap(),
        c_down.unwrap()
    );

    // Their leases expire at A (3 s) and the jobs run again, while C still hangs.
    eventually(
        Duration::from_secs(20),
        "the jobs b held are queued again or done",
        || {
            let still = leased_to(&http, &a, "b");
            held_by_b.is_disjoint(&still).then_some(())
        },
    );
    eprintln!(
        "b's leases were all gone at A {:?} after the kill",
        faulted.elapsed()
    );
    // C hangs for 10 s in all.
    let hang = Duration::from_secs(10);
    if let Some(left) = hang.checked_sub(faulted.elapsed()) {
        std::thread::sleep(left);
    }
    c.signal("-CONT");
    let resumed = Instant::now();
    eventually(Duration::from_secs(20), "c is back up at A", || {
        (status_of(&http, &a, "c").as_deref() == Some("up")).then_some(())
    });
    eprintln!("rejoin: c up at A {:?} after SIGCONT", resumed.elapsed());

    wait_all_done(&http, &a, 600, Duration::from_secs(60));
    let wall = start.elapsed();
    let (ledger, shares) = assert_done_exactly_once(&http, &a, &submitted);
    let b_expired = ledger.with_note("lease of b#1 expired");
    let c_expired = ledger.with_note("lease of c#1 expired");
    eprintln!(
        "600 jobs (40 ms each) done in {wall:?}; ran on: {shares:?}; leases expired: \
         b {b_expired}, c {c_expired}"
    );
    // The sets were read after the kill and the stop, so every job in them can only come
    // back by lease expiry (a thief may, rarely, have delivered all it held just before).
    assert!(
        b_expired > 0 || held_by_b.is_empty(),
        "b's jobs came back when its leases expired"
    );
    assert!(
        c_expired > 0 || held_by_c.is_empty(),
        "c's jobs came back when its leases expired"
    );
    let came_back = |held: &HashSet<String>, note: &str| {
        held.iter()
            .filter(|id| notes(ledger.history(id)).iter().any(|n| n.contains(note)))
            .count()
    };
    eprintln!(
        "of the jobs held at the faults, came back by lease expiry: b {} of {}, c {} of {}",
        came_back(&held_by_b, "lease of b#1 expired"),
        held_by_b.len(),
        came_back(&held_by_c, "lease of c#1 expired"),
        held_by_c.len()
    );
    // b is dead: nothing but expiry can have freed what it held, unless b's last delivery
    // was already on its way when it was killed (then A records b's own result, once).
    let delivered_before_the_kill = held_by_b
        .iter()
        .filter(|id| {
            let h = ledger.history(id);
            ran_on(h).as_deref() == Some("b")
                && !notes(h).iter().any(|n| n.contains("lease of b#1 expired"))
        })
        .count();
    assert_eq!(
        came_back(&held_by_b, "lease of b#1 expired") + delivered_before_the_kill,
        held_by_b.len(),
        "every job the killed b held came back by lease expiry (or was delivered before)"
    );
}

/// Acceptance 5: the owner is killed (-9) while B holds stolen jobs; B finishes them into its
/// outbox, A restarts on the same home, and B's results arrive: every job done once, and the
/// jobs B held were not run again.
#[test]
fn an_owner_killed_and_restarted_gets_the_thiefs_results_and_finishes_the_rest() {
    let _serial = serial();
    // Longer leases: B's leases must outlive A's absence (B cannot renew them meanwhile), so
    // that A cannot re-run B's jobs and the only way they end done is B's outbox.
    let swarm = Swarm::new(2, &FAST.replace("lease = 3", "lease = 15"));
    let mut a = swarm.start("a", &[]);
    let b = swarm.start("b", &["--workers", "2"]);
    let http = Http::new();
    let formed = converge(&http, &[&a, &b], &["a", "b"]);
    eprintln!("swarm of two formed in {formed:?}");

    let jobs = jobs_named("restart", 200, |_| 100);
    let start = Instant::now();
    let submitted = submit(&http, &a, &jobs);
    eventually(Duration::from_secs(30), "b holds stolen jobs", || {
        let c = counts(&http, &a)?;
        (c["done"] >= 20 && !leased_to(&http, &a, "b").is_empty()).then_some(())
    });
    let before = all_jobs(&http, &a);
    a.kill9();
    let killed = Instant::now();
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let held_by_b: HashSet<String> = before
        .iter()
        .filter(|j| j["holder"].as_str().is_some_and(|h| h.starts_with("b#")))
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    let held_by_a = before
        .iter()
        .filter(|j| j["holder"].as_str().is_some_and(|h| h.starts_with("a#")))
        .count();
    let done_before = before.iter().filter(|j| j["state"] == "done").count();
    eprintln!(
        "killed A {:?} into the run: {done_before} of 200 done, A held {held_by_a}, b held {}",
        killed - start,
        held_by_b.len()
    );
    assert!(!held_by_b.is_empty());

    // B notices, and finishes what it stole: the results wait in its outbox.
    eventually(Duration::from_secs(20), "b marks A down", || {
        (status_of(&http, &b, "a").as_deref() == Some("down")).then_some(())
    });
    let noticed = killed.elapsed();
    eventually(
        Duration::from_secs(20),
        "b finishes its stolen jobs",
        || idle(&http, &b, 2.0).then_some(()),
    );
    eprintln!(
        "b noticed A gone after {noticed:?}, and was idle with its outbox full after {:?}",
        killed.elapsed()
    );

    let a = swarm.start("a", &[]);
    let restarted = Instant::now();
    let (_, health) = http.get(&a.url("/health")).unwrap();
    assert_eq!(health["holder"], "a#2", "a new incarnation: {health}");
    eventually(Duration::from_secs(20), "a and b meet again", || {
        (sees_up(&http, &a, &["a", "b"]) && sees_up(&http, &b, &["a", "b"])).then_some(())
    });
    eprintln!(
        "A restarted; the two meet again {:?} later",
        restarted.elapsed()
    );
    eventually(Duration::from_secs(20), "b's outbox reaches A", || {
        let jobs = all_jobs(&http, &a);
        jobs.iter()
            .filter(|j| held_by_b.contains(j["id"].as_str().unwrap()))
            .all(|j| j["state"] == "done")
            .then_some(())
    });
    eprintln!(
        "b's results recorded at A {:?} after its restart",
        restarted.elapsed()
    );
    wait_all_done(&http, &a, 200, Duration::from_secs(60));
    eprintln!(
        "all 200 done {:?} after the restart ({:?} in all)",
        restarted.elapsed(),
        start.elapsed()
    );

    let (ledger, shares) = assert_done_exactly_once(&http, &a, &submitted);
    eprintln!(
        "ran on: {shares:?}; requeued at A's restart: {}; b's leases expired: {}",
        ledger.with_note("a#1 restarted"),
        ledger.with_note("lease of b#1 expired")
    );
    // A grant lost with A (committed, the reply never sent) leaves jobs leased to b that b
    // does not know of: they wait for the lease to expire.
    for (id, j) in &ledger.jobs {
        let h = j["history"].as_array().unwrap();
        if notes(h).iter().any(|n| n.starts_with("lease of b#")) {
            let steps: Vec<String> = h
                .iter()
                .map(|t| {
                    let at = t["at_ms"].as_i64().unwrap() - killed_ms as i64;
                    format!(
                        "{} {} at {at:+} ms",
                        t["state"].as_str().unwrap(),
                        t["note"].as_str().unwrap_or("-")
                    )
                })
                .collect();
            eprintln!("{id} waited for b's lease to expire (times from the kill): {steps:?}");
        }
    }
    for id in &held_by_b {
        let h = ledger.history(id);
        assert_eq!(
            ran_on(h).as_deref(),
            Some("b"),
            "{id} was done by b's delivery, not run again: {h:?}"
        );
    }
    if held_by_a > 0 {
        assert!(
            ledger.with_note("a#1 restarted") > 0,
            "A's own leases died with it and were requeued"
        );
    }
}

/// A thief hangs past its lease; its job runs again at the owner; the thief wakes, finishes
/// the job and delivers the late result: it is recorded once, never twice.
#[test]
fn a_late_result_from_a_hung_thief_is_recorded_once() {
    let _serial = serial();
    let swarm = Swarm::new(3, FAST);
    let a = swarm.start("a", &["--workers", "1"]);
    let mut c = swarm.start("c", &["--workers", "1"]);
    let http = Http::new();
    let formed = converge(&http, &[&a, &c], &["a", "c"]);
    eprintln!("swarm of two formed in {formed:?}");

    // Warm up: A's coordinator hears that it has a peer at the membership's next tick, and
    // until then leases work as a lone node does (dozens of jobs into its buffer, where no
    // thief can take them). Run quick jobs until C has stolen some: by then A knows.
    let mut submitted = Vec::new();
    let mut rounds = 0;
    eventually(Duration::from_secs(40), "c steals warm-up jobs", || {
        rounds += 1;
        submitted.extend(submit(&http, &a, &jobs_named("warm", 20, |_| 50)));
        wait_all_done(&http, &a, submitted.len() as u64, Duration::from_secs(20));
        all_jobs(&http, &a)
            .iter()
            .any(|j| ran_on(j["history"].as_array().unwrap()).as_deref() == Some("c"))
            .then_some(())
    });
    eprintln!("warm-up: c stole jobs in round {rounds}");

    // A runs one long job and keeps one on hand; the third waits, and C steals it.
    let jobs = jobs_named("late", 3, |_| 2_500);
    submitted.extend(submit(&http, &a, &jobs));
    let stolen = eventually(Duration::from_secs(30), "c runs a job of A's", || {
        let held = leased_to(&http, &a, "c");
        (held.len() == 1 && metric(&http, &c, "myco_jobs_running") == Some(1.0))
            .then(|| held.into_iter().next().unwrap())
    });
    c.signal("-STOP");
    let stopped = Instant::now();

    // Its lease expires (3 s) and A runs the job itself.
    let rerun = eventually(Duration::from_secs(40), "A runs the job again", || {
        let (_, j) = http.get(&a.url(&format!("/api/jobs/{stolen}"))).ok()?;
        (j["state"] == "done").then_some(j)
    });
    let h = rerun["history"].as_array().unwrap();
    eprintln!(
        "A re-ran c's job {:?} after c hung: {:?}",
        stopped.elapsed(),
        notes(h)
    );
    assert!(
        notes(h).iter().any(|n| n.starts_with("lease of c#")),
        "{rerun:#}"
    );
    assert_eq!(ran_on(h).as_deref(), Some("a"), "{rerun:#}");

    // C wakes: its job is past its time, so it finishes at once, and delivers late.
    c.signal("-CONT");
    let resumed = Instant::now();
    eventually(Duration::from_secs(20), "c is back and idle", || {
        (sees_up(&http, &a, &["a", "c"]) && sees_up(&http, &c, &["a", "c"]) && idle(&http, &c, 1.0))
            .then_some(())
    });
    eprintln!("c back up and idle {:?} after SIGCONT", resumed.elapsed());
    wait_all_done(&http, &a, submitted.len() as u64, Duration::from_secs(30));

    // The late result was delivered (C's outbox drains), and A kept one result.
    let mut restarts = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        ticks_with_peer(&http, &c, "a", 10.0);
        let left = outbox_after_stop(&mut c, "c");
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "c's late result never reached A ({left} left in its outbox)"
        );
        // Not delivered yet: start C again; it delivers its outbox once it meets A.
        restarts += 1;
        c = swarm.start("c", &["--workers", "1"]);
        eventually(Duration::from_secs(20), "c meets A again", || {
            (sees_up(&http, &a, &["a", "c"]) && sees_up(&http, &c, &["a", "c"])).then_some(())
        });
    }
    eprintln!(
        "c's outbox empty {:?} after SIGCONT ({restarts} restarts of c to get there)",
        resumed.elapsed()
    );
    let (ledger, shares) = assert_done_exactly_once(&http, &a, &submitted);
    let h = ledger.history(&stolen);
    assert_eq!(h.iter().filter(|t| t["state"] == "done").count(), 1);
    eprintln!(
        "ran on: {shares:?}; the stolen job's history: {:?}",
        notes(h)
    );
}

/// A node that was alone when its jobs arrived keeps a lone node's buffer (up to
/// `max(16 × workers, 32)` leased, unstarted jobs) after a peer joins: those jobs are not
/// queued, so no thief can take them, and they run one after another on the owner while the
/// peer idles. (The same happens for up to one heartbeat after a peer joins: the Coordinator
/// learns of it at Membership's next tick.)
#[test]
fn jobs_buffered_before_a_peer_joins_can_still_be_stolen() {
    let _serial = serial();
    let swarm = Swarm::new(0, FAST);
    let a = swarm.start("a", &["--workers", "1"]);
    let http = Http::new();
    let jobs = jobs_named("alone", 8, |_| 1_500);
    let start = Instant::now();
    let submitted = submit(&http, &a, &jobs);
    eventually(Duration::from_secs(10), "A leases the jobs", || {
        (counts(&http, &a)?["queued"] == 0).then_some(())
    });
    let c = swarm.start("c", &["--workers", "1"]);
    converge(&http, &[&a, &c], &["a", "c"]);
    wait_all_done(&http, &a, 8, Duration::from_secs(40));
    let (_, shares) = assert_done_exactly_once(&http, &a, &submitted);
    eprintln!(
        "8 jobs (1.5 s each) done in {:?}; ran on: {shares:?}",
        start.elapsed()
    );
    assert!(
        shares.get("c").copied().unwrap_or(0) > 0,
        "the idle peer ran some of A's buffered jobs: {shares:?}"
    );
}

/// Issue 14, acceptance 1: the owner's disk fills (every write to its queue file fails, as
/// `MYCO_FAULT_DISK_FULL` makes it) while a thief runs its jobs. The owner's API answers 503
/// naming the disk, the thief keeps its finished results in its outbox through repeated
/// delivery rounds (the owner acknowledges nothing it could not commit), and once space is
/// back the outbox drains: every job done exactly once, the thief's by its delivery.
#[test]
fn a_full_disk_at_the_owner_keeps_the_thiefs_outbox_until_it_recovers() {
    let _serial = serial();
    let swarm = Swarm::new(3, &FAST.replace("lease = 3", "lease = 20"));
    let switch = swarm.root.path().join("a-disk-is-full");
    let a = swarm.start_env(
        "a",
        &["--workers", "1"],
        &[(myco_runtime::queue::FAULT_DISK_FULL_ENV, switch.as_os_str())],
    );
    let b = swarm.start("b", &["--workers", "2"]);
    let http = Http::new();
    converge(&http, &[&a, &b], &["a", "b"]);

    // Jobs of 300 ms: those b holds when the disk fills finish after it.
    let jobs = jobs_named("full", 100, |_| 300);
    let submitted = submit(&http, &a, &jobs);
    eventually(Duration::from_secs(30), "b holds stolen jobs", || {
        let c = counts(&http, &a)?;
        (c["done"] >= 10 && leased_to(&http, &a, "b").len() >= 2).then_some(())
    });
    let held_by_b = leased_to(&http, &a, "b");
    std::fs::write(&switch, b"").unwrap();
    let full = Instant::now();

    let body = serde_json::json!({ "jobs": [job("refused", 1)] });
    let (status, reply) = http.post(&a.url("/api/jobs"), &body).unwrap();
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["error"]["code"], "storage", "{reply}");
    let hint = reply["error"]["hint"].as_str().unwrap();
    assert!(hint.contains("disk") && hint.contains("full"), "{reply}");

    // b finishes what it stole; a records none of it, so b's outbox holds it all.
    let outbox = |node: &NodeProc| -> Option<u64> {
        let (status, v) = http.get(&node.url("/health")).ok()?;
        (status == 200).then(|| v["outbox"].as_u64()).flatten()
    };
    let kept = eventually(
        Duration::from_secs(30),
        "b's outbox holds its results",
        || {
            let n = outbox(&b)?;
            (idle(&http, &b, 2.0) && n > 0).then_some(n)
        },
    );
    // Several delivery rounds to a, each refused: nothing is dropped meanwhile.
    ticks_with_peer(&http, &b, "a", 10.0);
    assert_eq!(outbox(&b), Some(kept), "b kept every undelivered result");
    let (status, _) = http.post(&a.url("/api/jobs"), &body).unwrap();
    assert_eq!(status, 503, "still full");
    eprintln!(
        "disk full for {:?}: b holds {kept} results (it had stolen {} when the disk filled)",
        full.elapsed(),
        held_by_b.len()
    );

    std::fs::remove_file(&switch).unwrap();
    let recovered = Instant::now();
    eventually(Duration::from_secs(30), "b's outbox drains", || {
        (outbox(&b)? == 0).then_some(())
    });
    eprintln!(
        "b's outbox drained {:?} after space came back",
        recovered.elapsed()
    );
    wait_all_done(&http, &a, 100, Duration::from_secs(90));
    let (ledger, shares) = assert_done_exactly_once(&http, &a, &submitted);
    eprintln!("ran on: {shares:?}");
    for id in &held_by_b {
        let h = ledger.history(id);
        assert_eq!(
            ran_on(h).as_deref(),
            Some("b"),
            "{id} was done by b's delivery: {h:?}"
        );
    }
}

/// Issue 31, acceptance 2: a 200-line LLM batch owned by A, B stealing lines; A is killed
/// (-9) mid-batch and restarted: the batch completes, its output has every `custom_id`
/// exactly once (and its error file none).
#[test]
fn a_batch_survives_its_owner_killed_mid_run_with_every_line_once() {
    let _serial = serial();
    let swarm = Swarm::new(4, &FAST.replace("lease = 3", "lease = 15"));
    for name in ["a", "b"] {
        let models = swarm.home(name).join("models");
        std::fs::create_dir_all(&models).unwrap();
        myco_jobs::llm::gguf::TinyLlama::default()
            .write(&models.join("tiny.gguf"), true)
            .unwrap();
    }
    let mut a = swarm.start("a", &[]);
    let b = swarm.start("b", &[]);
    let http = Http::new();
    let formed = converge(&http, &[&a, &b], &["a", "b"]);
    eprintln!("swarm of two formed in {formed:?}");

    // 200 greedy chat requests, as an OpenAI batch input file, in a batch job file.
    let dir = swarm.root.path().join("batch");
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines = String::new();
    for i in 0..200 {
        lines.push_str(
            &serde_json::json!({
                "custom_id": format!("line-{i}"), "method": "POST", "url": "/v1/chat/completions",
                "body": {
                    "model": "tiny.gguf", "max_tokens": 24, "temperature": 0, "n_ctx": 256,
                    "messages": [{"role": "user", "content": format!("line {i} of the batch")}],
                },
            })
            .to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(dir.join("requests.jsonl"), lines).unwrap();
    let spec = serde_json::json!({
        "toml": "version = 1\nkind = \"batch\"\n[batch]\ninput = \"requests.jsonl\"\n",
        "base_dir": dir,
    });
    // The owner's request (its token, from loopback): the job file may name any path.
    let (status, reply) = Http::owner(&a)
        .post(&a.url("/api/jobs"), &serde_json::json!({ "jobs": [spec] }))
        .unwrap();
    assert_eq!(status, 201, "{reply}");
    let batch = reply["jobs"][0]["id"].as_str().unwrap().to_owned();
    let children = |http: &Http, node: &NodeProc| -> Vec<Value> {
        let url = node.url(&format!("/api/jobs?parent={batch}&limit=1000"));
        match http.get(&url) {
            Ok((200, v)) => v["jobs"].as_array().cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    };
    eventually(Duration::from_secs(120), "b runs stolen lines", || {
        let c = children(&http, &a);
        let done = c.iter().filter(|j| j["state"] == "done").count();
        let at_b = c
            .iter()
            .filter(|j| j["holder"].as_str().is_some_and(|h| h.starts_with("b#")))
            .count();
        (done >= 20 && at_b > 0).then_some(())
    });
    let before = children(&http, &a);
    let done_before = before.iter().filter(|j| j["state"] == "done").count();
    a.kill9();
    eprintln!("killed A with {done_before} of 200 lines done");
    eventually(Duration::from_secs(20), "b marks A down", || {
        (status_of(&http, &b, "a").as_deref() == Some("down")).then_some(())
    });
    let a = swarm.start("a", &[]);
    eventually(Duration::from_secs(20), "a and b meet again", || {
        (sees_up(&http, &a, &["a", "b"]) && sees_up(&http, &b, &["a", "b"])).then_some(())
    });
    let done = eventually(Duration::from_secs(600), "the batch completes", || {
        let (_, v) = http.get(&a.url(&format!("/api/jobs/{batch}"))).ok()?;
        (v["state"] == "done" || v["state"] == "dead").then_some(v)
    });
    assert_eq!(done["state"], "done", "{done}");
    // The batch's result is its answers (its output file, then its error file).
    let (status, answers) = Http::owner(&a)
        .get(&a.url(&format!("/api/jobs/{batch}/result")))
        .unwrap();
    assert_eq!(status, 200, "{answers}");
    let lines: Vec<Value> = answers
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().all(|l| l["response"]["status_code"] == 200),
        "every line answered"
    );
    let ids: Vec<String> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..200).map(|i| format!("line-{i}")).collect();
    assert_eq!(ids, want, "every custom_id once, in input order");
    let ran_on_b = children(&http, &a)
        .iter()
        .filter(|j| {
            j["history"]
                .as_array()
                .is_some_and(|h| ran_on(h).as_deref() == Some("b"))
        })
        .count();
    eprintln!("lines run by b: {ran_on_b} of 200");
    assert!(ran_on_b > 0, "b ran none of the lines");
}
