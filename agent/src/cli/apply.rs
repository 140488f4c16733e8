//! `podctl apply -f FILE`, `podctl diff FILE` and `podctl delete POD`: the
//! pods directory is the API (DESIGN rule 2), so these validate and then
//! write, compare with or remove files there, atomically. What applying a
//! file would change is computed by the agent's own `reconcile::plan`
//! against the directory as it is, so `diff` says exactly what the agent
//! would do.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use specs::PodPlan;

use super::Outcome;
use crate::reconcile::{self, Action, ContainerState, PodState, Status};
use crate::watch::Sources;

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The manifest to install (its file name is kept in the pods dir).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    #[arg(long, default_value = "/etc/pods")]
    pub pods_dir: PathBuf,
    /// Read subdirectories of the pods dir too, as the agent's
    /// `--pods-dir-recursive` does.
    #[arg(long)]
    pub pods_dir_recursive: bool,
    /// Where symlinks may lead, as the agent's `--pods-dir-link-root`.
    #[arg(long)]
    pub pods_dir_link_root: Option<PathBuf>,
    /// The agent's policy, checked before anything is written.
    #[command(flatten)]
    pub policy: crate::node::Policy,
    #[command(flatten)]
    pub profiles: crate::cli::validate::Profiles,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    pub file: PathBuf,
    #[arg(long, default_value = "/etc/pods")]
    pub pods_dir: PathBuf,
    /// Read subdirectories of the pods dir too, as the agent's
    /// `--pods-dir-recursive` does.
    #[arg(long)]
    pub pods_dir_recursive: bool,
    /// Where symlinks may lead, as the agent's `--pods-dir-link-root`.
    #[arg(long)]
    pub pods_dir_link_root: Option<PathBuf>,
    /// The agent's policy, as `apply`'s.
    #[command(flatten)]
    pub policy: crate::node::Policy,
    #[command(flatten)]
    pub profiles: crate::cli::validate::Profiles,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    pub pod: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[arg(long, default_value = "/etc/pods")]
    pub pods_dir: PathBuf,
    /// Read subdirectories of the pods dir too, as the agent's
    /// `--pods-dir-recursive` does.
    #[arg(long)]
    pub pods_dir_recursive: bool,
    /// Where symlinks may lead, as the agent's `--pods-dir-link-root`.
    #[arg(long)]
    pub pods_dir_link_root: Option<PathBuf>,
}

/// One pod's change, as the agent would make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created,
    Recreated,
    Deleted,
    Restarted(String),
    Resized(String),
    /// Its downward API files rewritten in place.
    FilesRewritten,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Created => write!(f, "created"),
            Change::Recreated => write!(f, "recreated (pod-level fields changed)"),
            Change::Deleted => write!(f, "deleted"),
            Change::Restarted(c) => write!(f, "container {c} restarted (its spec changed)"),
            Change::Resized(c) => write!(f, "container {c} resized in place"),
            Change::FilesRewritten => write!(f, "downward API files rewritten in place"),
        }
    }
}

/// What going from the pods `now` to the pods `next` changes: the actions
/// `reconcile::plan` gives with every current container running.
pub fn changes(
    now: &BTreeMap<String, PodPlan>,
    next: &BTreeMap<String, PodPlan>,
) -> Vec<(String, Change)> {
    let t = Instant::now();
    let actual: reconcile::Actual = now
        .iter()
        .map(|(k, p)| {
            let containers = p
                .all_containers()
                .map(|c| {
                    let status = if p.init_containers.iter().any(|i| i.name == c.name) {
                        Status::Terminated {
                            exit_code: 0,
                            started: t,
                            finished: t,
                        }
                    } else {
                        Status::Running { since: t }
                    };
                    (c.name.to_string(), ContainerState::of(c, status, 0, 0))
                })
                .collect();
            (
                k.clone(),
                PodState {
                    uid: p.uid.clone(),
                    sandbox_hash: reconcile::sandbox_hash(p),
                    grace: std::time::Duration::from_secs(p.termination_grace_period_secs),
                    deadline_exceeded: false,
                    evicted: false,
                    files_hash: reconcile::files_hash(p),
                    containers,
                },
            )
        })
        .collect();
    let mut out: Vec<(String, Change)> = reconcile::plan(next, &actual, t)
        .actions
        .into_iter()
        .filter_map(|a| match a {
            Action::CreateSandbox { pod } => Some((pod, Change::Created)),
            Action::RecreatePod { pod } => Some((pod, Change::Recreated)),
            Action::DeletePod { pod, .. } => Some((pod, Change::Deleted)),
            Action::RestartContainer { pod, container } => {
                Some((pod, Change::Restarted(container)))
            }
            Action::ResizeContainer { pod, container, .. } => {
                Some((pod, Change::Resized(container)))
            }
            Action::RefreshFiles { pod } => Some((pod, Change::FilesRewritten)),
            // A new container alone changes the set of containers, which
            // recreates the pod; nothing else starts from a running state.
            // A sidecar stopped once its pod's app containers are done.
            Action::StartContainer { .. } | Action::StopContainer { .. } => None,
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn desired(s: &Sources) -> BTreeMap<String, PodPlan> {
    s.desired()
        .pods
        .into_iter()
        .map(|(k, (_, p))| (k, p))
        .collect()
}

/// Loads `file` as it would be in the pods dir; its errors are printed.
fn load_candidate(
    file: &Path,
    pods_dir: &Path,
    (recursive, link_root): (bool, Option<&Path>),
    node: &specs::NodeInfo,
    err: &mut dyn Write,
) -> Result<(PathBuf, Vec<u8>, Sources, Sources), Outcome> {
    let Some(name) = file.file_name() else {
        let _ = writeln!(err, "{}: not a file", file.display());
        return Err(Outcome::Usage);
    };
    let target = pods_dir.join(name);
    if !crate::watch::is_manifest_name(&target) {
        let _ = writeln!(
            err,
            "{}: the agent reads only *.yaml, *.yml and *.json files that are not hidden",
            file.display()
        );
        return Err(Outcome::Usage);
    }
    let bytes = std::fs::read(file).map_err(|e| {
        let _ = writeln!(err, "{}: {e}", file.display());
        Outcome::Usage
    })?;
    let report = specs::load(&file.display().to_string(), &bytes, node);
    for d in &report.diagnostics {
        let _ = writeln!(err, "{d}");
    }
    if report.has_errors() {
        return Err(Outcome::Invalid);
    }
    let read = || {
        let mut s = Sources::new(recursive).with_link_root(link_root.map(Path::to_path_buf));
        s.resync(pods_dir, node);
        s
    };
    let (now, mut next) = (read(), read());
    let entry = next.files.entry(target.clone()).or_default();
    entry.good = report.pods;
    entry.diagnostics.clear();
    Ok((target, bytes, now, next))
}

fn print_changes(out: &mut dyn Write, changes: &[(String, Change)]) {
    if changes.is_empty() {
        let _ = writeln!(out, "no change");
    }
    for (pod, c) in changes {
        let _ = writeln!(out, "pod/{pod}: {c}");
    }
}

pub fn diff(args: &DiffArgs, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let node = args.policy.node_info(&args.profiles.dir());
    match load_candidate(
        &args.file,
        &args.pods_dir,
        (args.pods_dir_recursive, args.pods_dir_link_root.as_deref()),
        &node,
        err,
    ) {
        Ok((_, _, now, next)) => {
            print_changes(out, &changes(&desired(&now), &desired(&next)));
            Outcome::Ok
        }
        Err(o) => o,
    }
}

/// Writes `bytes` to `target` atomically: a temp file in the same
/// directory (hidden, so the agent ignores it), synced, renamed.
fn write_atomically(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".podctl-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(target).map_err(|e| e.error)?;
    Ok(())
}

pub fn apply(args: &ApplyArgs, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let node = args.policy.node_info(&args.profiles.dir());
    let (target, bytes, now, next) = match load_candidate(
        &args.file,
        &args.pods_dir,
        (args.pods_dir_recursive, args.pods_dir_link_root.as_deref()),
        &node,
        err,
    ) {
        Ok(v) => v,
        Err(o) => return o,
    };
    let conflicts = next.desired().conflicts;
    if let Some(c) = conflicts
        .iter()
        .find(|c| !now.desired().conflicts.contains(c))
    {
        let _ = writeln!(err, "podctl apply: refused: {c}");
        return Outcome::Invalid;
    }
    let changes = changes(&desired(&now), &desired(&next));
    if std::fs::read(&target).ok().as_deref() == Some(&bytes[..]) {
        let _ = writeln!(out, "{}: unchanged", target.display());
        return Outcome::Ok;
    }
    if let Err(e) = write_atomically(&target, &bytes) {
        let _ = writeln!(err, "podctl apply: {}: {e}", target.display());
        return Outcome::Usage;
    }
    let _ = writeln!(out, "{}: written", target.display());
    print_changes(out, &changes);
    Outcome::Ok
}

pub fn delete(args: &DeleteArgs, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let node = crate::cli::validate::node_info_defaults();
    let mut s =
        Sources::new(args.pods_dir_recursive).with_link_root(args.pods_dir_link_root.clone());
    s.resync(&args.pods_dir, &node);
    let key = format!("{}/{}", args.namespace, args.pod);
    let Some((file, _)) = s.desired().pods.remove(&key) else {
        let names: Vec<String> = s.desired().pods.into_keys().collect();
        let close: Vec<&String> = names
            .iter()
            .filter(|n| crate::locate::edit_distance(n, &key) <= 2)
            .collect();
        let hint = if close.is_empty() {
            String::new()
        } else {
            format!(
                "; did you mean {}?",
                close
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(
            err,
            "podctl delete: pod {key} is not defined in {}{hint}",
            args.pods_dir.display()
        );
        return Outcome::Invalid;
    };
    let others: Vec<String> = s.files[&file]
        .good
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .filter(|k| *k != key)
        .collect();
    if !others.is_empty() {
        let _ = writeln!(
            err,
            "podctl delete: refused: {} also defines {}; edit the file instead",
            file.display(),
            others.join(", ")
        );
        return Outcome::Invalid;
    }
    if let Err(e) = std::fs::remove_file(&file) {
        let _ = writeln!(err, "podctl delete: {}: {e}", file.display());
        return Outcome::Usage;
    }
    let _ = writeln!(out, "pod/{key} deleted (removed {})", file.display());
    Outcome::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(yaml: &str) -> BTreeMap<String, PodPlan> {
        let r = specs::load("p.yaml", yaml.as_bytes(), &specs::NodeInfo::default());
        assert!(!r.has_errors(), "{:#?}", r.diagnostics);
        r.pods
            .into_iter()
            .map(|p| (format!("{}/{}", p.namespace, p.name), p))
            .collect()
    }

    const A: &str = "apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  containers:
  - {name: web, image: busybox, command: [httpd], resources: {limits: {cpu: 500m}}}
  - {name: side, image: busybox, command: [ship]}
";

    #[test]
    fn diff_says_what_the_agent_would_do() {
        let now = pods(A);
        assert_eq!(changes(&now, &now), []);
        assert_eq!(
            changes(&BTreeMap::new(), &now),
            [("default/a".to_string(), Change::Created)]
        );
        assert_eq!(
            changes(&now, &BTreeMap::new()),
            [("default/a".to_string(), Change::Deleted)]
        );
        assert_eq!(
            changes(&now, &pods(&A.replace("cpu: 500m", "cpu: 750m"))),
            [("default/a".to_string(), Change::Resized("web".into()))]
        );
        assert_eq!(
            changes(&now, &pods(&A.replace("[ship]", "[ship, -v]"))),
            [("default/a".to_string(), Change::Restarted("side".into()))]
        );
        assert_eq!(
            changes(
                &now,
                &pods(&A.replace("spec:\n", "spec:\n  hostname: other\n"))
            ),
            [("default/a".to_string(), Change::Recreated)]
        );
        // Comments and key order change nothing.
        let reordered = "# a comment\napiVersion: v1\nmetadata: {name: a}\nkind: Pod\nspec:\n  containers:\n  - {image: busybox, name: web, command: [httpd], resources: {limits: {cpu: 500m}}}\n  - {name: side, image: busybox, command: [ship]}\n";
        assert_eq!(changes(&now, &pods(reordered)), []);
    }
}
