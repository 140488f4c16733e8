//! A client of the OCI distribution API (v2), blocking, for the image store's
//! pulls: manifests by tag or digest, blobs streamed. Anonymous access, the
//! bearer-token challenge (`WWW-Authenticate: Bearer realm=…,service=…,
//! scope=…`) and basic auth, with the node's credentials from a file in
//! Docker's `config.json` format. TLS verified against the system roots plus
//! a registry's own CA (`<certs dir>/<host[:port]>/ca.crt`, Docker's
//! `certs.d` layout); plain HTTP only for registries listed as insecure.
//!
//! Why ureq: a blocking client fits the start workers that pull (no second
//! runtime beside the loop's), it is small, kept, and brings rustls. A
//! credential never appears in an error, a log or an event: errors name the
//! registry, the URL's path and the status, and the server's error message.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::reference::Reference;

/// Largest manifest or index read (the kubelet's and containerd's bound).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Largest token response read.
const MAX_TOKEN: u64 = 64 << 10;
/// The slowest a blob may arrive, on average, before it is given up: its
/// deadline is the timeout plus its size at this rate (ureq bounds a body's
/// whole read, not each read, so a server that drips bytes is caught by
/// the deadline).
pub const MIN_BLOB_RATE: u64 = 32 << 10;

pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry}: {what}: {status} {message}")]
    Status {
        registry: String,
        what: String,
        status: u16,
        /// The registry's own words (`manifest unknown`, `unauthorized`).
        message: String,
    },
    #[error("{registry}: {what}")]
    Transport {
        registry: String,
        what: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{registry}: {what}: {reason}")]
    Protocol {
        registry: String,
        what: String,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
}

/// A user and password, shown as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({:?}, <redacted>)", self.user)
    }
}

impl Credential {
    fn basic(&self) -> String {
        use base64::Engine;
        let raw = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The node's registry credentials, by registry (Docker's `auths`).
#[derive(Debug, Clone, Default)]
pub struct AuthFile {
    auths: BTreeMap<String, Credential>,
}

impl AuthFile {
    /// Reads `path`; none when it does not exist. Refused when group or
    /// others may read it, or when an entry is not base64 `user:password`
    /// (the error names the registry, never the content).
    pub fn load(path: &Path) -> Result<AuthFile, RegistryError> {
        use std::os::unix::fs::PermissionsExt;
        let config = |reason: String| RegistryError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let md = match std::fs::metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AuthFile::default()),
            Err(e) => return Err(config(e.to_string())),
        };
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(config(format!(
                "mode {mode:o}: credentials must be readable by their owner only (chmod 600)"
            )));
        }
        if md.len() > 1 << 20 {
            return Err(config("larger than 1 MiB".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| config(e.to_string()))?;
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            auths: BTreeMap<String, Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(default)]
            auth: Option<String>,
            #[serde(default)]
            username: Option<String>,
            #[serde(default)]
            password: Option<String>,
        }
        // serde_json's message can quote the text: only its position.
        let file: File = serde_json::from_str(&text).map_err(|e| {
            config(format!(
                "not a Docker config.json (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let mut auths = BTreeMap::new();
        for (key, e) in file.auths {
            let registry = registry_key(&key);
            let cred = match (e.auth, e.username, e.password) {
                (Some(auth), _, _) => {
                    use base64::Engine;
                    let bad = || {
                        config(format!(
                            "auths[{key:?}].auth is not base64 of user:password"
                        ))
                    };
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| bad())?;
                    let raw = String::from_utf8(raw).map_err(|_| bad())?;
                    let (user, password) = raw.split_once(':').ok_or_else(bad)?;
                    Credential {
                        user: user.to_string(),
                        password: password.to_string(),
                    }
                }
                (None, Some(user), Some(password)) => Credential { user, password },
                _ => return Err(config(format!("auths[{key:?}] has no auth"))),
            };
            auths.insert(registry, cred);
        }
        Ok(AuthFile { auths })
    }

    pub fn for_registry(&self, registry: &str) -> Option<&Credential> {
        self.auths.get(registry)
    }
}

/// `https://index.docker.io/v1/` and friends → `docker.io`; a URL → its host.
fn registry_key(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or(key);
    super::reference::canonical_registry(host)
}

/// How the node reaches registries.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Docker's `certs.d`: `<dir>/<host[:port]>/ca.crt` is trusted for it.
    pub certs_dir: PathBuf,
    pub auth: AuthFile,
    /// Bound on connecting and on each read; a server that drips bytes
    /// slower than this fails.
    pub timeout: Duration,
    /// Mirrors (`host[:port]`) by the registry they stand for, tried in
    /// order before it: an edge site's local cache. The repository's path
    /// is the same on a mirror (`library/busybox` for Docker Hub's).
    pub mirrors: BTreeMap<String, Vec<String>>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            certs_dir: PathBuf::from("/etc/podagent/certs.d"),
            auth: AuthFile::default(),
            timeout: Duration::from_secs(30),
            mirrors: BTreeMap::new(),
        }
    }
}

/// A registry client; tokens are kept per registry and scope.
#[derive(Debug)]
pub struct Client {
    config: RegistryConfig,
    agents: Mutex<BTreeMap<String, ureq::Agent>>,
    tokens: Mutex<BTreeMap<(String, String), String>>,
}

type Response = ureq::http::Response<ureq::Body>;

impl Client {
    pub fn new(config: RegistryConfig) -> Client {
        Client {
            config,
            agents: Mutex::new(BTreeMap::new()),
            tokens: Mutex::new(BTreeMap::new()),
        }
    }

    /// Where `r` is pulled from, in order: its registry's mirrors, then the
    /// registry itself. Each is a reference of its own (its host's
    /// credentials, CA and scheme apply).
    pub fn endpoints(&self, r: &Reference) -> Vec<Reference> {
        let mut out: Vec<Reference> = self
            .config
            .mirrors
            .get(&r.registry)
            .into_iter()
            .flatten()
            .filter(|m| **m != r.registry)
            .map(|m| Reference {
                registry: m.clone(),
                ..r.clone()
            })
            .collect();
        out.push(r.clone());
        out
    }

    fn insecure(&self, registry: &str) -> bool {
        self.config.insecure.iter().any(|h| h == registry)
    }

    fn base(&self, r: &Reference) -> String {
        let scheme = if self.insecure(&r.registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}/v2/{}", r.api_host(), r.repository)
    }

    /// The agent for `registry`: its CA beside the system's roots.
    fn agent(&self, registry: &str) -> Result<ureq::Agent, RegistryError> {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = agents.get(registry) {
            return Ok(a.clone());
        }
        let mut pem = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        let ca = self.config.certs_dir.join(registry).join("ca.crt");
        match std::fs::read(&ca) {
            Ok(own) => {
                pem.push(b'\n');
                pem.extend(own);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RegistryError::Config {
                    path: ca,
                    reason: e.to_string(),
                })
            }
        }
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .build();
        let t = Some(self.config.timeout);
        // Redirects (to a blob store) are followed a few times, never to
        // plain HTTP from a registry spoken to over TLS, and never with the
        // registry's credentials.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .https_only(!self.insecure(registry))
            .timeout_connect(t)
            .timeout_send_request(t)
            .timeout_recv_response(t)
            .timeout_recv_body(t)
            .max_redirects(5)
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::Never)
            .build()
            .into();
        agents.insert(registry.to_string(), agent.clone());
        Ok(agent)
    }

    /// GET `url` of `r`'s registry with its auth: a cached token, else an
    /// anonymous try answered by the challenge it gets back.
    /// `body`: how long the response's body may take.
    fn get(
        &self,
        r: &Reference,
        url: &str,
        accept: &str,
        what: &str,
        body: Duration,
    ) -> Result<Response, RegistryError> {
        let agent = self.agent(&r.registry)?;
        let scope = format!("repository:{}:pull", r.repository);
        let key = (r.registry.clone(), scope.clone());
        let send = |auth: Option<&str>| {
            let mut req = agent
                .get(url)
                .config()
                .timeout_recv_body(Some(body))
                .build()
                .header("Accept", accept);
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req.call().map_err(|source| RegistryError::Transport {
                registry: r.registry.clone(),
                what: what.to_string(),
                source,
            })
        };
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let resp = send(cached.as_deref())?;
        if resp.status() != 401 {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let cred = self.config.auth.for_registry(&r.registry);
        let auth = if challenge.to_ascii_lowercase().starts_with("bearer ") {
            format!(
                "Bearer {}",
                self.token(r, &agent, &challenge, &scope, cred)?
            )
        } else if challenge.to_ascii_lowercase().starts_with("basic") {
            match cred {
                Some(c) => c.basic(),
                None => {
                    return Err(self.refused(
                        r,
                        what,
                        resp,
                        "no credentials for this registry in the auth file",
                    ))
                }
            }
        } else {
            return Err(self.refused(r, what, resp, "and no challenge it understands"));
        };
        let resp = send(Some(&auth))?;
        if resp.status() == 401 {
            let why = if cred.is_some() {
                "the credentials were refused"
            } else {
                "no credentials for this registry in the auth file"
            };
            return Err(self.refused(r, what, resp, why));
        }
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, auth);
        Ok(resp)
    }

    fn refused(&self, r: &Reference, what: &str, resp: Response, why: &str) -> RegistryError {
        let message = error_message(resp);
        RegistryError::Status {
            registry: r.registry.clone(),
            what: what.to_string(),
            status: 401,
            message: format!("{message} ({why})"),
        }
    }

    /// A bearer token from the challenge's realm, with the node's
    /// credentials when it has some.
    fn token(
        &self,
        r: &Reference,
        agent: &ureq::Agent,
        challenge: &str,
        scope: &str,
        cred: Option<&Credential>,
    ) -> Result<String, RegistryError> {
        let params = challenge_params(&challenge[7..]);
        let protocol = |reason: String| RegistryError::Protocol {
            registry: r.registry.clone(),
            what: "token".into(),
            reason,
        };
        let realm = params
            .get("realm")
            .ok_or_else(|| protocol("a bearer challenge without a realm".into()))?;
        let plain_allowed = realm.starts_with("http://") && self.insecure(&r.registry);
        if !realm.starts_with("https://") && !plain_allowed {
            return Err(protocol(format!("token realm {realm:?} is not https")));
        }
        let mut req = agent
            .get(realm.as_str())
            .query("scope", params.get("scope").map_or(scope, String::as_str));
        if let Some(s) = params.get("service") {
            req = req.query("service", s);
        }
        if let Some(c) = cred {
            req = req.header("Authorization", c.basic());
        }
        let resp = req.call().map_err(|source| RegistryError::Transport {
            registry: r.registry.clone(),
            what: "token".into(),
            source,
        })?;
        let mut resp = success(r, "token", resp)?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_TOKEN)
            .read_to_vec()
            .map_err(|e| protocol(e.to_string()))?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body)
            .map_err(|_| protocol("the token response is not JSON".into()))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| protocol("the token response has no token".into()))
    }

    /// The manifest (or index) `reference` names: its bytes (at most
    /// [`MAX_MANIFEST`]) and media type.
    pub fn manifest(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let url = format!("{}/manifests/{reference}", self.base(r));
        let what = format!("manifest {}:{reference}", r.repository);
        let mut resp = success(
            r,
            &what,
            self.get(r, &url, ACCEPT_MANIFESTS, &what, self.config.timeout)?,
        )?;
        let media = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .map_err(|e| RegistryError::Protocol {
                registry: r.registry.clone(),
                what: what.clone(),
                reason: format!("{e} (manifests are read up to {MAX_MANIFEST} bytes)"),
            })?;
        Ok((body, media))
    }

    /// A blob's bytes as they arrive (the caller verifies them), within the
    /// timeout plus `size` at [`MIN_BLOB_RATE`].
    pub fn blob(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<impl Read + use<>, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base(r));
        let what = format!("blob {digest}");
        let body = self.config.timeout + Duration::from_secs(size / MIN_BLOB_RATE);
        let resp = success(r, &what, self.get(r, &url, "*/*", &what, body)?)?;
        Ok(resp.into_body().into_reader())
    }
}

/// The response when it succeeded, else the registry's error in its words.
fn success(r: &Reference, what: &str, resp: Response) -> Result<Response, RegistryError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    Err(RegistryError::Status {
        registry: r.registry.clone(),
        what: what.to_string(),
        status: resp.status().as_u16(),
        message: error_message(resp),
    })
}

/// `realm="…",service="…"` → its pairs.
fn challenge_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (v, next) = match after.strip_prefix('"') {
            Some(q) => match q.split_once('"') {
                Some((v, n)) => (v.to_string(), n),
                None => (q.to_string(), ""),
            },
            None => match after.split_once(',') {
                Some((v, n)) => (v.trim().to_string(), n),
                None => (after.trim().to_string(), ""),
            },
        };
        out.insert(k, v);
        rest = next.trim_start_matches(',').trim();
    }
    out
}

/// The registry's error in its own words: the distribution API's
/// `{"errors":[{"code","message"}]}`, else the start of the body.
fn error_message(mut resp: Response) -> String {
    let body = resp
        .body_mut()
        .with_config()
        .limit(16 << 10)
        .read_to_vec()
        .unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<E>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&body) {
        let parts: Vec<String> = e
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text: String = String::from_utf8_lossy(&body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_as_their_pairs() {
        let p = challenge_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let p = challenge_params(r#"realm="Registry Realm""#);
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn an_auth_file_is_owners_alone_and_its_secrets_stay_out_of_errors() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        // "user:s3cret"
        std::fs::write(
            &path,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpzM2NyZXQ="}, "localhost:5000": {"username": "u", "password": "p"}}}"#,
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = AuthFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let a = AuthFile::load(&path).unwrap();
        let hub = a.for_registry("docker.io").unwrap();
        assert_eq!(hub.user, "user");
        assert!(!format!("{hub:?}").contains("s3cret"));
        assert_eq!(a.for_registry("localhost:5000").unwrap().user, "u");
        assert!(AuthFile::load(&dir.path().join("none"))
            .unwrap()
            .for_registry("docker.io")
            .is_none());
        std::fs::write(&path, r#"{"auths": {"r": {"auth": "s3cret-not-base64!"}}}"#).unwrap();
        let e = AuthFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("is not base64") && !e.contains("s3cret"), "{e}");
        std::fs::write(&path, r#"{"auths": {"r": {"auth": "s3cret"#).unwrap();
        let e = AuthFile::load(&path).unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
