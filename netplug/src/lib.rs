//! `netplug`: every pod its own network. A pod is an opaque id to this crate.
//!
//! Per pod: a network namespace persisted as a bind mount under the state dir,
//! a veth pair (host end on the bridge, the other end the pod's `eth0`), an
//! address from the pool with the default route via the bridge's gateway, and
//! its host ports in podagent's nftables table. Setup is a sequence of named
//! steps whose state is recorded first (the allocation names the veth), so a
//! crash at any step is undone by [`Network::teardown`] or
//! [`Network::gc`]. Teardown is idempotent.
//!
//! Calls block (each netlink conversation runs on its own short-lived thread
//! in the namespace it concerns); async callers use `spawn_blocking`.

pub mod dns;
pub mod error;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod nft;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use error::{NetError, Result};
use ipam::{Allocation, Ipam};

/// Prefix of every host veth podagent makes: GC removes what it left behind.
pub const HOST_VETH_PREFIX: &str = "vpa";
const PEER_PREFIX: &str = "vpb";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// A container port published on the node: on every address of the node,
/// or on one (`hostIP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostPort {
    pub protocol: Protocol,
    pub host_port: u16,
    pub container_port: u16,
    /// The one node address it is published on; none: all of them.
    #[serde(default)]
    pub host_ip: Option<std::net::Ipv4Addr>,
}

/// How the agent's pods are networked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bridge name (at most 15 bytes), default `podbr0`.
    pub bridge: String,
    /// Pod CIDR, default `10.88.0.0/16`; the first address is the gateway.
    pub cidr: Ipv4Network,
    pub mtu: u32,
    /// Masquerade traffic from pods to outside the CIDR.
    pub masquerade: bool,
    /// Where netns mounts and allocations live.
    pub state_dir: PathBuf,
    /// podagent's nftables table (family ip).
    pub nft_table: String,
}

impl Config {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Config {
            bridge: "podbr0".into(),
            cidr: Ipv4Network::new(Ipv4Addr::new(10, 88, 0, 0), 16)
                .unwrap_or_else(|_| unreachable_cidr()),
            mtu: 1500,
            masquerade: true,
            state_dir: state_dir.into(),
            nft_table: "podagent".into(),
        }
    }
}

fn unreachable_cidr() -> Ipv4Network {
    Ipv4Network::from(Ipv4Addr::new(10, 88, 0, 0))
}

/// What a pod got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub host_veth: String,
    pub netns: PathBuf,
}

/// The steps of [`Network::setup`], in order, for observing and for tests that
/// crash between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Allocated,
    NetnsCreated,
    VethCreated,
    Configured,
    PortsPublished,
}

/// What [`Network::gc`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub allocations: Vec<String>,
    pub netns: Vec<String>,
    pub links: Vec<String>,
    pub host_ports: usize,
}

fn check_name(kind: &'static str, s: &str, max: usize) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !s.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(NetError::Config(format!(
            "{kind} {s:?} must be 1 to {max} letters, digits, '-', '_' or '.', not starting with '.' or '-'"
        )))
    }
}

/// A pod id: 1 to 128 lower-case letters, digits and '-' (a pod uid), so it is
/// safe as a file name.
pub fn check_pod_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() || id.len() > 128 {
        Some("must be 1 to 128 characters")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may hold only lower-case letters, digits and '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetError::InvalidId {
            id: id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Host-side names of a pod's veth pair: a fixed prefix and 12 hex digits of
/// the pod id's SHA-256 (15 bytes, the kernel's limit); the allocation record
/// maps them back to the pod.
pub fn veth_names(id: &str) -> (String, String) {
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    (
        format!("{HOST_VETH_PREFIX}{hex}"),
        format!("{PEER_PREFIX}{hex}"),
    )
}

#[derive(Debug)]
pub struct Network {
    cfg: Config,
    ipam: Ipam,
    gateway: Ipv4Network,
}

impl Network {
    /// Validates the configuration and creates the state directories.
    pub fn new(cfg: Config) -> Result<Self> {
        check_name("bridge name", &cfg.bridge, 15)?;
        check_name("nftables table", &cfg.nft_table, 64)?;
        if cfg.cidr.prefix() > 30 {
            return Err(NetError::Config(format!(
                "pod CIDR {} is too small: at most /30",
                cfg.cidr
            )));
        }
        if !(576..=65535).contains(&cfg.mtu) {
            return Err(NetError::Config(format!(
                "MTU {} is not between 576 and 65535",
                cfg.mtu
            )));
        }
        let cidr = Ipv4Network::new(cfg.cidr.network(), cfg.cidr.prefix())
            .map_err(|e| NetError::Config(e.to_string()))?;
        for dir in [cfg.state_dir.clone(), cfg.state_dir.join("netns")] {
            std::fs::create_dir_all(&dir).map_err(|source| NetError::Io {
                op: "create",
                path: dir,
                source,
            })?;
        }
        let ipam = Ipam::new(&cfg.state_dir, cidr);
        let gateway = Ipv4Network::new(ipam.gateway(), cidr.prefix())
            .map_err(|e| NetError::Config(e.to_string()))?;
        Ok(Network {
            cfg: Config { cidr, ..cfg },
            ipam,
            gateway,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// The node side: the bridge with the gateway address, forwarding on, the
    /// nftables table. Idempotent; run at start.
    pub fn init(&self) -> Result<()> {
        let (bridge, gw, mtu) = (self.cfg.bridge.clone(), self.gateway, self.cfg.mtu);
        link::netlink(None, move |h| async move {
            link::ensure_bridge(&h, &bridge, gw, mtu).await
        })?;
        // Forwarding for traffic between the pods and the outside, and
        // route_localnet so the node's 127.0.0.1:hostPort reaches a pod.
        netns::run_in(None, || {
            for (path, value) in [
                ("/proc/sys/net/ipv4/ip_forward".to_string(), "1"),
                (
                    format!("/proc/sys/net/ipv4/conf/{}/route_localnet", self.cfg.bridge),
                    "1",
                ),
            ] {
                std::fs::write(&path, value).map_err(|source| NetError::Io {
                    op: "write",
                    path: path.into(),
                    source,
                })?;
            }
            Ok(())
        })?;
        nft::ensure_table(
            &self.cfg.nft_table,
            &self.cfg.bridge,
            self.cfg.cidr,
            self.cfg.masquerade,
        )
    }

    /// Where the pod's network namespace is mounted.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("netns").join(id)
    }

    /// Gives the pod its network; idempotent (a pod set up again keeps its
    /// address). On error, what was made is left for `teardown`.
    pub fn setup(&self, id: &str, ports: &[HostPort]) -> Result<Attachment> {
        self.setup_observed(id, ports, &mut |_| {})
    }

    /// [`Network::setup`], calling `after` once each step is done.
    pub fn setup_observed(
        &self,
        id: &str,
        ports: &[HostPort],
        after: &mut dyn FnMut(Step),
    ) -> Result<Attachment> {
        check_pod_id(id)?;
        let (host, peer) = veth_names(id);
        let a = self.ipam.allocate(id, &host, ports)?;
        after(Step::Allocated);
        let ns = self.netns_path(id);
        let fresh = netns::create(&ns)?;
        after(Step::NetnsCreated);
        let (bridge, mtu) = (self.cfg.bridge.clone(), self.cfg.mtu);
        let (h2, p2, ns2) = (host.clone(), peer.clone(), ns.clone());
        // A namespace made now has no eth0: no need to look (a conversation
        // on a thread of its own) before making the pair.
        let configured = !fresh
            && link::netlink(Some(&ns), {
                let peer = peer.clone();
                move |h| async move {
                    Ok(link::find(&h, &peer).await?.is_none()
                        && link::find(&h, "eth0").await?.is_some())
                }
            })?;
        if !configured {
            link::netlink(None, move |h| async move {
                let index = link::find(&h, &bridge)
                    .await?
                    .ok_or_else(|| {
                        NetError::Config(format!("bridge {bridge} does not exist: call init first"))
                    })?
                    .header
                    .index;
                link::create_veth(&h, &h2, &p2, index, mtu, &ns2).await
            })?;
        }
        after(Step::VethCreated);
        let ip = Ipv4Network::new(a.ip, self.cfg.cidr.prefix())
            .map_err(|e| NetError::Config(e.to_string()))?;
        let gw = self.gateway.ip();
        link::netlink(Some(&ns), move |h| async move {
            link::configure_pod_side(&h, &peer, ip, gw, mtu).await
        })?;
        after(Step::Configured);
        nft::publish(&self.cfg.nft_table, id, a.ip, ports).map_err(|e| self.name_port_owner(e))?;
        after(Step::PortsPublished);
        Ok(Attachment {
            ip: a.ip,
            prefix: self.cfg.cidr.prefix(),
            gateway: gw,
            host_veth: host,
            netns: ns,
        })
    }

    /// A port conflict names the owning pod rather than its address.
    fn name_port_owner(&self, e: NetError) -> NetError {
        match e {
            NetError::PortInUse { port, owner } => {
                let pod = self.ipam.list().ok().and_then(|all| {
                    all.into_iter()
                        .find(|(_, a)| a.ip.to_string() == owner)
                        .map(|(id, _)| id)
                });
                NetError::PortInUse {
                    port,
                    owner: pod.unwrap_or(owner),
                }
            }
            other => other,
        }
    }

    /// Writes the pod's hosts and resolv.conf files under the state dir
    /// (`pods/<id>/`), atomically; `node_resolv_conf` is the text of the
    /// node's resolver configuration. Removed by `teardown`. Not synced to
    /// disk: they are written again whenever the sandbox is made, and a
    /// running container holds its own bind mount of them.
    pub fn write_dns_files(
        &self,
        id: &str,
        hostname: &str,
        ip: Option<Ipv4Addr>,
        aliases: &[(String, Vec<String>)],
        node_resolv_conf: &str,
        settings: &dns::DnsSettings,
    ) -> Result<DnsFiles> {
        check_pod_id(id)?;
        let dir = self.pod_dir(id);
        std::fs::create_dir_all(&dir).map_err(|source| NetError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        let files = self.dns_files(id)?;
        write_atomic(
            &files.hosts,
            dns::hosts_file(hostname, ip.map(Into::into), aliases).as_bytes(),
        )?;
        write_atomic(
            &files.resolv_conf,
            dns::resolv_conf(node_resolv_conf, settings).as_bytes(),
        )?;
        Ok(files)
    }

    /// Where `write_dns_files` keeps the pod's files (a pod adopted from an
    /// earlier agent keeps the ones it has).
    pub fn dns_files(&self, id: &str) -> Result<DnsFiles> {
        check_pod_id(id)?;
        let dir = self.pod_dir(id);
        Ok(DnsFiles {
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
        })
    }

    fn pod_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("pods").join(id)
    }

    /// Removes everything the pod has: host ports, veth, netns, address. Removing
    /// a pod twice, or one half set up, is not an error.
    pub fn teardown(&self, id: &str) -> Result<()> {
        check_pod_id(id)?;
        let alloc: Option<Allocation> = self.ipam.get(id)?;
        // The allocation records the pod's ports: no nft call for a pod with
        // none (GC sweeps the map for anything a crash left).
        if let Some(a) = alloc.as_ref().filter(|a| !a.ports.is_empty()) {
            nft::unpublish(&self.cfg.nft_table, a.ip)?;
        }
        let (host, peer) = veth_names(id);
        link::netlink(None, move |h| async move {
            link::delete(&h, &host).await?;
            // The peer, if a crash left it on the node before it was moved.
            link::delete(&h, &peer).await?;
            Ok(())
        })?;
        netns::remove(&self.netns_path(id))?;
        let dir = self.pod_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NetError::Io {
                    op: "remove",
                    path: dir,
                    source,
                })
            }
        }
        self.ipam.release(id)?;
        Ok(())
    }

    /// Removes what belongs to no known pod: allocations, netns mounts, host
    /// veths with podagent's prefix, host ports to unallocated addresses.
    pub fn gc(&self, known: &dyn Fn(&str) -> bool) -> Result<GcReport> {
        let mut report = GcReport::default();
        for id in self.ipam.list()?.into_keys() {
            if !known(&id) {
                self.teardown(&id)?;
                report.allocations.push(id);
            }
        }
        let dir = self.cfg.state_dir.join("netns");
        let entries = std::fs::read_dir(&dir).map_err(|source| NetError::Io {
            op: "list",
            path: dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !known(&name) {
                netns::remove(&e.path())?;
                report.netns.push(name);
            }
        }
        let pods = self.cfg.state_dir.join("pods");
        for e in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !known(&name) {
                std::fs::remove_dir_all(e.path()).map_err(|source| NetError::Io {
                    op: "remove",
                    path: e.path(),
                    source,
                })?;
            }
        }
        let owned: HashSet<String> = self
            .ipam
            .list()?
            .values()
            .map(|a| a.host_veth.clone())
            .collect();
        let links = link::netlink(None, |h| async move { link::list(&h).await })?;
        let stale: Vec<String> = links
            .into_iter()
            .map(|(_, n)| n)
            .filter(|n| {
                (n.starts_with(HOST_VETH_PREFIX) || n.starts_with(PEER_PREFIX))
                    && !owned.contains(n)
            })
            .filter(|n| !owned.contains(&n.replacen(PEER_PREFIX, HOST_VETH_PREFIX, 1)))
            .collect();
        for name in &stale {
            let n = name.clone();
            link::netlink(None, move |h| async move { link::delete(&h, &n).await })?;
        }
        report.links = stale;
        let allocated: HashSet<Ipv4Addr> = self.ipam.list()?.values().map(|a| a.ip).collect();
        let orphans: Vec<nft::Element> = nft::elements(&self.cfg.nft_table)?
            .into_iter()
            .filter(|e| !allocated.contains(&e.ip))
            .collect();
        nft::delete_elements(&self.cfg.nft_table, &orphans)?;
        report.host_ports = orphans.len();
        Ok(report)
    }

    /// Removes the bridge and the nftables table (for tests and uninstall).
    pub fn destroy_node_side(&self) -> Result<()> {
        nft::delete_table(&self.cfg.nft_table)?;
        let bridge = self.cfg.bridge.clone();
        link::netlink(None, move |h| async move {
            link::delete(&h, &bridge).await.map(drop)
        })
    }
}

/// Writes `bytes` to `path` atomically (a temp file in the same directory,
/// renamed over it), without waiting for the disk.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| NetError::Io {
            op,
            path: p,
            source,
        }
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename into place", path))
}

/// The pod's `/etc/hosts` and `/etc/resolv.conf`, for the runtime to
/// bind-mount into its containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsFiles {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_the_kernel_limit_and_are_stable() {
        let (h, p) = veth_names("0f8e2b6c-1d2e-4c3b-9a7f-0123456789ab");
        assert_eq!(h.len(), 15);
        assert_eq!(p.len(), 15);
        assert!(h.starts_with("vpa") && p.starts_with("vpb"));
        assert_eq!(h[3..], p[3..]);
        assert_eq!(veth_names("0f8e2b6c-1d2e-4c3b-9a7f-0123456789ab").0, h);
        assert_ne!(veth_names("other").0, h);
    }

    #[test]
    fn pod_ids_are_safe_file_names() {
        assert!(check_pod_id("0f8e2b6c-1d2e").is_ok());
        for bad in ["", "../x", "a/b", "A", "a b", &"a".repeat(129)] {
            assert!(check_pod_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn configuration_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::new(dir.path());
        c.bridge = "a-very-long-bridge-name".into();
        assert!(Network::new(c).is_err());
        let mut c = Config::new(dir.path());
        c.cidr = "10.0.0.0/31".parse().unwrap();
        assert!(Network::new(c).is_err());
        let mut c = Config::new(dir.path());
        c.cidr = "10.1.2.3/16".parse().unwrap();
        assert_eq!(
            Network::new(c).unwrap().config().cidr.to_string(),
            "10.1.0.0/16"
        );
    }
}
