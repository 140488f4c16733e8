//! cgroup v1: one directory per controller hierarchy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    first_present, io, keyed, kill_until_empty, listed_devices, pids_in, read, read_u64,
    remove_dir, write, CgroupError, CgroupPath, Cgroups, IoLimits, Limits, Result, Usage,
};

/// The controllers podagent needs, and what for.
const REQUIRED: [(&str, &str); 4] = [
    ("cpu", "cpu shares and quota"),
    ("cpuset", "cpu pinning"),
    ("memory", "memory limits"),
    ("pids", "pids limits"),
];
/// Also joined when mounted: usage accounting, the device allowlist, io.
const OPTIONAL: [&str; 4] = ["cpuacct", "devices", "blkio", "freezer"];

#[derive(Debug, Clone)]
pub struct V1 {
    controllers: BTreeMap<String, PathBuf>,
}

impl V1 {
    pub fn new(controllers: BTreeMap<String, PathBuf>) -> Self {
        V1 { controllers }
    }

    fn mount(&self, controller: &'static str, what: &'static str) -> Result<&Path> {
        self.controllers
            .get(controller)
            .map(PathBuf::as_path)
            .ok_or(CgroupError::MissingController { controller, what })
    }

    fn dir(
        &self,
        controller: &'static str,
        what: &'static str,
        path: &CgroupPath,
    ) -> Result<PathBuf> {
        Ok(self.mount(controller, what)?.join(path.as_path()))
    }

    /// Every distinct hierarchy directory of `path` podagent manages.
    fn dirs(&self, path: &CgroupPath) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = REQUIRED
            .iter()
            .map(|(c, _)| *c)
            .chain(OPTIONAL)
            .filter_map(|c| self.controllers.get(c))
            .map(|m| m.join(path.as_path()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn set_memory(&self, dir: &Path, limit: Option<u64>, swap: Option<u64>) -> Result<()> {
        let mem = dir.join("memory.limit_in_bytes");
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        let new_mem = limit.map_or("-1".to_string(), |l| l.to_string());
        let new_sw = limit.map_or("-1".to_string(), |l| {
            l.saturating_add(swap.unwrap_or(0)).to_string()
        });
        // memory.limit <= memsw.limit at every moment: raise memsw first,
        // lower memory first.
        let current = read(&mem)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        let raising = limit.is_none_or(|l| l > current);
        let has_memsw = memsw.exists();
        if raising && has_memsw {
            write(&memsw, &new_sw)?;
        }
        write(&mem, &new_mem)?;
        if !raising && has_memsw {
            write(&memsw, &new_sw)?;
        }
        Ok(())
    }
}

impl V1 {
    /// `blkio.throttle.*_device` per device ("0" lifts a limit) and the
    /// weight in `blkio.weight` (CFQ) or `blkio.bfq.weight` (BFQ), as runc.
    fn set_io(&self, path: &CgroupPath, io: &IoLimits) -> Result<()> {
        let Some(mount) = self.controllers.get("blkio") else {
            return if io.is_empty() {
                Ok(())
            } else {
                Err(CgroupError::MissingController {
                    controller: "blkio",
                    what: "io limits",
                })
            };
        };
        let dir = mount.join(path.as_path());
        for (key, file) in [
            ("rbps", "blkio.throttle.read_bps_device"),
            ("wbps", "blkio.throttle.write_bps_device"),
            ("riops", "blkio.throttle.read_iops_device"),
            ("wiops", "blkio.throttle.write_iops_device"),
        ] {
            let file = dir.join(file);
            let wanted: Vec<(String, u64)> = io
                .devices
                .iter()
                .filter_map(|d| {
                    let v = d.limits().into_iter().find(|(k, _)| *k == key)?.1?;
                    Some((format!("{}:{}", d.major, d.minor), v))
                })
                .collect();
            for old in listed_devices(&file)? {
                if !wanted.iter().any(|(dev, _)| *dev == old) {
                    write(&file, &format!("{old} 0"))?;
                }
            }
            for (dev, v) in wanted {
                write(&file, &format!("{dev} {v}"))?;
            }
        }
        let weight_file = first_present(&dir, &["blkio.bfq.weight", "blkio.weight"]);
        match (io.weight, weight_file) {
            (Some(w), Some(f)) => write(&f, &w.to_string())?,
            (Some(_), None) => {
                return Err(CgroupError::Unsupported {
                    what: "an io weight",
                    needs: "blkio.bfq.weight (the BFQ scheduler) or blkio.weight (CFQ)",
                    path: dir,
                })
            }
            // The kernel's defaults: BFQ 100, CFQ 500.
            (None, Some(f)) if f.ends_with("blkio.bfq.weight") => write(&f, "100")?,
            (None, Some(f)) => write(&f, "500")?,
            (None, None) => {}
        }
        Ok(())
    }
}

impl Cgroups for V1 {
    fn create(&self, path: &CgroupPath) -> Result<()> {
        for (c, what) in REQUIRED {
            self.mount(c, what)?;
        }
        for dir in self.dirs(path) {
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
        // A new cpuset is empty, and a task cannot join an empty cpuset:
        // copy cpus and mems down from the parent, outermost first.
        let root = self.mount("cpuset", "cpu pinning")?;
        for prefix in path.prefixes() {
            let dir = root.join(&prefix);
            let parent = dir.parent().unwrap_or(root);
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let mine = read(&dir.join(f)).unwrap_or_default();
                if mine.trim().is_empty() {
                    let from_parent = read(&parent.join(f))?;
                    write(&dir.join(f), from_parent.trim())?;
                }
            }
        }
        Ok(())
    }

    fn apply(&self, path: &CgroupPath, l: &Limits) -> Result<()> {
        let cpu = self.dir("cpu", "cpu shares and quota", path)?;
        if let Some(s) = l.cpu_shares {
            write(&cpu.join("cpu.shares"), &s.to_string())?;
        }
        if let Some(p) = l.cfs_period_us {
            write(&cpu.join("cpu.cfs_period_us"), &p.to_string())?;
            let quota = l.cfs_quota_us.map_or("-1".to_string(), |q| q.to_string());
            write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
        }
        if let Some(cpus) = &l.cpuset_cpus {
            write(
                &self.dir("cpuset", "cpu pinning", path)?.join("cpuset.cpus"),
                cpus,
            )?;
        }
        let mem = self.dir("memory", "memory limits", path)?;
        self.set_memory(&mem, l.memory_limit, l.swap_limit)?;
        if l.oom_kill_disable {
            write(&mem.join("memory.oom_control"), "1")?;
        }
        if let Some(p) = l.pids_limit {
            let v = if p < 0 {
                "max".to_string()
            } else {
                p.to_string()
            };
            write(&self.dir("pids", "pids limits", path)?.join("pids.max"), &v)?;
        }
        if let Some(io) = &l.io {
            self.set_io(path, io)?;
        }
        Ok(())
    }

    fn set_cpus(&self, path: &CgroupPath, cpus: &str) -> Result<()> {
        write(
            &self.dir("cpuset", "cpu pinning", path)?.join("cpuset.cpus"),
            cpus,
        )
    }

    fn add_process(&self, path: &CgroupPath, pid: u32) -> Result<()> {
        for f in self.procs_files(path) {
            write(&f, &pid.to_string())?;
        }
        Ok(())
    }

    fn procs_files(&self, path: &CgroupPath) -> Vec<PathBuf> {
        self.dirs(path)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// `tasks`, not `cgroup.procs`: "0" there moves the writing thread
    /// alone, and the kernel then skips the global threadgroup lock, whose
    /// first write-lock after a quiet spell waits a whole RCU grace period
    /// (6 to 16 ms here, most of a container's start). For a process with
    /// one thread, moving the thread is moving the process.
    fn join_files(&self, path: &CgroupPath) -> Vec<PathBuf> {
        self.dirs(path)
            .into_iter()
            .map(|d| d.join("tasks"))
            .collect()
    }

    fn pids(&self, path: &CgroupPath) -> Result<Vec<u32>> {
        let mut all = Vec::new();
        for f in self.procs_files(path) {
            all.extend(pids_in(&f)?);
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    fn usage(&self, path: &CgroupPath) -> Result<Usage> {
        let mem = self.dir("memory", "memory limits", path)?;
        let cpu_usec = match self.controllers.get("cpuacct") {
            Some(m) => read_u64(&m.join(path.as_path()).join("cpuacct.usage"))? / 1000,
            None => 0,
        };
        Ok(Usage {
            cpu_usec,
            memory_bytes: read_u64(&mem.join("memory.usage_in_bytes"))?,
            pids: read_u64(&self.dir("pids", "pids limits", path)?.join("pids.current"))?,
            // `oom_kill` in memory.oom_control since Linux 4.13.
            oom_kills: keyed(&mem.join("memory.oom_control"), "oom_kill").unwrap_or(0),
        })
    }

    fn detail(&self, path: &CgroupPath) -> super::UsageDetail {
        let mem = self
            .controllers
            .get("memory")
            .map(|m| m.join(path.as_path()))
            .unwrap_or_default();
        let stat = super::stat_map(&mem.join("memory.stat"));
        let get =
            |m: &std::collections::HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        let cpu = self.controllers.get("cpu").map(|m| m.join(path.as_path()));
        let cpu_stat = cpu
            .as_ref()
            .map(|d| super::stat_map(&d.join("cpu.stat")))
            .unwrap_or_default();
        let num = |file: &str| -> Option<i64> {
            std::fs::read_to_string(cpu.as_ref()?.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        // v1 says "no limit" with the largest page-aligned number.
        let limit = read_u64(&mem.join("memory.limit_in_bytes"))
            .ok()
            .filter(|l| *l < (1 << 62));
        super::UsageDetail {
            inactive_file_bytes: get(&stat, "total_inactive_file"),
            rss_bytes: get(&stat, "total_rss"),
            cache_bytes: get(&stat, "total_cache"),
            cfs_periods: get(&cpu_stat, "nr_periods"),
            cfs_throttled_periods: get(&cpu_stat, "nr_throttled"),
            cfs_throttled_usec: get(&cpu_stat, "throttled_time") / 1000,
            memory_limit_bytes: limit,
            cpu_quota_us: num("cpu.cfs_quota_us").and_then(|q| u64::try_from(q).ok()),
            cpu_period_us: num("cpu.cfs_period_us")
                .and_then(|p| u64::try_from(p).ok())
                .unwrap_or(0),
            cpu_shares: num("cpu.shares")
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
        }
    }

    fn kill_all(&self, path: &CgroupPath) -> Result<()> {
        kill_until_empty(|| self.pids(path))
    }

    fn remove(&self, path: &CgroupPath) -> Result<()> {
        for dir in self.dirs(path) {
            remove_dir(&dir)?;
        }
        Ok(())
    }

    fn clone_into(&self, _path: &CgroupPath) -> Option<PathBuf> {
        None
    }

    fn private_namespace(&self) -> bool {
        false
    }
}
