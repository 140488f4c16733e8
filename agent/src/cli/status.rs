//! `podctl status` (alias `podctl get pods`): one row a pod, as `kubectl get
//! pods -o wide`, from the agent's API.

use std::io::Write;

use super::{Api, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `pods` (for `podctl get pods`); nothing else is listed.
    #[arg(value_parser = ["pods", "pod", "po"])]
    pub resource: Option<String>,
    #[arg(short, long, value_enum, default_value_t = super::validate::Format::Text)]
    pub output: super::validate::Format,
    #[command(flatten)]
    pub api: Api,
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let v = match args.api.get_json("/v1/status") {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(err, "podctl status: {e}");
            return Outcome::Invalid;
        }
    };
    if args.output == super::validate::Format::Json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        );
        return Outcome::Ok;
    }
    let _ = writeln!(
        out,
        "{:<24} {:<6} {:<18} {:<9} {:<16} FILE",
        "NAME", "READY", "STATUS", "RESTARTS", "IP"
    );
    for p in v["pods"].as_array().into_iter().flatten() {
        let cs = p["containers"].as_array().cloned().unwrap_or_default();
        let ready = cs.iter().filter(|c| c["ready"] == true).count();
        let restarts: u64 = cs
            .iter()
            .map(|c| c["restart_count"].as_u64().unwrap_or(0))
            .sum();
        // kubectl's rule: an init status, else the first container that is
        // not running, else the phase.
        let status = p["reason"]
            .as_str()
            .or_else(|| {
                cs.iter()
                    .map(|c| c["state"].as_str().unwrap_or("?"))
                    .find(|s| *s != "Running")
            })
            .unwrap_or_else(|| p["phase"].as_str().unwrap_or("?"))
            .to_string();
        let _ = writeln!(
            out,
            "{:<24} {:<6} {:<18} {:<9} {:<16} {}",
            p["name"].as_str().unwrap_or("?"),
            format!("{ready}/{}", cs.len()),
            status,
            restarts,
            p["ip"].as_str().unwrap_or("<none>"),
            p["file"].as_str().unwrap_or("")
        );
    }
    for line in v["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(v["conflicts"].as_array().into_iter().flatten())
    {
        let _ = writeln!(out, "{}", line.as_str().unwrap_or(""));
    }
    Outcome::Ok
}
