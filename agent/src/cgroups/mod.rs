//! cgroups v1 and v2 behind one small trait (DESIGN rule 8).
//!
//! Layout: one root (default `podagent`) under which each pod has a cgroup
//! `pod<uid>` holding the sum of its containers' limits, and each container a
//! cgroup below it named after the container. The roots of the hierarchies are
//! parameters, so the drivers run against a temporary tree in tests.

mod detect;
pub mod devices_bpf;
mod v1;
mod v2;

use std::path::{Path, PathBuf};

pub use specs::io::IoLimits;

pub use detect::{detect, Layout};
pub use v1::V1;
pub use v2::V2;

/// Why a cgroup operation failed; each variant names the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {}: {op}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup controller {controller} is not mounted (needed for {what})")]
    MissingController {
        controller: &'static str,
        what: &'static str,
    },
    #[error("{what} needs {needs}, which {} does not have", path.display())]
    Unsupported {
        what: &'static str,
        needs: &'static str,
        path: PathBuf,
    },
    #[error("cgroup path {0:?} must be relative, without '..' or empty components")]
    BadPath(String),
    #[error("unexpected content in {}: {content:?}", path.display())]
    Parse { path: PathBuf, content: String },
    #[error("{0}")]
    Detect(String),
}

pub type Result<T> = std::result::Result<T, CgroupError>;

/// A cgroup's position under the hierarchy root(s): `podagent/pod<uid>/web`.
/// Validated once: relative, no `..`, no empty component.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CgroupPath(PathBuf);

impl CgroupPath {
    pub fn new(p: &str) -> Result<Self> {
        let ok = !p.is_empty()
            && !p.starts_with('/')
            && p.split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
        if ok {
            Ok(CgroupPath(PathBuf::from(p)))
        } else {
            Err(CgroupError::BadPath(p.to_string()))
        }
    }

    pub fn join(&self, child: &str) -> Result<Self> {
        CgroupPath::new(&format!("{}/{child}", self.0.display()))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// This path and each ancestor below the root, outermost first.
    fn prefixes(&self) -> Vec<PathBuf> {
        let mut acc = PathBuf::new();
        self.0
            .components()
            .map(|c| {
                acc.push(c);
                acc.clone()
            })
            .collect()
    }
}

/// The limits of one cgroup, as the plan resolved them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_shares: Option<u64>,
    pub cpu_weight: Option<u64>,
    pub cfs_period_us: Option<u64>,
    /// `None`: no quota.
    pub cfs_quota_us: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub memory_limit: Option<u64>,
    /// Swap allowed beyond the memory limit; `None` with a memory limit: none.
    pub swap_limit: Option<u64>,
    pub oom_kill_disable: bool,
    /// Kill the whole cgroup on OOM (v2 `memory.oom.group`).
    pub oom_group: bool,
    /// `None` or -1: unlimited.
    pub pids_limit: Option<i64>,
    /// Device access rules, in order (v1 `devices.deny`/`devices.allow`);
    /// empty: left as they are.
    pub devices: Vec<DeviceRule>,
    /// Block IO throttles and weight, exactly these (a device or weight not
    /// named is reset); `None`: left as they are.
    pub io: Option<IoLimits>,
}

/// One device cgroup rule: `allow` or deny `kind` (`a`, `c`, `b`) `major:minor`
/// (`None`: any) for `access` (`rwm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

impl DeviceRule {
    /// The rule an OCI spec's `linux.resources.devices` entry stands for.
    pub fn from_oci(d: &oci_spec::runtime::LinuxDeviceCgroup) -> Self {
        DeviceRule {
            allow: d.allow(),
            kind: match d.typ() {
                Some(
                    oci_spec::runtime::LinuxDeviceType::C | oci_spec::runtime::LinuxDeviceType::U,
                ) => 'c',
                Some(oci_spec::runtime::LinuxDeviceType::B) => 'b',
                _ => 'a',
            },
            major: d.major(),
            minor: d.minor(),
            access: d.access().clone().unwrap_or_else(|| "rwm".into()),
        }
    }

    /// The v1 line: `c 1:3 rwm`, `a *:* rwm`.
    pub fn v1_line(&self) -> String {
        let n = |v: Option<i64>| v.map_or("*".to_string(), |v| v.to_string());
        format!(
            "{} {}:{} {}",
            self.kind,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

/// What a cgroup uses now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    pub pids: u64,
    /// Processes the kernel's OOM killer killed in this cgroup.
    pub oom_kills: u64,
}

/// The figures behind cAdvisor's container metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageDetail {
    /// `inactive_file` of memory.stat: the working set is usage less it.
    pub inactive_file_bytes: u64,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub rss_bytes: u64,
    /// Page cache (v1 `total_cache`, v2 `file`).
    pub cache_bytes: u64,
    pub cfs_periods: u64,
    pub cfs_throttled_periods: u64,
    pub cfs_throttled_usec: u64,
    /// The memory limit; none when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// cfs quota and period, in microseconds; no quota when unlimited.
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: u64,
    /// cpu.shares (on v2 from cpu.weight, as cAdvisor converts it).
    pub cpu_shares: u64,
}

impl UsageDetail {
    /// cAdvisor's working set: the memory usage less inactive file pages.
    pub fn working_set_bytes(&self, usage: &Usage) -> u64 {
        usage.memory_bytes.saturating_sub(self.inactive_file_bytes)
    }
}

/// Every `key value` line of a flat-keyed file; nothing when unreadable.
fn stat_map(path: &Path) -> std::collections::HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// One driver per cgroup version; `detect` picks it.
pub trait Cgroups: Send + Sync + std::fmt::Debug {
    /// Creates the cgroup and its parents, enabling controllers where needed.
    fn create(&self, path: &CgroupPath) -> Result<()>;
    /// Writes the limits; values not set are left as they are.
    fn apply(&self, path: &CgroupPath, limits: &Limits) -> Result<()>;
    /// Writes `cpuset.cpus` alone (the CPU manager's pool changed).
    fn set_cpus(&self, path: &CgroupPath, cpus: &str) -> Result<()>;
    /// Moves a process into the cgroup.
    fn add_process(&self, path: &CgroupPath, pid: u32) -> Result<()>;
    /// The `cgroup.procs` files (one per v1 hierarchy, one for v2): the
    /// processes in the cgroup.
    fn procs_files(&self, path: &CgroupPath) -> Vec<PathBuf>;
    /// Where a single-threaded process writes "0" to join the cgroup before
    /// exec (one file per v1 hierarchy, one for v2).
    fn join_files(&self, path: &CgroupPath) -> Vec<PathBuf>;
    /// The directory a process can be cloned straight into
    /// (`CLONE_INTO_CGROUP`: v2 only); `None`: join through `join_files`.
    fn clone_into(&self, path: &CgroupPath) -> Option<PathBuf>;
    fn pids(&self, path: &CgroupPath) -> Result<Vec<u32>>;
    fn usage(&self, path: &CgroupPath) -> Result<Usage>;
    /// What cAdvisor reads besides (`memory.stat`, `cpu.stat`, the limits),
    /// for the metrics only: more files than `usage`, which the start and
    /// exit paths read. Zero where the kernel does not say.
    fn detail(&self, path: &CgroupPath) -> UsageDetail;
    /// SIGKILLs every process in the cgroup until it is empty.
    fn kill_all(&self, path: &CgroupPath) -> Result<()>;
    /// Removes the cgroup (innermost first); absent is fine.
    fn remove(&self, path: &CgroupPath) -> Result<()>;
    /// Whether containers get a private cgroup namespace (v2: they see their
    /// own cgroup as `/` and mount the hierarchy from there; v1: they keep
    /// the host's, and their own directories are bound per hierarchy).
    fn private_namespace(&self) -> bool;
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(io("write", path))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io("read", path))
}

fn read_u64(path: &Path) -> Result<u64> {
    let s = read(path)?;
    s.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content: s,
    })
}

/// The value of `key` in a flat-keyed file (`memory.events`, `cpu.stat`).
fn keyed(path: &Path, key: &str) -> Result<u64> {
    let s = read(path)?;
    s.lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .ok_or_else(|| CgroupError::Parse {
            path: path.to_path_buf(),
            content: s,
        })
}

/// The `major:minor` keys of the lines of a per-device file
/// (`blkio.throttle.*`, `io.max`).
fn listed_devices(path: &Path) -> Result<Vec<String>> {
    Ok(read(path)?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|k| k.contains(':'))
        .map(str::to_string)
        .collect())
}

/// The first of `names` present in `dir`.
fn first_present(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.exists())
}

fn pids_in(file: &Path) -> Result<Vec<u32>> {
    match std::fs::read_to_string(file) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io("read", file)(e)),
    }
}

/// SIGKILLs what `list` returns until it returns nothing (bounded: a fork
/// bomb is frozen by its pids limit, and each round kills every member).
/// How long a kill or a removal waits for the kernel to let go of a
/// cgroup's last processes: a time, not a count of tries, so that a slow
/// machine (an emulated one, a loaded node) waits as long as a fast one.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// A pause between tries: a poll of nothing for a millisecond.
fn pause() {
    let _ = nix::poll::poll(&mut [], nix::poll::PollTimeout::from(1u16));
}

fn kill_until_empty(list: impl Fn() -> Result<Vec<u32>>) -> Result<()> {
    let deadline = std::time::Instant::now() + SETTLE;
    while std::time::Instant::now() < deadline {
        let pids = list()?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        pause();
    }
    list().map(drop)
}

fn remove_dir(path: &Path) -> Result<()> {
    // A cgroup whose last process just died may report EBUSY for a while
    // (its tasks are released after they leave cgroup.procs).
    let deadline = std::time::Instant::now() + SETTLE;
    while std::time::Instant::now() < deadline {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => pause(),
            Err(e) => return Err(io("remove", path)(e)),
        }
    }
    std::fs::remove_dir(path).map_err(io("remove", path))
}

/// Sets a process's oom_score_adj. Root without CAP_SYS_RESOURCE cannot go
/// below the current value's floor: the value the kernel holds afterwards is
/// returned, so the caller can report the difference.
pub fn set_oom_score_adj(proc_root: &Path, pid: u32, wanted: i32) -> Result<i32> {
    let path = proc_root.join(pid.to_string()).join("oom_score_adj");
    let _ = std::fs::write(&path, wanted.to_string());
    let got = read(&path)?;
    got.trim()
        .parse()
        .map_err(|_| CgroupError::Parse { path, content: got })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_and_clean() {
        assert!(CgroupPath::new("podagent/pod1/web").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "a/./b"] {
            assert!(CgroupPath::new(bad).is_err(), "{bad:?}");
        }
        let p = CgroupPath::new("podagent/pod1")
            .unwrap()
            .join("web")
            .unwrap();
        assert_eq!(
            p.prefixes(),
            [
                PathBuf::from("podagent"),
                PathBuf::from("podagent/pod1"),
                PathBuf::from("podagent/pod1/web")
            ]
        );
        assert!(CgroupPath::new("podagent").unwrap().join("..").is_err());
    }
}
