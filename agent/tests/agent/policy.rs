//! The node's policy is the agent's options, and podctl's of the same
//! names: a privileged pod is refused by default and runs with
//! `--allow-privileged` (with every capability the agent holds);
//! `--pids-limit` is the pids limit of a pod without its own. And two fields
//! that validated and then did the wrong thing: a `Localhost` seccomp
//! profile (it failed every start) and `status.hostIP` (it was empty).

use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

const PRIVILEGED: &str = "apiVersion: v1
kind: Pod
metadata: {name: priv}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    securityContext: {privileged: true}
    command: [sh, -c, 'grep CapEff /proc/self/status; cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null; sleep 100000']
";

const HARDENED: &str = "apiVersion: v1
kind: Pod
metadata: {name: hardened}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    securityContext:
      seccompProfile: {type: Localhost, localhostProfile: no-mkdir.json}
    env:
    - name: HOST_IP
      valueFrom: {fieldRef: {fieldPath: status.hostIP}}
    command: [sh, -c, 'echo host $HOST_IP; mkdir /tmp/d && echo made || echo refused; sleep 100000']
";

#[test]
fn privileged_pods_and_the_pids_limit_follow_the_agents_options() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("policy");
        let (pods, state, state_s) = fx.agent_dirs();
        put_manifest(&pods, "priv.yaml", PRIVILEGED);
        let file = pods.join("priv.yaml").display().to_string();
        // podctl says what the agent will: refused by default, accepted
        // with the flag.
        let (code, out, _) = podctl(&["validate", &file]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("start podagent with --allow-privileged"),
            "{out}"
        );
        let (code, out, _) = podctl(&["validate", "--allow-privileged", &file]);
        assert_eq!(code, 0, "{out}");

        // The agent's default: refused, said in its status.
        let agent = Running(spawn_agent(&fx, &pods, &state, &["--no-network"]));
        let refused = || {
            raw_status(&state_s)["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p.as_str().unwrap_or("").contains("--allow-privileged"))
        };
        assert!(
            eventually(Duration::from_secs(15), refused),
            "{:#}",
            raw_status(&state_s)
        );
        assert!(pod_status(&state_s, "priv").is_null());
        drop(agent);

        // With the flags: it runs, with every capability and the limit.
        // Beside it, a profile of the node's that refuses mkdir, and the
        // node's address given.
        let profiles = fx.dir.path().join("seccomp");
        std::fs::create_dir_all(&profiles).unwrap();
        std::fs::write(
            profiles.join("no-mkdir.json"),
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        put_manifest(&pods, "hardened.yaml", HARDENED);
        let _agent = Running(spawn_agent(
            &fx,
            &pods,
            &state,
            &[
                "--no-network",
                "--allow-privileged",
                "--pids-limit",
                "77",
                "--node-ip",
                "192.0.2.7",
            ],
        ));
        assert!(
            eventually(Duration::from_secs(15), || pod_status(&state_s, "priv")
                ["containers"][0]["state"]
                == "Running"),
            "{:#}",
            raw_status(&state_s)
        );
        let logs = || podctl(&["logs", "--state-dir", &state_s, "priv"]).1;
        assert!(
            eventually(Duration::from_secs(10), || logs().contains("77")),
            "{}",
            logs()
        );
        let cap_eff = logs()
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        // Every capability the agent holds (this machine's root lacks some:
        // CAP_SYS_RESOURCE), which is this process's bounding set.
        let bounding = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(cap_eff, bounding, "every capability the agent has");
        assert!(logs().lines().any(|l| l.trim() == "77"), "{}", logs());

        // The Localhost profile is applied: mkdir is refused inside; and the
        // node's address is in the environment and the status.
        let hardened = || podctl(&["logs", "--state-dir", &state_s, "hardened"]).1;
        assert!(
            eventually(Duration::from_secs(15), || hardened().contains("refused")),
            "{}\n{:#}",
            hardened(),
            pod_status(&state_s, "hardened")
        );
        assert!(hardened().contains("host 192.0.2.7\n"), "{}", hardened());
        assert_eq!(pod_status(&state_s, "hardened")["host_ip"], "192.0.2.7");
        let k8s = podctl(&["status", "-o", "json", "--state-dir", &state_s]).1;
        assert!(k8s.contains("\"hostIP\": \"192.0.2.7\""), "{k8s}");
    });
}

#[test]
fn run_as_non_root_refuses_an_image_that_runs_as_root_and_keeps_the_pod_pending() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("non-root");
        let (pods, state, state_s) = fx.agent_dirs();
        let _agent = Running(spawn_agent(&fx, &pods, &state, &["--no-network"]));
        let pod = |name: &str, sc: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  restartPolicy: Never\n  securityContext: {sc}\n  containers:\n  - {{name: c, image: busybox, command: [sleep, '100000']}}\n"
            )
        };
        // The test image has no User: it runs as root.
        put_manifest(&pods, "root.yaml", &pod("root", "{runAsNonRoot: true}"));
        put_manifest(
            &pods,
            "user.yaml",
            &pod("user", "{runAsNonRoot: true, runAsUser: 1000}"),
        );
        let c = |n: &str| pod_status(&state_s, n)["containers"][0].clone();
        assert!(
            eventually(Duration::from_secs(20), || c("root")["state"]
                == "CreateContainerConfigError"),
            "{:#}",
            pod_status(&state_s, "root")
        );
        let m = c("root")["message"].as_str().unwrap_or("").to_string();
        assert!(m.contains("image will run as root"), "{m}");
        assert_eq!(pod_status(&state_s, "root")["phase"], "Pending");
        assert_eq!(c("root")["restart_count"], 0);
        assert!(
            eventually(Duration::from_secs(20), || c("user")["state"] == "Running"),
            "{:#}",
            pod_status(&state_s, "user")
        );
        let k8s = podctl(&["status", "-o", "json", "--state-dir", &state_s]).1;
        assert!(
            k8s.contains("\"reason\": \"CreateContainerConfigError\""),
            "{k8s}"
        );
    });
}
