//! `podctl logs POD [-c NAME] [--tail N] [-f] [--previous]`: a container's
//! output, read from the CRI log the shim writes.

use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Outcome;

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
    #[arg(long, default_value = "/run/podagent")]
    pub state_dir: PathBuf,
}

/// The content of CRI log records, partial records joined: what the
/// container wrote, line by line.
pub fn lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut partial = String::new();
    for rec in text.lines() {
        let mut f = rec.splitn(4, ' ');
        let (_ts, _stream, tag, content) = (f.next(), f.next(), f.next(), f.next().unwrap_or(""));
        partial.push_str(content);
        if tag != Some("P") {
            out.push(std::mem::take(&mut partial));
        }
    }
    if !partial.is_empty() {
        out.push(partial);
    }
    out
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let dir = match super::locate::container_dir(
        &args.state_dir,
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
        follow(&file, text.len() as u64, out);
    }
    Outcome::Ok
}

/// Prints records appended after `offset` until the container has exited
/// (its exit record exists) and everything is printed.
pub fn follow(file: &Path, mut offset: u64, out: &mut dyn Write) {
    let state = file.parent().map(|d| d.join("state")).unwrap_or_default();
    loop {
        let exited = state.join("exit.json").exists();
        if let Ok(mut f) = std::fs::File::open(file) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < offset {
                offset = 0; // rotated
            }
            if f.seek(std::io::SeekFrom::Start(offset)).is_ok() {
                let mut rest = String::new();
                for line in std::io::BufReader::new(&mut f)
                    .lines()
                    .map_while(Result::ok)
                {
                    offset += line.len() as u64 + 1;
                    rest.push_str(&line);
                    rest.push('\n');
                }
                for l in lines(&rest) {
                    if writeln!(out, "{l}").is_err() {
                        return;
                    }
                }
                let _ = out.flush();
            }
        }
        if exited {
            return;
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        crate::runtime::wait_for_change(dir, Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn partial_records_are_joined() {
        let text = "2026-01-01T00:00:00.000000000Z stdout P abc\n2026-01-01T00:00:00.000000001Z stdout F def\n2026-01-01T00:00:00.000000002Z stderr F oops\n";
        assert_eq!(super::lines(text), ["abcdef", "oops"]);
    }
}
