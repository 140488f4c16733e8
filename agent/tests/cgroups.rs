//! The cgroup drivers: against temporary trees (both versions, everywhere),
//! and against this machine's real hierarchy as root, where the tests check
//! what the kernel does to a process, not only what a file holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use agent::cgroups::{detect, set_oom_score_adj, CgroupPath, Cgroups, Limits, V1, V2};
use support::require;

fn limits() -> Limits {
    Limits {
        cpu_shares: Some(204),
        cpu_weight: Some(8),
        cfs_period_us: Some(100_000),
        cfs_quota_us: Some(20_000),
        cpuset_cpus: Some("1".into()),
        memory_limit: Some(32 << 20),
        swap_limit: None,
        oom_kill_disable: false,
        oom_group: true,
        pids_limit: Some(64),
        devices: Vec::new(),
        io: None,
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[test]
fn v2_enables_controllers_down_the_tree_and_writes_the_limits() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids\n",
    )
    .unwrap();
    let v2 = V2::new(root.path().to_path_buf());
    let leaf = CgroupPath::new("podagent/podabc/web").unwrap();
    v2.create(&leaf).unwrap();
    for level in ["", "podagent", "podagent/podabc"] {
        assert_eq!(
            read(&root.path().join(level).join("cgroup.subtree_control")),
            "+cpu +cpuset +memory +pids +io"
        );
    }
    assert!(
        !root
            .path()
            .join("podagent/podabc/web/cgroup.subtree_control")
            .exists(),
        "the leaf delegates nothing"
    );
    v2.apply(&leaf, &limits()).unwrap();
    let d = root.path().join("podagent/podabc/web");
    assert_eq!(read(&d.join("cpu.weight")), "8");
    assert_eq!(read(&d.join("cpu.max")), "20000 100000");
    assert_eq!(read(&d.join("cpuset.cpus")), "1");
    assert_eq!(read(&d.join("memory.max")), "33554432");
    assert_eq!(
        read(&d.join("memory.swap.max")),
        "0",
        "no swap unless the plan allows it"
    );
    assert_eq!(read(&d.join("memory.oom.group")), "1");
    assert_eq!(read(&d.join("pids.max")), "64");
    v2.apply(
        &leaf,
        &Limits {
            cfs_period_us: Some(100_000),
            pids_limit: Some(-1),
            ..Limits::default()
        },
    )
    .unwrap();
    assert_eq!(read(&d.join("cpu.max")), "max 100000");
    assert_eq!(read(&d.join("memory.max")), "max");
    assert_eq!(read(&d.join("pids.max")), "max");
    assert_eq!(v2.procs_files(&leaf), [d.join("cgroup.procs")]);
}

#[test]
fn v2_without_a_needed_controller_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    let err = V2::new(root.path().to_path_buf())
        .create(&CgroupPath::new("podagent/p").unwrap())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cgroup controller cpuset is not mounted (needed for cpu pinning)"
    );
}

fn v1_tree(root: &Path) -> V1 {
    let mut controllers = BTreeMap::new();
    for (c, dir) in [
        ("cpu", "cpu,cpuacct"),
        ("cpuacct", "cpu,cpuacct"),
        ("cpuset", "cpuset"),
        ("memory", "memory"),
        ("pids", "pids"),
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        controllers.insert(c.to_string(), root.join(dir));
    }
    std::fs::write(root.join("cpuset/cpuset.cpus"), "0-3\n").unwrap();
    std::fs::write(root.join("cpuset/cpuset.mems"), "0\n").unwrap();
    V1::new(controllers)
}

#[test]
fn v1_copies_cpusets_down_and_writes_every_controller() {
    let root = tempfile::tempdir().unwrap();
    let v1 = v1_tree(root.path());
    let leaf = CgroupPath::new("podagent/podabc/web").unwrap();
    v1.create(&leaf).unwrap();
    for level in ["podagent", "podagent/podabc", "podagent/podabc/web"] {
        assert_eq!(
            read(&root.path().join("cpuset").join(level).join("cpuset.cpus")),
            "0-3"
        );
        assert_eq!(
            read(&root.path().join("cpuset").join(level).join("cpuset.mems")),
            "0"
        );
    }
    v1.apply(
        &leaf,
        &Limits {
            swap_limit: Some(16 << 20),
            oom_kill_disable: true,
            ..limits()
        },
    )
    .unwrap();
    let at = |c: &str, f: &str| read(&root.path().join(c).join("podagent/podabc/web").join(f));
    assert_eq!(at("cpu,cpuacct", "cpu.shares"), "204");
    assert_eq!(at("cpu,cpuacct", "cpu.cfs_period_us"), "100000");
    assert_eq!(at("cpu,cpuacct", "cpu.cfs_quota_us"), "20000");
    assert_eq!(at("cpuset", "cpuset.cpus"), "1");
    assert_eq!(at("memory", "memory.limit_in_bytes"), "33554432");
    assert_eq!(at("memory", "memory.oom_control"), "1");
    assert_eq!(at("pids", "pids.max"), "64");
    assert_eq!(
        v1.procs_files(&leaf).len(),
        4,
        "cpu and cpuacct share one hierarchy"
    );
    v1.apply(
        &leaf,
        &Limits {
            cfs_period_us: Some(100_000),
            ..Limits::default()
        },
    )
    .unwrap();
    assert_eq!(at("cpu,cpuacct", "cpu.cfs_quota_us"), "-1");
    assert_eq!(at("memory", "memory.limit_in_bytes"), "-1");
}

// ---- The real hierarchy of this machine, as root. ----

/// A cgroup tree of the test's own; its processes are killed and its
/// directories removed on drop, even when the test panics.
struct TestCgroup {
    driver: Box<dyn Cgroups>,
    root: CgroupPath,
    pod: CgroupPath,
    leaf: CgroupPath,
}

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        let driver = detect(Path::new("/proc/self/mountinfo")).unwrap().driver();
        let root =
            CgroupPath::new(&format!("podagent-test-{}-{name}", std::process::id())).unwrap();
        let pod = root.join("pod").unwrap();
        let leaf = pod.join("c").unwrap();
        driver.create(&leaf).unwrap();
        TestCgroup {
            driver,
            root,
            pod,
            leaf,
        }
    }

    /// Runs `script` under busybox sh after it has joined the leaf cgroup.
    fn spawn(&self, script: &str) -> Child {
        let procs: Vec<String> = self
            .driver
            .procs_files(&self.leaf)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        Command::new("/bin/busybox")
            .args([
                "sh",
                "-c",
                &format!("for f in $PROCS; do echo $$ > $f; done; {script}"),
            ])
            .env("PROCS", procs.join(" "))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits until `pid` is in every hierarchy of the leaf (v1 has several).
    fn wait_for_member(&self, pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let member = |f: &PathBuf| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == pid.to_string())
        };
        while !self.driver.procs_files(&self.leaf).iter().all(member) {
            assert!(
                Instant::now() < deadline,
                "pid {pid} never joined the cgroup"
            );
            std::thread::yield_now();
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = self.driver.kill_all(&self.leaf);
        for p in [&self.leaf, &self.pod, &self.root] {
            let _ = self.driver.remove(p);
        }
    }
}

/// Measuring CPU time needs wall time to pass; this is the one place a test
/// waits on the clock.
#[allow(clippy::disallowed_methods)]
fn wait(d: Duration) {
    std::thread::sleep(d);
}

#[test]
fn a_busy_loop_under_a_200m_limit_gets_about_a_fifth_of_a_cpu() {
    if !require() {
        return;
    }
    let cg = TestCgroup::new("quota");
    cg.driver
        .apply(
            &cg.leaf,
            &Limits {
                cfs_period_us: Some(100_000),
                cfs_quota_us: Some(20_000),
                ..Limits::default()
            },
        )
        .unwrap();
    let mut child = cg.spawn("while :; do :; done");
    cg.wait_for_member(child.id());
    let (t0, u0) = (Instant::now(), cg.driver.usage(&cg.leaf).unwrap().cpu_usec);
    wait(Duration::from_secs(2));
    let (t1, u1) = (Instant::now(), cg.driver.usage(&cg.leaf).unwrap().cpu_usec);
    let share = (u1 - u0) as f64 / (t1 - t0).as_micros() as f64;
    // What the metrics read: the quota applied, and the loop throttled.
    let d = cg.driver.detail(&cg.leaf);
    assert_eq!(
        (d.cpu_quota_us, d.cpu_period_us),
        (Some(20_000), 100_000),
        "{d:?}"
    );
    assert!(
        d.cfs_throttled_periods > 0 && d.cfs_periods >= d.cfs_throttled_periods,
        "{d:?}"
    );
    assert!(d.cfs_throttled_usec > 0, "{d:?}");
    cg.driver.kill_all(&cg.leaf).unwrap();
    let _ = child.wait();
    assert!(
        (0.12..=0.24).contains(&share),
        "the loop got {:.1}% of a CPU, expected about 20%",
        share * 100.0
    );
}

#[test]
fn a_process_pinned_to_cpu_1_may_run_only_there() {
    if !require() {
        return;
    }
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    if online.trim() == "0" {
        panic!("this test needs at least 2 CPUs");
    }
    let cg = TestCgroup::new("cpuset");
    cg.driver
        .apply(
            &cg.leaf,
            &Limits {
                cpuset_cpus: Some("1".into()),
                ..Limits::default()
            },
        )
        .unwrap();
    let mut child = cg.spawn("exec sleep 30");
    cg.wait_for_member(child.id());
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    cg.driver.kill_all(&cg.leaf).unwrap();
    let _ = child.wait();
    assert_eq!(allowed, "1");
}

#[test]
fn allocating_64mi_under_a_32mi_limit_is_oom_killed() {
    if !require() {
        return;
    }
    let cg = TestCgroup::new("oom");
    cg.driver
        .apply(
            &cg.leaf,
            &Limits {
                memory_limit: Some(32 << 20),
                ..Limits::default()
            },
        )
        .unwrap();
    // dd's 64 MiB buffer is filled from /dev/zero: every page is touched.
    let child = cg.spawn("exec dd if=/dev/zero of=/dev/null bs=64M count=1");
    let out = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "killed by SIGKILL: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cg.driver.usage(&cg.leaf).unwrap().oom_kills >= 1,
        "the cgroup counts the OOM kill"
    );
}

#[test]
fn a_pids_limit_stops_a_fork_bomb() {
    if !require() {
        return;
    }
    let cg = TestCgroup::new("pids");
    cg.driver
        .apply(
            &cg.leaf,
            &Limits {
                pids_limit: Some(8),
                ..Limits::default()
            },
        )
        .unwrap();
    let child =
        cg.spawn("i=0; while [ $i -lt 40 ]; do sleep 2 & i=$((i+1)); done; echo forked; wait");
    let pid = child.id();
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        most = most.max(cg.driver.usage(&cg.leaf).unwrap().pids);
        std::thread::yield_now();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The kernel charges a fork before it checks the limit and takes the
    // charge back when over (`pids_try_charge`), so a read can see the
    // limit plus the one fork being refused, never more.
    assert!(most <= 8 + 1, "{most} processes under a limit of 8");
    assert!(most >= 2, "the shell and its children ran ({most})");
    assert!(
        stderr.contains("fork"),
        "the shell was refused forks: {stderr:?} (pid {pid})"
    );
}

#[test]
fn oom_score_adj_is_what_the_plan_said_or_the_kernel_reports_why_not() {
    if !require() {
        return;
    }
    let mut child = Command::new("/bin/busybox")
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    let proc_root = PathBuf::from("/proc");
    // BestEffort and Burstable values: raising is always allowed.
    assert_eq!(set_oom_score_adj(&proc_root, child.id(), 999).unwrap(), 999);
    assert_eq!(
        set_oom_score_adj(&proc_root, child.id(), 1000).unwrap(),
        1000
    );
    // Guaranteed: -997 needs CAP_SYS_RESOURCE; without it the kernel keeps the
    // lowest value the process had, and the caller learns it.
    let got = set_oom_score_adj(&proc_root, child.id(), -997).unwrap();
    if support::has_cap_sys_resource() {
        assert_eq!(got, -997);
    } else {
        assert!(
            got > -997,
            "without CAP_SYS_RESOURCE the value cannot drop to -997 (got {got})"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn removing_a_test_tree_leaves_no_cgroup_behind() {
    if !require() {
        return;
    }
    let dirs: Vec<PathBuf>;
    {
        let cg = TestCgroup::new("cleanup");
        let mut child = cg.spawn("exec sleep 30");
        cg.wait_for_member(child.id());
        dirs = cg
            .driver
            .procs_files(&cg.root)
            .iter()
            .map(|p| p.parent().unwrap().to_path_buf())
            .collect();
        assert!(dirs.iter().all(|d| d.exists()));
        drop(cg);
        let _ = child.wait();
    }
    for d in dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

/// Where cgroup v2 is mounted (the whole hierarchy on a v2 node, the
/// `unified` one on a hybrid node like this one).
fn cgroup2_mount() -> Option<std::path::PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))?
        })
}

/// The v2 device filter on the real kernel: an eBPF program attached to a
/// cgroup lets its member open /dev/null (allowed) and not /dev/zero. (This
/// machine's v1 devices controller allows both to the test, so the refusal
/// is the program's.)
#[test]
fn the_v2_device_filter_denies_devices_outside_the_allowlist() {
    if !require() {
        return;
    }
    let Some(root) = cgroup2_mount() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no cgroup2 mount: the device filter cannot be tested"
        );
        return;
    };
    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let dir = Dir(root.join(format!("podagent-devtest-{}", std::process::id())));
    std::fs::create_dir(&dir.0).unwrap();
    let rule = |allow, kind, major, minor| agent::cgroups::DeviceRule {
        allow,
        kind,
        major,
        minor,
        access: "rwm".into(),
    };
    agent::cgroups::devices_bpf::attach(
        &dir.0,
        &[
            rule(false, 'a', None, None),
            rule(true, 'c', Some(1), Some(3)),
        ],
    )
    .unwrap();
    // A shell that joins the cgroup, then tries the devices.
    let run_in = |dir: &std::path::Path, script: &str| {
        let script = format!(
            "echo $$ > {}/cgroup.procs || exit 9; {script}",
            dir.display()
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (String::from_utf8_lossy(&out.stdout).into_owned(), err)
    };
    let (out, err) = run_in(
        &dir.0,
        "cat /dev/null && echo null-ok; head -c1 /dev/zero >/dev/null 2>&1 && echo zero-ok || echo zero-denied",
    );
    assert_eq!(out, "null-ok\nzero-denied\n", "{err}");

    // The allowlist the runtime gives every container (wildcards, partial
    // access, mknod of anything denied) passes the verifier and lets a
    // container read /dev/zero and write /dev/null, not read /dev/mem.
    let dir2 = Dir(root.join(format!("podagent-devtest2-{}", std::process::id())));
    std::fs::create_dir(&dir2.0).unwrap();
    let pod = specs::load(
        "p.yaml",
        b"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: busybox, command: [sh]}]\n",
        &specs::NodeInfo::default(),
    )
    .pods
    .remove(0);
    let spec =
        specs::oci::container_spec(&pod, &pod.containers[0], &specs::oci::OciInputs::default())
            .unwrap();
    let rules: Vec<agent::cgroups::DeviceRule> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().clone())
        .unwrap()
        .iter()
        .map(agent::cgroups::DeviceRule::from_oci)
        .collect();
    assert!(rules.len() > 5, "{rules:?}");
    agent::cgroups::devices_bpf::attach(&dir2.0, &rules).unwrap();
    let (out, err) = run_in(
        &dir2.0,
        "head -c1 /dev/zero >/dev/null && echo zero-ok; echo x > /dev/null && echo null-ok; head -c1 /dev/mem >/dev/null 2>&1 && echo mem-ok || echo mem-denied",
    );
    assert_eq!(out, "zero-ok\nnull-ok\nmem-denied\n", "{err}");
}
