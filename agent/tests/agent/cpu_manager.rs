//! The static CPU manager policy end to end: a Guaranteed pod's whole CPU
//! its own (cpuset, no quota, and the CPUs its process may run on), the
//! shared pool shrunk around it, a pod that does not fit refused with the
//! reason, the assignment kept across an agent's SIGKILL, given back on
//! deletion and taken by the pod that waited; a changed reservation refused
//! at start. Runs on the host (v1) and in the cgroup v2 VM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use agent::cgroups::{detect, CgroupPath};
use specs::cpuset::CpuSet;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

const WAIT: Duration = Duration::from_secs(120);

fn guaranteed(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: busybox, command: [sleep, '100000'], resources: {{limits: {{cpu: '1', memory: 32Mi}}}}}}\n"
    )
}

/// The CPUs the kernel lets process `pid` run on.
fn allowed(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn the_static_policy_gives_whole_cpus_keeps_them_across_restarts_and_gives_them_back() {
    if !require() {
        return;
    }
    let online = agent::node::online_cpus(Path::new("/sys/devices/system/cpu/online")).unwrap();
    if online.len() < 2 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and one CPU: the static policy needs two"
        );
        eprintln!("skipping: one CPU");
        return;
    }
    on_private_node(|| {
        let fx = fixture("cpu-manager");
        let (pods, state, state_s) = fx.agent_dirs();
        let v2 = detect(Path::new("/proc/self/mountinfo")).unwrap().name() == "v2";
        let first = online.iter().next().unwrap();
        let reserved = first.to_string();
        let flags = [
            "--no-network",
            "--cpu-manager-policy",
            "static",
            "--reserved-cpus",
            reserved.as_str(),
        ];
        let mut agent = Running(spawn_agent(&fx, &pods, &state, &flags));
        put_manifest(&pods, "exclusive.yaml", &guaranteed("exclusive"));
        put_manifest(
            &pods,
            "shared.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: shared}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox, command: [sleep, '100000']}\n",
        );
        let status = || raw_status(&state_s);
        let pod = |name: &str| pod_status(&state_s, name);
        // Its container runs (a pod whose container cannot start is Running
        // too, restarting, as with the kubelet).
        let running = |name: &str| pod(name)["containers"][0]["state"] == "Running";
        assert!(
            eventually(WAIT, || running("exclusive") && running("shared")),
            "{:#}",
            status()
        );
        let cg = |name: &str| {
            let uid = pod(name)["uid"].as_str().unwrap().to_string();
            CgroupPath::new(&format!(
                "{}/agent/pod{uid}/c",
                fx.cg_root.as_path().display()
            ))
            .unwrap()
        };
        let file = |cg: &CgroupPath, name: &str| -> PathBuf {
            fx.rt
                .cgroups
                .procs_files(cg)
                .iter()
                .map(|f| f.parent().unwrap().join(name))
                .find(|f| f.exists())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap().trim().to_string();
        let cpus = |cg: &CgroupPath| read(file(cg, "cpuset.cpus"));
        let quota = |cg: &CgroupPath| {
            if v2 {
                read(file(cg, "cpu.max"))
            } else {
                read(file(cg, "cpu.cfs_quota_us"))
            }
        };
        let no_quota = if v2 { "max 100000" } else { "-1" };
        let pids = |cg: &CgroupPath| fx.rt.cgroups.pids(cg).unwrap();

        // The first CPU after the reserved one is the exclusive pod's; the
        // shared pool is the rest, the reserved CPU included.
        let mine = online.iter().nth(1).unwrap();
        let pool = CpuSet::from_cpus(online.iter().filter(|c| *c != mine))
            .unwrap()
            .to_string();
        let (ex, sh) = (cg("exclusive"), cg("shared"));
        assert_eq!(cpus(&ex), mine.to_string());
        assert_eq!(quota(&ex), no_quota, "no quota on CPUs of its own");
        let pod_dir = file(&ex, "cgroup.procs")
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let pod_quota = if v2 { "cpu.max" } else { "cpu.cfs_quota_us" };
        let pod_quota_file = pod_dir.join(pod_quota);
        if pod_quota_file.exists() {
            assert_eq!(read(pod_quota_file), no_quota, "nor on its pod");
        }
        assert_eq!(cpus(&sh), pool);
        // What the kernel lets the processes run on.
        for pid in pids(&ex) {
            assert_eq!(allowed(pid), mine.to_string(), "pid {pid}");
        }
        for pid in pids(&sh) {
            assert_eq!(allowed(pid), pool, "pid {pid}");
        }

        // A second pod wanting a whole CPU: on two CPUs it does not fit
        // (the reserved one is never given) and waits, saying why; on more
        // it gets the next CPU at once, and the pool shrinks again.
        put_manifest(&pods, "second.yaml", &guaranteed("second"));
        let events = || podctl(&["events", "--state-dir", &state_s]).1;
        let without = |taken: &[u32]| {
            CpuSet::from_cpus(online.iter().filter(|c| !taken.contains(c)))
                .unwrap()
                .to_string()
        };
        let next = online.iter().nth(2);
        let pool = match next {
            None => {
                let refused = "not enough exclusive CPUs for default/second:c: it needs 1, 0 free";
                assert!(
                    eventually(WAIT, || events().contains(refused)),
                    "{}",
                    events()
                );
                assert_eq!(pod("second")["containers"][0]["state"], "StartError");
                pool
            }
            Some(n) => {
                assert!(eventually(WAIT, || running("second")), "{:#}", status());
                assert_eq!(cpus(&cg("second")), n.to_string());
                let pool = without(&[mine, n]);
                assert!(eventually(WAIT, || cpus(&sh) == pool), "{}", cpus(&sh));
                for pid in pids(&sh) {
                    assert_eq!(allowed(pid), pool, "pid {pid}");
                }
                pool
            }
        };

        // SIGKILL the agent: the new one keeps the assignment.
        let before = (pids(&ex), pids(&sh));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let _ = agent.0.wait();
        agent = Running(spawn_agent(&fx, &pods, &state, &flags));
        assert!(
            eventually(WAIT, || running("exclusive") && running("shared")),
            "{:#}",
            status()
        );
        assert_eq!((pids(&ex), pids(&sh)), before, "adopted, not restarted");
        assert_eq!(cpus(&ex), mine.to_string());
        assert_eq!(cpus(&sh), pool);
        let record = std::fs::read_to_string(state.join("cpu_manager.json")).unwrap();
        assert!(record.contains(&format!("\"c\": \"{mine}\"")), "{record}");

        // Deleted: its CPU goes back to the pool, and a pod that waited
        // gets it (at its next try).
        std::fs::remove_file(pods.join("exclusive.yaml")).unwrap();
        assert!(
            eventually(WAIT, || running("second")),
            "{:#}\n{}",
            status(),
            events()
        );
        let (second_cpu, pool) = match next {
            None => (mine, without(&[mine])),
            Some(n) => (n, without(&[n])),
        };
        assert_eq!(cpus(&cg("second")), second_cpu.to_string());
        assert!(eventually(WAIT, || cpus(&sh) == pool), "{}", cpus(&sh));
        std::fs::remove_file(pods.join("second.yaml")).unwrap();
        let whole = online.to_string();
        assert!(
            eventually(WAIT, || cpus(&sh) == whole),
            "the pool is every CPU again: {}",
            cpus(&sh)
        );
        for pid in pids(&sh) {
            assert_eq!(allowed(pid), whole, "pid {pid}");
        }
        std::fs::remove_file(pods.join("shared.yaml")).unwrap();
        assert!(eventually(WAIT, || no_pods(&state_s)), "{:#}", status());
        let record = std::fs::read_to_string(state.join("cpu_manager.json")).unwrap();
        assert!(!record.contains("\"c\""), "released: {record}");
        drop(agent);

        // Another reservation over the same state is refused, saying how
        // to change it.
        let other = mine.to_string();
        let out = agent_command(
            &fx,
            &pods,
            &state,
            &["--no-network", "--cpu-manager-policy", "static"],
        )
        .args(["--reserved-cpus", &other])
        .stdin(Stdio::null())
        .output()
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("was written with reserved CPUs") && err.contains("remove the file"),
            "{err}"
        );
        fx.assert_no_mounts();
    });
}
