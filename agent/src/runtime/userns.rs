//! The node's pool of id ranges for pods with `hostUsers: false`, as the
//! kubelet's user namespace manager: each such pod gets 65536 host ids of
//! its own (its ids 0-65535), from 65536 up, never those of another pod of
//! the node. A claim is a file `userns/<first id>` holding the pod's uid,
//! made with `O_EXCL`, so two pods never hold one range; it lasts as long
//! as the pod's sandbox (removed with it, or by GC when its pod is gone),
//! and survives the agent's restarts.

use std::io::Write;
use std::path::Path;

use super::{io, RuntimeError};

/// The node's own ids are below the first range.
pub const FIRST: u32 = 1 << 16;
/// Ranges up to the end of the 32-bit id space.
const RANGES: u32 = u32::MAX / specs::oci::USER_NS_SIZE - 1;

fn dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("userns")
}

/// Each claim: its first id and its pod's uid.
fn claims(state_dir: &Path) -> Vec<(u32, String)> {
    std::fs::read_dir(dir(state_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let base = e.file_name().to_str()?.parse().ok()?;
            let uid = std::fs::read_to_string(e.path()).ok()?;
            Some((base, uid.trim().to_string()))
        })
        .collect()
}

/// The range of pod `uid`: its claim, or the lowest free one, claimed now.
pub fn claim(state_dir: &Path, uid: &str) -> Result<u32, RuntimeError> {
    let held = claims(state_dir);
    if let Some((base, _)) = held.iter().find(|(_, u)| u == uid) {
        return Ok(*base);
    }
    let d = dir(state_dir);
    std::fs::create_dir_all(&d).map_err(io("create", &d))?;
    for k in 0..RANGES {
        let base = FIRST + k * specs::oci::USER_NS_SIZE;
        if held.iter().any(|(b, _)| *b == base) {
            continue;
        }
        let path = d.join(base.to_string());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(uid.as_bytes()).map_err(io("write", &path))?;
                f.sync_all().map_err(io("sync", &path))?;
                return Ok(base);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("create", &path)(e)),
        }
    }
    Err(RuntimeError::StartError {
        container: "user namespace".into(),
        message: "every id range of the node is taken".into(),
    })
}

/// Gives back the ranges held by pods `known` does not know.
pub fn release(state_dir: &Path, known: &dyn Fn(&str) -> bool) -> Result<(), RuntimeError> {
    for (base, uid) in claims(state_dir) {
        if !known(&uid) {
            let path = dir(state_dir).join(base.to_string());
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("remove", &path)(e))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pod_keeps_its_own_range_until_it_is_released() {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path();
        let a = claim(s, "pod-a").unwrap();
        let b = claim(s, "pod-b").unwrap();
        assert_eq!((a, b), (65536, 131072));
        assert_eq!(claim(s, "pod-a").unwrap(), a, "the same claim again");
        release(s, &|u| u != "pod-a").unwrap();
        assert_eq!(
            claim(s, "pod-c").unwrap(),
            a,
            "the freed range, lowest first"
        );
        assert_eq!(claim(s, "pod-b").unwrap(), b);
    }
}
