//! A pass: the desired pods and what runs are planned against each other
//! (`reconcile::plan`, pure), and each action becomes its effects. Starts go
//! to the pool and come back through `finish_start`; until then the
//! container is `Starting` and the planner leaves it alone.

use std::time::{Duration, Instant};

use nix::sys::inotify::AddWatchFlags;
use nix::sys::signal::Signal;
use specs::plan::{ContainerResources, PodPlan};

use super::state::{ContainerRun, Pod};
use super::Agent;
use crate::events::Kind;
use crate::reconcile::{self, Action, ContainerState, Status};
use crate::records::ContainerRecord;
use crate::shim::Exited;

impl Agent {
    /// Plans and executes once; returns whether anything was done, and when
    /// to wake for a back-off.
    /// `publish`: the status is published after this pass whatever it did
    /// (the last pass of a turn); otherwise only when it did nothing (then
    /// the turn ends with it).
    pub(super) fn pass(&mut self, publish: bool) -> (bool, Option<Instant>) {
        let desired = self.sources.desired();
        self.sight(&desired);
        // A pod still terminating is left alone until it is gone.
        let plans: reconcile::Desired = desired
            .pods
            .iter()
            .filter(|(k, _)| !matches!(self.pods.get(*k), Some(Pod::Terminating(_))))
            .map(|(k, (_, p))| (k.clone(), p.clone()))
            .collect();
        let actual: reconcile::Actual = self
            .pods
            .iter()
            .filter_map(|(k, pod)| match pod {
                Pod::Live(run) => Some((k.clone(), run.planner_state())),
                Pod::Terminating(_) => None,
            })
            .collect();
        let t0 = Instant::now();
        let plan = reconcile::plan(&plans, &actual, t0);
        let acted = !plan.actions.is_empty();
        for action in plan.actions {
            self.execute(&action, &plans);
        }
        if publish || !acted {
            self.publish(&desired);
        }
        if let Ok(mut v) = self.view.lock() {
            v.reconcile.observe(t0.elapsed().as_secs_f64());
            v.ready = true;
        }
        (acted, plan.wake_at)
    }

    fn execute(&mut self, action: &Action, plans: &reconcile::Desired) {
        match action {
            Action::CreateSandbox { pod } => match self.make_sandbox(&plans[pod], false) {
                Ok(run) => {
                    let message = match &run.ip {
                        Some(ip) => format!("sandbox ready, IP {ip}"),
                        None => "sandbox ready".to_string(),
                    };
                    self.pods.insert(pod.clone(), Pod::Live(run));
                    self.event(Kind::Normal, "Scheduled", pod, None, message);
                }
                Err(e) => self.event(
                    Kind::Warning,
                    "FailedCreatePodSandBox",
                    pod,
                    None,
                    crate::error_chain(&e),
                ),
            },
            Action::StartContainer { pod, container } => {
                self.start(pod, &plans[pod], container, false)
            }
            Action::StopContainer { pod, container } => {
                let since = match self.live(pod).and_then(|r| r.containers.get(container)) {
                    Some(c) => match c.state.status {
                        Status::Running { since } => since,
                        _ => return,
                    },
                    None => return,
                };
                self.event(
                    Kind::Normal,
                    "Killing",
                    pod,
                    Some(container),
                    "the pod's app containers have ended: stopping its sidecar".into(),
                );
                self.stop_container(pod, container);
                if let Some(c) = self.container_mut(pod, container) {
                    c.state.status = Status::Stopping {
                        since,
                        restart: false,
                    };
                }
            }
            Action::RestartContainer { pod, container } => {
                self.restart(pod, &plans[pod], container, "its definition changed");
            }
            Action::ResizeContainer {
                pod,
                container,
                resources,
            } => self.resize(pod, &plans[pod], container, resources),
            Action::RefreshFiles { pod } => {
                let p = &plans[pod];
                let Some(run) = self.live(pod) else { return };
                let written = crate::runtime::sandbox::write_file_volumes(&run.sandbox, p);
                match written {
                    Ok(()) => self.event(
                        Kind::Normal,
                        "FilesUpdated",
                        pod,
                        None,
                        "its downward API files were rewritten in place".into(),
                    ),
                    Err(e) => self.event(
                        Kind::Warning,
                        "FailedMount",
                        pod,
                        None,
                        crate::error_chain(&e),
                    ),
                }
                // Not tried again until they change once more: a pass
                // must not spin on a failing write.
                if let Some(run) = self.live_mut(pod) {
                    run.files_hash = reconcile::files_hash(p);
                }
            }
            Action::RecreatePod { pod } | Action::DeletePod { pod, .. } => {
                let (reason, message) = match action {
                    Action::RecreatePod { .. } => (
                        "SandboxChanged",
                        "pod-level fields changed: it will be killed and re-created",
                    ),
                    _ => ("Killing", "its manifest is gone: stopping the pod"),
                };
                self.event(Kind::Normal, reason, pod, None, message.into());
                let grace = match action {
                    Action::DeletePod { grace, .. } => *grace,
                    _ => self.live(pod).map_or(Duration::from_secs(30), |r| r.grace),
                };
                self.begin_delete(pod, grace);
            }
        }
    }

    /// New resources written to the container's cgroup in place; if the
    /// kernel refuses them (a limit below current usage), it restarts with
    /// them instead.
    fn resize(&mut self, key: &str, p: &PodPlan, name: &str, resources: &ContainerResources) {
        let cg = match self
            .rt
            .pod_cgroup(p)
            .and_then(|cg| cg.join(name).map_err(Into::into))
        {
            Ok(cg) => cg,
            Err(e) => {
                let message = crate::error_chain(&e);
                self.event(Kind::Warning, "ResizeFailed", key, Some(name), message);
                return;
            }
        };
        let applied = self
            .rt
            .resize_limits(p, name, resources)
            .and_then(|limits| Ok(self.rt.cgroups.apply(&cg, &limits)?));
        match applied {
            Ok(()) => {
                self.event(
                    Kind::Normal,
                    "Resized",
                    key,
                    Some(name),
                    "resources applied to its cgroup in place".into(),
                );
                if let Some(c) = self.container_mut(key, name) {
                    c.state.resources = Some(resources.clone());
                }
                // The run's record follows: an agent that restarts adopts it
                // as resized instead of applying the same resize again.
                let record = self
                    .rt
                    .state_dir
                    .join("containers")
                    .join(&p.uid)
                    .join(name)
                    .join("agent.json");
                let updated = crate::records::read::<ContainerRecord>(&record).and_then(|r| {
                    let Some(mut r) = r else { return Ok(()) };
                    r.resources = serde_json::to_value(resources).unwrap_or_default();
                    crate::records::write(&record, &r)
                });
                self.report(updated, "FailedRecord", key, Some(name));
            }
            Err(e) => {
                self.event(
                    Kind::Warning,
                    "ResizeFailed",
                    key,
                    Some(name),
                    format!(
                        "{}; restarting it with the new resources",
                        crate::error_chain(&e)
                    ),
                );
                self.restart(key, p, name, "the kernel refused the new limits");
            }
        }
    }

    /// Hands a container's start to the pool; `finish_start` records it.
    /// Until then it is `Starting` and the planner leaves it alone.
    pub(super) fn start(&mut self, key: &str, p: &PodPlan, name: &str, new_spec: bool) {
        let id = (key.to_string(), name.to_string());
        if self.starter.is_starting(&id) {
            return;
        }
        let Some(c) = p.all_containers().find(|c| c.name.as_str() == name) else {
            return;
        };
        let Some(run) = self.live(key) else {
            return;
        };
        let prev = run.containers.get(name).map(|c| &c.state);
        let (restarts, crashes) = reconcile::next_run_counts(prev, new_spec);
        let job = crate::starter::Job {
            id: id.clone(),
            pod: p.clone(),
            container: c.clone(),
            sandbox: run.sandbox.clone(),
            net_ns: run.net_ns.clone(),
            restarts,
            crashes,
            pulled: None,
        };
        let state = ContainerState::of(c, Status::Starting, restarts, crashes);
        let Some(Pod::Live(run)) = self.pods.get_mut(key) else {
            return;
        };
        let mut next = ContainerRun::new(state);
        // The previous run's exit (perhaps still queued) is not this run's;
        // its last exit is kept for the status.
        if let Some(mut old) = run.containers.remove(name) {
            old.unwatch_exit(&self.exits);
            next.last_exit = old.last_exit;
            next.started_at = old.started_at;
            next.image_id = old.image_id;
            next.shim = old.shim;
        }
        run.containers.insert(name.to_string(), next);
        // Before the pool has it: the image collector leaves it alone.
        self.image_gc.using(&c.image);
        if self.rt.pulls(c) {
            self.event(
                Kind::Normal,
                "Pulling",
                key,
                Some(name),
                format!("pulling image {}", c.image),
            );
        }
        self.starter.submit(job);
    }

    /// Records the starts the pool has finished.
    pub(super) fn start_results(&mut self) {
        for done in self.starter.finished() {
            self.finish_start(done);
        }
    }

    pub(super) fn finish_start(&mut self, done: crate::starter::Done) {
        let crate::starter::Done {
            job,
            result,
            recorded,
            pulled,
        } = done;
        let (key, name) = (job.id.0.as_str(), job.id.1.as_str());
        let (p, c) = (&job.pod, &job.container);
        if let Some(pl) = &pulled {
            self.event(
                Kind::Normal,
                "Pulled",
                key,
                Some(name),
                format!(
                    "pulled {} ({}, {} bytes in {:.2} s)",
                    pl.info.reference,
                    pl.info.digest,
                    pl.info.size,
                    pl.took.as_secs_f64()
                ),
            );
        }
        if self.live(key).is_none_or(|r| r.uid != p.uid) {
            // Its pod began stopping meanwhile: the new process follows the
            // others (SIGTERM now, SIGKILL at the pod's deadline).
            if let Ok(h) = &result {
                self.children.push(h.started.shim_pid);
                match self.pods.get_mut(key) {
                    Some(Pod::Terminating(t)) if t.uid == p.uid && !t.killed => {
                        if !t.containers.iter().any(|n| n == name) {
                            t.containers.push(name.to_string());
                        }
                        let state = h.dir.join("state");
                        // Its exit wakes the loop, as its pod's others do.
                        if let Ok(wd) = self.exits.add_watch(&state, AddWatchFlags::IN_MOVED_TO) {
                            t.exit_watches.push(wd);
                        }
                        crate::runtime::signal_init(&state, Signal::SIGTERM);
                    }
                    _ => self.kill(key, &p.uid, name),
                }
            }
            return;
        }
        let now = Instant::now();
        let running = Status::Running { since: now };
        let mut state = ContainerState::of(c, running, job.restarts, job.crashes);
        match result {
            Ok(h) => {
                self.event(
                    Kind::Normal,
                    "Started",
                    key,
                    Some(name),
                    format!("started {} (pid {})", c.image, h.started.pid),
                );
                for w in &h.started.warnings {
                    self.event(Kind::Warning, "Degraded", key, Some(name), w.clone());
                }
                let oom_base = self
                    .rt
                    .container_usage(&p.uid, name)
                    .map_or(0, |u| u.oom_kills);
                self.children.push(h.started.shim_pid);
                let mut probes = crate::probe::ContainerProbes::new(c, now);
                probes.pid = h.started.pid;
                let exit_watch = self.watch_exit(key, name, &h.dir.join("state"));
                let stop = super::state::StopSpec::of(p, c);
                // Without its record it runs, but a restarted agent would
                // not adopt it.
                self.report(recorded, "FailedRecord", key, Some(name));
                if let Some(run) = self.container_mut(key, name) {
                    run.state = state;
                    run.oom_base = oom_base;
                    run.started_at = Some(h.started.started_at.clone());
                    run.image_id = Some(h.image_id.clone());
                    run.probes = Some(probes);
                    run.exit_watch = exit_watch;
                    run.pid = h.started.pid;
                    run.stop = stop;
                }
                // With a postStart hook it is not Running (nor probed) until
                // the hook returns.
                if self.begin_post_start(key, name, h.started.pid) {
                    if let Some(run) = self.container_mut(key, name) {
                        run.state.status = Status::Starting;
                        run.probes = None;
                    }
                }
                // Once it is recorded as running: a container that already
                // exited is found through its shim's pidfd.
                self.watch_shim(key, name, &h.started);
            }
            Err(e) => {
                let message = crate::error_chain(&e);
                self.event(Kind::Warning, "Failed", key, Some(name), message.clone());
                use specs::oci::OciError;
                let reason = match &e {
                    crate::runtime::RuntimeError::Pull { reason, .. } => *reason,
                    crate::runtime::RuntimeError::Spec(
                        OciError::RunsAsRoot { .. } | OciError::NonNumericUser { .. },
                    ) => "CreateContainerConfigError",
                    _ => "StartError",
                };
                state.status = Status::Terminated {
                    exit_code: 128,
                    started: now,
                    finished: now,
                };
                state.crashes += 1;
                // It never ran: retried whatever the restart policy, its pod
                // Pending (the kubelet's waiting reasons).
                state.image_pull_failed = matches!(
                    reason,
                    "ErrImagePull" | "ErrImageNeverPull" | "CreateContainerConfigError"
                );
                // The kubelet's `BackOff` for an image: the next try's wait.
                if state.image_pull_failed && reason != "CreateContainerConfigError" {
                    let policy = reconcile::effective_policy(p, name);
                    if let Some(at) = reconcile::restart_at(policy, &state) {
                        self.event(
                            Kind::Normal,
                            "BackOff",
                            key,
                            Some(name),
                            format!(
                                "back-off {}s pulling image {}",
                                at.saturating_duration_since(Instant::now())
                                    .as_secs_f64()
                                    .round(),
                                c.image
                            ),
                        );
                    }
                }
                if let Some(run) = self.container_mut(key, name) {
                    run.state = state;
                    run.last_exit = Some(Exited {
                        exit_code: 128,
                        signal: None,
                        started_at: None,
                        finished_at: super::now_rfc3339(),
                        reason: reason.into(),
                        message,
                        warnings: Vec::new(),
                    });
                }
            }
        }
    }

    /// Restarts a container with its current spec: a running one gets
    /// SIGTERM (SIGKILL to its cgroup after the grace period), is
    /// `Stopping`, and starts again once its exit is recorded, without the
    /// loop waiting; one not running starts now.
    fn restart(&mut self, key: &str, p: &PodPlan, name: &str, why: &str) {
        let Some(c) = self.live(key).and_then(|r| r.containers.get(name)) else {
            self.start(key, p, name, true);
            return;
        };
        match c.state.status {
            Status::Stopping { .. } => {}
            Status::Running { since } => {
                self.event(
                    Kind::Normal,
                    "Killing",
                    key,
                    Some(name),
                    format!("{why}: it will be restarted"),
                );
                self.stop_container(key, name);
                if let Some(c) = self.container_mut(key, name) {
                    c.state.status = Status::Stopping {
                        since,
                        restart: true,
                    };
                }
            }
            _ => self.start(key, p, name, true),
        }
    }
}
