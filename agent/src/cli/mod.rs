//! `podctl`: one module per subcommand.

pub mod apply;
pub mod attach;
pub mod describe;
pub mod events;
pub mod exec;
pub mod image;
pub mod kubeconfig;
pub mod logs;
pub mod status;
pub mod sync;
pub mod top;
pub mod validate;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "podctl",
    version,
    about = "Show and manage the pods podagent runs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check Pod manifests offline (no agent, no root): every problem with its
    /// file, line, column and field path.
    Validate(validate::Args),
    /// Manage the local image store.
    Image(image::Args),
    /// Print a container's output.
    Logs(logs::Args),
    /// Run a command in a running container.
    Exec(exec::Args),
    /// Attach to a running container's stdin and output (stdin: true or
    /// tty: true).
    Attach(attach::Args),
    /// The pods and their state (alias: get pods).
    #[command(alias = "get")]
    Status(status::Args),
    /// What happened to the pods: starts, exits, back-offs, OOM kills,
    /// manifest problems.
    Events(events::Args),
    /// One pod in detail: state, conditions, containers with their limits,
    /// events.
    Describe(describe::Args),
    /// CPU and memory of each running container, from its cgroup.
    Top(top::Args),
    /// Validate a manifest and install it in the pods dir atomically.
    Apply(apply::ApplyArgs),
    /// What applying a manifest would change (created, recreated,
    /// restarted, resized in place, deleted), before anything is written.
    Diff(apply::DiffArgs),
    /// Remove a pod's manifest from the pods dir (refused when its file
    /// defines other pods too).
    Delete(apply::DeleteArgs),
    /// Print a kubeconfig for the node's Kubernetes API (the agent's
    /// --kube-api-address): kubectl and the client libraries use it.
    Kubeconfig(kubeconfig::Args),
    /// The git sync (`podagent run --git-repo`): `status`, or `now`.
    Sync(sync::Args),
}

/// Where the agent's API is.
#[derive(Debug, Clone, clap::Args)]
pub struct Api {
    /// The agent's API socket (default: `podagent.sock` in --state-dir).
    #[arg(long)]
    pub api_socket: Option<std::path::PathBuf>,
    #[arg(long, default_value = "/run/podagent")]
    pub state_dir: std::path::PathBuf,
}

impl Api {
    pub fn socket(&self) -> std::path::PathBuf {
        self.api_socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("podagent.sock"))
    }

    /// GETs a JSON document; an error is worded for a person.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let socket = self.socket();
        let (code, body) = crate::api::get(&socket, path).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("{}: {path}: not JSON ({e})", socket.display()))?;
        if code != 200 {
            return Err(format!(
                "the agent answered {code}: {}",
                v["error"].as_str().unwrap_or("")
            ));
        }
        Ok(v)
    }
}

/// What a subcommand ends with; `main` turns it into the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0
    Ok,
    /// 1: the input has errors.
    Invalid,
    /// 2: the command was used wrongly (missing file, bad flag).
    Usage,
    /// The exit status of a command podctl ran (`exec`).
    Passed(u8),
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Invalid => 1,
            Outcome::Usage => 2,
            Outcome::Passed(c) => c,
        }
    }
}

/// Runs a parsed command, writing to `out` and `err`.
pub fn run(cli: Cli, out: &mut dyn std::io::Write, err: &mut dyn std::io::Write) -> Outcome {
    match cli.command {
        Command::Validate(args) => validate::run(&args, out, err),
        Command::Image(args) => image::run(&args, out, err),
        Command::Logs(args) => logs::run(&args, out, err),
        Command::Status(args) => status::run(&args, out, err),
        Command::Events(args) => events::run(&args, out, err),
        Command::Describe(args) => describe::run(&args, out, err),
        Command::Top(args) => top::run(&args, out, err),
        Command::Apply(args) => apply::apply(&args, out, err),
        Command::Diff(args) => apply::diff(&args, out, err),
        Command::Delete(args) => apply::delete(&args, out, err),
        Command::Kubeconfig(args) => kubeconfig::run(&args, out, err),
        Command::Sync(args) => sync::run(&args, out, err),
        Command::Attach(args) => attach::run(&args, err),
        Command::Exec(args) => match exec::run(&args, err) {
            Ok(code) => Outcome::Passed(u8::try_from(code).unwrap_or(1)),
            Err(o) => o,
        },
    }
}
