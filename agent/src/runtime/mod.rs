//! From a plan to running containers: the pod's sandbox, each container's
//! overlay rootfs, bundle, cgroups and shim; stop and removal.
//!
//! Layout under the state dir (default `/run/podagent`):
//!
//! ```text
//! pods/<uid>/ns/{ipc,uts}, shm/, volumes/<name>/          sandbox.rs
//! containers/<uid>/<name>/bundle/{config.json,rootfs/}    the overlay is mounted at rootfs
//!                         upper/, work/, state/, container.log
//! ```
//! and cgroups `<cgroup root>/pod<uid>/<name>`. Every name leads back to its
//! pod uid and container name (DESIGN rule 5).
//!
//! Why one file of ~680 lines: start, stop, removal and GC are the four
//! uses of the layout above and must agree on it line for line; the
//! sandbox's half is apart in `sandbox.rs`.

pub mod sandbox;
pub mod userns;

use std::io::BufRead;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use specs::oci::{container_spec, ImageConfig, OciInputs};
use specs::plan::{ContainerPlan, PodPlan};

use crate::cgroups::{CgroupPath, Cgroups, DeviceRule, Limits};
use crate::image::{ImageStore, ResolvedImage};
use crate::shim::{start_ticks, Exited, Started};
pub use sandbox::Sandbox;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {volume}: {reason}")]
    Volume { volume: String, reason: String },
    #[error("image")]
    Image(#[from] crate::image::ImageError),
    #[error("cgroups")]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("cpu manager")]
    Cpus(#[from] crate::cpu_manager::CpuManagerError),
    /// The kubelet's `ErrImagePull`, `ErrImageNeverPull`.
    #[error("{reason}: {image}")]
    Pull {
        reason: &'static str,
        image: String,
        /// Shared by the starts that waited on one pull.
        #[source]
        source: std::sync::Arc<crate::image::ImageError>,
    },
    #[error(
        "{container} holds {held} CPUs of its own and now wants {wanted}: \
         it restarts to be placed again"
    )]
    Replace {
        container: String,
        held: usize,
        wanted: String,
    },
    #[error("OCI spec")]
    Spec(#[from] specs::oci::OciError),
    #[error("container {container} did not start: {message}")]
    StartError { container: String, message: String },
    #[error("a helper thread panicked")]
    Thread,
}

/// A container's directory in the agent's state dir (its bundle, logs and,
/// in `state/`, the shim's records).
pub fn container_dir(state_dir: &Path, uid: &str, name: &str) -> PathBuf {
    state_dir.join("containers").join(uid).join(name)
}

/// The cgroup of container `name` of the pod with `uid`, under `root`:
/// `<root>/pod<uid>/<name>`.
pub fn container_cgroup(root: &str, uid: &str, name: &str) -> crate::cgroups::Result<CgroupPath> {
    CgroupPath::new(root)?
        .join(&format!("pod{uid}"))?
        .join(name)
}

/// Signals a container's init, found by its state dir's `state.json`, if it
/// has not exited: only the process the shim started (checked by its start
/// time), never a reused pid.
pub fn signal_init(state: &Path, sig: Signal) {
    if state.join("exit.json").exists() {
        return;
    }
    if let Ok(started) = read_json::<Started>(&state.join("state.json")) {
        if start_ticks(started.pid) == Some(started.start_ticks) {
            let _ = kill(Pid::from_raw(started.pid), sig);
        }
    }
}

/// What the runtime needs to know of the node.
#[derive(Debug)]
pub struct Runtime {
    pub state_dir: PathBuf,
    pub images: ImageStore,
    pub cgroups: Box<dyn Cgroups>,
    /// Cgroup path under which pods live (default `podagent`).
    pub cgroup_root: String,
    /// The `podagent` binary that runs shims.
    pub podagent: PathBuf,
    /// The static CPU manager policy; `None`: the `none` policy.
    pub cpus: Option<crate::cpu_manager::CpuManager>,
    /// Where images are pulled from; `None`: only what the store holds.
    pub registry: Option<crate::image::registry::Client>,
    /// The node's `Localhost` seccomp profiles (`<root dir>/seccomp`).
    pub seccomp_dir: PathBuf,
    /// The node's address, the downward API's `status.hostIP`.
    pub host_ip: Option<String>,
}

/// An image pulled for a start.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub info: crate::image::ImageInfo,
    pub took: Duration,
}

/// A container the runtime started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    pub dir: PathBuf,
    pub started: Started,
    /// What it runs, as the kubelet's `imageID`: `<repository>@<digest>`.
    pub image_id: String,
}

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A small regular file of the image, `rel` resolved as if `rootfs` were
/// `/` (`openat2(RESOLVE_IN_ROOT)`): an absolute symlink in the image
/// (`/etc/passwd -> /etc/x`) stays in the image rather than reading the
/// node's file, and a FIFO or device there is refused rather than blocking
/// the start.
fn read_in_root(rootfs: &Path, rel: &str) -> Option<String> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::io::Read;
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let file = std::fs::File::from(openat2(&root, rel, how).ok()?);
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > 1 << 20 {
        return None;
    }
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Resolves an image's `User` (`uid`, `uid:gid`, `name`, `name:group`)
/// against the rootfs's /etc/passwd and /etc/group.
pub fn image_user(rootfs: &Path, user: &str) -> Option<(u32, u32)> {
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let text = read_in_root(rootfs, file)?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| {
                Some((
                    f.get(2)?.parse().ok()?,
                    f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0),
                ))
            })?
        })
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, lookup("etc/passwd", u).map_or(0, |(_, g)| g)),
        Err(_) => lookup("etc/passwd", u)?,
    };
    let gid = match g {
        None => primary,
        Some(g) => g
            .parse()
            .ok()
            .or_else(|| lookup("etc/group", g).map(|(gid, _)| gid))?,
    };
    Some((uid, gid))
}

/// Waits until `dir/name` exists (written by rename into place), at most
/// `timeout`; driven by inotify, not by polling.
pub fn wait_for_file(dir: &Path, name: &str, timeout: Duration) -> bool {
    let target = dir.join(name);
    let Ok(ino) = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) else {
        return target.exists();
    };
    if ino
        .add_watch(dir, AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE)
        .is_err()
    {
        return target.exists();
    }
    let deadline = Instant::now() + timeout;
    loop {
        if target.exists() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        wait_inotify(&ino, left);
        let _ = ino.read_events();
    }
}

/// The file in a container's directory bound at its
/// `terminationMessagePath`.
pub const TERMINATION_MESSAGE: &str = "termination-log";

/// A run's termination message, as the kubelet reads it: the container's
/// message file (at most 4096 bytes); when that is empty, the run failed and
/// the policy is `FallbackToLogsOnError`, the end of its log (at most 80
/// lines and 2048 bytes).
pub fn termination_message(dir: &Path, exit_code: i32, from_logs: bool) -> Option<String> {
    let read_tail = |path: &Path, max: u64| -> Option<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(path).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
        let mut buf = Vec::new();
        f.take(max).read_to_end(&mut buf).ok()?;
        Some(buf)
    };
    let own = std::fs::File::open(dir.join(TERMINATION_MESSAGE))
        .ok()
        .and_then(|f| {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, 4096), &mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf).into_owned())
        });
    if let Some(m) = own.filter(|m| !m.is_empty()) {
        return Some(m);
    }
    if !from_logs || exit_code == 0 {
        return None;
    }
    // The log is CRI lines (`<time> <stream> <P|F> <text>`): the texts of
    // the last 80, cut to their last 2048 bytes.
    let tail = read_tail(&dir.join("container.log"), 64 << 10)?;
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect();
    let mut out = lines[lines.len().saturating_sub(80)..].join("\n");
    if out.len() > 2048 {
        let mut cut = out.len() - 2048;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = out[cut..].to_string();
    }
    (!out.is_empty()).then_some(out)
}

/// The kubelet's `imageID` of an image run by `reference`:
/// `docker.io/library/busybox@sha256:…`.
pub fn image_id(reference: &str, digest: &str) -> String {
    match crate::image::reference::Reference::parse(reference) {
        Ok(r) => format!("{}/{}@{digest}", r.registry, r.repository),
        Err(_) => digest.to_string(),
    }
}

/// The cgroup limits of a container's resources (without pids and devices,
/// which come from the pod and the spec).
pub fn container_limits(r: &specs::plan::ContainerResources) -> Limits {
    Limits {
        cpu_shares: Some(r.cpu_shares),
        cpu_weight: Some(r.cpu_weight),
        cfs_period_us: Some(r.cfs_period_us),
        cfs_quota_us: r.cfs_quota_us,
        cpuset_cpus: r.cpuset.as_ref().map(|s| s.to_string()),
        memory_limit: r.memory_limit_bytes,
        swap_limit: r.swap_limit_bytes,
        oom_kill_disable: r.oom_kill_disable,
        oom_group: true,
        io: Some(r.io.clone()),
        ..Limits::default()
    }
}

impl Runtime {
    /// The profile of a `Localhost` seccomp policy, read from the node's
    /// seccomp dir (the OCI format, which Docker's profiles are too; fields
    /// of Docker's that the OCI format lacks are ignored). `None` for any
    /// other policy.
    fn localhost_seccomp(
        &self,
        c: &ContainerPlan,
    ) -> Result<Option<oci_spec::runtime::LinuxSeccomp>, RuntimeError> {
        let specs::plan::SeccompPolicy::Localhost(name) = &c.security.seccomp else {
            return Ok(None);
        };
        // The name was checked against the directory's listing (relative,
        // no `..`); opened beneath it all the same.
        let dir = std::fs::File::open(&self.seccomp_dir).map_err(io("open", &self.seccomp_dir))?;
        let path = self.seccomp_dir.join(name);
        let fd = nix::fcntl::openat2(
            &dir,
            Path::new(name),
            nix::fcntl::OpenHow::new()
                .flags(nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC)
                .resolve(
                    nix::fcntl::ResolveFlag::RESOLVE_BENEATH
                        | nix::fcntl::ResolveFlag::RESOLVE_NO_MAGICLINKS,
                ),
        )
        .map_err(|e| RuntimeError::Io {
            op: "open",
            path: path.clone(),
            source: e.into(),
        })?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text)
            .map_err(io("read", &path))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| RuntimeError::Io {
                op: "parse the seccomp profile",
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            })
    }

    /// Whether starting `c` pulls its image first, by its `imagePullPolicy`
    /// as the kubelet reads it: `Always` unless pinned by a digest the store
    /// holds, `IfNotPresent` when the store lacks it, `Never` never.
    pub fn pulls(&self, c: &ContainerPlan) -> bool {
        use specs::plan::PullPolicy;
        // The tag and manifest only: the loop asks this, and resolving would
        // unpack layers.
        let present = || self.images.contains(&c.image);
        self.registry.is_some()
            && match c.pull_policy {
                PullPolicy::Never => false,
                PullPolicy::IfNotPresent => !present(),
                PullPolicy::Always => !(c.image.contains('@') && present()),
            }
    }

    /// Pulls the image of `c` (the pull pool calls this when
    /// [`Runtime::pulls`] says so). The error is shared by every start that
    /// waited on the pull; each becomes an `ErrImagePull` with the
    /// registry's own words in it.
    pub fn pull_image(
        &self,
        c: &ContainerPlan,
    ) -> Result<Pulled, std::sync::Arc<crate::image::ImageError>> {
        let Some(client) = &self.registry else {
            return Err(std::sync::Arc::new(crate::image::ImageError::NotFound(
                c.image.clone(),
            )));
        };
        let t = Instant::now();
        let info = self
            .images
            .pull(client, &c.image, None)
            .map_err(std::sync::Arc::new)?;
        Ok(Pulled {
            info,
            took: t.elapsed(),
        })
    }

    /// `Never` with the image absent is `ErrImageNeverPull` (for the other
    /// policies the start itself reports what the store lacks).
    pub fn never_pulled(&self, c: &ContainerPlan) -> Result<(), RuntimeError> {
        if c.pull_policy != specs::plan::PullPolicy::Never || self.images.contains(&c.image) {
            return Ok(());
        }
        Err(RuntimeError::Pull {
            reason: "ErrImageNeverPull",
            image: c.image.clone(),
            source: std::sync::Arc::new(crate::image::ImageError::NotFound(c.image.clone())),
        })
    }

    /// The limits a resize writes: the plan's, and, for a container on CPUs
    /// of its own, no quota. A change in how many CPUs of its own it gets is
    /// not a resize: the container restarts and is placed again.
    pub fn resize_limits(
        &self,
        pod: &PodPlan,
        name: &str,
        resources: &specs::plan::ContainerResources,
    ) -> Result<Limits, RuntimeError> {
        let mut limits = container_limits(resources);
        let Some(m) = &self.cpus else {
            return Ok(limits);
        };
        let a = m.lock();
        let held = m.exclusive_of(&a, &pod.uid, name);
        let c = pod.all_containers().find(|c| c.name.as_str() == name);
        let wanted = c.and_then(|c| crate::cpu_manager::exclusive_count(pod, c));
        // A pin added, changed or removed is placed again (and checked
        // against the exclusive CPUs) by a restart, not written as a resize.
        let pin = c.and_then(|c| c.resources.cpuset.clone());
        if pin != m.pinned_of(&a, &pod.uid, name) {
            return Err(RuntimeError::Replace {
                container: format!("{}/{}:{name}", pod.namespace, pod.name),
                held: held.map_or(0, |h| h.len()),
                wanted: "its new cpuset.podagent.io pin".into(),
            });
        }
        match (held, wanted) {
            (None, None) => Ok(limits),
            (Some(h), Some(w)) if h.len() == w => {
                limits.cfs_quota_us = None;
                Ok(limits)
            }
            (held, wanted) => Err(RuntimeError::Replace {
                container: format!("{}/{}:{name}", pod.namespace, pod.name),
                held: held.map_or(0, |h| h.len()),
                wanted: wanted.map_or("none".into(), |w| w.to_string()),
            }),
        }
    }

    /// Forgets the CPU assignments of pods `keep` does not name and, if the
    /// shared pool grew, writes it to the shared containers.
    fn release_cpus(&self, keep: &dyn Fn(&str) -> bool) -> Result<(), RuntimeError> {
        let Some(m) = &self.cpus else {
            return Ok(());
        };
        let mut a = m.lock();
        if m.retain(&mut a, keep)? {
            self.rewrite_shared(m, &a)?;
        }
        Ok(())
    }

    /// Writes the shared pool to the cpuset of every container that is not
    /// on CPUs of its own or its annotation's (the pool changed). Called
    /// with the manager's lock held.
    fn rewrite_shared(
        &self,
        m: &crate::cpu_manager::CpuManager,
        a: &crate::cpu_manager::Assignments,
    ) -> Result<(), RuntimeError> {
        let pool = m.shared_pool(a).to_string();
        let containers = self.state_dir.join("containers");
        for pod in std::fs::read_dir(&containers)
            .into_iter()
            .flatten()
            .flatten()
        {
            let uid = pod.file_name().to_string_lossy().into_owned();
            for c in std::fs::read_dir(pod.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = c.file_name().to_string_lossy().into_owned();
                if a.is_fixed(&uid, &name) {
                    continue;
                }
                let cg = container_cgroup(&self.cgroup_root, &uid, &name)?;
                match self.cgroups.set_cpus(&cg, &pool) {
                    // Not made yet (it gets the pool when it is, under the
                    // same lock), or removed meanwhile (its pod is deleted).
                    Err(crate::cgroups::CgroupError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    r => r?,
                }
            }
        }
        Ok(())
    }
}

/// Blocks until `ino` has an event or `timeout` passes.
fn wait_inotify(ino: &Inotify, timeout: Duration) {
    let ms = u16::try_from(timeout.as_millis().min(60_000))
        .unwrap_or(60_000)
        .max(1);
    let mut fds = [nix::poll::PollFd::new(
        ino.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
}

/// Waits until something in `dir` is written, created or moved, at most
/// `timeout` (inotify).
pub fn wait_for_change(dir: &Path, timeout: Duration) {
    let Ok(ino) = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) else {
        return;
    };
    let flags = AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO;
    if ino.add_watch(dir, flags).is_err() {
        return;
    }
    wait_inotify(&ino, timeout);
}

impl Runtime {
    fn container_dir(&self, pod: &PodPlan, c: &ContainerPlan) -> PathBuf {
        container_dir(&self.state_dir, &pod.uid, c.name.as_str())
    }

    pub fn pod_cgroup(&self, pod: &PodPlan) -> Result<CgroupPath, RuntimeError> {
        Ok(CgroupPath::new(&self.cgroup_root)?.join(&format!("pod{}", pod.uid))?)
    }

    fn container_cgroup(
        &self,
        pod: &PodPlan,
        c: &ContainerPlan,
    ) -> Result<CgroupPath, RuntimeError> {
        Ok(container_cgroup(
            &self.cgroup_root,
            &pod.uid,
            c.name.as_str(),
        )?)
    }

    /// What a container's cgroup uses now, by pod uid and container name.
    pub fn container_usage(&self, uid: &str, name: &str) -> Option<crate::cgroups::Usage> {
        let cg = container_cgroup(&self.cgroup_root, uid, name).ok()?;
        self.cgroups.usage(&cg).ok()
    }

    /// The shim (`pause`: the pod's PID namespace holder instead):
    /// `podagent-shim` when it sits next to `podagent` (it links only the
    /// shim, so each container's parent is smaller), else `podagent shim`
    /// (`podagent pause`).
    fn shim_command(&self, pause: bool) -> Command {
        let small = self.podagent.with_file_name("podagent-shim");
        let mut cmd;
        if small.is_file() {
            cmd = Command::new(small);
            if pause {
                cmd.arg("pause");
            }
        } else {
            cmd = Command::new(&self.podagent);
            cmd.arg(if pause { "pause" } else { "shim" });
        }
        cmd
    }

    /// For `shareProcessNamespace: true`: the pod's PID namespace, held by a
    /// pause process (`podagent-shim pause`), started unless it runs; its
    /// path goes into the sandbox for the containers to join.
    pub fn ensure_pid_namespace(
        &self,
        pod: &PodPlan,
        sandbox: &mut Sandbox,
    ) -> Result<(), RuntimeError> {
        if !pod.share_process_namespace {
            return Ok(());
        }
        let pid = match sandbox::pause_pid(&sandbox.dir) {
            Some(pid) => pid,
            None => {
                let pidfile = sandbox.dir.join("pause.json");
                let status = self
                    .shim_command(true)
                    .arg("--pidfile")
                    .arg(&pidfile)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()
                    .map_err(io("spawn", &self.podagent))?;
                sandbox::pause_pid(&sandbox.dir)
                    .filter(|_| status.success())
                    .ok_or_else(|| RuntimeError::StartError {
                        container: "pause".into(),
                        message: format!("the pod's PID namespace could not be made ({status})"),
                    })?
            }
        };
        sandbox.pid_ns = Some(PathBuf::from(format!("/proc/{pid}/ns/pid")));
        Ok(())
    }

    /// For `hostUsers: false`: the pod's range of host ids (claimed in the
    /// node's pool) and its user namespace, made by `podagent-shim pause
    /// --user-namespace` and kept at `pods/<uid>/ns/user`, unless it is
    /// there; both go into the sandbox for its containers.
    pub fn ensure_user_namespace(
        &self,
        pod: &PodPlan,
        sandbox: &mut Sandbox,
    ) -> Result<(), RuntimeError> {
        if !pod.user_namespace {
            return Ok(());
        }
        let base = userns::claim(&self.state_dir, &pod.uid)?;
        let path = sandbox.dir.join("ns/user");
        if !sandbox::is_ns_file(&path) {
            let out = self
                .shim_command(true)
                .arg("--user-namespace")
                .arg(&path)
                .arg("--id-base")
                .arg(base.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .map_err(io("spawn", &self.podagent))?;
            if !out.status.success() || !sandbox::is_ns_file(&path) {
                return Err(RuntimeError::StartError {
                    container: "user namespace".into(),
                    message: format!(
                        "the pod's user namespace could not be made ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
        }
        sandbox.user_ns = Some((path, base));
        Ok(())
    }

    /// Kills every process in one container's cgroup, by pod uid and
    /// container name (for a container whose shim is gone).
    pub fn kill_container(&self, uid: &str, name: &str) -> Result<(), RuntimeError> {
        let cg = container_cgroup(&self.cgroup_root, uid, name)?;
        Ok(self.cgroups.kill_all(&cg)?)
    }

    /// The pod's cgroup with the pod-level limits (the kubelet's pod cgroup).
    pub fn create_pod_cgroup(&self, pod: &PodPlan) -> Result<(), RuntimeError> {
        let path = self.pod_cgroup(pod)?;
        self.cgroups.create(&path)?;
        let r = &pod.pod_resources;
        // With CPUs of its own, no quota for the pod either, as the kubelet.
        let exclusive = self.cpus.is_some()
            && pod
                .containers
                .iter()
                .any(|c| crate::cpu_manager::exclusive_count(pod, c).is_some());
        self.cgroups.apply(
            &path,
            &Limits {
                cpu_shares: Some(r.cpu_shares),
                cpu_weight: Some(specs::resolve::resources::cpu_weight(r.cpu_shares)),
                cfs_period_us: Some(r.cfs_period_us),
                cfs_quota_us: r.cfs_quota_us.filter(|_| !exclusive),
                memory_limit: r.memory_limit_bytes,
                pids_limit: Some(r.pids_limit),
                ..Limits::default()
            },
        )?;
        Ok(())
    }

    /// Starts container `c` of `pod` in `sandbox` (and `net_ns`, from
    /// netplug; `None` gives it a network namespace with only loopback).
    /// Returns once the process has been exec'd, or with its start error.
    pub fn start(
        &self,
        pod: &PodPlan,
        sandbox: &Sandbox,
        net_ns: Option<&Path>,
        c: &ContainerPlan,
    ) -> Result<Handle, RuntimeError> {
        let image = self.images.resolve(&c.image)?;
        let dir = self.container_dir(pod, c);
        let rootfs = dir.join("bundle/rootfs");
        let idmap = match &sandbox.user_ns {
            Some((ns, base)) if pod.user_namespace => Some((ns.as_path(), *base)),
            _ => None,
        };
        mount_overlay(&image, &dir, &rootfs, idmap)?;
        let config = image.config.clone();
        let user_name = config.user.clone().filter(|u| !u.is_empty());
        let user = user_name.as_deref().and_then(|u| image_user(&rootfs, u));
        let cg = self.container_cgroup(pod, c)?;
        // The termination message file, empty for each run, bound at the
        // container's terminationMessagePath; writable by any user, as the
        // kubelet makes it.
        let message = dir.join(TERMINATION_MESSAGE);
        std::fs::write(&message, b"").map_err(io("create", &message))?;
        std::fs::set_permissions(
            &message,
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .map_err(io("chmod", &message))?;
        let mut files = sandbox.files.clone();
        files.push((c.termination_message_path.clone(), message));
        let inputs = OciInputs {
            rootfs: rootfs.clone(),
            image: ImageConfig {
                entrypoint: config.entrypoint.unwrap_or_default(),
                cmd: config.cmd.unwrap_or_default(),
                env: config.env.unwrap_or_default(),
                working_dir: config.working_dir,
                user,
                user_name,
            },
            net_ns: if pod.host_network {
                None
            } else {
                net_ns.map(Path::to_path_buf)
            },
            ipc_ns: sandbox.ipc_ns.clone(),
            uts_ns: sandbox.uts_ns.clone(),
            pid_ns: sandbox.pid_ns.clone(),
            cgroups_path: Some(Path::new("/").join(cg.as_path())),
            cgroup_namespace: self.cgroups.private_namespace(),
            volume_dirs: sandbox.volumes.iter().cloned().collect(),
            shm_dir: sandbox.shm.clone(),
            files,
            pod_ip: sandbox.pod_ip.clone(),
            host_ip: self.host_ip.clone(),
            localhost_seccomp: self.localhost_seccomp(c)?,
            node_capabilities: c.security.privileged.then(crate::node::own_capabilities),
            user_ns: sandbox.user_ns.clone(),
        };
        let spec = container_spec(pod, c, &inputs)?;
        let config_path = dir.join("bundle/config.json");
        spec.save(&config_path).map_err(|e| RuntimeError::Io {
            op: "write",
            path: config_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;

        let devices = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.devices().clone())
            .unwrap_or_default()
            .iter()
            .map(DeviceRule::from_oci)
            .collect();
        let r = &c.resources;
        let mut limits = Limits {
            pids_limit: Some(pod.pod_resources.pids_limit),
            devices,
            // A new cgroup has no IO limits to lift.
            io: (!r.io.is_empty()).then(|| r.io.clone()),
            ..container_limits(r)
        };
        // The CPU manager's lock is held until the cpusets it implies are
        // written, so that no other start sees a pool in between.
        let mut placed = None;
        if let Some(m) = &self.cpus {
            let mut a = m.lock();
            let (placement, pool_changed) = m.place(&mut a, pod, c)?;
            limits.cpuset_cpus = Some(placement.cpus().to_string());
            let exclusive = matches!(placement, crate::cpu_manager::Placement::Exclusive(_));
            if exclusive {
                limits.cfs_quota_us = None;
            }
            // Each exclusive start rewrites the pool too (it is idempotent):
            // a start that failed after its assignment was recorded left
            // the shared containers on its CPUs.
            placed = Some((m, a, pool_changed || exclusive));
        }
        self.cgroups.create(&cg)?;
        self.cgroups.apply(&cg, &limits)?;
        if let Some((m, a, true)) = &placed {
            self.rewrite_shared(m, a)?;
        }
        drop(placed);

        let state = dir.join("state");
        // A restart keeps the previous run's log and records (`--previous`).
        let log = dir.join("container.log");
        if log.exists() {
            std::fs::rename(&log, dir.join("previous.log")).map_err(io("rename", &log))?;
        }
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).map_err(io("create", &state))?;
        let shim_log = std::fs::File::create(dir.join("shim.log")).map_err(io("create", &dir))?;
        let mut cmd = self.shim_command(false);
        cmd.arg("--bundle")
            .arg(dir.join("bundle"))
            .arg("--state")
            .arg(&state);
        cmd.arg("--log").arg(dir.join("container.log"));
        cmd.arg("--seccomp-cache")
            .arg(self.state_dir.join("seccomp-cache"));
        if c.stdin {
            cmd.arg("--open-stdin");
        }
        match self.cgroups.clone_into(&cg) {
            Some(dir) => {
                cmd.arg("--cgroup-into").arg(dir);
            }
            None => {
                for f in self.cgroups.join_files(&cg) {
                    cmd.arg("--cgroup-join").arg(f);
                }
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log);
        let mut child = cmd.spawn().map_err(io("spawn", &self.podagent))?;
        // The shim writes one line when the process is exec'd or has failed.
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        if line.starts_with("started") {
            let started: Started = read_json(&state.join("state.json"))?;
            return Ok(Handle {
                dir,
                started,
                image_id: image_id(&c.image, &image.digest),
            });
        }
        let _ = child.wait();
        let message = read_json::<Exited>(&state.join("exit.json"))
            .map(|e| e.message)
            .unwrap_or_else(|_| std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default());
        Err(RuntimeError::StartError {
            container: c.name.to_string(),
            message,
        })
    }

    /// Stops a container: SIGTERM to its init, then, after `grace`, SIGKILL
    /// to every process left in its cgroup. Returns its exit record.
    pub fn stop(
        &self,
        pod: &PodPlan,
        c: &ContainerPlan,
        grace: Duration,
    ) -> Result<Exited, RuntimeError> {
        let dir = self.container_dir(pod, c);
        let state = dir.join("state");
        signal_init(&state, Signal::SIGTERM);
        if !wait_for_file(&state, "exit.json", grace) {
            self.cgroups.kill_all(&self.container_cgroup(pod, c)?)?;
            wait_for_file(&state, "exit.json", Duration::from_secs(10));
        }
        read_json(&state.join("exit.json"))
    }

    /// Stops all of a pod's containers together: SIGTERM to each init at
    /// once, then one grace period for all of them, then SIGKILL to what is
    /// left in each cgroup.
    pub fn stop_all(&self, pod: &PodPlan, grace: Duration) {
        self.terminate(pod);
        let deadline = std::time::Instant::now() + grace;
        for c in pod.all_containers() {
            let state = self.container_dir(pod, c).join("state");
            if !state.join("state.json").exists() {
                continue;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !wait_for_file(&state, "exit.json", left) {
                if let Ok(cg) = self.container_cgroup(pod, c) {
                    let _ = self.cgroups.kill_all(&cg);
                }
                wait_for_file(&state, "exit.json", Duration::from_secs(10));
            }
        }
    }

    /// Sends SIGTERM to the init of each of the pod's running containers
    /// (checked by start time) and returns.
    pub fn terminate(&self, pod: &PodPlan) {
        for c in pod.all_containers() {
            signal_init(&self.container_dir(pod, c).join("state"), Signal::SIGTERM);
        }
    }

    /// Removes a stopped container: its processes (if any are left), rootfs,
    /// directories and cgroup.
    pub fn remove(&self, pod: &PodPlan, c: &ContainerPlan) -> Result<(), RuntimeError> {
        let cg = self.container_cgroup(pod, c)?;
        self.cgroups.kill_all(&cg)?;
        self.cgroups.remove(&cg)?;
        let dir = self.container_dir(pod, c);
        let rootfs = dir.join("bundle/rootfs");
        if is_mounted(&rootfs) {
            umount2(&rootfs, MntFlags::MNT_DETACH).map_err(|e| RuntimeError::Io {
                op: "unmount",
                path: rootfs.clone(),
                source: e.into(),
            })?;
        }
        // A shim still alive writes its last records (the log's end,
        // exit.json) as its init dies, racing the removal: it is given a
        // little while to go (it is not in the container's cgroup), and a
        // removal that met its writes is tried again.
        let state = dir.join("state");
        let shim_alive = read_json::<Started>(&state.join("state.json"))
            .is_ok_and(|st| crate::shim::start_ticks(st.shim_pid) == Some(st.shim_start_ticks));
        if shim_alive {
            wait_for_file(&state, "exit.json", Duration::from_secs(5));
        }
        let mut tries = 0;
        loop {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && tries < 50 => {
                    tries += 1;
                    // 20 ms, without sleeping the thread's clock away: a
                    // poll of nothing.
                    let _ = nix::poll::poll(&mut [], nix::poll::PollTimeout::from(20u16));
                }
                Err(e) => return Err(io("remove", &dir)(e)),
            }
        }
    }

    /// Removes the pod's cgroup and sandbox once its containers are removed;
    /// its CPUs go back to the shared pool.
    pub fn remove_pod(&self, pod: &PodPlan) -> Result<(), RuntimeError> {
        // First: a teardown step that fails must not keep the CPUs.
        self.release_cpus(&|uid| uid != pod.uid)?;
        self.cgroups.remove(&self.pod_cgroup(pod)?)?;
        let _ = std::fs::remove_dir(self.state_dir.join("containers").join(&pod.uid));
        sandbox::remove(&self.state_dir, &pod.uid)
    }
}

impl Runtime {
    /// Removes every pod on this node's state that `known` does not name (by
    /// uid): its containers' processes (the whole cgroup), rootfs mounts,
    /// directories, cgroups and sandbox. What a crash or a failed test left
    /// behind; idempotent. Returns the uids removed.
    pub fn gc(&self, known: &dyn Fn(&str) -> bool) -> Result<Vec<String>, RuntimeError> {
        let mut removed = Vec::new();
        let mut uids: Vec<String> = Vec::new();
        for sub in ["containers", "pods"] {
            if let Ok(entries) = std::fs::read_dir(self.state_dir.join(sub)) {
                uids.extend(
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                );
            }
        }
        uids.sort();
        uids.dedup();
        // First: a teardown step that fails must not keep the CPUs.
        self.release_cpus(known)?;
        for uid in uids.into_iter().filter(|u| !known(u)) {
            let pod_cg = CgroupPath::new(&self.cgroup_root)?.join(&format!("pod{uid}"))?;
            let dir = self.state_dir.join("containers").join(&uid);
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Ok(cg) = pod_cg.join(&name) {
                    self.cgroups.kill_all(&cg)?;
                    self.cgroups.remove(&cg)?;
                }
                let rootfs = e.path().join("bundle/rootfs");
                if is_mounted(&rootfs) {
                    umount2(&rootfs, MntFlags::MNT_DETACH).map_err(|err| RuntimeError::Io {
                        op: "unmount",
                        path: rootfs.clone(),
                        source: err.into(),
                    })?;
                }
            }
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
            }
            self.cgroups.kill_all(&pod_cg)?;
            self.cgroups.remove(&pod_cg)?;
            sandbox::remove(&self.state_dir, &uid)?;
            removed.push(uid);
        }
        // A range whose pod is gone (or was never made) is free again.
        let pods = self.state_dir.join("pods");
        userns::release(&self.state_dir, &|uid| pods.join(uid).exists())?;
        Ok(removed)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, RuntimeError> {
    let bytes = std::fs::read(p).map_err(io("read", p))?;
    serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Io {
        op: "parse",
        path: p.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn is_mounted(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(p), p.parent().map(std::fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

/// The container's rootfs: its image's layers as overlay lower dirs (top
/// first), its own upper and work dirs. With a user namespace (`idmap`:
/// its file and first host id), each layer is an idmapped mount through
/// the namespace's mapping (its root's files are the container root's),
/// attached under `lower/` only until the overlay holds it, and the upper
/// and work dirs belong to the container's root on the host, as
/// containerd does (overlayfs takes idmapped layers; an overlay mount
/// itself cannot be idmapped).
fn mount_overlay(
    image: &ResolvedImage,
    dir: &Path,
    rootfs: &Path,
    idmap: Option<(&Path, u32)>,
) -> Result<(), RuntimeError> {
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    for d in [&upper, &work, &rootfs.to_path_buf()] {
        std::fs::create_dir_all(d).map_err(io("create", d))?;
    }
    if is_mounted(rootfs) {
        return Ok(());
    }
    let mut lower: Vec<String> = image
        .layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let mut attached = Vec::new();
    if let Some((ns, base)) = idmap {
        let id = Some(nix::unistd::Uid::from_raw(base));
        let gid = Some(nix::unistd::Gid::from_raw(base));
        for d in [&upper, &work] {
            nix::unistd::chown(d.as_path(), id, gid).map_err(|e| RuntimeError::Io {
                op: "chown",
                path: d.clone(),
                source: e.into(),
            })?;
        }
        let userns = std::fs::File::open(ns).map_err(io("open", ns))?;
        let layers = dir.join("lower");
        for (i, l) in lower.iter_mut().enumerate() {
            let at = layers.join(i.to_string());
            std::fs::create_dir_all(&at).map_err(io("create", &at))?;
            let idmapped = |e: nix::Error| {
                RuntimeError::Io {
                op: "make an idmapped mount of",
                path: PathBuf::from(l.as_str()),
                source: std::io::Error::other(format!(
                    "{e} (the kernel or the image store's filesystem cannot idmap it: hostUsers: false needs Linux 5.19 and a filesystem that supports idmapped mounts)"
                )),
            }
            };
            let tree = crate::sys::idmapped_tree(Path::new(l.as_str()), userns.as_fd())
                .map_err(idmapped)?;
            let target = std::fs::File::open(&at).map_err(io("open", &at))?;
            crate::sys::attach_tree(tree.as_fd(), target.as_fd()).map_err(idmapped)?;
            attached.push(at.clone());
            *l = at.display().to_string();
        }
    }
    let detach = |attached: &[PathBuf]| {
        for at in attached {
            let _ = umount2(at, MntFlags::MNT_DETACH);
        }
    };
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    let mounted = mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| RuntimeError::Io {
        op: "mount overlay at",
        path: rootfs.to_path_buf(),
        source: e.into(),
    });
    // The overlay holds its layers: their own mounts are not needed.
    detach(&attached);
    mounted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_user_is_read_inside_the_image_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/real-passwd"), "app:x:1000:1001::/:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "staff:x:50:\n").unwrap();
        // Absolute, as images have them: resolved inside the image.
        std::os::unix::fs::symlink("/etc/real-passwd", root.join("etc/passwd")).unwrap();
        assert_eq!(image_user(root, "app"), Some((1000, 1001)));
        assert_eq!(image_user(root, "app:staff"), Some((1000, 50)));
        assert_eq!(image_user(root, "7:8"), Some((7, 8)));
        // Pointing out of the image: the node's root user is not found.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/passwd", root.join("etc/passwd"))
            .unwrap();
        assert_eq!(image_user(root, "root"), None);
        // A FIFO is refused at once instead of waiting for a writer.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        nix::unistd::mkfifo(&root.join("etc/passwd"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(image_user(root, "app"), None);
        assert_eq!(image_user(root, "9"), Some((9, 0)));
    }

    #[test]
    fn a_termination_message_is_bounded_as_the_kubelets() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The file wins, cut at 4096 bytes.
        std::fs::write(d.join(TERMINATION_MESSAGE), "x".repeat(5000)).unwrap();
        assert_eq!(termination_message(d, 1, true).unwrap().len(), 4096);
        // Empty: the log's last 80 lines for a failed run by the policy.
        std::fs::write(d.join(TERMINATION_MESSAGE), "").unwrap();
        let log: String = (0..100)
            .map(|i| format!("2026-12-02T00:00:00.0Z stdout F line {i}\n"))
            .collect();
        std::fs::write(d.join("container.log"), log).unwrap();
        let m = termination_message(d, 1, true).unwrap();
        assert!(m.starts_with("line 20\n") && m.ends_with("line 99"), "{m}");
        assert_eq!(termination_message(d, 0, true), None, "a clean exit");
        assert_eq!(termination_message(d, 1, false), None, "the File policy");
        // At most 2048 bytes of it.
        std::fs::write(
            d.join("container.log"),
            format!("t stderr F {}\n", "é".repeat(3000)),
        )
        .unwrap();
        let m = termination_message(d, 2, true).unwrap();
        assert!(
            m.len() <= 2048 && m.chars().all(|c| c == 'é'),
            "{}",
            m.len()
        );
    }
}
