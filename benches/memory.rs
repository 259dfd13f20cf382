//! Memory of an archive build (issue 15, acceptance 3): a generated archive of small files
//! (md, txt, html and pdf of 0.3 to 1.3 KB: about one chunk each) built into a collection by
//! a node in a process of its own, as `myco run` does (an embedded node, every core a batch
//! worker), at 1,000 and at 5,000 files. The figure is the process's peak resident memory
//! (`VmHWM`, read by the process itself as its last act). Goal: 5,000 files below 1 GB, and
//! within 1.3x of 1,000 files. Rounds alternate the two sizes; medians.
//!
//! The builds run in child processes of this bench (itself, started again with
//! `MYCO_MEMORY_CHILD`), so that nothing the bench holds counts. Needs ./setup.sh (the
//! embedding model and ONNX Runtime). No timing or memory assertions. `MYCO_MEMORY_FILES=N`
//! runs one build of N files instead (to look into a figure).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::Criterion;
use myco_actors::{Node, Services, SpecSource};
use myco_benches::{linked_home, median, write_archive};
use myco_runtime::config::{Home, NodeConfig};
use myco_runtime::queue::StateName;

const MODEL: &str = "all-MiniLM-L6-v2";
const SIZES: [usize; 2] = [1_000, 5_000];
const ROUNDS: usize = 2;
/// Set to a number of files to run one quick build of that size only (for looking into it).
const ONLY: &str = "MYCO_MEMORY_FILES";
const CHILD: &str = "MYCO_MEMORY_CHILD";

/// This process's peak resident set, in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The child: build `root/archive` into a collection on a fresh home, print the peak.
fn child(root: &Path) {
    let home = Home::new(linked_home(root, "node", MODEL).expect("./setup.sh first"));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cfg = NodeConfig {
        name: Some("memory".into()),
        workers: threads as usize,
        threads,
        discovery: false,
        ..NodeConfig::default()
    };
    let started = Instant::now();
    let chunks = rt.block_on(async {
        let node = Node::start(home, cfg, Services::EMBEDDED)
            .await
            .expect("start the node");
        let toml = format!(
            "version = 1\nkind = \"archive\"\n[archive]\ninput = {:?}\ncollection = \"m\"\n",
            root.join("archive").display().to_string(),
        );
        let handle = node.handle().clone();
        let id = handle
            .submit(vec![SpecSource {
                toml,
                base_dir: root.to_path_buf(),
            }])
            .await
            .expect("submit")[0]
            .id;
        let rec = handle.wait(id, Duration::from_millis(250)).await.unwrap();
        assert_eq!(rec.state.name(), StateName::Done, "{:?}", rec.last_error);
        let meta = myco_jobs::collection::read_meta(&handle.collections_dir().join("m"))
            .unwrap()
            .unwrap();
        node.shutdown().await.unwrap();
        meta.count
    });
    println!(
        "peak_kib {} chunks {chunks} secs {:.1}",
        peak_kib(),
        started.elapsed().as_secs_f64()
    );
}

/// One build in a child process: (peak MiB, chunks, seconds).
fn build(root: &Path) -> (f64, u64, f64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, root)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the build failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("peak_kib"))
        .expect("the child's figures");
    let f: Vec<&str> = line.split_whitespace().collect();
    (
        f[1].parse::<f64>().unwrap() / 1024.0,
        f[3].parse().unwrap(),
        f[5].parse().unwrap(),
    )
}

fn main() {
    if let Some(root) = std::env::var_os(CHILD) {
        child(Path::new(&root));
        return;
    }
    let _ = Criterion::default().configure_from_args();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    if let Some(files) = std::env::var(ONLY).ok().and_then(|v| v.parse().ok()) {
        let root = tmp.path().join("only");
        write_archive(&root.join("archive"), files, 21).expect("archive");
        let (peak, n, secs) = build(&root);
        println!("{files} files, {n} chunks: peak {peak:.0} MiB ({secs:.1} s)");
        return;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut peaks: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    let mut chunks = [0u64; SIZES.len()];
    for r in 0..ROUNDS {
        for (i, files) in SIZES.into_iter().enumerate() {
            let root = tmp.path().join(format!("r{r}-{files}"));
            write_archive(&root.join("archive"), files, 21).expect("archive");
            let (peak, n, secs) = build(&root);
            println!("round {r}: {files} files, {n} chunks: peak {peak:.0} MiB ({secs:.1} s)");
            peaks[i].push(peak);
            chunks[i] = n;
            std::fs::remove_dir_all(&root).ok();
        }
    }
    let small = median(peaks[0].clone());
    let big = median(peaks[1].clone());
    println!();
    println!(
        "== memory: an archive build on an embedded node, {threads} batch workers, median of {ROUNDS} rounds =="
    );
    println!(
        "{} files ({} chunks): peak {small:.0} MiB",
        SIZES[0], chunks[0]
    );
    println!(
        "{} files ({} chunks): peak {big:.0} MiB  (goal < 1024 MiB: {})",
        SIZES[1],
        chunks[1],
        if big < 1024.0 { "MET" } else { "NOT MET" }
    );
    println!(
        "{} / {} files  {:.2}x  (goal <= 1.3x: {})",
        SIZES[1],
        SIZES[0],
        big / small,
        if big / small <= 1.3 { "MET" } else { "NOT MET" }
    );
}
