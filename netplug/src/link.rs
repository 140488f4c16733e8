//! Links, addresses and routes through rtnetlink. Every call runs on its own
//! thread with its own netlink socket (see `netns::run_in`), in the namespace
//! it names; create and delete are idempotent on EEXIST / ENODEV.

use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::error::{errno, NetError, Result};
use crate::netns;

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const ENOENT: i32 = 2;

/// Runs an rtnetlink conversation in `ns` (the caller's namespace when `None`).
pub fn netlink<T, F, Fut>(ns: Option<&Path>, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    netns::run_in(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| NetError::Io {
                op: "start netlink runtime for",
                path: "netlink".into(),
                source,
            })?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
                op: "open netlink socket for",
                path: "netlink".into(),
                source,
            })?;
            tokio::spawn(conn);
            f(handle).await
        })
    })
}

fn nl(op: &'static str, target: &str) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let target = target.to_string();
    move |source| NetError::Netlink { op, target, source }
}

/// The link named `name`, if any.
pub async fn find(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl("get link", name)(e)),
    }
}

/// Names and indexes of every link.
pub async fn list(h: &Handle) -> Result<Vec<(u32, String)>> {
    let mut links = h.link().get().execute();
    let mut out = Vec::new();
    while let Some(l) = links.try_next().await.map_err(nl("list links", "*"))? {
        if let Some(name) = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) {
            out.push((l.header.index, name));
        }
    }
    Ok(out)
}

fn is_bridge(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

/// IPv4 addresses (with prefix) on a link.
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<Ipv4Network>> {
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    let mut out = Vec::new();
    while let Some(a) = addrs
        .try_next()
        .await
        .map_err(nl("list addresses", &index.to_string()))?
    {
        for attr in &a.attributes {
            if let AddressAttribute::Address(std::net::IpAddr::V4(ip)) = attr {
                if let Ok(n) = Ipv4Network::new(*ip, a.header.prefix_len) {
                    out.push(n);
                }
            }
        }
    }
    Ok(out)
}

/// Makes sure the bridge exists, is up and holds `gateway` (with the pool's
/// prefix). An existing bridge with another IPv4 address is an error.
pub async fn ensure_bridge(h: &Handle, name: &str, gateway: Ipv4Network, mtu: u32) -> Result<u32> {
    let link = match find(h, name).await? {
        Some(l) => {
            if !is_bridge(&l) {
                return Err(NetError::NotABridge {
                    name: name.to_string(),
                });
            }
            l
        }
        None => {
            match h
                .link()
                .add(LinkBridge::new(name).mtu(mtu).up().build())
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(nl("create bridge", name)(e)),
            }
            find(h, name).await?.ok_or_else(|| NetError::NotABridge {
                name: name.to_string(),
            })?
        }
    };
    let index = link.header.index;
    let addrs = addresses(h, index).await?;
    if !addrs.contains(&gateway) {
        if !addrs.is_empty() {
            return Err(NetError::BridgeAddress {
                bridge: name.to_string(),
                found: addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                expected: gateway.to_string(),
            });
        }
        match h
            .address()
            .add(index, gateway.ip().into(), gateway.prefix())
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(nl("add gateway address to", name)(e)),
        }
    }
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl("set up", name))?;
    Ok(index)
}

/// Deletes a link by name; absent is fine.
pub async fn delete(h: &Handle, name: &str) -> Result<bool> {
    let Some(l) = find(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(l.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if matches!(errno(&e), Some(ENODEV | ENOENT)) => Ok(false),
        Err(e) => Err(nl("delete link", name)(e)),
    }
}

/// Creates the pod's veth pair: `host` attached to the bridge (up, hairpin so
/// a pod reaches itself through a host port), `peer` created directly in the
/// pod's namespace (moving a link between namespaces afterwards costs an RCU
/// grace period, about 20 ms). A leftover pair of the same name (a crash) is
/// replaced.
pub async fn create_veth(
    h: &Handle,
    host: &str,
    peer: &str,
    bridge: u32,
    mtu: u32,
    pod_ns: &Path,
) -> Result<()> {
    delete(h, host).await?;
    delete(h, peer).await?;
    let ns = std::fs::File::open(pod_ns).map_err(|source| NetError::Io {
        op: "open netns",
        path: pod_ns.to_path_buf(),
        source,
    })?;
    let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_string())
        .mtu(mtu)
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let msg = LinkVeth::new(host, peer)
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(nl("create veth", host))?;
    let host_link = find(h, host)
        .await?
        .ok_or_else(|| NetError::Config(format!("veth {host} vanished")))?;
    h.link()
        .set(
            LinkUnspec::new_with_index(host_link.header.index)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl("attach to bridge", host))?;
    h.link()
        .set_port(
            LinkBridgePort::new(host_link.header.index)
                .hairpin(true)
                .build(),
        )
        .execute()
        .await
        .map_err(nl("set hairpin on", host))?;
    Ok(())
}

/// Inside the pod's namespace: `lo` up, `peer` renamed `eth0` and up, the
/// address, the default route via the gateway.
/// Sets `lo` up (a new network namespace has it down).
pub async fn loopback_up(h: &Handle) -> Result<()> {
    if let Some(lo) = find(h, "lo").await? {
        h.link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .map_err(nl("set up", "lo"))?;
    }
    Ok(())
}

pub async fn configure_pod_side(
    h: &Handle,
    peer: &str,
    ip: Ipv4Network,
    gateway: Ipv4Addr,
    mtu: u32,
) -> Result<()> {
    loopback_up(h).await?;
    let link = match find(h, peer).await? {
        Some(l) => l,
        // Already renamed by an earlier, interrupted attempt.
        None => find(h, "eth0")
            .await?
            .ok_or_else(|| NetError::Config(format!("{peer} is not in the pod's netns")))?,
    };
    let index = link.header.index;
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .name("eth0")
                .mtu(mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl("rename to eth0 and set up", peer))?;
    match h
        .address()
        .add(index, ip.ip().into(), ip.prefix())
        .execute()
        .await
    {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(EEXIST) => {}
        Err(e) => return Err(nl("add address to", "eth0")(e)),
    }
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .build();
    match h.route().add(route).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(nl("add default route in", "eth0")(e)),
    }
}
