//! The kubelet's static CPU manager policy (`--cpu-manager-policy static`):
//! each app container of a Guaranteed pod whose CPU request is a whole number
//! gets that many CPUs of its own, taken from the shared pool; every other
//! container runs on the shared pool (the online CPUs less every exclusive
//! assignment). `--reserved-cpus` are never given exclusively (they stay in
//! the shared pool, for the system and the shared containers, as with the
//! kubelet). A container pinned by the `cpuset.podagent.io` annotation keeps
//! its CPUs, which may not overlap an exclusive assignment (and are not
//! given exclusively while it runs).
//!
//! The assignments are persisted in the state dir (`cpu_manager.json`, a
//! record written atomically) before any cgroup is written, kept across the
//! container's restarts and the agent's, and released when the pod is
//! removed. The caller holds [`CpuManager::lock`] across a placement and the
//! cgroup writes it implies, so that two starts cannot race a pool change.
//!
//! Not as the kubelet: CPUs are taken lowest-numbered first, not by topology
//! (whole cores, then sockets); init containers run in the shared pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use specs::cpuset::CpuSet;
use specs::plan::{ContainerPlan, PodPlan, QosClass};

use crate::records::RecordError;

/// The state file's name in the state dir.
pub const STATE_FILE: &str = "cpu_manager.json";

#[derive(Debug, thiserror::Error)]
pub enum CpuManagerError {
    #[error(
        "not enough exclusive CPUs for {container}: it needs {wanted}, {free} free \
         (online {online}, reserved {reserved}, assigned {assigned})"
    )]
    NotEnough {
        container: String,
        wanted: usize,
        free: usize,
        online: String,
        reserved: String,
        assigned: String,
    },
    #[error(
        "{container}: cpuset.podagent.io asks for CPUs {cpus:?}, assigned exclusively to {owner}"
    )]
    PinnedOnExclusive {
        container: String,
        cpus: Vec<u32>,
        owner: String,
    },
    #[error("--reserved-cpus {reserved}: CPUs {missing:?} are not online (online: {online})")]
    ReservedOffline {
        reserved: String,
        missing: Vec<u32>,
        online: String,
    },
    #[error(
        "{} was written with reserved CPUs {recorded:?}, the agent now has {now:?}: \
         stop the pods and remove the file to change the reservation",
        file.display()
    )]
    ReservedChanged {
        file: PathBuf,
        recorded: String,
        now: String,
    },
    #[error("the CPU manager's state")]
    Record(#[from] RecordError),
}

/// Where a container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// CPUs of its own; its CFS quota is dropped (the kubelet's
    /// `DisableCPUQuotaWithExclusiveCPUs`, on by default).
    Exclusive(CpuSet),
    /// The shared pool.
    Shared(CpuSet),
    /// Its own annotation's CPUs.
    Pinned(CpuSet),
}

impl Placement {
    pub fn cpus(&self) -> &CpuSet {
        match self {
            Placement::Exclusive(s) | Placement::Shared(s) | Placement::Pinned(s) => s,
        }
    }
}

/// The persisted assignments, by pod uid and container name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignments {
    #[serde(default)]
    pub reserved: String,
    #[serde(default)]
    pub exclusive: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub pinned: BTreeMap<String, BTreeMap<String, String>>,
}

impl Assignments {
    fn cpus_of(map: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<(String, String, CpuSet)> {
        map.iter()
            .flat_map(|(uid, cs)| {
                cs.iter().filter_map(move |(name, set)| {
                    Some((uid.clone(), name.clone(), CpuSet::parse(set).ok()?))
                })
            })
            .collect()
    }

    fn exclusive_cpus(&self) -> Vec<u32> {
        let mut all: Vec<u32> = Self::cpus_of(&self.exclusive)
            .iter()
            .flat_map(|(_, _, s)| s.iter().collect::<Vec<_>>())
            .collect();
        all.sort_unstable();
        all
    }

    fn get(
        map: &BTreeMap<String, BTreeMap<String, String>>,
        uid: &str,
        name: &str,
    ) -> Option<CpuSet> {
        map.get(uid)
            .and_then(|cs| cs.get(name))
            .and_then(|s| CpuSet::parse(s).ok())
    }

    /// Whether `(uid, name)` runs on CPUs of its own choosing or its own.
    pub fn is_fixed(&self, uid: &str, name: &str) -> bool {
        Self::get(&self.exclusive, uid, name).is_some()
            || Self::get(&self.pinned, uid, name).is_some()
    }
}

/// How many CPUs of its own a container gets under the static policy:
/// app containers of Guaranteed pods with a whole-number CPU request, unless
/// an annotation pins them.
pub fn exclusive_count(pod: &PodPlan, c: &ContainerPlan) -> Option<usize> {
    let milli = c.resources.cpu_request_milli;
    let app = pod.containers.iter().any(|a| a.name == c.name);
    let eligible = app
        && c.resources.cpuset.is_none()
        && pod.qos_class == QosClass::Guaranteed
        && milli > 0
        && milli % 1000 == 0;
    eligible.then_some((milli / 1000) as usize)
}

/// Drops `(uid, name)` from a map of assignments (and its pod when empty).
fn remove(map: &mut BTreeMap<String, BTreeMap<String, String>>, uid: &str, name: &str) {
    if let Some(cs) = map.get_mut(uid) {
        cs.remove(name);
        if cs.is_empty() {
            map.remove(uid);
        }
    }
}

#[derive(Debug)]
pub struct CpuManager {
    file: PathBuf,
    online: CpuSet,
    reserved: CpuSet,
    state: Mutex<Assignments>,
}

impl CpuManager {
    /// The manager of `online` CPUs with `reserved` kept for the system,
    /// restored from `state_dir`'s record (refused if it was written with
    /// another reservation, as the kubelet refuses a changed checkpoint).
    pub fn open(
        state_dir: &Path,
        online: CpuSet,
        reserved: CpuSet,
    ) -> Result<CpuManager, CpuManagerError> {
        let missing = reserved.difference(&online);
        if !missing.is_empty() {
            return Err(CpuManagerError::ReservedOffline {
                reserved: reserved.to_string(),
                missing,
                online: online.to_string(),
            });
        }
        let file = state_dir.join(STATE_FILE);
        let mut state: Assignments = crate::records::read(&file)?.unwrap_or_default();
        if state.reserved.is_empty() {
            state.reserved = reserved.to_string();
        } else if state.reserved != reserved.to_string() {
            return Err(CpuManagerError::ReservedChanged {
                file,
                recorded: state.reserved,
                now: reserved.to_string(),
            });
        }
        Ok(CpuManager {
            file,
            online,
            reserved,
            state: Mutex::new(state),
        })
    }

    /// Held across a placement and the cgroup writes it implies.
    pub fn lock(&self) -> MutexGuard<'_, Assignments> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared pool: the online CPUs no container holds exclusively.
    pub fn shared_pool(&self, a: &Assignments) -> CpuSet {
        let taken = a.exclusive_cpus();
        CpuSet::from_cpus(self.online.iter().filter(|c| !taken.contains(c)))
            // The reservation is never assigned, so the pool is never empty.
            .unwrap_or_else(|| self.reserved.clone())
    }

    fn save(&self, a: &Assignments) -> Result<(), CpuManagerError> {
        crate::records::write(&self.file, a)?;
        Ok(())
    }

    /// Where container `c` of `pod` runs. The first exclusive container of a
    /// pod to start assigns CPUs to every exclusive app container of the pod
    /// at once, all or none (the kubelet admits a pod whole: no half-placed
    /// pod holds CPUs another waits for); an assignment of the right size is
    /// kept across restarts. Returns the placement and whether the shared
    /// pool changed. The record is written before anything is returned.
    pub fn place(
        &self,
        a: &mut Assignments,
        pod: &PodPlan,
        c: &ContainerPlan,
    ) -> Result<(Placement, bool), CpuManagerError> {
        let uid = pod.uid.as_str();
        let name = c.name.as_str();
        let shown = format!("{}/{}:{}", pod.namespace, pod.name, name);
        // Work on a copy: `a` changes only once the record holds the change.
        let mut next = a.clone();
        let held = Assignments::get(&a.exclusive, uid, name);
        let placement = if let Some(pin) = &c.resources.cpuset {
            let owner = Assignments::cpus_of(&a.exclusive)
                .into_iter()
                .find(|(u, n, s)| (u != uid || n != name) && s.iter().any(|cpu| pin.contains(cpu)));
            if let Some((u, n, s)) = owner {
                return Err(CpuManagerError::PinnedOnExclusive {
                    container: shown,
                    cpus: pin.iter().filter(|cpu| s.contains(*cpu)).collect(),
                    owner: format!("pod {u} container {n}"),
                });
            }
            remove(&mut next.exclusive, uid, name);
            next.pinned
                .entry(uid.to_string())
                .or_default()
                .insert(name.to_string(), pin.to_string());
            Placement::Pinned(pin.clone())
        } else if let Some(wanted) = exclusive_count(pod, c) {
            remove(&mut next.pinned, uid, name);
            match held {
                Some(mine) if mine.len() == wanted => Placement::Exclusive(mine),
                _ => Placement::Exclusive(
                    self.admit(&mut next, pod, &shown)?
                        .remove(name)
                        .unwrap_or_else(|| {
                            unreachable!("admit assigns every exclusive container of the pod")
                        }),
                ),
            }
        } else {
            // No longer exclusive or pinned (a restart after a change): what
            // it held goes back.
            remove(&mut next.exclusive, uid, name);
            remove(&mut next.pinned, uid, name);
            Placement::Shared(self.shared_pool(&next))
        };
        let pool_changed = next.exclusive != a.exclusive;
        if next != *a {
            self.save(&next)?;
            *a = next;
        }
        let placement = match placement {
            Placement::Shared(_) => Placement::Shared(self.shared_pool(a)),
            p => p,
        };
        Ok((placement, pool_changed))
    }

    /// Assigns CPUs to every exclusive app container of `pod` without an
    /// assignment of the right size, all or none, lowest first: never
    /// reserved, pinned or another's. Returns the new assignments (those
    /// already right keep theirs).
    fn admit(
        &self,
        a: &mut Assignments,
        pod: &PodPlan,
        shown: &str,
    ) -> Result<BTreeMap<String, CpuSet>, CpuManagerError> {
        let uid = pod.uid.as_str();
        let wanting: Vec<(String, usize)> = pod
            .containers
            .iter()
            .filter_map(|c| Some((c.name.to_string(), exclusive_count(pod, c)?)))
            .filter(|(n, w)| Assignments::get(&a.exclusive, uid, n).is_none_or(|s| s.len() != *w))
            .collect();
        for (n, _) in &wanting {
            remove(&mut a.exclusive, uid, n);
        }
        let pinned: Vec<u32> = Assignments::cpus_of(&a.pinned)
            .iter()
            .flat_map(|(_, _, s)| s.iter().collect::<Vec<_>>())
            .collect();
        let mut free = self
            .shared_pool(a)
            .iter()
            .filter(|cpu| !self.reserved.contains(*cpu) && !pinned.contains(cpu))
            .collect::<Vec<u32>>()
            .into_iter();
        let total: usize = wanting.iter().map(|(_, w)| w).sum();
        if free.len() < total {
            return Err(CpuManagerError::NotEnough {
                container: if wanting.len() > 1 {
                    format!("{shown} and the rest of its pod")
                } else {
                    shown.to_string()
                },
                wanted: total,
                free: free.len(),
                online: self.online.to_string(),
                reserved: self.reserved.to_string(),
                assigned: CpuSet::from_cpus(a.exclusive_cpus())
                    .map_or("none".into(), |s| s.to_string()),
            });
        }
        let mut out = BTreeMap::new();
        for (n, w) in wanting {
            let set =
                CpuSet::from_cpus(free.by_ref().take(w)).expect("a count is at least one CPU");
            a.exclusive
                .entry(uid.to_string())
                .or_default()
                .insert(n.clone(), set.to_string());
            out.insert(n, set);
        }
        Ok(out)
    }

    /// Whether `(uid, name)` holds CPUs of its own, and how many.
    pub fn exclusive_of(&self, a: &Assignments, uid: &str, name: &str) -> Option<CpuSet> {
        Assignments::get(&a.exclusive, uid, name)
    }

    /// The annotation's CPUs `(uid, name)` was placed on, if pinned.
    pub fn pinned_of(&self, a: &Assignments, uid: &str, name: &str) -> Option<CpuSet> {
        Assignments::get(&a.pinned, uid, name)
    }

    /// Forgets every pod `keep` does not name (removed, or not adopted);
    /// returns whether the shared pool changed.
    pub fn retain(
        &self,
        a: &mut Assignments,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<bool, CpuManagerError> {
        let mut next = a.clone();
        next.exclusive.retain(|uid, _| keep(uid));
        next.pinned.retain(|uid, _| keep(uid));
        if next == *a {
            return Ok(false);
        }
        self.save(&next)?;
        let changed = next.exclusive != a.exclusive;
        *a = next;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> PodPlan {
        let r = specs::load("p.yaml", yaml.as_bytes(), &specs::NodeInfo::default());
        assert!(!r.has_errors(), "{:?}", r.diagnostics);
        r.pods.into_iter().next().unwrap()
    }

    fn guaranteed(name: &str, cpu: &str) -> PodPlan {
        pod(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - {{name: c, image: busybox, resources: {{limits: {{cpu: '{cpu}', memory: 64Mi}}}}}}\n"
        ))
    }

    fn set(s: &str) -> CpuSet {
        CpuSet::parse(s).unwrap()
    }

    #[test]
    fn whole_cpus_of_guaranteed_pods_are_exclusive_and_the_rest_share_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let m = CpuManager::open(dir.path(), set("0-3"), set("0")).unwrap();
        let mut a = m.lock();
        let db = guaranteed("db", "2");
        let (p, changed) = m.place(&mut a, &db, &db.containers[0]).unwrap();
        assert_eq!((p, changed), (Placement::Exclusive(set("1-2")), true));
        // A restart keeps them; the pool is what is left, reserved included.
        let (p, changed) = m.place(&mut a, &db, &db.containers[0]).unwrap();
        assert_eq!((p, changed), (Placement::Exclusive(set("1-2")), false));
        let web = pod("apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: c, image: busybox, resources: {requests: {cpu: 500m}}}\n");
        assert_eq!(
            m.place(&mut a, &web, &web.containers[0]).unwrap(),
            (Placement::Shared(set("0,3")), false)
        );
        // 1.5 CPUs: Guaranteed but not whole, shared.
        let half = guaranteed("half", "1500m");
        assert_eq!(
            m.place(&mut a, &half, &half.containers[0]).unwrap().0,
            Placement::Shared(set("0,3"))
        );
        // Only CPU 3 is left to give (0 is reserved).
        let big = guaranteed("big", "2");
        let e = m.place(&mut a, &big, &big.containers[0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not enough exclusive CPUs for default/big:c: it needs 2, 1 free (online 0-3, reserved 0, assigned 1-2)"
        );
        drop(a);

        // Restored by a new manager from the record; a changed reservation
        // is refused.
        let m2 = CpuManager::open(dir.path(), set("0-3"), set("0")).unwrap();
        let mut a2 = m2.lock();
        assert_eq!(m2.shared_pool(&a2), set("0,3"));
        assert!(CpuManager::open(dir.path(), set("0-3"), set("0-1"))
            .unwrap_err()
            .to_string()
            .contains("was written with reserved CPUs \"0\""));
        // Removing the pod gives its CPUs back.
        assert!(m2.retain(&mut a2, &|uid| uid != db.uid).unwrap());
        assert_eq!(m2.shared_pool(&a2), set("0-3"));
    }

    #[test]
    fn a_pod_is_admitted_whole_and_a_container_no_longer_exclusive_gives_its_cpus_back() {
        let dir = tempfile::tempdir().unwrap();
        let m = CpuManager::open(dir.path(), set("0-3"), set("0")).unwrap();
        let mut a = m.lock();
        let two = |name: &str, cpus: [&str; 2]| {
            pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - {{name: a, image: busybox, resources: {{limits: {{cpu: '{}', memory: 64Mi}}}}}}\n  - {{name: b, image: busybox, resources: {{limits: {{cpu: '{}', memory: 64Mi}}}}}}\n",
                cpus[0], cpus[1]
            ))
        };
        // 2 + 2 do not fit in the 3 free CPUs: neither container gets any.
        let big = two("big", ["2", "2"]);
        let e = m.place(&mut a, &big, &big.containers[0]).unwrap_err();
        assert!(
            e.to_string()
                .contains("default/big:a and the rest of its pod: it needs 4, 3 free"),
            "{e}"
        );
        assert_eq!(m.shared_pool(&a), set("0-3"));
        // 1 + 2 fit: the first start places both.
        let fits = two("fits", ["1", "2"]);
        assert_eq!(
            m.place(&mut a, &fits, &fits.containers[0]).unwrap(),
            (Placement::Exclusive(set("1")), true)
        );
        assert_eq!(m.exclusive_of(&a, &fits.uid, "b"), Some(set("2-3")));
        assert_eq!(
            m.place(&mut a, &fits, &fits.containers[1]).unwrap(),
            (Placement::Exclusive(set("2-3")), false)
        );
        // Restarted as 1500m (no longer whole): shared, and its CPUs back.
        // (The uid follows from the name.)
        let changed = two("fits", ["1", "1500m"]);
        assert_eq!(changed.uid, fits.uid);
        assert_eq!(
            m.place(&mut a, &changed, &changed.containers[1]).unwrap(),
            (Placement::Shared(set("0,2-3")), true)
        );
        assert_eq!(m.exclusive_of(&a, &fits.uid, "b"), None);
    }

    #[test]
    fn a_pinned_container_may_not_sit_on_exclusive_cpus_and_keeps_its_own_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let m = CpuManager::open(dir.path(), set("0-3"), set("0")).unwrap();
        let mut a = m.lock();
        let pinned = pod("apiVersion: v1\nkind: Pod\nmetadata:\n  name: pinned\n  annotations: {cpuset.podagent.io/c: '1'}\nspec:\n  containers:\n  - {name: c, image: busybox}\n");
        assert_eq!(
            m.place(&mut a, &pinned, &pinned.containers[0]).unwrap().0,
            Placement::Pinned(set("1"))
        );
        // CPU 1 is pinned: the exclusive one is 2.
        let db = guaranteed("db", "1");
        assert_eq!(
            m.place(&mut a, &db, &db.containers[0]).unwrap().0,
            Placement::Exclusive(set("2"))
        );
        let onto = pod("apiVersion: v1\nkind: Pod\nmetadata:\n  name: onto\n  annotations: {cpuset.podagent.io/c: '2-3'}\nspec:\n  containers:\n  - {name: c, image: busybox}\n");
        let e = m.place(&mut a, &onto, &onto.containers[0]).unwrap_err();
        assert!(
            matches!(e, CpuManagerError::PinnedOnExclusive { ref cpus, .. } if cpus == &[2]),
            "{e}"
        );
        assert!(CpuManager::open(dir.path(), set("0-1"), set("4")).is_err());
    }
}
