//! The agent end to end, as a user sees it: a manifest lands in the pods
//! directory and the container runs (network included); many at once; the
//! agent's and the shims' resident cost with idle pods; deletion. Beside
//! `podman kube play` of the same manifests in the same run where podman is
//! installed.
//!
//! As root: `cargo bench -p agent --bench agent_e2e [-- RUNS [PODS...]]`
//! (default 30 runs, bursts of 50 and 200 pods). The benchmark moves itself
//! into a network namespace of its own first, so the agent's bridge, veths
//! and nftables rules (and podman's) never touch the host's network.

#[path = "common/mod.rs"]
mod common;

use common::nap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

fn report(name: &str, mut d: Vec<Duration>) {
    d.sort();
    println!(
        "{name:<44} n={:<4} median {:>8.2} ms  p90 {:>8.2} ms  p99 {:>8.2} ms",
        d.len(),
        percentile(&d, 0.5),
        percentile(&d, 0.9),
        percentile(&d, 0.99)
    );
}

/// A pod whose container touches `started` in a hostPath volume as its
/// first instruction, then waits; it exits at once on SIGTERM.
fn manifest(name: &str, out: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 5
  volumes: [{{name: out, hostPath: {{path: {out}, type: DirectoryOrCreate}}}}]
  containers:
  - name: c
    image: busybox
    command: [sh, -c, 'touch /out/started; trap \"kill $!; exit 0\" TERM; sleep 100000 & wait']
    volumeMounts: [{{name: out, mountPath: /out}}]
    resources: {{requests: {{cpu: 10m, memory: 8Mi}}, limits: {{memory: 64Mi}}}}
",
        out = out.display()
    )
}

fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

struct Agent {
    child: std::process::Child,
    socket: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

impl Agent {
    fn status(&self) -> serde_json::Value {
        agent::api::get(&self.socket, "/v1/status")
            .ok()
            .and_then(|(_, b)| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Polls until `f` holds for the status (every 2 ms), at most `limit`.
    fn until(&self, limit: Duration, f: impl Fn(&serde_json::Value) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if f(&self.status()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            nap(Duration::from_millis(2));
        }
    }
}

fn running(v: &serde_json::Value) -> usize {
    v["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["phase"] == "Running")
        .count()
}

fn pods(v: &serde_json::Value) -> usize {
    v["pods"].as_array().map_or(0, Vec::len)
}

/// `(utime + stime)` clock ticks and VmRSS (kB) of a process.
fn cpu_and_rss(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

fn pss_kb(pid: i64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The pids of every shim under the agent's state dir.
fn shim_pids(state: &Path) -> Vec<i64> {
    let mut out = Vec::new();
    for pod in std::fs::read_dir(state.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for c in std::fs::read_dir(pod.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let st: serde_json::Value = std::fs::read(c.path().join("state/state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            if let Some(p) = st["shim_pid"].as_i64() {
                out.push(p);
            }
        }
    }
    out
}

/// Single-pod runs made first and not counted, for podagent and podman
/// alike: the binaries and the image are read from disk once.
const WARMUP: usize = 3;

fn main() -> std::process::ExitCode {
    let mut nums = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<usize>().ok());
    let runs = nums.next().unwrap_or(30);
    let mut bursts: Vec<usize> = nums.collect();
    if bursts.is_empty() {
        bursts = vec![50, 200];
    }
    if !common::private_network() {
        return std::process::ExitCode::from(2);
    }

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (pods_dir, state, root, out) = (
        dir.join("pods"),
        dir.join("state"),
        dir.join("root"),
        dir.join("out"),
    );
    for d in [&pods_dir, &state, &root, &out] {
        std::fs::create_dir_all(d).unwrap();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = Command::new(repo.join("scripts/build-test-image"))
        .arg(&root)
        .env("PODCTL", env!("CARGO_BIN_EXE_podctl"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(built.success(), "scripts/build-test-image failed");
    println!(
        "agent end to end, {runs} runs, bursts {bursts:?}, {}",
        common::machine()
    );

    let cgroup_root = format!("podagent-bench-{}", std::process::id());
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let agent = Agent {
        child: Command::new(env!("CARGO_BIN_EXE_podagent"))
            .arg("run")
            .arg("--pods-dir")
            .arg(&pods_dir)
            .arg("--state-dir")
            .arg(&state)
            .arg("--root-dir")
            .arg(&root)
            .args(["--cgroup-root", &cgroup_root, "--stop-pods-on-exit"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
        socket: state.join("podagent.sock"),
    };
    // Minutes, not seconds: in an emulated VM the first nftables batch
    // alone takes ~9 s (the wait ends once the agent answers).
    assert!(
        agent.until(Duration::from_secs(180), |v| v["pods"].is_array()),
        "the agent did not come up"
    );

    // 1. A file lands → the container's first instruction; then deletion.
    let mut start = Vec::new();
    let mut delete = Vec::new();
    for i in 0..runs + WARMUP {
        let name = format!("lat-{i}");
        let o = out.join(&name);
        std::fs::create_dir_all(&o).unwrap();
        // A file landing on a settled node: the kernel tears a network
        // namespace down in the background after the previous pod, holding
        // the lock every link change takes.
        nap(Duration::from_millis(200));
        let t = Instant::now();
        put(&pods_dir, &format!("{name}.yaml"), &manifest(&name, &o));
        assert!(
            agent::runtime::wait_for_file(&o, "started", Duration::from_secs(20)),
            "pod {name} never started (see {})",
            dir.join("agent.log").display()
        );
        if i >= WARMUP {
            start.push(t.elapsed());
        }
        // Let it settle into its wait (the trap must be installed).
        assert!(agent.until(Duration::from_secs(10), |v| running(v) == 1));
        nap(Duration::from_millis(50));
        let t = Instant::now();
        std::fs::remove_file(pods_dir.join(format!("{name}.yaml"))).unwrap();
        assert!(agent.until(Duration::from_secs(20), |v| pods(v) == 0));
        if i >= WARMUP {
            delete.push(t.elapsed());
        }
    }
    report("podagent: file → first instruction", start);
    report("podagent: file removed → pod gone", delete);

    // 2. Bursts: N files at once → all Running; idle cost; all removed.
    for &n in &bursts {
        let texts: Vec<(String, String)> = (0..n)
            .map(|i| {
                let name = format!("burst-{n}-{i}");
                let o = out.join(&name);
                std::fs::create_dir_all(&o).unwrap();
                (format!("{name}.yaml"), manifest(&name, &o))
            })
            .collect();
        let t = Instant::now();
        for (file, text) in &texts {
            put(&pods_dir, file, text);
        }
        assert!(
            agent.until(Duration::from_secs(120), |v| running(v) == n),
            "{n} pods never all ran"
        );
        let all_running = t.elapsed();
        // Idle: CPU over 5 s, RSS, shims' PSS.
        let (c0, _) = cpu_and_rss(agent.child.id());
        let idle_t = Instant::now();
        nap(Duration::from_secs(5));
        let (c1, rss) = cpu_and_rss(agent.child.id());
        let hz = 100.0; // USER_HZ on Linux
        let cpu = (c1 - c0) as f64 / hz / idle_t.elapsed().as_secs_f64() * 100.0;
        let shims = shim_pids(&state);
        let pss: u64 = shims.iter().map(|p| pss_kb(*p)).sum();
        let t = Instant::now();
        for (file, _) in &texts {
            std::fs::remove_file(pods_dir.join(file)).unwrap();
        }
        assert!(
            agent.until(Duration::from_secs(300), |v| pods(v) == 0),
            "{n} pods never all went"
        );
        let all_gone = t.elapsed();
        println!(
            "podagent: {n} pods: all Running {:.2} s, all removed {:.2} s; idle agent \
             {:.1} MB RSS, {cpu:.2}% CPU; shims {:.3} MB PSS a pod ({} shims)",
            all_running.as_secs_f64(),
            all_gone.as_secs_f64(),
            rss as f64 / 1024.0,
            pss as f64 / 1024.0 / shims.len().max(1) as f64,
            shims.len()
        );
    }
    drop(agent);
    if let Ok(layout) = agent::cgroups::detect(Path::new("/proc/self/mountinfo")) {
        if let Ok(cg) = agent::cgroups::CgroupPath::new(&cgroup_root) {
            let _ = layout.driver().remove(&cg);
        }
    }

    podman(runs.min(10), &bursts, dir, &out);
    std::process::ExitCode::SUCCESS
}

/// The same manifests through `podman kube play`, with podman's storage in
/// the benchmark's directory (nothing of the host's podman is touched).
fn podman(runs: usize, bursts: &[usize], dir: &Path, out: &Path) {
    let Some(podman) = common::Podman::new(&dir.join("podman")) else {
        return;
    };
    let p = |args: &[&str]| podman.cmd(args);
    // The image: the same busybox rootfs, imported as a tarball.
    let rootfs = dir.join("podman-rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for a in ["sh", "touch", "sleep", "kill"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    let tar = dir.join("busybox.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .is_ok_and(|s| s.success())
        && p(&[
            "import",
            "--change",
            "ENV PATH=/bin",
            &tar.display().to_string(),
            "localhost/busybox:latest",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("podman: could not import the image: no comparison");
        return;
    }
    let play = |file: &Path| {
        let mut c = p(&["kube", "play", "--replace"]);
        c.arg(file);
        c.status().is_ok_and(|s| s.success())
    };
    let mut start = Vec::new();
    let mut delete = Vec::new();
    for i in 0..runs + WARMUP {
        let name = format!("plat-{i}");
        let o = out.join(&name);
        std::fs::create_dir_all(&o).unwrap();
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            manifest(&name, &o).replace("image: busybox", "image: localhost/busybox:latest"),
        )
        .unwrap();
        let t = Instant::now();
        if !play(&file) {
            println!("podman kube play failed: no comparison");
            let _ = p(&["pod", "rm", "-af", "-t", "0"]).status();
            return;
        }
        assert!(agent::runtime::wait_for_file(
            &o,
            "started",
            Duration::from_secs(30)
        ));
        let up = t.elapsed();
        let t = Instant::now();
        let mut down = p(&["kube", "down"]);
        down.arg(&file);
        let _ = down.status();
        if i >= WARMUP {
            start.push(up);
            delete.push(t.elapsed());
        }
    }
    report("podman kube play: → first instruction", start);
    report("podman kube down", delete);
    for &n in bursts.iter().filter(|n| **n <= 50) {
        let file = dir.join(format!("pburst-{n}.yaml"));
        let docs: Vec<String> = (0..n)
            .map(|i| {
                let name = format!("pburst-{n}-{i}");
                let o = out.join(&name);
                std::fs::create_dir_all(&o).unwrap();
                manifest(&name, &o).replace("image: busybox", "image: localhost/busybox:latest")
            })
            .collect();
        std::fs::write(&file, docs.join("---\n")).unwrap();
        let t = Instant::now();
        let ok = play(&file);
        let all = (0..n).all(|i| {
            agent::runtime::wait_for_file(
                &out.join(format!("pburst-{n}-{i}")),
                "started",
                Duration::from_secs(60),
            )
        });
        let elapsed = t.elapsed();
        // Their per-pod resident cost: conmon per container, the infra
        // container's pause process.
        let mut pss = 0;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if matches!(comm.trim(), "conmon" | "catatonit") {
                if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                    pss += pss_kb(pid);
                }
            }
        }
        let mut down = p(&["kube", "down"]);
        down.arg(&file);
        let _ = down.status();
        if ok && all {
            println!(
                "podman kube play: {n} pods all running {:.2} s; conmon and infra {:.3} MB PSS a pod",
                elapsed.as_secs_f64(),
                pss as f64 / 1024.0 / n as f64
            );
        } else {
            println!("podman kube play of {n} pods failed");
        }
    }
    // Dropping `podman` removes its pods, storage and cgroups.
}
