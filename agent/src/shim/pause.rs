//! The pod's PID namespace for `shareProcessNamespace: true`: a tiny process
//! (`podagent-shim pause`) that is PID 1 of a new PID namespace, reaps what
//! is orphaned there, and does nothing else until it is killed with the pod.
//! Its containers' shims join that namespace (`setns` on
//! `/proc/<pid>/ns/pid`) instead of making their own, so they see each
//! other's processes, as with the kubelet's pause container.
//!
//! The spawner runs `pause --pidfile FILE`: it unshares the PID namespace,
//! forks PID 1, writes the pid and start time of PID 1 atomically to FILE and
//! exits; PID 1 carries on alone.

use std::path::PathBuf;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::ForkResult;

use crate::sys;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where PID 1's `{"pid", "start_ticks"}` is written.
    #[arg(long)]
    pub pidfile: PathBuf,
}

/// Returns the spawner's exit status; PID 1 never returns.
pub fn run(args: &Args) -> i32 {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        eprintln!("pause: unshare the PID namespace: {e}");
        return 1;
    }
    // Every signal blocked before the fork, so PID 1 starts with them
    // blocked and waits for SIGCHLD alone; SIGKILL from the host ends it.
    let all = SigSet::all();
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None) {
        eprintln!("pause: block signals: {e}");
        return 1;
    }
    match sys::fork() {
        Ok(ForkResult::Child) => reap_forever(),
        Ok(ForkResult::Parent { child }) => {
            let record = serde_json::json!({
                "pid": child.as_raw(),
                "start_ticks": super::start_ticks(child.as_raw()),
            });
            let dir = args.pidfile.parent().unwrap_or(std::path::Path::new("."));
            let name = args
                .pidfile
                .file_name()
                .map_or("pause.json".into(), |n| n.to_string_lossy());
            match super::write_json(dir, &name, &record) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("pause: {e}");
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    1
                }
            }
        }
        Err(e) => {
            eprintln!("pause: fork: {e}");
            1
        }
    }
}

fn reap_forever() -> ! {
    let _ = nix::sys::prctl::set_name(c"pause");
    let _ = nix::unistd::setsid();
    let _ = sys::cloexec_from(3);
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    loop {
        let _ = chld.wait();
        while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if s == WaitStatus::StillAlive {
                break;
            }
        }
    }
}
