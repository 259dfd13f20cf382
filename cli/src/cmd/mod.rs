//! The commands, one module a verb; this file only dispatches and maps errors to exit codes.
//! Each command turns parsed flags into calls on a node (over HTTP, or embedded for `run`,
//! `node` and a node-less `ask` or `query`) and prints the outcome, human-readable or
//! `--json`.

pub mod ask;
pub mod collections;
pub mod common;
pub mod jobs;
pub mod node;
pub mod query;
pub mod run;
pub mod submit;
pub mod swarm;

use std::process::ExitCode;

use anyhow::Result;
use myco_actors::SubmitError;
use myco_runtime::config::Home;

use crate::args::{BenchCommand, Cli, CollectionsCommand, Command};
use crate::client::{NodeSaid, Unreachable};
use crate::cmd::common::BadInput;

pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<NodeSaid>()
        .is_some_and(|n| n.code == "model_not_found" || n.code == "no_collection")
    {
        return 2;
    }
    if e.downcast_ref::<Unreachable>().is_some() {
        3
    } else if e.downcast_ref::<BadInput>().is_some()
        || e.downcast_ref::<NodeSaid>()
            .is_some_and(|n| n.code == "invalid_spec" || n.status == 400)
        || e.downcast_ref::<SubmitError>()
            .is_some_and(|s| matches!(s, SubmitError::Spec { .. }))
    {
        2
    } else {
        1
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let home = Home::new(cli.home.clone().unwrap_or_else(Home::default_root));
    common::init_logging(matches!(cli.command, Command::Node(_)));
    match &cli.command {
        Command::Node(args) => node::run(&cli, &home, args).await,
        Command::Run { file, out, node } => run::run(&cli, &home, file, out.as_deref(), node).await,
        Command::Submit { files, wait } => submit::run(&cli, &home, files, *wait).await,
        Command::Jobs {
            state,
            kind,
            parent,
            all,
            text,
            limit,
        } => {
            let a = jobs::ListArgs {
                state,
                kind,
                parent,
                all: *all,
                text,
                limit: *limit,
            };
            jobs::list(&cli, &home, a).await
        }
        Command::Status { id } => jobs::status(&cli, &home, id).await,
        Command::Result { id, out } => jobs::result(&cli, &home, id, out.as_deref()).await,
        Command::Cancel { id } => jobs::cancel(&cli, &home, id).await,
        Command::Retry { id } => jobs::retry(&cli, &home, id).await,
        Command::Resubmit { id } => jobs::resubmit(&cli, &home, id).await,
        Command::Query {
            text,
            collection,
            k,
            mode,
            filter,
        } => query::run(&cli, &home, text, collection, *k, *mode, filter).await,
        Command::Collections { action: None } => collections::list(&cli, &home).await,
        Command::Collections {
            action: Some(CollectionsCommand::Rm { name }),
        } => collections::remove(&cli, &home, name).await,
        Command::Bench(BenchCommand::Steal(args)) => {
            crate::bench::steal(args, cli.json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Transfer(args)) => {
            crate::bench::transfer(args, cli.json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { model, n_ctx } => swarm::plan(&cli, &home, model, *n_ctx).await,
        Command::Swarm => swarm::swarm(&cli, &home).await,
        Command::Models { action: None } => swarm::models(&cli, &home).await,
        Command::Models {
            action: Some(crate::args::ModelsAction::Pull { name, from }),
        } => swarm::pull(&cli, &home, name, from.as_deref()).await,
        Command::Models {
            action: Some(crate::args::ModelsAction::Rm { name }),
        } => swarm::remove_model(&cli, &home, name).await,
        Command::Invite { addr } => swarm::invite(&cli, &home, addr).await,
        Command::Token => swarm::token(&cli, &home),
        Command::Ask {
            prompt,
            model,
            system,
            raw,
            max_tokens,
            temperature,
            seed,
            n_ctx,
            node,
        } => {
            let ask = ask::Ask {
                prompt: prompt.clone(),
                model: model.clone(),
                system: system.clone(),
                raw: *raw,
                max_tokens: *max_tokens,
                temperature: *temperature,
                seed: seed.unwrap_or_else(random_seed),
                n_ctx: *n_ctx,
            };
            ask::run(&cli, &home, ask, node).await
        }
        Command::Detect => swarm::detect(&cli),
    }
}

/// A random seed, from the OS's randomness (std's hash keys are drawn from it).
fn random_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish() as u32
}
