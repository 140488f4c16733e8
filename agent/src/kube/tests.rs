use super::*;

#[test]
fn ages_are_kubectls() {
    for (secs, want) in [
        (5, "5s"),
        (119, "119s"),
        (125, "2m5s"),
        (600, "10m"),
        (3 * 3600 + 120, "3h2m"),
        (10 * 3600, "10h"),
        (3 * 86_400 + 3600, "3d1h"),
        (30 * 86_400, "30d"),
        (3 * 365 * 86_400, "3y"),
        (-5, "<invalid>"),
    ] {
        assert_eq!(human_duration(secs), want, "{secs}");
    }
}

#[test]
fn queries_are_percent_decoded() {
    let q = Query::parse("fieldSelector=involvedObject.name%3Dweb%2Creason%3DStarted&watch=1&x");
    assert_eq!(
        q.get("fieldSelector"),
        Some("involvedObject.name=web,reason=Started")
    );
    assert!(q.flag("watch") && q.flag("x") && !q.flag("y"));
    assert_eq!(percent_decode("a+b%2"), "a b%2");
}

#[test]
fn selectors_are_the_api_servers() {
    let q = |l: &str, f: &str| {
        Query(vec![
            ("labelSelector".into(), l.into()),
            ("fieldSelector".into(), f.into()),
        ])
    };
    let pod = json!({
        "metadata": { "name": "web", "namespace": "default", "labels": { "app": "web", "tier": "front" } },
        "status": { "phase": "Running" },
    });
    let ok = |l: &str, f: &str| {
        Selectors::parse(Resource::Pods, &q(l, f))
            .unwrap()
            .matches(&pod)
    };
    assert!(ok("app=web", ""));
    assert!(ok("app==web,tier", ""));
    assert!(ok("app in (web, api),!missing", "status.phase=Running"));
    assert!(ok("app notin (api)", "metadata.name!=other"));
    assert!(!ok("app!=web", ""));
    assert!(!ok("", "status.phase=Pending"));
    assert!(!ok("missing", ""));
    let e = Selectors::parse(Resource::Pods, &q("", "spec.bogus=x")).unwrap_err();
    assert_eq!(e, "field label not supported: spec.bogus");
    let e = Selectors::parse(Resource::Pods, &q("app in web", "")).unwrap_err();
    assert!(e.starts_with("unable to parse requirement"), "{e}");
    assert!(Selectors::parse(
        Resource::Events,
        &q("", "involvedObject.uid=u,source=podagent")
    )
    .is_ok());
}

fn pod(name: &str, phase: &str) -> PodStatus {
    PodStatus {
        namespace: "default".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        file: String::new(),
        phase: phase.into(),
        reason: None,
        qos_class: String::new(),
        message: None,
        conditions: Vec::new(),
        ip: None,
        host_ip: None,
        containers: Vec::new(),
        init_containers: Vec::new(),
        images: Vec::new(),
        created: String::new(),
    }
}

#[test]
fn a_pods_version_moves_when_its_status_does_and_the_gone_are_remembered() {
    let mut v = Versions::default();
    v.update(&[pod("a", "Pending"), pod("b", "Running")]);
    let (a1, b1) = (v.pods["default/a"].rv, v.pods["default/b"].rv);
    v.update(&[pod("a", "Pending"), pod("b", "Running")]);
    assert_eq!((v.pods["default/a"].rv, v.pods["default/b"].rv), (a1, b1));
    v.update(&[pod("a", "Running"), pod("b", "Running")]);
    assert!(v.pods["default/a"].rv > a1);
    assert_eq!(v.pods["default/a"].created, a1);
    assert_eq!(v.pods["default/b"].rv, b1);
    let before = current_rv();
    v.update(&[pod("a", "Running")]);
    assert_eq!(v.gone.len(), 1);
    assert!(v.gone[0].rv > before && v.gone[0].status.name == "b");
    // The same name with another uid: a new pod, the old one gone.
    let mut again = pod("a", "Running");
    again.uid = "uid-a2".into();
    v.update(&[again]);
    assert_eq!(v.gone.len(), 2);
    assert!(v.pods["default/a"].created > before);
    assert_eq!(v.uid("default/a"), Some("uid-a2"));
}

#[test]
fn versions_of_an_earlier_agent_are_below_this_ones() {
    let now_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let rv = next_rv();
    assert!(rv > counter().base && counter().base <= now_micros);
    assert!(next_rv() > rv);
}

#[test]
fn a_table_has_the_api_servers_pod_columns() {
    let raw = json!({
        "name": "web", "phase": "Running", "ip": "10.88.0.2", "containers": [
            { "name": "c", "state": "Running", "ready": true, "restart_count": 2,
              "last_finished_at": "2026-01-01T00:00:00.5Z" },
        ],
    });
    let object = json!({
        "metadata": { "name": "web", "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": { "nodeName": "node-1" },
        "status": { "podIP": "10.88.0.2" },
    });
    let t = table_of(
        Resource::Pods,
        "meta.k8s.io/v1",
        "Metadata",
        &[Shaped { object, raw }],
        7,
    );
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["metadata"]["resourceVersion"], "7");
    let names: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Name",
            "Ready",
            "Status",
            "Restarts",
            "Age",
            "IP",
            "Node",
            "Nominated Node",
            "Readiness Gates"
        ]
    );
    let cells = &t["rows"][0]["cells"];
    assert_eq!(cells[0], "web");
    assert_eq!(cells[1], "1/1");
    assert_eq!(cells[2], "Running");
    assert!(cells[3].as_str().unwrap().starts_with("2 ("), "{cells}");
    assert_eq!(cells[5], "10.88.0.2");
    assert_eq!(cells[6], "node-1");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
}
