//! Host ports and masquerade in one nftables table owned by podagent, driven
//! through the `nft` command (as kube-proxy's nftables mode does): each change
//! is one `nft -f -` transaction.
//!
//! Host ports live in a map `hostports` (`protocol . port : pod ip . port`),
//! looked up by one DNAT rule in prerouting (traffic from outside) and one in
//! output (the node itself, including 127.0.0.1). A pod's elements carry its id
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
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
  chain output {{ type nat hook output priority -100; policy accept; }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
}}
flush chain ip {table} prerouting
flush chain ip {table} output
flush chain ip {table} postrouting
add rule ip {table} prerouting fib daddr type local dnat ip to meta l4proto . th dport map @hostports comment \"podagent host ports\"
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

/// One element of the host-port map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub protocol: String,
    pub host_port: u16,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// Publishes the pod's ports in one transaction: all or none. A port already
/// in the map is `Err(PortInUse)` naming its owner's address (the caller maps it
/// to a pod).
pub fn publish(table: &str, pod: &str, ip: Ipv4Addr, ports: &[HostPort]) -> Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    let existing = elements(table)?;
    for p in ports {
        if let Some(e) = existing
            .iter()
            .find(|e| e.protocol == proto(p.protocol) && e.host_port == p.host_port)
        {
            if e.ip != ip {
                return Err(NetError::PortInUse {
                    port: p.host_port,
                    protocol: proto(p.protocol).into(),
                    owner: e.ip.to_string(),
                });
            }
        }
    }
    let items: Vec<String> = ports
        .iter()
        .filter(|p| {
            !existing
                .iter()
                .any(|e| e.protocol == proto(p.protocol) && e.host_port == p.host_port)
        })
        .map(|p| {
            format!(
                "{} . {} comment \"{pod}\" : {ip} . {}",
                proto(p.protocol),
                p.host_port,
                p.container_port
            )
        })
        .collect();
    if items.is_empty() {
        return Ok(());
    }
    // `create` fails on an existing key: a race with another pod is an error,
    // never a silent overwrite.
    let script = format!(
        "create element ip {table} hostports {{ {} }}\n",
        items.join(", ")
    );
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
    if doomed.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = doomed
        .iter()
        .map(|e| format!("{} . {}", e.protocol, e.host_port))
        .collect();
    let script = format!(
        "delete element ip {table} hostports {{ {} }}\n",
        keys.join(", ")
    );
    nft(&["-f", "-"], Some(&script)).map(drop)
}

/// The host-port map's elements; empty when the table does not exist.
pub fn elements(table: &str) -> Result<Vec<Element>> {
    let json = match nft(&["-j", "list", "map", "ip", table, "hostports"], None) {
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
        .filter_map(|o| o.get("map"));
    for m in maps {
        for elem in m["elem"].as_array().into_iter().flatten() {
            // [{"concat": [proto, port]}, {"concat": [ip, port]}], the key
            // possibly wrapped as {"elem": {"val": ..., "comment": ...}}.
            let key = elem.get(0).map(|k| k.get("elem").map_or(k, |e| &e["val"]));
            let val = elem.get(1);
            let (Some(key), Some(val)) = (key, val) else {
                continue;
            };
            let (Some(kc), Some(vc)) = (key["concat"].as_array(), val["concat"].as_array()) else {
                continue;
            };
            let parsed = (|| {
                Some(Element {
                    protocol: kc.first()?.as_str()?.to_string(),
                    host_port: u16::try_from(kc.get(1)?.as_u64()?).ok()?,
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
