//! Table tests of every lifecycle rule, with an injected clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;

fn pod(yaml: &str) -> PodPlan {
    let r = specs::load("p.yaml", yaml.as_bytes(), &specs::NodeInfo::default());
    assert!(!r.has_errors(), "{:#?}", r.diagnostics);
    r.pods.into_iter().next().unwrap()
}

const WEB: &str = "apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 7
  initContainers:
  - {name: init-a, image: busybox, command: [a]}
  - {name: init-b, image: busybox, command: [b]}
  containers:
  - {name: app, image: busybox, command: [serve], resources: {limits: {cpu: 500m}}}
  - {name: side, image: busybox, command: [ship]}
";

fn desired(p: &PodPlan) -> Desired {
    BTreeMap::from([(format!("{}/{}", p.namespace, p.name), p.clone())])
}

fn cs(c: &ContainerPlan, status: Status) -> ContainerState {
    ContainerState::of(c, status, 0, 0)
}

/// The pod's state with the given containers, the sandbox made from `p`.
fn state(p: &PodPlan, containers: Vec<(&ContainerPlan, Status)>) -> Actual {
    let key = format!("{}/{}", p.namespace, p.name);
    let containers = containers
        .into_iter()
        .map(|(c, s)| (c.name.to_string(), cs(c, s)))
        .collect();
    BTreeMap::from([(
        key,
        PodState {
            uid: p.uid.clone(),
            sandbox_hash: sandbox_hash(p),
            grace: Duration::from_secs(p.termination_grace_period_secs),
            deadline_exceeded: false,
            evicted: false,
            files_hash: String::new(),
            containers,
        },
    )])
}

fn start(c: &str) -> Action {
    Action::StartContainer {
        pod: "default/web".into(),
        container: c.into(),
    }
}

fn done(t: Instant) -> Status {
    Status::Terminated {
        exit_code: 0,
        started: t,
        finished: t,
    }
}

#[test]
fn backoff_doubles_from_10s_to_a_5_minute_cap() {
    let secs: Vec<u64> = (0..=7).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300]);
    assert_eq!(backoff(64), BACKOFF_MAX, "no overflow");
}

#[test]
fn a_new_pod_gets_its_sandbox_first() {
    let p = pod(WEB);
    let plan = plan(&desired(&p), &Actual::new(), Instant::now());
    assert_eq!(
        plan.actions,
        [Action::CreateSandbox {
            pod: "default/web".into()
        }]
    );
}

#[test]
fn init_containers_run_one_at_a_time_to_success_then_all_app_containers() {
    let p = pod(WEB);
    let t = Instant::now();
    let (ia, ib) = (&p.init_containers[0], &p.init_containers[1]);
    assert_eq!(
        plan(&desired(&p), &state(&p, vec![]), t).actions,
        [start("init-a")]
    );
    assert_eq!(
        plan(
            &desired(&p),
            &state(&p, vec![(ia, Status::Running { since: t })]),
            t
        )
        .actions,
        []
    );
    assert_eq!(
        plan(&desired(&p), &state(&p, vec![(ia, done(t))]), t).actions,
        [start("init-b")]
    );
    assert_eq!(
        plan(
            &desired(&p),
            &state(&p, vec![(ia, done(t)), (ib, done(t))]),
            t
        )
        .actions,
        [start("app"), start("side")]
    );
}

#[test]
fn a_failed_init_container_follows_the_pods_policy() {
    let mut p = pod(WEB);
    let t0 = Instant::now();
    let failed = Status::Terminated {
        exit_code: 1,
        started: t0,
        finished: t0,
    };
    let s = |p: &PodPlan| state(p, vec![(&p.init_containers[0].clone(), failed.clone())]);
    // Always: retried after the back-off; before that, a wake-up at its end.
    let before = plan(&desired(&p), &s(&p), t0 + Duration::from_secs(9));
    assert_eq!(before.actions, []);
    assert_eq!(before.wake_at, Some(t0 + Duration::from_secs(10)));
    assert_eq!(
        plan(&desired(&p), &s(&p), t0 + Duration::from_secs(10)).actions,
        [start("init-a")]
    );
    // Never: the pod has failed; nothing more starts, ever.
    p.restart_policy = RestartPolicy::Never;
    let never = plan(&desired(&p), &s(&p), t0 + Duration::from_secs(3600));
    assert_eq!((never.actions, never.wake_at), (vec![], None));
}

fn running_app(p: &PodPlan, app: Status, t: Instant) -> Actual {
    let (ia, ib, app_c, side) = (
        &p.init_containers[0],
        &p.init_containers[1],
        &p.containers[0],
        &p.containers[1],
    );
    state(
        p,
        vec![
            (ia, done(t)),
            (ib, done(t)),
            (app_c, app),
            (side, Status::Running { since: t }),
        ],
    )
}

#[test]
fn exited_containers_restart_by_policy_with_back_off() {
    let t0 = Instant::now();
    let crashed = |code| Status::Terminated {
        exit_code: code,
        started: t0,
        finished: t0 + Duration::from_secs(1),
    };
    for (policy, code, restarts) in [
        (RestartPolicy::Always, 0, true),
        (RestartPolicy::Always, 1, true),
        (RestartPolicy::OnFailure, 0, false),
        (RestartPolicy::OnFailure, 2, true),
        (RestartPolicy::Never, 1, false),
    ] {
        let mut p = pod(WEB);
        p.restart_policy = policy;
        let mut actual = running_app(&p, crashed(code), t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let early = plan(&desired(&p), &actual, at(10));
        assert_eq!(
            early.actions,
            [],
            "{policy:?} exit {code}: not before the back-off"
        );
        let late = plan(&desired(&p), &actual, at(11));
        assert_eq!(
            late.actions == [start("app")],
            restarts,
            "{policy:?} exit {code}"
        );
        // The fourth crash in a row waits 80 s.
        actual
            .get_mut("default/web")
            .unwrap()
            .containers
            .get_mut("app")
            .unwrap()
            .crashes = 4;
        if restarts {
            assert_eq!(
                plan(&desired(&p), &actual, at(80)).actions,
                [],
                "{policy:?}"
            );
            assert_eq!(plan(&desired(&p), &actual, at(80)).wake_at, Some(at(81)));
            assert_eq!(plan(&desired(&p), &actual, at(81)).actions, [start("app")]);
        }
    }
}

#[test]
fn ten_minutes_of_running_resets_the_back_off() {
    let p = pod(WEB);
    let t0 = Instant::now();
    let finished = t0 + BACKOFF_RESET;
    let mut actual = running_app(
        &p,
        Status::Terminated {
            exit_code: 1,
            started: t0,
            finished,
        },
        t0,
    );
    actual
        .get_mut("default/web")
        .unwrap()
        .containers
        .get_mut("app")
        .unwrap()
        .crashes = 6;
    assert_eq!(
        plan(&desired(&p), &actual, finished + Duration::from_secs(10)).actions,
        [start("app")]
    );
}

#[test]
fn an_unchanged_running_pod_needs_nothing() {
    let p = pod(WEB);
    let t = Instant::now();
    let plan = plan(
        &desired(&p),
        &running_app(&p, Status::Running { since: t }, t),
        t,
    );
    assert_eq!((plan.actions, plan.wake_at), (vec![], None));
}

#[test]
fn a_pod_level_change_recreates_the_pod() {
    let p = pod(WEB);
    let t = Instant::now();
    let actual = running_app(&p, Status::Running { since: t }, t);
    for changed in [
        WEB.replace("spec:\n", "spec:\n  shareProcessNamespace: true\n"),
        WEB.replace("spec:\n", "spec:\n  hostname: other\n"),
        WEB.replace("  - {name: side, image: busybox, command: [ship]}\n", ""),
    ] {
        let q = pod(&changed);
        assert_eq!(
            plan(&desired(&q), &actual, t).actions,
            [Action::RecreatePod {
                pod: "default/web".into()
            }],
            "{changed}"
        );
    }
    // Labels and annotations alone change nothing that runs.
    let labelled = WEB.replace(
        "metadata: {name: web}",
        "metadata: {name: web, labels: {tier: front}, annotations: {a: b}}",
    );
    assert_eq!(plan(&desired(&pod(&labelled)), &actual, t).actions, []);
}

#[test]
fn one_containers_new_spec_restarts_it_alone_even_in_back_off() {
    let p = pod(WEB);
    let t = Instant::now();
    let backing_off = Status::Terminated {
        exit_code: 1,
        started: t,
        finished: t,
    };
    let mut actual = running_app(&p, backing_off, t);
    actual
        .get_mut("default/web")
        .unwrap()
        .containers
        .get_mut("app")
        .unwrap()
        .crashes = 5;
    let q = pod(&WEB.replace("command: [serve]", "command: [serve, --fixed]"));
    let got = plan(&desired(&q), &actual, t);
    assert_eq!(
        got.actions,
        [Action::RestartContainer {
            pod: "default/web".into(),
            container: "app".into()
        }]
    );
}

#[test]
fn a_resources_only_change_resizes_in_place() {
    let p = pod(WEB);
    let t = Instant::now();
    let actual = running_app(&p, Status::Running { since: t }, t);
    let q = pod(&WEB.replace("limits: {cpu: 500m}", "limits: {cpu: '1'}"));
    let got = plan(&desired(&q), &actual, t);
    assert_eq!(got.actions.len(), 1, "{:?}", got.actions);
    match &got.actions[0] {
        Action::ResizeContainer {
            container,
            resources,
            ..
        } => {
            assert_eq!(container, "app");
            assert_eq!(resources.cfs_quota_us, Some(100_000));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pod_no_longer_desired_is_deleted_within_its_grace_period() {
    let p = pod(WEB);
    let t = Instant::now();
    let got = plan(
        &Desired::new(),
        &running_app(&p, Status::Running { since: t }, t),
        t,
    );
    assert_eq!(
        got.actions,
        [Action::DeletePod {
            pod: "default/web".into(),
            grace: Duration::from_secs(7)
        }]
    );
}

#[test]
fn phase_follows_kubernetes_rules() {
    let p = pod(WEB);
    let (ia, ib) = (&p.init_containers[0], &p.init_containers[1]);
    let (app, side) = (&p.containers[0], &p.containers[1]);
    let t = Instant::now();
    let run = Status::Running { since: t };
    let exit = |code| Status::Terminated {
        exit_code: code,
        started: t,
        finished: t,
    };
    let key = "default/web";
    let ph = |a: &Actual| phase(&p, a.get(key));
    assert_eq!(phase(&p, None), (Phase::Pending, None));
    assert_eq!(
        ph(&state(&p, vec![(ia, run.clone())])),
        (Phase::Pending, Some("Init:0/2".into()))
    );
    assert_eq!(
        ph(&state(&p, vec![(ia, exit(0)), (ib, run.clone())])),
        (Phase::Pending, Some("Init:1/2".into()))
    );
    assert_eq!(
        ph(&state(&p, vec![(ia, exit(0)), (ib, exit(1))])),
        (Phase::Pending, Some("Init:Error".into())),
        "Always: the init container is retried"
    );
    let inits_ok = || vec![(ia, exit(0)), (ib, exit(0))];
    let mut v = inits_ok();
    v.push((app, run.clone()));
    assert_eq!(
        ph(&state(&p, v.clone())),
        (Phase::Pending, None),
        "side not yet"
    );
    v.push((side, exit(1)));
    assert_eq!(
        ph(&state(&p, v)),
        (Phase::Running, None),
        "one runs, one restarts"
    );
    let mut v = inits_ok();
    v.push((app, exit(0)));
    v.push((side, exit(0)));
    assert_eq!(
        ph(&state(&p, v)),
        (Phase::Running, None),
        "Always restarts even a success"
    );

    let never = pod(&WEB.replace("spec:\n", "spec:\n  restartPolicy: Never\n"));
    let (ia, ib) = (&never.init_containers[0], &never.init_containers[1]);
    let (app, side) = (&never.containers[0], &never.containers[1]);
    let ph = |a: &Actual| phase(&never, a.get(key));
    assert_eq!(
        ph(&state(&never, vec![(ia, exit(2))])),
        (Phase::Failed, Some("Init:Error".into()))
    );
    let ok = vec![
        (ia, exit(0)),
        (ib, exit(0)),
        (app, exit(0)),
        (side, exit(0)),
    ];
    assert_eq!(ph(&state(&never, ok)), (Phase::Succeeded, None));
    let bad = vec![
        (ia, exit(0)),
        (ib, exit(0)),
        (app, exit(0)),
        (side, exit(137)),
    ];
    assert_eq!(ph(&state(&never, bad)), (Phase::Failed, None));
    let still = vec![(ia, exit(0)), (ib, exit(0)), (app, run), (side, exit(1))];
    assert_eq!(ph(&state(&never, still)), (Phase::Running, None));
}

#[test]
fn a_start_in_flight_or_a_stop_for_restart_gets_no_action() {
    let p = pod(WEB);
    let t = Instant::now();
    // A changed spec or resources would otherwise restart or resize it; a
    // missing sibling is still started.
    let q = pod(&WEB
        .replace("command: [serve]", "command: [serve2]")
        .replace("limits: {cpu: 500m}", "limits: {cpu: '1'}"));
    for busy in [
        Status::Starting,
        Status::Stopping {
            since: t,
            restart: true,
        },
    ] {
        let mut actual = running_app(&p, busy.clone(), t);
        assert_eq!(plan(&desired(&q), &actual, t).actions, [], "{busy:?}");
        let s = actual.get_mut("default/web").unwrap();
        s.containers.remove("side");
        assert_eq!(plan(&desired(&q), &actual, t).actions, [start("side")]);
    }
    // An init container in flight holds the app containers back.
    let (ia, ib) = (&p.init_containers[0], &p.init_containers[1]);
    for busy in [
        Status::Starting,
        Status::Stopping {
            since: t,
            restart: true,
        },
    ] {
        let actual = state(&p, vec![(ia, done(t)), (ib, busy)]);
        assert_eq!(plan(&desired(&p), &actual, t).actions, []);
    }
    // Waiting (no start handed over) is started.
    let actual = running_app(&p, Status::Waiting, t);
    assert_eq!(plan(&desired(&p), &actual, t).actions, [start("app")]);
}

#[test]
fn unknown_applied_resources_are_resized_to_the_plan() {
    let p = pod(WEB);
    let t = Instant::now();
    let mut actual = running_app(&p, Status::Running { since: t }, t);
    let app = actual
        .get_mut("default/web")
        .unwrap()
        .containers
        .get_mut("app")
        .unwrap();
    app.resources = None;
    let got = plan(&desired(&p), &actual, t);
    assert_eq!(
        got.actions,
        [Action::ResizeContainer {
            pod: "default/web".into(),
            container: "app".into(),
            resources: p.containers[0].resources.clone(),
        }]
    );
}

#[test]
fn init_containers_restart_only_on_failure() {
    use specs::plan::RestartPolicy::{Always, Never, OnFailure};
    let table = [
        (Always, "init-a", OnFailure),
        (Always, "app", Always),
        (OnFailure, "init-a", OnFailure),
        (OnFailure, "app", OnFailure),
        (Never, "init-b", Never),
        (Never, "side", Never),
        (Always, "not-a-container", Always),
    ];
    for (pod_policy, container, want) in table {
        let mut p = pod(WEB);
        p.restart_policy = pod_policy;
        assert_eq!(
            effective_policy(&p, container),
            want,
            "{pod_policy:?} {container}"
        );
    }
}

#[test]
fn a_restart_counts_one_more_and_a_new_spec_resets_the_crashes() {
    let p = pod(WEB);
    let mut s = cs(&p.containers[0], Status::Waiting);
    s.restart_count = 4;
    s.crashes = 3;
    let table = [
        (None, false, (0, 0)),
        (None, true, (0, 0)),
        (Some(&s), false, (5, 3)),
        (Some(&s), true, (5, 0)),
    ];
    for (prev, new_spec, want) in table {
        assert_eq!(next_run_counts(prev, new_spec), want, "{new_spec}");
    }
}

#[test]
fn a_failed_pull_is_retried_whatever_the_policy_counts_no_restart_and_keeps_the_pod_pending() {
    let mut p = pod(WEB);
    p.init_containers.clear();
    p.containers.truncate(1);
    p.restart_policy = RestartPolicy::Never;
    let t0 = Instant::now();
    let failed = Status::Terminated {
        exit_code: 128,
        started: t0,
        finished: t0,
    };
    let key = format!("{}/{}", p.namespace, p.name);
    let mut actual = state(&p, vec![(&p.containers[0].clone(), failed.clone())]);
    // A start error that is not a pull: Never ends it.
    assert_eq!(phase(&p, actual.get(&key)).0, Phase::Failed);
    let s = actual
        .get_mut(&key)
        .unwrap()
        .containers
        .get_mut("app")
        .unwrap();
    s.image_pull_failed = true;
    s.crashes = 1;
    let pulling = s.clone();
    // The pull is tried again after the back-off, under Never too.
    let before = plan(&desired(&p), &actual, t0 + Duration::from_secs(9));
    assert_eq!(before.wake_at, Some(t0 + Duration::from_secs(10)));
    assert!(!before.actions.contains(&start("app")));
    let after = plan(&desired(&p), &actual, t0 + Duration::from_secs(10));
    assert!(after.actions.contains(&start("app")), "{:?}", after.actions);
    // It never ran: Pending, and the try is no restart.
    assert_eq!(phase(&p, actual.get(&key)).0, Phase::Pending);
    assert_eq!(next_run_counts(Some(&pulling), false), (0, 1));
}

#[test]
fn a_pod_past_its_deadline_starts_and_restarts_nothing_and_is_failed() {
    let p = pod(&WEB.replace("spec:\n", "spec:\n  activeDeadlineSeconds: 5\n"));
    assert_eq!(p.active_deadline_secs, Some(5));
    let t = Instant::now();
    let mut actual = state(&p, vec![(&p.init_containers[0], done(t))]);
    actual.values_mut().for_each(|s| s.deadline_exceeded = true);
    let plan = plan(&desired(&p), &actual, t);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    let (phase, reason) = phase(&p, actual.values().next());
    assert_eq!(
        (phase, reason.as_deref()),
        (Phase::Failed, Some("DeadlineExceeded"))
    );
    // Its file gone, it is deleted as any pod is.
    let plan = super::plan(&Desired::new(), &actual, t);
    assert!(matches!(plan.actions[..], [Action::DeletePod { .. }]));
}

const SIDECARS: &str = "apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  restartPolicy: Never
  initContainers:
  - {name: log, image: busybox, restartPolicy: Always}
  - {name: migrate, image: busybox}
  containers:
  - {name: app, image: busybox}
";

fn started(mut s: ContainerState) -> ContainerState {
    s.started = true;
    s
}

#[test]
fn a_sidecar_starts_in_init_order_and_lets_the_next_one_start_once_started() {
    let p = pod(SIDECARS);
    let t = Instant::now();
    let (log, migrate, app) = (
        &p.init_containers[0],
        &p.init_containers[1],
        &p.containers[0],
    );
    let key = "default/web";
    let plan_of = |a: &Actual| plan(&desired(&p), a, t).actions;
    assert_eq!(plan_of(&state(&p, vec![])), [start("log")]);
    // Running but not yet started (its startup probe or postStart pending).
    let mut a = state(&p, vec![(log, Status::Running { since: t })]);
    assert_eq!(plan_of(&a), []);
    assert_eq!(phase(&p, a.get(key)).1.as_deref(), Some("Init:0/2"));
    let s = a.get_mut(key).unwrap().containers.get_mut("log").unwrap();
    *s = started(s.clone());
    assert_eq!(plan_of(&a), [start("migrate")]);
    assert_eq!(phase(&p, a.get(key)).1.as_deref(), Some("Init:1/2"));
    // The init container done, the app starts beside the sidecar.
    let mut a = state(
        &p,
        vec![(log, Status::Running { since: t }), (migrate, done(t))],
    );
    assert_eq!(plan_of(&a), [start("app")]);
    // A sidecar that is not `started` any more (restarting) holds up
    // nothing once a later container has run.
    a.get_mut(key)
        .unwrap()
        .containers
        .insert("app".into(), cs(app, Status::Running { since: t }));
    assert_eq!(plan_of(&a), []);
    assert_eq!(phase(&p, a.get(key)), (Phase::Running, None));
}

#[test]
fn a_sidecar_restarts_whatever_the_pods_policy_until_the_apps_end() {
    let p = pod(SIDECARS);
    let t = Instant::now();
    let (log, migrate, app) = (
        &p.init_containers[0],
        &p.init_containers[1],
        &p.containers[0],
    );
    let crashed = Status::Terminated {
        exit_code: 1,
        started: t,
        finished: t,
    };
    let a = state(
        &p,
        vec![
            (log, crashed.clone()),
            (migrate, done(t)),
            (app, Status::Running { since: t }),
        ],
    );
    let pl = plan(&desired(&p), &a, t);
    assert_eq!(pl.actions, [], "in back-off");
    assert_eq!(pl.wake_at, Some(t + BACKOFF_INITIAL));
    let later = t + BACKOFF_INITIAL;
    assert_eq!(plan(&desired(&p), &a, later).actions, [start("log")]);
    assert_eq!(effective_policy(&p, "log"), RestartPolicy::Always);

    // The app done under Never: the running sidecar is stopped, for good.
    let a = state(
        &p,
        vec![
            (log, Status::Running { since: t }),
            (migrate, done(t)),
            (app, done(t)),
        ],
    );
    assert_eq!(
        plan(&desired(&p), &a, t).actions,
        [Action::StopContainer {
            pod: "default/web".into(),
            container: "log".into(),
        }]
    );
    assert_eq!(phase(&p, a.get("default/web")), (Phase::Succeeded, None));
    // Stopped, it is not started again, and the pod stays Succeeded.
    let a = state(
        &p,
        vec![(log, crashed.clone()), (migrate, done(t)), (app, done(t))],
    );
    assert_eq!(plan(&desired(&p), &a, later).actions, []);
    assert_eq!(phase(&p, a.get("default/web")), (Phase::Succeeded, None));
    // A sidecar that crash-loops before it started: the pod waits, never
    // Failed by its Never policy.
    let mut a = state(&p, vec![(log, crashed)]);
    a.get_mut("default/web")
        .unwrap()
        .containers
        .get_mut("log")
        .unwrap()
        .crashes = 2;
    assert_eq!(
        phase(&p, a.get("default/web")),
        (Phase::Pending, Some("Init:CrashLoopBackOff".into()))
    );
}

#[test]
fn a_label_edit_rewrites_downward_api_files_in_place_and_restarts_only_what_reads_it_in_env() {
    let yaml = |label: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{version: '{label}'}}}}
spec:
  volumes:
  - name: info
    downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}
  containers:
  - {{name: app, image: busybox, volumeMounts: [{{name: info, mountPath: /info}}]}}
  - name: env
    image: busybox
    env: [{{name: V, valueFrom: {{fieldRef: {{fieldPath: \"metadata.labels['version']\"}}}}}}]
"
        )
    };
    let (old, new) = (pod(&yaml("1")), pod(&yaml("2")));
    let t = Instant::now();
    let mut a = state(
        &old,
        vec![
            (&old.containers[0], Status::Running { since: t }),
            (&old.containers[1], Status::Running { since: t }),
        ],
    );
    a.get_mut("default/web").unwrap().files_hash = files_hash(&old);
    assert_eq!(plan(&desired(&old), &a, t).actions, []);
    assert_eq!(sandbox_hash(&old), sandbox_hash(&new), "not recreated");
    assert_ne!(legacy_sandbox_hash(&old), legacy_sandbox_hash(&new));
    assert_eq!(
        plan(&desired(&new), &a, t).actions,
        [
            Action::RefreshFiles {
                pod: "default/web".into()
            },
            Action::RestartContainer {
                pod: "default/web".into(),
                container: "env".into()
            },
        ]
    );
}
