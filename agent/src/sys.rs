//! The only `unsafe` of the agent: the two calls `nix` cannot make safe.

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
