//! The pipeline goal, measured against its baselines in the same run, on the same model
//! file and prompt, greedy:
//!
//! - `split_2_nodes`: a `pipeline` job on two `myco node` processes on 127.0.0.1, each
//!   offering memory for about half the model, so layers 0..4 run on one and 4..8 on the
//!   other (hidden states cross the cluster's TLS connection as f32; the sampled token goes
//!   back to stage 0 round the ring).
//! - `stage_whole`: the same model whole on the stage engine (candle) in this process.
//! - `llama_cpp`: the same model whole through llama-cpp-2.
//!
//! Generation rate is tokens after the first over the time from the first token to the
//! last (the prompt and stage loading excluded), the same definition for all three. Goal:
//! split ≥ 0.8× stage_whole. As the machine is shared, the three also run interleaved, round
//! by round, and the median of the per-round ratios is printed beside the criterion totals. Also printed: the bytes a token puts on the wire, per frame
//! (bincode, as the cluster sends it, before TLS and ractor's envelope).
//!
//! The node processes run the `myco` binary of this profile; the bench builds it first
//! (`cargo build --release -p myco`). No timing assertions: figures are printed with ratios.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use myco_benches::{Totals, fmt_rate, fmt_ratio};
use myco_jobs::gguf::TinyLlama;
use myco_jobs::infer::engine::LlmModel;
use myco_jobs::infer::{Generation, Prompt};
use myco_jobs::stage::{ModelInfo, Stage, StageInput, StageOutput, argmax};
use myco_runtime::cluster::wire::{SeqKey, StageFrame, Wire};
use myco_runtime::queue::JobId;
use ractor::BytesConvertable;

const PROMPT: &str = "the swarm is a queue of work and the model is a machine that runs the job";
const MAX_TOKENS: u32 = 64;
const N_CTX: u32 = 512;
/// Interleaved rounds after the criterion groups.
const ROUNDS: usize = 12;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn threads() -> i32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as i32)
}

/// One generation: the tokens, and the time from the first token to the last.
struct Run {
    tokens: Vec<u32>,
    after_first: Duration,
}

impl Run {
    fn add_to(&self, t: &mut Totals) {
        t.add(self.tokens.len().saturating_sub(1) as u64, self.after_first);
    }
}

fn prompt_tokens(path: &Path) -> (Vec<u32>, Vec<u32>) {
    let vocab = LlmModel::load_vocab(path).unwrap();
    let text = vocab.render(&Prompt::Text(PROMPT.into())).unwrap();
    let tokens = vocab.tokenize(&text).iter().map(|&t| t as u32).collect();
    (tokens, vocab.eog_tokens())
}

fn stage_whole(stage: &mut Stage, prompt: &[u32], eog: &[u32]) -> Run {
    let (mut input, mut pos, mut tokens) = (prompt.to_vec(), 0, Vec::new());
    let mut first = None;
    while tokens.len() < MAX_TOKENS as usize {
        let n = input.len();
        let StageOutput::Logits(l) = stage.forward(1, pos, StageInput::Tokens(input)).unwrap()
        else {
            panic!("logits")
        };
        let t = argmax(&l);
        first.get_or_insert_with(Instant::now);
        if eog.contains(&t) {
            break;
        }
        tokens.push(t);
        pos += n;
        input = vec![t];
    }
    Run {
        tokens,
        after_first: first.map_or(Duration::ZERO, |f| f.elapsed()),
    }
}

fn llama(model: &LlamaModel, prompt: &[u32]) -> Run {
    let backend = myco_jobs::infer::engine::backend().unwrap();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(N_CTX))
        .with_n_batch(N_CTX)
        .with_n_threads(threads())
        .with_n_threads_batch(threads());
    let mut ctx = model.new_context(backend, params).unwrap();
    let vocab = model.vocab();
    let mut batch = LlamaBatch::new(prompt.len(), 1);
    let last = prompt.len() as i32 - 1;
    for (i, &t) in (0i32..).zip(prompt) {
        batch
            .add(llama_cpp_2::token::LlamaToken(t as i32), i, &[0], i == last)
            .unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    let mut sampler = LlamaSampler::greedy();
    let mut pos = prompt.len() as i32;
    let (mut tokens, mut first) = (Vec::new(), None);
    while tokens.len() < MAX_TOKENS as usize {
        let token = sampler.sample(&ctx, batch.n_tokens() - 1);
        first.get_or_insert_with(Instant::now);
        if vocab.is_eog(token) {
            break;
        }
        tokens.push(token.0 as u32);
        batch.clear();
        batch.add(token, pos, &[0], true).unwrap();
        pos += 1;
        ctx.decode(&mut batch).unwrap();
    }
    Run {
        tokens,
        after_first: first.map_or(Duration::ZERO, |f| f.elapsed()),
    }
}

/// The `myco` binary of this profile, built if needed.
fn myco_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "myco", "--bin", "myco"])
        .status()
        .unwrap();
    assert!(status.success(), "building the myco binary failed");
    dir.join("myco")
}

struct NodeProc {
    child: Child,
    api: String,
    cluster: String,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(exe: &Path, home: &Path, name: &str, memory: u64, join: Option<&str>) -> NodeProc {
    let mut cmd = Command::new(exe);
    cmd.arg("--home")
        .arg(home)
        .args(["--api", "127.0.0.1:0", "--json", "node", "--name", name])
        .args(["--workers", "1", "--no-discovery", "--stage-memory"])
        .arg(memory.to_string())
        .env("MYCO_CLUSTER", "127.0.0.1:0")
        .env("MYCO_LOG", "warn,ractor_cluster=error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    NodeProc {
        child,
        api: v["api"].as_str().unwrap().to_owned(),
        cluster: v["cluster"].as_str().unwrap().to_owned(),
    }
}

/// Blocking HTTP calls to a node.
struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn new() -> Http {
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::new(),
        }
    }

    fn text(&self, url: &str) -> String {
        self.rt
            .block_on(async { self.client.get(url).send().await?.text().await })
            .unwrap()
    }

    fn get(&self, url: &str) -> serde_json::Value {
        serde_json::from_str(&self.text(url)).unwrap()
    }

    fn post(&self, url: &str, body: &serde_json::Value) -> serde_json::Value {
        self.rt
            .block_on(async { self.client.post(url).json(body).send().await?.json().await })
            .unwrap()
    }
}

fn main() {
    let root = tempfile::tempdir().expect("tempdir");
    let (home_a, home_b) = (root.path().join("a"), root.path().join("b"));
    for h in [&home_a, &home_b] {
        std::fs::create_dir_all(h.join("models")).unwrap();
        TinyLlama::bench()
            .write(&h.join("models/bench.gguf"), false)
            .unwrap();
    }
    let model_path = home_a.join("models/bench.gguf");
    let info = ModelInfo::read(&model_path).unwrap();
    let (prompt, eog) = prompt_tokens(&model_path);
    let mut c = Criterion::default().configure_from_args();
    let listing = std::env::args().any(|a| a == "--test" || a == "--list");

    // Baselines, loaded once.
    let backend = myco_jobs::infer::engine::backend().unwrap();
    let model = LlamaModel::load_from_file(backend, &model_path, &LlamaModelParams::default())
        .expect("load the bench model");
    let mut whole = Stage::load(&model_path, 0, info.hp.n_layer, N_CTX as usize).unwrap();

    // Two node processes, each with room for about half the model.
    let exe = myco_binary();
    let total: u64 = info.layer_bytes.iter().sum::<u64>()
        + info.embed_bytes
        + info.head_bytes
        + u64::from(info.hp.n_layer) * info.kv_bytes_per_layer(N_CTX);
    let half = total * 6 / 10;
    let a = start_node(&exe, &home_a, "a", half, None);
    std::fs::copy(home_a.join("swarm.key"), home_b.join("swarm.key")).unwrap();
    let b = start_node(&exe, &home_b, "b", half, Some(&a.cluster));
    let http = Http::new();
    let swarm_url = format!("http://{}/api/swarm", a.api);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = http.get(&swarm_url);
        let up = s["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|m| m["status"] == "up").count());
        if up == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "b never joined a: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let job = format!(
        "version = 1\nkind = \"pipeline\"\nmax_attempts = 1\n[pipeline]\nmodel = \"bench\"\nprompt = {PROMPT:?}\ntemperature = 0.0\nmax_tokens = {MAX_TOKENS}\nn_ctx = {N_CTX}\n"
    );
    let split = || -> (Run, Generation) {
        let reply = http.post(
            &format!("http://{}/api/jobs", a.api),
            &serde_json::json!({ "jobs": [{ "toml": job, "base_dir": "/" }] }),
        );
        let id: JobId = reply["jobs"][0]["id"].as_str().unwrap().parse().unwrap();
        loop {
            let j = http.get(&format!("http://{}/api/jobs/{id}", a.api));
            if j["state"] == "done" {
                break;
            }
            assert!(j["state"] != "dead", "the pipeline job failed: {j}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let g: Generation =
            serde_json::from_str(&http.text(&format!("http://{}/api/jobs/{id}/result", a.api)))
                .unwrap();
        let run = Run {
            tokens: g.tokens.iter().map(|&t| t as u32).collect(),
            after_first: Duration::from_secs_f64(g.generation_ms / 1e3),
        };
        (run, g)
    };
    // The first job loads the stages (they stay loaded); all three give the same tokens.
    let (first, g) = split();
    let reference = stage_whole(&mut whole, &prompt, &eog);
    assert_eq!(
        first.tokens, reference.tokens,
        "the split gives the whole model's tokens"
    );
    let stages: Vec<String> = g
        .stages
        .iter()
        .map(|s| format!("{} {}..{}", s.node, s.first, s.end))
        .collect();
    assert_eq!(g.stages.len(), 2, "split in two: {stages:?}");

    let mut grp = c.benchmark_group("pipeline");
    grp.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .sampling_mode(SamplingMode::Flat);
    let (mut t_llama, mut t_whole, mut t_split) =
        (Totals::default(), Totals::default(), Totals::default());
    grp.bench_function("llama_cpp", |bch| {
        bch.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                let r = llama(&model, &prompt);
                r.add_to(&mut t_llama);
                d += r.after_first;
            }
            d
        })
    });
    grp.bench_function("stage_whole", |bch| {
        bch.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                let r = stage_whole(&mut whole, &prompt, &eog);
                r.add_to(&mut t_whole);
                d += r.after_first;
            }
            d
        })
    });
    grp.bench_function("split_2_nodes", |bch| {
        bch.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                let (r, _) = split();
                r.add_to(&mut t_split);
                d += r.after_first;
            }
            d
        })
    });
    grp.finish();
    c.final_summary();
    // The machine is shared: the three, interleaved round by round, see the same load; the
    // median of each round's ratio is the figure that noise moves least.
    let rounds = if listing { 0 } else { ROUNDS };
    let mut split_vs_whole = Vec::new();
    let mut whole_vs_llama = Vec::new();
    for _ in 0..rounds {
        let rate = |r: &Run| r.tokens.len().saturating_sub(1) as f64 / r.after_first.as_secs_f64();
        let l = rate(&llama(&model, &prompt));
        let w = rate(&stage_whole(&mut whole, &prompt, &eog));
        let s = rate(&split().0);
        split_vs_whole.push(s / w);
        whole_vs_llama.push(w / l);
    }
    drop(b);
    drop(a);
    if listing {
        return;
    }

    // Bytes a token puts on the wire, per frame as bincode encodes it.
    let key = SeqKey {
        job: JobId::new(),
        run: u64::MAX,
    };
    let hidden = Wire::new(StageFrame::Hidden {
        key,
        pos: N_CTX - 1,
        data: vec![0.5; info.hp.n_embd],
        sample: true,
    })
    .into_bytes()
    .len();
    let feed = Wire::new(StageFrame::Feed {
        key,
        pos: N_CTX - 1,
        tokens: vec![u32::MAX],
        sample: true,
        report: true,
    })
    .into_bytes()
    .len();
    let token = Wire::new(StageFrame::Token {
        key,
        token: u32::MAX,
        eog: false,
        last: false,
    })
    .into_bytes()
    .len();
    let hops = g.stages.len() - 1;
    // The runner is on stage 0's node here: the feed round the ring also reports the token.
    let token = if g.stages[0].node == "a" { 0 } else { token };
    let rate = |t: &Totals| t.rate();
    println!();
    println!(
        "== pipeline: {} generated tokens, greedy, n_ctx {N_CTX}, {} layers, n_embd {}, {:.0} MB f32; stages {} ==",
        reference.tokens.len(),
        info.hp.n_layer,
        info.hp.n_embd,
        info.file_tensor_bytes as f64 / 1e6,
        stages.join(", "),
    );
    println!(
        "generation   split over 2 nodes {} tok/s   stage engine whole {} tok/s   llama.cpp whole {} tok/s",
        fmt_rate(rate(&t_split)),
        fmt_rate(rate(&t_whole)),
        fmt_rate(rate(&t_llama)),
    );
    println!(
        "ratio        split / stage whole {}  (goal >= 0.8x)   stage whole / llama.cpp {}",
        fmt_ratio(rate(&t_split), rate(&t_whole)),
        fmt_ratio(rate(&t_whole), rate(&t_llama)),
    );
    println!(
        "interleaved  {ROUNDS} rounds, median of the per-round ratios: split / stage whole {:.2}x, stage whole / llama.cpp {:.2}x",
        median(split_vs_whole),
        median(whole_vs_llama),
    );
    println!(
        "wire         {} B a token: {hops} hidden-state frame(s) of {hidden} B ({} f32) + the ring's feed of {feed} B + a separate token report of {token} B (none when the runner is stage 0's node)",
        hops * hidden + feed + token,
        info.hp.n_embd,
    );
}
