//! Lifecycle hooks and native sidecars, observed as a user would: the
//! hooks' side effects in a host directory and their timing against the
//! stop signal (both clocks are the kernel's uptime), the status while a
//! postStart hook runs, events, and the order in which a pod's containers
//! start and stop.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

/// The lines of `file` (none while it does not exist).
fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The uptime a log line `WHAT <seconds>` recorded, for the first line
/// starting with `what`.
fn at(log: &[String], what: &str) -> f64 {
    log.iter()
        .find_map(|l| l.strip_prefix(what)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} in {log:?}"))
}

/// A shell snippet that appends `WHAT <uptime>` to `/out/FILE`.
fn stamp(what: &str, file: &str) -> String {
    format!("read u r < /proc/uptime; echo {what} $u >> /out/{file}")
}

/// [`stamp`] for a `trap "..."` action: its uptime read when the trap
/// runs, not when it is set.
fn trap_stamp(what: &str, file: &str) -> String {
    stamp(what, file).replace("$u", "\\$u")
}

fn container<'a>(pod: &'a serde_json::Value, field: &str, name: &str) -> &'a serde_json::Value {
    pod[field]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

#[test]
fn hooks_run_around_the_container_with_the_kubelets_timing() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("hooks");
        let (pods, state, state_s) = fx.agent_dirs();
        let out = fx.dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let out_s = out.display().to_string();
        let _agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        let events = || podctl(&["events", "--state-dir", &state_s]).1;

        // postStart: the container is not Running until its hook returns.
        // preStop, then the stop signal (SIGUSR1 by lifecycle.stopSignal).
        let hooked = format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  terminationGracePeriodSeconds: 10
  os: {{name: linux}}
  volumes: [{{name: out, hostPath: {{path: {out_s}}}}}]
  containers:
  - name: app
    image: busybox
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: [sh, -c, 'trap \"{term}\" TERM; trap \"{usr1}; exit 0\" USR1; {main}; while true; do sleep 0.1; done']
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, '{ps_begin}; sleep 2; {ps_end}']}}}}
      preStop: {{exec: {{command: [sh, -c, '{prestop}; sleep 2']}}}}
      stopSignal: SIGUSR1
",
            term = trap_stamp("term", "log"),
            usr1 = trap_stamp("usr1", "log"),
            main = stamp("main", "log"),
            ps_begin = stamp("poststart-begin", "log"),
            ps_end = stamp("poststart-end", "log"),
            prestop = stamp("prestop", "log"),
        );
        let log = out.join("log");
        put_manifest(&pods, "hooked.yaml", &hooked);
        assert!(
            eventually(Duration::from_secs(20), || lines(&log)
                .iter()
                .any(|l| l.starts_with("poststart-begin"))),
            "{}",
            events()
        );
        // The hook sleeps 2 s: meanwhile the container waits, not Ready.
        let during = pod_status(&state_s, "hooked");
        assert!(
            !lines(&log).iter().any(|l| l.starts_with("poststart-end")),
            "checked while the hook ran"
        );
        let app = container(&during, "containers", "app");
        assert_eq!(app["state"], "Waiting", "{during:#}");
        assert_eq!(app["ready"], false);
        assert_eq!(during["phase"], "Pending", "{during:#}");
        assert!(
            eventually(Duration::from_secs(10), || container(
                &pod_status(&state_s, "hooked"),
                "containers",
                "app"
            )["ready"]
                == true),
            "{:#}",
            pod_status(&state_s, "hooked")
        );
        let l = lines(&log);
        assert!(
            at(&l, "poststart-end") >= at(&l, "poststart-begin") + 1.9,
            "{l:?}"
        );

        // Removed: preStop first, the stop signal 2 s later, no SIGTERM.
        let t0 = Instant::now();
        std::fs::remove_file(pods.join("hooked.yaml")).unwrap();
        assert!(
            eventually(Duration::from_secs(15), || no_pods(&state_s)),
            "{}",
            events()
        );
        let took = t0.elapsed();
        let l = lines(&log);
        let (prestop, usr1) = (at(&l, "prestop"), at(&l, "usr1"));
        assert!(usr1 >= prestop + 1.9, "the signal follows the hook: {l:?}");
        assert!(!l.iter().any(|x| x.starts_with("term")), "{l:?}");
        assert!(
            took < Duration::from_secs(8),
            "{took:?}: not killed at the deadline"
        );

        // A preStop hook longer than the grace period: the stop signal at
        // the grace period's end, SIGKILL 2 s after (the kubelet's one-off
        // extension), whatever the hook still does.
        let slow = format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: slow}}
spec:
  terminationGracePeriodSeconds: 3
  volumes: [{{name: out, hostPath: {{path: {out_s}}}}}]
  containers:
  - name: app
    image: busybox
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: [sh, -c, 'trap \"{term}\" TERM; while true; do sleep 0.1; done']
    lifecycle:
      preStop: {{exec: {{command: [sh, -c, '{prestop}; sleep 30']}}}}
",
            term = trap_stamp("term", "slow"),
            prestop = stamp("prestop", "slow"),
        );
        put_manifest(&pods, "slow.yaml", &slow);
        assert!(
            eventually(Duration::from_secs(20), || container(
                &pod_status(&state_s, "slow"),
                "containers",
                "app"
            )["state"]
                == "Running"),
            "{}",
            events()
        );
        let t0 = Instant::now();
        std::fs::remove_file(pods.join("slow.yaml")).unwrap();
        assert!(
            eventually(Duration::from_secs(20), || no_pods(&state_s)),
            "{}",
            events()
        );
        let took = t0.elapsed();
        let l = lines(&out.join("slow"));
        let (prestop, term) = (at(&l, "prestop"), at(&l, "term"));
        assert!(
            (2.5..4.5).contains(&(term - prestop)),
            "SIGTERM at the grace period's end: {l:?}"
        );
        assert!(
            took >= Duration::from_millis(4800) && took < Duration::from_secs(9),
            "SIGKILL 2 s after the SIGTERM: {took:?}"
        );
        assert!(
            events().contains("PreStop hook did not complete within the grace period"),
            "{}",
            events()
        );

        // A failing postStart hook (here an httpGet answered 404 by the
        // container's server, from the pod's network namespace) kills the
        // container; under Never the pod has then failed.
        let failing = "apiVersion: v1
kind: Pod
metadata: {name: failing}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  containers:
  - name: httpd
    image: busybox
    command: [sh, -c, 'mkdir -p /www && exec httpd -f -p 8080 -h /www']
    lifecycle:
      postStart: {exec: {command: [sh, -c, 'sleep 1']}}
      preStop: {httpGet: {path: /missing, port: 8080}}
  - name: broken
    image: busybox
    command: [sleep, '1000']
    lifecycle:
      postStart: {exec: {command: [sh, -c, 'echo no >&2; exit 3']}}
";
        put_manifest(&pods, "failing.yaml", failing);
        assert!(
            eventually(Duration::from_secs(20), || {
                let p = pod_status(&state_s, "failing");
                container(&p, "containers", "broken")["exit_code"].is_number()
            }),
            "{:#}\n{}",
            pod_status(&state_s, "failing"),
            events()
        );
        let ev = events();
        assert!(
            ev.lines().any(|l| l.contains("FailedPostStartHook")
                && l.contains("default/failing:broken")
                && l.contains("command exited with 3")),
            "{ev}"
        );
        // The other container runs on; the pod fails with it once it ends.
        std::fs::remove_file(pods.join("failing.yaml")).unwrap();
        assert!(
            eventually(Duration::from_secs(15), || no_pods(&state_s)),
            "{}",
            events()
        );
        let ev = events();
        assert!(
            ev.lines().any(|l| l.contains("FailedPreStopHook")
                && l.contains("default/failing:httpd")
                && l.contains("statuscode: 404")),
            "the httpGet reached the container's server: {ev}"
        );
    });
}

#[test]
fn sidecars_start_in_order_restart_outlive_the_app_and_stop_last() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("sidecars");
        let (pods, state, state_s) = fx.agent_dirs();
        let out = fx.dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let out_s = out.display().to_string();
        let _agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        let events = || podctl(&["events", "--state-dir", &state_s]).1;
        let status = || podctl(&["status", "--state-dir", &state_s]).1;

        // A Job-like pod: its sidecar crashes at its first run (restarted
        // whatever the pod's Never, after the 10 s back-off), the init
        // container after it starts only once the sidecar's startup probe
        // passed, the app runs beside the sidecar, and when the app is
        // done the pod Succeeds and the sidecar is stopped.
        let job = format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: job}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  volumes: [{{name: out, hostPath: {{path: {out_s}}}}}]
  initContainers:
  - name: proxy
    image: busybox
    restartPolicy: Always
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: [sh, -c, 'if [ ! -f /out/crashed ]; then touch /out/crashed; exit 1; fi; trap \"{down}; exit 0\" TERM; sleep 1; {up}; touch /tmp/up; while true; do sleep 0.1; done']
    startupProbe: {{exec: {{command: [test, -f, /tmp/up]}}, periodSeconds: 1}}
  - name: migrate
    image: busybox
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: [sh, -c, '{migrate}']
  containers:
  - name: app
    image: busybox
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: [sh, -c, '{begin}; sleep 3; {end}']
",
            down = trap_stamp("proxy-down", "job"),
            up = stamp("proxy-up", "job"),
            migrate = stamp("migrate", "job"),
            begin = stamp("app-begin", "job"),
            end = stamp("app-end", "job"),
        );
        put_manifest(&pods, "job.yaml", &job);
        let log = out.join("job");
        // Both run: READY counts the sidecar with the app.
        assert!(
            eventually(Duration::from_secs(30), || status()
                .lines()
                .any(|l| l.starts_with("job ")
                    && l.contains(" 2/2 ")
                    && l.contains("Running"))),
            "{}\n{}",
            status(),
            events()
        );
        assert!(
            eventually(Duration::from_secs(15), || pod_status(&state_s, "job")
                ["phase"]
                == "Succeeded"),
            "{:#}\n{}",
            pod_status(&state_s, "job"),
            events()
        );
        assert!(
            eventually(Duration::from_secs(10), || lines(&log)
                .iter()
                .any(|l| l.starts_with("proxy-down"))),
            "{:?}",
            lines(&log)
        );
        let l = lines(&log);
        assert!(at(&l, "migrate") >= at(&l, "proxy-up"), "{l:?}");
        assert!(at(&l, "app-begin") >= at(&l, "migrate"), "{l:?}");
        assert!(at(&l, "proxy-down") >= at(&l, "app-end"), "{l:?}");
        let p = pod_status(&state_s, "job");
        assert_eq!(p["phase"], "Succeeded", "{p:#}");
        let proxy = container(&p, "init_containers", "proxy");
        assert_eq!(proxy["sidecar"], true, "{p:#}");
        assert_eq!(proxy["restart_count"], 1, "{p:#}");
        assert_eq!(container(&p, "containers", "app")["restart_count"], 0);
        // The first crash waited the back-off before the restart.
        let ev = events();
        assert!(
            ev.lines()
                .any(|l| l.contains("BackOff") && l.contains("default/job:proxy")),
            "{ev}"
        );
        // Not restarted once stopped: the pod stays done.
        assert!(
            !eventually(Duration::from_secs(2), || container(
                &pod_status(&state_s, "job"),
                "init_containers",
                "proxy"
            )["state"]
                == "Running"),
            "{:#}",
            pod_status(&state_s, "job")
        );
        std::fs::remove_file(pods.join("job.yaml")).unwrap();

        // Deleted: the app first, then the sidecars, the last first, each
        // once the one before it has exited.
        let trap = |who: &str| {
            format!(
                "trap \"{}; sleep 0.5; exit 0\" TERM; while true; do sleep 0.1; done",
                trap_stamp(&format!("{who}-term"), "order")
            )
        };
        let order = format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: order}}
spec:
  terminationGracePeriodSeconds: 10
  volumes: [{{name: out, hostPath: {{path: {out_s}}}}}]
  initContainers:
  - {{name: first, image: busybox, restartPolicy: Always, volumeMounts: [{{name: out, mountPath: /out}}], command: [sh, -c, '{first}']}}
  - {{name: second, image: busybox, restartPolicy: Always, volumeMounts: [{{name: out, mountPath: /out}}], command: [sh, -c, '{second}']}}
  containers:
  - {{name: app, image: busybox, volumeMounts: [{{name: out, mountPath: /out}}], command: [sh, -c, '{app}']}}
",
            first = trap("first"),
            second = trap("second"),
            app = trap("app"),
        );
        put_manifest(&pods, "order.yaml", &order);
        assert!(
            eventually(Duration::from_secs(20), || status()
                .lines()
                .any(|l| l.starts_with("order ") && l.contains(" 3/3 "))),
            "{}\n{}",
            status(),
            events()
        );
        std::fs::remove_file(pods.join("order.yaml")).unwrap();
        assert!(
            eventually(Duration::from_secs(20), || no_pods(&state_s)),
            "{}",
            events()
        );
        let l = lines(&out.join("order"));
        let (app, second, first) = (
            at(&l, "app-term"),
            at(&l, "second-term"),
            at(&l, "first-term"),
        );
        assert!(second >= app + 0.4, "{l:?}");
        assert!(first >= second + 0.4, "{l:?}");
        assert_nothing_tracked(&state.join("podagent.sock"));
    });
}
