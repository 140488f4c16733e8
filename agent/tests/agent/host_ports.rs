//! A host port on one node address, end to end: the manifest's `hostIP:
//! 127.0.0.1` is served on the node's loopback and nowhere else (neither the
//! node's address from the node, nor from another pod).

use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

#[test]
fn a_host_port_on_127_0_0_1_is_the_nodes_alone() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("host-ip");
        let (pods, state, state_s) = fx.agent_dirs();
        let _agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        put_manifest(
            &pods,
            "web.yaml",
            &SERVED
                .replace("CONTENT", "local-only")
                .replace("hostPort: 18081}", "hostPort: 18081, hostIP: 127.0.0.1}"),
        );
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 18081));
        let node = std::net::SocketAddr::from(([10, 88, 0, 1], 18081));
        assert!(
            eventually(Duration::from_secs(20), || http_get(local)
                .unwrap_or_default()
                .contains("local-only")),
            "{:#}",
            raw_status(&state_s)
        );
        assert!(
            std::net::TcpStream::connect_timeout(&node, Duration::from_secs(2)).is_err(),
            "the node's address serves a port meant for its loopback"
        );
        // From another pod: the node's address refuses it too.
        put_manifest(
            &pods,
            "client.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'wget -T 2 -qO- http://10.88.0.1:18081/index.html || echo refused-from-a-pod; sleep 100000']\n",
        );
        let logs = || podctl(&["logs", "--state-dir", &state_s, "client"]).1;
        assert!(
            eventually(Duration::from_secs(20), || logs()
                .contains("refused-from-a-pod")),
            "{}",
            logs()
        );
        assert!(!logs().contains("local-only"), "{}", logs());
    });
}
