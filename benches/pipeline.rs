//! The pipeline goals, measured against their baselines in the same run, on the same model
//! file and a 256-token prompt, greedy, one thread everywhere (this machine has 2 shared
//! cores; the split's two nodes get one thread each):
//!
//! - `llama_cpp`: the model whole through the `infer` engine (llama.cpp).
//! - `stage_whole`: the same model whole on the stage engine (llama.cpp too, over a slice
//!   of every layer, fed hidden states it looked up itself) in this process.
//! - `split_2_nodes`: a `pipeline` job on two `myco node` processes on 127.0.0.1, each
//!   offering memory for about half the model, so layers 0..4 run on one and 4..8 on the
//!   other (hidden states cross the cluster's TLS connection as f32; the sampled token goes
//!   back to stage 0 round the ring).
//!
//! The model is a bench-size random-weight llama GGUF in Q4_0 (n_embd 1024, 8 layers).
//! Generation rate is tokens over the time after the prompt (each path's own report); prompt
//! rate is prompt tokens over the time until the first token's logits. Goals: stage whole ≥
//! 0.95× llama.cpp in generation and ≥ 0.9× in prompt; split ≥ 0.9× stage whole. The
//! criterion groups measure generation; then the three run interleaved, round by round, and
//! the medians of the per-round ratios are printed (the figures noise moves least). Also
//! printed: the bytes a token puts on the wire, per frame (bincode, as the cluster sends it,
//! before TLS and ractor's envelope).
//!
//! The node processes run the `myco` binary of this profile; the bench builds it first
//! (`cargo build --release -p myco`). No timing assertions: figures are printed with ratios.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use myco_benches::{NodeProc, Totals, fmt_rate, fmt_ratio, myco_binary};
use myco_jobs::llm::gguf::TinyLlama;
use myco_jobs::llm::infer::engine::LlmModel;
use myco_jobs::llm::infer::{Generation, InferParams, Prompt};
use myco_jobs::llm::stage::{
    ModelInfo, Sampler, Stage, StageConfig, StageInput, StageOutput, UBATCH,
};
use myco_runtime::cluster::wire::{SeqKey, StageFrame, StageStep, StepInput, Wire};
use myco_runtime::queue::JobId;
use ractor::BytesConvertable;

const MAX_TOKENS: u32 = 64;
const PROMPT_TOKENS: usize = 256;
const N_CTX: u32 = 1024;
/// Every path decodes with one thread (pinned: the machine is shared).
const THREADS: u32 = 1;
/// Interleaved rounds after the criterion groups.
const ROUNDS: usize = 8;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The bench model's shape: llama, Q4_0, n_embd 1024, 8 layers (about 51 MB).
fn bench_model() -> TinyLlama {
    TinyLlama::bench_q4()
}

/// One generation: its tokens, the prompt time and the time after it.
struct Run {
    tokens: Vec<u32>,
    prompt: Duration,
    /// Tokens the generation time covers.
    generated: u64,
    generation: Duration,
}

impl Run {
    fn gen_rate(&self) -> f64 {
        self.generated as f64 / self.generation.as_secs_f64()
    }

    fn prompt_rate(&self, tokens: usize) -> f64 {
        tokens as f64 / self.prompt.as_secs_f64()
    }

    fn from_generation(g: &Generation, generated: u64) -> Run {
        Run {
            tokens: g.tokens.iter().map(|&t| t as u32).collect(),
            prompt: Duration::from_secs_f64(g.prompt_ms / 1e3),
            generated,
            generation: Duration::from_secs_f64(g.generation_ms / 1e3),
        }
    }
}

fn params() -> InferParams {
    InferParams {
        max_tokens: MAX_TOKENS,
        temperature: 0.0,
        n_ctx: N_CTX,
        threads: THREADS,
        ..InferParams::default()
    }
}

/// A prompt of PROMPT_TOKENS tokens (a word or so more): words until there are enough.
fn prompt_text(vocab: &LlmModel) -> (String, Vec<u32>) {
    let words = "the swarm is a queue of work and the model is a machine that runs the job";
    let mut text = String::new();
    for w in words.split(' ').cycle() {
        text.push_str(w);
        text.push(' ');
        if vocab.tokenize(&text).len() >= PROMPT_TOKENS {
            break;
        }
    }
    let tokens: Vec<u32> = vocab.tokenize(&text).iter().map(|&t| t as u32).collect();
    (text, tokens)
}

/// `infer`, from its own report: prompt_ms is the prompt's decode, generation_ms the rest
/// (every generated token sampled and decoded).
fn llama(model: &LlmModel, text: &str) -> Run {
    let g = model
        .generate(
            &Prompt::Text(text.into()),
            &params(),
            &|| false,
            &mut |_, _| {},
        )
        .unwrap();
    let n = g.tokens.len() as u64;
    Run::from_generation(&g, n)
}

/// The whole model on the stage engine: the prompt in chunks of UBATCH, then a token at a
/// time, sampled as `infer` samples.
fn stage_whole(stage: &mut Stage, prompt: &[u32], eog: &[u32]) -> Run {
    let p = params();
    let mut sampler = Sampler::new(&p.sampling(), stage.hparams().n_vocab);
    stage.begin(1, N_CTX, THREADS).unwrap();
    let started = Instant::now();
    let chunks: Vec<&[u32]> = prompt.chunks(UBATCH as usize).collect();
    let mut pos = 0;
    let mut logits = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let out = stage
            .forward_with(
                1,
                pos,
                StageInput::Tokens(c.to_vec()),
                i + 1 == chunks.len(),
            )
            .unwrap();
        if let StageOutput::Logits(l) = out {
            logits = l;
        }
        pos += c.len();
    }
    let prompt_time = started.elapsed();
    let started = Instant::now();
    let mut tokens = Vec::new();
    while tokens.len() < MAX_TOKENS as usize {
        let t = sampler.sample(&logits);
        if eog.contains(&t) {
            break;
        }
        tokens.push(t);
        let StageOutput::Logits(l) = stage.forward(1, pos, StageInput::Tokens(vec![t])).unwrap()
        else {
            panic!("logits")
        };
        logits = l;
        pos += 1;
    }
    Run {
        generated: tokens.len() as u64,
        tokens,
        prompt: prompt_time,
        generation: started.elapsed(),
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
    NodeProc::spawn(&mut cmd)
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
    // Random weights may pick an end token early: the first seed whose greedy run is
    // MAX_TOKENS long (fixed seeds: the same model every run).
    let probe = root.path().join("probe.gguf");
    let fixture = (7..40)
        .map(|seed| TinyLlama {
            seed,
            ..bench_model()
        })
        .find(|f| {
            f.write(&probe, false).unwrap();
            let m = LlmModel::load(&probe).unwrap();
            let (text, _) = prompt_text(&m);
            llama(&m, &text).tokens.len() == MAX_TOKENS as usize
        })
        .expect("a seed whose greedy run is MAX_TOKENS long");
    std::fs::remove_file(&probe).unwrap();
    for h in [&home_a, &home_b] {
        std::fs::create_dir_all(h.join("models")).unwrap();
        fixture.write(&h.join("models/bench.gguf"), false).unwrap();
    }
    let model_path = home_a.join("models/bench.gguf");
    let info = ModelInfo::read(&model_path).unwrap();
    let mut c = Criterion::default().configure_from_args();
    let listing = std::env::args().any(|a| a == "--test" || a == "--list");

    // Baselines, loaded once.
    let model = LlmModel::load(&model_path).expect("load the bench model");
    let (text, prompt) = prompt_text(&model);
    let eog = model.eog_tokens();
    let config = StageConfig {
        threads: THREADS,
        scratch: root.path().join("scratch"),
        ..StageConfig::new(N_CTX)
    };
    let mut whole = Stage::load_with(&model_path, 0, info.hp.n_layer, config).unwrap();

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
        "version = 1\nkind = \"pipeline\"\nmax_attempts = 1\n[pipeline]\nmodel = \"bench\"\nprompt = {text:?}\ntemperature = 0.0\nmax_tokens = {MAX_TOKENS}\nn_ctx = {N_CTX}\nthreads = {THREADS}\n"
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
        // generation_ms runs from the first token to the last.
        let n = g.tokens.len().saturating_sub(1) as u64;
        (Run::from_generation(&g, n), g)
    };
    // The first job loads the stages (they stay loaded); all three give the same tokens.
    let (first, g) = split();
    let reference = llama(&model, &text);
    let whole_run = stage_whole(&mut whole, &prompt, &eog);
    assert_eq!(g.prompt_tokens as usize, prompt.len());
    assert_eq!(
        whole_run.tokens, reference.tokens,
        "stage whole = llama.cpp"
    );
    assert_eq!(first.tokens, reference.tokens, "the split = llama.cpp");
    let stages: Vec<String> = g
        .stages
        .iter()
        .map(|s| format!("{} {}..{}", s.node, s.first, s.end))
        .collect();
    assert_eq!(g.stages.len(), 2, "split in two: {stages:?}");

    let mut grp = c.benchmark_group("pipeline");
    grp.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .sampling_mode(SamplingMode::Flat);
    let (mut t_llama, mut t_whole, mut t_split) =
        (Totals::default(), Totals::default(), Totals::default());
    let mut measure = |name: &str, t: &mut Totals, run: &mut dyn FnMut() -> Run| {
        grp.bench_function(name, |bch| {
            bch.iter_custom(|iters| {
                let mut d = Duration::ZERO;
                for _ in 0..iters {
                    let r = run();
                    t.add(r.generated, r.generation);
                    d += r.generation;
                }
                d
            })
        });
    };
    measure("llama_cpp", &mut t_llama, &mut || llama(&model, &text));
    measure("stage_whole", &mut t_whole, &mut || {
        stage_whole(&mut whole, &prompt, &eog)
    });
    measure("split_2_nodes", &mut t_split, &mut || split().0);
    grp.finish();
    c.final_summary();
    // The machine is shared: the three, interleaved round by round, see the same load.
    let rounds = if listing { 0 } else { ROUNDS };
    let (mut gen_whole, mut gen_split, mut prompt_whole) = (Vec::new(), Vec::new(), Vec::new());
    let (mut prompt_rates, mut gen_rates) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let l = llama(&model, &text);
        let w = stage_whole(&mut whole, &prompt, &eog);
        let s = split().0;
        gen_whole.push(w.gen_rate() / l.gen_rate());
        prompt_whole.push(w.prompt_rate(prompt.len()) / l.prompt_rate(prompt.len()));
        gen_split.push(s.gen_rate() / w.gen_rate());
        gen_rates.push((l.gen_rate(), w.gen_rate(), s.gen_rate()));
        let n = prompt.len();
        prompt_rates.push((l.prompt_rate(n), w.prompt_rate(n), s.prompt_rate(n)));
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
    let hidden = Wire::new(StageFrame::Steps(vec![StageStep {
        key,
        pos: N_CTX - 1,
        input: StepInput::Hidden(vec![0.5; info.hp.n_embd]),
        sample: true,
        report: false,
    }]))
    .into_bytes()
    .len();
    let feed = Wire::new(StageFrame::Steps(vec![StageStep {
        key,
        pos: N_CTX - 1,
        input: StepInput::Tokens(vec![u32::MAX]),
        sample: true,
        report: true,
    }]))
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
    let med = |v: &[(f64, f64, f64)], i: usize| {
        median(
            v.iter()
                .map(|r| match i {
                    0 => r.0,
                    1 => r.1,
                    _ => r.2,
                })
                .collect(),
        )
    };
    println!();
    println!(
        "== pipeline: {}-token prompt, {} generated tokens, greedy, {THREADS} thread per path, n_ctx {N_CTX}; llama Q4_0 (seed {}), {} layers, n_embd {}, {:.0} MB; stages {} ==",
        prompt.len(),
        reference.tokens.len(),
        fixture.seed,
        info.hp.n_layer,
        info.hp.n_embd,
        info.file_tensor_bytes as f64 / 1e6,
        stages.join(", "),
    );
    // Where it ran: the CPU kernels ggml chose, and the GPU of a GPU build (`--features
    // vulkan`: every path puts every layer there).
    let devices: Vec<String> = myco_jobs::llm::infer::engine::devices()
        .into_iter()
        .map(|d| format!("{} ({})", d.name, d.description))
        .collect();
    println!(
        "devices      {}; CPU kernels {}; GPU build: {}",
        devices.join(", "),
        myco_jobs::llm::infer::engine::cpu_kernels().unwrap_or("none"),
        myco_jobs::llm::stage::GPU_BUILD,
    );
    println!(
        "criterion    generation: llama.cpp {} tok/s, stage whole {} tok/s, split over 2 nodes {} tok/s",
        fmt_rate(t_llama.rate()),
        fmt_rate(t_whole.rate()),
        fmt_rate(t_split.rate()),
    );
    println!(
        "             stage whole / llama.cpp {}, split / stage whole {}",
        fmt_ratio(t_whole.rate(), t_llama.rate()),
        fmt_ratio(t_split.rate(), t_whole.rate()),
    );
    println!(
        "interleaved  {ROUNDS} rounds, medians: generation llama.cpp {:.1}, stage whole {:.1}, split {:.1} tok/s; prompt llama.cpp {:.0}, stage whole {:.0}, split {:.0} tok/s",
        med(&gen_rates, 0),
        med(&gen_rates, 1),
        med(&gen_rates, 2),
        med(&prompt_rates, 0),
        med(&prompt_rates, 1),
        med(&prompt_rates, 2),
    );
    println!(
        "ratios       (median of per-round ratios) stage whole / llama.cpp: generation {:.2}x (goal >= 0.95x), prompt {:.2}x (goal >= 0.9x); split / stage whole: generation {:.2}x (goal >= 0.9x)",
        median(gen_whole),
        median(prompt_whole),
        median(gen_split),
    );
    println!(
        "wire         {} B a token: {hops} hidden-state frame(s) of {hidden} B ({} f32) + the ring's feed of {feed} B + a separate token report of {token} B (none when the runner is stage 0's node)",
        hops * hidden + feed + token,
        info.hp.n_embd,
    );
}
