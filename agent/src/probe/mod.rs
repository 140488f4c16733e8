//! Probes: startup, liveness and readiness, by the kubelet's rules.
//!
//! `Prober` is the state machine of one probe (pure, time as an argument):
//! the first attempt `initialDelaySeconds` after the start, then one each
//! `periodSeconds`; `failureThreshold` failures in a row make it fail,
//! `successThreshold` successes in a row make it succeed. Readiness starts
//! failed, liveness and startup start successful. A startup probe holds the
//! others back until it has succeeded once, and is then done.
//!
//! `attempt` makes one attempt, blocking for at most the timeout; the agent
//! runs it on a thread of its own. `tcpSocket` and `httpGet` are made by the
//! agent from a thread that entered the container's network namespace (no
//! curl or nc needed in the image); `exec` runs the command in the container
//! through `podagent exec`, as `podctl exec` does.

mod attempt;

use std::time::{Duration, Instant};

use specs::plan::ProbePlan;

pub use attempt::{attempt, exec_command, ProbeError, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// What an attempt's result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// It crossed its success threshold.
    Succeeded,
    /// It crossed its failure threshold.
    Failed,
}

#[derive(Debug, Clone)]
pub struct Prober {
    pub kind: Kind,
    pub plan: ProbePlan,
    pub next_at: Instant,
    pub in_flight: bool,
    /// The probe's current verdict.
    pub healthy: bool,
    successes: u32,
    failures: u32,
}

impl Prober {
    /// The first attempt comes after `initialDelaySeconds`; a liveness
    /// probe's, also not before one period, as the kubelet's comes on its
    /// worker's next tick (readiness it triggers at once): a liveness probe
    /// made the instant the process starts finds nothing listening yet.
    pub fn new(kind: Kind, plan: ProbePlan, started: Instant) -> Self {
        let mut first = plan.initial_delay_secs;
        if kind == Kind::Liveness {
            first = first.max(plan.period_secs.max(1));
        }
        Prober {
            kind,
            next_at: started + Duration::from_secs(u64::from(first)),
            plan,
            in_flight: false,
            healthy: kind != Kind::Readiness,
            successes: 0,
            failures: 0,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        !self.in_flight && now >= self.next_at
    }

    /// Starts an attempt.
    pub fn begin(&mut self) {
        self.in_flight = true;
    }

    /// Records an attempt's result at `now`; the next is a period later.
    pub fn record(&mut self, ok: bool, now: Instant) -> Change {
        self.in_flight = false;
        self.next_at = now + Duration::from_secs(u64::from(self.plan.period_secs.max(1)));
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.healthy && self.successes >= self.plan.success_threshold.max(1) {
                self.healthy = true;
                return Change::Succeeded;
            }
            // Startup succeeds on its first success (threshold 1).
            if self.kind == Kind::Startup && self.successes == 1 {
                return Change::Succeeded;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.plan.failure_threshold.max(1) {
                let was = self.healthy;
                self.healthy = false;
                // Liveness and startup act on every crossing; readiness
                // only on a change.
                if was || self.kind != Kind::Readiness {
                    self.failures = 0;
                    return Change::Failed;
                }
            }
        }
        Change::None
    }
}

/// A container's probes.
#[derive(Debug, Clone)]
pub struct ContainerProbes {
    pub probers: Vec<Prober>,
    /// The startup probe has succeeded (or there is none).
    pub started: bool,
    /// The container's pid these probes are for: a result for an earlier
    /// run is dropped.
    pub pid: i32,
}

impl ContainerProbes {
    pub fn new(c: &specs::plan::ContainerPlan, started: Instant) -> Self {
        let mut probers = Vec::new();
        for (kind, p) in [
            (Kind::Startup, &c.startup),
            (Kind::Liveness, &c.liveness),
            (Kind::Readiness, &c.readiness),
        ] {
            if let Some(p) = p {
                probers.push(Prober::new(kind, p.clone(), started));
            }
        }
        ContainerProbes {
            started: c.startup.is_none(),
            probers,
            pid: 0,
        }
    }

    /// The probers that may run now: the startup probe until it succeeds,
    /// then the others.
    pub fn active(&mut self) -> impl Iterator<Item = &mut Prober> {
        let started = self.started;
        self.probers
            .iter_mut()
            .filter(move |p| (p.kind == Kind::Startup) != started)
    }

    /// Ready: started, and the readiness probe (if any) succeeds.
    pub fn ready(&self) -> bool {
        self.started
            && self
                .probers
                .iter()
                .filter(|p| p.kind == Kind::Readiness)
                .all(|p| p.healthy)
    }

    pub fn next_at(&self) -> Option<Instant> {
        self.probers
            .iter()
            .filter(|p| !p.in_flight && (p.kind == Kind::Startup) != self.started)
            .map(|p| p.next_at)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(delay: u32, period: u32, success: u32, failure: u32) -> ProbePlan {
        ProbePlan {
            action: specs::plan::ProbeAction::TcpSocket {
                port: 80,
                host: None,
            },
            initial_delay_secs: delay,
            period_secs: period,
            timeout_secs: 1,
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn timing_follows_initial_delay_and_period() {
        let t = Instant::now();
        let mut p = Prober::new(Kind::Liveness, plan(5, 3, 1, 3), t);
        assert!(!p.due(t + Duration::from_secs(4)));
        assert!(p.due(t + Duration::from_secs(5)));
        p.begin();
        assert!(!p.due(t + Duration::from_secs(6)), "one attempt at a time");
        p.record(true, t + Duration::from_secs(5));
        assert_eq!(p.next_at, t + Duration::from_secs(8));
        // No initial delay: readiness at once, liveness a period later.
        let r = Prober::new(Kind::Readiness, plan(0, 3, 1, 3), t);
        assert!(r.due(t));
        let l = Prober::new(Kind::Liveness, plan(0, 3, 1, 3), t);
        assert!(!l.due(t + Duration::from_secs(2)));
        assert!(l.due(t + Duration::from_secs(3)));
    }

    #[test]
    fn liveness_fails_after_failure_threshold_in_a_row() {
        let t = Instant::now();
        let mut p = Prober::new(Kind::Liveness, plan(0, 1, 1, 3), t);
        assert!(p.healthy, "liveness starts successful");
        assert_eq!(p.record(false, t), Change::None);
        assert_eq!(p.record(false, t), Change::None);
        assert_eq!(
            p.record(true, t),
            Change::None,
            "a success resets the count"
        );
        assert_eq!(p.record(false, t), Change::None);
        assert_eq!(p.record(false, t), Change::None);
        assert_eq!(p.record(false, t), Change::Failed);
    }

    #[test]
    fn readiness_starts_unready_and_needs_success_threshold() {
        let t = Instant::now();
        let mut p = Prober::new(Kind::Readiness, plan(0, 1, 2, 2), t);
        assert!(!p.healthy);
        assert_eq!(p.record(true, t), Change::None);
        assert_eq!(p.record(true, t), Change::Succeeded);
        assert!(p.healthy);
        assert_eq!(p.record(false, t), Change::None);
        assert_eq!(p.record(false, t), Change::Failed);
        assert!(!p.healthy);
        assert_eq!(p.record(false, t), Change::None, "reported once");
    }

    #[test]
    fn startup_holds_the_others_back_until_it_succeeds() {
        let mut c = specs::load(
            "p.yaml",
            b"apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - name: c
    image: busybox
    startupProbe: {tcpSocket: {port: 80}, failureThreshold: 30, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 80}}
    readinessProbe: {tcpSocket: {port: 80}}
",
            &specs::NodeInfo::default(),
        )
        .pods
        .remove(0)
        .containers
        .remove(0);
        let t = Instant::now();
        let mut probes = ContainerProbes::new(&c, t);
        let kinds = |p: &mut ContainerProbes| p.active().map(|p| p.kind).collect::<Vec<_>>();
        assert_eq!(kinds(&mut probes), [Kind::Startup]);
        assert!(!probes.ready());
        let change = probes.active().next().unwrap().record(true, t);
        assert_eq!(change, Change::Succeeded);
        probes.started = true;
        assert_eq!(kinds(&mut probes), [Kind::Liveness, Kind::Readiness]);
        assert!(!probes.ready(), "readiness has not succeeded yet");
        c.startup = None;
        c.readiness = None;
        assert!(ContainerProbes::new(&c, t).ready());
    }
}
