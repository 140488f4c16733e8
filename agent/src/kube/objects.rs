//! Kubernetes' shapes of the agent's records: a pod's `v1 Pod` (metadata,
//! the manifest's spec, status), an event's `v1 Event`, and the `Table`s
//! kubectl prints (the API server's columns). Shared by `podctl -o json|yaml`
//! and the node's Kubernetes API (`crate::kube`), so both say the same.

use serde::Deserialize;
use serde_json::{json, Value};

/// A time of the agent's (RFC 3339, nanoseconds) as the API server writes
/// it: whole seconds. Null stays null.
fn secs(v: &Value) -> Value {
    match v.as_str() {
        Some(s) if !s.is_empty() => json!(crate::status::seconds(s)),
        _ => Value::Null,
    }
}

/// One container's `state` (or `lastState`) object.
fn terminated(code: &Value, reason: &Value, message: &Value, start: &Value, end: &Value) -> Value {
    let mut t = json!({ "exitCode": code, "reason": reason });
    if !message.is_null() {
        t["message"] = message.clone();
    }
    if !start.is_null() {
        t["startedAt"] = secs(start);
    }
    if !end.is_null() {
        t["finishedAt"] = secs(end);
    }
    json!({ "terminated": t })
}

/// The pod's conditions as the API has them.
fn conditions(p: &Value) -> Vec<Value> {
    p["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let mut o = json!({ "type": c["type"], "status": c["status"] });
            for (from, to) in [("reason", "reason"), ("message", "message")] {
                if !c[from].is_null() {
                    o[to] = c[from].clone();
                }
            }
            // The pod's creation when unknown.
            let at = if c["last_transition_time"].is_null() {
                secs(&p["created"])
            } else {
                c["last_transition_time"].clone()
            };
            if !at.is_null() {
                o["lastTransitionTime"] = at;
            }
            o
        })
        .collect()
}

/// JSON turned YAML by serde_yaml leaves an RFC 3339 time unquoted, which
/// a YAML 1.1 reader (PyYAML, so the Python client) turns into a date:
/// quoted as kubectl writes them.
pub fn quote_times(yaml: &str) -> String {
    let is_time = |v: &str| {
        let b = v.as_bytes();
        b.len() >= 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && v.ends_with('Z')
            && v.bytes()
                .all(|c| c.is_ascii_digit() || b"-:.TZ".contains(&c))
    };
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.lines() {
        let (head, value) = match line.rsplit_once(": ") {
            Some((h, v)) => (format!("{h}: "), v),
            None => match line.trim_start().strip_prefix("- ") {
                Some(v) => (line[..line.len() - v.len()].to_string(), v),
                None => (String::new(), line),
            },
        };
        if is_time(value) {
            out.push_str(&format!("{head}'{value}'"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// One container's status object (`containerStatuses[i]`).
fn container_object(c: &Value) -> Value {
    let state = match c["state"].as_str().unwrap_or("") {
        "Running" => json!({ "running": { "startedAt": secs(&c["started_at"]) } }),
        "Waiting" => json!({ "waiting": { "reason": "ContainerCreating" } }),
        "PodInitializing" => json!({ "waiting": { "reason": "PodInitializing" } }),
        // An image not had is a waiting state, never a termination.
        w @ ("ErrImagePull"
        | "ImagePullBackOff"
        | "ErrImageNeverPull"
        | "CreateContainerConfigError") => {
            json!({ "waiting": { "reason": w, "message": c["message"] } })
        }
        "CrashLoopBackOff" => json!({ "waiting": {
            "reason": "CrashLoopBackOff",
            "message": format!("back-off restarting failed container; next try at {}", c["next_start"].as_str().unwrap_or("?")),
        } }),
        _ => terminated(
            &c["exit_code"],
            &c["reason"],
            &c["message"],
            &c["last_started_at"],
            &c["last_finished_at"],
        ),
    };
    let mut s = json!({
        "name": c["name"],
        "image": c["image"],
        // Empty until it has run, as the kubelet's.
        "imageID": c["image_id"].as_str().unwrap_or(""),
        "ready": c["ready"],
        "started": c["state"] == "Running",
        "restartCount": c["restart_count"],
        "state": state,
        "lastState": {},
    });
    if let Some(id) = c["container_id"].as_str() {
        s["containerID"] = json!(id);
    }
    let running_or_waiting = state.get("terminated").is_none();
    if running_or_waiting && !c["last_exit_code"].is_null() {
        s["lastState"] = terminated(
            &c["last_exit_code"],
            &c["reason"],
            &c["message"],
            &c["last_started_at"],
            &c["last_finished_at"],
        );
    }
    s
}

/// A pod of the agent's record as a Kubernetes `v1 Pod` (metadata, the
/// manifest's spec when its file loads, status).
pub fn pod_object(p: &Value) -> Value {
    let objects = |field: &str| -> Vec<Value> {
        p[field]
            .as_array()
            .into_iter()
            .flatten()
            .map(container_object)
            .collect()
    };
    let statuses = objects("containers");
    let init_statuses = objects("init_containers");
    let mut status = json!({
        "phase": p["phase"],
        "conditions": conditions(p),
        "containerStatuses": statuses,
    });
    if !p["qos_class"].as_str().unwrap_or("").is_empty() {
        status["qosClass"] = p["qos_class"].clone();
    }
    if !p["created"].as_str().unwrap_or("").is_empty() {
        status["startTime"] = secs(&p["created"]);
    }
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    if let Some(ip) = p["ip"].as_str() {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{ "ip": ip }]);
    }
    if let Some(ip) = p["host_ip"].as_str() {
        status["hostIP"] = json!(ip);
        status["hostIPs"] = json!([{ "ip": ip }]);
    }
    if let Some(reason) = p["reason"].as_str() {
        status["reason"] = json!(reason);
    }
    if let Some(message) = p["message"].as_str() {
        status["message"] = json!(message);
    }
    let mut obj = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p["name"],
            "namespace": p["namespace"],
            "uid": p["uid"],
        },
        "status": status,
    });
    let created = secs(&p["created"]);
    if !created.is_null() {
        obj["metadata"]["creationTimestamp"] = created;
    }
    let mut annotations = serde_json::Map::new();
    if let Some(doc) = manifest_doc(p) {
        let meta = &doc["metadata"];
        if let Some(labels) = meta["labels"].as_object().filter(|l| !l.is_empty()) {
            obj["metadata"]["labels"] = json!(labels);
        }
        if let Some(a) = meta["annotations"].as_object() {
            annotations.extend(a.clone());
        }
        let mut spec = doc["spec"].clone();
        // On this node, as a static pod's nodeName is its kubelet's.
        if spec.is_object() && spec["nodeName"].is_null() {
            spec["nodeName"] = json!(node_name());
        }
        obj["spec"] = spec;
    }
    annotations.insert("podagent.io/source-file".into(), p["file"].clone());
    obj["metadata"]["annotations"] = Value::Object(annotations);
    obj
}

/// The node's name: its hostname.
pub fn node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The pod's document as its file has it now, when the file loads cleanly.
fn manifest_doc(p: &Value) -> Option<Value> {
    let file = p["file"].as_str()?;
    let bytes = std::fs::read(file).ok()?;
    let report = specs::load(file, &bytes, &crate::cli::validate::node_info_defaults());
    if report.has_errors() {
        return None;
    }
    let text = std::str::from_utf8(&bytes).ok()?;
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .filter_map(|d| serde_json::to_value(d).ok())
        .collect();
    let namespace = p["namespace"].as_str().unwrap_or("default");
    docs.into_iter().find(|d| {
        d["metadata"]["name"] == p["name"]
            && d["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
    })
}

/// kubectl's READY, STATUS and RESTARTS of a pod's record.
pub fn pod_columns(p: &Value) -> (String, String, u64) {
    let cs = p["containers"].as_array().cloned().unwrap_or_default();
    // kubectl counts the sidecars with the app containers.
    let sidecars: Vec<Value> = p["init_containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["sidecar"] == true)
        .cloned()
        .collect();
    let ready = cs
        .iter()
        .chain(&sidecars)
        .filter(|c| c["ready"] == true)
        .count();
    let total = cs.len() + sidecars.len();
    let restarts: u64 = cs
        .iter()
        .map(|c| c["restart_count"].as_u64().unwrap_or(0))
        .sum();
    // kubectl's rule: a pod-level reason (Init:, Terminating), else the first
    // container that is not running, else the phase.
    let status = p["reason"]
        .as_str()
        .or_else(|| {
            cs.iter()
                .map(|c| c["state"].as_str().unwrap_or("?"))
                .find(|s| *s != "Running")
        })
        .unwrap_or_else(|| p["phase"].as_str().unwrap_or("?"))
        .to_string();
    (format!("{ready}/{total}"), status, restarts)
}

/// One record as a `v1 Event`: its object a Pod (with the container as
/// `fieldPath`), or, for a manifest's problem, the file.
/// `uid` is the pod's, when it is known. Its name is the record's `id`
/// (stable across agent restarts), else `index` (within one list).
pub fn event_object(e: &Value, index: usize, uid: Option<&str>) -> Value {
    let object = e["object"].as_str().unwrap_or("");
    let (namespace, name) = object.split_once('/').unwrap_or(("default", object));
    let mut involved = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": namespace,
        "name": name,
    });
    if let Some(c) = e["container"].as_str() {
        involved["fieldPath"] = json!(format!("spec.containers{{{c}}}"));
    }
    if let Some(uid) = uid {
        involved["uid"] = json!(uid);
    }
    let id = e["id"]
        .as_u64()
        .filter(|id| *id > 0)
        .unwrap_or(index as u64);
    let first = crate::status::seconds(e["first_time"].as_str().unwrap_or(""));
    let last = crate::status::seconds(e["time"].as_str().unwrap_or(""));
    let mut obj = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            // Unique, as the API server's names are.
            "name": format!("{name}.{id:x}"),
            "namespace": namespace,
            "creationTimestamp": first,
        },
        "involvedObject": involved,
        "reason": e["reason"],
        "message": e["message"],
        "type": e["kind"],
        "count": e["count"],
        "firstTimestamp": first,
        "lastTimestamp": last,
        "source": { "component": "podagent", "host": node_name() },
        "reportingComponent": "podagent",
    });
    if let Some(rv) = e["rv"].as_u64().filter(|rv| *rv > 0) {
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    }
    obj
}
