//! The records of the state dir: their types, their version, their read and
//! write.
//!
//! The agent, its shims and `podctl` read small JSON records from the state
//! dir: `pods/<uid>/pod.json` (the sandbox's name and uid) and `agent.json`
//! (`PodRecord`), `containers/<uid>/<name>/agent.json` (`ContainerRecord`)
//! and the shim's `state/{state,exit}.json` (`shim::Started`,
//! `shim::Exited`). Each carries `"version"`; a record without one is from
//! before versioning (version 0) and is read as version 1 is, a field it
//! lacks taking its default. An agent meeting a record from a newer version
//! refuses to start rather than misreading it: it would otherwise take
//! running containers for strangers and remove them.
//!
//! Writes go to a temporary file in the same directory, are fsynced and then
//! renamed into place: a reader sees the old record or the new one, never
//! half of one, also after a crash. Reads are bounded (`MAX_RECORD`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The version this build writes and the newest it reads.
pub const VERSION: u64 = 1;

/// A record larger than this is refused without being read whole.
pub const MAX_RECORD: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: larger than {MAX_RECORD} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{}: record version {found} is newer than this podagent reads ({VERSION}): \
         run the podagent that wrote it, or stop its pods and clear {}",
        path.display(),
        state_dir.display()
    )]
    Newer {
        path: PathBuf,
        found: u64,
        state_dir: PathBuf,
    },
}

/// The agent's record of a pod's sandbox (`pods/<uid>/agent.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// `reconcile::sandbox_hash` of the plan the sandbox was made for.
    pub sandbox_hash: String,
    /// Its `terminationGracePeriodSeconds`.
    #[serde(default = "default_grace")]
    pub grace_secs: u64,
    /// When the sandbox was made, in milliseconds since the epoch (the
    /// pod's start time, which `activeDeadlineSeconds` counts from); 0 in
    /// an older agent's record: unknown.
    #[serde(default)]
    pub created_ms: u64,
}

fn default_grace() -> u64 {
    30
}

/// The agent's record of a container's current run
/// (`containers/<uid>/<name>/agent.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// `ContainerPlan::hash` of the spec it runs.
    #[serde(default)]
    pub hash: String,
    /// The resources applied to its cgroup, as the plan serialises them
    /// (plans are never deserialised: this is compared with the plan's).
    #[serde(default)]
    pub resources: serde_json::Value,
    #[serde(default)]
    pub restart_count: u32,
    #[serde(default)]
    pub crashes: u32,
    /// The image it runs, as the kubelet's `imageID` (kept so that a
    /// restarted agent reports the digest run, not what the tag names now).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_id: String,
}

/// `v` with `"version": VERSION` added (an object; anything else as it is).
pub fn stamped(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("version".into(), VERSION.into());
    }
    v
}

/// Writes a record atomically and durably (temp file in the same
/// directory, fsync, rename), stamped with the record version.
pub fn write(path: &Path, record: &impl Serialize) -> Result<(), RecordError> {
    let json = |source| RecordError::Json {
        path: path.to_path_buf(),
        source,
    };
    let v = serde_json::to_value(record).map_err(json)?;
    let bytes = serde_json::to_vec_pretty(&stamped(v)).map_err(json)?;
    let name = path
        .file_name()
        .map_or_else(|| "record".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RecordError::Io { path, source }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// A record's JSON; none when the file is missing.
pub fn read_value(path: &Path) -> Result<Option<serde_json::Value>, RecordError> {
    read(path)
}

/// A typed record, parsed from the file's bytes (read through the size
/// cap); none when the file is missing.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, RecordError> {
    let io = |source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut bytes = Vec::new();
    f.take(MAX_RECORD + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > MAX_RECORD {
        return Err(RecordError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| RecordError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// A record's version: 0 when it has none.
pub fn version_of(v: &serde_json::Value) -> u64 {
    v["version"].as_u64().unwrap_or(0)
}

/// Every record under `state_dir` is one this build reads; else the first
/// that is not, named, with what to do. Records that cannot be read at all
/// are left to the reader that needs them.
pub fn check(state_dir: &Path) -> Result<(), RecordError> {
    let subdirs = |d: &Path| -> Vec<PathBuf> {
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
        let Ok(Some(v)) = read_value(&f) else {
            continue;
        };
        let found = version_of(&v);
        if found > VERSION {
            return Err(RecordError::Newer {
                path: f,
                found,
                state_dir: state_dir.to_path_buf(),
            });
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
        assert!(check(dir.path()).is_ok());
        std::fs::write(c.join("state.json"), r#"{"version": 2, "pid": 1}"#).unwrap();
        let e = check(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("state/state.json: record version 2 is newer than this podagent reads (1)"),
            "{e}"
        );
    }

    #[test]
    fn a_record_is_written_whole_and_read_back_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        let rec = ContainerRecord {
            hash: "h".into(),
            resources: serde_json::json!({"cpu_shares": 2}),
            restart_count: 3,
            crashes: 1,
            image_id: "docker.io/library/busybox@sha256:ab".into(),
        };
        write(&path, &rec).unwrap();
        assert_eq!(read::<ContainerRecord>(&path).unwrap(), Some(rec));
        let v = read_value(&path).unwrap().unwrap();
        assert_eq!(version_of(&v), VERSION);
        // Nothing but the record is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["agent.json"]);
    }

    #[test]
    fn a_version_0_record_reads_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        std::fs::write(&path, r#"{"sandbox_hash": "abc"}"#).unwrap();
        assert_eq!(
            read::<PodRecord>(&path).unwrap(),
            Some(PodRecord {
                sandbox_hash: "abc".into(),
                grace_secs: 30,
                created_ms: 0,
            })
        );
        std::fs::write(&path, r#"{"hash": "h"}"#).unwrap();
        let c = read::<ContainerRecord>(&path).unwrap().unwrap();
        assert_eq!((c.hash.as_str(), c.restart_count, c.crashes), ("h", 0, 0));
        assert!(c.resources.is_null());
    }

    #[test]
    fn missing_oversized_and_broken_records_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        assert!(matches!(read::<PodRecord>(&path), Ok(None)));
        std::fs::write(&path, vec![b' '; MAX_RECORD as usize + 1]).unwrap();
        assert!(matches!(
            read::<PodRecord>(&path),
            Err(RecordError::TooLarge { .. })
        ));
        std::fs::write(&path, "{not json").unwrap();
        let e = read::<PodRecord>(&path).unwrap_err();
        assert!(matches!(e, RecordError::Json { .. }), "{e}");
        assert!(e.to_string().starts_with(&path.display().to_string()));
        // JSON of another shape is an error too, not a default.
        std::fs::write(&path, r#"{"grace_secs": 5}"#).unwrap();
        assert!(read::<PodRecord>(&path).is_err());
    }

    #[test]
    fn a_failed_write_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone/agent.json");
        let e = write(&path, &serde_json::json!({})).unwrap_err();
        assert!(matches!(e, RecordError::Io { .. }), "{e}");
    }
}
