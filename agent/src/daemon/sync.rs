//! `--git-repo`: the loop's side of the git sync. A thread of its own
//! fetches the ref on an interval (and on `podctl sync now`), unpacks each
//! new commit (`crate::gitsync`) and hands it over the channel; the loop
//! checks the revision whole, applies it as one change (the synced files of
//! `Sources` replaced at once, so one plan sees the old revision or the new
//! one, never both or neither), and puts it on trial: every pod it changed
//! must be Ready (or Succeeded) within the health window, or the node goes
//! back to the last healthy revision and the commit is recorded as bad.
//!
//! A bad commit (refused, or unhealthy) is not tried again; a new commit on
//! the branch is (a force-push back to a healthy commit included). The
//! record (`<root-dir>/git/sync.json`: applied, healthy, bad) survives
//! restarts, so a node starts on its revision without the network; a trial
//! cut short by a restart starts again with a fresh window.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Agent;
use crate::events::Kind;
use crate::gitsync::{redact, Repo};
use crate::status::PodStatus;
use crate::watch::{FileState, Sources};

/// The events' object.
const OBJECT: &str = "git-sync";

/// The longest wait between tries after failed fetches.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What the sync thread found.
#[derive(Debug)]
enum Fetched {
    /// The commit the ref names, unpacked, or why it is refused (a fault
    /// of the commit's own).
    Commit {
        commit: String,
        dir: Result<PathBuf, String>,
    },
    Failed(String),
}

/// What survives a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    applied: Option<String>,
    healthy: Option<String>,
    bad: Vec<String>,
}

/// A revision applied and not yet proven healthy.
#[derive(Debug)]
struct Trial {
    commit: String,
    deadline: Instant,
    deadline_wall: String,
    /// The pods it made or changed (`namespace/name`).
    changed: Vec<String>,
    /// Since when all of them have been Ready, without a break.
    ready_since: Option<Instant>,
    /// How long they must stay Ready: a container Ready for a moment
    /// before it crashes does not make a revision healthy.
    stable: Duration,
    /// When it was applied.
    since: Instant,
}

#[derive(Debug)]
pub(super) struct SyncState {
    repo: Arc<Repo>,
    rx: Receiver<Fetched>,
    pub(super) now: Sender<()>,
    window: Duration,
    record: Record,
    trial: Option<Trial>,
    last_error: Option<String>,
    /// The commit the ref named at the last fetch, and when.
    remote: Option<String>,
    fetched_at: Option<String>,
    /// Since the agent started: fetches failed, commits refused, reverts.
    failures: u64,
    refused: u64,
    reverted: u64,
    /// The last healthy revision's rollout: from applied to every pod it
    /// changed Ready.
    rollout: Option<Duration>,
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

impl SyncState {
    fn record_path(&self) -> PathBuf {
        self.repo.dir.join("sync.json")
    }

    fn save(&self) {
        let path = self.record_path();
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string_pretty(&self.record).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
            eprintln!("podagent: {}: {e}", path.display());
        }
    }

    /// The status `podctl sync status` shows.
    fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "repository": redact(&self.repo.url),
            "ref": self.repo.git_ref,
            "path": self.repo.path,
            "node": self.repo.node_name,
            "remote": self.remote,
            "fetched_at": self.fetched_at,
            "applied": self.record.applied,
            "healthy": self.record.healthy,
            "trial": self.trial.as_ref().map(|t| serde_json::json!({
                "commit": t.commit,
                "deadline": t.deadline_wall,
                "changed": t.changed,
            })),
            "last_error": self.last_error,
            "bad_commits": self.record.bad,
            "failures": self.failures,
            "refused": self.refused,
            "reverted": self.reverted,
            "rollout_seconds": self.rollout.map(|d| d.as_secs_f64()),
        })
    }
}

/// Reads a revision's pods: every file, recursively. Its errors and
/// conflicts, if any, refuse it.
fn load(dir: &std::path::Path, node: &specs::NodeInfo) -> Result<Sources, Vec<String>> {
    let mut s = Sources::new(true);
    s.resync(dir, node);
    let mut errors: Vec<String> = s
        .files
        .values()
        .flat_map(|f| f.diagnostics.iter())
        .filter(|d| d.severity == specs::Severity::Error)
        .map(|d| d.to_string())
        .collect();
    errors.extend(s.desired().conflicts);
    if errors.is_empty() {
        Ok(s)
    } else {
        Err(errors)
    }
}

/// The fetch thread: fetch, unpack, hand over, wait (the interval, or less
/// after a failure, doubling), until the agent goes.
fn fetcher(
    repo: Arc<Repo>,
    interval: Duration,
    tx: Sender<Fetched>,
    now: Receiver<()>,
    wake: std::os::unix::net::UnixStream,
) {
    let mut backoff = Duration::from_secs(5);
    loop {
        // A refusal is the commit's; any other failure (git, the disk) is
        // the fetch's, tried again.
        let result = repo
            .fetch()
            .and_then(|commit| match repo.checkout(&commit) {
                Ok(dir) => Ok(Fetched::Commit {
                    commit,
                    dir: Ok(dir),
                }),
                Err(e @ crate::gitsync::SyncError::Refused { .. }) => Ok(Fetched::Commit {
                    commit,
                    dir: Err(crate::error_chain(&e)),
                }),
                Err(e) => Err(e),
            });
        let wait = match &result {
            Ok(_) => {
                backoff = Duration::from_secs(5);
                interval
            }
            Err(_) => {
                let w = backoff.min(interval).min(MAX_BACKOFF);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            }
        };
        let msg = result.unwrap_or_else(|e| Fetched::Failed(crate::error_chain(&e)));
        if tx.send(msg).is_err() {
            return;
        }
        // A full socket already wakes the loop.
        let _ = std::io::Write::write(&mut &wake, b"s");
        match now.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Agent {
    /// Starts following the repository: the recorded revision is read
    /// first (so the pods it defines are desired before adoption), then
    /// the fetch thread starts.
    pub(super) fn start_sync(&mut self) -> Result<(), super::DaemonError> {
        let Some(url) = self.args.git_repo.clone() else {
            return Ok(());
        };
        let node_name = self
            .args
            .node_name
            .clone()
            .unwrap_or_else(crate::kube::objects::node_name);
        let repo = Arc::new(Repo {
            url,
            git_ref: self.args.git_ref.clone(),
            path: self.args.git_path.clone().unwrap_or_default(),
            node_name,
            dir: self.args.root_dir.join("git"),
            allowed_signers: self.args.git_allowed_signers.clone(),
        });
        std::fs::create_dir_all(&repo.dir).map_err(|source| super::DaemonError::Dir {
            path: repo.dir.clone(),
            source,
        })?;
        let (tx, rx) = channel();
        let (now_tx, now_rx) = channel();
        let mut state = SyncState {
            repo: repo.clone(),
            rx,
            now: now_tx,
            window: Duration::from_secs(self.args.health_window),
            record: Record::default(),
            trial: None,
            last_error: None,
            remote: None,
            fetched_at: None,
            failures: 0,
            refused: 0,
            reverted: 0,
            rollout: None,
        };
        if let Ok(text) = std::fs::read_to_string(state.record_path()) {
            match serde_json::from_str::<Record>(&text) {
                Ok(r) => state.record = r,
                Err(e) => eprintln!(
                    "podagent: {}: {e}: the sync starts afresh",
                    state.record_path().display()
                ),
            }
        }
        if let Some(commit) = state.record.applied.clone() {
            let loaded = repo
                .checkout(&commit)
                .map_err(|e| vec![crate::error_chain(&e)])
                .and_then(|_| load(&repo.pods_dir(&commit), &self.node));
            match loaded {
                Ok(s) => {
                    self.sources.synced = s.files;
                    if state.record.healthy.as_deref() != Some(commit.as_str()) {
                        let changed = self.sources.desired_keys_of_synced();
                        state.trial = Some(trial(&commit, state.window, changed));
                    }
                }
                Err(e) => state.last_error = Some(e.join("; ")),
            }
        }
        let wake = self
            .wake
            .1
            .try_clone()
            .map_err(|source| super::DaemonError::Io {
                what: "socketpair",
                source,
            })?;
        let interval = Duration::from_secs(self.args.git_interval);
        std::thread::Builder::new()
            .name("git-sync".into())
            .spawn(move || fetcher(repo, interval, tx, now_rx, wake))
            .map_err(|source| super::DaemonError::Io {
                what: "the git sync thread",
                source,
            })?;
        self.sync = Some(state);
        self.publish_sync();
        Ok(())
    }

    /// The sender `POST /v1/sync` uses.
    pub(super) fn sync_now(&self) -> Option<Sender<()>> {
        self.sync.as_ref().map(|s| s.now.clone())
    }

    fn publish_sync(&self) {
        if let Some(s) = &self.sync {
            if let Ok(mut v) = self.view.lock() {
                v.sync = Some(s.view());
            }
        }
    }

    /// Takes what the fetch thread found.
    pub(super) fn sync_results(&mut self) {
        let Some(mut s) = self.sync.take() else {
            return;
        };
        while let Ok(msg) = s.rx.try_recv() {
            s.fetched_at = Some(super::now_rfc3339());
            match msg {
                Fetched::Failed(e) => {
                    s.failures += 1;
                    if s.last_error.as_ref() != Some(&e) {
                        self.event(Kind::Warning, "SyncFailed", OBJECT, None, e.clone());
                    }
                    s.last_error = Some(e);
                }
                Fetched::Commit { commit, dir } => {
                    s.remote = Some(commit.clone());
                    if s.record.applied.as_deref() == Some(commit.as_str()) {
                        if s.trial.is_none() {
                            s.last_error = None;
                        }
                        continue;
                    }
                    if s.record.bad.contains(&commit) {
                        continue;
                    }
                    let loaded = dir
                        .map_err(|e| vec![e])
                        .and_then(|_| load(&s.repo.pods_dir(&commit), &self.node));
                    match loaded {
                        Err(errors) => self.refuse(&mut s, &commit, errors),
                        Ok(files) => self.apply(&mut s, &commit, files),
                    }
                }
            }
        }
        self.sync = Some(s);
        self.publish_sync();
    }

    fn refuse(&mut self, s: &mut SyncState, commit: &str, errors: Vec<String>) {
        let message = format!(
            "commit {} refused, the node stays on {}: {}",
            short(commit),
            s.record.applied.as_deref().map_or("no revision", short),
            errors.join("; ")
        );
        self.event(Kind::Warning, "Refused", OBJECT, None, message.clone());
        s.last_error = Some(message);
        s.record.bad.push(commit.to_string());
        s.refused += 1;
        s.save();
    }

    fn apply(&mut self, s: &mut SyncState, commit: &str, files: Sources) {
        let before = synced_hashes(&self.sources.synced);
        self.sources.synced = files.files;
        let after = synced_hashes(&self.sources.synced);
        let changed: Vec<String> = after
            .iter()
            .filter(|(k, h)| before.get(*k) != Some(*h))
            .map(|(k, _)| k.clone())
            .collect();
        let removed = before.keys().filter(|k| !after.contains_key(*k)).count();
        self.event(
            Kind::Normal,
            "Applied",
            OBJECT,
            None,
            format!(
                "commit {} applied: {} pods made or changed{}, {removed} removed",
                short(commit),
                changed.len(),
                if changed.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", changed.join(", "))
                }
            ),
        );
        s.record.applied = Some(commit.to_string());
        s.last_error = None;
        s.trial = Some(trial(commit, s.window, changed));
        s.save();
    }

    /// After a publish: a trial whose pods are all Ready ends healthy; one
    /// past its deadline is reverted.
    pub(super) fn judge_trial(&mut self, pods: &[PodStatus]) {
        let Some(mut s) = self.sync.take() else {
            return;
        };
        if let Some(t) = &s.trial {
            let ready = |key: &str| {
                pods.iter()
                    .find(|p| format!("{}/{}", p.namespace, p.name) == key)
                    .is_some_and(|p| {
                        p.phase == "Succeeded"
                            || p.conditions
                                .iter()
                                .any(|c| c.kind == "Ready" && c.status == "True")
                    })
            };
            let waiting: Vec<String> = t.changed.iter().filter(|k| !ready(k)).cloned().collect();
            let now = Instant::now();
            let since = if waiting.is_empty() {
                Some(t.ready_since.unwrap_or(now))
            } else {
                None
            };
            let stable = since.is_some_and(|at| now >= at + t.stable);
            if let Some(t) = s.trial.as_mut() {
                t.ready_since = since;
            }
            let Some(t) = &s.trial else {
                self.sync = Some(s);
                return;
            };
            if stable {
                let commit = t.commit.clone();
                self.event(
                    Kind::Normal,
                    "Healthy",
                    OBJECT,
                    None,
                    format!("commit {}: every pod it changed is Ready", short(&commit)),
                );
                s.record.healthy = Some(commit.clone());
                s.rollout = since.map(|at| at.saturating_duration_since(t.since));
                s.trial = None;
                s.save();
                s.repo.prune(&[commit.as_str()]);
            } else if now >= t.deadline {
                let commit = t.commit.clone();
                let why: Vec<String> = waiting
                    .iter()
                    .map(|k| {
                        let shown = pods
                            .iter()
                            .find(|p| format!("{}/{}", p.namespace, p.name) == *k)
                            .map(|p| {
                                p.reason
                                    .clone()
                                    .or_else(|| {
                                        p.containers
                                            .iter()
                                            .find(|c| !c.ready)
                                            .map(|c| c.state.clone())
                                    })
                                    .unwrap_or_else(|| p.phase.clone())
                            })
                            .unwrap_or_else(|| "not running".into());
                        format!("{k} ({shown})")
                    })
                    .collect();
                self.event(
                    Kind::Warning,
                    "Unhealthy",
                    OBJECT,
                    None,
                    format!(
                        "commit {}: not Ready within {}s: {}",
                        short(&commit),
                        s.window.as_secs(),
                        why.join(", ")
                    ),
                );
                s.record.bad.push(commit.clone());
                s.trial = None;
                s.reverted += 1;
                self.revert(&mut s, &commit);
            }
        }
        self.sync = Some(s);
        self.publish_sync();
    }

    /// Back to the last healthy revision (none: no synced pods).
    fn revert(&mut self, s: &mut SyncState, bad: &str) {
        let target = s.record.healthy.clone();
        let files = match &target {
            Some(c) => s
                .repo
                .checkout(c)
                .map_err(|e| vec![crate::error_chain(&e)])
                .and_then(|_| load(&s.repo.pods_dir(c), &self.node)),
            None => Ok(Sources::new(true)),
        };
        match files {
            Ok(f) => {
                self.sources.synced = f.files;
                s.record.applied = target.clone();
                let message = format!(
                    "commit {} reverted: back to {}",
                    short(bad),
                    target.as_deref().map_or("no revision", short)
                );
                self.event(Kind::Warning, "Reverted", OBJECT, None, message.clone());
                s.last_error = Some(message);
            }
            Err(e) => {
                let message = format!(
                    "commit {} could not be reverted: {}",
                    short(bad),
                    e.join("; ")
                );
                self.event(Kind::Warning, "RevertFailed", OBJECT, None, message.clone());
                s.last_error = Some(message);
            }
        }
        s.save();
        // The desired state changed outside a pass: plan again.
        let _ = std::io::Write::write(&mut &self.wake.1, b"r");
    }

    /// When the loop must look at the trial.
    pub(super) fn trial_deadline(&self) -> Option<Instant> {
        let t = self.sync.as_ref()?.trial.as_ref()?;
        Some(
            t.ready_since
                .map_or(t.deadline, |at| t.deadline.min(at + t.stable)),
        )
    }
}

fn trial(commit: &str, window: Duration, changed: Vec<String>) -> Trial {
    Trial {
        commit: commit.to_string(),
        deadline: Instant::now() + window,
        deadline_wall: crate::status::seconds(&crate::shim::logs::rfc3339_nano(
            std::time::SystemTime::now() + window,
        )),
        changed,
        ready_since: None,
        stable: (window / 3).min(Duration::from_secs(10)),
        since: Instant::now(),
    }
}

/// Each synced pod's plan hash, by `namespace/name`.
fn synced_hashes(files: &BTreeMap<PathBuf, FileState>) -> BTreeMap<String, String> {
    files
        .values()
        .flat_map(|f| f.good.iter())
        .map(|p| (format!("{}/{}", p.namespace, p.name), p.hash.clone()))
        .collect()
}

impl Sources {
    /// The synced revision's pods.
    fn desired_keys_of_synced(&self) -> Vec<String> {
        synced_hashes(&self.synced).into_keys().collect()
    }
}
