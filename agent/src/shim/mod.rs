//! `podagent shim`: the parent of one container (DESIGN rule 3).
//!
//! Started by the agent (fork+exec of `podagent shim`), it is single-threaded
//! from start to end. It reads the bundle's `config.json` (an OCI spec made by
//! `specs::oci`), joins the pod's network, IPC and UTS namespaces, makes or
//! joins the PID namespace, forks the container's init (`init.rs`, which
//! execs the process), records its start and its end atomically in the state
//! directory, and writes its output to a CRI-format log. It keeps running when
//! the agent dies: the container's exit is recorded either way.
//!
//! State files, both written to a temp file and renamed:
//! - `state.json`: `pid`, `start_ticks` (field 22 of `/proc/<pid>/stat`, so the
//!   agent re-adopts the process, never a reused pid), `started_at`,
//!   `warnings`;
//! - `exit.json`: `exit_code`, `signal`, `started_at`, `finished_at`, `reason`
//!   (`Completed`, `Error`, `StartError`), `message`.

pub mod attach;
pub mod exec;
mod init;
pub mod logs;
pub mod mounts;
pub mod pause;
mod seccomp;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use crate::sys;

/// Largest config.json read.
const MAX_CONFIG: u64 = 4 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The bundle: `config.json` and, unless it names another, `rootfs/`.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Where `state.json` and `exit.json` are written.
    #[arg(long)]
    pub state: PathBuf,
    /// A file the container writes "0" into to join its cgroup before exec
    /// (`Driver::join_files`: one per v1 hierarchy, one for v2).
    #[arg(long = "cgroup-join")]
    pub cgroup_join: Vec<PathBuf>,
    /// cgroup v2: the container's cgroup directory, which the init is
    /// cloned straight into (`clone3` with `CLONE_INTO_CGROUP`); on a kernel
    /// without it, joined through its `cgroup.procs` after a plain fork.
    #[arg(long = "cgroup-into")]
    pub cgroup_into: Option<PathBuf>,
    /// The container's log file.
    #[arg(long)]
    pub log: PathBuf,
    #[arg(long, default_value_t = 10 << 20)]
    pub log_max_size: u64,
    #[arg(long, default_value_t = 5)]
    pub log_max_files: usize,
    /// Where compiled seccomp programs are cached (by profile hash).
    #[arg(long)]
    pub seccomp_cache: Option<PathBuf>,
    /// Keep the container's stdin open (`stdin: true`): a pipe the shim
    /// holds and nobody writes to, rather than /dev/null, so a process
    /// reading it waits instead of seeing its end.
    #[arg(long)]
    pub open_stdin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: i32,
    pub start_ticks: u64,
    pub started_at: String,
    pub warnings: Vec<String>,
    /// The shim itself (pid and start ticks), so the agent can tell a shim
    /// that died without recording an exit.
    #[serde(default)]
    pub shim_pid: i32,
    #[serde(default)]
    pub shim_start_ticks: u64,
    /// The init was cloned straight into its cgroup (`--cgroup-into` on a
    /// kernel with `CLONE_INTO_CGROUP`), not moved there by a write.
    #[serde(default)]
    pub cloned_into_cgroup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub started_at: Option<String>,
    pub finished_at: String,
    pub reason: String,
    pub message: String,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("invalid config: {0}")]
    Config(String),
    #[error(transparent)]
    Record(#[from] crate::records::RecordError),
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> ShimError {
    let what = what.into();
    move |source| ShimError::Sys { what, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
    let what = what.into();
    move |source| ShimError::Io { what, source }
}

/// Writes a record atomically and durably, stamped with the record version.
fn write_json(dir: &Path, name: &str, v: &impl Serialize) -> Result<(), ShimError> {
    crate::records::write(&dir.join(name), v).map_err(ShimError::Record)
}

fn read_config(bundle: &Path) -> Result<Spec, ShimError> {
    let path = bundle.join("config.json");
    let f = File::open(&path).map_err(io_err(format!("open {}", path.display())))?;
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(format!("read {}", path.display())))?;
    if bytes.len() as u64 > MAX_CONFIG {
        return Err(ShimError::Config(format!(
            "{} is larger than {MAX_CONFIG} bytes",
            path.display()
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ShimError::Config(format!("{}: {e}", path.display())))
}

/// Field 22 of `/proc/<pid>/stat`: the process's start time in clock ticks.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_comm.split_whitespace();
    // A zombie (or a dead task not yet gone) is not running: it has exited
    // and waits for its parent, which may be gone too.
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Joins the namespaces the spec names by path and unshares the ones it asks
/// to create (the mount namespace is the init's own, made after fork).
fn enter_namespaces(spec: &Spec) -> Result<(), ShimError> {
    let mut new = CloneFlags::empty();
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
    {
        let flag = match ns.typ() {
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            // The user namespace is joined by the init, last (it needs the
            // node's root for everything before).
            LinuxNamespaceType::Mount | LinuxNamespaceType::Cgroup | LinuxNamespaceType::User => {
                continue
            }
            other => {
                return Err(ShimError::Config(format!(
                    "namespace {other:?} is not supported"
                )))
            }
        };
        match ns.path() {
            Some(p) => {
                let f = File::open(p).map_err(io_err(format!("open namespace {}", p.display())))?;
                setns(f.as_fd(), flag).map_err(sys_err(format!("setns {}", p.display())))?;
            }
            None => new |= flag,
        }
    }
    if !new.is_empty() {
        unshare(new).map_err(sys_err("unshare"))?;
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ShimError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe"))
}

/// Runs the shim; its exit status is podagent's.
pub fn run(args: &Args) -> i32 {
    match supervise(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("podagent shim: {e}");
            let exited = Exited {
                exit_code: 128,
                signal: None,
                started_at: None,
                finished_at: logs::rfc3339_nano(SystemTime::now()),
                reason: "StartError".into(),
                message: e.to_string(),
                warnings: Vec::new(),
            };
            let _ = write_json(&args.state, "exit.json", &exited);
            1
        }
    }
}

fn supervise(args: &Args) -> Result<i32, ShimError> {
    std::fs::create_dir_all(&args.state)
        .map_err(io_err(format!("create {}", args.state.display())))?;
    let spec = read_config(&args.bundle)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| ShimError::Config("no root".into()))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        args.bundle.join(root.path())
    };
    let mut log = logs::CriLog::open(&args.log, args.log_max_size, args.log_max_files)
        .map_err(io_err(format!("open {}", args.log.display())))?;
    let _ = nix::unistd::setsid();
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => Some(
            seccomp::program(profile, args.seccomp_cache.as_deref()).map_err(ShimError::Config)?,
        ),
        None => None,
    };
    enter_namespaces(&spec)?;

    let (report_r, report_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let null = File::open("/dev/null").map_err(io_err("open /dev/null"))?;
    // `terminal: true` (tty): the init opens a pty of the container's own
    // devpts and sends its master back over this socket, as runc's console
    // socket; the shim then logs what the master reads.
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    let console = if terminal {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let flags = SockFlag::SOCK_CLOEXEC;
        Some(
            socketpair(AddressFamily::Unix, SockType::Stream, None, flags)
                .map_err(sys_err("socketpair"))?,
        )
    } else {
        None
    };
    let stdin = if args.open_stdin && !terminal {
        Some(pipe()?)
    } else {
        None
    };
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_block().map_err(sys_err("block SIGCHLD"))?;
    let sigfd = SignalFd::new(&chld).map_err(sys_err("signalfd"))?;

    // The cgroup to clone into, with its directory for the fallback.
    let into = match &args.cgroup_into {
        Some(dir) => Some((
            dir,
            nix::fcntl::open(
                dir,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(sys_err(format!("open {}", dir.display())))?,
        )),
        None => None,
    };
    let mut cgroup_join = args.cgroup_join.clone();
    // Not dumpable before the fork, so the child is not for a moment either
    // (CVE-2019-5736): from the fork until its execve it runs the host's
    // binary, and a process that could open its /proc/PID/exe would hold
    // that binary. The flag is inherited by the fork and reset by the
    // execve of the container's own binary.
    nix::sys::prctl::set_dumpable(false).map_err(sys_err("prctl(PR_SET_DUMPABLE)"))?;
    let cloned = match &into {
        Some((dir, fd)) => sys::fork_into_cgroup(fd.as_fd())
            .map_err(sys_err(format!("clone3 into {}", dir.display())))?,
        None => None,
    };
    let cloned_into_cgroup = cloned.is_some();
    let forked = match cloned {
        Some(forked) => forked,
        None => {
            if let Some((dir, _)) = &into {
                cgroup_join.push(dir.join("cgroup.procs"));
            }
            sys::fork().map_err(sys_err("fork"))?
        }
    };
    let child = match forked {
        ForkResult::Child => {
            drop((report_r, out_r, err_r));
            let _ = nix::sys::signal::sigprocmask(
                SigmaskHow::SIG_SETMASK,
                Some(&SigSet::empty()),
                None,
            );
            let stdin_fd = match &stdin {
                Some((r, _)) => r.as_fd(),
                None => null.as_fd(),
            };
            let redirect = nix::unistd::dup2_stdin(stdin_fd)
                .and_then(|_| nix::unistd::dup2_stdout(&out_w))
                .and_then(|_| nix::unistd::dup2_stderr(&err_w));
            let mut report = File::from(report_w);
            if let Err(e) = redirect {
                let _ = report.write_all(format!("E:stdio: {e}\n").as_bytes());
                sys::exit_now(127);
            }
            let mut cx = init::Context {
                spec: &spec,
                seccomp: seccomp.as_deref(),
                rootfs,
                cgroup_join: &cgroup_join,
                console: console.as_ref().map(|(_, child)| child),
                report: &mut report,
            };
            let e = init::run(&mut cx);
            let _ = report.write_all(format!("E:{e}\n").as_bytes());
            sys::exit_now(127);
        }
        ForkResult::Parent { child } => child,
    };
    drop((report_w, out_w, err_w, null, into));
    let console = console.map(|(parent, _child)| parent);
    // The write end of an open stdin lives as long as the shim.
    let stdin_writer = stdin.map(|(_r, w)| w);

    // EOF on the report pipe: the process was exec'd (or the init died).
    let mut report = String::new();
    File::from(report_r)
        .read_to_string(&mut report)
        .map_err(io_err("read the init's report"))?;
    let warnings: Vec<String> = report
        .lines()
        .filter_map(|l| l.strip_prefix("W:"))
        .map(str::to_string)
        .collect();
    if let Some(err) = report.lines().find_map(|l| l.strip_prefix("E:")) {
        let _ = waitpid(child, None);
        let exited = Exited {
            exit_code: 128,
            signal: None,
            started_at: None,
            finished_at: logs::rfc3339_nano(SystemTime::now()),
            reason: "StartError".into(),
            message: err.to_string(),
            warnings,
        };
        write_json(&args.state, "exit.json", &exited)?;
        tell_spawner("failed");
        return Ok(1);
    }
    let started_at = logs::rfc3339_nano(SystemTime::now());
    let started = Started {
        pid: child.as_raw(),
        start_ticks: start_ticks(child.as_raw()).unwrap_or(0),
        started_at: started_at.clone(),
        warnings: warnings.clone(),
        shim_pid: nix::unistd::getpid().as_raw(),
        shim_start_ticks: start_ticks(nix::unistd::getpid().as_raw()).unwrap_or(0),
        cloned_into_cgroup,
    };
    write_json(&args.state, "state.json", &started)?;
    tell_spawner("started");
    // The shim now only waits and copies output for as long as the container
    // lives: what setup allocated goes back to the kernel.
    drop((spec, seccomp, started, report));
    sys::trim_heap();

    // With a terminal, what the container writes comes through the pty's
    // master (stdout and stderr together, as the kubelet logs a tty).
    let first = match &console {
        Some(sock) => match sys::recv_fd(sock.as_fd()) {
            Ok(master) => {
                drop(out_r);
                master
            }
            Err(e) => {
                eprintln!("podagent-shim: the terminal's master: {e}");
                out_r
            }
        },
        None => out_r,
    };
    drop(console);
    // `podctl attach` writes to the container's stdin: its pipe, or the
    // pty's master.
    let input = match (terminal, stdin_writer) {
        (true, _) => nix::unistd::dup(&first).ok(),
        (false, w) => w,
    };
    let mut attach = input.and_then(|input| match attach::Attach::listen(&args.state, input) {
        Ok(a) => Some(a),
        Err(e) => {
            eprintln!("podagent-shim: the attach socket: {e}");
            None
        }
    });
    let status = pump(child, &sigfd, [first, err_r], &mut log, attach.as_mut())?;
    let _ = log.flush();
    let (exit_code, signal) = match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let exited = Exited {
        exit_code,
        signal,
        started_at: Some(started_at),
        finished_at: logs::rfc3339_nano(SystemTime::now()),
        reason: if exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        },
        message: String::new(),
        warnings,
    };
    write_json(&args.state, "exit.json", &exited)?;
    Ok(0)
}

/// One line on stdout for whoever spawned the shim ("started" once the
/// process is exec'd, "failed" after a start error); stdout then points at
/// /dev/null, so a spawner that went away never breaks the shim.
fn tell_spawner(word: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{word}");
    let _ = out.flush();
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

/// Copies the container's output into the log until its init exits and the
/// pipes are drained; returns how the init ended.
fn pump(
    child: Pid,
    sigfd: &SignalFd,
    pipes: [OwnedFd; 2],
    log: &mut logs::CriLog,
    mut attach: Option<&mut attach::Attach>,
) -> Result<WaitStatus, ShimError> {
    let mut open = [true, true];
    let mut status = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if status.is_some() && !open.iter().any(|o| *o) {
            break;
        }
        let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        for (i, p) in pipes.iter().enumerate() {
            if open[i] {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
        }
        let attach_from = fds.len();
        let attach_fds = attach.as_ref().map(|a| a.fds()).unwrap_or_default();
        for fd in &attach_fds {
            fds.push(PollFd::new(*fd, PollFlags::POLLIN));
        }
        // Once the init is gone, output still in flight is read for at most
        // a second: a daemonised grandchild may hold the pipe open.
        let timeout = if status.is_some() {
            PollTimeout::from(1000u16)
        } else {
            PollTimeout::NONE
        };
        let n = match poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(sys_err("poll")(e)),
        };
        if n == 0 {
            break;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        drop(attach_fds);
        if let Some(a) = attach.as_mut() {
            a.serve(&ready[attach_from..]);
        }
        if ready[0] {
            let _ = sigfd.read_signal();
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::Error::EINTR) => {}
                Ok(s) => status = Some(s),
                Err(e) => return Err(sys_err("waitpid")(e)),
            }
        }
        let mut slot = 1;
        for (i, p) in pipes.iter().enumerate() {
            if !open[i] {
                continue;
            }
            if ready[slot] {
                match nix::unistd::read(p, &mut buf) {
                    Ok(0) => open[i] = false,
                    Ok(k) => {
                        if let Some(a) = attach.as_mut() {
                            a.output(&buf[..k]);
                        }
                        log.feed(i, &buf[..k]).map_err(io_err("write the log"))?
                    }
                    Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
                    Err(_) => open[i] = false,
                }
            }
            slot += 1;
        }
    }
    match status {
        Some(s) => Ok(s),
        None => waitpid(child, None).map_err(sys_err("waitpid")),
    }
}
