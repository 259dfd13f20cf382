//! `myco ask` and the streaming side of `myco submit --wait`: print an LLM's tokens as the
//! node that runs the job generates them.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use myco_actors::interactive::{Followed, Relay};
use myco_actors::{Node, Services};
use myco_jobs::infer::{Generation, InferParams, InferTask, Message, Prompt};
use myco_runtime::config::Home;
use myco_runtime::queue::{JobState, JobView};

use crate::client::{Client, Unreachable, read_sse};
use crate::commands::{BadInput, client, node_config};
use crate::{Cli, NodeArgs};

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
    pub n_ctx: u32,
}

impl Ask {
    fn messages(&self) -> Vec<Message> {
        let mut m = Vec::new();
        if let Some(s) = &self.system {
            m.push(Message {
                role: "system".into(),
                content: s.clone(),
            });
        }
        m.push(Message {
            role: "user".into(),
            content: self.prompt.clone(),
        });
        m
    }
}

fn print_piece(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// What the answer ended with.
#[derive(Debug, Default, serde::Serialize)]
struct Answer {
    text: String,
    finish_reason: Option<String>,
    usage: Option<serde_json::Value>,
}

pub async fn ask(cli: &Cli, home: &Home, ask: Ask, args: &NodeArgs) -> Result<ExitCode> {
    let (path, mut body) = if ask.raw {
        (
            "/v1/completions",
            serde_json::json!({ "prompt": ask.prompt }),
        )
    } else {
        (
            "/v1/chat/completions",
            serde_json::json!({ "messages": ask.messages() }),
        )
    };
    body["model"] = ask.model.clone().into();
    body["max_tokens"] = ask.max_tokens.into();
    body["temperature"] = ask.temperature.into();
    body["seed"] = ask.seed.into();
    body["n_ctx"] = ask.n_ctx.into();
    body["stream"] = true.into();
    let resp = match client(cli, home).complete_stream(path, &body).await {
        Err(e) if e.downcast_ref::<Unreachable>().is_some() => {
            return ask_embedded(cli, home, ask, args).await;
        }
        other => other?,
    };
    let mut answer = Answer::default();
    let mut failure: Option<String> = None;
    read_sse(resp, |_, data| {
        if data == "[DONE]" {
            return Ok(false);
        }
        let v: serde_json::Value = serde_json::from_str(data)
            .map_err(|e| anyhow!("the node sent an event this myco cannot read: {e}"))?;
        if let Some(m) = v["error"]["message"].as_str() {
            failure = Some(m.to_owned());
            return Ok(false);
        }
        let choice = &v["choices"][0];
        let text = choice["delta"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
            .unwrap_or_default();
        if !text.is_empty() {
            answer.text.push_str(text);
            if !cli.json {
                print_piece(text);
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            answer.finish_reason = Some(f.to_owned());
        }
        if !v["usage"].is_null() {
            answer.usage = Some(v["usage"].clone());
        }
        Ok(true)
    })
    .await?;
    if let Some(why) = failure {
        if !cli.json {
            println!();
        }
        return Err(anyhow!("the request failed: {why}"));
    }
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
async fn ask_embedded(cli: &Cli, home: &Home, ask: Ask, args: &NodeArgs) -> Result<ExitCode> {
    let cfg = node_config(cli, home, args)?;
    let node = Node::start(home.clone(), cfg, Services::EMBEDDED).await?;
    let outcome = ask_on(cli, &node, ask).await;
    node.shutdown().await?;
    outcome
}

async fn ask_on(cli: &Cli, node: &Node, ask: Ask) -> Result<ExitCode> {
    let handle = node.handle();
    let model = handle
        .find_model(&ask.model)
        .await
        .map_err(|e| BadInput(e.to_string()))?;
    let d = InferParams::default();
    let task = InferTask {
        gpu: false,
        model,
        prompt: if ask.raw {
            Prompt::Text(ask.prompt.clone())
        } else {
            Prompt::Chat(ask.messages())
        },
        params: InferParams {
            max_tokens: ask.max_tokens,
            temperature: ask.temperature,
            seed: ask.seed,
            n_ctx: ask.n_ctx,
            ..d
        },
    };
    let id = myco_actors::interactive::submit(handle, task).await?;
    let mut rx = myco_actors::interactive::spawn_follow(handle, id, true);
    let mut relay = Relay::default();
    let mut answer = Answer::default();
    while let Some(event) = rx.recv().await {
        match event {
            Followed::Piece(p) => {
                if let Some(text) = relay.piece(&p) {
                    answer.text.push_str(&text);
                    if !cli.json {
                        print_piece(&text);
                    }
                }
            }
            Followed::End(rec) => {
                if rec.state != JobState::Done {
                    if !cli.json {
                        println!();
                    }
                    let why = rec.last_error.map(|e| e.message).unwrap_or_default();
                    return Err(anyhow!("the request ended {}: {why}", rec.state.name()));
                }
                let g = myco_actors::interactive::generation(handle, id)
                    .await
                    .map_err(|e| anyhow!(e))?;
                if let Some(rest) = relay.rest(&g.text) {
                    answer.text.push_str(&rest);
                    if !cli.json {
                        print_piece(&rest);
                    }
                }
                answer.finish_reason = Some(format!("{:?}", g.finish_reason).to_lowercase());
                answer.usage = Some(serde_json::json!({
                    "prompt_tokens": g.prompt_tokens,
                    "completion_tokens": g.completion_tokens,
                    "total_tokens": g.prompt_tokens + g.completion_tokens,
                }));
                return finish(cli, &answer);
            }
        }
    }
    Err(anyhow!("lost track of job {id}"))
}

/// `submit --wait` on an infer job: print its tokens as they come, then its final status.
pub async fn stream_job(client: &Client, id: &str) -> Result<JobView> {
    let resp = client.stream(id).await?;
    let mut relay = Relay::default();
    let mut end: Option<JobView> = None;
    read_sse(resp, |event, data| {
        match event {
            "piece" => {
                let p: myco_runtime::cluster::wire::StreamPiece = serde_json::from_str(data)?;
                if let Some(text) = relay.piece(&p) {
                    print_piece(&text);
                }
            }
            "end" => {
                end = Some(serde_json::from_str(data)?);
                return Ok(false);
            }
            _ => {}
        }
        Ok(true)
    })
    .await?;
    let job = match end {
        Some(job) => job,
        // The stream broke off (the node stopped): report what it says now.
        None => client.status(id).await?,
    };
    if job.state.is_terminal() && job.state == myco_runtime::queue::StateName::Done {
        // Text the stream did not carry (pieces lost with a peer) is in the result.
        if let Ok(resp) = client.result(id).await
            && let Ok(bytes) = resp.bytes().await
            && let Ok(g) = serde_json::from_slice::<Generation>(&bytes)
            && let Some(rest) = relay.rest(&g.text)
        {
            print_piece(&rest);
        }
    }
    println!();
    Ok(job)
}
