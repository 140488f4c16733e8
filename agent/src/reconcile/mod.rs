//! Reconcile: `plan(desired, actual, now)` returns the actions that move the
//! node towards the manifests (DESIGN rule 1). Pure: no I/O, time is an
//! argument, back-off is computed, never slept. The executor performs the
//! actions and feeds results back into `Actual`.
//!
//! Lifecycle rules (each has a table test below):
//! - a new pod gets its sandbox, then its init containers one at a time, each
//!   to success, then all its app containers;
//! - a terminated container restarts by the pod's `restartPolicy` (Always;
//!   OnFailure when its exit code is not 0; Never), after the kubelet's
//!   back-off: 10 s doubling to 5 min, reset once it ran 10 min;
//! - an init container that fails follows the policy too; with Never the pod
//!   has failed and nothing more starts;
//! - a changed pod changes only what changed: pod-level fields (or the set of
//!   containers) recreate the pod; one container's spec restarts that
//!   container alone, at once even if it was backing off; resources alone
//!   resize it in place;
//! - new labels or annotations rewrite its downward API files in place;
//! - a pod no longer desired is deleted within its grace period;
//! - a container whose start is in flight (`Starting`), or that is being
//!   stopped to start again (`Stopping`), gets no action until that is done;
//! - a container whose applied resources are unknown (adopted from a record
//!   that differs) is resized to the plan's;
//! - a native sidecar (an init container with `restartPolicy: Always`)
//!   starts in init order; the next init container starts once it runs and
//!   its startup probe succeeded (`started`); it restarts whatever the pod's
//!   policy, for as long as the pod lives; once every app container of a
//!   pod that restarts nothing more has ended, the sidecars are stopped and
//!   not started again;
//! - an unchanged pod produces no action.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use specs::hash::sha256_hex;

pub use crate::by_name::ByName;
use specs::plan::{ContainerPlan, ContainerResources, PodPlan, RestartPolicy, VolumeSource};

/// The kubelet's crash back-off: 10 s, doubling, at most 5 min.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting starts its back-off anew.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// The delay before restart number `crashes` (1 for the first crash).
pub fn backoff(crashes: u32) -> Duration {
    if crashes == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(crashes - 1).unwrap_or(u32::MAX);
    BACKOFF_INITIAL.saturating_mul(factor).min(BACKOFF_MAX)
}

/// What a container is doing, as the executor last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Created or not yet started.
    Waiting,
    /// Its start was handed to the start pool and has not come back.
    Starting,
    Running {
        since: Instant,
    },
    /// Running, and signalled to stop: so that it starts again at once with
    /// its current spec (`restart`: a changed spec, refused resources), or
    /// for good (a sidecar of a pod whose app containers have ended).
    Stopping {
        since: Instant,
        restart: bool,
    },
    Terminated {
        exit_code: i32,
        started: Instant,
        finished: Instant,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// The container plan hash it runs (`ContainerPlan::hash`).
    pub hash: String,
    /// The resources applied to its cgroup; none when not known (a record
    /// that differs from the plan): it is then resized to the plan's.
    pub resources: Option<ContainerResources>,
    pub status: Status,
    pub restart_count: u32,
    /// Consecutive crashes that count towards the back-off.
    pub crashes: u32,
    /// Its last start failed to get its image: it never ran, so it is tried
    /// again whatever the restart policy, without counting a restart, and
    /// its pod is Pending (the kubelet's `ErrImagePull`, a waiting state).
    pub image_pull_failed: bool,
    /// Running, past its postStart hook, and its startup probe (if any)
    /// succeeded: what lets the init container after a sidecar start. Set
    /// from what the agent sees when it plans.
    pub started: bool,
}

impl ContainerState {
    /// A run of `c` with its plan's spec and resources.
    pub fn of(c: &ContainerPlan, status: Status, restart_count: u32, crashes: u32) -> Self {
        ContainerState {
            hash: c.hash.clone(),
            resources: Some(c.resources.clone()),
            status,
            restart_count,
            crashes,
            image_pull_failed: false,
            started: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    pub uid: String,
    /// `sandbox_hash` of the plan the sandbox was made for.
    pub sandbox_hash: String,
    /// Its `terminationGracePeriodSeconds`, kept for when its file is gone.
    pub grace: Duration,
    /// Its `activeDeadlineSeconds` passed: nothing of it starts again.
    pub deadline_exceeded: bool,
    /// Evicted for its ephemeral storage: nothing of it starts again.
    pub evicted: bool,
    /// `files_hash` of the files its API data volumes hold.
    pub files_hash: String,
    pub containers: ByName<ContainerState>,
}

/// Desired: every valid pod by `namespace/name`; actual: what runs.
pub type Desired = BTreeMap<String, PodPlan>;
pub type Actual = BTreeMap<String, PodState>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateSandbox {
        pod: String,
    },
    StartContainer {
        pod: String,
        container: String,
    },
    /// Stop for good (a sidecar once its pod's app containers are done).
    StopContainer {
        pod: String,
        container: String,
    },
    /// Stop and start again with the current spec.
    RestartContainer {
        pod: String,
        container: String,
    },
    ResizeContainer {
        pod: String,
        container: String,
        resources: ContainerResources,
    },
    /// Stop everything and remove the sandbox, then create it again.
    RecreatePod {
        pod: String,
    },
    /// Write the files of its API data volumes anew (labels or
    /// annotations changed), in place.
    RefreshFiles {
        pod: String,
    },
    DeletePod {
        pod: String,
        grace: Duration,
    },
}

/// The result of a pass: the actions, and when to plan again if nothing
/// happens before (a back-off ending).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub wake_at: Option<Instant>,
}

/// Everything about the pod except its containers' specs and resources,
/// its labels and annotations and the files of its API data volumes: a
/// change here recreates the pod. The names of the containers are part of
/// it. (Labels and annotations reach a container through its env, which is
/// its own hash, or through a downward API volume, rewritten in place.)
pub fn sandbox_hash(p: &PodPlan) -> String {
    let mut copy = p.clone();
    copy.labels.clear();
    copy.annotations.clear();
    for v in &mut copy.volumes {
        if let VolumeSource::Files { files } = &mut v.source {
            files.clear();
        }
    }
    legacy_sandbox_hash(&copy)
}

/// The sandbox hash as agents before downward API volumes computed it
/// (with labels and annotations): their pods' records carry it, and they
/// are adopted all the same.
pub fn legacy_sandbox_hash(p: &PodPlan) -> String {
    let mut copy = p.clone();
    copy.hash.clear();
    copy.pod_resources.cpu_shares = 0;
    copy.pod_resources.cfs_quota_us = None;
    copy.pod_resources.memory_limit_bytes = None;
    let names = |cs: &[ContainerPlan]| cs.iter().map(|c| c.name.to_string()).collect::<Vec<_>>();
    let (init, apps) = (names(&p.init_containers), names(&p.containers));
    copy.init_containers.clear();
    copy.containers.clear();
    let mut bytes = serde_json::to_vec(&copy).unwrap_or_default();
    bytes.extend(serde_json::to_vec(&(init, apps)).unwrap_or_default());
    sha256_hex(&bytes)
}

/// The files of the pod's API data volumes (downwardAPI, projected): a
/// change is written into the volumes in place, no container restarted.
pub fn files_hash(p: &PodPlan) -> String {
    let files: Vec<_> = p
        .volumes
        .iter()
        .filter(|v| matches!(v.source, VolumeSource::Files { .. }))
        .collect();
    if files.is_empty() {
        return String::new();
    }
    sha256_hex(&serde_json::to_vec(&files).unwrap_or_default())
}

/// The restart policy that applies to one container of `pod`: the pod's,
/// except that an init container restarts only on failure (Always acts as
/// OnFailure; Never stays Never), and a sidecar always restarts.
pub fn effective_policy(pod: &PodPlan, container: &str) -> RestartPolicy {
    let init = pod
        .init_containers
        .iter()
        .find(|c| c.name.as_str() == container);
    match (init, pod.restart_policy) {
        (Some(c), _) if c.sidecar => RestartPolicy::Always,
        (Some(_), RestartPolicy::Always) => RestartPolicy::OnFailure,
        (_, policy) => policy,
    }
}

/// Whether init container `i` of `pod` no longer holds up the ones after
/// it: a regular one succeeded; a sidecar is `started`, or it was once (a
/// container after it has run, or it has ended since).
fn init_passed(pod: &PodPlan, state: &PodState, i: usize) -> bool {
    let c = &pod.init_containers[i];
    let Some(s) = state.containers.get(c.name.as_str()) else {
        return false;
    };
    if !c.sidecar {
        return matches!(s.status, Status::Terminated { exit_code: 0, .. });
    }
    let later = pod.init_containers[i + 1..]
        .iter()
        .chain(&pod.containers)
        .any(|l| state.containers.get(l.name.as_str()).is_some());
    s.started || later
}

/// Every app container has ended and none will restart: the pod is done
/// (Succeeded or Failed) and its sidecars are stopped.
fn apps_ended(pod: &PodPlan, state: &PodState) -> bool {
    pod.containers.iter().all(|c| {
        state.containers.get(c.name.as_str()).is_some_and(|s| {
            matches!(s.status, Status::Terminated { .. })
                && s.hash == c.hash
                && restart_at(pod.restart_policy, s).is_none()
        })
    })
}

/// A container's next run after it exited, for the executor: its restart
/// count goes up by one; a new spec starts its crash count again.
pub fn next_run_counts(prev: Option<&ContainerState>, new_spec: bool) -> (u32, u32) {
    match (prev, new_spec) {
        (None, _) => (0, 0),
        // A container that never got its image has not restarted.
        (Some(s), false) if s.image_pull_failed => (s.restart_count, s.crashes),
        (Some(s), true) => (s.restart_count + 1, 0),
        (Some(s), false) => (s.restart_count + 1, s.crashes),
    }
}

fn should_restart(policy: RestartPolicy, exit_code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    }
}

/// When a terminated container may start again, if it may.
pub fn restart_at(policy: RestartPolicy, s: &ContainerState) -> Option<Instant> {
    let Status::Terminated {
        exit_code,
        started,
        finished,
    } = s.status
    else {
        return None;
    };
    if !s.image_pull_failed && !should_restart(policy, exit_code) {
        return None;
    }
    let crashes = if finished.saturating_duration_since(started) >= BACKOFF_RESET {
        1
    } else {
        s.crashes.max(1)
    };
    Some(finished + backoff(crashes))
}

/// A pod's phase, by Kubernetes' rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Phase {
    /// Accepted, but a container (init included) has not yet run.
    Pending,
    /// Every app container created; one runs or will restart.
    Running,
    /// Every container ended with 0 and none will restart.
    Succeeded,
    /// Every container ended, one failed, and none will restart (or an init
    /// container failed under `restartPolicy: Never`).
    Failed,
}

/// The pod's phase and, while its init containers run or after one failed,
/// the `Init:` status kubectl shows (`Init:1/2`, `Init:Error`,
/// `Init:CrashLoopBackOff`).
pub fn phase(pod: &PodPlan, state: Option<&PodState>) -> (Phase, Option<String>) {
    let Some(state) = state else {
        return (Phase::Pending, None);
    };
    if state.deadline_exceeded {
        return (Phase::Failed, Some("DeadlineExceeded".into()));
    }
    if state.evicted {
        return (Phase::Failed, Some("Evicted".into()));
    }
    let get = |c: &ContainerPlan| state.containers.get(c.name.as_str());
    let inits = &pod.init_containers;
    let done = (0..inits.len())
        .take_while(|i| init_passed(pod, state, *i))
        .count();
    if done < inits.len() {
        let failed = get(&inits[done])
            .filter(|s| matches!(s.status, Status::Terminated { exit_code, .. } if exit_code != 0));
        let never = pod.restart_policy == RestartPolicy::Never && !inits[done].sidecar;
        return match failed {
            Some(s) if s.image_pull_failed => {
                let word = if s.crashes > 1 {
                    "ImagePullBackOff"
                } else {
                    "ErrImagePull"
                };
                (Phase::Pending, Some(format!("Init:{word}")))
            }
            Some(_) if never => (Phase::Failed, Some("Init:Error".into())),
            Some(s) if s.crashes > 1 => (Phase::Pending, Some("Init:CrashLoopBackOff".into())),
            Some(_) => (Phase::Pending, Some("Init:Error".into())),
            None => (Phase::Pending, Some(format!("Init:{done}/{}", inits.len()))),
        };
    }
    let apps: Vec<Option<&ContainerState>> = pod.containers.iter().map(get).collect();
    let not_yet_run = |s: &ContainerState| {
        matches!(s.status, Status::Waiting | Status::Starting) || s.image_pull_failed
    };
    if apps.iter().any(|s| s.is_none_or(not_yet_run)) {
        return (Phase::Pending, None);
    }
    let ended = apps.iter().flatten().all(|s| {
        matches!(s.status, Status::Terminated { .. }) && restart_at(pod.restart_policy, s).is_none()
    });
    if !ended {
        return (Phase::Running, None);
    }
    let all_ok = apps
        .iter()
        .flatten()
        .all(|s| matches!(s.status, Status::Terminated { exit_code: 0, .. }));
    (
        if all_ok {
            Phase::Succeeded
        } else {
            Phase::Failed
        },
        None,
    )
}

/// Plans one pass.
pub fn plan(desired: &Desired, actual: &Actual, now: Instant) -> Plan {
    let mut out = Plan::default();
    let wake = |at: Instant, out: &mut Plan| {
        out.wake_at = Some(out.wake_at.map_or(at, |w| w.min(at)));
    };
    for (key, state) in actual {
        if !desired.contains_key(key) {
            out.actions.push(Action::DeletePod {
                pod: key.clone(),
                grace: state.grace,
            });
        }
    }
    for (key, pod) in desired {
        let Some(state) = actual.get(key) else {
            out.actions.push(Action::CreateSandbox { pod: key.clone() });
            continue;
        };
        if state.sandbox_hash != sandbox_hash(pod) {
            out.actions.push(Action::RecreatePod { pod: key.clone() });
            continue;
        }
        if state.files_hash != files_hash(pod) {
            out.actions.push(Action::RefreshFiles { pod: key.clone() });
        }
        // Failed by its deadline or evicted: it stays so until its file
        // changes or goes.
        if state.deadline_exceeded || state.evicted {
            continue;
        }
        let act = |a: Action, out: &mut Plan| out.actions.push(a);
        let ended = apps_ended(pod, state);
        // Init containers, in order: the first one not yet passed decides;
        // the sidecars before it are kept running as app containers are.
        let mut inits_done = true;
        for (i, c) in pod.init_containers.iter().enumerate() {
            let name = c.name.to_string();
            if c.sidecar {
                let s = state.containers.get(&name);
                if ended {
                    // Its pod is done: stopped, and not started again.
                    if s.is_some_and(|s| matches!(s.status, Status::Running { .. })) {
                        act(
                            Action::StopContainer {
                                pod: key.clone(),
                                container: name,
                            },
                            &mut out,
                        );
                    }
                    continue;
                }
                keep_running(key, c, s, RestartPolicy::Always, now, &mut out);
                if init_passed(pod, state, i) {
                    continue;
                }
                inits_done = false;
                break;
            }
            match state.containers.get(&name) {
                None => {
                    act(
                        Action::StartContainer {
                            pod: key.clone(),
                            container: name,
                        },
                        &mut out,
                    );
                    inits_done = false;
                }
                Some(s) if matches!(s.status, Status::Starting | Status::Stopping { .. }) => {
                    inits_done = false;
                }
                Some(s) if s.hash != c.hash => {
                    act(
                        Action::RestartContainer {
                            pod: key.clone(),
                            container: name,
                        },
                        &mut out,
                    );
                    inits_done = false;
                }
                Some(s) => match s.status {
                    Status::Terminated { exit_code: 0, .. } => continue,
                    Status::Waiting
                    | Status::Starting
                    | Status::Running { .. }
                    | Status::Stopping { .. } => inits_done = false,
                    Status::Terminated { .. } => {
                        inits_done = false;
                        if let Some(at) = restart_at(effective_policy(pod, &name), s) {
                            if at <= now {
                                act(
                                    Action::StartContainer {
                                        pod: key.clone(),
                                        container: name,
                                    },
                                    &mut out,
                                );
                            } else {
                                wake(at, &mut out);
                            }
                        }
                    }
                },
            }
            break;
        }
        if !inits_done {
            continue;
        }
        for c in &pod.containers {
            let s = state.containers.get(c.name.as_str());
            keep_running(key, c, s, pod.restart_policy, now, &mut out);
        }
    }
    out
}

/// The actions that keep one app container (or a sidecar) running its
/// current plan: started when it has not been, restarted for a new spec
/// (at once, whatever back-off the old one had), resized for new
/// resources, started again after its exit by `policy` and its back-off.
fn keep_running(
    key: &str,
    c: &ContainerPlan,
    s: Option<&ContainerState>,
    policy: RestartPolicy,
    now: Instant,
    out: &mut Plan,
) {
    let pod = key.to_string();
    let container = c.name.to_string();
    let Some(s) = s else {
        out.actions.push(Action::StartContainer { pod, container });
        return;
    };
    if matches!(s.status, Status::Starting | Status::Stopping { .. }) {
        return; // the executor is already on it
    }
    if s.hash != c.hash {
        out.actions
            .push(Action::RestartContainer { pod, container });
        return;
    }
    match &s.status {
        Status::Waiting => out.actions.push(Action::StartContainer { pod, container }),
        Status::Running { .. } if s.resources.as_ref() != Some(&c.resources) => {
            out.actions.push(Action::ResizeContainer {
                pod,
                container,
                resources: c.resources.clone(),
            })
        }
        Status::Running { .. } | Status::Starting | Status::Stopping { .. } => {}
        Status::Terminated { .. } => {
            if let Some(at) = restart_at(policy, s) {
                if at <= now {
                    out.actions.push(Action::StartContainer { pod, container });
                } else {
                    out.wake_at = Some(out.wake_at.map_or(at, |w| w.min(at)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
