//! The runtime from a plan: a pod's sandbox, containers on overlay rootfs from
//! the image store, their cgroups and shims; stop with its grace period; and
//! nothing left afterwards. As root; each container has its own network
//! namespace (loopback only), so the host's network is not touched. Outside
//! CI a missing privilege skips; with CI=true it fails.
//! (The agent end to end is in `tests/agent/`, probes in `probe.rs`, the
//! pod network in `pod_network.rs`.)

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use agent::cgroups::detect;
use agent::runtime::{sandbox, RuntimeError};
use support::fixture::*;
use support::{eventually, podctl, require};

/// Starts the pod's first container in a new sandbox and waits for it to
/// exit; its log.
fn run_to_exit(fx: &Fixture, pod: &specs::PodPlan) -> String {
    let sb = fx.sandbox(pod);
    let h = fx.rt.start(pod, &sb, None, &pod.containers[0]).unwrap();
    assert!(agent::runtime::wait_for_file(
        &h.dir.join("state"),
        "exit.json",
        Duration::from_secs(10)
    ));
    std::fs::read_to_string(h.dir.join("container.log")).unwrap()
}

/// The stdout lines of a CRI log, without their time and stream.
fn stdout_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| l.split_once(" stdout F ").map(|(_, t)| t))
        .collect()
}

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  hostname: web-1
  volumes: [{name: data, emptyDir: {}}]
  containers:
  - name: writer
    image: busybox
    command: [sh, -c, 'echo shared > /dev/shm/note; echo $$$$ > /data/pid; hostname > /data/host; exec sleep 1000']
    volumeMounts: [{name: data, mountPath: /data}]
    resources: {limits: {cpu: 200m, memory: 32Mi}}
  - name: reader
    image: busybox
    command: [sh, -c, 'trap "exit 0" TERM; while [ ! -f /data/host ]; do sleep 0.05; done; cat /data/host /dev/shm/note; while :; do sleep 0.1; done']
    volumeMounts: [{name: data, mountPath: /data, readOnly: true}]
"#;

#[test]
fn a_pod_runs_from_its_plan_and_stopping_it_leaves_nothing() {
    if !require() {
        return;
    }
    let fx = fixture("pod");
    let rt = &fx.rt;
    let pod = plan(POD);
    let sb = fx.sandbox(&pod);
    let writer = rt.start(&pod, &sb, None, &pod.containers[0]).unwrap();
    let reader = rt.start(&pod, &sb, None, &pod.containers[1]).unwrap();
    assert!(writer.started.pid > 1 && writer.started.start_ticks > 0);

    // The reader saw the writer's volume and the pod's shared /dev/shm (the
    // writer writes /data/host last: the reader waits for it).
    let log = reader.dir.join("container.log");
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(" stdout F shared\n")),
        "reader log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(" stdout F web-1\n"),
        "the pod's hostname: {text}"
    );
    let volume = sb
        .volumes
        .iter()
        .find(|(n, _)| n == "data")
        .unwrap()
        .1
        .clone();
    assert_eq!(
        std::fs::read_to_string(volume.join("pid")).unwrap().trim(),
        "1",
        "PID 1 in its own namespace"
    );
    // The writer runs in its cgroup under the pod's, with its limits; on
    // v2 it was cloned straight into it.
    let cg = rt.pod_cgroup(&pod).unwrap().join("writer").unwrap();
    assert_eq!(
        writer.started.cloned_into_cgroup,
        rt.cgroups.clone_into(&cg).is_some(),
        "{:?}",
        writer.started
    );
    assert!(rt
        .cgroups
        .pids(&cg)
        .unwrap()
        .contains(&(writer.started.pid as u32)));

    // The reader exits on SIGTERM; the writer (sleep as PID 1 ignores it) is
    // killed when the grace period ends.
    let t = Instant::now();
    let exited = rt
        .stop(&pod, &pod.containers[1], Duration::from_secs(5))
        .unwrap();
    assert_eq!((exited.exit_code, exited.reason.as_str()), (0, "Completed"));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stopped on SIGTERM, not at the deadline"
    );
    let t = Instant::now();
    let exited = rt
        .stop(&pod, &pod.containers[0], Duration::from_secs(1))
        .unwrap();
    let waited = t.elapsed();
    assert_eq!(exited.signal, Some(9), "{exited:?}");
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
        "killed after the grace period ({waited:?})"
    );

    for c in &pod.containers {
        rt.remove(&pod, c).unwrap();
    }
    rt.remove_pod(&pod).unwrap();
    fx.assert_no_mounts();
    assert!(!rt.state_dir.join("pods").join(&pod.uid).exists());
    assert!(!rt.state_dir.join("containers").join(&pod.uid).exists());
    for f in rt.cgroups.procs_files(&cg) {
        assert!(!f.parent().unwrap().exists(), "cgroup {} left", f.display());
    }
}

#[test]
fn start_errors_are_reported_and_cleaned_up() {
    if !require() {
        return;
    }
    let fx = fixture("errors");
    let rt = &fx.rt;
    let pod = plan("apiVersion: v1\nkind: Pod\nmetadata: {name: broken}\nspec:\n  containers:\n  - {name: nope, image: busybox, command: [/bin/nope]}\n  - {name: noimage, image: 'missing:v1'}\n");
    let sb = fx.sandbox(&pod);
    match rt.start(&pod, &sb, None, &pod.containers[0]) {
        Err(RuntimeError::StartError { container, message }) => {
            assert_eq!(container, "nope");
            assert_eq!(message, "exec: executable file not found: /bin/nope");
        }
        other => panic!("{other:?}"),
    }
    let err = rt.start(&pod, &sb, None, &pod.containers[1]).unwrap_err();
    assert_eq!(
        format!("{err}: {}", std::error::Error::source(&err).unwrap()),
        "image: image \"missing:v1\" is not in the store"
    );
    for c in &pod.containers {
        rt.remove(&pod, c).unwrap();
    }
    rt.remove_pod(&pod).unwrap();
    fx.assert_no_mounts();
}

#[test]
fn the_shim_leads_its_own_session_apart_from_its_spawner() {
    if !require() {
        return;
    }
    let fx = fixture("orphan");
    let rt = &fx.rt;
    let pod = plan("apiVersion: v1\nkind: Pod\nmetadata: {name: orphan}\nspec:\n  containers: [{name: c, image: busybox, command: [sleep, '1000']}]\n");
    let sb = fx.sandbox(&pod);
    let h = rt.start(&pod, &sb, None, &pod.containers[0]).unwrap();
    // The shim is in a session of its own, so it is not in the test's process
    // group and survives the agent's; the container is its child.
    let shim_pid = std::fs::read_to_string(format!("/proc/{}/stat", h.started.pid)).unwrap();
    let ppid: i32 = shim_pid[shim_pid.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(ppid))).unwrap();
    assert_eq!(sid.as_raw(), ppid, "the shim leads its own session");
    assert_ne!(sid, nix::unistd::getsid(None).unwrap());
    rt.stop(&pod, &pod.containers[0], Duration::from_millis(200))
        .unwrap();
    fx.tear_down(&pod);
}

#[test]
fn the_device_cgroup_denies_devices_outside_the_allowlist() {
    if !require() {
        return;
    }
    let fx = fixture("devices");
    // CAP_MKNOD is a default capability and `c *:* m` is allowed, as with
    // runc: the node can be made, but not opened.
    let pod = plan(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: devices}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'mknod /tmp/mem c 1 1 && echo mknod=ok; if head -c 1 /tmp/mem > /dev/null 2>&1; then echo mem=readable; else echo mem=denied; fi; echo zero=$(head -c 3 /dev/zero | wc -c)']\n",
    );
    let log = run_to_exit(&fx, &pod);
    assert!(log.contains(" stdout F mknod=ok\n"), "{log}");
    assert!(
        log.contains(" stdout F zero=3\n"),
        "allowed devices work: {log}"
    );
    match detect(Path::new("/proc/self/mountinfo")).unwrap().name() {
        "v2" => eprintln!(
            "cgroup v2: no eBPF device filter is loaded yet; /dev's contents are the only limit"
        ),
        _ => assert!(
            log.contains(" stdout F mem=denied\n"),
            "the v1 device cgroup must refuse /dev/mem: {log}"
        ),
    }
    fx.tear_down(&pod);
}

#[test]
fn a_container_reads_its_own_limits_from_a_read_only_sys_fs_cgroup() {
    if !require() {
        return;
    }
    let fx = fixture("own-limits");
    let pod = plan(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: limits}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n    resources: {limits: {cpu: 500m, memory: 48Mi}}\n    command: [sh, -c, 'sed s/^/cgroup=/ /proc/self/cgroup; cd /sys/fs/cgroup; if [ -f memory.max ]; then echo memory=$(cat memory.max) cpu=$(cat cpu.max | tr \" \" /) procs=$(grep -cx 1 cgroup.procs); else echo memory=$(cat memory/memory.limit_in_bytes) cpu=$(cat cpu/cpu.cfs_quota_us)/$(cat cpu/cpu.cfs_period_us) procs=$(grep -cx 1 pids/cgroup.procs); fi; if echo 1 > cgroup.procs 2>/dev/null || echo 1 > memory/cgroup.procs 2>/dev/null; then echo write=allowed; else echo write=refused; fi; grep -c \" /sys/fs/cgroup.* ro,\" /proc/self/mountinfo | sed s/^/ro_mounts=/']\n",
    );
    let log = run_to_exit(&fx, &pod);
    let lines = stdout_lines(&log);
    let has = |want: &str| lines.iter().any(|l| l.split(' ').any(|w| w == want));
    // Its own limits, whatever the hierarchy, and PID 1 (its init) is the
    // only process of the cgroup it sees.
    assert!(has("memory=50331648"), "{log}");
    assert!(has("cpu=50000/100000"), "{log}");
    assert!(has("procs=1"), "{log}");
    assert!(has("write=refused"), "{log}");
    match detect(Path::new("/proc/self/mountinfo")).unwrap().name() {
        "v2" => {
            // Its cgroup is its root, and the hierarchy one read-only mount.
            assert!(has("cgroup=0::/"), "{log}");
            assert!(has("ro_mounts=1"), "{log}");
        }
        _ => {
            // The host's paths, each leading to a read-only bind of its own
            // directory (the tmpfs holding them is read-only too).
            let own = format!("/pod{}/c", pod.uid);
            assert!(
                lines
                    .iter()
                    .filter(|l| l.starts_with("cgroup=") && l.contains(":memory:"))
                    .all(|l| l.ends_with(&own)),
                "{log}"
            );
            let ro: usize = lines
                .iter()
                .find_map(|l| l.strip_prefix("ro_mounts="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert!(
                ro >= 5,
                "tmpfs and one bind per hierarchy, read-only: {log}"
            );
        }
    }
    fx.tear_down(&pod);
}

#[test]
fn podctl_logs_shows_the_current_and_the_previous_run() {
    if !require() {
        return;
    }
    let fx = fixture("logs");
    let rt = &fx.rt;
    let pod = plan(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: chatty}\nspec:\n  containers:\n  - name: talk\n    image: busybox\n    command: [sh, -c, 'echo run $(cat /proc/sys/kernel/random/uuid); echo two; echo three >&2']\n",
    );
    let sb = fx.sandbox(&pod);
    let state = rt.state_dir.display().to_string();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let h = rt.start(&pod, &sb, None, &pod.containers[0]).unwrap();
        assert!(agent::runtime::wait_for_file(
            &h.dir.join("state"),
            "exit.json",
            Duration::from_secs(10)
        ));
        let (code, out, err) = podctl(&["logs", "--state-dir", &state, "chatty"]);
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("run "));
        assert_eq!(&lines[1..], ["two", "three"]);
        runs.push(lines[0].to_string());
    }
    assert_ne!(runs[0], runs[1], "two runs");
    let (_, out, _) = podctl(&["logs", "--state-dir", &state, "chatty", "--previous"]);
    assert_eq!(out.lines().next(), Some(runs[0].as_str()));
    let (_, out, _) = podctl(&[
        "logs",
        "--state-dir",
        &state,
        "chatty",
        "-c",
        "talk",
        "--tail",
        "1",
    ]);
    assert_eq!(out, "three\n");
    // No agent runs here: podctl says so and reads the state dir.
    let (code, _, err) = podctl(&["logs", "--state-dir", &state, "chaty"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            format!("podctl logs: the agent is not running; reading {state}").as_str(),
            "podctl logs: pod default/chaty not found; did you mean chatty?"
        ]
    );
    let (code, _, err) = podctl(&["logs", "--state-dir", &state, "chatty", "-c", "nope"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.lines().last(),
        Some("podctl logs: container nope is not in pod chatty; it has talk")
    );
    fx.tear_down(&pod);
}

#[test]
fn podctl_exec_runs_in_the_containers_namespaces_cgroup_and_profile() {
    if !require() {
        return;
    }
    let fx = fixture("exec");
    let rt = &fx.rt;
    let pod = plan(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: target}\nspec:\n  hostname: target-host\n  containers:\n  - name: app\n    image: busybox\n    command: [sh, -c, 'echo marker > /tmp/inside; exec sleep 1000']\n    env: [{name: GREETING, value: hello}]\n",
    );
    let sb = fx.sandbox(&pod);
    let h = rt.start(&pod, &sb, None, &pod.containers[0]).unwrap();
    let state = rt.state_dir.display().to_string();
    let podagent = env!("CARGO_BIN_EXE_podagent");
    let exec = |script: &str| {
        podctl(&[
            "exec",
            "--state-dir",
            &state,
            "--podagent",
            podagent,
            "target",
            "--",
            "sh",
            "-c",
            script,
        ])
    };
    assert!(
        eventually(Duration::from_secs(5), || exec("cat /tmp/inside").1
            == "marker\n"),
        "the container's own filesystem"
    );
    let (code, out, err) = exec("hostname; echo $GREETING; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t'; tr '\\0' ' ' < /proc/1/cmdline; echo; [ \"$(cat /proc/self/cgroup)\" = \"$(cat /proc/1/cgroup)\" ] && echo same-cgroup");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        ["target-host", "hello", "NoNewPrivs:1", "Seccomp:2"],
        "{out}"
    );
    assert_eq!(
        lines[4], "sleep 1000 ",
        "PID 1 is the container's init (its PID namespace): {out}"
    );
    // Read in its own cgroup namespace (v2) or the host's (v1): the same
    // text only when it is in the same cgroup (and, on v2, namespace).
    assert_eq!(
        lines[5], "same-cgroup",
        "it runs in the container's cgroup: {out}"
    );
    // The command's exit status is podctl's.
    assert_eq!(exec("exit 7").0, 7);

    // -i passes stdin; without it the command reads nothing.
    let with_stdin = |flags: &[&str], input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_podctl"))
            .args(["exec", "--state-dir", &state, "--podagent", podagent])
            .args(flags)
            .args(["target", "--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    assert_eq!(with_stdin(&["-i"], "through\n"), "through\n");
    assert_eq!(with_stdin(&[], "through\n"), "");

    // -it: a terminal from the container's own devpts, relayed both ways;
    // podctl itself runs on a pty the test made.
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = || std::process::Stdio::from(pty.slave.try_clone().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_podctl"))
        .args(["exec", "--state-dir", &state, "--podagent", podagent, "-it"])
        .args([
            "target",
            "--",
            "sh",
            "-c",
            "read line; tty; [ -t 0 ] && echo \"got $line on a tty\"; exit 5",
        ])
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .unwrap();
    drop(pty.slave);
    nix::unistd::write(&pty.master, b"hello\r").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until podctl (the last holder of the slave) exits: EIO.
    while let Ok(n) = nix::unistd::read(&pty.master, &mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let seen = String::from_utf8_lossy(&seen).into_owned();
    assert_eq!(child.wait().unwrap().code(), Some(5), "{seen}");
    assert!(
        seen.contains("/dev/pts/0"),
        "the container's devpts: {seen}"
    );
    assert!(seen.contains("got hello on a tty"), "{seen}");
    let (code, _, err) = podctl(&[
        "exec",
        "--state-dir",
        &state,
        "--podagent",
        podagent,
        "target",
        "--",
        "/bin/nope",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("executable file not found"), "{err}");
    rt.stop(&pod, &pod.containers[0], Duration::from_millis(100))
        .unwrap();
    let (code, _, err) = exec("true");
    assert_eq!(code, 1);
    assert!(err.contains("has exited"), "{err}");
    drop(h);
    fx.tear_down(&pod);
}

#[test]
fn gc_removes_a_running_pod_that_is_no_longer_known() {
    if !require() {
        return;
    }
    let fx = fixture("gc");
    let rt = &fx.rt;
    let pod = plan("apiVersion: v1\nkind: Pod\nmetadata: {name: forgotten}\nspec:\n  volumes: [{name: m, emptyDir: {medium: Memory}}]\n  containers: [{name: c, image: busybox, command: [sleep, '1000'], volumeMounts: [{name: m, mountPath: /m}]}]\n");
    let sb = fx.sandbox(&pod);
    let h = rt.start(&pod, &sb, None, &pod.containers[0]).unwrap();
    assert_eq!(
        rt.gc(&|uid| uid == pod.uid).unwrap(),
        Vec::<String>::new(),
        "a known pod is kept"
    );
    assert!(agent::shim::start_ticks(h.started.pid).is_some());
    assert_eq!(rt.gc(&|_| false).unwrap(), std::slice::from_ref(&pod.uid));
    assert!(
        eventually(Duration::from_secs(5), || agent::shim::start_ticks(
            h.started.pid
        )
        .is_none()),
        "the container's process is gone"
    );
    fx.assert_no_mounts();
    assert!(!rt.state_dir.join("pods").join(&pod.uid).exists());
    let cg = rt.pod_cgroup(&pod).unwrap();
    for f in rt.cgroups.procs_files(&cg) {
        assert!(!f.parent().unwrap().exists(), "cgroup {} left", f.display());
    }
}

#[test]
fn share_process_namespace_gives_a_pod_one_pid_namespace_held_by_pause() {
    if !require() {
        return;
    }
    let fx = fixture("sharepid");
    let rt = &fx.rt;
    let pod = plan(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: shared}\nspec:\n  shareProcessNamespace: true\n  containers:\n  - {name: a, image: busybox, command: [sleep, '1001']}\n  - {name: b, image: busybox, command: [sleep, '1002']}\n",
    );
    let mut sb = fx.sandbox(&pod);
    rt.ensure_pid_namespace(&pod, &mut sb).unwrap();
    let pause = sandbox::pause_pid(&sb.dir).expect("the pause process runs");
    for c in &pod.containers {
        rt.start(&pod, &sb, None, c).unwrap();
    }
    let state = rt.state_dir.display().to_string();
    let (code, out, err) = podctl(&[
        "exec",
        "--state-dir",
        &state,
        "--podagent",
        env!("CARGO_BIN_EXE_podagent"),
        "shared",
        "-c",
        "b",
        "--",
        "sh",
        "-c",
        "cat /proc/1/comm; ps -o args; readlink /proc/1/exe || echo pid1-exe-refused; readlink /proc/$(pidof sleep | cut -d' ' -f1)/exe",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().next(),
        Some("pause"),
        "PID 1 is the pod's: {out}"
    );
    // PID 1 runs the host's binary and is not dumpable: no container can
    // open its exe (CVE-2019-5736); a container's own process it can.
    assert!(out.contains("pid1-exe-refused"), "{out}");
    assert!(out.contains("/bin/busybox"), "{out}");
    assert!(out.contains("sleep 1001"), "b sees a's process: {out}");
    assert!(out.contains("sleep 1002"), "{out}");
    // Starting it again finds the running one.
    let mut again = fx.sandbox(&pod);
    rt.ensure_pid_namespace(&pod, &mut again).unwrap();
    assert_eq!(again.pid_ns, sb.pid_ns);
    for c in &pod.containers {
        rt.stop(&pod, c, Duration::from_millis(200)).unwrap();
    }
    fx.tear_down(&pod);
    assert!(
        eventually(Duration::from_secs(5), || agent::shim::start_ticks(pause)
            .is_none()),
        "the pause process is gone with the pod"
    );
}

/// CVE-2021-25741's attack: a container puts a symlink to / in a shared
/// volume, and another container mounts it as a subPath. The mount is
/// refused; a symlink that stays inside the volume is followed.
#[test]
fn a_subpath_symlink_out_of_its_volume_is_refused() {
    if !require() {
        return;
    }
    let fx = fixture("subpath");
    let rt = &fx.rt;
    let pod = plan(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: sub}\nspec:\n  volumes: [{name: shared, emptyDir: {}}]\n  containers:\n  - name: attacker\n    image: busybox\n    command: [sh, -c, 'mkdir -p /v/real && echo inside > /v/real/f && ln -s real /v/link && ln -s / /v/evil && ln -s ../../../../../../.. /v/up && touch /v/ready && exec sleep 1000']\n    volumeMounts: [{name: shared, mountPath: /v}]\n  - name: fine\n    image: busybox\n    command: [sh, -c, 'cat /s/f; exec sleep 1000']\n    volumeMounts: [{name: shared, mountPath: /s, subPath: link}]\n  - name: victim\n    image: busybox\n    command: [sleep, '1000']\n    volumeMounts: [{name: shared, mountPath: /host, subPath: evil}]\n  - name: victim2\n    image: busybox\n    command: [sleep, '1000']\n    volumeMounts: [{name: shared, mountPath: /host, subPath: up}]\n  - name: victim3\n    image: busybox\n    command: [sleep, '1000']\n    volumeMounts: [{name: shared, mountPath: /host, subPath: evil/made-on-the-host}]\n  - name: fresh\n    image: busybox\n    command: [sh, -c, 'touch /n/here; exec sleep 1000']\n    volumeMounts: [{name: shared, mountPath: /n, subPath: new/deeper}]\n",
    );
    let sb = fx.sandbox(&pod);
    let volume = sb.volumes[0].1.clone();
    rt.start(&pod, &sb, None, &pod.containers[0]).unwrap();
    assert!(eventually(Duration::from_secs(5), || volume
        .join("ready")
        .exists()));
    // Inside the volume: followed.
    rt.start(&pod, &sb, None, &pod.containers[1]).unwrap();
    let log = rt
        .state_dir
        .join("containers")
        .join(&pod.uid)
        .join("fine/container.log");
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("inside")),
        "{:?}",
        std::fs::read_to_string(&log)
    );
    // Out of it, absolute or by `..`, even to make a missing subPath:
    // refused, with the reason, and nothing made on the host.
    for c in &pod.containers[2..5] {
        let err = rt.start(&pod, &sb, None, c).unwrap_err().to_string();
        assert!(err.contains("leads outside its volume"), "{err}");
    }
    assert!(!Path::new("/made-on-the-host").exists());
    // A missing subPath is made in the volume, as the kubelet does.
    rt.start(&pod, &sb, None, &pod.containers[5]).unwrap();
    assert!(eventually(Duration::from_secs(5), || volume
        .join("new/deeper/here")
        .exists()));
    for c in &pod.containers {
        let _ = rt.stop(&pod, c, Duration::from_millis(200));
    }
    fx.tear_down(&pod);
}

/// An ext4 filesystem on a loop device, mounted on a temporary directory;
/// unmounted, detached and removed when dropped.
struct LoopFs {
    dir: tempfile::TempDir,
    dev: String,
}

impl LoopFs {
    fn new() -> LoopFs {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
            assert!(out.status.success(), "{cmd:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image));
        let fs = LoopFs { dir, dev };
        std::fs::create_dir(fs.mnt()).unwrap();
        run(Command::new("mount").arg(&fs.dev).arg(fs.mnt()));
        fs
    }

    fn mnt(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mnt(), nix::mount::MntFlags::MNT_DETACH);
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn an_io_annotation_throttles_direct_writes_to_about_its_rate() {
    if !require() {
        return;
    }
    let fx = fixture("io");
    let rt = &fx.rt;
    let disk = LoopFs::new();
    // Two writers of the same 3 MiB with O_DIRECT on a filesystem of the
    // loop device: one under wbps=1Mi, one free.
    // (busybox's dd reports no rate: the kernel's uptime around it does.)
    let dd = "read a x < /proc/uptime; dd if=/dev/zero of=/data/$0 bs=64k count=48 oflag=direct && read b x < /proc/uptime && echo $a $b";
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: io\n  annotations: {{io.podagent.io/limited: '{dev} wbps=1Mi riops=5000'}}\nspec:\n  restartPolicy: Never\n  volumes: [{{name: data, hostPath: {{path: {mnt}}}}}]\n  containers:\n  - {{name: limited, image: busybox, command: [sh, -c, '{dd}', limited], volumeMounts: [{{name: data, mountPath: /data}}]}}\n  - {{name: free, image: busybox, command: [sh, -c, '{dd}', free], volumeMounts: [{{name: data, mountPath: /data}}]}}\n",
        dev = disk.dev,
        mnt = disk.mnt().display(),
    );
    let node = specs::NodeInfo {
        block_devices: specs::io::BlockDevices::new(agent::node::block_device),
        ..specs::NodeInfo::default()
    };
    let r = specs::load("pod.yaml", yaml.as_bytes(), &node);
    assert!(!r.has_errors(), "{:#?}", r.diagnostics);
    let pod = r.pods.into_iter().next().unwrap();
    let sb = fx.sandbox(&pod);
    let v2 = detect(Path::new("/proc/self/mountinfo")).unwrap().name() == "v2";
    let (major, minor) = agent::node::block_device(&disk.dev).unwrap();
    let dev = format!("{major}:{minor}");

    // One writer after the other: the device is not shared while measured.
    let mut seconds = Vec::new();
    for c in &pod.containers {
        let h = rt.start(&pod, &sb, None, c).unwrap();
        let cg = rt.pod_cgroup(&pod).unwrap().join(c.name.as_str()).unwrap();
        let dir = rt.cgroups.procs_files(&cg)[0]
            .parent()
            .unwrap()
            .to_path_buf();
        if c.name.as_str() == "limited" {
            // The files the kernel holds, read back.
            let (file, want) = if v2 {
                (
                    "io.max",
                    format!("{dev} rbps=max wbps=1048576 riops=5000 wiops=max"),
                )
            } else {
                ("blkio.throttle.write_bps_device", format!("{dev} 1048576"))
            };
            let mut held = String::new();
            for d in rt.cgroups.procs_files(&cg) {
                let f = d.parent().unwrap().join(file);
                if f.exists() {
                    held = std::fs::read_to_string(f).unwrap();
                }
            }
            assert_eq!(held.trim(), want, "{}", dir.display());
        }
        assert!(agent::runtime::wait_for_file(
            &h.dir.join("state"),
            "exit.json",
            Duration::from_secs(60)
        ));
        let log = std::fs::read_to_string(h.dir.join("container.log")).unwrap();
        let s: f64 = log
            .lines()
            .find_map(|l| {
                let (_, t) = l.split_once(" stdout F ")?;
                let (a, b) = t.split_once(' ')?;
                Some(b.parse::<f64>().ok()? - a.parse::<f64>().ok()?)
            })
            .unwrap_or_else(|| panic!("{}: no times: {log}", c.name));
        seconds.push(s);
    }
    // /proc/uptime counts hundredths of a second.
    let rate = |s: f64| 3.0 / s.max(0.01);
    eprintln!(
        "3 MiB O_DIRECT: limited {:.3} s ({:.2} MiB/s), free {:.3} s ({:.2} MiB/s)",
        seconds[0],
        rate(seconds[0]),
        seconds[1],
        rate(seconds[1])
    );
    // The bound that proves the throttle is the upper one. The lower one
    // only tells a limit of the wrong unit (KiB/s) apart: emulated (TCG,
    // with other tests beside it) the limited writer once made 0.53 MiB/s.
    assert!(
        (0.4..=1.3).contains(&rate(seconds[0])),
        "under wbps=1Mi: {:.2} MiB/s",
        rate(seconds[0])
    );
    // (Emulated, with another test beside it, the free writer made only
    // 2.75 MiB/s once: the bound is what no throttle to 1 MiB/s allows.)
    assert!(
        rate(seconds[1]) > 1.5 * rate(seconds[0]).max(1.0),
        "the free writer is not held to the rate: {:.2} MiB/s",
        rate(seconds[1])
    );

    // A resize to no IO limits lifts them.
    let cg = rt.pod_cgroup(&pod).unwrap().join("limited").unwrap();
    rt.cgroups
        .apply(
            &cg,
            &agent::cgroups::Limits {
                io: Some(agent::cgroups::IoLimits::NONE),
                ..agent::cgroups::Limits::default()
            },
        )
        .unwrap();
    for d in rt.cgroups.procs_files(&cg) {
        for file in [
            "io.max",
            "blkio.throttle.write_bps_device",
            "blkio.throttle.read_iops_device",
        ] {
            let f = d.parent().unwrap().join(file);
            if f.exists() {
                assert_eq!(
                    std::fs::read_to_string(&f).unwrap().trim(),
                    "",
                    "{}",
                    f.display()
                );
            }
        }
    }
    fx.tear_down(&pod);
}

/// What the kernel holds for each resource of a Burstable pod, on the node's
/// hierarchy, against the values the kubelet (with runc >= 1.3.2) gives the
/// same manifest. The README's fidelity table is this table.
#[test]
fn resource_files_match_the_kubelets_values() {
    if !require() {
        return;
    }
    let fx = fixture("fidelity");
    let rt = &fx.rt;
    let pod = plan(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: fidelity}\nspec:\n  containers:\n  - {name: burst, image: busybox, command: [sleep, '1000'], resources: {requests: {cpu: 250m, memory: 64Mi}, limits: {cpu: 500m, memory: 128Mi}}}\n  - {name: none, image: busybox, command: [sleep, '1000']}\n  - {name: whole, image: busybox, command: [sleep, '1000'], resources: {limits: {cpu: '1', memory: 256Mi}}}\n",
    );
    let v2 = detect(Path::new("/proc/self/mountinfo")).unwrap().name() == "v2";
    // (cgroup, file on v1, file on v2, value on v1, value on v2): the
    // kubelet's, except pids (see the README).
    const UNLIMITED_V1: &str = "9223372036854771712";
    let want: &[(&str, &str, &str, &str, &str)] = &[
        ("burst", "cpu.shares", "cpu.weight", "256", "35"),
        (
            "burst",
            "cpu.cfs_quota_us",
            "cpu.max",
            "50000",
            "50000 100000",
        ),
        ("burst", "cpu.cfs_period_us", "", "100000", ""),
        (
            "burst",
            "memory.limit_in_bytes",
            "memory.max",
            "134217728",
            "134217728",
        ),
        (
            "burst",
            "memory.memsw.limit_in_bytes",
            "memory.swap.max",
            "134217728",
            "0",
        ),
        ("burst", "", "memory.oom.group", "", "1"),
        ("burst", "pids.max", "pids.max", "4096", "4096"),
        ("none", "cpu.shares", "cpu.weight", "2", "1"),
        ("none", "cpu.cfs_quota_us", "cpu.max", "-1", "max 100000"),
        (
            "none",
            "memory.limit_in_bytes",
            "memory.max",
            UNLIMITED_V1,
            "max",
        ),
        (
            "none",
            "memory.memsw.limit_in_bytes",
            "memory.swap.max",
            UNLIMITED_V1,
            "max",
        ),
        ("whole", "cpu.shares", "cpu.weight", "1024", "100"),
        (
            "whole",
            "cpu.cfs_quota_us",
            "cpu.max",
            "100000",
            "100000 100000",
        ),
        (
            "whole",
            "memory.limit_in_bytes",
            "memory.max",
            "268435456",
            "268435456",
        ),
        (
            "whole",
            "memory.memsw.limit_in_bytes",
            "memory.swap.max",
            "268435456",
            "0",
        ),
        // The pod: shares of the summed requests (1250m), no quota or
        // memory limit (a container has none).
        ("", "cpu.shares", "cpu.weight", "1280", "120"),
        ("", "cpu.cfs_quota_us", "cpu.max", "-1", "max 100000"),
        (
            "",
            "memory.limit_in_bytes",
            "memory.max",
            UNLIMITED_V1,
            "max",
        ),
        ("", "pids.max", "pids.max", "4096", "4096"),
    ];
    let sb = fx.sandbox(&pod);
    for c in &pod.containers {
        rt.start(&pod, &sb, None, c).unwrap();
    }
    let mut checked = 0;
    for (container, f1, f2, v1_value, v2_value) in want {
        let (file, value) = if v2 { (f2, v2_value) } else { (f1, v1_value) };
        if file.is_empty() {
            continue;
        }
        let mut cg = rt.pod_cgroup(&pod).unwrap();
        if !container.is_empty() {
            cg = cg.join(container).unwrap();
        }
        let path = rt
            .cgroups
            .procs_files(&cg)
            .iter()
            .map(|p| p.parent().unwrap().join(file))
            .find(|p| p.exists());
        // memsw exists only with swap accounting on.
        let Some(path) = path else {
            assert!(file.contains("memsw"), "{container}: no {file}");
            continue;
        };
        let held = std::fs::read_to_string(&path).unwrap();
        assert_eq!(held.trim(), *value, "{container} {file}");
        checked += 1;
    }
    assert!(checked >= 15, "{checked}");
    fx.tear_down(&pod);
}

/// An emptyDir is everyone's (0777), and with an `fsGroup` the group's:
/// what a non-root container makes in it is the group's too (setgid).
#[test]
fn an_empty_dir_is_writable_by_any_user_and_owned_by_the_fs_group() {
    if !require() {
        return;
    }
    let fx = fixture("fsgroup");
    let rt = &fx.rt;
    let pod = plan(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: fsg}\nspec:\n  restartPolicy: Never\n  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000}\n  volumes: [{name: v, emptyDir: {}}]\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'touch /v/f && mkdir /v/d && stat -c \"%g %a %n\" /v /v/f /v/d']\n    volumeMounts: [{name: v, mountPath: /v}]\n",
    );
    let sb = fx.sandbox(&pod);
    let h = rt.start(&pod, &sb, None, &pod.containers[0]).unwrap();
    assert!(agent::runtime::wait_for_file(
        &h.dir.join("state"),
        "exit.json",
        Duration::from_secs(10)
    ));
    let log = std::fs::read_to_string(h.dir.join("container.log")).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once(" F ").map(|(_, t)| t))
        .collect();
    assert_eq!(
        lines,
        ["2000 2777 /v", "2000 644 /v/f", "2000 2755 /v/d"],
        "{log}"
    );
    // On the host, as the container left them.
    use std::os::unix::fs::MetadataExt;
    let volume = &sb.volumes[0].1;
    assert_eq!(std::fs::metadata(volume.join("f")).unwrap().gid(), 2000);
    fx.tear_down(&pod);
}

/// `fsGroup` on a volume with content: every file gets the group and group
/// read-write, directories setgid; a symlink is not followed; with
/// `OnRootMismatch` a root that already has them stops the walk.
#[test]
fn fs_group_ownership_walks_without_following_links_and_honours_on_root_mismatch() {
    if !require() {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("v");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/f"), "x").unwrap();
    std::fs::set_permissions(root.join("sub/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let outside = dir.path().join("outside");
    std::fs::write(&outside, "not the pod's").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    let gid_mode = |p: &std::path::Path| {
        let md = std::fs::metadata(p).unwrap();
        (md.gid(), md.mode() & 0o7777)
    };
    agent::runtime::sandbox::fs_group_ownership(&root, 3000, false).unwrap();
    assert_eq!(gid_mode(&root.join("sub/f")), (3000, 0o660));
    assert_eq!(gid_mode(&root.join("sub")).0, 3000);
    assert_eq!(gid_mode(&root.join("sub")).1 & 0o2070, 0o2070);
    assert_eq!(
        gid_mode(&outside).0,
        0,
        "the link's target is not the pod's"
    );
    assert_eq!(
        std::fs::symlink_metadata(root.join("link")).unwrap().gid(),
        3000
    );
    // OnRootMismatch: the root is right, so a file changed since stays.
    std::os::unix::fs::chown(root.join("sub/f"), None, Some(0)).unwrap();
    agent::runtime::sandbox::fs_group_ownership(&root, 3000, true).unwrap();
    assert_eq!(gid_mode(&root.join("sub/f")).0, 0);
    // Always walks again.
    agent::runtime::sandbox::fs_group_ownership(&root, 3000, false).unwrap();
    assert_eq!(gid_mode(&root.join("sub/f")).0, 3000);
}
