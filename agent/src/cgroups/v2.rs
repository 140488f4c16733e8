//! cgroup v2: one unified hierarchy; controllers enabled down the tree through
//! `cgroup.subtree_control`.

use std::path::PathBuf;

use super::{
    first_present, io, keyed, kill_until_empty, listed_devices, pids_in, read, read_u64,
    remove_dir, write, CgroupError, CgroupPath, Cgroups, IoLimits, Limits, Result, Usage,
};

const REQUIRED: [(&str, &str); 4] = [
    ("cpu", "cpu weight and quota"),
    ("cpuset", "cpu pinning"),
    ("memory", "memory limits"),
    ("pids", "pids limits"),
];

#[derive(Debug, Clone)]
pub struct V2 {
    root: PathBuf,
}

impl V2 {
    pub fn new(root: PathBuf) -> Self {
        V2 { root }
    }

    fn dir(&self, path: &CgroupPath) -> PathBuf {
        self.root.join(path.as_path())
    }

    /// One `io.max` line per device (`max` lifts a limit) and the weight in
    /// `io.bfq.weight` (BFQ, as given) or `io.weight` (converted onto
    /// 1..10000 as runc does), as runc.
    fn set_io(&self, path: &CgroupPath, io: &IoLimits) -> Result<()> {
        let dir = self.dir(path);
        let max = dir.join("io.max");
        if !max.exists() {
            return if io.is_empty() {
                Ok(())
            } else {
                Err(CgroupError::MissingController {
                    controller: "io",
                    what: "io limits",
                })
            };
        }
        for old in listed_devices(&max)? {
            if !io
                .devices
                .iter()
                .any(|d| format!("{}:{}", d.major, d.minor) == old)
            {
                write(
                    &max,
                    &format!("{old} rbps=max wbps=max riops=max wiops=max"),
                )?;
            }
        }
        for d in &io.devices {
            let limits: Vec<String> = d
                .limits()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.map_or("max".to_string(), |v| v.to_string())))
                .collect();
            write(
                &max,
                &format!("{}:{} {}", d.major, d.minor, limits.join(" ")),
            )?;
        }
        let weight_file = first_present(&dir, &["io.bfq.weight", "io.weight"]);
        match (io.weight, weight_file) {
            (Some(w), Some(f)) if f.ends_with("io.bfq.weight") => write(&f, &w.to_string())?,
            (Some(w), Some(f)) => write(&f, &format!("default {}", specs::io::v2_weight(w)))?,
            (Some(_), None) => {
                return Err(CgroupError::Unsupported {
                    what: "an io weight",
                    needs: "io.bfq.weight (the BFQ scheduler) or io.weight (blk-iocost)",
                    path: dir,
                })
            }
            (None, Some(f)) if f.ends_with("io.bfq.weight") => write(&f, "100")?,
            (None, Some(f)) => write(&f, "default 100")?,
            (None, None) => {}
        }
        Ok(())
    }
}

impl Cgroups for V2 {
    fn create(&self, path: &CgroupPath) -> Result<()> {
        let available = read(&self.root.join("cgroup.controllers"))?;
        let mut enable = Vec::new();
        for (c, what) in REQUIRED {
            if !available.split_whitespace().any(|a| a == c) {
                return Err(CgroupError::MissingController {
                    controller: c,
                    what,
                });
            }
            enable.push(format!("+{c}"));
        }
        if available.split_whitespace().any(|a| a == "io") {
            enable.push("+io".into());
        }
        let enable = enable.join(" ");
        // Enable the controllers in every level above the leaf, outermost
        // first; the leaf holds processes and delegates nothing.
        let mut parent = self.root.clone();
        for prefix in path.prefixes() {
            let current = read(&parent.join("cgroup.subtree_control")).unwrap_or_default();
            if enable.split(' ').any(|e| {
                !current
                    .split_whitespace()
                    .any(|c| Some(c) == e.strip_prefix('+'))
            }) {
                write(&parent.join("cgroup.subtree_control"), &enable)?;
            }
            let dir = self.root.join(&prefix);
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
            parent = dir;
        }
        Ok(())
    }

    fn apply(&self, path: &CgroupPath, l: &Limits) -> Result<()> {
        let dir = self.dir(path);
        if let Some(w) = l.cpu_weight {
            write(&dir.join("cpu.weight"), &w.to_string())?;
        }
        if let Some(p) = l.cfs_period_us {
            let quota = l.cfs_quota_us.map_or("max".to_string(), |q| q.to_string());
            write(&dir.join("cpu.max"), &format!("{quota} {p}"))?;
        }
        if let Some(cpus) = &l.cpuset_cpus {
            write(&dir.join("cpuset.cpus"), cpus)?;
        }
        match l.memory_limit {
            Some(m) => {
                write(&dir.join("memory.max"), &m.to_string())?;
                write(
                    &dir.join("memory.swap.max"),
                    &l.swap_limit.unwrap_or(0).to_string(),
                )?;
            }
            None => write(&dir.join("memory.max"), "max")?,
        }
        if l.oom_group {
            write(&dir.join("memory.oom.group"), "1")?;
        }
        if let Some(p) = l.pids_limit {
            let v = if p < 0 {
                "max".to_string()
            } else {
                p.to_string()
            };
            write(&dir.join("pids.max"), &v)?;
        }
        if let Some(io) = &l.io {
            self.set_io(path, io)?;
        }
        if !l.devices.is_empty() {
            // v2 has no devices files: an eBPF program holds the allowlist.
            super::devices_bpf::attach(&dir, &l.devices).map_err(|message| CgroupError::Io {
                op: "filter devices of",
                path: dir.clone(),
                source: std::io::Error::other(message),
            })?;
        }
        Ok(())
    }

    fn set_cpus(&self, path: &CgroupPath, cpus: &str) -> Result<()> {
        write(&self.dir(path).join("cpuset.cpus"), cpus)
    }

    fn add_process(&self, path: &CgroupPath, pid: u32) -> Result<()> {
        write(&self.dir(path).join("cgroup.procs"), &pid.to_string())
    }

    fn procs_files(&self, path: &CgroupPath) -> Vec<PathBuf> {
        vec![self.dir(path).join("cgroup.procs")]
    }

    /// v2 has no per-thread file outside threaded subtrees.
    fn join_files(&self, path: &CgroupPath) -> Vec<PathBuf> {
        self.procs_files(path)
    }

    fn pids(&self, path: &CgroupPath) -> Result<Vec<u32>> {
        pids_in(&self.dir(path).join("cgroup.procs"))
    }

    fn usage(&self, path: &CgroupPath) -> Result<Usage> {
        let dir = self.dir(path);
        Ok(Usage {
            cpu_usec: keyed(&dir.join("cpu.stat"), "usage_usec")?,
            memory_bytes: read_u64(&dir.join("memory.current"))?,
            pids: read_u64(&dir.join("pids.current"))?,
            oom_kills: keyed(&dir.join("memory.events"), "oom_kill").unwrap_or(0),
        })
    }

    fn detail(&self, path: &CgroupPath) -> super::UsageDetail {
        let dir = self.dir(path);
        let stat = super::stat_map(&dir.join("memory.stat"));
        let cpu_stat = super::stat_map(&dir.join("cpu.stat"));
        let get =
            |m: &std::collections::HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        let text = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let max = text("cpu.max");
        let mut cpu_max = max.split_whitespace();
        let quota = cpu_max.next().and_then(|q| q.parse().ok());
        let period = cpu_max.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        // cAdvisor's conversion back from cpu.weight.
        let weight: u64 = text("cpu.weight").trim().parse().unwrap_or(0);
        let shares = if weight == 0 {
            0
        } else {
            2 + (weight - 1) * 262_142 / 9_999
        };
        super::UsageDetail {
            inactive_file_bytes: get(&stat, "inactive_file"),
            rss_bytes: get(&stat, "anon"),
            cache_bytes: get(&stat, "file"),
            cfs_periods: get(&cpu_stat, "nr_periods"),
            cfs_throttled_periods: get(&cpu_stat, "nr_throttled"),
            cfs_throttled_usec: get(&cpu_stat, "throttled_usec"),
            memory_limit_bytes: text("memory.max").trim().parse().ok(),
            cpu_quota_us: quota,
            cpu_period_us: period,
            cpu_shares: shares,
        }
    }

    fn kill_all(&self, path: &CgroupPath) -> Result<()> {
        let kill = self.dir(path).join("cgroup.kill");
        if kill.exists() {
            // Linux 5.14+: the kernel kills every member, forks included.
            write(&kill, "1")?;
        }
        kill_until_empty(|| self.pids(path))
    }

    fn remove(&self, path: &CgroupPath) -> Result<()> {
        remove_dir(&self.dir(path))
    }

    fn clone_into(&self, path: &CgroupPath) -> Option<PathBuf> {
        Some(self.dir(path))
    }

    fn private_namespace(&self) -> bool {
        true
    }
}
