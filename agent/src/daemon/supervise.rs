//! Supervision of what runs: a container's exit reaches the agent as its
//! shim's `exit.json` (an inotify watch on its state dir) or as its shim's
//! pidfd becoming readable, whichever comes first; the second finds it no
//! longer running. A shim that died without a record has its container
//! killed and the record written for it. A SIGKILL while the cgroup's
//! OOM-kill count went up is the kernel's OOM killer.

use std::time::Instant;

use super::state::Shim;
use super::Agent;
use crate::events::Kind;
use crate::reconcile::{self, Status};
use crate::shim::{Exited, Started};

impl Agent {
    /// Reaps the shims this agent spawned that have exited (a shim adopted
    /// from a previous agent is not its child). Only they are waited for, so
    /// a probe's `exec` child is never taken from its thread.
    pub(super) fn reap_children(&mut self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        self.children.retain(|pid| {
            matches!(
                waitpid(nix::unistd::Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
    }

    /// Watches a container's shim through a pidfd. A shim already gone is
    /// handled at once.
    pub(super) fn watch_shim(&mut self, key: &str, name: &str, started: &Started) {
        if started.shim_pid <= 0 {
            return; // a record from before shims recorded themselves
        }
        let shim = match crate::sys::pidfd_open(started.shim_pid) {
            // The pidfd pins the process: checking its start time after
            // opening proves it is the shim and not a reused pid.
            Ok(pidfd)
                if crate::shim::start_ticks(started.shim_pid) == Some(started.shim_start_ticks) =>
            {
                Some(Shim {
                    pidfd,
                    pid: started.shim_pid,
                })
            }
            _ => None,
        };
        let gone = shim.is_none();
        if let Some(c) = self.container_mut(key, name) {
            c.shim = shim;
        }
        if gone {
            self.shim_died(key, name, started.shim_pid);
        }
    }

    /// A shim's pidfd became readable: it exited. Normally it wrote
    /// `exit.json` first and the exit is collected from there.
    pub(super) fn shim_gone(&mut self, key: &str, name: &str) {
        let Some(shim) = self.container_mut(key, name).and_then(|c| c.shim.take()) else {
            return;
        };
        self.shim_died(key, name, shim.pid);
    }

    /// If the container's shim is gone without an exit record, kills what
    /// is left of the container (its whole cgroup, so nothing escapes) and
    /// writes the record itself; the exit watch then restarts it by policy.
    fn shim_died(&mut self, key: &str, name: &str, pid: i32) {
        let Some(run) = self.live(key) else {
            return;
        };
        let uid = run.uid.clone();
        let dir = crate::runtime::container_dir(&self.args.state_dir, &uid, name).join("state");
        if !dir.is_dir() {
            return;
        }
        if dir.join("exit.json").exists() {
            // A normal exit; perhaps before the exit watch was added.
            self.record_exit(key, name);
            return;
        }
        let started = crate::records::read::<Started>(&dir.join("state.json"))
            .ok()
            .flatten();
        self.kill(key, &uid, name);
        let message = format!("its shim (pid {pid}) died; its processes were killed");
        self.event(Kind::Warning, "ShimDied", key, Some(name), message.clone());
        let exited = Exited {
            exit_code: 137,
            signal: Some(9),
            started_at: started.map(|s| s.started_at),
            finished_at: super::now_rfc3339(),
            reason: "Error".into(),
            message,
            warnings: Vec::new(),
        };
        let written = crate::records::write(&dir.join("exit.json"), &exited);
        self.report(written, "FailedRecord", key, Some(name));
        // Recorded now; the exit watch, if it fires, finds it no longer
        // running.
        self.record_exit(key, name);
    }

    /// Records the exits the shims wrote.
    pub(super) fn collect_exits(&mut self) {
        let events = match self.exits.read_events() {
            Ok(events) => events,
            Err(nix::Error::EAGAIN) => return,
            Err(e) => {
                eprintln!("podagent: reading exit watches: {e}");
                return;
            }
        };
        for ev in events {
            if ev.name.as_deref().and_then(|n| n.to_str()) != Some("exit.json") {
                continue;
            }
            let owner = self.pods.iter().find_map(|(key, pod)| match pod {
                super::state::Pod::Live(run) => run
                    .containers
                    .iter()
                    .find(|(_, c)| c.exit_watch == Some(ev.wd))
                    .map(|(name, _)| (key.clone(), name.clone())),
                super::state::Pod::Terminating(_) => None,
            });
            if let Some((key, name)) = owner {
                self.record_exit(&key, &name);
            }
        }
    }

    /// Records a running container's exit from its `exit.json` (reached by
    /// the exit watch or by its shim's pidfd, whichever comes first; the
    /// second finds it no longer running).
    pub(super) fn record_exit(&mut self, key: &str, name: &str) {
        let state_dir = self.args.state_dir.clone();
        let Some(super::state::Pod::Live(run)) = self.pods.get_mut(key) else {
            return;
        };
        let uid = run.uid.clone();
        let Some(c) = run.containers.get_mut(name) else {
            return;
        };
        let for_good = matches!(c.state.status, Status::Stopping { restart: false, .. });
        let (since, stopping) = match (&c.state.status, c.hook) {
            (Status::Running { since }, _) => (*since, false),
            (Status::Stopping { since, restart }, _) => (*since, *restart),
            // Exited while its postStart hook ran: the hook's result finds
            // it no longer starting.
            (Status::Starting, Some(super::state::HookRun::PostStart { since, .. })) => {
                (since, false)
            }
            _ => return,
        };
        c.hook = None;
        let path = crate::runtime::container_dir(&state_dir, &uid, name).join("state/exit.json");
        let mut exited = match crate::records::read::<Exited>(&path) {
            Ok(Some(e)) => e,
            other => Exited {
                exit_code: 255,
                signal: None,
                started_at: None,
                finished_at: super::now_rfc3339(),
                reason: "Error".into(),
                message: match other {
                    Err(e) => format!("no readable exit record: {}", crate::error_chain(&e)),
                    _ => "no readable exit record".into(),
                },
                warnings: Vec::new(),
            },
        };
        // The run's termination message (its file, or its log's end by its
        // policy) becomes the exit's message, as the kubelet's lastState.
        let from_logs = self
            .sources
            .pod(key)
            .and_then(|p| p.all_containers().find(|pc| pc.name.as_str() == name))
            .is_some_and(|pc| pc.termination_message_from_logs);
        let cdir = crate::runtime::container_dir(&state_dir, &uid, name);
        if let Some(m) = crate::runtime::termination_message(&cdir, exited.exit_code, from_logs) {
            exited.message = m;
        }
        let Some(super::state::Pod::Live(run)) = self.pods.get_mut(key) else {
            return;
        };
        let Some(c) = run.containers.get_mut(name) else {
            return;
        };
        c.state.status = Status::Terminated {
            exit_code: exited.exit_code,
            started: since,
            finished: Instant::now(),
        };
        c.state.crashes += 1;
        c.probes = None;
        c.kill_at = None;
        c.unwatch_exit(&self.exits);
        let oom_base = c.oom_base;
        if stopping {
            // Stopped on purpose: it starts again at once, with its spec.
            if let Some(p) = self.sources.pod(key).cloned() {
                self.start(key, &p, name, true);
            }
            return;
        }
        let ooms = self
            .rt
            .container_usage(&uid, name)
            .map_or(0, |u| u.oom_kills);
        if exited.signal == Some(9) && ooms > oom_base {
            exited.reason = "OOMKilled".into();
            self.event(
                Kind::Warning,
                "OOMKilled",
                key,
                Some(name),
                "the kernel's OOM killer killed it (memory limit reached)".into(),
            );
        } else {
            let how = match exited.signal {
                Some(sig) => format!("killed by signal {sig}"),
                None => format!("exited with code {}", exited.exit_code),
            };
            let kind = if exited.exit_code == 0 {
                Kind::Normal
            } else {
                Kind::Warning
            };
            self.event(kind, "Exited", key, Some(name), how);
        }
        let policy = self
            .sources
            .pod(key)
            .map(|p| reconcile::effective_policy(p, name));
        let Some(c) = self.container_mut(key, name) else {
            return;
        };
        c.last_exit = Some(exited);
        // A pod failed by its deadline restarts nothing, nor does a sidecar
        // stopped once its pod's app containers ended.
        if for_good
            || self
                .live(key)
                .is_some_and(|r| r.deadline_exceeded || r.evicted.is_some())
        {
            return;
        }
        let Some(c) = self.container_mut(key, name) else {
            return;
        };
        let next = policy.and_then(|policy| reconcile::restart_at(policy, &c.state));
        if let Some(at) = next {
            let wait = at.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                self.event(
                    Kind::Warning,
                    "BackOff",
                    key,
                    Some(name),
                    format!(
                        "back-off {}s restarting the container",
                        wait.as_secs_f64().round()
                    ),
                );
            }
        }
    }
}
