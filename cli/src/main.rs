//! `myco`: clap parses, the library does the work, and `main` maps errors to exit codes.
//!
//! Exit codes: 0 success; 1 a job ended other than done, or an operation failed; 2 bad input
//! (a malformed job.toml, a bad flag); 3 no node reachable at the API address.

mod args;
mod bench;
mod client;
mod cmd;
mod progress;
mod wait;

use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cmd::exit_code(&e))
        }
    }
}
