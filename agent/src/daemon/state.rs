//! What the agent holds of the pods it runs: one value per pod, holding one
//! value per container. Everything the shell keeps about a container (the
//! planner's view of it, its shim's pidfd, its exit watch, its probes, its
//! kill deadline, its last exit) lives in its `ContainerRun`, so that
//! forgetting a container or a pod forgets all of it in one place.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::inotify::{Inotify, WatchDescriptor};
use nix::sys::signal::Signal;
use specs::plan::{ContainerPlan, HookAction, PodPlan};

use crate::probe::ContainerProbes;
use crate::reconcile::{ContainerState, PodState};
use crate::runtime::Sandbox;
use crate::shim::Exited;
use crate::status::{ContainerSeen, PodSeen};

/// A pidfd on a container's shim: readable once the shim has exited.
#[derive(Debug)]
pub struct Shim {
    pub pidfd: OwnedFd,
    pub pid: i32,
}

/// What stopping a container needs of its plan, kept with the container
/// so that a pod whose file is gone still stops as its plan said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopSpec {
    /// A native sidecar: stopped after the app containers, the last first
    /// (its place among the init containers).
    pub sidecar: Option<usize>,
    pub pre_stop: Option<HookAction>,
    /// `lifecycle.stopSignal`; SIGTERM when none.
    pub signal: Signal,
}

impl Default for StopSpec {
    fn default() -> Self {
        StopSpec {
            sidecar: None,
            pre_stop: None,
            signal: Signal::SIGTERM,
        }
    }
}

impl StopSpec {
    pub fn of(pod: &PodPlan, c: &ContainerPlan) -> Self {
        let lifecycle = c.lifecycle.as_ref();
        StopSpec {
            sidecar: pod
                .init_containers
                .iter()
                .position(|i| i.name == c.name)
                .filter(|_| c.sidecar),
            pre_stop: lifecycle.and_then(|l| l.pre_stop.clone()),
            // specs admits only names nix knows.
            signal: lifecycle
                .and_then(|l| l.stop_signal.as_deref())
                .and_then(|s| s.parse().ok())
                .unwrap_or(Signal::SIGTERM),
        }
    }
}

/// A lifecycle hook of the current run, in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookRun {
    /// Its postStart hook runs: it is `Starting` until the hook returns,
    /// and then Running since `since`.
    PostStart { since: Instant, pid: i32 },
    /// Its preStop hook runs: its stop signal follows the hook, or the end
    /// of its grace period (`kill_at`), whichever comes first.
    PreStop,
}

/// One container of a pod the agent runs.
#[derive(Debug)]
pub struct ContainerRun {
    /// What the planner sees of it.
    pub state: ContainerState,
    /// When the current run started (RFC 3339).
    pub started_at: Option<String>,
    /// The kubelet's `imageID` of the current or last run.
    pub image_id: Option<String>,
    /// The last run's exit record (reason, message, times).
    pub last_exit: Option<Exited>,
    /// Its cgroup's OOM-kill count when the current run started.
    pub oom_base: u64,
    /// The current run's probes.
    pub probes: Option<ContainerProbes>,
    /// Its shim, watched through a pidfd.
    pub shim: Option<Shim>,
    /// The inotify watch on its state dir that sees `exit.json` arrive.
    pub exit_watch: Option<WatchDescriptor>,
    /// When what is left of it is SIGKILLed: its grace period after the
    /// SIGTERM of a stop. While a preStop hook runs: when the hook is given
    /// up and the stop signal sent.
    pub kill_at: Option<Instant>,
    /// The current run's container pid (0: none known).
    pub pid: i32,
    /// How it is stopped: its preStop hook, its signal, its order.
    pub stop: StopSpec,
    /// A hook of the current run in flight.
    pub hook: Option<HookRun>,
}

impl ContainerRun {
    /// A container's first state in the agent: nothing but the planner's.
    pub fn new(state: ContainerState) -> Self {
        ContainerRun {
            state,
            started_at: None,
            image_id: None,
            last_exit: None,
            oom_base: 0,
            probes: None,
            shim: None,
            exit_watch: None,
            kill_at: None,
            pid: 0,
            stop: StopSpec::default(),
            hook: None,
        }
    }

    /// Stops watching its state dir for its exit.
    pub fn unwatch_exit(&mut self, exits: &Inotify) {
        if let Some(wd) = self.exit_watch.take() {
            rm_watch(exits, wd);
        }
    }
}

/// Removes an exit watch. EINVAL: the kernel dropped it already (its
/// directory was removed); nothing is left to undo.
pub fn rm_watch(exits: &Inotify, wd: WatchDescriptor) {
    if let Err(e) = exits.rm_watch(wd) {
        if e != nix::Error::EINVAL {
            eprintln!("podagent: inotify rm_watch: {e}");
        }
    }
}

/// A pod's containers by name.
pub type Containers = crate::by_name::ByName<ContainerRun>;

/// A pod whose sandbox exists.
#[derive(Debug)]
pub struct PodRun {
    pub uid: String,
    /// `reconcile::sandbox_hash` of the plan the sandbox was made for.
    pub sandbox_hash: String,
    /// Its `terminationGracePeriodSeconds`, kept for when its file is gone.
    pub grace: Duration,
    pub sandbox: Sandbox,
    pub net_ns: Option<PathBuf>,
    pub ip: Option<String>,
    /// When its sandbox was made (kept in its record across agent
    /// restarts): its start time.
    pub created: SystemTime,
    /// Its `activeDeadlineSeconds` passed: its containers were stopped and
    /// none starts again; the pod is Failed (`DeadlineExceeded`).
    pub deadline_exceeded: bool,
    /// Evicted (over an ephemeral storage limit), with the kubelet's
    /// message: its containers were stopped and none starts again.
    pub evicted: Option<String>,
    /// `reconcile::files_hash` of what its API data volumes hold.
    pub files_hash: String,
    pub containers: Containers,
}

impl PodRun {
    /// What the planner sees of the pod.
    pub fn planner_state(&self) -> PodState {
        PodState {
            uid: self.uid.clone(),
            sandbox_hash: self.sandbox_hash.clone(),
            grace: self.grace,
            deadline_exceeded: self.deadline_exceeded,
            evicted: self.evicted.is_some(),
            files_hash: self.files_hash.clone(),
            containers: self
                .containers
                .iter()
                .map(|(n, c)| {
                    let mut s = c.state.clone();
                    s.started = matches!(s.status, crate::reconcile::Status::Running { .. })
                        && c.probes.as_ref().is_some_and(|p| p.started);
                    (n.clone(), s)
                })
                .collect(),
        }
    }

    /// What the status projection needs, beside the planner's `state`.
    pub fn seen<'a>(&'a self, state: &'a PodState) -> PodSeen<'a> {
        PodSeen {
            state,
            evicted: self.evicted.as_deref(),
            ip: self.ip.as_deref(),
            created: self.created,
            containers: self
                .containers
                .iter()
                .map(|(n, c)| {
                    let seen = ContainerSeen {
                        last_exit: c.last_exit.as_ref(),
                        started_at: c.started_at.as_deref(),
                        image_id: c.image_id.as_deref(),
                        probes_ready: c.probes.as_ref().is_none_or(|p| p.ready()),
                    };
                    (n.as_str(), seen)
                })
                .collect(),
        }
    }
}

/// A pod being stopped: its containers got SIGTERM; once all have exited
/// (or been killed at the deadline) it is removed. The loop goes on
/// meanwhile, so a slow pod holds up no other.
#[derive(Debug)]
pub struct Terminating {
    pub uid: String,
    pub containers: Vec<String>,
    /// The exit watches of its containers: an exit wakes the loop, which
    /// then sees whether the pod is done. Removed with the pod.
    pub exit_watches: Vec<WatchDescriptor>,
    pub deadline: Instant,
    pub killed: bool,
    /// The pod's IP, for its preStop hooks' httpGet.
    pub ip: Option<String>,
    /// The stops still to send, in order, each group once everything
    /// stopped before it has exited: the app containers together, then
    /// each sidecar, the last first.
    pub waves: VecDeque<Vec<(String, i32, StopSpec)>>,
    /// The containers of the groups begun.
    pub stopping: Vec<String>,
    /// preStop hooks in flight: the container and its stop signal.
    pub hooks: Vec<(String, Signal)>,
    /// The deadline was moved once for a preStop hook still running at it
    /// (the kubelet's 2 s).
    pub extended: bool,
}

impl Terminating {
    /// When the loop must look at it again: its deadline, then (once
    /// killed) the last wait for the kill to be seen.
    pub fn next_at(&self) -> Instant {
        if self.killed {
            self.deadline + KILL_WAIT
        } else {
            self.deadline
        }
    }
}

/// How long after its SIGKILL a terminating pod is removed even if an exit
/// was never recorded.
pub const KILL_WAIT: Duration = Duration::from_secs(10);

/// A pod of the node, by `namespace/name`.
// One value a pod, for the pod's life: a Terminating one's spare bytes are
// not worth an allocation for every live one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Pod {
    Live(PodRun),
    Terminating(Terminating),
}

/// How much the agent holds, by kind: served on `/metrics`, so that a test
/// (or an operator) sees that deleting pods leaves nothing behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracked {
    pub pods: usize,
    pub terminating: usize,
    pub containers: usize,
    pub shims: usize,
    pub exit_watches: usize,
    pub probes: usize,
    pub kill_timers: usize,
    pub starts_in_flight: usize,
    pub children: usize,
}

impl Tracked {
    pub fn count(pods: &BTreeMap<String, Pod>) -> Self {
        let mut t = Tracked::default();
        for pod in pods.values() {
            match pod {
                Pod::Terminating(term) => {
                    t.terminating += 1;
                    t.exit_watches += term.exit_watches.len();
                }
                Pod::Live(run) => {
                    t.pods += 1;
                    for c in run.containers.values() {
                        t.containers += 1;
                        t.shims += usize::from(c.shim.is_some());
                        t.exit_watches += usize::from(c.exit_watch.is_some());
                        t.probes += usize::from(c.probes.is_some());
                        t.kill_timers += usize::from(c.kill_at.is_some());
                    }
                }
            }
        }
        t
    }

    /// `(kind, count)` for the metric's label.
    pub fn by_kind(&self) -> [(&'static str, usize); 9] {
        [
            ("pods", self.pods),
            ("terminating", self.terminating),
            ("containers", self.containers),
            ("shims", self.shims),
            ("exit_watches", self.exit_watches),
            ("probes", self.probes),
            ("kill_timers", self.kill_timers),
            ("starts_in_flight", self.starts_in_flight),
            ("children", self.children),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleting_a_pod_leaves_nothing_counted() {
        let mut pods = BTreeMap::new();
        pods.insert(
            "default/web".to_string(),
            Pod::Terminating(Terminating {
                uid: "u".into(),
                containers: vec!["app".into()],
                exit_watches: Vec::new(),
                deadline: Instant::now(),
                killed: false,
                ip: None,
                waves: VecDeque::new(),
                stopping: Vec::new(),
                hooks: Vec::new(),
                extended: false,
            }),
        );
        let t = Tracked::count(&pods);
        assert_eq!((t.terminating, t.pods, t.containers), (1, 0, 0));
        pods.remove("default/web");
        assert_eq!(Tracked::count(&pods), Tracked::default());
    }
}
