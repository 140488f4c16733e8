//! The version every record in the state dir carries.
//!
//! The agent, its shims and `podctl` read small JSON records from the state
//! dir (`pods/<uid>/{pod,agent}.json`, `containers/<uid>/<name>/agent.json`
//! and the shim's `state/{state,exit}.json`). Each carries `"version"`; a
//! record without one is from before versioning (version 0) and is read
//! field by field with defaults, as version 1 is. An agent meeting a record
//! from a newer version refuses to start rather than misreading it: it
//! would otherwise take running containers for strangers and remove them.

use std::path::Path;

/// The version this build writes and the newest it reads.
pub const VERSION: u64 = 1;

/// `v` with `"version": VERSION` added (an object; anything else as it is).
pub fn stamped(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("version".into(), VERSION.into());
    }
    v
}

/// Writes a small JSON record atomically (temp file, rename), stamped with
/// the record version.
pub fn write(path: &Path, v: serde_json::Value) {
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, stamped(v).to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// A record as JSON; none when it is missing, over 1 MiB or not JSON.
pub fn read(path: &Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() > 1 << 20 {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// A record's version: 0 when it has none.
pub fn version_of(v: &serde_json::Value) -> u64 {
    v["version"].as_u64().unwrap_or(0)
}

/// Every record under `state_dir` is one this build reads; else the first
/// that is not, named, with what to do.
pub fn check(state_dir: &Path) -> Result<(), String> {
    let subdirs = |d: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect()
    };
    let mut files = Vec::new();
    for pod in subdirs(&state_dir.join("pods")) {
        files.push(pod.join("pod.json"));
        files.push(pod.join("agent.json"));
    }
    for pod in subdirs(&state_dir.join("containers")) {
        for c in subdirs(&pod) {
            files.push(c.join("agent.json"));
            files.push(c.join("state/state.json"));
            files.push(c.join("state/exit.json"));
        }
    }
    for f in files {
        let Some(v) = read(&f) else {
            continue;
        };
        let found = version_of(&v);
        if found > VERSION {
            return Err(format!(
                "{}: record version {found} is newer than this podagent reads ({VERSION}): \
                 run the podagent that wrote it, or stop its pods and clear {}",
                f.display(),
                state_dir.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_stamped_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("containers/u1/app/state");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::create_dir_all(dir.path().join("pods/u1")).unwrap();
        let v = stamped(serde_json::json!({"sandbox_hash": "x"}));
        assert_eq!(version_of(&v), VERSION);
        std::fs::write(dir.path().join("pods/u1/agent.json"), v.to_string()).unwrap();
        // Before versioning: no field, read as version 0.
        std::fs::write(c.join("exit.json"), r#"{"exit_code": 0}"#).unwrap();
        assert_eq!(check(dir.path()), Ok(()));
        std::fs::write(c.join("state.json"), r#"{"version": 2, "pid": 1}"#).unwrap();
        let e = check(dir.path()).unwrap_err();
        assert!(
            e.contains("state/state.json: record version 2 is newer than this podagent reads (1)"),
            "{e}"
        );
    }
}
