//! A pod's network from the runtime and netplug: one eth0 shared by its
//! containers, reached from the node and through a host port, inside a
//! network namespace of the test's own.

use std::time::Duration;

mod support;

use support::fixture::*;
use support::{eventually, require};

#[test]
fn a_pods_containers_share_one_eth0_reached_from_the_node_and_a_host_port() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("net");
        let rt = &fx.rt;
        let net = netplug::Network::new(netplug::Config::new(fx.dir.path().join("net"))).unwrap();
        net.init().unwrap();
        let pod = plan(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: webnet}\nspec:\n  containers:\n  - name: web\n    image: busybox\n    command: [sh, -c, 'mkdir -p /www && echo served-by-pod > /www/index.html && exec httpd -f -p 8080 -h /www']\n    ports: [{containerPort: 8080, hostPort: 18080}]\n  - name: probe\n    image: busybox\n    command: [sh, -c, 'ip -4 -o addr show eth0; while :; do sleep 1; done']\n",
        );
        let port = netplug::HostPort {
            protocol: netplug::Protocol::Tcp,
            host_port: 18080,
            container_port: 8080,
            host_ip: None,
        };
        let attach = net.setup(&pod.uid, &[port]).unwrap();
        let sb = fx.sandbox(&pod);
        let web = rt
            .start(&pod, &sb, Some(&attach.netns), &pod.containers[0])
            .unwrap();
        let probe = rt
            .start(&pod, &sb, Some(&attach.netns), &pod.containers[1])
            .unwrap();
        // The second container sees the pod's eth0 and its address.
        let log = probe.dir.join("container.log");
        assert!(
            eventually(Duration::from_secs(5), || std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&format!("inet {}/16", attach.ip))),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // The node reaches the web container at the pod's address and through
        // the host port.
        let get = |addr: std::net::SocketAddr| http_get(addr).unwrap_or_default();
        let pod_addr = std::net::SocketAddr::from((attach.ip, 8080));
        assert!(
            eventually(Duration::from_secs(5), || get(pod_addr)
                .contains("served-by-pod")),
            "GET {pod_addr}"
        );
        let host_port = std::net::SocketAddr::from(([10, 88, 0, 1], 18080));
        assert!(get(host_port).contains("served-by-pod"), "GET {host_port}");
        drop(web);
        for c in &pod.containers {
            rt.stop(&pod, c, Duration::from_millis(500)).unwrap();
            rt.remove(&pod, c).unwrap();
        }
        rt.remove_pod(&pod).unwrap();
        net.teardown(&pod.uid).unwrap();
        assert!(net.ipam().list().unwrap().is_empty());
        assert!(netplug::nft::elements("podagent").unwrap().is_empty());
        fx.assert_no_mounts();
    });
}
