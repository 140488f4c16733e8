//! The status projection: what the agent knows of a pod (its plan, what
//! runs, the last exits, the probes) and the time, turned into the
//! Kubernetes-shaped status the API serves and `podctl` shows. Pure: no I/O,
//! both clocks are arguments, so every rule below has a table test.
//!
//! Rules, as the kubelet's:
//! - a container's state is Waiting (not started, or a start in flight),
//!   Running (also while it is being stopped to start again), or its last
//!   termination's reason: `CrashLoopBackOff` once it crashed more than once
//!   and a restart is due, else the reason its exit record gives
//!   (Completed, Error, OOMKilled, StartError);
//! - a container is ready when it runs and its probes (if any) say so; an
//!   init container when it succeeded, a sidecar as an app container;
//! - the pod's phase is `reconcile::phase`; a pod being deleted shows
//!   `Terminating`;
//! - conditions: PodScheduled once it has a sandbox, Initialized once its
//!   init containers succeeded (its sidecars started), ContainersReady and
//!   Ready when it runs and every app container and sidecar is ready.

use std::time::{Instant, SystemTime};

use serde::Serialize;
use specs::plan::PodPlan;

use crate::reconcile::{self, ContainerState, PodState, Status};
use crate::shim::logs::rfc3339_nano;
use crate::shim::Exited;

/// One pod as `podctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub file: String,
    pub phase: String,
    /// What kubectl would show instead of the phase (`Init:0/1`).
    pub reason: Option<String>,
    /// Its QoS class (`qosClass`).
    #[serde(default)]
    pub qos_class: String,
    /// Why it failed, in the kubelet's words (an eviction's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub conditions: Vec<Condition>,
    pub ip: Option<String>,
    /// The node's address (`status.hostIP`), once the pod is on it.
    pub host_ip: Option<String>,
    pub containers: Vec<ContainerStatus>,
    /// Its init containers, sidecars among them (`initContainerStatuses`).
    #[serde(default)]
    pub init_containers: Vec<ContainerStatus>,
    /// Every image its containers run, init containers' too (what `podctl
    /// image ls` and `prune` read).
    pub images: Vec<String>,
    pub created: String,
}

/// A pod condition (PodScheduled, Initialized, ContainersReady, Ready).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    /// The kubelet's reason when it gives one (`ContainersNotReady`,
    /// `PodCompleted`, `ContainersNotInitialized`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When its status last changed (RFC 3339), filled in by the agent,
    /// which remembers it across passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub state: String,
    pub restart_count: u32,
    pub exit_code: Option<i32>,
    pub ready: bool,
    /// Why it last terminated (Completed, Error, OOMKilled, StartError).
    pub reason: Option<String>,
    pub message: Option<String>,
    /// When a container in back-off is tried again.
    pub next_start: Option<String>,
    pub image: String,
    /// The digest the current (or last) run runs, as the kubelet's
    /// `imageID`: `docker.io/library/busybox@sha256:…`.
    pub image_id: Option<String>,
    /// When the current run started (RFC 3339).
    pub started_at: Option<String>,
    /// The current (or last) run's `containerID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The last exit's times (RFC 3339).
    pub last_started_at: Option<String>,
    pub last_finished_at: Option<String>,
    pub last_exit_code: Option<i32>,
    /// A native sidecar (an init container with `restartPolicy: Always`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sidecar: bool,
}

/// Everything `/v1/status` serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub pods: Vec<PodStatus>,
    /// `file:line:col: path: message` of every manifest problem.
    pub problems: Vec<String>,
    pub conflicts: Vec<String>,
}

/// What the agent knows of one container of a pod that has a sandbox,
/// beyond the planner's `ContainerState`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContainerSeen<'a> {
    pub last_exit: Option<&'a Exited>,
    /// When the current run started (RFC 3339).
    pub started_at: Option<&'a str>,
    /// The kubelet's `imageID` of the current or last run.
    pub image_id: Option<&'a str>,
    /// The probes' verdict: false while a readiness or startup probe has
    /// not succeeded; true when it has none.
    pub probes_ready: bool,
}

/// A pod the agent runs (its sandbox exists).
#[derive(Debug, Clone)]
pub struct PodSeen<'a> {
    pub state: &'a PodState,
    /// Why it was evicted.
    pub evicted: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub created: SystemTime,
    /// By container name; a container missing here has none of it.
    pub containers: crate::by_name::ByName<ContainerSeen<'a>, &'a str>,
}

/// The two clocks: `now` for back-off arithmetic (monotonic), `wall` for
/// the times shown.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: Instant,
    pub wall: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        Clock {
            now: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// `at` (on the monotonic clock) as a wall-clock time.
    fn wall_at(&self, at: Instant) -> SystemTime {
        self.wall + at.saturating_duration_since(self.now)
    }
}

/// A container's state word and exit code, and when it is tried again.
fn container_state(
    policy: specs::plan::RestartPolicy,
    s: Option<&ContainerState>,
    last: Option<&Exited>,
    clock: Clock,
) -> (String, Option<i32>, Option<String>) {
    let Some(s) = s else {
        return ("Waiting".into(), None, None);
    };
    match s.status {
        Status::Waiting | Status::Starting => ("Waiting".into(), None, None),
        Status::Running { .. } | Status::Stopping { .. } => ("Running".into(), None, None),
        Status::Terminated { exit_code, .. } => {
            let at = reconcile::restart_at(policy, s);
            let next = at.map(|at| rfc3339_nano(clock.wall_at(at)));
            let pull_failed = last.is_some_and(|e| e.reason == "ErrImagePull");
            let config_error = last.is_some_and(|e| e.reason == "CreateContainerConfigError");
            let word = if config_error {
                // The kubelet keeps saying why, retry after retry.
                "CreateContainerConfigError".to_string()
            } else if pull_failed && s.crashes > 1 && at.is_some() {
                // The kubelet's word while a failed pull waits for its retry.
                "ImagePullBackOff".to_string()
            } else if s.crashes > 1 && at.is_some() {
                "CrashLoopBackOff".to_string()
            } else if let Some(e) = last {
                e.reason.clone()
            } else if exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
            (word, Some(exit_code), next)
        }
    }
}

fn condition(kind: &str, ok: bool) -> Condition {
    Condition {
        kind: kind.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: None,
        message: None,
        last_transition_time: None,
    }
}

/// A condition with the kubelet's reason and message.
fn explained(kind: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> Condition {
    Condition {
        reason: reason.map(str::to_string),
        message,
        ..condition(kind, ok)
    }
}

/// A time as the API server writes it: RFC 3339 in whole seconds.
pub fn seconds(rfc3339: &str) -> String {
    match rfc3339.split_once('.') {
        Some((secs, rest)) if rest.ends_with('Z') => format!("{secs}Z"),
        _ => rfc3339.to_string(),
    }
}

/// Gives each condition its `lastTransitionTime`: the time `remembered`
/// has for the pod and condition while its status stays, `now` when it
/// changed (or was never seen). `remembered` keeps what is shown, by pod
/// uid and condition, and forgets pods no longer shown.
pub fn stamp_transitions(
    pods: &mut [PodStatus],
    remembered: &mut std::collections::BTreeMap<(String, String), (String, String)>,
    now: &str,
) {
    let mut next = std::collections::BTreeMap::new();
    for p in pods.iter_mut() {
        for c in &mut p.conditions {
            let key = (p.uid.clone(), c.kind.clone());
            let time = match remembered.get(&key) {
                Some((status, at)) if *status == c.status => at.clone(),
                _ => now.to_string(),
            };
            c.last_transition_time = Some(time.clone());
            next.insert(key, (c.status.clone(), time));
        }
    }
    *remembered = next;
}

/// A run's `containerID`, as the kubelet shows a runtime's
/// (`<runtime>://<64 hex>`): one per run, the same across agent restarts
/// (derived from the pod, the container and when the run started).
pub fn container_id(uid: &str, name: &str, started_at: &str) -> String {
    let h = specs::hash::sha256_hex(format!("{uid}/{name}/{started_at}").as_bytes());
    format!("podagent://{h}")
}

/// One desired pod's status. `seen` is none before its sandbox exists (or
/// while it is recreated); `terminating` while it is being stopped.
pub fn pod_status(
    file: &str,
    pod: &PodPlan,
    seen: Option<&PodSeen<'_>>,
    terminating: bool,
    clock: Clock,
) -> PodStatus {
    let state = seen.map(|s| s.state);
    let status_of = |c: &specs::plan::ContainerPlan, init: bool| {
        let s = state.and_then(|s| s.containers.get(c.name.as_str()));
        let extra = seen
            .and_then(|p| p.containers.get(c.name.as_str()))
            .copied()
            .unwrap_or(ContainerSeen {
                probes_ready: true,
                ..ContainerSeen::default()
            });
        let last = extra.last_exit;
        let policy = reconcile::effective_policy(pod, c.name.as_str());
        let (word, exit_code, next_start) = container_state(policy, s, last, clock);
        let ready = if init && !c.sidecar {
            exit_code == Some(0)
        } else {
            word == "Running" && extra.probes_ready
        };
        let run_started = match word.as_str() {
            "Running" => extra.started_at.map(str::to_string),
            _ => last.and_then(|e| e.started_at.clone()),
        };
        let container_id = run_started.map(|at| container_id(&pod.uid, c.name.as_str(), &at));
        ContainerStatus {
            name: c.name.to_string(),
            ready,
            state: word,
            restart_count: s.map_or(0, |s| s.restart_count),
            exit_code,
            reason: last.map(|e| e.reason.clone()),
            message: last.map(|e| e.message.clone()).filter(|m| !m.is_empty()),
            next_start,
            image: c.image.clone(),
            image_id: extra.image_id.map(str::to_string),
            started_at: extra.started_at.map(str::to_string),
            last_started_at: last.and_then(|e| e.started_at.clone()),
            last_finished_at: last.map(|e| e.finished_at.clone()),
            last_exit_code: last.map(|e| e.exit_code),
            sidecar: c.sidecar,
            container_id,
        }
    };
    let mut containers: Vec<ContainerStatus> =
        pod.containers.iter().map(|c| status_of(c, false)).collect();
    let init_containers: Vec<ContainerStatus> = pod
        .init_containers
        .iter()
        .map(|c| status_of(c, true))
        .collect();
    let (phase, mut reason) = reconcile::phase(pod, state);
    // An app container behind init containers still running waits as the
    // kubelet's does.
    if reason.as_deref().is_some_and(|r| r.starts_with("Init:")) {
        for c in &mut containers {
            if c.state == "Waiting" {
                c.state = "PodInitializing".into();
            }
        }
    }
    if terminating {
        reason = Some("Terminating".into());
    }
    let ready = phase == reconcile::Phase::Running
        && containers.iter().all(|c| c.ready)
        && init_containers
            .iter()
            .filter(|c| c.sidecar)
            .all(|c| c.ready);
    let initialized = reason.is_none() && state.is_some();
    let done = matches!(
        phase,
        reconcile::Phase::Succeeded | reconcile::Phase::Failed
    );
    let unready: Vec<&str> = containers
        .iter()
        .chain(init_containers.iter().filter(|c| c.sidecar))
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let not_ready = |kind: &str| {
        if ready {
            condition(kind, true)
        } else if done {
            explained(kind, false, Some("PodCompleted"), None)
        } else {
            let list = format!("containers with unready status: [{}]", unready.join(" "));
            explained(kind, false, Some("ContainersNotReady"), Some(list))
        }
    };
    let init_condition = if done && state.is_some() {
        explained("Initialized", true, Some("PodCompleted"), None)
    } else if initialized || state.is_none() {
        condition("Initialized", initialized)
    } else {
        let pending: Vec<&str> = init_containers
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.name.as_str())
            .collect();
        let list = format!("containers with incomplete status: [{}]", pending.join(" "));
        explained(
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(list),
        )
    };
    PodStatus {
        namespace: pod.namespace.clone(),
        name: pod.name.to_string(),
        uid: pod.uid.clone(),
        file: file.to_string(),
        phase: format!("{phase:?}"),
        reason,
        message: seen.and_then(|s| s.evicted).map(str::to_string),
        conditions: vec![
            condition("PodReadyToStartContainers", state.is_some()),
            condition("PodScheduled", state.is_some()),
            init_condition,
            not_ready("ContainersReady"),
            not_ready("Ready"),
        ],
        qos_class: format!("{:?}", pod.qos_class),
        ip: seen.and_then(|s| s.ip.map(str::to_string)),
        host_ip: None,
        containers,
        init_containers,
        images: pod.all_containers().map(|c| c.image.clone()).collect(),
        created: rfc3339_nano(seen.map_or(clock.wall, |s| s.created)),
    }
}

/// A pod whose file is gone, shown until it is stopped.
pub fn leaving_pod_status(key: &str, uid: &str) -> PodStatus {
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    PodStatus {
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        file: String::new(),
        phase: "Running".into(),
        reason: Some("Terminating".into()),
        message: None,
        qos_class: String::new(),
        conditions: Vec::new(),
        ip: None,
        host_ip: None,
        containers: Vec::new(),
        init_containers: Vec::new(),
        images: Vec::new(),
        created: String::new(),
    }
}

/// The lines of `now` not in `reported`: each manifest problem or conflict
/// is an event once, not on every pass.
pub fn newly_seen<'a>(reported: &[String], now: &'a [String]) -> Vec<&'a String> {
    now.iter().filter(|p| !reported.contains(p)).collect()
}

#[cfg(test)]
mod tests;
