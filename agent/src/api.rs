//! The agent's API: HTTP/1.1 and JSON on a path-based Unix socket (hyper on
//! a one-thread tokio runtime of its own), and the client `podctl` uses.
//!
//! The socket is created mode 0600 (0660 with `--api-group`) in a private
//! directory and renamed into place, so there is no moment at which another
//! user could connect. The reconcile loop publishes a `View` after each pass;
//! requests read it and never wait on the loop.
//!
//! Routes (GET only):
//! - `/healthz`: `ok` once the agent has done its first pass;
//! - `/v1/status`: pods, manifest problems and conflicts (`status::NodeStatus`);
//! - `/v1/events`: the event ring, oldest first;
//! - `/v1/top`: cpu time, memory and pids of each running container;
//! - `/v1/logs/{namespace}/{pod}/{container}` (`tail`, `previous`,
//!   `follow`): the container's output, streamed when following;
//! - `/metrics`: Prometheus text: pods by phase, restarts, reconcile
//!   duration, container cpu and memory read from the cgroups.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::cgroups::Cgroups;
use crate::events::Events;
use crate::status::{ContainerStatus, NodeStatus, PodStatus};

/// Every response's body: whole, or streamed (`logs?follow=true`).
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Bucket bounds (seconds) of the reconcile duration histogram.
pub const BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// The kubelet's bounds of `kubelet_pod_start_duration_seconds`.
pub const POD_START_BUCKETS: [f64; 25] = [
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// A Prometheus histogram over fixed bounds.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, secs: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    /// Its family in the text format.
    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, n) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// A probe's outcome, counted as the kubelet's `prober_probe_total`:
/// (namespace, pod, container, probe type, result).
pub type ProbeCount = (String, String, String, &'static str, &'static str);

/// What the loop publishes for the API.
#[derive(Debug)]
pub struct View {
    pub ready: bool,
    pub status: Option<NodeStatus>,
    pub events: Events,
    pub reconcile: Histogram,
    /// From a pod's first sight to its phase Running, for pods this agent
    /// started (the kubelet's `kubelet_pod_start_duration_seconds`).
    pub pod_start: Histogram,
    /// Probe outcomes by pod, container, type and result.
    pub probes: std::collections::BTreeMap<ProbeCount, u64>,
    /// How many of each kind of thing the agent holds (`pods`,
    /// `containers`, `shims`, ...), by kind.
    pub tracked: Vec<(&'static str, usize)>,
    /// The pods' resource versions (the Kubernetes API's).
    pub versions: crate::kube::Versions,
    /// Where the git sync stands (`--git-repo`), as `/v1/sync` serves it.
    pub sync: Option<serde_json::Value>,
}

impl Default for View {
    fn default() -> Self {
        View {
            ready: false,
            status: None,
            events: Events::default(),
            reconcile: Histogram::new(&BUCKETS),
            pod_start: Histogram::new(&POD_START_BUCKETS),
            probes: Default::default(),
            tracked: Vec::new(),
            versions: Default::default(),
            sync: None,
        }
    }
}

pub type Shared = Arc<Mutex<View>>;

/// What the API needs beyond the view: the cgroups to read usage from.
#[derive(Debug)]
pub struct Server {
    pub view: Shared,
    /// The agent's state dir: container logs are read from it.
    pub state_dir: PathBuf,
    pub cgroups: Box<dyn Cgroups>,
    pub cgroup_root: String,
    /// The Kubernetes API's TCP listener and credentials, when it has one
    /// (`/v1/kubeconfig` hands them to root).
    pub kube: Option<Arc<crate::kube::access::Access>>,
    /// Asks the git sync to fetch now (`POST /v1/sync`, the socket only).
    pub sync_now: Option<std::sync::mpsc::Sender<()>>,
}

/// Creates the socket at `path` (replacing a stale one) and serves it on a
/// thread of its own until the process exits. Errors (a bad path, a socket
/// another agent is serving) are returned before anything is served.
/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}: not a socket path", path.display())]
    NotASocketPath { path: PathBuf },
    #[error("{}: another agent is serving this socket", path.display())]
    InUse { path: PathBuf },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", path.display())]
    Chown {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("the API's {what}")]
    Start {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ApiError + '_ {
    move |source| ApiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn serve(path: &Path, group: Option<u32>, server: Server) -> Result<(), ApiError> {
    let dir = path.parent().ok_or_else(|| ApiError::NotASocketPath {
        path: path.to_path_buf(),
    })?;
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ApiError::InUse {
            path: path.to_path_buf(),
        });
    }
    // Bound inside a private directory, then given its mode and renamed into
    // place: never reachable with the umask's mode.
    let private = tempfile::Builder::new()
        .prefix(".api")
        .tempdir_in(dir)
        .map_err(io_at(dir))?;
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(io_at(private.path()))?;
    let tmp = private.path().join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(io_at(&tmp))?;
    let mode = if let Some(gid) = group {
        nix::unistd::chown(&tmp, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(
            |source| ApiError::Chown {
                path: tmp.clone(),
                source,
            },
        )?;
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_at(path))?;
    listener.set_nonblocking(true).map_err(io_at(path))?;
    on_thread("api", accept(listener, Arc::new(server)))
}

/// Runs a listener's accept loop on a thread of its own, on a
/// current-thread runtime made here (so that its failure is returned).
fn on_thread(
    name: &str,
    serve: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|source| ApiError::Start {
            what: "runtime",
            source,
        })?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || rt.block_on(serve))
        .map_err(|source| ApiError::Start {
            what: "thread",
            source,
        })?;
    Ok(())
}

async fn accept(listener: std::os::unix::net::UnixListener, server: Arc<Server>) {
    let Ok(listener) = tokio::net::UnixListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(connection(stream, server.clone(), Listener::Socket));
    }
}

/// Which listener a connection came in on, and so what it may ask.
#[derive(Debug, Clone)]
enum Listener {
    /// The Unix socket: everything (its permissions are the
    /// authentication).
    Socket,
    /// `--metrics-address`: `/metrics` and `/healthz` alone.
    Metrics,
    /// `--kube-api-address`: the Kubernetes API and health, with the token.
    Kube(Arc<crate::kube::access::Access>),
}

/// Serves one connection.
async fn connection<S>(stream: S, server: Arc<Server>, listener: Listener)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let server = server.clone();
        let listener = listener.clone();
        async move {
            let path = req.uri().path();
            let r = match (&listener, path) {
                (_, "/metrics" | "/healthz") if !matches!(listener, Listener::Kube(_)) => {
                    handle(&server, &req)
                }
                (Listener::Kube(access), p) => {
                    let token = req.headers().get(hyper::header::AUTHORIZATION);
                    if !crate::kube::access::authorized(token.map(|t| t.as_bytes()), &access.token)
                    {
                        crate::kube::unauthorized()
                    } else if matches!(p, "/healthz" | "/livez" | "/readyz") {
                        handle_at(&server, &req, "/healthz")
                    } else {
                        crate::kube::handle(&server, &req)
                    }
                }
                (Listener::Metrics, other) => {
                    error(StatusCode::NOT_FOUND, &format!("no route {other}"))
                }
                (Listener::Socket, p) if crate::kube::is_kube_path(p) => {
                    crate::kube::handle(&server, &req)
                }
                (Listener::Socket, "/v1/kubeconfig") => match &server.kube {
                    Some(a) => json(&serde_json::json!({
                        "server": a.server,
                        "certificateAuthority": a.ca_pem,
                        "token": a.token,
                    })),
                    None => error(
                        StatusCode::NOT_FOUND,
                        "the agent serves no Kubernetes API: start it with --kube-api-address",
                    ),
                },
                (Listener::Socket, "/v1/sync") if req.method() == Method::POST => {
                    match &server.sync_now {
                        Some(now) if now.send(()).is_ok() => {
                            json(&serde_json::json!({ "sync": "requested" }))
                        }
                        _ => error(
                            StatusCode::NOT_FOUND,
                            "the agent follows no repository: start it with --git-repo",
                        ),
                    }
                }
                (Listener::Socket, _) => handle(&server, &req),
            };
            Ok::<_, Infallible>(r)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

pub(crate) fn reply(code: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = code;
    if let Ok(v) = kind.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json(v: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(b) => reply(StatusCode::OK, "application/json", b),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn error(code: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    reply(code, "application/json", body)
}

fn handle(server: &Server, req: &Request<Incoming>) -> Response<Body> {
    handle_at(server, req, req.uri().path())
}

/// Serves the podagent route `path` (a health check's alias given as
/// `/healthz`).
fn handle_at(server: &Server, req: &Request<Incoming>, path: &str) -> Response<Body> {
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} is not served: the API is read-only", req.method()),
        );
    }
    let Ok(view) = server.view.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the agent's state is poisoned",
        );
    };
    match path {
        "/healthz" if view.ready => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/healthz" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n"),
        "/v1/status" => match &view.status {
            Some(s) => json(s),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "the agent is starting"),
        },
        "/v1/events" => json(&view.events.all()),
        "/v1/sync" => match &view.sync {
            Some(s) => json(s),
            None => error(
                StatusCode::NOT_FOUND,
                "the agent follows no repository: start it with --git-repo",
            ),
        },
        "/v1/top" => json(&top(&view, server.cgroups.as_ref(), &server.cgroup_root)),
        p if p.starts_with("/v1/logs/") => {
            drop(view);
            logs(server, p, req.uri().query().unwrap_or(""))
        }
        "/metrics" => {
            let text = metrics(&view, server.cgroups.as_ref(), &server.cgroup_root);
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        other => error(StatusCode::NOT_FOUND, &format!("no route {other}")),
    }
}

/// Why a log is not there.
pub(crate) const NO_PREVIOUS_RUN: &str = "no previous run";
pub(crate) const NO_OUTPUT_YET: &str = "no output yet";

/// What part of a container's log is asked for.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogQuery {
    pub tail: Option<usize>,
    pub previous: bool,
    pub follow: bool,
    pub timestamps: bool,
}

/// `/v1/logs/{namespace}/{pod}/{container}?tail=N&previous=true&follow=true`:
/// what the container wrote, CRI records joined, as `podctl logs` prints
/// it; with `follow` the response streams until the container has exited.
fn logs(server: &Server, path: &str, query: &str) -> Response<Body> {
    let parts: Vec<&str> = path.trim_start_matches("/v1/logs/").split('/').collect();
    let [namespace, pod, container] = parts[..] else {
        return error(
            StatusCode::NOT_FOUND,
            "use /v1/logs/{namespace}/{pod}/{container}",
        );
    };
    let mut q = LogQuery::default();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=').unwrap_or((kv, "")) {
            ("tail", n) => match n.parse::<usize>() {
                Ok(n) => q.tail = Some(n),
                Err(_) => return error(StatusCode::BAD_REQUEST, "tail: not a number"),
            },
            ("previous", v) => q.previous = v != "false",
            ("follow", v) => q.follow = v != "false",
            ("timestamps", v) => q.timestamps = v != "false",
            (k, _) => return error(StatusCode::BAD_REQUEST, &format!("unknown parameter {k}")),
        }
    }
    log_response(server, namespace, pod, container, &q).unwrap_or_else(|(code, m)| error(code, &m))
}

/// A container's log as a response, or why there is none.
pub(crate) fn log_response(
    server: &Server,
    namespace: &str,
    pod: &str,
    container: &str,
    q: &LogQuery,
) -> Result<Response<Body>, (StatusCode, String)> {
    let dir = crate::locate::container_dir(&server.state_dir, namespace, pod, Some(container))
        .map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))?;
    let file = dir.join(if q.previous {
        "previous.log"
    } else {
        "container.log"
    });
    let Ok(text) = std::fs::read_to_string(&file) else {
        let what = if q.previous {
            NO_PREVIOUS_RUN
        } else {
            NO_OUTPUT_YET
        };
        return Err((StatusCode::NOT_FOUND, what.into()));
    };
    let all = crate::shim::logs::timed_lines(&text);
    let start = q.tail.map_or(0, |n| all.len().saturating_sub(n));
    let mut head = String::new();
    for l in &all[start..] {
        head.push_str(&crate::shim::logs::shown(l, q.timestamps));
        head.push('\n');
    }
    if !q.follow || q.previous {
        return Ok(reply(StatusCode::OK, "text/plain", head));
    }
    // Following: a thread waits for more (as `podctl logs -f` does) and
    // sends it on; it ends when the container has exited or within a second
    // of the client going (hyper drops the body, and so the receiver).
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let offset = text.len() as u64;
    let first = tx.clone();
    let timestamps = q.timestamps;
    let spawned = std::thread::Builder::new()
        .name("logs".into())
        .spawn(move || {
            if first.blocking_send(Bytes::from(head)).is_err() {
                return;
            }
            let watch = first.clone();
            let mut out = ChannelWriter(first);
            crate::shim::logs::follow(&file, offset, timestamps, &mut out, &|| watch.is_closed());
        });
    drop(tx);
    if spawned.is_err() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "no thread to follow the log".into(),
        ));
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(hyper::body::Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    if let Ok(v) = "text/plain".parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(r)
}

/// `Write` into the channel a streamed response reads.
struct ChannelWriter(tokio::sync::mpsc::Sender<Bytes>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A running container, what its cgroup uses now, and its cgroup.
type Running<'a> = (
    &'a PodStatus,
    &'a ContainerStatus,
    crate::cgroups::Usage,
    crate::cgroups::CgroupPath,
);

/// Every running container with what its cgroup uses now.
fn running_usage<'a>(view: &'a View, cgroups: &dyn Cgroups, cgroup_root: &str) -> Vec<Running<'a>> {
    let pods = view.status.as_ref().map_or(&[][..], |s| &s.pods[..]);
    let mut out = Vec::new();
    for p in pods {
        for c in p.containers.iter().filter(|c| c.state == "Running") {
            let Ok(cg) = crate::runtime::container_cgroup(cgroup_root, &p.uid, &c.name) else {
                continue;
            };
            if let Ok(u) = cgroups.usage(&cg) {
                out.push((p, c, u, cg));
            }
        }
    }
    out
}

/// CPU time, memory and pids of every running container, from its cgroup.
pub fn top(view: &View, cgroups: &dyn Cgroups, cgroup_root: &str) -> Vec<serde_json::Value> {
    running_usage(view, cgroups, cgroup_root)
        .into_iter()
        .map(|(p, c, u, _)| {
            serde_json::json!({
                "namespace": p.namespace,
                "pod": p.name,
                "container": c.name,
                "cpu_usec": u.cpu_usec,
                "memory_bytes": u.memory_bytes,
                "pids": u.pids,
            })
        })
        .collect()
}

/// A label value as Prometheus' text format quotes it.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics in Prometheus' text format.
pub fn metrics(view: &View, cgroups: &dyn Cgroups, cgroup_root: &str) -> String {
    let mut out = String::new();
    let pods = view.status.as_ref().map_or(&[][..], |s| &s.pods[..]);
    let _ = writeln!(out, "# HELP podagent_pods Pods by phase.");
    let _ = writeln!(out, "# TYPE podagent_pods gauge");
    for phase in ["Pending", "Running", "Succeeded", "Failed"] {
        let n = pods.iter().filter(|p| p.phase == phase).count();
        let _ = writeln!(out, "podagent_pods{{phase=\"{phase}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP podagent_container_restarts_total Restarts of each container."
    );
    let _ = writeln!(out, "# TYPE podagent_container_restarts_total counter");
    for p in pods {
        for c in &p.containers {
            let _ = writeln!(
                out,
                "podagent_container_restarts_total{{namespace=\"{}\",pod=\"{}\",container=\"{}\"}} {}",
                label(&p.namespace),
                label(&p.name),
                label(&c.name),
                c.restart_count
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP podagent_container_cpu_usage_seconds_total CPU time used (cgroup)."
    );
    let _ = writeln!(
        out,
        "# TYPE podagent_container_cpu_usage_seconds_total counter"
    );
    let mut memory = String::new();
    // Read once for podagent's families and cAdvisor's.
    let running = running_usage(view, cgroups, cgroup_root);
    for (p, c, usage, _) in &running {
        let labels = format!(
            "namespace=\"{}\",pod=\"{}\",container=\"{}\"",
            label(&p.namespace),
            label(&p.name),
            label(&c.name)
        );
        let _ = writeln!(
            out,
            "podagent_container_cpu_usage_seconds_total{{{labels}}} {}",
            usage.cpu_usec as f64 / 1e6
        );
        let _ = writeln!(
            memory,
            "podagent_container_memory_usage_bytes{{{labels}}} {}",
            usage.memory_bytes
        );
    }
    let _ = writeln!(
        out,
        "# HELP podagent_container_memory_usage_bytes Memory in use (cgroup)."
    );
    let _ = writeln!(out, "# TYPE podagent_container_memory_usage_bytes gauge");
    out.push_str(&memory);
    let _ = writeln!(
        out,
        "# HELP podagent_tracked_objects What the agent holds in memory, by kind (none once every pod is gone)."
    );
    let _ = writeln!(out, "# TYPE podagent_tracked_objects gauge");
    for (kind, n) in &view.tracked {
        let _ = writeln!(out, "podagent_tracked_objects{{kind=\"{kind}\"}} {n}");
    }
    if let Some(sync) = &view.sync {
        sync_families(&mut out, sync);
    }
    view.reconcile.write(
        &mut out,
        "podagent_reconcile_duration_seconds",
        "One reconcile pass, actions included.",
    );
    cadvisor(&mut out, view, cgroups, &running);
    process(&mut out);
    out
}

/// The git sync's families, from the state `/v1/sync` serves.
fn sync_families(out: &mut String, sync: &serde_json::Value) {
    let text = |k: &str| sync[k].as_str().unwrap_or("").to_string();
    let repo = format!(
        "repository=\"{}\",ref=\"{}\"",
        label(&text("repository")),
        label(&text("ref"))
    );
    let revisions: Vec<(String, String)> = ["applied", "healthy"]
        .iter()
        .filter(|k| sync[**k].is_string())
        .map(|k| {
            let labels = format!("{repo},state=\"{k}\",revision=\"{}\"", label(&text(k)));
            (labels, "1".to_string())
        })
        .collect();
    family(
        out,
        "podagent_sync_revision_info",
        "gauge",
        "The revision the node runs (applied) and the last one proven healthy.",
        &revisions,
    );
    let count = |k: &str| vec![(repo.clone(), sync[k].as_u64().unwrap_or(0).to_string())];
    family(
        out,
        "podagent_sync_fetch_failures_total",
        "counter",
        "Fetches of the repository that failed (tried again with back-off).",
        &count("failures"),
    );
    family(
        out,
        "podagent_sync_refused_total",
        "counter",
        "Commits refused whole (a bad file, tree or signature).",
        &count("refused"),
    );
    family(
        out,
        "podagent_sync_reverted_total",
        "counter",
        "Revisions reverted for pods not Ready within the health window.",
        &count("reverted"),
    );
    let bad = sync["bad_commits"].as_array().map_or(0, Vec::len);
    family(
        out,
        "podagent_sync_bad_commits",
        "gauge",
        "Commits recorded as bad, not tried again until the branch moves.",
        &[(repo.clone(), bad.to_string())],
    );
    let rollout: Vec<(String, String)> = sync["rollout_seconds"]
        .as_f64()
        .map(|v| (repo.clone(), v.to_string()))
        .into_iter()
        .collect();
    family(
        out,
        "podagent_sync_rollout_seconds",
        "gauge",
        "The last healthy revision's rollout: from applied to every pod it changed Ready.",
        &rollout,
    );
}

/// A family: its HELP and TYPE lines, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time (`…Z`), as the
/// container's start is recorded.
pub(crate) fn epoch_seconds(t: &str) -> Option<f64> {
    let (date, time) = t.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut hms = time.split(':');
    let (h, min) = (
        hms.next()?.parse::<i64>().ok()?,
        hms.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = hms.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}

/// How one container's sample is read from its status and cgroup.
type Read =
    fn(&ContainerStatus, &crate::cgroups::Usage, &crate::cgroups::UsageDetail) -> Option<String>;

/// Microseconds as seconds.
fn secs(usec: u64) -> String {
    format!("{}", usec as f64 / 1e6)
}

/// The container metrics under the names cAdvisor gives them (what the
/// kubelet's `/metrics/cadvisor` serves and dashboards read), and the
/// kubelet's own counts, with `namespace`, `pod`, `container` labels.
fn cadvisor(out: &mut String, view: &View, cgroups: &dyn Cgroups, running: &[Running<'_>]) {
    let usage: Vec<_> = running
        .iter()
        .map(|(p, c, u, cg)| (p, c, u, cgroups.detail(cg)))
        .collect();
    let each = |f: &dyn Fn(
        &ContainerStatus,
        &crate::cgroups::Usage,
        &crate::cgroups::UsageDetail,
    ) -> Option<String>| {
        usage
            .iter()
            .filter_map(|(p, c, u, d)| {
                let labels = format!(
                    "namespace=\"{}\",pod=\"{}\",container=\"{}\",image=\"{}\"",
                    label(&p.namespace),
                    label(&p.name),
                    label(&c.name),
                    label(&c.image)
                );
                Some((labels, f(c, u, d)?))
            })
            .collect::<Vec<_>>()
    };
    let list: [(&str, &str, &str, Read); 13] = [
        ("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed in seconds.", |_, u, _| Some(secs(u.cpu_usec))),
        ("container_memory_working_set_bytes", "gauge", "Current working set in bytes (usage less inactive file pages).", |_, u, d| Some(d.working_set_bytes(u).to_string())),
        ("container_memory_usage_bytes", "gauge", "Current memory usage in bytes, including all memory regardless of when it was accessed.", |_, u, _| Some(u.memory_bytes.to_string())),
        ("container_memory_rss", "gauge", "Size of RSS in bytes.", |_, _, d| Some(d.rss_bytes.to_string())),
        ("container_memory_cache", "gauge", "Number of bytes of page cache memory.", |_, _, d| Some(d.cache_bytes.to_string())),
        ("container_cpu_cfs_periods_total", "counter", "Number of elapsed enforcement period intervals.", |_, _, d| Some(d.cfs_periods.to_string())),
        ("container_cpu_cfs_throttled_periods_total", "counter", "Number of throttled period intervals.", |_, _, d| Some(d.cfs_throttled_periods.to_string())),
        ("container_cpu_cfs_throttled_seconds_total", "counter", "Total time duration the container has been throttled.", |_, _, d| Some(secs(d.cfs_throttled_usec))),
        ("container_spec_memory_limit_bytes", "gauge", "Memory limit for the container (0: none).", |_, _, d| Some(d.memory_limit_bytes.unwrap_or(0).to_string())),
        ("container_spec_cpu_quota", "gauge", "CPU quota of the container (0: none).", |_, _, d| Some(d.cpu_quota_us.unwrap_or(0).to_string())),
        ("container_spec_cpu_shares", "gauge", "CPU share of the container.", |_, _, d| Some(d.cpu_shares.to_string())),
        ("container_oom_events_total", "counter", "Count of out of memory events observed for the container.", |_, u, _| Some(u.oom_kills.to_string())),
        ("container_processes", "gauge", "Number of processes running inside the container.", |_, u, _| Some(u.pids.to_string())),
    ];
    for (name, kind, help, f) in &list {
        family(out, name, kind, help, &each(f));
    }
    family(
        out,
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds.",
        &each(&|c, _, _| {
            c.started_at
                .as_deref()
                .and_then(epoch_seconds)
                .map(|s| s.to_string())
        }),
    );
    network(out, cgroups, running);
    view.pod_start.write(
        out,
        "kubelet_pod_start_duration_seconds",
        "Duration in seconds from the agent seeing a pod for the first time to the pod starting to run.",
    );
    let probes: Vec<(String, String)> = view
        .probes
        .iter()
        .map(|((ns, pod, c, kind, result), n)| {
            (
                format!(
                    "namespace=\"{}\",pod=\"{}\",container=\"{}\",probe_type=\"{kind}\",result=\"{result}\"",
                    label(ns),
                    label(pod),
                    label(c)
                ),
                n.to_string(),
            )
        })
        .collect();
    family(
        out,
        "prober_probe_total",
        "counter",
        "Cumulative number of a liveness, readiness or startup probe for a container by result.",
        &probes,
    );
    let pods = view.status.as_ref().map_or(&[][..], |s| &s.pods[..]);
    let running_pods = pods.iter().filter(|p| p.phase == "Running").count();
    family(
        out,
        "kubelet_running_pods",
        "gauge",
        "Number of pods that have a running pod sandbox.",
        &[(String::new(), running_pods.to_string())],
    );
    let mut states =
        std::collections::BTreeMap::from([("created", 0), ("exited", 0), ("running", 0)]);
    for c in pods
        .iter()
        .flat_map(|p| p.containers.iter().chain(&p.init_containers))
    {
        let state = match c.state.as_str() {
            "Running" => "running",
            _ if c.exit_code.is_some() => "exited",
            _ => "created",
        };
        *states.entry(state).or_default() += 1;
    }
    let samples: Vec<(String, String)> = states
        .iter()
        .map(|(s, n)| (format!("container_state=\"{s}\""), n.to_string()))
        .collect();
    family(
        out,
        "kubelet_running_containers",
        "gauge",
        "Number of containers currently running.",
        &samples,
    );
}

/// The agent process's own figures, as every Prometheus client library
/// gives them, and its build.
fn process(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, r)| r.split_whitespace().collect());
    let field = |n: usize| {
        rest.get(n)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    // utime and stime are fields 14 and 15, starttime 22 (11, 12, 19 here).
    let cpu = (field(11) + field(12)) / ticks;
    let boot = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let start = boot + field(19) / ticks;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as f64;
    let rss = field(21) * page;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft);
    let one = |v: String| vec![(String::new(), v)];
    family(
        out,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        &one(cpu.to_string()),
    );
    family(
        out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        &one(rss.to_string()),
    );
    family(
        out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        &one(start.to_string()),
    );
    family(
        out,
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        &one(fds.to_string()),
    );
    family(
        out,
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        &one(limit.to_string()),
    );
    family(
        out,
        "podagent_build_info",
        "gauge",
        "The agent's version (always 1).",
        &[(
            format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
            "1".into(),
        )],
    );
}

/// Each interface's counters in `/proc/<pid>/net/dev` (the network
/// namespace of the process): (name, received bytes, received packets,
/// receive errors, transmitted bytes, ...), loopback left out.
pub(crate) fn net_dev(text: &str) -> Vec<(String, [u64; 16])> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            let mut v = [0u64; 16];
            let mut fields = rest.split_whitespace();
            for slot in v.iter_mut() {
                *slot = fields.next()?.parse().ok()?;
            }
            (name != "lo").then(|| (name.to_string(), v))
        })
        .collect()
}

/// cAdvisor's network families, one series a pod and interface (the pod's
/// network namespace is its containers' own: `container=""`, as cAdvisor
/// reports a pod's sandbox), read through one of its running processes.
fn network(out: &mut String, cgroups: &dyn Cgroups, running: &[Running<'_>]) {
    let mut seen = std::collections::BTreeSet::new();
    let mut rows: Vec<(String, [u64; 16])> = Vec::new();
    for (p, _, _, cg) in running {
        if !seen.insert((&p.namespace, &p.name)) {
            continue;
        }
        let Some(pid) = cgroups.pids(cg).ok().and_then(|p| p.first().copied()) else {
            seen.remove(&(&p.namespace, &p.name));
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) else {
            seen.remove(&(&p.namespace, &p.name));
            continue;
        };
        for (iface, v) in net_dev(&text) {
            let labels = format!(
                "namespace=\"{}\",pod=\"{}\",container=\"\",interface=\"{}\"",
                label(&p.namespace),
                label(&p.name),
                label(&iface)
            );
            rows.push((labels, v));
        }
    }
    // /proc/net/dev's columns: 0 bytes, 1 packets, 2 errs, 3 drop (received);
    // 8 bytes, 9 packets, 10 errs, 11 drop (transmitted).
    for (name, help, col) in [
        (
            "container_network_receive_bytes_total",
            "Cumulative count of bytes received.",
            0,
        ),
        (
            "container_network_receive_packets_total",
            "Cumulative count of packets received.",
            1,
        ),
        (
            "container_network_receive_errors_total",
            "Cumulative count of errors encountered while receiving.",
            2,
        ),
        (
            "container_network_receive_packets_dropped_total",
            "Cumulative count of packets dropped while receiving.",
            3,
        ),
        (
            "container_network_transmit_bytes_total",
            "Cumulative count of bytes transmitted.",
            8,
        ),
        (
            "container_network_transmit_packets_total",
            "Cumulative count of packets transmitted.",
            9,
        ),
        (
            "container_network_transmit_errors_total",
            "Cumulative count of errors encountered while transmitting.",
            10,
        ),
        (
            "container_network_transmit_packets_dropped_total",
            "Cumulative count of packets dropped while transmitting.",
            11,
        ),
    ] {
        let samples: Vec<(String, String)> = rows
            .iter()
            .map(|(l, v)| (l.clone(), v[col].to_string()))
            .collect();
        family(out, name, "counter", help, &samples);
    }
}

/// `--metrics-address`: `/metrics` (and `/healthz`) over TCP for a stock
/// Prometheus, on a thread of its own; nothing else of the API is served
/// there. Unauthenticated, as the kubelet's read-only port was: bind it to
/// an address only the scraper reaches.
pub fn serve_metrics(addr: std::net::SocketAddr, server: Server) -> Result<(), ApiError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| ApiError::Start {
        what: "the metrics listener",
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ApiError::Start {
            what: "the metrics listener",
            source,
        })?;
    let server = Arc::new(server);
    on_thread("metrics", async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(connection(stream, server.clone(), Listener::Metrics));
        }
    })
}

/// `--kube-api-address`: the Kubernetes API (`crate::kube`) over TLS with
/// the serving certificate of `access`, for clients with its token, on a
/// thread of its own.
pub fn serve_kube(
    addr: std::net::SocketAddr,
    server: Server,
    access: Arc<crate::kube::access::Access>,
) -> Result<(), ApiError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |e: String| ApiError::Start {
        what: "the Kubernetes API's TLS",
        source: std::io::Error::other(e),
    };
    let certs = CertificateDer::pem_slice_iter(access.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_slice(access.key_pem.as_bytes()).map_err(|e| tls(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let start = |source| ApiError::Start {
        what: "the Kubernetes API's listener",
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(start)?;
    listener.set_nonblocking(true).map_err(start)?;
    let server = Arc::new(server);
    on_thread("kube-api", async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, server, access) = (acceptor.clone(), server.clone(), access.clone());
            tokio::spawn(async move {
                // A client that does not finish its handshake is dropped.
                let handshake = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    acceptor.accept(stream),
                );
                if let Ok(Ok(stream)) = handshake.await {
                    connection(stream, server, Listener::Kube(access)).await;
                }
            });
        }
    })
}

/// Why a request could not be made, worded for a person.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the agent is not running (nothing serves {0})")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: the API is root's (or --api-group's)")]
    Denied(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Http(PathBuf, String),
}

/// GETs `path` from the agent at `socket`: the status code and body.
pub fn get(socket: &Path, path: &str) -> Result<(u16, Vec<u8>), ClientError> {
    let mut body = Vec::new();
    let code = get_streamed(socket, path, &mut |_, chunk| {
        body.extend_from_slice(chunk);
        true
    })?;
    Ok((code, body))
}

/// GETs `path` from the agent at `socket`, handing the status code and the
/// body to `sink` piece by piece as it arrives (a followed log ends only
/// with its container); `sink` returns false to stop reading. The status
/// code.
pub fn get_streamed(
    socket: &Path,
    path: &str,
    sink: &mut dyn FnMut(u16, &[u8]) -> bool,
) -> Result<u16, ClientError> {
    request(socket, Method::GET, path, sink)
}

/// POSTs to `path` (an empty body): the status code and body.
pub fn post(socket: &Path, path: &str) -> Result<(u16, Vec<u8>), ClientError> {
    let mut body = Vec::new();
    let code = request(socket, Method::POST, path, &mut |_, chunk| {
        body.extend_from_slice(chunk);
        true
    })?;
    Ok((code, body))
}

fn request(
    socket: &Path,
    method: Method,
    path: &str,
    sink: &mut dyn FnMut(u16, &[u8]) -> bool,
) -> Result<u16, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| ClientError::Io(socket.to_path_buf(), e))?;
    rt.block_on(async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(socket.to_path_buf())
                }
                std::io::ErrorKind::PermissionDenied => ClientError::Denied(socket.to_path_buf()),
                _ => ClientError::Io(socket.to_path_buf(), e),
            })?;
        let http = |e: hyper::Error| ClientError::Http(socket.to_path_buf(), e.to_string());
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "podagent")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| ClientError::Http(socket.to_path_buf(), e.to_string()))?;
        let resp = send.send_request(req).await.map_err(http)?;
        let code = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(http)?.into_data() {
                if !sink(code, &data) {
                    break;
                }
            }
        }
        Ok(code)
    })
}
