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

/// Makes the terminal on `fd` the calling process's controlling terminal
/// (`TIOCSCTTY`); the caller has just called `setsid`.
pub fn set_controlling_terminal(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal) and
    // touches no memory of ours.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSCTTY, 0) };
    nix::errno::Errno::result(r).map(drop)
}
