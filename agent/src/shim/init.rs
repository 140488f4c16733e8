//! The container's init, between fork and exec: one named step per function,
//! in order. It runs in the child of the shim, already in the pod's network,
//! IPC and UTS namespaces and in a new (or the pod's) PID namespace. A step
//! that fails ends the child with its reason written to the error pipe; a
//! value the kernel refused but the container can live with (oom_score_adj
//! without CAP_SYS_RESOURCE) is sent as a warning.
//!
//! Why one file of ~610 lines: the steps read top to bottom in the order they
//! run (STYLE 12); splitting them would hide that order.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{makedev, mknodat, Mode, SFlag};
use nix::unistd::{chdir, pivot_root, Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::mounts;

/// Why the init could not exec, by step.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct InitError {
    pub step: &'static str,
    pub detail: String,
}

fn fail(step: &'static str) -> impl Fn(String) -> InitError {
    move |detail| InitError { step, detail }
}

fn errno(step: &'static str, what: String) -> impl Fn(nix::Error) -> InitError {
    move |e| InitError {
        step,
        detail: format!("{what}: {e}"),
    }
}

/// What the child needs besides the spec.
pub struct Context<'a> {
    pub spec: &'a Spec,
    /// The compiled seccomp program, if the spec has a profile.
    pub seccomp: Option<&'a [u8]>,
    pub rootfs: PathBuf,
    pub cgroup_join: &'a [PathBuf],
    /// `terminal: true`: the socket the pty's master is sent back on.
    pub console: Option<&'a OwnedFd>,
    /// Where warnings and the final error go.
    pub report: &'a mut File,
}

impl Context<'_> {
    fn warn(&mut self, msg: String) {
        let _ = self.report.write_all(format!("W:{msg}\n").as_bytes());
    }
}

/// Runs every step and execs the container's process; returns only on error.
pub fn run(cx: &mut Context<'_>) -> InitError {
    match steps(cx) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn steps(cx: &mut Context<'_>) -> Result<Never, InitError> {
    make_undumpable()?;
    let userns = user_namespace(cx.spec)?;
    enter_cgroup(cx.cgroup_join)?;
    enter_cgroup_namespace(cx.spec)?;
    let old_umask = nix::sys::stat::umask(Mode::empty());
    isolate_mounts()?;
    let root = mount_rootfs(&cx.rootfs)?;
    mount_all(cx.spec, &root, userns.as_ref())?;
    create_devices(&root)?;
    create_cwd(cx.spec, &root)?;
    let null = host_dev_null()?;
    mask_paths(cx.spec, &root, &null)?;
    pivot(&cx.rootfs)?;
    // Before /proc/sys is made read-only, as runc orders them.
    apply_sysctls(cx.spec)?;
    readonly_paths(cx.spec)?;
    set_hostname(cx.spec)?;
    apply_rlimits(cx)?;
    apply_oom_score_adj(cx)?;
    if cx.spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        remount_readonly(Path::new("/"))?;
    }
    nix::sys::stat::umask(old_umask);
    let process = cx
        .spec
        .process()
        .as_ref()
        .ok_or_else(|| fail("process")("the spec has no process".into()))?;
    enter_cwd(process.cwd())?;
    if let Some(sock) = cx.console {
        open_terminal(sock)?;
    }
    if let Some(ns) = &userns {
        join_user_namespace(ns)?;
    }
    let nnp = process.no_new_privileges() == Some(true);
    // Without no_new_privs a filter needs CAP_SYS_ADMIN: install it while the
    // init still has it (the profile allows what follows), as runc does.
    if !nnp {
        apply_seccomp(cx.seccomp)?;
    }
    set_user_and_capabilities(process)?;
    let (path, argv, envp) = resolve_exec(process)?;
    close_inherited_fds()?;
    if nnp {
        nix::sys::prctl::set_no_new_privs().map_err(errno("no_new_privs", "prctl".into()))?;
        apply_seccomp(cx.seccomp)?;
    }
    let e = nix::unistd::execve(&path, &argv, &envp).unwrap_err();
    Err(exec_failed(&path, e))
}

/// The container's terminal: a pty of its own devpts (opened after
/// `pivot_root`, so `/dev/ptmx` is the container's), made the controlling
/// terminal of a new session and stdin, stdout and stderr; its master goes
/// to the shim, which logs what it reads and holds it open.
fn open_terminal(sock: &OwnedFd) -> Result<(), InitError> {
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None)
        .map_err(errno("terminal", "open a pty in the container".into()))?;
    nix::unistd::setsid().map_err(errno("terminal", "setsid".into()))?;
    crate::sys::set_controlling_terminal(pty.slave.as_fd())
        .map_err(errno("terminal", "TIOCSCTTY".into()))?;
    for dup in [
        nix::unistd::dup2_stdin,
        nix::unistd::dup2_stdout,
        nix::unistd::dup2_stderr,
    ] {
        dup(&pty.slave).map_err(errno("terminal", "dup2".into()))?;
    }
    crate::sys::send_fd(sock.as_fd(), pty.master.as_fd())
        .map_err(errno("terminal", "send the pty's master".into()))?;
    Ok(())
}

/// Why execve failed, in the words a user expects.
pub(super) fn exec_failed(path: &std::ffi::CStr, e: nix::Error) -> InitError {
    let shown = path.to_string_lossy();
    match e {
        nix::Error::ENOENT => fail("exec")(format!("executable file not found: {shown}")),
        nix::Error::EACCES => fail("exec")(format!("permission denied: {shown}")),
        e => fail("exec")(format!("{shown}: {e}")),
    }
}

/// Non-dumpable until exec: nothing in the container can ptrace this process
/// or open its /proc entries while it holds host resources (CVE-2019-5736).
pub(super) fn make_undumpable() -> Result<(), InitError> {
    nix::sys::prctl::set_dumpable(false).map_err(errno("undumpable", "prctl".into()))
}

fn enter_cgroup(files: &[PathBuf]) -> Result<(), InitError> {
    // Forked from the shim, this process has one thread.
    for f in files {
        // "0" is the writer, whatever its PID namespace.
        std::fs::write(f, "0")
            .map_err(|e| fail("enter_cgroup")(format!("{}: {e}", f.display())))?;
    }
    Ok(())
}

/// Whether the spec asks for a new cgroup namespace.
fn private_cgroup_namespace(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Cgroup && n.path().is_none())
        })
}

/// Once in its cgroup, a private cgroup namespace makes that cgroup the
/// container's `/` (`/proc/self/cgroup` reads `0::/`).
fn enter_cgroup_namespace(spec: &Spec) -> Result<(), InitError> {
    if private_cgroup_namespace(spec) {
        unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(errno("cgroup_namespace", "unshare".into()))?;
    }
    Ok(())
}

fn isolate_mounts() -> Result<(), InitError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(errno("mount_namespace", "unshare".into()))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(errno("mount_namespace", "make / private".into()))
}

/// Makes the rootfs a mount point and refuses an image whose /proc or /sys is
/// a symlink (it would redirect the kernel filesystems' mounts).
fn mount_rootfs(rootfs: &Path) -> Result<OwnedFd, InitError> {
    for kernel_dir in ["proc", "sys"] {
        let p = rootfs.join(kernel_dir);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(fail("rootfs")(format!(
                "/{kernel_dir} in the image is a symlink: refused"
            )));
        }
    }
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(errno("rootfs", format!("bind {}", rootfs.display())))?;
    open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("rootfs", format!("open {}", rootfs.display())))
}

/// The pod's user namespace the spec names (`hostUsers: false`), opened
/// while the init is still the node's root.
fn user_namespace(spec: &Spec) -> Result<Option<OwnedFd>, InitError> {
    let path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|nss| {
            nss.iter()
                .find(|n| n.typ() == LinuxNamespaceType::User)
                .and_then(|n| n.path().clone())
        });
    let Some(path) = path else {
        return Ok(None);
    };
    let f = std::fs::File::open(&path)
        .map_err(|e| fail("user_namespace")(format!("open {}: {e}", path.display())))?;
    Ok(Some(f.into()))
}

/// Enters the pod's user namespace, last of all the setup (mounts,
/// hostname, sysctls, rlimits, cgroups are the node root's to make): the
/// init is then its root, with its capabilities only there; its mount,
/// PID, network, IPC and UTS namespaces stay the node's, so even
/// CAP_SYS_ADMIN in it mounts nothing.
pub(super) fn join_user_namespace(ns: &OwnedFd) -> Result<(), InitError> {
    nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWUSER)
        .map_err(errno("user_namespace", "setns".into()))?;
    let root = (Uid::from_raw(0), Gid::from_raw(0));
    nix::unistd::setgroups(&[]).map_err(errno("user_namespace", "setgroups".into()))?;
    nix::unistd::setresgid(root.1, root.1, root.1)
        .map_err(errno("user_namespace", "setresgid".into()))?;
    nix::unistd::setresuid(root.0, root.0, root.0)
        .map_err(errno("user_namespace", "setresuid".into()))?;
    Ok(())
}

fn mount_all(spec: &Spec, root: &OwnedFd, userns: Option<&OwnedFd>) -> Result<(), InitError> {
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination();
        let opts = mounts::parse(m.options().as_deref().unwrap_or(&[]));
        let typ = m.typ().as_deref().unwrap_or("bind");
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        if typ == "cgroup" || typ == "cgroup2" {
            mount_cgroups(spec, root, dest, &opts)?;
            continue;
        }
        let bind = opts.bind || typ == "bind";
        // A subPath is opened beneath its volume first and bound from that
        // handle.
        let held = match &opts.beneath {
            Some(volume) if bind => {
                Some(mounts::source_beneath(volume, &source).map_err(fail("mount"))?)
            }
            _ => None,
        };
        let source = match &held {
            Some(fd) => mounts::fd_path(fd),
            None => source,
        };
        let file = bind && std::fs::metadata(&source).is_ok_and(|md| !md.is_dir());
        let target = mounts::target(root, dest, file).map_err(fail("mount"))?;
        let at = mounts::fd_path(&target);
        let shown = dest.display().to_string();
        if let (true, true, Some(ns)) = (bind, opts.idmap, userns) {
            let idmapped = |e: nix::Error| {
                fail("mount")(format!(
                    "idmapped bind of {} on {shown}: {e} (hostUsers: false needs a filesystem that supports idmapped mounts; tmpfs does from Linux 6.3)",
                    source.display()
                ))
            };
            let tree = crate::sys::idmapped_tree(&source, ns.as_fd()).map_err(idmapped)?;
            crate::sys::attach_tree(tree.as_fd(), target.as_fd()).map_err(idmapped)?;
        } else if bind {
            mount(
                Some(&source),
                &at,
                None::<&str>,
                MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC),
                None::<&str>,
            )
            .map_err(errno(
                "mount",
                format!("bind {} on {shown}", source.display()),
            ))?;
        } else {
            let mut flags = opts.flags;
            if opts.readonly {
                flags |= MsFlags::MS_RDONLY;
            }
            let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
            mount(Some(&source), &at, Some(typ), flags, data)
                .map_err(errno("mount", format!("{typ} on {shown}")))?;
        }
        let remount = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | (opts.flags - MsFlags::MS_REC)
            | if opts.readonly {
                MsFlags::MS_RDONLY
            } else {
                MsFlags::empty()
            };
        let needs_remount = bind && remount != MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
        if needs_remount || opts.propagation.is_some() {
            // The first handle names the directory under the new mount: open
            // the target again to reach the mount itself.
            let mounted = mounts::existing(root, dest)
                .map_err(fail("mount"))?
                .ok_or_else(|| fail("mount")(format!("{shown} vanished")))?;
            let at = mounts::fd_path(&mounted);
            if needs_remount {
                mount(None::<&str>, &at, None::<&str>, remount, None::<&str>)
                    .map_err(errno("mount", format!("remount {shown}")))?;
            }
            if let Some(p) = opts.propagation {
                mount(None::<&str>, &at, None::<&str>, p, None::<&str>)
                    .map_err(errno("mount", format!("propagation of {shown}")))?;
            }
        }
    }
    Ok(())
}

/// `/sys/fs/cgroup` as the container sees it, so that it can read its own
/// limits (the JVM, Go's automaxprocs, .NET and Node size themselves from
/// them). With a private cgroup namespace (v2) the hierarchy itself, whose
/// root is then the container's cgroup. Without one (v1), as runc does: a
/// tmpfs holding a bind of the container's own directory of each hierarchy
/// (read from `/proc/self/cgroup`, so whatever cgroup it is in), under the
/// hierarchy's name (`cpu,cpuacct`, with a link per controller), so
/// `/sys/fs/cgroup/memory` is its own memory cgroup (`/proc/self/cgroup`
/// still shows the host's path, whose root mountinfo gives).
fn mount_cgroups(
    spec: &Spec,
    root: &OwnedFd,
    dest: &Path,
    opts: &mounts::Options,
) -> Result<(), InitError> {
    let shown = dest.display().to_string();
    let flags = opts.flags - MsFlags::MS_REC;
    let ro = if opts.readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let target = mounts::target(root, dest, false).map_err(fail("cgroup"))?;
    if private_cgroup_namespace(spec) {
        return mount(
            Some("cgroup2"),
            &mounts::fd_path(&target),
            Some("cgroup2"),
            flags | ro,
            None::<&str>,
        )
        .map_err(errno("cgroup", format!("cgroup2 on {shown}")));
    }
    let reopen = |dest: &Path| {
        mounts::existing(root, dest)
            .map_err(fail("cgroup"))?
            .ok_or_else(|| fail("cgroup")(format!("{} vanished", dest.display())))
    };
    let bind_readonly = |own: &Path, dest: &Path| {
        let at = mounts::target(root, dest, false).map_err(fail("cgroup"))?;
        let shown = dest.display().to_string();
        mount(
            Some(own),
            &mounts::fd_path(&at),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(errno(
            "cgroup",
            format!("bind {} on {shown}", own.display()),
        ))?;
        mount(
            None::<&str>,
            &mounts::fd_path(&reopen(dest)?),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | ro,
            None::<&str>,
        )
        .map_err(errno("cgroup", format!("remount {shown}")))
    };
    // The host's mounts are still in view (the root is not pivoted yet).
    let layout = crate::cgroups::detect(Path::new("/proc/self/mountinfo"))
        .map_err(|e| fail("cgroup")(e.to_string()))?;
    let mine = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| fail("cgroup")(format!("read /proc/self/cgroup: {e}")))?;
    let dirs = layout.dirs_of(&mine);
    if let crate::cgroups::Layout::V2 { .. } = layout {
        // v2 in the host's cgroup namespace: its own directory alone.
        return match dirs.first() {
            Some((_, own)) => bind_readonly(own, dest),
            None => Ok(()),
        };
    }
    mount(
        Some("tmpfs"),
        &mounts::fd_path(&target),
        Some("tmpfs"),
        flags,
        Some("mode=755,size=64k"),
    )
    .map_err(errno("cgroup", format!("tmpfs on {shown}")))?;
    let tmpfs = reopen(dest)?;
    for (hierarchy, own) in dirs {
        let Some(name) = hierarchy.file_name() else {
            continue;
        };
        bind_readonly(&own, &dest.join(name))?;
        let name = name.to_string_lossy();
        for controller in name.split(',').filter(|c| *c != name) {
            match nix::unistd::symlinkat(name.as_ref(), &tmpfs, controller) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => return Err(errno("cgroup", format!("link {controller}"))(e)),
            }
        }
    }
    if opts.readonly {
        mount(
            None::<&str>,
            &mounts::fd_path(&tmpfs),
            None::<&str>,
            MsFlags::MS_REMOUNT | flags | MsFlags::MS_RDONLY,
            Some("mode=755,size=64k"),
        )
        .map_err(errno("cgroup", format!("remount {shown} read-only")))?;
    }
    Ok(())
}

/// The default devices on the container's /dev tmpfs, and its usual links.
fn create_devices(root: &OwnedFd) -> Result<(), InitError> {
    let dev = mounts::target(root, Path::new("/dev"), false).map_err(fail("devices"))?;
    let dev = nix::fcntl::openat(
        dev.as_fd(),
        ".",
        OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("devices", "open /dev".into()))?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        match mknodat(
            dev.as_fd(),
            name,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        ) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(fail("devices")(format!("mknod /dev/{name}: {e}"))),
        }
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        match nix::unistd::symlinkat(target, dev.as_fd(), name) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(fail("devices")(format!("symlink /dev/{name}: {e}"))),
        }
    }
    Ok(())
}

/// The working directory, created inside the root when the image lacks it
/// (as runc does).
fn create_cwd(spec: &Spec, root: &OwnedFd) -> Result<(), InitError> {
    if let Some(p) = spec.process() {
        mounts::target(root, p.cwd(), false).map_err(fail("cwd"))?;
    }
    Ok(())
}

/// The host's /dev/null, opened before pivot and checked to be the real
/// character device 1:3: masks are bind-mounted from it, never from a path the
/// image controls (the CVE-2025-31133 class).
fn host_dev_null() -> Result<OwnedFd, InitError> {
    let fd = open("/dev/null", OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(errno("mask", "open /dev/null".into()))?;
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(errno("mask", "stat /dev/null".into()))?;
    let is_chr = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
    if !is_chr || st.st_rdev != makedev(1, 3) {
        return Err(fail("mask")(
            "the host's /dev/null is not the character device 1:3".into(),
        ));
    }
    Ok(fd)
}

fn pivot(rootfs: &Path) -> Result<(), InitError> {
    chdir(rootfs).map_err(errno("pivot_root", format!("chdir {}", rootfs.display())))?;
    pivot_root(".", ".").map_err(errno("pivot_root", "pivot_root".into()))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(errno("pivot_root", "detach the old root".into()))?;
    chdir("/").map_err(errno("pivot_root", "chdir /".into()))
}

/// Masks before pivot, while the host's /dev/null is still in this mount
/// namespace: files get it bind-mounted over them, directories an empty
/// read-only tmpfs. Targets are resolved inside the root.
fn mask_paths(spec: &Spec, root: &OwnedFd, null: &OwnedFd) -> Result<(), InitError> {
    let null_path = mounts::fd_path(null);
    for p in spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default()
    {
        let Some(fd) = mounts::existing(root, Path::new(&p)).map_err(fail("mask"))? else {
            continue;
        };
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(errno("mask", format!("stat {p}")))?;
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        let at = mounts::fd_path(&fd);
        let r = if is_dir {
            mount(
                Some("tmpfs"),
                &at,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some(&null_path),
                &at,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.map_err(errno("mask", format!("mask {p}")))?;
    }
    Ok(())
}

fn remount_readonly(p: &Path) -> Result<(), InitError> {
    // Keep the flags the kernel has locked (nosuid, nodev, noexec) or the
    // remount is refused.
    let st = nix::sys::statvfs::statvfs(p)
        .map_err(errno("readonly", format!("statvfs {}", p.display())))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    use nix::sys::statvfs::FsFlags;
    for (f, m) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if st.flags().contains(f) {
            flags |= m;
        }
    }
    mount(None::<&str>, p, None::<&str>, flags, None::<&str>).map_err(errno(
        "readonly",
        format!("remount {} read-only", p.display()),
    ))
}

fn readonly_paths(spec: &Spec) -> Result<(), InitError> {
    for p in spec
        .linux()
        .as_ref()
        .and_then(|l| l.readonly_paths().clone())
        .unwrap_or_default()
    {
        if std::fs::symlink_metadata(&p).is_err() {
            continue;
        }
        mount(
            Some(p.as_str()),
            p.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(errno("readonly", format!("bind {p}")))?;
        remount_readonly(Path::new(&p))?;
    }
    Ok(())
}

fn set_hostname(spec: &Spec) -> Result<(), InitError> {
    let own_uts = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Uts));
    match spec.hostname() {
        Some(h) if own_uts => nix::unistd::sethostname(h).map_err(errno("hostname", h.clone())),
        _ => Ok(()),
    }
}

fn apply_sysctls(spec: &Spec) -> Result<(), InitError> {
    for (k, v) in spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default()
    {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&path, &v).map_err(|e| fail("sysctl")(format!("{k}={v}: {e}")))?;
    }
    Ok(())
}

fn apply_rlimits(cx: &mut Context<'_>) -> Result<(), InitError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let limits = cx
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.rlimits().clone())
        .unwrap_or_default();
    for l in limits {
        let name = format!("{:?}", l.typ());
        let resource = match name.as_str() {
            "RlimitNofile" => Resource::RLIMIT_NOFILE,
            "RlimitNproc" => Resource::RLIMIT_NPROC,
            "RlimitCore" => Resource::RLIMIT_CORE,
            "RlimitMemlock" => Resource::RLIMIT_MEMLOCK,
            "RlimitStack" => Resource::RLIMIT_STACK,
            _ => return Err(fail("rlimits")(format!("{name} is not supported"))),
        };
        if setrlimit(resource, l.soft(), l.hard()).is_err() {
            // Without CAP_SYS_RESOURCE a hard limit cannot be raised: keep
            // the current hard limit and say so.
            let (_, hard) = getrlimit(resource).map_err(errno("rlimits", name.clone()))?;
            setrlimit(resource, l.soft().min(hard), hard)
                .map_err(errno("rlimits", name.clone()))?;
            cx.warn(format!(
                "{name}: wanted {}/{}, got {}/{hard}",
                l.soft(),
                l.hard(),
                l.soft().min(hard)
            ));
        }
    }
    Ok(())
}

fn apply_oom_score_adj(cx: &mut Context<'_>) -> Result<(), InitError> {
    let Some(want) = cx.spec.process().as_ref().and_then(|p| p.oom_score_adj()) else {
        return Ok(());
    };
    let _ = std::fs::write("/proc/self/oom_score_adj", want.to_string());
    let got = std::fs::read_to_string("/proc/self/oom_score_adj")
        .map_err(|e| fail("oom_score_adj")(e.to_string()))?;
    if got.trim() != want.to_string() {
        cx.warn(format!(
            "oom_score_adj: wanted {want}, got {} (lowering it needs CAP_SYS_RESOURCE)",
            got.trim()
        ));
    }
    Ok(())
}

/// Enters the working directory and checks it lies inside the new root: a
/// directory handle leaked from the host would show as unreachable (the
/// CVE-2024-21626 class).
pub(super) fn enter_cwd(cwd: &Path) -> Result<(), InitError> {
    chdir(cwd).map_err(errno("cwd", cwd.display().to_string()))?;
    let here = nix::unistd::getcwd().map_err(errno("cwd", "getcwd".into()))?;
    if !here.is_absolute() || here.starts_with("(unreachable)") {
        return Err(fail("cwd")(format!(
            "{} is outside the container's root",
            cwd.display()
        )));
    }
    Ok(())
}

pub(super) fn set_user_and_capabilities(p: &oci_spec::runtime::Process) -> Result<(), InitError> {
    use caps::{CapSet, Capability};
    let user = p.user();
    let wanted = |set: Option<&std::collections::HashSet<oci_spec::runtime::Capability>>| -> caps::CapsHashSet {
        set.into_iter()
            .flatten()
            .filter_map(|c| format!("CAP_{c}").parse::<Capability>().ok())
            .collect()
    };
    let c = p.capabilities().as_ref();
    let bounding = wanted(c.and_then(|c| c.bounding().as_ref()));
    for cap in caps::all() {
        if !bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| {
                fail("capabilities")(format!("drop {cap} from the bounding set: {e}"))
            })?;
        }
    }
    nix::sys::prctl::set_keepcaps(true).map_err(errno("user", "keepcaps".into()))?;
    let gids: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).map_err(errno("user", "setgroups".into()))?;
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(errno("user", format!("setgid {gid}")))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(errno("user", format!("setuid {uid}")))?;
    nix::sys::prctl::set_keepcaps(false).map_err(errno("user", "keepcaps".into()))?;
    // Effective first: it must stay a subset of permitted at every step.
    for (set, which) in [
        (
            CapSet::Effective,
            wanted(c.and_then(|c| c.effective().as_ref())),
        ),
        (
            CapSet::Permitted,
            wanted(c.and_then(|c| c.permitted().as_ref())),
        ),
        (
            CapSet::Inheritable,
            wanted(c.and_then(|c| c.inheritable().as_ref())),
        ),
        (
            CapSet::Ambient,
            wanted(c.and_then(|c| c.ambient().as_ref())),
        ),
    ] {
        caps::set(None, set, &which)
            .map_err(|e| fail("capabilities")(format!("set {set:?}: {e}")))?;
    }
    Ok(())
}

/// `args[0]` looked up in the container's PATH, and the C strings for execve.
pub(super) fn resolve_exec(
    p: &oci_spec::runtime::Process,
) -> Result<(CString, Vec<CString>, Vec<CString>), InitError> {
    let c =
        |s: &str| CString::new(s).map_err(|_| fail("exec")(format!("{s:?} contains a NUL byte")));
    let args = p.args().clone().unwrap_or_default();
    let env = p.env().clone().unwrap_or_default();
    let first = args
        .first()
        .ok_or_else(|| fail("exec")("no command".into()))?;
    let path = if first.contains('/') {
        first.clone()
    } else {
        let search = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(specs::oci::DEFAULT_PATH);
        search
            .split(':')
            .map(|d| format!("{d}/{first}"))
            .find(|cand| {
                std::fs::metadata(cand).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
            })
            .ok_or_else(|| fail("exec")(format!("executable file not found in $PATH: {first}")))?
    };
    let argv = args.iter().map(|a| c(a)).collect::<Result<Vec<_>, _>>()?;
    let envp = env.iter().map(|e| c(e)).collect::<Result<Vec<_>, _>>()?;
    Ok((c(&path)?, argv, envp))
}

/// Marks every descriptor above stderr close-on-exec: nothing of the shim or
/// the agent reaches the container (the CVE-2024-21626 class). The error pipe
/// is among them, so a successful exec closes it and the shim reads EOF.
pub(super) fn close_inherited_fds() -> Result<(), InitError> {
    crate::sys::cloexec_from(3).map_err(errno("close_fds", "close_range".into()))
}

pub(super) fn apply_seccomp(program: Option<&[u8]>) -> Result<(), InitError> {
    match program {
        Some(p) => {
            crate::sys::load_seccomp_filter(p).map_err(errno("seccomp", "load the filter".into()))
        }
        None => Ok(()),
    }
}
