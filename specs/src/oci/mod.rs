//! One OCI runtime `Spec` (config.json) per container, from the plan and what
//! the runtime knows at start time (rootfs, namespace paths, volume
//! directories, the image's config). The same spec `runc run` accepts is what
//! podagent's own shim follows.

pub mod seccomp;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::str::FromStr;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use oci_spec::OciSpecError;

use crate::plan::{ContainerPlan, EnvValue, PodPlan, SeccompPolicy};

/// Paths masked with /dev/null (files) or an empty read-only tmpfs
/// (directories): containerd's defaults.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths remounted read-only: containerd's defaults.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The PATH a container gets when neither the image nor the manifest sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// RLIMIT_NOFILE of a container: soft 1024 as every Linux default, hard 4096
/// so that it stays below the hard limit of restricted hosts (a runtime cannot
/// raise a hard limit without CAP_SYS_RESOURCE).
pub const NOFILE: (u64, u64) = (1024, 4096);

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("container {container}: no command: the manifest has no command and the image no entrypoint or cmd")]
    NoCommand { container: String },
    #[error("container {container}: volume {volume:?} has no source directory")]
    MissingVolume { container: String, volume: String },
    #[error("container {container}: seccomp profile {profile:?} was not provided")]
    MissingSeccompProfile { container: String, profile: String },
    #[error("container {container}: capability {name:?} is unknown to the OCI spec library")]
    Capability { container: String, name: String },
    /// The kubelet's `CreateContainerConfigError`, as its words.
    #[error("container {container}: container has runAsNonRoot and image will run as root")]
    RunsAsRoot { container: String },
    #[error("container {container}: container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root")]
    NonNumericUser { container: String, user: String },
    #[error("container {container}: its pod's user namespace is not made")]
    NoUserNamespace { container: String },
    #[error("container {container}: building the OCI spec")]
    Build {
        container: String,
        #[source]
        source: OciSpecError,
    },
}

/// The parts of an image's config that decide how a container starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// The image's user, resolved to numbers by the runtime (names need the
    /// image's /etc/passwd, which this crate does not read).
    pub user: Option<(u32, u32)>,
    /// The image's `User` as written (`nginx`, `101:101`), for
    /// `runAsNonRoot`: a name cannot be verified, as the kubelet says.
    pub user_name: Option<String>,
}

/// What the runtime knows when it starts a container. A namespace path of
/// `None` means "a new namespace" unless the pod shares the host's.
#[derive(Debug, Clone, Default)]
pub struct OciInputs {
    pub rootfs: PathBuf,
    pub image: ImageConfig,
    pub net_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// The pod's PID namespace when `shareProcessNamespace` is true.
    pub pid_ns: Option<PathBuf>,
    /// The container's cgroup below the hierarchy root(s), absolute
    /// (`/podagent/pod<uid>/web`), as runc reads `cgroupsPath`.
    pub cgroups_path: Option<PathBuf>,
    /// A private cgroup namespace, so the container sees its own cgroup as
    /// `/` (what containerd and the kubelet give every container on cgroup
    /// v2; on v1 the host's, with the container's own directories bound).
    pub cgroup_namespace: bool,
    /// Host directory of each volume (an emptyDir's directory, a hostPath).
    pub volume_dirs: BTreeMap<String, PathBuf>,
    /// The pod's shared /dev/shm directory; a private tmpfs when `None`.
    pub shm_dir: Option<PathBuf>,
    /// Files bind-mounted into the container: (container path, host path), e.g.
    /// /etc/hosts and /etc/resolv.conf generated for the pod.
    pub files: Vec<(String, PathBuf)>,
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
    /// The profile of a `Localhost` seccomp policy, read by the agent.
    pub localhost_seccomp: Option<LinuxSeccomp>,
    /// The capabilities the runtime itself holds (its bounding set), for a
    /// privileged container: it gets these, as containerd gives it the
    /// capabilities it has, not every one the kernel knows.
    pub node_capabilities: Option<std::collections::BTreeSet<String>>,
    /// `hostUsers: false`: the pod's user namespace (a file the runtime
    /// keeps) and the first host id of its range of 65536.
    pub user_ns: Option<(PathBuf, u32)>,
}

/// Set in the network namespace of a pod with a user namespace (a pod's
/// own sysctls win).
pub const USER_NS_SYSCTLS: [(&str, &str); 2] = [
    ("net.ipv4.ip_unprivileged_port_start", "0"),
    ("net.ipv4.ping_group_range", "0 2147483647"),
];

/// The ids a pod's user namespace maps, as the kubelet's: 0 to 65535.
pub const USER_NS_SIZE: u32 = 65536;

/// Kubernetes' command/args rules against the image's entrypoint and cmd.
pub fn process_args(c: &ContainerPlan, image: &ImageConfig) -> Vec<String> {
    match (&c.command, &c.args) {
        (Some(cmd), Some(args)) => cmd.iter().chain(args).cloned().collect(),
        (Some(cmd), None) => cmd.clone(),
        (None, Some(args)) => image.entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, `$$` is a
/// literal `$`, anything else is left as written.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if vars.contains_key(&inner[..end]) => {
                    out.push_str(&vars[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                Some(end) => {
                    out.push_str(&rest[i..i + 2 + end + 1]);
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment: the image's, then the manifest's (expanded
/// against the entries before it), then HOSTNAME and a default PATH when unset.
pub fn environment(pod: &PodPlan, c: &ContainerPlan, inputs: &OciInputs) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let set =
        |k: String, v: String, order: &mut Vec<String>, values: &mut HashMap<String, String>| {
            if values.insert(k.clone(), v).is_none() {
                order.push(k);
            }
        };
    for kv in &inputs.image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k.to_string(), v.to_string(), &mut order, &mut values);
    }
    let mut defined: HashMap<String, String> = HashMap::new();
    for (k, v) in &c.env {
        let raw = match v {
            EnvValue::Literal(s) => expand(s, &defined),
            EnvValue::PodIp => inputs.pod_ip.clone().unwrap_or_default(),
            EnvValue::HostIp => inputs.host_ip.clone().unwrap_or_default(),
        };
        defined.insert(k.clone(), raw.clone());
        set(k.clone(), raw, &mut order, &mut values);
    }
    if !values.contains_key("HOSTNAME") {
        set(
            "HOSTNAME".into(),
            pod.hostname.clone(),
            &mut order,
            &mut values,
        );
    }
    if !values.contains_key("PATH") {
        set("PATH".into(), DEFAULT_PATH.into(), &mut order, &mut values);
    }
    order
        .into_iter()
        .map(|k| format!("{k}={}", values[&k]))
        .collect()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
}

/// The mounts every container gets, then the pod's files and volumes.
fn mounts(pod: &PodPlan, c: &ContainerPlan, inputs: &OciInputs) -> Result<Vec<Mount>, OciError> {
    let build = |source| OciError::Build {
        container: c.name.to_string(),
        source,
    };
    let sys_mode = if c.security.privileged { "rw" } else { "ro" };
    let mut out = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ]
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .map_err(build)?;
    out.push(
        match &inputs.shm_dir {
            Some(dir) if !pod.host_ipc => MountBuilder::default()
                .destination("/dev/shm")
                .typ("bind")
                .source(dir.clone())
                .options(
                    ["rbind", "rprivate", "nosuid", "nodev", "noexec"]
                        .map(String::from)
                        .to_vec(),
                )
                .build(),
            _ => mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
        }
        .map_err(build)?,
    );
    for (dest, src) in &inputs.files {
        out.push(
            MountBuilder::default()
                .destination(dest.as_str())
                .typ("bind")
                .source(src.clone())
                .options(["rbind", "rprivate"].map(String::from).to_vec())
                .build()
                .map_err(build)?,
        );
    }
    for m in &c.mounts {
        let dir = inputs
            .volume_dirs
            .get(&m.volume)
            .ok_or_else(|| OciError::MissingVolume {
                container: c.name.to_string(),
                volume: m.volume.clone(),
            })?;
        // API data (downwardAPI, projected) is read-only, as the kubelet
        // mounts it: its files are the agent's to swap.
        let files = pod.volumes.iter().any(|v| {
            v.name == m.volume && matches!(v.source, crate::plan::VolumeSource::Files { .. })
        });
        let rw = if m.read_only || files { "ro" } else { "rw" };
        let mut options: Vec<String> = ["rbind", "rprivate", rw].map(String::from).to_vec();
        if pod.user_namespace {
            options.push(IDMAP.to_string());
        }
        let source = match &m.sub_path {
            // The runtime must resolve the subPath beneath the volume (a
            // container may have put a symlink there): `x-` options are for
            // the runtime, not the kernel, as in fstab.
            Some(sub) => {
                options.push(format!("{SUBPATH_BENEATH}{}", dir.display()));
                dir.join(sub)
            }
            None => dir.clone(),
        };
        out.push(
            MountBuilder::default()
                .destination(m.path.as_str())
                .typ("bind")
                .source(source)
                .options(options)
                .build()
                .map_err(build)?,
        );
    }
    Ok(out)
}

/// Mount option naming the volume directory a subPath bind mount's source
/// must resolve beneath (symlinks included): `x-podagent-beneath=<dir>`.
pub const SUBPATH_BENEATH: &str = "x-podagent-beneath=";

/// A volume's bind mount in a pod with a user namespace: made an idmapped
/// mount through the namespace's mapping, so the container's root owns
/// what the node's root owns there.
pub const IDMAP: &str = "x-podagent-idmap";

/// The IO annotation as OCI's `blockIO` (the runtime's own driver writes the
/// same values; this keeps the bundle's meaning whole for runc).
fn block_io(
    io: &crate::io::IoLimits,
) -> Result<oci_spec::runtime::LinuxBlockIo, oci_spec::OciSpecError> {
    use oci_spec::runtime::{LinuxBlockIoBuilder, LinuxThrottleDeviceBuilder};
    let throttles = |pick: fn(&crate::io::IoDevice) -> Option<u64>| {
        io.devices
            .iter()
            .filter_map(|d| {
                pick(d).map(|rate| {
                    LinuxThrottleDeviceBuilder::default()
                        .major(i64::from(d.major))
                        .minor(i64::from(d.minor))
                        .rate(rate)
                        .build()
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let mut b = LinuxBlockIoBuilder::default()
        .throttle_read_bps_device(throttles(|d| d.rbps)?)
        .throttle_write_bps_device(throttles(|d| d.wbps)?)
        .throttle_read_iops_device(throttles(|d| d.riops)?)
        .throttle_write_iops_device(throttles(|d| d.wiops)?);
    if let Some(w) = io.weight {
        b = b.weight(w);
    }
    b.build()
}

/// The device cgroup: deny everything, then allow what /dev holds (null, zero,
/// full, random, urandom, tty, console, ptmx, pts) and mknod of any device.
fn device_rules(
    privileged: bool,
) -> Result<Vec<oci_spec::runtime::LinuxDeviceCgroup>, OciSpecError> {
    if privileged {
        return Ok(vec![LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwm")
            .build()?]);
    }
    let rule = |typ: Option<LinuxDeviceType>,
                major: Option<i64>,
                minor: Option<i64>,
                access: &str,
                allow: bool| {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .access(access);
        if let Some(t) = typ {
            b = b.typ(t);
        }
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build()
    };
    let c = Some(LinuxDeviceType::C);
    [
        rule(None, None, None, "rwm", false),
        rule(c, None, None, "m", true),
        rule(Some(LinuxDeviceType::B), None, None, "m", true),
        rule(c, Some(1), Some(3), "rwm", true), // null
        rule(c, Some(1), Some(5), "rwm", true), // zero
        rule(c, Some(1), Some(7), "rwm", true), // full
        rule(c, Some(1), Some(8), "rwm", true), // random
        rule(c, Some(1), Some(9), "rwm", true), // urandom
        rule(c, Some(5), Some(0), "rwm", true), // tty
        rule(c, Some(5), Some(1), "rwm", true), // console
        rule(c, Some(5), Some(2), "rwm", true), // ptmx
        rule(c, Some(136), None, "rwm", true),  // pts
    ]
    .into_iter()
    .collect()
}

/// Builds the OCI runtime spec of container `c` of `pod`.
pub fn container_spec(
    pod: &PodPlan,
    c: &ContainerPlan,
    inputs: &OciInputs,
) -> Result<Spec, OciError> {
    let name = c.name.to_string();
    let build = |source| OciError::Build {
        container: name.clone(),
        source,
    };
    let args = process_args(c, &inputs.image);
    if args.is_empty() {
        return Err(OciError::NoCommand {
            container: name.clone(),
        });
    }
    let env = environment(pod, c, inputs);
    let vars: HashMap<String, String> = env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| c.env.iter().any(|(n, _)| n == k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // $(VAR) in command and args, as the kubelet expands them.
    let args: Vec<String> = args.iter().map(|a| expand(a, &vars)).collect();
    let sec = &c.security;
    let (image_uid, image_gid) = inputs.image.user.unwrap_or((0, 0));
    // The kubelet's verifyRunAsNonRoot: with no runAsUser the image's user
    // decides; validation already refused runAsUser 0.
    if sec.run_as_non_root && sec.run_as_user.is_none() {
        let written = inputs.image.user_name.as_deref().unwrap_or("");
        let user_part = written.split(':').next().unwrap_or("");
        if !user_part.is_empty() && user_part.parse::<u32>().is_err() {
            return Err(OciError::NonNumericUser {
                container: name.clone(),
                user: written.to_string(),
            });
        }
        if image_uid == 0 {
            return Err(OciError::RunsAsRoot {
                container: name.clone(),
            });
        }
    }
    let uid = sec.run_as_user.unwrap_or(image_uid);
    let gid = sec.run_as_group.unwrap_or(if sec.run_as_user.is_some() {
        0
    } else {
        image_gid
    });
    let mut user = UserBuilder::default().uid(uid).gid(gid);
    if !sec.supplemental_groups.is_empty() {
        user = user.additional_gids(sec.supplemental_groups.clone());
    }
    let caps = sec
        .capabilities
        .iter()
        .filter(|n| {
            !sec.privileged
                || inputs
                    .node_capabilities
                    .as_ref()
                    .is_none_or(|held| held.contains(n.as_str()))
        })
        .map(|n| {
            Capability::from_str(n).map_err(|_| OciError::Capability {
                container: name.clone(),
                name: n.clone(),
            })
        })
        .collect::<Result<std::collections::HashSet<_>, _>>()?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(std::collections::HashSet::new())
        .ambient(std::collections::HashSet::new())
        .build()
        .map_err(build)?;
    let cwd = c
        .working_dir
        .clone()
        .or_else(|| {
            inputs
                .image
                .working_dir
                .clone()
                .filter(|w| w.starts_with('/'))
        })
        .unwrap_or_else(|| "/".into());
    let process = ProcessBuilder::default()
        .terminal(c.tty)
        .user(user.build().map_err(build)?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(NOFILE.0)
            .hard(NOFILE.1)
            .build()
            .map_err(build)?])
        .no_new_privileges(sec.no_new_privs)
        .oom_score_adj(c.resources.oom_score_adj)
        .build()
        .map_err(build)?;

    let mut namespaces = vec![LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::Mount)
        .build()
        .map_err(build)?];
    let mut ns =
        |typ: LinuxNamespaceType, host: bool, path: &Option<PathBuf>| -> Result<(), OciError> {
            if host {
                return Ok(());
            }
            let mut b = LinuxNamespaceBuilder::default().typ(typ);
            if let Some(p) = path {
                b = b.path(p.clone());
            }
            namespaces.push(b.build().map_err(build)?);
            Ok(())
        };
    ns(
        LinuxNamespaceType::Network,
        pod.host_network,
        &inputs.net_ns,
    )?;
    ns(LinuxNamespaceType::Ipc, pod.host_ipc, &inputs.ipc_ns)?;
    ns(LinuxNamespaceType::Uts, pod.host_network, &inputs.uts_ns)?;
    let shared_pid = if pod.share_process_namespace {
        inputs.pid_ns.clone()
    } else {
        None
    };
    ns(LinuxNamespaceType::Pid, pod.host_pid, &shared_pid)?;
    ns(LinuxNamespaceType::Cgroup, !inputs.cgroup_namespace, &None)?;
    let user_ns = if pod.user_namespace {
        let (path, base) = inputs
            .user_ns
            .clone()
            .ok_or_else(|| OciError::NoUserNamespace {
                container: name.clone(),
            })?;
        ns(LinuxNamespaceType::User, false, &Some(path))?;
        Some(base)
    } else {
        None
    };

    let r = &c.resources;
    let mut cpu = LinuxCpuBuilder::default()
        .shares(r.cpu_shares)
        .period(r.cfs_period_us);
    if let Some(q) = r.cfs_quota_us {
        cpu = cpu.quota(q as i64);
    }
    if let Some(set) = &r.cpuset {
        cpu = cpu.cpus(set.to_string());
    }
    let mut memory = LinuxMemoryBuilder::default();
    if let Some(limit) = r.memory_limit_bytes {
        memory = memory.limit(limit as i64);
        // OCI's swap is memory + swap; without the annotation, no swap.
        memory = memory.swap(limit.saturating_add(r.swap_limit_bytes.unwrap_or(0)) as i64);
    }
    if r.oom_kill_disable {
        memory = memory.disable_oom_killer(true);
    }
    let mut resources = LinuxResourcesBuilder::default();
    if !r.io.is_empty() {
        resources = resources.block_io(block_io(&r.io).map_err(build)?);
    }
    let resources = resources
        .cpu(cpu.build().map_err(build)?)
        .memory(memory.build().map_err(build)?)
        .pids(
            LinuxPidsBuilder::default()
                .limit(pod.pod_resources.pids_limit)
                .build()
                .map_err(build)?,
        )
        .devices(device_rules(sec.privileged).map_err(build)?)
        .build()
        .map_err(build)?;

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources);
    if let Some(base) = user_ns {
        let map = |id: u32| {
            oci_spec::runtime::LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(id)
                .size(USER_NS_SIZE)
                .build()
        };
        linux = linux
            .uid_mappings(vec![map(base).map_err(build)?])
            .gid_mappings(vec![map(base).map_err(build)?]);
    }
    if let Some(p) = &inputs.cgroups_path {
        linux = linux.cgroups_path(p.clone());
    }
    linux = linux
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec());
    let mut sysctls: HashMap<String, String> = HashMap::new();
    if pod.user_namespace && !pod.host_network {
        // The pod's network namespace is the node root's: its root would
        // otherwise bind no port below 1024 and ping nothing. containerd
        // (2.0) opens both for every pod the same way.
        for (k, v) in USER_NS_SYSCTLS {
            sysctls.insert(k.to_string(), v.to_string());
        }
    }
    sysctls.extend(pod.sysctls.iter().cloned());
    if !sysctls.is_empty() {
        linux = linux.sysctl(sysctls);
    }
    match &sec.seccomp {
        SeccompPolicy::RuntimeDefault => {
            linux = linux.seccomp(seccomp::default_profile(&sec.capabilities).map_err(build)?);
        }
        SeccompPolicy::Unconfined => {}
        SeccompPolicy::Localhost(profile) => {
            let p = inputs.localhost_seccomp.clone().ok_or_else(|| {
                OciError::MissingSeccompProfile {
                    container: name.clone(),
                    profile: profile.clone(),
                }
            })?;
            linux = linux.seccomp(p);
        }
    }

    // The builders start from oci-spec's `Default`s (youki's hostname, default
    // masked paths, annotations): set every field this function decides.
    let mut linux = linux.build().map_err(build)?;
    if sec.privileged || sec.unmasked_proc {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    }
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(inputs.rootfs.clone())
                .readonly(sec.read_only_root_filesystem)
                .build()
                .map_err(build)?,
        )
        .mounts(mounts(pod, c, inputs)?)
        .process(process)
        .linux(linux)
        .build()
        .map_err(build)?;
    spec.set_hostname((!pod.host_network).then(|| pod.hostname.clone()));
    spec.set_annotations(None);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::NodeInfo;

    fn pod(yaml: &str) -> PodPlan {
        let r = crate::load("t.yaml", yaml.as_bytes(), &NodeInfo::default());
        assert!(!r.has_errors(), "{:#?}", r.diagnostics);
        r.pods.into_iter().next().unwrap()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["--default".into()],
            env: vec!["PATH=/image/bin".into(), "MODE=image".into()],
            working_dir: Some("/srv".into()),
            user: Some((100, 101)),
            user_name: Some("100:101".into()),
        }
    }

    #[test]
    fn run_as_non_root_is_checked_against_the_images_user_as_the_kubelet_does() {
        let p = pod("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  securityContext: {runAsNonRoot: true}\n  containers:\n  - {name: c, image: busybox, command: [sh]}\n");
        let with_user = |user: Option<(u32, u32)>, name: Option<&str>| OciInputs {
            image: ImageConfig {
                user,
                user_name: name.map(str::to_string),
                ..image()
            },
            ..OciInputs::default()
        };
        let e = container_spec(&p, &p.containers[0], &with_user(None, None)).unwrap_err();
        assert!(matches!(e, OciError::RunsAsRoot { .. }), "{e}");
        let e =
            container_spec(&p, &p.containers[0], &with_user(Some((0, 0)), Some("0"))).unwrap_err();
        assert!(matches!(e, OciError::RunsAsRoot { .. }), "{e}");
        let e = container_spec(
            &p,
            &p.containers[0],
            &with_user(Some((101, 101)), Some("nginx")),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "container c: container has runAsNonRoot and image has non-numeric user (nginx), cannot verify user is non-root"
        );
        assert!(container_spec(
            &p,
            &p.containers[0],
            &with_user(Some((100, 101)), Some("100:101"))
        )
        .is_ok());
        // runAsUser decides when given.
        let q = pod("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  securityContext: {runAsNonRoot: true, runAsUser: 1000}\n  containers:\n  - {name: c, image: busybox, command: [sh]}\n");
        assert!(container_spec(&q, &q.containers[0], &with_user(None, None)).is_ok());
    }

    fn container(fields: &str) -> ContainerPlan {
        pod(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n{fields}"))
            .containers
            .remove(0)
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let img = image();
        assert_eq!(process_args(&container(""), &img), ["/entry", "--default"]);
        assert_eq!(
            process_args(&container("    command: [run]\n"), &img),
            ["run"]
        );
        assert_eq!(
            process_args(&container("    args: [--x]\n"), &img),
            ["/entry", "--x"]
        );
        assert_eq!(
            process_args(&container("    command: [run]\n    args: [--x]\n"), &img),
            ["run", "--x"]
        );
    }

    #[test]
    fn dollar_references_expand_like_the_kubelet() {
        let vars: HashMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$-$(A", &vars), "1-$(B)-$(A)-$-$(A");
        assert_eq!(expand("plain", &vars), "plain");
    }

    #[test]
    fn environment_layers_image_then_manifest_then_defaults() {
        let p = pod("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  hostname: box\n  containers:\n  - name: c\n    image: busybox\n    env:\n    - {name: MODE, value: pod}\n    - {name: DERIVED, value: '$(MODE)-x'}\n    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n");
        let inputs = OciInputs {
            image: image(),
            pod_ip: Some("10.88.0.5".into()),
            ..OciInputs::default()
        };
        let env = environment(&p, &p.containers[0], &inputs);
        assert_eq!(
            env,
            [
                "PATH=/image/bin",
                "MODE=pod",
                "DERIVED=pod-x",
                "IP=10.88.0.5",
                "HOSTNAME=box"
            ]
        );
    }

    #[test]
    fn the_spec_carries_limits_namespaces_and_hardening() {
        let p = pod("apiVersion: v1
kind: Pod
metadata: {name: p, annotations: {cpuset.podagent.io/c: '1'}}
spec:
  shareProcessNamespace: true
  volumes: [{name: data, emptyDir: {}}]
  containers:
  - name: c
    image: busybox
    command: [sh, -c, 'echo $(GREETING)']
    env: [{name: GREETING, value: hi}]
    volumeMounts: [{name: data, mountPath: /data, subPath: x, readOnly: true}]
    resources: {limits: {cpu: 200m, memory: 32Mi}}
");
        let inputs = OciInputs {
            rootfs: "/r".into(),
            image: image(),
            net_ns: Some("/run/netns/p".into()),
            pid_ns: Some("/run/pidns/p".into()),
            volume_dirs: [("data".to_string(), PathBuf::from("/vol/data"))].into(),
            ..OciInputs::default()
        };
        let spec = container_spec(&p, &p.containers[0], &inputs).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json["process"]["args"],
            serde_json::json!(["sh", "-c", "echo hi"])
        );
        assert_eq!(json["process"]["user"]["uid"], 100, "the image's user");
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["process"]["oomScoreAdj"], -997);
        assert_eq!(json["process"]["cwd"], "/srv");
        assert_eq!(json["hostname"], "p");
        let r = &json["linux"]["resources"];
        assert_eq!(r["cpu"]["quota"], 20_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["cpu"]["shares"], 204);
        assert_eq!(r["cpu"]["cpus"], "1");
        assert_eq!(r["memory"]["limit"], 32 << 20);
        assert_eq!(
            r["memory"]["swap"],
            32 << 20,
            "no swap without the annotation"
        );
        assert_eq!(r["pids"]["limit"], 4096);
        assert_eq!(
            r["devices"][0],
            serde_json::json!({"allow": false, "access": "rwm"})
        );
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&serde_json::json!({"type": "network", "path": "/run/netns/p"})));
        assert!(ns.contains(&serde_json::json!({"type": "pid", "path": "/run/pidns/p"})));
        assert!(ns.contains(&serde_json::json!({"type": "mount"})));
        assert!(ns.contains(&serde_json::json!({"type": "ipc"})));
        let mounts = json["mounts"].as_array().unwrap();
        let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
        assert_eq!(data["source"], "/vol/data/x");
        assert_eq!(
            data["options"],
            serde_json::json!(["rbind", "rprivate", "ro", "x-podagent-beneath=/vol/data"]),
            "the subPath is resolved beneath its volume"
        );
        let sys = mounts.iter().find(|m| m["destination"] == "/sys").unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&"ro".into()));
        assert!(json["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&"/proc/kcore".into()));
        assert!(json["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .contains(&"/proc/sys".into()));
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    }

    #[test]
    fn host_namespaces_are_left_out_and_a_missing_command_is_an_error() {
        let p = pod("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  hostNetwork: true\n  hostIPC: true\n  containers: [{name: c, image: busybox}]\n");
        let err = container_spec(&p, &p.containers[0], &OciInputs::default()).unwrap_err();
        assert!(matches!(err, OciError::NoCommand { .. }));
        let inputs = OciInputs {
            image: image(),
            ..OciInputs::default()
        };
        let json =
            serde_json::to_value(container_spec(&p, &p.containers[0], &inputs).unwrap()).unwrap();
        let types: Vec<_> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].clone())
            .collect();
        assert_eq!(types, ["mount", "pid"]);
        assert!(json.get("hostname").is_none());
    }
}
