//! `podagent exec`: a process in a running container's namespaces and cgroup,
//! with the container's environment, user, capabilities, no_new_privs and
//! seccomp profile. Single-threaded like the shim; its exit status is the
//! process's (128 + signal when killed by one).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;
use oci_spec::runtime::Spec;

use super::{init, read_config, start_ticks, ShimError};
use crate::cgroups::{detect, Layout};
use crate::sys;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The container's bundle (its config.json gives env, user, capabilities
    /// and seccomp).
    #[arg(long)]
    pub bundle: PathBuf,
    /// The container's init, as its state.json records it.
    #[arg(long)]
    pub pid: i32,
    /// Its start time in clock ticks: a recycled pid is refused.
    #[arg(long)]
    pub start_ticks: u64,
    #[arg(long)]
    pub seccomp_cache: Option<PathBuf>,
    /// Give the process a terminal: a pty of the container's own devpts,
    /// relayed to this process's stdin and stdout (put in raw mode when they
    /// are a terminal), with its window size.
    #[arg(long)]
    pub tty: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The `cgroup.procs` files of the cgroups `pid` is in, on this node.
fn cgroup_procs(pid: i32, layout: &Layout) -> Result<Vec<PathBuf>, ShimError> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| ShimError::Io {
            what: format!("read /proc/{pid}/cgroup"),
            source: e,
        })?;
    Ok(layout
        .dirs_of(&text)
        .into_iter()
        .map(|(_, dir)| dir.join("cgroup.procs"))
        .collect())
}

pub fn run(args: &Args) -> i32 {
    match exec(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("podagent exec: {e}");
            126
        }
    }
}

fn exec(args: &Args) -> Result<i32, ShimError> {
    if start_ticks(args.pid) != Some(args.start_ticks) {
        return Err(ShimError::Config(format!(
            "container process {} is not running",
            args.pid
        )));
    }
    // Not dumpable from the start: once in the container's namespaces this
    // process, and the child it forks into the container's PID namespace,
    // run the host's binary until the child's execve; a container process
    // that could open the child's /proc/PID/exe would hold that binary
    // (CVE-2019-5736). The flag is inherited by the fork; the execve of the
    // user's command resets it.
    init::make_undumpable().map_err(|e| ShimError::Config(e.to_string()))?;
    let mut spec: Spec = read_config(&args.bundle)?;
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(p) => Some(
            super::seccomp::program(p, args.seccomp_cache.as_deref()).map_err(ShimError::Config)?,
        ),
        None => None,
    };
    let layout =
        detect(Path::new("/proc/self/mountinfo")).map_err(|e| ShimError::Config(e.to_string()))?;
    // Join the cgroups first: their files are host paths, gone once the
    // container's mount namespace is entered.
    for f in cgroup_procs(args.pid, &layout)? {
        std::fs::write(&f, "0").map_err(|e| ShimError::Io {
            what: format!("join {}", f.display()),
            source: e,
        })?;
    }
    let ns = |name: &str| File::open(format!("/proc/{}/ns/{name}", args.pid));
    let mut opened = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let f = ns(name).map_err(|e| ShimError::Io {
            what: format!("open the container's {name} namespace"),
            source: e,
        })?;
        opened.push((name, f, flag));
    }
    // A container of its own user namespace (`hostUsers: false`): opened
    // here (its /proc entry is out of sight once in the container), entered
    // last, as its init did, and as its root there.
    let user = ns("user").map_err(|e| ShimError::Io {
        what: "open the container's user namespace".into(),
        source: e,
    })?;
    let own = File::open("/proc/self/ns/user").map_err(|e| ShimError::Io {
        what: "open this process's user namespace".into(),
        source: e,
    })?;
    use std::os::unix::fs::MetadataExt;
    let (theirs, ours) = (user.metadata(), own.metadata());
    let other = match (theirs, ours) {
        (Ok(a), Ok(b)) => a.ino() != b.ino() || a.dev() != b.dev(),
        _ => false,
    };
    for (name, f, flag) in &opened {
        setns(f.as_fd(), *flag).map_err(|e| ShimError::Sys {
            what: format!("enter the container's {name} namespace"),
            source: e,
        })?;
    }
    drop(opened);
    if other {
        init::join_user_namespace(&user.into()).map_err(|e| ShimError::Config(e.to_string()))?;
    }
    // The pty is the container's: /dev/ptmx there points at its devpts.
    let pty = if args.tty {
        let size = sys::window_size(std::io::stdin().as_fd());
        Some(
            nix::pty::openpty(size.as_ref(), None).map_err(|e| ShimError::Sys {
                what: "open a pty in the container".into(),
                source: e,
            })?,
        )
    } else {
        None
    };
    // The process the user asked for, with the container's process settings.
    if let Some(p) = spec.process_mut() {
        p.set_args(Some(args.command.clone()));
        p.set_terminal(Some(args.tty));
    }
    let process = spec
        .process()
        .clone()
        .ok_or_else(|| ShimError::Config("the spec has no process".into()))?;
    match sys::fork().map_err(|e| ShimError::Sys {
        what: "fork".into(),
        source: e,
    })? {
        ForkResult::Child => {
            let e = (|| -> Result<std::convert::Infallible, init::InitError> {
                if let Some(pty) = &pty {
                    attach_terminal(&pty.slave)?;
                }
                init::enter_cwd(process.cwd())?;
                let nnp = process.no_new_privileges() == Some(true);
                if !nnp {
                    init::apply_seccomp(seccomp.as_deref())?;
                }
                init::set_user_and_capabilities(&process)?;
                let (path, argv, envp) = init::resolve_exec(&process)?;
                init::close_inherited_fds()?;
                if nnp {
                    nix::sys::prctl::set_no_new_privs().map_err(|e| init::InitError {
                        step: "no_new_privs",
                        detail: e.to_string(),
                    })?;
                    init::apply_seccomp(seccomp.as_deref())?;
                }
                let e = nix::unistd::execve(&path, &argv, &envp).unwrap_err();
                Err(init::exec_failed(&path, e))
            })();
            let Err(e) = e;
            eprintln!("podagent exec: {e}");
            sys::exit_now(126);
        }
        ForkResult::Parent { child } => {
            if let Some(pty) = pty {
                drop(pty.slave);
                relay(pty.master.as_fd(), true, true);
            }
            wait(child)
        }
    }
}

/// In the child: a new session whose controlling terminal is the pty, and
/// the pty as stdin, stdout and stderr.
fn attach_terminal(slave: &std::os::fd::OwnedFd) -> Result<(), init::InitError> {
    let step = |what: &'static str| {
        move |e: nix::Error| init::InitError {
            step: "terminal",
            detail: format!("{what}: {e}"),
        }
    };
    nix::unistd::setsid().map_err(step("setsid"))?;
    sys::set_controlling_terminal(slave.as_fd()).map_err(step("TIOCSCTTY"))?;
    nix::unistd::dup2_stdin(slave).map_err(step("dup2"))?;
    nix::unistd::dup2_stdout(slave).map_err(step("dup2"))?;
    nix::unistd::dup2_stderr(slave).map_err(step("dup2"))?;
    Ok(())
}

/// Restores a terminal's settings when dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// Copies stdin (`forward`) to `master` (a pty's master, or podctl
/// attach's socket) and what it reads to stdout, until its other side is
/// gone (a pty's last holder closed it, or the socket's end); the terminal
/// in raw mode meanwhile when `raw`.
pub fn relay(master: std::os::fd::BorrowedFd<'_>, raw: bool, forward: bool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let _raw = if raw { RawMode::enter() } else { None };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut stdin_open = forward;
    let mut buf = [0u8; 8192];
    loop {
        let mut fds = vec![PollFd::new(master, PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => return,
        }
        let master_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let stdin_ready = stdin_open && fds[1].revents().is_some_and(|r| !r.is_empty());
        drop(fds);
        if master_ready {
            match nix::unistd::read(master, &mut buf) {
                // EIO: every slave descriptor is closed.
                Ok(0) | Err(nix::Error::EIO) => return,
                Ok(n) => {
                    if write_all(stdout.as_fd(), &buf[..n]).is_err() {
                        return;
                    }
                }
                Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
                Err(_) => return,
            }
        }
        if stdin_ready {
            match nix::unistd::read(&stdin, &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    if write_all(master, &buf[..n]).is_err() {
                        stdin_open = false;
                    }
                }
            }
        }
    }
}

fn write_all(fd: std::os::fd::BorrowedFd<'_>, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn wait(child: nix::unistd::Pid) -> Result<i32, ShimError> {
    {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Ok(128 + sig as i32),
            Ok(_) => Ok(1),
            Err(e) => Err(ShimError::Sys {
                what: "waitpid".into(),
                source: e,
            }),
        }
    }
}
