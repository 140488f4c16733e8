//! Which cgroup hierarchy the node runs: v2, v1, or hybrid (v1 controllers with
//! a v2 mount beside them), read from a `/proc/self/mountinfo`-shaped file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{CgroupError, Cgroups, Result, V1, V2};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Unified hierarchy only.
    V2 { root: PathBuf },
    /// Controller name → mount point (`cpu` and `cpuacct` often share one).
    V1 {
        controllers: BTreeMap<String, PathBuf>,
    },
    /// v1 controllers, plus a v2 mount holding no controller podagent needs.
    Hybrid {
        controllers: BTreeMap<String, PathBuf>,
        unified: PathBuf,
    },
}

impl Layout {
    pub fn name(&self) -> &'static str {
        match self {
            Layout::V2 { .. } => "v2",
            Layout::V1 { .. } => "v1",
            Layout::Hybrid { .. } => "hybrid",
        }
    }

    /// The cgroups a `/proc/<pid>/cgroup` text names, as (hierarchy mount
    /// point, the process's directory there), one per hierarchy podagent
    /// drives (v2: the unified one; v1 and hybrid: each controller
    /// hierarchy, not systemd's named one nor the hybrid's unified one).
    pub fn dirs_of(&self, proc_cgroup: &str) -> Vec<(PathBuf, PathBuf)> {
        let mut out: Vec<(PathBuf, PathBuf)> = Vec::new();
        for line in proc_cgroup.lines() {
            let mut f = line.splitn(3, ':');
            let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            let mount = match self {
                Layout::V2 { root } if ctrls.is_empty() => Some(root),
                Layout::V1 { controllers } | Layout::Hybrid { controllers, .. } => {
                    ctrls.split(',').find_map(|c| controllers.get(c))
                }
                _ => None,
            };
            if let Some(m) = mount {
                let dir = m.join(path.trim_start_matches('/'));
                if !out.iter().any(|(_, d)| *d == dir) {
                    out.push((m.clone(), dir));
                }
            }
        }
        out
    }

    /// The driver for this layout: v1 for v1 and hybrid (the controllers are
    /// on the v1 side), v2 for v2.
    pub fn driver(&self) -> Box<dyn Cgroups> {
        match self {
            Layout::V2 { root } => Box::new(V2::new(root.clone())),
            Layout::V1 { controllers } | Layout::Hybrid { controllers, .. } => {
                Box::new(V1::new(controllers.clone()))
            }
        }
    }
}

/// Reads the layout from a mountinfo file.
pub fn detect(mountinfo: &Path) -> Result<Layout> {
    let text = std::fs::read_to_string(mountinfo).map_err(|source| CgroupError::Io {
        op: "read",
        path: mountinfo.to_path_buf(),
        source,
    })?;
    let mut controllers = BTreeMap::new();
    let mut unified = None;
    for line in text.lines() {
        // id parent dev root mountpoint options [optional...] - fstype source superoptions
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split_whitespace().nth(4).map(unescape);
        let mut r = right.split_whitespace();
        let (fstype, _source, super_opts) = (r.next(), r.next(), r.next().unwrap_or(""));
        let Some(mp) = mount_point else { continue };
        match fstype {
            Some("cgroup2") => {
                unified.get_or_insert(PathBuf::from(mp));
            }
            Some("cgroup") => {
                for opt in super_opts.split(',') {
                    if matches!(
                        opt,
                        "cpu"
                            | "cpuacct"
                            | "cpuset"
                            | "memory"
                            | "pids"
                            | "blkio"
                            | "devices"
                            | "freezer"
                    ) {
                        controllers
                            .entry(opt.to_string())
                            .or_insert_with(|| PathBuf::from(&mp));
                    }
                }
            }
            _ => {}
        }
    }
    match (controllers.is_empty(), unified) {
        (true, Some(root)) => Ok(Layout::V2 { root }),
        (false, Some(unified)) => Ok(Layout::Hybrid {
            controllers,
            unified,
        }),
        (false, None) => Ok(Layout::V1 { controllers }),
        (true, None) => Err(CgroupError::Detect(format!(
            "no cgroup filesystem is mounted (read {})",
            mountinfo.display()
        ))),
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(lines: &str) -> Result<Layout> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("mountinfo");
        std::fs::write(&f, lines).unwrap();
        detect(&f)
    }

    #[test]
    fn a_unified_mount_alone_is_v2() {
        let l = layout(
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
        )
        .unwrap();
        assert_eq!(
            l,
            Layout::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
    }

    #[test]
    fn v1_controllers_with_a_unified_mount_are_hybrid() {
        let l = layout(
            "25 24 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
             26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
             28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
             29 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        )
        .unwrap();
        let Layout::Hybrid {
            controllers,
            unified,
        } = l
        else {
            panic!("not hybrid: {l:?}")
        };
        assert_eq!(unified, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(
            controllers["cpu"],
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            controllers["cpuacct"],
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            controllers["memory"],
            PathBuf::from("/sys/fs/cgroup/memory")
        );
    }

    #[test]
    fn no_cgroup_mount_is_an_error() {
        assert!(layout("22 1 0:5 / /proc rw - proc proc rw\n").is_err());
    }

    #[test]
    fn this_machine_is_detected() {
        let l = detect(Path::new("/proc/self/mountinfo")).unwrap();
        assert!(["v1", "v2", "hybrid"].contains(&l.name()));
    }
}
