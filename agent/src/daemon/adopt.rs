//! Adoption (DESIGN rule 4): at start, the pods an earlier agent left
//! running that are still desired are taken over: the same sandbox, the
//! same address, the same container processes (each checked by its start
//! time), read from the records; everything else of the state dir is
//! removed. `read_pod` is the records-to-state half, on any directory, so it
//! is tested on a temporary one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use specs::plan::PodPlan;

use super::state::{ContainerRun, Pod};
use super::{Agent, DaemonError};
use crate::events::Kind;
use crate::reconcile::{self, ContainerState, Status};
use crate::records::{ContainerRecord, PodRecord, RecordError};
use crate::shim::{Exited, Started};

/// What an earlier agent left of one pod.
#[derive(Debug)]
pub struct Found {
    pub grace: Duration,
    /// When its sandbox was made; none in an older agent's record.
    pub created: Option<std::time::SystemTime>,
    pub containers: Vec<FoundContainer>,
}

#[derive(Debug)]
pub struct FoundContainer {
    pub name: String,
    pub state: ContainerState,
    /// The `imageID` its record kept (none from an older agent's).
    pub image_id: Option<String>,
    /// The running process (none once it has exited).
    pub started: Option<Started>,
    /// Its shim's state dir (`exit.json` arrives there).
    pub state_dir: PathBuf,
}

/// A record of the shape `T`; none when it is of another.
fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Option<T> {
    serde_json::from_value(v).ok()
}

/// The pod `p` as its records in `state_dir` show it, at `now`: none when
/// it has no sandbox record, or one made for another sandbox (the pod
/// changed while no agent ran: it is made again). A container is left out
/// when it has no record, or when its process is gone without an exit
/// record (its shim died): it is started again. Records that cannot be read
/// are left out too, and returned in `unreadable`.
pub fn read_pod(
    state_dir: &Path,
    p: &PodPlan,
    now: Instant,
    unreadable: &mut Vec<RecordError>,
) -> Option<Found> {
    let mut read = |path: PathBuf| -> Option<serde_json::Value> {
        match crate::records::read_value(&path) {
            Ok(v) => v,
            Err(e) => {
                unreadable.push(e);
                None
            }
        }
    };
    let rec: PodRecord = typed(read(super::sandbox::record_path(state_dir, &p.uid))?)?;
    let same = rec.sandbox_hash == reconcile::sandbox_hash(p)
        || rec.sandbox_hash == reconcile::legacy_sandbox_hash(p);
    if !same {
        return None;
    }
    let mut containers = Vec::new();
    for c in p.all_containers() {
        let dir = crate::runtime::container_dir(state_dir, &p.uid, c.name.as_str());
        let Some(crec) = read(dir.join("agent.json")) else {
            continue;
        };
        let Some(crec) = typed::<ContainerRecord>(crec) else {
            continue;
        };
        let state = dir.join("state");
        let (status, started) = if let Some(exit) = read(state.join("exit.json")) {
            // An exit record that is not one is a failure all the same.
            let code = typed::<Exited>(exit).map_or(255, |e| e.exit_code);
            let status = Status::Terminated {
                exit_code: code,
                started: now,
                finished: now,
            };
            (status, None)
        } else if let Some(st) = read(state.join("state.json")).and_then(typed::<Started>) {
            if crate::shim::start_ticks(st.pid) != Some(st.start_ticks) {
                continue; // gone without an exit record (its shim died)
            }
            (Status::Running { since: now }, Some(st))
        } else {
            continue;
        };
        // Resources as they were applied; when they differ from the plan's
        // they are unknown, and the planner resizes.
        let applied = serde_json::to_value(&c.resources).unwrap_or_default();
        let resources = (crec.resources == applied).then(|| c.resources.clone());
        containers.push(FoundContainer {
            name: c.name.to_string(),
            image_id: Some(crec.image_id.clone()).filter(|i| !i.is_empty()),
            state: ContainerState {
                hash: crec.hash,
                resources,
                status,
                restart_count: crec.restart_count,
                crashes: crec.crashes,
                // A start whose pull failed left no run to adopt.
                image_pull_failed: false,
                started: false,
            },
            started,
            state_dir: state,
        });
    }
    Some(Found {
        grace: Duration::from_secs(rec.grace_secs),
        created: (rec.created_ms > 0)
            .then(|| std::time::UNIX_EPOCH + Duration::from_millis(rec.created_ms)),
        containers,
    })
}

impl Agent {
    /// Takes over what a previous agent left running for the pods still
    /// desired; removes the rest (a crash's leftovers, pods deleted while
    /// the agent was away).
    pub(super) fn adopt(&mut self) -> Result<(), DaemonError> {
        let desired = self.sources.desired();
        let mut adopted: Vec<String> = Vec::new();
        let mut shims = Vec::new();
        let now = Instant::now();
        for (key, (_, p)) in &desired.pods {
            let mut unreadable = Vec::new();
            let found = read_pod(&self.args.state_dir, p, now, &mut unreadable);
            for e in unreadable {
                let message = format!("not adopted: {}", crate::error_chain(&e));
                self.event(Kind::Warning, "UnreadableRecord", key, None, message);
            }
            let Some(found) = found else {
                continue;
            };
            let mut run = self
                .make_sandbox(p, true)
                .map_err(|source| DaemonError::Sandbox {
                    pod: key.clone(),
                    source: Box::new(source),
                })?;
            run.grace = found.grace;
            if let Some(created) = found.created {
                run.created = created;
            }
            // A container that runs without a record to adopt it by (the
            // agent was killed between its start and its record) would run
            // twice once the planner starts it again: killed first, and its
            // shim's exit awaited, so that its last writes do not land in
            // the next run's state dir.
            for c in p.all_containers() {
                if found.containers.iter().any(|f| f.name == c.name.as_str()) {
                    continue;
                }
                let dir =
                    crate::runtime::container_dir(&self.args.state_dir, &p.uid, c.name.as_str());
                let state = dir.join("state");
                let live = crate::records::read::<Started>(&state.join("state.json"))
                    .ok()
                    .flatten()
                    .is_some_and(|st| crate::shim::start_ticks(st.pid) == Some(st.start_ticks));
                if live && !state.join("exit.json").exists() {
                    self.kill(key, &p.uid, c.name.as_str());
                    crate::runtime::wait_for_file(&state, "exit.json", Duration::from_secs(5));
                    self.event(
                        Kind::Warning,
                        "Orphaned",
                        key,
                        Some(c.name.as_str()),
                        "running without a record (the previous agent died as it started it): killed, to be started again".into(),
                    );
                }
            }
            for f in found.containers {
                let mut c = ContainerRun::new(f.state);
                c.image_id = f.image_id;
                if let Some(st) = f.started {
                    c.exit_watch = self.watch_exit(key, &f.name, &f.state_dir);
                    if let Some(plan) = p.all_containers().find(|c| c.name.as_str() == f.name) {
                        let mut probes = crate::probe::ContainerProbes::new(plan, now);
                        probes.pid = st.pid;
                        c.probes = Some(probes);
                        c.stop = super::state::StopSpec::of(p, plan);
                    }
                    c.pid = st.pid;
                    c.started_at = Some(st.started_at.clone());
                    shims.push((key.clone(), f.name.clone(), st));
                }
                run.containers.insert(f.name, c);
            }
            self.pods.insert(key.clone(), Pod::Live(run));
            adopted.push(p.uid.clone());
        }
        // Their shims are watched once the pods are known: one that died
        // while the agent was away is handled like one that dies now.
        for (key, name, st) in shims {
            self.watch_shim(&key, &name, &st);
        }
        self.rt
            .gc(&|uid| adopted.iter().any(|a| a == uid))
            .map_err(DaemonError::Gc)?;
        if let Some(n) = &self.net {
            n.gc(&|id| adopted.iter().any(|a| a == id))
                .map_err(DaemonError::NetGc)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 7
  containers:
  - {name: exited, image: busybox}
  - {name: running, image: busybox, resources: {limits: {cpu: 500m}}}
  - {name: resized, image: busybox}
  - {name: shim-died, image: busybox}
  - {name: never-recorded, image: busybox}
  - {name: unreadable, image: busybox}
";

    fn plan(yaml: &str) -> PodPlan {
        let r = specs::load("p.yaml", yaml.as_bytes(), &specs::NodeInfo::default());
        assert!(!r.has_errors(), "{:#?}", r.diagnostics);
        r.pods.into_iter().next().unwrap()
    }

    fn write(path: &Path, v: serde_json::Value) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        crate::records::write(path, &v).unwrap();
    }

    /// The records an agent leaves for `p`, with this test process as the
    /// "running" containers' process.
    fn leave_records(dir: &Path, p: &PodPlan) {
        let pod = super::super::sandbox::record_path(dir, &p.uid);
        write(
            &pod,
            serde_json::json!({"sandbox_hash": reconcile::sandbox_hash(p), "grace_secs": 7}),
        );
        let me = std::process::id() as i32;
        let ticks = crate::shim::start_ticks(me).unwrap();
        for c in p.all_containers() {
            let name = c.name.as_str();
            let cdir = crate::runtime::container_dir(dir, &p.uid, name);
            if name == "never-recorded" {
                continue;
            }
            let mut resources = serde_json::to_value(&c.resources).unwrap();
            if name == "resized" {
                resources["cpu_shares"] = 7.into();
            }
            write(
                &cdir.join("agent.json"),
                serde_json::json!({"hash": c.hash, "resources": resources,
                    "restart_count": 2, "crashes": 1}),
            );
            let started = |ticks: u64| {
                serde_json::json!({"pid": me, "start_ticks": ticks,
                    "started_at": "2026-12-01T00:00:00Z", "warnings": []})
            };
            match name {
                "exited" => write(
                    &cdir.join("state/exit.json"),
                    serde_json::json!({"exit_code": 3, "signal": null, "started_at": null,
                        "finished_at": "2026-12-01T00:00:01Z", "reason": "Error",
                        "message": "", "warnings": []}),
                ),
                "shim-died" => write(&cdir.join("state/state.json"), started(ticks + 1)),
                "unreadable" => {
                    std::fs::create_dir_all(cdir.join("state")).unwrap();
                    std::fs::write(cdir.join("state/state.json"), "{half a rec").unwrap();
                }
                _ => write(&cdir.join("state/state.json"), started(ticks)),
            }
        }
    }

    #[test]
    fn records_become_the_planners_state() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(POD);
        leave_records(dir.path(), &p);
        let now = Instant::now();
        let mut unreadable = Vec::new();
        let found = read_pod(dir.path(), &p, now, &mut unreadable).unwrap();
        assert_eq!(found.grace, Duration::from_secs(7));
        let by_name = |n: &str| found.containers.iter().find(|c| c.name == n);
        let names: Vec<&str> = found.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["exited", "running", "resized"]);
        let exited = by_name("exited").unwrap();
        assert_eq!(
            exited.state.status,
            Status::Terminated {
                exit_code: 3,
                started: now,
                finished: now
            }
        );
        assert!(exited.started.is_none());
        let running = by_name("running").unwrap();
        assert_eq!(running.state.status, Status::Running { since: now });
        assert_eq!((running.state.restart_count, running.state.crashes), (2, 1));
        assert_eq!(
            running.state.resources,
            Some(p.containers[1].resources.clone())
        );
        assert_eq!(
            running.started.as_ref().unwrap().pid,
            std::process::id() as i32
        );
        assert_eq!(running.state.hash, p.containers[1].hash);
        // Applied resources that differ are unknown: the planner resizes.
        assert_eq!(by_name("resized").unwrap().state.resources, None);
        // The broken record is reported, naming its file.
        assert_eq!(unreadable.len(), 1, "{unreadable:?}");
        let e = unreadable[0].to_string();
        let file = format!("containers/{}/unreadable/state/state.json", p.uid);
        assert!(
            e.starts_with(&dir.path().join(file).display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn a_changed_sandbox_or_no_record_is_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(POD);
        let mut unreadable = Vec::new();
        assert!(read_pod(dir.path(), &p, Instant::now(), &mut unreadable).is_none());
        assert!(unreadable.is_empty(), "a missing record is no problem");
        leave_records(dir.path(), &p);
        let changed = plan(&POD.replace("terminationGracePeriodSeconds: 7", "hostIPC: true"));
        assert!(read_pod(dir.path(), &changed, Instant::now(), &mut unreadable).is_none());
    }

    #[test]
    fn a_record_with_the_older_sandbox_hash_is_adopted() {
        // Agents before downward API volumes hashed labels into the sandbox.
        let dir = tempfile::tempdir().unwrap();
        let p = plan(&POD.replace(
            "metadata: {name: web}",
            "metadata: {name: web, labels: {a: b}}",
        ));
        assert_ne!(
            reconcile::sandbox_hash(&p),
            reconcile::legacy_sandbox_hash(&p)
        );
        leave_records(dir.path(), &p);
        let pod = super::super::sandbox::record_path(dir.path(), &p.uid);
        write(
            &pod,
            serde_json::json!({"sandbox_hash": reconcile::legacy_sandbox_hash(&p), "grace_secs": 7}),
        );
        let mut unreadable = Vec::new();
        assert!(read_pod(dir.path(), &p, Instant::now(), &mut unreadable).is_some());
    }
}
