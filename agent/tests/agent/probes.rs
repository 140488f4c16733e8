//! Startup, readiness and liveness probes against the running containers.

use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

const PROBED: &str = "apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox
    command: [sh, -c, 'mkdir -p /www; (sleep 2; echo ok > /www/ready) & exec httpd -f -p 8080 -h /www']
    readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
  - name: stuck
    image: busybox
    command: [sh, -c, 'touch /tmp/alive; (sleep 2; rm /tmp/alive) & exec sleep 1000']
    livenessProbe: {exec: {command: [test, -f, /tmp/alive]}, periodSeconds: 1, failureThreshold: 2}
";

#[test]
fn probes_gate_readiness_and_a_failed_liveness_probe_restarts_the_container() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("probes");
        let (pods, state, state_s) = fx.agent_dirs();
        let agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        put_manifest(&pods, "probed.yaml", PROBED);
        let container = |name: &str| -> serde_json::Value {
            let out = podctl(&["status", "-o", "raw", "--state-dir", &state_s]).1;
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            v["pods"][0]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == name)
                .cloned()
                .unwrap_or_default()
        };
        let events = || -> Vec<serde_json::Value> {
            let out = podctl(&["events", "-o", "raw", "--state-dir", &state_s]).1;
            serde_json::from_str(&out).unwrap_or_default()
        };
        let has = |container: &str, reason: &str, text: &str| {
            events().iter().any(|e| {
                e["container"] == container
                    && e["reason"] == reason
                    && e["message"].as_str().unwrap_or("").contains(text)
            })
        };

        // Readiness: the agent's own HTTP GET from the pod's network
        // namespace gets 404 until /ready exists, then 200.
        assert!(
            eventually(Duration::from_secs(10), || container("web")["ready"]
                == true),
            "{:#}\n{:#?}",
            container("web"),
            events()
        );
        assert!(
            has(
                "web",
                "Unhealthy",
                "Readiness probe failed: HTTP probe failed with statuscode: 404"
            ),
            "{:#?}",
            events()
        );
        assert!(!has("web", "Unhealthy", "Liveness"), "{:#?}", events());
        let d = podctl(&["describe", "probed", "--state-dir", &state_s]).1;
        for want in [
            "Phase:        Running",
            "QoS Class:    BestEffort",
            "Limits:     cpu quota none, shares 2",
            "Readiness probe failed",
        ] {
            assert!(d.contains(want), "{want:?} in:\n{d}");
        }
        let (code, _, err) = podctl(&["describe", "probd", "--state-dir", &state_s]);
        assert_eq!(code, 1);
        assert!(err.contains("did you mean probed?"), "{err}");
        // The image its containers run from cannot be removed.
        let root_s = fx.dir.path().display().to_string();
        let (code, _, err) = podctl(&["image", "--root-dir", &root_s, "rm", "busybox"]);
        assert_ne!(code, 0);
        assert!(
            err.contains("is used by the container whose root is"),
            "{err}"
        );
        assert!(podctl(&["image", "--root-dir", &root_s, "ls"])
            .1
            .contains("busybox:latest"));
        let top = podctl(&["top", "--state-dir", &state_s]).1;
        assert!(
            top.lines()
                .any(|l| l.starts_with("probed ") && l.contains(" web ")),
            "{top}"
        );

        // Liveness (exec in the container): /tmp/alive goes away, two
        // failures kill it (sleep as PID 1 ignores SIGTERM: the cgroup is
        // killed after the 1 s grace) and it restarts after the back-off.
        assert!(
            eventually(Duration::from_secs(10), || has(
                "stuck",
                "Killing",
                "failed its liveness probe"
            )),
            "{:#?}",
            events()
        );
        assert!(has(
            "stuck",
            "Unhealthy",
            "Liveness probe failed: command exited with 1"
        ));
        assert!(
            eventually(Duration::from_secs(20), || container("stuck")
                ["restart_count"]
                == 1
                && container("stuck")["state"] == "Running"),
            "{:#}\n{:#?}",
            container("stuck"),
            events()
        );
        assert_eq!(container("web")["restart_count"], 0);

        // The Pod shape, as kubectl prints it.
        let list: serde_json::Value =
            serde_json::from_str(&podctl(&["status", "-o", "json", "--state-dir", &state_s]).1)
                .unwrap();
        let pod = &list["items"][0];
        assert_eq!(
            (&pod["kind"], &pod["metadata"]["name"]),
            (&"Pod".into(), &"probed".into())
        );
        assert_eq!(pod["spec"]["containers"][0]["name"], "web", "{pod:#}");
        assert_eq!(pod["status"]["phase"], "Running");
        let stuck = pod["status"]["containerStatuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "stuck")
            .unwrap();
        assert_eq!(stuck["restartCount"], 1, "{stuck:#}");
        assert!(
            stuck["state"]["running"]["startedAt"].is_string(),
            "{stuck:#}"
        );
        assert_eq!(
            stuck["lastState"]["terminated"]["exitCode"], 137,
            "{stuck:#}"
        );
        let yaml = podctl(&["status", "-o", "yaml", "--state-dir", &state_s]).1;
        assert!(yaml.starts_with("apiVersion: v1\nitems:\n"), "{yaml}");
        assert!(yaml.contains("kind: Pod"), "{yaml}");
        drop(agent);
        fx.assert_no_mounts();
    });
}
