//! The agent on the node's real cgroup hierarchy, whichever it is: limits
//! written and seen from inside, an OOM kill reported, a resize in place,
//! re-adoption after SIGKILL of the agent, and a stop that kills what
//! ignores SIGTERM through the cgroup. CI runs this file on the host (v1)
//! and in the cgroup v2 VM (`scripts/vm-test`), where everything is 5-10x
//! slower: the waits are long, and end as soon as the state is reached.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::cgroups::{detect, CgroupPath};

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

const PODS: &str = "apiVersion: v1
kind: Pod
metadata: {name: limited}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    command: [sh, -c, 'trap \"\" TERM; sleep 100000 & exec sleep 100001']
    resources: {limits: {cpu: CPU, memory: MEMORY}}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: dd
    image: busybox
    command: [sh, -c, 'exec dd if=/dev/zero of=/dev/null bs=64M count=1']
    resources: {limits: {memory: 32Mi}}
";

const WAIT: Duration = Duration::from_secs(120);

fn pods(cpu: &str, memory: &str) -> String {
    PODS.replace("CPU", cpu).replace("MEMORY", memory)
}

#[test]
fn on_the_nodes_hierarchy_limits_oom_resize_readoption_and_the_cgroup_kill() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("hierarchy");
        let (pods_dir, state, state_s) = fx.agent_dirs();
        let v2 = detect(Path::new("/proc/self/mountinfo")).unwrap().name() == "v2";
        let spawn = || Running(spawn_agent(&fx, &pods_dir, &state, &["--no-network"]));
        let mut agent = spawn();
        put_manifest(&pods_dir, "pods.yaml", &pods("500m", "64Mi"));

        let status = || raw_status(&state_s);
        let pod = |name: &str| pod_status(&state_s, name);
        let running = || pod("limited")["phase"] == "Running";
        assert!(eventually(WAIT, running), "{:#}", pod("limited"));
        let uid = pod("limited")["uid"].as_str().unwrap().to_string();
        let cg = CgroupPath::new(&format!(
            "{}/agent/pod{uid}/app",
            fx.cg_root.as_path().display()
        ))
        .unwrap();
        // The file of the node's hierarchy that holds `name`.
        let node_file = |name: &str| -> PathBuf {
            fx.rt
                .cgroups
                .procs_files(&cg)
                .iter()
                .map(|f| f.parent().unwrap().join(name))
                .find(|f| f.exists())
                .unwrap_or_else(|| panic!("no {name} for {}", cg.as_path().display()))
        };
        let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap().trim().to_string();
        let (memory, cpu) = if v2 {
            ("memory.max", "cpu.max")
        } else {
            ("memory.limit_in_bytes", "cpu.cfs_quota_us")
        };
        let inside = |file: &str| {
            let path = if v2 {
                format!("/sys/fs/cgroup/{file}")
            } else {
                let controller = file.split('.').next().unwrap();
                format!("/sys/fs/cgroup/{controller}/{file}")
            };
            let (code, out, err) = podctl(&[
                "exec",
                "--state-dir",
                &state_s,
                "--podagent",
                env!("CARGO_BIN_EXE_podagent"),
                "limited",
                "-c",
                "app",
                "--",
                "cat",
                &path,
            ]);
            assert_eq!(code, 0, "{err}");
            out.trim().to_string()
        };
        let quota = |q: u64| {
            if v2 {
                format!("{q} 100000")
            } else {
                q.to_string()
            }
        };
        assert_eq!(read(node_file(memory)), (64u64 << 20).to_string());
        assert_eq!(read(node_file(cpu)), quota(50_000));
        if v2 {
            assert_eq!(read(node_file("memory.oom.group")), "1");
            assert_eq!(read(node_file("cpu.weight")), "59", "500m: 512 shares");
        }
        // No process above a leaf: the pod's cgroup and the agent's root
        // (which enable controllers for their children) hold none, in every
        // hierarchy.
        for procs in fx.rt.cgroups.procs_files(&cg) {
            let pod_dir = procs.parent().unwrap().parent().unwrap();
            for dir in [pod_dir, pod_dir.parent().unwrap()] {
                assert_eq!(read(dir.join("cgroup.procs")), "", "{}", dir.display());
            }
        }
        // The container reads the same values from its own /sys/fs/cgroup.
        assert_eq!(inside(memory), (64u64 << 20).to_string());
        assert_eq!(inside(cpu), quota(50_000));

        // 64 MiB touched under 32 MiB: the kernel's OOM kill, reported.
        assert!(
            eventually(WAIT, || pod("hog")["phase"] == "Failed"),
            "{:#}",
            pod("hog")
        );
        assert_eq!(pod("hog")["containers"][0]["state"], "OOMKilled");

        // A resize in place: the same process, new limits on the node and
        // inside, no restart.
        let app = || pod("limited")["containers"][0].clone();
        let container_pid = || -> Vec<u32> { fx.rt.cgroups.pids(&cg).unwrap() };
        let before = container_pid();
        assert!(!before.is_empty());
        put_manifest(&pods_dir, "pods.yaml", &pods("250m", "96Mi"));
        assert!(
            eventually(WAIT, || read(node_file(memory))
                == (96u64 << 20).to_string()),
            "{:#}",
            pod("limited")
        );
        assert_eq!(read(node_file(cpu)), quota(25_000));
        assert_eq!(inside(memory), (96u64 << 20).to_string());
        assert_eq!(app()["restart_count"], 0, "{:#}", app());
        assert_eq!(container_pid(), before);

        // SIGKILL the agent: a new one adopts the same processes.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let _ = agent.0.wait();
        agent = spawn();
        let socket = state.join("podagent.sock");
        assert!(
            eventually(WAIT, || socket.exists() && running()),
            "{:#}",
            pod("limited")
        );
        assert_eq!(container_pid(), before, "re-adopted, not started again");
        assert_eq!(app()["restart_count"], 0, "{:#}", app());
        // Adopted as resized: the resize is not applied a second time.
        // The event ring survives the restart: the one Resized event is the
        // resize before it, not counted again.
        let events = podctl(&["events", "limited", "-o", "raw", "--state-dir", &state_s]).1;
        let events: serde_json::Value = serde_json::from_str(&events).unwrap();
        let resized: Vec<&serde_json::Value> = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == "Resized")
            .collect();
        assert_eq!(resized.len(), 1, "{events:#}");
        assert_eq!(resized[0]["count"], 1, "{events:#}");

        // Deleted: sh and its sleep ignore SIGTERM; when the second of grace
        // ends the cgroup is killed whole, and nothing of the pod is left.
        std::fs::remove_file(pods_dir.join("pods.yaml")).unwrap();
        assert!(eventually(WAIT, || no_pods(&state_s)), "{:#}", status());
        for pid in &before {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} outlived its pod"
            );
        }
        for f in fx.rt.cgroups.procs_files(&cg) {
            let pod_dir = f.parent().unwrap().parent().unwrap().to_path_buf();
            assert!(!pod_dir.exists(), "{} left", pod_dir.display());
        }
        assert_nothing_tracked(&socket);
        drop(agent);
        fx.assert_no_mounts();
    });
}
