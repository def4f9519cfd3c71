//! `orders`: the durable order-processing worker and its command line. This file parses the
//! command line, sets up logging (`cli::init_tracing`) and runs the command (`cli::run`);
//! everything else is in the library (see [`orders_worker::cli`]).

use std::process::ExitCode;

use clap::Parser;
use orders_worker::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = cli::init_tracing(cli.log_format, cli.log_file().as_deref()) {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    match cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
