//! One container: image, command, env, ports, mounts, resources, probes.

use std::collections::{BTreeMap, HashSet};

use crate::diag::{push_index, push_key, Issues};
use crate::manifest::{
    Container, EnvVar, IntOrString, LifecycleHandler, Probe, ResourceRequirements, Scalar,
};
use crate::names::{self, ContainerName};
use crate::plan::{
    EnvValue, HookAction, LifecyclePlan, MountPlan, PortPlan, ProbeAction, ProbePlan, Protocol,
    PullPolicy,
};
use crate::quantity::{Quantity, Suffix};

use super::paths::{absolute_clean, image_reference, image_tag, is_under};
use super::security::relative_clean;

/// Requests and limits as written (requests defaulted to limits, as the API
/// server does), before the pod's QoS class is known.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawResources {
    pub cpu_request: Option<u64>,
    pub cpu_limit: Option<u64>,
    pub memory_request: Option<u64>,
    pub memory_limit: Option<u64>,
    pub ephemeral_limit: Option<u64>,
}

/// A container resolved except for what depends on the whole pod (QoS,
/// oom_score_adj, annotations, security), and its env before the fields that
/// depend on resources are filled in.
#[derive(Debug, Clone)]
pub struct PartialContainer {
    pub name: ContainerName,
    pub image: String,
    pub pull_policy: PullPolicy,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub env: Vec<(String, EnvSpec)>,
    pub ports: Vec<PortPlan>,
    pub mounts: Vec<MountPlan>,
    pub resources: RawResources,
    pub liveness: Option<ProbePlan>,
    pub readiness: Option<ProbePlan>,
    pub startup: Option<ProbePlan>,
    pub tty: bool,
    pub stdin: bool,
    pub termination_message_path: String,
    pub termination_message_from_logs: bool,
    pub lifecycle: Option<LifecyclePlan>,
    pub sidecar: bool,
}

/// An env value, or a reference still to resolve against the pod.
#[derive(Debug, Clone)]
pub enum EnvSpec {
    Value(EnvValue),
    /// `valueFrom.fieldRef` to pod metadata.
    Field(String),
    /// `valueFrom.resourceFieldRef`: (container, resource, divisor).
    Resource(String, String, Quantity),
}

/// What a container may refer to in its pod.
pub struct PodScope<'a> {
    pub volumes: &'a HashSet<String>,
    pub init: bool,
    /// `terminationGracePeriodSeconds`: a sleep hook may not be longer.
    pub grace_secs: u64,
    /// `spec.os` is set: a container may then name its stop signal.
    pub os_set: bool,
}

const UNSUPPORTED_CONTAINER_FIELDS: &str = "is not supported by podagent";

pub fn resolve_container(
    path: &str,
    c: &Container,
    scope: &PodScope<'_>,
    issues: &mut Issues,
) -> Option<PartialContainer> {
    let k = |key: &str| push_key(path, key);
    let name = match c.name.as_deref() {
        None | Some("") => {
            issues.error(k("name"), "required");
            None
        }
        Some(n) => ContainerName::new(n)
            .map_err(|e| issues.error(k("name"), format!("{n:?} {e}")))
            .ok(),
    };
    let image = match c.image.as_deref() {
        None | Some("") => {
            issues.error(
                k("image"),
                "required (an image reference, e.g. \"busybox:latest\")",
            );
            None
        }
        Some(i) => match image_reference(i) {
            Ok(()) => Some(i.to_string()),
            Err(e) => {
                issues.error(k("image"), format!("{i:?} is not an image reference: {e}"));
                None
            }
        },
    };
    let pull_policy = match c.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        Some("Never") => PullPolicy::Never,
        None => match image.as_deref().map(image_tag) {
            Some(None | Some("latest")) => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        },
        Some(other) => {
            issues.error(
                k("imagePullPolicy"),
                format!("{other:?} is not one of \"Always\", \"IfNotPresent\", \"Never\""),
            );
            PullPolicy::IfNotPresent
        }
    };
    for (field, list) in [("command", &c.command), ("args", &c.args)] {
        for (i, s) in list.iter().flatten().enumerate() {
            if s.contains('\0') {
                issues.error(push_index(&k(field), i), "must not contain a NUL byte");
            }
        }
    }
    if let Some(wd) = &c.working_dir {
        if let Err(e) = absolute_clean(wd) {
            issues.error(k("workingDir"), format!("{wd:?} {e}"));
        }
    }
    for (field, v) in [
        ("envFrom", &c.env_from),
        ("volumeDevices", &c.volume_devices),
    ] {
        if v.is_some() {
            issues.error(k(field), format!("{field} {UNSUPPORTED_CONTAINER_FIELDS}"));
        }
    }
    if c.resize_policy.is_some() {
        issues.note(
            k("resizePolicy"),
            "ignored: podagent resizes cpu and memory in place when only resources change",
        );
    }
    let sidecar = scope.init && c.restart_policy.as_deref() == Some("Always");
    match (scope.init, c.restart_policy.as_deref()) {
        (_, None) | (true, Some("Always")) => {}
        (true, Some(p)) => issues.error(
            k("restartPolicy"),
            format!("{p:?}: an init container's restartPolicy may only be \"Always\""),
        ),
        (false, Some(_)) => issues.error(
            k("restartPolicy"),
            "only init containers may set restartPolicy",
        ),
    }
    if c.stdin_once.is_some() {
        issues.note(k("stdinOnce"), "ignored: podagent has no attach");
    }
    let termination_message_path = match c.termination_message_path.as_deref() {
        None => "/dev/termination-log".to_string(),
        Some(p) => {
            if let Err(e) = absolute_clean(p) {
                issues.error(k("terminationMessagePath"), format!("{p:?} {e}"));
            }
            p.to_string()
        }
    };
    let termination_message_from_logs =
        c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if let Some(p) = c.termination_message_policy.as_deref() {
        if p != "File" && p != "FallbackToLogsOnError" {
            issues.error(
                k("terminationMessagePolicy"),
                format!("{p:?} is not one of \"File\", \"FallbackToLogsOnError\""),
            );
        }
    }
    let env = env(&k("env"), &c.env, issues);
    let ports = ports(&k("ports"), c, issues);
    let mounts = mounts(&k("volumeMounts"), c, scope, issues);
    let resources = resources(&k("resources"), c.resources.as_ref(), issues);
    let named_ports: BTreeMap<&str, u16> = ports
        .iter()
        .filter_map(|p| Some((p.name.as_deref()?, p.container_port)))
        .collect();
    let mut probe = |field: &str, p: &Option<Probe>, liveness_like: bool| {
        let p = p.as_ref()?;
        if scope.init && !sidecar {
            issues.error(
                k(field),
                "init containers may not have probes (a sidecar, restartPolicy: Always, may)",
            );
            return None;
        }
        self::probe(&k(field), p, liveness_like, &named_ports, issues)
    };
    let liveness = probe("livenessProbe", &c.liveness_probe, true);
    let readiness = probe("readinessProbe", &c.readiness_probe, false);
    let startup = probe("startupProbe", &c.startup_probe, true);
    let lifecycle = c.lifecycle.as_ref().and_then(|l| {
        if scope.init && !sidecar {
            issues.error(
                k("lifecycle"),
                "init containers may not have lifecycle hooks (a sidecar, restartPolicy: Always, may)",
            );
            return None;
        }
        let lp = k("lifecycle");
        let mut hook = |field: &str, h: &Option<LifecycleHandler>| {
            hook(&push_key(&lp, field), h.as_ref()?, scope, &named_ports, issues)
        };
        let post_start = hook("postStart", &l.post_start);
        let pre_stop = hook("preStop", &l.pre_stop);
        let stop_signal = l
            .stop_signal
            .as_deref()
            .and_then(|s| stop_signal(&push_key(&lp, "stopSignal"), s, scope, issues));
        let plan = LifecyclePlan {
            post_start,
            pre_stop,
            stop_signal,
        };
        let empty = plan.post_start.is_none() && plan.pre_stop.is_none();
        (!empty || plan.stop_signal.is_some()).then_some(plan)
    });
    Some(PartialContainer {
        name: name?,
        image: image?,
        pull_policy,
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        env,
        ports,
        mounts,
        resources,
        liveness,
        readiness,
        startup,
        tty: c.tty.unwrap_or(false),
        stdin: c.stdin.unwrap_or(false),
        termination_message_path,
        termination_message_from_logs,
        lifecycle,
        sidecar,
    })
}

/// The signals `lifecycle.stopSignal` may name, as the API server's list
/// for Linux, less the real-time ones.
const STOP_SIGNALS: &[&str] = &[
    "SIGABRT",
    "SIGALRM",
    "SIGBUS",
    "SIGCHLD",
    "SIGCONT",
    "SIGFPE",
    "SIGHUP",
    "SIGILL",
    "SIGINT",
    "SIGIO",
    "SIGKILL",
    "SIGPIPE",
    "SIGPROF",
    "SIGPWR",
    "SIGQUIT",
    "SIGSEGV",
    "SIGSTKFLT",
    "SIGSTOP",
    "SIGSYS",
    "SIGTERM",
    "SIGTRAP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGUSR1",
    "SIGUSR2",
    "SIGVTALRM",
    "SIGWINCH",
    "SIGXCPU",
    "SIGXFSZ",
];

fn stop_signal(path: &str, s: &str, scope: &PodScope<'_>, issues: &mut Issues) -> Option<String> {
    if !scope.os_set {
        // The API server's rule: the signal is the OS's.
        issues.error(path, "needs spec.os.name to be set (\"linux\")");
        return None;
    }
    if s.starts_with("SIGRT") {
        issues.error(
            path,
            format!("{s:?}: real-time stop signals are not supported by podagent"),
        );
        return None;
    }
    if !STOP_SIGNALS.contains(&s) {
        issues.error(
            path,
            format!("{s:?} is not a signal name (e.g. \"SIGTERM\", \"SIGQUIT\", \"SIGUSR1\")"),
        );
        return None;
    }
    Some(s.to_string())
}

/// One lifecycle hook: `exec`, `httpGet` or `sleep`.
fn hook(
    path: &str,
    h: &LifecycleHandler,
    scope: &PodScope<'_>,
    named_ports: &BTreeMap<&str, u16>,
    issues: &mut Issues,
) -> Option<HookAction> {
    let k = |key: &str| push_key(path, key);
    let set = [
        h.exec.is_some(),
        h.http_get.is_some(),
        h.tcp_socket.is_some(),
        h.sleep.is_some(),
    ];
    if set.iter().filter(|b| **b).count() != 1 {
        issues.error(path, "exactly one of exec, httpGet, sleep is required");
        return None;
    }
    if h.tcp_socket.is_some() {
        issues.error(
            k("tcpSocket"),
            "tcpSocket is not a lifecycle handler (the kubelet fails such a hook): use exec, httpGet or sleep",
        );
        return None;
    }
    if let Some(sl) = &h.sleep {
        return match sl.seconds {
            None => {
                issues.error(push_key(&k("sleep"), "seconds"), "required");
                None
            }
            Some(n) if n < 0 || n as u64 > scope.grace_secs => {
                issues.error(
                    push_key(&k("sleep"), "seconds"),
                    format!(
                        "{n} must be non-negative and at most terminationGracePeriodSeconds ({})",
                        scope.grace_secs
                    ),
                );
                None
            }
            Some(n) => Some(HookAction::Sleep { seconds: n as u64 }),
        };
    }
    let as_probe = Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        ..Probe::default()
    };
    action(path, &as_probe, named_ports, issues).map(HookAction::Run)
}

/// A `resourceFieldRef` (of an env var or a downward API file) checked:
/// a known resource and a positive divisor.
pub fn resource_ref(
    rp: &str,
    rf: &crate::manifest::ResourceFieldRef,
    issues: &mut Issues,
) -> Option<EnvSpec> {
    let res = rf.resource.clone().unwrap_or_default();
    const OK: [&str; 6] = [
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.ephemeral-storage",
    ];
    if !OK.contains(&res.as_str()) {
        issues.error(
            push_key(rp, "resource"),
            format!("{res:?} is not one of {}", OK.join(", ")),
        );
        return None;
    }
    let divisor = rf.divisor.as_ref().map_or("1", |d| d.0.as_str());
    match Quantity::parse(divisor) {
        Ok(q) if !q.is_zero() && !q.is_negative() => Some(EnvSpec::Resource(
            rf.container_name.clone().unwrap_or_default(),
            res,
            q,
        )),
        _ => {
            issues.error(
                push_key(rp, "divisor"),
                format!("{divisor:?} is not a positive quantity"),
            );
            None
        }
    }
}

/// `metadata.labels['k']` or `metadata.annotations['k']` with a valid key.
pub fn metadata_key_ref(f: &str) -> bool {
    let quoted_key = |rest: &str| {
        rest.strip_prefix("['")
            .and_then(|r| r.strip_suffix("']"))
            .is_some_and(|key| names::qualified_key(key).is_ok())
    };
    f.strip_prefix("metadata.labels").is_some_and(quoted_key)
        || f.strip_prefix("metadata.annotations")
            .is_some_and(quoted_key)
}

/// Field paths `valueFrom.fieldRef` may name.
fn field_ref_ok(f: &str) -> bool {
    matches!(
        f,
        "metadata.name"
            | "metadata.namespace"
            | "metadata.uid"
            | "spec.nodeName"
            | "spec.serviceAccountName"
            | "status.hostIP"
            | "status.hostIPs"
            | "status.podIP"
            | "status.podIPs"
    ) || metadata_key_ref(f)
}

fn env(path: &str, list: &[EnvVar], issues: &mut Issues) -> Vec<(String, EnvSpec)> {
    let mut out: Vec<(String, EnvSpec)> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let p = push_index(path, i);
        let Some(name) = e.name.as_deref() else {
            issues.error(push_key(&p, "name"), "required");
            continue;
        };
        if let Err(err) = names::env_var_name(name) {
            issues.error(push_key(&p, "name"), format!("{name:?} {err}"));
            continue;
        }
        let spec = match (&e.value, &e.value_from) {
            (Some(_), Some(_)) => {
                issues.error(
                    push_key(&p, "valueFrom"),
                    "may not be set together with value",
                );
                continue;
            }
            (Some(v), None) if v.contains('\0') => {
                issues.error(push_key(&p, "value"), "must not contain a NUL byte");
                continue;
            }
            (v, None) => EnvSpec::Value(EnvValue::Literal(v.clone().unwrap_or_default())),
            (None, Some(src)) => {
                let vp = push_key(&p, "valueFrom");
                let set = [
                    src.field_ref.is_some(),
                    src.resource_field_ref.is_some(),
                    src.config_map_key_ref.is_some(),
                    src.secret_key_ref.is_some(),
                ];
                if set.iter().filter(|b| **b).count() != 1 {
                    issues.error(vp, "exactly one of fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef is required");
                    continue;
                }
                if src.config_map_key_ref.is_some() || src.secret_key_ref.is_some() {
                    let f = if src.secret_key_ref.is_some() {
                        "secretKeyRef"
                    } else {
                        "configMapKeyRef"
                    };
                    issues.error(push_key(&vp, f), format!("{f} needs an API server: not supported on a single node (use value, or a hostPath volume)"));
                    continue;
                }
                if let Some(fr) = &src.field_ref {
                    let fp = push_key(&push_key(&vp, "fieldRef"), "fieldPath");
                    match fr.field_path.as_deref() {
                        Some(f) if field_ref_ok(f) => EnvSpec::Field(f.to_string()),
                        Some(f) => {
                            issues.error(fp, format!("{f:?} is not a supported field path (metadata.name, metadata.namespace, metadata.uid, metadata.labels['k'], metadata.annotations['k'], spec.nodeName, spec.serviceAccountName, status.podIP, status.hostIP)"));
                            continue;
                        }
                        None => {
                            issues.error(fp, "required");
                            continue;
                        }
                    }
                } else {
                    let Some(rf) = &src.resource_field_ref else {
                        continue;
                    };
                    match resource_ref(&push_key(&vp, "resourceFieldRef"), rf, issues) {
                        Some(spec) => spec,
                        None => continue,
                    }
                }
            }
        };
        // Kubernetes keeps the last of duplicated names.
        if let Some(prev) = out.iter().position(|(n, _)| n == name) {
            issues.warn(
                push_key(&p, "name"),
                format!("{name:?} is set more than once: the last value wins"),
            );
            out.remove(prev);
        }
        out.push((name.to_string(), spec));
    }
    out
}

fn ports(path: &str, c: &Container, issues: &mut Issues) -> Vec<PortPlan> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, p) in c.ports.iter().enumerate() {
        let pp = push_index(path, i);
        let port =
            |v: Option<i64>, field: &str, issues: &mut Issues, zero_ok: bool| -> Option<u16> {
                match v {
                    Some(0) | None if zero_ok => Some(0),
                    Some(n) if (1..=65535).contains(&n) => Some(n as u16),
                    Some(n) => {
                        issues.error(
                            push_key(&pp, field),
                            format!("{n} is not a port: must be between 1 and 65535"),
                        );
                        None
                    }
                    None => {
                        issues.error(push_key(&pp, field), "required");
                        None
                    }
                }
            };
        let container_port = port(p.container_port, "containerPort", issues, false);
        let host_port = port(p.host_port, "hostPort", issues, true);
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(other) => {
                issues.error(
                    push_key(&pp, "protocol"),
                    format!("{other:?} is not one of \"TCP\", \"UDP\", \"SCTP\""),
                );
                continue;
            }
        };
        if let Some(n) = &p.name {
            if let Err(e) = names::port_name(n) {
                issues.error(push_key(&pp, "name"), format!("{n:?} {e}"));
            } else if !names.insert(n.clone()) {
                issues.error(
                    push_key(&pp, "name"),
                    format!("port name {n:?} is used twice in this container"),
                );
            }
        }
        // One node address, normalised; 0.0.0.0 and :: mean all of them.
        let mut host_ip = None;
        if let Some(ip) = &p.host_ip {
            match ip.parse::<std::net::IpAddr>() {
                Err(_) => issues.error(
                    push_key(&pp, "hostIP"),
                    format!("{ip:?} is not an IP address"),
                ),
                Ok(a) if a.is_unspecified() => {}
                Ok(std::net::IpAddr::V4(a)) => host_ip = Some(a.to_string()),
                Ok(std::net::IpAddr::V6(_)) => issues.error(
                    push_key(&pp, "hostIP"),
                    format!(
                        "{ip:?}: the pod network is IPv4, so a port is published on an IPv4 address, or on all (0.0.0.0 or ::)"
                    ),
                ),
            }
        }
        if let (Some(cp), Some(hp)) = (container_port, host_port) {
            out.push(PortPlan {
                name: p.name.clone(),
                container_port: cp,
                host_port: (hp != 0).then_some(hp),
                host_ip,
                protocol,
            });
        }
    }
    out
}

fn mounts(path: &str, c: &Container, scope: &PodScope<'_>, issues: &mut Issues) -> Vec<MountPlan> {
    let mut out = Vec::new();
    let mut targets = HashSet::new();
    for (i, m) in c.volume_mounts.iter().enumerate() {
        let mp = push_index(path, i);
        let k = |key: &str| push_key(&mp, key);
        let name = m.name.clone().unwrap_or_default();
        if name.is_empty() {
            issues.error(k("name"), "required");
        } else if !scope.volumes.contains(&name) {
            issues.error(
                k("name"),
                format!("volume {name:?} is not defined in spec.volumes"),
            );
        }
        let target = m.mount_path.clone().unwrap_or_default();
        let mut ok = !name.is_empty() && scope.volumes.contains(&name);
        if target.is_empty() {
            issues.error(k("mountPath"), "required");
            ok = false;
        } else if let Err(e) = absolute_clean(&target) {
            issues.error(k("mountPath"), format!("{target:?} {e}"));
            ok = false;
        } else if target == "/"
            || ["/proc", "/sys", "/dev"]
                .iter()
                .any(|r| is_under(&target, r))
        {
            issues.error(
                k("mountPath"),
                format!("{target:?}: mounting over /, /proc, /sys or /dev is refused"),
            );
            ok = false;
        } else if !targets.insert(target.clone()) {
            issues.error(
                k("mountPath"),
                format!("{target:?} is mounted twice in this container"),
            );
            ok = false;
        }
        let sub_path = m.sub_path.clone().filter(|s| !s.is_empty());
        if let Some(s) = &sub_path {
            if let Err(e) = relative_clean(s) {
                issues.error(k("subPath"), format!("{s:?} {e}"));
                ok = false;
            }
        }
        if m.sub_path_expr.is_some() {
            issues.error(
                k("subPathExpr"),
                format!("subPathExpr {UNSUPPORTED_CONTAINER_FIELDS}"),
            );
        }
        match m.mount_propagation.as_deref() {
            None | Some("None") => {}
            Some(p @ ("HostToContainer" | "Bidirectional")) => issues.error(
                k("mountPropagation"),
                format!("{p:?} {UNSUPPORTED_CONTAINER_FIELDS} (only \"None\")"),
            ),
            Some(p) => issues.error(
                k("mountPropagation"),
                format!("{p:?} is not one of \"None\", \"HostToContainer\", \"Bidirectional\""),
            ),
        }
        if m.recursive_read_only
            .as_ref()
            .is_some_and(|v| v.as_str() != Some("Disabled"))
        {
            issues.error(
                k("recursiveReadOnly"),
                format!("recursiveReadOnly {UNSUPPORTED_CONTAINER_FIELDS} (only \"Disabled\")"),
            );
        }
        if ok {
            out.push(MountPlan {
                volume: name,
                path: target,
                sub_path,
                read_only: m.read_only.unwrap_or(false),
            });
        }
    }
    out
}

/// Parses one resource quantity; cpu in millicores, the rest in units.
fn quantity(path: &str, resource: &str, v: &Scalar, issues: &mut Issues) -> Option<u64> {
    let q = match Quantity::parse(&v.0) {
        Ok(q) => q,
        Err(e) => {
            issues.error(path, e.to_string());
            return None;
        }
    };
    if resource == "cpu" {
        if q.finer_than_milli() {
            issues.warn(
                path,
                format!(
                    "{:?} is finer than 1m: rounded up to 1m precision, as Kubernetes does",
                    v.0
                ),
            );
        }
        q.milli_ceil()
            .map_err(|e| issues.error(path, e.to_string()))
            .ok()
    } else {
        if q.suffix() == Suffix::Decimal(-3) {
            issues.warn(
                path,
                format!(
                    "{:?} is in millibytes (the 'm' suffix): did you mean {}Mi?",
                    v.0,
                    q.as_str().trim_end_matches('m')
                ),
            );
        }
        q.value_ceil()
            .map_err(|e| issues.error(path, e.to_string()))
            .ok()
    }
}

fn resources(path: &str, r: Option<&ResourceRequirements>, issues: &mut Issues) -> RawResources {
    let Some(r) = r else {
        return RawResources::default();
    };
    let mut read = |section: &str, map: &BTreeMap<String, crate::manifest::Scalar>| {
        let mut got: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (res, v) in map {
            let p = push_key(&push_key(path, section), res);
            let known: Option<&'static str> = match res.as_str() {
                "cpu" => Some("cpu"),
                "memory" => Some("memory"),
                "ephemeral-storage" => Some("ephemeral-storage"),
                _ => None,
            };
            match known {
                Some(k) => {
                    if let Some(n) = quantity(&p, k, v, issues) {
                        got.insert(k, n);
                    }
                }
                None if res.starts_with("hugepages-") => {
                    issues.error(p, format!("{res} {UNSUPPORTED_CONTAINER_FIELDS}"))
                }
                None if res.contains('/') => issues.error(
                    p,
                    format!("extended resource {res:?} needs a device plugin: not supported on this node"),
                ),
                None => issues.error(p, format!("{res:?} is not a resource: expected cpu, memory or ephemeral-storage")),
            }
        }
        got
    };
    let limits = read("limits", &r.limits);
    let mut requests = read("requests", &r.requests);
    if r.claims.is_some() {
        issues.error(
            push_key(path, "claims"),
            format!("resource claims {UNSUPPORTED_CONTAINER_FIELDS}"),
        );
    }
    for (res, limit) in &limits {
        match requests.get(res) {
            Some(req) if req > limit => issues.error(
                push_key(&push_key(path, "requests"), res),
                format!(
                    "request {} must be less than or equal to the limit {}",
                    r.requests[*res].0, r.limits[*res].0
                ),
            ),
            Some(_) => {}
            // Kubernetes defaults a missing request to the limit.
            None => {
                requests.insert(res, *limit);
            }
        }
    }
    RawResources {
        cpu_request: requests.get("cpu").copied(),
        cpu_limit: limits.get("cpu").copied(),
        memory_request: requests.get("memory").copied(),
        memory_limit: limits.get("memory").copied(),
        ephemeral_limit: limits.get("ephemeral-storage").copied(),
    }
}

fn probe(
    path: &str,
    p: &Probe,
    liveness_like: bool,
    named_ports: &BTreeMap<&str, u16>,
    issues: &mut Issues,
) -> Option<ProbePlan> {
    let k = |key: &str| push_key(path, key);
    let handlers = [
        p.exec.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.grpc.is_some(),
    ];
    if handlers.iter().filter(|b| **b).count() != 1 {
        issues.error(
            path,
            "exactly one of exec, httpGet, tcpSocket, grpc is required",
        );
        return None;
    }
    let action = action(path, p, named_ports, issues)?;
    let num = |field: &str, v: Option<i64>, default: u32, min: i64, issues: &mut Issues| -> u32 {
        match v {
            None => default,
            Some(n) if n >= min && n <= i64::from(u32::MAX) => n as u32,
            Some(n) => {
                issues.error(k(field), format!("{n} must be at least {min}"));
                default
            }
        }
    };
    let success_threshold = num("successThreshold", p.success_threshold, 1, 1, issues);
    if liveness_like && success_threshold != 1 {
        issues.error(
            k("successThreshold"),
            "must be 1 for liveness and startup probes",
        );
    }
    if p.termination_grace_period_seconds.is_some() {
        issues.warn(
            k("terminationGracePeriodSeconds"),
            "ignored: the pod's terminationGracePeriodSeconds applies",
        );
    }
    Some(ProbePlan {
        action,
        initial_delay_secs: num("initialDelaySeconds", p.initial_delay_seconds, 0, 0, issues),
        period_secs: num("periodSeconds", p.period_seconds, 10, 1, issues),
        timeout_secs: num("timeoutSeconds", p.timeout_seconds, 1, 1, issues),
        success_threshold,
        failure_threshold: num("failureThreshold", p.failure_threshold, 3, 1, issues),
    })
}

/// The handler of a probe (or of a hook, given as a probe): exactly one of
/// exec, httpGet, tcpSocket, grpc is set.
fn action(
    path: &str,
    p: &Probe,
    named_ports: &BTreeMap<&str, u16>,
    issues: &mut Issues,
) -> Option<ProbeAction> {
    let k = |key: &str| push_key(path, key);
    let port = |field: String, v: &Option<IntOrString>, issues: &mut Issues| -> Option<u16> {
        match v {
            Some(IntOrString::Int(n)) if (1..=65535).contains(n) => Some(*n as u16),
            Some(IntOrString::Int(n)) => {
                issues.error(
                    field,
                    format!("{n} is not a port: must be between 1 and 65535"),
                );
                None
            }
            Some(IntOrString::Str(s)) => match named_ports.get(s.as_str()) {
                Some(n) => Some(*n),
                None => {
                    issues.error(
                        field,
                        format!("{s:?} is not the name of one of this container's ports"),
                    );
                    None
                }
            },
            None => {
                issues.error(field, "required");
                None
            }
        }
    };
    let action = if let Some(e) = &p.exec {
        if e.command.is_empty() {
            issues.error(push_key(&k("exec"), "command"), "must not be empty");
            return None;
        }
        ProbeAction::Exec {
            command: e.command.clone(),
        }
    } else if let Some(h) = &p.http_get {
        let hp = k("httpGet");
        let port = port(push_key(&hp, "port"), &h.port, issues)?;
        let path_s = h.path.clone().unwrap_or_else(|| "/".into());
        if !path_s.starts_with('/') || path_s.contains(char::is_whitespace) {
            issues.error(
                push_key(&hp, "path"),
                format!("{path_s:?} must start with '/' and contain no spaces"),
            );
        }
        let https = match h.scheme.as_deref() {
            None | Some("HTTP") => false,
            Some("HTTPS") => {
                issues.error(
                    push_key(&hp, "scheme"),
                    "HTTPS probes are not supported by podagent (no TLS client); use HTTP or tcpSocket",
                );
                true
            }
            Some(s) => {
                issues.error(
                    push_key(&hp, "scheme"),
                    format!("{s:?} is not one of \"HTTP\", \"HTTPS\""),
                );
                false
            }
        };
        let mut headers = Vec::new();
        for (i, hd) in h.http_headers.iter().enumerate() {
            let name = hd.name.clone().unwrap_or_default();
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid {
                issues.error(
                    push_key(&push_index(&push_key(&hp, "httpHeaders"), i), "name"),
                    format!("{name:?} is not an HTTP header name"),
                );
            }
            headers.push((name, hd.value.clone().unwrap_or_default()));
        }
        ProbeAction::HttpGet {
            path: path_s,
            port,
            host: h.host.clone(),
            https,
            headers,
        }
    } else if let Some(t) = &p.tcp_socket {
        ProbeAction::TcpSocket {
            port: port(push_key(&k("tcpSocket"), "port"), &t.port, issues)?,
            host: t.host.clone(),
        }
    } else {
        let g = p.grpc.as_ref()?;
        let port = port(
            push_key(&k("grpc"), "port"),
            &g.port.map(IntOrString::Int),
            issues,
        )?;
        ProbeAction::Grpc {
            port,
            service: g.service.clone(),
        }
    };
    Some(action)
}
