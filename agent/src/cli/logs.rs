//! `podctl logs POD [-c NAME] [--tail N] [-f] [--previous]`: a container's
//! output, from the agent's `/v1/logs` route (streamed with `-f`); when the
//! agent is not running, read from the CRI log the shim writes in the state
//! dir, as the containers go on without it.

use std::io::Write;

use super::Outcome;
use crate::shim::logs::{follow, lines};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub pod: String,
    /// The container (needed when the pod has several).
    #[arg(short, long)]
    pub container: Option<String>,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
    /// Keep printing what the container writes.
    #[arg(short, long)]
    pub follow: bool,
    /// The previous run's output (before the last restart).
    #[arg(short, long)]
    pub previous: bool,
    #[command(flatten)]
    pub api: super::Api,
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    match from_agent(args, out) {
        Ok(()) => Outcome::Ok,
        Err(None) => {
            let _ = writeln!(
                err,
                "podctl logs: the agent is not running; reading {}",
                args.api.state_dir.display()
            );
            from_state_dir(args, out, err)
        }
        Err(Some(e)) => {
            let _ = writeln!(err, "podctl logs: {e}");
            Outcome::Invalid
        }
    }
}

/// Through the API: the pod and container resolved from `/v1/status`, the
/// output streamed from `/v1/logs`. `Err(None)` when the agent is not
/// running.
fn from_agent(args: &Args, out: &mut dyn Write) -> Result<(), Option<String>> {
    let socket = args.api.socket();
    let down = |e: crate::api::ClientError| match e {
        crate::api::ClientError::NotRunning(_) => None,
        e => Some(e.to_string()),
    };
    let (code, body) = crate::api::get(&socket, "/v1/status").map_err(down)?;
    let status: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| Some(format!("/v1/status: not JSON ({e}), code {code}")))?;
    let pod = crate::locate::find_pod(&status, &args.namespace, &args.pod)
        .map_err(|e| Some(e.to_string()))?;
    let container = crate::locate::pick_container(pod, args.container.as_deref())
        .map_err(|e| Some(e.to_string()))?;
    let mut path = format!(
        "/v1/logs/{}/{}/{container}?previous={}&follow={}",
        args.namespace, args.pod, args.previous, args.follow
    );
    if let Some(n) = args.tail {
        path.push_str(&format!("&tail={n}"));
    }
    // An error's body is JSON, kept whole; output is passed on as it comes.
    let mut refused = Vec::new();
    let code = crate::api::get_streamed(&socket, &path, &mut |code, chunk| {
        if code != 200 {
            refused.extend_from_slice(chunk);
            return true;
        }
        out.write_all(chunk).and_then(|()| out.flush()).is_ok()
    })
    .map_err(down)?;
    if code == 200 {
        return Ok(());
    }
    let why = serde_json::from_slice::<serde_json::Value>(&refused)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&refused).into_owned());
    Err(Some(why))
}

fn from_state_dir(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let dir = match crate::locate::container_dir(
        &args.api.state_dir,
        &args.namespace,
        &args.pod,
        args.container.as_deref(),
    ) {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(err, "podctl logs: {e}");
            return Outcome::Invalid;
        }
    };
    let file = dir.join(if args.previous {
        "previous.log"
    } else {
        "container.log"
    });
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            let what = if args.previous {
                "no previous run"
            } else {
                "no output yet"
            };
            let _ = writeln!(err, "podctl logs: {what} ({}: {e})", file.display());
            return Outcome::Invalid;
        }
    };
    let all = lines(&text);
    let start = args.tail.map_or(0, |n| all.len().saturating_sub(n));
    for l in &all[start..] {
        if writeln!(out, "{l}").is_err() {
            return Outcome::Ok;
        }
    }
    if args.follow && !args.previous {
        follow(&file, text.len() as u64, false, out, &|| false);
    }
    Outcome::Ok
}
