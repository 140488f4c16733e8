//! Stopping: a container stopped alone gets SIGTERM now and SIGKILL to its
//! cgroup at its deadline (`kill_at`); a pod being deleted becomes
//! `Terminating` (all its per-container state goes with its `PodRun`) and is
//! removed, with its network, once its containers have exited or been
//! killed. Nothing here waits: the loop goes on, so a slow pod holds up no
//! other. Only the agent's own exit with `--stop-pods-on-exit` waits, one
//! grace period for every pod.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::events::Kind;
use crate::reconcile::Status;

use super::state::{Pod, Terminating, KILL_WAIT};
use super::Agent;

impl Agent {
    /// SIGTERM to the container's init now, SIGKILL to its cgroup when the
    /// grace period is over; its exit then restarts it by policy (or, when
    /// it is `Stopping`, at once).
    pub(super) fn stop_container(&mut self, key: &str, name: &str) {
        let state_dir = self.args.state_dir.clone();
        let Some(Pod::Live(run)) = self.pods.get_mut(key) else {
            return;
        };
        let (uid, grace) = (run.uid.clone(), run.grace);
        let Some(c) = run.containers.get_mut(name) else {
            return;
        };
        c.probes = None;
        c.kill_at = Some(Instant::now() + grace);
        let dir = crate::runtime::container_dir(&state_dir, &uid, name).join("state");
        crate::runtime::signal_init(&dir, Signal::SIGTERM);
    }

    /// Fails the pods whose `activeDeadlineSeconds` have passed since their
    /// start, as the kubelet does: an event, every running container
    /// stopped within its grace period, none started again (the planner
    /// skips the pod), and the phase Failed with reason `DeadlineExceeded`.
    /// A container whose start was in flight is stopped once it runs.
    pub(super) fn enforce_deadlines(&mut self) {
        let now = std::time::SystemTime::now();
        let mut newly = Vec::new();
        let mut to_stop = Vec::new();
        for (key, pod) in self.pods.iter_mut() {
            let Pod::Live(run) = pod else { continue };
            let Some(p) = self.sources.pod(key).filter(|p| p.uid == run.uid) else {
                continue;
            };
            let Some(secs) = p.active_deadline_secs else {
                continue;
            };
            if !run.deadline_exceeded && now >= run.created + Duration::from_secs(secs) {
                run.deadline_exceeded = true;
                newly.push(key.clone());
            }
            if run.deadline_exceeded {
                for (name, c) in run.containers.iter() {
                    if matches!(c.state.status, Status::Running { .. }) && c.kill_at.is_none() {
                        to_stop.push((key.clone(), name.clone()));
                    }
                }
            }
        }
        for key in newly {
            self.event(
                Kind::Warning,
                "DeadlineExceeded",
                &key,
                None,
                "Pod was active on the node longer than the specified deadline".into(),
            );
        }
        for (key, name) in to_stop {
            self.stop_container(&key, &name);
        }
    }

    /// When the next live pod's `activeDeadlineSeconds` pass.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let (now, wall) = (Instant::now(), std::time::SystemTime::now());
        self.pods
            .iter()
            .filter_map(|(key, pod)| {
                let Pod::Live(run) = pod else { return None };
                let secs = self.sources.pod(key)?.active_deadline_secs?;
                if run.deadline_exceeded {
                    return None;
                }
                let at = run.created + Duration::from_secs(secs);
                Some(now + at.duration_since(wall).unwrap_or_default())
            })
            .min()
    }

    /// SIGKILLs what is left of containers whose grace period is over.
    pub(super) fn enforce_kills(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        for (key, pod) in self.pods.iter_mut() {
            let Pod::Live(run) = pod else { continue };
            for (name, c) in run.containers.iter_mut() {
                if c.kill_at.is_some_and(|at| at <= now) {
                    c.kill_at = None;
                    due.push((key.clone(), run.uid.clone(), name.clone()));
                }
            }
        }
        for (key, uid, name) in due {
            self.kill(&key, &uid, &name);
        }
    }

    /// Starts deleting a pod: SIGTERM to every container now; the loop goes
    /// on and `progress_terminations` removes the pod once they are gone.
    pub(super) fn begin_delete(&mut self, key: &str, grace: Duration) {
        if !matches!(self.pods.get(key), Some(Pod::Live(_))) {
            return;
        }
        let Some(Pod::Live(mut run)) = self.pods.remove(key) else {
            return;
        };
        let base = self.args.state_dir.join("containers").join(&run.uid);
        let mut exit_watches = Vec::new();
        for (name, c) in run.containers.iter_mut() {
            exit_watches.extend(c.exit_watch.take());
            crate::runtime::signal_init(&base.join(name).join("state"), Signal::SIGTERM);
        }
        self.pods.insert(
            key.to_string(),
            Pod::Terminating(Terminating {
                uid: run.uid.clone(),
                containers: run.containers.keys().cloned().collect(),
                exit_watches,
                deadline: Instant::now() + grace,
                killed: false,
            }),
        );
    }

    /// Kills what outlived its grace period and removes the pods whose
    /// containers have all exited. Returns whether a pod was removed.
    pub(super) fn progress_terminations(&mut self) -> bool {
        let now = Instant::now();
        let mut done = Vec::new();
        let mut kill = Vec::new();
        for (key, pod) in self.pods.iter_mut() {
            let Pod::Terminating(t) = pod else { continue };
            // A start in flight still writes into the pod's directories.
            if self.starter.starting_for(&t.uid) {
                continue;
            }
            let base = self.args.state_dir.join("containers").join(&t.uid);
            let exited = t.containers.iter().all(|n| {
                let st = base.join(n).join("state");
                !st.join("state.json").exists() || st.join("exit.json").exists()
            });
            if exited || (t.killed && now >= t.deadline + KILL_WAIT) {
                done.push(key.clone());
            } else if now >= t.deadline && !t.killed {
                t.killed = true;
                kill.push((key.clone(), t.uid.clone(), t.containers.clone()));
            }
        }
        for (key, uid, names) in kill {
            for n in names {
                self.kill(&key, &uid, &n);
            }
        }
        for key in &done {
            if let Some(Pod::Terminating(t)) = self.pods.remove(key) {
                for wd in t.exit_watches {
                    super::state::rm_watch(&self.exits, wd);
                }
                self.remove_pod_remains(key, &t.uid);
            }
        }
        !done.is_empty()
    }

    /// Everything of that uid: processes left, mounts, cgroups,
    /// directories, sandbox; then its network. Failures are events.
    fn remove_pod_remains(&self, key: &str, uid: &str) {
        self.report(self.rt.gc(&|u| u != uid), "FailedKillPod", key, None);
        self.teardown_network(key, uid);
    }

    /// The pod's veth, address, host ports and network namespace.
    fn teardown_network(&self, key: &str, uid: &str) {
        if let Some(net) = &self.net {
            self.report(net.teardown(uid), "FailedTeardown", key, None);
        }
    }

    /// The agent's exit with `--stop-pods-on-exit`: every pod gets its
    /// SIGTERM at once, so the grace periods run together rather than one
    /// after another; what is left is killed and removed.
    pub(super) fn stop_every_pod(&mut self) {
        let t0 = Instant::now();
        let desired = self.sources.desired();
        let live: Vec<(String, Duration)> = self
            .pods
            .iter()
            .filter_map(|(k, pod)| match pod {
                Pod::Live(run) => Some((k.clone(), run.grace)),
                Pod::Terminating(_) => None,
            })
            .collect();
        for (k, _) in &live {
            if let Some((_, p)) = desired.pods.get(k) {
                self.rt.terminate(p);
            }
        }
        for (k, grace) in live {
            let left = (t0 + grace).saturating_duration_since(Instant::now());
            self.delete_pod_now(&k, left);
        }
        // Pods already terminating: what is left is killed now.
        let terminating: Vec<(String, Terminating)> = std::mem::take(&mut self.pods)
            .into_iter()
            .filter_map(|(k, pod)| match pod {
                Pod::Terminating(t) => Some((k, t)),
                Pod::Live(_) => None,
            })
            .collect();
        for (key, t) in terminating {
            for n in &t.containers {
                self.kill(&key, &t.uid, n);
            }
            self.remove_pod_remains(&key, &t.uid);
        }
    }

    /// Stops a pod and removes it, waiting at most `grace` for its
    /// containers (the agent's exit only).
    fn delete_pod_now(&mut self, key: &str, grace: Duration) {
        let Some(Pod::Live(mut run)) = self.pods.remove(key) else {
            return;
        };
        for c in run.containers.values_mut() {
            c.unwatch_exit(&self.exits);
        }
        // The runtime needs a plan for names and paths: the current one, or
        // (its file gone) the signals by hand and GC's cgroup kill.
        match self.sources.pod(key).filter(|p| p.uid == run.uid) {
            Some(p) => {
                self.rt.stop_all(p, grace);
                for c in p.all_containers() {
                    let removed = self.rt.remove(p, c);
                    self.report(removed, "FailedRemove", key, Some(c.name.as_str()));
                }
                self.report(self.rt.remove_pod(p), "FailedRemove", key, None);
                self.teardown_network(key, &run.uid);
            }
            None => {
                let base = self.args.state_dir.join("containers").join(&run.uid);
                for name in run.containers.keys() {
                    crate::runtime::signal_init(&base.join(name).join("state"), Signal::SIGTERM);
                }
                let deadline = Instant::now() + grace;
                for name in run.containers.keys() {
                    crate::runtime::wait_for_file(
                        &base.join(name).join("state"),
                        "exit.json",
                        deadline.saturating_duration_since(Instant::now()),
                    );
                }
                self.remove_pod_remains(key, &run.uid);
            }
        }
    }
}
