//! Network namespaces persisted as bind mounts (as `ip netns add` does), and
//! work done from a thread that entered one (DESIGN rule 7).

use std::fs::File;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};

use crate::error::{NetError, Result};

fn sys<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> NetError + 'a {
    move |source| NetError::Sys {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// True when `path` is a mounted network namespace.
pub fn is_netns(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Creates a new network namespace and bind-mounts it at `path`. Idempotent:
/// an existing namespace at `path` is kept. True when it was made now (and so
/// holds nothing but `lo`).
pub fn create(path: &Path) -> Result<bool> {
    if is_netns(path) {
        return Ok(false);
    }
    File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| NetError::Io {
            op: "create netns file",
            path: path.to_path_buf(),
            source,
        })?;
    // unshare(CLONE_NEWNET) moves only the calling thread: a short-lived
    // thread makes the namespace and pins it with the bind mount.
    let p = path.to_path_buf();
    std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(sys("unshare(CLONE_NEWNET) for", &p))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys("bind-mount netns at", &p))
    })
    .join()
    .map_err(|_| NetError::Thread)??;
    Ok(true)
}

/// Unmounts and removes a persisted namespace. Idempotent: nothing there is
/// not an error.
pub fn remove(path: &Path) -> Result<()> {
    if is_netns(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(sys("unmount netns", path))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetError::Io {
            op: "remove netns file",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Runs `f` on a fresh thread; when `ns` is given, the thread enters that
/// network namespace first, so sockets it opens (netlink, TCP) live there. The
/// caller's own thread never changes namespace.
pub fn run_in<T: Send>(ns: Option<&Path>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = match ns {
        Some(p) => Some((
            File::open(p).map_err(|source| NetError::Io {
                op: "open netns",
                path: p.to_path_buf(),
                source,
            })?,
            p,
        )),
        None => None,
    };
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some((fd, p)) = file {
                setns(&fd, CloneFlags::CLONE_NEWNET).map_err(sys("setns into", p))?;
            }
            f()
        })
        .join()
        .map_err(|_| NetError::Thread)?
    })
}
