//! Safe extraction of layer tarballs into a directory of their own.
//!
//! Every entry's path is normalised (`./` and a leading `/` dropped; `..`
//! refused), every ancestor inside the destination must be a real directory
//! (a symlink planted by an earlier entry cannot redirect a later one), and
//! hard links must point inside the destination. OCI whiteouts become
//! overlayfs whiteouts: `.wh.NAME` a 0:0 character device, `.wh..wh..opq` the
//! `trusted.overlay.opaque` xattr on its directory. The caller extracts into a
//! fresh private directory, so nothing else writes there meanwhile.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{mkfifo, Gid, Uid};

use super::{ImageError, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// How entries are written: image layers keep owners, devices and whiteouts;
/// an oci-archive is plain files and directories only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extract {
    Layer,
    PlainFiles,
}

fn bad(entry: &str, why: impl Into<String>) -> ImageError {
    ImageError::HostileEntry {
        entry: entry.to_string(),
        reason: why.into(),
    }
}

/// The entry's path relative to the destination, or an error if it escapes.
pub fn normalise(name: &Path) -> std::result::Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err("contains '..'".into()),
            Component::Prefix(_) => return Err("has a path prefix".into()),
        }
    }
    Ok(out)
}

/// Creates the parents of `rel` under `dest` as directories, refusing to walk
/// through anything that is not a real directory.
fn parents(dest: &Path, rel: &Path, entry: &str) -> Result<()> {
    let mut at = dest.to_path_buf();
    let n = rel.components().count();
    for c in rel.components().take(n.saturating_sub(1)) {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(bad(
                    entry,
                    format!(
                        "its parent {} is a symlink",
                        at.strip_prefix(dest).unwrap_or(&at).display()
                    ),
                ))
            }
            Ok(_) => {
                return Err(bad(
                    entry,
                    format!("its parent {} is not a directory", at.display()),
                ))
            }
            Err(_) => fs::create_dir(&at).map_err(|e| ImageError::io("create", &at, e))?,
        }
    }
    Ok(())
}

/// Removes what is at `p` unless it is a directory (a later entry replaces an
/// earlier one, as tar does).
fn clear(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => fs::remove_file(p).map_err(|e| ImageError::io("replace", p, e)),
        Err(_) => Ok(()),
    }
}

/// Extracts `tar` into `dest` (which must exist and be empty).
pub fn unpack(tar: impl Read, dest: &Path, mode: Extract) -> Result<()> {
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| ImageError::io("read tar", dest, e))?;
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| ImageError::io("read tar entry", dest, e))?;
        let raw = entry
            .path()
            .map_err(|e| ImageError::io("read entry path", dest, e))?
            .into_owned();
        let name = raw.display().to_string();
        let rel = normalise(&raw).map_err(|why| bad(&name, why))?;
        if rel.as_os_str().is_empty() {
            continue; // "./" itself
        }
        parents(dest, &rel, &name)?;
        let file_name = rel
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("")
            .to_string();
        let parent = dest.join(rel.parent().unwrap_or(Path::new("")));
        let header = entry.header().clone();
        let kind = header.entry_type();
        let perm = header.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (
            header.uid().unwrap_or(0) as u32,
            header.gid().unwrap_or(0) as u32,
        );

        if mode == Extract::Layer && file_name == OPAQUE {
            xattr::set(&parent, "trusted.overlay.opaque", b"y")
                .map_err(|e| ImageError::io("mark opaque", &parent, e))?;
            continue;
        }
        if mode == Extract::Layer {
            if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
                let target = parent.join(hidden);
                clear(&target)?;
                mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| ImageError::io("create whiteout", &target, e.into()))?;
                continue;
            }
        }
        let path = dest.join(&rel);
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.file_type().is_dir() => {}
                    Ok(_) => {
                        clear(&path)?;
                        fs::create_dir(&path).map_err(|e| ImageError::io("create", &path, e))?;
                    }
                    Err(_) => {
                        fs::create_dir(&path).map_err(|e| ImageError::io("create", &path, e))?
                    }
                }
                // Directory modes are set at the end: a read-only directory
                // must still receive its entries.
                dirs.push((path.clone(), perm));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                clear(&path)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| ImageError::io("create", &path, e))?;
                std::io::copy(&mut entry, &mut f).map_err(|e| ImageError::io("write", &path, e))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(perm))
                    .map_err(|e| ImageError::io("chmod", &path, e))?;
            }
            T::Symlink if mode == Extract::Layer => {
                let target = entry
                    .link_name()
                    .map_err(|e| ImageError::io("read link", &path, e))?
                    .ok_or_else(|| bad(&name, "symlink without target"))?;
                clear(&path)?;
                // The target is stored as written: it is only ever resolved
                // inside the container's root.
                symlink(&target, &path).map_err(|e| ImageError::io("symlink", &path, e))?;
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| ImageError::io("read link", &path, e))?
                    .ok_or_else(|| bad(&name, "hard link without target"))?;
                let target_rel = normalise(&target)
                    .map_err(|why| bad(&name, format!("hard link target {why}")))?;
                parents(dest, &target_rel, &name)?;
                let source = dest.join(&target_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.file_type().is_dir() => {}
                    _ => {
                        return Err(bad(
                            &name,
                            format!(
                                "hard link target {} is not a file in this layer",
                                target.display()
                            ),
                        ))
                    }
                }
                clear(&path)?;
                fs::hard_link(&source, &path).map_err(|e| ImageError::io("hard link", &path, e))?;
            }
            T::Char | T::Block if mode == Extract::Layer => {
                let dev = makedev(
                    u64::from(header.device_major().ok().flatten().unwrap_or(0)),
                    u64::from(header.device_minor().ok().flatten().unwrap_or(0)),
                );
                let flag = if kind == T::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                clear(&path)?;
                mknod(&path, flag, Mode::from_bits_truncate(perm), dev)
                    .map_err(|e| ImageError::io("mknod", &path, e.into()))?;
            }
            T::Fifo if mode == Extract::Layer => {
                clear(&path)?;
                mkfifo(&path, Mode::from_bits_truncate(perm))
                    .map_err(|e| ImageError::io("mkfifo", &path, e.into()))?;
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            other => return Err(bad(&name, format!("unsupported entry type {other:?}"))),
        }
        if mode == Extract::Layer {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &path,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| ImageError::io("chown", &path, e.into()))?;
            if let Ok(Some(exts)) = entry.pax_extensions() {
                for ext in exts.flatten() {
                    if let (Ok(key), value) = (ext.key(), ext.value_bytes()) {
                        if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                            xattr::set(&path, attr, value)
                                .map_err(|e| ImageError::io("set xattr", &path, e))?;
                        }
                    }
                }
            }
            // chown clears set-id bits: restore the mode of regular files.
            if matches!(kind, T::Regular | T::Continuous) {
                fs::set_permissions(&path, fs::Permissions::from_mode(perm))
                    .map_err(|e| ImageError::io("chmod", &path, e))?;
            }
        }
    }
    for (dir, perm) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(perm))
            .map_err(|e| ImageError::io("chmod", &dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_and_parent_components_refused() {
        assert_eq!(normalise(Path::new("./a/b")).unwrap(), PathBuf::from("a/b"));
        assert_eq!(
            normalise(Path::new("/etc/passwd")).unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert!(normalise(Path::new("a/../../x")).is_err());
    }
}
