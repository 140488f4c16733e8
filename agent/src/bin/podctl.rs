//! podctl: parses the command line, runs the subcommand, maps its outcome to
//! the exit code (0 ok, 1 invalid input or failure, 2 usage error).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = agent::cli::Cli::parse();
    let outcome = agent::cli::run(
        cli,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(outcome.code())
}
