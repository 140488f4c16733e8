//! The fixture of the agent's privileged tests: an image store with the
//! busybox image, a runtime whose cgroups live below a root of the test's
//! own (all removed on drop, even after a panic), a private network node,
//! and the agent started on a pods dir of the fixture's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use agent::cgroups::{detect, CgroupPath};
use agent::image::ImageStore;
use agent::runtime::{sandbox, Runtime};

use super::{busybox_rootfs, mounts_under};

#[derive(Debug)]
pub struct Fixture {
    pub rt: Runtime,
    pub cg_root: CgroupPath,
    pub dir: tempfile::TempDir,
}

impl Drop for Fixture {
    /// Whatever a test left (it may have panicked half-way): processes,
    /// mounts, cgroups, directories.
    fn drop(&mut self) {
        let _ = self.rt.gc(&|_| false);
        // What an agent test's agent left (one SIGKILLed before the test
        // failed): its pods' processes, mounts, cgroups and network
        // namespaces, from its own state dir and cgroup root.
        let agent_state = self.dir.path().join("agent-state");
        if agent_state.exists() {
            if let (Ok(images), Ok(found)) = (
                ImageStore::open(&self.dir.path().join("store")),
                detect(Path::new("/proc/self/mountinfo")),
            ) {
                let agent_rt = Runtime {
                    state_dir: agent_state.clone(),
                    images,
                    cgroups: found.driver(),
                    cgroup_root: format!("{}/agent", self.cg_root.as_path().display()),
                    podagent: self.rt.podagent.clone(),
                    cpus: None,
                    registry: None,
                    seccomp_dir: PathBuf::from("/nonexistent"),
                    host_ip: None,
                };
                let _ = agent_rt.gc(&|_| false);
            }
            if let Ok(net) = netplug::Network::new(netplug::Config::new(agent_state.join("net"))) {
                let _ = net.gc(&|_| false);
            }
        }
        // The agent test's own cgroup root lives below the fixture's.
        if let Ok(agent_root) = self.cg_root.join("agent") {
            let _ = self.rt.cgroups.kill_all(&agent_root);
            let _ = self.rt.cgroups.remove(&agent_root);
        }
        let _ = self.rt.cgroups.remove(&self.cg_root);
    }
}

impl Fixture {
    /// The pod's sandbox and pod cgroup.
    pub fn sandbox(&self, pod: &specs::PodPlan) -> sandbox::Sandbox {
        let sb = sandbox::create(&self.rt.state_dir, pod).unwrap();
        self.rt.create_pod_cgroup(pod).unwrap();
        sb
    }

    /// Removes the pod's containers and sandbox and checks no mount is left.
    pub fn tear_down(&self, pod: &specs::PodPlan) {
        for c in pod.all_containers() {
            self.rt.remove(pod, c).unwrap();
        }
        self.rt.remove_pod(pod).unwrap();
        self.assert_no_mounts();
    }

    pub fn assert_no_mounts(&self) {
        let left = mounts_under(self.dir.path());
        assert!(left.is_empty(), "mounts left: {left:?}");
    }

    /// An agent's pods dir (made) and state dir, and the state dir as text.
    pub fn agent_dirs(&self) -> (PathBuf, PathBuf, String) {
        let pods = self.dir.path().join("pods");
        std::fs::create_dir_all(&pods).unwrap();
        let state = self.dir.path().join("agent-state");
        let state_s = state.display().to_string();
        (pods, state, state_s)
    }
}

pub fn fixture(name: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let images = ImageStore::open(&dir.path().join("store")).unwrap();
    let rootfs = dir.path().join("busybox-rootfs");
    busybox_rootfs(&rootfs);
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )
    .unwrap();
    images
        .import_rootfs(&rootfs, "busybox:latest", vec!["sh".into()])
        .unwrap();
    let cg_root =
        CgroupPath::new(&format!("podagent-rttest-{}-{name}", std::process::id())).unwrap();
    let rt = Runtime {
        state_dir: dir.path().join("state"),
        images,
        cgroups: detect(Path::new("/proc/self/mountinfo")).unwrap().driver(),
        cgroup_root: cg_root.as_path().display().to_string(),
        podagent: PathBuf::from(env!("CARGO_BIN_EXE_podagent")),
        cpus: None,
        registry: None,
        seccomp_dir: PathBuf::from("/nonexistent"),
        host_ip: None,
    };
    Fixture { rt, cg_root, dir }
}

pub fn plan(yaml: &str) -> specs::PodPlan {
    let r = specs::load("pod.yaml", yaml.as_bytes(), &specs::NodeInfo::default());
    assert!(!r.has_errors(), "{:#?}", r.diagnostics);
    r.pods.into_iter().next().unwrap()
}

/// An HTTP/1.0 GET of /index.html; the whole response.
pub fn http_get(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Runs `f` on a thread in a network namespace of its own (the test's
/// "node"), `lo` up: the host's network is never touched.
pub fn on_private_node<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            netplug::link::netlink(
                None,
                |h| async move { netplug::link::loopback_up(&h).await },
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Writes a manifest into the pods dir the way an editor or a GitOps sync
/// should: a temp file renamed into place.
pub fn put_manifest(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

pub const SERVED: &str = "apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: httpd
    image: busybox
    command: [sh, -c, 'mkdir -p /www && echo CONTENT > /www/index.html && exec httpd -f -p 8080 -h /www']
    ports: [{containerPort: 8080, hostPort: 18081}]
";

/// Stops the agent (and so its pods) even if the test fails.
#[derive(Debug)]
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        // Only a process not yet reaped: its pid cannot be reused.
        if let Ok(None) = self.0.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.0.wait();
        }
    }
}

/// `podagent run` on `pods` with its state in `state`, its images in the
/// fixture's store and its cgroups below the fixture's root.
pub fn agent_command(fx: &Fixture, pods: &Path, state: &Path, extra: &[&str]) -> Command {
    let cg = format!("{}/agent", fx.cg_root.as_path().display());
    let mut c = Command::new(env!("CARGO_BIN_EXE_podagent"));
    c.arg("run")
        .arg("--pods-dir")
        .arg(pods)
        .arg("--state-dir")
        .arg(state)
        .arg("--root-dir")
        .arg(fx.dir.path())
        .args(["--cgroup-root", &cg])
        .args(extra);
    c
}

/// The agent of [`agent_command`], stopping its pods when it exits.
pub fn spawn_agent(fx: &Fixture, pods: &Path, state: &Path, extra: &[&str]) -> std::process::Child {
    agent_command(fx, pods, state, extra)
        .arg("--stop-pods-on-exit")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// `podctl status -o raw` of the agent with state dir `state` (null when
/// it does not answer).
pub fn raw_status(state: &str) -> serde_json::Value {
    let out = crate::support::podctl(&["status", "-o", "raw", "--state-dir", state]).1;
    serde_json::from_str(&out).unwrap_or_default()
}

/// The agent answers and lists no pod.
pub fn no_pods(state: &str) -> bool {
    raw_status(state)["pods"]
        .as_array()
        .is_some_and(|p| p.is_empty())
}

/// One pod of [`raw_status`] by name (null when it is not listed).
pub fn pod_status(state: &str, name: &str) -> serde_json::Value {
    raw_status(state)["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_default()
}

/// A pod that exits on SIGTERM at once.
pub fn sleeper(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'trap \"kill $!; exit 0\" TERM; sleep 100000 & wait']\n"
    )
}

/// Entries of a directory (none if it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What the agent serving `socket` holds, by kind, from its
/// `podagent_tracked_objects` metric.
pub fn tracked(socket: &Path) -> std::collections::BTreeMap<String, u64> {
    let (code, body) = agent::api::get(socket, "/metrics").unwrap();
    assert_eq!(code, 200);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("podagent_tracked_objects{kind=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(kind, n)| (kind.to_string(), n.parse().unwrap()))
        .collect()
}

/// The inotify watches process `pid` holds, as the kernel lists them in
/// its descriptors' fdinfo.
pub fn inotify_watches(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|info| {
            info.lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count()
        })
        .sum()
}

/// The agent holds exactly `n` of each `kind` named.
pub fn assert_tracked(socket: &Path, want: &[(&str, u64)]) {
    let held = tracked(socket);
    for (kind, n) in want {
        assert_eq!(held.get(*kind), Some(n), "{kind}: {held:?}");
    }
}

/// The agent holds nothing of any kind (every pod is gone).
pub fn assert_nothing_tracked(socket: &Path) {
    let held = tracked(socket);
    assert!(held.len() >= 9, "every kind is listed: {held:?}");
    assert!(held.values().all(|n| *n == 0), "{held:?}");
}
