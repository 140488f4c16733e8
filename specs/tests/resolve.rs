//! Manifests in, resolved numbers and placed diagnostics out.

use specs::cpuset::CpuSet;
use specs::plan::{EnvValue, HostPathType, QosClass, RestartPolicy, SeccompPolicy, VolumeSource};
use specs::{load, Diagnostic, NodeInfo, Severity};

const GIB: u64 = 1 << 30;

fn node() -> NodeInfo {
    NodeInfo {
        node_name: "edge-1".into(),
        memory_bytes: 16 * GIB,
        cpus: Some(CpuSet::parse("0-3").unwrap()),
        ..NodeInfo::default()
    }
}

fn errors(d: &[Diagnostic]) -> Vec<String> {
    d.iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect()
}

fn one_pod(yaml: &str) -> specs::PodPlan {
    let r = load("pod.yaml", yaml.as_bytes(), &node());
    assert!(!r.has_errors(), "{:#?}", r.diagnostics);
    assert_eq!(r.pods.len(), 1);
    r.pods.into_iter().next().unwrap()
}

fn pod_with_resources(resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: busybox\n    resources:\n{resources}"
    )
}

#[test]
fn cpu_limit_of_250m_is_a_quota_of_25000_per_100000() {
    let p = one_pod(&pod_with_resources(
        "      limits: {cpu: 250m, memory: 64Mi}\n",
    ));
    let r = &p.containers[0].resources;
    assert_eq!(r.cfs_quota_us, Some(25_000));
    assert_eq!(r.cfs_period_us, 100_000);
    // The request defaults to the limit: shares of 250m.
    assert_eq!(r.cpu_shares, 256);
    assert_eq!(r.memory_limit_bytes, Some(64 << 20));
    assert_eq!(p.qos_class, QosClass::Guaranteed);
    assert_eq!(r.oom_score_adj, -997);
}

#[test]
fn cpu_request_of_100m_gets_102_shares_and_no_quota() {
    let p = one_pod(&pod_with_resources("      requests: {cpu: 100m}\n"));
    let r = &p.containers[0].resources;
    assert_eq!(r.cpu_shares, 102);
    assert_eq!(r.cpu_weight, 17);
    assert_eq!(r.cfs_quota_us, None);
    assert_eq!(p.qos_class, QosClass::Burstable);
    assert_eq!(
        r.oom_score_adj, 999,
        "no memory request: the top of the Burstable range"
    );
}

#[test]
fn burstable_oom_score_adj_uses_the_node_memory() {
    let p = one_pod(&pod_with_resources(
        "      requests: {memory: 4Gi}\n      limits: {memory: 8Gi}\n",
    ));
    assert_eq!(p.containers[0].resources.oom_score_adj, 750);
}

#[test]
fn best_effort_pods_get_two_shares_and_oom_score_adj_1000() {
    let p = one_pod("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: busybox}]\n");
    assert_eq!(p.qos_class, QosClass::BestEffort);
    assert_eq!(p.containers[0].resources.cpu_shares, 2);
    assert_eq!(p.containers[0].resources.oom_score_adj, 1000);
    assert_eq!(p.restart_policy, RestartPolicy::Always);
    assert_eq!(p.termination_grace_period_secs, 30);
    assert_eq!(p.hostname, "p");
    assert_eq!(p.pod_resources.pids_limit, 4096);
    assert_eq!(
        p.containers[0].security.seccomp,
        SeccompPolicy::RuntimeDefault
    );
    assert!(p.containers[0].security.no_new_privs);
    assert_eq!(p.containers[0].security.capabilities.len(), 14);
}

#[test]
fn yaml_numbers_are_quantities_too() {
    let p = one_pod(&pod_with_resources(
        "      limits: {cpu: 0.5, memory: 1e9}\n",
    ));
    assert_eq!(p.containers[0].resources.cpu_limit_milli, Some(500));
    assert_eq!(
        p.containers[0].resources.memory_limit_bytes,
        Some(1_000_000_000)
    );
}

#[test]
fn pod_cgroup_sums_app_containers_and_takes_the_largest_init() {
    let p = one_pod(
        "apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  initContainers:
  - {name: init, image: busybox, resources: {limits: {cpu: '2', memory: 1Gi}}}
  containers:
  - {name: a, image: busybox, resources: {limits: {cpu: 500m, memory: 64Mi}}}
  - {name: b, image: busybox, resources: {limits: {cpu: 250m, memory: 32Mi}}}
",
    );
    assert_eq!(
        p.pod_resources.cfs_quota_us,
        Some(200_000),
        "max(0.75 summed, 2 of the init container)"
    );
    assert_eq!(p.pod_resources.memory_limit_bytes, Some(GIB));
    assert_eq!(p.pod_resources.cpu_shares, 2048);
}

#[test]
fn annotations_pin_cpus_and_override_oom_settings() {
    let p = one_pod(
        "apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations:
    cpuset.podagent.io/c: '1,3'
    oom-score-adj.podagent.io/c: '100'
    oom-kill-disable.podagent.io/c: 'true'
    swap.podagent.io/c: 32Mi
    podagent.io/pids-limit: '64'
spec:
  containers:
  - {name: c, image: busybox, resources: {limits: {memory: 64Mi}}}
",
    );
    let r = &p.containers[0].resources;
    assert_eq!(r.cpuset.as_ref().unwrap().to_string(), "1,3");
    assert_eq!(r.oom_score_adj, 100);
    assert!(r.oom_kill_disable);
    assert_eq!(r.swap_limit_bytes, Some(32 << 20));
    assert_eq!(p.pod_resources.pids_limit, 64);
}

#[test]
fn env_resolves_metadata_and_resources_and_defers_the_pod_ip() {
    let p = one_pod(
        "apiVersion: v1
kind: Pod
metadata: {name: p, namespace: edge, labels: {app: web}}
spec:
  containers:
  - name: c
    image: busybox
    resources: {limits: {memory: 64Mi, cpu: 1500m}}
    env:
    - {name: A, value: one}
    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: \"metadata.labels['app']\"}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}
    - {name: A, value: two}
",
    );
    let env: Vec<(&str, &EnvValue)> = p.containers[0]
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let lit = |s: &str| EnvValue::Literal(s.into());
    assert_eq!(
        env,
        vec![
            ("POD", &lit("p")),
            ("NS", &lit("edge")),
            ("APP", &lit("web")),
            ("NODE", &lit("edge-1")),
            ("IP", &EnvValue::PodIp),
            ("MEM_MI", &lit("64")),
            ("CPU", &lit("2")),
            ("A", &lit("two")),
        ]
    );
}

#[test]
fn volumes_resolve_with_their_types() {
    let p = one_pod(
        "apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  volumes:
  - {name: scratch, emptyDir: {medium: Memory, sizeLimit: 16Mi}}
  - {name: host, hostPath: {path: /var/lib/data, type: DirectoryOrCreate}}
  - {name: plain}
  containers:
  - name: c
    image: busybox
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    - {name: host, mountPath: /data, subPath: sub/dir, readOnly: true}
",
    );
    assert_eq!(
        p.volumes[0].source,
        VolumeSource::EmptyDir {
            memory: true,
            size_limit_bytes: Some(16 << 20)
        }
    );
    assert_eq!(
        p.volumes[1].source,
        VolumeSource::HostPath {
            path: "/var/lib/data".into(),
            kind: HostPathType::DirectoryOrCreate
        }
    );
    assert_eq!(
        p.volumes[2].source,
        VolumeSource::EmptyDir {
            memory: false,
            size_limit_bytes: None
        }
    );
    let m = &p.containers[0].mounts[1];
    assert_eq!(
        (m.sub_path.as_deref(), m.read_only),
        (Some("sub/dir"), true)
    );
}

#[test]
fn multi_document_files_and_lists_yield_every_pod() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: busybox}]}\n---\n# only a comment\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: b}\n  spec: {containers: [{name: c, image: busybox}]}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: c}\n  spec: {containers: [{name: c, image: busybox}]}\n";
    let r = load("multi.yaml", yaml.as_bytes(), &node());
    assert!(r.diagnostics.is_empty(), "{:#?}", r.diagnostics);
    let names: Vec<_> = r.pods.iter().map(|p| p.name.to_string()).collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[test]
fn every_error_in_a_file_is_reported_with_its_position() {
    let yaml = "apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
  - name: a
    image: busybox
    resources:
      limits: {cpu: 100m}
      requests: {cpu: 200m}
  - name: a
    image: BusyBox
    ports:
    - containerPort: 0
";
    let r = load("f.yaml", yaml.as_bytes(), &node());
    assert_eq!(
        errors(&r.diagnostics),
        vec![
            "f.yaml:11:23: spec.containers[0].resources.requests.cpu: request 200m must be less than or equal to the limit 100m",
            "f.yaml:12:11: spec.containers[1].name: \"a\" is already the name of spec.containers[0]: container names are unique across init and app containers",
            "f.yaml:13:12: spec.containers[1].image: \"BusyBox\" is not an image reference: repository path component \"BusyBox\" is malformed: lower case letters and digits, separated by '.', '_', '__' or '-'",
            "f.yaml:15:22: spec.containers[1].ports[0].containerPort: 0 is not a port: must be between 1 and 65535",
        ]
    );
    assert!(r.pods.is_empty());
}

#[test]
fn a_missing_field_is_placed_at_its_parent() {
    let r = load(
        "f.yaml",
        b"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n",
        &node(),
    );
    assert_eq!(errors(&r.diagnostics), ["f.yaml:6:5: spec.containers[0].image: required (an image reference, e.g. \"busybox:latest\")"]);
}

#[test]
fn unknown_fields_are_errors_unless_the_node_only_warns_and_cluster_fields_are_noted() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  nodeSelector: {disk: ssd}\n  containers:\n  - name: c\n    image: busybox\n    comand: [sh]\n";
    // As kubectl apply's strict field validation: refused.
    let r = load("f.yaml", yaml.as_bytes(), &node());
    assert!(r.pods.is_empty(), "a typo does not run the image's command");
    let all: Vec<String> = r.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        all,
        [
            "f.yaml:5:18: note: spec.nodeSelector: ignored: a cluster-only field with no meaning on a single node",
            "f.yaml:9:5: spec.containers[0].comand: unknown field (misspelled? it is not part of the v1 Pod schema; the agent's --warn-unknown-fields makes it a warning)",
        ]
    );
    // With --warn-unknown-fields (kubectl's --validate=warn): a warning.
    let warn = NodeInfo {
        warn_unknown_fields: true,
        ..node()
    };
    let r = load("f.yaml", yaml.as_bytes(), &warn);
    assert!(!r.has_errors());
    assert_eq!(r.pods.len(), 1, "warnings do not stop a pod");
    let all: Vec<String> = r.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        all[1],
        "f.yaml:9:5: warning: spec.containers[0].comand: unknown field, ignored (misspelled? it is not part of the v1 Pod schema)"
    );
}

#[test]
fn unsupported_fields_that_change_what_runs_are_errors() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  volumes: [{name: v, persistentVolumeClaim: {claimName: x}}]\n  containers:\n  - name: c\n    image: busybox\n    envFrom: [{configMapRef: {name: x}}]\n";
    let r = load("f.yaml", yaml.as_bytes(), &node());
    let e = errors(&r.diagnostics);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].contains("persistentVolumeClaim volumes are not supported"));
    assert!(e[1].contains("spec.containers[0].envFrom"));
}

#[test]
fn lifecycle_hooks_resolve_and_bad_ones_are_placed() {
    use specs::plan::{HookAction, ProbeAction};
    let p = one_pod(
        "apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  terminationGracePeriodSeconds: 20
  os: {name: linux}
  containers:
  - name: c
    image: busybox
    ports: [{name: http, containerPort: 8080}]
    lifecycle:
      postStart: {exec: {command: [sh, -c, 'echo up > /tmp/up']}}
      preStop: {httpGet: {path: /quit, port: http}}
      stopSignal: SIGQUIT
  - name: d
    image: busybox
    lifecycle: {preStop: {sleep: {seconds: 5}}}
",
    );
    let l = p.containers[0].lifecycle.as_ref().unwrap();
    assert_eq!(
        l.post_start,
        Some(HookAction::Run(ProbeAction::Exec {
            command: vec!["sh".into(), "-c".into(), "echo up > /tmp/up".into()]
        }))
    );
    assert!(matches!(
        &l.pre_stop,
        Some(HookAction::Run(ProbeAction::HttpGet { path, port: 8080, .. })) if path == "/quit"
    ));
    assert_eq!(l.stop_signal.as_deref(), Some("SIGQUIT"));
    let d = p.containers[1].lifecycle.as_ref().unwrap();
    assert_eq!(d.pre_stop, Some(HookAction::Sleep { seconds: 5 }));

    let bad = "apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  terminationGracePeriodSeconds: 10
  initContainers:
  - {name: i, image: busybox, lifecycle: {postStart: {exec: {command: [x]}}}}
  containers:
  - name: c
    image: busybox
    lifecycle:
      postStart: {tcpSocket: {port: 80}}
      preStop: {sleep: {seconds: 11}}
      stopSignal: SIGTERM
  - name: d
    image: busybox
    lifecycle: {preStop: {exec: {command: [x]}, sleep: {seconds: 1}}}
";
    let r = load("f.yaml", bad.as_bytes(), &node());
    assert_eq!(
        errors(&r.diagnostics),
        [
            "f.yaml:7:43: spec.initContainers[0].lifecycle: init containers may not have lifecycle hooks (a sidecar, restartPolicy: Always, may)",
            "f.yaml:12:31: spec.containers[0].lifecycle.postStart.tcpSocket: tcpSocket is not a lifecycle handler (the kubelet fails such a hook): use exec, httpGet or sleep",
            "f.yaml:13:34: spec.containers[0].lifecycle.preStop.sleep.seconds: 11 must be non-negative and at most terminationGracePeriodSeconds (10)",
            "f.yaml:14:19: spec.containers[0].lifecycle.stopSignal: needs spec.os.name to be set (\"linux\")",
            "f.yaml:17:27: spec.containers[1].lifecycle.preStop: exactly one of exec, httpGet, sleep is required",
        ]
    );
}

#[test]
fn sidecars_are_init_containers_that_restart_and_count_in_the_pod_cgroup() {
    let p = one_pod(
        "apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  initContainers:
  - name: log
    image: busybox
    restartPolicy: Always
    startupProbe: {exec: {command: ['true']}}
    resources: {limits: {cpu: 500m, memory: 64Mi}}
  - {name: migrate, image: busybox, resources: {limits: {cpu: '1', memory: 256Mi}}}
  - {name: proxy, image: busybox, restartPolicy: Always, resources: {limits: {cpu: 250m, memory: 32Mi}}}
  containers:
  - {name: a, image: busybox, resources: {limits: {cpu: 500m, memory: 64Mi}}}
",
    );
    let names: Vec<(&str, bool)> = p
        .init_containers
        .iter()
        .map(|c| (c.name.as_str(), c.sidecar))
        .collect();
    assert_eq!(names, [("log", true), ("migrate", false), ("proxy", true)]);
    assert!(p.is_sidecar("proxy") && !p.is_sidecar("a"));
    assert!(p.init_containers[0].startup.is_some());
    // cpu: max(apps 0.5 + sidecars 0.75, migrate 1 + log 0.5) = 1.5;
    // memory: max(64 + 96, 256 + 64) Mi = 320 Mi.
    assert_eq!(p.pod_resources.cfs_quota_us, Some(150_000));
    assert_eq!(p.pod_resources.memory_limit_bytes, Some(320 << 20));

    let bad = "apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  initContainers:
  - {name: i, image: busybox, restartPolicy: OnFailure}
  - {name: j, image: busybox, readinessProbe: {exec: {command: [x]}}}
  containers:
  - {name: c, image: busybox, restartPolicy: Always}
";
    let r = load("f.yaml", bad.as_bytes(), &node());
    assert_eq!(
        errors(&r.diagnostics),
        [
            "f.yaml:6:46: spec.initContainers[0].restartPolicy: \"OnFailure\": an init container's restartPolicy may only be \"Always\"",
            "f.yaml:7:48: spec.initContainers[1].readinessProbe: init containers may not have probes (a sidecar, restartPolicy: Always, may)",
            "f.yaml:9:46: spec.containers[0].restartPolicy: only init containers may set restartPolicy",
        ]
    );
}

#[test]
fn security_context_is_validated_and_privilege_needs_the_flag() {
    let yaml = "apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  securityContext:
    runAsUser: -1
    sysctls:
    - {name: kernel.shm_rmid_forced, value: '1'}
    - {name: kernel.panic, value: '1'}
    - {name: net.core.somaxconn, value: '1024'}
    - {name: net.ipv4.ip_local_port_range, value: '1=2'}
  containers:
  - name: c
    image: busybox
    securityContext:
      privileged: true
      capabilities: {add: [CAP_NET_ADMIN, sys_time, FLY]}
      seccompProfile: {type: Localhost, localhostProfile: ../../etc/shadow}
";
    let r = load("f.yaml", yaml.as_bytes(), &node());
    let e = errors(&r.diagnostics).join("\n");
    for expected in [
        "spec.securityContext.runAsUser: -1 is not a valid id",
        "spec.securityContext.sysctls[1].name: \"kernel.panic\" is not namespaced",
        "spec.securityContext.sysctls[2].name: \"net.core.somaxconn\" is not in the safe list",
        "spec.securityContext.sysctls[3].value: \"1=2\" must not contain '+' or '='",
        "spec.containers[0].securityContext.privileged: privileged containers are refused",
        "spec.containers[0].securityContext.capabilities.add[0]: \"CAP_NET_ADMIN\": write capabilities without the CAP_ prefix (\"NET_ADMIN\")",
        "spec.containers[0].securityContext.capabilities.add[1]: \"sys_time\": capability names are upper case (\"SYS_TIME\")",
        "spec.containers[0].securityContext.capabilities.add[2]: \"FLY\" is not a Linux capability",
        "spec.containers[0].securityContext.seccompProfile.localhostProfile: \"../../etc/shadow\" must not contain '..'",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
    let mut allowed = node();
    allowed.allow_privileged = true;
    allowed.allow_unsafe_sysctls = true;
    let fixed = yaml
        .replace("runAsUser: -1", "runAsUser: 1000")
        .replace("    - {name: kernel.panic, value: '1'}\n", "")
        .replace("1=2", "1024 2048")
        .replace("[CAP_NET_ADMIN, sys_time, FLY]", "[NET_ADMIN]")
        .replace("../../etc/shadow", "profiles/strict.json");
    allowed
        .seccomp_profiles
        .insert("profiles/strict.json".into());
    let r = load("f.yaml", fixed.as_bytes(), &allowed);
    assert!(!r.has_errors(), "{:#?}", r.diagnostics);
    let s = &r.pods[0].containers[0].security;
    assert!(s.privileged);
    assert_eq!(s.capabilities.len(), 41, "privileged gets every capability");
    assert_eq!(s.run_as_user, Some(1000));
    assert_eq!(
        s.seccomp,
        SeccompPolicy::Localhost("profiles/strict.json".into())
    );
    assert_eq!(r.pods[0].sysctls.len(), 3);
}

#[test]
fn capabilities_drop_and_add_on_the_default_set() {
    let p = one_pod("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    securityContext: {capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}, allowPrivilegeEscalation: true}\n");
    let s = &p.containers[0].security;
    assert_eq!(s.capabilities, ["NET_BIND_SERVICE"]);
    assert!(
        !s.no_new_privs,
        "allowPrivilegeEscalation: true turns no_new_privs off"
    );
}

#[test]
fn mounts_over_proc_sys_or_dev_and_escaping_subpaths_are_refused() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  volumes: [{name: v, emptyDir: {}}, {name: h, hostPath: {path: /var/../etc}}]\n  containers:\n  - name: c\n    image: busybox\n    volumeMounts:\n    - {name: v, mountPath: /dev/shm}\n    - {name: v, mountPath: /data, subPath: ../../etc}\n    - {name: v, mountPath: /sys/fs/cgroup}\n";
    let e = errors(&load("f.yaml", yaml.as_bytes(), &node()).diagnostics).join("\n");
    assert!(
        e.contains("spec.volumes[1].hostPath.path: \"/var/../etc\" must be normalised"),
        "{e}"
    );
    assert!(e.contains("volumeMounts[0].mountPath: \"/dev/shm\": mounting over /, /proc, /sys or /dev is refused"), "{e}");
    assert!(
        e.contains("volumeMounts[1].subPath: \"../../etc\" must not contain '..'"),
        "{e}"
    );
    assert!(
        e.contains("volumeMounts[2].mountPath: \"/sys/fs/cgroup\""),
        "{e}"
    );
}

#[test]
fn the_hash_ignores_key_order_whitespace_and_comments() {
    let a = one_pod("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: busybox, command: [sleep, '1']}]\n");
    let b = one_pod("# a comment\nkind: Pod\napiVersion: v1\nspec:\n  containers:\n    - command:\n        - sleep\n        - \"1\"\n      image: busybox   # same image\n      name: c\nmetadata:\n  name: p\n");
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.containers[0].hash, b.containers[0].hash);
    let c = one_pod("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: busybox, command: [sleep, '2']}]\n");
    assert_ne!(a.hash, c.hash);
    assert_ne!(a.containers[0].hash, c.containers[0].hash);
}

#[test]
fn a_resources_only_change_keeps_the_container_hash() {
    let a = one_pod(&pod_with_resources("      limits: {cpu: 250m}\n"));
    let b = one_pod(&pod_with_resources("      limits: {cpu: 500m}\n"));
    assert_ne!(a.hash, b.hash, "the pod changed");
    assert_eq!(
        a.containers[0].hash, b.containers[0].hash,
        "but only its resources: resize in place"
    );
}

#[test]
fn a_pod_defined_twice_in_one_file_is_an_error() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: busybox}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: busybox}]}\n";
    let r = load("f.yaml", yaml.as_bytes(), &node());
    assert_eq!(r.pods.len(), 1);
    assert_eq!(errors(&r.diagnostics), ["f.yaml:8:18: metadata.name: pod \"p\" is defined twice in this file (first at the document)"]);
}

#[test]
fn garbage_never_panics_and_is_an_error() {
    for bytes in [
        &b"\xff\xfe"[..],
        b"[",
        b"- a\n- b\n",
        b"42",
        b"kind: Deployment\napiVersion: apps/v1\n",
        b"apiVersion: v1\nkind: List\nitems: 3\n",
    ] {
        let r = load("g.yaml", bytes, &node());
        assert!(
            r.has_errors(),
            "{:?} must be an error",
            String::from_utf8_lossy(bytes)
        );
        assert!(r.pods.is_empty());
    }
}

#[test]
fn grpc_probes_resolve_and_need_a_port() {
    let p = one_pod(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    livenessProbe: {grpc: {port: 9090, service: db}, periodSeconds: 3}\n",
    );
    let probe = p.containers[0].liveness.as_ref().unwrap();
    assert_eq!(
        probe.action,
        specs::plan::ProbeAction::Grpc {
            port: 9090,
            service: Some("db".into())
        }
    );
    assert_eq!(probe.period_secs, 3);
    let r = load(
        "pod.yaml",
        b"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    readinessProbe: {grpc: {service: db}}\n",
        &node(),
    );
    let e = errors(&r.diagnostics);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("readinessProbe.grpc.port"), "{e:?}");
}

#[test]
fn a_host_ip_is_one_ipv4_address_or_all() {
    let port = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    ports: [{{containerPort: 80, hostPort: 8080, hostIP: '{ip}'}}]\n"
        )
    };
    let ip_of = |ip: &str| one_pod(&port(ip)).containers[0].ports[0].host_ip.clone();
    assert_eq!(ip_of("127.0.0.1"), Some("127.0.0.1".into()));
    assert_eq!(ip_of("0.0.0.0"), None, "every address");
    assert_eq!(ip_of("::"), None, "every address");
    let out = load("p.yaml", port("fd00::1").as_bytes(), &node());
    let e = errors(&out.diagnostics);
    assert!(
        e.iter()
            .any(|e| e.contains("hostIP") && e.contains("the pod network is IPv4")),
        "{e:?}"
    );
    let out = load("p.yaml", port("not-an-ip").as_bytes(), &node());
    assert!(errors(&out.diagnostics)
        .iter()
        .any(|e| e.contains("is not an IP address")));
}

#[test]
fn active_deadline_seconds_is_a_positive_number_of_seconds() {
    let pod = |v: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  activeDeadlineSeconds: {v}\n  containers: [{{name: c, image: busybox}}]\n")
    };
    assert_eq!(one_pod(&pod("30")).active_deadline_secs, Some(30));
    let r = load("p.yaml", pod("0").as_bytes(), &node());
    assert!(
        errors(&r.diagnostics)
            .iter()
            .any(|e| e.contains("activeDeadlineSeconds") && e.contains("must be a positive number")),
        "{:?}",
        r.diagnostics
    );
}

#[test]
fn downward_api_and_projected_volumes_resolve_to_files() {
    use specs::plan::FilePlan;
    let p = one_pod(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: p
  namespace: edge
  labels: {app: web, tier: front}
  annotations: {build: "42", note: 'say "hi"'}
spec:
  volumes:
  - name: info
    downwardAPI:
      defaultMode: 0600
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: annotations, fieldRef: {fieldPath: metadata.annotations}}
      - {path: meta/name, fieldRef: {fieldPath: metadata.name}, mode: 0444}
      - {path: mem, resourceFieldRef: {containerName: c, resource: limits.memory, divisor: 1Mi}}
  - name: all
    projected:
      sources:
      - downwardAPI:
          items:
          - {path: build, fieldRef: {fieldPath: "metadata.annotations['build']"}}
          - {path: ns, fieldRef: {fieldPath: metadata.namespace}}
  containers:
  - name: c
    image: busybox
    resources: {limits: {memory: 64Mi}}
    volumeMounts: [{name: info, mountPath: /info}, {name: all, mountPath: /all}]
"#,
    );
    let files = |i: usize| match &p.volumes[i].source {
        VolumeSource::Files { files } => files.clone(),
        other => panic!("{other:?}"),
    };
    let f = |path: &str, content: &str, mode: u32| FilePlan {
        path: path.into(),
        content: content.into(),
        mode,
    };
    assert_eq!(
        files(0),
        [
            f("labels", "app=\"web\"\ntier=\"front\"", 0o600),
            f(
                "annotations",
                "build=\"42\"\nnote=\"say \\\"hi\\\"\"",
                0o600
            ),
            f("meta/name", "p", 0o444),
            f("mem", "64", 0o600),
        ]
    );
    assert_eq!(files(1), [f("build", "42", 0o644), f("ns", "edge", 0o644)]);

    let bad = r#"apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  volumes:
  - name: a
    downwardAPI:
      items:
      - {path: ../x, fieldRef: {fieldPath: metadata.name}}
      - {path: ip, fieldRef: {fieldPath: status.podIP}}
      - {path: cpu, resourceFieldRef: {resource: limits.cpu}}
      - {path: name, fieldRef: {fieldPath: metadata.name}}
      - {path: name, fieldRef: {fieldPath: metadata.uid}}
  - name: b
    projected:
      sources: [{configMap: {name: settings}}]
  containers:
  - {name: c, image: busybox}
"#;
    let r = load("f.yaml", bad.as_bytes(), &node());
    assert_eq!(
        errors(&r.diagnostics),
        [
            "f.yaml:9:16: spec.volumes[0].downwardAPI.items[0].path: \"../x\" must not contain '..', '.' or empty components",
            "f.yaml:10:42: spec.volumes[0].downwardAPI.items[1].fieldRef.fieldPath: \"status.podIP\" is not a field a downwardAPI volume may show (metadata.name, metadata.namespace, metadata.uid, metadata.labels, metadata.annotations, metadata.labels['k'], metadata.annotations['k'])",
            "f.yaml:11:40: spec.volumes[0].downwardAPI.items[2].resourceFieldRef.containerName: required in a volume",
            "f.yaml:13:16: spec.volumes[0].downwardAPI.items[4].path: \"name\" is given twice (or is a file and a directory)",
            "f.yaml:16:30: spec.volumes[1].projected.sources[0].configMap: configMap projections need an API server's objects: not supported by podagent (supported: downwardAPI)",
        ]
    );
}

#[test]
fn host_users_false_gives_a_user_namespace_and_refuses_what_it_cannot_have() {
    let base = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  hostUsers: false\n";
    let p = one_pod(&format!(
        "{base}  containers: [{{name: c, image: busybox}}]\n"
    ));
    assert!(p.user_namespace);
    let plain = one_pod(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: busybox}]\n",
    );
    assert!(!plain.user_namespace);
    let bad = format!(
        "{base}  hostNetwork: true\n  shareProcessNamespace: true\n  containers: [{{name: c, image: busybox, securityContext: {{privileged: true}}}}]\n"
    );
    let node = NodeInfo {
        allow_privileged: true,
        ..node()
    };
    let r = load("f.yaml", bad.as_bytes(), &node);
    assert_eq!(
        errors(&r.diagnostics),
        [
            "f.yaml:5:14: spec.hostUsers: false is not allowed with hostNetwork: true",
            "f.yaml:5:14: spec.hostUsers: false with shareProcessNamespace: true is not supported by podagent",
            "f.yaml:5:14: spec.hostUsers: false with a privileged container is not supported by podagent",
        ]
    );
}

#[test]
fn cluster_only_fields_are_validated_as_the_api_server_does() {
    let table: [(&str, &str); 11] = [
        (
            "  tolerations: [{key: k, operator: Bogus}]\n",
            "spec.tolerations[0].operator: Unsupported value: \"Bogus\": supported values: \"Equal\", \"Exists\"",
        ),
        (
            "  nodeSelector: {\"bad key!\": x}\n",
            "spec.nodeSelector[\"bad key!\"]: \"bad key!\": Invalid value:",
        ),
        (
            "  serviceAccountName: Bad_Name\n",
            "spec.serviceAccountName: \"Bad_Name\": Invalid value:",
        ),
        (
            "  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: Bogus, values: [a]}]}]}}}\n",
            "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator: Unsupported value: \"Bogus\": supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\", \"Gt\", \"Lt\"",
        ),
        (
            "  affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: h, labelSelector: {matchExpressions: [{key: app, operator: Gt, values: ['1']}]}}]}}\n",
            "matchExpressions[0].operator: Unsupported value: \"Gt\": supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\"",
        ),
        (
            "  topologySpreadConstraints: [{maxSkew: 0, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}]\n",
            "spec.topologySpreadConstraints[0].maxSkew: Invalid value: 0: must be greater than zero",
        ),
        (
            "  overhead: {cpu: bogus}\n",
            "spec.overhead.cpu: \"bogus\": quantities must match",
        ),
        (
            "  runtimeClassName: Bad_Class\n",
            "spec.runtimeClassName: \"Bad_Class\": Invalid value:",
        ),
        (
            "  securityContext: {seccompProfile: {type: Unconfined, localhostProfile: x}}\n",
            "spec.securityContext.seccompProfile.localhostProfile: Invalid value: can only be set when seccomp profile type is Localhost",
        ),
        (
            "  tolerations: [{key: k, operator: Exists, value: v}]\n",
            "spec.tolerations[0].operator: Invalid value: value must be empty when `operator` is 'Exists'",
        ),
        (
            "  containers: [{name: d, image: busybox, securityContext: {capabilities: {drop: [all]}}}]\n",
            "spec.containers[0].securityContext.capabilities.drop[0]: \"all\": did you mean \"ALL\"?",
        ),
    ];
    for (field, want) in table {
        let yaml = if field.contains("containers:") {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{field}")
        } else {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{field}  containers: [{{name: c, image: busybox}}]\n")
        };
        let r = load("f.yaml", yaml.as_bytes(), &node());
        let e = errors(&r.diagnostics);
        assert!(e.len() == 1 && e[0].contains(want), "{field}: {e:#?}");
    }
    // What a cluster accepts is accepted, then noted.
    let ok = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  terminationGracePeriodSeconds: -1\n  nodeSelector: {kubernetes.io/os: linux}\n  tolerations: [{operator: Exists}]\n  serviceAccountName: edge-sa\n  topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: ScheduleAnyway}]\n  overhead: {cpu: 250m}\n  containers: [{name: c, image: busybox}]\n";
    let p = one_pod(ok);
    assert_eq!(
        p.termination_grace_period_secs, 1,
        "a negative grace period is 1"
    );
}
