//! `podctl validate FILE|DIR...`: offline, no root, no agent.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use specs::diag::{Diagnostic, Severity};
use specs::plan::{ContainerPlan, PodPlan};
use specs::NodeInfo;

use super::Outcome;
use crate::node;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files, or directories whose *.yaml, *.yml and *.json files are read
    /// (not recursively, hidden files skipped), as the agent reads its pods dir.
    #[arg(required = true, value_name = "FILE|DIR")]
    pub paths: Vec<PathBuf>,
    /// Show the resolved numbers of every container.
    #[arg(short, long)]
    pub verbose: bool,
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Node memory for the Burstable oom_score_adj, in bytes; read from
    /// /proc/meminfo when not given.
    #[arg(long, value_name = "BYTES")]
    pub node_memory: Option<u64>,
    /// The agent's policy, by the options `podagent run` takes.
    #[command(flatten)]
    pub policy: node::Policy,
    #[command(flatten)]
    pub profiles: Profiles,
}

/// Where `Localhost` seccomp profiles are: the agent's root dir's
/// `seccomp/`, as `podagent run --root-dir` has it.
#[derive(Debug, Clone, clap::Args)]
pub struct Profiles {
    /// The agent's root dir (its `seccomp/` holds the Localhost profiles).
    #[arg(long, default_value = "/var/lib/podagent")]
    pub root_dir: PathBuf,
    /// The profiles' directory itself, when not under the root dir.
    #[arg(long)]
    pub seccomp_dir: Option<PathBuf>,
}

impl Profiles {
    pub fn dir(&self) -> PathBuf {
        self.seccomp_dir
            .clone()
            .unwrap_or_else(|| node::seccomp_dir(&self.root_dir))
    }
}

/// The manifest files named by `paths`, in the order the agent would read
/// them; a path that does not exist is a usage error.
pub fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.is_file() && crate::watch::is_manifest_name(f))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// What `podctl` resolves plans against when it is not told the agent's
/// policy: this node, with the agent's default policy and seccomp dir.
pub fn node_info_defaults() -> NodeInfo {
    node::Policy::default().node_info(Path::new(node::DEFAULT_SECCOMP_DIR))
}

fn node_info(args: &Args) -> NodeInfo {
    let read = args.policy.node_info(&args.profiles.dir());
    NodeInfo {
        memory_bytes: args.node_memory.unwrap_or(read.memory_bytes),
        ..read
    }
}

#[derive(Debug, Serialize)]
struct FileResult {
    file: String,
    diagnostics: Vec<Diagnostic>,
    pods: Vec<PodPlan>,
}

#[derive(Debug, Serialize)]
struct Report {
    valid: bool,
    errors: usize,
    warnings: usize,
    files: Vec<FileResult>,
}

/// Validates every file; a pod name defined by two files is an error on the
/// later one (by file order), as the agent would refuse it.
fn validate(files: &[PathBuf], node: &NodeInfo) -> Report {
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    let mut results = Vec::new();
    for f in files {
        let name = f.display().to_string();
        let mut result = match std::fs::read(f) {
            Ok(bytes) => {
                let r = specs::load(&name, &bytes, node);
                FileResult {
                    file: name.clone(),
                    diagnostics: r.diagnostics,
                    pods: r.pods,
                }
            }
            Err(e) => FileResult {
                file: name.clone(),
                diagnostics: vec![Diagnostic {
                    severity: Severity::Error,
                    file: name.clone(),
                    line: None,
                    column: None,
                    path: String::new(),
                    message: format!("cannot read: {e}"),
                }],
                pods: Vec::new(),
            },
        };
        result.pods.retain(|p| {
            let key = format!("{}/{}", p.namespace, p.name);
            match owners.get(&key) {
                Some(first) => {
                    result.diagnostics.push(Diagnostic {
                        severity: Severity::Error,
                        file: name.clone(),
                        line: None,
                        column: None,
                        path: "metadata.name".into(),
                        message: format!("pod {key:?} is already defined by {first}: the first file by name wins"),
                    });
                    false
                }
                None => {
                    owners.insert(key, name.clone());
                    true
                }
            }
        });
        results.push(result);
    }
    let count = |s: Severity| {
        results
            .iter()
            .flat_map(|r| &r.diagnostics)
            .filter(|d| d.severity == s)
            .count()
    };
    let errors = count(Severity::Error);
    Report {
        valid: errors == 0,
        errors,
        warnings: count(Severity::Warning),
        files: results,
    }
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let files = match manifest_files(&args.paths) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(err, "podctl validate: {e}");
            return Outcome::Usage;
        }
    };
    let report = validate(&files, &node_info(args));
    let written = match args.output {
        Format::Json => serde_json::to_writer_pretty(&mut *out, &report)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(out)),
        Format::Text => print_text(&report, args.verbose, out),
    };
    if let Err(e) = written {
        let _ = writeln!(err, "podctl validate: writing output: {e}");
        return Outcome::Invalid;
    }
    if report.valid {
        Outcome::Ok
    } else {
        Outcome::Invalid
    }
}

fn print_text(report: &Report, verbose: bool, out: &mut dyn Write) -> std::io::Result<()> {
    for f in &report.files {
        for d in &f.diagnostics {
            writeln!(out, "{d}")?;
        }
        if verbose {
            for p in &f.pods {
                print_pod(f.file.as_str(), p, out)?;
            }
        }
    }
    let pods: usize = report.files.iter().map(|f| f.pods.len()).sum();
    writeln!(
        out,
        "{} file(s), {pods} valid pod(s), {} error(s), {} warning(s)",
        report.files.len(),
        report.errors,
        report.warnings
    )
}

fn print_pod(file: &str, p: &PodPlan, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{file}: pod {}/{}: qos {:?}, restart {:?}, hostname {}, pids limit {}, hash {}",
        p.namespace,
        p.name,
        p.qos_class,
        p.restart_policy,
        p.hostname,
        p.pod_resources.pids_limit,
        &p.hash[..12]
    )?;
    let quota = |q: Option<u64>| q.map_or("max".to_string(), |q| q.to_string());
    writeln!(
        out,
        "  pod cgroup: cpu.shares {}, cfs quota {} / period {}, memory limit {}",
        p.pod_resources.cpu_shares,
        quota(p.pod_resources.cfs_quota_us),
        p.pod_resources.cfs_period_us,
        p.pod_resources
            .memory_limit_bytes
            .map_or("max".into(), |m| m.to_string())
    )?;
    for (kind, c) in p
        .init_containers
        .iter()
        .map(|c| ("init container", c))
        .chain(p.containers.iter().map(|c| ("container", c)))
    {
        print_container(kind, c, out)?;
    }
    Ok(())
}

fn print_container(kind: &str, c: &ContainerPlan, out: &mut dyn Write) -> std::io::Result<()> {
    let r = &c.resources;
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    writeln!(out, "  {kind} {}: image {}", c.name, c.image)?;
    writeln!(
        out,
        "    cpu: request {}m, limit {}, shares {}, weight {}, cfs quota {} / period {} (cpu.max \"{} {}\")",
        r.cpu_request_milli,
        r.cpu_limit_milli.map_or("-".into(), |l| format!("{l}m")),
        r.cpu_shares,
        r.cpu_weight,
        opt(r.cfs_quota_us),
        r.cfs_period_us,
        r.cfs_quota_us.map_or("max".into(), |q| q.to_string()),
        r.cfs_period_us
    )?;
    writeln!(
        out,
        "    memory: request {}, limit {}, swap {}, oom_score_adj {}, oom kill disabled {}",
        r.memory_request_bytes,
        opt(r.memory_limit_bytes),
        opt(r.swap_limit_bytes),
        r.oom_score_adj,
        r.oom_kill_disable
    )?;
    if !r.io.is_empty() {
        let devices: Vec<String> =
            r.io.devices
                .iter()
                .map(|d| {
                    let limits: Vec<String> = d
                        .limits()
                        .iter()
                        .filter_map(|(k, v)| Some(format!("{k}={}", (*v)?)))
                        .collect();
                    format!("{} ({}:{}) {}", d.path, d.major, d.minor, limits.join(" "))
                })
                .collect();
        writeln!(
            out,
            "    io: weight {}, devices: {}",
            r.io.weight.map_or("-".into(), |w| w.to_string()),
            if devices.is_empty() {
                "-".into()
            } else {
                devices.join("; ")
            }
        )?;
    }
    writeln!(
        out,
        "    cpuset: {}, capabilities: {}, no_new_privs {}, seccomp {:?}",
        r.cpuset.as_ref().map_or("-".into(), |s| s.to_string()),
        c.security.capabilities.join(","),
        c.security.no_new_privs,
        c.security.seccomp
    )
}
