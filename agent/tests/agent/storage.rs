//! Ephemeral storage limits: a pod over one is evicted with the kubelet's
//! reason and message, and nothing of it starts again.

use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

#[test]
fn pods_over_their_ephemeral_storage_limits_are_evicted() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("storage");
        let (pods, state, state_s) = fx.agent_dirs();
        let _agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        let events = || podctl(&["events", "--state-dir", &state_s]).1;
        let pod = |name: &str, limit: &str, volume: &str, target: &str, trap: &str| {
            format!(
                "apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 30
  volumes: [{{name: scratch, emptyDir: {{{volume}}}}}]
  containers:
  - name: c
    image: busybox
    resources: {{limits: {{{limit}}}}}
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
    command: [sh, -c, '{trap}dd if=/dev/zero of={target}/fill bs=64k count=32 2>/dev/null; sleep 100000 & wait']
"
            )
        };
        // 2 MiB each: in the writable layer over a 1Mi limit, in an
        // emptyDir over its 1Mi sizeLimit, and under a 10Mi limit.
        put_manifest(
            &pods,
            "layer.yaml",
            &pod("layer", "ephemeral-storage: 1Mi", "", "/tmp", ""),
        );
        put_manifest(
            &pods,
            "dir.yaml",
            &pod("dir", "", "sizeLimit: 1Mi", "/scratch", ""),
        );
        put_manifest(
            &pods,
            "fine.yaml",
            &pod(
                "fine",
                "ephemeral-storage: 10Mi",
                "",
                "/tmp",
                "trap \"exit 0\" TERM; ",
            ),
        );
        let evicted = |name: &str| pod_status(&state_s, name)["reason"] == "Evicted";
        assert!(
            eventually(Duration::from_secs(30), || evicted("layer")
                && evicted("dir")),
            "{:#}\n{:#}\n{}",
            pod_status(&state_s, "layer"),
            pod_status(&state_s, "dir"),
            events()
        );
        let layer = pod_status(&state_s, "layer");
        assert_eq!(layer["phase"], "Failed", "{layer:#}");
        assert_eq!(
            layer["message"],
            "Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. "
        );
        let dir = pod_status(&state_s, "dir");
        assert_eq!(
            dir["message"],
            "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". "
        );
        // Stopped within 2 s (not the 30 s grace period) and not restarted.
        assert!(
            eventually(Duration::from_secs(5), || pod_status(&state_s, "layer")
                ["containers"][0]["exit_code"]
                .is_number()),
            "{:#}",
            pod_status(&state_s, "layer")
        );
        assert!(!eventually(Duration::from_secs(2), || pod_status(
            &state_s, "layer"
        )["containers"][0]["state"]
            == "Running"));
        assert_eq!(
            pod_status(&state_s, "layer")["containers"][0]["restart_count"],
            0
        );
        let fine = pod_status(&state_s, "fine");
        assert_eq!(fine["phase"], "Running", "{fine:#}");
        let ev = events();
        assert!(
            ev.lines()
                .any(|l| l.contains("Evicted") && l.contains("default/layer")),
            "{ev}"
        );
        for f in ["layer.yaml", "dir.yaml", "fine.yaml"] {
            std::fs::remove_file(pods.join(f)).unwrap();
        }
        assert!(
            eventually(Duration::from_secs(40), || no_pods(&state_s)),
            "{}",
            events()
        );
    });
}
