//! securityContext: users and groups, capabilities, privilege escalation,
//! seccomp profiles and sysctls.

use std::collections::{BTreeSet, HashSet};

use crate::diag::{push_index, push_key, Issues};
use crate::manifest::{PodSecurityContext, SeccompProfile, SecurityContext, Sysctl};
use crate::plan::{SeccompPolicy, SecurityPlan};

use super::NodeInfo;

/// The capability set Kubernetes pods get from containerd.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability the kernel knows (as of Linux 5.9), Kubernetes spelling.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Sysctls Kubernetes considers safe: namespaced and unable to affect other
/// pods or the node.
pub const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// uid/gid: 0..=2^32-2 (2^32-1 is the kernel's "no id").
fn id(issues: &mut Issues, path: String, v: Option<i64>) -> Option<u32> {
    let v = v?;
    match u32::try_from(v) {
        Ok(id) if id != u32::MAX => Some(id),
        _ => {
            issues.error(
                path,
                format!("{v} is not a valid id: must be between 0 and 4294967294"),
            );
            None
        }
    }
}

/// The pod-level securityContext fields that containers inherit.
#[derive(Debug, Default, Clone)]
pub struct PodSecurity {
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_non_root: bool,
    pub fs_group: Option<u32>,
    /// `fsGroupChangePolicy: OnRootMismatch`.
    pub fs_group_on_root_mismatch: bool,
    pub supplemental_groups: Vec<u32>,
    pub seccomp: Option<SeccompPolicy>,
    pub sysctls: Vec<(String, String)>,
}

pub fn pod_security(
    path: &str,
    sc: Option<&PodSecurityContext>,
    host_network: bool,
    node: &NodeInfo,
    issues: &mut Issues,
) -> PodSecurity {
    let Some(sc) = sc else {
        return PodSecurity::default();
    };
    let k = |key: &str| push_key(path, key);
    let mut groups = Vec::new();
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        if let Some(g) = id(issues, push_index(&k("supplementalGroups"), i), Some(*g)) {
            groups.push(g);
        }
    }
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .and_then(|p| seccomp(&k("seccompProfile"), p, node, issues));
    if sc.se_linux_options.is_some() {
        issues.note(
            k("seLinuxOptions"),
            "ignored: this node does not run SELinux",
        );
    }
    if sc.app_armor_profile.is_some() {
        issues.error(
            k("appArmorProfile"),
            "AppArmor profiles are not supported by podagent",
        );
    }
    if sc.windows_options.is_some() {
        issues.note(k("windowsOptions"), "ignored on Linux");
    }
    if let Some(p) = &sc.fs_group_change_policy {
        if p != "Always" && p != "OnRootMismatch" {
            issues.error(
                k("fsGroupChangePolicy"),
                format!("{p:?} is not one of \"Always\", \"OnRootMismatch\""),
            );
        }
    }
    if let Some(v) = &sc.supplemental_groups_policy {
        if v.as_str() != Some("Merge") {
            issues.error(k("supplementalGroupsPolicy"), "only \"Merge\" is supported");
        }
    }
    PodSecurity {
        run_as_user: id(issues, k("runAsUser"), sc.run_as_user),
        run_as_group: id(issues, k("runAsGroup"), sc.run_as_group),
        run_as_non_root: sc.run_as_non_root.unwrap_or(false),
        fs_group: id(issues, k("fsGroup"), sc.fs_group),
        fs_group_on_root_mismatch: sc.fs_group_change_policy.as_deref() == Some("OnRootMismatch"),
        supplemental_groups: groups,
        seccomp,
        sysctls: sysctls(&k("sysctls"), &sc.sysctls, host_network, node, issues),
    }
}

fn sysctls(
    path: &str,
    list: &[Sysctl],
    host_network: bool,
    node: &NodeInfo,
    issues: &mut Issues,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, s) in list.iter().enumerate() {
        let p = push_index(path, i);
        let Some(name) = s.name.as_deref().filter(|n| !n.is_empty()) else {
            issues.error(push_key(&p, "name"), "required");
            continue;
        };
        // The kernel accepts '/' as the separator too; compare in dotted form.
        let dotted = name.replace('/', ".");
        let np = push_key(&p, "name");
        if !dotted
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            || dotted.starts_with('.')
            || dotted.ends_with('.')
            || dotted.contains("..")
        {
            issues.error(
                np,
                format!("{name:?} is not a sysctl name (e.g. \"net.ipv4.tcp_syncookies\")"),
            );
            continue;
        }
        if !seen.insert(dotted.clone()) {
            issues.error(np, format!("sysctl {name:?} is set twice"));
            continue;
        }
        let value = s.value.clone().unwrap_or_default();
        if value.contains(['+', '=']) {
            issues.error(
                push_key(&p, "value"),
                format!("{value:?} must not contain '+' or '='"),
            );
            continue;
        }
        let namespaced = dotted.starts_with("net.")
            || dotted.starts_with("kernel.shm")
            || dotted.starts_with("kernel.msg")
            || dotted == "kernel.sem"
            || dotted.starts_with("fs.mqueue.");
        if !namespaced {
            issues.error(
                np,
                format!("{name:?} is not namespaced: setting it would change the whole node"),
            );
            continue;
        }
        if host_network && dotted.starts_with("net.") {
            issues.error(
                np,
                format!("{name:?} would change the node's network: not allowed with hostNetwork"),
            );
            continue;
        }
        if !SAFE_SYSCTLS.contains(&dotted.as_str()) && !node.allow_unsafe_sysctls {
            issues.error(
                np,
                format!("{name:?} is not in the safe list; start podagent with --allow-unsafe-sysctls to permit namespaced unsafe sysctls"),
            );
            continue;
        }
        out.push((dotted, value));
    }
    out
}

/// A seccompProfile; `None` when invalid (already reported).
pub fn seccomp(
    path: &str,
    p: &SeccompProfile,
    node: &NodeInfo,
    issues: &mut Issues,
) -> Option<SeccompPolicy> {
    let tp = push_key(path, "type");
    let lp = push_key(path, "localhostProfile");
    if p.kind.as_deref() != Some("Localhost") && p.localhost_profile.is_some() {
        issues.error(
            lp,
            "Invalid value: can only be set when seccomp profile type is Localhost",
        );
        return None;
    }
    match p.kind.as_deref() {
        Some("RuntimeDefault") => Some(SeccompPolicy::RuntimeDefault),
        Some("Unconfined") => Some(SeccompPolicy::Unconfined),
        Some("Localhost") => {
            let Some(rel) = p.localhost_profile.as_deref().filter(|s| !s.is_empty()) else {
                issues.error(lp, "required when type is Localhost (an empty profile is an error, never \"unconfined\")");
                return None;
            };
            if let Err(why) = relative_clean(rel) {
                issues.error(lp, format!("{rel:?} {why}"));
                return None;
            }
            if !node.seccomp_profiles.contains(rel) {
                issues.error(
                    lp,
                    format!(
                        "profile {rel:?} does not exist in the agent's seccomp profile directory"
                    ),
                );
                return None;
            }
            Some(SeccompPolicy::Localhost(rel.to_string()))
        }
        Some(other) => {
            issues.error(
                tp,
                format!(
                    "{other:?} is not one of \"RuntimeDefault\", \"Unconfined\", \"Localhost\""
                ),
            );
            None
        }
        None => {
            issues.error(tp, "required");
            None
        }
    }
}

/// A relative path with no `..`, `.` or empty component.
pub fn relative_clean(p: &str) -> Result<(), &'static str> {
    if p.starts_with('/') {
        return Err("must be a relative path");
    }
    if p.contains('\0') {
        return Err("must not contain a NUL byte");
    }
    if p.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
        return Err("must not contain '..', '.' or empty components");
    }
    Ok(())
}

fn capability_list(path: &str, names: &[String], issues: &mut Issues) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, n) in names.iter().enumerate() {
        let p = push_index(path, i);
        if n == "ALL" {
            out.insert(n.clone());
        } else if let Some(bare) = n.strip_prefix("CAP_") {
            issues.error(
                p,
                format!("{n:?}: write capabilities without the CAP_ prefix (\"{bare}\")"),
            );
        } else if ALL_CAPABILITIES.contains(&n.as_str()) {
            out.insert(n.clone());
        } else if n.eq_ignore_ascii_case("ALL") {
            issues.error(p, format!("{n:?}: did you mean \"ALL\"?"));
        } else if ALL_CAPABILITIES.contains(&n.to_ascii_uppercase().as_str()) {
            issues.error(
                p,
                format!(
                    "{n:?}: capability names are upper case (\"{}\")",
                    n.to_ascii_uppercase()
                ),
            );
        } else {
            issues.error(p, format!("{n:?} is not a Linux capability"));
        }
    }
    out
}

pub fn container_security(
    path: &str,
    sc: Option<&SecurityContext>,
    pod: &PodSecurity,
    node: &NodeInfo,
    issues: &mut Issues,
) -> SecurityPlan {
    let default = SecurityContext::default();
    let sc = sc.unwrap_or(&default);
    let k = |key: &str| push_key(path, key);
    let privileged = sc.privileged.unwrap_or(false);
    if privileged && !node.allow_privileged {
        issues.error(
            k("privileged"),
            "privileged containers are refused; start podagent with --allow-privileged to permit them",
        );
    }
    let unmasked_proc = match sc.proc_mount.as_deref() {
        None | Some("Default") => false,
        Some("Unmasked") => {
            if !node.allow_privileged {
                issues.error(
                    k("procMount"),
                    "an Unmasked /proc is refused; start podagent with --allow-privileged to permit it",
                );
            }
            true
        }
        Some(other) => {
            issues.error(
                k("procMount"),
                format!("{other:?} is not one of \"Default\", \"Unmasked\""),
            );
            false
        }
    };
    let mut caps: BTreeSet<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    if let Some(c) = &sc.capabilities {
        let drop = capability_list(&push_key(&k("capabilities"), "drop"), &c.drop, issues);
        let add = capability_list(&push_key(&k("capabilities"), "add"), &c.add, issues);
        if drop.contains("ALL") {
            caps.clear();
        } else {
            caps.retain(|c| !drop.contains(c));
        }
        if add.contains("ALL") {
            caps.extend(ALL_CAPABILITIES.iter().map(|s| s.to_string()));
        } else {
            caps.extend(add);
        }
    }
    if privileged {
        caps = ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    }
    let no_new_privs = match sc.allow_privilege_escalation {
        Some(false) => {
            if privileged {
                issues.error(
                    k("allowPrivilegeEscalation"),
                    "cannot be false when privileged is true",
                );
            }
            if caps.contains("SYS_ADMIN") {
                issues.error(
                    k("allowPrivilegeEscalation"),
                    "cannot be false when the SYS_ADMIN capability is added",
                );
            }
            true
        }
        Some(true) => false,
        // Stricter than the kubelet: no_new_privs unless the manifest asks.
        None => !privileged,
    };
    let run_as_user = id(issues, k("runAsUser"), sc.run_as_user).or(pod.run_as_user);
    let run_as_non_root = sc.run_as_non_root.unwrap_or(pod.run_as_non_root);
    if run_as_non_root && run_as_user == Some(0) {
        issues.error(
            k("runAsNonRoot"),
            "runAsNonRoot is true but runAsUser is 0 (root)",
        );
    }
    let seccomp = match &sc.seccomp_profile {
        Some(p) => seccomp(&k("seccompProfile"), p, node, issues),
        None => None,
    }
    .or_else(|| pod.seccomp.clone())
    .unwrap_or(if privileged {
        SeccompPolicy::Unconfined
    } else {
        SeccompPolicy::RuntimeDefault
    });
    if sc.se_linux_options.is_some() {
        issues.note(
            k("seLinuxOptions"),
            "ignored: this node does not run SELinux",
        );
    }
    if sc.app_armor_profile.is_some() {
        issues.error(
            k("appArmorProfile"),
            "AppArmor profiles are not supported by podagent",
        );
    }
    if sc.windows_options.is_some() {
        issues.note(k("windowsOptions"), "ignored on Linux");
    }
    let mut groups = pod.supplemental_groups.clone();
    if let Some(fs) = pod.fs_group {
        if !groups.contains(&fs) {
            groups.push(fs);
        }
    }
    SecurityPlan {
        run_as_user,
        run_as_group: id(issues, k("runAsGroup"), sc.run_as_group).or(pod.run_as_group),
        run_as_non_root,
        supplemental_groups: groups,
        capabilities: caps.into_iter().collect(),
        no_new_privs,
        privileged,
        read_only_root_filesystem: sc.read_only_root_filesystem.unwrap_or(false),
        seccomp,
        unmasked_proc,
    }
}
