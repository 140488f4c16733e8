//! Local ephemeral storage limits, as the kubelet's eviction manager
//! (`localStorageEviction`) enforces them: every 10 s the usage of each pod
//! that has a limit is measured on a thread (a walk of its directories can
//! take long; the loop does not wait), and a pod over one is evicted:
//! - an emptyDir on disk over its `sizeLimit` (a memory one is bounded by
//!   its tmpfs already);
//! - the pod over the sum of its containers' `ephemeral-storage` limits
//!   (when every container has one): their writable layers and logs, and
//!   its emptyDirs on disk;
//! - a container over its own limit: its writable layer and logs.
//!
//! Evicted, as the kubelet does: a Warning `Evicted` event with the
//! kubelet's message, every container stopped with a 2 s grace period and
//! no preStop hook, nothing started again, and the pod Failed with reason
//! `Evicted` until its file changes or goes.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use specs::plan::{PodPlan, VolumeSource};

use super::state::Pod;
use super::Agent;
use crate::events::Kind;
use crate::reconcile::Status;

/// The kubelet's housekeeping interval.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// What the measuring thread needs of one pod.
#[derive(Debug)]
struct Measure {
    key: String,
    uid: String,
    /// Each container: its name, limit, and what counts (its writable
    /// layer and its logs).
    containers: Vec<(String, Option<u64>, Vec<PathBuf>)>,
    /// Each emptyDir on disk: its name, `sizeLimit`, directory.
    volumes: Vec<(String, Option<u64>, PathBuf)>,
}

/// A pod to evict, and the kubelet's words for why.
#[derive(Debug)]
pub struct Eviction {
    key: String,
    uid: String,
    message: String,
}

/// The measurement in flight and when the next begins. Its thread sends
/// its findings on the channel, then wakes the loop.
#[derive(Debug)]
pub struct StorageCheck {
    pub next_at: Instant,
    running: bool,
    tx: Sender<Vec<Eviction>>,
    rx: Receiver<Vec<Eviction>>,
}

impl StorageCheck {
    pub fn new() -> Self {
        let (tx, rx) = channel();
        StorageCheck {
            next_at: Instant::now() + INTERVAL,
            running: false,
            tx,
            rx,
        }
    }
}

/// A byte count as a Kubernetes quantity, as the kubelet prints a limit.
fn quantity(b: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if b >= size && b % size == 0 {
            return format!("{}{unit}", b / size);
        }
    }
    b.to_string()
}

/// Disk usage of `p` as `du` counts it: allocated blocks, each inode once,
/// symlinks not followed, other filesystems not entered.
pub fn disk_usage(p: &Path) -> u64 {
    fn walk(p: &Path, dev: u64, seen: &mut HashSet<(u64, u64)>, depth: usize) -> u64 {
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if md.dev() != dev || !seen.insert((md.dev(), md.ino())) {
            return 0;
        }
        let mut total = md.blocks() * 512;
        if md.is_dir() && depth < 256 {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                total += walk(&e.path(), dev, seen, depth + 1);
            }
        }
        total
    }
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    walk(p, md.dev(), &mut HashSet::new(), 0)
}

/// The first limit a pod is over, in the kubelet's words.
fn over(m: &Measure) -> Option<String> {
    let mut pod_usage = 0;
    for (name, limit, dir) in &m.volumes {
        let used = disk_usage(dir);
        pod_usage += used;
        if limit.is_some_and(|l| used > l) {
            let l = quantity(limit.unwrap_or_default());
            return Some(format!(
                "Usage of EmptyDir volume {name:?} exceeds the limit {l:?}. "
            ));
        }
    }
    let mut per_container = Vec::new();
    for (name, limit, paths) in &m.containers {
        let used: u64 = paths.iter().map(|p| disk_usage(p)).sum();
        pod_usage += used;
        per_container.push((name, *limit, used));
    }
    let limits: Option<Vec<u64>> = m.containers.iter().map(|(_, l, _)| *l).collect();
    if let Some(total) = limits.map(|l| l.iter().sum::<u64>()) {
        if pod_usage > total {
            return Some(format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
                quantity(total)
            ));
        }
    }
    per_container.into_iter().find_map(|(name, limit, used)| {
        let l = limit.filter(|l| used > *l)?;
        Some(format!(
            "Container {name} exceeded its local ephemeral storage limit {:?}. ",
            quantity(l)
        ))
    })
}

/// What counts towards a container's use: its writable layer and its logs.
fn container_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.join("upper")];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("container.log") || n.starts_with("previous.log") {
            out.push(e.path());
        }
    }
    out
}

/// A pod with an ephemeral-storage limit or a disk emptyDir `sizeLimit`:
/// one to measure (and for the loop to wake for).
pub fn has_limit(p: &PodPlan) -> bool {
    p.all_containers()
        .any(|c| c.resources.ephemeral_storage_limit_bytes.is_some())
        || p.volumes.iter().any(|v| {
            matches!(
                v.source,
                VolumeSource::EmptyDir {
                    memory: false,
                    size_limit_bytes: Some(_)
                }
            )
        })
}

fn measure_of(state_dir: &Path, key: &str, p: &PodPlan) -> Option<Measure> {
    if !has_limit(p) {
        return None;
    }
    let volumes: Vec<(String, Option<u64>, PathBuf)> = p
        .volumes
        .iter()
        .filter_map(|v| match v.source {
            VolumeSource::EmptyDir {
                memory: false,
                size_limit_bytes,
            } => Some((
                v.name.clone(),
                size_limit_bytes,
                state_dir
                    .join("pods")
                    .join(&p.uid)
                    .join("volumes")
                    .join(&v.name),
            )),
            _ => None,
        })
        .collect();
    let containers: Vec<(String, Option<u64>, Vec<PathBuf>)> = p
        .all_containers()
        .map(|c| {
            let dir = crate::runtime::container_dir(state_dir, &p.uid, c.name.as_str());
            (
                c.name.to_string(),
                c.resources.ephemeral_storage_limit_bytes,
                container_paths(&dir),
            )
        })
        .collect();
    Some(Measure {
        key: key.to_string(),
        uid: p.uid.clone(),
        containers,
        volumes,
    })
}

impl Agent {
    /// Starts a measurement when one is due and none runs.
    pub(super) fn check_storage(&mut self) {
        let now = Instant::now();
        if now < self.storage.next_at || self.storage.running {
            return;
        }
        self.storage.next_at = now + INTERVAL;
        let measures: Vec<Measure> = self
            .pods
            .iter()
            .filter_map(|(key, pod)| {
                let Pod::Live(run) = pod else { return None };
                if run.evicted.is_some() || run.deadline_exceeded {
                    return None;
                }
                let p = self.sources.pod(key).filter(|p| p.uid == run.uid)?;
                measure_of(&self.args.state_dir, key, p)
            })
            .collect();
        if measures.is_empty() {
            return;
        }
        let wake = self.wake.1.try_clone();
        let tx = self.storage.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || {
                let out: Vec<Eviction> = measures
                    .iter()
                    .filter_map(|m| {
                        Some(Eviction {
                            key: m.key.clone(),
                            uid: m.uid.clone(),
                            message: over(m)?,
                        })
                    })
                    .collect();
                // The loop is gone only when the agent exits.
                let _ = tx.send(out);
                if let Ok(mut w) = wake {
                    use std::io::Write;
                    // A full socket already wakes the loop.
                    let _ = w.write_all(b"s");
                }
            });
        // No thread now: measured at the next interval.
        self.storage.running = spawned.is_ok();
    }

    /// Evicts the pods a finished measurement found over a limit.
    pub(super) fn storage_results(&mut self) {
        while let Ok(found) = self.storage.rx.try_recv() {
            self.storage.running = false;
            for e in found {
                self.evict(&e.key, &e.uid, e.message);
            }
        }
    }

    /// The kubelet's eviction: the event, every running container stopped
    /// with a 2 s grace period and no preStop hook, nothing started again.
    fn evict(&mut self, key: &str, uid: &str, message: String) {
        let Some(Pod::Live(run)) = self.pods.get_mut(key) else {
            return;
        };
        if run.uid != uid || run.evicted.is_some() {
            return;
        }
        run.evicted = Some(message.clone());
        self.event(Kind::Warning, "Evicted", key, None, message);
        self.stop_evicted(key);
    }

    /// Stops what runs of an evicted pod (a start in flight is stopped
    /// once it runs, at the next pass): its signal now, SIGKILL 2 s later,
    /// no preStop hook.
    pub(super) fn stop_evicted(&mut self, key: &str) {
        let state_dir = self.args.state_dir.clone();
        let Some(Pod::Live(run)) = self.pods.get_mut(key) else {
            return;
        };
        if run.evicted.is_none() {
            return;
        }
        let now = Instant::now();
        for (name, c) in run.containers.iter_mut() {
            let running = matches!(
                c.state.status,
                Status::Running { .. } | Status::Stopping { .. } | Status::Starting
            );
            if !running
                || c.kill_at.is_some()
                || self.starter.is_starting(&(key.to_string(), name.clone()))
            {
                continue;
            }
            c.probes = None;
            c.hook = None;
            c.kill_at = Some(now + super::hooks::MIN_GRACE);
            let dir = crate::runtime::container_dir(&state_dir, &run.uid, name).join("state");
            crate::runtime::signal_init(&dir, c.stop.signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_counted_by_blocks_once_per_inode_and_limits_are_named_as_the_kubelet_does() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir(d.join("upper")).unwrap();
        std::fs::write(d.join("upper/big"), vec![1u8; 256 << 10]).unwrap();
        std::fs::hard_link(d.join("upper/big"), d.join("upper/again")).unwrap();
        std::os::unix::fs::symlink("/", d.join("upper/root")).unwrap();
        let used = disk_usage(&d.join("upper"));
        assert!((256 << 10..300 << 10).contains(&used), "{used}");
        let m = |limit: Option<u64>, volume: Option<u64>| Measure {
            key: "default/p".into(),
            uid: "u".into(),
            containers: vec![("c".into(), limit, vec![d.join("upper")])],
            volumes: vec![("scratch".into(), volume, d.join("none"))],
        };
        assert_eq!(over(&m(Some(1 << 20), None)), None);
        assert_eq!(
            over(&m(Some(128 << 10), None)).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 128Ki. ")
        );
        assert_eq!(quantity(1 << 20), "1Mi");
        assert_eq!(quantity(1000), "1000");
        assert_eq!(over(&m(None, Some(0))), None, "an empty dir uses nothing");
    }
}
