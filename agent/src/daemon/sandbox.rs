//! A pod's sandbox: its namespaces, its network (veth, address, host ports,
//! `/etc/hosts` and `resolv.conf`), its cgroup and the agent's record of it.
//! One path for a pod made now and for one adopted from an earlier agent:
//! every step is idempotent, so adopting is making again what exists, except
//! that an adopted pod keeps the DNS files, cgroup and record it has.

use std::time::{Duration, SystemTime};

use specs::plan::PodPlan;

use super::state::PodRun;
use super::Agent;
use crate::records::{PodRecord, RecordError};
use crate::runtime::{sandbox, RuntimeError};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("network")]
    Network(#[from] netplug::NetError),
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// The pod's host ports, for netplug.
fn host_ports(p: &PodPlan) -> Vec<netplug::HostPort> {
    p.all_containers()
        .flat_map(|c| c.ports.iter())
        .filter_map(|port| {
            Some(netplug::HostPort {
                protocol: match port.protocol {
                    specs::plan::Protocol::Tcp => netplug::Protocol::Tcp,
                    specs::plan::Protocol::Udp => netplug::Protocol::Udp,
                    specs::plan::Protocol::Sctp => netplug::Protocol::Sctp,
                },
                host_port: port.host_port?,
                container_port: port.container_port,
                // The plan holds an IPv4 address or none (all addresses).
                host_ip: port.host_ip.as_deref().and_then(|a| a.parse().ok()),
            })
        })
        .collect()
}

/// Where the agent's record of a pod's sandbox is.
pub fn record_path(state_dir: &std::path::Path, uid: &str) -> std::path::PathBuf {
    state_dir.join("pods").join(uid).join("agent.json")
}

impl Agent {
    /// Makes (or, `adopting`, takes over) the pod's sandbox; the pod's run,
    /// with no container yet.
    pub(super) fn make_sandbox(&self, p: &PodPlan, adopting: bool) -> Result<PodRun, SandboxError> {
        let mut sb = sandbox::create(&self.args.state_dir, p)?;
        self.rt.ensure_pid_namespace(p, &mut sb)?;
        self.rt.ensure_user_namespace(p, &mut sb)?;
        let (mut net_ns, mut ip) = (None, None);
        if let (Some(net), false) = (&self.net, p.host_network) {
            // Idempotent: an adopted pod keeps its address and interfaces.
            let a = net.setup(&p.uid, &host_ports(p))?;
            let files = if adopting {
                net.dns_files(&p.uid)?
            } else {
                let node_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                let dns = netplug::dns::DnsSettings {
                    replace: p.dns.policy == specs::plan::DnsPolicy::None,
                    nameservers: p.dns.nameservers.clone(),
                    searches: p.dns.searches.clone(),
                    options: p.dns.options.clone(),
                };
                net.write_dns_files(
                    &p.uid,
                    &p.hostname,
                    Some(a.ip),
                    &p.host_aliases,
                    &node_resolv,
                    &dns,
                )?
            };
            sb.files = vec![
                ("/etc/hosts".into(), files.hosts),
                ("/etc/resolv.conf".into(), files.resolv_conf),
            ];
            sb.pod_ip = Some(a.ip.to_string());
            ip = Some(a.ip.to_string());
            net_ns = Some(a.netns);
        }
        let sandbox_hash = crate::reconcile::sandbox_hash(p);
        let created = SystemTime::now();
        if !adopting {
            self.rt.create_pod_cgroup(p)?;
            let record = PodRecord {
                sandbox_hash: sandbox_hash.clone(),
                grace_secs: p.termination_grace_period_secs,
                created_ms: created
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            };
            crate::records::write(&record_path(&self.args.state_dir, &p.uid), &record)?;
        }
        Ok(PodRun {
            uid: p.uid.clone(),
            sandbox_hash,
            grace: Duration::from_secs(p.termination_grace_period_secs),
            sandbox: sb,
            net_ns,
            ip,
            created,
            deadline_exceeded: false,
            evicted: None,
            files_hash: crate::reconcile::files_hash(p),
            containers: Default::default(),
        })
    }
}
