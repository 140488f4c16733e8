//! Downward API volumes: the files a container reads change in place when
//! the pod's labels are edited, without a restart.

use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

#[test]
fn a_label_edit_changes_the_downward_api_file_without_a_restart() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("downward");
        let (pods, state, state_s) = fx.agent_dirs();
        let out = fx.dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let _agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        let events = || podctl(&["events", "--state-dir", &state_s]).1;
        let manifest = |version: &str| {
            format!(
                "apiVersion: v1
kind: Pod
metadata:
  name: info
  labels: {{app: web, version: '{version}'}}
spec:
  terminationGracePeriodSeconds: 2
  volumes:
  - {{name: out, hostPath: {{path: {out}}}}}
  - name: meta
    projected:
      sources:
      - downwardAPI:
          items:
          - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
          - {{path: limits/mem, resourceFieldRef: {{containerName: c, resource: limits.memory, divisor: 1Mi}}}}
  containers:
  - name: c
    image: busybox
    resources: {{limits: {{memory: 32Mi}}}}
    volumeMounts: [{{name: out, mountPath: /out}}, {{name: meta, mountPath: /etc/meta}}]
    command: [sh, -c, 'touch /etc/meta/x 2> /out/ro; cat /etc/meta/limits/mem > /out/mem; while true; do cat /etc/meta/labels > /out/.seen && mv /out/.seen /out/seen; sleep 0.2; done']
",
                out = out.display()
            )
        };
        let seen = || std::fs::read_to_string(out.join("seen")).unwrap_or_default();
        put_manifest(&pods, "info.yaml", &manifest("1"));
        assert!(
            eventually(Duration::from_secs(20), || seen()
                == "app=\"web\"\nversion=\"1\""),
            "{:?}\n{}",
            seen(),
            events()
        );
        assert_eq!(std::fs::read_to_string(out.join("mem")).unwrap(), "32");
        assert!(
            std::fs::read_to_string(out.join("ro"))
                .unwrap()
                .contains("Read-only file system"),
            "the volume is read-only in the container"
        );
        let pid = || pod_status(&state_s, "info")["containers"][0]["started_at"].clone();
        let started = pid();
        put_manifest(&pods, "info.yaml", &manifest("2"));
        assert!(
            eventually(Duration::from_secs(10), || seen()
                == "app=\"web\"\nversion=\"2\""),
            "{:?}\n{}",
            seen(),
            events()
        );
        let p = pod_status(&state_s, "info");
        assert_eq!(p["containers"][0]["restart_count"], 0, "{p:#}");
        assert_eq!(pid(), started, "the same run: {p:#}");
        assert!(events().contains("FilesUpdated"), "{}", events());
        std::fs::remove_file(pods.join("info.yaml")).unwrap();
        assert!(
            eventually(Duration::from_secs(15), || no_pods(&state_s)),
            "{}",
            events()
        );
    });
}
