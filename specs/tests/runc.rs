//! The generated config.json is accepted by a real OCI runtime, and what the
//! container sees is what the plan said: `runc run` of a busybox rootfs, with a
//! checker script inside the container printing what it observes.
//!
//! The pod is Burstable (oom_score_adj 999): a Guaranteed pod's -997 needs
//! CAP_SYS_RESOURCE, which root lacks on some hosts (the runtime, not the spec,
//! deals with that).
//!
//! Needs root, runc and busybox-static. Outside CI a missing prerequisite skips
//! with a message; with CI=true it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use specs::oci::{container_spec, OciInputs};
use specs::NodeInfo;

fn prerequisites() -> Result<(PathBuf, PathBuf), String> {
    if !nix_is_root() {
        return Err("needs root".into());
    }
    let runc = which("runc").ok_or("runc is not installed (apt-get install runc)")?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or("busybox is not installed (apt-get install busybox-static)")?;
    Ok((runc, busybox))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// Skips outside CI, fails in CI.
fn require() -> Option<(PathBuf, PathBuf)> {
    match prerequisites() {
        Ok(p) => Some(p),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI=true and {why}"),
        Err(why) => {
            eprintln!("skipping: {why}");
            None
        }
    }
}

/// A container id and cgroup path unique to this run; the runc state and the
/// cgroups are removed on drop, even when the test panics.
struct Runc {
    runc: PathBuf,
    state: tempfile::TempDir,
    id: String,
}

impl Drop for Runc {
    fn drop(&mut self) {
        let _ = Command::new(&self.runc)
            .arg("--root")
            .arg(self.state.path())
            .args(["delete", "--force", &self.id])
            .output();
        for ctrl in [
            "cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "blkio", "freezer", "systemd",
        ] {
            let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(ctrl).join(&self.id));
        }
    }
}

fn busybox_rootfs(busybox: &Path, root: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "cat", "grep", "hostname", "id", "echo", "mount", "wc", "ls", "touch",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
}

const CHECKER: &str = r#"
echo "hostname=$(hostname)"
echo "pid=$$$$"  # the kubelet turns $$ into $
echo "uid=$(id -u)"
echo "greeting=$GREETING"
grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status
echo "quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)"
echo "shares=$(cat /sys/fs/cgroup/cpu/cpu.shares)"
echo "memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
echo "pids=$(cat /sys/fs/cgroup/pids/pids.max)"
echo "oom_score_adj=$(cat /proc/self/oom_score_adj)"
echo "timer_list=$(cat /proc/timer_list | wc -c)"
echo "firmware=$(ls /sys/firmware | wc -l)"
if mount -t tmpfs none /tmp 2>/dev/null; then echo mount=allowed; else echo mount=denied; fi
if echo x > /proc/sys/kernel/domainname 2>/dev/null; then echo procsys=writable; else echo procsys=readonly; fi
if touch /data/f 2>/dev/null; then echo data=writable; else echo data=readonly; fi
"#;

#[test]
fn runc_runs_the_generated_spec_with_the_planned_limits() {
    let Some((runc, busybox)) = require() else {
        return;
    };
    let yaml = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: runc-check}}
spec:
  hostname: planned-host
  volumes: [{{name: data, hostPath: {{path: /tmp}}}}]
  containers:
  - name: checker
    image: busybox
    command: [sh, -c, {checker:?}]
    env: [{{name: GREETING, value: hello}}]
    volumeMounts: [{{name: data, mountPath: /data, readOnly: true}}]
    resources:
      requests: {{cpu: 100m, memory: 16Mi}}
      limits: {{cpu: 200m, memory: 32Mi}}
",
        checker = CHECKER
    );
    let report = specs::load("runc.yaml", yaml.as_bytes(), &NodeInfo::default());
    assert!(!report.has_errors(), "{:#?}", report.diagnostics);
    let pod = &report.pods[0];

    let bundle = tempfile::tempdir().unwrap();
    let rootfs = bundle.path().join("rootfs");
    busybox_rootfs(&busybox, &rootfs);
    let data = tempfile::tempdir().unwrap();
    let id = format!("podagent-test-{}", std::process::id());
    let guard = Runc {
        runc: runc.clone(),
        state: tempfile::tempdir().unwrap(),
        id: id.clone(),
    };
    let inputs = OciInputs {
        rootfs: rootfs.clone(),
        cgroups_path: Some(PathBuf::from(format!("/{id}"))),
        volume_dirs: [("data".to_string(), data.path().to_path_buf())].into(),
        ..OciInputs::default()
    };
    let spec = container_spec(pod, &pod.containers[0], &inputs).unwrap();
    spec.save(bundle.path().join("config.json")).unwrap();

    let out = Command::new(&runc)
        .arg("--root")
        .arg(guard.state.path())
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "runc failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: std::collections::BTreeMap<&str, &str> = stdout
        .lines()
        .filter_map(|l| l.split_once(['=', ':']))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let expect = [
        ("hostname", "planned-host"),
        ("pid", "1"),
        ("uid", "0"),
        ("greeting", "hello"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
        ("quota", "20000"),
        ("shares", "102"),
        ("oom_score_adj", "999"),
        ("memory", "33554432"),
        ("pids", "4096"),
        // Masked (non-empty on the host; /proc/kcore does not exist on every
        // kernel, so it proves nothing).
        ("timer_list", "0"),
        ("firmware", "0"),
        ("mount", "denied"),
        ("procsys", "readonly"),
        ("data", "readonly"),
    ];
    for (k, v) in expect {
        assert_eq!(
            seen.get(k).copied(),
            Some(v),
            "{k} inside the container; full output:\n{stdout}"
        );
    }
    drop(guard);
    for ctrl in ["cpu", "memory", "pids"] {
        assert!(
            !Path::new("/sys/fs/cgroup").join(ctrl).join(&id).exists(),
            "cgroup {ctrl}/{id} left behind"
        );
    }
}
