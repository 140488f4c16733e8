//! podagent: the node agent. Today its one subcommand is `shim`, the parent
//! of one container, which the agent starts for each container it runs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "podagent",
    version,
    args_override_self = true,
    about = "Runs the pods of a directory on this node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pods of a directory (the agent).
    Run(Box<agent::daemon::Args>),
    /// Run one container from an OCI bundle and stay its parent (started by
    /// the agent, not by hand).
    Shim(agent::shim::Args),
    /// Run a command in a running container (used by `podctl exec`).
    Exec(agent::shim::exec::Args),
    /// Hold a pod's shared PID namespace (started by the agent).
    Pause(agent::shim::pause::Args),
}

/// `podagent run --config FILE ...`: the file's options go before the
/// command line's, so the command line wins.
fn with_config(
    argv: Vec<std::ffi::OsString>,
) -> Result<Vec<std::ffi::OsString>, agent::daemon::ConfigError> {
    if argv.get(1).and_then(|a| a.to_str()) != Some("run") {
        return Ok(argv);
    }
    let mut file = None;
    for (i, a) in argv.iter().enumerate() {
        let a = a.to_string_lossy();
        if let Some(v) = a.strip_prefix("--config=") {
            file = Some(std::path::PathBuf::from(v));
        } else if a == "--config" {
            file = argv.get(i + 1).map(std::path::PathBuf::from);
        }
    }
    let Some(file) = file else {
        return Ok(argv);
    };
    let extra = agent::daemon::config_args(&file)?;
    let mut out = argv[..2].to_vec();
    out.extend(extra.into_iter().map(Into::into));
    out.extend(argv[2..].iter().cloned());
    Ok(out)
}

fn main() -> ExitCode {
    let argv = match with_config(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("podagent: --config {}", agent::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    let code = match cli.command {
        Command::Run(args) => {
            let exe = std::env::current_exe().unwrap_or_else(|_| "podagent".into());
            match agent::daemon::Agent::new(*args, exe).and_then(|mut a| a.run()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("podagent: {}", agent::error_chain(&e));
                    1
                }
            }
        }
        Command::Shim(args) => agent::shim::run(&args),
        Command::Exec(args) => agent::shim::exec::run(&args),
        Command::Pause(args) => agent::shim::pause::run(&args),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
