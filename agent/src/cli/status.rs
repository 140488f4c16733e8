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
    /// kubectl's table: NAME READY STATUS RESTARTS AGE.
    Table,
    /// kubectl's wide table (IP, NODE, ...) and the pod's FILE.
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
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Keep watching: print a row whenever a pod's row changes.
    #[arg(short, long)]
    pub watch: bool,
    #[command(flatten)]
    pub api: Api,
}

/// Each pod's cells, by `namespace/name`.
fn rows(v: &Value, wide: bool) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for p in v["pods"].as_array().into_iter().flatten() {
        let mut cells = crate::kube::pod_row(p);
        if wide {
            cells.push(p["file"].as_str().unwrap_or("").to_string());
        } else {
            cells.truncate(5);
        }
        out.insert(
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or("")
            ),
            cells,
        );
    }
    out
}

fn header(wide: bool) -> Vec<String> {
    let all = [
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
        "NOMINATED NODE",
        "READINESS GATES",
        "FILE",
    ];
    all[..if wide { all.len() } else { 5 }]
        .iter()
        .map(|h| h.to_string())
        .collect()
}

/// Cells padded to `widths` with three spaces between, as kubectl's
/// tabwriter prints them.
fn line(cells: &[String], widths: &[usize]) -> String {
    let mut s = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i + 1 == cells.len() {
            s.push_str(c);
        } else {
            s.push_str(&format!(
                "{c:<w$}   ",
                w = widths.get(i).copied().unwrap_or(0)
            ));
        }
    }
    s
}

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
        Format::Table | Format::Wide => {}
    }
    let wide = args.output == Format::Wide;
    let head = header(wide);
    let mut shown = rows(&v, wide);
    let mut widths: Vec<usize> = head.iter().map(String::len).collect();
    for cells in shown.values() {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.len());
        }
    }
    let _ = writeln!(out, "{}", line(&head, &widths));
    for cells in shown.values() {
        let _ = writeln!(out, "{}", line(cells, &widths));
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
        let now = rows(&v, wide);
        for (k, cells) in &now {
            // A row whose cells changed, ages aside (the pod's, and the
            // last restart's in RESTARTS).
            let bare = |c: &str| c.split(" (").next().unwrap_or("").to_string();
            let changed = shown.get(k).is_none_or(|old| {
                old.iter()
                    .zip(cells)
                    .enumerate()
                    .any(|(i, (a, b))| i != 4 && bare(a) != bare(b))
            });
            if changed {
                let _ = writeln!(out, "{}", line(cells, &widths));
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
