//! A pod's sandbox on the node: its IPC and UTS namespaces persisted as bind
//! mounts (the network namespace comes from netplug), its shared `/dev/shm`,
//! and its volume directories. Everything lives under `<state>/pods/<uid>/`,
//! named after the pod, so garbage collection can find what a crash left.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use specs::plan::{HostPathType, PodPlan, VolumeSource};

use super::{io, RuntimeError};

/// Size of a pod's /dev/shm, as Docker and containerd default it.
pub const SHM_SIZE: &str = "size=65536k";

/// Where a pod's things are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub dir: PathBuf,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    pub shm: Option<PathBuf>,
    /// The pod's shared PID namespace (`/proc/<pause>/ns/pid`), when
    /// `shareProcessNamespace` is true and the pause process runs.
    pub pid_ns: Option<PathBuf>,
    pub volumes: Vec<(String, PathBuf)>,
    /// Files bind-mounted into every container (`/etc/hosts`,
    /// `/etc/resolv.conf` from netplug), set by the caller.
    pub files: Vec<(String, PathBuf)>,
    /// The pod's address (`status.podIP` in env), set by the caller.
    pub pod_ip: Option<String>,
}

fn sys<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> RuntimeError + 'a {
    move |e| RuntimeError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

fn is_mountpoint(p: &Path) -> bool {
    let Some(parent) = p.parent() else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(p), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

fn is_ns_file(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Creates a namespace of `kind` on a short-lived thread (unshare moves only
/// that thread), runs `setup` in it, and pins it with a bind mount at `path`.
fn persist_ns(
    kind: CloneFlags,
    proc_name: &'static str,
    path: &Path,
    setup: impl FnOnce() -> nix::Result<()> + Send,
) -> Result<(), RuntimeError> {
    if is_ns_file(path) {
        return Ok(());
    }
    std::fs::File::create(path).map_err(io("create", path))?;
    let p = path.to_path_buf();
    std::thread::scope(|s| {
        s.spawn(move || -> Result<(), RuntimeError> {
            unshare(kind).map_err(sys("unshare for", &p))?;
            setup().map_err(sys("set up namespace", &p))?;
            let src = format!("/proc/thread-self/ns/{proc_name}");
            mount(
                Some(src.as_str()),
                &p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys("bind-mount namespace at", &p))
        })
        .join()
        .map_err(|_| RuntimeError::Thread)?
    })
}

/// Makes the pod's sandbox; idempotent.
pub fn create(state_dir: &Path, pod: &PodPlan) -> Result<Sandbox, RuntimeError> {
    let dir = state_dir.join("pods").join(&pod.uid);
    let ns = dir.join("ns");
    std::fs::create_dir_all(&ns).map_err(io("create", &ns))?;
    // What leads from the directory back to the pod (podctl logs, GC).
    let meta = crate::records::stamped(
        serde_json::json!({"name": pod.name.as_str(), "namespace": pod.namespace, "uid": pod.uid}),
    );
    let meta_path = dir.join("pod.json");
    std::fs::write(&meta_path, meta.to_string()).map_err(io("write", &meta_path))?;
    let ipc_ns = if pod.host_ipc {
        None
    } else {
        let p = ns.join("ipc");
        persist_ns(CloneFlags::CLONE_NEWIPC, "ipc", &p, || Ok(()))?;
        Some(p)
    };
    let uts_ns = if pod.host_network {
        None
    } else {
        let p = ns.join("uts");
        let hostname = pod.hostname.clone();
        persist_ns(CloneFlags::CLONE_NEWUTS, "uts", &p, move || {
            nix::unistd::sethostname(&hostname)
        })?;
        Some(p)
    };
    let shm = if pod.host_ipc {
        None
    } else {
        let p = dir.join("shm");
        std::fs::create_dir_all(&p).map_err(io("create", &p))?;
        if !is_mountpoint(&p) {
            mount(
                Some("shm"),
                &p,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(format!("mode=1777,{SHM_SIZE}").as_str()),
            )
            .map_err(sys("mount /dev/shm tmpfs at", &p))?;
        }
        Some(p)
    };
    let mut volumes = Vec::new();
    for v in &pod.volumes {
        let path = match &v.source {
            VolumeSource::EmptyDir {
                memory,
                size_limit_bytes,
            } => {
                let p = dir.join("volumes").join(&v.name);
                std::fs::create_dir_all(&p).map_err(io("create", &p))?;
                if *memory && !is_mountpoint(&p) {
                    let data = size_limit_bytes
                        .map_or("mode=0777".to_string(), |b| format!("mode=0777,size={b}"));
                    mount(
                        Some("tmpfs"),
                        &p,
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        Some(data.as_str()),
                    )
                    .map_err(sys("mount emptyDir tmpfs at", &p))?;
                }
                // Everyone's, as the kubelet makes an emptyDir (0777).
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o777))
                    .map_err(io("chmod", &p))?;
                if let Some(gid) = pod.fs_group {
                    fs_group_ownership(&p, gid, pod.fs_group_on_root_mismatch)
                        .map_err(io("give fsGroup", &p))?;
                }
                p
            }
            VolumeSource::HostPath { path, kind } => {
                let p = PathBuf::from(path);
                host_path(&v.name, &p, *kind)?;
                p
            }
        };
        volumes.push((v.name.clone(), path));
    }
    let pid_ns = pause_pid(&dir).map(|pid| PathBuf::from(format!("/proc/{pid}/ns/pid")));
    Ok(Sandbox {
        dir,
        ipc_ns,
        uts_ns,
        shm,
        pid_ns,
        volumes,
        files: Vec::new(),
        pod_ip: None,
    })
}

/// The kubelet's `SetVolumeOwnership` for a volume with an `fsGroup`:
/// everything in it gets the group, and group read-write; directories get
/// the setgid bit and group search, so what is made in them is the group's
/// too. Symlinks are given the group, never followed. With
/// `OnRootMismatch`, a volume whose root already has the group and bits is
/// left as it is. (A hostPath is not the pod's to change, as with the
/// kubelet.)
pub fn fs_group_ownership(root: &Path, gid: u32, on_root_mismatch: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const DIR_BITS: u32 = 0o2000 | 0o070;
    if on_root_mismatch {
        let md = std::fs::symlink_metadata(root)?;
        if md.gid() == gid && md.mode() & DIR_BITS == DIR_BITS {
            return Ok(());
        }
    }
    fn walk(p: &Path, gid: u32, depth: usize) -> std::io::Result<()> {
        let md = std::fs::symlink_metadata(p)?;
        std::os::unix::fs::lchown(p, None, Some(gid))?;
        if md.file_type().is_symlink() {
            return Ok(());
        }
        let bits = if md.is_dir() { DIR_BITS } else { 0o060 };
        let mode = md.mode() & 0o7777;
        if mode & bits != bits {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | bits))?;
        }
        if md.is_dir() && depth < 256 {
            for e in std::fs::read_dir(p)? {
                walk(&e?.path(), gid, depth + 1)?;
            }
        }
        Ok(())
    }
    walk(root, gid, 0)
}

/// Checks (or creates) a hostPath by its type, as the kubelet does.
fn host_path(volume: &str, p: &Path, kind: HostPathType) -> Result<(), RuntimeError> {
    use std::os::unix::fs::FileTypeExt;
    let md = std::fs::metadata(p);
    let bad = |want: &str| RuntimeError::Volume {
        volume: volume.to_string(),
        reason: format!("{} is not {want}", p.display()),
    };
    match kind {
        HostPathType::Unset => Ok(()),
        HostPathType::DirectoryOrCreate => match md {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(bad("a directory")),
            Err(_) => std::fs::create_dir_all(p).map_err(io("create", p)),
        },
        HostPathType::FileOrCreate => match md {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(bad("a file")),
            Err(_) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(drop)
                .map_err(io("create", p)),
        },
        HostPathType::Directory => md
            .ok()
            .filter(|m| m.is_dir())
            .map(drop)
            .ok_or_else(|| bad("an existing directory")),
        HostPathType::File => md
            .ok()
            .filter(|m| m.is_file())
            .map(drop)
            .ok_or_else(|| bad("an existing file")),
        HostPathType::Socket => md
            .ok()
            .filter(|m| m.file_type().is_socket())
            .map(drop)
            .ok_or_else(|| bad("a socket")),
        HostPathType::CharDevice => md
            .ok()
            .filter(|m| m.file_type().is_char_device())
            .map(drop)
            .ok_or_else(|| bad("a character device")),
        HostPathType::BlockDevice => md
            .ok()
            .filter(|m| m.file_type().is_block_device())
            .map(drop)
            .ok_or_else(|| bad("a block device")),
    }
}

/// Removes the pod's sandbox: unmounts its namespaces, shm and memory
/// volumes, then its directory. Idempotent.
pub fn remove(state_dir: &Path, uid: &str) -> Result<(), RuntimeError> {
    let dir = state_dir.join("pods").join(uid);
    if !dir.exists() {
        return Ok(());
    }
    // The shared PID namespace's PID 1 (its containers are gone by now; if
    // not, the kernel kills what is left in the namespace with it).
    if let Some(pause) = pause_pid(&dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pause),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let mut mounted = vec![dir.join("ns/ipc"), dir.join("ns/uts"), dir.join("shm")];
    if let Ok(entries) = std::fs::read_dir(dir.join("volumes")) {
        mounted.extend(entries.flatten().map(|e| e.path()));
    }
    for p in mounted {
        if is_ns_file(&p) || is_mountpoint(&p) {
            umount2(&p, MntFlags::MNT_DETACH).map_err(sys("unmount", &p))?;
        }
    }
    std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))
}

/// The pod's pause process (`pause.json`), if it is still the process that
/// was started (checked by start time).
pub fn pause_pid(pod_dir: &Path) -> Option<i32> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pod_dir.join("pause.json")).ok()?).ok()?;
    let pid = i32::try_from(v["pid"].as_i64()?).ok()?;
    (crate::shim::start_ticks(pid) == v["start_ticks"].as_u64()).then_some(pid)
}
