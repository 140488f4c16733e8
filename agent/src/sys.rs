//! The only `unsafe` of the agent: the calls `nix` cannot make safe.

/// Forks the calling process.
///
/// Only the shim calls this, and only while it is single-threaded (DESIGN
/// rule 3): the daemon never forks, it spawns `podagent shim`.
pub fn fork() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: the shim has no other thread, so no lock or allocator state can
    // be held by a thread that does not exist in the child; the child only
    // makes syscalls and then execs or calls `exit_now`.
    unsafe { nix::unistd::fork() }
}

/// Forks the calling process straight into the cgroup v2 directory
/// `cgroup`: `clone3` with `CLONE_INTO_CGROUP` (Linux 5.7), so the child is
/// never migrated (no write to `cgroup.procs`, no threadgroup lock). `None`
/// when the kernel has no such clone (ENOSYS before 5.3, E2BIG before 5.7,
/// EINVAL) or a filter refuses it (EPERM): the caller forks and joins by
/// writing instead (a real permission problem then fails there, named).
///
/// The same rules as [`fork`]: only the single-threaded shim calls it.
pub fn fork_into_cgroup(
    cgroup: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<Option<nix::unistd::ForkResult>> {
    use std::os::fd::AsRawFd;
    /// The kernel's `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: nix::libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: as for `fork`: the shim has no other thread, and without
    // CLONE_VM or a stack the child runs on its own copy of the parent's
    // memory, exactly as after fork(2). glibc's fork wrapper is bypassed,
    // which skips its atfork handlers (none are registered), its lock resets
    // (no lock can be held with one thread) and its update of the thread
    // block's tid (read only by pthread calls, which the child does not make
    // before exec). glibc since 2.25 caches no pid, so getpid() in the child
    // is the child's. `args` lives across the call and its size is the one
    // passed; the kernel reads no further.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        -1 => match nix::errno::Errno::last() {
            // EPERM too: a seccomp profile around the agent that answers
            // syscalls it does not know with EPERM (older docker's).
            nix::errno::Errno::ENOSYS
            | nix::errno::Errno::E2BIG
            | nix::errno::Errno::EINVAL
            | nix::errno::Errno::EPERM => Ok(None),
            e => Err(e),
        },
        0 => Ok(Some(nix::unistd::ForkResult::Child)),
        pid => Ok(Some(nix::unistd::ForkResult::Parent {
            child: nix::unistd::Pid::from_raw(pid as i32),
        })),
    }
}

/// Ends the calling process at once, without running exit handlers: what a
/// forked child does when it cannot exec.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and touches no Rust state; the
    // child's buffers belong to the parent's copy and must not be flushed.
    unsafe { nix::libc::_exit(code) }
}

/// Sets close-on-exec on every descriptor from `first` up (`close_range` with
/// `CLOSE_RANGE_CLOEXEC`, Linux 5.11).
pub fn cloexec_from(first: u32) -> nix::Result<()> {
    const CLOSE_RANGE_CLOEXEC: nix::libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags of this process; it
    // reads and writes no memory of ours.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            first,
            u32::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    nix::errno::Errno::result(r).map(drop)
}

/// Installs a seccomp filter (classic BPF, 8 bytes an instruction, as
/// libseccomp exports it) on the calling thread.
pub fn load_seccomp_filter(program: &[u8]) -> nix::Result<()> {
    use nix::libc;
    if program.is_empty() || program.len() % 8 != 0 || program.len() / 8 > usize::from(u16::MAX) {
        return Err(nix::errno::Errno::EINVAL);
    }
    let mut filter: Vec<libc::sock_filter> = program
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, a live, properly aligned array of
    // `len` instructions; the kernel copies it before prctl returns.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    nix::errno::Errno::result(r).map(drop)
}

/// A pidfd for `pid` (`pidfd_open`, Linux 5.3): readable once the process
/// has exited, and never confused with a later process given the same pid.
pub fn pidfd_open(pid: i32) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and reads no memory of ours.
    let r = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    let fd = nix::errno::Errno::result(r)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Returns the heap's free memory to the kernel (glibc's `malloc_trim`):
/// a long-lived shim keeps only what it still uses.
pub fn trim_heap() {
    // SAFETY: malloc_trim takes a size and only walks the allocator's own
    // free lists (under its lock); it touches no memory the program owns.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// The window size of the terminal on `fd` (`TIOCGWINSZ`), if it is one.
pub fn window_size(fd: std::os::fd::BorrowedFd<'_>) -> Option<nix::pty::Winsize> {
    use std::os::fd::AsRawFd;
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer,
    // which points at `ws`, a live value of exactly that type.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some(ws)
}

/// Sends `fd` over the Unix socket `sock` (`SCM_RIGHTS`, one byte of data).
pub fn send_fd(
    sock: std::os::fd::BorrowedFd<'_>,
    fd: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"t")];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map(drop)
}

/// Receives one descriptor sent by [`send_fd`] on `sock`.
pub fn recv_fd(sock: std::os::fd::BorrowedFd<'_>) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel has just installed this descriptor in
                // our table for this message (SCM_RIGHTS); nothing else
                // owns it. Any further ones are not expected and are left.
                return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(nix::errno::Errno::EBADMSG)
}

/// Makes the terminal on `fd` the calling process's controlling terminal
/// (`TIOCSCTTY`); the caller has just called `setsid`.
pub fn set_controlling_terminal(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal) and
    // touches no memory of ours.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSCTTY, 0) };
    nix::errno::Errno::result(r).map(drop)
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const BPF_PROG_LOAD: nix::libc::c_long = 5;
const BPF_PROG_ATTACH: nix::libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Loads a `BPF_PROG_TYPE_CGROUP_DEVICE` program (8 bytes an instruction).
/// A program the verifier refuses comes back with the verifier's log.
pub fn bpf_load_cgroup_device(code: &[u8]) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::FromRawFd;
    if code.is_empty() || code.len() % 8 != 0 {
        return Err("a BPF program is a whole number of 8-byte instructions".into());
    }
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    for log_level in [0u32, 1] {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: (code.len() / 8) as u32,
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..ProgLoadAttr::default()
        };
        if log_level > 0 {
            attr.log_level = log_level;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
        }
        // SAFETY: `attr` is a live, zero-initialised `bpf_attr` prefix of
        // the size passed; the pointers in it (`code`, `license`, `log`)
        // point at live buffers of the lengths given, which outlive the call.
        let r = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_bpf,
                BPF_PROG_LOAD,
                &mut attr as *mut ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>(),
            )
        };
        match nix::errno::Errno::result(r) {
            // SAFETY: the kernel returned a new descriptor that nothing else
            // owns.
            Ok(fd) => return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }),
            Err(e) if log_level > 0 => {
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                return Err(format!(
                    "load the device filter: {e}: {}",
                    String::from_utf8_lossy(&log[..end]).trim()
                ));
            }
            Err(_) => continue,
        }
    }
    Err("load the device filter".into())
}

/// Attaches a device program to a cgroup v2 directory (`BPF_F_ALLOW_MULTI`).
pub fn bpf_attach_cgroup_device(
    cgroup: std::os::fd::BorrowedFd<'_>,
    prog: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is a live `bpf_attr` prefix of the size passed; it holds
    // only integers.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    nix::errno::Errno::result(r).map(drop)
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: u32 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;

/// A detached copy of the mount tree at `path` (`open_tree` with
/// `OPEN_TREE_CLONE`), its ids shown through the mapping of the user
/// namespace `userns` (`mount_setattr` with `MOUNT_ATTR_IDMAP`): an idmapped
/// mount, not yet attached anywhere.
pub fn idmapped_tree(
    path: &std::path::Path,
    userns: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| nix::Error::EINVAL)?;
    let flags = OPEN_TREE_CLONE | nix::libc::O_CLOEXEC as u32;
    // SAFETY: open_tree reads the NUL-terminated path, which outlives the
    // call, and returns a new descriptor or -1; no memory of ours is
    // written.
    let fd = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_open_tree,
            nix::libc::AT_FDCWD,
            c.as_ptr(),
            flags,
        )
    };
    let fd = nix::errno::Errno::result(fd)? as i32;
    // SAFETY: the kernel has just returned this descriptor; nothing else
    // owns it.
    let tree = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr reads `attr` (its size passed with it) and the
    // empty path, both alive for the call, and writes nothing of ours.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            nix::libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    nix::errno::Errno::result(r)?;
    Ok(tree)
}

/// Attaches a detached mount tree (from [`idmapped_tree`]) at `target`, a
/// directory given by a descriptor (`move_mount` with an empty path).
pub fn attach_tree(
    tree: std::os::fd::BorrowedFd<'_>,
    target: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: move_mount reads two empty NUL-terminated paths that outlive
    // the call; it writes no memory of ours.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    nix::errno::Errno::result(r).map(drop)
}
