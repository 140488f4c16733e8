//! podagent: the node agent. Today its one subcommand is `shim`, the parent
//! of one container, which the agent starts for each container it runs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "podagent",
    version,
    about = "Runs the pods of a directory on this node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pods of a directory (the agent).
    Run(agent::daemon::Args),
    /// Run one container from an OCI bundle and stay its parent (started by
    /// the agent, not by hand).
    Shim(agent::shim::Args),
    /// Run a command in a running container (used by `podctl exec`).
    Exec(agent::shim::exec::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => {
            let exe = std::env::current_exe().unwrap_or_else(|_| "podagent".into());
            match agent::daemon::Agent::new(args, exe).and_then(|mut a| a.run()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("podagent: {e}");
                    1
                }
            }
        }
        Command::Shim(args) => agent::shim::run(&args),
        Command::Exec(args) => agent::shim::exec::run(&args),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
