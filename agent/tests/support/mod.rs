//! Helpers shared by the agent's privileged integration tests.
#![allow(dead_code)]

pub mod fixture;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// True when the test can run: root, and busybox at /bin/busybox. Outside
/// CI a missing prerequisite skips with a message; with CI=true it fails.
pub fn require() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("needs root")
    } else if !Path::new("/bin/busybox").exists() {
        Some("needs /bin/busybox (apt-get install busybox-static)")
    } else {
        None
    };
    match why {
        None => true,
        Some(w) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI=true and {w}"),
        Some(w) => {
            eprintln!("skipping: {w}");
            false
        }
    }
}

/// A rootfs of busybox and a symlink per applet.
pub fn busybox_rootfs(root: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "work"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
}

/// Waits for `f` to hold, checking every 20 ms, at most `limit`: a test
/// waiting on wall time is the one place a sleep is right.
#[allow(clippy::disallowed_methods)]
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

/// Whether this process holds CAP_SYS_RESOURCE (root on some hosts does not:
/// oom_score_adj cannot go below 0 there).
pub fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << 24) != 0
}

/// Runs `podctl` with `args`: its exit code, stdout and stderr.
pub fn podctl(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_podctl"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A tool of `target/pyclient` (the venv scripts/setup makes: the
/// official Python client, kubectl), or none (a failure with CI=true).
pub fn pyclient_tool(name: &str) -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/pyclient/bin")
        .join(name);
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing: run scripts/setup",
        p.display()
    );
    eprintln!("skipped: no {} (scripts/setup makes it)", p.display());
    None
}
