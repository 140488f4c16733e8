//! `podctl sync status|now`: where the agent's git sync stands (the
//! repository, the commit the ref names, the applied and the healthy
//! revisions, the one under trial and its deadline, the last error, the bad
//! commits), or a fetch asked for now.

use std::io::Write;

use super::{Api, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Where the sync stands.
    Status,
    /// Fetch now instead of at the next interval.
    Now,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    pub what: What,
    /// `-o json`: the agent's record.
    #[arg(short, long, value_parser = ["text", "json"], default_value = "text")]
    pub output: String,
    #[command(flatten)]
    pub api: Api,
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    if args.what == What::Now {
        let socket = args.api.socket();
        return match crate::api::post(&socket, "/v1/sync") {
            Ok((200, _)) => {
                let _ = writeln!(out, "fetch requested");
                Outcome::Ok
            }
            Ok((code, body)) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let _ = writeln!(
                    err,
                    "podctl sync: the agent answered {code}: {}",
                    v["error"].as_str().unwrap_or("")
                );
                Outcome::Invalid
            }
            Err(e) => {
                let _ = writeln!(err, "podctl sync: {e}");
                Outcome::Invalid
            }
        };
    }
    let v = match args.api.get_json("/v1/sync") {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(err, "podctl sync: {e}");
            return Outcome::Invalid;
        }
    };
    if args.output == "json" {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        );
        return Outcome::Ok;
    }
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    let path = match v["path"].as_str() {
        Some("") | None => "(top)".to_string(),
        Some(p) => p.to_string(),
    };
    let _ = writeln!(out, "Repository:  {} {} {path}", s("repository"), s("ref"));
    let _ = writeln!(out, "Node:        {}", s("node"));
    let _ = writeln!(
        out,
        "Remote:      {} (fetched {})",
        s("remote"),
        s("fetched_at")
    );
    let _ = writeln!(out, "Applied:     {}", s("applied"));
    let _ = writeln!(out, "Healthy:     {}", s("healthy"));
    match v["trial"].as_object() {
        Some(t) => {
            let changed: Vec<&str> = t["changed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str())
                .collect();
            let _ = writeln!(
                out,
                "On trial:    {} until {} ({})",
                t["commit"].as_str().unwrap_or("-"),
                t["deadline"].as_str().unwrap_or("-"),
                changed.join(", ")
            );
        }
        None => {
            let _ = writeln!(out, "On trial:    -");
        }
    }
    let _ = writeln!(out, "Last error:  {}", s("last_error"));
    let bad: Vec<&str> = v["bad_commits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str())
        .collect();
    let _ = writeln!(
        out,
        "Bad commits: {}",
        if bad.is_empty() {
            "-".to_string()
        } else {
            bad.join(" ")
        }
    );
    Outcome::Ok
}
