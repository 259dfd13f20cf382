//! `myco ask`: one question to an LLM of the swarm, its tokens printed as they come.
//!
//! The question is an ordinary `infer` job, written as a job file and submitted like any
//! other (so it is validated by the same rules as `myco submit`), ahead of batch work, then
//! followed on the node's event stream like `submit --wait` ([`crate::wait`]). A model that
//! no node of the swarm can hold whole (the node's plan for it has several stages) is asked
//! as a `pipeline` job instead, as `/v1` does. Without a running node it runs on an embedded
//! one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use myco_actors::interactive::INTERACTIVE_PRIORITY;
use myco_actors::{Node, Services, SpecSource};
use myco_jobs::llm::infer::Generation;
use myco_runtime::config::Home;
use myco_runtime::queue::StateName;

use crate::args::{Cli, NodeArgs};
use crate::client::Unreachable;
use crate::cmd::common::{client, node_config};
use crate::wait::{Target, Watch};

/// What `myco ask` asks.
#[derive(Debug, Clone)]
pub struct Ask {
    pub prompt: String,
    pub model: String,
    pub system: Option<String>,
    pub raw: bool,
    pub max_tokens: u32,
    pub temperature: f32,
    pub seed: u32,
    /// None: the model's trained context, at most 4096.
    pub n_ctx: Option<u32>,
}

/// A TOML basic string: JSON's string escapes are a subset of TOML's.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Ask {
    /// The question as a job file: an interactive job of `kind` (`infer`, or `pipeline`
    /// for a model split into stages; a second attempt covers a node lost mid-generation).
    fn spec(&self, kind: &str) -> SpecSource {
        let mut toml = format!(
            "version = 1\nkind = \"{kind}\"\npriority = {INTERACTIVE_PRIORITY}\nmax_attempts = 2\ntimeout = \"10m\"\n\n[{kind}]\nmodel = {}\nmax_tokens = {}\ntemperature = {:?}\nseed = {}\n",
            quote(&self.model),
            self.max_tokens,
            f64::from(self.temperature),
            self.seed,
        );
        if let Some(n_ctx) = self.n_ctx {
            toml.push_str(&format!("n_ctx = {n_ctx}\n"));
        }
        if self.raw {
            toml.push_str(&format!("prompt = {}\n", quote(&self.prompt)));
        } else {
            let mut messages = Vec::new();
            if let Some(s) = &self.system {
                messages.push(format!("{{ role = \"system\", content = {} }}", quote(s)));
            }
            messages.push(format!(
                "{{ role = \"user\", content = {} }}",
                quote(&self.prompt)
            ));
            toml.push_str(&format!("messages = [{}]\n", messages.join(", ")));
        }
        SpecSource {
            toml,
            base_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }
}

/// What the answer ended with.
#[derive(Debug, Default, serde::Serialize)]
struct Answer {
    text: String,
    finish_reason: Option<String>,
    usage: Option<serde_json::Value>,
}

pub async fn run(cli: &Cli, home: &Home, ask: Ask, args: &NodeArgs) -> Result<ExitCode> {
    let client = client(cli, home);
    match ask_on(cli, Target::Remote(&client), &ask).await {
        Err(e) if e.downcast_ref::<Unreachable>().is_some() => {
            ask_embedded(cli, home, &ask, args).await
        }
        other => other,
    }
}

/// Ask the node, print the answer as it streams, and its end.
async fn ask_on(cli: &Cli, target: Target<'_>, ask: &Ask) -> Result<ExitCode> {
    // The node's plan says whether any one node holds the model whole (no plan, or one
    // stage: an infer job, which also reports any problem with the model best).
    let kind = match &target {
        Target::Remote(c) => match c.plan(&ask.model, ask.n_ctx.unwrap_or(4096)).await {
            Ok(p) if p.stages.len() > 1 => "pipeline",
            _ => "infer",
        },
        Target::Embedded(_) => "infer",
    };
    let id = target
        .submit(vec![ask.spec(kind)])
        .await?
        .first()
        .ok_or_else(|| anyhow!("the node accepted no job"))?
        .id;
    let mut watch = Watch::new(true, !cli.json);
    // This client going away cancels the question, which frees the executor.
    let job = target.follow(id, true, |event| watch.on(event)).await?;
    if job.state != StateName::Done {
        if !cli.json {
            println!();
        }
        let why = job.error.map(|e| e.message).unwrap_or_default();
        return Err(anyhow!("the request ended {}: {why}", job.state));
    }
    let mut bytes = Vec::new();
    target.write_result(id, &mut bytes).await?;
    let g: Generation = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow!("the result of {id} is unreadable: {e}"))?;
    watch.rest(&g.text);
    let answer = Answer {
        text: watch.text.clone(),
        finish_reason: Some(format!("{:?}", g.finish_reason).to_lowercase()),
        usage: Some(serde_json::json!({
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens,
        })),
    };
    finish(cli, &answer)
}

fn finish(cli: &Cli, answer: &Answer) -> Result<ExitCode> {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(answer)?);
    } else {
        println!();
        let tokens = answer
            .usage
            .as_ref()
            .and_then(|u| u["completion_tokens"].as_u64())
            .unwrap_or(0);
        eprintln!(
            "[{tokens} tokens, finish: {}]",
            answer.finish_reason.as_deref().unwrap_or("unknown")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// No node is running: start one in this process and ask it.
async fn ask_embedded(cli: &Cli, home: &Home, ask: &Ask, args: &NodeArgs) -> Result<ExitCode> {
    let cfg = node_config(cli, home, args)?;
    let node = Node::start(home.clone(), cfg, Services::EMBEDDED).await?;
    let outcome = ask_on(cli, Target::Embedded(node.handle()), ask).await;
    node.shutdown().await?;
    outcome
}
