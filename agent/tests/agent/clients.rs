//! The official Kubernetes Python client (`kubernetes` 31, from PyPI in
//! `target/pyclient`, made by scripts/setup) reads `podctl status -o json`
//! and `podctl events -o json` for every state the agent shows: Running,
//! Succeeded, Failed, CrashLoopBackOff, init running, init failed,
//! OOMKilled, not Ready and Terminating; and `-o yaml` keeps its times
//! strings for a YAML 1.1 reader.

use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, pyclient_tool, require};

/// Deserialises each item of the list in argv[1] as argv[2] with the
/// client's own deserialiser (its client-side validation on), and prints
/// what it read, one line per item.
const READ: &str = r#"
import json, sys, yaml
from kubernetes import client
api = client.ApiClient()
class Response:
    def __init__(self, data): self.data = data
text = open(sys.argv[1]).read()
doc = yaml.safe_load(text) if sys.argv[1].endswith(".yaml") else json.loads(text)
import datetime
def strings(v):
    if isinstance(v, dict): [strings(x) for x in v.values()]
    elif isinstance(v, list): [strings(x) for x in v]
    elif isinstance(v, (datetime.date, datetime.datetime)): sys.exit("a time read as a date: %r" % v)
strings(doc)
for item in doc["items"]:
    o = api.deserialize(Response(json.dumps(item, default=str)), sys.argv[2])
    if sys.argv[2] == "V1Pod":
        s = o.status
        def word(c):
            st = c.state
            if st.running: return "running"
            if st.waiting: return "waiting:" + st.waiting.reason
            return "terminated:%s:%d" % (st.terminated.reason, st.terminated.exit_code)
        cs = " ".join(c.name + "=" + word(c) + ":" + (c.container_id or "-")[:12] for c in (s.init_container_statuses or []) + (s.container_statuses or []))
        conds = " ".join("%s=%s/%s" % (c.type, c.status, c.reason or "") for c in s.conditions or [])
        assert all(c.last_transition_time is not None for c in s.conditions or [])
        start = type(s.start_time).__name__
        print(o.metadata.name, s.phase, s.reason or "-", s.qos_class, start, cs, conds)
    else:
        print(o.involved_object.name, o.reason, o.type, o.count, type(o.last_timestamp).__name__)
"#;

#[test]
fn the_official_client_reads_every_status_and_event() {
    if !require() {
        return;
    }
    let Some(python) = pyclient_tool("python") else {
        return;
    };
    on_private_node(|| {
        let fx = fixture("clients");
        let (pods, state, state_s) = fx.agent_dirs();
        let _agent = Running(spawn_agent(&fx, &pods, &state, &["--no-network"]));
        let pod = |name: &str, policy: &str, init: &str, containers: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 30\n{init}  containers:\n{containers}"
            )
        };
        let sleeper = "  - {name: c, image: busybox, command: [sleep, '100000']}\n";
        let files = [
            ("running", pod("running", "Always", "", sleeper)),
            ("done", pod("done", "Never", "", "  - {name: c, image: busybox, command: ['true']}\n")),
            ("failed", pod("failed", "Never", "", "  - {name: c, image: busybox, command: ['false']}\n")),
            ("crashing", pod("crashing", "Always", "", "  - {name: c, image: busybox, command: ['false']}\n")),
            ("initing", pod("initing", "Always", "  initContainers:\n  - {name: setup, image: busybox, command: [sleep, '100000']}\n", sleeper)),
            ("init-failed", pod("init-failed", "Never", "  initContainers:\n  - {name: setup, image: busybox, command: ['false']}\n", sleeper)),
            ("oom", pod("oom", "Never", "", "  - {name: c, image: busybox, command: [sh, -c, 'dd if=/dev/zero of=/dev/shm/x bs=1M count=64'], resources: {limits: {memory: 16Mi}}}\n")),
            ("unready", pod("unready", "Always", "", "  - {name: c, image: busybox, command: [sleep, '100000'], readinessProbe: {exec: {command: ['false']}, periodSeconds: 1}}\n")),
            ("leaving", pod("leaving", "Always", "", sleeper)),
        ];
        for (name, text) in &files {
            put_manifest(&pods, &format!("{name}.yaml"), text);
        }
        let shown = |name: &str, want: &str| {
            let p = pod_status(&state_s, name);
            p["reason"].as_str().or(p["phase"].as_str()).unwrap_or("") == want
                || p["containers"][0]["state"] == want
        };
        assert!(
            eventually(Duration::from_secs(90), || shown("running", "Running")
                && shown("done", "Succeeded")
                && shown("failed", "Failed")
                && shown("crashing", "CrashLoopBackOff")
                && shown("initing", "Init:0/1")
                && shown("init-failed", "Init:Error")
                && shown("oom", "OOMKilled")
                && shown("leaving", "Running")),
            "{}",
            podctl(&["status", "--state-dir", &state_s]).1
        );
        // Terminating: its file gone, its container ignoring SIGTERM for 30 s.
        std::fs::remove_file(pods.join("leaving.yaml")).unwrap();
        assert!(eventually(Duration::from_secs(5), || pod_status(
            &state_s, "leaving"
        )["reason"]
            == "Terminating"
            || podctl(&["status", "--state-dir", &state_s])
                .1
                .contains("Terminating")));

        let dir = fx.dir.path();
        let read = |kind: &str, file: &str| {
            let o = std::process::Command::new(&python)
                .args(["-c", READ])
                .arg(dir.join(file))
                .arg(kind)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(o.status.success(), "the client refused {file}: {err}");
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        for format in ["json", "yaml"] {
            let text = podctl(&["status", "-o", format, "--state-dir", &state_s]).1;
            let file = format!("pods.{format}");
            std::fs::write(dir.join(&file), &text).unwrap();
            let seen = read("V1Pod", &file);
            let line = |name: &str| {
                seen.lines()
                    .find(|l| l.starts_with(&format!("{name} ")))
                    .unwrap_or_else(|| panic!("no {name} in {seen}"))
                    .to_string()
            };
            assert!(
                line("running").contains("Running - BestEffort datetime c=running:podagent://"),
                "{seen}"
            );
            assert!(line("running").contains("Ready=True/"), "{seen}");
            assert!(
                line("done").contains("Succeeded")
                    && line("done").contains("terminated:Completed:0"),
                "{seen}"
            );
            assert!(line("done").contains("Ready=False/PodCompleted"), "{seen}");
            assert!(
                line("failed").contains("Failed") && line("failed").contains("terminated:Error:1"),
                "{seen}"
            );
            assert!(
                line("crashing").contains("waiting:CrashLoopBackOff"),
                "{seen}"
            );
            assert!(
                line("initing").contains("Init:0/1")
                    && line("initing").contains("c=waiting:PodInitializing"),
                "{seen}"
            );
            assert!(
                line("initing").contains("Initialized=False/ContainersNotInitialized"),
                "{seen}"
            );
            assert!(line("init-failed").contains("Failed Init:Error"), "{seen}");
            assert!(line("oom").contains("terminated:OOMKilled:137"), "{seen}");
            assert!(
                line("unready").contains("Ready=False/ContainersNotReady"),
                "{seen}"
            );
            assert!(line("leaving").contains("Terminating"), "{seen}");
        }
        let events = podctl(&["events", "-o", "json", "--state-dir", &state_s]).1;
        std::fs::write(dir.join("events.json"), &events).unwrap();
        let seen = read("CoreV1Event", "events.json");
        assert!(
            seen.lines()
                .any(|l| l.starts_with("oom OOMKilled Warning 1 datetime")),
            "{seen}"
        );
        assert!(
            seen.lines()
                .any(|l| l.starts_with("crashing BackOff Warning")),
            "{seen}"
        );
        for (name, _) in &files {
            let _ = std::fs::remove_file(pods.join(format!("{name}.yaml")));
        }
        assert!(eventually(Duration::from_secs(45), || no_pods(&state_s)));
    });
}
