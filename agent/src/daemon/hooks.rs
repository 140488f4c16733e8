//! Lifecycle hooks, with the kubelet's semantics:
//! - `postStart` runs right after the container's start; until it returns
//!   the container is `Starting` (Waiting, `ContainerCreating`) and its
//!   probes have not begun; a failed one is a `FailedPostStartHook` event
//!   and the container is stopped, then restarted by its policy;
//! - `preStop` runs before the stop signal, inside the grace period: the
//!   signal follows its return, and the SIGKILL deadline is the grace
//!   period's end, but at least 2 s after the signal (the kubelet's
//!   `minimumGracePeriodInSeconds`); a hook still running at the end of the
//!   grace period is given up, the signal sent, and those 2 s given once.
//!
//! A hook runs on a thread of its own (an `exec` or `httpGet` made as a
//! probe's attempt is, from the container's network namespace; `sleep`
//! waits there), and its result comes back through the hook channel and a
//! byte on the wake socket, as probe results do.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use specs::plan::HookAction;

use super::state::{HookRun, Pod};
use super::Agent;
use crate::events::Kind;
use crate::probe::{ProbeError, Target};
use crate::reconcile::Status;

/// The kubelet's `minimumGracePeriodInSeconds`: the least a container is
/// given between its stop signal and SIGKILL after a preStop hook.
pub const MIN_GRACE: Duration = Duration::from_secs(2);

/// A postStart hook has no bound in the kubelet; here it has one, so that
/// a hook that never returns does not hold its thread forever.
const POST_START_BOUND: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    PostStart,
    PreStop,
}

impl HookKind {
    fn name(self) -> &'static str {
        match self {
            HookKind::PostStart => "PostStart",
            HookKind::PreStop => "PreStop",
        }
    }
}

/// The container a stop is for.
pub(super) struct StopTo<'a> {
    pub uid: &'a str,
    /// Its pod's IP (an httpGet hook's default host).
    pub ip: Option<&'a str>,
    pub key: &'a str,
    pub name: &'a str,
    /// Its current run's pid (0: none known, and no hook is run).
    pub pid: i32,
}

/// A hook's result, sent by its thread.
#[derive(Debug)]
pub struct HookResult {
    id: (String, String),
    /// The container's pid the hook ran for: a result for an earlier run
    /// is dropped.
    pid: i32,
    kind: HookKind,
    result: Result<(), ProbeError>,
}

/// Runs one hook: blocks for at most `timeout`.
fn run(
    action: &HookAction,
    target: Result<Target, ProbeError>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    match action {
        HookAction::Sleep { seconds } => {
            let until = Instant::now() + Duration::from_secs(*seconds).min(timeout);
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                let _ = nix::poll::poll(&mut [], nix::poll::PollTimeout::from(ms));
            }
        }
        HookAction::Run(a) => target.and_then(|t| crate::probe::attempt(a, t, timeout)),
    }
}

impl Agent {
    /// Starts a container's hook on a thread; false when no thread could
    /// be made (the caller goes on as if the hook had failed).
    pub(super) fn spawn_hook(
        &self,
        id: (String, String),
        pid: i32,
        kind: HookKind,
        action: HookAction,
        target: Result<Target, ProbeError>,
        timeout: Duration,
    ) -> bool {
        let tx = self.hook_tx.clone();
        let wake = self.wake.1.try_clone();
        std::thread::Builder::new()
            .name("hook".into())
            .spawn(move || {
                let result = run(&action, target, timeout);
                // The loop is gone only when the agent exits.
                let _ = tx.send(HookResult {
                    id,
                    pid,
                    kind,
                    result,
                });
                if let Ok(mut w) = wake {
                    use std::io::Write;
                    // A full socket already wakes the loop.
                    let _ = w.write_all(b"h");
                }
            })
            .is_ok()
    }

    /// Runs a started container's postStart hook, if it has one: the
    /// container stays `Starting` until it returns. Returns whether it has.
    pub(super) fn begin_post_start(&mut self, key: &str, name: &str, pid: i32) -> bool {
        let Some(action) = self
            .sources
            .pod(key)
            .and_then(|p| p.all_containers().find(|c| c.name.as_str() == name))
            .and_then(|c| c.lifecycle.as_ref()?.post_start.clone())
        else {
            return false;
        };
        let id = (key.to_string(), name.to_string());
        let since = Instant::now();
        let Some(run) = self.live(key) else {
            return false;
        };
        let target = self.container_target(&run.uid, run.ip.as_deref(), name);
        if let Some(c) = self.container_mut(key, name) {
            c.hook = Some(HookRun::PostStart { since, pid });
        }
        let (kind, bound) = (HookKind::PostStart, POST_START_BOUND);
        if !self.spawn_hook(id, pid, kind, action, target, bound) {
            let e = ProbeError::Local {
                what: "thread",
                source: std::io::Error::other("no thread for the hook"),
            };
            self.post_start_done(key, name, pid, Err(e));
        }
        true
    }

    /// Applies the results the hook threads sent.
    pub(super) fn hook_results(&mut self) {
        while let Ok(r) = self.hook_rx.try_recv() {
            let (key, name) = (r.id.0.as_str(), r.id.1.as_str());
            match r.kind {
                HookKind::PostStart => self.post_start_done(key, name, r.pid, r.result),
                HookKind::PreStop => self.pre_stop_done(key, name, r.pid, r.result),
            }
        }
    }

    fn hook_failed(&self, key: &str, name: &str, kind: HookKind, e: &ProbeError) {
        self.event(
            Kind::Warning,
            match kind {
                HookKind::PostStart => "FailedPostStartHook",
                HookKind::PreStop => "FailedPreStopHook",
            },
            key,
            Some(name),
            format!("{} hook failed: {}", kind.name(), crate::error_chain(e)),
        );
    }

    /// A postStart hook returned: the container is Running and its probes
    /// begin (timed from its start); a failure stops it, and its exit
    /// restarts it by policy.
    fn post_start_done(&mut self, key: &str, name: &str, pid: i32, result: Result<(), ProbeError>) {
        let plan = self
            .sources
            .pod(key)
            .and_then(|p| p.all_containers().find(|c| c.name.as_str() == name))
            .cloned();
        let Some(c) = self.container_mut(key, name) else {
            return;
        };
        let Some(HookRun::PostStart { since, pid: ran }) = c.hook else {
            return;
        };
        if ran != pid || c.state.status != Status::Starting {
            return; // for an earlier run, or it exited meanwhile
        }
        c.hook = None;
        c.state.status = Status::Running { since };
        if let Some(plan) = &plan {
            let mut probes = crate::probe::ContainerProbes::new(plan, since);
            probes.pid = pid;
            c.probes = Some(probes);
        }
        if let Err(e) = result {
            self.hook_failed(key, name, HookKind::PostStart, &e);
            self.event(
                Kind::Normal,
                "Killing",
                key,
                Some(name),
                "its postStart hook failed: it will be restarted by its policy".into(),
            );
            self.stop_container(key, name);
        }
    }

    /// A preStop hook returned: the stop signal now, SIGKILL at the grace
    /// period's end but no sooner than 2 s from now.
    fn pre_stop_done(&mut self, key: &str, name: &str, pid: i32, result: Result<(), ProbeError>) {
        if let Err(e) = &result {
            self.hook_failed(key, name, HookKind::PreStop, e);
        }
        let state_dir = self.args.state_dir.clone();
        let now = Instant::now();
        match self.pods.get_mut(key) {
            Some(Pod::Live(run)) => {
                let uid = run.uid.clone();
                let Some(c) = run.containers.get_mut(name) else {
                    return;
                };
                if c.hook != Some(HookRun::PreStop) || c.pid != pid {
                    return;
                }
                c.hook = None;
                c.kill_at = c.kill_at.map(|at| at.max(now + MIN_GRACE));
                let dir = crate::runtime::container_dir(&state_dir, &uid, name).join("state");
                crate::runtime::signal_init(&dir, c.stop.signal);
            }
            Some(Pod::Terminating(t)) => {
                let Some(i) = t.hooks.iter().position(|(n, _)| n == name) else {
                    return;
                };
                let (_, signal) = t.hooks.remove(i);
                if !t.killed {
                    t.deadline = t.deadline.max(now + MIN_GRACE);
                }
                let dir = crate::runtime::container_dir(&state_dir, &t.uid, name).join("state");
                crate::runtime::signal_init(&dir, signal);
            }
            None => {}
        }
    }

    /// Sends a container its stop: its preStop hook first when it has one
    /// (true: the signal follows the hook), else its stop signal now.
    pub(super) fn send_stop(
        &self,
        to: &StopTo<'_>,
        pre_stop: Option<&HookAction>,
        signal: Signal,
        grace: Duration,
    ) -> bool {
        if let Some(action) = pre_stop.filter(|_| !grace.is_zero() && to.pid > 0) {
            let target = self.container_target(to.uid, to.ip, to.name);
            let id = (to.key.to_string(), to.name.to_string());
            let (kind, action) = (HookKind::PreStop, action.clone());
            // The loop's deadline decides when the grace period is over
            // (`enforce_kills`, `progress_terminations`): the hook's own
            // bound is later, so its timeout never races that deadline.
            let bound = grace + MIN_GRACE;
            if self.spawn_hook(id, to.pid, kind, action, target, bound) {
                return true;
            }
        }
        let dir = crate::runtime::container_dir(&self.args.state_dir, to.uid, to.name);
        crate::runtime::signal_init(&dir.join("state"), signal);
        false
    }
}
