//! OOM kills, init container failures and the crash back-off.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

const FAILING: &str = "apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: dd
    image: busybox
    command: [sh, -c, 'exec dd if=/dev/zero of=/dev/null bs=64M count=1']
    resources: {limits: {memory: 32Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: setup-fails}
spec:
  restartPolicy: Never
  initContainers:
  - {name: migrate, image: busybox, command: [sh, -c, 'exit 3']}
  containers:
  - {name: app, image: busybox, command: [sleep, '1000']}
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - {name: c, image: busybox, command: [sh, -c, 'exit 1']}
";

/// Seconds since midnight of an RFC 3339 UTC time (the test's spans are
/// short; a span across midnight is taken modulo a day).
fn day_secs(t: &str) -> f64 {
    let clock = t.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut parts = clock.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

#[test]
fn the_agent_reports_oom_kills_init_failures_and_backs_off_a_crashing_container() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("failing");
        let (pods, state, state_s) = fx.agent_dirs();
        let agent = Running(spawn_agent(&fx, &pods, &state, &["--no-network"]));
        put_manifest(&pods, "failing.yaml", FAILING);
        let pod = |name: &str| pod_status(&state_s, name);
        let events = || -> Vec<serde_json::Value> {
            let out = podctl(&["events", "-o", "raw", "--state-dir", &state_s]).1;
            serde_json::from_str(&out).unwrap_or_default()
        };

        // 64 MiB touched under a 32 MiB limit: OOMKilled, and with Never the
        // pod has failed.
        assert!(
            eventually(Duration::from_secs(15), || pod("hog")["phase"] == "Failed"),
            "{:#}",
            pod("hog")
        );
        let hog = pod("hog");
        assert_eq!(hog["containers"][0]["state"], "OOMKilled", "{hog:#}");
        assert_eq!(hog["containers"][0]["exit_code"], 137, "{hog:#}");
        assert!(
            events()
                .iter()
                .any(|e| e["reason"] == "OOMKilled" && e["object"] == "default/hog"),
            "{:#?}",
            events()
        );

        // An init container that fails under Never fails the pod; its app
        // container never starts.
        assert!(
            eventually(Duration::from_secs(15), || pod("setup-fails")["phase"]
                == "Failed"),
            "{:#}",
            pod("setup-fails")
        );
        let sf = pod("setup-fails");
        assert_eq!(sf["reason"], "Init:Error", "{sf:#}");
        assert_eq!(sf["containers"][0]["state"], "PodInitializing", "{sf:#}");
        let text = podctl(&["status", "--state-dir", &state_s]).1;
        assert!(
            text.lines()
                .any(|l| l.starts_with("setup-fails ") && l.contains("Init:Error")),
            "{text}"
        );
        assert!(!events()
            .iter()
            .any(|e| e["object"] == "default/setup-fails" && e["container"] == "app"));

        // A container that keeps exiting is restarted 10 s after its first
        // exit, then shown in CrashLoopBackOff with the time of its next try.
        assert!(
            eventually(Duration::from_secs(25), || pod("crasher")["containers"][0]
                ["restart_count"]
                == 1
                && pod("crasher")["containers"][0]["state"] == "CrashLoopBackOff"),
            "{:#}",
            pod("crasher")
        );
        let c = pod("crasher");
        assert_eq!(c["phase"], "Running", "restarting counts as running: {c:#}");
        let next = c["containers"][0]["next_start"]
            .as_str()
            .unwrap()
            .to_string();
        let evs = events();
        let started: Vec<f64> = evs
            .iter()
            .filter(|e| e["object"] == "default/crasher" && e["reason"] == "Started")
            .map(|e| day_secs(e["time"].as_str().unwrap()))
            .collect();
        let exited: Vec<f64> = evs
            .iter()
            .filter(|e| e["object"] == "default/crasher" && e["reason"] == "Exited")
            .map(|e| day_secs(e["time"].as_str().unwrap()))
            .collect();
        assert_eq!((started.len(), exited.len()), (2, 2), "{evs:#?}");
        let gap = (started[1] - exited[0] + 86400.0) % 86400.0;
        assert!(
            (9.9..11.5).contains(&gap),
            "restarted {gap} s after the exit"
        );
        // The second exit waits 20 s.
        let wait = (day_secs(&next) - exited[1] + 86400.0) % 86400.0;
        assert!(
            (19.9..20.5).contains(&wait),
            "next try {wait} s after the exit"
        );

        // A pod that ignores SIGTERM (sleep as PID 1) is killed at the end of
        // its grace period; meanwhile the agent goes on: a new pod starts.
        // `podctl status -w` follows it.
        let mut watch = Command::new(env!("CARGO_BIN_EXE_podctl"))
            .args(["status", "-w", "--state-dir", &state_s])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        put_manifest(
            &pods,
            "stubborn.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: stubborn}\nspec:\n  terminationGracePeriodSeconds: 4\n  containers:\n  - {name: s, image: busybox, command: [sleep, '1000']}\n",
        );
        assert!(
            eventually(Duration::from_secs(10), || pod("stubborn")["phase"]
                == "Running"),
            "{:#}",
            pod("stubborn")
        );
        eventually(Duration::from_millis(1200), || false); // the watcher's next look
        let removed = Instant::now();
        std::fs::remove_file(pods.join("stubborn.yaml")).unwrap();
        put_manifest(
            &pods,
            "quick.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: quick}\nspec:\n  containers:\n  - {name: q, image: busybox, command: [sleep, '1000']}\n",
        );
        assert!(
            eventually(Duration::from_secs(3), || pod("quick")["phase"]
                == "Running"),
            "{:#}",
            pod("quick")
        );
        assert_eq!(pod("stubborn")["reason"], "Terminating");
        assert!(removed.elapsed() < Duration::from_secs(3));
        assert!(
            eventually(Duration::from_secs(15), || pod("stubborn").is_null()),
            "{:#}",
            pod("stubborn")
        );
        let took = removed.elapsed();
        assert!(
            took >= Duration::from_millis(3900),
            "removed after {took:?}, before its 4 s grace period"
        );
        // Let the watcher see the last change, then read what it printed.
        eventually(Duration::from_millis(1500), || false);
        let _ = watch.kill();
        let printed = String::from_utf8(watch.wait_with_output().unwrap().stdout).unwrap();
        let rows: Vec<&str> = printed
            .lines()
            .filter(|l| l.starts_with("stubborn "))
            .collect();
        assert!(rows.iter().any(|l| l.contains("Running")), "{printed}");
        assert!(rows.iter().any(|l| l.contains("Terminating")), "{printed}");
        assert!(rows.iter().any(|l| l.contains("(deleted)")), "{printed}");
        drop(agent);
        fx.assert_no_mounts();
    });
}

#[test]
fn a_pod_past_its_active_deadline_is_failed_and_its_containers_stopped() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("deadline");
        let (pods, state, state_s) = fx.agent_dirs();
        let _agent = Running(spawn_agent(&fx, &pods, &state, &["--no-network"]));
        let t = std::time::Instant::now();
        put_manifest(
            &pods,
            "d.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: d}\nspec:\n  activeDeadlineSeconds: 3\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'trap \"exit 0\" TERM; sleep 100000 & wait']\n",
        );
        let pod = || pod_status(&state_s, "d");
        assert!(
            eventually(Duration::from_secs(10), || pod()["containers"][0]["state"]
                == "Running"),
            "{:#}",
            pod()
        );
        assert!(
            eventually(Duration::from_secs(15), || pod()["phase"] == "Failed"),
            "{:#}",
            pod()
        );
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(3),
            "failed after {took:?}, before its deadline"
        );
        assert_eq!(pod()["reason"], "DeadlineExceeded", "{:#}", pod());
        // Its container stops and is not started again (its policy is
        // Always, and a back-off is 10 s: 12 s shows none came).
        assert!(
            eventually(Duration::from_secs(10), || pod()["containers"][0]["state"]
                != "Running"),
            "{:#}",
            pod()
        );
        assert!(!eventually(Duration::from_secs(12), || pod()["containers"]
            [0]["state"]
            == "Running"
            || pod()["containers"][0]["restart_count"] != 0));
        assert_eq!(pod()["phase"], "Failed");
        let events = podctl(&["events", "--state-dir", &state_s]).1;
        assert!(events.contains("DeadlineExceeded"), "{events}");
        assert!(
            events.contains("Pod was active on the node longer than the specified deadline"),
            "{events}"
        );
    });
}

#[test]
fn a_termination_message_is_the_file_or_by_policy_the_logs_end() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("termination-message");
        let (pods, state, state_s) = fx.agent_dirs();
        let _agent = Running(spawn_agent(&fx, &pods, &state, &["--no-network"]));
        let pod = |name: &str, extra: &str, script: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n{extra}    command: [sh, -c, '{script}']\n"
            )
        };
        put_manifest(
            &pods,
            "p.yaml",
            &[
                // Written by a user other than root: the file is everyone's.
                pod(
                    "file",
                    "    securityContext: {runAsUser: 1000}\n",
                    "echo all done > /dev/termination-log; exit 3",
                ),
                pod(
                    "custom",
                    "    terminationMessagePath: /tmp/why\n",
                    "echo in my own place > /tmp/why",
                ),
                pod(
                    "logs",
                    "    terminationMessagePolicy: FallbackToLogsOnError\n",
                    "echo line one; echo the cause; exit 4",
                ),
                pod(
                    "clean",
                    "    terminationMessagePolicy: FallbackToLogsOnError\n",
                    "echo fine",
                ),
            ]
            .join("---\n"),
        );
        let c = |n: &str| pod_status(&state_s, n)["containers"][0].clone();
        let ended = || {
            ["file", "custom", "logs", "clean"]
                .iter()
                .all(|n| !c(n)["exit_code"].is_null())
        };
        assert!(
            eventually(Duration::from_secs(20), ended),
            "{:#}",
            raw_status(&state_s)
        );
        assert_eq!(c("file")["message"], "all done\n", "{:#}", c("file"));
        assert_eq!(c("file")["exit_code"], 3);
        assert_eq!(
            c("custom")["message"],
            "in my own place\n",
            "{:#}",
            c("custom")
        );
        assert_eq!(
            c("logs")["message"],
            "line one\nthe cause",
            "{:#}",
            c("logs")
        );
        assert!(
            c("clean")["message"].is_null(),
            "a clean exit uses no log: {:#}",
            c("clean")
        );
        let k8s = podctl(&["status", "-o", "json", "--state-dir", &state_s]).1;
        assert!(k8s.contains("\"message\": \"all done\\n\""), "{k8s}");
    });
}
