//! Mounting inside the container's root without following a symlink out of
//! it: every target is opened with `openat2(RESOLVE_IN_ROOT)` relative to the
//! root (creating what is missing, one component at a time), and the mount is
//! made on `/proc/self/fd/<fd>` of that handle. A symlink swapped in by another
//! container therefore resolves inside this root, never onto the host (the
//! CVE-2021-30465 class).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::MsFlags;
use nix::sys::stat::{mkdirat, Mode};

/// Flags, propagation and data of an OCI mount's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub flags: MsFlags,
    pub propagation: Option<MsFlags>,
    pub data: String,
    pub bind: bool,
    pub readonly: bool,
    /// A subPath's volume: the source must resolve beneath it.
    pub beneath: Option<PathBuf>,
    /// Bound as an idmapped mount through the container's user namespace.
    pub idmap: bool,
}

pub fn parse(options: &[String]) -> Options {
    let mut o = Options {
        flags: MsFlags::empty(),
        propagation: None,
        data: String::new(),
        bind: false,
        readonly: false,
        beneath: None,
        idmap: false,
    };
    let mut data = Vec::new();
    for opt in options {
        match opt.as_str() {
            "ro" => o.readonly = true,
            "rw" => o.readonly = false,
            "nosuid" => o.flags |= MsFlags::MS_NOSUID,
            "nodev" => o.flags |= MsFlags::MS_NODEV,
            "noexec" => o.flags |= MsFlags::MS_NOEXEC,
            "sync" => o.flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => o.flags |= MsFlags::MS_DIRSYNC,
            "noatime" => o.flags |= MsFlags::MS_NOATIME,
            "nodiratime" => o.flags |= MsFlags::MS_NODIRATIME,
            "relatime" => o.flags |= MsFlags::MS_RELATIME,
            "strictatime" => o.flags |= MsFlags::MS_STRICTATIME,
            "bind" => o.bind = true,
            "rbind" => {
                o.bind = true;
                o.flags |= MsFlags::MS_REC;
            }
            "private" => o.propagation = Some(MsFlags::MS_PRIVATE),
            "rprivate" => o.propagation = Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "slave" => o.propagation = Some(MsFlags::MS_SLAVE),
            "rslave" => o.propagation = Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "shared" => o.propagation = Some(MsFlags::MS_SHARED),
            "rshared" => o.propagation = Some(MsFlags::MS_SHARED | MsFlags::MS_REC),
            specs::oci::IDMAP => o.idmap = true,
            other => match other.strip_prefix(specs::oci::SUBPATH_BENEATH) {
                Some(dir) => o.beneath = Some(PathBuf::from(dir)),
                // Other `x-` options are for userspace tools, never the kernel.
                None if other.starts_with("x-") => {}
                None => data.push(other.to_string()),
            },
        }
    }
    o.data = data.join(",");
    o
}

/// The components of an absolute container path, refusing `..`.
fn components(dest: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for c in dest.components() {
        match c {
            Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(format!(
                    "{}: '..' is not allowed in a mount target",
                    dest.display()
                ))
            }
        }
    }
    Ok(out)
}

fn open_in_root(root: &OwnedFd, rel: &str, dir: bool) -> nix::Result<OwnedFd> {
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if dir {
        flags |= OFlag::O_DIRECTORY;
    }
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root.as_fd(), if rel.is_empty() { "." } else { rel }, how)
}

/// Opens (creating as needed) the mount target `dest` inside `root`: a
/// directory, or a file when `file` (a bind mount of a file).
pub fn target(root: &OwnedFd, dest: &Path, file: bool) -> Result<OwnedFd, String> {
    let parts = components(dest)?;
    let mut prefix = String::new();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let here = if prefix.is_empty() {
            part.clone()
        } else {
            format!("{prefix}/{part}")
        };
        match open_in_root(root, &here, !(last && file)) {
            Ok(fd) if last => return Ok(fd),
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                let parent = open_in_root(root, &prefix, true)
                    .map_err(|e| format!("{}: open parent: {e}", dest.display()))?;
                if last && file {
                    // An O_PATH handle cannot create: open the parent for
                    // real, then create the file beneath it.
                    let real = nix::fcntl::openat(
                        parent.as_fd(),
                        ".",
                        OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| format!("{}: {e}", dest.display()))?;
                    nix::fcntl::openat(
                        real.as_fd(),
                        part.as_str(),
                        OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o644),
                    )
                    .map_err(|e| format!("{}: create: {e}", dest.display()))?;
                } else {
                    match mkdirat(
                        parent.as_fd(),
                        part.as_str(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(format!("{}: mkdir: {e}", dest.display())),
                    }
                }
                if last {
                    return open_in_root(root, &here, !file)
                        .map_err(|e| format!("{}: {e}", dest.display()));
                }
            }
            Err(Errno::ENOTDIR) if last && !file => {
                return Err(format!("{}: not a directory", dest.display()))
            }
            Err(e) => return Err(format!("{}: {e}", dest.display())),
        }
        prefix = here;
    }
    open_in_root(root, "", true).map_err(|e| format!("{}: {e}", dest.display()))
}

/// Opens `dest` inside `root` if it exists (no creation); `None` when absent.
pub fn existing(root: &OwnedFd, dest: &Path) -> Result<Option<OwnedFd>, String> {
    let rel = components(dest)?.join("/");
    match open_in_root(root, &rel, false) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(format!("{}: {e}", dest.display())),
    }
}

/// The path through which the kernel mounts onto an open handle.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens a subPath bind mount's source beneath its volume directory
/// (`openat2(RESOLVE_BENEATH)`): a symlink a container put in the volume may
/// lead elsewhere in it, never out of it (the CVE-2021-25741 class). The
/// mount is then made from the handle, so nothing can be swapped in between.
pub fn source_beneath(volume: &Path, source: &Path) -> Result<OwnedFd, String> {
    let rel = source.strip_prefix(volume).map_err(|_| {
        format!(
            "{} is not inside its volume {}",
            source.display(),
            volume.display()
        )
    })?;
    let vol = nix::fcntl::open(
        volume,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open the volume {}: {e}", volume.display()))?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let opened = match openat2(vol.as_fd(), rel, how) {
        // A subPath that does not exist yet is made, as the kubelet does:
        // one directory at a time, each step resolved beneath the volume.
        Err(Errno::ENOENT) => {
            let mut at = PathBuf::new();
            for c in rel.components() {
                let Component::Normal(name) = c else {
                    return Err(format!("subPath {}: not a plain path", rel.display()));
                };
                // The parent, opened beneath the volume; the new directory
                // is made in it by name (mkdir never follows a symlink).
                let parent = if at.as_os_str().is_empty() {
                    vol.try_clone().map_err(|e| e.to_string())?
                } else {
                    openat2(vol.as_fd(), &at, how).map_err(|e| beneath_error(&at, e))?
                };
                match mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(format!("create subPath {}: {e}", rel.display())),
                }
                at.push(name);
            }
            openat2(vol.as_fd(), rel, how)
        }
        other => other,
    };
    opened.map_err(|e| beneath_error(rel, e))
}

fn beneath_error(rel: &Path, e: Errno) -> String {
    match e {
        Errno::EXDEV => format!(
            "subPath {} leads outside its volume (a symlink?): refused",
            rel.display()
        ),
        e => format!("subPath {}: {e}", rel.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse(
            &[
                "nosuid",
                "noexec",
                "rbind",
                "rprivate",
                "ro",
                "mode=755",
                "size=65536k",
            ]
            .map(String::from),
        );
        assert!(o.bind && o.readonly);
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_REC
        );
        assert_eq!(o.propagation, Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC));
        assert_eq!(o.data, "mode=755,size=65536k");
    }

    #[test]
    fn targets_are_created_inside_the_root_and_symlinks_stay_inside() {
        let root_dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // A symlink pointing at the host: resolved inside the root instead.
        std::os::unix::fs::symlink(outside.path(), root_dir.path().join("evil")).unwrap();
        // What the link names, inside the root: where the mount must land.
        let inside = root_dir
            .path()
            .join(outside.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        let root = nix::fcntl::open(
            root_dir.path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let fd = target(&root, Path::new("/evil/sub"), false).unwrap();
        let resolved = std::fs::read_link(fd_path(&fd)).unwrap();
        assert_eq!(
            resolved,
            inside.join("sub"),
            "the symlink was resolved inside the root"
        );
        assert!(
            std::fs::read_dir(outside.path()).unwrap().next().is_none(),
            "nothing created on the host side"
        );
        let f = target(&root, Path::new("/etc/hosts"), true).unwrap();
        assert_eq!(
            std::fs::read_link(fd_path(&f)).unwrap(),
            root_dir.path().join("etc/hosts")
        );
        assert!(target(&root, Path::new("/a/../b"), false).is_err());
    }
}
