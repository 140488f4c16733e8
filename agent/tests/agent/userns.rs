//! `hostUsers: false`: the pod's own user namespace, its ids 0-65535 on a
//! range of the node's; the image and the volumes seen with their owners
//! through idmapped mounts; and its root, out of its mount namespace,
//! nobody on the node.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

#[test]
fn a_pod_with_its_own_user_namespace_is_nobody_on_the_node() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("userns");
        let (pods, state, state_s) = fx.agent_dirs();
        let host = fx.dir.path().join("host-data");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("by-root"), "node").unwrap();
        let _agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        let events = || podctl(&["events", "--state-dir", &state_s]).1;
        let logs = || podctl(&["logs", "mapped", "--state-dir", &state_s]).1;
        put_manifest(
            &pods,
            "mapped.yaml",
            &format!(
                "apiVersion: v1
kind: Pod
metadata: {{name: mapped}}
spec:
  hostUsers: false
  terminationGracePeriodSeconds: 1
  securityContext:
    sysctls: [{{name: net.ipv4.ip_local_port_range, value: '20000 30000'}}]
  volumes:
  - {{name: scratch, emptyDir: {{}}}}
  - {{name: data, hostPath: {{path: {host}}}}}
  containers:
  - name: c
    image: busybox
    volumeMounts: [{{name: scratch, mountPath: /scratch}}, {{name: data, mountPath: /data}}]
    command: [sh, -c, 'echo map $(cat /proc/self/uid_map); echo me $(id -u); echo image $(stat -c %u /bin/busybox); echo data $(stat -c %u /data/by-root); echo ports $(cat /proc/sys/net/ipv4/ip_local_port_range); touch /tmp/made /scratch/made; mkdir -p /www; echo served > /www/index.html; httpd -p 80 -h /www; echo done; sleep 100000 & wait']
",
                host = host.display()
            ),
        );
        assert!(
            eventually(Duration::from_secs(20), || logs().contains("done")),
            "{}\n{}",
            logs(),
            events()
        );
        let out = logs();
        assert!(out.contains("map 0 65536 65536"), "{out}");
        assert!(out.contains("me 0"), "{out}");
        assert!(
            out.contains("image 0"),
            "the image's files are its root's: {out}"
        );
        assert!(
            out.contains("data 0"),
            "a hostPath is seen with its owner: {out}"
        );
        assert!(
            out.contains("ports 20000 30000"),
            "the pod's own sysctl: {out}"
        );
        let p = pod_status(&state_s, "mapped");
        let uid = p["uid"].as_str().unwrap().to_string();
        // Its root binds port 80 of the pod's network (the node's
        // namespace, opened by ip_unprivileged_port_start).
        let ip: std::net::IpAddr = p["ip"].as_str().unwrap().parse().unwrap();
        let served = http_get(std::net::SocketAddr::new(ip, 80)).unwrap_or_default();
        assert!(served.contains("served"), "{served:?} {}", logs());
        let cdir = state.join("containers").join(&uid).join("c");
        // Its root's files in its writable layer are the range's first id.
        let made = std::fs::metadata(cdir.join("upper/tmp/made")).unwrap();
        assert_eq!((made.uid(), made.gid()), (65536, 65536));
        // Through the idmapped emptyDir, the node sees the file as root's.
        let vol = state.join("pods").join(&uid).join("volumes/scratch/made");
        assert_eq!(std::fs::metadata(vol).unwrap().uid(), 0);
        // podctl exec joins the user namespace too.
        let (code, out, err) = podctl(&[
            "exec",
            "mapped",
            "--state-dir",
            &state_s,
            "--",
            "cat",
            "/proc/self/uid_map",
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.split_whitespace().eq(["0", "65536", "65536"]), "{out}");

        // Out of its mount namespace (the node's files in view), the
        // container's root is nobody: it reads no root-only file, writes
        // nowhere root owns, and what it makes is the range's.
        let pid = std::fs::read_to_string(cdir.join("state/state.json")).unwrap();
        let pid: serde_json::Value = serde_json::from_str(&pid).unwrap();
        let pid = pid["pid"].as_i64().unwrap().to_string();
        let secret = fx.dir.path().join("secret");
        std::fs::write(&secret, "root only").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let escaped = fx.dir.path().join("escaped");
        std::fs::create_dir(&escaped).unwrap();
        std::fs::set_permissions(
            &escaped,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let script = format!(
            "id -u; cat {secret} && echo READ; touch {root_file} && echo WROTE; touch {free}",
            secret = secret.display(),
            root_file = host.join("new").display(),
            free = escaped.join("file").display(),
        );
        let o = Command::new("nsenter")
            .args(["--target", &pid, "--user", "--", "sh", "-c", &script])
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(
            stdout.starts_with("0\n"),
            "root in its namespace: {stdout} {stderr}"
        );
        assert!(
            !stdout.contains("READ") && !stdout.contains("WROTE"),
            "{stdout} {stderr}"
        );
        assert!(stderr.contains("Permission denied"), "{stderr}");
        let file = std::fs::metadata(escaped.join("file")).unwrap();
        assert_eq!(file.uid(), 65536, "nobody of the node's");

        std::fs::remove_file(pods.join("mapped.yaml")).unwrap();
        assert!(
            eventually(Duration::from_secs(15), || no_pods(&state_s)),
            "{}",
            events()
        );
        assert_eq!(
            entries(&state.join("userns")),
            Vec::<String>::new(),
            "its range is free"
        );
    });
}
