//! `--metrics-address`: what a stock Prometheus scrapes, over TCP (on the
//! test node's loopback), checked by `promtool check metrics` (Debian's
//! `prometheus`), with the cAdvisor names' values compared with the
//! container's cgroup files.

use std::path::PathBuf;
use std::time::Duration;

use agent::cgroups::CgroupPath;

use crate::support::fixture::*;
use crate::support::{eventually, require};

/// One sample's value: `name{...container="app"...} value`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains("container=\"app\""))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[test]
fn prometheus_scrapes_cadvisor_names_whose_values_are_the_cgroups() {
    if !require() {
        return;
    }
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if promtool.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is missing: run scripts/setup"
        );
    }
    on_private_node(|| {
        let fx = fixture("metrics");
        let (pods, state, _state_s) = fx.agent_dirs();
        let state_s = state.display().to_string();
        let _agent = Running(spawn_agent(
            &fx,
            &pods,
            &state,
            &["--metrics-address", "127.0.0.1:19100"],
        ));
        // A busy loop under a tenth of a CPU (throttled), with some page cache.
        put_manifest(
            &pods,
            "busy.yaml",
            "apiVersion: v1
kind: Pod
metadata: {name: busy}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    command: [sh, -c, 'dd if=/dev/zero of=/tmp/cache bs=1M count=8 2>/dev/null; while :; do :; done']
    resources: {limits: {cpu: 100m, memory: 64Mi}}
  - name: probed
    image: busybox
    command: [sleep, '100000']
    readinessProbe: {exec: {command: ['true']}, periodSeconds: 1}
",
        );
        assert!(eventually(Duration::from_secs(20), || pod_status(
            &state_s, "busy"
        )["phase"]
            == "Running"));
        let url = std::net::SocketAddr::from(([127, 0, 0, 1], 19100));
        let scrape = || {
            let mut s = std::net::TcpStream::connect(url).unwrap();
            use std::io::{Read, Write};
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            body.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default()
        };
        assert!(
            eventually(Duration::from_secs(10), || sample(
                &scrape(),
                "container_cpu_cfs_throttled_periods_total"
            )
            .is_some_and(|n| n > 0.0)),
            "{}",
            scrape()
        );
        let text = scrape();
        for name in [
            "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes",
            "container_memory_rss",
            "container_memory_cache",
            "container_cpu_cfs_periods_total",
            "container_cpu_cfs_throttled_seconds_total",
            "container_spec_memory_limit_bytes",
            "container_spec_cpu_quota",
            "container_spec_cpu_shares",
            "container_oom_events_total",
            "container_processes",
            "container_start_time_seconds",
        ] {
            assert!(sample(&text, name).is_some(), "{name}:\n{text}");
        }
        assert!(text.contains("kubelet_running_pods 1\n"), "{text}");
        assert!(
            text.contains("kubelet_running_containers{container_state=\"running\"} 2\n"),
            "{text}"
        );
        // One pod started: its start time observed once.
        assert!(
            text.contains("\nkubelet_pod_start_duration_seconds_count 1\n"),
            "{text}"
        );
        let probes = |text: &str| -> f64 {
            text.lines()
                .filter(|l| {
                    l.starts_with("prober_probe_total{")
                        && l.contains(
                            "container=\"probed\",probe_type=\"Readiness\",result=\"successful\"",
                        )
                })
                .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
                .unwrap_or(0.0)
        };
        assert!(
            eventually(Duration::from_secs(10), || probes(&scrape()) >= 2.0),
            "{}",
            scrape()
        );
        // Packets sent to the pod are counted on its interface.
        let ip = pod_status(&state_s, "busy")["ip"]
            .as_str()
            .unwrap()
            .to_string();
        let net = |text: &str, name: &str| -> f64 {
            text.lines()
                .filter(|l| {
                    l.starts_with(&format!("{name}{{"))
                        && l.contains("pod=\"busy\",container=\"\",interface=\"eth0\"")
                })
                .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
                .unwrap_or(-1.0)
        };
        let before = net(&scrape(), "container_network_receive_packets_total");
        assert!(before >= 0.0, "{}", scrape());
        let ping = std::process::Command::new("busybox")
            .args(["ping", "-c", "5", "-s", "1000", "-i", "0.1", &ip])
            .output()
            .unwrap();
        assert!(
            ping.status.success(),
            "{}",
            String::from_utf8_lossy(&ping.stdout)
        );
        let text = scrape();
        assert!(
            net(&text, "container_network_receive_packets_total") >= before + 5.0,
            "{text}"
        );
        assert!(
            net(&text, "container_network_receive_bytes_total") >= 5.0 * 1000.0,
            "{text}"
        );
        assert!(
            net(&text, "container_network_transmit_bytes_total") >= 5.0 * 1000.0,
            "{text}"
        );
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert_eq!(
            sample(&text, "container_spec_memory_limit_bytes"),
            Some((64u64 << 20) as f64)
        );
        assert_eq!(sample(&text, "container_spec_cpu_quota"), Some(10_000.0));
        assert!(
            sample(&text, "container_memory_cache").unwrap() >= (8u64 << 20) as f64,
            "{text}"
        );

        // The working set is the cgroup's usage less its inactive file
        // pages, as cAdvisor computes it; read at about the same time.
        let uid = pod_status(&state_s, "busy")["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let cg = CgroupPath::new(&format!(
            "{}/agent/pod{uid}/app",
            fx.cg_root.as_path().display()
        ))
        .unwrap();
        let file = |name: &str| -> String {
            let f = fx
                .rt
                .cgroups
                .procs_files(&cg)
                .iter()
                .map(|f| f.parent().unwrap().join(name))
                .find(|f| f.exists())
                .unwrap_or_else(|| panic!("no {name}"));
            std::fs::read_to_string(f).unwrap()
        };
        let stat = |text: &str, key: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key} "))?.trim().parse().ok())
                .unwrap()
        };
        let v2 = fx.rt.cgroups.private_namespace();
        let (usage, inactive) = if v2 {
            (
                file("memory.current").trim().parse::<f64>().unwrap(),
                stat(&file("memory.stat"), "inactive_file"),
            )
        } else {
            (
                file("memory.usage_in_bytes").trim().parse::<f64>().unwrap(),
                stat(&file("memory.stat"), "total_inactive_file"),
            )
        };
        let ws = sample(&scrape(), "container_memory_working_set_bytes").unwrap();
        assert!(
            (ws - (usage - inactive)).abs() < (2u64 << 20) as f64,
            "working set {ws} against {usage} - {inactive}"
        );
        let throttled = sample(&scrape(), "container_cpu_cfs_throttled_periods_total").unwrap();
        let nr_throttled = stat(&file("cpu.stat"), "nr_throttled");
        assert!(
            throttled > 0.0 && throttled <= nr_throttled,
            "{throttled} against {nr_throttled}"
        );

        if let Some(promtool) = &promtool {
            use std::io::Write;
            let mut child = std::process::Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let o = child.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        // Nothing but the metrics on that port.
        let mut s = std::net::TcpStream::connect(url).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET /v1/status HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.0 404"), "{reply}");
        std::fs::remove_file(pods.join("busy.yaml")).unwrap();
        assert!(eventually(Duration::from_secs(15), || no_pods(&state_s)));
    });
}
