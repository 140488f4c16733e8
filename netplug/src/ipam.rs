//! Addresses from the pod CIDR, one per pod, persisted in the state dir under
//! an exclusive lock and written atomically (temp file, fsync, rename), so two
//! agents or a crash never hand out one address twice. The network address,
//! the gateway (the first host) and the broadcast address are never handed out.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{NetError, Result};
use crate::HostPort;

const VERSION: u32 = 1;
/// The state file is refused beyond this size.
const MAX_STATE_BYTES: u64 = 16 << 20;

/// What a pod holds: its address, its host veth and its published ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub host_veth: String,
    #[serde(default)]
    pub ports: Vec<HostPort>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    cidr: Ipv4Network,
    allocations: BTreeMap<String, Allocation>,
}

#[derive(Debug)]
pub struct Ipam {
    cidr: Ipv4Network,
    path: PathBuf,
    lock: PathBuf,
}

impl Ipam {
    pub fn new(dir: &Path, cidr: Ipv4Network) -> Self {
        Ipam {
            cidr,
            path: dir.join("ipam.json"),
            lock: dir.join("ipam.lock"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The gateway: the first host address of the CIDR.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    fn io(&self, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetError {
        let path = path.to_path_buf();
        move |source| NetError::Io { op, path, source }
    }

    /// Runs `f` on the state under the lock; writes it back when `f` says so.
    fn with_state<T>(&self, f: impl FnOnce(&mut StateFile) -> Result<(T, bool)>) -> Result<T> {
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(self.io("open", &self.lock))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, source)| {
            NetError::Sys {
                op: "lock",
                path: self.lock.clone(),
                source,
            }
        })?;
        let mut state = self.read()?;
        let (out, dirty) = f(&mut state)?;
        if dirty {
            self.write(&state)?;
        }
        Ok(out)
    }

    fn read(&self) -> Result<StateFile> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StateFile {
                    version: VERSION,
                    cidr: self.cidr,
                    allocations: BTreeMap::new(),
                })
            }
            Err(e) => return Err(self.io("open", &self.path)(e)),
        };
        let mut text = String::new();
        file.take(MAX_STATE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(self.io("read", &self.path))?;
        if text.len() as u64 > MAX_STATE_BYTES {
            return Err(self.state_error(format!("larger than {MAX_STATE_BYTES} bytes")));
        }
        let state: StateFile =
            serde_json::from_str(&text).map_err(|e| self.state_error(e.to_string()))?;
        if state.version != VERSION {
            return Err(self.state_error(format!("version {} is not {VERSION}", state.version)));
        }
        if state.cidr != self.cidr {
            return Err(self.state_error(format!(
                "allocations are for {}, the agent is configured with {}: release them or keep the CIDR",
                state.cidr, self.cidr
            )));
        }
        Ok(state)
    }

    fn state_error(&self, reason: String) -> NetError {
        NetError::State {
            path: self.path.clone(),
            reason,
        }
    }

    fn write(&self, state: &StateFile) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes =
            serde_json::to_vec_pretty(state).map_err(|e| self.state_error(e.to_string()))?;
        let mut f = File::create(&tmp).map_err(self.io("create", &tmp))?;
        f.write_all(&bytes).map_err(self.io("write", &tmp))?;
        f.sync_all().map_err(self.io("fsync", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(self.io("rename into place", &self.path))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(self.io("fsync", dir))?;
        }
        Ok(())
    }

    /// The pod's allocation: the one it has, or the lowest free address.
    pub fn allocate(&self, pod: &str, host_veth: &str, ports: &[HostPort]) -> Result<Allocation> {
        let cidr = self.cidr;
        let gateway = self.gateway();
        self.with_state(|s| {
            if let Some(a) = s.allocations.get_mut(pod) {
                let dirty = a.ports != ports;
                a.ports = ports.to_vec();
                return Ok((a.clone(), dirty));
            }
            let used: HashSet<Ipv4Addr> = s.allocations.values().map(|a| a.ip).collect();
            let first = u32::from(cidr.network()) + 2;
            let last = u32::from(cidr.broadcast()).saturating_sub(1);
            let ip = (first..=last)
                .map(Ipv4Addr::from)
                .find(|ip| *ip != gateway && !used.contains(ip))
                .ok_or_else(|| NetError::PoolExhausted {
                    cidr: cidr.to_string(),
                    pod: pod.to_string(),
                })?;
            let a = Allocation {
                ip,
                host_veth: host_veth.to_string(),
                ports: ports.to_vec(),
            };
            s.allocations.insert(pod.to_string(), a.clone());
            Ok((a, true))
        })
    }

    /// Releases the pod's address; `None` when it had none.
    pub fn release(&self, pod: &str) -> Result<Option<Allocation>> {
        self.with_state(|s| {
            let a = s.allocations.remove(pod);
            let dirty = a.is_some();
            Ok((a, dirty))
        })
    }

    pub fn get(&self, pod: &str) -> Result<Option<Allocation>> {
        self.with_state(|s| Ok((s.allocations.get(pod).cloned(), false)))
    }

    pub fn list(&self) -> Result<BTreeMap<String, Allocation>> {
        self.with_state(|s| Ok((s.allocations.clone(), false)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &Path, cidr: &str) -> Ipam {
        Ipam::new(dir, cidr.parse().unwrap())
    }

    #[test]
    fn addresses_start_after_the_gateway_and_are_kept_per_pod() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.88.0.0/16");
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        let a = ipam.allocate("a", "vpa1", &[]).unwrap();
        let b = ipam.allocate("b", "vpa2", &[]).unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(b.ip, Ipv4Addr::new(10, 88, 0, 3));
        assert_eq!(
            ipam.allocate("a", "vpa1", &[]).unwrap().ip,
            a.ip,
            "same pod, same address"
        );
        ipam.release("a").unwrap();
        assert_eq!(
            ipam.allocate("c", "vpa3", &[]).unwrap().ip,
            a.ip,
            "the lowest free address is reused"
        );
    }

    #[test]
    fn an_exhausted_pool_is_an_error_for_that_pod_only() {
        let dir = tempfile::tempdir().unwrap();
        // /29: .0 network, .1 gateway, .7 broadcast: .2 to .6 are free.
        let ipam = ipam(dir.path(), "192.168.5.0/29");
        let ips: Vec<_> = (0..5)
            .map(|i| {
                ipam.allocate(&format!("p{i}"), "v", &[])
                    .unwrap()
                    .ip
                    .octets()[3]
            })
            .collect();
        assert_eq!(ips, [2, 3, 4, 5, 6]);
        let err = ipam.allocate("late", "v", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "address pool 192.168.5.0/29 is exhausted: no address for pod late"
        );
        assert_eq!(
            ipam.allocate("p0", "v", &[]).unwrap().ip.octets()[3],
            2,
            "existing pods are unaffected"
        );
    }

    #[test]
    fn state_survives_a_new_instance_and_a_changed_cidr_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ipam(dir.path(), "10.88.0.0/16")
            .allocate("a", "v", &[])
            .unwrap();
        assert_eq!(
            ipam(dir.path(), "10.88.0.0/16")
                .get("a")
                .unwrap()
                .unwrap()
                .ip,
            Ipv4Addr::new(10, 88, 0, 2)
        );
        let err = ipam(dir.path(), "10.99.0.0/16")
            .allocate("b", "v", &[])
            .unwrap_err();
        assert!(
            err.to_string().contains("allocations are for 10.88.0.0/16"),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_a_fresh_pool() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ipam.json"), "{ not json").unwrap();
        assert!(matches!(
            ipam(dir.path(), "10.88.0.0/16").allocate("a", "v", &[]),
            Err(NetError::State { .. })
        ));
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let ipam = ipam(&path, "10.88.0.0/24");
                    (0..20)
                        .map(|i| ipam.allocate(&format!("t{t}-{i}"), "v", &[]).unwrap().ip)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Ipv4Addr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 160);
        assert_eq!(unique.len(), 160);
        assert_eq!(ipam(&path, "10.88.0.0/24").list().unwrap().len(), 160);
    }
}
