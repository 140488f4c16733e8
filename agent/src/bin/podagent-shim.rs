//! podagent-shim: `podagent shim` as a binary of its own. It links only what
//! a shim runs (not the agent's API, probes or network code), so each
//! container's resident parent costs less: fewer relocated pages, a smaller
//! image to map. The agent runs it when it sits next to `podagent`.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "podagent-shim", version, about = "The parent of one container")]
struct Cli {
    #[command(flatten)]
    args: agent::shim::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(u8::try_from(agent::shim::run(&cli.args)).unwrap_or(1))
}
