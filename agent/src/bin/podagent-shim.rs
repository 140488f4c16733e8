//! podagent-shim: `podagent shim` as a binary of its own. It links only what
//! a shim runs (not the agent's API, probes or network code), so each
//! container's resident parent costs less: fewer relocated pages, a smaller
//! image to map. The agent runs it when it sits next to `podagent`.
//! `podagent-shim pause --pidfile FILE` holds a pod's shared PID namespace.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "podagent-shim", version, about = "The parent of one container")]
struct Cli {
    #[command(flatten)]
    args: agent::shim::Args,
}

#[derive(Debug, Parser)]
#[command(name = "pause", about = "PID 1 of a pod's shared PID namespace")]
struct PauseCli {
    #[command(flatten)]
    args: agent::shim::pause::Args,
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let code = if argv.get(1).is_some_and(|a| a == "pause") {
        agent::shim::pause::run(&PauseCli::parse_from(&argv[1..]).args)
    } else {
        agent::shim::run(&Cli::parse_from(&argv).args)
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
