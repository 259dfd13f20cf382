//! Chaos: three real node processes share a mixed workload (500 chunk jobs, an archive of 200
//! files, 50 infer jobs on a tiny GGUF, 10 pipeline jobs split over the three), submitted to
//! all of them, while a seeded schedule SIGKILLs, SIGSTOPs/SIGCONTs, SIGTERMs and restarts
//! random nodes and cuts node `c` off (it runs in a network namespace this test makes) for a
//! bounded time. Then everything heals, and at the end:
//!
//! - every acknowledged job is `done` exactly once at its owner, or `dead` with a reason, and
//!   its owner holds no job it was not given (an archive's children aside);
//! - results are intact: chunk results byte-equal to a single-node run's, infer and pipeline
//!   tokens equal to the single node's, the collection byte-equal to the single node's;
//! - no node is left hung: each answers, delivers its outbox and stops cleanly on SIGTERM.
//!
//! The schedule comes from a seed, printed first: `MYCO_CHAOS_SEED=N` replays it
//! (`MYCO_CHAOS_SECS` sets how long the faults go on, 60 by default, at most 180).
//! Needs root (`ip netns`): ignored by plain `cargo test`; test.sh runs it with `--ignored`
//! as root, as CI does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::netns::{Netns, is_root};
use common::{Http, NodeProc, eventually, linked_home};
use myco_benches::write_archive;
use myco_jobs::llm::gguf::{TinyLlama, WType};
use myco_jobs::llm::stage::ModelInfo;
use serde_json::{Value, json};

const CHUNKS: usize = 500;
const ARCHIVE_FILES: usize = 200;
const INFERS: usize = 50;
const PIPELINES: usize = 10;
/// The pipeline model's layers, and its context.
const PIPE_LAYERS: u32 = 6;
const PIPE_CTX: u32 = 512;
const NAMES: [&str; 3] = ["a", "b", "c"];
/// Short leases and a fast clock, so that lost work comes back in seconds.
const CONFIG: &str = "lease = 3\ntick = 0.2\nbackoff_base = 0.05\nbackoff_max = 1\n\
                      heartbeat = 0.25\npeer_timeout = 2\n";

/// What the test submits: each job's kind and its number within the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Work {
    Chunk(usize),
    Archive,
    Infer(usize),
    Pipeline(usize),
}

impl Work {
    fn kind(self) -> &'static str {
        match self {
            Work::Chunk(_) => "chunk",
            Work::Archive => "archive",
            Work::Infer(_) => "infer",
            Work::Pipeline(_) => "pipeline",
        }
    }
}

/// The inputs every run uses: documents, the archive, the two models.
struct Inputs {
    docs: Vec<PathBuf>,
    archive: PathBuf,
    tiny: PathBuf,
    tiny6: PathBuf,
}

impl Inputs {
    fn write(root: &Path) -> Inputs {
        let docs_dir = root.join("docs");
        let docs = write_archive(&docs_dir, CHUNKS, 7)
            .unwrap()
            .into_iter()
            .map(|f| docs_dir.join(f.rel))
            .collect();
        let archive = root.join("archive");
        write_archive(&archive, ARCHIVE_FILES, 13).unwrap();
        let tiny = root.join("models/tiny.gguf");
        TinyLlama::default().write(&tiny, false).unwrap();
        let tiny6 = root.join("models/tiny6.gguf");
        // Q8_0: the stages batch the runs that meet at them, and llama.cpp multiplies Q8_0
        // weights by a batch of rows exactly as by one row (f32 weights go through other
        // kernels for a batch, and a run could part from its lone reference at a near-tie).
        TinyLlama {
            n_layer: PIPE_LAYERS,
            n_ctx: PIPE_CTX,
            wtype: WType::Q8_0,
            ..TinyLlama::default()
        }
        .write(&tiny6, false)
        .unwrap();
        Inputs {
            docs,
            archive,
            tiny,
            tiny6,
        }
    }

    /// A home with the embedding model and both GGUFs (linked).
    fn home(&self, root: &Path, name: &str) -> PathBuf {
        let home = linked_home(root, name, true);
        for m in [&self.tiny, &self.tiny6] {
            std::os::unix::fs::symlink(m, home.join("models").join(m.file_name().unwrap()))
                .unwrap();
        }
        std::fs::write(home.join("config.toml"), CONFIG).unwrap();
        home
    }

    /// The job spec of `work`, as `POST /api/jobs` takes it. Every job may be tried often:
    /// a fault costs the attempts of whatever was running where it struck.
    fn spec(&self, work: Work) -> Value {
        // A key of its own: a submit whose answer was lost is sent again, and the node
        // answers with the job it already has.
        let head =
            format!("version = 1\nmax_attempts = 25\nidempotency_key = \"chaos-{work:?}\"\n");
        let toml = match work {
            Work::Chunk(i) => format!(
                "{head}kind = \"chunk\"\n[chunk]\ninput = {:?}\nmax_tokens = 200\noverlap = 20\n",
                self.docs[i].display().to_string()
            ),
            Work::Archive => format!(
                "{head}kind = \"archive\"\n[archive]\ninput = {:?}\ncollection = \"chaos\"\n",
                self.archive.display().to_string()
            ),
            Work::Infer(i) => format!(
                "{head}kind = \"infer\"\n[infer]\nmodel = \"tiny\"\nprompt = \"the swarm {i} runs a job\"\n\
                 max_tokens = 24\ntemperature = 0.0\nn_ctx = 256\nthreads = 1\n"
            ),
            Work::Pipeline(i) => format!(
                "{head}kind = \"pipeline\"\n[pipeline]\nmodel = \"tiny6\"\nprompt = \"the model {i} runs in stages\"\n\
                 max_tokens = 32\ntemperature = 0.0\nn_ctx = {PIPE_CTX}\nthreads = 1\n"
            ),
        };
        json!({ "toml": toml, "base_dir": "/" })
    }
}

/// What a finished job must give: the result text (chunk), the tokens (infer, pipeline).
fn expected(http: &Http, node: &NodeProc, id: &str, work: Work) -> Value {
    let (status, text) = http
        .get_text(&node.url(&format!("/api/jobs/{id}/result")))
        .unwrap();
    assert_eq!(status, 200, "{work:?}'s result: {text}");
    match work {
        Work::Chunk(_) => Value::String(text),
        Work::Archive => Value::Null,
        Work::Infer(_) | Work::Pipeline(_) => {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(
                v["tokens"].as_array().is_some_and(|t| !t.is_empty()),
                "{work:?}: {v}"
            );
            v["tokens"].clone()
        }
    }
}

/// The collection's files, for byte comparison.
fn collection_bytes(home: &Path, name: &str) -> BTreeMap<&'static str, Vec<u8>> {
    let dir = home.join("collections").join(name);
    ["vectors.npy", "chunks.jsonl", "files.jsonl"]
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(f))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display()));
            (f, bytes)
        })
        .collect()
}

/// Submit `works` to `node` in batches; the ids, in order.
fn submit(http: &Http, node: &NodeProc, inputs: &Inputs, works: &[Work]) -> Vec<String> {
    let mut ids = Vec::with_capacity(works.len());
    for batch in works.chunks(100) {
        match try_submit(http, node, inputs, batch) {
            Ok(got) => ids.extend(got),
            Err(e) => panic!("submit: {e}"),
        }
    }
    ids
}

/// One `POST /api/jobs` of `works`: their ids, in order, or why not.
fn try_submit(
    http: &Http,
    node: &NodeProc,
    inputs: &Inputs,
    works: &[Work],
) -> Result<Vec<String>, String> {
    let specs: Vec<Value> = works.iter().map(|w| inputs.spec(*w)).collect();
    let (status, reply) = http
        .post(&node.url("/api/jobs"), &json!({ "jobs": specs }))
        .map_err(|e| e.to_string())?;
    if status != 201 {
        return Err(format!("{status}: {reply}"));
    }
    let ids: Vec<String> = reply["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), works.len(), "{reply}");
    Ok(ids)
}

/// Every job `node` holds, by id.
fn jobs_at(http: &Http, node: &NodeProc) -> Option<BTreeMap<String, Value>> {
    let (status, v) = http
        .get(&node.url("/api/jobs?all=true&limit=100000"))
        .ok()?;
    if status != 200 {
        return None;
    }
    Some(
        v["jobs"]
            .as_array()?
            .iter()
            .map(|j| (j["id"].as_str().unwrap().to_owned(), j.clone()))
            .collect(),
    )
}

fn ended(job: &Value) -> bool {
    job["state"] == "done" || job["state"] == "dead"
}

/// The reference: every kind of work run on one lone node.
struct Reference {
    chunks: Vec<Value>,
    infer: Vec<Value>,
    pipeline: Vec<Value>,
    home: PathBuf,
}

fn reference(root: &Path, inputs: &Inputs) -> Reference {
    let started = Instant::now();
    let home = inputs.home(root, "reference");
    let node = NodeProc::start(&home, &["--workers", "2", "--threads", "1"]);
    let http = Http::owner(&node);
    let mut works: Vec<Work> = (0..CHUNKS).map(Work::Chunk).collect();
    works.push(Work::Archive);
    works.extend((0..INFERS).map(Work::Infer));
    works.extend((0..PIPELINES).map(Work::Pipeline));
    let ids = submit(&http, &node, inputs, &works);
    let jobs = eventually(Duration::from_secs(300), "the reference run ends", || {
        let jobs = jobs_at(&http, &node)?;
        ids.iter().all(|id| ended(&jobs[id])).then_some(jobs)
    });
    let mut r = Reference {
        chunks: Vec::new(),
        infer: Vec::new(),
        pipeline: Vec::new(),
        home: home.clone(),
    };
    for (id, work) in ids.iter().zip(&works) {
        assert_eq!(
            jobs[id]["state"], "done",
            "reference {work:?}: {}",
            jobs[id]
        );
        let want = expected(&http, &node, id, *work);
        match work {
            Work::Chunk(_) => r.chunks.push(want),
            Work::Infer(_) => r.infer.push(want),
            Work::Pipeline(_) => r.pipeline.push(want),
            Work::Archive => {}
        }
    }
    drop(node);
    eprintln!("chaos: the reference run took {:?}", started.elapsed());
    r
}

/// One node of the chaos swarm: where it lives and listens, and its process while it runs.
struct Member {
    name: &'static str,
    home: PathBuf,
    /// The namespace it runs in (node `c`).
    netns: Option<String>,
    /// The cluster and API addresses (port 0 until its first start; then kept).
    cluster: SocketAddr,
    api: SocketAddr,
    proc: Option<NodeProc>,
    stopped: bool,
    starts: usize,
}

impl Member {
    fn node(&self) -> &NodeProc {
        self.proc.as_ref().expect("the node runs")
    }

    /// Start (or restart) the node. Its data root is the test's directory: `c` is reached
    /// over its namespace's link, not from loopback, so the API treats the test as a client.
    fn start(&mut self, join: &[String], stage_memory: u64, logs: &Path) {
        let data_root = logs.parent().unwrap().display().to_string();
        let log = logs.join(format!("{}-{}.log", self.name, self.starts + 1));
        let args: Vec<String> = [
            "--name",
            self.name,
            "--no-discovery",
            "--workers",
            "2",
            "--threads",
            "1",
            "--shutdown-grace",
            "2",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([
            "--stage-memory".to_owned(),
            stage_memory.to_string(),
            "--cluster".to_owned(),
            self.cluster.to_string(),
            "--data-root".to_owned(),
            data_root,
        ])
        .chain(join.iter().flat_map(|j| ["--join".to_owned(), j.clone()]))
        .collect();
        let mut cmd = common::myco_in(self.netns.as_deref(), &self.home);
        cmd.args(["--api", &self.api.to_string(), "--json", "node"])
            .args(&args);
        let node = NodeProc::from_command_logged(cmd, &self.home, &log);
        self.api = node.addr;
        self.cluster = node.cluster.as_ref().unwrap().parse().unwrap();
        self.proc = Some(node);
        self.stopped = false;
        self.starts += 1;
    }

    fn signal(&mut self, sig: &str) {
        self.node().signal(sig);
        self.stopped = sig == "-STOP";
    }
}

/// A seeded schedule of faults. Recoveries are queued with their due time.
#[derive(Debug)]
enum Recovery {
    Restart(usize),
    Cont(usize),
    Heal,
}

struct Chaos {
    members: Vec<Member>,
    netns: Netns,
    logs: PathBuf,
    stage_memory: u64,
    started: Instant,
    faults: BTreeMap<&'static str, usize>,
    link_up: bool,
}

impl Chaos {
    /// Whether the test can talk to node `i` now.
    fn reachable(&self, i: usize) -> bool {
        let m = &self.members[i];
        m.proc.is_some() && !m.stopped && (m.netns.is_none() || self.link_up)
    }

    fn join_for(&self, i: usize) -> Vec<String> {
        self.members
            .iter()
            .enumerate()
            .filter(|(j, m)| *j != i && m.cluster.port() != 0)
            .map(|(_, m)| m.cluster.to_string())
            .collect()
    }

    fn start(&mut self, i: usize) {
        let join = self.join_for(i);
        let (mem, logs) = (self.stage_memory, self.logs.clone());
        self.members[i].start(&join, mem, &logs);
    }

    fn say(&self, what: &str) {
        eprintln!(
            "chaos {:6.1}s: {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn recover(&mut self, r: &Recovery) {
        match *r {
            Recovery::Restart(i) => {
                self.say(&format!("restart {}", self.members[i].name));
                self.start(i);
            }
            Recovery::Cont(i) => {
                self.say(&format!("SIGCONT {}", self.members[i].name));
                self.members[i].signal("-CONT");
            }
            Recovery::Heal => {
                self.say("link to c up");
                self.netns.link(true);
                self.link_up = true;
            }
        }
    }

    /// One fault on a healthy node (or the link); what undoes it, and when.
    fn strike(&mut self, rng: &mut fastrand::Rng) -> Option<(Duration, Recovery)> {
        let link_up = self.link_up;
        let healthy: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].proc.is_some() && !self.members[*i].stopped)
            .collect();
        if healthy.is_empty() {
            return None;
        }
        let i = healthy[rng.usize(..healthy.len())];
        let name = self.members[i].name;
        let back = Duration::from_millis(rng.u64(1_000..6_000));
        let fault = match rng.u32(0..8) {
            0..=2 => "kill -9",
            3..=4 => "SIGSTOP",
            5 => "SIGTERM",
            _ if link_up => "cut c off",
            _ => "kill -9",
        };
        *self.faults.entry(fault).or_default() += 1;
        self.say(&format!(
            "{fault}{} (undone in {:.1}s)",
            if fault == "cut c off" {
                String::new()
            } else {
                format!(" {name}")
            },
            back.as_secs_f64()
        ));
        let recovery = match fault {
            "kill -9" => {
                self.members[i].proc.take().unwrap().kill9();
                Recovery::Restart(i)
            }
            "SIGSTOP" => {
                self.members[i].signal("-STOP");
                Recovery::Cont(i)
            }
            "SIGTERM" => {
                let mut node = self.members[i].proc.take().unwrap();
                let status = node.terminate();
                assert!(status.success(), "{name} stopped on SIGTERM: {status}");
                Recovery::Restart(i)
            }
            _ => {
                self.netns.link(false);
                self.link_up = false;
                Recovery::Heal
            }
        };
        Some((back, recovery))
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        // Never leave a stopped process behind (it would hold its ports and files).
        for m in &mut self.members {
            if m.stopped
                && let Some(p) = &m.proc
            {
                p.signal("-CONT");
            }
        }
        if !std::thread::panicking() {
            return;
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.logs)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.sort();
        for path in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            eprintln!("---- {} (last {} lines)", path.display(), tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// Jobs queued and leased at the nodes the test can reach, as their `/health` counts them.
fn in_flight(chaos: &Chaos, https: &[Http]) -> String {
    (0..chaos.members.len())
        .filter(|n| chaos.reachable(*n))
        .filter_map(|n| {
            let (_, h) = https[n].get(&chaos.members[n].node().url("/health")).ok()?;
            let c = |s: &str| h["jobs"][s].as_u64().unwrap_or(0);
            Some(format!(
                "{} {} queued {} leased {} done",
                chaos.members[n].name,
                c("queued"),
                c("leased"),
                c("done")
            ))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn seed() -> u64 {
    std::env::var("MYCO_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000
        })
}

fn chaos_time() -> Duration {
    let secs = std::env::var("MYCO_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(60)
        .min(180);
    Duration::from_secs(secs)
}

#[test]
#[ignore = "needs root for `ip netns`; test.sh runs it with --ignored as root"]
fn a_mixed_workload_survives_kills_stops_restarts_and_a_partition() {
    assert!(is_root(), "the chaos test needs root for `ip netns`");
    let seed = seed();
    eprintln!("chaos: seed {seed} (MYCO_CHAOS_SEED={seed} replays this schedule)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tag = std::process::id() % 100_000;
    let netns = Netns::create("chaos", tag, 78)
        .unwrap_or_else(|| panic!("cannot create network namespace myco-chaos-{tag} (ip netns)"));
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let inputs = Inputs::write(root);
    let reference = reference(root, &inputs);

    // Each node may hold half the pipeline model: the plan splits it over all three, and
    // any two can still hold it while the third is away.
    let info = ModelInfo::read(&inputs.tiny6).unwrap();
    let layer = info.layer_bytes[0] + info.kv_bytes_per_layer(PIPE_CTX);
    let stage_memory = layer * u64::from(PIPE_LAYERS) / 2 + layer / 2;
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let members: Vec<Member> = NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let in_ns = i == 2;
            let ip = if in_ns {
                &netns.inner_ip
            } else {
                &netns.host_ip
            };
            let api_ip = if in_ns { ip.as_str() } else { "127.0.0.1" };
            Member {
                name,
                home: inputs.home(root, name),
                netns: in_ns.then(|| netns.name.clone()),
                cluster: format!("{ip}:0").parse().unwrap(),
                api: format!("{api_ip}:0").parse().unwrap(),
                proc: None,
                stopped: false,
                starts: 0,
            }
        })
        .collect();
    let mut chaos = Chaos {
        members,
        netns,
        logs,
        stage_memory,
        started: Instant::now(),
        faults: BTreeMap::new(),
        link_up: true,
    };
    chaos.start(0);
    for m in &chaos.members[1..] {
        std::fs::copy(
            chaos.members[0].home.join("swarm.key"),
            m.home.join("swarm.key"),
        )
        .unwrap();
    }
    chaos.start(1);
    chaos.start(2);
    // One client per node, with that node's token (c's API listens beyond loopback).
    let https: Vec<Http> = chaos
        .members
        .iter()
        .map(|m| Http::with_token(&common::api_token(&m.home)))
        .collect();
    let swarm_up = |chaos: &Chaos| {
        chaos.members.iter().zip(&https).all(|(m, http)| {
            let Some(node) = &m.proc else { return false };
            let Ok((200, v)) = http.get(&node.url("/api/swarm")) else {
                return false;
            };
            let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
            NAMES.iter().all(|want| {
                nodes.iter().any(|n| {
                    n["name"] == *want
                        && (n["status"] == "self" || n["status"] == "up")
                        && n["info"]["models"]
                            .as_array()
                            .is_some_and(|a| !a.is_empty())
                })
            })
        })
    };
    eventually(
        Duration::from_secs(30),
        "the three-node swarm forms",
        || swarm_up(&chaos).then_some(()),
    );

    // The workload, spread over the three (each node owns what it was given), arrives in
    // waves while the faults go on: a wave for a node the test cannot reach waits for it.
    let waves = 10;
    let mut due: Vec<(Duration, usize, Work)> = Vec::new();
    let mut spread = |k: usize, n: usize, w: Work| {
        let at = chaos_time() * (k % waves) as u32 / waves as u32;
        due.push((at, n, w));
    };
    for i in 0..CHUNKS {
        spread(i, i % 3, Work::Chunk(i));
    }
    spread(2, 1, Work::Archive);
    for i in 0..INFERS {
        spread(i, i % 3, Work::Infer(i));
    }
    for i in 0..PIPELINES {
        spread(i, i % 3, Work::Pipeline(i));
    }
    due.sort_by_key(|(at, n, w)| (*at, *n, *w));
    let mut owned: Vec<Vec<(String, Work)>> = vec![Vec::new(); 3];
    let mut refused = 0;
    let mut submit_due =
        |chaos: &Chaos, elapsed: Duration, due: &mut Vec<(Duration, usize, Work)>| {
            for n in 0..3 {
                if !chaos.reachable(n) {
                    continue;
                }
                let works: Vec<Work> = due
                    .iter()
                    .filter(|(at, m, _)| *m == n && *at <= elapsed)
                    .map(|(_, _, w)| *w)
                    .collect();
                for batch in works.chunks(100) {
                    match try_submit(&https[n], chaos.members[n].node(), &inputs, batch) {
                        Ok(ids) => {
                            owned[n].extend(ids.into_iter().zip(batch.iter().copied()));
                            due.retain(|(_, _, w)| !batch.contains(w));
                        }
                        Err(e) => {
                            refused += 1;
                            chaos.say(&format!(
                                "submit to {} failed, to be sent again: {e}",
                                chaos.members[n].name
                            ));
                        }
                    }
                }
            }
        };

    // The faults: one every 2-6 s, each undone 1-6 s later.
    let t0 = Instant::now();
    let until = t0 + chaos_time();
    let mut pending: Vec<(Instant, Recovery)> = Vec::new();
    let mut next = Instant::now() + Duration::from_millis(rng.u64(1_000..4_000));
    while Instant::now() < until {
        submit_due(&chaos, t0.elapsed(), &mut due);
        let now = Instant::now();
        let (done, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(at, _)| *at <= now);
        pending = later;
        for (_, r) in &done {
            chaos.recover(r);
        }
        if now >= next {
            chaos.say(&format!("in flight: {}", in_flight(&chaos, &https)));
            if let Some((back, r)) = chaos.strike(&mut rng) {
                pending.push((Instant::now() + back, r));
            }
            next = Instant::now() + Duration::from_millis(rng.u64(2_000..6_000));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    chaos.say("faults over: healing");
    pending.sort_by_key(|(at, _)| *at);
    for (_, r) in pending.drain(..) {
        chaos.recover(&r);
    }
    eventually(Duration::from_secs(60), "the swarm forms again", || {
        swarm_up(&chaos).then_some(())
    });
    // What could not be submitted during the faults goes now.
    submit_due(&chaos, Duration::MAX, &mut due);
    assert!(
        due.is_empty(),
        "every job was submitted: {} left",
        due.len()
    );
    chaos.say(&format!(
        "submitted {} jobs ({refused} submits sent again)",
        owned.iter().map(Vec::len).sum::<usize>()
    ));

    // Every acknowledged job ends.
    let finals: Vec<BTreeMap<String, Value>> = eventually(
        Duration::from_secs(180),
        "every acknowledged job ends",
        || {
            let mut all = Vec::new();
            for (n, jobs) in owned.iter().enumerate() {
                let held = jobs_at(&https[n], chaos.members[n].node())?;
                if !jobs.iter().all(|(id, _)| held.get(id).is_some_and(ended)) {
                    return None;
                }
                all.push(held);
            }
            Some(all)
        },
    );
    chaos.say("every acknowledged job ended");

    // Done exactly once (or dead with a reason), nothing else, intact results.
    let mut tally: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for (n, jobs) in owned.iter().enumerate() {
        let node = chaos.members[n].node();
        let held = &finals[n];
        let ours: BTreeSet<&str> = jobs.iter().map(|(id, _)| id.as_str()).collect();
        for (id, job) in held {
            let parent = job["parent"].as_str();
            assert!(
                ours.contains(id.as_str()) || parent.is_some_and(|p| ours.contains(p)),
                "{} holds a job it was not given: {job}",
                chaos.members[n].name
            );
        }
        for (id, work) in jobs {
            let job = &held[id];
            let state = job["state"].as_str().unwrap().to_owned();
            *tally.entry((work.kind(), state.clone())).or_default() += 1;
            let history = job["history"].as_array().unwrap();
            let dones = history.iter().filter(|t| t["state"] == "done").count();
            if state == "dead" {
                assert_eq!(dones, 0, "{work:?} dead after done: {job}");
                assert!(
                    job["error"]["message"]
                        .as_str()
                        .is_some_and(|e| !e.is_empty()),
                    "{work:?} dead without a reason: {job}"
                );
                continue;
            }
            assert_eq!(dones, 1, "{work:?} done exactly once: {job}");
            let got = expected(&https[n], node, id, *work);
            match work {
                Work::Chunk(i) => assert!(
                    got == reference.chunks[*i],
                    "chunk {i}'s result differs from the single node's: {got}"
                ),
                Work::Infer(i) => {
                    assert_eq!(got, reference.infer[*i], "infer {i}'s tokens");
                }
                Work::Pipeline(i) => {
                    assert_eq!(got, reference.pipeline[*i], "pipeline {i}'s tokens");
                }
                Work::Archive => {
                    let (x, y) = (
                        collection_bytes(&reference.home, "chaos"),
                        collection_bytes(&chaos.members[n].home, "chaos"),
                    );
                    for f in ["files.jsonl", "chunks.jsonl", "vectors.npy"] {
                        assert!(
                            x[f] == y[f],
                            "the collection's {f} differs from the single node's"
                        );
                    }
                }
            }
        }
    }
    eprintln!("chaos: outcomes {tally:?}");
    eprintln!("chaos: faults {:?}", chaos.faults);
    // Only the pipeline may run out of attempts (a plan needs two of the three nodes).
    for ((kind, state), count) in &tally {
        assert!(
            state == "done" || *kind == "pipeline",
            "{count} {kind} jobs ended {state}"
        );
    }

    // No node is left hung: each answers, delivers what it ran for others, and stops.
    for (m, http) in chaos.members.iter().zip(&https) {
        let node = m.node();
        eventually(
            Duration::from_secs(60),
            &format!("{}'s outbox is delivered", m.name),
            || {
                let (_, h) = http.get(&node.url("/health")).ok()?;
                (h["outbox"].as_u64() == Some(0)).then_some(())
            },
        );
    }
    for m in &mut chaos.members {
        let mut node = m.proc.take().unwrap();
        let status = node.terminate();
        assert!(status.success(), "{} stopped on SIGTERM: {status}", m.name);
    }
    eprintln!("chaos: seed {seed} passed in {:?}", chaos.started.elapsed());
}
