//! The agent's own restarts: a newer state dir refused, a reboot, a SIGKILL
//! during a burst; what runs is adopted, what is left is removed.

use std::process::Command;
use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, mounts_under, podctl, require};

/// A state dir a newer agent wrote (a downgrade): the agent refuses to start,
/// names the record, and touches nothing: the container it records still
/// runs and the record is still there.
#[test]
fn an_agent_refuses_a_state_dir_from_a_newer_version() {
    let dir = tempfile::tempdir().unwrap();
    let (pods, state) = (dir.path().join("pods"), dir.path().join("state"));
    let cstate = state.join("containers/u1/app/state");
    std::fs::create_dir_all(&cstate).unwrap();
    std::fs::create_dir_all(&pods).unwrap();
    let mut running = Running(Command::new("sleep").arg("60").spawn().unwrap());
    let record = cstate.join("state.json");
    let text = format!(
        r#"{{"version": 2, "pid": {}, "start_ticks": 1, "started_at": "", "warnings": []}}"#,
        running.0.id()
    );
    std::fs::write(&record, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_podagent"))
        .arg("run")
        .arg("--pods-dir")
        .arg(&pods)
        .arg("--state-dir")
        .arg(&state)
        .arg("--root-dir")
        .arg(dir.path().join("root"))
        .args(["--no-network", "--cgroup-root", "podagent-test-newer"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: record version 2 is newer than this podagent reads (1)",
            record.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&record).unwrap(), text);
    assert!(
        running.0.try_wait().unwrap().is_none(),
        "the container was left alone"
    );
    assert!(!state.join("podagent.sock").exists());
}

/// A node reboot, as far as a test can make one: the agent is SIGKILLed,
/// then every container process and shim dies, every mount under the state
/// dir goes, the cgroups, the bridge and the nftables table are removed; the
/// state dir stays. A new agent recreates the pod with no error loop.
#[test]
fn after_a_reboot_the_agent_recreates_the_pods_from_the_state_dir() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("reboot");
        let (pods, state, state_s) = fx.agent_dirs();
        let url = std::net::SocketAddr::from(([10, 88, 0, 1], 18081));
        let serves = |what: &str| http_get(url).unwrap_or_default().contains(what);
        let mut agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        put_manifest(&pods, "web.yaml", &SERVED.replace("CONTENT", "boot"));
        assert!(eventually(Duration::from_secs(15), || serves("boot")));
        // The container may serve before its shim has recorded it: the
        // "reboot" comes once the agent shows it running.
        let running = || {
            podctl(&["status", "--state-dir", &state_s])
                .1
                .lines()
                .any(|l| l.starts_with("web ") && l.contains("1/1") && l.contains("Running"))
        };
        assert!(eventually(Duration::from_secs(10), running));

        // The "reboot".
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = agent.0.wait();
        let mut cgroups = Vec::new();
        let agent_cg = fx.cg_root.join("agent").unwrap();
        for pod in std::fs::read_dir(state.join("containers"))
            .unwrap()
            .flatten()
        {
            let uid = pod.file_name().to_string_lossy().into_owned();
            let pod_cg = agent_cg.join(&format!("pod{uid}")).unwrap();
            for c in std::fs::read_dir(pod.path()).unwrap().flatten() {
                let st: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(c.path().join("state/state.json")).unwrap(),
                )
                .unwrap();
                for key in ["pid", "shim_pid"] {
                    let pid = st[key].as_i64().unwrap() as i32;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                cgroups.push(pod_cg.join(&c.file_name().to_string_lossy()).unwrap());
            }
            cgroups.push(pod_cg);
        }
        assert!(eventually(Duration::from_secs(5), || !serves("boot")));
        for cg in &cgroups {
            assert!(eventually(Duration::from_secs(5), || fx
                .rt
                .cgroups
                .remove(cg)
                .is_ok()));
        }
        let mut mounts = mounts_under(fx.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
        }
        let gone = |cmd: &[&str]| Command::new(cmd[0]).args(&cmd[1..]).status().unwrap();
        assert!(gone(&["ip", "link", "del", "podbr0"]).success());
        assert!(gone(&["nft", "delete", "table", "ip", "podagent"]).success());

        // A new agent on the same state dir.
        let agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        assert!(
            eventually(Duration::from_secs(15), || serves("boot")),
            "{}",
            podctl(&["status", "--state-dir", &state_s]).1
        );
        let status = podctl(&["status", "--state-dir", &state_s]).1;
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("web ") && l.contains("1/1") && l.contains("Running")),
            "{status}"
        );
        let events = podctl(&["events", "--state-dir", &state_s]).1;
        assert!(!events.contains("Warning"), "{events}");
        // Made again, not adopted twice: one of each.
        let one = [
            ("pods", 1),
            ("containers", 1),
            ("shims", 1),
            ("exit_watches", 1),
        ];
        assert_tracked(&state.join("podagent.sock"), &one);
        drop(agent);
        fx.assert_no_mounts();
    });
}

#[test]
fn sigkill_during_a_burst_converges_with_no_leak_and_no_duplicate() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("burst");
        let (pods, state, state_s) = fx.agent_dirs();
        let mut agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        // Creations and deletions in flight when the agent is killed.
        for i in 0..12 {
            put_manifest(&pods, &format!("p{i}.yaml"), &sleeper(&format!("p{i}")));
        }
        eventually(Duration::from_millis(150), || false);
        for i in 0..4 {
            std::fs::remove_file(pods.join(format!("p{i}.yaml"))).unwrap();
        }
        for i in 12..20 {
            put_manifest(&pods, &format!("p{i}.yaml"), &sleeper(&format!("p{i}")));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = agent.0.wait();
        drop(agent);

        let agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        let wanted: Vec<String> = (4..20).map(|i| format!("p{i}")).collect();
        let status = || -> serde_json::Value {
            serde_json::from_str(&podctl(&["status", "-o", "raw", "--state-dir", &state_s]).1)
                .unwrap_or_default()
        };
        let converged = || {
            let v = status();
            let pods = v["pods"].as_array().cloned().unwrap_or_default();
            pods.len() == wanted.len()
                && pods
                    .iter()
                    .all(|p| p["phase"] == "Running" && p["reason"].is_null())
        };
        assert!(
            eventually(Duration::from_secs(60), converged),
            "{}",
            podctl(&["status", "--state-dir", &state_s]).1
        );
        let v = status();
        let mut names: Vec<String> = v["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        names.sort_by_key(|n| n[1..].parse::<u32>().unwrap());
        assert_eq!(names, wanted);
        // One address each, none shared; one allocation, one netns, one
        // veth, one container dir per pod.
        let mut ips: Vec<&str> = v["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["ip"].as_str().unwrap())
            .collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), wanted.len());
        let ipam: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.join("net/ipam.json")).unwrap()).unwrap();
        assert_eq!(
            ipam["allocations"].as_object().unwrap().len(),
            wanted.len(),
            "{ipam}"
        );
        assert_eq!(entries(&state.join("net/netns")).len(), wanted.len());
        assert_eq!(entries(&state.join("containers")).len(), wanted.len());
        let veths = Command::new("ip")
            .args(["-o", "link", "show", "master", "podbr0"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&veths.stdout).lines().count(),
            wanted.len()
        );
        // Never a container twice: each container cgroup holds its shell
        // and its sleep, and one shim runs for each.
        for p in v["pods"].as_array().unwrap() {
            let cg = fx
                .cg_root
                .join("agent")
                .unwrap()
                .join(&format!("pod{}", p["uid"].as_str().unwrap()))
                .unwrap()
                .join("c")
                .unwrap();
            assert_eq!(fx.rt.cgroups.pids(&cg).unwrap().len(), 2, "{p:#}");
        }
        let shims = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&state_s))
                    && std::fs::read_to_string(e.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "podagent-shim")
            })
            .count();
        assert_eq!(shims, wanted.len());
        // The adopting agent holds one of each thing a pod, no more.
        let n = wanted.len() as u64;
        let each = [("pods", n), ("containers", n), ("exit_watches", n)];
        assert_tracked(&state.join("podagent.sock"), &each);

        // Everything removed: nothing left.
        for n in &wanted {
            std::fs::remove_file(pods.join(format!("{n}.yaml"))).unwrap();
        }
        assert!(eventually(Duration::from_secs(60), || status()["pods"]
            .as_array()
            .is_some_and(|a| a.is_empty())));
        assert_eq!(entries(&state.join("containers")), Vec::<String>::new());
        assert_eq!(entries(&state.join("net/netns")), Vec::<String>::new());
        let ipam: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.join("net/ipam.json")).unwrap()).unwrap();
        assert!(
            ipam["allocations"].as_object().unwrap().is_empty(),
            "{ipam}"
        );
        assert_nothing_tracked(&state.join("podagent.sock"));
        assert_eq!(inotify_watches(agent.0.id()), 1, "the pods dir's alone");
        drop(agent);
        fx.assert_no_mounts();
    });
}

/// The agent killed between a container's start and its record: the next
/// agent cannot adopt the container (no record says which plan it runs), so
/// it kills it before starting it again; never two of it in one cgroup.
#[test]
fn a_container_running_without_its_record_is_killed_not_doubled() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("orphan");
        let (pods, state, state_s) = fx.agent_dirs();
        let agent = spawn_agent(&fx, &pods, &state, &["--no-network"]);
        put_manifest(&pods, "one.yaml", &sleeper("one"));
        let running = || pod_status(&state_s, "one")["containers"][0]["state"] == "Running";
        assert!(eventually(Duration::from_secs(15), running));
        let uid = pod_status(&state_s, "one")["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let cdir = state.join("containers").join(&uid).join("c");
        let pid_of = || -> i64 {
            let st: serde_json::Value = serde_json::from_slice(
                &std::fs::read(cdir.join("state/state.json")).unwrap_or_default(),
            )
            .unwrap_or_default();
            st["pid"].as_i64().unwrap_or(0)
        };
        let before = pid_of();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let mut agent = agent;
        let _ = agent.wait();
        // As if it died before the record was written.
        std::fs::remove_file(cdir.join("agent.json")).unwrap();
        let _agent = Running(spawn_agent(&fx, &pods, &state, &["--no-network"]));
        assert!(
            eventually(Duration::from_secs(15), || running()
                && pid_of() != before
                && pid_of() != 0),
            "{:#}",
            pod_status(&state_s, "one")
        );
        assert!(
            !std::path::Path::new(&format!("/proc/{before}")).exists()
                || std::fs::read_to_string(format!("/proc/{before}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "the first run was killed"
        );
        let cg = fx
            .cg_root
            .join("agent")
            .unwrap()
            .join(&format!("pod{uid}"))
            .unwrap()
            .join("c")
            .unwrap();
        assert_eq!(
            fx.rt.cgroups.pids(&cg).unwrap().len(),
            2,
            "its shell and its sleep, once"
        );
        let events = podctl(&["events", "--state-dir", &state_s]).1;
        assert!(events.contains("Orphaned"), "{events}");
        std::fs::remove_file(pods.join("one.yaml")).unwrap();
        assert!(eventually(Duration::from_secs(15), || no_pods(&state_s)));
    });
}
