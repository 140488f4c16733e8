//! Probes: the attempts that are due run on threads of their own (an
//! attempt blocks for up to its timeout); each result comes back through the
//! probe channel and a byte on the wake socket, and is applied to the
//! container's `Prober`s (`crate::probe`, pure). A failed liveness or
//! startup probe stops the container; its exit restarts it by policy.

use std::time::{Duration, Instant};

use super::{Agent, ProbeResult};
use crate::events::Kind;
use crate::probe::{Change, Kind as P, ProbeError, Target};

impl Agent {
    /// Starts the probe attempts that are due, each on a thread.
    pub(super) fn run_probes(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        for (key, pod) in self.pods.iter_mut() {
            let super::state::Pod::Live(run) = pod else {
                continue;
            };
            for (name, c) in run.containers.iter_mut() {
                let Some(cp) = c.probes.as_mut() else {
                    continue;
                };
                let pid = cp.pid;
                for p in cp.active().filter(|p| p.due(now)) {
                    p.begin();
                    due.push(((key.clone(), name.clone()), pid, p.kind, p.plan.clone()));
                }
            }
        }
        for (id, pid, kind, plan) in due {
            let target = match self.live(&id.0) {
                Some(run) => self.container_target(&run.uid, run.ip.as_deref(), &id.1),
                None => Err(ProbeError::PodGone),
            };
            let tx = self.probe_tx.clone();
            let wake = self.wake.1.try_clone();
            let for_thread = id.clone();
            let spawned = std::thread::Builder::new()
                .name("probe".into())
                .spawn(move || {
                    let timeout = Duration::from_secs(u64::from(plan.timeout_secs));
                    let result =
                        target.and_then(|t| crate::probe::attempt(&plan.action, t, timeout));
                    // The loop is gone only when the agent exits.
                    let _ = tx.send(ProbeResult {
                        id: for_thread,
                        pid,
                        kind,
                        result,
                    });
                    if let Ok(mut w) = wake {
                        use std::io::Write;
                        // A full socket already wakes the loop.
                        let _ = w.write_all(b"p");
                    }
                });
            if spawned.is_err() {
                // No thread now: the attempt is made a second later.
                if let Some(p) = self
                    .container_mut(&id.0, &id.1)
                    .and_then(|c| c.probes.as_mut())
                    .and_then(|cp| cp.probers.iter_mut().find(|p| p.kind == kind))
                {
                    p.in_flight = false;
                    p.next_at = now + Duration::from_secs(1);
                }
            }
        }
    }

    /// Where a container's probe or hook is made: its network namespace
    /// (opened through its pid, checked by start time), the pod's IP, and
    /// `podagent exec` for it.
    pub(super) fn container_target(
        &self,
        uid: &str,
        ip: Option<&str>,
        name: &str,
    ) -> Result<Target, ProbeError> {
        let dir = crate::runtime::container_dir(&self.args.state_dir, uid, name);
        let st: crate::shim::Started = crate::records::read(&dir.join("state/state.json"))
            .ok()
            .flatten()
            .ok_or(ProbeError::NotRunning)?;
        let ns =
            std::fs::File::open(format!("/proc/{}/ns/net", st.pid)).map_err(ProbeError::NetNs)?;
        if crate::shim::start_ticks(st.pid) != Some(st.start_ticks) {
            return Err(ProbeError::NotRunning);
        }
        Ok(Target {
            net_ns: ns.into(),
            pod_ip: ip.and_then(|ip| ip.parse().ok()),
            exec: crate::probe::exec_command(
                &self.rt.podagent,
                &dir,
                st.pid,
                st.start_ticks,
                &self.args.state_dir.join("seccomp-cache"),
            ),
        })
    }

    /// Applies the results the probe threads sent.
    pub(super) fn probe_results(&mut self) {
        let now = Instant::now();
        while let Ok(r) = self.probe_rx.try_recv() {
            let (key, name) = &r.id;
            // Every probe run counts, as the kubelet's prober_probe_total.
            if let Ok(mut v) = self.view.lock() {
                let (namespace, pod) = key.split_once('/').unwrap_or(("default", key));
                let result = if r.result.is_ok() {
                    "successful"
                } else {
                    "failed"
                };
                *v.probes
                    .entry((
                        namespace.to_string(),
                        pod.to_string(),
                        name.clone(),
                        r.kind.name(),
                        result,
                    ))
                    .or_default() += 1;
            }
            let Some(cp) = self
                .container_mut(key, name)
                .and_then(|c| c.probes.as_mut())
            else {
                continue;
            };
            if cp.pid != r.pid {
                continue; // for an earlier run
            }
            let Some(p) = cp.probers.iter_mut().find(|p| p.kind == r.kind) else {
                continue;
            };
            let change = p.record(r.result.is_ok(), now);

            if r.kind == P::Startup && change == Change::Succeeded {
                cp.started = true;
            }
            if let Err(e) = &r.result {
                self.event(
                    Kind::Warning,
                    "Unhealthy",
                    key,
                    Some(name),
                    format!("{} probe failed: {}", r.kind.name(), crate::error_chain(e)),
                );
            }
            if change == Change::Failed && r.kind != P::Readiness {
                self.event(
                    Kind::Normal,
                    "Killing",
                    key,
                    Some(name),
                    format!(
                        "container {name} failed its {} probe, will be restarted",
                        r.kind.name().to_lowercase()
                    ),
                );
                self.stop_container(key, name);
            }
        }
    }
}
