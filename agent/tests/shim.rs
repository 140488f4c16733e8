//! `podagent shim` runs a container from a plan: a checker script inside the
//! container prints what it sees, and the test reads it back from the CRI log.
//! As root; each container gets new network, IPC, UTS, PID and mount
//! namespaces (the host's network is not touched) and a cgroup of the test's
//! own, removed afterwards. Outside CI a missing privilege skips; with CI=true
//! it fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

mod support;

use agent::cgroups::{detect, CgroupPath};
use agent::shim::{Exited, Started};
use specs::oci::{container_spec, ImageConfig, OciInputs};
use support::{busybox_rootfs, require};

/// What a run left: the shim's exit status, its records, the log records.
struct Run {
    shim_status: i32,
    started: Option<Started>,
    exited: Exited,
    /// (stream, text) of every log record.
    log: Vec<(String, String)>,
    cgroup: String,
}

impl Run {
    fn stdout(&self) -> BTreeMap<String, String> {
        self.log
            .iter()
            .filter(|(s, _)| s == "stdout")
            .filter_map(|(_, l)| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }
}

/// Runs the pod's first container through the shim and waits for it.
fn run_pod(yaml: &str, tweak_rootfs: impl FnOnce(&Path)) -> Run {
    let report = specs::load("shim.yaml", yaml.as_bytes(), &specs::NodeInfo::default());
    assert!(!report.has_errors(), "{:#?}", report.diagnostics);
    let pod = &report.pods[0];
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("bundle/rootfs");
    busybox_rootfs(&rootfs);
    tweak_rootfs(&rootfs);
    let driver = detect(Path::new("/proc/self/mountinfo")).unwrap().driver();
    let name = format!("podagent-shimtest-{}-{}", std::process::id(), pod.name);
    let cg_root = CgroupPath::new(&name).unwrap();
    let leaf = cg_root.join("c").unwrap();
    driver.create(&leaf).unwrap();
    // Removes the cgroups (and kills what is in them) even if an assertion
    // below fails.
    struct Cleanup<'a>(&'a dyn agent::cgroups::Cgroups, CgroupPath, CgroupPath);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill_all(&self.2);
            let _ = self.0.remove(&self.2);
            let _ = self.0.remove(&self.1);
        }
    }
    let _cleanup = Cleanup(driver.as_ref(), cg_root.clone(), leaf.clone());
    let inputs = OciInputs {
        rootfs: rootfs.clone(),
        image: ImageConfig {
            cmd: vec!["sh".into()],
            ..ImageConfig::default()
        },
        ..OciInputs::default()
    };
    let spec = container_spec(pod, &pod.containers[0], &inputs).unwrap();
    spec.save(dir.path().join("bundle/config.json")).unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("c.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_podagent"));
    cmd.arg("shim")
        .arg("--bundle")
        .arg(dir.path().join("bundle"))
        .arg("--state")
        .arg(&state)
        .arg("--log")
        .arg(&log);
    for f in driver.join_files(&leaf) {
        cmd.arg("--cgroup-join").arg(f);
    }
    let status = cmd.status().unwrap();
    let started = std::fs::read(state.join("state.json"))
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap());
    let exited: Exited =
        serde_json::from_slice(&std::fs::read(state.join("exit.json")).unwrap()).unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let records = text
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let ts = f.next().unwrap();
            assert!(ts.ends_with('Z') && ts.len() == 30, "CRI timestamp {ts:?}");
            let stream = f.next().unwrap().to_string();
            assert_eq!(f.next(), Some("F"));
            (stream, f.next().unwrap_or("").to_string())
        })
        .collect();
    let _ = driver.kill_all(&leaf);
    driver.remove(&leaf).unwrap();
    driver.remove(&cg_root).unwrap();
    for f in driver.procs_files(&leaf) {
        assert!(!f.parent().unwrap().exists(), "cgroup left behind");
    }
    Run {
        shim_status: status.code().unwrap_or(-1),
        started,
        exited,
        log: records,
        cgroup: leaf.as_path().display().to_string(),
    }
}

const CHECKER: &str = r#"
echo "hostname=$(hostname)"
echo "pid=$$$$"
echo "uid=$(id -u)"
echo "cwd=$(pwd)"
grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status | sed 's/:\t/=/'
echo "timer_list=$(cat /proc/timer_list | wc -c)"
echo "timer_list_dev=$(ls -l /proc/timer_list | awk '{print $1 $5 $6}')"
echo "firmware=$(ls /sys/firmware | wc -l)"
echo "fds=$(ls /proc/self/fd | tr '\n' ' ')"
echo "devices=$(ls /dev | tr '\n' ' ')"
echo "cgroup=$(grep -E '(:memory:|^0::)' /proc/self/cgroup | cut -d: -f3)"
if mount -t tmpfs none /tmp 2>/dev/null; then echo mount=allowed; else echo mount=denied; fi
if echo x > /proc/sys/kernel/domainname 2>/dev/null; then echo procsys=writable; else echo procsys=readonly; fi
if unshare -n true 2>/dev/null; then echo unshare=allowed; else echo unshare=denied; fi
echo "interfaces=$(ls /sys/class/net | tr '\n' ' ')"
echo "to stderr" >&2
exit 3
"#;

#[test]
fn a_container_runs_isolated_with_the_planned_limits_and_hardening() {
    if !require() {
        return;
    }
    let yaml = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: isolated}}
spec:
  hostname: box-1
  containers:
  - name: checker
    image: busybox
    workingDir: /work/deep
    command: [sh, -c, {CHECKER:?}]
    resources:
      requests: {{cpu: 100m, memory: 16Mi}}
      limits: {{cpu: 200m, memory: 64Mi}}
"
    );
    let run = run_pod(&yaml, |_| {});
    assert_eq!(run.shim_status, 0, "{:?}", run.exited);
    let started = run.started.as_ref().expect("state.json");
    assert!(started.pid > 1 && started.start_ticks > 0);
    assert_eq!(run.exited.exit_code, 3);
    assert_eq!(run.exited.reason, "Error");
    let out = run.stdout();
    let expect = [
        ("hostname", "box-1"),
        ("pid", "1"),
        ("uid", "0"),
        ("cwd", "/work/deep"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
        // The 14 default capabilities.
        ("CapEff", "00000000a80425fb"),
        // Masked: the host's /dev/null over files (about 7 kB on the host),
        // an empty tmpfs over directories (2 entries on the host).
        ("timer_list", "0"),
        ("timer_list_dev", "crw-rw-rw-1,3"),
        ("firmware", "0"),
        ("fds", "0 1 2 3 "),
        (
            "devices",
            "core fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero ",
        ),
        ("mount", "denied"),
        ("procsys", "readonly"),
        ("unshare", "denied"),
        ("interfaces", "lo "),
    ];
    for (k, v) in expect {
        assert_eq!(
            out.get(k).map(String::as_str),
            Some(v),
            "{k}; stdout: {out:#?}; log: {:?}",
            run.log
        );
    }
    assert_eq!(
        out.get("cgroup").map(|c| c.trim_start_matches('/')),
        Some(run.cgroup.as_str()),
        "the container ran in its cgroup"
    );
    assert!(run.log.contains(&("stderr".into(), "to stderr".into())));
    // Burstable: 999 is allowed to anyone.
    assert!(run.exited.warnings.is_empty(), "{:?}", run.exited.warnings);
}

#[test]
fn a_missing_executable_is_a_clear_start_error() {
    if !require() {
        return;
    }
    let run = run_pod(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: missing}\nspec:\n  containers: [{name: c, image: busybox, command: [/bin/nope]}]\n",
        |_| {},
    );
    assert_eq!(run.exited.reason, "StartError");
    assert_eq!(
        run.exited.message,
        "exec: executable file not found: /bin/nope"
    );
    assert!(run.started.is_none(), "it never started");
    let run = run_pod(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: missing-path}\nspec:\n  containers: [{name: c, image: busybox, command: [nope]}]\n",
        |_| {},
    );
    assert_eq!(
        run.exited.message,
        "exec: executable file not found in $PATH: nope"
    );
}

#[test]
fn an_image_whose_proc_is_a_symlink_is_refused() {
    if !require() {
        return;
    }
    let run = run_pod(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: evil-proc}\nspec:\n  containers: [{name: c, image: busybox, command: ['true']}]\n",
        |root| {
            std::fs::remove_dir(root.join("proc")).unwrap();
            std::os::unix::fs::symlink("/", root.join("proc")).unwrap();
        },
    );
    assert_eq!(run.exited.reason, "StartError");
    assert_eq!(
        run.exited.message,
        "rootfs: /proc in the image is a symlink: refused"
    );
}

#[test]
fn a_guaranteed_pods_oom_score_adj_is_applied_or_reported() {
    if !require() {
        return;
    }
    let run = run_pod(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: guaranteed}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'echo adj=$(cat /proc/self/oom_score_adj)']\n    resources: {limits: {cpu: 100m, memory: 32Mi}}\n",
        |_| {},
    );
    assert_eq!(run.exited.exit_code, 0, "{:?}", run.exited);
    let adj = run.stdout().get("adj").cloned().unwrap();
    if support::has_cap_sys_resource() {
        assert_eq!(adj, "-997");
    } else {
        // Root without CAP_SYS_RESOURCE: the container still runs, and the
        // shim records what it wanted and what it got.
        assert_ne!(adj, "-997");
        assert_eq!(
            run.exited.warnings,
            [format!(
                "oom_score_adj: wanted -997, got {adj} (lowering it needs CAP_SYS_RESOURCE)"
            )]
        );
    }
}

#[test]
fn volumes_are_mounted_and_read_only_ones_stay_read_only() {
    if !require() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("data.txt"), "from the host").unwrap();
    let yaml = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: volumes}}
spec:
  volumes: [{{name: data, hostPath: {{path: {host}}}}}]
  containers:
  - name: c
    image: busybox
    command: [sh, -c, 'echo read=$(cat /data/data.txt); if touch /data/x 2>/dev/null; then echo write=ok; else echo write=refused; fi']
    volumeMounts: [{{name: data, mountPath: /data, readOnly: true}}]
",
        host = host.path().display()
    );
    let report = specs::load("v.yaml", yaml.as_bytes(), &specs::NodeInfo::default());
    assert!(!report.has_errors(), "{:#?}", report.diagnostics);
    // run_pod builds inputs without volumes: build this one by hand.
    let pod = &report.pods[0];
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("bundle/rootfs");
    busybox_rootfs(&rootfs);
    let inputs = OciInputs {
        rootfs,
        volume_dirs: [("data".to_string(), host.path().to_path_buf())].into(),
        ..OciInputs::default()
    };
    container_spec(pod, &pod.containers[0], &inputs)
        .unwrap()
        .save(dir.path().join("bundle/config.json"))
        .unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_podagent"))
        .args(["shim", "--bundle"])
        .arg(dir.path().join("bundle"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--log")
        .arg(dir.path().join("c.log"))
        .status()
        .unwrap();
    let exited = std::fs::read_to_string(dir.path().join("state/exit.json")).unwrap_or_default();
    assert!(status.success(), "{exited}");
    let log = std::fs::read_to_string(dir.path().join("c.log")).unwrap();
    assert!(log.contains(" stdout F read=from the host\n"), "{log}");
    assert!(log.contains(" stdout F write=refused\n"), "{log}");
    assert!(!host.path().join("x").exists());
}

#[test]
fn without_no_new_privs_the_filter_is_still_installed() {
    if !require() {
        return;
    }
    let run = run_pod(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: escalating}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, \"grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | sed 's/:\\t/=/'\"]\n    securityContext: {allowPrivilegeEscalation: true}\n",
        |_| {},
    );
    assert_eq!(run.exited.exit_code, 0, "{:?}", run.exited);
    let out = run.stdout();
    assert_eq!(out.get("NoNewPrivs").map(String::as_str), Some("0"));
    assert_eq!(out.get("Seccomp").map(String::as_str), Some("2"));
}

#[test]
fn a_symlink_in_the_image_cannot_redirect_a_volume_onto_the_host() {
    if !require() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("planted"), "volume content\n").unwrap();
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: symlink-attack}}\nspec:\n  volumes: [{{name: v, hostPath: {{path: {}}}}}]\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'cat /data/planted; ls /etc/planted']\n    volumeMounts: [{{name: v, mountPath: /data}}]\n",
        host.path().display()
    );
    let report = specs::load("s.yaml", yaml.as_bytes(), &specs::NodeInfo::default());
    assert!(!report.has_errors(), "{:#?}", report.diagnostics);
    let pod = &report.pods[0];
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("bundle/rootfs");
    busybox_rootfs(&rootfs);
    // The image's /data points at the host's /etc.
    std::os::unix::fs::symlink("/etc", rootfs.join("data")).unwrap();
    let inputs = OciInputs {
        rootfs: rootfs.clone(),
        volume_dirs: [("v".to_string(), host.path().to_path_buf())].into(),
        ..OciInputs::default()
    };
    container_spec(pod, &pod.containers[0], &inputs)
        .unwrap()
        .save(dir.path().join("bundle/config.json"))
        .unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_podagent"))
        .args(["shim", "--bundle"])
        .arg(dir.path().join("bundle"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--log")
        .arg(dir.path().join("c.log"))
        .status()
        .unwrap();
    assert!(status.success());
    let log = std::fs::read_to_string(dir.path().join("c.log")).unwrap();
    // The link was followed inside the container's root: the volume landed on
    // the image's /etc, never on the host's.
    assert!(log.contains(" stdout F volume content\n"), "{log}");
    assert!(log.contains(" stdout F /etc/planted\n"), "{log}");
    assert!(
        !Path::new("/etc/planted").exists(),
        "the host's /etc was mounted over"
    );
    let host_etc_mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some("/etc"));
    assert!(!host_etc_mounted);
}
