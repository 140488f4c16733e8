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

/// podman with its storage, run root and configuration in a directory of
/// the benchmark's (nothing of the host's podman is touched). On drop its
/// pods go, its storage is reset, and the `libpod_parent` cgroups its
/// cgroupfs manager made are removed if they were not there before.
pub struct Podman {
    exe: std::path::PathBuf,
    conf: std::path::PathBuf,
    root: std::path::PathBuf,
    had_libpod: bool,
}

impl Podman {
    /// `None` (and a line saying so) where podman is not installed.
    pub fn new(dir: &std::path::Path) -> Option<Podman> {
        let Some(exe) = ["/usr/bin/podman", "/usr/local/bin/podman"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
        else {
            println!("podman not installed: no comparison");
            return None;
        };
        std::fs::create_dir_all(dir).unwrap();
        // What podman needs here (cgroup v1, root without CAP_SYS_RESOURCE):
        // cgroupfs, runc, and rlimits below the hard limits.
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n",
        )
        .unwrap();
        Some(Podman {
            exe,
            conf,
            root: dir.to_path_buf(),
            had_libpod: !cgroup_dirs("libpod_parent").is_empty(),
        })
    }

    /// `podman ARGS` with this instance's storage, quiet.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(self.root.join("root"))
            .arg("--runroot")
            .arg(self.root.join("run"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    }

    /// The command line of [`Podman::cmd`] and the environment it needs,
    /// for a runner of its own.
    pub fn argv(&self, args: &[&str]) -> (Vec<String>, Vec<(String, String)>) {
        let mut v = vec![
            self.exe.display().to_string(),
            "--root".into(),
            self.root.join("root").display().to_string(),
            "--runroot".into(),
            self.root.join("run").display().to_string(),
        ];
        v.extend(args.iter().map(|a| a.to_string()));
        let env = vec![(
            "CONTAINERS_CONF".to_string(),
            self.conf.display().to_string(),
        )];
        (v, env)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["pod", "rm", "-af", "-t", "0"]).status();
        let _ = self.cmd(&["system", "reset", "-f"]).status();
        if !self.had_libpod {
            for d in cgroup_dirs("libpod_parent") {
                remove_tree(&d);
            }
        }
    }
}

/// `name` under every mounted cgroup hierarchy.
pub fn cgroup_dirs(name: &str) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut out = vec![root.join(name)];
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        out.push(e.path().join(name));
    }
    out.into_iter().filter(|p| p.is_dir()).collect()
}

/// Removes an empty cgroup tree, innermost first.
pub fn remove_tree(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}
