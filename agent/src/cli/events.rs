//! `podctl events`: the agent's event ring, oldest first, as `kubectl get
//! events` shows it; `-o json|yaml` a list of `v1 Event`s as the API server
//! serves them, `-o raw` podagent's own records.

use std::io::Write;

use super::{Api, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    /// A `v1 List` of `v1 Event`s.
    Json,
    Yaml,
    /// The agent's own records.
    Raw,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this pod's events (`name` or `namespace/name`).
    pub pod: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    #[command(flatten)]
    pub api: Api,
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let v = match args.api.get_json("/v1/events") {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(err, "podctl events: {e}");
            return Outcome::Invalid;
        }
    };
    let wanted = args.pod.as_ref().map(|p| {
        if p.contains('/') {
            p.clone()
        } else {
            format!("default/{p}")
        }
    });
    let events: Vec<&serde_json::Value> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| wanted.as_ref().is_none_or(|w| e["object"] == w.as_str()))
        .collect();
    match args.output {
        Format::Raw => {
            let text = serde_json::to_string_pretty(&events).unwrap_or_default();
            let _ = writeln!(out, "{text}");
            return Outcome::Ok;
        }
        Format::Json | Format::Yaml => {
            let items: Vec<serde_json::Value> = events
                .iter()
                .enumerate()
                .map(|(i, e)| crate::kube::objects::event_object(e, i, None))
                .collect();
            let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items });
            let text = if args.output == Format::Json {
                serde_json::to_string_pretty(&list).unwrap_or_default()
            } else {
                crate::kube::objects::quote_times(&serde_yaml::to_string(&list).unwrap_or_default())
            };
            let _ = writeln!(out, "{}", text.trim_end());
            return Outcome::Ok;
        }
        Format::Text => {}
    }
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:<22} {:<36} {:>5}  MESSAGE",
        "LAST SEEN", "TYPE", "REASON", "OBJECT", "COUNT"
    );
    for e in events {
        let object = match e["container"].as_str() {
            Some(c) => format!("{}:{c}", e["object"].as_str().unwrap_or("")),
            None => e["object"].as_str().unwrap_or("").to_string(),
        };
        // Seconds precision is enough for a person.
        let time = e["time"].as_str().unwrap_or("");
        let time = time.split('.').next().unwrap_or(time);
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<22} {:<36} {:>5}  {}",
            time,
            e["kind"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or(""),
            object,
            e["count"],
            e["message"].as_str().unwrap_or("")
        );
    }
    Outcome::Ok
}
