//! Host ports and masquerade in one nftables table owned by podagent, driven
//! through the `nft` command (as kube-proxy's nftables mode does): each change
//! is one `nft -f -` transaction.
//!
//! Host ports live in two maps: `hostports` (`protocol . port : pod ip .
//! port`) for ports on every node address, and `hostports_addr` (`address .
//! protocol . port : pod ip . port`) for ports on one address (`hostIP`).
//! Each is looked up by a DNAT rule in prerouting (traffic from outside) and
//! one in output (the node itself, including 127.0.0.1), the one-address map
//! first. A lookup that misses ends its rule, so a port on 127.0.0.1 alone
//! is not reached through any other address. A pod's elements carry its id
//! as comment and are found by its address when it is removed.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ipnetwork::Ipv4Network;

use crate::error::{NetError, Result};
use crate::{HostPort, Protocol};

/// Runs `nft` with `script` on stdin (`-f -`), or with `args`.
fn nft(args: &[&str], script: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("nft");
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if script.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .map_err(|e| NetError::Nft(format!("cannot run nft (install nftables): {e}")))?;
    if let (Some(s), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin
            .write_all(s.as_bytes())
            .map_err(|e| NetError::Nft(format!("writing the script: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Nft(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Creates the table, map and chains, and (re)writes the rules: idempotent, in
/// one transaction, the map's elements kept.
pub fn ensure_table(table: &str, bridge: &str, cidr: Ipv4Network, masquerade: bool) -> Result<()> {
    let outbound = if masquerade {
        format!("add rule ip {table} postrouting ip saddr {cidr} ip daddr != {cidr} masquerade comment \"podagent outbound\"\n")
    } else {
        String::new()
    };
    let script = format!(
        "table ip {table} {{
  map hostports {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
  map hostports_addr {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
  chain output {{ type nat hook output priority -100; policy accept; }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
}}
flush chain ip {table} prerouting
flush chain ip {table} output
flush chain ip {table} postrouting
add rule ip {table} prerouting fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @hostports_addr comment \"podagent host ports on one address\"
add rule ip {table} prerouting fib daddr type local dnat ip to meta l4proto . th dport map @hostports comment \"podagent host ports\"
add rule ip {table} output fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @hostports_addr comment \"podagent host ports on one address from the node\"
add rule ip {table} output fib daddr type local dnat ip to meta l4proto . th dport map @hostports comment \"podagent host ports from the node\"
add rule ip {table} postrouting ip saddr 127.0.0.0/8 oifname \"{bridge}\" ct status dnat masquerade comment \"podagent localhost to pod\"
add rule ip {table} postrouting ip saddr {cidr} ip daddr {cidr} ct status dnat masquerade comment \"podagent hairpin\"
{outbound}"
    );
    nft(&["-f", "-"], Some(&script)).map(drop)
}

/// Deletes the table and everything in it; absent is fine.
pub fn delete_table(table: &str) -> Result<()> {
    match nft(&["delete", "table", "ip", table], None) {
        Ok(_) => Ok(()),
        Err(NetError::Nft(msg)) if msg.contains("No such file or directory") => Ok(()),
        Err(e) => Err(e),
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// One element of a host-port map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub protocol: String,
    pub host_port: u16,
    /// The one node address (`hostports_addr`); none: every address.
    pub host_ip: Option<Ipv4Addr>,
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl Element {
    /// Whether `self` and `p` ask for the same port: same protocol and
    /// number, and an address in common (every address holds them all).
    fn overlaps(&self, p: &HostPort) -> bool {
        self.protocol == proto(p.protocol)
            && self.host_port == p.host_port
            && (self.host_ip.is_none() || p.host_ip.is_none() || self.host_ip == p.host_ip)
    }

    /// Its key in its map.
    fn key(&self) -> String {
        match self.host_ip {
            Some(a) => format!("{a} . {} . {}", self.protocol, self.host_port),
            None => format!("{} . {}", self.protocol, self.host_port),
        }
    }
}

/// `8080/tcp`, or `127.0.0.1:8080/tcp`.
fn port_name(p: &HostPort) -> String {
    match p.host_ip {
        Some(a) => format!("{a}:{}/{}", p.host_port, proto(p.protocol)),
        None => format!("{}/{}", p.host_port, proto(p.protocol)),
    }
}

/// Publishes the pod's ports in one transaction: all or none. A port some
/// other pod holds (the same protocol and number on an address in common) is
/// `Err(PortInUse)` naming its owner's address (the caller maps it to a
/// pod); the same port on two different addresses is two ports.
pub fn publish(table: &str, pod: &str, ip: Ipv4Addr, ports: &[HostPort]) -> Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    let existing = elements(table)?;
    for p in ports {
        if let Some(e) = existing.iter().find(|e| e.overlaps(p) && e.ip != ip) {
            return Err(NetError::PortInUse {
                port: port_name(p),
                owner: e.ip.to_string(),
            });
        }
    }
    let mut all = Vec::new();
    let mut one = Vec::new();
    for p in ports {
        let e = Element {
            protocol: proto(p.protocol).into(),
            host_port: p.host_port,
            host_ip: p.host_ip,
            ip,
            port: p.container_port,
        };
        // Already there for this pod (a setup done again).
        if existing.contains(&e) {
            continue;
        }
        let item = format!(
            "{} comment \"{pod}\" : {ip} . {}",
            e.key(),
            p.container_port
        );
        match p.host_ip {
            Some(_) => one.push(item),
            None => all.push(item),
        }
    }
    // `create` fails on an existing key: a race with another pod is an error,
    // never a silent overwrite.
    let mut script = String::new();
    if !all.is_empty() {
        script += &format!(
            "create element ip {table} hostports {{ {} }}\n",
            all.join(", ")
        );
    }
    if !one.is_empty() {
        script += &format!(
            "create element ip {table} hostports_addr {{ {} }}\n",
            one.join(", ")
        );
    }
    if script.is_empty() {
        return Ok(());
    }
    nft(&["-f", "-"], Some(&script)).map(drop)
}

/// Removes every host port that leads to `ip`. Idempotent.
pub fn unpublish(table: &str, ip: Ipv4Addr) -> Result<usize> {
    let doomed: Vec<Element> = elements(table)?
        .into_iter()
        .filter(|e| e.ip == ip)
        .collect();
    delete_elements(table, &doomed)?;
    Ok(doomed.len())
}

pub fn delete_elements(table: &str, doomed: &[Element]) -> Result<()> {
    let keys = |one: bool| -> Vec<String> {
        doomed
            .iter()
            .filter(|e| e.host_ip.is_some() == one)
            .map(Element::key)
            .collect()
    };
    let mut script = String::new();
    for (map, keys) in [("hostports", keys(false)), ("hostports_addr", keys(true))] {
        if !keys.is_empty() {
            script += &format!(
                "delete element ip {table} {map} {{ {} }}\n",
                keys.join(", ")
            );
        }
    }
    if script.is_empty() {
        return Ok(());
    }
    nft(&["-f", "-"], Some(&script)).map(drop)
}

/// The host-port maps' elements; empty when the table does not exist.
pub fn elements(table: &str) -> Result<Vec<Element>> {
    let json = match nft(&["-j", "list", "table", "ip", table], None) {
        Ok(j) => j,
        Err(NetError::Nft(msg)) if msg.contains("No such file or directory") => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let v: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| NetError::Nft(format!("unexpected JSON from nft: {e}")))?;
    let mut out = Vec::new();
    let maps = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("map"))
        .filter(|m| m["name"] == "hostports" || m["name"] == "hostports_addr");
    for m in maps {
        let one = m["name"] == "hostports_addr";
        for elem in m["elem"].as_array().into_iter().flatten() {
            // [{"concat": [(addr,) proto, port]}, {"concat": [ip, port]}], the
            // key possibly wrapped as {"elem": {"val": ..., "comment": ...}}.
            let key = elem.get(0).map(|k| k.get("elem").map_or(k, |e| &e["val"]));
            let val = elem.get(1);
            let (Some(key), Some(val)) = (key, val) else {
                continue;
            };
            let (Some(kc), Some(vc)) = (key["concat"].as_array(), val["concat"].as_array()) else {
                continue;
            };
            let parsed = (|| {
                let (host_ip, rest) = if one {
                    (Some(kc.first()?.as_str()?.parse().ok()?), &kc[1..])
                } else {
                    (None, &kc[..])
                };
                Some(Element {
                    protocol: rest.first()?.as_str()?.to_string(),
                    host_port: u16::try_from(rest.get(1)?.as_u64()?).ok()?,
                    host_ip,
                    ip: vc.first()?.as_str()?.parse().ok()?,
                    port: u16::try_from(vc.get(1)?.as_u64()?).ok()?,
                })
            })();
            if let Some(e) = parsed {
                out.push(e);
            }
        }
    }
    Ok(out)
}
