//! After each pass: what the API serves. The status comes from the pure
//! projection (`crate::status`) over the desired pods and what runs; a
//! manifest problem or conflict seen for the first time becomes an event
//! (once, not on every pass); the counts of what the agent holds go to
//! `/metrics`.

use super::state::{Pod, Tracked};
use super::Agent;
use crate::events::Kind;
use crate::status::{self, Clock, NodeStatus};
use crate::watch::DesiredState;

impl Agent {
    pub(super) fn publish(&mut self, desired: &DesiredState) {
        let clock = Clock::now();
        let mut pods = Vec::new();
        for (key, (file, p)) in &desired.pods {
            let file = file.display().to_string();
            pods.push(match self.pods.get(key) {
                Some(Pod::Live(run)) => {
                    let state = run.planner_state();
                    let mut s = status::pod_status(&file, p, Some(&run.seen(&state)), false, clock);
                    s.host_ip = self.rt.host_ip.clone();
                    s
                }
                Some(Pod::Terminating(_)) => status::pod_status(&file, p, None, true, clock),
                None => status::pod_status(&file, p, None, false, clock),
            });
        }
        let now = status::seconds(&super::now_rfc3339());
        status::stamp_transitions(&mut pods, &mut self.transitions, &now);
        let started = self.first_sights(&pods);
        self.judge_trial(&pods);
        // Pods whose file is gone are shown until they are.
        for (key, pod) in &self.pods {
            if let Pod::Terminating(t) = pod {
                if !desired.pods.contains_key(key) {
                    pods.push(status::leaving_pod_status(key, &t.uid));
                }
            }
        }
        let problems: Vec<String> = self
            .sources
            .files
            .values()
            .flat_map(|f| f.diagnostics.iter().map(|d| d.to_string()))
            .collect();
        for line in status::newly_seen(&self.reported, &problems) {
            let object = line.split(':').next().unwrap_or("");
            self.event(
                Kind::Warning,
                "FailedValidation",
                object,
                None,
                line.clone(),
            );
        }
        for c in status::newly_seen(&self.reported, &desired.conflicts) {
            let object = c.split(':').next().unwrap_or("");
            self.event(Kind::Warning, "Conflict", object, None, c.clone());
        }
        self.reported = problems.clone();
        self.reported.extend(desired.conflicts.iter().cloned());
        let mut tracked = Tracked::count(&self.pods);
        tracked.starts_in_flight = self.starter.in_flight();
        tracked.children = self.children.len();
        let node = NodeStatus {
            pods,
            problems,
            conflicts: desired.conflicts.clone(),
        };
        if let Ok(mut v) = self.view.lock() {
            for d in started {
                v.pod_start.observe(d.as_secs_f64());
            }
            v.probes
                .retain(|(ns, pod, ..), _| desired.pods.contains_key(&format!("{ns}/{pod}")));
            v.versions.update(&node.pods);
            v.status = Some(node);
            v.tracked = tracked.by_kind().to_vec();
        }
    }

    /// Notes the first sight of each desired pod (a new uid is a new pod).
    /// A pod whose sandbox exists when first seen was adopted: it did not
    /// start here and is not counted.
    pub(super) fn sight(&mut self, desired: &DesiredState) {
        let now = std::time::Instant::now();
        for (key, (_, p)) in &desired.pods {
            if self.first_seen.get(key).is_some_and(|s| s.uid == p.uid) {
                continue;
            }
            let adopted = matches!(self.pods.get(key), Some(Pod::Live(_)));
            let sight = FirstSight {
                uid: p.uid.clone(),
                at: now,
                started: adopted,
            };
            self.first_seen.insert(key.clone(), sight);
        }
        self.first_seen.retain(|k, _| desired.pods.contains_key(k));
    }

    /// How long each pod that has just started running took from its first
    /// sight.
    fn first_sights(&mut self, pods: &[status::PodStatus]) -> Vec<std::time::Duration> {
        let now = std::time::Instant::now();
        let mut started = Vec::new();
        for p in pods.iter().filter(|p| p.phase == "Running") {
            let key = format!("{}/{}", p.namespace, p.name);
            if let Some(s) = self.first_seen.get_mut(&key) {
                if !s.started && s.uid == p.uid {
                    s.started = true;
                    started.push(now - s.at);
                }
            }
        }
        started
    }
}

/// When the agent first saw a pod, and whether it has run since.
#[derive(Debug)]
pub(super) struct FirstSight {
    uid: String,
    at: std::time::Instant,
    started: bool,
}
