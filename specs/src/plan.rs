//! The resolved pod: every number computed, every name validated. Built only by
//! `resolve`, never deserialized from a manifest. Serialize exists for the
//! content hash and for `podctl validate -o json`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cpuset::CpuSet;
use crate::names::{ContainerName, PodName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// Kubernetes' QoS classes; they set the oom_score_adj of the pod's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodPlan {
    pub name: PodName,
    pub namespace: String,
    /// `metadata.uid` when given, else derived from the namespace and name so
    /// that it is stable across edits of the file.
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub hostname: String,
    pub host_network: bool,
    pub host_ipc: bool,
    pub host_pid: bool,
    pub share_process_namespace: bool,
    pub restart_policy: RestartPolicy,
    pub termination_grace_period_secs: u64,
    pub active_deadline_secs: Option<u64>,
    pub qos_class: QosClass,
    pub dns: DnsPlan,
    pub host_aliases: Vec<(String, Vec<String>)>,
    pub sysctls: Vec<(String, String)>,
    pub fs_group: Option<u32>,
    /// `fsGroupChangePolicy: OnRootMismatch`: a volume whose root already
    /// has the group and mode is not walked. (Not serialised when false:
    /// the hashes of pods without it stay as they were.)
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fs_group_on_root_mismatch: bool,
    /// `hostUsers: false`: a user namespace of its own, mapping its ids 0
    /// to 65535 onto a range of the node's (not serialised when false).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub user_namespace: bool,
    pub supplemental_groups: Vec<u32>,
    pub volumes: Vec<VolumePlan>,
    pub init_containers: Vec<ContainerPlan>,
    pub containers: Vec<ContainerPlan>,
    /// The pod-level cgroup: what the kubelet's pod cgroup holds.
    pub pod_resources: PodResources,
    /// Hex SHA-256 of everything above; equal plans have equal hashes.
    pub hash: String,
}

impl PodPlan {
    /// Init containers, then app containers.
    pub fn all_containers(&self) -> impl Iterator<Item = &ContainerPlan> {
        self.init_containers.iter().chain(self.containers.iter())
    }

    /// The native sidecars: init containers with `restartPolicy: Always`.
    pub fn sidecars(&self) -> impl Iterator<Item = &ContainerPlan> {
        self.init_containers.iter().filter(|c| c.sidecar)
    }

    /// Whether `name` is one of its native sidecars.
    pub fn is_sidecar(&self, name: &str) -> bool {
        self.sidecars().any(|c| c.name.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DnsPolicy {
    /// ClusterFirst and ClusterFirstWithHostNet: without cluster DNS on a
    /// single node, both use the node's resolv.conf.
    ClusterFirst,
    Default,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsPlan {
    pub policy: DnsPolicy,
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodResources {
    pub cpu_shares: u64,
    /// `None`: some container has no cpu limit, so the pod has none either.
    pub cfs_quota_us: Option<u64>,
    pub cfs_period_us: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids_limit: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum VolumeSource {
    EmptyDir {
        memory: bool,
        size_limit_bytes: Option<u64>,
    },
    HostPath {
        path: String,
        kind: HostPathType,
    },
    /// `downwardAPI` and `projected`: files the agent writes, swapped in
    /// as one set (the kubelet's `..data` symlink) when they change.
    Files {
        files: Vec<FilePlan>,
    },
}

/// One file of a `Files` volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilePlan {
    /// Relative to the volume, no `..`.
    pub path: String,
    pub content: String,
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HostPathType {
    /// `""`: no check.
    Unset,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumePlan {
    pub name: String,
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountPlan {
    pub volume: String,
    pub path: String,
    pub sub_path: Option<String>,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortPlan {
    pub name: Option<String>,
    pub container_port: u16,
    pub host_port: Option<u16>,
    /// The one node address (IPv4) the host port is published on; none
    /// (`hostIP` absent, `0.0.0.0` or `::`): every address.
    pub host_ip: Option<String>,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum EnvValue {
    /// Known when the pod is resolved (literals, metadata, resources).
    Literal(String),
    /// `status.podIP` / `status.podIPs`: known once the sandbox has its address.
    PodIp,
    /// `status.hostIP` / `status.hostIPs`.
    HostIp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerResources {
    pub cpu_request_milli: u64,
    pub cpu_limit_milli: Option<u64>,
    /// cgroup v1 `cpu.shares`.
    pub cpu_shares: u64,
    /// cgroup v2 `cpu.weight`, converted from the shares as runc does.
    pub cpu_weight: u64,
    pub cfs_period_us: u64,
    /// `None`: no limit (`cpu.max` "max").
    pub cfs_quota_us: Option<u64>,
    pub memory_request_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    /// Swap allowed beyond the memory limit (annotation), in bytes.
    pub swap_limit_bytes: Option<u64>,
    pub cpuset: Option<CpuSet>,
    pub oom_score_adj: i32,
    pub oom_kill_disable: bool,
    pub ephemeral_storage_limit_bytes: Option<u64>,
    /// Block IO throttles and weight (annotation); empty: none.
    pub io: crate::io::IoLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SeccompPolicy {
    RuntimeDefault,
    Unconfined,
    /// A profile file, relative to the agent's seccomp profile directory.
    Localhost(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityPlan {
    /// `None`: the image's user.
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_non_root: bool,
    pub supplemental_groups: Vec<u32>,
    /// The effective capability set, Kubernetes spelling without `CAP_`.
    pub capabilities: Vec<String>,
    pub no_new_privs: bool,
    pub privileged: bool,
    pub read_only_root_filesystem: bool,
    pub seccomp: SeccompPolicy,
    pub unmasked_proc: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ProbeAction {
    Exec {
        command: Vec<String>,
    },
    HttpGet {
        path: String,
        port: u16,
        host: Option<String>,
        https: bool,
        headers: Vec<(String, String)>,
    },
    TcpSocket {
        port: u16,
        host: Option<String>,
    },
    Grpc {
        port: u16,
        service: Option<String>,
    },
}

/// What a lifecycle hook does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HookAction {
    /// `exec` or `httpGet`, made as a probe's attempt is.
    Run(ProbeAction),
    /// `sleep`: the hook waits, in the agent.
    Sleep { seconds: u64 },
}

/// `lifecycle`: the hooks and the stop signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LifecyclePlan {
    pub post_start: Option<HookAction>,
    pub pre_stop: Option<HookAction>,
    /// `lifecycle.stopSignal` (`SIGTERM` when none): the signal's name.
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbePlan {
    pub action: ProbeAction,
    pub initial_delay_secs: u32,
    pub period_secs: u32,
    pub timeout_secs: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerPlan {
    pub name: ContainerName,
    pub image: String,
    pub pull_policy: PullPolicy,
    /// As written; merged with the image's entrypoint and cmd at start.
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub env: Vec<(String, EnvValue)>,
    pub ports: Vec<PortPlan>,
    pub mounts: Vec<MountPlan>,
    pub resources: ContainerResources,
    pub security: SecurityPlan,
    pub liveness: Option<ProbePlan>,
    pub readiness: Option<ProbePlan>,
    pub startup: Option<ProbePlan>,
    pub tty: bool,
    pub stdin: bool,
    pub termination_message_path: String,
    /// `terminationMessagePolicy: FallbackToLogsOnError`: an empty message
    /// file of a failed run is replaced by the end of its log. (Not
    /// serialised when false, so the hashes of containers without it stay
    /// as they were.)
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub termination_message_from_logs: bool,
    /// Its hooks and stop signal; none when it has neither (not serialised
    /// then, so the hashes of containers without them stay as they were).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecyclePlan>,
    /// An init container with `restartPolicy: Always` (a native sidecar):
    /// it runs beside the app containers for the pod's life. (Not
    /// serialised when false.)
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sidecar: bool,
    /// Hex SHA-256 of this container's plan: a change restarts only it.
    pub hash: String,
}
