//! `myco bench steal`: skewed load on a local swarm of real node processes.
//!
//! Starts N `myco node` processes on 127.0.0.1 (this binary, `--join`ed in a chain, no
//! multicast), submits every job to the first one, and measures the makespan against the
//! ideal (total work divided by all executor slots), the steal latency (from the thieves'
//! metrics), and the remote call overhead (peer round trip against the same call made
//! in-process). Jobs have a fixed duration: on a small machine, CPU-bound jobs in several
//! processes would measure the OS scheduler rather than myco.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

/// Settings of `myco bench steal`.
#[derive(Debug, Clone, clap::Args)]
pub struct StealArgs {
    /// Nodes in the local swarm.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Workers per node.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Jobs, all submitted to the first node.
    #[arg(long, default_value_t = 600)]
    pub jobs: usize,
    /// Duration of each job, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub job_ms: u64,
}

struct Proc {
    child: Child,
    api: String,
    cluster: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(home: &PathBuf, name: &str, workers: usize, join: Option<&str>) -> Result<Proc> {
    let exe = std::env::current_exe().context("cannot find this myco binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--home")
        .arg(home)
        .args(["--api", "127.0.0.1:0", "--json", "node", "--name", name])
        .args(["--cluster", "127.0.0.1:0", "--no-discovery"])
        .args(["--workers", &workers.to_string()])
        .env("MYCO_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    let mut child = cmd.spawn().context("cannot start a node")?;
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let v: Value =
        serde_json::from_str(&line).with_context(|| format!("node {name} printed {line:?}"))?;
    let field = |k: &str| {
        v[k].as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("node {name} did not report its {k} address"))
    };
    Ok(Proc {
        api: field("api")?,
        cluster: field("cluster")?,
        child,
    })
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Value> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn metric(http: &reqwest::Client, api: &str, name: &str) -> Result<f64> {
    let text = http
        .get(format!("http://{api}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .ok_or_else(|| anyhow!("metric {name} missing"))
}

pub async fn steal(args: &StealArgs, json_out: bool) -> Result<()> {
    if args.nodes < 2 || args.workers == 0 || args.jobs == 0 {
        bail!("need at least 2 nodes, 1 worker and 1 job");
    }
    let root = std::env::temp_dir().join(format!("myco-bench-steal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let homes: Vec<PathBuf> = (0..args.nodes)
        .map(|i| root.join(format!("n{i}")))
        .collect();
    let result = run(args, &homes, json_out).await;
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn run(args: &StealArgs, homes: &[PathBuf], json_out: bool) -> Result<()> {
    let http = reqwest::Client::new();
    let first = start(&homes[0], "n0", args.workers, None)?;
    let mut procs = vec![first];
    for (i, home) in homes.iter().enumerate().skip(1) {
        std::fs::create_dir_all(home)?;
        std::fs::copy(homes[0].join("swarm.key"), home.join("swarm.key"))?;
        let join = procs[i - 1].cluster.clone();
        procs.push(start(home, &format!("n{i}"), args.workers, Some(&join))?);
    }
    let owner = procs[0].api.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get(&http, &format!("http://{owner}/api/swarm")).await?;
        let up = v["nodes"]
            .as_array()
            .map(|n| n.iter().filter(|n| n["status"] == "up").count())
            .unwrap_or(0);
        if up + 1 == args.nodes {
            break;
        }
        if Instant::now() > deadline {
            bail!("the local swarm did not form within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Remote call overhead: a peer round trip against the same call in-process.
    let ping = get(
        &http,
        &format!("http://{owner}/api/swarm/ping?peer=n1&count=500"),
    )
    .await?;

    let started = Instant::now();
    for batch in (0..args.jobs).collect::<Vec<_>>().chunks(200) {
        let jobs: Vec<Value> = batch
            .iter()
            .map(|i| {
                json!({
                    "toml": format!(
                        "version = 1\nkind = \"noop\"\n[noop]\npayload = \"job-{i}\"\nsleep_ms = {}\n",
                        args.job_ms
                    ),
                    "base_dir": "/",
                })
            })
            .collect();
        http.post(format!("http://{owner}/api/jobs"))
            .json(&json!({ "jobs": jobs }))
            .send()
            .await?
            .error_for_status()?;
    }
    let limit = Duration::from_millis(args.job_ms) * args.jobs as u32 + Duration::from_secs(60);
    loop {
        let h = get(&http, &format!("http://{owner}/health")).await?;
        if h["jobs"]["done"].as_u64() == Some(args.jobs as u64) {
            break;
        }
        if started.elapsed() > limit {
            bail!("jobs did not finish within {limit:?}: {h}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let makespan = started.elapsed().as_secs_f64();
    let ideal = args.jobs as f64 * args.job_ms as f64 / 1000.0 / (args.nodes * args.workers) as f64;
    let mut shares = Vec::new();
    let (mut steals, mut steal_secs, mut stolen) = (0.0, 0.0, 0.0);
    for (i, p) in procs.iter().enumerate().skip(1) {
        let jobs = metric(&http, &p.api, "myco_stolen_jobs_total").await?;
        steals += metric(&http, &p.api, "myco_steals_total").await?;
        steal_secs += metric(&http, &p.api, "myco_steal_seconds_total").await?;
        stolen += jobs;
        shares.push((format!("n{i}"), jobs));
    }
    shares.insert(0, ("n0".into(), args.jobs as f64 - stolen));
    let steal_ms = if steals > 0.0 {
        steal_secs * 1000.0 / steals
    } else {
        f64::NAN
    };
    for p in &procs {
        let _ = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status();
    }
    let report = json!({
        "nodes": args.nodes,
        "workers_per_node": args.workers,
        "jobs": args.jobs,
        "job_ms": args.job_ms,
        "makespan_s": makespan,
        "ideal_s": ideal,
        "ratio": makespan / ideal,
        "goal_ratio": 1.15,
        "jobs_per_node": shares.iter().map(|(n, j)| json!({"node": n, "jobs": j})).collect::<Vec<_>>(),
        "steals": steals,
        "steal_latency_ms": steal_ms,
        "remote_call_us": ping["remote_us"],
        "local_call_us": ping["local_us"],
        "remote_call_overhead_us": ping["overhead_us"],
    });
    if json_out {
        println!("{report}");
    } else {
        println!(
            "steal: makespan {makespan:.2} s vs ideal {ideal:.2} s = {:.3}x (goal <= 1.15x); {} nodes x {} workers, {} jobs of {} ms, all submitted to n0",
            makespan / ideal,
            args.nodes,
            args.workers,
            args.jobs,
            args.job_ms
        );
        let share: Vec<String> = shares.iter().map(|(n, j)| format!("{n} {j:.0}")).collect();
        println!("       jobs run per node: {}", share.join(", "));
        println!("       steal latency: {steal_ms:.2} ms mean over {steals:.0} steals");
        println!(
            "       remote call: {:.1} us round trip vs {:.1} us in-process (overhead {:.1} us)",
            ping["remote_us"].as_f64().unwrap_or(f64::NAN),
            ping["local_us"].as_f64().unwrap_or(f64::NAN),
            ping["overhead_us"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// Settings of `myco bench transfer`.
#[derive(Debug, Clone, clap::Args)]
pub struct TransferArgs {
    /// The size of the model file moved, in MB.
    #[arg(long, default_value_t = 256)]
    pub mb: u64,
    /// Rounds, each a pull and a plain TLS copy (interleaved).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// `myco bench transfer`: a model pulled between two node processes on loopback (chunked,
/// each chunk checked against the holder's manifest, fsynced) against a plain copy of the
/// same bytes over one TLS connection of the same swarm into a file (fsynced), interleaved;
/// the median of the per-round ratios (plain seconds / pull seconds), MB/s, and the nodes'
/// CPU seconds per GB pulled.
pub async fn transfer(args: &TransferArgs, json_out: bool) -> Result<()> {
    if args.mb == 0 || args.rounds == 0 {
        bail!("need at least 1 MB and 1 round");
    }
    let root = std::env::temp_dir().join(format!("myco-bench-transfer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let result = run_transfer(args, &root, json_out).await;
    let _ = std::fs::remove_dir_all(&root);
    result
}

/// A process's CPU time so far (user + system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

async fn run_transfer(args: &TransferArgs, root: &std::path::Path, json_out: bool) -> Result<()> {
    use myco_runtime::cluster::secret::SwarmSecret;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (a_home, b_home) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(a_home.join("models"))?;
    std::fs::create_dir_all(&b_home)?;
    // Pseudo-random bytes (nothing compresses them), as a model file.
    let size = args.mb * 1_000_000;
    let model = a_home.join("models/big.gguf");
    {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&model)?);
        let mut block = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let n = left.min(block.len() as u64) as usize;
            std::io::Write::write_all(&mut out, &block[..n])?;
            left -= n as u64;
        }
    }
    let a = start(&a_home, "a", 1, None)?;
    std::fs::copy(a_home.join("swarm.key"), b_home.join("swarm.key"))?;
    let b = start(&b_home, "b", 1, Some(&a.cluster))?;
    let token = std::fs::read_to_string(b_home.join("api.token"))?
        .trim()
        .to_owned();
    let http = reqwest::Client::new();
    // Until b sees a's model with its hash (a reads the file first).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let v = get(&http, &format!("http://{}/api/swarm", b.api)).await?;
        let known = v["nodes"].as_array().is_some_and(|n| {
            n.iter().any(|n| {
                n["status"] == "up"
                    && n["info"]["models"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|m| m["sha256"].is_string()))
            })
        });
        if known {
            break;
        }
        if Instant::now() > deadline {
            bail!("b did not see a's model and its hash within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The plain copy: one TLS connection of the same swarm, the bytes as they are.
    let secret = SwarmSecret::load_or_create(&a_home.join("swarm.key"))
        .map_err(|e| anyhow!("{e}"))?
        .0;
    let (server_tls, client_tls) = (
        secret.tls().map_err(|e| anyhow!("{e}"))?,
        secret.tls().map_err(|e| anyhow!("{e}"))?,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let plain_addr = listener.local_addr()?;
    let served = model.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut s) = server_tls.acceptor.accept(tcp).await else {
                continue;
            };
            let Ok(mut f) = tokio::fs::File::open(&served).await else {
                continue;
            };
            // In 1 MiB writes, as the transfer sends its chunks (tokio::io::copy's 8 KiB
            // would make the baseline slower than it need be).
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match f.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown().await;
        }
    });
    let copy_to = b_home.join("plain.bin");
    let mut ratios = Vec::new();
    let (mut pull_secs, mut plain_secs, mut cpu) = (Vec::new(), Vec::new(), 0.0);
    for _ in 0..args.rounds {
        // Pulled by b from a.
        let _ = std::fs::remove_file(b_home.join("models/big.gguf"));
        let cpu0 = cpu_seconds(a.child.id()) + cpu_seconds(b.child.id());
        let t = Instant::now();
        http.post(format!("http://{}/api/models/pull", b.api))
            .bearer_auth(&token)
            .json(&json!({ "model": "big", "from": "a" }))
            .send()
            .await?
            .error_for_status()?;
        let pull = t.elapsed().as_secs_f64();
        cpu += cpu_seconds(a.child.id()) + cpu_seconds(b.child.id()) - cpu0;
        // Copied plainly, into a file, synced as the pull's is.
        let _ = std::fs::remove_file(&copy_to);
        let t = Instant::now();
        let tcp = tokio::net::TcpStream::connect(plain_addr).await?;
        let name =
            myco_runtime::cluster::secret::SwarmTls::server_name().map_err(|e| anyhow!("{e}"))?;
        let mut s = client_tls.connector.connect(name, tcp).await?;
        let mut out = tokio::fs::File::create(&copy_to).await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).await?;
        }
        out.sync_all().await?;
        let plain = t.elapsed().as_secs_f64();
        ratios.push(plain / pull);
        pull_secs.push(pull);
        plain_secs.push(plain);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = median(&mut ratios);
    let (pull, plain) = (median(&mut pull_secs), median(&mut plain_secs));
    let mb = size as f64 / 1e6;
    let gb_pulled = size as f64 * args.rounds as f64 / 1e9;
    let report = json!({
        "bench": "transfer",
        "mb": args.mb,
        "rounds": args.rounds,
        "pull_mb_per_s": mb / pull,
        "plain_tls_mb_per_s": mb / plain,
        "ratio_median": ratio,
        "cpu_s_per_gb": cpu / gb_pulled,
        "baseline": "one TLS connection of the same swarm, in this process, the bytes into a file (synced)",
    });
    if json_out {
        println!("{report}");
    } else {
        println!(
            "transfer of {} MB between two node processes on loopback, {} rounds:\n  pull  {:.0} MB/s (each chunk checked against the holder's manifest, synced)\n  plain {:.0} MB/s (one TLS connection into a file, synced)\n  ratio {ratio:.2} (median of plain/pull per round; the goal is >= 0.7)\n  CPU   {:.2} s per GB pulled (both nodes)",
            args.mb,
            args.rounds,
            mb / pull,
            mb / plain,
            cpu / gb_pulled
        );
    }
    Ok(())
}
