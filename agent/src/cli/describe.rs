//! `podctl describe POD`: the pod as the agent runs it (phase, conditions,
//! containers with their state, last exit and the numbers their cgroups
//! get) and its events.

use std::io::Write;

use super::{Api, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub pod: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub api: Api,
}

/// The resolved numbers of one container, as `podctl validate -v` shows
/// them.
fn limits(r: &specs::plan::ContainerResources) -> String {
    let quota = match r.cfs_quota_us {
        Some(q) => format!("{q}/{} us", r.cfs_period_us),
        None => "none".into(),
    };
    let memory = r
        .memory_limit_bytes
        .map_or("none".into(), |m| format!("{m} bytes"));
    let cpuset = r.cpuset.as_ref().map_or("any".into(), |c| c.to_string());
    format!(
        "cpu quota {quota}, shares {}, weight {}, cpuset {cpuset}, memory {memory}, \
         oom_score_adj {}{}",
        r.cpu_shares,
        r.cpu_weight,
        r.oom_score_adj,
        if r.oom_kill_disable {
            ", OOM killer disabled"
        } else {
            ""
        }
    )
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let (status, events) = match (
        args.api.get_json("/v1/status"),
        args.api.get_json("/v1/events"),
    ) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => {
            let _ = writeln!(err, "podctl describe: {e}");
            return Outcome::Invalid;
        }
    };
    let p = match crate::locate::find_pod(&status, &args.namespace, &args.pod) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(err, "podctl describe: {e}");
            return Outcome::Invalid;
        }
    };
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let file = s(&p["file"]);
    let _ = writeln!(out, "Name:         {}", s(&p["name"]));
    let _ = writeln!(out, "Namespace:    {}", s(&p["namespace"]));
    let _ = writeln!(out, "UID:          {}", s(&p["uid"]));
    let _ = writeln!(out, "File:         {file}");
    let _ = writeln!(out, "Created:      {}", s(&p["created"]));
    let phase = match p["reason"].as_str() {
        Some(r) => format!("{} ({r})", s(&p["phase"])),
        None => s(&p["phase"]),
    };
    let _ = writeln!(out, "Phase:        {phase}");
    let _ = writeln!(
        out,
        "IP:           {}",
        p["ip"].as_str().unwrap_or("<none>")
    );
    let conditions: Vec<String> = p["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{}={}", s(&c["type"]), s(&c["status"])))
        .collect();
    let _ = writeln!(out, "Conditions:   {}", conditions.join(" "));
    // The resolved numbers come from the file as it is now; when it has
    // errors the agent runs its last good version, which is not shown.
    let node = super::validate::node_info_defaults();
    let plan = std::fs::read(&file).ok().and_then(|b| {
        let r = specs::load(&file, &b, &node);
        if r.has_errors() {
            return None;
        }
        r.pods
            .into_iter()
            .find(|q| q.name.as_str() == args.pod && q.namespace == args.namespace)
    });
    match &plan {
        Some(plan) => {
            let _ = writeln!(out, "QoS Class:    {:?}", plan.qos_class);
            let _ = writeln!(out, "Restart:      {:?}", plan.restart_policy);
        }
        None => {
            let _ = writeln!(
                out,
                "Limits:       not shown: {file} does not load cleanly now (the agent runs its last good version)"
            );
        }
    }
    let _ = writeln!(out, "Containers:");
    for c in p["containers"].as_array().into_iter().flatten() {
        let name = s(&c["name"]);
        let _ = writeln!(out, "  {name}:");
        let cp = plan
            .as_ref()
            .and_then(|pl| pl.containers.iter().find(|x| x.name.as_str() == name));
        if let Some(cp) = cp {
            let _ = writeln!(out, "    Image:      {}", cp.image);
        }
        let _ = writeln!(out, "    State:      {}", s(&c["state"]));
        if let Some(next) = c["next_start"].as_str() {
            let _ = writeln!(out, "    Next try:   {next}");
        }
        let _ = writeln!(out, "    Ready:      {}", c["ready"]);
        let _ = writeln!(out, "    Restarts:   {}", c["restart_count"]);
        if let Some(reason) = c["reason"].as_str() {
            let _ = writeln!(
                out,
                "    Last exit:  {reason}, code {}{}",
                c["exit_code"],
                c["message"]
                    .as_str()
                    .map_or(String::new(), |m| format!(": {m}"))
            );
        }
        if let Some(cp) = cp {
            let _ = writeln!(out, "    Limits:     {}", limits(&cp.resources));
        }
    }
    let key = format!("{}/{}", args.namespace, args.pod);
    let _ = writeln!(out, "Events:");
    for e in events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["object"] == key.as_str())
    {
        let time = s(&e["time"]);
        let object = e["container"]
            .as_str()
            .map_or(String::new(), |c| format!("{c}: "));
        let _ = writeln!(
            out,
            "  {}  {:<8} {:<16} x{:<3} {object}{}",
            time.split('.').next().unwrap_or(&time),
            s(&e["kind"]),
            s(&e["reason"]),
            e["count"],
            s(&e["message"])
        );
    }
    Outcome::Ok
}
