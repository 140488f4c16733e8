//! `podctl exec POD [-c NAME] [-i] [-t] -- CMD...`: runs a command in a
//! container through `podagent exec`; podctl's exit status is the command's.
//! As with kubectl: `-i` passes stdin (otherwise the command reads nothing),
//! `-t` gives it a terminal of the container's own devpts.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use super::Outcome;

/// A container of the state dir, as `exec` and `attach` name it.
#[derive(Debug, clap::Args)]
pub struct Container {
    pub pod: String,
    #[arg(short, long)]
    pub container: Option<String>,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[arg(long, default_value = "/run/podagent")]
    pub state_dir: PathBuf,
}

impl Container {
    /// Its directory in the state dir.
    pub fn dir(&self) -> Result<PathBuf, crate::locate::LocateError> {
        crate::locate::container_dir(
            &self.state_dir,
            &self.namespace,
            &self.pod,
            self.container.as_deref(),
        )
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Container,
    /// The podagent binary (default: beside podctl).
    #[arg(long)]
    pub podagent: Option<PathBuf>,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Allocate a terminal for the command.
    #[arg(short = 't', long)]
    pub tty: bool,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs the command; returns its exit status, or the usage outcome when
/// the container cannot be found.
pub fn run(args: &Args, err: &mut dyn Write) -> Result<i32, Outcome> {
    let dir = args.target.dir().map_err(|e| {
        let _ = writeln!(err, "podctl exec: {e}");
        Outcome::Invalid
    })?;
    let state: serde_json::Value = std::fs::read(dir.join("state/state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            let _ = writeln!(err, "podctl exec: the container is not running");
            Outcome::Invalid
        })?;
    if dir.join("state/exit.json").exists() {
        let _ = writeln!(err, "podctl exec: the container has exited");
        return Err(Outcome::Invalid);
    }
    let podagent = args.podagent.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("podagent")))
            .unwrap_or_else(|| PathBuf::from("podagent"))
    });
    let status = Command::new(&podagent)
        .arg("exec")
        .arg("--bundle")
        .arg(dir.join("bundle"))
        .arg("--pid")
        .arg(state["pid"].to_string())
        .arg("--start-ticks")
        .arg(state["start_ticks"].to_string())
        .arg("--seccomp-cache")
        .arg(args.target.state_dir.join("seccomp-cache"))
        .args(args.tty.then_some("--tty"))
        .stdin(if args.stdin {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .arg("--")
        .args(&args.command)
        .status()
        .map_err(|e| {
            let _ = writeln!(err, "podctl exec: running {}: {e}", podagent.display());
            Outcome::Invalid
        })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
