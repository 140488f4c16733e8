//! A manifest dropped, edited, broken and removed: the agent follows.

use std::path::Path;
use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

#[test]
fn the_agent_runs_a_dropped_manifest_follows_edits_survives_a_broken_file_and_deletes() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("daemon");
        let (pods, state, state_s) = fx.agent_dirs();
        let cg = format!("{}/agent", fx.cg_root.as_path().display());
        let spawn_agent = || spawn_agent(&fx, &pods, &state, &[]);
        let agent = spawn_agent();
        let pid = nix::unistd::Pid::from_raw(agent.id() as i32);
        let mut agent = Running(agent);
        let status = || podctl(&["status", "-o", "wide", "--state-dir", &state_s]).1;
        let url = std::net::SocketAddr::from(([10, 88, 0, 1], 18081));
        let serves = |what: &str| http_get(url).unwrap_or_default().contains(what);

        put_manifest(&pods, "web.yaml", &SERVED.replace("CONTENT", "first"));
        assert!(
            eventually(Duration::from_secs(15), || serves("first")),
            "status:\n{}",
            status()
        );
        let s = status();
        assert!(
            s.lines().any(|l| l.starts_with("web ")
                && l.contains("1/1")
                && l.contains("Running")
                && l.contains("10.88.0.")),
            "{s}"
        );

        // The API: root's alone, healthy, and its metrics read the cgroups.
        let socket = state.join("podagent.sock");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let api = |path: &str| {
            let (code, body) = agent::api::get(&socket, path).unwrap();
            (code, String::from_utf8(body).unwrap())
        };
        assert_eq!(api("/healthz"), (200, "ok\n".to_string()));
        assert_eq!(api("/nothing").0, 404);
        let (_, metrics) = api("/metrics");
        assert!(
            metrics.contains("podagent_pods{phase=\"Running\"} 1\n"),
            "{metrics}"
        );
        let memory = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "podagent_container_memory_usage_bytes{namespace=\"default\",pod=\"web\",container=\"httpd\"} ",
                )
            })
            .and_then(|v| v.parse::<u64>().ok());
        assert!(memory.is_some_and(|m| m > 0), "{metrics}");
        let events = || podctl(&["events", "web", "--state-dir", &state_s]).1;
        assert!(
            events()
                .lines()
                .any(|l| l.contains("Started") && l.contains("default/web:httpd")),
            "{}",
            events()
        );

        // SIGKILL the agent: the container keeps serving; a new agent
        // re-adopts the same process, address and sandbox.
        let started = |s: &str| -> serde_json::Value {
            let v: serde_json::Value =
                serde_json::from_str(&podctl(&["status", "-o", "raw", "--state-dir", s]).1)
                    .unwrap();
            let uid = v["pods"][0]["uid"].as_str().unwrap().to_string();
            std::fs::read(
                Path::new(s)
                    .join("containers")
                    .join(uid)
                    .join("httpd/state/state.json"),
            )
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
        };
        let container_pid = |s: &str| -> i64 { started(s)["pid"].as_i64().unwrap_or(0) };
        let before = container_pid(&state_s);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let _ = agent.0.wait();
        assert!(serves("first"), "the container outlives the agent");
        let agent2 = spawn_agent();
        let pid = nix::unistd::Pid::from_raw(agent2.id() as i32);
        let mut agent = Running(agent2);
        assert!(
            eventually(Duration::from_secs(15), || status()
                .lines()
                .any(|l| l.starts_with("web ") && l.contains("Running"))),
            "{}",
            status()
        );
        assert_eq!(
            container_pid(&state_s),
            before,
            "re-adopted, not started again"
        );
        assert!(
            status()
                .lines()
                .any(|l| l.starts_with("web ") && l.split_whitespace().nth(3) == Some("0")),
            "no restart: {}",
            status()
        );
        assert!(serves("first"));

        // An edit of the container's command restarts it with the new spec.
        put_manifest(&pods, "web.yaml", &SERVED.replace("CONTENT", "second"));
        assert!(
            eventually(Duration::from_secs(15), || serves("second")),
            "status:\n{}",
            status()
        );
        assert!(
            status()
                .lines()
                .any(|l| l.starts_with("web ") && l.split_whitespace().nth(3) == Some("1")),
            "one restart: {}",
            status()
        );

        // SIGKILL the container's shim: the agent notices at once (a pidfd),
        // kills the container's processes (its whole cgroup) and restarts it
        // after the crash back-off (10 s).
        let st = started(&state_s);
        let (old_pid, old_ticks) = (
            st["pid"].as_i64().unwrap() as i32,
            st["start_ticks"].as_u64(),
        );
        let shim = st["shim_pid"].as_i64().unwrap() as i32;
        assert!(shim > 0, "{st}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let killed_at = std::time::Instant::now();
        assert!(
            eventually(Duration::from_secs(3), || agent::shim::start_ticks(old_pid)
                != old_ticks),
            "the container's init outlived its shim"
        );
        assert!(
            eventually(Duration::from_secs(3), || status()
                .lines()
                .any(|l| l.starts_with("web ") && l.contains("Error"))),
            "{}",
            status()
        );
        assert!(!serves("second"), "nothing of the container is left");
        let ev = events();
        assert!(ev.contains("ShimDied") && ev.contains("BackOff"), "{ev}");
        assert!(
            eventually(Duration::from_secs(25), || serves("second")),
            "restarted: {}",
            status()
        );
        let waited = killed_at.elapsed();
        assert!(
            waited >= Duration::from_secs(9),
            "restarted after {waited:?}, before the 10 s back-off"
        );
        assert_ne!(container_pid(&state_s), i64::from(old_pid));
        assert!(
            status()
                .lines()
                .any(|l| l.starts_with("web ") && l.split_whitespace().nth(3) == Some("2")),
            "two restarts: {}",
            status()
        );

        // After the restarts the agent holds one of each thing for its one
        // container, and the kernel one exit watch beside the pods dir's.
        let one = [
            ("pods", 1),
            ("containers", 1),
            ("shims", 1),
            ("exit_watches", 1),
        ];
        assert_tracked(&socket, &one);
        assert_eq!(inotify_watches(agent.0.id()), 2);

        // A broken file keeps the last good pod running and says why.
        put_manifest(
            &pods,
            "web.yaml",
            &SERVED.replace("containerPort: 8080", "containerPort: 80800"),
        );
        assert!(
            eventually(Duration::from_secs(5), || status()
                .contains("80800 is not a port")),
            "{}",
            status()
        );
        assert!(serves("second"), "the pod kept running");
        let ev = podctl(&["events", "--state-dir", &state_s]).1;
        assert!(
            ev.lines()
                .any(|l| l.contains("FailedValidation") && l.contains("80800 is not a port")),
            "{ev}"
        );

        // Removing the file removes the pod.
        std::fs::remove_file(pods.join("web.yaml")).unwrap();
        assert!(
            eventually(Duration::from_secs(15), || !status().contains("web ")),
            "{}",
            status()
        );
        assert!(!serves("second"));
        // Deleted: nothing of the pod is left in the agent, nor in the
        // kernel's list of its inotify watches (the pods dir's alone).
        assert_nothing_tracked(&socket);
        assert_eq!(inotify_watches(agent.0.id()), 1);

        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        assert!(agent.0.wait().unwrap().success());
        let (code, _, err) = podctl(&["status", "--state-dir", &state_s]);
        assert_eq!(code, 1);
        assert!(err.contains("the agent is not running"), "{err}");
        assert!(!socket.exists(), "the socket is removed on exit");
        fx.assert_no_mounts();
        let _ = fx
            .rt
            .cgroups
            .remove(&agent::cgroups::CgroupPath::new(&cg).unwrap());
    });
}
