//! Stopping: a container stopped alone gets its preStop hook (`hooks`) or
//! its stop signal (SIGTERM, or `lifecycle.stopSignal`) now and SIGKILL to
//! its cgroup at its deadline (`kill_at`); a pod being deleted becomes
//! `Terminating` (all its per-container state goes with its `PodRun`): its
//! app containers are stopped first, then its sidecars one by one, the
//! last first, each once everything before it has exited, all within the
//! one grace period; the pod is removed, with its network, once its
//! containers have exited or been killed. Nothing here waits: the loop goes on, so a slow pod holds up no
//! other. Only the agent's own exit with `--stop-pods-on-exit` waits, one
//! grace period for every pod.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::events::Kind;
use crate::reconcile::Status;

use super::hooks::MIN_GRACE;
use super::state::{HookRun, Pod, StopSpec, Terminating, KILL_WAIT};
use super::Agent;

impl Agent {
    /// SIGTERM to the container's init now, SIGKILL to its cgroup when the
    /// grace period is over; its exit then restarts it by policy (or, when
    /// it is `Stopping`, at once).
    pub(super) fn stop_container(&mut self, key: &str, name: &str) {
        let Some(Pod::Live(run)) = self.pods.get_mut(key) else {
            return;
        };
        let (uid, grace) = (run.uid.clone(), run.grace);
        let Some(c) = run.containers.get_mut(name) else {
            return;
        };
        if c.hook == Some(HookRun::PreStop) {
            return; // being stopped already
        }
        c.probes = None;
        c.kill_at = Some(Instant::now() + grace);
        let (pid, stop) = (c.pid, c.stop.clone());
        let ip = run.ip.clone();
        let to = super::hooks::StopTo {
            uid: &uid,
            ip: ip.as_deref(),
            key,
            name,
            pid,
        };
        let hooked = self.send_stop(&to, stop.pre_stop.as_ref(), stop.signal, grace);
        if hooked {
            if let Some(c) = self.container_mut(key, name) {
                c.hook = Some(HookRun::PreStop);
            }
        }
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
        // An evicted pod's start that was in flight runs now: stopped too.
        let evicted: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| matches!(p, Pod::Live(run) if run.evicted.is_some()))
            .map(|(k, _)| k.clone())
            .collect();
        for key in evicted {
            self.stop_evicted(&key);
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

    /// SIGKILLs what is left of containers whose grace period is over; a
    /// preStop hook still running then is given up: the stop signal now,
    /// SIGKILL 2 s later (the kubelet's minimum).
    pub(super) fn enforce_kills(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut late_hooks = Vec::new();
        for (key, pod) in self.pods.iter_mut() {
            let Pod::Live(run) = pod else { continue };
            for (name, c) in run.containers.iter_mut() {
                if c.kill_at.is_none_or(|at| at > now) {
                    continue;
                }
                if c.hook == Some(HookRun::PreStop) {
                    c.hook = None;
                    c.kill_at = Some(now + MIN_GRACE);
                    late_hooks.push((key.clone(), run.uid.clone(), name.clone(), c.stop.signal));
                } else {
                    c.kill_at = None;
                    due.push((key.clone(), run.uid.clone(), name.clone()));
                }
            }
        }
        for (key, uid, name, signal) in late_hooks {
            self.pre_stop_late(&key, &uid, &name, signal);
        }
        for (key, uid, name) in due {
            self.kill(&key, &uid, &name);
        }
    }

    /// A preStop hook outlived its grace period: given up, and the stop
    /// signal sent.
    fn pre_stop_late(&self, key: &str, uid: &str, name: &str, signal: Signal) {
        self.event(
            Kind::Warning,
            "FailedPreStopHook",
            key,
            Some(name),
            "PreStop hook did not complete within the grace period: stopping the container".into(),
        );
        let dir = crate::runtime::container_dir(&self.args.state_dir, uid, name).join("state");
        crate::runtime::signal_init(&dir, signal);
    }

    /// Starts deleting a pod: its app containers get their stop now (a
    /// preStop hook, or the stop signal), its sidecars later, one by one;
    /// the loop goes on and `progress_terminations` sends the next stops
    /// and removes the pod once its containers are gone.
    pub(super) fn begin_delete(&mut self, key: &str, grace: Duration) {
        if !matches!(self.pods.get(key), Some(Pod::Live(_))) {
            return;
        }
        let Some(Pod::Live(mut run)) = self.pods.remove(key) else {
            return;
        };
        let mut exit_watches = Vec::new();
        let mut apps = Vec::new();
        let mut sidecars = Vec::new();
        for (name, c) in run.containers.iter_mut() {
            exit_watches.extend(c.exit_watch.take());
            // A preStop hook already running (the container was being
            // stopped alone) is not made again.
            let mut stop = c.stop.clone();
            if c.hook == Some(HookRun::PreStop) {
                stop.pre_stop = None;
            }
            let entry = (name.clone(), c.pid, stop);
            match entry.2.sidecar {
                Some(i) => sidecars.push((i, entry)),
                None => apps.push(entry),
            }
        }
        sidecars.sort_by_key(|s| std::cmp::Reverse(s.0));
        let mut waves: VecDeque<Vec<(String, i32, StopSpec)>> = VecDeque::new();
        waves.push_back(apps);
        waves.extend(sidecars.into_iter().map(|(_, e)| vec![e]));
        let mut t = Terminating {
            uid: run.uid.clone(),
            containers: run.containers.keys().cloned().collect(),
            exit_watches,
            deadline: Instant::now() + grace,
            killed: false,
            ip: run.ip.clone(),
            waves,
            stopping: Vec::new(),
            hooks: Vec::new(),
            extended: false,
        };
        self.next_wave(key, &mut t);
        self.pods.insert(key.to_string(), Pod::Terminating(t));
    }

    /// Sends the stops of the next group of a terminating pod.
    fn next_wave(&self, key: &str, t: &mut Terminating) {
        let Some(wave) = t.waves.pop_front() else {
            return;
        };
        let left = t.deadline.saturating_duration_since(Instant::now());
        for (name, pid, stop) in wave {
            let to = super::hooks::StopTo {
                uid: &t.uid,
                ip: t.ip.as_deref(),
                key,
                name: &name,
                pid,
            };
            let hooked = self.send_stop(&to, stop.pre_stop.as_ref(), stop.signal, left);
            if hooked {
                t.hooks.push((name.clone(), stop.signal));
            }
            t.stopping.push(name);
        }
    }

    /// Kills what outlived its grace period and removes the pods whose
    /// containers have all exited. Returns whether a pod was removed.
    pub(super) fn progress_terminations(&mut self) -> bool {
        let now = Instant::now();
        let mut done = Vec::new();
        let mut kill = Vec::new();
        let mut waves = Vec::new();
        let mut late_hooks = Vec::new();
        for (key, pod) in self.pods.iter_mut() {
            let Pod::Terminating(t) = pod else { continue };
            let base = self.args.state_dir.join("containers").join(&t.uid);
            let gone = |n: &String| {
                let st = base.join(n).join("state");
                !st.join("state.json").exists() || st.join("exit.json").exists()
            };
            // The next group once the stopped ones have exited.
            if !t.killed && t.hooks.is_empty() && !t.waves.is_empty() && t.stopping.iter().all(gone)
            {
                waves.push(key.clone());
                continue;
            }
            // A start in flight still writes into the pod's directories.
            if self.starter.starting_for(&t.uid) {
                continue;
            }
            let exited = t.containers.iter().all(gone);
            if exited || (t.killed && now >= t.deadline + KILL_WAIT) {
                done.push(key.clone());
            } else if now >= t.deadline && !t.killed && !t.hooks.is_empty() && !t.extended {
                // preStop hooks still running at the deadline: given up, the
                // stop signal sent, and 2 s more, once.
                t.extended = true;
                t.deadline = now + MIN_GRACE;
                for (name, signal) in t.hooks.drain(..) {
                    late_hooks.push((key.clone(), t.uid.clone(), name, signal));
                }
            } else if now >= t.deadline && !t.killed {
                t.killed = true;
                kill.push((key.clone(), t.uid.clone(), t.containers.clone()));
            }
        }
        for key in waves {
            if let Some(Pod::Terminating(mut t)) = self.pods.remove(&key) {
                self.next_wave(&key, &mut t);
                self.pods.insert(key, Pod::Terminating(t));
            }
        }
        for (key, uid, name, signal) in late_hooks {
            self.pre_stop_late(&key, &uid, &name, signal);
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
