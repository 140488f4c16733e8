//! Pod networking against the real kernel, as root. Every test runs on a
//! thread that first enters a network namespace of its own (the "node"), so
//! the host's network is never touched and all traffic stays between
//! namespaces the test made. Outside CI a missing privilege skips; with
//! CI=true it fails.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use netplug::dns::DnsSettings;
use netplug::{nft, Config, HostPort, NetError, Network, Protocol, Step};
use nix::sched::{setns, unshare, CloneFlags};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn have_nft() -> bool {
    std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Skips outside CI, fails in CI.
fn require() -> bool {
    let missing = if !is_root() {
        Some("needs root")
    } else if !have_nft() {
        Some("needs nft (apt-get install nftables)")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI=true and {why}"),
        Some(why) => {
            eprintln!("skipping: {why}");
            false
        }
    }
}

/// A private node: a network namespace of its own and a state dir. Dropping it
/// removes every pod's mounts; the namespace itself goes with its thread.
struct Node {
    net: Network,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path().join("state"));
        cfg.cidr = "10.88.0.0/16".parse().unwrap();
        let net = Network::new(cfg).unwrap();
        net.init().unwrap();
        Node { net, _dir: dir }
    }

    fn state(&self) -> &Path {
        &self.net.config().state_dir
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.net.gc(&|_| false);
    }
}

/// Runs `f` on a thread in a fresh network namespace with `lo` up.
fn on_private_node<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            netplug::link::netlink(
                None,
                |h| async move { netplug::link::loopback_up(&h).await },
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A TCP echo server on `port` inside the pod's namespace; serves `conns`
/// connections, then ends. Returns once it listens.
fn echo_server(ns: &Path, port: u16, conns: usize) -> std::thread::JoinHandle<()> {
    let ns = std::fs::File::open(ns).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        for _ in 0..conns {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            s.write_all(&buf[..n]).unwrap();
        }
    });
    rx.recv().unwrap();
    h
}

/// Connects to `addr` from the calling thread's namespace and checks that the
/// bytes come back.
fn echo(addr: SocketAddr, msg: &str) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(msg.as_bytes()).unwrap();
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(String::from_utf8(buf).unwrap(), msg);
}

/// `echo` from inside another pod's namespace.
fn echo_from(ns: &Path, addr: SocketAddr, msg: &str) {
    let path = ns.to_path_buf();
    let msg = msg.to_string();
    netplug::netns::run_in(Some(&path), move || {
        echo(addr, &msg);
        Ok(())
    })
    .unwrap();
}

fn link_names(ns: Option<&Path>) -> Vec<String> {
    let mut names: Vec<String> =
        netplug::link::netlink(ns, |h| async move { netplug::link::list(&h).await })
            .unwrap()
            .into_iter()
            .map(|(_, n)| n)
            .collect();
    names.sort();
    names
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(&dir))
        .collect()
}

/// Nothing of any pod remains on the node.
fn assert_clean(node: &Node) {
    let pods = node.state().join("pods");
    assert!(
        !pods.exists() || std::fs::read_dir(&pods).unwrap().count() == 0,
        "pod files left"
    );
    assert_eq!(link_names(None), ["lo", "podbr0"], "links left on the node");
    assert!(
        nft::elements("podagent").unwrap().is_empty(),
        "host ports left"
    );
    assert!(
        node.net.ipam().list().unwrap().is_empty(),
        "allocations left"
    );
    assert_eq!(
        std::fs::read_dir(node.state().join("netns"))
            .unwrap()
            .count(),
        0,
        "netns files left"
    );
    assert!(
        mounts_under(node.state()).is_empty(),
        "mounts left: {:?}",
        mounts_under(node.state())
    );
}

#[test]
fn two_pods_talk_over_tcp_and_the_node_reaches_them() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let node = Node::new();
        let a = node.net.setup("pod-a", &[]).unwrap();
        let b = node.net.setup("pod-b", &[]).unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(b.ip, Ipv4Addr::new(10, 88, 0, 3));
        assert_eq!(a.gateway, Ipv4Addr::new(10, 88, 0, 1));
        // Inside the pod: lo and eth0 only, eth0 holding the address.
        assert_eq!(link_names(Some(&a.netns)), ["eth0", "lo"]);
        let addrs = netplug::link::netlink(Some(&a.netns), |h| async move {
            let eth0 = netplug::link::find(&h, "eth0").await?.unwrap();
            netplug::link::addresses(&h, eth0.header.index).await
        })
        .unwrap();
        assert_eq!(addrs, ["10.88.0.2/16".parse().unwrap()]);

        let server = echo_server(&a.netns, 8080, 2);
        echo_from(
            &b.netns,
            SocketAddr::from((a.ip, 8080)),
            "pod b to pod a over the bridge",
        );
        echo(SocketAddr::from((a.ip, 8080)), "the node to pod a");
        server.join().unwrap();

        node.net.teardown("pod-a").unwrap();
        node.net.teardown("pod-b").unwrap();
        node.net.teardown("pod-b").unwrap(); // twice is fine
        assert_clean(&node);
    });
}

#[test]
fn host_ports_forward_from_the_node_and_conflict_for_a_later_pod() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let node = Node::new();
        let port = HostPort {
            protocol: Protocol::Tcp,
            host_port: 18080,
            container_port: 8080,
            host_ip: None,
        };
        let a = node.net.setup("web", &[port]).unwrap();
        let els = nft::elements("podagent").unwrap();
        assert_eq!(els.len(), 1);
        assert_eq!(
            (els[0].host_port, els[0].ip, els[0].port),
            (18080, a.ip, 8080)
        );

        let server = echo_server(&a.netns, 8080, 2);
        echo(
            SocketAddr::from((Ipv4Addr::new(10, 88, 0, 1), 18080)),
            "to the node's address",
        );
        echo(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 18080)),
            "to localhost",
        );
        server.join().unwrap();

        let err = node.net.setup("other", &[port]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "host port 18080/tcp is already used by pod web"
        );
        node.net.teardown("other").unwrap();
        node.net.teardown("web").unwrap();
        assert_clean(&node);
    });
}

#[test]
fn setting_up_a_pod_again_keeps_its_address_and_interfaces() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let node = Node::new();
        let first = node.net.setup("again", &[]).unwrap();
        let second = node.net.setup("again", &[]).unwrap();
        assert_eq!(first, second);
        assert_eq!(link_names(Some(&first.netns)), ["eth0", "lo"]);
        node.net.teardown("again").unwrap();
        assert_clean(&node);
    });
}

#[test]
fn an_existing_bridge_with_another_address_is_an_error() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let node = Node::new();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path());
        cfg.cidr = "10.99.0.0/16".parse().unwrap();
        let err = Network::new(cfg).unwrap().init().unwrap_err();
        assert_eq!(
            err.to_string(),
            "bridge podbr0 has address(es) 10.88.0.1/16, expected 10.99.0.1/16: refusing to change an existing bridge"
        );
        assert_clean(&node);
    });
}

#[test]
fn two_hundred_pods_get_distinct_addresses_and_leave_nothing() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let node = Node::new();
        let ids: Vec<String> = (0..200).map(|i| format!("pod-{i}")).collect();
        let mut ips = std::collections::HashSet::new();
        for id in &ids {
            assert!(
                ips.insert(node.net.setup(id, &[]).unwrap().ip),
                "duplicate address for {id}"
            );
        }
        assert_eq!(
            link_names(None).len(),
            202,
            "lo, the bridge and 200 host veths"
        );
        for id in &ids {
            node.net.teardown(id).unwrap();
        }
        assert_clean(&node);
    });
}

const CRASH_ENV: &str = "NETPLUG_TEST_CRASH_AT";

/// Not a test of its own: the child process of
/// `a_crash_between_setup_steps_is_undone_by_gc`. It sets a pod up and, at the
/// step named in its environment, tells the parent and waits to be killed.
#[test]
fn crash_helper_child_process() {
    let Ok(spec) = std::env::var(CRASH_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, ':');
    let (step, state, marker) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mut cfg = Config::new(state);
    cfg.cidr = "10.88.0.0/16".parse().unwrap();
    let net = Network::new(cfg).unwrap();
    let port = HostPort {
        protocol: Protocol::Tcp,
        host_port: 19090,
        container_port: 9090,
        host_ip: None,
    };
    let _ = net.setup_observed("crashing", &[port], &mut |s| {
        if format!("{s:?}") == step {
            std::fs::write(marker, step).unwrap();
            loop {
                std::thread::park();
            }
        }
    });
}

#[test]
fn a_crash_between_setup_steps_is_undone_by_gc() {
    if !require() {
        return;
    }
    for step in [
        Step::Allocated,
        Step::NetnsCreated,
        Step::VethCreated,
        Step::Configured,
        Step::PortsPublished,
    ] {
        on_private_node(|| {
            let node = Node::new();
            let marker = node.state().join("marker");
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "crash_helper_child_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    CRASH_ENV,
                    format!("{step:?}:{}:{}", node.state().display(), marker.display()),
                )
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !marker.exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the child never reached {step:?}"
                );
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "the child exited before {step:?}"
                );
                std::thread::yield_now();
            }
            child.kill().unwrap();
            child.wait().unwrap();
            std::fs::remove_file(&marker).unwrap();
            // The crash left the pod's state behind...
            assert_eq!(node.net.ipam().list().unwrap().len(), 1, "after {step:?}");
            if step != Step::Allocated {
                assert!(
                    netplug::netns::is_netns(&node.net.netns_path("crashing")),
                    "after {step:?}"
                );
            }
            // ...and garbage collection removes all of it.
            let report = node.net.gc(&|_| false).unwrap();
            assert_eq!(report.allocations, ["crashing"], "after {step:?}");
            assert_clean(&node);
        });
    }
}

#[test]
fn a_pod_network_namespace_file_is_its_own_namespace() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let node = Node::new();
        let a = node.net.setup("ns-check", &[]).unwrap();
        let own = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
        let pod = std::fs::metadata(&a.netns).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(own.ino(), pod.ino(), "the pod has its own namespace");
        node.net.teardown("ns-check").unwrap();
        assert!(!PathBuf::from(&a.netns).exists());
        assert_clean(&node);
    });
}

#[test]
fn outbound_traffic_is_masqueraded_and_can_be_switched_off() {
    if !require() {
        return;
    }
    for masquerade in [true, false] {
        on_private_node(|| {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = Config::new(dir.path().join("state"));
            cfg.masquerade = masquerade;
            let net = Network::new(cfg).unwrap();
            net.init().unwrap();
            let node = Node { net, _dir: dir };
            // "Outside": a namespace of the test's own, linked to the node by
            // a veth; the node is 192.0.2.1, the outside 192.0.2.2 (TEST-NET-1).
            // Under the netns dir, so the node's GC removes it if the test
            // fails half-way.
            let outside = node.net.netns_path("outside");
            netplug::netns::create(&outside).unwrap();
            let o = outside.clone();
            netplug::link::netlink(None, move |h| async move {
                let err = |op| {
                    move |source| NetError::Netlink {
                        op,
                        target: "out".into(),
                        source,
                    }
                };
                let ns = std::fs::File::open(&o).unwrap();
                let peer = rtnetlink::LinkMessageBuilder::<rtnetlink::LinkUnspec>::new()
                    .name("out1".to_string())
                    .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&ns))
                    .build();
                let msg = rtnetlink::LinkVeth::new("out0", "out1")
                    .set_info_data(rtnetlink::packet_route::link::InfoData::Veth(
                        rtnetlink::packet_route::link::InfoVeth::Peer(peer),
                    ))
                    .build();
                h.link().add(msg).execute().await.map_err(err("add"))?;
                let l = netplug::link::find(&h, "out0").await?.unwrap().header.index;
                h.address()
                    .add(l, "192.0.2.1".parse().unwrap(), 24)
                    .execute()
                    .await
                    .map_err(err("addr"))?;
                h.link()
                    .set(rtnetlink::LinkUnspec::new_with_index(l).up().build())
                    .execute()
                    .await
                    .map_err(err("up"))
            })
            .unwrap();
            netplug::link::netlink(Some(&outside), move |h| async move {
                let err = |op| {
                    move |source| NetError::Netlink {
                        op,
                        target: "out1".into(),
                        source,
                    }
                };
                let l = netplug::link::find(&h, "out1").await?.unwrap().header.index;
                h.address()
                    .add(l, "192.0.2.2".parse().unwrap(), 24)
                    .execute()
                    .await
                    .map_err(err("addr"))?;
                h.link()
                    .set(rtnetlink::LinkUnspec::new_with_index(l).up().build())
                    .execute()
                    .await
                    .map_err(err("up"))?;
                if !masquerade {
                    // A route back to the pods, so that an unmasqueraded
                    // connection completes and shows its source.
                    let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(Ipv4Addr::new(10, 88, 0, 0), 16)
                        .gateway(Ipv4Addr::new(192, 0, 2, 1))
                        .build();
                    h.route().add(route).execute().await.map_err(err("route"))?;
                }
                Ok(())
            })
            .unwrap();
            let pod = node.net.setup("egress", &[]).unwrap();
            // The server in the outside namespace reports the source it sees.
            let ns = std::fs::File::open(&outside).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let server = std::thread::spawn(move || {
                setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
                let l = TcpListener::bind("192.0.2.2:7000").unwrap();
                l.set_nonblocking(true).unwrap();
                tx.send(()).unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(3);
                loop {
                    match l.accept() {
                        Ok((_, peer)) => return Some(peer),
                        Err(_) if std::time::Instant::now() < deadline => std::thread::yield_now(),
                        Err(_) => return None,
                    }
                }
            });
            rx.recv().unwrap();
            let connected = netplug::netns::run_in(Some(&pod.netns), || {
                Ok(TcpStream::connect_timeout(
                    &"192.0.2.2:7000".parse().unwrap(),
                    Duration::from_secs(2),
                )
                .is_ok())
            })
            .unwrap();
            let seen = server.join().unwrap();
            assert!(connected);
            let want: std::net::IpAddr = if masquerade {
                Ipv4Addr::new(192, 0, 2, 1).into()
            } else {
                pod.ip.into()
            };
            assert_eq!(
                seen.map(|p| p.ip()),
                Some(want),
                "masquerade {masquerade}: the source the outside sees"
            );
            node.net.teardown("egress").unwrap();
            netplug::link::netlink(None, |h| async move {
                netplug::link::delete(&h, "out0").await.map(drop)
            })
            .unwrap();
            netplug::netns::remove(&outside).unwrap();
            assert_clean(&node);
        });
    }
}

#[test]
fn udp_host_ports_forward_too() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let node = Node::new();
        let port = HostPort {
            protocol: Protocol::Udp,
            host_port: 15353,
            container_port: 5353,
            host_ip: None,
        };
        let pod = node.net.setup("dns", &[port]).unwrap();
        let ns = std::fs::File::open(&pod.netns).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
            let s = std::net::UdpSocket::bind("0.0.0.0:5353").unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = s.recv_from(&mut buf).unwrap();
            s.send_to(&buf[..n], from).unwrap();
        });
        rx.recv().unwrap();
        let c = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send_to(b"query", "10.88.0.1:15353").unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"query");
        server.join().unwrap();
        node.net.teardown("dns").unwrap();
        assert_clean(&node);
    });
}

#[test]
fn dns_files_are_written_per_pod_and_removed_with_it() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let node = Node::new();
        let pod = node.net.setup("named", &[]).unwrap();
        let settings = DnsSettings {
            searches: vec!["edge.local".into()],
            ..DnsSettings::default()
        };
        let files = node
            .net
            .write_dns_files(
                "named",
                "named",
                Some(pod.ip),
                &[],
                "nameserver 192.0.2.53\n",
                &settings,
            )
            .unwrap();
        assert!(std::fs::read_to_string(&files.hosts)
            .unwrap()
            .contains("10.88.0.2\tnamed\n"));
        assert_eq!(
            std::fs::read_to_string(&files.resolv_conf).unwrap(),
            "nameserver 192.0.2.53\nsearch edge.local\n"
        );
        node.net.teardown("named").unwrap();
        assert!(!files.hosts.exists());
        assert_clean(&node);
    });
}

#[test]
fn a_pod_reaches_itself_and_others_through_a_host_port() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let node = Node::new();
        let port = HostPort {
            protocol: Protocol::Tcp,
            host_port: 18443,
            container_port: 8443,
            host_ip: None,
        };
        let server = node.net.setup("server", &[port]).unwrap();
        let client = node.net.setup("client", &[]).unwrap();
        let listening = echo_server(&server.netns, 8443, 2);
        let via_node = SocketAddr::from((Ipv4Addr::new(10, 88, 0, 1), 18443));
        echo_from(
            &client.netns,
            via_node,
            "another pod through the node's host port",
        );
        echo_from(
            &server.netns,
            via_node,
            "hairpin: the pod through its own host port",
        );
        listening.join().unwrap();
        node.net.teardown("server").unwrap();
        node.net.teardown("client").unwrap();
        assert_clean(&node);
    });
}

/// Connecting to `addr` from `ns` (none: the node) is refused.
fn refused_from(ns: Option<&Path>, addr: SocketAddr) {
    let path = ns.map(Path::to_path_buf);
    netplug::netns::run_in(path.as_deref(), move || {
        let r = TcpStream::connect_timeout(&addr, Duration::from_secs(3));
        assert!(r.is_err(), "{addr} answered");
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_host_port_on_one_address_is_reached_there_only() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let node = Node::new();
        let on = |ip: Option<Ipv4Addr>| HostPort {
            protocol: Protocol::Tcp,
            host_port: 18081,
            container_port: 8080,
            host_ip: ip,
        };
        let gateway = Ipv4Addr::new(10, 88, 0, 1);
        let a = node
            .net
            .setup("local", &[on(Some(Ipv4Addr::LOCALHOST))])
            .unwrap();
        let c = node.net.setup("client", &[]).unwrap();
        let server = echo_server(&a.netns, 8080, 1);
        echo(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 18081)),
            "to the node's loopback",
        );
        server.join().unwrap();
        // Not on the node's other address, from the node or from a pod.
        refused_from(None, SocketAddr::from((gateway, 18081)));
        refused_from(Some(&c.netns), SocketAddr::from((gateway, 18081)));
        // The same port on another address is another pod's to take; on
        // every address it is not.
        let b = node.net.setup("gw", &[on(Some(gateway))]).unwrap();
        let els = nft::elements("podagent").unwrap();
        assert_eq!(els.len(), 2, "{els:?}");
        let server = echo_server(&b.netns, 8080, 1);
        echo_from(
            &c.netns,
            SocketAddr::from((gateway, 18081)),
            "to the gateway's port",
        );
        server.join().unwrap();
        let err = node.net.setup("all", &[on(None)]).unwrap_err().to_string();
        assert!(
            ["local", "gw"]
                .iter()
                .any(|p| err == format!("host port 18081/tcp is already used by pod {p}")),
            "{err}"
        );
        node.net.teardown("all").unwrap();
        let err = node
            .net
            .setup("again", &[on(Some(Ipv4Addr::LOCALHOST))])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "host port 127.0.0.1:18081/tcp is already used by pod local"
        );
        for pod in ["again", "client", "gw", "local"] {
            node.net.teardown(pod).unwrap();
        }
        assert_clean(&node);
    });
}
