//! Table tests of the status projection, with both clocks injected.

use std::time::{Duration, Instant, UNIX_EPOCH};

use super::*;
use crate::reconcile::{sandbox_hash, ContainerState, PodState, Status};

const POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  initContainers:
  - {name: init, image: busybox}
  containers:
  - {name: app, image: busybox}
  - {name: side, image: busybox}
";

fn plan(yaml: &str) -> PodPlan {
    let r = specs::load("p.yaml", yaml.as_bytes(), &specs::NodeInfo::default());
    assert!(!r.has_errors(), "{:#?}", r.diagnostics);
    r.pods.into_iter().next().unwrap()
}

fn clock() -> Clock {
    Clock {
        now: Instant::now(),
        wall: UNIX_EPOCH + Duration::from_secs(1_780_000_000),
    }
}

fn cs(status: Status, crashes: u32) -> ContainerState {
    ContainerState {
        hash: String::new(),
        resources: None,
        status,
        restart_count: crashes,
        crashes,
        image_pull_failed: false,
        started: false,
    }
}

fn pod_state(p: &PodPlan, containers: Vec<(&str, ContainerState)>) -> PodState {
    PodState {
        uid: p.uid.clone(),
        sandbox_hash: sandbox_hash(p),
        grace: Duration::from_secs(30),
        deadline_exceeded: false,
        evicted: false,
        files_hash: String::new(),
        containers: containers
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect(),
    }
}

fn seen<'a>(state: &'a PodState, extra: Vec<(&'a str, ContainerSeen<'a>)>) -> PodSeen<'a> {
    PodSeen {
        evicted: None,
        state,
        ip: Some("10.88.0.5"),
        created: UNIX_EPOCH + Duration::from_secs(1_779_999_000),
        containers: extra.into_iter().collect(),
    }
}

fn ready_seen() -> ContainerSeen<'static> {
    ContainerSeen {
        probes_ready: true,
        ..ContainerSeen::default()
    }
}

fn conditions(s: &PodStatus) -> Vec<(&str, &str)> {
    s.conditions
        .iter()
        .map(|c| (c.kind.as_str(), c.status.as_str()))
        .collect()
}

fn exited(code: i32, t: Instant) -> Status {
    Status::Terminated {
        exit_code: code,
        started: t,
        finished: t,
    }
}

#[test]
fn phase_reason_and_conditions_follow_the_pods_progress() {
    let p = plan(POD);
    let c = clock();
    let t = c.now;
    let run = || Status::Running { since: t };
    // (containers, terminating, phase, reason, [Scheduled, Initialized, ContainersReady, Ready])
    type Row<'a> = (
        Option<Vec<(&'a str, ContainerState)>>,
        bool,
        &'a str,
        Option<&'a str>,
        [&'a str; 4],
    );
    let table: Vec<Row> = vec![
        (
            None,
            false,
            "Pending",
            None,
            ["False", "False", "False", "False"],
        ),
        (
            Some(vec![("init", cs(run(), 0))]),
            false,
            "Pending",
            Some("Init:0/1"),
            ["True", "False", "False", "False"],
        ),
        (
            Some(vec![
                ("init", cs(exited(0, t), 0)),
                ("app", cs(Status::Starting, 0)),
            ]),
            false,
            "Pending",
            None,
            ["True", "True", "False", "False"],
        ),
        (
            Some(vec![
                ("init", cs(exited(0, t), 0)),
                ("app", cs(run(), 0)),
                (
                    "side",
                    cs(
                        Status::Stopping {
                            since: t,
                            restart: true,
                        },
                        0,
                    ),
                ),
            ]),
            false,
            "Running",
            None,
            ["True", "True", "True", "True"],
        ),
        (
            Some(vec![
                ("init", cs(exited(0, t), 0)),
                ("app", cs(run(), 0)),
                ("side", cs(run(), 0)),
            ]),
            true,
            "Running",
            Some("Terminating"),
            ["True", "False", "True", "True"],
        ),
        (
            Some(vec![("init", cs(exited(1, t), 2))]),
            false,
            "Pending",
            Some("Init:CrashLoopBackOff"),
            ["True", "False", "False", "False"],
        ),
    ];
    for (containers, terminating, phase, reason, conds) in table {
        let state = containers.map(|cs| pod_state(&p, cs));
        let extra = ["init", "app", "side"]
            .into_iter()
            .map(|n| (n, ready_seen()))
            .collect();
        let seen = state.as_ref().map(|s| seen(s, extra));
        let got = pod_status("f.yaml", &p, seen.as_ref(), terminating, c);
        // PodReadyToStartContainers goes with PodScheduled: both once the
        // sandbox is made.
        let want_conds: Vec<(&str, &str)> =
            std::iter::once(("PodReadyToStartContainers", conds[0]))
                .chain(
                    ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
                        .into_iter()
                        .zip(conds),
                )
                .collect();
        assert_eq!(
            (got.phase.as_str(), got.reason.as_deref(), conditions(&got)),
            (phase, reason, want_conds),
            "{:?}",
            seen.as_ref().map(|s| &s.state.containers)
        );
        assert_eq!(got.file, "f.yaml");
        assert_eq!(got.ip.as_deref(), seen.as_ref().map(|_| "10.88.0.5"));
    }
}

#[test]
fn readiness_needs_a_running_container_whose_probes_agree() {
    let p = plan(POD);
    let c = clock();
    let t = c.now;
    let state = pod_state(
        &p,
        vec![
            ("init", cs(exited(0, t), 0)),
            ("app", cs(Status::Running { since: t }, 0)),
            ("side", cs(Status::Running { since: t }, 0)),
        ],
    );
    let unready = ContainerSeen {
        probes_ready: false,
        ..ContainerSeen::default()
    };
    let s = seen(&state, vec![("app", ready_seen()), ("side", unready)]);
    let got = pod_status("f.yaml", &p, Some(&s), false, c);
    let ready: Vec<bool> = got.containers.iter().map(|c| c.ready).collect();
    assert_eq!(ready, [true, false]);
    assert_eq!(got.phase, "Running");
    assert!(conditions(&got).contains(&("Ready", "False")));
    // A container with nothing seen of it has no probes: ready when running.
    let s = seen(&state, vec![]);
    let got = pod_status("f.yaml", &p, Some(&s), false, c);
    assert!(got.containers.iter().all(|c| c.ready));
    assert!(conditions(&got).contains(&("Ready", "True")));
}

#[test]
fn a_crashing_container_shows_crash_loop_back_off_with_its_next_try() {
    let p = plan(POD);
    let c = clock();
    let t = c.now;
    let failed = Exited {
        exit_code: 2,
        signal: None,
        started_at: Some("2026-06-01T00:00:00Z".into()),
        finished_at: "2026-06-01T00:00:01Z".into(),
        reason: "Error".into(),
        message: "bad config".into(),
        warnings: Vec::new(),
    };
    let oom = Exited {
        reason: "OOMKilled".into(),
        message: String::new(),
        exit_code: 137,
        signal: Some(9),
        ..failed.clone()
    };
    // (crashes, last exit, exit code, state word, next try after finish)
    let table = [
        (1, Some(&failed), 2, "Error", Some(10)),
        (2, Some(&failed), 2, "CrashLoopBackOff", Some(20)),
        (4, Some(&failed), 2, "CrashLoopBackOff", Some(80)),
        (1, Some(&oom), 137, "OOMKilled", Some(10)),
        (1, None, 0, "Completed", Some(10)),
        (1, None, 1, "Error", Some(10)),
    ];
    for (crashes, last, code, word, next) in table {
        let state = pod_state(
            &p,
            vec![
                ("init", cs(exited(0, t), 0)),
                ("app", cs(exited(code, t), crashes)),
                ("side", cs(Status::Running { since: t }, 0)),
            ],
        );
        let app = ContainerSeen {
            last_exit: last,
            started_at: None,
            image_id: None,
            probes_ready: true,
        };
        let s = seen(&state, vec![("app", app)]);
        let got = pod_status("f.yaml", &p, Some(&s), false, c);
        let app = &got.containers[0];
        assert_eq!(app.state, word, "crashes {crashes}");
        assert_eq!(app.exit_code, Some(code));
        assert!(!app.ready);
        assert_eq!(app.restart_count, crashes);
        let want_next = next.map(|secs| rfc3339_nano(c.wall + Duration::from_secs(secs)));
        assert_eq!(app.next_start, want_next, "crashes {crashes}");
        assert_eq!(app.reason, last.map(|e| e.reason.clone()));
        assert_eq!(app.last_exit_code, last.map(|e| e.exit_code));
        assert_eq!(
            app.message.as_deref(),
            last.map(|e| e.message.as_str()).filter(|m| !m.is_empty())
        );
    }
    // restartPolicy Never: no next try, no crash loop.
    let never = plan(&POD.replace("spec:\n", "spec:\n  restartPolicy: Never\n"));
    let state = pod_state(
        &never,
        vec![("init", cs(exited(0, t), 0)), ("app", cs(exited(2, t), 3))],
    );
    let s = seen(&state, vec![]);
    let got = pod_status("f.yaml", &never, Some(&s), false, c);
    assert_eq!(got.containers[0].state, "Error");
    assert_eq!(got.containers[0].next_start, None);
}

#[test]
fn times_come_from_the_run_and_the_clock() {
    let p = plan(POD);
    let c = clock();
    let got = pod_status("f.yaml", &p, None, false, c);
    assert_eq!(got.created, rfc3339_nano(c.wall), "no sandbox yet: now");
    assert!(got.containers.iter().all(|c| c.state == "Waiting"));
    let state = pod_state(&p, vec![("app", cs(Status::Running { since: c.now }, 0))]);
    let app = ContainerSeen {
        started_at: Some("2026-12-01T10:00:00Z"),
        image_id: Some("docker.io/library/busybox@sha256:ab"),
        probes_ready: true,
        last_exit: None,
    };
    let s = seen(&state, vec![("app", app)]);
    let got = pod_status("f.yaml", &p, Some(&s), false, c);
    assert_eq!(got.created, rfc3339_nano(s.created));
    assert_eq!(
        got.containers[0].started_at.as_deref(),
        Some("2026-12-01T10:00:00Z")
    );
    assert_eq!(
        got.containers[0].image_id.as_deref(),
        Some("docker.io/library/busybox@sha256:ab")
    );
}

#[test]
fn a_pod_whose_file_is_gone_shows_terminating() {
    let s = leaving_pod_status("team/web", "u-9");
    assert_eq!(
        (
            s.namespace.as_str(),
            s.name.as_str(),
            s.uid.as_str(),
            s.reason.as_deref()
        ),
        ("team", "web", "u-9", Some("Terminating"))
    );
    assert!(s.containers.is_empty());
}

#[test]
fn a_manifest_problem_is_reported_once() {
    let reported = vec!["a.yaml:1:1: spec: bad".to_string()];
    let now = vec![
        "a.yaml:1:1: spec: bad".to_string(),
        "b.yaml:2:3: spec.containers: missing".to_string(),
    ];
    assert_eq!(newly_seen(&reported, &now), [&now[1]]);
    assert!(newly_seen(&now, &now).is_empty());
    assert!(newly_seen(&now, &[]).is_empty());
}
