//! `podctl attach POD [-c NAME] [-i] [-t]`: the container's output as it
//! comes, and (`-i`) podctl's stdin to the container's stdin, through the
//! attach socket its shim keeps for a container with `stdin: true` or
//! `tty: true`. `-t` puts the local terminal in raw mode (for a `tty: true`
//! container). It ends when the container exits; the end of podctl's input
//! is not the container's.

use std::io::Write;
use std::os::fd::AsFd;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: super::exec::Container,
    /// Pass stdin to the container.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// The local terminal in raw mode (for a container with a tty).
    #[arg(short = 't', long)]
    pub tty: bool,
}

pub fn run(args: &Args, err: &mut dyn Write) -> Outcome {
    let dir = match args.target.dir() {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(err, "podctl attach: {e}");
            return Outcome::Invalid;
        }
    };
    let state = dir.join("state");
    if state.join("exit.json").exists() {
        let _ = writeln!(err, "podctl attach: the container has exited");
        return Outcome::Invalid;
    }
    let sock = match crate::shim::attach::connect(&state) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = writeln!(
                err,
                "podctl attach: the container has nothing to attach to (it needs stdin: true or tty: true)"
            );
            return Outcome::Invalid;
        }
        Err(e) => {
            let _ = writeln!(err, "podctl attach: {e}");
            return Outcome::Invalid;
        }
    };
    crate::shim::exec::relay(sock.as_fd(), args.tty, args.stdin);
    Outcome::Passed(0)
}
