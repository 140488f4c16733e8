//! The node's read-only Kubernetes API: enough of the API server's `v1`
//! for `kubectl get/describe/logs/get events [-w]` and the official client
//! libraries to work against one node, unchanged.
//!
//! Served on the agent's Unix socket (its permissions are the
//! authentication, as for the rest of the API) and, with
//! `--kube-api-address`, over TCP with TLS and a bearer token
//! (`access`). Writes are refused: a pod is changed through its manifest.
//!
//! Routes (GET):
//! - discovery: `/api`, `/api/v1`, `/apis`, `/version`;
//! - `pods` and `events`, in a namespace or across all: list, get, and
//!   watch (`?watch=true`, from a `resourceVersion`), with `labelSelector`
//!   and `fieldSelector`; as objects, or as the `Table`s kubectl asks for
//!   (`Accept: ...;as=Table`) with the API server's columns;
//! - `pods/{name}/log` (`container`, `follow`, `previous`, `tailLines`,
//!   `timestamps`).
//!
//! Resource versions come from one counter for pods and events that starts
//! at the agent's start time in microseconds: a version of an earlier
//! agent is below every version of this one, and a watch from it is
//! answered `410 Gone`, as the API server answers a compacted one (clients
//! list again). A pod's version moves when its status does (`Versions`,
//! kept by the loop's publish); an event's when it is counted again.

pub mod access;
pub mod objects;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::api::{reply, Body, Server, View};
use crate::status::PodStatus;

/// How often a watch looks at the published state.
const WATCH_POLL: Duration = Duration::from_millis(250);

/// How many deleted pods are remembered for watches that resume.
const GONE: usize = 1024;

struct Counter {
    base: u64,
    next: AtomicU64,
}

fn counter() -> &'static Counter {
    static C: OnceLock<Counter> = OnceLock::new();
    C.get_or_init(|| {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Counter {
            base: micros,
            next: AtomicU64::new(micros),
        }
    })
}

/// A new resource version, above every one given before.
pub fn next_rv() -> u64 {
    counter().next.fetch_add(1, Ordering::SeqCst) + 1
}

/// The latest resource version given.
pub fn current_rv() -> u64 {
    counter().next.load(Ordering::SeqCst)
}

#[derive(Debug, Clone)]
struct Versioned {
    /// The version it was first seen at.
    created: u64,
    rv: u64,
    status: PodStatus,
}

/// The resource versions of the pods the loop publishes, and the pods gone
/// (for a watch that resumes from before they went).
#[derive(Debug, Default)]
pub struct Versions {
    pods: BTreeMap<String, Versioned>,
    gone: VecDeque<Versioned>,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl Versions {
    /// Takes the pods of a pass: a new pod, or one whose status changed,
    /// gets a new version; a pod no longer there is gone. A pod of the same
    /// name with another uid is a new pod.
    pub fn update(&mut self, pods: &[PodStatus]) {
        let mut seen = BTreeSet::new();
        for p in pods {
            let k = key(&p.namespace, &p.name);
            seen.insert(k.clone());
            match self.pods.get_mut(&k) {
                Some(v) if v.status == *p => {}
                Some(v) if v.status.uid == p.uid => {
                    v.rv = next_rv();
                    v.status = p.clone();
                }
                _ => {
                    if let Some(old) = self.pods.remove(&k) {
                        self.bury(old);
                    }
                    let rv = next_rv();
                    let status = p.clone();
                    self.pods.insert(
                        k,
                        Versioned {
                            created: rv,
                            rv,
                            status,
                        },
                    );
                }
            }
        }
        let left: Vec<String> = self
            .pods
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in left {
            if let Some(old) = self.pods.remove(&k) {
                self.bury(old);
            }
        }
    }

    fn bury(&mut self, mut v: Versioned) {
        v.rv = next_rv();
        if self.gone.len() == GONE {
            self.gone.pop_front();
        }
        self.gone.push_back(v);
    }

    /// The uid of a pod shown now.
    pub fn uid(&self, object: &str) -> Option<&str> {
        self.pods.get(object).map(|v| v.status.uid.as_str())
    }
}

/// The two resources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Pods,
    Events,
}

impl Resource {
    fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Events => "events",
        }
    }
}

/// One object as the agent holds it, before it is shaped.
#[derive(Debug, Clone)]
struct Item {
    key: String,
    name: String,
    created: u64,
    rv: u64,
    /// The agent's record (`PodStatus`, `events::Event`) as JSON.
    raw: Value,
    /// An event's pod's uid.
    uid: Option<String>,
}

fn items(view: &View, r: Resource, namespace: Option<&str>) -> Vec<Item> {
    let in_ns = |ns: &str| namespace.is_none_or(|n| n == ns);
    match r {
        Resource::Pods => view
            .versions
            .pods
            .iter()
            .filter(|(_, v)| in_ns(&v.status.namespace))
            .map(|(k, v)| Item {
                key: k.clone(),
                name: v.status.name.clone(),
                created: v.created,
                rv: v.rv,
                raw: serde_json::to_value(&v.status).unwrap_or_default(),
                uid: None,
            })
            .collect(),
        Resource::Events => view
            .events
            .all()
            .into_iter()
            .filter_map(|e| {
                let (ns, pod) = e.object.split_once('/').unwrap_or(("default", &e.object));
                if !in_ns(ns) {
                    return None;
                }
                let raw = serde_json::to_value(&e).ok()?;
                // The name `objects::event_object` gives it.
                let name = format!("{pod}.{:x}", e.id);
                Some(Item {
                    key: e.id.to_string(),
                    name,
                    created: e.id,
                    rv: e.rv,
                    uid: view.versions.uid(&e.object).map(str::to_string),
                    raw,
                })
            })
            .collect(),
    }
}

/// The pods gone after `since` that existed at it.
fn gone(view: &View, r: Resource, namespace: Option<&str>, since: u64) -> Vec<Item> {
    if r != Resource::Pods {
        return Vec::new();
    }
    view.versions
        .gone
        .iter()
        .filter(|v| v.rv > since && v.created <= since)
        .filter(|v| namespace.is_none_or(|n| n == v.status.namespace))
        .map(|v| Item {
            key: key(&v.status.namespace, &v.status.name),
            name: v.status.name.clone(),
            created: v.created,
            rv: v.rv,
            raw: serde_json::to_value(&v.status).unwrap_or_default(),
            uid: None,
        })
        .collect()
}

/// The item as its Kubernetes object, its version in its metadata.
fn object(r: Resource, item: &Item) -> Value {
    let mut o = match r {
        Resource::Pods => objects::pod_object(&item.raw),
        Resource::Events => objects::event_object(&item.raw, 0, item.uid.as_deref()),
    };
    o["metadata"]["resourceVersion"] = json!(item.rv.to_string());
    o
}

/// A request's query, decoded.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = match (b[i], b.get(i + 1), b.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (escaped, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, c) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    fn parse(q: &str) -> Query {
        Query(
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1" | ""))
    }
}

/// An API error as the API server writes it: a `Status`.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = status_object(code, reason, message).to_string();
    reply(code, "application/json", body)
}

fn status_object(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn bad_request(message: &str) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn not_found(r: &str, name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{r} \"{name}\" not found"),
    )
}

/// A request refused for want of the token.
pub fn unauthorized() -> Response<Body> {
    status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
}

/// Whether `path` is the Kubernetes API's.
pub fn is_kube_path(path: &str) -> bool {
    path == "/api"
        || path.starts_with("/api/")
        || path == "/apis"
        || path.starts_with("/apis/")
        || path == "/version"
        || path.starts_with("/openapi/")
}

/// The `Table` version the client asks for, if it asks for one: the first
/// media range of its `Accept` with `as=Table`.
fn table_version(req: &Request<Incoming>) -> Option<&'static str> {
    let accept = req.headers().get(hyper::header::ACCEPT)?.to_str().ok()?;
    for range in accept.split(',') {
        let params: Vec<&str> = range.split(';').map(str::trim).collect();
        if params.contains(&"as=Table") {
            return Some(if params.contains(&"v=v1beta1") {
                "meta.k8s.io/v1beta1"
            } else {
                "meta.k8s.io/v1"
            });
        }
    }
    None
}

/// Serves one request of the Kubernetes API.
pub fn handle(server: &Arc<Server>, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!(
                "{} is not served: the node's API is read-only; change a pod through its manifest in the pods directory",
                req.method()
            ),
        );
    }
    let path = req.uri().path().trim_end_matches('/');
    let query = Query::parse(req.uri().query().unwrap_or(""));
    match path {
        "/api" => json_reply(&json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [],
        })),
        "/apis" => json_reply(&json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [],
        })),
        "/api/v1" => json_reply(&discovery()),
        "/version" => json_reply(&json!({
            "major": "",
            "minor": "",
            "gitVersion": format!("v{}-podagent", env!("CARGO_PKG_VERSION")),
            "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
            "compiler": "rustc",
        })),
        p => match p.strip_prefix("/api/v1/") {
            Some(rest) => resource(server, req, rest, &query),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("the server could not find the requested resource ({p})"),
            ),
        },
    }
}

fn json_reply(v: &Value) -> Response<Body> {
    reply(StatusCode::OK, "application/json", v.to_string())
}

fn discovery() -> Value {
    let verbs = json!(["get", "list", "watch"]);
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "v1",
        "resources": [
            { "name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
              "verbs": verbs, "shortNames": ["po"], "categories": ["all"] },
            { "name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod",
              "verbs": ["get"] },
            { "name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
              "verbs": verbs, "shortNames": ["ev"] },
        ],
    })
}

/// `pods`, `events`, `namespaces/{ns}/pods[/{name}[/log]]`,
/// `namespaces/{ns}/events[/{name}]`.
fn resource(
    server: &Arc<Server>,
    req: &Request<Incoming>,
    rest: &str,
    query: &Query,
) -> Response<Body> {
    let parts: Vec<&str> = rest.split('/').collect();
    let (namespace, r, name, sub) = match parts[..] {
        [r] => (None, r, None, None),
        ["namespaces", ns, r] => (Some(ns), r, None, None),
        ["namespaces", ns, r, name] => (Some(ns), r, Some(name), None),
        ["namespaces", ns, r, name, sub] => (Some(ns), r, Some(name), Some(sub)),
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("the server could not find the requested resource (/api/v1/{rest})"),
            )
        }
    };
    let r = match r {
        "pods" => Resource::Pods,
        "events" => Resource::Events,
        other => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("the server could not find the requested resource ({other}): this node serves pods, pods/log and events"),
            )
        }
    };
    let selectors = match Selectors::parse(r, query) {
        Ok(s) => s,
        Err(e) => return bad_request(&e),
    };
    let table = table_version(req).map(|v| (v, query.get("includeObject").unwrap_or("Metadata")));
    match (name, sub) {
        (Some(pod), Some("log")) if r == Resource::Pods => {
            log(server, namespace.unwrap_or("default"), pod, query)
        }
        (_, Some(sub)) => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "the server could not find the requested resource ({}/{sub})",
                r.plural()
            ),
        ),
        (name, None) if query.flag("watch") => {
            watch(server, r, namespace, name, selectors, table, query)
        }
        (Some(name), None) => {
            let Ok(view) = server.view.lock() else {
                return poisoned();
            };
            let found = items(&view, r, namespace)
                .into_iter()
                .find(|i| i.name == name);
            drop(view);
            match found {
                Some(item) => {
                    let s = shaped(r, &item);
                    match table {
                        Some((v, include)) => json_reply(&table_of(r, v, include, &[s], item.rv)),
                        None => json_reply(&s.object),
                    }
                }
                None => not_found(r.plural(), name),
            }
        }
        (None, None) => {
            let Ok(view) = server.view.lock() else {
                return poisoned();
            };
            let all = items(&view, r, namespace);
            let rv = current_rv();
            drop(view);
            let objects: Vec<Shaped> = all
                .iter()
                .map(|i| shaped(r, i))
                .filter(|s| selectors.matches(&s.object))
                .collect();
            match table {
                Some((v, include)) => json_reply(&table_of(r, v, include, &objects, rv)),
                None => json_reply(&json!({
                    "kind": match r { Resource::Pods => "PodList", Resource::Events => "EventList" },
                    "apiVersion": "v1",
                    "metadata": { "resourceVersion": rv.to_string() },
                    "items": objects.into_iter().map(|s| s.object).collect::<Vec<_>>(),
                })),
            }
        }
    }
}

fn poisoned() -> Response<Body> {
    status(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        "the agent's state is poisoned",
    )
}

/// `labelSelector` and `fieldSelector`.
#[derive(Debug, Default)]
struct Selectors {
    labels: Vec<Requirement>,
    fields: Vec<(String, bool, String)>,
}

#[derive(Debug, PartialEq)]
enum Requirement {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// The fields the API server lets a selector name, by resource.
fn selectable(r: Resource, field: &str) -> bool {
    match r {
        Resource::Pods => matches!(
            field,
            "metadata.name"
                | "metadata.namespace"
                | "spec.nodeName"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "spec.serviceAccountName"
                | "spec.hostNetwork"
                | "status.phase"
                | "status.podIP"
                | "status.nominatedNodeName"
        ),
        Resource::Events => matches!(
            field,
            "metadata.name"
                | "metadata.namespace"
                | "involvedObject.kind"
                | "involvedObject.namespace"
                | "involvedObject.name"
                | "involvedObject.uid"
                | "involvedObject.apiVersion"
                | "involvedObject.resourceVersion"
                | "involvedObject.fieldPath"
                | "reason"
                | "reportingComponent"
                | "source"
                | "type"
        ),
    }
}

/// Splits on commas outside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.into_iter().filter(|t| !t.is_empty()).collect()
}

fn parse_requirement(t: &str) -> Result<Requirement, String> {
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("unable to parse requirement: {t:?}: a set is (a,b)"))?;
        Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
    };
    if let Some((k, rest)) = t.split_once(" notin ") {
        return Ok(Requirement::NotIn(k.trim().into(), set(rest)?));
    }
    if let Some((k, rest)) = t.split_once(" in ") {
        return Ok(Requirement::In(k.trim().into(), set(rest)?));
    }
    if let Some((k, v)) = t.split_once("!=") {
        return Ok(Requirement::Ne(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
        return Ok(Requirement::Eq(k.trim().into(), v.trim().into()));
    }
    if let Some(k) = t.strip_prefix('!') {
        return Ok(Requirement::Absent(k.trim().into()));
    }
    if t.contains(['(', ')', ' ', '<', '>']) {
        return Err(format!("unable to parse requirement: {t:?}"));
    }
    Ok(Requirement::Exists(t.into()))
}

impl Selectors {
    fn parse(r: Resource, q: &Query) -> Result<Selectors, String> {
        let mut s = Selectors::default();
        for t in terms(q.get("labelSelector").unwrap_or("")) {
            s.labels.push(parse_requirement(t)?);
        }
        for t in terms(q.get("fieldSelector").unwrap_or("")) {
            let (field, eq, value) = if let Some((f, v)) = t.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{t}'; can't understand '{t}'"));
            };
            let field = field.trim();
            if !selectable(r, field) {
                return Err(format!("field label not supported: {field}"));
            }
            s.fields
                .push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(s)
    }

    fn matches(&self, o: &Value) -> bool {
        let labels = &o["metadata"]["labels"];
        let label = |k: &str| labels[k].as_str();
        let labels_ok = self.labels.iter().all(|req| match req {
            Requirement::Eq(k, v) => label(k) == Some(v.as_str()),
            Requirement::Ne(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::Absent(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|(field, eq, want)| {
                let path = if field == "source" {
                    "source.component"
                } else {
                    field
                };
                let mut v = o;
                for part in path.split('.') {
                    v = &v[part];
                }
                let have = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (have == *want) == *eq
            })
    }
}

/// kubectl's age of a duration (`HumanDuration`): `45s`, `3m10s`, `5h`,
/// `2d3h`, `400d`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h) = (s / 60, s / 3600);
    let with = |a: i64, ua: &str, b: i64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua}{b}{ub}")
        }
    };
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        with(m, "m", s % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        with(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        with(h / 24, "d", h % 24, "h")
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else if h < 24 * 365 * 8 {
        with(h / 24 / 365, "y", (h / 24) % 365, "d")
    } else {
        format!("{}y", h / 24 / 365)
    }
}

/// The age of an RFC 3339 time, as a cell shows it.
fn age(t: &Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    match t.as_str().and_then(crate::api::epoch_seconds) {
        Some(at) => human_duration((now - at) as i64),
        None => "<unknown>".into(),
    }
}

fn column(name: &str, kind: &str, priority: u8, description: &str) -> Value {
    let mut c = json!({
        "name": name, "type": kind, "format": "", "description": description, "priority": priority,
    });
    if name == "Name" {
        c["format"] = json!("name");
    }
    c
}

fn columns(r: Resource) -> Value {
    match r {
        Resource::Pods => json!([
            column("Name", "string", 0, "Name must be unique within a namespace."),
            column("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            column("Status", "string", 0, "The aggregate status of the containers in this pod."),
            column("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            column("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
            column("IP", "string", 1, "The IP address assigned to the pod."),
            column("Node", "string", 1, "The name of the node the pod runs on."),
            column("Nominated Node", "string", 1, "The node the scheduler nominated (none on a node of its own)."),
            column("Readiness Gates", "string", 1, "The pod's readiness gates (none: podagent runs no gates)."),
        ]),
        Resource::Events => json!([
            column("Last Seen", "string", 0, "The time at which the most recent occurrence of this event was recorded."),
            column("Type", "string", 0, "Type of this event (Normal, Warning)."),
            column("Reason", "string", 0, "The reason for the transition into the object's current status."),
            column("Object", "string", 0, "The object that this event is about."),
            column("Subobject", "string", 1, "The part of the object the event is about (a container)."),
            column("Source", "string", 1, "The component reporting this event."),
            column("Message", "string", 0, "A human-readable description of the status of this operation."),
            column("First Seen", "string", 1, "The time at which the event was first recorded."),
            column("Count", "string", 1, "The number of times this event has occurred."),
            column("Name", "string", 1, "Name must be unique within a namespace."),
        ]),
    }
}

/// One object's cells, as the API server's printers make them.
fn cells(r: Resource, o: &Value, raw_row: &Value) -> Value {
    match r {
        Resource::Pods => {
            let mut row = pod_row(raw_row);
            if let Some(node) = o["spec"]["nodeName"].as_str() {
                row[6] = node.to_string();
            }
            json!(row)
        }
        Resource::Events => {
            let last = age(&o["lastTimestamp"]);
            let count = o["count"].as_u64().unwrap_or(1);
            let seen = if count > 1 {
                format!("{last} (x{count} over {})", age(&o["firstTimestamp"]))
            } else {
                last
            };
            let inv = &o["involvedObject"];
            let obj = format!(
                "{}/{}",
                inv["kind"].as_str().unwrap_or("").to_lowercase(),
                inv["name"].as_str().unwrap_or("")
            );
            let source = match o["source"]["host"].as_str() {
                Some(h) => format!("{}, {h}", o["source"]["component"].as_str().unwrap_or("")),
                None => o["source"]["component"].as_str().unwrap_or("").to_string(),
            };
            json!([
                seen,
                o["type"],
                o["reason"],
                obj,
                inv["fieldPath"].as_str().unwrap_or(""),
                source,
                o["message"],
                age(&o["firstTimestamp"]),
                count.to_string(),
                o["metadata"]["name"]
            ])
        }
    }
}

/// A pod's row of the API server's table (see `columns`), from the
/// agent's record: name, ready, status, restarts (with the last one's age),
/// age, IP, node, nominated node, readiness gates.
pub fn pod_row(raw: &Value) -> Vec<String> {
    let (ready, status, restarts) = objects::pod_columns(raw);
    let last_restart = raw["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["last_finished_at"].as_str())
        .max()
        .map(str::to_string);
    let restarts = match (restarts, last_restart) {
        (n, Some(at)) if n > 0 => format!("{n} ({} ago)", age(&json!(at))),
        (n, _) => n.to_string(),
    };
    vec![
        raw["name"].as_str().unwrap_or("").to_string(),
        ready,
        status,
        restarts,
        age(&raw["created"]),
        raw["ip"].as_str().unwrap_or("<none>").to_string(),
        objects::node_name(),
        "<none>".into(),
        "<none>".into(),
    ]
}

/// What a row carries of its object (`includeObject`).
fn row_object(o: &Value, include: &str) -> Value {
    match include {
        "None" => Value::Null,
        "Object" => o.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o["metadata"],
        }),
    }
}

/// Objects as a `Table` of `version`.
fn table_of(r: Resource, version: &str, include: &str, objects: &[Shaped], rv: u64) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|s| {
            json!({
                "cells": cells(r, &s.object, &s.raw),
                "object": row_object(&s.object, include),
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": version,
        "metadata": { "resourceVersion": rv.to_string() },
        "columnDefinitions": columns(r),
        "rows": rows,
    })
}

/// `pods/{name}/log`.
fn log(server: &Arc<Server>, namespace: &str, pod: &str, query: &Query) -> Response<Body> {
    let containers: Option<Vec<String>> = {
        let Ok(view) = server.view.lock() else {
            return poisoned();
        };
        view.versions.pods.get(&key(namespace, pod)).map(|v| {
            v.status
                .containers
                .iter()
                .chain(&v.status.init_containers)
                .map(|c| c.name.clone())
                .collect()
        })
    };
    let Some(containers) = containers else {
        return not_found("pods", pod);
    };
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().any(|n| n == c) => c.to_string(),
        Some(c) => return bad_request(&format!("container {c} is not valid for pod {pod}")),
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return bad_request(&format!(
                "a container name must be specified for pod {pod}, choose one of: [{}]",
                containers.join(" ")
            ))
        }
    };
    let tail = match query.get("tailLines").map(str::parse::<i64>) {
        None => None,
        Some(Ok(n)) if n >= 0 => Some(n as usize),
        Some(_) => return bad_request("tailLines: a number of lines, 0 or more"),
    };
    for unsupported in ["sinceSeconds", "sinceTime", "limitBytes"] {
        if query.get(unsupported).is_some() {
            return bad_request(&format!(
                "{unsupported} is not supported by this node's API"
            ));
        }
    }
    let q = crate::api::LogQuery {
        tail,
        previous: query.flag("previous"),
        follow: query.flag("follow"),
        timestamps: query.flag("timestamps"),
    };
    match crate::api::log_response(server, namespace, pod, &container, &q) {
        Ok(r) => r,
        // Nothing written yet: nothing to show, as the kubelet's.
        Err((_, m)) if m == crate::api::NO_OUTPUT_YET && !q.follow => {
            reply(StatusCode::OK, "text/plain", "")
        }
        Err((StatusCode::NOT_FOUND, m)) if q.previous => bad_request(&format!(
            "previous terminated container \"{container}\" in pod \"{pod}\" not found ({m})"
        )),
        Err((code, m)) => status(code, "NotFound", &m),
    }
}

/// What a watch has sent of one object.
#[derive(Debug)]
struct Known {
    created: u64,
    rv: u64,
    /// The object as last sent, when it matched the selectors.
    sent: Option<Shaped>,
}

/// `?watch=true`: one JSON event a line (`ADDED`, `MODIFIED`, `DELETED`,
/// `ERROR`) until `timeoutSeconds` or the client leaves.
fn watch(
    server: &Arc<Server>,
    r: Resource,
    namespace: Option<&str>,
    name: Option<&str>,
    selectors: Selectors,
    table: Option<(&'static str, &str)>,
    query: &Query,
) -> Response<Body> {
    let from = match query.get("resourceVersion") {
        None | Some("" | "0") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return bad_request(&format!(
                    "resourceVersion {v:?}: not a version of this node"
                ))
            }
        },
    };
    let timeout = match query.get("timeoutSeconds").map(str::parse::<u64>) {
        None => None,
        Some(Ok(s)) => Some(Duration::from_secs(s)),
        Some(Err(_)) => return bad_request("timeoutSeconds: a number of seconds"),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let server = server.clone();
    let namespace = namespace.map(str::to_string);
    let name = name.map(str::to_string);
    let table = table.map(|(v, include)| (v, include.to_string()));
    tokio::spawn(async move {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let line = |kind: &str, o: &Shaped, rv: u64| -> Bytes {
            let object = match &table {
                Some((v, include)) => table_of(r, v, include, std::slice::from_ref(o), rv),
                None => o.object.clone(),
            };
            let mut s = json!({ "type": kind, "object": object }).to_string();
            s.push('\n');
            Bytes::from(s)
        };
        if from.is_some_and(|v| v < counter().base) {
            let gone = status_object(
                StatusCode::GONE,
                "Expired",
                "too old resource version: it is an earlier agent's (list again)",
            );
            let mut s = json!({ "type": "ERROR", "object": gone }).to_string();
            s.push('\n');
            let _ = tx.send(Bytes::from(s)).await;
            return;
        }
        let mut known: BTreeMap<String, Known> = BTreeMap::new();
        let mut first = true;
        loop {
            let (now, buried) = {
                let Ok(view) = server.view.lock() else {
                    return;
                };
                let mut now = items(&view, r, namespace.as_deref());
                now.retain(|i| name.as_deref().is_none_or(|n| n == i.name));
                let buried = if first {
                    from.map(|f| gone(&view, r, namespace.as_deref(), f))
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                (now, buried)
            };
            let mut out: Vec<Bytes> = Vec::new();
            for i in &buried {
                if name.as_deref().is_some_and(|n| n != i.name) {
                    continue;
                }
                let o = shaped(r, i);
                if selectors.matches(&o.object) {
                    out.push(line("DELETED", &o, i.rv));
                }
            }
            let mut present = BTreeSet::new();
            for i in &now {
                present.insert(i.key.clone());
                let prior = known.get(&i.key);
                if prior.is_some_and(|k| k.rv == i.rv && k.created == i.created) {
                    continue;
                }
                let o = shaped(r, i);
                let matches = selectors.matches(&o.object);
                let replaced = prior.is_some_and(|k| k.created != i.created);
                if replaced {
                    if let Some(old) = prior.and_then(|k| k.sent.as_ref()) {
                        out.push(line("DELETED", old, i.rv));
                    }
                }
                let was_sent = prior.is_some_and(|k| k.sent.is_some()) && !replaced;
                let kind = match (first, from, was_sent, matches) {
                    (_, _, true, true) => Some("MODIFIED"),
                    (_, _, true, false) => Some("DELETED"),
                    (true, Some(f), false, true) if i.rv <= f => None,
                    (true, Some(f), false, true) if i.created <= f => Some("MODIFIED"),
                    (_, _, false, true) => Some("ADDED"),
                    (_, _, false, false) => None,
                };
                let sent_before = prior.and_then(|k| k.sent.clone());
                match kind {
                    Some("DELETED") => {
                        if let Some(old) = sent_before {
                            out.push(line("DELETED", &old, i.rv));
                        }
                    }
                    Some(k) => out.push(line(k, &o, i.rv)),
                    None => {}
                }
                known.insert(
                    i.key.clone(),
                    Known {
                        created: i.created,
                        rv: i.rv,
                        sent: matches.then_some(o),
                    },
                );
            }
            let left: Vec<String> = known
                .keys()
                .filter(|k| !present.contains(*k))
                .cloned()
                .collect();
            for k in left {
                if let Some(Known { sent: Some(o), .. }) = known.remove(&k) {
                    // Events that leave the ring are not deletions the API
                    // would report; pods are.
                    if r == Resource::Pods {
                        out.push(line("DELETED", &o, current_rv()));
                    }
                }
            }
            for b in out {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
            first = false;
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) || tx.is_closed() {
                return;
            }
            tokio::time::sleep(WATCH_POLL).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| {
            (
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)),
                rx,
            )
        })
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    if let Ok(v) = "application/json".parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// An object, and the record it was made of (a table's cells read both).
#[derive(Debug, Clone)]
struct Shaped {
    object: Value,
    raw: Value,
}

fn shaped(r: Resource, i: &Item) -> Shaped {
    Shaped {
        object: object(r, i),
        raw: i.raw.clone(),
    }
}

#[cfg(test)]
mod tests;
