//! `podctl status` (alias `podctl get pods`): one row a pod, as `kubectl get
//! pods -o wide`, from the agent's API; `-o json` and `-o yaml` give a `List`
//! of Kubernetes `Pod` objects, `-o raw` the agent's own record, `-w` keeps
//! watching and prints each row that changes.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{json, Value};

use super::{Api, Outcome};
use crate::kube::objects::{pod_object, quote_times};

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
    let (ready, status, restarts) = crate::kube::objects::pod_columns(p);
    format!(
        "{:<24} {:<6} {:<18} {:<9} {:<16} {}",
        p["name"].as_str().unwrap_or("?"),
        ready,
        status,
        restarts,
        p["ip"].as_str().unwrap_or("<none>"),
        p["file"].as_str().unwrap_or("")
    )
}
