//! Container start and stop, podagent's shim beside `runc run` of the same
//! bundle (the same config.json, rootfs and command), in the same run, and the
//! resident cost of an idle container's shim.
//!
//! As root: `cargo bench -p agent --bench container_start [-- RUNS]`.
//! "Start to exit" runs `/bin/true`: everything from spawning the runtime to
//! the container having exec'd and exited. "Start to first instruction" is the
//! time until the container's process has run its first command (it creates a
//! file the benchmark waits for). Medians and percentiles in milliseconds.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use specs::oci::{container_spec, ImageConfig, OciInputs};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

fn report(name: &str, mut d: Vec<Duration>) {
    d.sort();
    println!(
        "{name:<34} n={:<4} median {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms",
        d.len(),
        percentile(&d, 0.5),
        percentile(&d, 0.9),
        percentile(&d, 0.99)
    );
}

fn bundle(dir: &Path, command: &[&str], name: &str) -> PathBuf {
    bundle_in(dir, command, name, None)
}

/// A bundle; with `user_ns` (its file and first host id), of a pod with
/// `hostUsers: false`.
fn bundle_in(dir: &Path, command: &[&str], name: &str, user_ns: Option<(PathBuf, u32)>) -> PathBuf {
    let b = dir.join(name);
    let rootfs = b.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for a in ["sh", "true", "touch", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    let cmd = command
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: bench}}\nspec:\n  hostUsers: {}\n  containers:\n  - name: c\n    image: busybox\n    command: [{cmd}]\n    resources: {{requests: {{cpu: 100m, memory: 16Mi}}, limits: {{memory: 64Mi}}}}\n",
        user_ns.is_none()
    );
    let r = specs::load("bench.yaml", yaml.as_bytes(), &specs::NodeInfo::default());
    assert!(!r.has_errors(), "{:#?}", r.diagnostics);
    let pod = &r.pods[0];
    let inputs = OciInputs {
        rootfs,
        image: ImageConfig::default(),
        user_ns,
        ..OciInputs::default()
    };
    container_spec(pod, &pod.containers[0], &inputs)
        .unwrap()
        .save(b.join("config.json"))
        .unwrap();
    b
}

struct DirRef<'a>(&'a Path);

impl DirRef<'_> {
    fn path(&self) -> &Path {
        self.0
    }
}

/// Every container the benchmark starts through the shim joins this cgroup;
/// dropping it kills whatever is left (a benchmark stopped half-way leaves no
/// busy loop behind).
struct BenchCgroup {
    driver: Box<dyn agent::cgroups::Cgroups>,
    path: agent::cgroups::CgroupPath,
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        let _ = self.driver.kill_all(&self.path);
        let _ = self.driver.remove(&self.path);
    }
}

/// A user namespace file the benchmark bound; dropping unmounts it.
struct BoundNs(PathBuf);

impl Drop for BoundNs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// runc containers the benchmark made; dropping deletes them by force.
struct RuncIds {
    runc: PathBuf,
    root: PathBuf,
    ids: Vec<String>,
}

impl Drop for RuncIds {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = Command::new(&self.runc)
                .arg("--root")
                .arg(&self.root)
                .args(["delete", "--force", id])
                .output();
        }
    }
}

thread_local! {
    static JOIN: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
    static INTO: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

fn shim(bundle: &Path, state: &Path) -> Command {
    // The binary the agent runs for each container.
    let mut c = Command::new(env!("CARGO_BIN_EXE_podagent-shim"));
    c.arg("--bundle")
        .arg(bundle)
        .arg("--state")
        .arg(state)
        .arg("--log")
        .arg(state.join("log"));
    // As the runtime runs it: on v2 the init is cloned into its cgroup
    // (`Cgroups::clone_into`); on v1 it joins before exec (one `tasks` per
    // hierarchy, `Cgroups::join_files`).
    INTO.with(|p| {
        if let Some(dir) = p.borrow().as_ref() {
            c.arg("--cgroup-into").arg(dir);
        }
    });
    JOIN.with(|p| {
        for f in p.borrow().iter() {
            c.arg("--cgroup-join").arg(f);
        }
    });
    // As the agent runs it: compiled seccomp programs cached by profile.
    c.arg("--seccomp-cache")
        .arg(state.parent().unwrap().join("seccomp-cache"));
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn main() -> std::process::ExitCode {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the benchmark needs root");
        return std::process::ExitCode::from(2);
    }
    // BENCH_DIR keeps the bundles for profiling a single run by hand.
    let tmp = tempfile::tempdir().unwrap();
    let dir_path = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir_path).unwrap();
    let dir = DirRef(&dir_path);
    let driver = agent::cgroups::detect(Path::new("/proc/self/mountinfo"))
        .unwrap()
        .driver();
    let cg = BenchCgroup {
        path: agent::cgroups::CgroupPath::new(&format!("podagent-bench-{}", std::process::id()))
            .unwrap(),
        driver,
    };
    cg.driver.create(&cg.path).unwrap();
    let into = cg.driver.clone_into(&cg.path);
    match &into {
        Some(dir) => INTO.with(|p| *p.borrow_mut() = Some(dir.clone())),
        None => JOIN.with(|p| *p.borrow_mut() = cg.driver.join_files(&cg.path)),
    }
    println!("container start, {runs} runs, {}", common::machine());
    let b_true = bundle(dir.path(), &["/bin/true"], "true");
    let marker_dir = dir.path().join("marker");
    std::fs::create_dir_all(&marker_dir).unwrap();

    // `runs` starts of /bin/true to its exit, each with a state dir of its own.
    let time_starts = |prefix: &str| -> Vec<Duration> {
        (0..runs)
            .map(|i| {
                let state = dir.path().join(format!("{prefix}-{i}"));
                std::fs::create_dir_all(&state).unwrap();
                let t = Instant::now();
                let s = shim(&b_true, &state).status().unwrap();
                let took = t.elapsed();
                assert!(s.success());
                took
            })
            .collect()
    };
    let ours = time_starts("state");
    if into.is_some() {
        report(
            "podagent shim (clone3 into the cgroup): start to exit",
            ours,
        );
        // The same start joining by a write to cgroup.procs after fork.
        INTO.with(|p| *p.borrow_mut() = None);
        JOIN.with(|p| *p.borrow_mut() = cg.driver.join_files(&cg.path));
        let written = time_starts("state-write");
        report(
            "podagent shim (fork, cgroup.procs write): start to exit",
            written,
        );
        JOIN.with(|p| p.borrow_mut().clear());
        INTO.with(|p| *p.borrow_mut() = into.clone());
    } else {
        report("podagent shim: start to exit", ours);
    }

    // The same start in a pod's user namespace (`hostUsers: false`): the
    // init joins it last. (The idmapped layers are the runtime's, before
    // the shim: not in this figure.)
    let ns = BoundNs(dir.path().join("userns"));
    let made = Command::new(env!("CARGO_BIN_EXE_podagent-shim"))
        .args(["pause", "--user-namespace"])
        .arg(&ns.0)
        .args(["--id-base", "65536"])
        .status()
        .unwrap();
    assert!(made.success(), "the user namespace");
    let b_userns = bundle_in(
        dir.path(),
        &["/bin/true"],
        "true-userns",
        Some((ns.0.clone(), 65536)),
    );
    let in_userns: Vec<Duration> = (0..runs)
        .map(|i| {
            let state = dir.path().join(format!("state-userns-{i}"));
            std::fs::create_dir_all(&state).unwrap();
            let t = Instant::now();
            let s = shim(&b_userns, &state).status().unwrap();
            let took = t.elapsed();
            assert!(s.success());
            took
        })
        .collect();
    report("podagent shim, hostUsers: false", in_userns);
    drop(ns);

    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if let Some(runc) = &runc {
        let root = dir.path().join("runc-root");
        let mut theirs = Vec::new();
        for i in 0..runs {
            let id = format!("bench-{}-{i}", std::process::id());
            let t = Instant::now();
            let s = Command::new(runc)
                .arg("--root")
                .arg(&root)
                .args(["run", "--bundle"])
                .arg(&b_true)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            theirs.push(t.elapsed());
            assert!(s.success(), "runc run failed");
        }
        report("runc run: start to exit", theirs);
    } else {
        println!("runc not installed: no comparison");
    }

    // Stop: SIGTERM to a container that exits on it, until its exit is
    // recorded (podagent) or `runc kill` plus `runc run` returning (runc).
    // The container says when its handler is installed: a signal before that
    // would be ignored by a PID 1 without one.
    let b_term = bundle(
        dir.path(),
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; touch /tmp/ready; while :; do :; done",
        ],
        "term",
    );
    let ready = b_term.join("rootfs/tmp/ready");
    let wait_ready = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "the container never got ready");
            std::thread::yield_now();
        }
        std::fs::remove_file(&ready).unwrap();
    };
    let stop_runs = runs.min(30);
    let mut ours = Vec::new();
    for i in 0..stop_runs {
        let state = dir.path().join(format!("state-stop-{i}"));
        std::fs::create_dir_all(&state).unwrap();
        let mut child = shim(&b_term, &state).spawn().unwrap();
        assert!(agent::runtime::wait_for_file(
            &state,
            "state.json",
            Duration::from_secs(10)
        ));
        let started: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.join("state.json")).unwrap()).unwrap();
        let pid = nix::unistd::Pid::from_raw(started["pid"].as_i64().unwrap() as i32);
        wait_ready();
        let t = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        assert!(agent::runtime::wait_for_file(
            &state,
            "exit.json",
            Duration::from_secs(10)
        ));
        ours.push(t.elapsed());
        let _ = child.wait();
    }
    report("podagent: SIGTERM to exit recorded", ours);
    if let Some(runc) = &runc {
        let root = dir.path().join("runc-root");
        let mut theirs = Vec::new();
        let state_of = |id: &str| {
            let o = Command::new(runc)
                .arg("--root")
                .arg(&root)
                .args(["state", id])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let mut made = RuncIds {
            runc: runc.clone(),
            root: root.clone(),
            ids: Vec::new(),
        };
        for i in 0..stop_runs {
            let id = format!("stop-{}-{i}", std::process::id());
            made.ids.push(id.clone());
            let ok = Command::new(runc)
                .arg("--root")
                .arg(&root)
                .args(["run", "-d", "--bundle"])
                .arg(&b_term)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(ok.success(), "runc run -d failed");
            wait_ready();
            let t = Instant::now();
            let k = Command::new(runc)
                .arg("--root")
                .arg(&root)
                .args(["kill", &id, "TERM"])
                .status()
                .unwrap();
            assert!(k.success());
            let deadline = Instant::now() + Duration::from_secs(10);
            while !state_of(&id).contains("stopped") {
                assert!(Instant::now() < deadline, "runc's container never stopped");
            }
            theirs.push(t.elapsed());
            let _ = Command::new(runc)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .status();
        }
        report("runc: kill TERM to state stopped", theirs);
    }

    // Resident cost of idle containers' shims: proportional set size, so
    // pages shared between shims (the binary, libc) are divided among them.
    let b_sleep = bundle(dir.path(), &["/bin/sleep", "60"], "sleep");
    for count in [1usize, 10] {
        let mut shims = Vec::new();
        for i in 0..count {
            let state = dir.path().join(format!("state-idle-{count}-{i}"));
            std::fs::create_dir_all(&state).unwrap();
            shims.push((shim(&b_sleep, &state).spawn().unwrap(), state));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (_, state) in &shims {
            while !state.join("state.json").exists() {
                assert!(Instant::now() < deadline, "an idle container never started");
                std::thread::yield_now();
            }
        }
        // PSS (shared pages divided among their users) and USS (the pages
        // only that shim has: what one more container costs).
        let field = |smaps: &str, key: &str| -> u64 {
            smaps
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        let (mut pss, mut uss) = (0u64, 0u64);
        for (c, _) in &shims {
            let smaps = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", c.id())).unwrap();
            pss += field(&smaps, "Pss:");
            uss += field(&smaps, "Private_Clean:") + field(&smaps, "Private_Dirty:");
        }
        let n = shims.len() as f64 * 1024.0;
        println!(
            "idle shim with {count:>2} shims running: PSS {:.2} MB, USS {:.2} MB each",
            pss as f64 / n,
            uss as f64 / n
        );
        for (mut c, state) in shims {
            let started: serde_json::Value =
                serde_json::from_slice(&std::fs::read(state.join("state.json")).unwrap()).unwrap();
            let pid = started["pid"].as_i64().unwrap() as i32;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
    }
    std::process::ExitCode::SUCCESS
}
