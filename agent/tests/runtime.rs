//! The runtime from a plan: a pod's sandbox, containers on overlay rootfs from
//! the image store, their cgroups and shims; stop with its grace period; and
//! nothing left afterwards. As root; each container has its own network
//! namespace (loopback only), so the host's network is not touched. Outside
//! CI a missing privilege skips; with CI=true it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use agent::cgroups::{detect, CgroupPath};
use agent::image::ImageStore;
use agent::runtime::{sandbox, Runtime, RuntimeError};
use support::{busybox_rootfs, eventually, mounts_under, podctl, require};

struct Fixture {
    rt: Runtime,
    cg_root: CgroupPath,
    dir: tempfile::TempDir,
}

impl Drop for Fixture {
    /// Whatever a test left (it may have panicked half-way): processes,
    /// mounts, cgroups, directories.
    fn drop(&mut self) {
        let _ = self.rt.gc(&|_| false);
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
    fn sandbox(&self, pod: &specs::PodPlan) -> sandbox::Sandbox {
        let sb = sandbox::create(&self.rt.state_dir, pod).unwrap();
        self.rt.create_pod_cgroup(pod).unwrap();
        sb
    }

    /// Removes the pod's containers and sandbox and checks no mount is left.
    fn tear_down(&self, pod: &specs::PodPlan) {
        for c in pod.all_containers() {
            self.rt.remove(pod, c).unwrap();
        }
        self.rt.remove_pod(pod).unwrap();
        self.assert_no_mounts();
    }

    fn assert_no_mounts(&self) {
        let left = mounts_under(self.dir.path());
        assert!(left.is_empty(), "mounts left: {left:?}");
    }

    /// An agent's pods dir (made) and state dir, and the state dir as text.
    fn agent_dirs(&self) -> (PathBuf, PathBuf, String) {
        let pods = self.dir.path().join("pods");
        std::fs::create_dir_all(&pods).unwrap();
        let state = self.dir.path().join("agent-state");
        let state_s = state.display().to_string();
        (pods, state, state_s)
    }
}

fn fixture(name: &str) -> Fixture {
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
    };
    Fixture { rt, cg_root, dir }
}

fn plan(yaml: &str) -> specs::PodPlan {
    let r = specs::load("pod.yaml", yaml.as_bytes(), &specs::NodeInfo::default());
    assert!(!r.has_errors(), "{:#?}", r.diagnostics);
    r.pods.into_iter().next().unwrap()
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
    command: [sh, -c, 'hostname > /data/host; echo $$$$ > /data/pid; echo shared > /dev/shm/note; exec sleep 1000']
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

    // The reader saw the writer's volume and the pod's shared /dev/shm.
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
    // The writer runs in its cgroup under the pod's, with its limits.
    let cg = rt.pod_cgroup(&pod).unwrap().join("writer").unwrap();
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
    let rt = &fx.rt;
    // CAP_MKNOD is a default capability and `c *:* m` is allowed, as with
    // runc: the node can be made, but not opened.
    let pod = plan(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: devices}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'mknod /tmp/mem c 1 1 && echo mknod=ok; if head -c 1 /tmp/mem > /dev/null 2>&1; then echo mem=readable; else echo mem=denied; fi; echo zero=$(head -c 3 /dev/zero | wc -c)']\n",
    );
    let sb = fx.sandbox(&pod);
    let h = rt.start(&pod, &sb, None, &pod.containers[0]).unwrap();
    assert!(agent::runtime::wait_for_file(
        &h.dir.join("state"),
        "exit.json",
        Duration::from_secs(10)
    ));
    let log = std::fs::read_to_string(h.dir.join("container.log")).unwrap();
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
    let (code, out, err) = exec("hostname; echo $GREETING; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t'; tr '\\0' ' ' < /proc/1/cmdline; echo; cat /proc/self/cgroup | grep -cE 'pod'");
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
    assert_ne!(lines[5], "0", "it runs in the container's cgroup: {out}");
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

/// An HTTP/1.0 GET of /index.html; the whole response.
fn http_get(addr: std::net::SocketAddr) -> Option<String> {
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
fn on_private_node<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            netplug::link::netlink(None, |h| async move {
                let lo = netplug::link::find(&h, "lo").await?.expect("lo");
                h.link()
                    .set(
                        rtnetlink::LinkUnspec::new_with_index(lo.header.index)
                            .up()
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(|source| netplug::NetError::Netlink {
                        op: "up",
                        target: "lo".into(),
                        source,
                    })
            })
            .unwrap();
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A gRPC health server over HTTP/2 cleartext, standing in for a container's
/// app: "" is SERVING, "down" NOT_SERVING, "gone" answers grpc-status 5,
/// "slow" answers after 2 s. It serves `connections` connections, then
/// returns.
fn grpc_health_server(listener: std::net::TcpListener, connections: usize) {
    use http_body_util::BodyExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let mut served = Vec::new();
        for _ in 0..connections {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                    assert_eq!(req.headers()["content-type"], "application/grpc");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    // Frame header, then field 1 (the service) if not empty.
                    let service =
                        String::from_utf8_lossy(body.get(7..).unwrap_or_default()).into_owned();
                    let (status, code) = match service.as_str() {
                        "" => (1u8, "0"),
                        "down" => (2, "0"),
                        "gone" => (0, "5"),
                        _ => {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            (1, "0")
                        }
                    };
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", code.parse().unwrap());
                    let frames = vec![
                        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                            bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]),
                        )),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                },
            );
            served.push(tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
            }));
        }
        for s in served {
            let _ = s.await;
        }
    });
}

/// gRPC probes: the health service's answer, its errors and the timeout,
/// made from inside the network namespace as for a pod.
#[test]
fn a_grpc_probe_reads_the_health_service() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || grpc_health_server(listener, 4));
        let probe = |service: &str, port: u16| {
            let target = agent::probe::Target {
                net_ns: std::fs::File::open("/proc/thread-self/ns/net")
                    .unwrap()
                    .into(),
                pod_ip: Some(std::net::Ipv4Addr::LOCALHOST.into()),
                exec: Command::new("true"),
            };
            let action = specs::plan::ProbeAction::Grpc {
                port,
                service: (!service.is_empty()).then(|| service.to_string()),
            };
            agent::probe::attempt(&action, target, Duration::from_secs(1))
                .map_err(|e| agent::error_chain(&e))
        };
        assert_eq!(probe("", port), Ok(()));
        assert_eq!(
            probe("down", port),
            Err("service unhealthy (responded with \"NOT_SERVING\")".to_string())
        );
        let e = probe("gone", port).unwrap_err();
        assert!(e.contains("grpc-status \"5\""), "{e}");
        let t = Instant::now();
        let e = probe("slow", port).unwrap_err();
        assert!(
            e.starts_with("timeout: health rpc did not complete within 1s"),
            "{e}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "{:?}",
            t.elapsed()
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let e = probe("", closed_port).unwrap_err();
        assert!(e.contains("Connection refused"), "{e}");
        server.join().unwrap();
    });
}

#[test]
fn a_pods_containers_share_one_eth0_reached_from_the_node_and_a_host_port() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("net");
        let rt = &fx.rt;
        let net = netplug::Network::new(netplug::Config::new(fx.dir.path().join("net"))).unwrap();
        net.init().unwrap();
        let pod = plan(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: webnet}\nspec:\n  containers:\n  - name: web\n    image: busybox\n    command: [sh, -c, 'mkdir -p /www && echo served-by-pod > /www/index.html && exec httpd -f -p 8080 -h /www']\n    ports: [{containerPort: 8080, hostPort: 18080}]\n  - name: probe\n    image: busybox\n    command: [sh, -c, 'ip -4 -o addr show eth0; while :; do sleep 1; done']\n",
        );
        let port = netplug::HostPort {
            protocol: netplug::Protocol::Tcp,
            host_port: 18080,
            container_port: 8080,
        };
        let attach = net.setup(&pod.uid, &[port]).unwrap();
        let sb = fx.sandbox(&pod);
        let web = rt
            .start(&pod, &sb, Some(&attach.netns), &pod.containers[0])
            .unwrap();
        let probe = rt
            .start(&pod, &sb, Some(&attach.netns), &pod.containers[1])
            .unwrap();
        // The second container sees the pod's eth0 and its address.
        let log = probe.dir.join("container.log");
        assert!(
            eventually(Duration::from_secs(5), || std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&format!("inet {}/16", attach.ip))),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // The node reaches the web container at the pod's address and through
        // the host port.
        let get = |addr: std::net::SocketAddr| http_get(addr).unwrap_or_default();
        let pod_addr = std::net::SocketAddr::from((attach.ip, 8080));
        assert!(
            eventually(Duration::from_secs(5), || get(pod_addr)
                .contains("served-by-pod")),
            "GET {pod_addr}"
        );
        let host_port = std::net::SocketAddr::from(([10, 88, 0, 1], 18080));
        assert!(get(host_port).contains("served-by-pod"), "GET {host_port}");
        drop(web);
        for c in &pod.containers {
            rt.stop(&pod, c, Duration::from_millis(500)).unwrap();
            rt.remove(&pod, c).unwrap();
        }
        rt.remove_pod(&pod).unwrap();
        net.teardown(&pod.uid).unwrap();
        assert!(net.ipam().list().unwrap().is_empty());
        assert!(netplug::nft::elements("podagent").unwrap().is_empty());
        fx.assert_no_mounts();
    });
}

/// Writes a manifest into the pods dir the way an editor or a GitOps sync
/// should: a temp file renamed into place.
fn put_manifest(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

const SERVED: &str = "apiVersion: v1
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
struct Running(std::process::Child);

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
fn spawn_agent(fx: &Fixture, pods: &Path, state: &Path, extra: &[&str]) -> std::process::Child {
    let cg = format!("{}/agent", fx.cg_root.as_path().display());
    Command::new(env!("CARGO_BIN_EXE_podagent"))
        .arg("run")
        .arg("--pods-dir")
        .arg(pods)
        .arg("--state-dir")
        .arg(state)
        .arg("--root-dir")
        .arg(fx.dir.path())
        .args(["--cgroup-root", &cg, "--stop-pods-on-exit"])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

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
        let status = || podctl(&["status", "--state-dir", &state_s]).1;
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
        let status = || {
            let out = podctl(&["status", "-o", "raw", "--state-dir", &state_s]).1;
            serde_json::from_str::<serde_json::Value>(&out).unwrap_or_default()
        };
        let pod = |name: &str| -> serde_json::Value {
            status()["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == name)
                .cloned()
                .unwrap_or_default()
        };
        let events = || -> Vec<serde_json::Value> {
            let out = podctl(&["events", "-o", "json", "--state-dir", &state_s]).1;
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
        assert_eq!(sf["containers"][0]["state"], "Waiting", "{sf:#}");
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

const PROBED: &str = "apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox
    command: [sh, -c, 'mkdir -p /www; (sleep 2; echo ok > /www/ready) & exec httpd -f -p 8080 -h /www']
    readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
  - name: stuck
    image: busybox
    command: [sh, -c, 'touch /tmp/alive; (sleep 2; rm /tmp/alive) & exec sleep 1000']
    livenessProbe: {exec: {command: [test, -f, /tmp/alive]}, periodSeconds: 1, failureThreshold: 2}
";

#[test]
fn probes_gate_readiness_and_a_failed_liveness_probe_restarts_the_container() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("probes");
        let (pods, state, state_s) = fx.agent_dirs();
        let agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        put_manifest(&pods, "probed.yaml", PROBED);
        let container = |name: &str| -> serde_json::Value {
            let out = podctl(&["status", "-o", "raw", "--state-dir", &state_s]).1;
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            v["pods"][0]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == name)
                .cloned()
                .unwrap_or_default()
        };
        let events = || -> Vec<serde_json::Value> {
            let out = podctl(&["events", "-o", "json", "--state-dir", &state_s]).1;
            serde_json::from_str(&out).unwrap_or_default()
        };
        let has = |container: &str, reason: &str, text: &str| {
            events().iter().any(|e| {
                e["container"] == container
                    && e["reason"] == reason
                    && e["message"].as_str().unwrap_or("").contains(text)
            })
        };

        // Readiness: the agent's own HTTP GET from the pod's network
        // namespace gets 404 until /ready exists, then 200.
        assert!(
            eventually(Duration::from_secs(10), || container("web")["ready"]
                == true),
            "{:#}\n{:#?}",
            container("web"),
            events()
        );
        assert!(
            has(
                "web",
                "Unhealthy",
                "Readiness probe failed: HTTP probe failed with statuscode: 404"
            ),
            "{:#?}",
            events()
        );
        assert!(!has("web", "Unhealthy", "Liveness"), "{:#?}", events());
        let d = podctl(&["describe", "probed", "--state-dir", &state_s]).1;
        for want in [
            "Phase:        Running",
            "QoS Class:    BestEffort",
            "Limits:     cpu quota none, shares 2",
            "Readiness probe failed",
        ] {
            assert!(d.contains(want), "{want:?} in:\n{d}");
        }
        let (code, _, err) = podctl(&["describe", "probd", "--state-dir", &state_s]);
        assert_eq!(code, 1);
        assert!(err.contains("did you mean probed?"), "{err}");
        // The image its containers run from cannot be removed.
        let root_s = fx.dir.path().display().to_string();
        let (code, _, err) = podctl(&["image", "--root-dir", &root_s, "rm", "busybox"]);
        assert_ne!(code, 0);
        assert!(
            err.contains("is used by the container whose root is"),
            "{err}"
        );
        assert!(podctl(&["image", "--root-dir", &root_s, "ls"])
            .1
            .contains("busybox:latest"));
        let top = podctl(&["top", "--state-dir", &state_s]).1;
        assert!(
            top.lines()
                .any(|l| l.starts_with("probed ") && l.contains(" web ")),
            "{top}"
        );

        // Liveness (exec in the container): /tmp/alive goes away, two
        // failures kill it (sleep as PID 1 ignores SIGTERM: the cgroup is
        // killed after the 1 s grace) and it restarts after the back-off.
        assert!(
            eventually(Duration::from_secs(10), || has(
                "stuck",
                "Killing",
                "failed its liveness probe"
            )),
            "{:#?}",
            events()
        );
        assert!(has(
            "stuck",
            "Unhealthy",
            "Liveness probe failed: command exited with 1"
        ));
        assert!(
            eventually(Duration::from_secs(20), || container("stuck")
                ["restart_count"]
                == 1
                && container("stuck")["state"] == "Running"),
            "{:#}\n{:#?}",
            container("stuck"),
            events()
        );
        assert_eq!(container("web")["restart_count"], 0);

        // The Pod shape, as kubectl prints it.
        let list: serde_json::Value =
            serde_json::from_str(&podctl(&["status", "-o", "json", "--state-dir", &state_s]).1)
                .unwrap();
        let pod = &list["items"][0];
        assert_eq!(
            (&pod["kind"], &pod["metadata"]["name"]),
            (&"Pod".into(), &"probed".into())
        );
        assert_eq!(pod["spec"]["containers"][0]["name"], "web", "{pod:#}");
        assert_eq!(pod["status"]["phase"], "Running");
        let stuck = pod["status"]["containerStatuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "stuck")
            .unwrap();
        assert_eq!(stuck["restartCount"], 1, "{stuck:#}");
        assert!(
            stuck["state"]["running"]["startedAt"].is_string(),
            "{stuck:#}"
        );
        assert_eq!(
            stuck["lastState"]["terminated"]["exitCode"], 137,
            "{stuck:#}"
        );
        let yaml = podctl(&["status", "-o", "yaml", "--state-dir", &state_s]).1;
        assert!(yaml.starts_with("apiVersion: v1\nitems:\n"), "{yaml}");
        assert!(yaml.contains("kind: Pod"), "{yaml}");
        drop(agent);
        fx.assert_no_mounts();
    });
}

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
        drop(agent);
        fx.assert_no_mounts();
    });
}

/// A pod that exits on SIGTERM at once.
fn sleeper(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'trap \"kill $!; exit 0\" TERM; sleep 100000 & wait']\n"
    )
}

/// Entries of a directory (none if it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
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
        drop(agent);
        fx.assert_no_mounts();
    });
}

#[test]
fn a_config_file_sets_options_and_events_can_be_logged_as_json() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("config");
        let (pods, state, state_s) = fx.agent_dirs();
        let cfg = fx.dir.path().join("podagent.yaml");
        std::fs::write(
            &cfg,
            format!(
                "pods-dir: {}\nno-network: true\nlog-format: json\nresync-secs: 30\n",
                pods.display()
            ),
        )
        .unwrap();
        let log = fx.dir.path().join("agent.log");
        let cg = format!("{}/agent", fx.cg_root.as_path().display());
        let mut agent = Running(
            Command::new(env!("CARGO_BIN_EXE_podagent"))
                .args(["run", "--config"])
                .arg(&cfg)
                .arg("--state-dir")
                .arg(&state)
                .arg("--root-dir")
                .arg(fx.dir.path())
                .args(["--cgroup-root", &cg, "--stop-pods-on-exit"])
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        put_manifest(&pods, "s.yaml", &sleeper("s"));
        assert!(
            eventually(Duration::from_secs(15), || podctl(&[
                "status",
                "--state-dir",
                &state_s
            ])
            .1
            .lines()
            .any(|l| l.starts_with("s ") && l.contains("Running"))),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );

        // Logs through the API: whole, the tail, and followed until the
        // container exits.
        put_manifest(
            &pods,
            "talker.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: talker}\nspec:\n  restartPolicy: Never\n  containers:\n  - {name: t, image: busybox, command: [sh, -c, 'echo one; sleep 1; echo two; sleep 1; echo three']}\n",
        );
        let socket = state.join("podagent.sock");
        assert!(eventually(Duration::from_secs(10), || {
            agent::api::get(&socket, "/v1/logs/default/talker/t")
                .is_ok_and(|(code, body)| code == 200 && body.starts_with(b"one\n"))
        }));
        // `podctl logs -f` streams through the API: the first line comes
        // at once, the last when the container writes it.
        let t = Instant::now();
        let mut follower = Command::new(env!("CARGO_BIN_EXE_podctl"))
            .args(["logs", "-f", "--state-dir", &state_s, "talker"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(follower.stdout.take().unwrap()));
        assert_eq!(lines.next().unwrap().unwrap(), "one");
        let first = t.elapsed();
        let rest: Vec<String> = lines.map(Result::unwrap).collect();
        let all = t.elapsed();
        let done = follower.wait_with_output().unwrap();
        assert!(done.status.success());
        assert_eq!(rest, ["two", "three"]);
        assert!(
            first < Duration::from_millis(700) && all >= Duration::from_millis(900),
            "streamed: first line after {first:?}, the rest after {all:?}"
        );
        assert!(
            done.stderr.is_empty(),
            "read through the agent: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        let (code, _, err) = podctl(&["logs", "--state-dir", &state_s, "talkr"]);
        assert_eq!(code, 1);
        assert_eq!(
            err.trim(),
            "podctl logs: pod default/talkr not found; did you mean talker?"
        );
        let (code, body) =
            agent::api::get(&socket, "/v1/logs/default/talker/t?follow=true").unwrap();
        assert_eq!(code, 200);
        assert_eq!(String::from_utf8_lossy(&body), "one\ntwo\nthree\n");
        // A client that leaves a follow of a quiet container: the agent's
        // thread following for it ends within about a second.
        put_manifest(
            &pods,
            "quiet.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: quiet}\nspec:\n  containers:\n  - {name: q, image: busybox, command: [sh, -c, 'echo hello; exec sleep 1000']}\n",
        );
        assert!(eventually(Duration::from_secs(10), || {
            agent::api::get(&socket, "/v1/logs/default/quiet/q")
                .is_ok_and(|(code, body)| code == 200 && body == b"hello\n")
        }));
        let agent_pid = agent.0.id();
        let followers = || {
            entries(Path::new(&format!("/proc/{agent_pid}/task")))
                .iter()
                .filter(|t| {
                    std::fs::read_to_string(format!("/proc/{agent_pid}/task/{t}/comm"))
                        .is_ok_and(|c| c.trim() == "logs")
                })
                .count()
        };
        let mut while_reading = None;
        agent::api::get_streamed(
            &socket,
            "/v1/logs/default/quiet/q?follow=true",
            &mut |_, _| {
                while_reading = Some(followers());
                false
            },
        )
        .unwrap();
        assert_eq!(while_reading, Some(1), "one thread follows for the client");
        assert!(
            eventually(Duration::from_secs(3), || followers() == 0),
            "the follow thread outlived its client"
        );
        let (_, tail) = agent::api::get(&socket, "/v1/logs/default/talker/t?tail=1").unwrap();
        assert_eq!(String::from_utf8_lossy(&tail), "three\n");
        let (code, body) = agent::api::get(&socket, "/v1/logs/default/talkr/t").unwrap();
        assert_eq!(code, 404);
        assert!(String::from_utf8_lossy(&body).contains("did you mean talker?"));
        assert_eq!(
            agent::api::get(&socket, "/v1/logs/default/talker/t?tail=x")
                .unwrap()
                .0,
            400
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        assert!(agent.0.wait().unwrap().success());
        let text = std::fs::read_to_string(&log).unwrap();
        let started = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["reason"] == "Started")
            .unwrap_or_else(|| panic!("no JSON Started event in:\n{text}"));
        assert_eq!(started["object"], "default/s");
        assert_eq!(started["level"], "info");
        // No address: --no-network came from the file.
        assert!(
            !text.contains("IP 10.88"),
            "the file's no-network was not applied:\n{text}"
        );

        // A key that is no option is refused before anything starts.
        std::fs::write(&cfg, "pods-dirr: /nowhere\n").unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_podagent"))
            .args(["run", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("pods-dirr: not an option of podagent run"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        fx.assert_no_mounts();
    });
}

/// `--pods-dir-recursive`: a subdirectory made after the start is watched,
/// its pods run; `podctl delete` finds a pod's file there; removing a whole
/// subdirectory removes its pods; a hidden one is never read.
#[test]
fn with_pods_dir_recursive_subdirectories_are_followed() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("recursive");
        let (pods, state, state_s) = fx.agent_dirs();
        let _agent = Running(spawn_agent(
            &fx,
            &pods,
            &state,
            &["--no-network", "--pods-dir-recursive"],
        ));
        let status = || podctl(&["status", "--state-dir", &state_s]).1;
        let running = |name: &str| {
            status()
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) && l.contains("Running"))
        };
        assert!(eventually(Duration::from_secs(10), || status().starts_with("NAME")));
        let team = pods.join("team-a/web");
        std::fs::create_dir_all(&team).unwrap();
        put_manifest(&team, "a.yaml", &sleeper("deep-a"));
        put_manifest(&team, "b.yaml", &sleeper("deep-b"));
        std::fs::create_dir_all(pods.join(".git")).unwrap();
        put_manifest(&pods.join(".git"), "c.yaml", &sleeper("hidden"));
        assert!(
            eventually(Duration::from_secs(15), || running("deep-a")
                && running("deep-b")),
            "{}",
            status()
        );
        assert!(!status().contains("hidden"));
        let (code, _, err) = podctl(&[
            "delete",
            "--pods-dir",
            &pods.display().to_string(),
            "--pods-dir-recursive",
            "deep-a",
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(!team.join("a.yaml").exists());
        assert!(eventually(Duration::from_secs(15), || !status().contains("deep-a")));
        std::fs::remove_dir_all(pods.join("team-a")).unwrap();
        assert!(
            eventually(Duration::from_secs(15), || !status().contains("deep-b")),
            "{}",
            status()
        );
    });
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
        "cat /proc/1/comm; ps -o args",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().next(),
        Some("pause"),
        "PID 1 is the pod's: {out}"
    );
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
