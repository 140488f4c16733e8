//! Validation and resolution in one pass: a typed manifest becomes a
//! [`PodPlan`], or the issues that stop it. Every problem is collected; none
//! stops the others from being found.

mod annotations;
mod cluster;
mod container;
pub mod paths;
pub mod resources;
pub mod security;
mod volumes;

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::cpuset::CpuSet;
use crate::diag::{push_index, push_key, Issues};
use crate::hash::sha256_hex;
use crate::manifest::{Document, PodSpec};
use crate::names::{self, PodName};
use crate::plan::{
    ContainerPlan, ContainerResources, DnsPlan, DnsPolicy, EnvValue, PodPlan, PodResources,
    RestartPolicy,
};

pub use annotations::{CPUSET, OOM_KILL_DISABLE, OOM_SCORE_ADJ, PIDS_LIMIT, SWAP};
use container::{EnvSpec, PartialContainer, PodScope, RawResources};
use resources::{
    cfs_quota_us, cpu_shares, cpu_weight, oom_score_adj, qos_class, QosInput, CFS_PERIOD_US,
};

/// What resolution needs to know about the node and the agent's policy. Read by
/// the caller; this crate does no I/O.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node_name: String,
    /// Total memory (`MemTotal`), for the Burstable oom_score_adj.
    pub memory_bytes: u64,
    /// Online CPUs, to check cpuset annotations; `None` when unknown.
    pub cpus: Option<CpuSet>,
    /// Pids limit of a pod that does not set `podagent.io/pids-limit`.
    pub default_pids_limit: i64,
    /// `--allow-privileged`: permit `privileged: true` and `procMount: Unmasked`.
    pub allow_privileged: bool,
    /// `--allow-unsafe-sysctls`: permit namespaced sysctls outside the safe list.
    pub allow_unsafe_sysctls: bool,
    /// Relative paths of the profiles in the agent's seccomp profile directory.
    pub seccomp_profiles: BTreeSet<String>,
    /// Finds the block devices the IO annotation names.
    pub block_devices: crate::io::BlockDevices,
    /// Unknown fields are warnings (`--warn-unknown-fields`), not errors
    /// as with kubectl apply's strict field validation.
    pub warn_unknown_fields: bool,
}

impl Default for NodeInfo {
    fn default() -> Self {
        NodeInfo {
            node_name: "localhost".into(),
            memory_bytes: 16 << 30,
            cpus: None,
            default_pids_limit: 4096,
            allow_privileged: false,
            allow_unsafe_sysctls: false,
            seccomp_profiles: BTreeSet::new(),
            block_devices: crate::io::BlockDevices::default(),
            warn_unknown_fields: false,
        }
    }
}

/// Fields a cluster uses that mean nothing on one node: accepted, noted.
const CLUSTER_ONLY: &str = "ignored: a cluster-only field with no meaning on a single node";

/// Resolves one pod document found at `prefix` (empty, or `items[i]`).
pub fn resolve_pod(
    prefix: &str,
    doc: &Document,
    node: &NodeInfo,
    issues: &mut Issues,
) -> Option<PodPlan> {
    let k = |key: &str| push_key(prefix, key);
    match doc.api_version.as_deref() {
        Some("v1") => {}
        Some(v) => issues.error(
            k("apiVersion"),
            format!("{v:?} is not supported: a Pod has apiVersion \"v1\""),
        ),
        None => issues.error(k("apiVersion"), "required: \"v1\""),
    }
    match doc.kind.as_deref() {
        Some("Pod") => {}
        // Other kinds are refused by the loader before they are typed.
        Some(kind) => {
            issues.error(
                k("kind"),
                format!("{kind:?} is not supported: podagent runs kind \"Pod\""),
            );
            return None;
        }
        None => issues.error(k("kind"), "required: \"Pod\""),
    }
    if doc.items.is_some() {
        issues.unknown_field(k("items"), node.warn_unknown_fields);
    }
    if doc.status.is_some() {
        issues.note(
            k("status"),
            "ignored: status is reported by the agent, not read from the file",
        );
    }
    let mp = k("metadata");
    let default_meta = Default::default();
    let meta = doc.metadata.as_ref().unwrap_or_else(|| {
        issues.error(mp.clone(), "required (with a name)");
        &default_meta
    });
    let name = match (&meta.name, &meta.generate_name) {
        (Some(n), _) => PodName::new(n)
            .map_err(|e| issues.error(push_key(&mp, "name"), format!("{n:?} {e}")))
            .ok(),
        (None, Some(_)) => {
            issues.error(
                push_key(&mp, "generateName"),
                "generateName needs an API server: set metadata.name",
            );
            None
        }
        (None, None) => {
            issues.error(push_key(&mp, "name"), "required");
            None
        }
    };
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    if let Err(e) = names::dns1123_label(&namespace) {
        issues.error(push_key(&mp, "namespace"), format!("{namespace:?} {e}"));
    }
    if let Some(uid) = &meta.uid {
        if uid.is_empty()
            || uid.len() > 128
            || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            issues.error(
                push_key(&mp, "uid"),
                format!("{uid:?} must be 1 to 128 letters, digits and '-'"),
            );
        }
    }
    for (key, value) in &meta.labels {
        let p = push_key(&push_key(&mp, "labels"), key);
        if let Err(e) = names::qualified_key(key) {
            issues.error(p.clone(), format!("key {key:?}: {e}"));
        }
        if let Err(e) = names::label_value(value) {
            issues.error(p, format!("value {value:?}: {e}"));
        }
    }
    let mut annotations_size = 0;
    for (key, value) in &meta.annotations {
        annotations_size += key.len() + value.len();
        if let Err(e) = names::qualified_key(key) {
            issues.error(
                push_key(&push_key(&mp, "annotations"), key),
                format!("key {key:?}: {e}"),
            );
        }
    }
    if annotations_size > 256 * 1024 {
        issues.error(
            push_key(&mp, "annotations"),
            format!("total size {annotations_size} bytes exceeds 262144"),
        );
    }
    for (field, set) in [
        ("resourceVersion", meta.resource_version.is_some()),
        ("generation", meta.generation.is_some()),
        ("creationTimestamp", meta.creation_timestamp.is_some()),
        ("deletionTimestamp", meta.deletion_timestamp.is_some()),
        (
            "deletionGracePeriodSeconds",
            meta.deletion_grace_period_seconds.is_some(),
        ),
        ("selfLink", meta.self_link.is_some()),
        ("managedFields", meta.managed_fields.is_some()),
        ("ownerReferences", meta.owner_references.is_some()),
        ("finalizers", meta.finalizers.is_some()),
    ] {
        if set {
            issues.note(
                push_key(&mp, field),
                "ignored: set by an API server, not read from the file",
            );
        }
    }
    let sp = k("spec");
    let Some(spec) = &doc.spec else {
        issues.error(sp, "required (with at least one container)");
        return None;
    };
    resolve_spec(&sp, spec, name, namespace, meta, node, issues)
}

#[allow(clippy::too_many_arguments)]
fn resolve_spec<'a>(
    sp: &str,
    spec: &'a PodSpec,
    name: Option<PodName>,
    namespace: String,
    meta: &crate::manifest::ObjectMeta,
    node: &NodeInfo,
    issues: &mut Issues,
) -> Option<PodPlan> {
    let k = |key: &str| push_key(sp, key);
    notes_and_unsupported(sp, spec, issues);
    cluster::validate(sp, spec, issues);
    let restart_policy = match spec.restart_policy.as_deref() {
        None | Some("Always") => RestartPolicy::Always,
        Some("OnFailure") => RestartPolicy::OnFailure,
        Some("Never") => RestartPolicy::Never,
        Some(p) => {
            issues.error(
                k("restartPolicy"),
                format!("{p:?} is not one of \"Always\", \"OnFailure\", \"Never\""),
            );
            RestartPolicy::Always
        }
    };
    let grace = match spec.termination_grace_period_seconds {
        None => 30,
        Some(n) if n >= 0 => n as u64,
        // The API server's defaulting: a negative grace period is 1.
        Some(n) => {
            issues.warn(
                k("terminationGracePeriodSeconds"),
                format!("{n} is negative: 1 second, as the API server sets it"),
            );
            1
        }
    };
    let hostname = match &spec.hostname {
        Some(h) => {
            if let Err(e) = names::dns1123_label(h) {
                issues.error(k("hostname"), format!("{h:?} {e}"));
            }
            h.clone()
        }
        // Kubernetes truncates a long pod name to 63 characters for the hostname.
        None => name
            .as_ref()
            .map_or("", |n| n.as_str())
            .chars()
            .take(63)
            .collect::<String>()
            .trim_end_matches(['-', '.'])
            .to_string(),
    };
    let host_network = spec.host_network.unwrap_or(false);
    let host_pid = spec.host_pid.unwrap_or(false);
    let share_pid = spec.share_process_namespace.unwrap_or(false);
    if host_pid && share_pid {
        issues.error(
            k("shareProcessNamespace"),
            "may not be true together with hostPID",
        );
    }
    let pod_sec = security::pod_security(
        &k("securityContext"),
        spec.security_context.as_ref(),
        host_network,
        node,
        issues,
    );
    let dns = dns(sp, spec, issues);
    let mut host_aliases = Vec::new();
    for (i, a) in spec.host_aliases.iter().enumerate() {
        let p = push_index(&k("hostAliases"), i);
        let ip = a.ip.clone().unwrap_or_default();
        if ip.parse::<std::net::IpAddr>().is_err() {
            issues.error(push_key(&p, "ip"), format!("{ip:?} is not an IP address"));
        }
        for (j, h) in a.hostnames.iter().enumerate() {
            if let Err(e) = names::dns1123_subdomain(h) {
                issues.error(
                    push_index(&push_key(&p, "hostnames"), j),
                    format!("{h:?} {e}"),
                );
            }
        }
        host_aliases.push((ip, a.hostnames.clone()));
    }

    // Every declared name, valid source or not: a volume with a bad source is
    // reported once, not again at each mount that names it.
    let volume_names: HashSet<String> =
        spec.volumes.iter().filter_map(|v| v.name.clone()).collect();
    if spec.containers.is_empty() {
        issues.error(k("containers"), "at least one container is required");
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    type Resolved<'c> = Vec<(String, &'c crate::manifest::Container, PartialContainer)>;
    let mut resolved = |field: &str,
                        list: &'a [crate::manifest::Container],
                        init: bool,
                        issues: &mut Issues|
     -> Resolved<'a> {
        let scope = PodScope {
            volumes: &volume_names,
            init,
            grace_secs: grace,
            os_set: spec.os.is_some(),
        };
        let mut out = Vec::new();
        for (i, c) in list.iter().enumerate() {
            let p = push_index(&k(field), i);
            if let Some(n) = &c.name {
                if let Some(first) = seen.insert(n.clone(), p.clone()) {
                    issues.error(push_key(&p, "name"), format!("{n:?} is already the name of {first}: container names are unique across init and app containers"));
                }
            }
            if let Some(pc) = container::resolve_container(&p, c, &scope, issues) {
                out.push((p, c, pc));
            }
        }
        out
    };
    let init = resolved("initContainers", &spec.init_containers, true, issues);
    let apps = resolved("containers", &spec.containers, false, issues);
    let names_set: HashSet<String> = seen.keys().cloned().collect();
    let overrides = annotations::overrides(&meta.annotations, &names_set, node, issues);
    check_host_ports(&apps, &init, host_network, issues);

    let qos = qos_class(
        &init
            .iter()
            .chain(apps.iter())
            .map(|(_, _, pc)| qos_input(&pc.resources))
            .collect::<Vec<_>>(),
    );
    let pids_limit = overrides.pids_limit.unwrap_or(node.default_pids_limit);
    let all_resources: HashMap<String, RawResources> = init
        .iter()
        .chain(apps.iter())
        .map(|(_, _, pc)| (pc.name.to_string(), pc.resources))
        .collect();
    let pod_name = name.as_ref().map_or("", |n| n.as_str());
    let meta_ctx = MetaCtx {
        name: pod_name,
        namespace: &namespace,
        meta,
        node,
        resources: &all_resources,
    };
    let finish = |list: Vec<(String, &crate::manifest::Container, PartialContainer)>,
                  issues: &mut Issues| {
        list.into_iter()
            .map(|(p, c, pc)| {
                let security = security::container_security(
                    &push_key(&p, "securityContext"),
                    c.security_context.as_ref(),
                    &pod_sec,
                    node,
                    issues,
                );
                let o = overrides
                    .containers
                    .get(pc.name.as_str())
                    .cloned()
                    .unwrap_or_default();
                let r = pc.resources;
                if o.swap_bytes.is_some() && r.memory_limit.is_none() {
                    issues.error(
                        push_key("metadata.annotations", &format!("{SWAP}/{}", pc.name)),
                        "a swap limit needs a memory limit on the container",
                    );
                }
                let shares = cpu_shares(r.cpu_request.unwrap_or(0));
                let resources = ContainerResources {
                    cpu_request_milli: r.cpu_request.unwrap_or(0),
                    cpu_limit_milli: r.cpu_limit,
                    cpu_shares: shares,
                    cpu_weight: cpu_weight(shares),
                    cfs_period_us: CFS_PERIOD_US,
                    cfs_quota_us: cfs_quota_us(r.cpu_limit, CFS_PERIOD_US),
                    memory_request_bytes: r.memory_request.unwrap_or(0),
                    memory_limit_bytes: r.memory_limit,
                    swap_limit_bytes: o.swap_bytes,
                    cpuset: o.cpuset,
                    oom_score_adj: o.oom_score_adj.unwrap_or_else(|| {
                        oom_score_adj(qos, r.memory_request.unwrap_or(0), node.memory_bytes)
                    }),
                    oom_kill_disable: o.oom_kill_disable,
                    ephemeral_storage_limit_bytes: r.ephemeral_limit,
                    io: o.io,
                };
                let env = pc
                    .env
                    .iter()
                    .filter_map(|(n, s)| {
                        let at = push_key(&p, "env");
                        Some((
                            n.clone(),
                            meta_ctx.env_value(pc.name.as_str(), s, &at, issues)?,
                        ))
                    })
                    .collect();
                let mut plan = ContainerPlan {
                    name: pc.name,
                    image: pc.image,
                    pull_policy: pc.pull_policy,
                    command: pc.command,
                    args: pc.args,
                    working_dir: pc.working_dir,
                    env,
                    ports: pc.ports,
                    mounts: pc.mounts,
                    resources,
                    security,
                    liveness: pc.liveness,
                    readiness: pc.readiness,
                    startup: pc.startup,
                    tty: pc.tty,
                    stdin: pc.stdin,
                    termination_message_path: pc.termination_message_path,
                    termination_message_from_logs: pc.termination_message_from_logs,
                    lifecycle: pc.lifecycle,
                    sidecar: pc.sidecar,
                    hash: String::new(),
                };
                plan.hash = container_hash(&plan);
                plan
            })
            .collect::<Vec<_>>()
    };
    let init_containers = finish(init, issues);
    let containers = finish(apps, issues);
    // Volumes after the containers: a downward API file may show their
    // resources.
    let content = |s: &EnvSpec, path: &str, issues: &mut Issues| -> Option<String> {
        match s {
            EnvSpec::Field(f) if f == "metadata.labels" => Some(format_map(&meta.labels)),
            EnvSpec::Field(f) if f == "metadata.annotations" => Some(format_map(&meta.annotations)),
            _ => match meta_ctx.env_value("", s, path, issues)? {
                EnvValue::Literal(v) => Some(v),
                EnvValue::PodIp | EnvValue::HostIp => None,
            },
        }
    };
    let volumes = volumes::volumes(&k("volumes"), &spec.volumes, &content, issues);
    let name = name?;
    if issues.has_errors() {
        return None;
    }
    let privileged = init_containers
        .iter()
        .chain(&containers)
        .any(|c| c.security.privileged);
    let user_namespace = user_namespace(sp, spec, privileged, issues);
    if issues.has_errors() {
        return None;
    }
    let pod_resources = pod_resources(&init_containers, &containers, pids_limit);
    let uid = meta
        .uid
        .clone()
        .unwrap_or_else(|| derived_uid(&namespace, name.as_str()));
    let mut plan = PodPlan {
        name,
        namespace,
        uid,
        labels: meta.labels.clone(),
        annotations: meta.annotations.clone(),
        hostname,
        host_network,
        host_ipc: spec.host_ipc.unwrap_or(false),
        host_pid,
        share_process_namespace: share_pid,
        restart_policy,
        termination_grace_period_secs: grace,
        active_deadline_secs: active_deadline(sp, spec, issues),
        qos_class: qos,
        dns,
        host_aliases,
        sysctls: pod_sec.sysctls,
        fs_group: pod_sec.fs_group,
        fs_group_on_root_mismatch: pod_sec.fs_group_on_root_mismatch,
        user_namespace,
        supplemental_groups: pod_sec.supplemental_groups,
        volumes,
        init_containers,
        containers,
        pod_resources,
        hash: String::new(),
    };
    plan.hash = pod_hash(&plan);
    Some(plan)
}

fn qos_input(r: &RawResources) -> QosInput {
    QosInput {
        cpu_request: r.cpu_request,
        cpu_limit: r.cpu_limit,
        memory_request: r.memory_request,
        memory_limit: r.memory_limit,
    }
}

/// The pod cgroup, as the kubelet sizes it (`PodRequests`, `PodLimits`):
/// for each resource the larger of the app containers' sum with every
/// sidecar's, and of each init container with the sidecars started before it
/// (a sidecar counts from its own start); a limit only when every container
/// has one.
fn pod_resources(init: &[ContainerPlan], apps: &[ContainerPlan], pids_limit: i64) -> PodResources {
    let effective = |f: &dyn Fn(&ContainerPlan) -> Option<u64>| -> Option<u64> {
        let mut sidecars = 0u64;
        let mut init_max = 0u64;
        for c in init {
            let v = f(c)?;
            let during = if c.sidecar {
                sidecars += v;
                sidecars
            } else {
                v + sidecars
            };
            init_max = init_max.max(during);
        }
        let sum = apps.iter().map(f).sum::<Option<u64>>()? + sidecars;
        Some(sum.max(init_max))
    };
    let cpu_request = effective(&|c| Some(c.resources.cpu_request_milli)).unwrap_or(0);
    let cpu_limit = effective(&|c| c.resources.cpu_limit_milli);
    PodResources {
        cpu_shares: cpu_shares(cpu_request),
        cfs_quota_us: cfs_quota_us(cpu_limit, CFS_PERIOD_US),
        cfs_period_us: CFS_PERIOD_US,
        memory_limit_bytes: effective(&|c| c.resources.memory_limit_bytes),
        pids_limit,
    }
}

fn check_host_ports(
    apps: &[(String, &crate::manifest::Container, PartialContainer)],
    init: &[(String, &crate::manifest::Container, PartialContainer)],
    host_network: bool,
    issues: &mut Issues,
) {
    let mut used = HashMap::new();
    for (p, _, pc) in init.iter().chain(apps) {
        for (i, port) in pc.ports.iter().enumerate() {
            let pp = push_index(&push_key(p, "ports"), i);
            let Some(hp) = port.host_port else { continue };
            if host_network && hp != port.container_port {
                issues.error(
                    push_key(&pp, "hostPort"),
                    format!(
                        "{hp} must equal containerPort {} with hostNetwork",
                        port.container_port
                    ),
                );
            }
            let key = (hp, port.protocol, port.host_ip.clone());
            if let Some(first) = used.insert(key, pp.clone()) {
                issues.error(
                    push_key(&pp, "hostPort"),
                    format!(
                        "host port {hp}/{:?} is already used by {first}",
                        port.protocol
                    ),
                );
            }
        }
    }
}

fn notes_and_unsupported(sp: &str, spec: &PodSpec, issues: &mut Issues) {
    let k = |key: &str| push_key(sp, key);
    for (field, set) in [
        ("nodeSelector", spec.node_selector.is_some()),
        ("nodeName", spec.node_name.is_some()),
        ("affinity", spec.affinity.is_some()),
        ("tolerations", spec.tolerations.is_some()),
        ("serviceAccountName", spec.service_account_name.is_some()),
        ("serviceAccount", spec.service_account.is_some()),
        ("priorityClassName", spec.priority_class_name.is_some()),
        ("priority", spec.priority.is_some()),
        ("preemptionPolicy", spec.preemption_policy.is_some()),
        ("schedulerName", spec.scheduler_name.is_some()),
        (
            "topologySpreadConstraints",
            spec.topology_spread_constraints.is_some(),
        ),
        ("imagePullSecrets", spec.image_pull_secrets.is_some()),
        ("readinessGates", spec.readiness_gates.is_some()),
        ("schedulingGates", spec.scheduling_gates.is_some()),
        ("runtimeClassName", spec.runtime_class_name.is_some()),
        ("overhead", spec.overhead.is_some()),
        ("os", spec.os.is_some()),
        ("subdomain", spec.subdomain.is_some()),
        ("setHostnameAsFQDN", spec.set_hostname_as_fqdn.is_some()),
    ] {
        if set {
            issues.note(k(field), CLUSTER_ONLY);
        }
    }
    if spec.enable_service_links == Some(true) {
        issues.note(
            k("enableServiceLinks"),
            "ignored: there are no Services on a single node",
        );
    }
    if spec.automount_service_account_token == Some(true) {
        issues.note(
            k("automountServiceAccountToken"),
            "ignored: there is no API server to issue a token",
        );
    }
    for (field, set) in [
        ("ephemeralContainers", spec.ephemeral_containers.is_some()),
        ("resourceClaims", spec.resource_claims.is_some()),
        ("resources", spec.resources.is_some()),
    ] {
        if set {
            issues.error(k(field), format!("{field} is not supported by podagent"));
        }
    }
}

/// `hostUsers: false`: the pod gets a user namespace of its own. The API
/// server refuses it with the host's network, PID or IPC namespace; podagent
/// also refuses what would need the host's user namespace inside the pod.
fn user_namespace(sp: &str, spec: &PodSpec, privileged: bool, issues: &mut Issues) -> bool {
    if spec.host_users != Some(false) {
        return false;
    }
    let k = |key: &str| push_key(sp, key);
    for (field, set) in [
        ("hostNetwork", spec.host_network == Some(true)),
        ("hostPID", spec.host_pid == Some(true)),
        ("hostIPC", spec.host_ipc == Some(true)),
    ] {
        if set {
            issues.error(
                k("hostUsers"),
                format!("false is not allowed with {field}: true"),
            );
        }
    }
    if spec.share_process_namespace == Some(true) {
        issues.error(
            k("hostUsers"),
            "false with shareProcessNamespace: true is not supported by podagent",
        );
    }
    if privileged {
        issues.error(
            k("hostUsers"),
            "false with a privileged container is not supported by podagent",
        );
    }
    true
}

/// `activeDeadlineSeconds`: a positive number of seconds, as the API server
/// requires.
fn active_deadline(sp: &str, spec: &PodSpec, issues: &mut Issues) -> Option<u64> {
    let v = spec.active_deadline_seconds?;
    if v < 1 {
        issues.error(
            push_key(sp, "activeDeadlineSeconds"),
            format!("{v} must be a positive number of seconds"),
        );
        return None;
    }
    Some(v as u64)
}

fn dns(sp: &str, spec: &PodSpec, issues: &mut Issues) -> DnsPlan {
    let k = |key: &str| push_key(sp, key);
    let policy = match spec.dns_policy.as_deref() {
        None | Some("ClusterFirst") | Some("ClusterFirstWithHostNet") => DnsPolicy::ClusterFirst,
        Some("Default") => DnsPolicy::Default,
        Some("None") => DnsPolicy::None,
        Some(p) => {
            issues.error(k("dnsPolicy"), format!("{p:?} is not one of \"ClusterFirst\", \"ClusterFirstWithHostNet\", \"Default\", \"None\""));
            DnsPolicy::ClusterFirst
        }
    };
    let cfg = spec.dns_config.clone().unwrap_or_default();
    let cp = k("dnsConfig");
    if policy == DnsPolicy::None && cfg.nameservers.is_empty() {
        issues.error(
            push_key(&cp, "nameservers"),
            "at least one nameserver is required when dnsPolicy is \"None\"",
        );
    }
    if cfg.nameservers.len() > 3 {
        issues.error(
            push_key(&cp, "nameservers"),
            format!("{} nameservers: at most 3 allowed", cfg.nameservers.len()),
        );
    }
    for (i, ns) in cfg.nameservers.iter().enumerate() {
        if ns.parse::<std::net::IpAddr>().is_err() {
            issues.error(
                push_index(&push_key(&cp, "nameservers"), i),
                format!("{ns:?} is not an IP address"),
            );
        }
    }
    if cfg.searches.len() > 32 {
        issues.error(
            push_key(&cp, "searches"),
            format!("{} search domains: at most 32 allowed", cfg.searches.len()),
        );
    }
    for (i, s) in cfg.searches.iter().enumerate() {
        if let Err(e) = names::dns1123_subdomain(s.trim_end_matches('.')) {
            issues.error(
                push_index(&push_key(&cp, "searches"), i),
                format!("{s:?} {e}"),
            );
        }
    }
    let mut options = Vec::new();
    for (i, o) in cfg.options.iter().enumerate() {
        match o
            .name
            .as_deref()
            .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
        {
            Some(n) => options.push(match &o.value {
                Some(v) => format!("{n}:{v}"),
                None => n.to_string(),
            }),
            None => issues.error(
                push_key(&push_index(&push_key(&cp, "options"), i), "name"),
                "required, without spaces",
            ),
        }
    }
    DnsPlan {
        policy,
        nameservers: cfg.nameservers,
        searches: cfg.searches,
        options,
    }
}

struct MetaCtx<'a> {
    name: &'a str,
    namespace: &'a str,
    meta: &'a crate::manifest::ObjectMeta,
    node: &'a NodeInfo,
    resources: &'a HashMap<String, RawResources>,
}

impl MetaCtx<'_> {
    fn env_value(
        &self,
        own: &str,
        s: &EnvSpec,
        path: &str,
        issues: &mut Issues,
    ) -> Option<EnvValue> {
        let lookup = |f: &str, prefix: &str, map: &std::collections::BTreeMap<String, String>| {
            f.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix("['"))
                .and_then(|r| r.strip_suffix("']"))
                .map(|key| map.get(key).cloned().unwrap_or_default())
        };
        Some(match s {
            EnvSpec::Value(v) => v.clone(),
            EnvSpec::Field(f) => match f.as_str() {
                "metadata.name" => EnvValue::Literal(self.name.to_string()),
                "metadata.namespace" => EnvValue::Literal(self.namespace.to_string()),
                "metadata.uid" => EnvValue::Literal(
                    self.meta
                        .uid
                        .clone()
                        .unwrap_or_else(|| derived_uid(self.namespace, self.name)),
                ),
                "spec.nodeName" => EnvValue::Literal(self.node.node_name.clone()),
                "spec.serviceAccountName" => EnvValue::Literal("default".into()),
                "status.podIP" | "status.podIPs" => EnvValue::PodIp,
                "status.hostIP" | "status.hostIPs" => EnvValue::HostIp,
                f => EnvValue::Literal(
                    lookup(f, "metadata.labels", &self.meta.labels)
                        .or_else(|| lookup(f, "metadata.annotations", &self.meta.annotations))
                        .unwrap_or_default(),
                ),
            },
            EnvSpec::Resource(container, res, divisor) => {
                let target = if container.is_empty() {
                    own
                } else {
                    container.as_str()
                };
                let Some(r) = self.resources.get(target) else {
                    issues.error(path.to_string(), format!("resourceFieldRef names container {target:?}, which this pod does not have"));
                    return None;
                };
                let cpus = self.node.cpus.as_ref().map_or(1, |c| c.len() as u64);
                let (amount, cpu) = match res.as_str() {
                    "limits.cpu" => (r.cpu_limit.unwrap_or(cpus * 1000), true),
                    "requests.cpu" => (r.cpu_request.unwrap_or(0), true),
                    "limits.memory" => (r.memory_limit.unwrap_or(self.node.memory_bytes), false),
                    "requests.memory" => (r.memory_request.unwrap_or(0), false),
                    "limits.ephemeral-storage" => (r.ephemeral_limit.unwrap_or(0), false),
                    _ => (0, false),
                };
                let d = if cpu {
                    divisor.milli_ceil()
                } else {
                    divisor.value_ceil()
                }
                .unwrap_or(1)
                .max(1);
                EnvValue::Literal(amount.div_ceil(d).to_string())
            }
        })
    }
}

/// A map as the kubelet writes it into a downward API file
/// (`fieldpath.FormatMap`): `key="value"` lines, sorted by key, values
/// quoted as Go's `%q`, no newline after the last.
pub fn format_map(m: &std::collections::BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in m {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

/// A uid that stays the same as long as the pod's namespace and name do.
pub fn derived_uid(namespace: &str, name: &str) -> String {
    let h = sha256_hex(format!("podagent-uid\0{namespace}\0{name}").as_bytes());
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Hash of a container's plan without its resources: a change here restarts
/// the container, a change of resources alone resizes it in place.
fn container_hash(c: &ContainerPlan) -> String {
    let mut copy = c.clone();
    copy.hash.clear();
    copy.resources = ContainerResources { ..EMPTY_RESOURCES };
    sha256_hex(&serde_json::to_vec(&copy).unwrap_or_default())
}

const EMPTY_RESOURCES: ContainerResources = ContainerResources {
    cpu_request_milli: 0,
    cpu_limit_milli: None,
    cpu_shares: 0,
    cpu_weight: 0,
    cfs_period_us: 0,
    cfs_quota_us: None,
    memory_request_bytes: 0,
    memory_limit_bytes: None,
    swap_limit_bytes: None,
    cpuset: None,
    oom_score_adj: 0,
    oom_kill_disable: false,
    ephemeral_storage_limit_bytes: None,
    io: crate::io::IoLimits::NONE,
};

fn pod_hash(p: &PodPlan) -> String {
    let mut copy = p.clone();
    copy.hash.clear();
    sha256_hex(&serde_json::to_vec(&copy).unwrap_or_default())
}
