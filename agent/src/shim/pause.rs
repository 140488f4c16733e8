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
//!
//! `pause --user-namespace FILE --id-base N` makes a pod's user namespace
//! for `hostUsers: false` instead: a child unshares one, this process (root
//! of the node) maps the child's ids 0-65535 onto N.., bind-mounts the
//! namespace at FILE (which keeps it), and both exit.

use std::path::PathBuf;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::ForkResult;

use crate::sys;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where PID 1's `{"pid", "start_ticks"}` is written.
    #[arg(long, required_unless_present = "user_namespace")]
    pub pidfile: Option<PathBuf>,
    /// Make a user namespace and bind it at this file (no PID namespace).
    #[arg(long, requires = "id_base", conflicts_with = "pidfile")]
    pub user_namespace: Option<PathBuf>,
    /// The first host id the user namespace's 0 maps to (65536 of them).
    #[arg(long)]
    pub id_base: Option<u32>,
}

/// Returns the spawner's exit status; PID 1 never returns.
pub fn run(args: &Args) -> i32 {
    if let (Some(file), Some(base)) = (&args.user_namespace, args.id_base) {
        return match hold_user_namespace(file, base) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("pause: the user namespace: {e}");
                1
            }
        };
    }
    let Some(pidfile) = &args.pidfile else {
        return 2;
    };
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
            let dir = pidfile.parent().unwrap_or(std::path::Path::new("."));
            let name = pidfile
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

/// A user namespace mapping ids 0-65535 onto `base`.., bound at `file`.
fn hold_user_namespace(file: &std::path::Path, base: u32) -> Result<(), String> {
    use std::io::{Read, Write};
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (ready_r, ready_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    match sys::fork().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((ready_r, done_w));
            let code = match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            let _ = std::fs::File::from(ready_w).write_all(&[code]);
            // Until the parent has bound the namespace (EOF).
            let _ = std::fs::File::from(done_r).read(&mut [0u8; 1]);
            sys::exit_now(code.into());
        }
        ForkResult::Parent { child } => {
            drop((ready_w, done_r));
            let mut code = [1u8];
            let _ = std::fs::File::from(ready_r).read(&mut code);
            let result = if code[0] != 0 {
                Err("unshare(CLONE_NEWUSER) failed".to_string())
            } else {
                let map = format!("0 {base} {}", specs::oci::USER_NS_SIZE);
                let proc = format!("/proc/{}", child.as_raw());
                std::fs::write(format!("{proc}/uid_map"), &map)
                    .and_then(|()| std::fs::write(format!("{proc}/gid_map"), &map))
                    .map_err(|e| format!("write the id maps: {e}"))
                    .and_then(|()| {
                        std::fs::File::create(file).map_err(|e| format!("{}: {e}", file.display()))
                    })
                    .and_then(|_| {
                        nix::mount::mount(
                            Some(format!("{proc}/ns/user").as_str()),
                            file,
                            None::<&str>,
                            nix::mount::MsFlags::MS_BIND,
                            None::<&str>,
                        )
                        .map_err(|e| format!("bind it at {}: {e}", file.display()))
                    })
            };
            drop(done_w);
            let _ = waitpid(child, None);
            result
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
