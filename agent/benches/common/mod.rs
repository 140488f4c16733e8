//! What the benchmarks share: waiting without `std::thread::sleep`, moving
//! into a network namespace of their own, and the line naming the machine.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

/// Sleeps without `std::thread::sleep` (the workspace bans it in code):
/// a poll with no descriptors.
pub fn nap(d: Duration) {
    let ms = u16::try_from(d.as_millis()).unwrap_or(u16::MAX);
    let _ = nix::poll::poll(&mut [], nix::poll::PollTimeout::from(ms));
}

/// Moves the whole process (still single-threaded, so every child too)
/// into a network namespace of its own with loopback up: nothing the
/// benchmark makes touches the host's network. `false` without root.
pub fn private_network() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the benchmark needs root");
        return false;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    true
}

/// `N CPUs, kernel X`, for the first line of a report.
pub fn machine() -> String {
    format!(
        "{} CPUs, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    )
}
