//! A pod's sandbox on the node: its IPC and UTS namespaces persisted as bind
//! mounts (the network namespace comes from netplug), its shared `/dev/shm`,
//! and its volume directories. Everything lives under `<state>/pods/<uid>/`,
//! named after the pod, so garbage collection can find what a crash left.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use specs::plan::{FilePlan, HostPathType, PodPlan, VolumeSource};

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
    /// `hostUsers: false`: its user namespace's file and first host id,
    /// set by `Runtime::ensure_user_namespace`.
    pub user_ns: Option<(PathBuf, u32)>,
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

pub(crate) fn is_ns_file(p: &Path) -> bool {
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
            VolumeSource::Files { files } => {
                let p = dir.join("volumes").join(&v.name);
                write_files(&p, files).map_err(io("write the files of", &p))?;
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
        user_ns: None,
    })
}

/// Writes the files of every API data volume of `pod` again (its labels
/// or annotations changed), each volume swapped as one.
pub fn write_file_volumes(sb: &Sandbox, pod: &PodPlan) -> Result<(), RuntimeError> {
    for v in &pod.volumes {
        let VolumeSource::Files { files } = &v.source else {
            continue;
        };
        let Some((_, p)) = sb.volumes.iter().find(|(n, _)| *n == v.name) else {
            continue;
        };
        write_files(p, files).map_err(io("write the files of", p))?;
    }
    Ok(())
}

/// The link naming the current set of a files volume.
const DATA: &str = "..data";

/// Writes a set of files into `dir` as the kubelet's `AtomicWriter` does,
/// so that a container reading the volume sees the old set or the new one,
/// never a mix: the files go into a new hidden directory
/// (`..<seconds>.<nanos>`), the link `..data` is replaced by one to it with
/// a rename, each top-level name is a link through `..data`
/// (`labels -> ..data/labels`), and the old directory is removed. A set
/// equal to the current one is left as it is.
pub fn write_files(dir: &Path, files: &[FilePlan]) -> std::io::Result<()> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    std::fs::create_dir_all(dir)?;
    let current = std::fs::read_link(dir.join(DATA)).ok();
    if let Some(cur) = &current {
        if same_files(&dir.join(cur), files) {
            return Ok(());
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut name = format!("..{}.{:09}", now.as_secs(), now.subsec_nanos());
    while dir.join(&name).exists() {
        name.push('_');
    }
    let new = dir.join(&name);
    std::fs::create_dir(&new)?;
    std::fs::set_permissions(&new, PermissionsExt::from_mode(0o755))?;
    for f in files {
        let path = new.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &f.content)?;
        std::fs::set_permissions(&path, PermissionsExt::from_mode(f.mode))?;
    }
    let tmp = dir.join("..data_tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    symlink(&name, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    let tops: std::collections::BTreeSet<&str> = files
        .iter()
        .filter_map(|f| f.path.split('/').next())
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA).join(top), &link)?;
        }
    }
    // Names of the old set that the new one lacks.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let n = entry.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("..") || tops.contains(n.as_ref()) {
            continue;
        }
        if entry.file_type()?.is_symlink() {
            std::fs::remove_file(entry.path())?;
        }
    }
    if let Some(cur) = current.filter(|c| c.as_os_str() != name.as_str()) {
        let old = dir.join(cur);
        // Only a directory of this volume's own making.
        if old.parent() == Some(dir)
            && old
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".."))
        {
            std::fs::remove_dir_all(old)?;
        }
    }
    Ok(())
}

/// Whether `data` holds exactly `files`, with their modes.
fn same_files(data: &Path, files: &[FilePlan]) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fn count(p: &Path) -> usize {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => count(&e.path()),
                _ => 1,
            })
            .sum()
    }
    files.iter().all(|f| {
        let p = data.join(&f.path);
        std::fs::symlink_metadata(&p)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o777 == f.mode)
            && std::fs::read(&p).is_ok_and(|b| b == f.content.as_bytes())
    }) && count(data) == files.len()
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
    let mut mounted = vec![
        dir.join("ns/ipc"),
        dir.join("ns/uts"),
        dir.join("ns/user"),
        dir.join("shm"),
    ];
    if let Ok(entries) = std::fs::read_dir(dir.join("volumes")) {
        mounted.extend(entries.flatten().map(|e| e.path()));
    }
    for p in mounted {
        if is_ns_file(&p) || is_mountpoint(&p) {
            umount2(&p, MntFlags::MNT_DETACH).map_err(sys("unmount", &p))?;
        }
    }
    std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
    // Its id range, if it had one, is free again.
    super::userns::release(state_dir, &|u| u != uid)
}

/// The pod's pause process (`pause.json`), if it is still the process that
/// was started (checked by start time).
pub fn pause_pid(pod_dir: &Path) -> Option<i32> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pod_dir.join("pause.json")).ok()?).ok()?;
    let pid = i32::try_from(v["pid"].as_i64()?).ok()?;
    (crate::shim::start_ticks(pid) == v["start_ticks"].as_u64()).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str, mode: u32) -> FilePlan {
        FilePlan {
            path: path.into(),
            content: content.into(),
            mode,
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn a_files_volume_is_swapped_as_one_set_through_its_data_link() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("info");
        write_files(
            &dir,
            &[
                file("labels", "app=\"a\"", 0o644),
                file("meta/name", "p", 0o400),
            ],
        )
        .unwrap();
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        assert_eq!(read(&dir.join("labels")), "app=\"a\"");
        assert_eq!(read(&dir.join("meta/name")), "p");
        assert_eq!(
            std::fs::read_link(dir.join("labels")).unwrap(),
            Path::new("..data/labels"),
            "a name is a link through ..data"
        );
        let mode = std::fs::metadata(dir.join("meta/name"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);

        // The same set: nothing is swapped.
        write_files(
            &dir,
            &[
                file("labels", "app=\"a\"", 0o644),
                file("meta/name", "p", 0o400),
            ],
        )
        .unwrap();
        assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), first);

        // A new set: a new directory, the old one and names it alone had gone.
        write_files(&dir, &[file("labels", "app=\"b\"", 0o644)]).unwrap();
        let second = std::fs::read_link(dir.join("..data")).unwrap();
        assert_ne!(second, first);
        assert_eq!(read(&dir.join("labels")), "app=\"b\"");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec!["..data", second.to_str().unwrap(), "labels"];
        want.sort();
        assert_eq!(names, want);
    }
}
