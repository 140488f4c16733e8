//! Who may use the node's Kubernetes API over TCP, and how a client trusts
//! it: a bearer token and a TLS certificate, made by the agent on its first
//! start with `--kube-api-address` and kept under the root dir
//! (`/var/lib/podagent/kube-api`, root's alone), so that a kubeconfig
//! written once (`podctl kubeconfig`) stays good across restarts and
//! reboots.
//!
//! The certificate is a serving certificate signed by a CA of the node's
//! own; the kubeconfig pins the CA. The serving certificate is made again
//! when the address it must name changes, under the same CA, so kubeconfigs
//! keep working. Both are valid for ten years from the month they were
//! made (a node-local CA that nobody else trusts; there is no rotation).
//! To revoke every kubeconfig, remove the directory and restart the agent.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The kube API's credentials and where it listens.
#[derive(Clone)]
pub struct Access {
    /// `https://ADDR:PORT`.
    pub server: String,
    pub token: String,
    /// The CA's certificate, PEM: what a client pins.
    pub ca_pem: String,
    /// The serving certificate and its key, PEM.
    pub cert_pem: String,
    pub key_pem: String,
}

// Never print the token or the key.
impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Bad { path: PathBuf, message: String },
    #[error("making a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AccessError + '_ {
    move |source| AccessError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` mode 0600 through a temporary file, so a crash
/// leaves the old file or the new one.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AccessError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The file's text, or none when it does not exist.
fn read(path: &Path) -> Result<Option<String>, AccessError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AccessError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// 32 random bytes from the kernel, as hex.
fn new_token() -> Result<String, AccessError> {
    let mut bytes = [0u8; 32];
    let path = Path::new("/dev/urandom");
    std::io::Read::read_exact(
        &mut std::fs::File::open(path).map_err(io(path))?,
        &mut bytes,
    )
    .map_err(io(path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The names the serving certificate carries for a listener on `addr`:
/// its address, and loopback and the host's name when it listens on all.
pub fn names(addr: SocketAddr) -> Vec<String> {
    let mut out = vec![addr.ip().to_string()];
    if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        out = vec!["127.0.0.1".into(), "::1".into(), "localhost".into()];
        if addr.ip().is_unspecified() {
            out.push(super::objects::node_name());
        }
    }
    out
}

/// The CA's distinguished name, the same every time, so that its key alone
/// makes the issuer of a new serving certificate.
fn ca_params(from: (i32, u8)) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "podagent node CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(from.0, from.1, 1);
    p.not_after = rcgen::date_time_ymd(from.0 + 10, from.1, 1);
    p
}

/// This month (UTC) as (year, month).
fn this_month() -> (i32, u8) {
    let now = crate::shim::logs::rfc3339_nano(std::time::SystemTime::now());
    let year = now.get(0..4).and_then(|y| y.parse().ok()).unwrap_or(2026);
    let month = now
        .get(5..7)
        .and_then(|m| m.parse().ok())
        .filter(|m| (1..=12).contains(m))
        .unwrap_or(1);
    (year, month)
}

/// Loads the credentials under `dir`, making what is missing (and the
/// serving certificate again when `addr` needs other names).
pub fn prepare(dir: &Path, addr: SocketAddr) -> Result<Access, AccessError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    let token_path = dir.join("token");
    let token = match read(&token_path)? {
        Some(t) if t.trim().len() >= 32 => t.trim().to_string(),
        Some(_) => {
            return Err(AccessError::Bad {
                path: token_path,
                message: "shorter than 32 characters: remove it to make a new one".into(),
            })
        }
        None => {
            let t = new_token()?;
            write_private(&token_path, format!("{t}\n").as_bytes())?;
            t
        }
    };
    let bad = |path: &Path, e: rcgen::Error| AccessError::Bad {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let (ca_key_path, ca_path) = (dir.join("ca.key"), dir.join("ca.crt"));
    let (ca_key, ca_pem) = match (read(&ca_key_path)?, read(&ca_path)?) {
        (Some(key), Some(cert)) => (
            rcgen::KeyPair::from_pem(&key).map_err(|e| bad(&ca_key_path, e))?,
            cert,
        ),
        _ => {
            let key = rcgen::KeyPair::generate()?;
            let cert = ca_params(this_month()).self_signed(&key)?;
            write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
            write_private(&ca_path, cert.pem().as_bytes())?;
            // A new CA: the old serving certificate is not its.
            let _ = std::fs::remove_file(dir.join("tls.names"));
            (key, cert.pem())
        }
    };
    let wanted = names(addr).join(",");
    let (key_path, cert_path, names_path) = (
        dir.join("tls.key"),
        dir.join("tls.crt"),
        dir.join("tls.names"),
    );
    let current = (read(&key_path)?, read(&cert_path)?, read(&names_path)?);
    let (key_pem, cert_pem) = match current {
        (Some(key), Some(cert), Some(n)) if n.trim() == wanted => (key, cert),
        _ => {
            let issuer = rcgen::Issuer::new(ca_params(this_month()), ca_key);
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::new(names(addr))?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "podagent");
            let month = this_month();
            params.not_before = rcgen::date_time_ymd(month.0, month.1, 1);
            params.not_after = rcgen::date_time_ymd(month.0 + 10, month.1, 1);
            params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            params.use_authority_key_identifier_extension = true;
            let cert = params.signed_by(&key, &issuer)?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_private(&cert_path, cert.pem().as_bytes())?;
            write_private(&names_path, format!("{wanted}\n").as_bytes())?;
            (key.serialize_pem(), cert.pem())
        }
    };
    let host = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    Ok(Access {
        server: format!("https://{host}:{}", addr.port()),
        token,
        ca_pem,
        cert_pem,
        key_pem,
    })
}

/// Whether a request's `Authorization` header carries the token, compared
/// in time that does not depend on where they differ.
pub fn authorized(header: Option<&[u8]>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    let want = token.as_bytes();
    if given.len() != want.len() {
        return false;
    }
    given
        .iter()
        .zip(want)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// A kubeconfig for the node: one cluster (the CA pinned), one user (the
/// token), one context with the `default` namespace.
pub fn kubeconfig(name: &str, server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": name, "cluster": {
            "server": server,
            "certificate-authority-data": ca,
        } }],
        "users": [{ "name": name, "user": { "token": token } }],
        "contexts": [{ "name": name, "context": {
            "cluster": name,
            "user": name,
            "namespace": "default",
        } }],
        "current-context": name,
        "preferences": {},
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        let t = "a".repeat(64);
        assert!(authorized(Some(format!("Bearer {t}").as_bytes()), &t));
        assert!(!authorized(Some(format!("Bearer {t}x").as_bytes()), &t));
        assert!(!authorized(
            Some(format!("Bearer {}", &t[1..]).as_bytes()),
            &t
        ));
        assert!(!authorized(Some(format!("Basic {t}").as_bytes()), &t));
        assert!(!authorized(None, &t));
        assert!(!authorized(Some(b"Bearer "), &t));
    }

    #[test]
    fn credentials_are_made_once_and_the_certificate_again_for_a_new_address() {
        let dir = tempfile::tempdir().unwrap();
        let kube = dir.path().join("kube-api");
        let a = prepare(&kube, "127.0.0.1:6443".parse().unwrap()).unwrap();
        assert_eq!(a.server, "https://127.0.0.1:6443");
        assert_eq!(a.token.len(), 64);
        for f in ["token", "ca.key", "tls.key"] {
            let mode = std::fs::metadata(kube.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let b = prepare(&kube, "127.0.0.1:6443".parse().unwrap()).unwrap();
        assert_eq!(
            (&a.token, &a.ca_pem, &a.cert_pem),
            (&b.token, &b.ca_pem, &b.cert_pem)
        );
        let c = prepare(&kube, "10.1.2.3:6443".parse().unwrap()).unwrap();
        assert_eq!((&a.token, &a.ca_pem), (&c.token, &c.ca_pem));
        assert_ne!(a.cert_pem, c.cert_pem, "a certificate naming 10.1.2.3");
        assert_eq!(
            std::fs::read_to_string(kube.join("tls.names")).unwrap(),
            "10.1.2.3\n"
        );
        std::fs::write(kube.join("token"), "short\n").unwrap();
        let e = prepare(&kube, "127.0.0.1:6443".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("token: shorter than 32"), "{e}");
    }
}
