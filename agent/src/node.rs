//! What the agent reads of the node for `specs`: memory, online CPUs and the
//! seccomp profiles it holds. Paths are parameters so tests run on a temp tree.

use std::collections::BTreeSet;
use std::path::Path;

use specs::cpuset::CpuSet;
use specs::NodeInfo;

/// Where the node's seccomp profiles live by default (`--root-dir`'s
/// `seccomp`).
pub const DEFAULT_SECCOMP_DIR: &str = "/var/lib/podagent/seccomp";

/// The node's policy on what a pod may ask for: `podagent run`'s options and
/// `podctl validate`'s, `apply`'s and `diff`'s of the same names, from this
/// one definition, so that a file the tools accept is one the agent runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Policy {
    /// Permit `privileged: true` and `procMount: Unmasked`.
    #[arg(long)]
    pub allow_privileged: bool,
    /// Permit namespaced sysctls outside the safe list.
    #[arg(long)]
    pub allow_unsafe_sysctls: bool,
    /// The pids limit of a pod without a `podagent.io/pids-limit` annotation.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(i64).range(1..))]
    pub pids_limit: i64,
    /// An unknown field (a typo, a field of a newer schema) is a warning,
    /// not an error (kubectl apply's `--validate=warn`).
    #[arg(long)]
    pub warn_unknown_fields: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_privileged: false,
            allow_unsafe_sysctls: false,
            pids_limit: NodeInfo::default().default_pids_limit,
            warn_unknown_fields: false,
        }
    }
}

impl Policy {
    /// This node (see [`info`]) under this policy; `Localhost` seccomp
    /// profiles are those of `seccomp_dir` (`<root dir>/seccomp`).
    pub fn node_info(&self, seccomp_dir: &Path) -> NodeInfo {
        NodeInfo {
            default_pids_limit: self.pids_limit,
            allow_privileged: self.allow_privileged,
            allow_unsafe_sysctls: self.allow_unsafe_sysctls,
            warn_unknown_fields: self.warn_unknown_fields,
            ..info(seccomp_dir)
        }
    }
}

/// The capabilities this process holds in its bounding set, in Kubernetes'
/// spelling (`SYS_ADMIN`): what a privileged container gets.
pub fn own_capabilities() -> BTreeSet<String> {
    caps::read(None, caps::CapSet::Bounding)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.to_string().trim_start_matches("CAP_").to_string())
        .collect()
}

/// The node's address, as the kubelet's `status.hostIP`: the IPv4 address
/// of the interface the default route leaves by, else the first that is
/// not loopback; none when the node has no address.
pub fn host_ip() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let default_if = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000")).then(|| f[0].to_string())
    });
    let addrs: Vec<(String, std::net::Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            Some((a.interface_name, ip))
        })
        .filter(|(_, ip)| !ip.is_loopback())
        .collect();
    addrs
        .iter()
        .find(|(i, _)| Some(i) == default_if.as_ref())
        .or(addrs.first())
        .map(|(_, ip)| ip.to_string())
}

/// The seccomp profile directory under a root dir.
pub fn seccomp_dir(root_dir: &Path) -> std::path::PathBuf {
    root_dir.join("seccomp")
}

/// This node as plans are resolved against it, with the default policy:
/// its memory, online CPUs, hostname and the profiles in `seccomp_dir`.
pub fn info(seccomp_dir: &Path) -> NodeInfo {
    let defaults = NodeInfo::default();
    NodeInfo {
        memory_bytes: mem_total(Path::new("/proc/meminfo")).unwrap_or(defaults.memory_bytes),
        cpus: online_cpus(Path::new("/sys/devices/system/cpu/online")).ok(),
        seccomp_profiles: seccomp_profiles(seccomp_dir),
        block_devices: specs::io::BlockDevices::new(block_device),
        node_name: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or(defaults.node_name.clone()),
        ..defaults
    }
}

/// A block device's numbers by its path (a link, as `/dev/disk/by-id/...`,
/// is followed), looked up when a manifest names it.
/// The kernel throttles whole disks only: a partition is refused, naming
/// its disk.
pub fn block_device(path: &str) -> Result<(u32, u32), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    // Resolved first: `/dev/../etc/x` is not under /dev, and what is not
    // under /dev is not looked at (nothing of the rest of the host is told).
    let real = match std::fs::canonicalize(path) {
        Ok(p) if p.starts_with("/dev/") => p,
        Ok(_) => return Err("not under /dev".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.starts_with("/dev/") => {
            return Err("no such file".into())
        }
        Err(_) => return Err("not under /dev".into()),
    };
    let md = std::fs::metadata(&real).map_err(|e| e.to_string())?;
    if !md.file_type().is_block_device() {
        return Err("not a block device".into());
    }
    let rdev = md.rdev();
    let (major, minor) = (
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    );
    let sys = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if sys.join("partition").exists() {
        let disk = std::fs::canonicalize(&sys)
            .ok()
            .and_then(|p| {
                p.parent()?
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        return Err(format!(
            "a partition: IO limits apply to a whole disk (here /dev/{disk})"
        ));
    }
    Ok((major, minor))
}

/// `MemTotal` of a `/proc/meminfo`-shaped file, in bytes.
pub fn mem_total(meminfo: &Path) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(meminfo)?;
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("MemTotal:")?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            kib.checked_mul(1024)
        })
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no MemTotal line in {}", meminfo.display()),
            )
        })
}

/// The CPUs listed in a `/sys/devices/system/cpu/online`-shaped file.
pub fn online_cpus(online: &Path) -> std::io::Result<CpuSet> {
    let text = std::fs::read_to_string(online)?;
    CpuSet::parse(text.trim()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Relative paths of the regular files under a seccomp profile directory (at
/// most 4 levels deep); empty when the directory does not exist.
pub fn seccomp_profiles(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, depth: usize, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let path = e.path();
            if ft.is_file() {
                if let Some(rel) = path.strip_prefix(root).ok().and_then(|p| p.to_str()) {
                    out.insert(rel.to_string());
                }
            } else if ft.is_dir() && depth < 4 {
                walk(root, &path, depth + 1, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memtotal_and_online_cpus_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let mi = dir.path().join("meminfo");
        std::fs::write(&mi, "MemFree: 1 kB\nMemTotal:       24576000 kB\n").unwrap();
        assert_eq!(mem_total(&mi).unwrap(), 24_576_000 * 1024);
        let on = dir.path().join("online");
        std::fs::write(&on, "0-1\n").unwrap();
        assert_eq!(online_cpus(&on).unwrap().to_string(), "0-1");
        std::fs::write(&mi, "garbage").unwrap();
        assert!(mem_total(&mi).is_err());
    }

    #[test]
    fn lists_profiles_relative_to_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("team")).unwrap();
        std::fs::write(dir.path().join("team/strict.json"), "{}").unwrap();
        std::fs::write(dir.path().join("audit.json"), "{}").unwrap();
        let got: Vec<_> = seccomp_profiles(dir.path()).into_iter().collect();
        assert_eq!(got, ["audit.json", "team/strict.json"]);
        assert!(seccomp_profiles(&dir.path().join("missing")).is_empty());
    }
}
