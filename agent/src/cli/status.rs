//! `podctl status` (alias `podctl get pods`): one row a pod, as `kubectl get
//! pods -o wide`, from the agent's API; `-o json` and `-o yaml` give a `List`
//! of Kubernetes `Pod` objects, `-o raw` the agent's own record, `-w` keeps
//! watching and prints each row that changes.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{Api, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The table.
    Wide,
    /// Kubernetes' Pod shape.
    Json,
    Yaml,
    /// The agent's own status record.
    Raw,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `pods` (for `podctl get pods`); nothing else is listed.
    #[arg(value_parser = ["pods", "pod", "po"])]
    pub resource: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Format::Wide)]
    pub output: Format,
    /// Keep watching: print a row whenever a pod's row changes.
    #[arg(short, long)]
    pub watch: bool,
    #[command(flatten)]
    pub api: Api,
}

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
            "annotations": { "podagent.io/source-file": p["file"] },
        },
        "status": status,
    });
    let created = secs(&p["created"]);
    if !created.is_null() {
        obj["metadata"]["creationTimestamp"] = created;
    }
    if let Some(spec) = manifest_spec(p) {
        obj["spec"] = spec;
    }
    obj
}

/// The pod's `spec` as its file has it now, when the file loads cleanly.
fn manifest_spec(p: &Value) -> Option<Value> {
    let file = p["file"].as_str()?;
    let bytes = std::fs::read(file).ok()?;
    let report = specs::load(file, &bytes, &super::validate::node_info_defaults());
    if report.has_errors() {
        return None;
    }
    let text = std::str::from_utf8(&bytes).ok()?;
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .filter_map(|d| serde_json::to_value(d).ok())
        .collect();
    let namespace = p["namespace"].as_str().unwrap_or("default");
    docs.into_iter()
        .find(|d| {
            d["metadata"]["name"] == p["name"]
                && d["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
        })
        .map(|d| d["spec"].clone())
}

fn rows(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in v["pods"].as_array().into_iter().flatten() {
        out.insert(
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or("")
            ),
            row(p),
        );
    }
    out
}

const HEADER: &str =
    "NAME                     READY  STATUS             RESTARTS  IP               FILE";

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let v = match args.api.get_json("/v1/status") {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(err, "podctl status: {e}");
            return Outcome::Invalid;
        }
    };
    match args.output {
        Format::Raw => {
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            );
            return Outcome::Ok;
        }
        Format::Json | Format::Yaml => {
            let items: Vec<Value> = v["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .map(pod_object)
                .collect();
            let list = json!({ "apiVersion": "v1", "kind": "List", "items": items });
            let text = if args.output == Format::Json {
                serde_json::to_string_pretty(&list).unwrap_or_default()
            } else {
                quote_times(&serde_yaml::to_string(&list).unwrap_or_default())
            };
            let _ = writeln!(out, "{}", text.trim_end());
            return Outcome::Ok;
        }
        Format::Wide => {}
    }
    let _ = writeln!(out, "{HEADER}");
    let mut shown = rows(&v);
    for line in shown.values() {
        let _ = writeln!(out, "{line}");
    }
    for line in problems(&v) {
        let _ = writeln!(out, "{line}");
    }
    if !args.watch {
        return Outcome::Ok;
    }
    let _ = out.flush();
    loop {
        let _ = nix::poll::poll(&mut [], nix::poll::PollTimeout::from(500u16));
        let v = match args.api.get_json("/v1/status") {
            Ok(v) => v,
            Err(e) => {
                let _ = writeln!(err, "podctl status: {e}");
                return Outcome::Invalid;
            }
        };
        let now = rows(&v);
        for (k, line) in &now {
            if shown.get(k) != Some(line) {
                let _ = writeln!(out, "{line}");
            }
        }
        for k in shown.keys().filter(|k| !now.contains_key(*k)) {
            let name = k.split_once('/').map_or(k.as_str(), |(_, n)| n);
            let _ = writeln!(out, "{name:<24} (deleted)");
        }
        let _ = out.flush();
        shown = now;
    }
}

fn problems(v: &Value) -> Vec<String> {
    v["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(v["conflicts"].as_array().into_iter().flatten())
        .map(|l| l.as_str().unwrap_or("").to_string())
        .collect()
}

/// One pod's row.
fn row(p: &Value) -> String {
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
    format!(
        "{:<24} {:<6} {:<18} {:<9} {:<16} {}",
        p["name"].as_str().unwrap_or("?"),
        format!("{ready}/{total}"),
        status,
        restarts,
        p["ip"].as_str().unwrap_or("<none>"),
        p["file"].as_str().unwrap_or("")
    )
}
