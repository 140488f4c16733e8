//! Cluster-only fields, validated as the API server validates them before
//! they are noted and ignored: a file podagent accepts is one a cluster
//! accepts. They stay raw values in the manifest types; the checks walk
//! them.

use serde_yaml::Value;

use crate::diag::{push_index, push_key, Issues};
use crate::manifest::PodSpec;
use crate::names;
use crate::quantity::Quantity;

/// The API server's "Unsupported value" message.
fn unsupported(v: &str, supported: &[&str]) -> String {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "Unsupported value: {v:?}: supported values: {}",
        list.join(", ")
    )
}

fn str_of(v: &Value) -> Option<&str> {
    v.as_str()
}

/// `nodeSelector`: label keys and values.
fn label_map(path: &str, v: &Value, issues: &mut Issues) {
    let Some(m) = v.as_mapping() else {
        issues.error(path, "must be a map of label keys to values");
        return;
    };
    for (k, val) in m {
        let key = k.as_str().unwrap_or("");
        if let Err(e) = names::qualified_key(key) {
            issues.error(push_key(path, key), format!("{key:?}: Invalid value: {e}"));
        }
        let value = val.as_str().map(str::to_string).unwrap_or_else(|| {
            serde_yaml::to_string(val)
                .unwrap_or_default()
                .trim()
                .to_string()
        });
        if let Err(e) = names::label_value(&value) {
            issues.error(
                push_key(path, key),
                format!("{value:?}: Invalid value: {e}"),
            );
        }
    }
}

/// The `matchExpressions` of a node selector term or a label selector.
fn match_expressions(path: &str, v: &Value, operators: &[&str], issues: &mut Issues) {
    for (i, e) in v.as_sequence().into_iter().flatten().enumerate() {
        let p = push_index(path, i);
        let key = e.get("key").and_then(str_of).unwrap_or("");
        if let Err(err) = names::qualified_key(key) {
            issues.error(
                push_key(&p, "key"),
                format!("{key:?}: Invalid value: {err}"),
            );
        }
        let op = e.get("operator").and_then(str_of).unwrap_or("");
        if !operators.contains(&op) {
            issues.error(push_key(&p, "operator"), unsupported(op, operators));
            continue;
        }
        let values = e
            .get("values")
            .and_then(Value::as_sequence)
            .map_or(0, Vec::len);
        let needs_values = matches!(op, "In" | "NotIn");
        if needs_values && values == 0 {
            issues.error(
                push_key(&p, "values"),
                "Required value: must be specified when `operator` is 'In' or 'NotIn'",
            );
        }
        if matches!(op, "Exists" | "DoesNotExist") && values > 0 {
            issues.error(
                push_key(&p, "values"),
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            );
        }
    }
}

const NODE_OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"];
const LABEL_OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist"];

/// Every `matchExpressions` under `v`: a node affinity's take the node
/// selector's operators, a pod (anti-)affinity's the label selector's.
fn selectors(path: &str, v: &Value, operators: &[&str], issues: &mut Issues) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                let key = k.as_str().unwrap_or("");
                let p = push_key(path, key);
                if key == "matchExpressions" {
                    match_expressions(&p, child, operators, issues);
                } else {
                    selectors(&p, child, operators, issues);
                }
            }
        }
        Value::Sequence(s) => {
            for (i, child) in s.iter().enumerate() {
                selectors(&push_index(path, i), child, operators, issues);
            }
        }
        _ => {}
    }
}

fn affinity(path: &str, v: &Value, issues: &mut Issues) {
    for (kind, ops) in [
        ("nodeAffinity", NODE_OPERATORS),
        ("podAffinity", LABEL_OPERATORS),
        ("podAntiAffinity", LABEL_OPERATORS),
    ] {
        if let Some(a) = v.get(kind) {
            selectors(&push_key(path, kind), a, ops, issues);
        }
    }
}

fn tolerations(path: &str, v: &Value, issues: &mut Issues) {
    for (i, t) in v.as_sequence().into_iter().flatten().enumerate() {
        let p = push_index(path, i);
        let key = t.get("key").and_then(str_of).unwrap_or("");
        if !key.is_empty() {
            if let Err(e) = names::qualified_key(key) {
                issues.error(push_key(&p, "key"), format!("{key:?}: Invalid value: {e}"));
            }
        }
        let op = t.get("operator").and_then(str_of).unwrap_or("Equal");
        if !["Equal", "Exists", ""].contains(&op) {
            issues.error(
                push_key(&p, "operator"),
                unsupported(op, &["Equal", "Exists"]),
            );
        }
        let value = t.get("value").and_then(str_of).unwrap_or("");
        if op == "Exists" && !value.is_empty() {
            issues.error(
                push_key(&p, "operator"),
                "Invalid value: value must be empty when `operator` is 'Exists'",
            );
        }
        if key.is_empty() && op != "Exists" {
            issues.error(
                push_key(&p, "operator"),
                "Invalid value: operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            );
        }
        let effect = t.get("effect").and_then(str_of).unwrap_or("");
        let effects = ["NoSchedule", "PreferNoSchedule", "NoExecute"];
        if !effect.is_empty() && !effects.contains(&effect) {
            issues.error(push_key(&p, "effect"), unsupported(effect, &effects));
        }
        if t.get("tolerationSeconds").is_some() && effect != "NoExecute" {
            issues.error(
                push_key(&p, "effect"),
                "Invalid value: effect must be 'NoExecute' when `tolerationSeconds` is set",
            );
        }
    }
}

fn topology_spread(path: &str, v: &Value, issues: &mut Issues) {
    for (i, c) in v.as_sequence().into_iter().flatten().enumerate() {
        let p = push_index(path, i);
        match c.get("maxSkew").and_then(Value::as_i64) {
            Some(n) if n > 0 => {}
            Some(n) => issues.error(
                push_key(&p, "maxSkew"),
                format!("Invalid value: {n}: must be greater than zero"),
            ),
            None => issues.error(push_key(&p, "maxSkew"), "Required value"),
        }
        if c.get("topologyKey")
            .and_then(str_of)
            .is_none_or(str::is_empty)
        {
            issues.error(
                push_key(&p, "topologyKey"),
                "Required value: can not be empty",
            );
        }
        let w = c.get("whenUnsatisfiable").and_then(str_of).unwrap_or("");
        let allowed = ["DoNotSchedule", "ScheduleAnyway"];
        if !allowed.contains(&w) {
            issues.error(push_key(&p, "whenUnsatisfiable"), unsupported(w, &allowed));
        }
        if let Some(s) = c.get("labelSelector") {
            selectors(&push_key(&p, "labelSelector"), s, LABEL_OPERATORS, issues);
        }
    }
}

fn overhead(path: &str, v: &Value, issues: &mut Issues) {
    for (k, q) in v.as_mapping().into_iter().flatten() {
        let name = k.as_str().unwrap_or("");
        let text = match q {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        match Quantity::parse(&text) {
            Ok(q) if !q.is_negative() => {}
            _ => issues.error(
                push_key(path, name),
                format!("{text:?}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
            ),
        }
    }
}

/// A name the API server checks as a DNS-1123 subdomain.
fn subdomain(path: &str, v: &Value, issues: &mut Issues) {
    let s = v.as_str().unwrap_or("");
    if let Err(e) = names::dns1123_subdomain(s) {
        issues.error(path, format!("{s:?}: Invalid value: {e}"));
    }
}

/// Checks every cluster-only field podagent notes and ignores.
pub fn validate(sp: &str, spec: &PodSpec, issues: &mut Issues) {
    let k = |key: &str| push_key(sp, key);
    if let Some(v) = &spec.node_selector {
        label_map(&k("nodeSelector"), v, issues);
    }
    if let Some(v) = &spec.affinity {
        affinity(&k("affinity"), v, issues);
    }
    if let Some(v) = &spec.tolerations {
        tolerations(&k("tolerations"), v, issues);
    }
    if let Some(v) = &spec.topology_spread_constraints {
        topology_spread(&k("topologySpreadConstraints"), v, issues);
    }
    if let Some(v) = &spec.overhead {
        overhead(&k("overhead"), v, issues);
    }
    for (field, v) in [
        ("serviceAccountName", &spec.service_account_name),
        ("serviceAccount", &spec.service_account),
        ("runtimeClassName", &spec.runtime_class_name),
    ] {
        if let Some(v) = v {
            subdomain(&k(field), v, issues);
        }
    }
}
