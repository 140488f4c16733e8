//! `podctl top`: CPU (cores, over half a second) and memory of each running
//! container, read from its cgroup by the agent.

use std::io::Write;
use std::time::{Duration, Instant};

use super::{Api, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub api: Api,
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let sample = || args.api.get_json("/v1/top");
    let first = match sample() {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(err, "podctl top: {e}");
            return Outcome::Invalid;
        }
    };
    let t0 = Instant::now();
    // A poll with no descriptors: half a second between the samples.
    let _ = nix::poll::poll(&mut [], nix::poll::PollTimeout::from(500u16));
    let second = match sample() {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(err, "podctl top: {e}");
            return Outcome::Invalid;
        }
    };
    let window = t0.elapsed().max(Duration::from_millis(1)).as_secs_f64();
    let _ = writeln!(
        out,
        "{:<24} {:<16} {:>10} {:>12} {:>6}",
        "POD", "CONTAINER", "CPU(m)", "MEMORY(Mi)", "PIDS"
    );
    for c in second.as_array().into_iter().flatten() {
        let same = |o: &&serde_json::Value| {
            o["namespace"] == c["namespace"]
                && o["pod"] == c["pod"]
                && o["container"] == c["container"]
        };
        let before = first
            .as_array()
            .and_then(|a| a.iter().find(same))
            .and_then(|o| o["cpu_usec"].as_u64());
        let now = c["cpu_usec"].as_u64().unwrap_or(0);
        let milli = before.map_or("-".to_string(), |b| {
            format!("{:.0}", now.saturating_sub(b) as f64 / 1e3 / window)
        });
        let _ = writeln!(
            out,
            "{:<24} {:<16} {:>10} {:>12.1} {:>6}",
            c["pod"].as_str().unwrap_or(""),
            c["container"].as_str().unwrap_or(""),
            milli,
            c["memory_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0,
            c["pids"]
        );
    }
    Outcome::Ok
}
