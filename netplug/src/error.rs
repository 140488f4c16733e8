//! netplug's errors: each variant names the pod, interface or path it concerns.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid pod id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("invalid network configuration: {0}")]
    Config(String),
    #[error("netlink {op} on {target}")]
    Netlink {
        op: &'static str,
        target: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {}", path.display())]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("bridge {bridge} has address(es) {found}, expected {expected}: refusing to change an existing bridge")]
    BridgeAddress {
        bridge: String,
        found: String,
        expected: String,
    },
    #[error("{name} exists and is not a bridge")]
    NotABridge { name: String },
    #[error("address pool {cidr} is exhausted: no address for pod {pod}")]
    PoolExhausted { cidr: String, pod: String },
    /// `port` is `8080/tcp`, or `127.0.0.1:8080/tcp` for one address.
    #[error("host port {port} is already used by pod {owner}")]
    PortInUse { port: String, owner: String },
    #[error("nft: {0}")]
    Nft(String),
    #[error("state file {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    #[error("a netlink worker thread panicked")]
    Thread,
}

pub type Result<T> = std::result::Result<T, NetError>;

/// The errno of a netlink error, positive (`ENODEV`), if the kernel sent one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}
